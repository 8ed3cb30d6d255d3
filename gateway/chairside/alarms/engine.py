"""The alarm engine: readings and clock ticks in, alarm events out.

Implements :class:`chairside.model.AlarmStage`.  One explicit state machine per
(site, chair, condition)::

    INACTIVE ──present──▶ PENDING ──delay/SatSeconds/flap──▶ ACTIVE ──ack──▶ ACKED
        ▲                    │ inside                         │  │ recovered    │ recovered
        └────────────────────┘                                │  ▼ (latching)   ▼
        ◀──────────── cleared ◀───────── (not latching) ──────┘ LATCHED ─ack─▶ cleared
                                    ACKED ──renotify_after_ack_s, still active──▶ ACTIVE

(delay 0 goes INACTIVE → ACTIVE directly).  "cleared" is an event that returns
the slot to INACTIVE.  The engine never reads a clock: ``now_ms`` (gateway wall
time, ms since the epoch) is passed to every call and stamped on the events.

Escalation: a condition that ``inhibits`` others (``spo2_critical`` inhibits
``spo2_low``, ``bp_intervention`` inhibits ``sys_high``/``dia_high``,
``afib_rvr_suspected`` inhibits ``pulse_high``, ``box_offline`` inhibits
``data_stale``) is announced as ``escalated`` when one of those is already
announced with a lower priority.  While the inhibitor is present (ACTIVE or
ACKED) the inhibited conditions do not raise and do not re-notify, and
acknowledging the inhibitor also acknowledges them: one thread, one ack.
Every event says so: ``inhibits`` on the inhibitor's events, ``inhibited_by``
on the events of an inhibited alarm while its inhibitor is announced (and on
its first event after the inhibitor raised).

Recovery is confirmed, not assumed: an announced alarm counts as recovered
only once every reading for ``clear_hold_s`` was recovered (an off-delay), so a
value flapping across the hysteresis band stays one alarm.

Event ids are deterministic: a raise's id is a digest of (site, chair, alarm,
measured time of the reading that crossed the limit), and the thread's later
events append a suffix (``-a1`` acknowledgements, ``-r1`` re-notifications,
``-c`` the clear), so a reading redelivered after a crash raises the same id.
:meth:`AlarmEngine.snapshot` / :meth:`AlarmEngine.restore` carry the state
across a restart (docs/alarms.md, "Restarts").
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal, NamedTuple

from chairside.model import PRIORITY_RANK, AlarmEvent, EventType, Reading

from .conditions import (
    DelayState,
    Observation,
    PulseWindow,
    afib_observation,
    delay_due,
    flag_observation,
    number,
    reset_delay,
    step_delay,
    threshold_observation,
)
from .presence import Presence, presence
from .profile import (
    AuditRecord,
    ChairProfile,
    Condition,
    Profile,
    ProfileError,
    load_profile,
)

UNITS: Final[dict[str, str]] = {
    "spo2": "%",
    "pr": "bpm",
    "sys": "mmHg",
    "dia": "mmHg",
    "map": "mmHg",
}
MAX_TEXT: Final = 200
DRILL_PREFIX: Final = "drill-"
"""chair ids of drill boxes (``chairside drill``): their events carry ``drill=True``"""
AFIB_BUFFER: Final = 600  # at most this many 1-Hz pulse samples per chair
DEFAULT_ID_PREFIX: Final = "al"
SNAPSHOT_VERSION: Final = 1
RESUME_MAX_GAP_MS: Final = 10_000
"""A pending delay (or SatSeconds integral) is resumed after a restart only if
its last observation is at most this old: a delay needs a violation observed
without a gap, and nobody observed anything while the gateway was down."""

log = logging.getLogger(__name__)


class AlarmState(StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    ACTIVE = "active"
    LATCHED = "latched"
    ACKED = "acked"


ANNOUNCED: Final = frozenset({AlarmState.ACTIVE, AlarmState.LATCHED, AlarmState.ACKED})
PRESENT: Final = frozenset({AlarmState.ACTIVE, AlarmState.ACKED})

Action = Literal["skip", "hold", "invalid", "observe"]


@dataclass(slots=True)
class _Slot:
    state: AlarmState = AlarmState.INACTIVE
    running: DelayState | None = None
    """The condition delay's bookkeeping (:attr:`delay`) when it holds anything
    (pending since, flap onsets, an integral); ``None`` when it holds only the
    time of the last observation, ``rest_ms`` -- the common case, kept as a
    plain int so that a normal reading allocates nothing."""
    rest_ms: int | None = None
    since_ms: int | None = None
    acked_ms: int | None = None
    acked_by: str | None = None
    value: float | None = None
    limit: float | None = None
    detail: str = ""
    field: str | None = None
    op: str | None = None
    reason: str = ""
    present: bool = False  # whether the remembered observation was past the limit
    cross_ms: int | None = None
    """measured time of the reading that began the current violation (event ids)"""
    thread: str | None = None  # the id of the raise that announced the alarm
    acks: int = 0  # acknowledgements of this alarm so far (event ids)
    renotifies: int = 0  # re-notifications of this alarm so far (event ids)
    clear_since_ms: int | None = None  # recovered readings since (clear_hold_s)
    inhibited_by: str | None = None  # an inhibitor raised while this was announced
    alt: tuple[str, float, float] | None = None  # the second field of a recovered two-field limit

    @property
    def delay(self) -> DelayState:
        running = self.running
        return running if running is not None else DelayState(last_ms=self.rest_ms)

    @delay.setter
    def delay(self, value: DelayState) -> None:
        if (
            value.pending_since_ms is None
            and not value.was_present
            and not value.onsets
            and value.integral == 0.0
        ):
            self.running, self.rest_ms = None, value.last_ms
        else:
            self.running = value

    def rest(self, now_ms: int) -> None:
        """Inside the limit with nothing pending: what ``step_delay`` decides
        ("inside limit") in that case, without building the decision."""
        self.state = AlarmState.INACTIVE
        self.running = None
        self.rest_ms = now_ms
        self.reason = "inside limit"


class _Rule(NamedTuple):
    cond: Condition
    present: Presence


class _Rules:
    """A profile's conditions compiled per reading kind, once: in profile order,
    without those ``_observe`` always skips for that kind, each with its
    presence check (:mod:`.presence`)."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._live: dict[str, tuple[_Rule, ...]] = {}
        self._standby: dict[str, tuple[_Rule, ...]] = {}

    def get(self, kind: str, standby: bool) -> tuple[_Rule, ...]:
        cache = self._standby if standby else self._live
        found = cache.get(kind)
        if found is None:
            found = cache[kind] = tuple(
                _Rule(c, presence(c, kind, self.profile))
                for c in self.profile.conditions.values()
                if _may_observe(c.check, c.measurement, kind)
                and not (standby and c.name in STANDBY_QUIET)
            )
        return found


@dataclass(slots=True)
class _Chair:
    site: str
    chair: str
    profile: ChairProfile
    first_seen_ms: int | None  # None until the first live reading
    slots: dict[str, _Slot] = field(default_factory=dict)
    last_vitals_ms: int | None = None
    online_ms: int | None = None
    cuff_since_ms: int | None = None
    pulses: PulseWindow = field(default_factory=lambda: PulseWindow(AFIB_BUFFER))
    standby_by: str | None = None  # set between patients: technical alarms are quiet
    rules: _Rules | None = None  # compiled for profile.effective (see AlarmEngine._rules_for)
    box_state: str | None = None  # last "state" of a status message: online / offline
    restored_ms: int | None = None  # when a snapshot was restored: the stale clock restarts

    def slot(self, name: str) -> _Slot:
        found = self.slots.get(name)
        if found is None:
            found = self.slots[name] = _Slot()
        return found

    def stale_base_ms(self) -> int | None:
        candidates = (self.first_seen_ms, self.last_vitals_ms, self.online_ms, self.restored_ms)
        times = [t for t in candidates if t is not None]
        return max(times) if times else None


STANDBY_QUIET: frozenset[str] = frozenset({"probe_off", "box_offline", "data_stale", "nibp_failed"})
"""Technical conditions held while a chair is in standby between patients."""


class AlarmEngine:
    """Per-chair alarm state machines driven by readings and clock ticks (thread-safe)."""

    def __init__(self, profile: Profile | None = None, *, id_prefix: str | None = None) -> None:
        self.profile = profile if profile is not None else load_profile()
        self._prefix = id_prefix if id_prefix is not None else DEFAULT_ID_PREFIX
        self._chairs: dict[tuple[str, str], _Chair] = {}
        self._changed: set[tuple[str, str]] = set()
        self.restore_skipped = 0
        """snapshot entries :meth:`restore` could not use (each logged with its reason)"""
        self._lock = threading.RLock()
        self.audit_log: list[AuditRecord] = []
        self._shared_rules: _Rules | None = None  # for chairs without overrides

    # ------------------------------------------------------------------ API
    def on_reading(self, reading: Reading, now_ms: int) -> list[AlarmEvent]:
        """Evaluate one validated reading.  Historical (replayed) readings never alarm."""
        if reading.historical:
            return []
        with self._lock:
            chair = self._chair(reading.site, reading.chair, now_ms)
            self._note(chair, reading, now_ms)
            fields = reading.fields
            cuff_on = self._cuff_on(chair, now_ms)
            slots = chair.slots
            events: list[AlarmEvent] = []
            for cond, present in self._rules_for(chair, reading.kind):
                slot = slots.get(cond.name) or chair.slot(cond.name)
                if slot.state is AlarmState.INACTIVE and slot.running is None:
                    # idle (no delay, onsets or integral): the common case, decided
                    # by one cheap check instead of an Observation (module .presence)
                    verdict = present(chair, fields, now_ms, cuff_on)
                    if verdict is None:
                        continue  # skip, hold or invalid: none of them changes an idle slot
                    if not verdict:
                        slot.rest(now_ms)
                        continue
                action, obs = self._observe(chair, cond, reading, now_ms)
                events.extend(self._apply(chair, cond, action, obs, now_ms, reading.measured_ms))
            return events

    def tick(self, now_ms: int) -> list[AlarmEvent]:
        """Time-driven work: staleness, delays that ran out, re-notification after ack."""
        with self._lock:
            events: list[AlarmEvent] = []
            for chair in list(self._chairs.values()):
                profile = chair.profile.effective
                stale = profile.conditions.get("data_stale") if chair.standby_by is None else None
                stale_obs = self._stale_obs(chair, now_ms) if stale is not None else None
                stale_slot = chair.slots.get("data_stale")
                announced = stale_slot is not None and stale_slot.state in ANNOUNCED
                if stale is not None and stale_obs is not None and not (announced and not stale_obs.present):
                    # only vitals end staleness (on_reading): a tick raises it,
                    # and a status message or a restart never clears it
                    base = chair.stale_base_ms()
                    events.extend(self._apply(chair, stale, "observe", stale_obs, now_ms, base))
                for cond in self._conditions(chair):
                    slot = chair.slot(cond.name)
                    if (
                        slot.state is AlarmState.PENDING
                        and not self._held(chair, cond, now_ms)
                        and delay_due(slot.delay, now_ms, cond.delay_s, cond.mode)
                    ):
                        events.extend(self._fire(chair, cond, slot, now_ms, "delay ran out"))
                for cond in self._conditions(chair):
                    slot = chair.slot(cond.name)
                    if (
                        slot.state is AlarmState.ACKED
                        and slot.acked_ms is not None
                        and now_ms - slot.acked_ms >= profile.renotify_after_ack_s * 1000
                        and self._inhibitor(chair, cond.name) is None
                    ):
                        slot.state = AlarmState.ACTIVE
                        slot.acked_ms = None
                        slot.renotifies += 1
                        events.append(self._event(chair, cond, slot, "renotify", now_ms))
            return events

    def active(self, site: str, chair: str) -> list[dict[str, Any]]:
        """The announced alarms of a chair (for the retained ``alarms/active`` message)."""
        with self._lock:
            state = self._chairs.get((site, chair))
            if state is None:
                return []
            out: list[dict[str, Any]] = []
            for cond in self._conditions(state):
                slot = state.slots.get(cond.name)
                if slot is None or slot.state not in ANNOUNCED:
                    continue
                out.append(
                    {
                        "alarm": cond.name,
                        "priority": cond.priority,
                        "kind": cond.kind,
                        "since": slot.since_ms,
                        "acked": slot.state is AlarmState.ACKED,
                        "latched": slot.state is AlarmState.LATCHED,
                        "id": slot.thread,
                    }
                )
            out.sort(key=lambda a: (-PRIORITY_RANK[a["priority"]], a["since"] or 0))
            return out

    def state_of(self, site: str, chair: str, alarm: str) -> AlarmState:
        """The state-machine state of one alarm (INACTIVE for anything unknown)."""
        with self._lock:
            found = self._chairs.get((site, chair))
            slot = found.slots.get(alarm) if found is not None else None
            return slot.state if slot is not None else AlarmState.INACTIVE

    def standby(self, site: str, chair: str, by: str, now_ms: int) -> tuple[list[AlarmEvent], list[AuditRecord]]:
        """Between patients: clear the chair's alarms, return its limits to the
        profile (a limit set for one patient must not follow the chair to the
        next), and keep its technical alarms quiet until the next valid patient
        reading, which resumes monitoring on its own — so forgetting to
        "admit" can never silence a patient.  Returns the cleared events and
        the audit records of the limits reset."""
        with self._lock:
            state = self._chair(site, chair, now_ms, seen=False)
            events = self._clear_all(state, now_ms, f"chair put in standby by {by}")
            records = [state.profile.set_param(param, None, by, "standby: next patient", now_ms + i)
                       for i, param in enumerate(sorted(state.profile.overrides))]
            self.audit_log.extend(records)
            state.standby_by = by
            return events, records

    def in_standby(self, site: str, chair: str) -> bool:
        with self._lock:
            found = self._chairs.get((site, chair))
            return found is not None and found.standby_by is not None

    def forget(self, site: str, chair: str, now_ms: int) -> list[AlarmEvent]:
        """Drop a chair entirely (the end of a drill on a ``drill-N`` chair):
        its announced alarms are cleared so the pager resolves their threads."""
        with self._lock:
            state = self._chairs.pop((site, chair), None)
            self._changed.discard((site, chair))
            return [] if state is None else self._clear_all(state, now_ms, "drill ended")

    def _clear_all(self, state: _Chair, now_ms: int, why: str) -> list[AlarmEvent]:
        events: list[AlarmEvent] = []
        for cond in state.profile.effective.conditions.values():
            slot = state.slots.get(cond.name)
            if slot is None or slot.state is AlarmState.INACTIVE:
                continue
            if slot.state in ANNOUNCED:
                events.append(self._clear(state, cond, slot, now_ms, why=why))
            else:  # pending: nothing was announced, just stop the delay
                slot.state = AlarmState.INACTIVE
                slot.delay = DelayState(last_ms=now_ms)
        return events

    def chairs(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._chairs)

    def acknowledge(
        self, site: str, chair: str, alarm: str, by: str, now_ms: int
    ) -> list[AlarmEvent]:
        """Acknowledge an announced alarm (and the alarms it inhibits).

        ACTIVE → ACKED (re-notification paused for ``renotify_after_ack_s``);
        LATCHED → acknowledged + cleared; ACKED → the pause restarts.
        Unknown, inactive or pending alarms: no events.
        """
        with self._lock:
            state = self._chairs.get((site, chair))
            if state is None:
                return []
            conditions = state.profile.effective.conditions
            cond = conditions.get(alarm)
            if cond is None:
                return []
            events = self._ack_one(state, cond, by, now_ms)
            if events:
                for name in cond.inhibits:
                    events.extend(self._ack_one(state, conditions[name], by, now_ms))
            return events

    def set_limit(
        self,
        site: str,
        chair: str,
        param: str,
        value: float | None,
        by: str,
        reason: str,
        now_ms: int,
    ) -> AuditRecord:
        """Per-chair override (``None`` resets); raises ProfileError naming the field.

        Takes effect from the next reading of that chair.
        """
        with self._lock:
            state = self._chair(site, chair, now_ms, seen=False)
            record = state.profile.set_param(param, value, by, reason, now_ms)
            self.audit_log.append(record)
            return record

    def profile_for(self, site: str, chair: str) -> Profile:
        with self._lock:
            state = self._chairs.get((site, chair))
            return state.profile.effective if state is not None else self.profile

    def all_overrides(self) -> dict[str, dict[str, float]]:
        """Every chair's limit overrides, keyed ``site/chair`` (for persisting)."""
        with self._lock:
            return {f"{site}/{chair}": dict(state.profile.overrides)
                    for (site, chair), state in self._chairs.items() if state.profile.overrides}

    def overrides_for(self, site: str, chair: str) -> dict[str, float]:
        with self._lock:
            state = self._chairs.get((site, chair))
            return dict(state.profile.overrides) if state is not None else {}

    # -------------------------------------------------------- restart state
    def changed_chairs(self) -> set[tuple[str, str]]:
        """Chairs whose announced set changed since the last call without an
        event saying so (an alarm LATCHED or back from LATCHED, a restore):
        the gateway republishes their retained ``alarms/active``.  Drains."""
        with self._lock:
            changed, self._changed = self._changed, set()
            return changed

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

    def _restore_slot(self, chair: _Chair, name: str, raw: Any, now_ms: int) -> list[AlarmEvent]:
        if not isinstance(raw, Mapping):
            raise TypeError("expected an object")
        state = AlarmState(_text_field(raw, "state"))
        cond = chair.profile.effective.conditions.get(name)
        if cond is None:
            if state not in ANNOUNCED:
                raise ValueError("not a condition of the profile")
            return [self._orphan_clear(chair, name, raw, now_ms)]
        slot = _Slot()
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

    def _orphan_clear(self, chair: _Chair, name: str, raw: Mapping[str, Any], now_ms: int) -> AlarmEvent:
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

    # ------------------------------------------------------------ internals
    def _chair(self, site: str, chair: str, now_ms: int, *, seen: bool = True) -> _Chair:
        key = (site, chair)
        state = self._chairs.get(key)
        if state is None:
            state = _Chair(site, chair, ChairProfile(self.profile, site, chair), None)
            self._chairs[key] = state
        if seen and state.first_seen_ms is None:
            state.first_seen_ms = now_ms
        return state

    def _conditions(self, chair: _Chair) -> Iterator[Condition]:
        conditions = chair.profile.effective.conditions.values()
        if chair.standby_by is not None:
            # no patient on the chair: probe off, silence, an unplugged box or a
            # cuff measuring nothing are expected; a module that stopped
            # answering is not (staff must know before the next patient), and
            # physiological conditions always run
            return iter([c for c in conditions if c.name not in STANDBY_QUIET])
        return iter(conditions)

    def _rules_for(self, chair: _Chair, kind: str) -> tuple[_Rule, ...]:
        """``_conditions(chair)``, in order, minus those ``_observe`` always skips
        for readings of ``kind`` (a skip changes nothing), with their presence
        checks.  Compiled once per effective profile: shared by the chairs
        without overrides, per chair for those with."""
        effective = chair.profile.effective
        rules = chair.rules
        if rules is None or rules.profile is not effective:
            if effective is self.profile:
                if self._shared_rules is None or self._shared_rules.profile is not effective:
                    self._shared_rules = _Rules(effective)
                rules = self._shared_rules
            else:
                rules = _Rules(effective)
            chair.rules = rules
        return rules.get(kind, chair.standby_by is not None)

    def _note(self, chair: _Chair, reading: Reading, now_ms: int) -> None:
        """Per-chair bookkeeping before conditions are evaluated."""
        fields = reading.fields
        if reading.kind == "vitals" and chair.standby_by is not None and fields.get("st") == "ok":
            chair.standby_by = None  # a patient is on the probe: monitoring resumes by itself
        if reading.kind == "vitals":
            chair.last_vitals_ms = now_ms
            if fields.get("cuff") == 1:
                if chair.cuff_since_ms is None:
                    chair.cuff_since_ms = now_ms
            else:
                chair.cuff_since_ms = None
            rate = number(fields, "pr")
            if fields.get("st") == "ok" and rate is not None and not self._cuff_on(chair, now_ms):
                chair.pulses.append(now_ms, rate)
        elif reading.kind == "status":
            state = fields.get("state")
            if state == "online" and chair.box_state != "online":
                # a birth (first status, or back after the last will) restarts
                # the staleness clock; the box's periodic status does not
                chair.online_ms = now_ms
            if state in ("online", "offline"):
                chair.box_state = state

    def _cuff_on(self, chair: _Chair, now_ms: int) -> bool:
        profile = chair.profile.effective
        return (
            profile.cuff_interlock
            and chair.cuff_since_ms is not None
            and now_ms - chair.cuff_since_ms <= profile.cuff_interlock_max_s * 1000
        )

    def _held(self, chair: _Chair, cond: Condition, now_ms: int) -> bool:
        return cond.cuff_hold and self._cuff_on(chair, now_ms)

    def _stale_obs(self, chair: _Chair, now_ms: int) -> Observation | None:
        base = chair.stale_base_ms()
        if base is None:
            return None  # never heard from this chair: nothing to be stale
        limit_ms = chair.profile.effective.stale_after_s * 1000
        silent_ms = now_ms - base
        return flag_observation(
            silent_ms > limit_ms, value=silent_ms / 1000.0, detail=f"no vitals for {silent_ms} ms"
        )

    def _observe(
        self, chair: _Chair, cond: Condition, reading: Reading, now_ms: int
    ) -> tuple[Action, Observation | None]:
        """What this reading says about ``cond``: skip, hold, invalid data, or an observation."""
        kind = reading.kind
        fields = reading.fields
        check = cond.check
        if check == "offline":
            if kind == "status":
                state = fields.get("state")
                if state in ("online", "offline"):
                    return "observe", flag_observation(state == "offline")
                return "skip", None
            if kind in ("vitals", "nibp"):
                return "observe", flag_observation(False)
            return "skip", None
        if check == "stale":
            obs = self._stale_obs(chair, now_ms) if kind == "vitals" else None
            return ("observe", obs) if obs is not None else ("skip", None)
        if check == "unsynced":
            sync = fields.get("sync")
            if sync in (0, 1) and not isinstance(sync, bool):
                return "observe", flag_observation(sync == 0)
            return "skip", None
        if check == "module":
            value = fields.get(cond.field or "") if kind == "status" else None
            if value in ("silent", "error"):
                return "observe", flag_observation(True, detail=str(value))
            if value == "ok":
                return "observe", flag_observation(False)
            return "skip", None
        if check == "nibp_error":
            if kind != "nibp":
                return "skip", None
            err = number(fields, "err")
            return "observe", flag_observation(fields.get("st") == "error", value=err)
        if kind != cond.measurement:
            return "skip", None
        if self._held(chair, cond, now_ms):
            return "hold", None
        if check == "probe":
            valid = fields.get("st") == "ok" and number(fields, "spo2") is not None
            return "observe", flag_observation(not valid, detail=str(fields.get("st")))
        if kind == "vitals" and fields.get("st") != "ok":
            return "invalid", None
        if kind == "nibp" and fields.get("st") != "ok":
            return "skip", None  # a failed NIBP measurement says nothing about pressure
        obs = (
            afib_observation(cond, chair.pulses, now_ms)
            if check == "afib"
            else threshold_observation(cond, fields)
        )
        return ("invalid", None) if obs is None else ("observe", obs)

    def _apply(
        self,
        chair: _Chair,
        cond: Condition,
        action: Action,
        obs: Observation | None,
        now_ms: int,
        measured_ms: int | None = None,
    ) -> list[AlarmEvent]:
        """Advance one slot's state machine with one observation.

        ``measured_ms``: when the observed reading was measured (for the raise's
        event id); ``None`` for clock-driven observations."""
        if action == "skip":
            return []
        if action == "hold":
            held = chair.slots.get(cond.name)
            if held is not None:
                held.clear_since_ms = None  # a held reading confirms no recovery
            return []
        slot = chair.slot(cond.name)
        if action == "invalid" or obs is None:
            # the value cannot be seen: a running delay cannot be confirmed; an
            # announced alarm stays (unknown is not recovered)
            slot.delay = reset_delay(slot.delay)
            slot.clear_since_ms = None
            if slot.state is AlarmState.PENDING:
                slot.state = AlarmState.INACTIVE
            return []
        if slot.state in (AlarmState.INACTIVE, AlarmState.PENDING):
            delay = slot.delay
            if (
                not obs.present
                and not delay.onsets
                and (cond.mode != "satseconds" or delay.integral <= 0)
            ):
                slot.rest(now_ms)
                return []
            if obs.present and not delay.was_present:
                slot.cross_ms = measured_ms if measured_ms is not None else now_ms
            profile = chair.profile.effective
            decision = step_delay(
                delay,
                obs,
                now_ms,
                mode=cond.mode,
                delay_s=cond.delay_s,
                satseconds_limit=cond.satseconds_limit,
                flap_violations=profile.flap_violations,
                flap_window_s=profile.flap_window_s,
            )
            slot.delay = decision.state
            if obs.present:
                self._remember(slot, obs)
            if decision.fire:
                return self._fire(chair, cond, slot, now_ms, decision.reason)
            slot.state = AlarmState.PENDING if decision.pending else AlarmState.INACTIVE
            slot.reason = decision.reason
            return []
        # announced (ACTIVE, ACKED, LATCHED): events show the latest value
        self._remember(slot, obs)
        if obs.present:
            slot.clear_since_ms = None
            if slot.state is AlarmState.LATCHED:
                slot.state = AlarmState.ACTIVE  # back again before anyone acknowledged
                self._changed.add((chair.site, chair.chair))
            return []
        if not obs.recovered:
            slot.clear_since_ms = None  # inside the limit but within the hysteresis band: stay
            return []
        if slot.clear_since_ms is None:
            slot.clear_since_ms = now_ms
        if now_ms - slot.clear_since_ms < cond.clear_hold_s * 1000:
            return []  # recovered, but not yet for clear_hold_s
        if slot.state is AlarmState.ACTIVE and cond.latching:
            slot.state = AlarmState.LATCHED
            self._changed.add((chair.site, chair.chair))
            return []
        if slot.state in PRESENT:
            return [self._clear(chair, cond, slot, now_ms)]
        return []  # LATCHED waits for an acknowledgement

    @staticmethod
    def _remember(slot: _Slot, obs: Observation) -> None:
        slot.value, slot.limit, slot.detail = obs.value, obs.limit, obs.detail
        slot.field, slot.op, slot.present = obs.field, obs.op, obs.present
        slot.alt = obs.alt

    def _inhibitor(self, chair: _Chair, name: str) -> Condition | None:
        """The inhibitor of ``name`` that is present (ACTIVE or ACKED): it holds ``name`` back."""
        for other in self._conditions(chair):
            if name in other.inhibits:
                slot = chair.slots.get(other.name)
                if slot is not None and slot.state in PRESENT:
                    return other
        return None

    def _announced_inhibitor(self, chair: _Chair, name: str) -> str | None:
        """The inhibitor of ``name`` that is announced (also LATCHED): the thread it belongs to."""
        for other in chair.profile.effective.conditions.values():
            if name in other.inhibits:
                slot = chair.slots.get(other.name)
                if slot is not None and slot.state in ANNOUNCED:
                    return other.name
        return None

    def _fire(
        self, chair: _Chair, cond: Condition, slot: _Slot, now_ms: int, reason: str
    ) -> list[AlarmEvent]:
        inhibitor = self._inhibitor(chair, cond.name)
        if inhibitor is not None:
            slot.state = AlarmState.PENDING
            slot.reason = f"inhibited by {inhibitor.name}"
            return []
        kind: EventType = "raised"
        for name in cond.inhibits:
            lower = chair.slots.get(name)
            lower_cond = chair.profile.effective.conditions[name]
            if lower is not None and lower.state in ANNOUNCED:
                lower.inhibited_by = cond.name  # its next event joins this thread
                if PRIORITY_RANK[cond.priority] > PRIORITY_RANK[lower_cond.priority]:
                    kind = "escalated"
        slot.state = AlarmState.ACTIVE
        slot.since_ms = now_ms
        slot.acked_ms = None
        slot.acked_by = None
        slot.reason = reason
        slot.delay = DelayState(last_ms=now_ms)
        slot.clear_since_ms = None
        slot.acks = slot.renotifies = 0
        slot.thread = self._thread_id(chair, cond.name, slot.cross_ms if slot.cross_ms is not None else now_ms)
        return [self._event(chair, cond, slot, kind, now_ms)]

    def _thread_id(self, chair: _Chair, alarm: str, crossed_ms: int) -> str:
        """The raise's event id: the same crossing always gets the same id."""
        key = f"{chair.site}\x1f{chair.chair}\x1f{alarm}\x1f{crossed_ms}".encode()
        return f"{self._prefix}-{hashlib.sha256(key).hexdigest()[:20]}"

    def _clear(
        self, chair: _Chair, cond: Condition, slot: _Slot, now_ms: int, *, why: str | None = None
    ) -> AlarmEvent:
        event = self._event(chair, cond, slot, "cleared", now_ms, why=why)
        slot.state = AlarmState.INACTIVE
        slot.since_ms = None
        slot.acked_ms = None
        slot.acked_by = None
        slot.clear_since_ms = None
        slot.thread = None
        slot.delay = DelayState(last_ms=now_ms)
        return event

    def _ack_one(self, chair: _Chair, cond: Condition, by: str, now_ms: int) -> list[AlarmEvent]:
        slot = chair.slots.get(cond.name)
        if slot is None or slot.state not in ANNOUNCED:
            return []
        slot.acked_by = by
        slot.acks += 1
        if slot.state is AlarmState.LATCHED:
            acked = self._event(chair, cond, slot, "acknowledged", now_ms, by=by)
            return [acked, self._clear(chair, cond, slot, now_ms)]
        slot.state = AlarmState.ACKED
        slot.acked_ms = now_ms
        return [self._event(chair, cond, slot, "acknowledged", now_ms, by=by)]

    def _text(
        self, chair: _Chair, cond: Condition, slot: _Slot, event: EventType, why: str | None = None
    ) -> str:
        body = f"{cond.text}: {why or _recovery(cond, slot)}" if event == "cleared" else _situation(cond, slot)
        text = f"{body} (chair {chair.chair})"
        if event == "acknowledged" and slot.acked_by:
            text = f"{text}, acknowledged by {slot.acked_by}"
        elif event == "renotify":
            text = f"still active: {text}"
        elif event == "escalated":
            text = f"escalated: {text}"
        return " ".join(text.split())[:MAX_TEXT]

    def _event_id(self, chair: _Chair, cond: Condition, slot: _Slot, kind: EventType, now_ms: int) -> str:
        if slot.thread is None:  # announced without a raise id (an old snapshot): one from its start
            since = slot.since_ms if slot.since_ms is not None else now_ms
            slot.thread = self._thread_id(chair, cond.name, since)
        if kind == "cleared":
            return f"{slot.thread}-c"
        if kind == "acknowledged":
            return f"{slot.thread}-a{slot.acks}"
        if kind == "renotify":
            return f"{slot.thread}-r{slot.renotifies}"
        return slot.thread

    def _event(
        self,
        chair: _Chair,
        cond: Condition,
        slot: _Slot,
        kind: EventType,
        now_ms: int,
        *,
        by: str | None = None,
        why: str | None = None,
    ) -> AlarmEvent:
        inhibitor = self._announced_inhibitor(chair, cond.name)
        inhibited_by = inhibitor if inhibitor is not None else slot.inhibited_by
        slot.inhibited_by = inhibitor  # the sticky mark is carried by one event
        return AlarmEvent(
            id=self._event_id(chair, cond, slot, kind, now_ms),
            site=chair.site,
            chair=chair.chair,
            alarm=cond.name,
            priority=cond.priority,
            kind=cond.kind,
            event=kind,
            t=now_ms,
            text=self._text(chair, cond, slot, kind, why),
            value=slot.value,
            limit=slot.limit,
            by=by,
            drill=chair.chair.startswith(DRILL_PREFIX),
            extra={
                "active": kind != "cleared",
                "level": PRIORITY_RANK[cond.priority],
                "latching": cond.latching,
                "reason": slot.reason,
            },
            inhibits=tuple(sorted(cond.inhibits)),
            inhibited_by=inhibited_by,
        )


_LABELS: Final[dict[str, str]] = {"spo2": "SpO2", "pr": "pulse"}
_RECOVERED: Final[dict[str, str]] = {
    "probe": "SpO2 signal back",
    "module": "module answering again",
    "nibp_error": "next NIBP measurement succeeded",
    "offline": "box back online",
    "stale": "vitals received again",
    "unsynced": "box clock synchronised",
}


def _measure(name: str | None, value: float) -> str:
    unit = UNITS.get(name or "", "")
    return f"{_LABELS.get(name or '', name or '')} {value:g} {unit}".strip()


def _situation(cond: Condition, slot: _Slot) -> str:
    """What is wrong, with the latest value (raise, escalation, ack, renotify)."""
    if cond.check == "threshold" and slot.value is not None and slot.limit is not None:
        unit = UNITS.get(slot.field or "", "")
        now = _measure(slot.field, slot.value)
        if slot.present:
            return f"{cond.text}: {now} {slot.op or ''} {slot.limit:g} {unit}"
        return f"{cond.text}: {now}, not yet recovered (limit {slot.limit:g} {unit})"
    if slot.detail:
        return f"{cond.text}: {slot.detail}"
    return cond.text


def _recovery(cond: Condition, slot: _Slot) -> str:
    """What a clear means: the value back, or the technical problem gone."""
    if cond.check == "threshold" and slot.value is not None and slot.limit is not None:
        unit = UNITS.get(slot.field or "", "")
        label = _LABELS.get(slot.field or "", slot.field or "")
        text = f"{label} back to {slot.value:g} {unit} (limit {slot.limit:g} {unit})"
        if slot.alt is not None:
            name, value, limit = slot.alt
            alt_unit = UNITS.get(name, "")
            text += f", {_LABELS.get(name, name)} {value:g} {alt_unit} (limit {limit:g} {alt_unit})"
        return text
    if cond.check == "afib":
        return f"no longer rapid and irregular: {slot.detail}" if slot.detail else "no longer rapid and irregular"
    return _RECOVERED.get(cond.check, "condition ended")


def _may_observe(check: str, measurement: str | None, kind: str) -> bool:
    """False when ``AlarmEngine._observe`` returns "skip" for every reading of ``kind``."""
    if check == "offline":
        return kind != "resp"
    if check == "stale":
        return kind == "vitals"
    if check == "unsynced":
        return True
    if check == "module":
        return kind == "status"
    if check == "nibp_error":
        return kind == "nibp"
    return kind == measurement


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


__all__ = ["DRILL_PREFIX", "AlarmEngine", "AlarmState", "ProfileError"]
