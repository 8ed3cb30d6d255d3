"""Alarm state across a restart: :meth:`AlarmSnapshots.snapshot` writes every
chair's alarm state as JSON-able data, :meth:`AlarmSnapshots.restore` takes it
over (docs/alarms.md, "Restarts").  Mixed into
:class:`~chairside.alarms.engine.AlarmEngine`, whose state and lock it uses.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from chairside.model import PRIORITY_RANK, AlarmEvent

from .conditions import DelayState
from .slots import ANNOUNCED, DRILL_PREFIX, AlarmState, Chair, Slot
from .texts import MAX_TEXT

SNAPSHOT_VERSION: Final = 1
RESUME_MAX_GAP_MS: Final = 10_000
"""A pending delay (or SatSeconds integral) is resumed after a restart only if
its last observation is at most this old: a delay needs a violation observed
without a gap, and nobody observed anything while the gateway was down."""

log = logging.getLogger("chairside.alarms.engine")


class AlarmSnapshots:
    """Saving and restoring the alarm state; mixed into the engine, whose state it uses."""

    restore_skipped: int
    _lock: threading.RLock
    _chairs: dict[tuple[str, str], Chair]
    _changed: set[tuple[str, str]]

    if TYPE_CHECKING:  # provided by the AlarmEngine this is mixed into
        def _chair(self, site: str, chair: str, now_ms: int, *, seen: bool = True) -> Chair: ...

        def _thread_id(self, chair: Chair, alarm: str, crossed_ms: int) -> str: ...

    def snapshot(self) -> dict[str, Any]:
        """Every chair's alarm state, JSON-able, for :meth:`restore` after a restart.

        Per chair: the staleness clocks, the box state, the cuff, standby; per
        condition that is not idle: its state (active, acked, latched,
        pending), the raise's event id and counters, since, who acknowledged
        and when (the re-notification timer), the remembered value, the
        recovery hold, the pending delay, flap onsets and SatSeconds integral.
        Per-chair limit overrides are not in it: the gateway saves those itself."""
        with self._lock:
            chairs: list[dict[str, Any]] = []
            for (site, chair), state in self._chairs.items():
                conditions = state.profile.effective.conditions
                alarms: dict[str, Any] = {}
                for name, slot in state.slots.items():
                    if slot.state is AlarmState.INACTIVE and slot.running is None:
                        continue  # idle: only the time of its last observation
                    d = slot.delay
                    if slot.state is AlarmState.INACTIVE and not d.onsets and not d.integral:
                        continue
                    cond = conditions.get(name)
                    alarms[name] = {
                        "state": slot.state.value,
                        "priority": cond.priority if cond is not None else None,
                        "kind": cond.kind if cond is not None else None,
                        "id": slot.thread,
                        "acks": slot.acks,
                        "renotifies": slot.renotifies,
                        "since_ms": slot.since_ms,
                        "acked_ms": slot.acked_ms,
                        "acked_by": slot.acked_by,
                        "value": _finite(slot.value),
                        "limit": _finite(slot.limit),
                        "field": slot.field,
                        "op": slot.op,
                        "detail": slot.detail,
                        "present": slot.present,
                        "alt": (
                            [slot.alt[0], _finite(slot.alt[1]), _finite(slot.alt[2])] if slot.alt is not None else None
                        ),
                        "reason": slot.reason,
                        "cross_ms": slot.cross_ms,
                        "clear_since_ms": slot.clear_since_ms,
                        "inhibited_by": slot.inhibited_by,
                        "pending_since_ms": d.pending_since_ms,
                        "last_ms": d.last_ms,
                        "was_present": d.was_present,
                        "onsets": list(d.onsets),
                        "integral": _finite(d.integral) or 0.0,
                    }
                chairs.append(
                    {
                        "site": site,
                        "chair": chair,
                        "first_seen_ms": state.first_seen_ms,
                        "last_vitals_ms": state.last_vitals_ms,
                        "online_ms": state.online_ms,
                        "box_state": state.box_state,
                        "cuff_since_ms": state.cuff_since_ms,
                        "standby_by": state.standby_by,
                        "alarms": alarms,
                    }
                )
            return {"v": SNAPSHOT_VERSION, "chairs": chairs}

    def restore(self, snapshot: Mapping[str, Any], now_ms: int) -> list[AlarmEvent]:
        """Take over the state of :meth:`snapshot` (saved before a restart).

        Announced alarms come back as they were (no second raise; a clear,
        a latch, an acknowledgement and its re-notification timer continue);
        a pending delay resumes only if it was observed at most
        ``RESUME_MAX_GAP_MS`` ago; the staleness clock of each chair restarts
        at ``now_ms`` (nobody could see the chair while the gateway was down),
        but an announced ``data_stale`` stays until vitals arrive.  Returns a
        ``cleared`` event for each announced alarm whose condition is no longer
        in the profile (so its page thread ends).  Entries that cannot be used
        are skipped, logged with the reason and counted in
        ``restore_skipped``; nothing raises."""
        events: list[AlarmEvent] = []
        with self._lock:
            if not isinstance(snapshot, Mapping) or snapshot.get("v") != SNAPSHOT_VERSION:
                version = snapshot.get("v") if isinstance(snapshot, Mapping) else type(snapshot).__name__
                self._skip(f"snapshot: expected an object with v={SNAPSHOT_VERSION}, got {version!r}")
                return events
            chairs = snapshot.get("chairs")
            if not isinstance(chairs, list):
                self._skip("snapshot: chairs is not a list")
                return events
            for i, entry in enumerate(chairs):
                try:
                    events.extend(self._restore_chair(entry, now_ms))
                except (TypeError, ValueError, KeyError) as exc:
                    self._skip(f"snapshot chairs[{i}]: {exc}")
        return events

    def _skip(self, reason: str) -> None:
        self.restore_skipped += 1
        log.warning("alarm state restore: skipped %s", reason)

    def _restore_chair(self, entry: Any, now_ms: int) -> list[AlarmEvent]:
        if not isinstance(entry, Mapping):
            raise TypeError("expected an object")
        site, chair = _text_field(entry, "site"), _text_field(entry, "chair")
        alarms = entry.get("alarms", {})
        if not isinstance(alarms, Mapping):
            raise TypeError(f"{site}/{chair}: alarms is not an object")
        fields = {
            name: _opt_int(entry, name)
            for name in ("first_seen_ms", "last_vitals_ms", "online_ms", "cuff_since_ms")
        }
        box_state = _opt_text(entry, "box_state")
        standby_by = _opt_text(entry, "standby_by")
        state = self._chair(site, chair, now_ms, seen=False)
        state.first_seen_ms = fields["first_seen_ms"]
        state.last_vitals_ms = fields["last_vitals_ms"]
        state.online_ms = fields["online_ms"]
        state.cuff_since_ms = fields["cuff_since_ms"]
        state.box_state = box_state if box_state in ("online", "offline") else None
        state.standby_by = standby_by
        state.restored_ms = now_ms if state.stale_base_ms() is not None else None
        events: list[AlarmEvent] = []
        for name, raw in alarms.items():
            try:
                events.extend(self._restore_slot(state, str(name), raw, now_ms))
            except (TypeError, ValueError, KeyError) as exc:
                self._skip(f"{site}/{chair}/{name}: {exc}")
        self._changed.add((site, chair))
        return events

    def _restore_slot(self, chair: Chair, name: str, raw: Any, now_ms: int) -> list[AlarmEvent]:
        if not isinstance(raw, Mapping):
            raise TypeError("expected an object")
        state = AlarmState(_text_field(raw, "state"))
        cond = chair.profile.effective.conditions.get(name)
        if cond is None:
            if state not in ANNOUNCED:
                raise ValueError("not a condition of the profile")
            return [self._orphan_clear(chair, name, raw, now_ms)]
        slot = Slot()
        slot.thread = _opt_text(raw, "id")
        slot.acks = _opt_int(raw, "acks") or 0
        slot.renotifies = _opt_int(raw, "renotifies") or 0
        slot.since_ms = _opt_int(raw, "since_ms")
        slot.acked_ms = _opt_int(raw, "acked_ms")
        slot.acked_by = _opt_text(raw, "acked_by")
        slot.value = _opt_float(raw, "value")
        slot.limit = _opt_float(raw, "limit")
        slot.field = _opt_text(raw, "field")
        slot.op = _opt_text(raw, "op")
        slot.detail = _opt_text(raw, "detail") or ""
        slot.present = raw.get("present") is True
        slot.reason = _opt_text(raw, "reason") or ""
        slot.cross_ms = _opt_int(raw, "cross_ms")
        slot.clear_since_ms = _opt_int(raw, "clear_since_ms")
        inhibitor = _opt_text(raw, "inhibited_by")
        slot.inhibited_by = inhibitor if inhibitor in chair.profile.effective.conditions else None
        alt = raw.get("alt")
        if isinstance(alt, list) and len(alt) == 3 and isinstance(alt[0], str):
            alt_value, alt_limit = _opt_float({"v": alt[1]}, "v"), _opt_float({"v": alt[2]}, "v")
            if alt_value is not None and alt_limit is not None:
                slot.alt = (alt[0], alt_value, alt_limit)
        onsets_raw = raw.get("onsets", [])
        if not isinstance(onsets_raw, list):
            raise TypeError("onsets is not a list")
        window_ms = chair.profile.effective.flap_window_s * 1000
        onsets = tuple(
            t for t in (_opt_int({"t": x}, "t") for x in onsets_raw) if t is not None and 0 <= now_ms - t <= window_ms
        )
        last_ms = _opt_int(raw, "last_ms")
        if state in ANNOUNCED:
            if slot.since_ms is None:
                raise ValueError(f"{state.value} without since_ms")
            if state is AlarmState.ACKED and slot.acked_ms is None:
                slot.acked_ms = now_ms  # the pause before re-notification starts again
            slot.state = state
            slot.delay = DelayState(last_ms=last_ms)
        else:
            fresh = last_ms is not None and 0 <= now_ms - last_ms <= RESUME_MAX_GAP_MS
            if state is AlarmState.PENDING and fresh:
                slot.state = state
                slot.delay = DelayState(
                    _opt_int(raw, "pending_since_ms"),
                    last_ms,
                    raw.get("was_present") is True,
                    onsets,
                    max(_opt_float(raw, "integral") or 0.0, 0.0),
                )
            else:  # nobody watched during the gap: the delay starts again, flap onsets stay
                slot.state = AlarmState.INACTIVE
                slot.delay = DelayState(None, last_ms, False, onsets, 0.0)
                slot.reason = "restored: delay restarts" if state is AlarmState.PENDING else slot.reason
        chair.slots[name] = slot
        return []

    def _orphan_clear(self, chair: Chair, name: str, raw: Mapping[str, Any], now_ms: int) -> AlarmEvent:
        """The clear of an announced alarm whose condition left the profile."""
        priority = raw.get("priority")
        kind = raw.get("kind")
        if priority not in PRIORITY_RANK or kind not in ("physiological", "technical"):
            raise ValueError("announced alarm of an unknown condition without priority and kind")
        thread = _opt_text(raw, "id") or self._thread_id(chair, name, _opt_int(raw, "since_ms") or now_ms)
        log.warning("alarm state restore: %s/%s/%s is no longer in the profile: cleared",
                    chair.site, chair.chair, name)
        return AlarmEvent(
            id=f"{thread}-c",
            site=chair.site,
            chair=chair.chair,
            alarm=name,
            priority=priority,
            kind=kind,
            event="cleared",
            t=now_ms,
            text=f"{name}: alarm ended, condition no longer in the alarm profile (chair {chair.chair})"[:MAX_TEXT],
            drill=chair.chair.startswith(DRILL_PREFIX),
            extra={"active": False, "level": PRIORITY_RANK[priority], "latching": False,
                   "reason": "condition removed from the profile"},
        )


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _text_field(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}: expected a non-empty string, got {value!r}"[:120])
    return value


def _opt_text(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string or null, got {type(value).__name__}")
    return value


def _opt_int(doc: Mapping[str, Any], key: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: expected an integer or null, got {type(value).__name__}")
    return value


def _opt_float(doc: Mapping[str, Any], key: str) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key}: expected a finite number or null, got {value!r}"[:120])
    return float(value)

