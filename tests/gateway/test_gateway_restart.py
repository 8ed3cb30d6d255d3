"""Alarm state across a gateway crash (issue 14 points 6 and 7), and staleness
that a periodic status must not end (point 8), on real services.

``chairside gateway`` runs as a child process on real Mosquitto and InfluxDB
and is killed with SIGKILL while alarms are active: after the restart no
persisting condition is raised a second time, a latched alarm is still
latched (in the retained ``alarms/active`` too), and its acknowledgement
still produces its clear.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from gw_support import Box, Listener, vitals, wall_ms
from instant_engine import instant_engine

from chairside.config import GatewayConfig
from chairside.service import Gateway
from chairside.sim.services import GatewayProcess, InfluxDB, Mosquitto
from csfw import contract as fw

pytestmark = [pytest.mark.services, pytest.mark.slow]

ROOT = "chairside/v1/clinic1"


def _events(ear: Listener, chair: str) -> list[dict[str, Any]]:
    return ear.on(f"{ROOT}/{chair}/alarms")


def _wait(predicate: Any, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _active(ear: Listener, chair: str) -> list[dict[str, Any]]:
    sets = ear.on(f"{ROOT}/{chair}/alarms/active")
    return sets[-1]["active"] if sets else []


def test_kill_9_keeps_active_and_latched_alarms_without_a_second_raise(
    mosquitto: Mosquitto, influxdb: InfluxDB, tmp_path: Path
) -> None:
    state = tmp_path / "gw-state"
    gw = GatewayProcess(mosquitto.port, influxdb.url, state, client_id="gw-restart", workdir=tmp_path)
    gw.start()
    ear = Listener(mosquitto, f"{ROOT}/#")
    box = Box(mosquitto)
    try:
        # chair a: SpO2 80 persists (spo2_critical, no delay); chair b: a
        # desaturation that recovers before anyone acknowledges (latched)
        # (a recovery counts once it has held for clear_hold_s, 10 s)
        seq = 0
        for second in range(14):
            now = wall_ms()
            box.send(f"{ROOT}/a/vitals", vitals(seq, now, spo2=80))
            box.send(f"{ROOT}/b/vitals", vitals(seq, now, spo2=80 if second == 0 else 97))
            seq += 1
            time.sleep(1.0)
        _wait(lambda: any(e["event"] == "raised" for e in _events(ear, "a")), "chair a raised")
        _wait(lambda: any(a.get("latched") for a in _active(ear, "b")), "chair b latched in alarms/active")
        raised_a = [e for e in _events(ear, "a") if e["event"] == "raised"]
        assert [e["alarm"] for e in raised_a] == ["spo2_critical"]
        time.sleep(1.5)  # the periodic save (1 s) has seen the latest readings

        gw.kill()
        retained = Listener(mosquitto, f"{ROOT}/b/alarms/active")  # what a late subscriber sees
        _wait(lambda: bool(retained.messages), "retained active set")
        assert [(a["alarm"], a["latched"]) for a in retained.messages[-1][1]["active"]] == [
            ("spo2_critical", True)]
        retained.close()

        gw.start()
        for _ in range(3):
            now = wall_ms()
            box.send(f"{ROOT}/a/vitals", vitals(seq, now, spo2=80))
            box.send(f"{ROOT}/b/vitals", vitals(seq, now, spo2=97))
            seq += 1
            time.sleep(0.3)
        time.sleep(1.0)
        assert [e for e in _events(ear, "a") if e["event"] == "raised"] == raised_a, "raised again"
        assert not [e for e in _events(ear, "b") if e["event"] == "cleared"], "latch lost"
        assert [(a["alarm"], a["latched"]) for a in _active(ear, "b")] == [("spo2_critical", True)]

        # the latched alarm's acknowledgement still clears it (no lost clear)
        box.send(f"{ROOT}/b/alarms/ack", '{"v":1,"alarm":"spo2_critical","by":"kim"}')
        _wait(lambda: any(e["event"] == "cleared" for e in _events(ear, "b")), "chair b cleared")
        _wait(lambda: _active(ear, "b") == [], "chair b's active set emptied")
    finally:
        box.close()
        ear.close()
        gw.stop()


class ManualClock:
    """The gateway's wall clock, moved by the test (accelerated time)."""

    def __init__(self, now_ms: int) -> None:
        self.ms = now_ms

    def now_ms(self) -> int:
        return self.ms


def test_periodic_status_without_vitals_keeps_data_stale_raised(
    mosquitto: Mosquitto, influxdb: InfluxDB, tmp_path: Path
) -> None:
    """Issue 14 point 8 through the real gateway: a box that keeps sending its
    60-s status but no vitals stays `data_stale` (a status used to clear it,
    and it was raised again 30 s later: a flurry instead of one alarm)."""
    clock = ManualClock(wall_ms())
    gw = Gateway(GatewayConfig(mqtt_port=mosquitto.port, influx_url=influxdb.url, database="chairside_test",
                               state_dir=tmp_path / "state", client_id="gw-stale", tick_interval_s=0.05),
                 instant_engine(), clock=clock)
    gw.start()
    ear = Listener(mosquitto, f"{ROOT}/s1/alarms")
    box = Box(mosquitto)
    try:
        assert gw.wait_subscribed(10)
        box.send(f"{ROOT}/s1/vitals", vitals(0, clock.ms, spo2=97))
        _wait(lambda: gw.wait_idle(0.1), "first reading processed")
        for minute in range(1, 6):  # five minutes of statuses, no vitals
            for _ in range(60):
                clock.ms += 1000
                time.sleep(0.003)
            env = fw.envelope(minute, 4, 60_000 + minute * 60_000, clock.ms, True, False)
            box.send(f"{ROOT}/s1/status", fw.status_payload(env, {"fw": "0.3.1", "rssi": -60}))
            _wait(lambda: gw.wait_idle(0.1), "status processed")
        time.sleep(0.3)
        stale = [(e["event"]) for e in ear.on(f"{ROOT}/s1/alarms") if e["alarm"] == "data_stale"]
        assert stale == ["raised"], stale
    finally:
        box.close()
        ear.close()
        gw.stop()
