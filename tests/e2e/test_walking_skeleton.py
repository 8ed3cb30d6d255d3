"""Issue 2's end-to-end proof: the real firmware on the host hardware layer,
real Mosquitto, the real gateway and real InfluxDB."""

from __future__ import annotations

from typing import Any

import pytest
from e2e_support import Observer, lockstep, query_rows, wait_rows

from chairside.service import Gateway
from chairside.sim.services import InfluxDB, Mosquitto
from chairside.sim.simulator import Fleet, make_box

pytestmark = pytest.mark.services
SITE = "clinic-e2e"


@pytest.fixture
def fleets() -> Any:
    made: list[Fleet] = []
    yield made
    for fleet in made:
        fleet.close()


def _fleet(mosquitto: Mosquitto, tmp_path: Any, chairs: dict[str, str], made: list[Fleet], clock: Any) -> Fleet:
    boxes = [make_box(SITE, chair, scenario, "127.0.0.1", mosquitto.port, fs_dir=str(tmp_path / f"box{chair}"),
                      seed=i, clock=clock)
             for i, (chair, scenario) in enumerate(chairs.items())]
    fleet = Fleet(boxes, step_ms=1000)
    made.append(fleet)
    return fleet


def test_sixty_seconds_arrive_complete_with_tags_values_and_times(
    mosquitto: Mosquitto, influxdb: InfluxDB, gateway: Gateway, observer: Observer, tmp_path: Any,
    fleets: list[Fleet], sim_clock: Any,
) -> None:
    fleet = _fleet(mosquitto, tmp_path, {"1": "normal", "2": "desat"}, fleets, sim_clock)
    fleet.run_for(60_000)
    boxes = {box.cfg["chair"]: box for box in fleet.boxes}
    rows = wait_rows(influxdb, f"SELECT * FROM vitals WHERE site = '{SITE}' GROUP BY chair", 120)
    assert len(rows) == 120
    for chair, box in boxes.items():
        mine = [r for r in rows if r["chair"] == chair]
        seqs = sorted(r["seq"] for r in mine)
        # one vitals reading per simulated second, every sequence number once
        assert len(seqs) == 60 and len(set(seqs)) == 60
        published = [p for p in observer.payloads(f"/{chair}/vitals")]
        assert sorted({p["seq"] for p in published}) == seqs  # a re-send (no watermark yet) is the same reading
        # the gateway keeps the first copy it gets (the broker delivers in the same
        # order to the observer): live, unless the box's live send failed and the
        # reading went out only as a replay (h=1), which is then stored as history
        first_copy: dict[int, dict[str, Any]] = {}
        for p in published:
            first_copy.setdefault(p["seq"], p)
        assert sum(1 for p in first_copy.values() if not p.get("h")) >= 50, "nearly all go out live"
        for row in mine:
            # stored at the device's measurement time (synced clock)
            assert row["time"] == box.clock.epoch_ms() - box.clock.now_ms() + row["up"]
            assert row["site"] == SITE and row["hist"] is bool(first_copy[row["seq"]].get("h")), row
        by_seq = {p["seq"]: p for p in published}
        for row in mine:
            assert row["spo2"] == by_seq[row["seq"]]["spo2"]
            assert row["st"] == by_seq[row["seq"]]["st"]
    desat = [r for r in rows if r["chair"] == "2" and r["spo2"] is not None]
    assert min(r["spo2"] for r in desat) < 88
    status = query_rows(influxdb, f"SELECT last(online) FROM device WHERE site = '{SITE}' GROUP BY chair")
    assert {r["chair"] for r in status} == {"1", "2"}


def test_desaturation_raises_an_alarm_event_and_normal_does_not(
    mosquitto: Mosquitto, influxdb: InfluxDB, gateway: Gateway, observer: Observer, tmp_path: Any,
    fleets: list[Fleet], sim_clock: Any,
) -> None:
    fleet = _fleet(mosquitto, tmp_path, {"1": "normal", "2": "desat"}, fleets, sim_clock)
    lockstep(fleet, gateway, 90_000)
    event = observer.wait_for("/2/alarms", lambda p: p["alarm"].startswith("spo2") and p["event"] == "raised")
    assert event["site"] == SITE and event["chair"] == "2" and event["kind"] == "physiological"
    observer.wait_for("/2/alarms/active", lambda p: any(a["alarm"].startswith("spo2") for a in p["active"]))
    assert gateway.wait_idle(10)
    chair1 = [p for p in observer.payloads("/1/alarms") if p.get("kind") == "physiological"]
    assert chair1 == []
    stored = wait_rows(influxdb, f"SELECT * FROM alarm_events WHERE chair = '2' AND site = '{SITE}'", 1)
    assert any(r["alarm"].startswith("spo2") for r in stored)
