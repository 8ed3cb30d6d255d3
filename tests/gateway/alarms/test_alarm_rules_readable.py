"""One short scenario per rule of docs/alarms.md, named after the rule, with the
section it comes from and the expectation worked out by hand in the docstring.

These are the readable net under the engine; the recorded stream digests
(test_alarm_fastpath_equivalence.py) are the second one.  The real engine and
the shipped adult profile throughout (a SatSeconds variant where the doc's
SatSeconds rules need it); one vitals reading per second from ``T0``; the clock
is the ``now_ms`` passed in, so nothing here sleeps.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from test_alarm_engine import CHAIR, SITE, T0, S, nibp, vitals

from chairside.alarms import AlarmEngine, AlarmState, ProfileError, load_profile, parse_profile
from chairside.model import AlarmEvent, Reading

DOC = Path(__file__).resolve().parents[3] / "docs" / "alarms.md"


def engine_() -> AlarmEngine:
    return AlarmEngine(load_profile(), id_prefix="t")


def satseconds_engine() -> AlarmEngine:
    """``spo2_low`` in SatSeconds mode with the doc's limit 50; ``spo2_critical``
    moved to 70 so that the deep values used below (80-84 %) do not raise it."""
    raw = copy.deepcopy(dict(load_profile().raw))
    raw["conditions"]["spo2_low"]["mode"] = "satseconds"
    raw["conditions"]["spo2_low"]["satseconds_limit"] = 50
    raw["conditions"]["spo2_critical"]["limit"] = 70
    return AlarmEngine(parse_profile(raw), id_prefix="s")


def at(engine: AlarmEngine, second: float, kind: str = "vitals", fields: dict[str, Any] | None = None,
       historical: bool = False) -> list[AlarmEvent]:
    """One reading measured and received at ``T0 + second``, then a clock tick."""
    t = T0 + int(second * S)
    fields = vitals() if fields is None else fields
    reading = Reading(SITE, CHAIR, kind, fields, t, t, historical)  # type: ignore[arg-type]
    return engine.on_reading(reading, t) + engine.tick(t)


def play(engine: AlarmEngine, series: list[dict[str, Any]], start: int = 0) -> list[tuple[str, str, float]]:
    """One vitals reading per second from ``start`` s: (alarm, event, second) of every event."""
    events: list[AlarmEvent] = []
    for i, fields in enumerate(series):
        events += at(engine, start + i, fields=fields)
    return seconds(events)


def seconds(events: list[AlarmEvent]) -> list[tuple[str, str, float]]:
    return [(e.alarm, e.event, (e.t - T0) / S) for e in events]


def only(got: list[tuple[str, str, float]], alarm: str) -> list[tuple[str, str, float]]:
    return [g for g in got if g[0] == alarm]


def state(engine: AlarmEngine, alarm: str) -> AlarmState:
    return engine.state_of(SITE, CHAIR, alarm)


def spo2(value: int | None, **extra: Any) -> dict[str, Any]:
    return vitals(spo2=value, **extra)


def pr(value: int, **extra: Any) -> dict[str, Any]:
    return vitals(pr=value, **extra)


# ===================================================== "Conditions (adult profile)"
# the table of the doc, column by column: (delay_s, hysteresis, hold_s, priority, latching)
TABLE: dict[str, tuple[float, float, float, str, bool]] = {
    "spo2_critical": (0, 2, 10, "high", True),
    "spo2_low": (15, 2, 10, "medium", False),
    "pulse_high": (10, 5, 10, "medium", False),
    "pulse_low": (10, 5, 10, "medium", False),
    "afib_rvr_suspected": (0, 10, 10, "medium", False),
    "bp_intervention": (0, 10, 0, "high", True),
    "sys_high": (0, 5, 0, "medium", False),
    "dia_high": (0, 5, 0, "medium", False),
    "sys_low": (0, 5, 0, "medium", False),
    "map_low": (0, 5, 0, "medium", False),
    "probe_off": (15, 0, 10, "medium", False),
    "oximeter_silent": (0, 0, 0, "medium", False),
    "nibp_silent": (0, 0, 0, "medium", False),
    "nibp_failed": (0, 0, 0, "low", False),
    "box_offline": (0, 0, 0, "medium", False),
    "data_stale": (0, 0, 0, "medium", False),
    "clock_unsynced": (300, 0, 0, "low", False),
}


def test_conditions_table_is_the_shipped_profile() -> None:
    """Conditions: every row's delay, hysteresis, hold, priority and latching
    (the doc writes "0" or "–" for a zero; "window" is the AF flag's delay 0)."""
    profile = load_profile()
    got = {name: (c.delay_s, c.clear_hysteresis, c.clear_hold_s, c.priority, c.latching)
           for name, c in profile.conditions.items()}
    assert got == TABLE


def test_conditions_table_of_the_doc_says_the_same() -> None:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| `(\w+)` \|", line)
        if m and m.group(1) in TABLE:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[m.group(1)] = (cells[5], cells[6], cells[7])  # hold, priority, latching
    want = {name: ("–" if hold == 0 else f"{hold:g} s", prio, "yes" if latch else "no")
            for name, (_, _, hold, prio, latch) in TABLE.items()}
    assert rows == want


@pytest.mark.parametrize(("fields", "raises"), [(spo2(85), False), (spo2(84), True)])
def test_strict_operator_does_not_alarm_exactly_at_the_limit(fields: dict[str, Any], raises: bool) -> None:
    """Conditions: ``spo2 < 85`` (spo2_critical, no delay) alarms at 84, not at 85."""
    engine = engine_()
    assert bool(only(play(engine, [fields]), "spo2_critical")) is raises


@pytest.mark.parametrize(("sys_", "raises"), [(220, True), (219, False)])
def test_inclusive_operator_alarms_exactly_at_the_limit(sys_: int, raises: bool) -> None:
    """Conditions: the intervention point ``sys >= 220`` alarms at 220, not at 219."""
    events = at(engine_(), 0, "nibp", nibp(sys=sys_, dia=90))
    assert bool(only(seconds(events), "bp_intervention")) is raises


def test_spo2_low_clears_at_92_not_at_90_or_91() -> None:
    """Conditions: limit 90, hysteresis 2.  88 % for 16 s raises at 15 s; 90 and
    91 % for a minute clear nothing; 92 % from 76 s clears after the 10-s hold, at 86 s."""
    engine = engine_()
    series = [spo2(88)] * 16 + [spo2(90), spo2(91)] * 30 + [spo2(92)] * 11
    assert only(play(engine, series), "spo2_low") == [("spo2_low", "raised", 15), ("spo2_low", "cleared", 86)]


def test_clear_needs_clear_hold_s_of_recovered_readings() -> None:
    """Conditions/"hold": pulse 130 raises pulse_high at 10 s (delay 10).  115 bpm
    (= 120 - 5, recovered) from 11 s: 11 + 10 = 21 s clears; a 118 at 19 s
    (inside the band, not recovered) restarts the hold: 20 + 10 = 30 s."""
    series = [pr(130)] * 11 + [pr(115)] * 8 + [pr(118)] + [pr(115)] * 11
    assert only(play(engine_(), series), "pulse_high") == [("pulse_high", "raised", 10), ("pulse_high", "cleared", 30)]


def test_nibp_conditions_have_no_delay_and_stay_until_the_next_measurement() -> None:
    """Conditions: a measurement of 185/95 raises sys_high at once; it stays
    through 10 minutes of vitals; the next measurement, 170 (<= 180 - 5), clears it at once."""
    engine = engine_()
    got = seconds(at(engine, 0, "nibp", nibp(sys=185, dia=95, map_=125)))
    got += play(engine, [vitals()] * 600, start=1)
    assert state(engine, "sys_high") is AlarmState.ACTIVE
    got += seconds(at(engine, 601, "nibp", nibp(sys=170, dia=95, map_=120)))
    assert only(got, "sys_high") == [("sys_high", "raised", 0), ("sys_high", "cleared", 601)]


def test_failed_nibp_measurement_leaves_pressure_conditions_unchanged() -> None:
    """Conditions: sys 185 raises sys_high; a failed measurement raises
    nibp_failed (low) and leaves sys_high active; the next good one (120) clears both."""
    engine = engine_()
    got = seconds(at(engine, 0, "nibp", nibp(sys=185)))
    got += seconds(at(engine, 300, "nibp", nibp(sys=None, dia=None, map_=None, st="error", err=3)))
    assert state(engine, "sys_high") is AlarmState.ACTIVE
    got += seconds(at(engine, 600, "nibp", nibp(sys=120)))
    got = [g for g in got if g[0] != "data_stale"]  # a first NIBP reading starts the staleness clock
    assert sorted(got) == [("nibp_failed", "cleared", 600), ("nibp_failed", "raised", 300),
                           ("sys_high", "cleared", 600), ("sys_high", "raised", 0)]


@pytest.mark.parametrize(("sys_", "dia"), [(220, 80), (150, 120)])
def test_bp_intervention_on_either_systolic_or_diastolic(sys_: int, dia: int) -> None:
    """Conditions: ``sys >= 220 or dia >= 120``, high, at once."""
    events = at(engine_(), 0, "nibp", nibp(sys=sys_, dia=dia, map_=100))
    assert next((e.alarm, e.priority) for e in events if e.event == "raised") == ("bp_intervention", "high")


def test_probe_off_after_15_s_without_spo2() -> None:
    """Conditions: st = no_finger from 0 s raises probe_off at 15 s; SpO2 back at
    20 s clears it after the 10-s hold, at 30 s."""
    series = [spo2(None, pr=None, st="no_finger")] * 20 + [vitals()] * 11
    assert only(play(engine_(), series), "probe_off") == [("probe_off", "raised", 15), ("probe_off", "cleared", 30)]


def test_clock_unsynced_after_300_s_low() -> None:
    """Conditions: sync = 0 for 300 s raises clock_unsynced (low) at 300 s; sync = 1 clears it."""
    engine = engine_()
    got = play(engine, [vitals(sync=0)] * 301 + [vitals(sync=1)])
    assert only(got, "clock_unsynced") == [("clock_unsynced", "raised", 300), ("clock_unsynced", "cleared", 301)]


@pytest.mark.parametrize("module", ["oxi", "nibp"])
def test_silent_module_alarms_at_once(module: str) -> None:
    """Conditions: status ``oxi``/``nibp`` = silent or error: medium, no delay."""
    engine = engine_()
    events = at(engine, 0, "status", {"state": "online", module: "error"})
    alarm = "oximeter_silent" if module == "oxi" else "nibp_silent"
    assert [(e.alarm, e.event, e.priority) for e in events] == [(alarm, "raised", "medium")]


# =========================================== "SpO2: delay, SatSeconds, flapping"
def test_delay_mode_a_reading_inside_restarts_the_delay() -> None:
    """Delay mode: 88 % for 0-13 s, 95 % at 14 s, 88 % again from 15 s: the
    delay starts again at 15 s and runs out at 15 + 15 = 30 s (not at 15 s)."""
    series = [spo2(88)] * 14 + [spo2(95)] + [spo2(88)] * 16
    assert only(play(engine_(), series), "spo2_low") == [("spo2_low", "raised", 30)]


def test_satseconds_worked_example_fires_in_the_11th_second() -> None:
    """SatSeconds mode, the doc's example: 88 % for 2 s, 86 % for 3 s, 84 % for
    6 s.  After each second: 2, 4 | 8, 12, 16 | 22, 28, 34, 40, 46, 52: the
    integral reaches 50 at the 11th reading, second 10."""
    series = [spo2(88)] * 2 + [spo2(86)] * 3 + [spo2(84)] * 6
    assert only(play(satseconds_engine(), series), "spo2_low") == [("spo2_low", "raised", 10)]


def test_satseconds_integral_drains_while_spo2_is_back_inside() -> None:
    """SatSeconds mode: 80 % (10 points) for 3 s: 10, 20, 30.  95 % (5 points
    inside) for 6 s drains 5 per second: 25, 20, 15, 10, 5, 0.  80 % again from
    9 s: 10, 20, 30, 40, 50 -> fires at 13 s.  (An integral that never drained
    would reach 30 + 20 = 50 at 10 s.)"""
    series = [spo2(80)] * 3 + [spo2(95)] * 6 + [spo2(80)] * 5
    assert only(play(satseconds_engine(), series), "spo2_low") == [("spo2_low", "raised", 13)]


def test_satseconds_drains_by_points_inside_times_seconds_at_least_one() -> None:
    """SatSeconds mode: 80 % for 4 s: 40.  90 % (at the limit: 0 points inside,
    drains the minimum 1 per second) for 3 s: 39, 38, 37.  80 % again from 7 s:
    47, 57 -> fires at 8 s (reset to 0 it would need 5 s; drained by 5 per s, 4 s)."""
    series = [spo2(80)] * 4 + [spo2(90)] * 3 + [spo2(80)] * 2
    assert only(play(satseconds_engine(), series), "spo2_low") == [("spo2_low", "raised", 8)]


def test_satseconds_a_gap_in_the_data_counts_for_at_most_2_s() -> None:
    """SatSeconds mode: 97 % at 0 s; 80 % (10 points) at 1 s: 10.  Nothing
    until 11 s, then 80 %: the 10-s gap counts 2 s: 10 + 20 = 30; 12 s: 40;
    13 s: 50 -> fires at 13 s.  (A 3-s cap: 40 at 11 s, 50 at 12 s.)"""
    engine = satseconds_engine()
    got = seconds(at(engine, 0, fields=spo2(97)) + at(engine, 1, fields=spo2(80)))
    for second in (11, 12, 13):
        got += seconds(at(engine, second, fields=spo2(80)))
    assert only(got, "spo2_low") == [("spo2_low", "raised", 13)]


def test_flap_override_three_dips_within_60_s_raise_at_once() -> None:
    """Flap override: pulse 130 (past 120) for one second at 0, 2 and 4 s,
    100 between: far shorter than the 10-s delay, but the third separate dip
    within 60 s raises at 4 s."""
    series = [pr(130), pr(100)] * 2 + [pr(130)] + [pr(100)] * 3
    assert only(play(engine_(), series), "pulse_high") == [("pulse_high", "raised", 4)]


def test_flap_override_counts_only_dips_within_the_60_s_window() -> None:
    """Flap override: one-second dips at 0, 35 and 70 s: never three within 60 s: nothing."""
    series = [pr(100)] * 80
    for second in (0, 35, 70):
        series[second] = pr(130)
    assert only(play(engine_(), series), "pulse_high") == []


def test_flapping_after_the_raise_88_92_every_3_s_is_one_alarm() -> None:
    """Flapping after the raise: 88 % and 92 % every 3 s: dips at 0, 6, 12 s, the
    third raises at 12 s; no recovery lasts 10 s, so no clear while it flaps (the
    last dip is 114-116 s); 97 % from 117 s clears 10 s later, at 127 s."""
    series = list(itertools.islice(itertools.cycle([spo2(88)] * 3 + [spo2(92)] * 3), 117)) + [spo2(97)] * 11
    assert only(play(engine_(), series), "spo2_low") == [("spo2_low", "raised", 12), ("spo2_low", "cleared", 127)]


def test_deep_desaturation_has_no_delay() -> None:
    """SpO2: spo2_critical (< 85 %) raises on the first reading, high."""
    engine = engine_()
    events = at(engine, 0, fields=spo2(84))
    assert [(e.alarm, e.event, e.priority) for e in events] == [("spo2_critical", "raised", "high")]


# ====================================== "Rapid irregular pulse (afib_rvr_suspected)"
def cycle3(a: int, step: int, n: int) -> list[dict[str, Any]]:
    """a, a+step, a+step, a, ...: differences +step, 0, -step repeated.  In any
    run of 24 or more rates the median difference is 0 and two thirds of the
    differences are ``step`` away from it: median deviation ``step``.  The mean
    of whole cycles (24 or 30 rates) is a + 2 step / 3."""
    return [pr(r) for r in itertools.islice(itertools.cycle([a, a + step, a + step]), n)]


def test_af_flag_raises_at_mean_110_and_irregularity_at_least_008() -> None:
    """AF flag: rates 100, 115, 115, ...: mean 110 (>= 110), irregularity
    15 / 110 = 0.136 (>= 0.08).  The first decision needs 24 rates (80 % of
    30 s): raised at 23 s, not before."""
    assert only(play(engine_(), cycle3(100, 15, 40)), "afib_rvr_suspected") == [("afib_rvr_suspected", "raised", 23)]


def test_af_flag_not_below_mean_110() -> None:
    """AF flag: 99, 114, 114, ...: irregularity 15 / 109 = 0.138, but the mean of
    every window is at most 109 < 110: no flag."""
    assert only(play(engine_(), cycle3(99, 15, 60)), "afib_rvr_suspected") == []


def test_af_flag_waits_for_80_percent_of_the_window() -> None:
    """AF flag: the same rates, but the reading at 0 s is invalid (st =
    searching): the valid rates 115, 115, 100, ... (mean 110, irregularity
    0.136) reach 24 at 24 s, so the flag raises at 24 s, not 23 s."""
    series = cycle3(100, 15, 40)
    series[0] = pr(100, st="searching", spo2=None)
    assert only(play(engine_(), series), "afib_rvr_suspected") == [("afib_rvr_suspected", "raised", 24)]


def irregular(n: int) -> list[dict[str, Any]]:
    """docs/alarms.md's irregular series: irregularity 15 / 132.5 = 0.113, raised at 23 s."""
    return [pr(r) for r in itertools.islice(itertools.cycle([125, 145, 120, 140, 115, 150]), n)]


def test_af_flag_clears_when_irregularity_drops_below_half_the_threshold() -> None:
    """AF flag clear: raised at 23 s by the irregular series.  From 40 s: 130,
    134, 134 ...: mean 132.7 (still fast, > 100), irregularity 4 / 132.7 =
    0.030 < 0.04 (half of 0.08).  From 70 s the window holds only that series,
    so it has cleared by 70 + 10 s hold = 80 s.  (With a quarter of the
    threshold, 0.02, it would stay announced.)"""
    engine = engine_()
    got = play(engine, irregular(40) + cycle3(130, 4, 60))
    af = only(got, "afib_rvr_suspected")
    assert af[0] == ("afib_rvr_suspected", "raised", 23)
    assert [e for _, e, _ in af] == ["raised", "cleared"] and af[1][2] <= 80
    assert state(engine, "afib_rvr_suspected") is AlarmState.INACTIVE


def test_af_flag_stays_while_irregularity_is_between_half_and_the_threshold() -> None:
    """AF flag clear: after the irregular series, 130, 137, 137 ...: mean 134.7,
    irregularity 7 / 134.7 = 0.052: below 0.08 (no new raise) but not below
    0.04, and the mean is not below 100: the flag stays for two minutes."""
    engine = engine_()
    got = play(engine, irregular(40) + cycle3(130, 7, 120))
    assert only(got, "afib_rvr_suspected") == [("afib_rvr_suspected", "raised", 23)]
    assert state(engine, "afib_rvr_suspected") is AlarmState.ACTIVE


def test_af_flag_clears_when_the_mean_falls_10_below_the_limit() -> None:
    """AF flag clear: after the irregular series, 90, 100, 100, 90 ...: mean 95
    (< 110 - 10), irregularity 10 / 95 = 0.105, still irregular: the mean alone
    clears it, within 30 s window + 10 s hold."""
    engine = engine_()
    got = play(engine, irregular(40) + [pr(r) for r in itertools.islice(itertools.cycle([90, 100, 100, 90]), 45)])
    af = only(got, "afib_rvr_suspected")
    assert [e for _, e, _ in af] == ["raised", "cleared"] and af[1][2] <= 80


def test_af_window_leaves_out_cuff_held_seconds() -> None:
    """AF flag: cuff holds are excluded from the window: 100, 115, 115, ...
    with the cuff on for 0-9 s: those 10 rates do not count; from 10 s the
    rates 115, 115, 100, ... (mean 110, irregularity 0.136) reach 24 at 33 s,
    so the flag raises at 33 s."""
    series = cycle3(100, 15, 50)
    for i in range(10):
        series[i] = {**series[i], "cuff": 1}
    assert only(play(engine_(), series), "afib_rvr_suspected") == [("afib_rvr_suspected", "raised", 33)]


# ============================================================ "Cuff interlock"
def test_cuff_held_readings_neither_raise_nor_clear() -> None:
    """Cuff interlock: pulse_high raised at 10 s; 30 s of recovered (100 bpm)
    readings with cuff = 1 clear nothing; without the cuff they clear after the hold."""
    engine = engine_()
    got = play(engine, [pr(130)] * 11 + [pr(100, cuff=1)] * 30)
    assert only(got, "pulse_high") == [("pulse_high", "raised", 10)]
    assert only(play(engine, [pr(100)] * 11, start=41), "pulse_high") == [("pulse_high", "cleared", 51)]


def test_cuff_hold_keeps_a_running_delay() -> None:
    """Cuff interlock: 88 % for 10 s, cuff for 30 s, 88 % after it: the delay
    kept running from 0 s, so spo2_low raises on the first reading after the hold (40 s)."""
    series = [spo2(88)] * 10 + [spo2(88, cuff=1)] * 30 + [spo2(88)]
    assert only(play(engine_(), series), "spo2_low") == [("spo2_low", "raised", 40)]


def test_cuff_flag_on_longer_than_60_s_stops_holding() -> None:
    """Cuff interlock: SpO2 78 % with cuff = 1 from 0 s: held to 60 s, raised at 61 s."""
    got = play(engine_(), [spo2(78, cuff=1)] * 62)
    assert only(got, "spo2_critical") == [("spo2_critical", "raised", 61)]


def test_cuff_interlock_off_per_chair() -> None:
    """Cuff interlock: ``cuff_interlock`` 0 for the chair: the cuff holds nothing."""
    engine = engine_()
    engine.set_limit(SITE, CHAIR, "cuff_interlock", 0, "dr lee", "cuff on the other arm", T0)
    assert only(play(engine, [spo2(78, cuff=1)]), "spo2_critical") == [("spo2_critical", "raised", 0)]


# ============================== "Invalid data, offline, staleness, replays"
def test_historical_readings_never_raise_or_clear_and_are_not_live() -> None:
    """Replays: pulse_high raised at 10 s; replayed (h=1) readings at 100 bpm for
    60 s clear nothing and do not end staleness: data_stale raises 30 s after the
    last live reading (10 s) at 41 s."""
    engine = engine_()
    got = play(engine, [pr(130)] * 11)
    for second in range(11, 71):
        got += seconds(at(engine, second, fields=pr(100), historical=True))
        got += seconds(at(engine, second, fields=pr(180, spo2=70), historical=True))
    assert got == [("pulse_high", "raised", 10), ("data_stale", "raised", 41)]


def test_invalid_data_resets_a_running_delay() -> None:
    """Invalid data: 88 % for 10 s, st = searching at 10 s, 88 % from 11 s: the
    delay starts again at 11 s and runs out at 26 s."""
    series = [spo2(88)] * 10 + [spo2(None, st="searching")] + [spo2(88)] * 16
    assert only(play(engine_(), series), "spo2_low") == [("spo2_low", "raised", 26)]


def test_an_announced_alarm_stays_while_the_data_is_invalid() -> None:
    """Invalid data: unknown is not recovered: spo2_low raised at 15 s stays
    through 60 s of no_finger; probe_off covers the gap (raised 15 s into it)."""
    engine = engine_()
    got = play(engine, [spo2(88)] * 16 + [spo2(None, pr=None, st="no_finger")] * 60)
    assert got == [("spo2_low", "raised", 15), ("probe_off", "raised", 31)]
    assert state(engine, "spo2_low") is AlarmState.ACTIVE


def test_box_offline_at_once_inhibits_data_stale_and_a_birth_restarts_the_clock() -> None:
    """Offline: vitals 0-4 s, the last will at 5 s raises box_offline at once; no
    data_stale during 120 s offline; the birth at 125 s clears it and restarts
    the staleness clock: data_stale only at 125 + 30 s + 1 ms, i.e. 156 s."""
    engine = engine_()
    got = play(engine, [vitals()] * 5)
    got += seconds(at(engine, 5, "status", {"state": "offline"}))
    for second in range(6, 125):
        got += seconds(engine.tick(T0 + second * S))
    got += seconds(at(engine, 125, "status", {"state": "online", "sync": 1}))
    for second in range(126, 160):
        got += seconds(engine.tick(T0 + second * S))
    assert got == [("box_offline", "raised", 5), ("box_offline", "cleared", 125), ("data_stale", "raised", 156)]


def test_periodic_status_is_not_a_birth_and_does_not_move_the_stale_clock() -> None:
    """Offline: birth at 0 s, vitals 0-9 s, the box's periodic online status at
    20 s: data_stale still raises 30 s after the last vitals, at 40 s (> 30 s: 40 s, not 39)."""
    engine = engine_()
    got = seconds(at(engine, 0, "status", {"state": "online"}))
    got += play(engine, [vitals()] * 10)
    got += seconds(at(engine, 20, "status", {"state": "online"}))
    for second in range(21, 60):
        got += seconds(engine.tick(T0 + second * S))
    assert got == [("data_stale", "raised", 40)]


def test_only_vitals_end_staleness() -> None:
    """Staleness: data_stale raised at 40 s; a status and a birth after a last
    will do not clear it; the next vitals reading (at 100 s) does."""
    engine = engine_()
    got = play(engine, [vitals()] * 10)
    for second in range(10, 60):
        got += seconds(engine.tick(T0 + second * S))
    got += seconds(at(engine, 60, "status", {"state": "online", "oxi": "ok"}))
    got += seconds(at(engine, 70, "status", {"state": "offline"}))
    got += seconds(at(engine, 80, "status", {"state": "online"}))
    assert only(got, "data_stale") == [("data_stale", "raised", 40)]
    assert only(seconds(at(engine, 100)), "data_stale") == [("data_stale", "cleared", 100)]


def test_a_chair_that_never_sent_a_live_reading_is_never_stale() -> None:
    """Staleness: a chair known only from a per-chair limit and a replayed reading: no data_stale in an hour."""
    engine = engine_()
    engine.set_limit(SITE, CHAIR, "spo2_low.limit", 88, "dr lee", "", T0)
    got = seconds(at(engine, 0, historical=True))
    got += [g for s in range(1, 3600, 10) for g in seconds(engine.tick(T0 + s * S))]
    assert got == []


# ============================ "State machine, escalation, acknowledgement"
def test_delay_0_goes_straight_to_active() -> None:
    engine = engine_()
    at(engine, 0, "nibp", nibp(sys=185))
    assert state(engine, "sys_high") is AlarmState.ACTIVE


def test_latched_alarm_stays_until_acknowledged_then_acknowledged_and_cleared() -> None:
    """Latching: SpO2 80 % at 0 s raises spo2_critical; 97 % from 1 s recovers
    (87 = 85 + 2 or more) and after the 10-s hold, at 11 s, latches: no event,
    still announced with latched: true for 10 minutes.  The acknowledgement
    gives acknowledged, then cleared."""
    engine = engine_()
    got = play(engine, [spo2(80)] + [spo2(97)] * 600)
    assert got == [("spo2_critical", "raised", 0)]
    assert state(engine, "spo2_critical") is AlarmState.LATCHED
    assert engine.active(SITE, CHAIR)[0]["latched"] is True
    acked = engine.acknowledge(SITE, CHAIR, "spo2_critical", "nurse kim", T0 + 601 * S)
    assert [(e.event, e.by) for e in acked] == [("acknowledged", "nurse kim"), ("cleared", None)]
    assert engine.active(SITE, CHAIR) == []


def test_latched_alarm_returns_to_active_when_the_value_comes_back_before_acknowledgement() -> None:
    """Latching: latched at 11 s (as above); 80 % again at 20 s, before anyone
    acknowledged: back to ACTIVE with no new event, ``latched: false``, and the
    chair is named by changed_chairs() for both changes.  An acknowledgement now
    is a plain one (ACKED), not a clear."""
    engine = engine_()
    assert play(engine, [spo2(80)] + [spo2(97)] * 19) == [("spo2_critical", "raised", 0)]
    assert state(engine, "spo2_critical") is AlarmState.LATCHED
    assert engine.changed_chairs() == {(SITE, CHAIR)}
    assert play(engine, [spo2(80)], start=20) == []
    assert state(engine, "spo2_critical") is AlarmState.ACTIVE
    assert engine.active(SITE, CHAIR)[0]["latched"] is False
    assert engine.changed_chairs() == {(SITE, CHAIR)}
    acked = engine.acknowledge(SITE, CHAIR, "spo2_critical", "kim", T0 + 21 * S)
    assert [e.event for e in acked] == ["acknowledged"]
    assert state(engine, "spo2_critical") is AlarmState.ACKED


def test_changed_chairs_drains() -> None:
    """Latching: ``engine.changed_chairs()`` drains: the second call is empty."""
    engine = engine_()
    play(engine, [spo2(80)] + [spo2(97)] * 12)
    assert engine.changed_chairs() == {(SITE, CHAIR)}
    assert engine.changed_chairs() == set()


def test_acknowledgement_records_by_and_renotifies_120_s_later_if_not_cleared() -> None:
    """Acknowledgement: spo2_low raised at 15 s, acknowledged at 20 s by kim (ACKED);
    still 86 % at 140 s: renotify, ACTIVE and unacknowledged again."""
    engine = engine_()
    play(engine, [spo2(86)] * 21)
    acked = engine.acknowledge(SITE, CHAIR, "spo2_low", "kim", T0 + 20 * S)
    assert [(e.event, e.by) for e in acked] == [("acknowledged", "kim")]
    assert state(engine, "spo2_low") is AlarmState.ACKED
    got = play(engine, [spo2(86)] * 125, start=21)
    assert got == [("spo2_low", "renotify", 140)]
    assert state(engine, "spo2_low") is AlarmState.ACTIVE
    assert engine.active(SITE, CHAIR)[0]["acked"] is False


def test_every_acknowledgement_restarts_the_120_s_pause() -> None:
    """Acknowledgement: acknowledged at 20 s and again at 100 s (while ACKED):
    the renotify falls due at 220 s, not 140 s."""
    engine = engine_()
    play(engine, [spo2(86)] * 21)
    engine.acknowledge(SITE, CHAIR, "spo2_low", "kim", T0 + 20 * S)
    got = play(engine, [spo2(86)] * 80, start=21)
    engine.acknowledge(SITE, CHAIR, "spo2_low", "lee", T0 + 100 * S)
    got += play(engine, [spo2(86)] * 130, start=101)
    assert got == [("spo2_low", "renotify", 220)]


def test_an_alarm_that_clears_during_the_pause_just_clears() -> None:
    """Acknowledgement: acknowledged at 20 s, 97 % from 21 s: cleared at 31 s, no renotify."""
    engine = engine_()
    play(engine, [spo2(86)] * 21)
    engine.acknowledge(SITE, CHAIR, "spo2_low", "kim", T0 + 20 * S)
    assert play(engine, [spo2(97)] * 200, start=21) == [("spo2_low", "cleared", 31)]


def test_unacknowledged_alarm_is_not_resent_by_the_engine() -> None:
    """Acknowledgement: an active, unacknowledged spo2_low for 10 minutes: one raise, nothing else."""
    assert play(engine_(), [spo2(86)] * 600) == [("spo2_low", "raised", 15)]


def test_escalation_critical_after_low_is_escalated_and_one_ack_covers_both() -> None:
    """Escalation: spo2_low raised at 15 s; 82 % at 16 s: spo2_critical is
    ``escalated`` (medium -> high).  Acknowledging the critical also acknowledges the low."""
    engine = engine_()
    got = play(engine, [spo2(88)] * 16 + [spo2(82)])
    assert got == [("spo2_low", "raised", 15), ("spo2_critical", "escalated", 16)]
    acked = engine.acknowledge(SITE, CHAIR, "spo2_critical", "kim", T0 + 17 * S)
    assert [(e.alarm, e.event) for e in acked] == [("spo2_critical", "acknowledged"), ("spo2_low", "acknowledged")]


def test_inhibited_condition_does_not_raise_while_its_inhibitor_is_present() -> None:
    """Escalation: 82 % from 0 s: spo2_critical raised at once; spo2_low (past 90
    too) never raises while the critical alarm is ACTIVE, even after 60 s."""
    assert play(engine_(), [spo2(82)] * 60) == [("spo2_critical", "raised", 0)]


def test_escalated_only_when_the_priority_goes_up() -> None:
    """Escalation: box_offline inhibits data_stale, both medium: with data_stale
    announced, the last will gives box_offline ``raised``, not ``escalated``."""
    engine = engine_()
    got = play(engine, [vitals()])
    for second in range(1, 40):
        got += seconds(engine.tick(T0 + second * S))
    got += seconds(at(engine, 40, "status", {"state": "offline"}))
    assert got == [("data_stale", "raised", 31), ("box_offline", "raised", 40)]


def test_events_of_an_inhibitor_carry_inhibits_and_of_the_inhibited_inhibited_by() -> None:
    """Threads on the wire: sys 190 raises sys_high; 226 escalates to
    bp_intervention, whose event carries ``inhibits = (dia_high, sys_high)``; the
    acknowledgement of sys_high (through its inhibitor) carries ``inhibited_by``."""
    engine = engine_()
    at(engine, 0, "nibp", nibp(sys=190, dia=100))
    up = at(engine, 300, "nibp", nibp(sys=226, dia=100))
    up = [e for e in up if e.alarm != "data_stale"]  # no vitals on this chair for 300 s
    assert [(e.alarm, e.event, e.inhibits) for e in up] == [("bp_intervention", "escalated", ("dia_high", "sys_high"))]
    acked = engine.acknowledge(SITE, CHAIR, "bp_intervention", "kim", T0 + 301 * S)
    assert [(e.alarm, e.inhibited_by) for e in acked] == [("bp_intervention", None), ("sys_high", "bp_intervention")]


def test_events_carry_active_level_latching_and_reason() -> None:
    """Events carry ``extra = {active, level, latching, reason}``: the raise of
    spo2_critical is active, level 3 (high), latching; its clear is not active."""
    engine = engine_()
    raised = at(engine, 0, fields=spo2(80))[0]
    assert set(raised.extra) == {"active", "level", "latching", "reason"}
    assert (raised.extra["active"], raised.extra["level"], raised.extra["latching"]) == (True, 3, True)
    play(engine, [spo2(97)] * 12, start=1)
    cleared = engine.acknowledge(SITE, CHAIR, "spo2_critical", "kim", T0 + 13 * S)[-1]
    assert (cleared.event, cleared.extra["active"]) == ("cleared", False)


def test_active_lists_the_announced_alarms_with_the_raise_id() -> None:
    """``engine.active`` returns {alarm, priority, kind, since, acked, latched, id}, id = the raise's id."""
    engine = engine_()
    raised = at(engine, 0, fields=spo2(80))[0]
    assert engine.active(SITE, CHAIR) == [{"alarm": "spo2_critical", "priority": "high", "kind": "physiological",
                                          "since": T0, "acked": False, "latched": False, "id": raised.id}]


def test_event_ids_are_deterministic_and_threads_append_suffixes() -> None:
    """Event ids: ``t-`` + 20 hex digits from (site, chair, alarm, measured time
    of the crossing reading): two engines fed the same reading give the same id,
    a reading measured 1 ms later another one; then -a1, -a2, -r1 and -c."""
    def raise_at(measured: int) -> AlarmEvent:
        engine = engine_()
        reading = Reading(SITE, CHAIR, "vitals", spo2(80), measured, T0 + 5 * S)
        return engine.on_reading(reading, T0 + 5 * S)[0]

    first = raise_at(T0)
    assert re.fullmatch(r"t-[0-9a-f]{20}", first.id)
    assert raise_at(T0).id == first.id and raise_at(T0 + 1).id != first.id
    engine = engine_()
    raised = [e for e in play(engine, [spo2(86)] * 16)]
    thread = engine.active(SITE, CHAIR)[0]["id"]
    assert raised == [("spo2_low", "raised", 15)]
    ids = [e.id for e in engine.acknowledge(SITE, CHAIR, "spo2_low", "kim", T0 + 16 * S)]
    ids += [e.id for e in engine.acknowledge(SITE, CHAIR, "spo2_low", "kim", T0 + 17 * S)]
    for second in range(18, 140):
        ids += [e.id for e in at(engine, second, fields=spo2(86))]
    for second in range(140, 151):
        ids += [e.id for e in at(engine, second, fields=spo2(97))]
    assert ids == [f"{thread}-a1", f"{thread}-a2", f"{thread}-r1", f"{thread}-c"]


# ==================================== "Per-chair limits (limits/set) and the audit trail"
def test_per_chair_override_takes_effect_from_the_next_reading_and_is_audited() -> None:
    """Per-chair limits: spo2_low.limit 88 for this chair: 89 % for 20 s raises
    nothing; the audit record says who, old 90 -> new 88 and why; a reset
    (value null) says "reset to default" and 89 % raises again after 15 s."""
    engine = engine_()
    record = engine.set_limit(SITE, CHAIR, "spo2_low.limit", 88, "dr lee", "COPD", T0)
    assert (record.by, record.param, record.old, record.new, record.reason) == ("dr lee", "spo2_low.limit", 90, 88,
                                                                              "COPD")
    assert play(engine, [spo2(89)] * 20) == []
    reset = engine.set_limit(SITE, CHAIR, "spo2_low.limit", None, "dr lee", "", T0 + 20 * S)
    assert (reset.old, reset.new, reset.reason) == (88, 90, "reset to default")
    assert play(engine, [spo2(89)] * 16, start=20) == [("spo2_low", "raised", 35)]


@pytest.mark.parametrize(("param", "value", "band"), [("spo2_low.limit", 70, "80"), ("delay_s", 31, "30"),
                                                       ("renotify_after_ack_s", 10, "30")])
def test_per_chair_change_outside_its_band_is_refused_naming_field_and_band(param: str, value: float,
                                                                          band: str) -> None:
    """Per-chair limits: a refused change names the field and the band, and changes nothing."""
    engine = engine_()
    param = "pulse_high.delay_s" if param == "delay_s" else param
    with pytest.raises(ProfileError) as refused:
        engine.set_limit(SITE, CHAIR, param, value, "dr lee", "", T0)
    assert param.split(".")[-1] in str(refused.value) and band in str(refused.value)
    assert engine.overrides_for(SITE, CHAIR) == {}


def test_priority_operator_and_text_cannot_be_changed_per_chair() -> None:
    engine = engine_()
    for param in ("spo2_low.priority", "spo2_low.op", "spo2_low.text"):
        with pytest.raises(ProfileError):
            engine.set_limit(SITE, CHAIR, param, 1, "dr lee", "", T0)


# ======================================================= "What the engine does not do" / standby
def test_standby_clears_and_the_next_valid_reading_ends_it() -> None:
    """Standby: spo2_low cleared with "chair put in standby by RN Lee"; probe off
    stays quiet; the next valid patient reading ends standby by itself."""
    engine = engine_()
    play(engine, [spo2(86)] * 16)
    events, _ = engine.standby(SITE, CHAIR, "RN Lee", T0 + 16 * S)
    assert [(e.alarm, e.event) for e in events] == [("spo2_low", "cleared")]
    assert "chair put in standby by RN Lee" in events[0].text
    assert play(engine, [spo2(None, pr=None, st="probe_off")] * 60, start=17) == []
    play(engine, [vitals()], start=77)
    assert not engine.in_standby(SITE, CHAIR)


def test_alarm_rules_doc_names_this_file() -> None:
    """The doc's "Tests" line points reviewers here."""
    assert "test_alarm_rules_readable.py" in DOC.read_text()



def test_high_priority_alarms_always_latch() -> None:
    """Per-chair limits: ``latching`` 0 is refused for a high-priority alarm."""
    engine = engine_()
    with pytest.raises(ProfileError, match="always latch"):
        engine.set_limit(SITE, CHAIR, "spo2_critical.latching", 0, "dr lee", "", T0)


# ================================================================== "Texts"
def test_texts_of_the_doc_example_table() -> None:
    """Texts: the doc's examples, event by event, on chair c3: SpO2 88 % raises
    spo2_low; 82 % escalates to critical; kim acknowledges at 86 %; 91 % after
    the 120-s pause re-notifies; 97 % clears (the critical latches meanwhile)."""
    engine = engine_()
    texts: list[tuple[str, str, str]] = []

    def note(events: list[AlarmEvent]) -> None:
        texts.extend((e.alarm, e.event, e.text) for e in events)

    for second in range(16):
        note(at(engine, second, fields=spo2(88)))
    note(at(engine, 16, fields=spo2(82)))
    note(at(engine, 17, fields=spo2(86)))
    note(engine.acknowledge(SITE, CHAIR, "spo2_low", "nurse kim", T0 + 17 * S))
    for second in range(18, 140):
        note(at(engine, second, fields=spo2(91)))
    for second in range(140, 152):
        note(at(engine, second, fields=spo2(97)))
    assert ("spo2_low", "raised", "SpO2 low: SpO2 88 % < 90 % (chair c3)") in texts
    assert ("spo2_critical", "escalated", "escalated: SpO2 critically low: SpO2 82 % < 85 % (chair c3)") in texts
    assert ("spo2_low", "acknowledged", "SpO2 low: SpO2 86 % < 90 % (chair c3), acknowledged by nurse kim") in texts
    assert ("spo2_low", "renotify",
            "still active: SpO2 low: SpO2 91 %, not yet recovered (limit 90 %) (chair c3)") in texts
    assert ("spo2_low", "cleared", "SpO2 low: SpO2 back to 97 % (limit 90 %) (chair c3)") in texts


# =============================================================== "Restarts"
def restarted(engine: AlarmEngine, second: int) -> tuple[AlarmEngine, list[AlarmEvent]]:
    saved = json.loads(json.dumps(engine.snapshot()))  # through JSON, as on disk
    fresh = engine_()
    return fresh, fresh.restore(saved, T0 + second * S)


def test_restart_names_every_restored_chair_in_changed_chairs() -> None:
    """Restarts: after ``restore``, ``changed_chairs()`` names every restored chair."""
    engine = engine_()
    play(engine, [vitals()] * 3)
    engine, events = restarted(engine, 5)
    assert events == [] and engine.changed_chairs() == {(SITE, CHAIR)}


def test_restart_keeps_flap_onsets_inside_the_window() -> None:
    """Restarts: flap onsets inside the flap window are kept.  One-second pulse
    dips (130) at 0 and 2 s, a restart at 3 s, a third dip at 4 s: three within
    60 s raise at once, at 4 s."""
    engine = engine_()
    play(engine, [pr(130), pr(100), pr(130), pr(100)])
    engine, _ = restarted(engine, 4)
    assert only(play(engine, [pr(130)], start=4), "pulse_high") == [("pulse_high", "raised", 4)]


def test_restart_af_flag_stays_until_24_s_of_rates_decide_again() -> None:
    """Restarts: the AF window's rates are not saved.  The flag raised at 23 s
    stays announced after a restart at 40 s (unknown is not recovered) while
    steady 80 bpm arrives; from the 24th rate (at 63 s) the window decides
    (mean 80 < 100: recovered) and the flag clears after the 10-s hold, at 73 s."""
    engine = engine_()
    assert only(play(engine, irregular(40)), "afib_rvr_suspected") == [("afib_rvr_suspected", "raised", 23)]
    engine, _ = restarted(engine, 40)
    got = play(engine, [pr(80)] * 40, start=40)
    assert only(got, "afib_rvr_suspected") == [("afib_rvr_suspected", "cleared", 73)]
