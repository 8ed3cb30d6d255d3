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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from chairside.alarms.profile import Condition


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
    return Observation(
        present=present,
        recovered=is_recovered and not present,
        value=shown_value,
        limit=shown_limit,
        margin=best_margin,
        field=shown_field,
        op=shown_op,
    )


def pulse_irregularity(rates: Sequence[float]) -> tuple[float, float]:
    """(mean rate, RMSSD of successive 1-Hz rates / mean rate)."""
    mean = sum(rates) / len(rates)
    diffs = [b - a for a, b in itertools.pairwise(rates)]
    rmssd = math.sqrt(sum(d * d for d in diffs) / len(diffs)) if diffs else 0.0
    return mean, (rmssd / mean if mean > 0 else 0.0)


def afib_observation(
    cond: Condition, samples: Sequence[tuple[int, float]], now_ms: int
) -> Observation | None:
    """Rapid irregular pulse over ``window_s``: mean rate past the limit *and*
    second-to-second irregularity (RMSSD/mean) at or above ``irregularity``.

    A screening flag from 1-Hz oximeter pulse rates, not a rhythm diagnosis.
    ``None`` when fewer than ``min_valid_fraction`` of the window's seconds
    carried a valid rate.
    """
    assert cond.window_s is not None and cond.irregularity is not None
    assert cond.op is not None and cond.limit is not None
    start = now_ms - int(cond.window_s * 1000)
    rates = [rate for t, rate in samples if t > start]
    if len(rates) < max(3, math.ceil(cond.window_s * cond.min_valid_fraction)):
        return None
    mean, irregular = pulse_irregularity(rates)
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
