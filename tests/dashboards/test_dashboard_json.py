"""Structural checks on the generated dashboards (no Grafana needed)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dashboards import build  # noqa: E402
from dashboards.grafana_macros import BUILTIN_NAMES, variable_names  # noqa: E402

JSON_DIR = REPO / "dashboards" / "json"
CONTRACT = json.loads((REPO / "gateway" / "chairside" / "contract.json").read_text())
SCHEMA: dict[str, dict[str, list[str]]] = CONTRACT["influx"]["measurements"]
UID = "chairside-influx"
BOARDS = {p.name: json.loads(p.read_text()) for p in sorted(JSON_DIR.glob("*.json"))}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board.get("panels", []):
        if panel.get("type") != "row":
            yield panel
        yield from (p for p in panel.get("panels", []) if p.get("type") != "row")


def queries(board: dict[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """(where, query, needs_time_filter) for every query in a dashboard."""
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']}", target["query"], True
    for anno in board.get("annotations", {}).get("list", []):
        if anno.get("builtIn"):
            continue
        yield f"annotation {anno['name']}", anno["target"]["query"], True
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            yield f"variable {var['name']}", var["query"], False


def test_three_dashboards_with_stable_uids() -> None:
    assert set(BOARDS) == {"chairside-overview.json", "chairside-chair.json",
                           "chairside-devices.json"}
    for name, board in BOARDS.items():
        assert board["uid"] == name.removesuffix(".json")
        ids = [p["id"] for p in board["panels"]]
        assert ids == list(range(1, len(ids) + 1)), "panel ids numbered in layout order"


def test_regenerating_equals_committed_json() -> None:
    fresh = {name: build.render(data) for name, data in build.build_all().items()}
    assert set(fresh) == set(BOARDS)
    for name, text in fresh.items():
        assert (JSON_DIR / name).read_text() == text, f"{name} is stale: run dashboards/build.py"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_panel_variable_and_annotation_uses_the_datasource_uid(name: str) -> None:
    board = BOARDS[name]
    for panel in panels(board):
        assert panel["datasource"] == {"type": "influxdb", "uid": UID}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == UID
            assert target["rawQuery"] is True
            assert target["resultFormat"] in ("time_series", "table")
            assert target["refId"]
    for var in board["templating"]["list"]:
        if var["type"] == "textbox":  # $station: a URL, not a query
            continue
        assert var["datasource"]["uid"] == UID
    for anno in board.get("annotations", {}).get("list", []):
        assert anno["datasource"]["uid"] == UID
        assert anno["target"]["datasource"]["uid"] == UID


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_query_has_time_filter_and_defined_variables(name: str) -> None:
    board = BOARDS[name]
    defined = {v["name"] for v in board["templating"]["list"]}
    for where, query, needs_time in queries(board):
        if needs_time:
            assert "$timeFilter" in query, f"{where}: no $timeFilter"
        undefined = variable_names(query) - BUILTIN_NAMES - defined
        assert not undefined, f"{where}: undefined {undefined}"
        for var in ("site", "chair"):
            if f"${var}" in query:
                assert f'"{var}" =~ /^${var}$/' in query, f"{where}: use =~ /^${var}$/"


_FROM = re.compile(r'FROM\s+"(\w+)"')
_QUOTED = re.compile(r'"(\w+)"')
_ALIAS = re.compile(r'AS\s+"(\w+)"')


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_measurements_tags_and_fields_exist_in_the_contract(name: str) -> None:
    for where, query, _ in queries(BOARDS[name]):
        measurements = set(_FROM.findall(query))
        assert measurements, f"{where}: no measurement"
        unknown = measurements - set(SCHEMA)
        assert not unknown, f"{where}: unknown measurement {unknown}"
        allowed = set(measurements) | set(_ALIAS.findall(query))
        for m in measurements:
            allowed |= set(SCHEMA[m]["tags"]) | set(SCHEMA[m]["fields"])
        names = set(_QUOTED.findall(query))
        assert names <= allowed, f"{where}: not in contract.json influx schema: {names - allowed}"


def _overview_row_panels() -> dict[str, dict[str, Any]]:
    board = BOARDS["chairside-overview.json"]
    return {p["title"]: p for p in panels(board)}


def test_overview_row_repeats_per_chair() -> None:
    rows = [p for p in BOARDS["chairside-overview.json"]["panels"] if p["type"] == "row"]
    assert len(rows) == 1 and rows[0]["repeat"] == "chair" and rows[0]["collapsed"] is False
    chair = next(v for v in BOARDS["chairside-overview.json"]["templating"]["list"]
                 if v["name"] == "chair")
    assert chair["multi"] is True and chair["includeAll"] is True
    assert chair["query"].startswith('SHOW TAG VALUES FROM "vitals" WITH KEY = "chair"')


def test_stale_values_show_red_text_not_a_number() -> None:
    found = _overview_row_panels()
    for title, text in (("SpO2", "STALE"), ("Pulse", "STALE"), ("Sensor", "OFFLINE")):
        panel = found[title]
        assert panel["options"]["reduceOptions"]["calcs"] == ["last"], title
        defaults = panel["fieldConfig"]["defaults"]
        specials = [m["options"] for m in defaults["mappings"] if m["type"] == "special"]
        assert {"match": "null+nan", "result": {"color": "red", "text": text}} in specials
        assert defaults["noValue"] == text
        assert panel["timeFrom"] == f"{build.load_profile().stale_after_s}s"


def test_thresholds_come_from_the_profile() -> None:
    profile = json.loads((REPO / "gateway/chairside/profiles/adult.json").read_text())
    cond = profile["conditions"]
    steps = _overview_row_panels()["SpO2"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps == [
        {"color": "red", "value": None},
        {"color": "yellow", "value": cond["spo2_critical"]["limit"]},
        {"color": "green", "value": cond["spo2_low"]["limit"]},
    ]
    pulse = _overview_row_panels()["Pulse"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in pulse] == [
        None, cond["pulse_low"]["limit"], cond["pulse_high"]["limit"] + 1]
    assert "profiles/adult.json" in BOARDS["chairside-overview.json"]["description"]


def test_priority_colours_follow_iec_60601_1_8() -> None:
    alarm = _overview_row_panels()["Active alarm"]
    options = alarm["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert options["3"]["color"] == "red" and options["3"]["text"] == "HIGH"
    assert options["2"]["color"] == "yellow"
    assert options["1"]["color"] == "#00FFFF"


def test_detail_annotations_map_text_and_tags() -> None:
    annos = BOARDS["chairside-chair.json"]["annotations"]["list"]
    assert {a["name"] for a in annos} == {"Alarms", "Acknowledged / cleared"}
    for anno in annos:
        assert anno["mappings"]["text"] == {"source": "field", "value": "text"}
        assert anno["mappings"]["tags"]["value"] == "alarm"
        assert anno["query"] == anno["target"]["query"]


def test_fallback_profile_is_marked_and_matches_the_profile_file(tmp_path: Path) -> None:
    fallback = build.load_profile(tmp_path / "missing.json")
    real = build.load_profile()
    assert fallback.source.startswith("FALLBACK")
    assert "profiles/adult.json" in real.source
    assert set(fallback.limits) == set(real.limits)


def test_current_value_queries_are_bounded_by_now() -> None:
    """Issue 15 point 7: every query that shows a box's latest value or its raw
    points bounds time from above, so a reading stamped in the future cannot
    mask the live value ($timeFilter of a range ending now has no upper bound;
    GROUP BY time(...) ends at now() by itself).  Gateway-made series
    (alarm log and annotations, rejects) are stamped by the gateway's clock."""
    checked = 0
    for board in BOARDS.values():
        for panel in panels(board):
            for target in panel["targets"]:
                query = target["query"]
                device_timed = re.search(r'FROM "(vitals|nibp|device)"', query)
                grouped_by_time = "GROUP BY time(" in query
                current = panel["type"] == "stat" and "alarm_events" in query
                if (device_timed and not grouped_by_time) or current:
                    assert query.count("$timeFilter AND time <= now()") == query.count("$timeFilter"), (
                        panel["title"])
                    checked += 1
    assert checked == 9  # with the overview's Alarms (names) panel


def test_overview_names_active_alarms_and_links_each_chair_to_the_station() -> None:
    panel = _overview_row_panels()["Alarms"]
    options = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert options["spo2_critical"] == {"color": "red", "index": options["spo2_critical"]["index"],
                                        "text": "SpO2 critically low"}
    assert options["probe_off"]["color"] == "yellow" and options["nibp_failed"]["color"] == "#00FFFF"
    assert panel["options"]["reduceOptions"] == {"calcs": ["last"], "fields": "/^alarm$/", "values": True}
    assert [link["url"] for link in panel["fieldConfig"]["defaults"]["links"]] == ["${station}/chair/${chair}"]
    assert [link["url"] for link in panel["links"]] == ["${station}/chair/${chair}"]
    station = next(v for v in BOARDS["chairside-overview.json"]["templating"]["list"] if v["name"] == "station")
    assert station["type"] == "textbox" and station["hide"] == 2 and station["query"].startswith("https://")


def test_chair_dashboard_links_to_the_session_record_and_the_station() -> None:
    board = BOARDS["chairside-chair.json"]
    links = {link["title"]: link for link in board["links"]}
    record = links["Session record (PDF)"]
    assert record["url"] == "${station}/chair/${chair}/report" and record["type"] == "link"
    assert links["Chair ${chair} on the station"]["url"] == "${station}/chair/${chair}"
    overview = next(v for v in BOARDS["chairside-overview.json"]["templating"]["list"] if v["name"] == "station")
    station = next(v for v in board["templating"]["list"] if v["name"] == "station")
    assert station == overview  # the same $station as the overview's
