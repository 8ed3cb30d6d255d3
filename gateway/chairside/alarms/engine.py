"""The alarm engine: readings and clock ticks in, alarm events out.

Why this module is longer than ~500 lines: it is one state machine per
condition, and its transitions (``_apply``, ``_fire``, ``_clear``,
``_ack_one``, ``tick``, the standby and inhibition rules) read and write the
same slots under one lock; splitting it would scatter one transition table
across modules.  What is not a transition lives beside it: the per-chair data
in :mod:`.slots`, saving and restoring in :mod:`.snapshot`, event texts in
:mod:`.texts`.

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
:meth:`AlarmEngine.snapshot` / :meth:`AlarmEngine.restore` (:mod:`.snapshot`)
carry the state across a restart (docs/alarms.md, "Restarts").
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from typing import Any, Final, Literal

from chairside.model import PRIORITY_RANK, AlarmEvent, EventType, Reading

from .conditions import (
    DelayState,
    Observation,
    afib_observation,
    delay_due,
    flag_observation,
    number,
    reset_delay,
    step_delay,
    threshold_observation,
)
from .profile import (
    AuditRecord,
    ChairProfile,
    Condition,
    Profile,
    ProfileError,
    load_profile,
)
from .slots import (
    ANNOUNCED,
    DRILL_PREFIX,
    PRESENT,
    STANDBY_QUIET,
    AlarmState,
    Chair,
    Rule,
    Rules,
    Slot,
)
from .snapshot import AlarmSnapshots
from .texts import event_text

DEFAULT_ID_PREFIX: Final = "al"
_NO_CHAIRS: Final[frozenset[tuple[str, str]]] = frozenset()

log = logging.getLogger(__name__)


Action = Literal["skip", "hold", "invalid", "observe"]


class AlarmEngine(AlarmSnapshots):
    """Per-chair alarm state machines driven by readings and clock ticks (thread-safe)."""

    def __init__(self, profile: Profile | None = None, *, id_prefix: str | None = None) -> None:
        self.profile = profile if profile is not None else load_profile()
        self._prefix = id_prefix if id_prefix is not None else DEFAULT_ID_PREFIX
        self._chairs: dict[tuple[str, str], Chair] = {}
        self._changed: set[tuple[str, str]] = set()
        self.restore_skipped = 0
        """snapshot entries :meth:`restore` could not use (each logged with its reason)"""
        self._lock = threading.RLock()
        self.audit_log: list[AuditRecord] = []
        self._shared_rules: Rules | None = None  # for chairs without overrides

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
                        # Slot.rest, inline: state INACTIVE and no delay already hold
                        slot.rest_ms = now_ms
                        slot.reason = "inside limit"
                        continue
                action, obs = self._observe(chair, cond, reading, now_ms)
                events.extend(self._apply(chair, cond, action, obs, now_ms, reading.measured_ms))
            return events

    def tick(self, now_ms: int) -> list[AlarmEvent]:
        """Time-driven work: staleness, delays that ran out, re-notification after ack."""
        with self._lock:
            events: list[AlarmEvent] = []
            for chair in list(self._chairs.values()):
                if self._quiet(chair, now_ms):
                    continue
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

    @staticmethod
    def _quiet(chair: Chair, now_ms: int) -> bool:
        """True when :meth:`tick` cannot change ``chair`` now: no delay running
        out (no PENDING slot), no re-notification due (no ACKED slot), and
        staleness idle and not yet reached.  Ticking such a chair would only
        observe "not stale" on an idle slot, which changes nothing but the
        slot's last-observation time (used only by SatSeconds, excluded).
        Most chairs are quiet at most ticks; skipping them keeps the tick's
        cost off the ingest path at 1,000 chairs (docs/performance.md)."""
        slots = chair.slots
        for slot in slots.values():
            if slot.state is AlarmState.PENDING or slot.state is AlarmState.ACKED:
                return False
        stale_slot = slots.get("data_stale")
        if stale_slot is not None and (stale_slot.state is not AlarmState.INACTIVE or stale_slot.running is not None):
            return False
        if chair.standby_by is not None:
            return True  # staleness is not observed in standby
        profile = chair.profile.effective
        stale = profile.conditions.get("data_stale")
        if stale is None:
            return True
        if stale.mode == "satseconds":
            return False
        base = chair.stale_base_ms()
        return base is None or now_ms - base <= profile.stale_after_s * 1000

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

    def _clear_all(self, state: Chair, now_ms: int, why: str) -> list[AlarmEvent]:
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
    def changed_chairs(self) -> AbstractSet[tuple[str, str]]:
        """Chairs whose announced set changed since the last call without an
        event saying so (an alarm LATCHED or back from LATCHED, a restore):
        the gateway republishes their retained ``alarms/active``.  Drains."""
        if not self._changed:  # the common case, without the lock or a new set
            return _NO_CHAIRS
        with self._lock:
            changed, self._changed = self._changed, set()
            return changed

    # ------------------------------------------------------------ internals
    def _chair(self, site: str, chair: str, now_ms: int, *, seen: bool = True) -> Chair:
        key = (site, chair)
        state = self._chairs.get(key)
        if state is None:
            state = Chair(site, chair, ChairProfile(self.profile, site, chair), None)
            self._chairs[key] = state
        if seen and state.first_seen_ms is None:
            state.first_seen_ms = now_ms
        return state

    def _conditions(self, chair: Chair) -> Iterator[Condition]:
        conditions = chair.profile.effective.conditions.values()
        if chair.standby_by is not None:
            # no patient on the chair: probe off, silence, an unplugged box or a
            # cuff measuring nothing are expected; a module that stopped
            # answering is not (staff must know before the next patient), and
            # physiological conditions always run
            return iter([c for c in conditions if c.name not in STANDBY_QUIET])
        return iter(conditions)

    def _rules_for(self, chair: Chair, kind: str) -> tuple[Rule, ...]:
        """``_conditions(chair)``, in order, minus those ``_observe`` always skips
        for readings of ``kind`` (a skip changes nothing), with their presence
        checks.  Compiled once per effective profile: shared by the chairs
        without overrides, per chair for those with."""
        effective = chair.profile.effective
        rules = chair.rules
        if rules is None or rules.profile is not effective:
            if effective is self.profile:
                if self._shared_rules is None or self._shared_rules.profile is not effective:
                    self._shared_rules = Rules(effective)
                rules = self._shared_rules
            else:
                rules = Rules(effective)
            chair.rules = rules
        return rules.get(kind, chair.standby_by is not None)

    def _note(self, chair: Chair, reading: Reading, now_ms: int) -> None:
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

    def _cuff_on(self, chair: Chair, now_ms: int) -> bool:
        profile = chair.profile.effective
        return (
            profile.cuff_interlock
            and chair.cuff_since_ms is not None
            and now_ms - chair.cuff_since_ms <= profile.cuff_interlock_max_s * 1000
        )

    def _held(self, chair: Chair, cond: Condition, now_ms: int) -> bool:
        return cond.cuff_hold and self._cuff_on(chair, now_ms)

    def _stale_obs(self, chair: Chair, now_ms: int) -> Observation | None:
        base = chair.stale_base_ms()
        if base is None:
            return None  # never heard from this chair: nothing to be stale
        limit_ms = chair.profile.effective.stale_after_s * 1000
        silent_ms = now_ms - base
        return flag_observation(
            silent_ms > limit_ms, value=silent_ms / 1000.0, detail=f"no vitals for {silent_ms} ms"
        )

    def _observe(
        self, chair: Chair, cond: Condition, reading: Reading, now_ms: int
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
        chair: Chair,
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
    def _remember(slot: Slot, obs: Observation) -> None:
        slot.value, slot.limit, slot.detail = obs.value, obs.limit, obs.detail
        slot.field, slot.op, slot.present = obs.field, obs.op, obs.present
        slot.alt = obs.alt

    def _inhibitor(self, chair: Chair, name: str) -> Condition | None:
        """The inhibitor of ``name`` that is present (ACTIVE or ACKED): it holds ``name`` back."""
        for other in self._conditions(chair):
            if name in other.inhibits:
                slot = chair.slots.get(other.name)
                if slot is not None and slot.state in PRESENT:
                    return other
        return None

    def _announced_inhibitor(self, chair: Chair, name: str) -> str | None:
        """The inhibitor of ``name`` that is announced (also LATCHED): the thread it belongs to."""
        for other in chair.profile.effective.conditions.values():
            if name in other.inhibits:
                slot = chair.slots.get(other.name)
                if slot is not None and slot.state in ANNOUNCED:
                    return other.name
        return None

    def _fire(
        self, chair: Chair, cond: Condition, slot: Slot, now_ms: int, reason: str
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

    def _thread_id(self, chair: Chair, alarm: str, crossed_ms: int) -> str:
        """The raise's event id: the same crossing always gets the same id."""
        key = f"{chair.site}\x1f{chair.chair}\x1f{alarm}\x1f{crossed_ms}".encode()
        return f"{self._prefix}-{hashlib.sha256(key).hexdigest()[:20]}"

    def _clear(
        self, chair: Chair, cond: Condition, slot: Slot, now_ms: int, *, why: str | None = None
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

    def _ack_one(self, chair: Chair, cond: Condition, by: str, now_ms: int) -> list[AlarmEvent]:
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

    def _event_id(self, chair: Chair, cond: Condition, slot: Slot, kind: EventType, now_ms: int) -> str:
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
        chair: Chair,
        cond: Condition,
        slot: Slot,
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
            text=event_text(chair, cond, slot, kind, why),
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


__all__ = ["DRILL_PREFIX", "AlarmEngine", "AlarmState", "ProfileError"]
