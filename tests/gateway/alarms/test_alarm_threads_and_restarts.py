"""Issue 14, the engine's side: re-notification after every acknowledgement,
threads (``inhibits`` / ``inhibited_by``), restarts (snapshot / restore,
deterministic event ids), visible latching, staleness ended only by vitals,
truthful clear texts, flapping across the hysteresis band, and an AF statistic
that a single step of the rate does not fool.

Scenario tests with an injected clock (``now_ms``) and hand-computed
expectations: one vitals reading per second from ``T0``, adult profile.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
from typing import Any

import pytest
from test_alarm_engine import CHAIR, SITE, T0, S, nibp, of, run_vitals, vitals

from chairside.alarms import AlarmEngine, AlarmState, load_profile
from chairside.alarms.conditions import pulse_irregularity
from chairside.model import AlarmEvent, Reading


def feed(
    engine: AlarmEngine, kind: str, fields: dict[str, Any], t: int, measured: int | None = None
) -> list[AlarmEvent]:
    m = t if measured is None else measured
    return engine.on_reading(Reading(SITE, CHAIR, kind, fields, m, t), t)  # type: ignore[arg-type]


def secs(events: list[AlarmEvent], start: int = T0) -> list[tuple[str, str, float]]:
    return [(e.alarm, e.event, (e.t - start) / S) for e in events]


def new_engine() -> AlarmEngine:
    return AlarmEngine(load_profile(), id_prefix="t")


def restarted(engine: AlarmEngine, now_ms: int) -> tuple[AlarmEngine, list[AlarmEvent]]:
    """A new engine (a new gateway process) from the old one's snapshot, through JSON as on disk."""
    saved = json.loads(json.dumps(engine.snapshot()))
    fresh = new_engine()
    return fresh, fresh.restore(saved, now_ms)


# ------------------------------------------------------------ 2. renotify
def test_renotify_repeats_after_every_acknowledgement() -> None:
    """SpO2 86 % throughout: raised at 15 s; acknowledged at 20, 200 and 400 s;
    each acknowledgement pauses re-notification for 120 s, so: 140, 320, 520."""
    engine = new_engine()
    events: list[AlarmEvent] = []
    for i in range(600):
        t = T0 + i * S
        events += feed(engine, "vitals", vitals(spo2=86), t)
        events += engine.tick(t)
        if i in (20, 200, 400):
            events += engine.acknowledge(SITE, CHAIR, "spo2_low", "nurse kim", t)
    got = [(e.event, (e.t - T0) // S) for e in of(events, "spo2_low")]
    assert got == [("raised", 15), ("acknowledged", 20), ("renotify", 140), ("acknowledged", 200),
                   ("renotify", 320), ("acknowledged", 400), ("renotify", 520)]
    raise_id = events[0].id
    assert [e.id for e in events] == [raise_id, f"{raise_id}-a1", f"{raise_id}-r1", f"{raise_id}-a2",
                                      f"{raise_id}-r2", f"{raise_id}-a3", f"{raise_id}-r3"]
    assert all(e.text.startswith("still active: SpO2 low: SpO2 86 % < 90 %") for e in events if e.event == "renotify")


# ------------------------------------------------------------- 4. threads
def test_bp_intervention_names_what_it_inhibits_and_sys_high_names_its_inhibitor() -> None:
    engine = new_engine()
    first = feed(engine, "nibp", nibp(sys=190, dia=100, map_=130), T0)
    assert [(e.alarm, e.event, e.inhibits, e.inhibited_by) for e in first] == [("sys_high", "raised", (), None)]
    assert "inhibits" not in first[0].to_payload() and "inhibited_by" not in first[0].to_payload()
    second = feed(engine, "nibp", nibp(sys=226, dia=118, map_=154), T0 + 300 * S)
    assert [(e.alarm, e.event) for e in second] == [("bp_intervention", "escalated")]
    assert second[0].to_payload()["inhibits"] == ["dia_high", "sys_high"]
    # one acknowledgement for the thread: the sys_high ack says whose thread it is
    acked = engine.acknowledge(SITE, CHAIR, "bp_intervention", "dr lee", T0 + 310 * S)
    assert [(e.alarm, e.event, e.inhibited_by) for e in acked] == [
        ("bp_intervention", "acknowledged", None), ("sys_high", "acknowledged", "bp_intervention")]
    # pressure back: sys_high clears in the same thread; bp_intervention (acked) clears too
    third = feed(engine, "nibp", nibp(sys=150, dia=90, map_=110), T0 + 600 * S)
    assert sorted((e.alarm, e.event, e.inhibited_by) for e in third) == [
        ("bp_intervention", "cleared", None), ("sys_high", "cleared", "bp_intervention")]
    assert all(e.to_payload()["inhibits"] == ["dia_high", "sys_high"] for e in third if e.alarm == "bp_intervention")


def test_latched_inhibitor_still_owns_the_thread() -> None:
    """sys_high raised, bp_intervention escalates and latches (nobody acked):
    the sys_high clear carries inhibited_by while the latch is announced."""
    engine = new_engine()
    feed(engine, "nibp", nibp(sys=190), T0)
    feed(engine, "nibp", nibp(sys=226), T0 + 300 * S)
    third = feed(engine, "nibp", nibp(sys=150, dia=90), T0 + 600 * S)
    assert [(e.alarm, e.event, e.inhibited_by) for e in third] == [("sys_high", "cleared", "bp_intervention")]
    assert engine.state_of(SITE, CHAIR, "bp_intervention") is AlarmState.LATCHED


def test_inhibited_alarms_next_event_names_an_inhibitor_that_raised_meanwhile() -> None:
    """data_stale raised; then the last will raises box_offline (which inhibits
    data_stale); vitals come back: box_offline clears first (profile order), and
    data_stale's clear -- its first event since -- still names box_offline."""
    engine = new_engine()
    feed(engine, "status", {"state": "online", "sync": 1}, T0)
    _, t = run_vitals(engine, [vitals()] * 3, start=T0 + S)
    stale = engine.tick(t + 31 * S)
    assert [(e.alarm, e.event, e.inhibited_by) for e in stale] == [("data_stale", "raised", None)]
    offline = feed(engine, "status", {"state": "offline"}, t + 40 * S)
    assert [(e.alarm, e.event, e.inhibits) for e in offline] == [("box_offline", "raised", ("data_stale",))]
    back = feed(engine, "vitals", vitals(), t + 60 * S)
    assert [(e.alarm, e.event, e.inhibited_by) for e in back] == [
        ("box_offline", "cleared", None), ("data_stale", "cleared", "box_offline")]


def test_pulse_high_then_afib_flag_share_a_thread() -> None:
    """pulse_high is active (regular 130) when an irregular fast rhythm starts:
    the AF flag raises naming pulse_high in ``inhibits``; pulse_high's next event
    (its acknowledgement through the flag) names the flag."""
    engine = new_engine()
    events, t = run_vitals(engine, [vitals(pr=130)] * 12)
    assert [(e.alarm, e.event) for e in events] == [("pulse_high", "raised")]
    irregular = [vitals(pr=r) for r in itertools.islice(itertools.cycle([125, 145, 120, 140, 115, 150]), 40)]
    events, t = run_vitals(engine, irregular, start=t)
    afib = of(events, "afib_rvr_suspected")
    assert [(e.event, e.inhibits) for e in afib] == [("raised", ("pulse_high",))]
    acked = engine.acknowledge(SITE, CHAIR, "afib_rvr_suspected", "rn lee", t)
    assert [(e.alarm, e.inhibited_by) for e in acked] == [
        ("afib_rvr_suspected", None), ("pulse_high", "afib_rvr_suspected")]


# ----------------------------------------------------------- 6. restarts
def test_restart_keeps_an_active_alarm_without_a_second_raise_and_clears_it_later() -> None:
    engine = new_engine()
    events, t = run_vitals(engine, [vitals(spo2=86)] * 20)
    assert secs(events) == [("spo2_low", "raised", 15)]
    raise_id = events[0].id
    engine, restored = restarted(engine, t + 5 * S)  # five seconds of downtime
    assert restored == []
    assert engine.active(SITE, CHAIR)[0]["id"] == raise_id
    more, t = run_vitals(engine, [vitals(spo2=86)] * 30, start=t + 5 * S)
    assert more == []  # still low: no duplicate raise
    start = t
    more, t = run_vitals(engine, [vitals(spo2=97)] * 11, start=t)
    assert [(e.event, e.id, (e.t - start) // S) for e in more] == [("cleared", f"{raise_id}-c", 10)]


def test_restart_keeps_a_latched_alarm_and_republishes_it() -> None:
    engine = new_engine()
    events, t = run_vitals(engine, [vitals(spo2=80)] * 2 + [vitals(spo2=97)] * 15)
    assert [(e.alarm, e.event) for e in events] == [("spo2_critical", "raised")]
    assert engine.state_of(SITE, CHAIR, "spo2_critical") is AlarmState.LATCHED
    engine, restored = restarted(engine, t + 60 * S)
    assert restored == []
    assert engine.changed_chairs() == {(SITE, CHAIR)}  # republish alarms/active after the restart
    assert [(a["alarm"], a["latched"], a["acked"]) for a in engine.active(SITE, CHAIR)] == [
        ("spo2_critical", True, False)]
    more, t = run_vitals(engine, [vitals(spo2=97)] * 30, start=t + 60 * S)
    assert more == []  # the latch waits for a person
    acked = engine.acknowledge(SITE, CHAIR, "spo2_critical", "nurse kim", t)
    raise_id = events[0].id
    assert [(e.event, e.id) for e in acked] == [("acknowledged", f"{raise_id}-a1"), ("cleared", f"{raise_id}-c")]


def test_restart_keeps_the_acknowledgement_and_its_renotify_timer() -> None:
    engine = new_engine()
    _, t = run_vitals(engine, [vitals(spo2=86)] * 16)
    engine.acknowledge(SITE, CHAIR, "spo2_low", "nurse kim", T0 + 15 * S)  # re-notify due at 135 s
    engine, _ = restarted(engine, t + 10 * S)
    assert engine.active(SITE, CHAIR)[0]["acked"] is True
    more, _ = run_vitals(engine, [vitals(spo2=86)] * 120, start=t + 10 * S)
    assert [(e.event, (e.t - T0) // S) for e in more] == [("renotify", 135)]


def test_redelivered_reading_raises_the_same_event_id() -> None:
    """The gateway raised, published and died before saving its state: the
    broker redelivers the reading to the new process, which raises again with
    the same id (the pager and InfluxDB see one raise)."""
    before = new_engine()
    run_vitals(before, [vitals()] * 3)
    saved = json.loads(json.dumps(before.snapshot()))
    first = feed(before, "vitals", vitals(spo2=80), T0 + 10 * S)
    after = new_engine()
    after.restore(saved, T0 + 40 * S)
    again = feed(after, "vitals", vitals(spo2=80), T0 + 41 * S, measured=T0 + 10 * S)
    assert [(e.alarm, e.event) for e in first] == [("spo2_critical", "raised")]
    assert [(e.alarm, e.event, e.id) for e in again] == [("spo2_critical", "raised", first[0].id)]
    # a different crossing (another measured time) gets another id
    other = new_engine()
    assert feed(other, "vitals", vitals(spo2=80), T0 + 41 * S)[0].id != first[0].id


def test_pending_delay_resumes_after_a_short_gap_only() -> None:
    """SpO2 86 % for 10 s, then a restart.  Two seconds down: the delay that
    began at 0 s runs on (raise at 15 s).  A minute down: nobody saw the value
    meanwhile, so the delay starts again with the first reading (70 s → 85 s)."""
    engine = new_engine()
    _, t = run_vitals(engine, [vitals(spo2=86)] * 10)
    short, _ = restarted(engine, t + 2 * S)
    events, _ = run_vitals(short, [vitals(spo2=86)] * 10, start=t + 2 * S)
    assert secs(events) == [("spo2_low", "raised", 15)]
    long, _ = restarted(engine, t + 60 * S)
    events, _ = run_vitals(long, [vitals(spo2=86)] * 20, start=t + 60 * S)
    assert secs(events) == [("spo2_low", "raised", 85)]


def test_restart_restarts_the_stale_clock_but_keeps_an_announced_stale_alarm() -> None:
    engine = new_engine()
    _, t = run_vitals(engine, [vitals()] * 3)
    engine, _ = restarted(engine, t + 300 * S)  # five minutes down
    assert engine.tick(t + 301 * S) == []  # no flash of data_stale before the boxes are back
    assert [(e.alarm, e.event) for e in engine.tick(t + 331 * S)] == [("data_stale", "raised")]
    engine, _ = restarted(engine, t + 400 * S)
    assert engine.active(SITE, CHAIR)[0]["alarm"] == "data_stale"
    assert engine.tick(t + 401 * S) == []  # still announced, not raised again, not cleared
    back = feed(engine, "vitals", vitals(), t + 402 * S)
    assert [(e.alarm, e.event) for e in back] == [("data_stale", "cleared")]


def test_restart_keeps_standby() -> None:
    engine = new_engine()
    run_vitals(engine, [vitals()] * 3)
    engine.standby(SITE, CHAIR, "RN Lee", T0 + 5 * S)
    engine, _ = restarted(engine, T0 + 10 * S)
    assert engine.in_standby(SITE, CHAIR)


BAD_SNAPSHOTS: list[Any] = [
    None,
    [],
    {"v": 99, "chairs": []},
    {"v": 1, "chairs": "x"},
    {"v": 1, "chairs": [None, {"site": 3, "chair": "c"}, {"site": "s", "chair": "c", "alarms": []}]},
    {"v": 1, "chairs": [{"site": "s", "chair": "c", "first_seen_ms": "yesterday"}]},
]


@pytest.mark.parametrize("snapshot", BAD_SNAPSHOTS)
def test_restore_skips_unusable_snapshots_with_a_reason(snapshot: Any, caplog: pytest.LogCaptureFixture) -> None:
    engine = new_engine()
    assert engine.restore(snapshot, T0) == []
    assert engine.restore_skipped >= 1
    assert "alarm state restore: skipped" in caplog.text
    assert engine.tick(T0 + 3600 * S) == []


def test_restore_skips_bad_alarm_entries_keeps_good_ones_and_clears_removed_conditions() -> None:
    engine = new_engine()
    events, t = run_vitals(engine, [vitals(spo2=80)])
    saved = json.loads(json.dumps(engine.snapshot()))
    alarms = saved["chairs"][0]["alarms"]
    alarms["nonsense_state"] = {"state": "sleeping"}
    alarms["spo2_low"] = {"state": "active"}  # announced without since_ms
    alarms["retired_alarm"] = dict(alarms["spo2_critical"], id="t-old")  # no longer in the profile
    alarms["pulse_high"] = {"state": "pending", "last_ms": "soon"}
    fresh = new_engine()
    got = fresh.restore(saved, t)
    assert [(e.alarm, e.event, e.id, e.priority) for e in got] == [("retired_alarm", "cleared", "t-old-c", "high")]
    assert "no longer in the alarm profile" in got[0].text
    assert fresh.restore_skipped == 3
    assert [a["alarm"] for a in fresh.active(SITE, CHAIR)] == ["spo2_critical"]
    assert fresh.active(SITE, CHAIR)[0]["id"] == events[0].id


# ------------------------------------------------------- 7. visible latching
def test_latching_without_an_event_marks_the_chair_for_republishing() -> None:
    engine = new_engine()
    events, t = run_vitals(engine, [vitals(spo2=80)] * 2)
    assert [(e.alarm, e.event) for e in events] == [("spo2_critical", "raised")]
    assert engine.changed_chairs() == set()  # the raise itself is an event: the gateway republishes anyway
    events, t = run_vitals(engine, [vitals(spo2=97)] * 9, start=t)
    assert events == [] and engine.changed_chairs() == set()  # recovered 8 s: not yet
    events, t = run_vitals(engine, [vitals(spo2=97)] * 2, start=t)
    assert events == []
    assert engine.changed_chairs() == {(SITE, CHAIR)}  # latched at 12 s, no event: republish
    assert engine.changed_chairs() == set()  # drained
    assert engine.active(SITE, CHAIR)[0]["latched"] is True
    # back below the limit before anyone acknowledged: unlatched, again without an event
    events, t = run_vitals(engine, [vitals(spo2=80)], start=t)
    assert events == [] and engine.changed_chairs() == {(SITE, CHAIR)}
    assert engine.active(SITE, CHAIR)[0]["latched"] is False


# ------------------------------------------------------------ 8. staleness
def test_periodic_status_does_not_end_staleness() -> None:
    """Birth, three seconds of vitals, then only the box's 60-s status: data_stale
    raises 30 s after the last vitals and stays until vitals come back."""
    engine = new_engine()
    status = {"state": "online", "sync": 1, "oxi": "ok", "nibp": "ok"}
    feed(engine, "status", status, T0 - S)  # birth
    events, t = run_vitals(engine, [vitals()] * 3)
    last = t - S
    for k in range(1, 300):
        now = last + k * S
        if k % 60 == 0:
            events += feed(engine, "status", status, now)
        events += engine.tick(now)
    assert [(e.alarm, e.event, (e.t - last) / S) for e in events] == [("data_stale", "raised", 31)]
    back = feed(engine, "vitals", vitals(), last + 300 * S)
    assert [(e.alarm, e.event, e.text) for e in back] == [
        ("data_stale", "cleared", "No vitals received (data stale): vitals received again (chair c3)")]


# ------------------------------------------------------------- 9. texts
def test_raise_and_clear_texts_state_what_happened() -> None:
    engine = new_engine()
    texts: list[tuple[str, str, str]] = []

    def note(events: list[AlarmEvent]) -> None:
        texts.extend((e.alarm, e.event, e.text) for e in events if e.event in ("raised", "escalated", "cleared"))

    feed(engine, "status", {"state": "online", "sync": 1, "oxi": "ok", "nibp": "ok"}, T0 - 10 * S)
    events, t = run_vitals(engine, [vitals(spo2=88)] * 16 + [vitals(spo2=97)] * 11)
    note(events)
    events, t = run_vitals(engine, [vitals(pr=130)] * 11 + [vitals(pr=100)] * 11, start=t)
    note(events)
    events, t = run_vitals(engine, [vitals(spo2=80)] + [vitals(spo2=97)] * 11, start=t)
    note(events + engine.acknowledge(SITE, CHAIR, "spo2_critical", "kim", t))
    note(feed(engine, "nibp", nibp(sys=190, dia=100), t))
    note(feed(engine, "nibp", nibp(sys=150, dia=90), t + S))
    note(feed(engine, "nibp", nibp(sys=200, dia=125), t + 2 * S))
    note(feed(engine, "nibp", nibp(sys=150, dia=90), t + 3 * S))
    note(engine.acknowledge(SITE, CHAIR, "bp_intervention", "dr lee", t + 4 * S))
    note(feed(engine, "nibp", {"st": "error", "sys": None, "dia": None, "map": None, "pr": None, "err": 3,
                               "sync": 1}, t + 5 * S))
    note(feed(engine, "nibp", nibp(), t + 6 * S))
    note(feed(engine, "status", {"state": "online", "oxi": "silent", "sync": 1}, t + 7 * S))
    note(feed(engine, "status", {"state": "online", "oxi": "ok", "sync": 1}, t + 8 * S))
    note(feed(engine, "status", {"state": "offline"}, t + 9 * S))
    events, t = run_vitals(engine, [vitals(spo2=None, pr=None, st="no_finger")] * 16 + [vitals()] * 11,
                    start=t + 10 * S)
    note(events)
    note(engine.standby(SITE, CHAIR, "RN Lee", t)[0])
    assert texts == [
        ("spo2_low", "raised", "SpO2 low: SpO2 88 % < 90 % (chair c3)"),
        ("spo2_low", "cleared", "SpO2 low: SpO2 back to 97 % (limit 90 %) (chair c3)"),
        ("pulse_high", "raised", "Pulse high: pulse 130 bpm > 120 bpm (chair c3)"),
        ("pulse_high", "cleared", "Pulse high: pulse back to 100 bpm (limit 120 bpm) (chair c3)"),
        ("spo2_critical", "raised", "SpO2 critically low: SpO2 80 % < 85 % (chair c3)"),
        ("spo2_critical", "cleared", "SpO2 critically low: SpO2 back to 97 % (limit 85 %) (chair c3)"),
        ("sys_high", "raised", "Systolic high: sys 190 mmHg >= 180 mmHg (chair c3)"),
        ("sys_high", "cleared", "Systolic high: sys back to 150 mmHg (limit 180 mmHg) (chair c3)"),
        ("bp_intervention", "raised", "BP at clinic intervention point: dia 125 mmHg >= 120 mmHg (chair c3)"),
        ("bp_intervention", "cleared", "BP at clinic intervention point: sys back to 150 mmHg (limit 220 mmHg), "
                                       "dia 90 mmHg (limit 120 mmHg) (chair c3)"),
        ("nibp_failed", "raised", "NIBP measurement failed (chair c3)"),
        ("nibp_failed", "cleared", "NIBP measurement failed: next NIBP measurement succeeded (chair c3)"),
        ("oximeter_silent", "raised", "Oximeter module not answering: silent (chair c3)"),
        ("oximeter_silent", "cleared", "Oximeter module not answering: module answering again (chair c3)"),
        ("box_offline", "raised", "Chair box offline (chair c3)"),
        ("box_offline", "cleared", "Chair box offline: box back online (chair c3)"),
        ("probe_off", "raised", "SpO2 probe off / no finger / no signal: no_finger (chair c3)"),
        ("probe_off", "cleared", "SpO2 probe off / no finger / no signal: SpO2 signal back (chair c3)"),
    ]


def test_standby_clear_says_why() -> None:
    engine = new_engine()
    run_vitals(engine, [vitals(spo2=86)] * 16)
    cleared, _ = engine.standby(SITE, CHAIR, "RN Lee", T0 + 20 * S)
    assert [(e.alarm, e.text) for e in cleared] == [
        ("spo2_low", "SpO2 low: chair put in standby by RN Lee (chair c3)")]


def test_renotify_inside_the_hysteresis_band_shows_the_current_value() -> None:
    engine = new_engine()
    _, t = run_vitals(engine, [vitals(spo2=86)] * 16)
    engine.acknowledge(SITE, CHAIR, "spo2_low", "kim", t)
    events, _ = run_vitals(engine, [vitals(spo2=91)] * 125, start=t)  # inside the limit, not past 92
    assert [(e.event, e.value, e.text) for e in events] == [
        ("renotify", 91, "still active: SpO2 low: SpO2 91 %, not yet recovered (limit 90 %) (chair c3)")]


# ------------------------------------------------------------ 10. flapping
def alternate(low: int, high: int, seconds: int, total: int) -> list[dict[str, Any]]:
    one = [vitals(spo2=low)] * seconds + [vitals(spo2=high)] * seconds
    return list(itertools.islice(itertools.cycle(one), total))


@pytest.mark.parametrize(("low", "high"), [(88, 92), (86, 95), (89, 97)])
def test_flapping_across_the_hysteresis_band_is_one_alarm(low: int, high: int) -> None:
    """3 s below 90 %, 3 s at or past 92 % (the clear point), for two minutes.
    Dips start at 0, 6 and 12 s: the third violation within 60 s raises at 12 s.
    No recovery lasts the 10 s clear_hold_s, so nothing clears while it flaps;
    once SpO2 stays at 97 % it clears 10 s after the first good reading."""
    engine = new_engine()
    events, t = run_vitals(engine, alternate(low, high, 3, 117))  # ends with 3 s low
    assert secs(of(events, "spo2_low")) == [("spo2_low", "raised", 12)]
    start = t
    events, t = run_vitals(engine, [vitals(spo2=97)] * 11, start=t)
    assert secs(events, start) == [("spo2_low", "cleared", 10)]


def test_a_recovery_counts_after_clear_hold_s_exactly() -> None:
    engine = new_engine()
    _, t = run_vitals(engine, [vitals(spo2=86)] * 16)
    start = t
    events, t = run_vitals(engine, [vitals(spo2=92)] * 10 + [vitals(spo2=89)], start=t)
    assert events == []  # 0..9 s at 92 %: 9 s of recovery, then low again
    events, t = run_vitals(engine, [vitals(spo2=92)] * 11, start=t)
    assert secs(events, start) == [("spo2_low", "cleared", 21)]


# --------------------------------------------------------------- 11. AF flag
def ramp() -> list[int]:
    return [80] * 10 + [80 + 7 * k for k in range(1, 11)] + [150] * 10


# (name, 30 one-second rates, mean, irregularity, old RMSSD/mean): hand-computed in docs/alarms.md
AF_TABLE: list[tuple[str, list[int], float, float, float]] = [
    ("step 76 -> 150", [76, 77] * 7 + [76] + [150, 151] * 7 + [150], 3404 / 30, 2 / (3404 / 30),
     math.sqrt((28 + 74**2) / 29) / (3404 / 30)),
    ("ramp 80 -> 150 in 10 s", ramp(), 3485 / 30, 0.0, math.sqrt(10 * 49 / 29) / (3485 / 30)),
    ("regular tachycardia", [129, 130, 131] * 10, 130.0, 0.0, math.sqrt(56 / 29) / 130),
    ("irregular", [125, 145, 120, 140, 115, 150] * 5, 132.5, 15 / 132.5, math.sqrt(18875 / 29) / 132.5),
]


@pytest.mark.parametrize(("name", "rates", "mean", "irregularity", "old"), AF_TABLE, ids=[r[0] for r in AF_TABLE])
def test_af_statistic_hand_computed(name: str, rates: list[int], mean: float, irregularity: float, old: float) -> None:
    assert len(rates) == 30
    got_mean, got_irregularity = pulse_irregularity([float(r) for r in rates])
    assert got_mean == pytest.approx(mean) and got_irregularity == pytest.approx(irregularity)
    assert (got_irregularity >= 0.08) is (name == "irregular")
    assert (old >= 0.08) is (name in ("step 76 -> 150", "irregular"))  # what the RMSSD ratio said


@pytest.mark.parametrize(("name", "rates", "mean", "irregularity", "old"), AF_TABLE, ids=[r[0] for r in AF_TABLE])
def test_af_flag_only_for_the_irregular_series(
    name: str, rates: list[int], mean: float, irregularity: float, old: float
) -> None:
    """The series, then its last 30 s again (so every window position is seen): only
    the irregular one raises the AF flag; the fast regular ones are pulse_high."""
    engine = new_engine()
    series = [vitals(pr=r) for r in [76] * 30 + rates + rates[-30:] * 2]
    events, t = run_vitals(engine, series)
    assert bool(of(events, "afib_rvr_suspected")) is (name == "irregular")
    # and once the rate is steady again the flag clears (mean 76 < 110 - 10)
    run_vitals(engine, [vitals(pr=76)] * 60, start=t)
    assert engine.state_of(SITE, CHAIR, "afib_rvr_suspected") is AlarmState.INACTIVE


def test_single_step_to_a_steady_fast_rate_is_pulse_high_not_af() -> None:
    """Issue 14's case: 76 bpm, then a steady 150 bpm."""
    engine = new_engine()
    events, _ = run_vitals(engine, [vitals(pr=76)] * 30 + [vitals(pr=150)] * 60)
    assert of(events, "afib_rvr_suspected") == []
    assert secs(of(events, "pulse_high")) == [("pulse_high", "raised", 40)]


# ------------------------------------------------------ the state on disk
def test_state_file_round_trip_and_unusable_files(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    from chairside.alarms import state_file

    path = tmp_path / "gw" / state_file.FILE_NAME
    engine = new_engine()
    events, t = run_vitals(engine, [vitals(spo2=80)] * 2 + [vitals(spo2=97)] * 11)
    state_file.save(engine, path)
    assert not path.with_name(path.name + ".tmp").exists()
    again = new_engine()
    assert state_file.load(again, path, t + S) == []
    assert again.active(SITE, CHAIR)[0]["latched"] is True
    assert again.active(SITE, CHAIR)[0]["id"] == events[0].id

    fresh = new_engine()
    assert state_file.load(fresh, tmp_path / "missing.json", t) == []  # first start
    assert fresh.restore_skipped == 0
    path.write_text('{"v": 1, "chairs": [')  # torn or corrupt
    assert state_file.load(fresh, path, t) == []
    assert fresh.restore_skipped == 1 and not path.exists() and path.with_name(path.name + ".bad").exists()
    assert "unusable, starting without it" in caplog.text


ODD_VALUES: list[Any] = [None, "x", "", -1, 0, 2**63, 1e308, float("nan"), True, [], {}, [1, "a"], {"v": 1}]


def leaves(doc: Any, path: tuple[Any, ...] = ()) -> Iterable[tuple[Any, ...]]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from leaves(value, (*path, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from leaves(value, (*path, i))
    yield path


def test_restore_never_raises_whatever_a_field_holds() -> None:
    """Every field of a real snapshot (announced, acknowledged, latched and
    pending alarms, flap onsets) replaced by each odd value in turn: restore
    skips what it cannot use and the engine keeps working."""
    engine = new_engine()
    run_vitals(engine, [vitals(spo2=80)] + [vitals(spo2=97)] * 11 + [vitals(spo2=88, pr=130)] * 5)
    feed(engine, "nibp", nibp(sys=190), T0 + 20 * S)
    engine.acknowledge(SITE, CHAIR, "sys_high", "kim", T0 + 21 * S)
    saved = json.loads(json.dumps(engine.snapshot()))
    paths = list(leaves(saved))
    assert len(paths) > 100
    for path in paths:
        for odd in ODD_VALUES:
            doc = json.loads(json.dumps(saved))
            if not path:
                doc = odd
            else:
                holder = doc
                for key in path[:-1]:
                    holder = holder[key]
                holder[path[-1]] = odd
            fresh = new_engine()
            fresh.restore(doc, T0 + 30 * S)
            fresh.tick(T0 + 31 * S)
            feed(fresh, "vitals", vitals(), T0 + 32 * S)
            fresh.active(SITE, CHAIR)
            json.dumps(fresh.snapshot())
