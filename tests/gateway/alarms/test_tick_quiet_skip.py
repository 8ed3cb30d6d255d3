"""The alarm tick skips quiet chairs (``AlarmEngine._quiet``): the same
randomized streams as the fast-path recording, through an engine that skips
and one that ticks every chair, give the same events after every call and
the same slot states, except the one thing a skipped tick does not touch --
an idle ``data_stale`` slot's time of last observation and its "inside
limit" reason, which only the SatSeconds mode reads (and it is never
skipped)."""

from __future__ import annotations

from typing import Any

import pytest
from test_alarm_fastpath_equivalence import STEPS, drive, satseconds_profile, snapshot

from chairside.alarms import AlarmEngine, load_profile


def _comparable(engine: AlarmEngine) -> dict[Any, Any]:
    out = snapshot(engine)
    for key, value in list(out.items()):
        if key[2] == "data_stale" and value[0] == "inactive" and value[1] is None and not value[4]:
            out[key] = (value[0],) + value[3:14] + value[15:]  # drop last_ms and reason
    return out


@pytest.mark.parametrize(("seed", "satseconds"), [(0, False), (1, True)], ids=["delay", "satseconds"])
def test_skipping_quiet_chairs_changes_no_event(seed: int, satseconds: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = satseconds_profile() if satseconds else load_profile()
    skipping = AlarmEngine(profile, id_prefix="x")
    ticking_all = AlarmEngine(profile, id_prefix="x")
    monkeypatch.setattr(ticking_all, "_quiet", lambda chair, now_ms: False)
    skipped = 0
    real_quiet = AlarmEngine._quiet

    def counting(chair: Any, now_ms: int) -> bool:
        nonlocal skipped
        quiet = real_quiet(chair, now_ms)
        skipped += quiet
        return quiet

    monkeypatch.setattr(skipping, "_quiet", counting)
    calls_a, calls_b = drive(seed, STEPS, profile), drive(seed, STEPS, profile)
    for step, (a, b) in enumerate(zip(calls_a, calls_b, strict=True)):
        assert a(skipping) == b(ticking_all), f"call {step}"
        assert _comparable(skipping) == _comparable(ticking_all), f"state after call {step}"
    assert skipped > 100  # the streams do reach the skip
