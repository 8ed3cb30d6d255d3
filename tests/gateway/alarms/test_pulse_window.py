"""``PulseWindow`` keeps running sums for the afib window; its statistics must
be bit-for-bit those of filtering the buffer and recomputing from scratch,
whatever the samples and the queries do."""

from __future__ import annotations

import math
import random

import pytest

from chairside.alarms.conditions import PulseWindow, pulse_irregularity

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
