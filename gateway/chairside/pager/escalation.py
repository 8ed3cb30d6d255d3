"""Pure escalation state machine, one :class:`Thread` per episode.

States: ``open`` (alarm raised, waiting out the priority's delay) →
``paged`` (level n was paged, waiting for an ack until ``next_at``) →
``acked`` (someone owns it) → ``resolved`` (every alarm of the thread
cleared and stayed clear for the flap window).  ``merged``: the thread was
taken over by the thread of an alarm that inhibits it.  Every function takes
``now`` (epoch seconds) and the current thread and returns a :class:`Step`:
the new thread, the actions the service must carry out, and the reason for
the decision.  Nothing here does I/O or reads the clock.

Flapping: a clear starts a hold of ``policy.flap_window_s``; an
*unacknowledged* thread re-raised within it continues (escalation resumes
where it was) and only a clear that lasts the whole window resolves it.  An
*acknowledged* thread is never kept quiet by a new raise, ``escalated`` or
``renotify``: the thread is reopened (a new thread number) at the level it
had reached, the on-call person at that level and whoever acknowledged are
paged, and it escalates again.

One episode, one thread: an alarm that an inhibitor (``inhibits`` in the
event) takes over joins the inhibitor's thread; its own thread is
``merged`` (escalation stops) and the inhibitor's thread starts at the
highest level any merged thread had reached.  The thread stays active while
any of its alarms is active.

Escalation never ends for a high-priority alarm that is active and
unacknowledged: after ``max_rounds`` an ``exhausted`` action is emitted once
and the last level is paged again every ``ack_timeout_s``.  A level that
could not be reached moves on to the next level at once, but the rota starts
over only after the last level's ``ack_timeout_s``.

Why this module is longer than ~500 lines: it is one pure state machine (a :class:`Thread` per episode and
every transition: open, page, escalate, reopen, merge, acknowledge,
resolve); its transitions read each other's rules, and keeping them on one
page is what lets a reviewer check that every state has a way out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    MERGED = "merged"


ActionKind = Literal["page", "acknowledge", "resolve", "forward_ack", "exhausted", "merge"]
AckVia = Literal["alarm", "mqtt", "link"]
ACTIVE_EVENTS = ("raised", "escalated", "renotify")


@dataclass(frozen=True, slots=True)
class Thread:
    """One page thread (an incident) for a dedup key (its main alarm).

    ``active_alarms``: the alarms of this thread that are active now (the
    main alarm and merged ones); ``members``: alarms merged into it.
    ``level_unreached``: the last page of ``level`` reached nobody."""

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
    active_alarms: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    merged_into: str | None = None
    exhausted_at: float | None = None
    undelivered: int = 0
    level_unreached: bool = False
    reopened_from: int | None = None

    @property
    def active(self) -> bool:
        return self.state in (State.OPEN, State.PAGED)

    @property
    def closed(self) -> bool:
        """Resolved or merged: events no longer go to this thread."""
        return self.state in (State.RESOLVED, State.MERGED)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = str(self.state)
        for name in ("paged", "active_alarms", "members"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Thread:
        fields = dict(data)
        fields["state"] = State(fields["state"])
        fields["paged"] = tuple(fields.get("paged", ()))
        fields["members"] = tuple(fields.get("members", ()))
        if "active_alarms" in fields:
            fields["active_alarms"] = tuple(fields["active_alarms"])
        else:  # a state file written before threads had several alarms
            active = fields.get("cleared_at") is None and fields["state"] in (
                State.OPEN, State.PAGED, State.ACKED)  # fmt: skip
            fields["active_alarms"] = (fields["alarm"],) if active else ()
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class Action:
    """Something the service must do.  ``person`` is set for pages;
    ``primary`` is False for a courtesy page (to whoever acknowledged
    before) whose failure does not move escalation on."""

    kind: ActionKind
    key: str
    n: int
    level: int = 0
    round: int = 0
    person: str | None = None
    by: str | None = None
    via: str | None = None
    reason: str = ""
    primary: bool = True


@dataclass(frozen=True, slots=True)
class Step:
    thread: Thread | None
    actions: tuple[Action, ...]
    reason: str
    merged: tuple[Thread, ...] = ()


@dataclass(frozen=True, slots=True)
class EventIn:
    """The fields of an alarm event the state machine uses.  ``inhibits``
    and ``inhibited_by`` come from the engine (absent on older gateways)."""

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
    inhibits: tuple[str, ...] = ()
    inhibited_by: str | None = None


def _when(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def _first_page_at(policy: Policy, priority: str, opened_at: float) -> float | None:
    rule = policy.rule(priority)
    return opened_at + rule.delay_s if rule.page else None


def _higher(a: str, b: str) -> str:
    return b if PRIORITY_RANK.get(b, 0) > PRIORITY_RANK.get(a, 0) else a


def _union(*groups: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for group in groups:
        out += [x for x in group if x not in out]
    return tuple(out)


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
        if thread.reopened_from is not None:
            return True, f"alarm active again after thread {thread.reopened_from} was acknowledged or exhausted"
        return True, f"priority {thread.priority} alarm still active after its delay"
    if thread.level_unreached:
        return True, f"level {thread.level} could not be reached"
    return True, f"level {thread.level} did not acknowledge within the timeout"


def decide(thread: Thread, policy: Policy, now: float) -> Step:
    """Advance one thread in time: first page, next level, repeat, resolve."""
    if thread.cleared_at is not None and thread.state not in (State.RESOLVED, State.MERGED):
        if now >= thread.cleared_at + policy.flap_window_s:
            return _resolve(thread, now, "alarm stayed clear for the flap window")
        return Step(thread, (), "alarm cleared; holding for the flap window")
    due, reason = should_page(thread, policy, now)
    if not due:
        return Step(thread, (), reason)
    assert thread.next_at is not None
    levels = len(levels_at(policy, _when(now)))
    if thread.state is State.OPEN:  # the first page; a merged or reopened thread starts higher
        level, rnd = max(1, thread.level), max(1, thread.round)
    elif thread.level < levels:
        level, rnd = thread.level + 1, thread.round
    else:
        level, rnd = 1, thread.round + 1
    timeout = policy.rule(thread.priority).ack_timeout_s
    actions: list[Action] = []
    exhausted_at = thread.exhausted_at
    if rnd > policy.max_rounds:
        why = f"no acknowledgement after {policy.max_rounds} round(s) of the rota"
        if thread.undelivered:
            why += f" ({thread.undelivered} page(s) could not be delivered)"
        if thread.priority != "high":
            done = replace(thread, next_at=None, exhausted_at=now, reason=why)
            return Step(done, (Action("exhausted", thread.key, thread.n, reason=why),), why)
        # a high-priority alarm is never abandoned: page the last level again and again
        if exhausted_at is None:
            exhausted_at = now
            actions.append(Action("exhausted", thread.key, thread.n, reason=why))
        level, rnd = levels, policy.max_rounds + 1
        reason = f"{why}; high priority: paging level {level} again every {timeout:g} s"
    if thread.state is State.OPEN:
        next_at = now + timeout
    else:
        # keep to the schedule (a 1 s tick must not drift), unless far behind
        next_at = thread.next_at + timeout
        if next_at <= now:
            next_at = now + timeout
    person = on_call(policy, level, _when(now)).id
    new = replace(
        thread,
        state=State.PAGED,
        level=level,
        round=rnd,
        next_at=next_at,
        paged=_union(thread.paged, (person,)),
        first_page_at=thread.first_page_at if thread.first_page_at is not None else now,
        exhausted_at=exhausted_at,
        level_unreached=False,
        reason=reason,
    )
    actions.append(Action("page", thread.key, thread.n, level, rnd, person=person, reason=reason))
    return Step(new, tuple(actions), reason)


def _resolve(thread: Thread, now: float, why: str) -> Step:
    new = replace(thread, state=State.RESOLVED, resolved_at=now, next_at=None, reason=why)
    if not thread.paged:
        return Step(new, (), why + " (nobody was paged)")
    return Step(new, (Action("resolve", thread.key, thread.n, reason=why),), why)


def _merge(key: str, merge: Sequence[Thread]) -> tuple[tuple[Thread, ...], tuple[Action, ...]]:
    """Close the threads an inhibitor takes over."""
    closed: list[Thread] = []
    actions: list[Action] = []
    for m in merge:
        why = f"merged into the thread of {key}: one episode, one escalation"
        closed.append(replace(m, state=State.MERGED, merged_into=key, next_at=None, reason=why))
        actions.append(Action("merge", m.key, m.n, m.level, m.round, reason=why))
    return tuple(closed), tuple(actions)


def _reached(merge: Sequence[Thread]) -> tuple[int, int]:
    """The highest (round, level) any of ``merge`` had paged."""
    best = (0, 0)
    for m in merge:
        if m.level > 0 and (m.round, m.level) > best:
            best = (m.round, m.level)
    return best


def on_event(
    thread: Thread | None,
    event: EventIn,
    policy: Policy,
    now: float,
    next_n: int,
    merge: Sequence[Thread] = (),
) -> Step:
    """Apply an alarm event from the engine to the thread it belongs to
    (its own, or the thread of the alarm that inhibits it).  ``next_n``
    numbers a new thread; ``merge`` are open threads of alarms this event's
    alarm inhibits (only for raised/escalated/renotify)."""
    thread_or_none = None if thread is None or thread.closed else thread
    if event.event == "acknowledged":
        if thread is None or thread.closed:
            return Step(thread, (), "acknowledged alarm has no open page thread")
        if event.alarm != thread.alarm and thread.alarm in thread.active_alarms:
            return Step(thread, (), f"{event.alarm} acknowledged; the thread follows {thread.alarm}")
        return on_ack(thread, event.by or "unknown", "alarm", now)
    if event.event == "cleared":
        if thread is None or thread.closed:
            return Step(thread, (), "cleared alarm has no open page thread")
        remaining = tuple(a for a in thread.active_alarms if a != event.alarm)
        if remaining:
            why = f"{event.alarm} cleared; {', '.join(remaining)} still active"
            return Step(replace(thread, active_alarms=remaining, reason=why), (), why)
        held = replace(thread, active_alarms=(), cleared_at=now, reason="alarm cleared")
        return decide(held, policy, now)
    # raised / escalated / renotify: the alarm is active
    closed, merge_actions = _merge(event.key if thread is None else thread.key, merge)
    absorbed = _union(*[(m.alarm, *m.members) for m in merge])
    absorbed_active = _union(*[m.active_alarms for m in merge])
    absorbed_paged = _union(*[m.paged for m in merge])
    reached = _reached(merge)
    note = f"; took over {', '.join(absorbed)} at level {reached[1]}" if absorbed else ""
    joining = thread_or_none is not None and event.alarm != thread_or_none.alarm and (
        event.inhibited_by == thread_or_none.alarm)
    if thread_or_none is None:
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
            level=reached[1],
            round=reached[0],
            paged=absorbed_paged,
            active_alarms=_union((event.alarm,), absorbed_active),
            members=absorbed,
            reason="opened" + note,
        )
        if reached[1] and opened.next_at is not None:
            opened = replace(opened, next_at=now)  # already paged at that level: no new delay
        step = decide(opened, policy, now)
        return Step(step.thread, merge_actions + step.actions, step.reason + note, closed)
    current = thread_or_none
    stopped = current.exhausted_at is not None and current.next_at is None
    if (current.state is State.ACKED or stopped) and not joining:
        return _reopen(current, event, policy, now, next_n, closed, merge_actions,
                       absorbed, absorbed_active, absorbed_paged, reached, note)  # fmt: skip
    changes: dict[str, Any] = {
        "drill": current.drill or event.drill,
        "active_alarms": _union(current.active_alarms, (event.alarm,), absorbed_active),
        "members": _union(current.members, absorbed,
                          (event.alarm,) if event.alarm != current.alarm else ()),
        "paged": _union(current.paged, absorbed_paged),
    }  # fmt: skip
    if event.alarm == current.alarm or not joining:
        changes["text"] = event.text
    reason = f"alarm {event.event}; same thread"
    if joining:
        reason = f"{event.alarm} {event.event}, inhibited by {current.alarm}: joins its thread"
    if current.cleared_at is not None:
        changes["cleared_at"] = None
        changes["flaps"] = current.flaps + 1
        reason = "alarm re-raised within the flap window; same thread"
    priority = _higher(current.priority, event.priority)
    if priority != current.priority:
        changes["priority"] = priority
        if current.state is State.OPEN:
            first = _first_page_at(policy, priority, current.opened_at)
            if first is not None and (current.next_at is None or first < current.next_at):
                changes["next_at"] = first
        reason += f"; priority raised to {priority}"
    if current.state is not State.ACKED and reached > (current.round, current.level):
        # a merged thread had got further: page that level now
        changes.update(state=State.OPEN, level=reached[1], round=reached[0], next_at=now)
    updated = replace(current, reason=reason + note, **changes)
    step = decide(updated, policy, now)
    return Step(step.thread, merge_actions + step.actions, reason + note + "; " + step.reason, closed)


def _reopen(
    thread: Thread,
    event: EventIn,
    policy: Policy,
    now: float,
    next_n: int,
    closed: tuple[Thread, ...],
    merge_actions: tuple[Action, ...],
    absorbed: tuple[str, ...],
    absorbed_active: tuple[str, ...],
    absorbed_paged: tuple[str, ...],
    reached: tuple[int, int],
    note: str,
) -> Step:
    """An acknowledged (or exhausted, no longer paging) thread's alarm is
    raised again, escalated or re-notified: a new thread at the level
    reached (round 1), paging the on-call person there and whoever
    acknowledged (if they are in the policy)."""
    level = max(thread.level, reached[1])
    priority = _higher(thread.priority, event.priority)
    after = (f"the acknowledgement by {thread.acked_by}" if thread.state is State.ACKED
             else "escalation was exhausted")  # fmt: skip
    why = f"alarm {event.event} after {after}: paging again from level {max(1, level)}"
    reopened = Thread(
        key=thread.key,
        n=next_n,
        site=thread.site,
        chair=thread.chair,
        alarm=thread.alarm,
        priority=priority,
        kind=thread.kind,
        text=event.text,
        drill=thread.drill or event.drill,
        state=State.OPEN,
        opened_at=now,
        event_t=event.t,
        next_at=_first_page_at(policy, priority, now),
        level=max(1, level),
        round=1,
        active_alarms=_union(thread.active_alarms, (event.alarm,), absorbed_active),
        members=_union(thread.members, absorbed),
        paged=absorbed_paged,
        reopened_from=thread.n,
        reason=why + note,
    )
    step = decide(reopened, policy, now)
    new = step.thread
    actions = list(merge_actions + step.actions)
    acker = thread.acked_by
    if (
        new is not None
        and acker is not None
        and acker in policy.people
        and acker not in new.paged
        and reopened.next_at is not None
    ):
        # page whoever acknowledged now, even while a medium delay runs
        actions.append(Action("page", new.key, new.n, new.level, new.round, person=acker,
                              reason=why + " (acknowledged it before)", primary=False))  # fmt: skip
        new = replace(new, paged=_union(new.paged, (acker,)))
    return Step(new, tuple(actions), why + note + "; " + step.reason, closed)


def on_ack(thread: Thread, by: str, via: AckVia, now: float) -> Step:
    """Someone acknowledged: stop escalating.  ``via='alarm'`` means the
    engine already knows (bedside ack); otherwise it is forwarded to it."""
    if thread.state is State.ACKED:
        return Step(thread, (), f"already acknowledged by {thread.acked_by}")
    if thread.state is State.RESOLVED:
        return Step(thread, (), "thread already resolved")
    if thread.state is State.MERGED:
        return Step(thread, (), f"thread merged into {thread.merged_into}")
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


def forward_alarms(thread: Thread) -> tuple[str, ...]:
    """Which alarms an acknowledgement of ``thread`` is forwarded for: the
    main alarm (the engine acknowledges what it inhibits with it) or, once
    it has cleared, each alarm of the thread still active."""
    if thread.alarm in thread.active_alarms or not thread.active_alarms:
        return (thread.alarm,)
    return thread.active_alarms


def undeliverable(thread: Thread, policy: Policy, now: float, why: str) -> Thread:
    """The page for the current level reached nobody (all channels failed or
    rate-limited): the next level is due now, but the rota only starts over
    after the last level's ack timeout (rounds keep their spacing)."""
    if thread.state is not State.PAGED or thread.next_at is None:
        return thread
    last = thread.level >= len(levels_at(policy, _when(now)))
    reason = f"level {thread.level} unreachable: {why}"
    changes: dict[str, Any] = {"undelivered": thread.undelivered + 1, "level_unreached": True}
    if not last:
        changes["next_at"] = now
    else:
        reason += f"; the rota starts over at {thread.next_at:.3f} (ack timeout)"
    return replace(thread, reason=reason, **changes)
