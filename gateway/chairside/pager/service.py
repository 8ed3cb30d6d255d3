"""``chairside pager``: alarm events on MQTT → escalation → SMTP/webhook/MQTT.

Stages, in order: parse and dedup the alarm event → pure escalation step
(:mod:`.escalation`) → actions into a durable outbox → rate limit
(:mod:`.ratelimit`) → delivery with retry and channel fallback
(:mod:`.channels`) → record (delivery log, a record on the pages topic).

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
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from chairside import contract, mqtt_auth
from chairside.metrics import Metrics
from chairside.model import AlarmEvent

from .ackserver import AckServer
from .channels import (
    Attempt,
    DeliveryError,
    Message,
    MessageAction,
    MqttPageSender,
    Sender,
    SmtpSender,
    WebhookSender,
    deliver,
)
from .escalation import (
    ACTIVE_EVENTS,
    AckVia,
    Action,
    EventIn,
    State,
    Step,
    Thread,
    decide,
    forward_alarms,
    on_ack,
    on_event,
    undeliverable,
)
from .policy import Policy, PolicyError, levels_at, load_policy
from .ratelimit import RateLimiter
from .state import StateStore
from .tokens import TokenError, make_token, verify_token

log = logging.getLogger("chairside.pager")

ALARMS_SUB = "chairside/v1/+/+/alarms"
PAGE_ACK_SUB = "chairside/v1/+/pages/ack"
PRIORITIES = ("high", "medium", "low")
KINDS = ("physiological", "technical")
EVENTS = ("raised", "escalated", "renotify", "acknowledged", "cleared")
SEEN_MAX = 2000
ATTEMPTS_MAX = 1000
RESOLVED_RETAIN_S = 3600.0
DRAIN_MAX = 200
BY_MAX = 64
"""longest ``by`` accepted (the same rule as the gateway's staff messages)"""
PAYLOAD_MAX = 16384
INHIBITS_MAX = 16
T_MAX_MS = 2**53
DISCONNECTED_UNHEALTHY_S = 60.0
TECH_CHAIR = "pager"
"""chair id under which the pager publishes its own technical alarm events"""
UNDELIVERABLE_ALARM = "pager_undeliverable"
EXHAUSTED_ALARM = "pager_exhausted"
MESSAGE_ACTIONS = ("page", "acknowledge", "resolve", "summary")
"""record actions that are messages to a person (``pages_sent`` / ``pages_failed``)"""


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


def _ms(t: float | None) -> int | None:
    return None if t is None else int(t * 1000)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text}: number out of range")


def decode_payload(raw: bytes) -> dict[str, Any] | str:
    """An MQTT payload as a JSON object, or the reason it is refused.  Never
    raises: nesting too deep (``RecursionError``), numbers that overflow
    and anything else unexpected become a reason."""
    try:
        if len(raw) > PAYLOAD_MAX:
            return f"payload larger than {PAYLOAD_MAX} bytes"
        doc = json.loads(
            raw.decode("utf-8"), parse_float=_finite, parse_constant=_no_constant
        )
    except RecursionError:
        return "JSON nested too deeply"
    except UnicodeDecodeError:
        return "not UTF-8"
    except ValueError as exc:  # JSONDecodeError, out-of-range numbers, huge ints
        return "number out of range" if "out of range" in str(exc) else "not JSON"
    except Exception as exc:  # whatever it is, refuse the message
        return f"undecodable ({type(exc).__name__})"
    if not isinstance(doc, dict):
        return "not a JSON object"
    return doc


def clean_text(value: object, max_len: int) -> str | None:
    """``value`` if it is a non-blank string of printable, UTF-8-encodable
    characters of at most ``max_len``, stripped; otherwise None."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > max_len:
        return None
    if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) <= 0xDFFF for c in text):
        return None
    return text


def _printable(text: str) -> bool:
    return clean_text(text, len(text) or 1) == text


def _is_id(value: object) -> bool:
    return isinstance(value, str) and contract.id_regex().match(value) is not None


def parse_event(topic: str, payload: Mapping[str, Any]) -> EventIn | str:
    """An alarm event from the engine, or the reason it is rejected.
    ``inhibits``/``inhibited_by`` are optional (older gateways omit them)."""
    parts = topic.split("/")
    if payload.get("v") != 1 or isinstance(payload.get("v"), bool):
        return "unsupported version"
    if clean_text(payload.get("id"), 200) is None:
        return "missing or bad field id"
    for name in ("site", "chair", "alarm"):
        if not _is_id(payload.get(name)):
            return f"missing or bad field {name}"
    text = payload.get("text")
    if not isinstance(text, str) or clean_text(text[:200], 200) is None:
        return "missing or bad field text"
    if payload.get("priority") not in PRIORITIES:
        return "bad field priority"
    if payload.get("kind") not in KINDS:
        return "bad field kind"
    if payload.get("event") not in EVENTS:
        return "bad field event"
    t = payload.get("t")
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < T_MAX_MS:
        return "bad field t"
    site, chair, alarm = payload["site"], payload["chair"], payload["alarm"]
    if len(parts) == 5 and (parts[2], parts[3]) != (site, chair):
        return "topic site/chair differ from the payload"
    key = f"{site}/{chair}/{alarm}"
    if payload.get("key", key) != key:
        return "key is not site/chair/alarm"
    inhibits = payload.get("inhibits", [])
    if inhibits is None:
        inhibits = []
    if (
        not isinstance(inhibits, list)
        or len(inhibits) > INHIBITS_MAX
        or not all(_is_id(x) and x != alarm for x in inhibits)
    ):
        return "bad field inhibits"
    inhibited_by = payload.get("inhibited_by")
    if inhibited_by is not None and (not _is_id(inhibited_by) or inhibited_by == alarm):
        return "bad field inhibited_by"
    by = payload.get("by")
    return EventIn(
        key=key,
        site=site,
        chair=chair,
        alarm=alarm,
        priority=payload["priority"],
        kind=payload["kind"],
        event=payload["event"],
        t=t,
        text=clean_text(text[:200], 200) or alarm,
        by=clean_text(by[:BY_MAX], BY_MAX) if isinstance(by, str) else None,
        drill=payload.get("drill") == 1,
        inhibits=tuple(dict.fromkeys(inhibits)),
        inhibited_by=inhibited_by,
    )


class Pager:
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
        # second line of defence: the guard in _on_message already catches everything
        self.client.suppress_exceptions = True
        self.connected = threading.Event()

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
        log.info("connected to broker; subscribed to alarms and page acks")

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
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

    def handle_page_ack(
        self, site: str, payload: Mapping[str, Any], now: float
    ) -> tuple[bool, str]:
        """``{"v":1,"key":..,"by":..}`` or ``{"v":1,"token":..}`` from
        chairside/v1/{site}/pages/ack.  Every ack is answered with an
        ``ack_result`` on chairside/v1/{site}/pages and counted."""
        v = payload.get("v")
        if v != 1 or isinstance(v, bool):
            return False, self._refuse_ack(site, "unsupported version", payload)
        thread_n: int | None = None
        token = payload.get("token")
        if token is not None:
            if not isinstance(token, str) or len(token) > 1024:
                return False, self._refuse_ack(site, "bad token", payload)
            try:
                claim = verify_token(self.secret, token, now)
            except TokenError as exc:
                return False, self._refuse_ack(site, exc.reason, payload)
            key, by, thread_n = claim.key, claim.person, claim.n
        else:
            raw_key, raw_by = payload.get("key"), payload.get("by")
            if not isinstance(raw_key, str) or not raw_key or len(raw_key) > 200:
                return False, self._refuse_ack(site, "missing or bad key", payload)
            if not isinstance(raw_by, str) or not raw_by.strip():
                return False, self._refuse_ack(site, "missing or blank by", payload)
            clean_by = clean_text(raw_by, BY_MAX)
            if clean_by is None:
                return False, self._refuse_ack(
                    site, f"bad by (printable text, at most {BY_MAX} characters)", payload
                )
            key, by = raw_key, clean_by
            raw_n = payload.get("thread")
            if raw_n is not None:
                if isinstance(raw_n, bool) or not isinstance(raw_n, int) or not 0 < raw_n < 2**31:
                    return False, self._refuse_ack(site, "bad thread", payload)
                thread_n = raw_n
        if not key.startswith(site + "/"):
            return False, self._refuse_ack(site, "key is for another site", payload)
        ok, why = self._ack(key, by, "mqtt", thread_n, now)
        self._answer_ack(site, ok, why, key, by)
        return ok, why

    def _refuse_ack(self, site: str, reason: str, payload: Mapping[str, Any] | None) -> str:
        """Refuse a page acknowledgement: count it, log it, answer it."""
        self.metrics.inc("page_acks", result="refused")
        self._reject(reason, f"chairside/v1/{site}/pages/ack")
        key = payload.get("key") if payload is not None else None
        self._answer_ack(site, False, f"refused: {reason}",
                         key if isinstance(key, str) and _printable(key) else None, None)  # fmt: skip
        return reason

    def _answer_ack(self, site: str, ok: bool, why: str, key: str | None, by: str | None) -> None:
        if not _is_id(site):
            return  # no topic to answer on
        answer = {"v": 1, "type": "ack_result", "ok": ok, "reason": why[:300],
                  "key": key[:200] if key else None, "by": by, "t": _ms(self.clock())}  # fmt: skip
        try:
            self._publish(f"chairside/v1/{site}/pages", answer)
        except DeliveryError as exc:
            log.error("cannot answer a page ack: %s", exc)

    def _ack(
        self, key: str, by: str, via: AckVia, thread_n: int | None, now: float
    ) -> tuple[bool, str]:
        with self._lock:
            thread = self._threads.get(key)
            if thread is not None and thread.state is State.MERGED and thread.merged_into:
                host = self._threads.get(thread.merged_into)
                if host is not None and (thread_n is None or thread_n == thread.n):
                    thread, thread_n = host, None  # the page was for a thread merged since
            if thread is None:
                self.metrics.inc("page_acks", result="unmatched")
                log.warning("page ack by %s matches no thread: %s", by, key)
                return False, f"no page thread for {key}"
            if thread_n is not None and thread_n != thread.n:
                self.metrics.inc("page_acks", result="unmatched")
                log.warning("page ack by %s for closed thread %s #%d", by, key, thread_n)
                return False, f"this page was for an earlier, closed alarm on {key}"
            if thread.state is State.ACKED:
                self.metrics.inc("page_acks", result="already")
                return True, f"already acknowledged by {thread.acked_by}"
            step = on_ack(thread, by, via, now)
            if step.thread is thread:
                self.metrics.inc("page_acks", result="unmatched")
                log.warning("page ack by %s for %s: %s", by, key, step.reason)
                return False, step.reason
            self.metrics.inc("page_acks", result="acknowledged")
            self._apply(step, now)
            self._save()
        self._wake.set()
        log.info("%s: %s", key, step.reason)
        return True, f"{step.reason}: {thread.site}/{thread.chair}: {thread.text}"

    def check_token(self, token: str) -> tuple[bool, str]:
        """For the confirmation page: is the token good, and for what?"""
        now = self.clock()
        try:
            claim = verify_token(self.secret, token, now)
        except TokenError as exc:
            return False, exc.reason
        with self._lock:
            thread = self._threads.get(claim.key)
        if thread is None or thread.n != claim.n:
            return False, "this page was for an alarm that is already closed"
        prefix = "DRILL " if thread.drill else ""
        return True, (
            f"{prefix}{thread.priority.upper()} {thread.site}/{thread.chair}: {thread.text}. "
            f"Acknowledge as {claim.person}?"
        )

    def ack_token(self, token: str) -> tuple[bool, str]:
        """Acknowledge through the page link (POST /ack)."""
        now = self.clock()
        try:
            claim = verify_token(self.secret, token, now)
        except TokenError as exc:
            self.metrics.inc("page_acks", result="refused")
            return False, exc.reason
        return self._ack(claim.key, claim.person, "link", claim.n, now)

    # --------------------------------------------------------------- timers

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

    def _enqueue(self, item: dict[str, Any], now: float) -> None:
        item["id"] = self._next_id
        item["t"] = now
        self._next_id += 1
        self._outbox.append(item)

    def _apply(self, step: Step, now: float) -> None:
        thread = step.thread
        if thread is None:
            return
        before = self._threads.get(thread.key)
        if thread.state is State.ACKED and (before is None or before.state is not State.ACKED):
            self.metrics.inc("acks", via=thread.ack_via or "unknown")
        self._threads[thread.key] = thread
        for merged in step.merged:
            self._threads[merged.key] = merged
        by_key = {m.key: m for m in step.merged}
        for action in step.actions:
            self._enqueue(self._item(action, by_key.get(action.key, thread)), now)

    @staticmethod
    def _item(action: Action, thread: Thread) -> dict[str, Any]:
        to = [action.person] if action.person else list(thread.paged)
        return {
            "kind": action.kind,
            "key": action.key,
            "n": action.n,
            "level": action.level,
            "round": action.round,
            "to": to,
            "by": action.by,
            "via": action.via,
            "reason": action.reason,
            "primary": action.primary,
            "alarms": list(forward_alarms(thread)) if action.kind == "forward_ack" else [],
            "thread": thread.to_json(),
        }

    def _drain(self) -> None:
        with self._drain_lock:
            done: set[int] = set()
            for _ in range(DRAIN_MAX):
                if self._stop.is_set():
                    return
                with self._lock:
                    item = next((i for i in self._outbox if i["id"] not in done), None)
                if item is None:
                    return
                done.add(item["id"])
                try:
                    self._execute(item)
                except Exception:
                    self.metrics.inc("errors", stage="action")
                    log.exception("action %s for %s failed", item["kind"], item["key"])
                with self._lock:
                    self._outbox = [i for i in self._outbox if i["id"] != item["id"]]
                    self._save()

    # ------------------------------------------------------------- actions

    def _message(self, item: dict[str, Any], action: MessageAction, to: str) -> Message:
        th = Thread.from_json(item["thread"])
        now = self.clock()
        ack_url = None
        if action == "trigger":
            token = make_token(
                self.secret, th.key, th.n, to, int(now + self.policy.ack.token_ttl_s)
            )
            ack_url = f"{self.base_url}/ack?token={token}"
        return Message(
            action=action,
            key=th.key,
            n=th.n,
            site=th.site,
            chair=th.chair,
            alarm=th.alarm,
            priority=th.priority,
            text=th.text,
            t=now,
            drill=th.drill,
            level=item.get("level", 0),
            round=item.get("round", 0),
            to=to,
            ack_url=ack_url,
            by=item.get("by"),
        )

    def _deliver(self, message: Message, person_id: str) -> tuple[bool, str | None, list[Attempt]]:
        person = self.policy.people.get(person_id)
        if person is None:
            return False, None, []
        result = deliver(
            message,
            person,
            self.senders,
            self.policy.retry,
            clock=self.clock,
            sleep=self._stop.wait,
            should_stop=self._stop.is_set,
        )
        self._log_attempts(result.attempts, message)
        return result.ok, result.channel, list(result.attempts)

    def _log_attempts(self, attempts: tuple[Attempt, ...], message: Message) -> None:
        if not attempts:
            return
        lines = []
        for a in attempts:
            self.attempts.append(a)
            self.metrics.inc("delivery_attempts", channel=a.channel, result="ok" if a.ok else "failed")
            row = a.to_json() | {"key": message.key, "thread": message.n, "action": message.action}
            lines.append(json.dumps(row, separators=(",", ":")))
            if not a.ok:
                log.warning("delivery to %s via %s failed: %s", a.person, a.channel, a.error)
        try:
            with open(self.deliveries_path, "a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
        except OSError as exc:
            log.error("cannot append to %s: %s", self.deliveries_path, exc)

    def _execute(self, item: dict[str, Any]) -> None:
        kind = item["kind"]
        now = self.clock()
        if kind == "summary":
            person = item["to"][0]
            site = item["keys"][0].split("/")[0] if item["keys"] else "all"
            th = Thread(
                key=item["key"], n=0, site=site, chair="-", alarm="rate-limit",
                priority="low", kind="technical",
                text=f"{item['count']} page(s) held by the rate limit: "
                + ", ".join(item["keys"][:10]),
                drill=False, state=State.OPEN, opened_at=now, event_t=_ms(now) or 0,
                next_at=None,
            )  # fmt: skip
            item = item | {"thread": th.to_json()}
            msg = self._message(item, "summary", person)
            ok, channel, attempts = self._deliver(msg, person)
            if ok:
                with self._lock:
                    self.ratelimit.record_sent(person, now)
            self._delivery_outcome(site, person, ok, attempts)
            self._record(item, "summary", now, to=person, ok=ok, channel=channel, attempts=attempts)
            return
        if kind == "page":
            self._execute_page(item, now)
            return
        if kind in ("acknowledge", "resolve"):
            for person in item["to"]:
                msg = self._message(item, kind, person)
                ok, channel, attempts = self._deliver(msg, person)
                self._delivery_outcome(item["thread"]["site"], person, ok, attempts)
                self._record(item, kind, now, to=person, ok=ok, channel=channel, attempts=attempts)
            return
        if kind == "forward_ack":
            th = item["thread"]
            topic = f"chairside/v1/{th['site']}/{th['chair']}/alarms/ack"
            ok = True
            for alarm_name in item.get("alarms") or [th["alarm"]]:
                try:
                    self._publish(topic, {"v": 1, "alarm": alarm_name, "by": item["by"]})
                except DeliveryError as exc:
                    ok = False
                    log.error("forwarding ack for %s failed: %s", item["key"], exc)
            self._record(item, "forward_ack", now, ok=ok)
            return
        if kind == "merge":
            log.info("%s: %s", item["key"], item["reason"])
            self._record(item, "merge", now, ok=True)
            return
        if kind == "exhausted":
            log.error("%s: %s", item["key"], item["reason"])
            self.metrics.inc("threads_exhausted")
            site = item["thread"]["site"]
            if item["thread"]["chair"] == TECH_CHAIR:
                # the pager's own technical alarm: no alarm about the alarm
                self._record(item, "exhausted", now, ok=False)
                return
            with self._lock:
                keys = self._exhausted.setdefault(site, [])
                raise_it = not keys
                if item["key"] not in keys:
                    keys.append(item["key"])
                self._save()
            if raise_it:
                self._publish_technical(self._technical(
                    site, EXHAUSTED_ALARM, True,
                    f"paging exhausted for {item['key']}: {item['reason']}", now))  # fmt: skip
            self._record(item, "exhausted", now, ok=False)

    def _execute_page(self, item: dict[str, Any], now: float) -> None:
        person = item["to"][0]
        with self._lock:
            allowed, why = self.ratelimit.check(person, now)
            if not allowed:
                self.ratelimit.record_suppressed(person, item["key"])
        if not allowed:
            log.warning("%s: page to %s suppressed: %s", item["key"], person, why)
            self._after_failed_page(item, now, why)
            self._record(item, "suppressed", now, to=person, ok=False, reason=why)
            return
        msg = self._message(item, "trigger", person)
        ok, channel, attempts = self._deliver(msg, person)
        with self._lock:
            if ok:
                self.ratelimit.record_sent(person, now)
        self._delivery_outcome(item["thread"]["site"], person, ok, attempts)
        if not ok:
            self._after_failed_page(item, now, "every channel failed")
        self._record(
            item, "page", now, to=person, ok=ok, channel=channel, attempts=attempts,
            ack_url=msg.ack_url,
        )  # fmt: skip

    def _after_failed_page(self, item: dict[str, Any], now: float, why: str) -> None:
        if not item.get("primary", True):
            return  # a courtesy page to an earlier acknowledger: escalation goes on as planned
        with self._lock:
            thread = self._threads.get(item["key"])
            if thread is not None and thread.n == item["n"] and thread.level == item["level"]:
                self._threads[item["key"]] = undeliverable(thread, self.policy, now, why)
                self._save()
        self._wake.set()

    # ------------------------------------------------ technical alarms

    def _delivery_outcome(self, site: str, person: str, ok: bool, attempts: list[Attempt]) -> None:
        """Track who could not be reached; raise ``pager_undeliverable`` for
        the site when the first person becomes unreachable, clear it when
        every one of them has been reached again."""
        if not attempts:
            return  # nothing was tried (unknown person, stopping)
        now = self.clock()
        with self._lock:
            people = self._unreachable.get(site, {})
            before = bool(people)
            if ok:
                if person not in people:
                    return
                del people[person]
            else:
                errors = "; ".join(f"{a.channel}: {a.error}" for a in attempts if not a.ok)
                people[person] = errors[:300]
            if people:
                self._unreachable[site] = people
            else:
                self._unreachable.pop(site, None)
            self._save()
            text = (
                f"pager cannot deliver pages to {len(people)} person(s): "
                + "; ".join(f"{p}: {e}" for p, e in sorted(people.items()))
                if people
                else "pager delivers pages again"
            )
        if before != bool(people):
            self._publish_technical(self._technical(site, UNDELIVERABLE_ALARM, bool(people), text, now))

    def _reconcile_exhausted(self, now: float) -> list[dict[str, Any]]:
        """Drop exhausted threads that were acknowledged, resolved or reopened;
        the events to publish when a site has none left.  Lock held."""
        events = []
        for site, keys in list(self._exhausted.items()):
            still = []
            for key in keys:
                thread = self._threads.get(key)
                if thread is not None and thread.active and thread.exhausted_at is not None:
                    still.append(key)
            if still:
                self._exhausted[site] = still
                continue
            del self._exhausted[site]
            events.append(self._technical(site, EXHAUSTED_ALARM, False,
                                          "no exhausted page thread left", now))  # fmt: skip
        return events

    def _technical(self, site: str, alarm: str, raised: bool, text: str, now: float) -> dict[str, Any]:
        """A technical alarm event of the pager, shaped like the engine's and
        the gateway's (``gateway_spool_full``)."""
        t = _ms(now) or 0
        event = AlarmEvent(
            id=f"pager-{alarm}-{'raised' if raised else 'cleared'}-{site}-{t}",
            site=site, chair=TECH_CHAIR, alarm=alarm, priority="high", kind="technical",
            event="raised" if raised else "cleared", t=t, text=text[:200],
        )  # fmt: skip
        return event.to_payload()

    def _publish_technical(self, payload: dict[str, Any]) -> None:
        log.error("technical alarm %s %s: %s", payload["alarm"], payload["event"], payload["text"])
        self._update_gauges()
        try:
            self._publish(contract.topic("alarms", payload["site"], TECH_CHAIR), payload)
        except DeliveryError as exc:
            log.error("cannot publish technical alarm %s: %s", payload["alarm"], exc)

    def _record(
        self,
        item: dict[str, Any],
        action: str,
        now: float,
        *,
        to: str | None = None,
        ok: bool,
        channel: str | None = None,
        attempts: list[Attempt] | None = None,
        reason: str | None = None,
        ack_url: str | None = None,
    ) -> None:
        """Publish an audit record on the site's pages topic (drills read
        time-to-page and time-to-ack from these), and count it."""
        if action in MESSAGE_ACTIONS:
            if ok:
                self.metrics.inc("pages_sent", action=action, channel=channel or "none")
            else:
                self.metrics.inc("pages_failed", action=action)
        elif action == "suppressed":
            self.metrics.inc("pages_suppressed")
        th = item["thread"]
        with self._lock:
            live = self._threads.get(item["key"])
        first_page_at = th.get("first_page_at")
        acked_at = th.get("acked_at")
        if live is not None and live.n == th.get("n"):
            first_page_at = live.first_page_at
            acked_at = live.acked_at
        record = {
            "v": 1,
            "type": "record",
            "action": action,
            "key": item["key"],
            "thread": th.get("n"),
            "site": th.get("site"),
            "chair": th.get("chair"),
            "alarm": th.get("alarm"),
            "priority": th.get("priority"),
            "drill": 1 if th.get("drill") else 0,
            "level": item.get("level", 0),
            "round": item.get("round", 0),
            "to": to,
            "ok": ok,
            "channel": channel,
            "attempts": [a.to_json() for a in attempts or []],
            "by": item.get("by"),
            "via": item.get("via"),
            "reason": reason or item.get("reason"),
            "ack_url": ack_url,
            "event_t": th.get("event_t"),
            "opened_t": _ms(th.get("opened_at")),
            "first_page_t": _ms(first_page_at),
            "acked_t": _ms(acked_at),
            "t": _ms(now),
        }
        try:
            self._publish(f"chairside/v1/{th.get('site')}/pages", record)
        except DeliveryError as exc:
            log.error("cannot publish page record: %s", exc)


# ------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``chairside pager``."""
    parser.add_argument("--policy", required=True, help="escalation policy JSON file")
    parser.add_argument("--broker-host", default="127.0.0.1", help="MQTT broker host")
    parser.add_argument("--broker-port", type=int, default=1883, help="MQTT broker port")
    parser.add_argument("--client-id", default="chairside-pager", help="MQTT client id")
    parser.add_argument(
        "--state", default="pager-state.json", help="durable state file (default: %(default)s)"
    )
    parser.add_argument("--ack-listen", default=None, help="ack page address (policy ack.listen)")
    parser.add_argument("--ack-port", type=int, default=None, help="ack page port (policy)")
    parser.add_argument("--base-url", default=None, help="public ack page URL (policy)")
    parser.add_argument(
        "--secret-file", default=None, help="file with the HMAC secret (else env ack.secret_env)"
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the policy, show who is on call, exit"
    )
    parser.add_argument("--log-level", default="INFO", help="logging level")
    mqtt_auth.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``chairside pager`` until SIGTERM/SIGINT; returns the exit code."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(exc)
        return 2
    if args.check:
        on_call_now = levels_at(policy, datetime.now(UTC))
        for level, person in enumerate(on_call_now, start=1):
            print(f"level {level}: {person.id} ({person.name})")
        print("policy OK")
        return 0
    if args.secret_file:
        secret = Path(args.secret_file).read_bytes().strip()
    else:
        secret = os.environ.get(policy.ack.secret_env, "").encode()
    if len(secret) < 16:
        print(f"ack secret missing or shorter than 16 bytes (set {policy.ack.secret_env})")
        return 2
    password = ""
    if policy.smtp is not None and policy.smtp.password_env:
        password = os.environ.get(policy.smtp.password_env, "")
    pager = Pager(
        policy,
        secret=secret,
        state_path=args.state,
        broker_host=args.broker_host,
        broker_port=args.broker_port,
        client_id=args.client_id,
        ack_listen=args.ack_listen,
        ack_port=args.ack_port,
        base_url=args.base_url,
        smtp_password=password,
    )
    try:
        mqtt_auth.apply(pager.client, getattr(args, "mqtt_credentials", None), getattr(args, "mqtt_ca", None))
    except mqtt_auth.CredentialsError as exc:
        print(exc)
        return 2
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    pager.start()
    while not done.wait(1.0):
        pass
    pager.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chairside pager", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


__all__ = ["Pager", "add_arguments", "main", "parse_event", "run"]
