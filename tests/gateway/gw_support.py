"""Stand-ins for chair boxes and listeners on a real Mosquitto, and InfluxQL reads, for the gateway tests."""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from chairside.sim.services import InfluxDB, Mosquitto
from csfw import contract as fw

DB = "chairside_test"
_ids = itertools.count()


def query(influx: InfluxDB, q: str) -> list[dict[str, Any]]:
    """Rows of the first series as dicts (empty list if none)."""
    result: Any = influx.query(q, DB)
    series = result["results"][0].get("series", [])
    if not series:
        return []
    cols = series[0]["columns"]
    return [dict(zip(cols, row, strict=True)) for row in series[0]["values"]]


class Box:
    """A publisher standing in for chair boxes (QoS 1, waits for each PUBACK)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"box-{next(_ids)}"
        )
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def send(self, topic: str, payload: str | bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=5)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Listener:
    """Collects JSON messages on a topic filter."""

    def __init__(self, broker: Mosquitto, topic_filter: str) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"ear-{next(_ids)}"
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.client.subscribe(topic_filter, qos=1)
        assert subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, json.loads(msg.payload)))

    def on(self, topic: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for t, m in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def vitals(seq: int, t: int, spo2: int | None = 97, pr: int = 72, hist: bool = False) -> str:
    env = fw.envelope(seq, 4, 60_000 + seq * 1000, t, True, hist)
    return fw.vitals_payload(env, spo2, pr, 6, "ok")


def next_id() -> int:
    return next(_ids)


def wait_rows(influx: InfluxDB, q: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The rows of ``q`` once there are at least ``count`` (the gateway stores
    asynchronously).  On timeout it raises, naming the rows it had and the last
    error (never partial rows)."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            rows = query(influx, q)
            last_error = None
        except OSError as exc:
            rows, last_error = [], exc
        if len(rows) >= count:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"{q}: {len(rows)} row(s) after {timeout:g} s, wanted at least {count}"
                                 + (f"; last error: {last_error!r}" if last_error is not None else "")) from last_error
        time.sleep(0.05)


def health(port: int) -> tuple[int, dict[str, Any]]:
    """The gateway's ``/health``: HTTP status and body (503 included)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    """``pred()``'s first truthy value, polled every 50 ms until ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
