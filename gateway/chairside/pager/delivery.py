"""The pager's outbox: actions of the escalation steps carried out.

Each action (page, acknowledgement notice, resolve, forwarded ack, ...) waits
in the durable outbox until it has been carried out: rate limit per person
(:mod:`.ratelimit`), delivery with retry and channel fallback
(:mod:`.channels`), then an audit record on the site's ``pages`` topic.  A
level nobody could be reached on, and a thread that ran through every round,
raise the pager's technical alarms.  :class:`Outbox` is the part of
:class:`~chairside.pager.service.Pager` that does this; it shares the
pager's state and lock.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chairside import contract
from chairside.metrics import Metrics
from chairside.model import AlarmEvent

from .channels import Attempt, DeliveryError, Message, MessageAction, Sender, deliver
from .escalation import Action, State, Step, Thread, forward_alarms, undeliverable
from .policy import Policy
from .ratelimit import RateLimiter
from .tokens import make_token

log = logging.getLogger("chairside.pager")

DRAIN_MAX = 200
TECH_CHAIR = "pager"
"""chair id under which the pager publishes its own technical alarm events"""
UNDELIVERABLE_ALARM = "pager_undeliverable"
EXHAUSTED_ALARM = "pager_exhausted"
MESSAGE_ACTIONS = ("page", "acknowledge", "resolve", "summary")
"""record actions that are messages to a person (``pages_sent`` / ``pages_failed``)"""


def epoch_ms(t: float | None) -> int | None:
    return None if t is None else int(t * 1000)


class Outbox:
    """Carrying out queued actions; mixed into the pager, whose state it uses."""

    policy: Policy
    secret: bytes
    clock: Callable[[], float]
    base_url: str
    metrics: Metrics
    attempts: deque[Attempt]
    senders: dict[str, Sender]
    ratelimit: RateLimiter
    deliveries_path: Path
    _lock: threading.RLock
    _drain_lock: threading.Lock
    _stop: threading.Event
    _wake: threading.Event
    _threads: dict[str, Thread]
    _outbox: list[dict[str, Any]]
    _next_id: int
    _unreachable: dict[str, dict[str, str]]
    _exhausted: dict[str, list[str]]

    if TYPE_CHECKING:  # provided by the Pager this is mixed into
        def _publish(self, topic: str, payload: dict[str, Any]) -> None: ...

        def _save(self) -> None: ...

        def _update_gauges(self) -> None: ...

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
                drill=False, state=State.OPEN, opened_at=now, event_t=epoch_ms(now) or 0,
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
        t = epoch_ms(now) or 0
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
            "opened_t": epoch_ms(th.get("opened_at")),
            "first_page_t": epoch_ms(first_page_at),
            "acked_t": epoch_ms(acked_at),
            "t": epoch_ms(now),
        }
        try:
            self._publish(f"chairside/v1/{th.get('site')}/pages", record)
        except DeliveryError as exc:
            log.error("cannot publish page record: %s", exc)
