"""What ``chairside drill`` (:mod:`chairside.staff.drill`) runs beside the
chain it rehearses: its own MQTT client (:class:`Watch`: sends commands,
records what it sees on the drill box's topics and the site's pages topic)
and the simulated box's stepping thread (:class:`BoxRunner`).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from chairside import contract, mqtt_auth

log = logging.getLogger("chairside.staff.drill")  # the drill's log, as before this module was split off

STEP_MS: Final = 100


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall clock, milliseconds since 1970-01-01 UTC."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


Payload = Mapping[str, Any]


class WatchConfig(Protocol):
    """What :class:`Watch` needs of the drill's settings (``DrillConfig``)."""

    @property
    def site(self) -> str: ...

    @property
    def chair(self) -> str: ...

    @property
    def drill_chair(self) -> str: ...

    @property
    def mqtt_host(self) -> str: ...

    @property
    def mqtt_port(self) -> int: ...

    @property
    def connect_timeout_s(self) -> float: ...

    @property
    def mqtt_credentials(self) -> Path | None: ...

    @property
    def mqtt_ca(self) -> Path | None: ...


@dataclass(frozen=True, slots=True)
class Seen:
    topic: str
    payload: Payload
    rx_ms: int


class Watch:
    """The drill's own MQTT client: sends commands, records what it sees.

    On the shipped broker it logs in with the drill account's main login
    (``config.mqtt_credentials``, from ``chairside provision --service
    drill``; the client id is then the account name) and, with
    ``config.mqtt_ca``, over TLS.  :attr:`refused` says why the broker would
    not have it (CONNACK refused, a subscription denied by the ACL)."""

    def __init__(self, config: WatchConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.inbox: queue.Queue[Seen] = queue.Queue(maxsize=100_000)
        self.seen: list[Seen] = []
        self._subscribed = threading.Event()
        self.refused: str | None = None
        root = contract.topic_root()
        self.box_sub = f"{root}/{config.site}/{config.drill_chair}/#"
        self.pages_topic = f"{root}/{config.site}/pages"
        default_id = f"chairside-drill-{config.site}-{config.chair}-{time.monotonic_ns() % 10**9}"
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=mqtt_auth.client_id(config.mqtt_credentials, default_id),
            clean_session=True,
        )
        mqtt_auth.apply(self.client, config.mqtt_credentials, config.mqtt_ca)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        if rc.is_failure:
            log.error("broker refused the drill client: %s", rc)
            self.refused = f"the broker refused the drill's login ({rc})"
            self._subscribed.set()
            return
        client.subscribe([(self.box_sub, 1), (self.pages_topic, 1)])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: list[ReasonCode],
                      props: Any) -> None:
        if any(code.is_failure for code in codes):
            self.refused = (f"the broker refused the drill's subscriptions ({self.box_sub}, "
                            f"{self.pages_topic}): not in the drill account's ACL")
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        rx_ms = self.clock.now_ms()
        if msg.retain:
            return  # an old retained status/active set is not part of this drill
        try:
            payload = json.loads(msg.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        if isinstance(payload, dict):
            try:
                self.inbox.put_nowait(Seen(msg.topic, payload, rx_ms))
            except queue.Full:
                log.error("drill inbox full: dropped a message on %s", msg.topic)

    def start(self) -> bool:
        """Connect and subscribe; False when that failed within the connect
        timeout (:attr:`refused` then says why, if the broker said)."""
        self.client.connect_async(self.config.mqtt_host, self.config.mqtt_port, keepalive=30)
        self.client.loop_start()
        return self._subscribed.wait(self.config.connect_timeout_s) and self.refused is None

    def publish(self, topic: str, payload: Payload, timeout_s: float = 5.0) -> bool:
        info = self.client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1)
        try:
            info.wait_for_publish(timeout=timeout_s)
        except (RuntimeError, ValueError) as exc:
            log.error("publish to %s failed: %s", topic, exc)
            return False
        return info.is_published()

    def wait_for(self, predicate: Callable[[Seen], bool], timeout_s: float) -> Seen | None:
        """The first message (already seen or arriving before the deadline) matching."""
        for item in self.seen:
            if predicate(item):
                return item
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                item = self.inbox.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            self.seen.append(item)
            if predicate(item):
                return item

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class BoxRunner:
    """Steps one SimBox paced against the wall clock (``speed`` × real time).

    Work for the box (cut its link, disconnect) is queued and run by the
    stepping thread between steps, so the box is only ever touched by it.
    """

    def __init__(self, box: Any, speed: float) -> None:
        self.box = box
        self.speed = speed
        self.errors = 0
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="drill-box", daemon=True)
        self.sim_ms = 0

    def start(self) -> None:
        self._thread.start()

    def run_in_box_thread(self, job: Callable[[], None], timeout_s: float = 5.0) -> bool:
        done = threading.Event()

        def wrapped() -> None:
            try:
                job()
            finally:
                done.set()

        self._jobs.put(wrapped)
        return done.wait(timeout_s)

    def _loop(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            while True:
                try:
                    self._jobs.get_nowait()()
                except queue.Empty:
                    break
            due_ms = (time.monotonic() - start) * 1000 * self.speed
            if self.sim_ms + STEP_MS <= due_ms:
                try:
                    self.box.step(STEP_MS)
                except Exception:  # keep the drill running; the summary says what came
                    self.errors += 1
                    log.exception("drill box failed a step")
                self.sim_ms += STEP_MS
            else:
                self._stop.wait(STEP_MS / 1000 / self.speed / 4)

    def stop(self, *, graceful: bool, timeout_s: float = 10.0) -> None:
        """Stop stepping; ``graceful`` sends MQTT DISCONNECT (no last will)."""
        if graceful and self._thread.is_alive():
            self.run_in_box_thread(self.box.app.mqtt.disconnect, timeout_s)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if not graceful:
            self.box.close()

