"""Strings that cannot be stored, and staff messages Python cannot decode,
through a real Mosquitto, the real gateway and a real influxd (issue 15).

A lone surrogate (``"\\ud800"``, valid JSON and valid MQTT) or a control
character in a box's text field is refused at validation with
``bad_string`` and counted, and every other chair keeps being stored.  Staff
messages nested too deeply, with a number that overflows a float, NaN, or a
text field holding a lone surrogate or a control character are refused on
``staff/result`` with a reason, and the gateway goes on.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from instant_engine import instant_engine
from paho.mqtt.enums import CallbackAPIVersion

from chairside.config import GatewayConfig
from chairside.service import Gateway
from chairside.sim.services import InfluxDB, Mosquitto
from csfw import contract as fw

pytestmark = pytest.mark.services

DB = "chairside_text"
SITE = "clinic1"
_ids = itertools.count()


def count(influx: InfluxDB, q: str) -> int:
    result: Any = influx.query(q, DB)
    series = result["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


class Peer:
    """A paho client that publishes with QoS 1 and keeps what it receives."""

    def __init__(self, broker: Mosquitto, topic_filter: str | None = None) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"peer-{next(_ids)}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        if topic_filter is not None:
            self.client.subscribe(topic_filter, qos=1)
            assert subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.append((msg.topic, bytes(msg.payload)))

    def send(self, topic: str, payload: str | bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=5)
        assert info.is_published()

    def results(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(p) for _, p in self.received]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def gateway(mosquitto: Mosquitto, influxdb: InfluxDB, tmp_path: Path) -> Iterator[Gateway]:
    config = GatewayConfig(
        mqtt_port=mosquitto.port, influx_url=influxdb.url, database=DB,
        state_dir=tmp_path / "state", client_id=f"gw-text-{next(_ids)}",
        reject_interval_s=0.3, retry_min_s=0.1, retry_max_s=0.5, influx_timeout_s=1.0,
    )
    gw = Gateway(config, instant_engine())
    gw.start()
    assert gw.wait_subscribed(10)
    yield gw
    gw.stop()


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def vitals(seq: int, t: int) -> str:
    return fw.vitals_payload(fw.envelope(seq, 4, 60_000 + seq * 1000, t, True, False), 97, 72, 6, "ok")


def status(seq: int, t: int, fw_version: str) -> str:
    return fw.status_payload(fw.envelope(seq, 4, 60_000 + seq * 1000, t, True, False),
                             {"fw": fw_version})


def test_lone_surrogate_and_control_characters_refused_other_chairs_stored(
    gateway: Gateway, mosquitto: Mosquitto, influxdb: InfluxDB
) -> None:
    box = Peer(mosquitto)
    try:
        a, b = fw.Topics(SITE, "3"), fw.Topics(SITE, "4")
        base = wall_ms() - 60_000
        bad = [
            (a.status, status(100, base, "X").replace('"X"', '"\\ud800"')),        # lone surrogate
            (a.status, status(101, base, "X").replace('"X"', '"1.0\\u0000"')),    # NUL
            (b.status, status(102, base, "X").replace('"X"', '"1.0\\n\\u001b[2J"')),  # newline, ESC
            (a.resp, fw.resp_payload(fw.envelope(103, 4, 1, base, True, False), "c1", "time", False,
                                     "X").replace('"X"', '"\\udfff"')),
        ]
        for seq in range(20):
            box.send(a.vitals, vitals(seq, base + seq * 1000))
            box.send(b.vitals, vitals(seq, base + seq * 1000))
            if seq % 5 == 0:
                box.send(*bad[seq // 5])
        box.send(a.status, status(200, base + 30_000, "0.9.1"))  # a good status still stored
        assert gateway.wait_idle(10)
        # the refusals reach InfluxDB at the next reject flush: wait for them, not a fixed time
        rejects = "SELECT sum(n) FROM rejects WHERE reason = 'bad_string'"
        end = time.monotonic() + 10
        while time.monotonic() < end and (count(influxdb, "SELECT count(seq) FROM vitals") < 40
                                          or count(influxdb, rejects) < len(bad)):
            time.sleep(0.1)
        for chair in ("3", "4"):
            assert count(influxdb, f"SELECT count(seq) FROM vitals WHERE chair = '{chair}'") == 20
        fws: Any = influxdb.query("SELECT fw FROM device", DB)
        assert [row[1] for row in fws["results"][0]["series"][0]["values"]] == ["0.9.1"]
        assert gateway.metrics.get("rejected", reason="bad_string") == len(bad)
        assert count(influxdb, "SELECT sum(n) FROM rejects WHERE reason = 'bad_string'") == len(bad)
    finally:
        box.close()


def test_staff_messages_python_cannot_decode_are_answered_with_a_reason(
    gateway: Gateway, mosquitto: Mosquitto, influxdb: InfluxDB
) -> None:
    chair = "3"
    limits = f"chairside/v1/{SITE}/{chair}/limits/set"
    ack = f"chairside/v1/{SITE}/{chair}/alarms/ack"
    listener = Peer(mosquitto, f"chairside/v1/{SITE}/{chair}/staff/result")
    staff = Peer(mosquitto)
    try:
        def limit(rid: str, value: str, by: str = '"RN Lee"') -> str:
            return f'{{"v":1,"id":"{rid}","param":"spo2_low.limit","value":{value},"by":{by}}}'

        refused: list[tuple[str, str | bytes, str | None, str]] = [
            (limits, b"[" * 1100, None, "too_large"),
            (limits, b'{"v":1,"by":' + b"[" * 1000 + b"}", None, "bad_json"),  # < 1 KB, too deep
            (limits, limit("r-big", "1e400"), "r-big", "bad_field"),
            (limits, limit("r-int", "1" + "0" * 400), "r-int", "bad_field"),
            (limits, limit("r-nan", "NaN"), "r-nan", "bad_json"),
            (limits, limit("r-sur", "88", '"\\ud800"'), "r-sur", "bad_field"),
            (ack, '{"v":1,"id":"r-ctl","alarm":"spo2_low","by":"RN\\u0007Lee"}', "r-ctl", "bad_field"),
            (limits, limit("r-id\\u0000", "88"), None, "bad_field"),
        ]
        for topic, payload, _, _ in refused:
            staff.send(topic, payload)
        staff.send(limits, limit("r-ok", "88"))
        box = fw.Topics(SITE, chair)
        staff.send(box.vitals, vitals(1, wall_ms()))
        end = time.monotonic() + 10
        while time.monotonic() < end and len(listener.results()) < len(refused) + 1:
            time.sleep(0.1)
        answers = listener.results()
        assert len(answers) == len(refused) + 1, answers
        for (_, _, rid, reason), answer in zip(refused, answers, strict=False):
            assert answer["ok"] == 0 and answer["reason"] == reason, answer
            assert answer.get("id") == rid and answer["detail"], answer
        assert answers[-1]["ok"] == 1 and answers[-1]["id"] == "r-ok"
        assert gateway.metrics.get("control_rejected", reason="bad_field") == 5
        assert gateway.metrics.get("processing_errors", stage="process") == 0
        end = time.monotonic() + 10
        while time.monotonic() < end and count(influxdb, "SELECT count(seq) FROM vitals") < 1:
            time.sleep(0.2)
        assert count(influxdb, "SELECT count(seq) FROM vitals") == 1  # still storing
        audits = count(influxdb, "SELECT count(new) FROM limit_audit")
        assert audits == 1  # only the good change was applied
    finally:
        listener.close()
        staff.close()
