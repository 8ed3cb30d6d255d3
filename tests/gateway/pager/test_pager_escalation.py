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
    sim.event(0, ev("raised", "medium"))
    sim.run(0, 1200)
    assert sim.summary() == [
        (30, "page", "alice"),
        (150, "page", "bob"),
        (270, "page", "carol"),
        (390, "page", "alice"),  # round 2: repeat until acknowledged
        (510, "page", "bob"),
        (630, "page", "carol"),
        (750, "exhausted", None),  # max_rounds=2: a medium alarm stops, reported
    ]
    assert [a.round for _, a in sim.log if a.kind == "page"] == [1, 1, 1, 2, 2, 2]
    assert sim.thread is not None and sim.thread.next_at is None


def test_high_priority_is_never_abandoned_last_level_paged_again() -> None:
    sim = Sim(policy())
    sim.event(0, ev("raised"))
    sim.run(0, 600)
    assert sim.summary() == [
        (0, "page", "alice"),
        (60, "page", "bob"),
        (120, "page", "carol"),
        (180, "page", "alice"),
        (240, "page", "bob"),
        (300, "page", "carol"),
        (360, "exhausted", None),  # reported once ...
        (360, "page", "carol"),  # ... and the last level keeps being paged
        (420, "page", "carol"),
        (480, "page", "carol"),
        (540, "page", "carol"),
        (600, "page", "carol"),
    ]
    assert sim.thread is not None and sim.thread.exhausted_at == T0 + 360


def test_raise_after_clear_after_ack_pages_again_and_escalates() -> None:
    """Issue 14.1: the flap window never swallows a raise that follows an ack."""
    sim = Sim(policy())
    sim.event(0, ev("raised"))
    sim.run(0, 61)  # alice at 0, bob at 60
    sim.ack(70, "bob")
    sim.event(80, ev("cleared"))
    sim.event(95, ev("raised"))  # within the 60 s flap window
    sim.run(95, 160)
    assert sim.summary()[4:] == [
        (95, "page", "bob"),  # the level reached (2) is paged again at once
        (155, "page", "carol"),  # not acknowledged: escalates
    ]
    assert sim.thread is not None and sim.thread.n == 2 and sim.thread.reopened_from == 1


def test_raise_after_ack_pages_whoever_acknowledged_too() -> None:
    sim = Sim(policy())
    sim.event(0, ev("raised"))
    sim.ack(5, "alice")
    sim.event(10, ev("cleared"))
    sim.run(10, 20)
    sim.event(21, ev("raised"))
    assert sim.summary()[3:] == [(21, "page", "alice")]
    sim.run(21, 82)
    assert sim.summary()[-1] == (81, "page", "bob")


def test_renotify_after_ack_pages_and_escalates_every_time() -> None:
    """Issue 14.2: renotify pages like a new raise, again after each ack."""
    sim = Sim(policy())
    sim.event(0, ev("raised"))
    sim.ack(10, "alice")
    sim.event(130, ev("renotify"))
    sim.run(130, 200)
    assert sim.summary()[3:] == [(130, "page", "alice"), (190, "page", "bob")]
    sim.ack(195, "bob")
    sim.event(315, ev("renotify"))
    sim.run(315, 316)
    assert sim.summary()[7:] == [(315, "page", "bob")]  # level 2 reached, bob acknowledged
    assert sim.thread is not None and sim.thread.n == 3 and sim.thread.state is State.PAGED


def test_unacknowledged_flapping_is_still_one_thread() -> None:
    sim = Sim(policy())
    sim.event(0, ev("raised"))
    sim.event(5, ev("cleared"))
    sim.event(10, ev("raised"))
    sim.run(0, 30)
    assert sim.summary() == [(0, "page", "alice")]
    assert sim.thread is not None and sim.thread.n == 1 and sim.thread.flaps == 1


def _ev(alarm: str, event: str, priority: str = "high", **over: Any) -> EventIn:
    return replace(ev(event, priority), key=f"clinic1/chair3/{alarm}", alarm=alarm,
                   text=f"{alarm} text", **over)  # fmt: skip


def test_inhibitor_takes_over_open_threads_at_the_level_reached() -> None:
    pol = policy()
    sys_high = on_event(None, _ev("sys_high", "raised", "medium"), pol, T0, 1).thread
    assert sys_high is not None
    sys_high = decide(sys_high, pol, T0 + 30).thread  # alice paged
    assert sys_high is not None
    sys_high = decide(sys_high, pol, T0 + 150).thread  # bob paged (level 2)
    assert sys_high is not None and sys_high.level == 2
    bp = _ev("bp_intervention", "raised", inhibits=("sys_high", "dia_high"))
    step = on_event(None, bp, pol, T0 + 160, 1, merge=(sys_high,))
    assert step.thread is not None
    pages = [(a.kind, a.person, a.key) for a in step.actions]
    assert pages == [("merge", None, "clinic1/chair3/sys_high"),
                     ("page", "bob", "clinic1/chair3/bp_intervention")]  # fmt: skip
    (merged,) = step.merged
    assert merged.state is State.MERGED and merged.next_at is None
    assert step.thread.members == ("sys_high",)
    assert set(step.thread.active_alarms) == {"bp_intervention", "sys_high"}
    # the inhibitor clears but sys_high is still active: the thread goes on
    cleared = on_event(step.thread, _ev("bp_intervention", "cleared"), pol, T0 + 170, 2)
    assert cleared.thread is not None and cleared.thread.cleared_at is None
    after = decide(cleared.thread, pol, T0 + 220)
    assert [(a.kind, a.person) for a in after.actions] == [("page", "carol")]
    # an inhibited event joins without paging
    joined = on_event(after.thread, _ev("dia_high", "raised", inhibited_by="bp_intervention"),
                      pol, T0 + 221, 2)  # fmt: skip
    assert joined.actions == () and joined.thread is not None
    assert "dia_high" in joined.thread.active_alarms


def test_undeliverable_level_moves_on_but_rounds_keep_their_spacing() -> None:
    """Issue 14.3: nobody reachable must not run through every round in seconds."""
    sim = Sim(policy())
    sim.event(0, ev("raised"))
    for t in range(0, 400):
        for _ in range(3):  # each page fails at once; the next level is due the same second
            assert sim.thread is not None
            if sim.log and sim.log[-1][0] == t and not sim.thread.level_unreached:
                sim.thread = undeliverable(sim.thread, sim.pol, T0 + t, "every channel failed")
            step = decide(sim.thread, sim.pol, T0 + t)
            sim._take(T0 + t, step.thread, step.actions)
    pages = [(at, a.person) for at, a in sim.log if a.kind == "page"]
    # levels 1-3 at once, then each new round only after the last level's ack timeout
    assert pages[:9] == [(0, "alice"), (0, "bob"), (0, "carol"),
                         (60, "alice"), (60, "bob"), (60, "carol"),
                         (120, "carol"), (180, "carol"), (240, "carol")], pages  # fmt: skip
    assert [at for at, a in sim.log if a.kind == "exhausted"] == [120]
    assert sim.thread is not None and sim.thread.undelivered >= 8
    assert "could not be delivered" in sim.log[6][1].reason


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
    sim.thread = undeliverable(sim.thread, sim.pol, T0 + 2, "every channel failed")
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


def test_exhausted_medium_thread_pages_again_when_raised_again() -> None:
    sim = Sim(policy())
    sim.event(0, ev("raised", "medium"))
    sim.run(0, 800)  # exhausted at 750, nobody paged since
    sim.event(801, ev("cleared", "medium"))
    sim.event(810, ev("raised", "medium"))  # within the flap window
    sim.run(810, 845)
    assert sim.summary()[-2:] == [(750, "exhausted", None), (840, "page", "carol")]
    assert sim.thread is not None and sim.thread.n == 2 and sim.thread.round == 1
