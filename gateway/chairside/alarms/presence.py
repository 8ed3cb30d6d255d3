"""Cheap presence checks for idle alarm slots: the engine's per-reading fast path.

Most readings find most conditions normal and their state machines idle
(INACTIVE, no delay running, no flap onsets, no SatSeconds integral).  For
such a slot the engine only needs one bit from a reading: is the condition
present?  Building the full :class:`~chairside.alarms.conditions.Observation`
(value, limit, margin, detail text) is wasted work unless it is.

:func:`presence` compiles, once per (condition, reading kind, profile), a
function that answers exactly what ``AlarmEngine._observe`` would decide:

* ``None``  -- ``_observe`` says skip, hold (cuff interlock) or invalid data;
  all three leave an idle slot exactly as it is;
* ``False`` -- an observation that is not present: the slot stays idle and
  only records the time (what ``step_delay`` calls "inside limit");
* ``True``  -- present (or a configuration the fast path does not handle):
  the engine takes the full path, ``_observe`` then ``_apply``.

Only correct for idle slots; ``tests/gateway/test_alarm_fastpath_equivalence``
compares the engine with the pre-fast-path engine on long random streams.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from .conditions import PulseWindow, afib_min_samples, afib_window_ms, number
from .profile import Condition, Profile

Presence = Callable[["ChairView", Mapping[str, Any], int, bool], bool | None]
"""``(chair, reading fields, now_ms, cuff_on) -> present?`` (see the module docstring)."""

_OPS: Final[Mapping[str, Callable[[float, float], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
""":func:`~chairside.alarms.conditions.violates`, one function per operator."""


class ChairView(Protocol):
    """What the presence checks read of the engine's per-chair state."""

    @property
    def pulses(self) -> PulseWindow: ...

    def stale_base_ms(self) -> int | None: ...


def presence(cond: Condition, kind: str, profile: Profile) -> Presence:
    """The presence check of ``cond`` for readings of ``kind`` under ``profile``."""
    check = cond.check
    if check == "offline":
        if kind == "status":
            return _offline_status
        return _absent if kind in ("vitals", "nibp") else _nothing
    if check == "stale":
        return _stale(profile.stale_after_s * 1000) if kind == "vitals" else _nothing
    if check == "unsynced":
        return _unsynced
    if check == "module":
        return _module(cond.field or "") if kind == "status" else _nothing
    if check == "nibp_error":
        return _nibp_error if kind == "nibp" else _nothing
    if kind != cond.measurement:
        return _nothing
    if check == "probe":
        return _probe(cond.cuff_hold)
    if check == "afib":
        return _afib(cond, kind)
    return _threshold(cond, kind)


# ------------------------------------------------------------- technical
def _nothing(chair: ChairView, fields: Mapping[str, Any], now_ms: int, cuff_on: bool) -> bool | None:
    return None


def _absent(chair: ChairView, fields: Mapping[str, Any], now_ms: int, cuff_on: bool) -> bool | None:
    return False


def _defer(chair: ChairView, fields: Mapping[str, Any], now_ms: int, cuff_on: bool) -> bool | None:
    return True  # let the full path decide (and raise, as before, on a broken condition)


def _offline_status(chair: ChairView, fields: Mapping[str, Any], now_ms: int, cuff_on: bool) -> bool | None:
    state = fields.get("state")
    return state == "offline" if state in ("online", "offline") else None


def _unsynced(chair: ChairView, fields: Mapping[str, Any], now_ms: int, cuff_on: bool) -> bool | None:
    sync = fields.get("sync")
    if sync in (0, 1) and not isinstance(sync, bool):
        return bool(sync == 0)
    return None


def _nibp_error(chair: ChairView, fields: Mapping[str, Any], now_ms: int, cuff_on: bool) -> bool | None:
    number(fields, "err")  # as _observe does (it can raise on an absurd value)
    return fields.get("st") == "error"


def _stale(limit_ms: float) -> Presence:
    def stale(chair: ChairView, fields: Mapping[str, Any], now_ms: int, cuff_on: bool) -> bool | None:
        base = chair.stale_base_ms()
        return None if base is None else now_ms - base > limit_ms

    return stale


def _module(name: str) -> Presence:
    def module(chair: ChairView, fields: Mapping[str, Any], now_ms: int, cuff_on: bool) -> bool | None:
        value = fields.get(name)
        if value in ("silent", "error"):
            return True
        return False if value == "ok" else None

    return module


def _probe(hold: bool) -> Presence:
    def probe(chair: ChairView, fields: Mapping[str, Any], now_ms: int, cuff_on: bool) -> bool | None:
        if hold and cuff_on:
            return None
        return not (fields.get("st") == "ok" and number(fields, "spo2") is not None)

    return probe


# --------------------------------------------------------- physiological
def _afib(cond: Condition, kind: str) -> Presence:
    fast = _OPS.get(cond.op or "")
    limit, irregularity = cond.limit, cond.irregularity
    if cond.window_s is None or irregularity is None or fast is None or limit is None:
        return _defer
    hold, needs_ok = cond.cuff_hold, kind in ("vitals", "nibp")
    window_ms, min_samples = afib_window_ms(cond), afib_min_samples(cond)

    def afib(chair: ChairView, fields: Mapping[str, Any], now_ms: int, cuff_on: bool) -> bool | None:
        if (hold and cuff_on) or (needs_ok and fields.get("st") != "ok"):
            return None
        pulses = chair.pulses
        count, mean = pulses.level(now_ms, window_ms)
        if count < min_samples:
            return None
        if not fast(mean, limit):
            return False  # the common case: no median needed
        return pulses.stats(now_ms, window_ms)[2] >= irregularity

    return afib


def _threshold(cond: Condition, kind: str) -> Presence:
    name, violates, limit = cond.field, _OPS.get(cond.op or ""), cond.limit
    alt_name, alt_violates, alt_limit = cond.alt_field, _OPS.get(cond.alt_op or ""), cond.alt_limit
    if name is None or violates is None or limit is None or (cond.alt_op is not None and alt_violates is None):
        return _defer
    hold, needs_ok = cond.cuff_hold, kind in ("vitals", "nibp")

    def threshold(chair: ChairView, fields: Mapping[str, Any], now_ms: int, cuff_on: bool) -> bool | None:
        if (hold and cuff_on) or (needs_ok and fields.get("st") != "ok"):
            return None
        value = number(fields, name)
        alt_value = number(fields, alt_name) if alt_name else None
        if value is None and alt_value is None:
            return None
        if value is not None and violates(value, limit):
            return True
        return alt_value is not None and alt_violates is not None and alt_limit is not None and alt_violates(
            alt_value, alt_limit
        )

    return threshold
