"""The pager: alarm events on MQTT → escalation → SMTP/webhook/MQTT.

Stages, in order: decode and parse the alarm event (:mod:`.inbound`), dedup
→ pure escalation step (:mod:`.escalation`) → actions into a durable outbox
→ rate limit (:mod:`.ratelimit`) → delivery with retry and channel fallback
(:mod:`.channels`) → record (delivery log, a record on the pages topic); the
outbox is carried out by :mod:`.delivery`, acknowledgements are taken by
:mod:`.acks`, the command line is :mod:`.command`.

Every inbound MQTT message is decoded and handled inside one guard
(:meth:`Pager._on_message`): anything it raises (bad JSON, nesting too deep,
numbers out of range, a bug) refuses that message with a reason and a
counter, and the message is still acknowledged, so no message can stop the
network loop or poison a restart.  ``/healthz`` answers 503 when the
network loop or the tick thread has stopped or the broker has been away
longer than ``DISCONNECTED_UNHEALTHY_S``.

Threads: the MQTT network loop handles incoming events and acks, the tick
thread (1 s, woken early by new work) advances timers and drains the
outbox, the ack web server has its own threads.  One lock guards the
in-memory state; deliveries run outside it.  Every state change is saved
(atomically) before the MQTT message that caused it is acknowledged, and an
action stays in the outbox until it was carried out, so a crash repeats a
page rather than losing it.

Why this module is longer than ~500 lines: it is only the wiring (MQTT in, the escalation decisions, the
outbox, the ack server, threads and lifecycle); the logic is in the modules
it wires, and the mixins ``delivery.py`` and ``acks.py`` hold the rest.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from chairside.metrics import Metrics

from .acks import Acknowledgements
from .ackserver import AckServer
from .channels import (
    Attempt,
    DeliveryError,
    MqttPageSender,
    Sender,
    SmtpSender,
    WebhookSender,
)
from .delivery import EXHAUSTED_ALARM, UNDELIVERABLE_ALARM, Outbox
from .escalation import (
    ACTIVE_EVENTS,
    EventIn,
    State,
    Thread,
    decide,
    on_event,
)
from .inbound import decode_payload, parse_event
from .policy import Policy
from .ratelimit import RateLimiter
from .state import StateStore

log = logging.getLogger("chairside.pager")

ALARMS_SUB = "chairside/v1/+/+/alarms"
PAGE_ACK_SUB = "chairside/v1/+/pages/ack"
SEEN_MAX = 2000
ATTEMPTS_MAX = 1000
RESOLVED_RETAIN_S = 3600.0
DISCONNECTED_UNHEALTHY_S = 60.0


def _describe_metrics(m: Metrics) -> None:
    """The pager's Prometheus metrics (``GET /metrics`` on the ack server)."""
    m.describe("alarm_events", "counter", "alarm events received, by event")
    m.describe("rejected", "counter", "MQTT messages refused, by reason")
    m.describe("duplicate_events", "counter", "alarm events seen before (same id), ignored")
    m.describe("pages_sent", "counter",
               "messages delivered to a person, by action (page, acknowledge, resolve, summary) and channel")
    m.describe("pages_failed", "counter", "messages that no channel could deliver, by action")
    m.describe("pages_suppressed", "counter", "pages held back by the per-person rate limit")
    m.describe("delivery_attempts", "counter", "delivery attempts, by channel and result")
    m.describe("acks", "counter", "page threads acknowledged, by way (link, mqtt, ...)")
    m.describe("errors", "counter", "unexpected errors, by stage (tick, handler, action)")
    m.describe("page_threads", "gauge", "page threads held, by state")
    m.describe("outbox_depth", "gauge", "actions waiting to be carried out")
    m.describe("page_acks", "counter",
               "page acknowledgements received (link or MQTT), by result "
               "(acknowledged, already, unmatched, refused)")
    m.describe("threads_exhausted", "counter", "threads that ran through every round of the rota")
    m.describe("exhausted_threads", "gauge", "threads exhausted and still unacknowledged")
    m.describe("unreachable_people", "gauge", "people whose last page reached no channel")
    m.describe("technical_alarm", "gauge", "the pager's technical alarms (1 = raised), by alarm")



class Pager(Acknowledgements, Outbox):
    """The pager service.  ``start()`` connects and serves, ``stop()`` ends.

    The ``handle_*`` and ``tick`` methods are thread-safe and also serve
    tests and the drill command: they take ``now`` (epoch seconds).
    """

    def __init__(
        self,
        policy: Policy,
        *,
        secret: bytes,
        state_path: str | Path,
        broker_host: str = "127.0.0.1",
        broker_port: int = 1883,
        client_id: str = "chairside-pager",
        ack_listen: str | None = None,
        ack_port: int | None = None,
        base_url: str | None = None,
        smtp_password: str = "",
        clock: Callable[[], float] = time.time,
        tick_s: float = 1.0,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("ack secret must be at least 16 bytes")
        self.policy = policy
        self.secret = secret
        self.clock = clock
        self.tick_s = tick_s
        self.broker = (broker_host, broker_port)
        self.ack_listen = ack_listen or policy.ack.listen
        self.ack_port_cfg = policy.ack.port if ack_port is None else ack_port
        self.base_url = (base_url or policy.ack.base_url).rstrip("/")
        self.store = StateStore(state_path)
        self.deliveries_path = Path(str(state_path) + ".deliveries.jsonl")
        self.metrics = Metrics(prefix="chairside_pager_")
        _describe_metrics(self.metrics)
        self.attempts: deque[Attempt] = deque(maxlen=ATTEMPTS_MAX)

        self._lock = threading.RLock()
        self._drain_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._tick_thread: threading.Thread | None = None
        self._mqtt_thread: threading.Thread | None = None
        self._disconnected_since: float | None = None

        saved = self.store.load()
        self._threads: dict[str, Thread] = {
            k: Thread.from_json(v) for k, v in saved["threads"].items()
        }
        self._seq: dict[str, int] = {k: int(v) for k, v in saved["seq"].items()}
        self._outbox: list[dict[str, Any]] = list(saved["outbox"])
        self._seen: deque[str] = deque(saved["seen"], maxlen=SEEN_MAX)
        self._next_id = int(saved["next_id"])
        self.ratelimit = RateLimiter.from_json(policy.rate_limit, saved["ratelimit"])
        tech = saved.get("tech") or {}
        # site -> {person: why} whose last page reached no channel; site -> exhausted keys
        self._unreachable: dict[str, dict[str, str]] = {
            str(k): dict(v) for k, v in dict(tech.get("unreachable", {})).items() if v
        }
        self._exhausted: dict[str, list[str]] = {
            str(k): list(v) for k, v in dict(tech.get("exhausted", {})).items() if v
        }
        self._update_gauges()
        if self._threads or self._outbox:
            log.info(
                "restored %d page thread(s), %d pending action(s) from %s",
                len(self._threads),
                len(self._outbox),
                self.store.path,
            )

        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        # second line of defence: the guard in _on_message already catches everything
        self.client.suppress_exceptions = True
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        """set when the broker granted the alarm and page-ack subscriptions (SUBACK)"""

        self.senders: dict[str, Sender] = {
            "webhook": WebhookSender(policy.webhook_timeout_s),
            "mqtt": MqttPageSender(self._publish),
        }
        if policy.smtp is not None:
            smtp = SmtpSender(policy.smtp, smtp_password)
            self.senders["email"] = smtp
            self.senders["sms"] = smtp

        self.ack_server: AckServer | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def ack_port(self) -> int:
        return self.ack_server.port if self.ack_server is not None else self.ack_port_cfg

    def start(self) -> None:
        self.ack_server = AckServer(
            self.ack_listen, self.ack_port_cfg, self.check_token, self.ack_token,
            self.metrics.render, self.health,
        )  # fmt: skip
        self.ack_server.start()
        self._stop.clear()
        self._disconnected_since = self.clock()
        self.client.connect_async(self.broker[0], self.broker[1], keepalive=30)
        self._mqtt_thread = threading.Thread(target=self._run_mqtt, name="pager-mqtt", daemon=True)
        self._mqtt_thread.start()
        self._tick_thread = threading.Thread(target=self._run_ticks, name="pager-tick", daemon=True)
        self._tick_thread.start()
        log.info(
            "pager started: broker %s:%d, ack page on %s:%d",
            self.broker[0],
            self.broker[1],
            self.ack_listen,
            self.ack_port,
        )

    def wait_connected(self, timeout_s: float) -> bool:
        return self.connected.wait(timeout_s)

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Connected and the subscriptions granted: from now on alarms reach the pager."""
        return self.subscribed.wait(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._tick_thread is not None:
            self._tick_thread.join(timeout=30)
            self._tick_thread = None
        if self.ack_server is not None:
            self.ack_server.stop()
            self.ack_server = None
        self.client.disconnect()
        if self._mqtt_thread is not None:
            self._mqtt_thread.join(timeout=10)
            self._mqtt_thread = None
        with self._lock:
            self._save()

    def _run_mqtt(self) -> None:
        """The MQTT network loop (reconnects by itself).  If it ever ends while
        the pager runs, ``/healthz`` says so."""
        try:
            self.client.loop_forever(retry_first_connection=True)
        except Exception:
            self.metrics.inc("errors", stage="mqtt_loop")
            log.exception("MQTT network loop failed")
        if not self._stop.is_set():
            log.error("MQTT network loop ended: the pager receives no alarms")

    def health(self) -> tuple[bool, str]:
        """For ``GET /healthz``: False (503) with the reason when the pager
        cannot do its job: a network loop or tick thread that ended, or a
        broker gone longer than ``DISCONNECTED_UNHEALTHY_S``."""
        problems = []
        if self._mqtt_thread is None or not self._mqtt_thread.is_alive():
            problems.append("MQTT network loop not running")
        if self._tick_thread is None or not self._tick_thread.is_alive():
            problems.append("tick thread not running")
        since = self._disconnected_since
        if since is not None and self.clock() - since > DISCONNECTED_UNHEALTHY_S:
            problems.append(f"broker disconnected for {self.clock() - since:.0f} s")
        return (not problems, "; ".join(problems) or "ok")

    def _run_ticks(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop must survive any single failure
                self.metrics.inc("errors", stage="tick")
                log.exception("pager tick failed")
            self._wake.wait(self.tick_s)
            self._wake.clear()

    # ------------------------------------------------------------------ MQTT

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused connection: %s", reason_code)
            return
        client.subscribe([(ALARMS_SUB, 1), (PAGE_ACK_SUB, 1)])
        self._disconnected_since = None
        self.connected.set()
        log.info("connected to broker; subscribing to alarms and page acks")

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("broker refused the alarm/page-ack subscriptions: %s", ", ".join(refused))
            return
        self.subscribed.set()
        log.info("subscribed to alarms and page acks")

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if self._disconnected_since is None:
            self._disconnected_since = self.clock()
        if not self._stop.is_set():
            log.warning("disconnected from broker: %s", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """The one guard around every inbound message: whatever decoding or
        handling raises is refused with a reason and counted, and returning
        normally lets paho acknowledge the message."""
        try:
            self.handle_message(msg.topic, bytes(msg.payload), self.clock())
        except Exception as exc:  # RecursionError, OverflowError, bugs
            self.metrics.inc("errors", stage="handler")
            self._reject(f"handler error ({type(exc).__name__})", msg.topic)
            log.exception("error handling %s", msg.topic)

    def handle_message(self, topic: str, raw: bytes, now: float) -> str:
        """Decode and apply one inbound message; returns what was decided."""
        is_ack = topic.endswith("/pages/ack")
        doc = decode_payload(raw)
        if isinstance(doc, str):
            if is_ack:
                return self._refuse_ack(topic.split("/")[2], doc, None)
            return self._reject(doc, topic)
        if is_ack:
            _ok, why = self.handle_page_ack(topic.split("/")[2], doc, now)
            log.info("page ack on %s: %s", topic, why)
            return why
        return self.handle_alarm(topic, doc, now)

    def _reject(self, reason: str, topic: str) -> str:
        self.metrics.inc("rejected", reason=reason)
        log.warning("rejected message on %s: %s", topic, reason)
        return reason

    def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        info = self.client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise DeliveryError(f"mqtt publish to {topic}: {mqtt.error_string(info.rc)}")

    # ------------------------------------------------------------ handlers

    def handle_alarm(self, topic: str, payload: Mapping[str, Any], now: float) -> str:
        """Apply one alarm event; returns the decision's reason."""
        parsed = parse_event(topic, payload)
        if isinstance(parsed, str):
            return self._reject(parsed, topic)
        event_id = str(payload["id"])
        with self._lock:
            if event_id in self._seen:
                self.metrics.inc("duplicate_events")
                return "duplicate event id"
            self._seen.append(event_id)
            target = self._route(parsed)
            thread = self._threads.get(target)
            merge: list[Thread] = []
            if parsed.event in ACTIVE_EVENTS:
                for name in parsed.inhibits:
                    other = self._threads.get(f"{parsed.site}/{parsed.chair}/{name}")
                    if other is not None and not other.closed and other.key != target:
                        merge.append(other)
            if parsed.inhibited_by is not None and target != parsed.key:
                own = self._threads.get(parsed.key)
                if own is not None and not own.closed and parsed.event in ACTIVE_EVENTS:
                    merge.append(own)  # it was paged before the engine said it is inhibited
            next_n = self._seq.get(target, 0) + 1
            step = on_event(thread, parsed, self.policy, now, next_n, merge)
            if step.thread is not None and step.thread.n == next_n:
                self._seq[target] = next_n
            self._apply(step, now)
            self._save()
        self.metrics.inc("alarm_events", event=parsed.event)
        log.info("%s %s: %s", parsed.key, parsed.event, step.reason)
        self._wake.set()
        return step.reason

    def _route(self, event: EventIn) -> str:
        """The key of the thread an event belongs to: the thread of the alarm
        that inhibits it (``inhibited_by``, or an earlier merge) while that
        thread is open; else its own.  A clear or acknowledgement of an alarm
        that still has its own open thread goes to that thread.  Call with
        the lock held."""
        own = self._threads.get(event.key)
        if own is not None and not own.closed and event.event not in ACTIVE_EVENTS:
            return event.key
        if event.inhibited_by is not None:
            host = self._threads.get(f"{event.site}/{event.chair}/{event.inhibited_by}")
            if host is not None and host.state is State.MERGED and host.merged_into:
                host = self._threads.get(host.merged_into)
            if host is not None and not host.closed:
                return host.key
        if own is not None and own.state is State.MERGED and own.merged_into:
            host = self._threads.get(own.merged_into)
            if host is not None and not host.closed:
                return host.key
        return event.key

    def tick(self, now: float | None = None) -> None:
        """Advance every thread to ``now`` and carry out pending actions."""
        now = self.clock() if now is None else now
        with self._lock:
            changed = False
            for key, thread in list(self._threads.items()):
                step = decide(thread, self.policy, now)
                if step.thread != thread or step.actions:
                    self._apply(step, now)
                    changed = True
                    log.info("%s: %s", key, step.reason)
            for key, thread in list(self._threads.items()):
                if thread.state is State.MERGED:  # ends with the thread it joined
                    host = self._threads.get(thread.merged_into or "")
                    if host is None or host.state is State.RESOLVED:
                        self._threads[key] = replace(
                            thread, state=State.RESOLVED, resolved_at=now,
                            reason=f"the thread it was merged into ({thread.merged_into}) ended",
                        )  # fmt: skip
                        changed = True
            for summary in self.ratelimit.summaries_due(now):
                self._enqueue(
                    {
                        "kind": "summary",
                        "key": f"rate-limit/{summary.person}",
                        "to": [summary.person],
                        "count": summary.count,
                        "keys": list(summary.keys),
                    },
                    now,
                )
                changed = True
            referenced = {item["key"] for item in self._outbox}
            for key, thread in list(self._threads.items()):
                if (
                    thread.state is State.RESOLVED
                    and thread.resolved_at is not None
                    and now - thread.resolved_at > RESOLVED_RETAIN_S
                    and key not in referenced
                ):
                    del self._threads[key]
                    changed = True
            tech = self._reconcile_exhausted(now)
            if changed or tech:
                self._save()
        for event in tech:
            self._publish_technical(event)
        self._drain()

    def threads(self) -> dict[str, Thread]:
        with self._lock:
            return dict(self._threads)

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(item) for item in self._outbox]

    # -------------------------------------------------------- state/outbox

    def _update_gauges(self) -> None:
        by_state = {state.value: 0 for state in State}
        for thread in self._threads.values():
            by_state[thread.state.value] += 1
        for state, n in by_state.items():
            self.metrics.set("page_threads", n, state=state)
        self.metrics.set("outbox_depth", len(self._outbox))
        self.metrics.set("exhausted_threads", sum(len(v) for v in self._exhausted.values()))
        self.metrics.set("unreachable_people", len(
            {p for people in self._unreachable.values() for p in people}))  # fmt: skip
        self.metrics.set("technical_alarm", 1 if self._unreachable else 0, alarm=UNDELIVERABLE_ALARM)
        self.metrics.set("technical_alarm", 1 if self._exhausted else 0, alarm=EXHAUSTED_ALARM)

    def _save(self) -> None:
        self._update_gauges()
        self.store.save(
            {
                "v": 1,
                "threads": {k: t.to_json() for k, t in self._threads.items()},
                "seq": self._seq,
                "outbox": self._outbox,
                "seen": list(self._seen),
                "ratelimit": self.ratelimit.to_json(),
                "next_id": self._next_id,
                "tech": {"unreachable": self._unreachable, "exhausted": self._exhausted},
            }
        )


__all__ = ["Pager"]
