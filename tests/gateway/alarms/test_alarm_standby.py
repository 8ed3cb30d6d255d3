"""Chair standby between patients, and forgetting a drill chair."""

from __future__ import annotations

from test_alarm_engine import CHAIR, SITE, T0, S, feed, of, run_vitals, vitals

from chairside.alarms import AlarmEngine, load_profile


def _engine() -> AlarmEngine:
    return AlarmEngine(load_profile(), id_prefix="sb")


def test_standby_clears_alarms_and_quiets_probe_off_until_a_patient_reading() -> None:
    engine = _engine()
    events, t = run_vitals(engine, [vitals(st="probe_off", spo2=None, pr=None)] * 40)
    assert of(events, "probe_off", "raised"), "probe off raises while monitoring"
    cleared, _ = engine.standby(SITE, CHAIR, "RN Lee", t)
    assert [e.event for e in of(cleared, "probe_off")] == ["cleared"]
    assert engine.in_standby(SITE, CHAIR) and engine.active(SITE, CHAIR) == []
    quiet, t = run_vitals(engine, [vitals(st="probe_off", spo2=None, pr=None)] * 120, start=t)
    quiet += engine.tick(t + 120 * S)  # even silence (data_stale) stays quiet in standby
    assert [e for e in quiet if e.event == "raised"] == []
    # the next patient: a valid reading resumes monitoring by itself
    _resumed, t = run_vitals(engine, [vitals(spo2=97)] * 3, start=t + 200 * S)
    assert not engine.in_standby(SITE, CHAIR)
    again, t = run_vitals(engine, [vitals(st="probe_off", spo2=None, pr=None)] * 40, start=t)
    assert of(again, "probe_off", "raised")


def test_standby_never_hides_a_physiological_alarm() -> None:
    engine = _engine()
    engine.standby(SITE, CHAIR, "RN Lee", T0)
    events = feed(engine, "vitals", vitals(spo2=80), T0 + S)
    assert of(events, "spo2_critical", "raised")


def test_forget_resolves_a_drill_chairs_alarms() -> None:
    engine = _engine()
    events, t = run_vitals(engine, [vitals(spo2=80)] * 3)
    assert of(events, "spo2_critical", "raised")
    gone = engine.forget(SITE, CHAIR, t)
    assert [e.event for e in of(gone, "spo2_critical")] == ["cleared"]
    assert (SITE, CHAIR) not in engine.chairs() and engine.tick(t + 60 * S) == []


def test_standby_returns_the_chairs_limits_to_the_profile_audited() -> None:
    engine = _engine()
    engine.set_limit(SITE, CHAIR, "spo2_low.limit", 88, "Dr Patel", "COPD", T0)
    _, records = engine.standby(SITE, CHAIR, "RN Lee", T0 + S)
    assert [(r.param, r.old, r.new, r.by) for r in records] == [("spo2_low.limit", 88, 90, "RN Lee")]
    assert engine.overrides_for(SITE, CHAIR) == {}


def test_a_silent_module_still_alarms_in_standby() -> None:
    engine = _engine()
    engine.standby(SITE, CHAIR, "RN Lee", T0)
    events = []
    for i in range(5):
        events += feed(engine, "status", {"state": "online", "oxi": "silent", "nibp": "ok", "sync": 1}, T0 + i * S)
        events += engine.tick(T0 + i * S)
    assert of(events, "oximeter_silent", "raised")
