"""``PulseWindow`` keeps running sums for the afib window; its statistics must
be bit-for-bit those of filtering the buffer and recomputing from scratch,
whatever the samples and the queries do.  What the statistic itself must be is
pinned by a table of windows computed by hand (``HAND``, ``DECISIONS``)."""

from __future__ import annotations

import math
import random

import pytest

from chairside.alarms import load_profile
from chairside.alarms.conditions import PulseWindow, afib_observation, pulse_irregularity

T0 = 1_700_000_000_000


def from_scratch(samples: list[tuple[int, float]], maxlen: int, now_ms: int, window_ms: int) -> tuple[float, ...]:
    rates = [rate for t, rate in samples[-maxlen:] if t > now_ms - window_ms]
    return (len(rates), *pulse_irregularity(rates)) if rates else (0, 0.0, 0.0)


def same(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("seed", range(6))
def test_running_statistics_equal_recomputation(seed: int) -> None:
    rng = random.Random(seed)
    maxlen = rng.choice((8, 30, 600))
    window = PulseWindow(maxlen)
    appended: list[tuple[int, float]] = []
    now = T0
    window_ms = 30_000
    for _ in range(3000):
        roll = rng.random()
        now += rng.choice((1000, 1000, 1000, 999, 1001, 0, 500, 2500, 20_000)) if roll > 0.02 else -rng.randint(1, 5000)
        rate: float = float(rng.randint(40, 180))
        odd = rng.random()
        if odd < 0.01:
            rate = 75.5
        elif odd < 0.015:
            rate = 0.1 * rng.randint(1, 1000)
        elif odd < 0.017:
            rate = math.nan
        elif odd < 0.019:
            rate = 1e300
        elif odd < 0.021:
            rate = -0.0
        if rng.random() < 0.9:
            window.append(now, rate)
            appended.append((now, rate))
        if rng.random() < 0.01:
            window_ms = rng.choice((5_000, 10_000, 30_000, 60_000, 600_000))
        query = now if rng.random() < 0.95 else now - rng.randint(0, 3000)
        got = window.stats(query, window_ms)
        assert same(got, from_scratch(appended, maxlen, query, window_ms)), (got, len(appended))
        assert same(got, window.reference_stats(query, window_ms))


def test_integral_rates_use_the_running_sums() -> None:
    """The common case does not rebuild: a long 1-Hz stream keeps one window."""
    window = PulseWindow(600)
    for i in range(100):
        window.append(T0 + i * 1000, float(100 + (i * 37) % 41))
        window.stats(T0 + i * 1000, 30_000)
    built = window._window
    window.append(T0 + 100_000, 120.0)
    assert window.stats(T0 + 100_000, 30_000) == window.reference_stats(T0 + 100_000, 30_000)
    assert window._window is built


# ------------------------------------------------ hand-computed windows (issue 21)
# The statistic of docs/alarms.md, "Rapid irregular pulse": over the rates of the
# window, mean and irregularity = median |difference - median difference| / mean.
# Every expectation below is worked out by hand in the comment beside it, not by
# the code under test.  (name, 1-Hz rates, count, mean, irregularity)
def cycle(pattern: list[int], n: int = 30) -> list[int]:
    return [pattern[i % len(pattern)] for i in range(n)]


HAND: list[tuple[str, list[int], int, float, float]] = [
    ("one rate", [120], 1, 120.0, 0.0),  # no differences: 0
    ("steady 130", [130] * 30, 30, 130.0, 0.0),  # 29 x 0: median 0, deviations 0
    # doc table row 1: 14 x +1, 14 x -1, 1 x +74: median +1; deviations 14 x 0, 14 x 2, 73: median 2
    ("step 76 -> 150", [76, 77] * 7 + [76] + [150, 151] * 7 + [150], 30, 3404 / 30, 2 / (3404 / 30)),
    # doc table row 2: 19 x 0, 10 x +7: median 0; deviations 19 x 0, 10 x 7: median 0
    ("ramp 80 -> 150", [80] * 10 + [80 + 7 * k for k in range(1, 11)] + [150] * 10, 30, 3485 / 30, 0.0),
    # doc table row 3: 20 x +1, 9 x -2: median +1; deviations 20 x 0, 9 x 3: median 0
    ("regular 129/130/131", cycle([129, 130, 131]), 30, 130.0, 0.0),
    # doc table row 4: 10 x +20, 14 x -25, 5 x +35: median +20 (sorted: -25 x 14, then +20);
    # deviations 10 x 0, 14 x 45, 5 x 15: sorted 0 x 10, 15 x 5, 45 x 14: median (index 14) 15
    ("irregular 125..150", cycle([125, 145, 120, 140, 115, 150]), 30, 132.5, 15 / 132.5),
    # 100, 115, 115: 10 x +15, 10 x 0, 9 x -15: median 0; deviations 10 x 0, 19 x 15: median 15
    ("100/115/115", cycle([100, 115, 115]), 30, 110.0, 15 / 110),
    # 120, 130, 130, 120: 8 x +10, 14 x 0, 7 x -10: median 0; deviations 14 x 0, 15 x 10: 10;
    # sum 7 x 500 + 120 + 130 = 3750, mean 125: irregularity 10 / 125 = 0.08, exactly the threshold
    ("120/130/130/120", cycle([120, 130, 130, 120]), 30, 125.0, 0.08),
    # 130, 134, 134: median 0, median deviation 4; mean 398 / 3: 12 / 398 = 0.030 (< 0.04, half the threshold)
    ("130/134/134", cycle([130, 134, 134]), 30, 398 / 3, 12 / 398),
    # 130, 137, 137: median deviation 7; mean 404 / 3: 21 / 404 = 0.052 (between 0.04 and 0.08)
    ("130/137/137", cycle([130, 137, 137]), 30, 404 / 3, 21 / 404),
]


@pytest.mark.parametrize(("name", "rates", "count", "mean", "irregularity"), HAND, ids=[h[0] for h in HAND])
def test_window_statistics_hand_computed(name: str, rates: list[int], count: int, mean: float,
                                         irregularity: float) -> None:
    """The rates one per second up to ``now``, plus an older one exactly 30 s
    before ``now`` and one long before: both are outside the window (t > now - 30 s)."""
    window = PulseWindow(600)
    now = T0 + 100_000
    window.append(now - 60_000, 300.0)
    window.append(now - 30_000, 300.0)
    start = now - (len(rates) - 1) * 1000
    for i, rate in enumerate(rates):
        window.append(start + i * 1000, float(rate))
    got = window.stats(now, 30_000)
    assert got[0] == count
    assert got[1] == pytest.approx(mean, abs=1e-12)
    assert got[2] == pytest.approx(irregularity, abs=1e-12)


def test_empty_window_is_zero() -> None:
    window = PulseWindow(30)
    window.append(T0, 120.0)
    assert window.stats(T0 + 30_000, 30_000) == (0, 0.0, 0.0)


# (name, rates, present, recovered) against the adult profile: present = mean >= 110 and
# irregularity >= 0.08; recovered = mean < 110 - 10 or irregularity < 0.08 / 2
DECISIONS: list[tuple[str, list[int], bool, bool]] = [
    ("mean 110, 0.136: flagged", cycle([100, 115, 115]), True, False),
    ("mean 125, exactly 0.08: flagged", cycle([120, 130, 130, 120]), True, False),
    ("mean 109, 0.138: not fast", cycle([99, 114, 114]), False, False),
    ("mean 124, 10 / 124 = 0.0806: flagged", cycle([119, 129, 129, 119]), True, False),
    ("mean 126, 10 / 126 = 0.079: not irregular", cycle([121, 131, 131, 121]), False, False),
    ("0.030 < 0.04: recovered", cycle([130, 134, 134]), False, True),
    ("0.052: neither", cycle([130, 137, 137]), False, False),
    ("mean 95 < 100, 0.105: recovered", cycle([90, 100, 100, 90]), False, True),
    ("regular 130: recovered (0 < 0.04)", cycle([129, 130, 131]), False, True),
]


@pytest.mark.parametrize(("name", "rates", "present", "recovered"), DECISIONS, ids=[d[0] for d in DECISIONS])
def test_af_decision_thresholds_hand_computed(name: str, rates: list[int], present: bool, recovered: bool) -> None:
    cond = load_profile().conditions["afib_rvr_suspected"]
    assert (cond.limit, cond.irregularity, cond.clear_hysteresis) == (110, 0.08, 10)
    window = PulseWindow(600)
    for i, rate in enumerate(rates):
        window.append(T0 + i * 1000, float(rate))
    obs = afib_observation(cond, window, T0 + 29_000)
    assert obs is not None and (obs.present, obs.recovered) == (present, recovered)


def test_af_decision_needs_24_of_30_seconds() -> None:
    """80 % of the 30-s window: 23 rates give no decision (None), 24 do."""
    cond = load_profile().conditions["afib_rvr_suspected"]
    window = PulseWindow(600)
    rates = cycle([100, 115, 115], 24)
    for i, rate in enumerate(rates[:23]):
        window.append(T0 + i * 1000, float(rate))
    assert afib_observation(cond, window, T0 + 23_000) is None
    window.append(T0 + 23_000, float(rates[23]))
    assert afib_observation(cond, window, T0 + 23_000) is not None
