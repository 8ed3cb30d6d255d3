"""The gateway against a real Mosquitto and a real influxd.

A paho publisher plays the chair boxes, building payloads with the firmware's
own encoders (firmware/csfw/contract.py); results are read back with
InfluxQL and from MQTT.  The gateway runs the production alarm engine and
profile (tests/gateway/instant_engine.py: only spo2_low's 15-s delay is 0,
checked by test_instant_engine.py), so the expectations are the shipped ones.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from gw_support import DB, Box, Listener, query, vitals, wall_ms

from chairside.service import Gateway
from chairside.sim.services import InfluxDB, Mosquitto
from csfw import contract as fw

pytestmark = pytest.mark.services


def test_good_messages_stored_bad_ones_counted(
    gateway: Gateway, box: Box, influxdb: InfluxDB
) -> None:
    topics = fw.Topics("clinic1", "chair3")
    base = wall_ms() - 60_000
    bad = {
        "not_json": (topics.vitals, b"spo2=97"),
        "out_of_range": (topics.vitals, vitals(900, base).replace('"spo2": 97', '"spo2": 130')),
        "bad_type": (topics.vitals, vitals(901, base).replace('"sync": 1', '"sync": true')),
        "bad_enum": (topics.vitals, vitals(902, base).replace('"st": "ok"', '"st": "great"')),
        "schema_version": (topics.vitals, vitals(903, base).replace('"v": 1', '"v": 2')),
        "missing_field": (topics.vitals, vitals(904, base).replace('"spo2": 97, ', "")),
    }
    assert all(p != vitals(0, base) for _, p in bad.values())
    seqs = list(range(30))
    bad_iter = iter(bad.values())
    for seq in seqs:
        box.send(topics.vitals, vitals(seq, base + seq * 1000))
        if seq % 5 == 0:
            box.send(*next(bad_iter))
    box.send(topics.vitals, vitals(7, base + 7000))  # a redelivery: same point again
    env = fw.envelope(30, 4, 90_000, base + 30_000, True, False)
    box.send(topics.nibp, fw.nibp_payload(env, True, 128, 82, 97, 70))
    env = fw.envelope(31, 4, 91_000, base + 31_000, True, False)
    box.send(topics.status, fw.status_payload(env, {"fw": "0.3.1", "boot_t": base - 60_000}))
    assert gateway.wait_idle(10)

    rows = query(influxdb, "SELECT * FROM vitals WHERE chair = 'chair3' AND site = 'clinic1'")
    assert [r["seq"] for r in rows] == seqs  # none missing, none duplicated
    assert [r["time"] for r in rows] == [base + s * 1000 for s in seqs]
    first = rows[0]
    assert (first["spo2"], first["pr"], first["st"], first["boot"], first["hist"]) == (
        97, 72, "ok", 4, False,
    )
    assert first["dev_t"] == base and first["rx_ms"] >= base
    nibp = query(influxdb, "SELECT sys, dia, map, seq FROM nibp")
    assert [(r["sys"], r["dia"], r["map"], r["seq"]) for r in nibp] == [(128, 82, 97, 30)]
    device = query(influxdb, "SELECT online, fw, boot_t FROM device")
    assert [(r["online"], r["fw"], r["boot_t"]) for r in device] == [(1, "0.3.1", base - 60_000)]

    m = gateway.metrics
    for reason in bad:
        assert m.get("rejected", reason=reason) == 1, reason
    assert m.get("duplicates") == 1
    assert m.get("messages_in") == len(seqs) + len(bad) + 3
    assert m.get("points_written") >= len(seqs) + 2
    def stored_rejects() -> dict[str, int]:
        per_reason: Any = influxdb.query("SELECT sum(n) FROM rejects GROUP BY reason", DB)
        series = per_reason["results"][0].get("series", [])
        return {s["tags"]["reason"]: s["values"][0][1] for s in series}

    # stored at the next reject flush (aggregated per reason): wait for it, not a fixed time
    deadline = time.monotonic() + 10
    while stored_rejects() != dict.fromkeys(bad, 1) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stored_rejects() == dict.fromkeys(bad, 1)
    assert "chairside_gateway_rejected_total{reason=\"not_json\"} 1.0" in m.render().splitlines()


def test_desaturation_raises_alarm_historical_does_not(
    gateway: Gateway, box: Box, influxdb: InfluxDB, mosquitto: Mosquitto
) -> None:
    ear = Listener(mosquitto, "chairside/v1/+/+/alarms/#")
    try:
        live = fw.Topics("clinic1", "chair1")
        other = fw.Topics("clinic1", "chair2")
        now = wall_ms()
        box.send(live.vitals, vitals(1, now - 2000, spo2=97))
        # a replayed desaturation from the box's buffer on another chair
        box.send(other.vitals, vitals(1, now - 600_000, spo2=80, hist=True))
        assert gateway.wait_idle(10)
        time.sleep(0.3)
        assert ear.messages == []

        box.send(live.vitals, vitals(2, now - 1000, spo2=87))
        deadline = time.monotonic() + 5
        while not ear.on(f"{live.vitals[:-7]}/alarms") and time.monotonic() < deadline:
            time.sleep(0.05)
        events = ear.on("chairside/v1/clinic1/chair1/alarms")
        assert len(events) == 1
        event = events[0]
        assert (event["alarm"], event["event"], event["priority"], event["value"]) == (
            "spo2_low", "raised", "medium", 87.0,
        )
        assert event["key"] == "clinic1/chair1/spo2_low"
        deadline = time.monotonic() + 5
        while not ear.on("chairside/v1/clinic1/chair1/alarms/active"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        active = ear.on("chairside/v1/clinic1/chair1/alarms/active")[-1]
        assert [a["alarm"] for a in active["active"]] == ["spo2_low"]
        assert ear.on("chairside/v1/clinic1/chair2/alarms") == []

        assert gateway.wait_idle(10)
        stored = query(influxdb, "SELECT * FROM alarm_events")
        assert [(r["alarm"], r["event"], r["chair"], r["id"]) for r in stored] == [
            ("spo2_low", "raised", "chair1", event["id"])
        ]
        hist = query(influxdb, "SELECT spo2, hist FROM vitals WHERE chair = 'chair2'")
        assert [(r["spo2"], r["hist"], r["time"]) for r in hist] == [(80, True, now - 600_000)]

        # the production engine's deep desaturation: SpO2 84 % (< 85) is
        # spo2_critical, high, at once, escalating the announced spo2_low
        box.send(live.vitals, vitals(3, now - 500, spo2=84))
        deadline = time.monotonic() + 5
        while len(ear.on("chairside/v1/clinic1/chair1/alarms")) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        critical = ear.on("chairside/v1/clinic1/chair1/alarms")[1]
        assert (critical["alarm"], critical["event"], critical["priority"], critical["value"]) == (
            "spo2_critical", "escalated", "high", 84.0,
        )
    finally:
        ear.close()


def test_influx_outage_buffers_then_delivers(
    gateway: Gateway, box: Box, influxdb: InfluxDB
) -> None:
    topics = fw.Topics("clinic1", "chair5")
    base = wall_ms() - 30_000
    box.send(topics.vitals, vitals(0, base))
    assert gateway.wait_idle(10)
    influxdb.kill()
    for seq in range(1, 11):
        box.send(topics.vitals, vitals(seq, base + seq * 1000))
    time.sleep(1.0)
    assert gateway.metrics.get("write_errors", kind="unavailable") >= 1
    assert not gateway.wait_idle(0.2)
    influxdb.start()
    assert gateway.wait_idle(15)
    rows = query(influxdb, "SELECT seq FROM vitals WHERE chair = 'chair5'")
    assert [r["seq"] for r in rows] == list(range(11))
    assert gateway.metrics.total("queue_dropped") == 0


def test_clock_skew_counted_every_time_but_warned_once_per_chair(
    gateway: Gateway, box: Box, influxdb: InfluxDB, caplog: pytest.LogCaptureFixture
) -> None:
    """A box whose clock is an hour off (or a backlog after an outage) must not
    flood the log: every message is counted and stored at its own time, one
    warning per chair per minute."""
    caplog.set_level("WARNING", logger="chairside.service")
    hour_ago = wall_ms() - 3_600_000
    for chair in ("c1", "c2"):
        topics = fw.Topics("clinic1", chair)
        for seq in range(20):
            box.send(topics.vitals, vitals(seq, hour_ago + seq * 1000))
    assert gateway.wait_idle(10)
    assert gateway.metrics.get("clock_skew") == 40
    warned = [r.getMessage() for r in caplog.records if "clock skew" in r.getMessage()]
    assert len(warned) == 2 and {w.split(" on ")[1].split(" ")[0] for w in warned} == {
        "clinic1/c1", "clinic1/c2"}
    rows = query(influxdb, "SELECT seq FROM vitals WHERE site = 'clinic1'")
    assert len(rows) == 40
