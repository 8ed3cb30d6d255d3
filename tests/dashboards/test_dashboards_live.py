"""Issue 6's must-show: the dashboards' own queries over data that came the
real way — simulated chairs (the real firmware) → real Mosquitto → the real
gateway (validation, timestamps, alarm engine) → real InfluxDB.

Four chairs at site ``clinic-live``: c1 normal; c2 desaturating (the scripted
desaturation, then held at 84 % for the last two minutes); c3 with a BP spike
and automatic NIBP every 60 s; c4 whose box was closed at 2 min (the broker
publishes its last will), five simulated minutes before the end.

Time: the dashboards' queries use ``now()`` (``$timeFilter`` of a relative
range, and the panels' ``timeFrom`` overrides such as the 30 s stale window),
and that is what a nurse sees, so the queries are run as Grafana sends them
for a relative range.  For that, the simulated world must end at the real
now: the shared ``SimClock`` starts at ``real now - duration``; the chairs
run seven simulated minutes in accelerated time, then keep running until the
simulated wall clock has caught up with the real one (the remaining lag is
under a second).  Expanding ``$timeFilter`` to an absolute range instead
would not test the ``now()``-relative stale windows at all.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
for extra in (REPO, REPO / "tests" / "e2e"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from e2e_support import Observer, SimWallClock, start_gateway, wait_rows  # noqa: E402

from chairside.service import Gateway  # noqa: E402
from chairside.sim.services import InfluxDB, Mosquitto  # noqa: E402
from chairside.sim.simulator import Fleet, make_box  # noqa: E402
from dashboards.grafana_macros import Scope, TimeRange, Variable, expand  # noqa: E402
from host.clock import SimClock  # noqa: E402

pytestmark = pytest.mark.services

JSON_DIR = REPO / "dashboards" / "json"
BOARDS = {p.stem: json.loads(p.read_text()) for p in sorted(JSON_DIR.glob("*.json"))}
DB = "chairside"
SITE = "clinic-live"
CHAIRS = ("c1", "c2", "c3", "c4")
DURATION_MS = 420_000
OFFLINE_AT_MS = 120_000
Series = dict[str, Any]


@dataclass
class Seeded:
    db: InfluxDB
    clock: SimClock
    gateway: Gateway
    observer: Observer
    last_nibp_c3: dict[str, Any]


def _real_ms() -> int:
    return time.time_ns() // 1_000_000


def _pace(fleet: Fleet, sim_ms: int, chunk_ms: int = 200) -> None:
    """Chunks with a short real pause, so PUBACKs and the gateway keep up (live readings stay live)."""
    for _ in range(max(1, sim_ms // chunk_ms)):
        fleet.run_for(chunk_ms)
        time.sleep(0.002)


@pytest.fixture(scope="module")
def seeded(mosquitto_module: Mosquitto, influxdb_module: InfluxDB,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    tmp = tmp_path_factory.mktemp("live")
    clock = SimClock(epoch_at_boot_ms=_real_ms() - DURATION_MS, synced=True)
    gateway = start_gateway(mosquitto_module, influxdb_module, tmp / "gw", clock=SimWallClock(clock),
                            batch_interval_s=0.05)
    observer = Observer(mosquitto_module.port)
    scenarios = {"c1": "normal", "c2": "desat", "c3": "bp_spike", "c4": "normal"}
    boxes = {chair: make_box(SITE, chair, scenario, "127.0.0.1", mosquitto_module.port, clock=clock, seed=i,
                             fs_dir=str(tmp / chair), nibp_interval_s=60 if chair == "c3" else 0)
             for i, (chair, scenario) in enumerate(scenarios.items())}
    boxes["c2"].patient.script([(DURATION_MS - 120_000, "spo2", 84)])
    fleet = Fleet(list(boxes.values()), step_ms=200)
    try:
        _pace(fleet, OFFLINE_AT_MS)
        boxes["c4"].close()  # socket gone without DISCONNECT: the broker publishes the last will
        fleet.boxes.remove(boxes["c4"])
        _pace(fleet, DURATION_MS - OFFLINE_AT_MS)
        for _ in range(20):  # catch up with the real clock
            lag = _real_ms() - clock.true_epoch_ms()
            if lag < 500:
                break
            _pace(fleet, lag // 200 * 200 + 200)
        assert abs(_real_ms() - clock.true_epoch_ms()) < 1000
        assert gateway.wait_idle(10)
        nibp = observer.payloads("/c3/nibp")
        assert nibp, "c3 measured its blood pressure"
        wait_rows(influxdb_module, f"SELECT * FROM nibp WHERE chair = 'c3' AND site = '{SITE}'", len(nibp), 10)
        yield Seeded(influxdb_module, clock, gateway, observer, nibp[-1])
    finally:
        fleet.close()
        observer.close()
        gateway.stop()


# ---------------------------------------------------------------- expansion helpers


def run(db: InfluxDB, query: str) -> list[Series]:
    result = db.query(query, DB)
    results = result.get("results")
    assert isinstance(results, list) and len(results) == 1, result
    first = results[0]
    assert "error" not in first, f"{first.get('error')}\n{query}"
    series: list[Series] = first.get("series", [])
    return series


def rows(series: list[Series]) -> list[dict[str, Any]]:
    return [{**s.get("tags", {}), **dict(zip(s["columns"], values, strict=True))}
            for s in series for values in s["values"]]


def scope(board: dict[str, Any], panel: dict[str, Any] | None, chairs: tuple[str, ...]) -> Scope:
    """What Grafana substitutes: the board's relative range (or the panel's
    timeFrom override), $__interval, $site/$chair (regex form when multi)."""
    multi = bool(board["templating"]["list"][0].get("multi"))
    relative = (panel or {}).get("timeFrom") or board["time"]["from"].removeprefix("now-")
    return Scope(
        time_range=TimeRange(relative=relative),
        interval="10s",
        variables={
            "site": Variable([SITE], multi=multi, include_all=multi),
            "chair": Variable(list(chairs), multi=multi, include_all=multi),
        },
    )


def panel(board: str, title: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [p for p in BOARDS[board]["panels"] if p.get("title") == title]
    assert len(found) == 1, (board, title)
    return found[0]


def run_panel(db: InfluxDB, board: str, title: str, chair: str) -> list[Series]:
    p = panel(board, title)
    (target,) = p["targets"]
    return run(db, expand(target["query"], scope(BOARDS[board], p, (chair,))))


def last(series: list[Series]) -> Any:
    """What a stat panel with calcs ["last"] shows: the last row's value, None without data."""
    if not series:
        return None
    column = next(c for c in series[0]["columns"] if c != "time")
    return rows(series)[-1][column]


# ---------------------------------------------------------------- the nurse's view (time-sensitive first)


def test_live_chairs_show_values_and_the_offline_chair_shows_stale(seeded: Seeded) -> None:
    db = seeded.db
    for chair in ("c1", "c2", "c3"):
        assert last(run_panel(db, "chairside-overview", "Sensor", chair)) == "ok", chair
        assert isinstance(last(run_panel(db, "chairside-overview", "SpO2", chair)), int), chair
        assert last(run_panel(db, "chairside-devices", "Box $chair", chair)) == 1, chair
    assert last(run_panel(db, "chairside-overview", "SpO2", "c2")) == 84
    # c4: no row in the 30 s window → the panels' null mapping (red STALE / OFFLINE)
    for title in ("Sensor", "SpO2", "Pulse"):
        assert run_panel(db, "chairside-overview", title, "c4") == [], title
    assert last(run_panel(db, "chairside-devices", "Box $chair", "c4")) in (None, 0)
    # its trend ends in empty buckets (a gap, not a frozen line)
    trend = [r["SpO2"] for r in rows(run_panel(db, "chairside-chair", "SpO2", "c4"))]
    assert any(v is not None for v in trend) and all(v is None for v in trend[-25:])
    # the gateway stored the last will as the device's offline state
    state = rows(run(db, f"SELECT last(state) FROM device WHERE site = '{SITE}' AND chair = 'c4'"))
    assert state[0]["last"] == "offline"


def test_last_nibp_and_its_age(seeded: Seeded) -> None:
    db, expected = seeded.db, seeded.last_nibp_c3
    (row,) = rows(run_panel(db, "chairside-overview", "Last NIBP", "c3"))
    assert (row["sys"], row["dia"]) == (expected["sys"], expected["dia"])
    assert row["sys"] >= 200, "the spike"
    assert row["time"] == expected["t"], "stored at the measurement's own time"
    age_s = (_real_ms() - row["time"]) / 1000
    assert 0 <= age_s < 90, "measured within the last NIBP interval (+ its duration)"
    assert run_panel(db, "chairside-overview", "Last NIBP", "c1") == []  # never measured


def test_desaturation_alarm_appears_in_the_annotations(seeded: Seeded) -> None:
    db = seeded.db
    board = BOARDS["chairside-chair"]
    annos = {a["name"]: a for a in board["annotations"]["list"]}
    raised = rows(run(db, expand(annos["Alarms"]["target"]["query"], scope(board, None, ("c2",)))))
    spo2 = [r for r in raised if r["alarm"].startswith("spo2")]
    assert spo2 and all("SpO2" in r["text"] and r["event"] in ("raised", "escalated", "renotify") for r in spo2)
    assert any(r["event"] == "raised" for r in spo2) and "spo2_critical" in {r["alarm"] for r in spo2}
    none_for_c1 = rows(run(db, expand(annos["Alarms"]["target"]["query"], scope(board, None, ("c1",)))))
    assert not [r for r in none_for_c1 if r["alarm"].startswith("spo2")]
    # overview: highest active priority (high = 3) for the desaturating and the hypertensive chair
    assert last(run_panel(db, "chairside-overview", "Active alarm", "c2")) == 3
    assert last(run_panel(db, "chairside-overview", "Active alarm", "c3")) == 3


def test_variables_list_the_site_and_its_chairs(seeded: Seeded) -> None:
    for board in BOARDS.values():
        found = {var["name"]: sorted(r["value"] for r in rows(run(seeded.db, expand(
            var["query"], scope(board, None, CHAIRS))))) for var in board["templating"]["list"]
            if var["type"] != "textbox"}  # $station is a URL, not a query
        assert found == {"site": [SITE], "chair": list(CHAIRS)}, board["uid"]


def test_every_panel_variable_and_annotation_query_executes(seeded: Seeded) -> None:
    db = seeded.db
    executed = 0
    for board in BOARDS.values():
        multi = bool(board["templating"]["list"][0].get("multi"))
        chair_sets: list[tuple[str, ...]] = [(c,) for c in CHAIRS] + ([CHAIRS] if multi else [])
        for p in board["panels"]:
            for target in p.get("targets", []):
                for chairs in chair_sets:
                    run(db, expand(target["query"], scope(board, p, chairs)))
                    executed += 1
        for anno in board.get("annotations", {}).get("list", []):
            for chairs in chair_sets:
                run(db, expand(anno["target"]["query"], scope(board, None, chairs)))
                executed += 1
        for var in board["templating"]["list"]:
            if var["type"] == "textbox":  # $station: a URL, not a query
                continue
            run(db, expand(var["query"], scope(board, None, CHAIRS)))
            executed += 1
    assert executed > 100
