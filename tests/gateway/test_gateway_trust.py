"""Failures of the gateway's own stages, on real Mosquitto and real InfluxDB.

Each test plays one way a clinic's data could be lost, blocked, overwritten or
silenced (issue 15 and 17): a point that cannot be written, a writer that
cannot make progress, a duplicate with other content, staff messages for ids
that break the id rule, a box clock in the future or one that jumped back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from gw_support import DB, Box, Listener, health, next_id, query, vitals, wait_rows, wall_ms
from instant_engine import instant_engine

from chairside.config import GatewayConfig
from chairside.metrics import Metrics
from chairside.service import Gateway
from chairside.sim.services import InfluxDB, Mosquitto, free_port
from chairside.store.deadletter import DeadLetters
from chairside.store.influx import InfluxWriter
from chairside.store.spool import PointSpool
from chairside.store.writer import Writer, WriterConfig
from csfw import contract as fw

pytestmark = pytest.mark.services


def _line(chair: str, t_ms: int, fw_version: str = "1.0") -> str:
    """A status point as the gateway writes it (free text field ``fw``)."""
    escaped = fw_version.replace("\\", "\\\\").replace('"', '\\"')
    return f'device,site=clinic1,chair={chair} fw="{escaped}",seq=1i {t_ms}'


def test_writer_isolates_a_point_that_cannot_be_encoded(influxdb: InfluxDB, tmp_path: Path) -> None:
    """A lone surrogate in a text field made every batch fail forever (no chair
    stored, no PUBACK); now only that point is dead-lettered, the rest stored."""
    durable: list[int] = []
    now = wall_ms()
    influx = InfluxWriter(influxdb.url, DB, 2.0)
    writer: Writer[int] = Writer(
        WriterConfig(database=DB, batch_interval_s=0.02), influx,
        PointSpool(tmp_path / "spool"), DeadLetters(tmp_path / "dl"), Metrics(),
        on_durable=durable.append, now_ms=wall_ms, on_spool_full=lambda full: None,
    )
    writer.start()
    try:
        writer.submit([_line("a", now - 3000), _line("b", now - 2000, "\ud800"), _line("c", now - 1000)], 1)
        writer.submit([_line("d", now)], 2)
        deadline = time.monotonic() + 10
        while durable != [1, 2] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert durable == [1, 2]
    finally:
        assert writer.stop(5) == 0
        influx.close()
    rows = query(influxdb, "SELECT fw FROM device")
    assert sorted(r["fw"] for r in rows) == ["1.0", "1.0", "1.0"]
    letters = DeadLetters(tmp_path / "dl").read()
    assert len(letters) == 1 and "UnicodeEncodeError" in str(letters[0]["reason"])
    assert "chair=b" in str(letters[0]["line"])


def _wait_health(port: int, status: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code, body = health(port)
        if code == status:
            return body
        assert time.monotonic() < deadline, f"/health stayed {code}: {body}"
        time.sleep(0.2)


def test_health_degrades_within_seconds_and_writes_resume_soon_after_influx_returns(
    mosquitto: Mosquitto, influxdb: InfluxDB, box: Box, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """InfluxDB frozen (SIGSTOP) then killed: /health is 503 within seconds, the
    repeated error is logged once per interval, and once influxd is back the
    spool drains within about two seconds (the backoff is not waited out:
    the writer probes InfluxDB every second)."""
    caplog.set_level(logging.WARNING)
    port = free_port()
    gw = Gateway(GatewayConfig(mqtt_port=mosquitto.port, influx_url=influxdb.url, database=DB,
                               state_dir=tmp_path / "state", client_id=f"gw-trust-{next_id()}",
                               metrics_port=port, influx_timeout_s=0.5), instant_engine())
    gw.start()
    try:
        assert gw.wait_subscribed(10)
        topics = fw.Topics("clinic1", "chair7")
        base = wall_ms() - 60_000
        box.send(topics.vitals, vitals(0, base))
        wait_rows(influxdb, "SELECT seq FROM vitals WHERE chair = 'chair7'", 1)
        _wait_health(port, 200, 10)
        influxdb.kill()
        started = time.monotonic()
        for seq in range(1, 40):
            box.send(topics.vitals, vitals(seq, base + seq * 1000))
            time.sleep(0.05)
        body = _wait_health(port, 503, 10)
        assert body["influx_reachable"] is False
        assert time.monotonic() - started < 10
        time.sleep(6)  # the write backoff grows past 4 s
        unavailable = [r for r in caplog.records if "InfluxDB unavailable" in r.getMessage()]
        assert 1 <= len(unavailable) <= 2, [r.getMessage() for r in unavailable]
        influxdb.start()
        back = time.monotonic()
        wait_rows(influxdb, "SELECT seq FROM vitals WHERE chair = 'chair7'", 40, timeout=10)
        assert time.monotonic() - back < 4.0
        _wait_health(port, 200, 10)
        rows = query(influxdb, "SELECT seq FROM vitals WHERE chair = 'chair7'")
        assert [r["seq"] for r in rows] == list(range(40))
    finally:
        gw.stop()


def test_duplicate_with_other_content_is_dropped_before_storage(
    gateway: Gateway, box: Box, influxdb: InfluxDB
) -> None:
    """The first copy of (boot, seq) is the one stored and alarmed on; a later
    copy with other values (same time or another) changes nothing."""
    topics = fw.Topics("clinic1", "chair8")
    t = wall_ms() - 5000
    box.send(topics.vitals, vitals(5, t, spo2=97))
    box.send(topics.vitals, vitals(5, t, spo2=80))
    box.send(topics.vitals, vitals(5, t + 500, spo2=70))
    wait_rows(influxdb, "SELECT spo2 FROM vitals WHERE chair = 'chair8'", 1)
    deadline = time.monotonic() + 5
    while gateway.metrics.get("duplicates") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.wait_idle(10)
    rows = query(influxdb, "SELECT spo2 FROM vitals WHERE chair = 'chair8'")
    assert [(r["time"], r["spo2"]) for r in rows] == [(t, 97)]
    assert gateway.metrics.get("duplicates") == 2
    assert gateway.alarm_stage.active("clinic1", "chair8") == []


@pytest.mark.parametrize(("site", "chair"), [("G2", "chair1"), ("clinic1", "Chair 3"),
                                             ("clinic1", "drill-\U0001f600"), ("\U0001f600", "c1")])
def test_staff_messages_for_invalid_ids_are_refused_and_not_saved(
    gateway: Gateway, mosquitto: Mosquitto, site: str, chair: str, tmp_path: Path
) -> None:
    ear = Listener(mosquitto, "chairside/v1/+/+/staff/result")
    try:
        box = Box(mosquitto)
        request = {"v": 1, "param": "spo2_low.limit", "value": 88, "by": "kim", "reason": "COPD",
                   "id": "req-1"}
        box.send(f"chairside/v1/{site}/{chair}/limits/set", json.dumps(request))
        box.close()
        deadline = time.monotonic() + 5
        while not ear.on(f"chairside/v1/{site}/{chair}/staff/result"):
            assert time.monotonic() < deadline, "no answer"
            time.sleep(0.05)
        answer = ear.on(f"chairside/v1/{site}/{chair}/staff/result")[0]
        assert (answer["ok"], answer["reason"], answer["id"]) == (0, "bad_id", "req-1")
    finally:
        ear.close()
    assert gateway.wait_idle(5)
    overrides = gateway.config.state_dir / "limit_overrides.json"  # type: ignore[operator]
    assert not overrides.exists() or f"{site}/{chair}" not in overrides.read_text()
    assert gateway.metrics.get("control_rejected", reason="bad_id") == 1


def _alarm_listener(mosquitto: Mosquitto, chair: str) -> tuple[Listener, str]:
    return Listener(mosquitto, f"chairside/v1/clinic1/{chair}/#"), f"chairside/v1/clinic1/{chair}"


def test_reading_from_the_future_is_stored_at_receive_time_and_flagged(
    gateway: Gateway, box: Box, influxdb: InfluxDB, mosquitto: Mosquitto
) -> None:
    """sync=1 and t = now + 1 h: not stored at its claimed time (it would mask
    the live value on the overview until then); stored near the receive time
    with the device time in ``dev_t``, a ``clock_wrong`` technical alarm, and a
    time command that echoes the box's boot and uptime."""
    ear, root = _alarm_listener(mosquitto, "chair9")
    try:
        future = wall_ms() + 3_600_000
        rx = wall_ms()
        box.send(f"{root}/vitals", vitals(1, future, spo2=96))
        rows = wait_rows(influxdb, "SELECT spo2, dev_t FROM vitals WHERE chair = 'chair9'", 1)
        assert len(rows) == 1
        assert abs(rows[0]["time"] - rx) < 5_000 and rows[0]["dev_t"] == future
        deadline = time.monotonic() + 5
        while not ear.on(f"{root}/cmd") or not ear.on(f"{root}/alarms"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        event = ear.on(f"{root}/alarms")[0]
        assert (event["alarm"], event["event"], event["kind"]) == ("clock_wrong", "raised", "technical")
        command = ear.on(f"{root}/cmd")[0]
        assert (command["cmd"], command["boot"], command["up"]) == ("time", 4, 61_000)
        assert abs(command["t"] - rx) < 5_000
        # the clock is right again: the technical alarm clears
        box.send(f"{root}/vitals", vitals(2, wall_ms(), spo2=96))
        deadline = time.monotonic() + 5
        while len(ear.on(f"{root}/alarms")) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ear.on(f"{root}/alarms")[1]["event"] == "cleared"
    finally:
        ear.close()


def test_a_clock_that_jumps_back_mid_boot_does_not_silence_alarms(
    gateway: Gateway, box: Box, influxdb: InfluxDB, mosquitto: Mosquitto
) -> None:
    """A stale time command set the box an hour back: its live readings claim
    to be an hour old.  They must not be taken for a backlog (history, no
    alarm): t - up no longer matches the boot time frozen from its clock."""
    ear, root = _alarm_listener(mosquitto, "chair10")
    try:
        now = wall_ms()
        # vitals(seq, t): up = 60_000 + seq * 1000
        box.send(f"{root}/vitals", vitals(0, now - 2000, spo2=97))
        wait_rows(influxdb, "SELECT spo2 FROM vitals WHERE chair = 'chair10'", 1)
        jumped = now - 3_600_000
        box.send(f"{root}/vitals", vitals(3, jumped + 1000, spo2=80))
        deadline = time.monotonic() + 5
        while not any(e["alarm"] == "spo2_critical" for e in ear.on(f"{root}/alarms")):
            assert time.monotonic() < deadline, ear.messages
            time.sleep(0.05)
        rows = wait_rows(influxdb, "SELECT spo2 FROM vitals WHERE chair = 'chair10'", 2)
        assert [r["time"] for r in rows] == [now - 2000, now + 1000]  # the frozen boot time + up
        assert any(e["alarm"] == "clock_wrong" for e in ear.on(f"{root}/alarms"))
    finally:
        ear.close()


def test_a_backlog_is_still_history(gateway: Gateway, box: Box, influxdb: InfluxDB, mosquitto: Mosquitto) -> None:
    """The other side of the rule above: readings the broker held for ten
    minutes keep their own time and raise no live alarm."""
    ear, root = _alarm_listener(mosquitto, "chair11")
    try:
        old = wall_ms() - 600_000
        for seq in range(3):
            box.send(f"{root}/vitals", vitals(seq, old + seq * 1000, spo2=80))
        rows = wait_rows(influxdb, "SELECT spo2 FROM vitals WHERE chair = 'chair11'", 3)
        time.sleep(0.5)
        assert ear.on(f"{root}/alarms") == []
        assert [r["time"] for r in rows] == [old, old + 1000, old + 2000]
    finally:
        ear.close()


def test_health_client_that_goes_away_logs_no_traceback(
    mosquitto: Mosquitto, influxdb: InfluxDB, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    port = free_port()
    gw = Gateway(GatewayConfig(mqtt_port=mosquitto.port, influx_url=influxdb.url, database=DB,
                               state_dir=tmp_path / "state", client_id=f"gw-trust-{next_id()}",
                               metrics_port=port), instant_engine())
    gw.start()
    try:
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        time.sleep(0.3)
        _wait_health(port, 200, 10)
    finally:
        gw.stop()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert threading.active_count() < 200
