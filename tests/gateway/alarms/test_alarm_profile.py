"""Alarm profiles: validation names the field; overrides are audited; reset to default."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from chairside.alarms import (
    DEFAULT_PROFILE_PATH,
    AlarmEngine,
    ChairProfile,
    ProfileError,
    load_profile,
    parse_profile,
)
from chairside.alarms.adapter import (
    Rejected,
    audit_line,
    handle_limits_set,
    parse_ack,
    parse_limits_set,
)

T0 = 1_700_000_000_000
REQUIRED_KEYS = {
    "measurement",
    "field",
    "op",
    "limit",
    "priority",
    "kind",
    "delay_s",
    "clear_hysteresis",
    "latching",
    "text",
}
EXPECTED_CONDITIONS = {
    "spo2_low",
    "spo2_critical",
    "pulse_high",
    "pulse_low",
    "sys_high",
    "sys_low",
    "dia_high",
    "map_low",
    "bp_intervention",
    "afib_rvr_suspected",
    "probe_off",
    "oximeter_silent",
    "nibp_silent",
    "nibp_failed",
    "box_offline",
    "data_stale",
    "clock_unsynced",
}


def adult_raw() -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(DEFAULT_PROFILE_PATH.read_text())
    return raw


def test_adult_profile_has_the_shape_dashboards_read() -> None:
    raw = adult_raw()
    assert raw["name"] == "adult" and raw["version"] == 1
    assert raw["stale_after_s"] == 30 and raw["cuff_interlock"] is True
    assert "renotify_after_ack_s" in raw
    assert set(raw["conditions"]) == EXPECTED_CONDITIONS
    for name, cond in raw["conditions"].items():
        assert set(cond) >= REQUIRED_KEYS, name
        assert cond["measurement"] in ("vitals", "nibp", None), name
    profile = load_profile()
    assert profile.conditions["bp_intervention"].limit == 220
    assert profile.conditions["bp_intervention"].alt_limit == 120
    assert profile.conditions["spo2_critical"].priority == "high"


# (path in the document, bad value, expected error text)
BAD = [
    (("conditions", "spo2_low", "limit"), "low", "conditions.spo2_low.limit: expected number"),
    (("conditions", "spo2_low", "limit"), None, "conditions.spo2_low.limit: expected number"),
    (("conditions", "spo2_low", "limit"), 120, "conditions.spo2_low.limit: must be within 0..100"),
    (("conditions", "spo2_low", "priority"), "urgent", "spo2_low.priority: expected one"),
    (("conditions", "pulse_high", "op"), "=", "conditions.pulse_high.op: expected one of"),
    (("conditions", "sys_high", "field"), "spo2", "conditions.sys_high.field: expected one of"),
    (("conditions", "spo2_low", "delay_s"), 120, "conditions.spo2_low.delay_s: must be <= 60"),
    (("conditions", "spo2_low", "delay_s"), True, "conditions.spo2_low.delay_s: expected number"),
    (("conditions", "spo2_low", "latching"), "yes", "conditions.spo2_low.latching: expected true"),
    (("conditions", "spo2_low", "mode"), "smart", "conditions.spo2_low.mode: expected one of"),
    (("conditions", "box_offline", "inhibits"), ["x"], "conditions.box_offline.inhibits: unknown"),
    (("conditions", "afib_rvr_suspected", "window_s"), None, "afib_rvr_suspected.window_s"),
    (("stale_after_s",), "30", "stale_after_s: expected number, got str"),
    (("renotify_after_ack_s",), 1, "renotify_after_ack_s: must be >= 10"),
    (("cuff_interlock",), 1, "cuff_interlock: expected true/false"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD)
def test_validation_errors_name_the_field(path: tuple[str, ...], value: Any, message: str) -> None:
    raw = adult_raw()
    holder = raw
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    with pytest.raises(ProfileError) as info:
        parse_profile(raw)
    assert any(message in err for err in info.value.errors), info.value.errors


def test_missing_field_and_all_errors_at_once() -> None:
    raw = adult_raw()
    del raw["stale_after_s"]
    del raw["conditions"]["pulse_low"]["priority"]
    raw["conditions"]["map_low"]["limit"] = "x"
    with pytest.raises(ProfileError) as info:
        parse_profile(raw)
    assert "stale_after_s: missing" in info.value.errors
    assert "conditions.pulse_low.priority: missing" in info.value.errors
    assert any(e.startswith("conditions.map_low.limit") for e in info.value.errors)


def test_load_profile_reports_bad_json(tmp_path: Path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text('{"name": "x",')
    with pytest.raises(ProfileError, match=r"p\.json: invalid JSON at line 1"):
        load_profile(bad)


def test_override_is_audited_old_to_new_and_reset_restores_default() -> None:
    chair = ChairProfile(load_profile(), "clinic1", "c3")
    rec = chair.set_param("spo2_low.limit", 88, "dr lee", "COPD", T0)
    assert (rec.param, rec.old, rec.new, rec.by, rec.reason, rec.t) == (
        "spo2_low.limit",
        90.0,
        88.0,
        "dr lee",
        "COPD",
        T0,
    )
    assert chair.effective.conditions["spo2_low"].limit == 88
    rec2 = chair.set_param("conditions.spo2_low.limit", 86, "dr lee", "", T0 + 1)
    assert (rec2.old, rec2.new) == (88.0, 86.0)
    reset = chair.set_param("spo2_low.limit", None, "nurse kim", "", T0 + 2)
    assert (reset.old, reset.new, reset.reset) == (86.0, 90.0, True)
    assert reset.reason == "reset to default"
    assert chair.effective.conditions["spo2_low"].limit == 90
    assert chair.overrides == {}
    assert [r.t for r in chair.history] == [T0, T0 + 1, T0 + 2]


def test_top_level_and_boolean_overrides() -> None:
    chair = ChairProfile(load_profile(), "clinic1", "c3")
    rec = chair.set_param("cuff_interlock", 0, "dr", "", T0)
    assert (rec.old, rec.new) == (1.0, 0.0)
    assert chair.effective.cuff_interlock is False
    chair.set_param("renotify_after_ack_s", 300, "dr", "", T0)
    assert chair.effective.renotify_after_ack_s == 300


# (param, value, expected error text) -- and nothing changes
BAD_SET = [
    ("spo2_low.priority", 1, "spo2_low.priority: not a settable parameter"),
    ("spo2_low.text", 1, "not a settable parameter"),
    ("nosuch.limit", 80, "unknown condition 'nosuch'"),
    ("spo2_low.limit", 150, "spo2_low.limit: 150 outside the per-chair range 80..96"),
    ("spo2_low.delay_s", 600, "spo2_low.delay_s: 600 outside the per-chair range 0..30"),
    ("cuff_interlock", 2, "cuff_interlock: 2 outside the per-chair range 0..1"),
    ("stale_after_s", 1, "stale_after_s: 1 outside the per-chair range 10..60"),
    # no single command can switch a clinical alarm off
    ("spo2_critical.limit", 0, "spo2_critical.limit: 0 outside the per-chair range 75..90"),
    ("bp_intervention.limit", 300, "bp_intervention.limit: 300 outside the per-chair range 180..240"),
    ("spo2_critical.latching", 0, "spo2_critical.latching: high-priority alarms always latch"),
    ("stale_after_s", 3600, "stale_after_s: 3600 outside the per-chair range 10..60"),
]


@pytest.mark.parametrize(("param", "value", "message"), BAD_SET)
def test_bad_override_is_refused_and_changes_nothing(
    param: str, value: float, message: str
) -> None:
    chair = ChairProfile(load_profile(), "clinic1", "c3")
    before = copy.deepcopy(dict(chair.effective.raw))
    with pytest.raises(ProfileError, match=message.replace("(", r"\(").replace(".", r"\.")):
        chair.set_param(param, value, "dr", "", T0)
    assert dict(chair.effective.raw) == before
    assert chair.history == []


def test_set_param_needs_who() -> None:
    chair = ChairProfile(load_profile(), "clinic1", "c3")
    with pytest.raises(ProfileError, match="by: expected a non-empty name"):
        chair.set_param("spo2_low.limit", 88, " ", "", T0)


# ---------------------------------------------------------------- adapter
ACKS = [
    (b'{"v":1,"alarm":"spo2_low","by":"kim"}', None),
    (b'{"v":2,"alarm":"spo2_low","by":"kim"}', "bad_version"),
    (b'{"v":true,"alarm":"spo2_low","by":"kim"}', "bad_version"),
    (b'{"v":1,"by":"kim"}', "bad_field"),
    (b'{"v":1,"alarm":"spo2_low"}', "bad_field"),
    (b'{"v":1,"alarm":"spo2_low","by":"' + b"k" * 65 + b'"}', "bad_field"),
    (b"[1,2]", "bad_json"),
    (b"\xff", "bad_json"),
    (b"{" + b" " * 1100 + b"}", "too_large"),
]


@pytest.mark.parametrize(("payload", "reason"), ACKS)
def test_parse_ack(payload: bytes, reason: str | None) -> None:
    got = parse_ack(payload, load_profile().conditions)
    if reason is None:
        assert not isinstance(got, Rejected) and got.alarm == "spo2_low" and got.by == "kim"
    else:
        assert isinstance(got, Rejected) and got.reason == reason


LIMITS = [
    ({"v": 1, "param": "spo2_low.limit", "value": 88, "by": "dr"}, None),
    ({"v": 1, "param": "spo2_low.limit", "value": None, "by": "dr"}, None),
    ({"v": 1, "param": "spo2_low.limit", "by": "dr"}, "bad_field"),
    ({"v": 1, "param": "spo2_low.limit", "value": "88", "by": "dr"}, "bad_field"),
    ({"v": 1, "param": "spo2_low.limit", "value": True, "by": "dr"}, "bad_field"),
    ({"v": 1, "param": "", "value": 88, "by": "dr"}, "bad_field"),
    ({"v": 1, "param": "x.limit", "value": 88, "by": "dr", "reason": "r" * 201}, "bad_field"),
]


@pytest.mark.parametrize(("doc", "reason"), LIMITS)
def test_parse_limits_set(doc: dict[str, Any], reason: str | None) -> None:
    got = parse_limits_set(json.dumps(doc))
    if reason is None:
        assert not isinstance(got, Rejected)
    else:
        assert isinstance(got, Rejected) and got.reason == reason


def test_limits_set_through_engine_to_audit_line() -> None:
    engine = AlarmEngine(load_profile(), id_prefix="p")
    payload = {"v": 1, "param": "sys_high.limit", "value": 170, "by": "dr lee", "reason": "hx"}
    rec = handle_limits_set(engine, "clinic1", "c3", json.dumps(payload), T0)
    assert not isinstance(rec, Rejected)
    assert (rec.old, rec.new) == (180.0, 170.0)
    assert engine.profile_for("clinic1", "c3").conditions["sys_high"].limit == 170
    assert engine.profile_for("clinic1", "c4").conditions["sys_high"].limit == 180
    assert engine.audit_log == [rec]
    line = audit_line(rec)
    assert line.startswith("limit_audit,chair=c3,site=clinic1 ")
    for part in ('param="sys_high.limit"', "old=180", "new=170", 'by="dr lee"', 'reason="hx"'):
        assert part in line
    assert line.endswith(str(T0))
    bad = handle_limits_set(
        engine, "clinic1", "c3", {"v": 1, "param": "sys_high.limit", "value": 999, "by": "x"}, T0
    )
    assert isinstance(bad, Rejected) and bad.reason == "bad_limit"
    assert "sys_high.limit" in bad.detail
