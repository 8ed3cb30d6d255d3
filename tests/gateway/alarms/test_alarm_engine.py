"""Alarm engine: conditions, delays, hysteresis, latching, ack/renotify, technical alarms.

Readings are built directly (no broker); time is an integer ``now_ms`` advanced
by the test.  Limits come from the adult profile (gateway/chairside/profiles).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from typing import Any

import pytest

from chairside.alarms import AlarmEngine, AlarmState, load_profile, parse_profile
from chairside.alarms.adapter import (
    Rejected,
    active_payload,
    chairs_touched,
    event_line,
    handle_ack,
)
from chairside.model import AlarmEvent, AlarmStage, Reading

T0 = 1_700_000_000_000
S = 1000
SITE, CHAIR = "clinic1", "c3"


def vitals(spo2: int | None = 97, pr: int | None = 75, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"spo2": spo2, "pr": pr, "sig": 6, "st": "ok", "sync": 1}
    fields.update(extra)
    return fields


def nibp(
    sys: int | None = 120, dia: int | None = 80, map_: int | None = 93, **extra: Any
) -> dict[str, Any]:
    fields: dict[str, Any] = {"st": "ok", "sys": sys, "dia": dia, "map": map_, "pr": 75, "sync": 1}
    fields.update(extra)
    return fields


def reading(kind: str, fields: dict[str, Any], t: int, historical: bool = False) -> Reading:
    return Reading(
        site=SITE,
        chair=CHAIR,
        kind=kind,  # type: ignore[arg-type]
        fields=fields,
        measured_ms=t,
        received_ms=t,
        historical=historical,
    )


def feed(engine: AlarmEngine, kind: str, fields: dict[str, Any], t: int) -> list[AlarmEvent]:
    return engine.on_reading(reading(kind, fields, t), t)


def run_vitals(
    engine: AlarmEngine, series: Iterable[dict[str, Any]], start: int = T0, step: int = S
) -> tuple[list[AlarmEvent], int]:
    """One vitals reading per ``step`` ms; returns all events and the next time."""
    events: list[AlarmEvent] = []
    t = start
    for fields in series:
        events += feed(engine, "vitals", fields, t)
        events += engine.tick(t)
        t += step
    return events, t


def of(events: list[AlarmEvent], alarm: str, event: str | None = None) -> list[AlarmEvent]:
    return [e for e in events if e.alarm == alarm and (event is None or e.event == event)]


@pytest.fixture
def engine() -> AlarmEngine:
    return AlarmEngine(load_profile(), id_prefix="t")


def test_engine_implements_alarm_stage(engine: AlarmEngine) -> None:
    stage: AlarmStage = engine
    assert stage.tick(T0) == []
    assert stage.active(SITE, CHAIR) == []


# --------------------------------------------------------------- vitals limits
# (alarm, field, violating value, delay_s)
DELAYED_VITALS = [
    ("spo2_low", "spo2", 88, 15),
    ("pulse_high", "pr", 130, 10),
    ("pulse_low", "pr", 45, 10),
]


@pytest.mark.parametrize(("alarm", "field", "bad", "delay_s"), DELAYED_VITALS)
def test_dip_shorter_than_delay_raises_nothing(
    engine: AlarmEngine, alarm: str, field: str, bad: int, delay_s: int
) -> None:
    dip = [vitals(**{field: bad})] * delay_s  # present for delay_s - 1 seconds
    events, _ = run_vitals(engine, [vitals()] * 3 + dip + [vitals()] * 30)
    assert of(events, alarm) == []


@pytest.mark.parametrize(("alarm", "field", "bad", "delay_s"), DELAYED_VITALS)
def test_sustained_violation_raises_once_when_delay_runs_out(
    engine: AlarmEngine, alarm: str, field: str, bad: int, delay_s: int
) -> None:
    events, _ = run_vitals(engine, [vitals(**{field: bad})] * (delay_s + 30))
    raised = of(events, alarm)
    assert [e.event for e in raised] == ["raised"]
    assert raised[0].t == T0 + delay_s * S
    assert raised[0].value == bad
    assert raised[0].priority == "medium"


# (alarm, kind, fields exactly at the limit, raises?)  -- strict ops do not raise
# at the limit, inclusive ones (>=) do; the clinic's intervention point is ">=".
AT_LIMIT = [
    ("spo2_low", "vitals", vitals(spo2=90), False),
    ("spo2_low", "vitals", vitals(spo2=89), True),
    ("spo2_critical", "vitals", vitals(spo2=85), False),
    ("spo2_critical", "vitals", vitals(spo2=84), True),
    ("pulse_high", "vitals", vitals(pr=120), False),
    ("pulse_high", "vitals", vitals(pr=121), True),
    ("pulse_low", "vitals", vitals(pr=50), False),
    ("pulse_low", "vitals", vitals(pr=49), True),
    ("sys_high", "nibp", nibp(sys=180), True),
    ("sys_high", "nibp", nibp(sys=179), False),
    ("sys_low", "nibp", nibp(sys=90), False),
    ("sys_low", "nibp", nibp(sys=89), True),
    ("dia_high", "nibp", nibp(dia=110), True),
    ("dia_high", "nibp", nibp(dia=109), False),
    ("map_low", "nibp", nibp(map_=60), False),
    ("map_low", "nibp", nibp(map_=59), True),
    ("bp_intervention", "nibp", nibp(sys=220, dia=100), True),
    ("bp_intervention", "nibp", nibp(sys=219, dia=119), False),
    ("bp_intervention", "nibp", nibp(sys=150, dia=120), True),
]


@pytest.mark.parametrize(("alarm", "kind", "fields", "raises"), AT_LIMIT)
def test_exactly_at_the_limit(
    engine: AlarmEngine, alarm: str, kind: str, fields: dict[str, Any], raises: bool
) -> None:
    events: list[AlarmEvent] = []
    for i in range(40):  # long enough for any delay
        t = T0 + i * S
        if kind == "vitals" or i == 0:
            events += feed(engine, kind, fields, t)
        if kind == "nibp":
            events += feed(engine, "vitals", vitals(), t)
        events += engine.tick(t)
    assert bool(of(events, alarm, "raised")) is raises


def test_deep_desaturation_raises_at_once(engine: AlarmEngine) -> None:
    events, _ = run_vitals(engine, [vitals(spo2=97), vitals(spo2=80)])
    crit = of(events, "spo2_critical")
    assert [(e.event, e.t, e.priority) for e in crit] == [("raised", T0 + S, "high")]
    assert crit[0].text.startswith("SpO2 critically low: SpO2 80 % < 85 %")
    assert "(chair c3)" in crit[0].text


def test_spo2_low_escalates_to_critical_in_one_thread(engine: AlarmEngine) -> None:
    events, t = run_vitals(engine, [vitals(spo2=88)] * 16)
    assert [e.event for e in of(events, "spo2_low")] == ["raised"]
    more, t = run_vitals(engine, [vitals(spo2=82)] * 3, start=t)
    assert [(e.alarm, e.event, e.priority) for e in more] == [
        ("spo2_critical", "escalated", "high")
    ]
    # one acknowledgement covers the thread
    acked = engine.acknowledge(SITE, CHAIR, "spo2_critical", "nurse", t)
    assert [(e.alarm, e.event) for e in acked] == [
        ("spo2_critical", "acknowledged"),
        ("spo2_low", "acknowledged"),
    ]


def test_fast_drop_raises_critical_and_holds_low_while_critical(engine: AlarmEngine) -> None:
    events, t = run_vitals(engine, [vitals(spo2=88)] * 3 + [vitals(spo2=80)] * 30)
    assert [(e.alarm, e.event) for e in events] == [("spo2_critical", "raised")]
    # critical ends (latched, unacknowledged: 88 >= 85 + 2 held for clear_hold_s,
    # 10 s) while SpO2 stays low: low now raises, in the critical alarm's thread
    start = t
    events, t = run_vitals(engine, [vitals(spo2=88)] * 11, start=t)
    assert [(e.alarm, e.event, e.t, e.inhibited_by) for e in events] == [
        ("spo2_low", "raised", start + 10 * S, "spo2_critical")
    ]
    assert engine.state_of(SITE, CHAIR, "spo2_critical") is AlarmState.LATCHED


def test_flapping_around_the_limit_raises_once(engine: AlarmEngine) -> None:
    flap = itertools.islice(itertools.cycle([vitals(spo2=89), vitals(spo2=91)]), 180)
    events, _ = run_vitals(engine, flap)
    assert [e.event for e in of(events, "spo2_low")] == ["raised"]
    assert of(events, "spo2_low")[0].t == T0 + 4 * S  # third violation in 60 s
    assert of(events, "spo2_critical") == []


def test_hysteresis_clears_only_well_inside(engine: AlarmEngine) -> None:
    events, t = run_vitals(engine, [vitals(spo2=88)] * 16)
    assert of(events, "spo2_low", "raised")
    events, t = run_vitals(engine, [vitals(spo2=90), vitals(spo2=91)] * 5, start=t)
    assert events == []
    start = t
    events, t = run_vitals(engine, [vitals(spo2=92)] * 11, start=t)  # held for clear_hold_s
    assert [(e.alarm, e.event, e.t) for e in events] == [("spo2_low", "cleared", start + 10 * S)]
    assert events[0].extra["active"] is False


def test_latched_alarm_survives_recovery_until_acknowledged(engine: AlarmEngine) -> None:
    events, t = run_vitals(engine, [vitals(spo2=80)] * 2 + [vitals(spo2=98)] * 600)
    assert [(e.alarm, e.event) for e in events] == [("spo2_critical", "raised")]
    assert engine.state_of(SITE, CHAIR, "spo2_critical") is AlarmState.LATCHED
    assert engine.active(SITE, CHAIR) == [
        {
            "alarm": "spo2_critical",
            "priority": "high",
            "kind": "physiological",
            "since": T0,
            "acked": False,
            "latched": True,
            "id": events[0].id,
        }
    ]
    acked = engine.acknowledge(SITE, CHAIR, "spo2_critical", "nurse kim", t)
    assert [(e.event, e.by) for e in acked] == [("acknowledged", "nurse kim"), ("cleared", None)]
    assert engine.active(SITE, CHAIR) == []


def test_non_latching_alarm_clears_by_itself(engine: AlarmEngine) -> None:
    events, _ = run_vitals(engine, [vitals(pr=130)] * 12 + [vitals(pr=100)] * 11)
    assert [(e.event, e.t) for e in of(events, "pulse_high")] == [("raised", T0 + 10 * S), ("cleared", T0 + 22 * S)]


def test_acknowledge_pauses_then_renotifies_while_still_active(engine: AlarmEngine) -> None:
    events, t = run_vitals(engine, [vitals(spo2=88)] * 16)
    acked = engine.acknowledge(SITE, CHAIR, "spo2_low", "nurse", t)
    assert [e.event for e in acked] == ["acknowledged"]
    assert engine.active(SITE, CHAIR)[0]["acked"] is True
    events, t = run_vitals(engine, [vitals(spo2=88)] * 120, start=t)  # 119 s of pause
    assert events == []
    events, t = run_vitals(engine, [vitals(spo2=88)] * 2, start=t)
    assert [(e.alarm, e.event, e.t) for e in events] == [
        ("spo2_low", "renotify", T0 + 15 * S + 120 * S + S)
    ]
    assert engine.state_of(SITE, CHAIR, "spo2_low") is AlarmState.ACTIVE


def test_acknowledged_alarm_that_recovers_clears_without_renotify(engine: AlarmEngine) -> None:
    events, t = run_vitals(engine, [vitals(spo2=88)] * 16)
    engine.acknowledge(SITE, CHAIR, "spo2_low", "nurse", t)
    events, t = run_vitals(engine, [vitals(spo2=95)] * 300, start=t)
    assert [e.event for e in events] == ["cleared"]


def test_ack_of_inactive_alarm_is_rejected_by_the_adapter(engine: AlarmEngine) -> None:
    run_vitals(engine, [vitals()] * 2)
    assert engine.acknowledge(SITE, CHAIR, "spo2_low", "x", T0) == []
    got = handle_ack(engine, SITE, CHAIR, b'{"v":1,"alarm":"spo2_low","by":"x"}', T0)
    assert isinstance(got, Rejected) and got.reason == "not_active"
    got = handle_ack(engine, SITE, CHAIR, b'{"v":1,"alarm":"nope","by":"x"}', T0)
    assert isinstance(got, Rejected) and got.reason == "unknown_alarm"


def test_ack_through_the_adapter(engine: AlarmEngine) -> None:
    events, t = run_vitals(engine, [vitals(spo2=80)])
    got = handle_ack(engine, SITE, CHAIR, '{"v":1,"alarm":"spo2_critical","by":"kim"}', t)
    assert not isinstance(got, Rejected)
    assert [e.event for e in got] == ["acknowledged"]
    assert chairs_touched(events + got) == [(SITE, CHAIR)]
    payload = active_payload(engine, SITE, CHAIR, t)
    assert payload["v"] == 1 and payload["active"][0]["acked"] is True


def test_historical_data_never_alarms(engine: AlarmEngine) -> None:
    events: list[AlarmEvent] = []
    for i in range(120):
        t = T0 + i * S
        events += engine.on_reading(reading("vitals", vitals(spo2=70, pr=190), t, True), t)
        events += engine.on_reading(reading("nibp", nibp(sys=250, dia=130), t, True), t)
        events += engine.tick(t)
    assert events == []
    assert engine.chairs() == []  # replay alone does not even start staleness tracking


# ------------------------------------------------------------ offline / stale
def test_box_offline_via_last_will_at_once(engine: AlarmEngine) -> None:
    run_vitals(engine, [vitals()] * 5)
    t = T0 + 5 * S
    events = feed(engine, "status", {"v": 1, "state": "offline"}, t)
    assert [(e.alarm, e.event, e.kind) for e in events] == [("box_offline", "raised", "technical")]
    # no vitals for minutes: data_stale is inhibited by the known cause
    later = [e for k in range(1, 120) for e in engine.tick(t + k * S)]
    assert later == []
    t += 120 * S
    events = feed(engine, "status", {"v": 1, "state": "online", "sync": 1, "oxi": "ok"}, t)
    assert [(e.alarm, e.event) for e in events] == [("box_offline", "cleared")]
    # reconnect does not flash data_stale before the first vitals arrive
    assert engine.tick(t + 5 * S) == []


def test_data_stale_without_last_will(engine: AlarmEngine) -> None:
    _, t = run_vitals(engine, [vitals()] * 3)
    last = t - S
    assert engine.tick(last + 30 * S) == []  # exactly 30 s: not yet
    events = engine.tick(last + 30 * S + 1)
    assert [(e.alarm, e.event) for e in events] == [("data_stale", "raised")]
    assert engine.tick(last + 90 * S) == []  # one alarm, no flurry
    events = feed(engine, "vitals", vitals(), last + 91 * S)
    assert [(e.alarm, e.event) for e in events] == [("data_stale", "cleared")]


def test_unknown_chair_is_never_stale(engine: AlarmEngine) -> None:
    engine.set_limit(SITE, "c9", "spo2_low.limit", 88, "dr", "", T0)
    assert engine.tick(T0 + 3600 * S) == []


# -------------------------------------------------------------- cuff interlock
def test_cuff_interlock_holds_spo2_and_pulse_alarms(engine: AlarmEngine) -> None:
    cuff = [vitals(spo2=78, pr=40, cuff=1)] * 40
    events, _ = run_vitals(engine, [vitals()] * 2 + cuff + [vitals()] * 20)
    assert events == []


def test_cuff_interlock_can_be_switched_off(engine: AlarmEngine) -> None:
    engine.set_limit(SITE, CHAIR, "cuff_interlock", 0, "dr lee", "arm on other side", T0)
    events, _ = run_vitals(engine, [vitals(spo2=78, cuff=1)] * 3)
    assert [(e.alarm, e.event) for e in events] == [("spo2_critical", "raised")]


def test_stuck_cuff_flag_stops_holding_after_max(engine: AlarmEngine) -> None:
    events, _ = run_vitals(engine, [vitals(spo2=78, cuff=1)] * 70)
    crit = of(events, "spo2_critical")
    assert [e.event for e in crit] == ["raised"]
    assert crit[0].t == T0 + 61 * S  # held for cuff_interlock_max_s (60 s)


def test_pending_dip_resumes_after_cuff(engine: AlarmEngine) -> None:
    # SpO2 low for 10 s, cuff 30 s, still low after: the delay was not reset by the cuff
    series = [vitals(spo2=88)] * 10 + [vitals(spo2=88, cuff=1)] * 30 + [vitals(spo2=88)] * 2
    events, _ = run_vitals(engine, series)
    assert [(e.event, e.t) for e in of(events, "spo2_low")] == [("raised", T0 + 40 * S)]


# ------------------------------------------------------------------ NIBP
# (sys, dia, expected raised alarms)
NIBP_TABLE = [
    (120, 80, []),
    (185, 95, ["sys_high"]),
    (185, 112, ["sys_high", "dia_high"]),
    (221, 100, ["bp_intervention"]),
    (200, 121, ["bp_intervention"]),
    (230, 125, ["bp_intervention"]),
    (85, 50, ["sys_low"]),
]


@pytest.mark.parametrize(("sys_", "dia", "expected"), NIBP_TABLE)
def test_nibp_conditions_and_intervention_point(
    engine: AlarmEngine, sys_: int, dia: int, expected: list[str]
) -> None:
    events = feed(engine, "nibp", nibp(sys=sys_, dia=dia, map_=(sys_ + 2 * dia) // 3), T0)
    assert sorted(e.alarm for e in events if e.event == "raised") == sorted(expected)
    for e in events:
        if e.alarm == "bp_intervention":
            assert e.priority == "high"


def test_bp_intervention_escalates_and_latches(engine: AlarmEngine) -> None:
    first = feed(engine, "nibp", nibp(sys=190, dia=100, map_=130), T0)
    assert [(e.alarm, e.event) for e in first] == [("sys_high", "raised")]
    second = feed(engine, "nibp", nibp(sys=226, dia=118, map_=154), T0 + 300 * S)
    assert [(e.alarm, e.event) for e in second] == [("bp_intervention", "escalated")]
    assert "sys 226 mmHg >= 220 mmHg" in second[0].text
    third = feed(engine, "nibp", nibp(sys=150, dia=90, map_=110), T0 + 600 * S)
    assert [(e.alarm, e.event) for e in third] == [("sys_high", "cleared")]
    assert engine.state_of(SITE, CHAIR, "bp_intervention") is AlarmState.LATCHED


def test_failed_nibp_does_not_clear_pressure_alarm(engine: AlarmEngine) -> None:
    feed(engine, "nibp", nibp(sys=190), T0)
    events = feed(engine, "nibp", nibp(sys=None, dia=None, map_=None, st="error", err=3), T0 + S)
    assert [(e.alarm, e.event, e.priority) for e in events] == [("nibp_failed", "raised", "low")]
    assert engine.state_of(SITE, CHAIR, "sys_high") is AlarmState.ACTIVE
    events = feed(engine, "nibp", nibp(), T0 + 2 * S)
    assert sorted((e.alarm, e.event) for e in events) == [
        ("nibp_failed", "cleared"),
        ("sys_high", "cleared"),
    ]


# ------------------------------------------------------------------- AF-RVR
IRREGULAR = [-18, 12, -5, 20, -14, 7, 16, -20, 3, -10, 19, -8]


def test_rapid_irregular_pulse_raises_afib_flag(engine: AlarmEngine) -> None:
    series = [vitals(pr=132 + d) for d in itertools.islice(itertools.cycle(IRREGULAR), 40)]
    events, _ = run_vitals(engine, series)
    afib = of(events, "afib_rvr_suspected")
    assert [e.event for e in afib] == ["raised"]
    assert afib[0].t == T0 + 23 * S  # 24 valid seconds = 80 % of the 30 s window
    assert "screening flag" in afib[0].text and "irregularity" in afib[0].text


def test_rapid_regular_pulse_is_pulse_high_not_afib(engine: AlarmEngine) -> None:
    series = [vitals(pr=130 + d) for d in itertools.islice(itertools.cycle([0, 1, -1, 0]), 60)]
    events, _ = run_vitals(engine, series)
    assert of(events, "afib_rvr_suspected") == []
    assert [e.event for e in of(events, "pulse_high")] == ["raised"]


def test_slow_irregular_pulse_is_not_afib_rvr(engine: AlarmEngine) -> None:
    series = [vitals(pr=80 + d) for d in itertools.islice(itertools.cycle(IRREGULAR), 60)]
    events, _ = run_vitals(engine, series)
    assert of(events, "afib_rvr_suspected") == []


# --------------------------------------------------------------- technical
def test_probe_off_after_delay_and_invalid_data_resets_spo2_delay(engine: AlarmEngine) -> None:
    off = [vitals(spo2=None, pr=None, st="no_finger")] * 20
    events, _ = run_vitals(engine, [vitals(spo2=88)] * 10 + off + [vitals(spo2=88)] * 11)
    assert [(e.event, e.t) for e in of(events, "probe_off")] == [
        ("raised", T0 + 25 * S),
        ("cleared", T0 + 40 * S),  # signal back at 30 s, held for clear_hold_s (10 s)
    ]
    assert of(events, "spo2_low") == []  # 10 s + 11 s low, never 15 s in a row


# (status fields, alarm)
MODULES = [({"oxi": "silent"}, "oximeter_silent"), ({"nibp": "error"}, "nibp_silent")]


@pytest.mark.parametrize(("fields", "alarm"), MODULES)
def test_module_not_answering(engine: AlarmEngine, fields: dict[str, str], alarm: str) -> None:
    status = {"v": 1, "state": "online", "sync": 1, **fields}
    events = feed(engine, "status", status, T0)
    assert [(e.alarm, e.event, e.kind) for e in events] == [(alarm, "raised", "technical")]
    healthy = {k: "ok" for k in fields}
    events = feed(engine, "status", {"v": 1, "state": "online", "sync": 1, **healthy}, T0 + S)
    assert [(e.alarm, e.event) for e in events] == [(alarm, "cleared")]


def test_clock_unsynced_is_low_and_waits(engine: AlarmEngine) -> None:
    events, t = run_vitals(engine, [vitals(sync=0)] * 302)
    got = of(events, "clock_unsynced")
    assert [(e.event, e.priority, e.t) for e in got] == [("raised", "low", T0 + 300 * S)]
    events, _ = run_vitals(engine, [vitals(sync=1)], start=t)
    assert [(e.alarm, e.event) for e in events] == [("clock_unsynced", "cleared")]


# ------------------------------------------------------------------ SatSeconds
def satseconds_engine() -> AlarmEngine:
    raw = copy.deepcopy(dict(load_profile().raw))
    raw["conditions"]["spo2_low"]["mode"] = "satseconds"
    raw["conditions"]["spo2_low"]["satseconds_limit"] = 50
    raw["conditions"]["spo2_critical"]["limit"] = 70
    return AlarmEngine(parse_profile(raw), id_prefix="s")


def test_satseconds_integral_fires_when_points_times_seconds_reach_limit() -> None:
    engine = satseconds_engine()
    # 2 points x 2 s + 4 x 3 + 6 x 6 = 52: crosses 50 on the 11th second
    series = [vitals(spo2=88)] * 2 + [vitals(spo2=86)] * 3 + [vitals(spo2=84)] * 6
    events, _ = run_vitals(engine, series)
    assert [(e.event, e.t) for e in of(events, "spo2_low")] == [("raised", T0 + 10 * S)]


def test_satseconds_shallow_short_dip_raises_nothing() -> None:
    engine = satseconds_engine()
    series = [vitals(spo2=89)] * 20 + [vitals(spo2=96)] * 30  # 1 point x 20 s = 20 < 50
    events, _ = run_vitals(engine, series)
    assert of(events, "spo2_low") == []


# --------------------------------------------------------------- event hygiene
def test_event_ids_unique_and_lines_build(engine: AlarmEngine) -> None:
    events, t = run_vitals(engine, [vitals(spo2=80, pr=130)] * 20 + [vitals()] * 5)
    events += feed(engine, "nibp", nibp(sys=230, dia=125), t)
    events += engine.acknowledge(SITE, CHAIR, "spo2_critical", "kim", t)
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)) and all(i.startswith("t-") for i in ids)
    for e in events:
        line = event_line(e)
        assert line.startswith("alarm_events,")
        assert f"alarm={e.alarm}" in line and f"event={e.event}" in line
        assert len(e.text) <= 200
        payload = e.to_payload()
        assert payload["key"] == f"{SITE}/{CHAIR}/{e.alarm}"


def test_per_chair_override_changes_only_that_chair(engine: AlarmEngine) -> None:
    engine.set_limit(SITE, CHAIR, "spo2_low.limit", 85, "dr lee", "COPD baseline 87-88", T0)
    engine.set_limit(SITE, CHAIR, "spo2_critical.limit", 80, "dr lee", "COPD", T0)
    events, _ = run_vitals(engine, [vitals(spo2=87)] * 30)
    assert events == []
    other = [
        e
        for i in range(30)
        for e in engine.on_reading(
            Reading(SITE, "c4", "vitals", vitals(spo2=87), T0 + i * S, T0 + i * S), T0 + i * S
        )
    ]
    assert [(e.chair, e.alarm) for e in other] == [("c4", "spo2_low")]
