"""Pure escalation state machine, one :class:`Thread` per dedup key.

States: ``open`` (alarm raised, waiting out the priority's delay) →
``paged`` (level n was paged, waiting for an ack until ``next_at``) →
``acked`` (someone owns it) → ``resolved`` (alarm cleared and stayed clear
for the flap window).  Every function takes ``now`` (epoch seconds) and the
current thread and returns a :class:`Step`: the new thread, the actions the
service must carry out, and the reason for the decision.  Nothing here does
I/O or reads the clock.

A flapping alarm stays one thread: a clear starts a hold of
``policy.flap_window_s``; a re-raise within it continues the same thread
(escalation resumes where it was) and only a clear that lasts the whole
window resolves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from chairside.model import PRIORITY_RANK

from .policy import Policy, levels_at, on_call


class State(StrEnum):
    OPEN = "open"
    PAGED = "paged"
    ACKED = "acked"
    RESOLVED = "resolved"


ActionKind = Literal["page", "acknowledge", "resolve", "forward_ack", "exhausted"]
AckVia = Literal["alarm", "mqtt", "link"]


@dataclass(frozen=True, slots=True)
class Thread:
    """One page thread (an incident) for a dedup key."""

    key: str
    n: int
    site: str
    chair: str
    alarm: str
    priority: str
    kind: str
    text: str
    drill: bool
    state: State
    opened_at: float
    event_t: int
    next_at: float | None
    level: int = 0
    round: int = 0
    cleared_at: float | None = None
    flaps: int = 0
    paged: tuple[str, ...] = ()
    first_page_at: float | None = None
    acked_by: str | None = None
    acked_at: float | None = None
    ack_via: str | None = None
    resolved_at: float | None = None
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.state in (State.OPEN, State.PAGED)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = str(self.state)
        data["paged"] = list(self.paged)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Thread:
        fields = dict(data)
        fields["state"] = State(fields["state"])
        fields["paged"] = tuple(fields.get("paged", ()))
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class Action:
    """Something the service must do.  ``person`` is set for pages."""

    kind: ActionKind
    key: str
    n: int
    level: int = 0
    round: int = 0
    person: str | None = None
    by: str | None = None
    via: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Step:
    thread: Thread | None
    actions: tuple[Action, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class EventIn:
    """The fields of an alarm event the state machine uses."""

    key: str
    site: str
    chair: str
    alarm: str
    priority: str
    kind: str
    event: str
    t: int
    text: str
    by: str | None = None
    drill: bool = False


def _when(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def _first_page_at(policy: Policy, priority: str, opened_at: float) -> float | None:
    rule = policy.rule(priority)
    return opened_at + rule.delay_s if rule.page else None


def should_page(thread: Thread, policy: Policy, now: float) -> tuple[bool, str]:
    """Whether a page (first or next level) is due now, and why (not)."""
    if not thread.active:
        return False, f"thread is {thread.state}"
    if thread.cleared_at is not None:
        return False, "alarm cleared; holding for the flap window"
    if thread.next_at is None:
        if thread.state is State.OPEN:
            return False, f"priority {thread.priority} does not page"
        return False, "escalation exhausted"
    if now < thread.next_at:
        what = "delay" if thread.state is State.OPEN else f"ack timeout of level {thread.level}"
        return False, f"waiting for {what} until {thread.next_at:.3f}"
    if thread.state is State.OPEN:
        return True, f"priority {thread.priority} alarm still active after its delay"
    return True, f"level {thread.level} did not acknowledge within the timeout"


def decide(thread: Thread, policy: Policy, now: float) -> Step:
    """Advance one thread in time: first page, next level, repeat, resolve."""
    if thread.cleared_at is not None and thread.state is not State.RESOLVED:
        if now >= thread.cleared_at + policy.flap_window_s:
            return _resolve(thread, now, "alarm stayed clear for the flap window")
        return Step(thread, (), "alarm cleared; holding for the flap window")
    due, reason = should_page(thread, policy, now)
    if not due:
        return Step(thread, (), reason)
    assert thread.next_at is not None
    if thread.state is State.OPEN:
        level, rnd = 1, 1
    elif thread.level < len(levels_at(policy, _when(now))):
        level, rnd = thread.level + 1, thread.round
    else:
        level, rnd = 1, thread.round + 1
    if rnd > policy.max_rounds:
        why = f"no acknowledgement after {policy.max_rounds} round(s) of the rota"
        done = replace(thread, next_at=None, reason=why)
        return Step(done, (Action("exhausted", thread.key, thread.n, reason=why),), why)
    timeout = policy.rule(thread.priority).ack_timeout_s
    if thread.state is State.OPEN:
        next_at = now + timeout
    else:
        # keep to the schedule (a 1 s tick must not drift), unless far behind
        next_at = thread.next_at + timeout
        if next_at <= now:
            next_at = now + timeout
    person = on_call(policy, level, _when(now)).id
    paged = thread.paged if person in thread.paged else (*thread.paged, person)
    new = replace(
        thread,
        state=State.PAGED,
        level=level,
        round=rnd,
        next_at=next_at,
        paged=paged,
        first_page_at=thread.first_page_at if thread.first_page_at is not None else now,
        reason=reason,
    )
    action = Action("page", thread.key, thread.n, level, rnd, person=person, reason=reason)
    return Step(new, (action,), reason)


def _resolve(thread: Thread, now: float, why: str) -> Step:
    new = replace(thread, state=State.RESOLVED, resolved_at=now, next_at=None, reason=why)
    if not thread.paged:
        return Step(new, (), why + " (nobody was paged)")
    return Step(new, (Action("resolve", thread.key, thread.n, reason=why),), why)


def on_event(
    thread: Thread | None, event: EventIn, policy: Policy, now: float, next_n: int
) -> Step:
    """Apply an alarm event from the engine.  ``next_n`` numbers a new thread."""
    if event.event == "acknowledged":
        if thread is None:
            return Step(None, (), "acknowledged alarm has no page thread")
        return on_ack(thread, event.by or "unknown", "alarm", now)
    if event.event == "cleared":
        if thread is None or thread.state is State.RESOLVED:
            return Step(thread, (), "cleared alarm has no open page thread")
        held = replace(thread, cleared_at=now, reason="alarm cleared")
        return decide(held, policy, now)
    # raised / escalated / renotify: the alarm is active
    if thread is None or thread.state is State.RESOLVED:
        opened = Thread(
            key=event.key,
            n=next_n,
            site=event.site,
            chair=event.chair,
            alarm=event.alarm,
            priority=event.priority,
            kind=event.kind,
            text=event.text,
            drill=event.drill,
            state=State.OPEN,
            opened_at=now,
            event_t=event.t,
            next_at=_first_page_at(policy, event.priority, now),
            reason="opened",
        )
        return decide(opened, policy, now)
    changes: dict[str, Any] = {"text": event.text, "drill": thread.drill or event.drill}
    reason = f"alarm {event.event}; same thread"
    if thread.cleared_at is not None:
        changes["cleared_at"] = None
        changes["flaps"] = thread.flaps + 1
        reason = "alarm re-raised within the flap window; same thread"
    if PRIORITY_RANK.get(event.priority, 0) > PRIORITY_RANK.get(thread.priority, 0):
        changes["priority"] = event.priority
        if thread.state is State.OPEN:
            first = _first_page_at(policy, event.priority, thread.opened_at)
            if first is not None and (thread.next_at is None or first < thread.next_at):
                changes["next_at"] = first
        reason += f"; priority raised to {event.priority}"
    updated = replace(thread, reason=reason, **changes)
    step = decide(updated, policy, now)
    return Step(step.thread, step.actions, reason + "; " + step.reason)


def on_ack(thread: Thread, by: str, via: AckVia, now: float) -> Step:
    """Someone acknowledged: stop escalating.  ``via='alarm'`` means the
    engine already knows (bedside ack); otherwise it is forwarded to it."""
    if thread.state is State.ACKED:
        return Step(thread, (), f"already acknowledged by {thread.acked_by}")
    if thread.state is State.RESOLVED:
        return Step(thread, (), "thread already resolved")
    why = f"acknowledged by {by} via {via}"
    new = replace(
        thread,
        state=State.ACKED,
        acked_by=by,
        acked_at=now,
        ack_via=via,
        next_at=None,
        reason=why,
    )
    actions: list[Action] = []
    if thread.paged:
        actions.append(Action("acknowledge", thread.key, thread.n, by=by, via=via, reason=why))
    if via != "alarm":
        actions.append(Action("forward_ack", thread.key, thread.n, by=by, via=via, reason=why))
    return Step(new, tuple(actions), why)


def undeliverable(thread: Thread, now: float, why: str) -> Thread:
    """The page for the current level reached nobody (all channels failed or
    rate-limited): make the next level due now."""
    if thread.state is not State.PAGED or thread.next_at is None:
        return thread
    return replace(thread, next_at=now, reason=f"level {thread.level} unreachable: {why}")
