"""The gateway tests' engine is the production one: the shipped adult profile
with one change, spo2_low's delay 0 (so a pipeline test sees its alarm on the
first low reading).  Any other difference would make those tests' expectations
differ from what ships (issue 21)."""

from __future__ import annotations

from typing import Any

from instant_engine import instant_engine

from chairside.alarms import AlarmEngine, load_profile
from chairside.service import default_alarm_stage


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys()) for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


def test_instant_engine_is_the_shipped_profile_but_spo2_low_delay() -> None:
    shipped = load_profile()
    assert isinstance(default_alarm_stage(), AlarmEngine)
    assert default_alarm_stage().profile.raw == shipped.raw
    assert differences(shipped.raw, instant_engine().profile.raw) == [".conditions.spo2_low.delay_s: 15 -> 0"]
