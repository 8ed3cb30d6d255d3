"""The session figures (chairside.record.figures) on small hand-made sessions:
every expected number below is worked out by hand in the comment beside it."""

from __future__ import annotations

import pytest

from chairside.record.data import AlarmRow, DeviceRow, LimitChange, Nibp, Session, SessionData, Vital
from chairside.record.figures import Episode, Gap, compute, episodes

T0 = 1_790_000_000_000  # session start
MIN = 60_000


def _session(end_ms: int | None = T0 + 30 * MIN) -> Session:
    return Session("s.1." + str(T0), "s", "1", T0, end_ms, "RN Lee", "RN Kim" if end_ms else None, "ENC-1",
                   "staff" if end_ms else None)


def _bp(t_ms: int, sys: int | None, dia: int | None, map_: int | None = None, st: str = "ok") -> Nibp:
    return Nibp(t_ms, sys, dia, map_, 70, st)


def _vitals(start_s: int, values: list[int], st: str = "ok", pr: int = 72) -> list[Vital]:
    """One reading a second from T0 + start_s."""
    return [Vital(T0 + (start_s + i) * 1000, v, pr, st) for i, v in enumerate(values)]


def test_baseline_is_the_median_of_the_readings_of_the_15_min_before_the_start() -> None:
    data = SessionData(_session(), nibp=[
        _bp(T0 - 16 * MIN, 200, 120, 147),  # more than 15 min before: ignored
        _bp(T0 - 14 * MIN, 118, 76, 90),
        _bp(T0 - 9 * MIN, 150, 70, 97),  # an artefact: the median ignores it
        _bp(T0 - 4 * MIN, 124, 80, 95),
        _bp(T0 - 2 * MIN, None, None, None, st="error"),  # not valid
        _bp(T0 + 10 * MIN, 140, 90, 107),
        _bp(T0 + 20 * MIN, 152, 88, 109),  # highest systolic and MAP
        _bp(T0 + 25 * MIN, 152, 95, 114),  # same systolic later: the earlier peak; highest diastolic and MAP
    ])
    f = compute(data)
    assert f.baseline is not None
    # median of 118/150/124 = 124; of 76/70/80 = 76; of 90/97/95 = 95
    assert (f.baseline.sys, f.baseline.dia, f.baseline.map, f.baseline.readings, f.baseline.source) == (
        124.0, 76.0, 95.0, 3, "before start")
    assert f.peak_sys is not None and f.peak_dia is not None and f.peak_map is not None
    assert (f.peak_sys.value, f.peak_sys.after_start_ms, f.peak_sys.rise) == (152, 20 * MIN, 28.0)  # 152 - 124
    assert (f.peak_dia.value, f.peak_dia.after_start_ms, f.peak_dia.rise) == (95, 25 * MIN, 19.0)  # 95 - 76
    assert (f.peak_map.value, f.peak_map.after_start_ms, f.peak_map.rise) == (114, 25 * MIN, 19.0)  # 114 - 95
    assert f.nibp_valid == 3


def test_an_even_number_of_baseline_readings_averages_the_middle_two() -> None:
    data = SessionData(_session(), nibp=[_bp(T0 - 10 * MIN, 118, 76, 90), _bp(T0 - 5 * MIN, 122, 81, 94)])
    f = compute(data)
    assert f.baseline is not None and (f.baseline.sys, f.baseline.dia, f.baseline.map) == (120.0, 78.5, 92.0)
    assert f.peak_sys is None and f.peak_dia is None  # no reading in the session


def test_without_a_reading_before_the_start_the_first_of_the_first_5_min_is_the_baseline() -> None:
    data = SessionData(_session(), nibp=[_bp(T0 + 3 * MIN, 130, 85, 100), _bp(T0 + 4 * MIN, 128, 84, 99)])
    f = compute(data)
    assert f.baseline is not None
    assert (f.baseline.sys, f.baseline.readings, f.baseline.source) == (130.0, 1, "after start")
    assert f.peak_sys is not None and f.peak_sys.rise == 0.0
    late = SessionData(_session(), nibp=[_bp(T0 + 6 * MIN, 130, 85, 100)])  # after 5 min: no baseline
    g = compute(late)
    assert g.baseline is None and g.peak_sys is not None and g.peak_sys.rise is None


def test_spo2_time_below_counts_each_reading_up_to_2_s_and_pulse_range() -> None:
    readings = (_vitals(0, [97, 96, 89, 88, 84, 86, 91])  # 2, 3, 4, 5 s below 90; 4 s below 85
                + [Vital(T0 + 7_000, None, None, "probe_off")]  # the probe off 1 s later: not below
                + _vitals(8, [97])
                + _vitals(20, [87, 97]))  # 87 at 20 s, then the next reading 1 s later
    readings[2] = Vital(readings[2].t_ms, 89, 110, "ok")
    readings[5] = Vital(readings[5].t_ms, 86, 55, "ok")
    # 89 % at 2 s: next 3 s → 1 s; 88 → 1 s; 84 → 1 s; 86 → 1 s; 87 at 20 s → 1 s: below 90 = 5 s
    # a reading followed by a gap counts at most 2 s: 97 at 8 s then nothing until 20 s (97: not below)
    data = SessionData(_session(T0 + MIN), vitals=readings)
    f = compute(data)
    assert f.below_ms == {90: 5_000, 85: 1_000}
    assert f.spo2_min is not None and (f.spo2_min.value, f.spo2_min.after_start_ms) == (84, 4_000)
    assert f.pulse_min is not None and f.pulse_max is not None
    assert (f.pulse_min.value, f.pulse_max.value, f.pulse_max.after_start_ms) == (55, 110, 2_000)
    assert f.vitals_valid == 10  # 7 + 1 + 2, the probe-off reading excluded


def test_a_reading_below_before_a_gap_counts_2_s_and_the_last_counts_up_to_the_end() -> None:
    data = SessionData(_session(T0 + 30_500), vitals=_vitals(0, [80]) + _vitals(30, [80]))
    # 80 at 0 s, next reading at 30 s: 2 s (the cap); 80 at 30 s, end at 30.5 s: 0.5 s
    assert compute(data).below_ms == {90: 2_500, 85: 2_500}


def test_alarm_episodes_with_response_time_and_drills_excluded() -> None:
    rows = [
        AlarmRow(T0 - 5_000, "pulse_high", "raised", "medium", "physiological", "p"),  # before the start
        AlarmRow(T0 + 10_000, "pulse_high", "cleared", "medium", "physiological", "p-c"),
        AlarmRow(T0 + 60_000, "spo2_critical", "raised", "high", "physiological", "a", value=82, limit=85),
        AlarmRow(T0 + 75_000, "spo2_critical", "renotify", "high", "physiological", "a-r1"),
        AlarmRow(T0 + 92_500, "spo2_critical", "acknowledged", "high", "physiological", "a-a1", by="RN Kim"),
        AlarmRow(T0 + 95_000, "spo2_critical", "acknowledged", "high", "physiological", "a-a2", by="RN Lee"),
        AlarmRow(T0 + 130_000, "spo2_critical", "cleared", "high", "physiological", "a-c"),
        AlarmRow(T0 + 200_000, "spo2_critical", "raised", "high", "physiological", "b", drill=True),
        AlarmRow(T0 + 300_000, "probe_off", "raised", "medium", "technical", "c"),  # still active at the end
    ]
    found = episodes(rows, T0, T0 + 30 * MIN)
    assert [(e.alarm, e.raised_ms, e.acked_ms, e.acked_by, e.cleared_ms, e.response_ms) for e in found] == [
        ("pulse_high", None, None, None, T0 + 10_000, None),
        ("spo2_critical", T0 + 60_000, T0 + 92_500, "RN Kim", T0 + 130_000, 32_500),  # the first acknowledgement
        ("probe_off", T0 + 300_000, None, None, None, None),
    ]
    assert found[1].value == 82 and found[1].limit == 85


def test_gaps_no_data_probe_states_and_offline() -> None:
    vitals = (_vitals(0, [97, 97]) + _vitals(2, [0, 0, 0], st="probe_off") + _vitals(5, [97])
              + _vitals(20, [97]) + _vitals(21, [0], st="searching"))
    device = [DeviceRow(T0 - MIN, 1), DeviceRow(T0 + 30_000, 0), DeviceRow(T0 + 45_000, 0),
              DeviceRow(T0 + 50_000, 1)]
    data = SessionData(_session(T0 + 60_000), vitals=vitals, device=device)
    assert compute(data).gaps == [
        Gap("probe_off", T0 + 2_000, T0 + 5_000),  # to the next valid reading
        Gap("no_data", T0 + 5_000, T0 + 20_000),  # 15 s without a reading (>= 10 s)
        Gap("no_data", T0 + 21_000, T0 + 60_000),  # kinds may overlap; same start: by kind
        Gap("searching", T0 + 21_000, T0 + 60_000),  # never valid again: to the end
        Gap("offline", T0 + 30_000, T0 + 50_000),  # the first offline status to the next online
    ]
    assert [g.duration_ms for g in compute(data).gaps] == [3_000, 15_000, 39_000, 39_000, 20_000]


def test_offline_at_the_start_counts_from_the_start_and_limit_changes_are_the_sessions() -> None:
    limits = [LimitChange(T0 - 1, "spo2_low.limit", 90, 88, "dr a"), LimitChange(T0 + 5, "spo2_low.limit", 88, 92,
                                                                                 "dr b", "COPD")]
    data = SessionData(_session(T0 + 20_000), device=[DeviceRow(T0 - 5_000, 0), DeviceRow(T0 + 8_000, 1)],
                       vitals=_vitals(8, list(range(90, 100))), limits=limits)
    f = compute(data)
    assert [g for g in f.gaps if g.kind == "offline"] == [Gap("offline", T0, T0 + 8_000)]
    assert [c.by for c in f.limit_changes] == ["dr b"]


def test_an_open_session_needs_now_and_ends_there() -> None:
    data = SessionData(_session(None), vitals=_vitals(0, [97]))
    with pytest.raises(ValueError, match="open"):
        compute(data)
    f = compute(data, now_ms=T0 + 5_000)
    assert f.end_ms == T0 + 5_000 and f.duration_ms == 5_000 and f.below_ms == {90: 0, 85: 0}


def test_a_session_nobody_ended_is_cut_at_24_h() -> None:
    data = SessionData(_session(None), vitals=_vitals(0, [97]) + [Vital(T0 + 25 * 3_600_000, 80, 70, "ok")])
    f = compute(data, now_ms=T0 + 30 * 3_600_000)
    assert (f.end_ms, f.truncated, f.spo2_min and f.spo2_min.value) == (T0 + 24 * 3_600_000, True, 97)
    assert not compute(data, now_ms=T0 + 24 * 3_600_000).truncated


def test_an_empty_session_has_no_figures_but_no_error() -> None:
    f = compute(SessionData(_session(T0 + 9_000)))
    assert (f.baseline, f.peak_sys, f.spo2_min, f.pulse_min, f.episodes) == (None, None, None, None, [])
    assert f.gaps == []  # 9 s without data: under the 10 s gap rule
    assert isinstance(Episode("x", "high", "technical"), Episode)
