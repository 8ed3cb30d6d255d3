"""Stored watermarks (chairside.store.watermark): the chain rule, start, gaps,
rate limit, snapshot/restore and bounds, table-driven with an injected clock."""

from __future__ import annotations

import json

import pytest

from chairside.metrics import Metrics
from chairside.store.confirm import Confirmations
from chairside.store.watermark import Watermarks

S, C = "clinic-a", "3"

# (name, steps, expected W of boot 1 after each step); a step is (seq, p, now_ms)
CHAINS: list[tuple[str, list[tuple[int, int, int]], list[int | None]]] = [
    ("in order from the start of a boot",
     [(0, -1, 0), (1, 0, 1000), (3, 1, 2000)], [0, 1, 3]),
    ("out of order: nothing confirmed past the hole until it fills",
     [(0, -1, 0), (2, 1, 10), (3, 2, 20), (1, 0, 30)], [0, 0, 0, 3]),
    ("resend after loss: the broker lost seq 6, the box re-sends it",
     [(0, -1, 0), (5, 0, 1), (7, 6, 2), (8, 7, 3), (6, 5, 40_000)], [0, 5, 5, 5, 8]),
    ("a re-send carries a new p (the box dropped seq 6): it replaces the old link",
     [(0, -1, 0), (5, 0, 1), (7, 6, 2), (7, 5, 30_000)], [0, 5, 5, 7]),
    ("a re-send of a confirmed reading changes nothing",
     [(0, -1, 0), (1, 0, 1), (1, 0, 2), (0, -1, 3)], [0, 1, 1, 1]),
    ("a chain whose start is unknown waits (a live reading after spooled ones)",
     [(10, 9, 0), (11, 10, 1000), (0, -1, 1500), (4, 0, 1600), (9, 4, 1700)], [None, None, 0, 4, 11]),
]


@pytest.mark.parametrize(("name", "steps", "expect"), CHAINS, ids=[c[0] for c in CHAINS])
def test_chain(name: str, steps: list[tuple[int, int, int]], expect: list[int | None]) -> None:
    wm = Watermarks()
    got = []
    for seq, p, now in steps:
        wm.durable(S, C, 1, seq, p, now)
        got.append(wm.watermark(S, C, 1))
    assert got == expect


@pytest.mark.parametrize(("seq", "p"), [(5, 5), (5, 6), (5, -2), (0, -1 - 1), (2**31, 0)])
def test_bad_links_are_counted_and_ignored(seq: int, p: int) -> None:
    wm = Watermarks()
    assert wm.durable(S, C, 1, seq, p, 0) is False
    assert wm.counters.bad_p == 1 and wm.watermark(S, C, 1) is None and wm.pending(S, C) == 0


def live(wm: Watermarks, first_seq: int, start_ms: int, seconds: int, boot: int = 1) -> int:
    """The box sends one live reading a second, each linked to the one before
    (the chain stays stuck behind whatever is missing); returns the last seq."""
    seq = first_seq
    for i in range(seconds):
        wm.durable(S, C, boot, seq, seq - 1, start_ms + i * 1000)
        seq += 1
    return seq - 1


def test_unknown_start_waits_start_delay_then_takes_smallest_p() -> None:
    # the gateway restarted without its snapshot: the box's oldest held
    # reading (p = the last confirmation it saw, 19) arrives with its re-send
    wm = Watermarks(start_delay_ms=45_000)
    live(wm, 25, 0, 31)  # 25..55, all waiting
    assert wm.expire_gaps(30_000) == [] and wm.watermark(S, C, 1) is None
    for seq in range(20, 25):  # re-sent oldest first after 30 s without progress
        wm.durable(S, C, 1, seq, 19 if seq == 20 else seq - 1, 31_000)
    last = live(wm, 56, 31_000, 14)
    assert wm.expire_gaps(44_000) == [] and wm.watermark(S, C, 1) is None
    wm.durable(S, C, 1, last + 1, last, 45_000)
    assert wm.expire_gaps(45_000) == []
    assert wm.watermark(S, C, 1) == last + 1 and wm.due(45_000) == [(S, C, 1, last + 1)]


def test_start_delay_counts_only_while_the_box_is_heard() -> None:
    # a new boot: one live reading (p=9 names a spooled one), then the link drops
    wm = Watermarks(start_delay_ms=45_000)
    wm.durable(S, C, 1, 10, 9, 0)
    assert wm.expire_gaps(3_600_000) == [] and wm.watermark(S, C, 1) is None
    # an hour later the box is back: its replay starts at the boot's first reading
    for seq in range(0, 10):
        wm.durable(S, C, 1, seq, seq - 1, 3_600_000)
    assert wm.watermark(S, C, 1) == 10


def test_a_reading_sent_again_after_its_confirmation_makes_the_watermark_due_again() -> None:
    # the box rebooted before it saw the watermark of its old boot; the
    # retained message now belongs to the new boot, so it re-sends from flash
    wm = Watermarks()
    for seq in range(5):
        wm.durable(S, C, 7, seq, seq - 1, 0)
    wm.mark_published(S, C, 7, 4, 0)
    wm.durable(S, C, 8, 0, -1, 10)
    wm.mark_published(S, C, 8, 0, 10)
    assert wm.due(5_000) == []
    assert wm.durable(S, C, 7, 2, -1, 6_000) is False and wm.counters.stale == 1
    assert wm.due(6_000) == [(S, C, 7, 4)]


def test_start_delay_zero_is_the_first_records_p() -> None:
    wm = Watermarks(start_delay_ms=0)
    assert wm.durable(S, C, 1, 25, 24, 0) is True
    assert wm.watermark(S, C, 1) == 25


def test_gap_timeout_jumps_to_smallest_pending_p_and_says_why() -> None:
    wm = Watermarks(gap_timeout_ms=600_000)
    wm.durable(S, C, 1, 0, -1, 0)
    wm.durable(S, C, 1, 5, 0, 0)
    wm.mark_published(S, C, 1, 5, 0)
    # seq 7 never arrives, and the box, although online, never re-sends it
    # (it no longer holds it): readings keep coming, linked to 7 and on
    last = live(wm, 8, 100_000, 600)
    assert wm.expire_gaps(699_000) == [] and wm.watermark(S, C, 1) == 5
    wm.durable(S, C, 1, last + 1, last, 700_000)
    gaps = wm.expire_gaps(700_000)
    assert len(gaps) == 1 and (gaps[0].boot, gaps[0].from_w, gaps[0].to_w) == (1, 5, 7)
    assert "6..7" in gaps[0].reason and "lost" in gaps[0].reason
    assert wm.watermark(S, C, 1) == last + 1 and wm.counters.watermark_gaps == 1
    assert wm.due(700_000) == [(S, C, 1, last + 1)]
    assert wm.expire_gaps(2_000_000) == []  # nothing pending: no more gaps


def test_due_applies_the_gap_rule_itself_and_keeps_the_gaps_for_the_caller() -> None:
    wm = Watermarks(gap_timeout_ms=10_000)
    wm.durable(S, C, 1, 0, -1, 0)
    live(wm, 2, 1_000, 10)  # seq 1 never comes; 9 s heard while waiting
    assert wm.due(10_000) == [(S, C, 1, 0)] and wm.take_gaps() == []
    wm.durable(S, C, 1, 12, 11, 11_000)  # 10 s heard
    assert wm.due(11_000) == [(S, C, 1, 12)]
    gaps = wm.take_gaps()
    assert [(g.from_w, g.to_w) for g in gaps] == [(0, 1)] and wm.take_gaps() == []


def test_no_gap_while_the_box_is_offline() -> None:
    # the broker lost seq 7; the box went offline before its 30 s re-send timer
    wm = Watermarks(gap_timeout_ms=600_000)
    wm.durable(S, C, 1, 6, -1, 0)
    wm.durable(S, C, 1, 8, 7, 1_000)
    wm.durable(S, C, 1, 9, 8, 2_000)
    assert wm.expire_gaps(7_200_000) == [] and wm.watermark(S, C, 1) == 6
    # two hours later it is back and re-sends what it holds, oldest first
    wm.durable(S, C, 1, 7, 6, 7_200_000)
    assert wm.watermark(S, C, 1) == 9 and wm.counters.watermark_gaps == 0


def test_no_gap_while_the_chain_advances() -> None:
    wm = Watermarks(gap_timeout_ms=10_000)
    wm.durable(S, C, 1, 0, -1, 0)
    for i in range(1, 30):
        wm.durable(S, C, 1, i + 1, i, i * 1000)  # one reading always waits for the next
        wm.durable(S, C, 1, i, i - 1, i * 1000 + 500)
        assert wm.expire_gaps(i * 1000 + 600) == []
    assert wm.counters.watermark_gaps == 0


def test_two_boots_are_independent_and_the_least_recently_heard_is_forgotten() -> None:
    wm = Watermarks()
    wm.durable(S, C, 7, 0, -1, 0)  # the box's old boot, replayed from flash
    wm.durable(S, C, 8, 0, -1, 0)  # its live boot
    wm.durable(S, C, 8, 1, 0, 1)
    assert (wm.watermark(S, C, 7), wm.watermark(S, C, 8)) == (0, 1)
    assert sorted(wm.due(10)) == [(S, C, 7, 0), (S, C, 8, 1)]
    wm.durable(S, C, 5, 4, -1, 20)  # an even older boot still in the box's flash
    wm.durable(S, C, 8, 2, 1, 30)
    wm.durable(S, C, 9, 0, -1, 40)  # a new boot: boot 7 was heard least recently
    assert wm.watermark(S, C, 7) is None and wm.counters.boots_forgotten == 1
    assert (wm.watermark(S, C, 5), wm.watermark(S, C, 8), wm.watermark(S, C, 9)) == (4, 2, 0)
    # boot 7 heard again: a new chain (the box's oldest held reading links to
    # what it saw confirmed, or -1 after a reboot)
    wm.durable(S, C, 7, 3, -1, 50)
    assert wm.watermark(S, C, 7) == 3 and wm.watermark(S, C, 5) is None
    assert wm.watermark("other", C, 8) is None  # chairs are separate too


def test_due_is_rate_limited_per_chair() -> None:
    wm = Watermarks(min_interval_ms=1000)
    wm.durable(S, C, 1, 0, -1, 0)
    assert wm.due(0) == [(S, C, 1, 0)]
    wm.mark_published(S, C, 1, 0, 0)
    assert wm.due(0) == []
    wm.durable(S, C, 1, 1, 0, 200)
    wm.durable(S, C, 1, 2, 1, 400)
    assert wm.due(999) == []
    assert wm.due(1000) == [(S, C, 1, 2)]
    wm.mark_published(S, C, 1, 2, 1000)
    assert wm.due(5000) == []  # nothing new: nothing to publish


def test_rate_limit_costs_one_message_per_chair_per_interval_at_1000_chairs() -> None:
    wm = Watermarks(min_interval_ms=1000)
    published = 0
    for ms in range(0, 10_000, 100):  # 10 s, 10 readings/s per chair, publish tick every 100 ms
        for chair in range(1000):
            seq = ms // 100
            wm.durable(S, str(chair), 1, seq, seq - 1, ms)
        for site, chair, boot, w in wm.due(ms):
            wm.mark_published(site, chair, boot, w, ms)
            published += 1
    assert published == 1000 * 10


def test_snapshot_restore_round_trip_through_json() -> None:
    wm = Watermarks()
    wm.durable(S, C, 4, 0, -1, 0)
    wm.durable(S, C, 4, 1, 0, 0)
    wm.durable(S, C, 5, 0, -1, 0)
    wm.durable(S, "9", 2, 3, 5 - 5 - 1, 0)
    wm.durable(S, C, 5, 3, 2, 0)  # pending: not in the snapshot (the box re-sends it)
    data = json.loads(json.dumps(wm.snapshot()))
    fresh = Watermarks()
    assert fresh.restore(data, 50_000) == 3
    assert (fresh.watermark(S, C, 4), fresh.watermark(S, C, 5), fresh.watermark(S, "9", 2)) == (1, 0, 3)
    assert fresh.due(50_000) == []  # the retained messages already say so
    assert fresh.durable(S, C, 5, 1, 0, 50_001) is True  # the chain goes on at once
    assert fresh.due(50_001) == [(S, C, 5, 1)]


@pytest.mark.parametrize("bad", [
    {}, {"v": 2, "chairs": []}, {"v": 1, "chairs": "x"},
    {"v": 1, "chairs": [{"site": S, "chair": C, "boots": [[1, "x"], [1], [-1, 3], [2, -2]]}]},
    {"v": 1, "chairs": [{"site": 1, "chair": C, "boots": []}, "junk"]},
])
def test_restore_skips_and_counts_what_it_does_not_understand(bad: dict[str, object]) -> None:
    wm = Watermarks()
    assert wm.restore(bad, 0) == 0
    assert wm.counters.restore_skipped >= 1 and wm.snapshot() == {"v": 1, "chairs": []}


def test_restore_keeps_at_most_three_boots_and_the_higher_w() -> None:
    wm = Watermarks()
    wm.durable(S, C, 3, 0, -1, 0)
    wm.durable(S, C, 3, 1, 0, 0)
    data = {"v": 1, "chairs": [{"site": S, "chair": C, "boots": [[1, 10], [2, 20], [3, 0], [4, 5]]}]}
    wm.restore(data, 0)
    assert [wm.watermark(S, C, b) for b in (1, 2, 3, 4)] == [10, 20, 1, None]
    assert wm.counters.restore_skipped == 1


def test_pending_is_bounded_per_chair_furthest_ahead_dropped_and_counted() -> None:
    wm = Watermarks(max_pending=3)
    wm.durable(S, C, 1, 0, -1, 0)
    for seq in (2, 3, 4, 5):  # 1 missing: all wait
        wm.durable(S, C, 1, seq, seq - 1, 0)
    assert wm.pending(S, C) == 3 and wm.counters.pending_dropped == 1
    wm.durable(S, C, 1, 1, 0, 10)  # the hole's filler is kept (4 dropped instead)
    assert wm.watermark(S, C, 1) == 3 and wm.counters.pending_dropped == 2
    wm.durable(S, C, 1, 4, 3, 30_000)  # the box re-sends what was forgotten
    wm.durable(S, C, 1, 5, 4, 30_000)
    assert wm.watermark(S, C, 1) == 5


def test_timing_arguments_are_validated() -> None:
    with pytest.raises(ValueError):
        Watermarks(gap_timeout_ms=0)
    with pytest.raises(ValueError):
        Watermarks(max_pending=0)


def test_a_watermark_that_cannot_be_sent_stays_due_until_it_can() -> None:
    """Confirmations send on the ingest connection; while it is down (send
    answers False) nothing is marked published, and the next tick after the
    reconnect sends the same watermark."""
    sent: list[tuple[str, bytes]] = []
    up = False

    def send(topic: str, payload: bytes) -> bool:
        if up:
            sent.append((topic, payload))
        return up

    confirmations = Confirmations(Watermarks(), send, Metrics(prefix="t_"), None)
    for seq in range(3):
        confirmations.durable((S, C, 7, seq, seq - 1), 0)
    confirmations.publish_due(1_000)  # connection down
    assert sent == [] and confirmations.watermarks.due(2_000) == [(S, C, 7, 2)]
    up = True
    confirmations.publish_due(2_000)
    assert [(t, json.loads(p)) for t, p in sent] == [
        (f"chairside/v1/{S}/{C}/stored", {"v": 1, "boot": 7, "seq": 2, "t": 2_000})]
    confirmations.publish_due(3_000)
    assert len(sent) == 1  # published: not again until it moves
