"""Every dashboard query, expanded like Grafana would, run against a real influxd.

No Grafana server runs in CI.  Instead each stored panel, variable and
annotation query is expanded with ``dashboards.grafana_macros`` ($timeFilter
with the panel's relative-time override, $__interval, $site/$chair in their
regex form, one chair per repeated row) and executed through InfluxDB's real
/query endpoint, and the result is checked against what the nurse must see.

Seeding: FOR NOW line protocol written straight from the contract schema
(the lead will switch this to the real gateway + simulated chairs); the
``rejects`` points come from the gateway's own validator and reject log.
Four chairs at site ``clinic1``: c1 normal, c2 desaturating (with its
alarm_events), c3 with a BP spike, c4 offline for five minutes.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from chairside.ingest.rejects import RejectLog  # noqa: E402
from chairside.ingest.validate import REASONS, Rejected, validate  # noqa: E402
from chairside.metrics import Metrics  # noqa: E402
from chairside.sim.services import InfluxDB  # noqa: E402
from dashboards.grafana_macros import Scope, TimeRange, Variable, expand  # noqa: E402

pytestmark = pytest.mark.services

JSON_DIR = REPO / "dashboards" / "json"
BOARDS = {p.stem: json.loads(p.read_text()) for p in sorted(JSON_DIR.glob("*.json"))}
DB = "chairside"
SITE = "clinic1"
CHAIRS = ("c1", "c2", "c3", "c4")
MIN = 60_000


def _seed_lines(now: int) -> list[str]:
    lines: list[str] = []

    def vitals(chair: str, t: int, spo2: int, pr: int) -> None:
        lines.append(
            f'vitals,site={SITE},chair={chair} spo2={spo2}i,pr={pr}i,sig=6i,st="ok",'
            f"seq={t // 1000 % 100000}i,boot=3i,up={t % 10_000_000}i,sync=1i,hist=false,"
            f"rx_ms={t + 150}i,dev_t={t}i {t}"
        )

    def nibp(chair: str, t: int, sys_: int, dia: int) -> None:
        lines.append(
            f'nibp,site={SITE},chair={chair} sys={sys_}i,dia={dia}i,map={(sys_ + 2 * dia) // 3}i,'
            f'pr=80i,st="ok",seq=1i,boot=3i,up=1i,sync=1i,hist=false,rx_ms={t}i,dev_t={t}i {t}'
        )

    def device(chair: str, t: int, online: int, spool: int = 0, dropped: int = 0) -> None:
        state = "online" if online else "offline"
        extra = (f',fw="1.4.2",cfg="a1b2c3d4",reset="power",spool={spool}i,dropped={dropped}i,'
                 f'oxi="ok",nibp="ok",rssi=-61i,link="wifi",seq=1i,boot=3i,up=1i,sync=1i'
                 if online else "")
        lines.append(f'device,site={SITE},chair={chair} state="{state}",online={online}i'
                     f"{extra},rx_ms={t}i {t}")

    def alarm(chair: str, t: int, name: str, priority: str, event: str, text: str,
              active: bool, by: str = "") -> None:
        by_field = f',by="{by}"' if by else ""
        lines.append(
            f"alarm_events,site={SITE},chair={chair},alarm={name},priority={priority},"
            f'event={event} id="{chair}-{name}-{event}",kind="physiological",text="{text}",'
            f"active={str(active).lower()},drill=false{by_field} {t}"
        )

    for i in range(600):  # ten minutes of 1 Hz vitals
        t = now - (600 - i) * 1000
        vitals("c1", t, 97, 72)
        vitals("c3", t, 98, 88)
        # c2 desaturates over the last three minutes to 84 %
        vitals("c2", t, 96 if i < 420 else max(84, 96 - (i - 420) // 10), 95)
        if t < now - 5 * MIN:  # c4 went offline five minutes ago
            vitals("c4", t, 95, 70)
    for chair in ("c1", "c2", "c3"):
        for k in range(1, 6):
            device(chair, now - k * MIN + 5000, 1)
    device("c4", now - 7 * MIN, 1, spool=12, dropped=3)
    device("c4", now - 6 * MIN, 1, spool=12, dropped=3)
    device("c4", now - 5 * MIN, 0)  # last will
    nibp("c1", now - 12 * MIN, 118, 76)
    nibp("c1", now - 2 * MIN, 122, 78)
    nibp("c3", now - 20 * MIN, 130, 85)
    nibp("c3", now - 4 * MIN, 232, 126)
    nibp("c4", now - 7 * MIN, 125, 80)
    alarm("c2", now - 150_000, "spo2_low", "medium", "raised", "SpO2 89 % < 90 % (chair c2)", True)
    alarm("c2", now - 60_000, "spo2_critical", "high", "raised", "SpO2 84 % < 85 % (chair c2)",
          True)
    alarm("c2", now - 30_000, "spo2_low", "medium", "acknowledged", "SpO2 low acknowledged",
          True, by="nurse-a")
    alarm("c3", now - 4 * MIN, "bp_intervention", "high", "raised", "BP 232/126 (chair c3)", True)
    alarm("c1", now - 40 * MIN, "pulse_high", "medium", "raised", "Pulse 125 (chair c1)", True)
    alarm("c1", now - 38 * MIN, "pulse_high", "medium", "cleared", "Pulse back to 100", False)
    alarm("c4", now - 5 * MIN, "box_offline", "medium", "raised", "Chair box offline (c4)", True)
    lines += _reject_lines(now)
    return lines


BAD_VITALS = json.dumps({"v": 1, "seq": 5, "boot": 1, "up": 1000, "t": 1_790_000_000_000, "sync": 1, "h": 0,
                         "spo2": 130, "pr": 72, "sig": 6, "st": "ok"}).encode()


def _reject_lines(now: int) -> list[str]:
    """``rejects`` points as the gateway writes them: refused messages through
    its validator and reject log (three out-of-range vitals five minutes ago,
    one message on a topic outside the contract a minute ago)."""
    metrics = Metrics()
    first, second = RejectLog(metrics), RejectLog(metrics)
    for _ in range(3):
        refused = validate(f"chairside/v1/{SITE}/c9/vitals", BAD_VITALS)
        assert isinstance(refused, Rejected)
        first.note(refused)
    refused = validate("x/y", b"{}")
    assert isinstance(refused, Rejected)
    second.note(refused)
    return first.flush(now - 5 * MIN) + second.flush(now - MIN)


@pytest.fixture(scope="module")
def seeded(influxdb_module: InfluxDB) -> Iterator[tuple[InfluxDB, int]]:
    db = influxdb_module
    db.query(f"CREATE DATABASE {DB}")
    now = int(time.time() * 1000)
    body = "\n".join(_seed_lines(now)).encode()
    req = urllib.request.Request(f"{db.url}/write?db={DB}&precision=ms", data=body)
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204
    yield db, now


Series = dict[str, Any]


def run(db: InfluxDB, query: str, database: str = DB) -> list[Series]:
    result = db.query(query, database)
    results = result.get("results")
    assert isinstance(results, list) and len(results) == 1, result
    first = results[0]
    assert "error" not in first, f"{first.get('error')}\n{query}"
    series: list[Series] = first.get("series", [])
    return series


def rows(series: list[Series]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in series:
        for values in s["values"]:
            out.append({**s.get("tags", {}), **dict(zip(s["columns"], values, strict=True))})
    return out


def scope(board: dict[str, Any], panel: dict[str, Any] | None, chairs: tuple[str, ...],
          multi: bool = True) -> Scope:
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
    found = [p for p in BOARDS[board]["panels"] if p.get("title") == title]
    assert len(found) == 1, f"{board}: {title}"
    return found[0]


def run_panel(db: InfluxDB, board: str, title: str, chairs: tuple[str, ...],
              multi: bool = True, database: str = DB) -> list[Series]:
    p = panel(board, title)
    (target,) = p["targets"]
    return run(db, expand(target["query"], scope(BOARDS[board], p, chairs, multi)), database)


# ------------------------------------------------------------------ every query runs


def test_every_query_of_every_dashboard_executes(seeded: tuple[InfluxDB, int]) -> None:
    db, _ = seeded
    executed = 0
    for board in BOARDS.values():
        multi = board["uid"] != "chairside-chair"
        chair_sets = [(c,) for c in CHAIRS]
        for p in board["panels"]:
            for target in p.get("targets", []):
                for chairs in chair_sets + ([CHAIRS] if multi else []):
                    run(db, expand(target["query"], scope(board, p, chairs, multi)))
                    executed += 1
        for anno in board.get("annotations", {}).get("list", []):
            for chairs in chair_sets:
                run(db, expand(anno["target"]["query"], scope(board, None, chairs, multi)))
                executed += 1
        for var in board["templating"]["list"]:
            if var["type"] == "textbox":  # $station: a URL, not a query
                continue
            run(db, expand(var["query"], scope(board, None, CHAIRS, multi)))
            executed += 1
    assert executed > 100


def test_variables_list_sites_and_chairs(seeded: tuple[InfluxDB, int]) -> None:
    db, _ = seeded
    board = BOARDS["chairside-overview"]
    found = {}
    for var in (v for v in board["templating"]["list"] if v["type"] != "textbox"):
        found[var["name"]] = sorted(r["value"] for r in rows(run(
            db, expand(var["query"], scope(board, None, CHAIRS)))))
    assert found == {"site": [SITE], "chair": list(CHAIRS)}


def test_overview_leaves_drill_chairs_out(seeded: tuple[InfluxDB, int]) -> None:
    """A drill box (chair drill-3 of `chairside drill`) stores vitals like any
    box; the nurses' overview lists real chairs only, the chair detail both."""
    db, now = seeded
    database = "chairside_drills"
    db.query(f"CREATE DATABASE {database}")
    body = "\n".join(f'vitals,site={SITE},chair={chair} spo2=97i,pr=70i,sig=6i,st="ok",seq=1i,boot=1i,'
                     f"sync=1i {now - MIN}" for chair in ("3", "drill-3", "drill-12")).encode()
    req = urllib.request.Request(f"{db.url}/write?db={database}&precision=ms", data=body)
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204

    def chairs(board_name: str) -> list[str]:
        board = BOARDS[board_name]
        (var,) = [v for v in board["templating"]["list"] if v["name"] == "chair"]
        return sorted(r["value"] for r in rows(run(db, expand(var["query"], scope(board, None, CHAIRS)), database)))

    assert chairs("chairside-overview") == ["3"]
    assert chairs("chairside-chair") == ["3", "drill-12", "drill-3"]


# ------------------------------------------------------------------ overview, per chair row


def _last(series: list[Series], column: str | None = None) -> Any:
    """What a stat panel with calcs ["last"] shows: the last row (None if no data)."""
    if not series:
        return None
    r = rows(series)[-1]
    if column is None:
        column = next(c for c in series[0]["columns"] if c != "time")
    return r[column]


@pytest.mark.parametrize(
    ("chair", "sensor", "spo2", "pulse"),
    [("c1", "ok", 97, 72), ("c2", "ok", 84, 95), ("c3", "ok", 98, 88),
     ("c4", None, None, None)],
)
def test_overview_vitals(seeded: tuple[InfluxDB, int], chair: str, sensor: str | None,
                         spo2: int | None, pulse: int | None) -> None:
    db, _ = seeded
    assert _last(run_panel(db, "chairside-overview", "Sensor", (chair,))) == sensor
    assert _last(run_panel(db, "chairside-overview", "SpO2", (chair,))) == spo2
    assert _last(run_panel(db, "chairside-overview", "Pulse", (chair,))) == pulse


def test_offline_chair_maps_to_red_offline_text(seeded: tuple[InfluxDB, int]) -> None:
    """c4 stopped 5 min ago: no value in the stale window → the null mapping shows."""
    db, _ = seeded
    for title, text in (("SpO2", "STALE"), ("Pulse", "STALE"), ("Sensor", "OFFLINE")):
        assert _last(run_panel(db, "chairside-overview", title, ("c4",))) is None
        mappings = panel("chairside-overview", title)["fieldConfig"]["defaults"]["mappings"]
        null_map = next(m for m in mappings if m["type"] == "special"
                        and m["options"]["match"] == "null+nan")
        assert null_map["options"]["result"] == {"color": "red", "text": text}


@pytest.mark.parametrize(
    ("chair", "sys_", "dia", "age_min"),
    [("c1", 122, 78, 2), ("c3", 232, 126, 4), ("c4", 125, 80, 7), ("c2", None, None, None)],
)
def test_overview_last_nibp_and_its_age(seeded: tuple[InfluxDB, int], chair: str,
                                         sys_: int | None, dia: int | None,
                                         age_min: int | None) -> None:
    db, now = seeded
    series = run_panel(db, "chairside-overview", "Last NIBP", (chair,))
    if sys_ is None:
        assert series == []
        return
    (row,) = rows(series)
    assert (row["sys"], row["dia"]) == (sys_, dia)
    assert age_min is not None
    assert abs(row["time"] - (now - age_min * MIN)) < 1000, "Time is the measurement's own time"


@pytest.mark.parametrize(("chair", "rank"), [("c1", None), ("c2", 3), ("c3", 3), ("c4", 2)])
def test_overview_active_alarm_is_highest_priority(seeded: tuple[InfluxDB, int], chair: str,
                                                  rank: int | None) -> None:
    db, _ = seeded
    assert _last(run_panel(db, "chairside-overview", "Active alarm", (chair,))) == rank


@pytest.mark.parametrize(("chair", "names"), [("c1", []), ("c2", ["spo2_critical", "spo2_low"]),
                                              ("c3", ["bp_intervention"]), ("c4", ["box_offline"])])
def test_overview_alarms_panel_names_every_active_alarm(seeded: tuple[InfluxDB, int], chair: str,
                                                        names: list[str]) -> None:
    """The Alarms panel shows one value per active alarm (acknowledged included, cleared not)."""
    db, _ = seeded
    assert sorted(r["alarm"] for r in rows(run_panel(db, "chairside-overview", "Alarms", (chair,)))) == names


# ------------------------------------------------------------------ chair detail


def test_detail_trend_ends_in_null_buckets_for_offline_chair(
    seeded: tuple[InfluxDB, int],
) -> None:
    db, _ = seeded
    values = [r["SpO2"] for r in rows(run_panel(db, "chairside-chair", "SpO2", ("c4",), False))]
    assert any(v is not None for v in values)
    assert values[-1] is None and all(v is None for v in values[-25:]), "gap, not a frozen line"
    live = [r["SpO2"] for r in rows(run_panel(db, "chairside-chair", "SpO2", ("c2",), False))]
    assert min(v for v in live if v is not None) == 84


def test_detail_nibp_points(seeded: tuple[InfluxDB, int]) -> None:
    db, _ = seeded
    got = [(r["sys"], r["dia"]) for r in rows(run_panel(db, "chairside-chair", "NIBP",
                                                        ("c3",), False))]
    assert got == [(130, 85), (232, 126)]


def test_detail_alarm_annotations(seeded: tuple[InfluxDB, int]) -> None:
    db, _ = seeded
    board = BOARDS["chairside-chair"]
    annos = {a["name"]: a for a in board["annotations"]["list"]}
    raised = rows(run(db, expand(annos["Alarms"]["target"]["query"],
                                 scope(board, None, ("c2",), False))))
    assert [(r["alarm"], r["text"]) for r in raised] == [
        ("spo2_low", "SpO2 89 % < 90 % (chair c2)"),
        ("spo2_critical", "SpO2 84 % < 85 % (chair c2)"),
    ]
    acks = rows(run(db, expand(annos["Acknowledged / cleared"]["target"]["query"],
                               scope(board, None, ("c2",), False))))
    assert [(r["alarm"], r["by"]) for r in acks] == [("spo2_low", "nurse-a")]
    # absolute range in ms, as Grafana sends for a zoomed-in range
    now = seeded[1]
    absolute = Scope(time_range=TimeRange.absolute(now - 3 * MIN, now - 90_000),
                     variables=scope(board, None, ("c2",), False).variables)
    assert [r["alarm"] for r in rows(run(db, expand(annos["Alarms"]["target"]["query"],
                                                    absolute)))] == ["spo2_low"]


def test_detail_alarm_state_timeline(seeded: tuple[InfluxDB, int]) -> None:
    db, _ = seeded
    series = run_panel(db, "chairside-chair", "Alarm states", ("c1",), False)
    (lane,) = series
    assert lane["tags"] == {"alarm": "pulse_high", "priority": "medium"}
    states = [v[1] for v in lane["values"] if v[1] is not None]
    assert states[0] is True and states[-1] is False


# ------------------------------------------------------------------ device health


def test_device_online_state(seeded: tuple[InfluxDB, int]) -> None:
    db, _ = seeded
    assert _last(run_panel(db, "chairside-devices", "Box $chair", ("c1",))) == 1
    assert _last(run_panel(db, "chairside-devices", "Box $chair", ("c4",))) in (None, 0)


def test_device_inventory_spool_and_rejects(seeded: tuple[InfluxDB, int]) -> None:
    db, _ = seeded
    inv = rows(run_panel(db, "chairside-devices",
                         "Firmware and modules (last status per box, 24 h)", CHAIRS))
    assert {r["chair"]: r["fw"] for r in inv} == {c: "1.4.2" for c in CHAIRS}
    spool = rows(run_panel(db, "chairside-devices", "Spool depth", CHAIRS))
    assert max(r["last"] for r in spool if r["chair"] == "c4" and r["last"] is not None) == 12
    totals = {r["reason"]: r["sum"] for r in rows(
        run_panel(db, "chairside-devices", "Rejections in range", CHAIRS))}
    assert totals == {"out_of_range": 3, "bad_topic": 1}
    assert set(totals) <= set(REASONS)
    delay = [r["mean"] for r in rows(run_panel(
        db, "chairside-devices", "Receive delay: gateway clock − box clock (synced boxes)",
        ("c1",))) if r["mean"] is not None]
    assert delay and all(v == 150 for v in delay)


# ------------------------------------------------------------------ readings stamped in the future

FUTURE_DB = "chairside_future"
HOUR = 3_600_000
YEAR_2100_MS = 4_102_444_800_000


@pytest.fixture(scope="module")
def future_seeded(influxdb_module: InfluxDB) -> Iterator[tuple[InfluxDB, int]]:
    """Issue 15 point 7: a box whose clock runs far ahead (``sync=1``, now + 1 h,
    year 2100) wrote readings into the future.  c1 is live (SpO2 96, pulse 70,
    BP 120/80 two minutes ago, online); c2 stopped sending five minutes ago (its last will two minutes ago).  Every
    future point says something else (SpO2 70, pulse 140, BP 250/140, PROBE OFF,
    a high alarm, the box online again with other firmware)."""
    db = influxdb_module
    db.query(f"CREATE DATABASE {FUTURE_DB}")
    now = int(time.time() * 1000)
    lines: list[str] = []

    def vitals(chair: str, t: int, spo2: int, pr: int, st: str = "ok") -> None:
        lines.append(f'vitals,site={SITE},chair={chair} spo2={spo2}i,pr={pr}i,st="{st}",sync=1i,'
                     f"rx_ms={now}i,dev_t={t}i {t}")

    def nibp(chair: str, t: int, sys_: int, dia: int) -> None:
        lines.append(f'nibp,site={SITE},chair={chair} sys={sys_}i,dia={dia}i,map={(sys_ + 2 * dia) // 3}i,'
                     f'st="ok",sync=1i {t}')

    def device(chair: str, t: int, online: int, fw: str = "1.4.2") -> None:
        lines.append(f'device,site={SITE},chair={chair} online={online}i,fw="{fw}" {t}')

    for k in range(60):
        vitals("c1", now - (60 - k) * 1000, 96, 70)
        vitals("c2", now - 5 * 60_000 - (60 - k) * 1000, 95, 71)
    nibp("c1", now - 2 * 60_000, 120, 80)
    device("c1", now - 30_000, 1)
    device("c2", now - 6 * 60_000, 1)
    device("c2", now - 2 * 60_000, 0)  # the broker's last will (keepalive ran out)
    for t in (now + HOUR, YEAR_2100_MS):
        for chair in ("c1", "c2"):
            vitals(chair, t, 70, 140)
            vitals(chair, t + 1, 0, 0, st="probe_off")
            nibp(chair, t, 250, 140)
            device(chair, t, 1, fw="9.9.9")
            lines.append(f"alarm_events,site={SITE},chair={chair},alarm=spo2_critical,priority=high,"
                         f'event=raised id="future",text="SpO2 70",active=true {t}')
    req = urllib.request.Request(f"{db.url}/write?db={FUTURE_DB}&precision=ms", data="\n".join(lines).encode())
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204
    yield db, now


def _future_panel(db: InfluxDB, board: str, title: str, chair: str) -> list[Series]:
    return run_panel(db, board, title, (chair,), board != "chairside-chair", FUTURE_DB)


def test_future_readings_do_not_mask_the_live_value(future_seeded: tuple[InfluxDB, int]) -> None:
    db, now = future_seeded
    overview = "chairside-overview"
    assert _last(_future_panel(db, overview, "Sensor", "c1")) == "ok"
    assert _last(_future_panel(db, overview, "SpO2", "c1")) == 96
    assert _last(_future_panel(db, overview, "Pulse", "c1")) == 70
    (bp,) = rows(_future_panel(db, overview, "Last NIBP", "c1"))
    assert (bp["sys"], bp["dia"]) == (120, 80) and abs(bp["time"] - (now - 2 * 60_000)) < 1000
    assert _last(_future_panel(db, overview, "Active alarm", "c1")) is None
    assert [(r["sys"], r["dia"]) for r in rows(_future_panel(db, "chairside-chair", "NIBP", "c1"))] == [(120, 80)]
    assert _last(_future_panel(db, "chairside-devices", "Box $chair", "c1")) == 1


def test_future_readings_do_not_hide_an_offline_chair(future_seeded: tuple[InfluxDB, int]) -> None:
    """c2 is gone: the overview says OFFLINE/STALE/NO BP, not the future values."""
    db, _ = future_seeded
    overview = "chairside-overview"
    for title in ("Sensor", "SpO2", "Pulse", "Last NIBP", "Active alarm"):
        assert _future_panel(db, overview, title, "c2") == [], title
    assert _last(_future_panel(db, "chairside-devices", "Box $chair", "c2")) == 0
    inventory = rows(_future_panel(db, "chairside-devices",
                                   "Firmware and modules (last status per box, 24 h)", "c2"))
    assert [r["fw"] for r in inventory] == ["1.4.2"]
