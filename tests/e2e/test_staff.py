"""`chairside staff`: acknowledgement, standby between patients and audited
limit changes, through real Mosquitto, the real gateway and real InfluxDB."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Observer, lockstep, wait_rows

from chairside.service import Gateway
from chairside.sim.services import InfluxDB, Mosquitto
from chairside.sim.simulator import Fleet, make_box
from chairside.staff import commands as staff

pytestmark = pytest.mark.services
SITE = "clinic-staff"


def _args(mosquitto: Mosquitto, action: str, **extra: Any) -> argparse.Namespace:
    base = {"action": action, "site": SITE, "chair": "5", "by": "RN Lee", "mqtt_host": "127.0.0.1",
            "mqtt_port": mosquitto.port, "mqtt_credentials": None, "mqtt_ca": None}
    base.update(extra)
    return argparse.Namespace(**base)


def _answer(observer: Observer, param: str) -> dict[str, Any]:
    """The gateway's staff/result for the limits/set request of ``param``
    (matched by the id the command put in its request)."""
    request = observer.wait_for("/5/limits/set", lambda p: p.get("param") == param)
    assert isinstance(request.get("id"), str) and request["id"]
    return observer.wait_for("/5/staff/result", lambda p: p.get("id") == request["id"])


def test_ack_standby_and_limit_from_the_staff_command(
    mosquitto: Mosquitto, influxdb: InfluxDB, gateway: Gateway, observer: Observer, tmp_path: Path,
    sim_clock: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    box = make_box(SITE, "5", "probe_off", "127.0.0.1", mosquitto.port, fs_dir=str(tmp_path / "box"),
                   clock=sim_clock)
    box.patient.script([(0, "probe", "probe_off")])
    fleet = Fleet([box, make_box(SITE, "6", "normal", "127.0.0.1", mosquitto.port,
                                 fs_dir=str(tmp_path / "box6"), clock=sim_clock)], step_ms=1000)
    try:
        lockstep(fleet, gateway, 40_000)
        observer.wait_for("/5/alarms", lambda p: p["alarm"] == "probe_off" and p["event"] == "raised")
        assert staff.run(_args(mosquitto, "ack", alarm="probe_off")) == 0
        observer.wait_for("/5/alarms", lambda p: p["event"] == "acknowledged" and p["by"] == "RN Lee")
        assert staff.run(_args(mosquitto, "standby")) == 0
        observer.wait_for("/5/alarms", lambda p: p["alarm"] == "probe_off" and p["event"] == "cleared")
        observer.wait_for("/5/alarms/active", lambda p: p["active"] == [])
        raised_before = len([p for p in observer.payloads("/5/alarms") if p["event"] == "raised"])
        lockstep(fleet, gateway, 40_000)  # still probe off: quiet in standby
        raised_after = len([p for p in observer.payloads("/5/alarms") if p["event"] == "raised"])
        assert raised_after == raised_before
        assert staff.run(_args(mosquitto, "limit", param="spo2_low.limit", value="93",
                               reason="baseline 94 %")) == 0
        applied = _answer(observer, "spo2_low.limit")
        assert (applied["ok"], applied["kind"]) == (1, "limits_set") and "reason" not in applied
        capsys.readouterr()
        # a change that would switch the alarm off is refused by the gateway (not
        # a timeout: exit 1 is also "no answer"): ok=0, the reason and the band,
        # echoing the request's id on staff/result, and the command prints it
        assert staff.run(_args(mosquitto, "limit", param="spo2_critical.limit", value="0", reason="")) == 1
        refused = _answer(observer, "spo2_critical.limit")
        assert (refused["ok"], refused["kind"], refused["reason"]) == (0, "limits_set", "bad_limit")
        assert refused["detail"] == "spo2_critical.limit: 0 outside the per-chair range 75..90"
        printed = capsys.readouterr().out
        assert "refused: bad_limit: spo2_critical.limit: 0 outside the per-chair range 75..90" in printed
        rows = wait_rows(influxdb, f"SELECT * FROM limit_audit WHERE site = '{SITE}'", 1)
        assert rows and rows[0]["param"] == "spo2_low.limit" and rows[0]["by"] == "RN Lee"
        acks = wait_rows(influxdb, f"SELECT * FROM alarm_events WHERE event = 'acknowledged' AND site = '{SITE}'", 1)
        assert acks and acks[0]["by"] == "RN Lee"
    finally:
        fleet.close()
