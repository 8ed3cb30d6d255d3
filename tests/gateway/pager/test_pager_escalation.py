"""Escalation state machine on an injected clock: whole timelines in microseconds."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from chairside.pager.escalation import (
    Action,
    EventIn,
    State,
    Thread,
    decide,
    on_ack,
    on_event,
    should_page,
    undeliverable,
)
from chairside.pager.policy import Policy, RateRule, parse_policy
from chairside.pager.ratelimit import RateLimiter

T0 = 1_717_408_800.0  # 2024-06-03 10:00 UTC, a Monday (no rota -> fallback levels)
KEY = "clinic1/chair3/spo2_low"


def policy(**over: Any) -> Policy:
    doc: dict[str, Any] = {
        "timezone": "UTC",
        "people": {p: {"channels": [{"type": "mqtt"}]} for p in ("alice", "bob", "carol")},
        "fallback": ["alice", "bob", "carol"],
        "priorities": {
            "high": {"delay_s": 0, "ack_timeout_s": 60},
            "medium": {"delay_s": 30, "ack_timeout_s": 120},
            "low": {"page": False, "ack_timeout_s": 600},
        },
        "max_rounds": 2,
        "flap_window_s": 60,
    }
    doc.update(over)
    return parse_policy(doc)


def ev(event: str, priority: str = "high", drill: bool = False, by: str | None = None) -> EventIn:
    return EventIn(
        key=KEY, site="clinic1", chair="chair3", alarm="spo2_low", priority=priority,
        kind="physiological", event=event, t=int(T0 * 1000), text="SpO2 84 % < 85 % (chair 3)",
        by=by, drill=drill,
    )  # fmt: skip


class Sim:
    """Drives one dedup key like the service does: events, acks, 1 s ticks."""

    def __init__(self, pol: Policy) -> None:
        self.pol = pol
        self.thread: Thread | None = None
        self.n = 0
        self.log: list[tuple[float, Action]] = []

    def _take(self, now: float, thread: Thread | None, actions: tuple[Action, ...]) -> None:
        if thread is not None and thread.n > self.n:
            self.n = thread.n
        self.thread = thread
        self.log += [(now - T0, a) for a in actions]

    def event(self, at: float, e: EventIn) -> None:
        step = on_event(self.thread, e, self.pol, T0 + at, self.n + 1)
        self._take(T0 + at, step.thread, step.actions)

    def ack(self, at: float, by: str) -> None:
        assert self.thread is not None
        step = on_ack(self.thread, by, "link", T0 + at)
        self._take(T0 + at, step.thread, step.actions)

    def run(self, start: float, end: float) -> None:
        t = start
        while t <= end:
            if self.thread is not None:
                step = decide(self.thread, self.pol, T0 + t)
                self._take(T0 + t, step.thread, step.actions)
            t += 1.0

    def summary(self) -> list[tuple[float, str, str | None]]:
        return [(at, a.kind, a.person or a.by) for at, a in self.log]


def test_primary_silent_secondary_paged_at_timeout_then_repeat_then_exhausted() -> None:
    sim = Sim(policy())
    sim.event(0, ev("raised"))
    sim.run(0, 400)
    assert sim.summary() == [
        (0, "page", "alice"),
        (60, "page", "bob"),
        (120, "page", "carol"),
        (180, "page", "alice"),  # round 2: repeat until acknowledged
        (240, "page", "bob"),
        (300, "page", "carol"),
        (360, "exhausted", None),  # max_rounds=2: a limit, reported
    ]
    assert [a.round for _, a in sim.log if a.kind == "page"] == [1, 1, 1, 2, 2, 2]


def test_ack_stops_escalation_and_is_forwarded() -> None:
    sim = Sim(policy())
    sim.event(0, ev("raised"))
    sim.run(0, 59)
    sim.run(60, 70)  # bob paged at 60
    sim.ack(71, "bob")
    sim.run(72, 1000)
    assert sim.summary() == [
        (0, "page", "alice"),
        (60, "page", "bob"),
        (71, "acknowledge", "bob"),
        (71, "forward_ack", "bob"),
    ]
    assert sim.thread is not None and sim.thread.state is State.ACKED
    assert sim.thread.acked_by == "bob" and sim.thread.first_page_at == T0


def test_clear_sends_resolve_after_flap_window() -> None:
    sim = Sim(policy())
    sim.event(0, ev("raised"))
    sim.run(0, 10)
    sim.event(10.5, ev("cleared"))
    sim.run(11, 200)
    assert sim.summary() == [(0, "page", "alice"), (71, "resolve", None)]
    assert sim.thread is not None and sim.thread.state is State.RESOLVED


def test_flapping_alarm_is_one_thread_one_page() -> None:
    sim = Sim(policy())
    for k in range(6):  # raised/cleared every 10 s for a minute
        sim.event(k * 10, ev("raised"))
        sim.run(k * 10, k * 10 + 4)
        sim.event(k * 10 + 5, ev("cleared"))
        sim.run(k * 10 + 5, k * 10 + 9)
    sim.run(60, 300)
    assert sim.summary() == [(0, "page", "alice"), (115, "resolve", None)]
    assert sim.thread is not None and sim.thread.n == 1 and sim.thread.flaps == 5


def test_escalation_pauses_while_cleared_and_resumes_on_reraise() -> None:
    sim = Sim(policy())
    sim.event(0, ev("raised"))
    sim.event(50, ev("cleared"))
    sim.run(0, 100)  # timeout (60) passes while cleared: nobody else paged
    sim.event(100, ev("raised"))  # within the 60 s flap window
    sim.run(100, 101)
    assert sim.summary() == [(0, "page", "alice"), (100, "page", "bob")]


def test_reraise_after_resolve_opens_new_thread() -> None:
    sim = Sim(policy())
    sim.event(0, ev("raised"))
    sim.event(1, ev("cleared"))
    sim.run(1, 100)
    sim.event(200, ev("raised"))
    assert sim.thread is not None and sim.thread.n == 2
    assert sim.summary()[-1] == (200, "page", "alice")


def test_medium_waits_for_delay_and_clear_within_delay_never_pages() -> None:
    sim = Sim(policy())
    sim.event(0, ev("raised", "medium"))
    sim.run(0, 29)
    assert sim.log == []
    sim.run(30, 30)
    assert sim.summary() == [(30, "page", "alice")]

    quiet = Sim(policy())
    quiet.event(0, ev("raised", "medium"))
    quiet.event(10, ev("cleared", "medium"))
    quiet.run(0, 500)
    assert quiet.log == []  # nobody paged, so no resolve either
    assert quiet.thread is not None and quiet.thread.state is State.RESOLVED


def test_priority_escalated_during_delay_pages_now() -> None:
    sim = Sim(policy())
    sim.event(0, ev("raised", "medium"))
    sim.run(0, 9)
    sim.event(10, ev("escalated", "high"))
    assert sim.summary() == [(10, "page", "alice")]
    assert sim.thread is not None and sim.thread.priority == "high"


def test_low_priority_never_pages_and_bedside_ack_is_not_forwarded() -> None:
    sim = Sim(policy())
    sim.event(0, ev("raised", "low"))
    sim.run(0, 3600)
    assert sim.log == []
    bedside = Sim(policy())
    bedside.event(0, ev("raised"))
    bedside.event(20, ev("acknowledged", by="nurse at chair"))
    bedside.run(20, 300)
    assert bedside.summary() == [(0, "page", "alice"), (20, "acknowledge", "nurse at chair")]


def test_undeliverable_level_escalates_at_once() -> None:
    sim = Sim(policy())
    sim.event(0, ev("raised"))
    assert sim.thread is not None
    sim.thread = undeliverable(sim.thread, T0 + 2, "every channel failed")
    sim.run(2, 2)
    assert sim.summary() == [(0, "page", "alice"), (2, "page", "bob")]


def test_drill_flag_and_json_round_trip() -> None:
    sim = Sim(policy())
    sim.event(0, ev("raised", drill=True))
    assert sim.thread is not None and sim.thread.drill
    assert Thread.from_json(sim.thread.to_json()) == sim.thread


SHOULD_PAGE = [
    ("open, delay passed", {"state": State.OPEN, "next_at": T0}, True, "after its delay"),
    ("open, in delay", {"state": State.OPEN, "next_at": T0 + 5}, False, "waiting for delay"),
    ("open, low", {"state": State.OPEN, "next_at": None}, False, "does not page"),
    ("paged, timeout", {"state": State.PAGED, "level": 1, "next_at": T0}, True,
     "level 1 did not acknowledge"),
    ("paged, waiting", {"state": State.PAGED, "level": 2, "next_at": T0 + 1}, False,
     "ack timeout of level 2"),
    ("paged, exhausted", {"state": State.PAGED, "next_at": None}, False, "exhausted"),
    ("acked", {"state": State.ACKED, "next_at": None}, False, "thread is acked"),
    ("cleared", {"state": State.PAGED, "next_at": T0, "cleared_at": T0}, False, "flap window"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "fields", "due", "reason"), SHOULD_PAGE, ids=[c[0] for c in SHOULD_PAGE])
def test_should_page_reasons(name: str, fields: dict[str, Any], due: bool, reason: str) -> None:
    base = Thread(
        key=KEY, n=1, site="clinic1", chair="chair3", alarm="spo2_low", priority="high",
        kind="physiological", text="x", drill=False, state=State.OPEN, opened_at=T0,
        event_t=0, next_at=None,
    )  # fmt: skip
    got_due, got_reason = should_page(replace(base, **fields), policy(), T0)
    assert got_due is due and reason in got_reason, (name, got_reason)


def test_rate_limit_counts_suppresses_and_summarises() -> None:
    rl = RateLimiter(RateRule(max_pages=3, window_s=600))
    for i in range(3):
        assert rl.check("alice", T0 + i)[0]
        rl.record_sent("alice", T0 + i)
    ok, why = rl.check("alice", T0 + 10)
    assert not ok and "3 pages in 600 s" in why
    for i in range(200):  # a fault: hundreds of pages for alice
        if not rl.check("alice", T0 + 10 + i)[0]:
            rl.record_suppressed("alice", f"clinic1/chair{i % 4}/spo2_low")
    assert rl.suppressed_total["alice"] == 200
    assert rl.summaries_due(T0 + 300) == []  # still over the limit
    (summary,) = rl.summaries_due(T0 + 601)
    assert summary.person == "alice" and summary.count == 200 and len(summary.keys) == 4
    assert rl.summaries_due(T0 + 602) == []  # one summary, not one per suppressed page
    again = RateLimiter.from_json(rl.rule, rl.to_json())
    assert again.suppressed_total == {"alice": 200} and again.sent == rl.sent
