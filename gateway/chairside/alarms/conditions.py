"""Pure per-condition decisions: is a condition present, has it recovered, has
its delay run out.  No clock is read here: every function takes ``now_ms``.

Side convention (tested): a value *exactly at* the limit violates only for the
inclusive operators.  ``spo2 < 90`` → 90 is fine, 89 alarms; ``sys >= 220`` →
220 alarms.  Clearing needs the value back inside by ``clear_hysteresis``:
for ``spo2 < 90`` with hysteresis 2 the alarm clears at 92, not at 90 or 91.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from .profile import Condition


@dataclass(frozen=True, slots=True)
class Observation:
    """What one reading says about one condition."""

    present: bool  # the condition is violated now
    recovered: bool  # far enough inside (hysteresis) to clear an active alarm
    value: float | None
    limit: float | None
    margin: float = 0.0  # signed distance beyond the limit (> 0 = violating side)
    detail: str = ""
    field: str | None = None  # which reading field the value/limit belong to
    op: str | None = None
    alt: tuple[str, float, float] | None = None
    """(field, value, limit) of a two-field limit's second field, when not present"""


def violates(op: str, value: float, limit: float) -> bool:
    if op == "<":
        return value < limit
    if op == "<=":
        return value <= limit
    if op == ">":
        return value > limit
    if op == ">=":
        return value >= limit
    raise ValueError(f"unknown operator {op!r}")


def recovered(op: str, value: float, limit: float, hysteresis: float) -> bool:
    """Back inside the limit by at least ``hysteresis``."""
    if op == "<":
        return value >= limit + hysteresis
    if op == "<=":
        return value > limit + hysteresis
    if op == ">":
        return value <= limit - hysteresis
    if op == ">=":
        return value < limit - hysteresis
    raise ValueError(f"unknown operator {op!r}")


def margin(op: str, value: float, limit: float) -> float:
    """Signed distance past the limit: positive on the violating side."""
    return limit - value if op in ("<", "<=") else value - limit


def number(fields: Mapping[str, Any], name: str) -> float | None:
    value = fields.get(name)
    if value.__class__ is int or value.__class__ is float:
        return float(value)  # the common case, decided without isinstance
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def threshold_observation(cond: Condition, fields: Mapping[str, Any]) -> Observation | None:
    """Primary (and optional alternative) limit; ``None`` when the value is missing."""
    assert cond.field is not None and cond.op is not None and cond.limit is not None
    value = number(fields, cond.field)
    alt_value = number(fields, cond.alt_field) if cond.alt_field else None
    if value is None and alt_value is None:
        return None
    present = False
    is_recovered = True
    shown_value: float | None = value
    shown_limit: float | None = cond.limit
    shown_field: str | None = cond.field
    shown_op: str | None = cond.op
    best_margin = -math.inf
    if value is not None:
        present = violates(cond.op, value, cond.limit)
        is_recovered = recovered(cond.op, value, cond.limit, cond.clear_hysteresis)
        best_margin = margin(cond.op, value, cond.limit)
    if alt_value is not None and cond.alt_op is not None and cond.alt_limit is not None:
        alt_present = violates(cond.alt_op, alt_value, cond.alt_limit)
        is_recovered = is_recovered and recovered(
            cond.alt_op, alt_value, cond.alt_limit, cond.clear_hysteresis
        )
        if alt_present and not present:
            shown_value, shown_limit = alt_value, cond.alt_limit
            shown_field, shown_op = cond.alt_field, cond.alt_op
            best_margin = margin(cond.alt_op, alt_value, cond.alt_limit)
        present = present or alt_present
    if shown_value is None:
        shown_value, shown_limit = alt_value, cond.alt_limit
        shown_field, shown_op = cond.alt_field, cond.alt_op
    alt: tuple[str, float, float] | None = None
    if (
        not present
        and value is not None
        and alt_value is not None
        and cond.alt_field is not None
        and cond.alt_limit is not None
    ):
        alt = (cond.alt_field, alt_value, cond.alt_limit)
    return Observation(
        present=present,
        recovered=is_recovered and not present,
        value=shown_value,
        limit=shown_limit,
        margin=best_margin,
        field=shown_field,
        op=shown_op,
        alt=alt,
    )


def successive_spread(rates: Sequence[float]) -> float:
    """How irregular a run of 1-Hz rates is, robust to level shifts and trends:
    the median absolute deviation of the successive differences from their
    median (the median difference is the trend per second; a ramp's
    differences are all equal, so its spread is 0).  A single step (76 → 150)
    is one large difference out of many, which the medians ignore; only
    changes that make up at least half of the differences count, which is
    what an irregular rhythm does and a step, a ramp or a steady rate do not.
    0.0 for fewer than two rates."""
    diffs = sorted(b - a for a, b in itertools.pairwise(rates))
    if not diffs:
        return 0.0
    trend = _median_sorted(diffs)
    return _median_sorted(sorted(abs(d - trend) for d in diffs))


def _median_sorted(values: Sequence[float]) -> float:
    n = len(values)
    mid = n // 2
    return values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2


def pulse_irregularity(rates: Sequence[float]) -> tuple[float, float]:
    """(mean rate, :func:`successive_spread` / mean rate)."""
    mean = sum(rates) / len(rates)
    spread = successive_spread(rates)
    return mean, (spread / mean if mean > 0 else 0.0)


PulseStats = tuple[int, float, float]
"""(samples in the window, mean rate, irregularity) -- see :func:`pulse_irregularity`."""

EXACT_RATE: Final = 2.0**20
"""Running sums stay exact (integers in a float) for integral rates up to this size."""


def _exact(rate: float) -> bool:
    return rate.is_integer() and -EXACT_RATE <= rate <= EXACT_RATE


class PulseWindow:
    """A chair's recent (time, rate) pulse samples and the rolling statistics
    of those inside a time window, updated per sample instead of rebuilt.

    Equivalent, bit for bit, to filtering the buffer with ``t > now - window``
    and calling :func:`pulse_irregularity` on the rates, which is what
    :meth:`reference_stats` does.  The running sum of the rates (the mean) is
    kept per sample; the irregularity is a median and is computed from the
    window's rates when asked (:meth:`stats`, not :meth:`level`).  The
    running sum is only used while it is exact: every rate in the window
    integral and not huge (pulse rates are integers), the buffer in time order
    (so the window is a suffix of it), the window not moving backwards (clock
    stepped back, window widened).  Otherwise the window is recomputed from
    the buffer, like before.
    """

    def __init__(self, maxlen: int) -> None:
        self.samples: deque[tuple[int, float]] = deque(maxlen=maxlen)
        self._window: deque[tuple[int, float]] = deque()  # the newest samples with t > _start
        self._start: int | None = None  # None: _window and the sums must be rebuilt
        self._window_ms = 0
        self._sum = 0.0
        self._inexact = 0  # rates in _window for which the sums are not exact
        self._count = 0  # samples ever appended
        self._last_descent = 0  # number of the newest sample older than the one before it

    def append(self, t: int, rate: float) -> None:
        samples, window = self.samples, self._window
        if samples and t < samples[-1][0]:
            self._last_descent = self._count
            self._start = None
        if self._start is not None and len(samples) == samples.maxlen and len(window) == len(samples):
            self._drop_oldest()  # the buffer is about to drop the window's oldest sample
        samples.append((t, rate))
        self._count += 1
        if self._start is None:
            return
        if t <= self._start:
            self._start = None  # cannot happen in time order; rebuild to be safe
            return
        window.append((t, rate))
        self._sum += rate
        if not _exact(rate):
            self._inexact += 1

    def level(self, now_ms: int, window_ms: int) -> tuple[int, float]:
        """(count, mean rate) of the samples with ``t > now_ms - window_ms``:
        the cheap part of :meth:`stats`."""
        start = now_ms - window_ms
        if self._last_descent > self._count - len(self.samples):
            self._start = None  # out-of-order samples in the buffer: no suffix
            count, mean, _ = self.reference_stats(now_ms, window_ms)
            return count, mean
        if self._start is None or start < self._start or window_ms != self._window_ms:
            self._rebuild(start, window_ms)
        else:
            window = self._window
            while window and window[0][0] <= start:
                self._drop_oldest()
            self._start = start
        count = len(self._window)
        if count == 0:
            return 0, 0.0
        if self._inexact:
            return count, sum(rate for _, rate in self._window) / count
        return count, self._sum / count

    def stats(self, now_ms: int, window_ms: int) -> PulseStats:
        """The statistics of the samples with ``t > now_ms - window_ms``."""
        count, mean = self.level(now_ms, window_ms)
        if count == 0:
            return 0, 0.0, 0.0
        if self._start is None:  # out of order: level() used the plain way
            return self.reference_stats(now_ms, window_ms)
        spread = successive_spread([rate for _, rate in self._window])
        return count, mean, (spread / mean if mean > 0 else 0.0)

    def reference_stats(self, now_ms: int, window_ms: int) -> PulseStats:
        """:meth:`stats` the plain way: filter the buffer, compute from scratch."""
        start = now_ms - window_ms
        rates = [rate for t, rate in self.samples if t > start]
        if not rates:
            return 0, 0.0, 0.0
        return len(rates), *pulse_irregularity(rates)

    def _rebuild(self, start: int, window_ms: int) -> None:
        self._window = deque(sample for sample in self.samples if sample[0] > start)
        self._resum()
        self._start, self._window_ms = start, window_ms

    def _resum(self) -> None:
        rates = [rate for _, rate in self._window]
        self._sum = float(sum(rates))
        self._inexact = sum(1 for rate in rates if not _exact(rate))

    def _drop_oldest(self) -> None:
        window = self._window
        _, rate = window.popleft()
        self._sum -= rate
        if not _exact(rate):
            self._inexact -= 1
            if not self._inexact:
                self._resum()  # the sums may carry rounding (or nan) from the inexact rates


def afib_window_ms(cond: Condition) -> int:
    assert cond.window_s is not None
    return int(cond.window_s * 1000)


def afib_min_samples(cond: Condition) -> int:
    """Fewer valid rates than this in the window: no afib decision (invalid)."""
    assert cond.window_s is not None
    return max(3, math.ceil(cond.window_s * cond.min_valid_fraction))


def afib_observation(cond: Condition, pulses: PulseWindow, now_ms: int) -> Observation | None:
    """Rapid irregular pulse over ``window_s``: mean rate past the limit *and*
    second-to-second irregularity (:func:`successive_spread` / mean) at or
    above ``irregularity``.

    A screening flag from 1-Hz oximeter pulse rates, not a rhythm diagnosis.
    ``None`` when fewer than ``min_valid_fraction`` of the window's seconds
    carried a valid rate.
    """
    assert cond.window_s is not None and cond.irregularity is not None
    assert cond.op is not None and cond.limit is not None
    count, mean, irregular = pulses.stats(now_ms, afib_window_ms(cond))
    if count < afib_min_samples(cond):
        return None
    fast = violates(cond.op, mean, cond.limit)
    present = fast and irregular >= cond.irregularity
    is_recovered = (
        recovered(cond.op, mean, cond.limit, cond.clear_hysteresis)
        or irregular < cond.irregularity / 2
    )
    return Observation(
        present=present,
        recovered=is_recovered and not present,
        value=round(mean, 1),
        limit=cond.limit,
        margin=margin(cond.op, mean, cond.limit),
        detail=f"mean {mean:.0f} bpm, irregularity {irregular:.2f}",
    )


def flag_observation(present: bool, value: float | None = None, detail: str = "") -> Observation:
    """Technical conditions: present or not, no hysteresis."""
    return Observation(
        present=present, recovered=not present, value=value, limit=None, detail=detail
    )


@dataclass(frozen=True, slots=True)
class DelayState:
    """Condition-delay bookkeeping for one alarm that is not (yet) active."""

    pending_since_ms: int | None = None
    last_ms: int | None = None
    was_present: bool = False
    onsets: tuple[int, ...] = ()
    integral: float = 0.0  # SatSeconds: points x seconds


@dataclass(frozen=True, slots=True)
class DelayDecision:
    state: DelayState
    fire: bool
    pending: bool
    reason: str


MAX_STEP_S = 2.0  # a gap in the data never counts for more than this in the integral


def step_delay(
    state: DelayState,
    obs: Observation,
    now_ms: int,
    *,
    mode: str,
    delay_s: float,
    satseconds_limit: float | None,
    flap_violations: int,
    flap_window_s: float,
) -> DelayDecision:
    """Advance the condition delay with one observation.

    * ``delay`` mode: fire when present continuously for ``delay_s``;
      a non-violating sample restarts the delay.
    * ``satseconds`` mode: integrate points-beyond-limit x seconds; fire when
      the integral reaches ``satseconds_limit``; it drains while inside.
    * either mode: ``flap_violations`` separate onsets within ``flap_window_s``
      fire at once (a value flapping around a limit alarms, once).
    """
    window_ms = int(flap_window_s * 1000)
    onsets = tuple(t for t in state.onsets if now_ms - t <= window_ms)
    last = state.last_ms
    dt = 1.0 if last is None else min(max(now_ms - last, 0) / 1000.0, MAX_STEP_S)
    if obs.present:
        if not state.was_present:
            onsets = (*onsets, now_ms)
        since = state.pending_since_ms if state.pending_since_ms is not None else now_ms
        integral = state.integral
        if mode == "satseconds" and satseconds_limit is not None:
            integral += max(obs.margin, 0.0) * dt
            fire = integral >= satseconds_limit
            reason = f"satseconds {integral:g} >= {satseconds_limit:g}" if fire else "integrating"
        else:
            held_ms = now_ms - since
            fire = held_ms >= delay_s * 1000
            reason = f"present for {held_ms} ms >= delay" if fire else "delay running"
        if not fire and delay_s > 0 and len(onsets) >= flap_violations:
            fire = True
            reason = f"{len(onsets)} violations within {flap_window_s:g} s"
        new = DelayState(since, now_ms, True, onsets, integral)
        return DelayDecision(new, fire, not fire, reason)
    if mode == "satseconds" and state.integral > 0:
        drained = max(state.integral - max(-obs.margin, 1.0) * dt, 0.0)
        if drained > 0:
            new = DelayState(state.pending_since_ms, now_ms, False, onsets, drained)
            return DelayDecision(new, False, True, "satseconds draining")
    return DelayDecision(DelayState(None, now_ms, False, onsets, 0.0), False, False, "inside limit")


def delay_due(state: DelayState, now_ms: int, delay_s: float, mode: str) -> bool:
    """For clock ticks: a plain delay has run out while the condition stayed present."""
    return (
        mode == "delay"
        and state.was_present
        and state.pending_since_ms is not None
        and now_ms - state.pending_since_ms >= delay_s * 1000
    )


def reset_delay(state: DelayState) -> DelayState:
    """Forget the running delay (data became invalid); keep flap onsets."""
    return replace(state, pending_since_ms=None, was_present=False, integral=0.0)
