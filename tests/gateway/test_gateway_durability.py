"""The gateway's durability against a real Mosquitto and a real influxd:
InfluxDB outages go to the disk spool and are replayed once, a full spool
drops (counted) and raises a technical alarm, malformed points go to the
dead-letter file without blocking the rest, /health tells the truth."""

from __future__ import annotations

import itertools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from instant_engine import instant_engine
from paho.mqtt.enums import CallbackAPIVersion

from chairside.config import GatewayConfig
from chairside.service import SPOOL_FULL_ALARM, Gateway
from chairside.sim.services import InfluxDB, Mosquitto, free_port
from csfw import contract as fw

pytestmark = pytest.mark.services

DB = "chairside_durable"
SITE = "clinic9"
_ids = itertools.count()


def rows(influx: InfluxDB, q: str) -> list[dict[str, Any]]:
    result: Any = influx.query(q, DB)
    out: list[dict[str, Any]] = []
    for res in result["results"]:
        for series in res.get("series", []) or []:
            out.extend(dict(zip(series["columns"], v, strict=True)) for v in series["values"])
    return out


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_until(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


class Publisher:
    """Plays the boxes: QoS 1 publishes, each waited for (PUBACK)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"pub-{next(_ids)}")
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, json.loads(m.payload)))
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.client.subscribe("chairside/v1/+/+/alarms", qos=1)

    def send(self, topic: str, payload: str) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=5)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_gateway(mosquitto: Mosquitto, influxdb: InfluxDB, state: Path, **overrides: Any) -> Gateway:
    settings: dict[str, Any] = {
        "mqtt_port": mosquitto.port,
        "influx_url": influxdb.url,
        "database": DB,
        "state_dir": state,
        "client_id": f"gw-durable-{next(_ids)}",
        "retry_min_s": 0.1,
        "retry_max_s": 0.5,
        "influx_timeout_s": 1.0,
        "batch_max": 50,
        "metrics_port": free_port(),
        "probe_interval_s": 0.2,
        "site": SITE,
    }
    settings.update(overrides)
    gw = Gateway(GatewayConfig(**settings), instant_engine())
    gw.start()
    assert gw.wait_subscribed(10)
    return gw


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[Publisher]:
    pub = Publisher(mosquitto)
    yield pub
    pub.close()


def vitals(seq: int, t: int) -> str:
    env = fw.envelope(seq, 3, 10_000 + seq * 1000, t, True, True)
    return fw.vitals_payload(env, 97, 70 + seq % 5, 6, "ok")


def test_influx_down_for_five_minutes_of_data_then_everything_lands_once(
    mosquitto: Mosquitto, influxdb: InfluxDB, publisher: Publisher, tmp_path: Path
) -> None:
    gw = make_gateway(mosquitto, influxdb, tmp_path / "state")
    health = f"http://127.0.0.1:{gw.config.metrics_port}/health"
    try:
        topics = fw.Topics(SITE, "7")
        base = time.time_ns() // 1_000_000 - 400_000
        publisher.send(topics.vitals, vitals(0, base))
        assert wait_until(lambda: gw.metrics.get("points_written") >= 1, 10)
        assert wait_until(lambda: get(health)[0] == 200, 5), get(health)
        influxdb.kill()
        for seq in range(1, 301):  # five minutes of one-per-second readings
            publisher.send(topics.vitals, vitals(seq, base + seq * 1000))
        # all 301 at the gateway (the broker may still be delivering the last ones), then durable
        assert wait_until(lambda: gw.metrics.total("messages_in") >= 301, 10)
        assert gw.wait_durable(10)
        assert gw.spool.pending_points >= 300
        status, body = get(health)
        assert status == 503
        detail = json.loads(body)
        assert detail["influx_reachable"] is False and detail["spool_depth"] >= 300
        assert detail["mqtt_connected"] is True
        metrics = get(f"http://127.0.0.1:{gw.config.metrics_port}/metrics")[1]
        assert "chairside_gateway_spool_depth" in metrics and "chairside_gateway_write_seconds_bucket" in metrics
        influxdb.start()
        assert gw.wait_idle(20)
        assert wait_until(lambda: get(health)[0] == 200, 5), get(health)
        stored = rows(influxdb, "SELECT seq FROM vitals WHERE chair = '7'")
        assert [r["seq"] for r in stored] == list(range(301))
        assert gw.metrics.total("spool_dropped") == 0
        assert gw.metrics.get("points_replayed") >= 300
    finally:
        gw.stop()


def test_gateway_restart_replays_the_spool_left_on_disk(
    mosquitto: Mosquitto, influxdb: InfluxDB, publisher: Publisher, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    gw = make_gateway(mosquitto, influxdb, state, client_id="gw-restart")
    topics = fw.Topics(SITE, "8")
    base = time.time_ns() // 1_000_000 - 100_000
    influxdb.kill()
    for seq in range(40):
        publisher.send(topics.vitals, vitals(seq, base + seq * 1000))
    assert gw.wait_durable(10)
    gw.stop()  # InfluxDB still down: the points stay in the spool
    influxdb.start()
    again = make_gateway(mosquitto, influxdb, state, client_id="gw-restart")
    try:
        assert again.wait_idle(20)
        stored = rows(influxdb, "SELECT seq FROM vitals WHERE chair = '8'")
        assert [r["seq"] for r in stored] == list(range(40))
    finally:
        again.stop()


def test_full_spool_drops_counted_and_raises_a_technical_alarm(
    mosquitto: Mosquitto, influxdb: InfluxDB, publisher: Publisher, tmp_path: Path
) -> None:
    gw = make_gateway(mosquitto, influxdb, tmp_path / "state", spool_max_bytes=3000, batch_max=5)
    try:
        topics = fw.Topics(SITE, "3")
        base = time.time_ns() // 1_000_000 - 100_000
        influxdb.kill()
        for seq in range(60):
            publisher.send(topics.vitals, vitals(seq, base + seq * 1000))
        assert wait_until(lambda: gw.metrics.total("messages_in") >= 60, 10)
        assert gw.wait_durable(10)
        assert gw.spool.total_bytes <= 3000
        dropped = gw.metrics.total("spool_dropped")
        assert dropped > 0 and dropped == gw.spool.dropped_points
        assert wait_until(
            lambda: any(p["alarm"] == SPOOL_FULL_ALARM for _, p in publisher.messages), 5
        )
        event = next(p for _, p in publisher.messages if p["alarm"] == SPOOL_FULL_ALARM)
        assert event["kind"] == "technical" and event["event"] == "raised" and event["site"] == SITE
        status, body = get(f"http://127.0.0.1:{gw.config.metrics_port}/health")
        assert status == 503 and json.loads(body)["spool_full"] is True
        influxdb.start()
        assert gw.wait_idle(20)
        stored = rows(influxdb, "SELECT seq FROM vitals WHERE chair = '3'")
        seqs = [r["seq"] for r in stored]
        # what the spool kept, oldest first, nothing twice; every other point counted
        # (the dropped count may include the alarm event's own point)
        assert seqs and len(seqs) == len(set(seqs)) and seqs == sorted(seqs)
        dropped = gw.metrics.total("spool_dropped")
        assert 60 <= len(seqs) + dropped <= 61
        assert wait_until(
            lambda: any(
                p["alarm"] == SPOOL_FULL_ALARM and p["event"] == "cleared" for _, p in publisher.messages
            ),
            5,
        )
    finally:
        gw.stop()


def test_malformed_point_is_dead_lettered_and_the_rest_stored(
    mosquitto: Mosquitto, influxdb: InfluxDB, publisher: Publisher, tmp_path: Path
) -> None:
    gw = make_gateway(mosquitto, influxdb, tmp_path / "state", batch_max=100, batch_interval_s=1.0)
    try:
        topics = fw.Topics(SITE, "4")
        base = time.time_ns() // 1_000_000 - 100_000
        # schema drift: the shard already holds nibp.err as a string
        poisoned = f'nibp,chair=other,site={SITE} err="E9" {base - 5_000}'
        gw.influx.ensure_database()
        gw.influx.write([poisoned])
        for seq in range(20):
            ok = seq != 11
            env = fw.envelope(seq, 2, 1000 * seq, base + seq * 1000, True, False)
            payload = fw.nibp_payload(env, ok, 120, 80, 93, 70, None if ok else 3)
            publisher.send(topics.nibp, payload)
        assert gw.wait_idle(10)
        stored = rows(influxdb, "SELECT seq FROM nibp WHERE chair = '4'")
        assert [r["seq"] for r in stored] == [s for s in range(20) if s != 11]
        letters = gw.deadletters.read()
        assert len(letters) == 1
        assert "seq=11i" in str(letters[0]["line"]) and "conflict" in str(letters[0]["reason"])
        assert gw.metrics.get("deadletters") == 1
    finally:
        gw.stop()
