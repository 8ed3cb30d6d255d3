"""Every documented per-chair band is exactly what a per-chair override
accepts: both ends apply, one step outside is refused (issue 15 docs fix:
satseconds_limit, cuff_interlock_max_s and flap_violations were documented
wider than the profile accepted)."""

from __future__ import annotations

import re

import pytest

from chairside.alarms.profile import RUNTIME_RANGES, ChairProfile, ProfileError, load_profile
from chairside.paths import REPO


def _set(param: str, value: float) -> None:
    ChairProfile(load_profile(), "clinic1", "3").set_param(param, value, "dr lee", "", 1)


@pytest.mark.parametrize("param", sorted(RUNTIME_RANGES))
def test_both_ends_of_each_band_apply_and_outside_is_refused(param: str) -> None:
    lo, hi = RUNTIME_RANGES[param]
    _set(param, lo)
    _set(param, hi)
    step = 1 if hi - lo >= 1 else 0.5
    for outside in (lo - step, hi + step):
        with pytest.raises(ProfileError, match="outside the per-chair range"):
            _set(param, outside)


def test_flap_violations_is_a_whole_number() -> None:
    with pytest.raises(ProfileError, match="whole number"):
        _set("flap_violations", 2.5)


def test_alarms_doc_states_the_bands_of_the_fixed_params() -> None:
    text = " ".join((REPO / "docs" / "alarms.md").read_text().split())
    for param in ("spo2_low.satseconds_limit", "cuff_interlock_max_s", "flap_violations"):
        lo, hi = RUNTIME_RANGES[param]
        assert re.search(rf"`{re.escape(param)}` \({lo:g}–{hi:g}", text), param
