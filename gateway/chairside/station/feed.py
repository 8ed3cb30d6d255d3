"""The station's MQTT side: what it hears for the board, and the staff messages it sends.

One paho connection (its own network thread).  Heard, for one site:
``+/vitals``, ``+/nibp``, ``+/status`` (box messages, checked with the gateway's
own validator), ``+/alarms/active`` (the engine's retained active sets),
``+/alarms`` (events: who acknowledged) and ``+/staff/result`` (the gateway's
answers).  A message that does not decode is counted by reason in
``rejected{reason}`` and logged, never raised.

Sent: the gateway's existing staff messages (``alarm_ack``, ``chair_standby``,
``limits_set``, ``chair_session``; contract.json), each with a request ``id``; :meth:`Feed.request`
returns a future completed with the gateway's ``staff/result`` answer for that
id.  At most :data:`MAX_PENDING` requests wait at once (more are refused).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from chairside import contract, mqtt_auth
from chairside.ingest.validate import Accepted, validate
from chairside.jsondepth import too_deep
from chairside.metrics import Metrics

from .board import Board

log = logging.getLogger("chairside.station.feed")

MAX_PENDING: Final = 256
STAFF_KINDS: Final = ("alarm_ack", "chair_standby", "limits_set", "chair_session")
_TAILS: Final = {"alarms/active": "alarms_active", "alarms": "alarm_event", "staff/result": "control_result"}


class FeedBusy(RuntimeError):
    """Too many staff requests wait for the gateway's answer."""


class Feed:
    """The board's MQTT input and the staff messages' output."""

    def __init__(
        self,
        board: Board,
        clock: Callable[[], int],
        on_change: Callable[[str], None],
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        credentials: Path | None = None,
        ca_file: Path | None = None,
        client_id: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.board = board
        self.clock = clock
        self.on_change = on_change
        self.host, self.port = host, port
        self.metrics = metrics or Metrics(prefix="chairside_station_")
        self.lock = threading.Lock()  # guards board
        self._pending: dict[str, Future[dict[str, Any]]] = {}
        self._subscribed = threading.Event()
        # the staff file's own `station` login when provisioned: the shipped broker
        # takes the account name as client id, so sharing the staff account let
        # every `chairside staff` command take the station's connection over
        login = "station" if credentials is not None and mqtt_auth.has_login(credentials, "station") else None
        cid = client_id or mqtt_auth.client_id(credentials, f"chairside-station-{uuid.uuid4().hex[:8]}", login)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid)
        mqtt_auth.apply(self.client, credentials, ca_file, login)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_disconnect = self._on_disconnect
        self.client.reconnect_delay_set(1, 30)
        root = contract.topic_root()
        site = board.site
        self.topics = [f"{root}/{site}/+/{tail}" for tail in
                       ("vitals", "nibp", "status", "alarms", "alarms/active", "staff/result")]

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def wait_subscribed(self, timeout_s: float) -> bool:
        return self._subscribed.wait(timeout_s)

    @property
    def connected(self) -> bool:
        """Subscribed and still connected: the board is fed."""
        return self._subscribed.is_set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if self._subscribed.is_set():
            log.warning("station lost the broker (%s); reconnecting", reason)
        self._subscribed.clear()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        with self.lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.cancel()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the station: %s", reason)
            return
        client.subscribe([(t, 1) for t in self.topics])

    # ---- input ---------------------------------------------------------------------

    def _reject(self, reason: str, topic: str, detail: str = "") -> None:
        self.metrics.inc("rejected", reason=reason)
        log.debug("ignored %s on %.120s: %s", reason, topic, detail)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.handle(msg.topic, bytes(msg.payload))
        except Exception:  # a bug here must not stop the network thread
            self.metrics.inc("processing_errors")
            log.exception("station could not handle a message on %.120s", msg.topic)

    def handle(self, topic: str, payload: bytes) -> None:
        """One message heard on MQTT (network thread)."""
        now = self.clock()
        parts = topic.split("/")
        root = len(contract.topic_root().split("/"))
        if len(parts) < root + 3 or parts[root] != self.board.site:
            return self._reject("bad_topic", topic)
        chair, tail = parts[root + 1], "/".join(parts[root + 2:])
        kind = _TAILS.get(tail)
        if kind is None:
            checked = validate(topic, payload)
            if not isinstance(checked, Accepted):
                return self._reject(checked.reason, topic, checked.detail)
            with self.lock:
                changed = self.board.apply(checked.chair, checked.kind, checked.fields, now,
                                           last_will=checked.last_will)
            if changed:
                self.on_change(checked.chair)
            return None
        if not contract.id_regex().fullmatch(chair):
            return self._reject("bad_topic", topic)
        try:
            fields = json.loads(payload) if len(payload) <= 64 * 1024 and not too_deep(payload) else None
        except (ValueError, RecursionError):
            fields = None
        if not isinstance(fields, dict):
            return self._reject("bad_json", topic)
        if kind == "control_result":
            return self._answer(fields)
        with self.lock:
            changed = self.board.apply(chair, kind, fields, now)
        if changed:
            self.on_change(chair)
        return None

    def _answer(self, fields: dict[str, Any]) -> None:
        request_id = fields.get("id")
        if not isinstance(request_id, str):
            return
        with self.lock:
            future = self._pending.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(fields)

    # ---- output --------------------------------------------------------------------

    def request(self, kind: str, chair: str, message: dict[str, Any]) -> Future[dict[str, Any]]:
        """Publish a staff message (``id`` added) and return the future of its answer."""
        if kind not in STAFF_KINDS:
            raise ValueError(f"not a staff message: {kind}")
        request_id = uuid.uuid4().hex[:16]
        future: Future[dict[str, Any]] = Future()
        with self.lock:
            if len(self._pending) >= MAX_PENDING:
                self.metrics.inc("requests_refused", reason="busy")
                raise FeedBusy(f"{len(self._pending)} requests already wait for the gateway")
            self._pending[request_id] = future
        body = dict(message, v=1, id=request_id)
        info = self.client.publish(contract.topic(kind, self.board.site, chair), json.dumps(body),
                                   qos=contract.topic_qos(kind))
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            with self.lock:
                self._pending.pop(request_id, None)
            future.set_exception(ConnectionError(f"broker not reachable ({mqtt.error_string(info.rc)})"))
        return future

    def forget(self, future: Future[dict[str, Any]]) -> None:
        """Drop a request whose answer no one waits for any more (timed out)."""
        with self.lock:
            for key, value in list(self._pending.items()):
                if value is future:
                    del self._pending[key]
