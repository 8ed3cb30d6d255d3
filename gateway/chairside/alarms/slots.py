"""The alarm engine's per-chair data: one :class:`Slot` (the state of one
condition's state machine) per condition, grouped in a :class:`Chair`, and the
profile's conditions compiled per reading kind (:class:`Rules`).

:class:`~chairside.alarms.engine.AlarmEngine` drives them;
:mod:`.snapshot` saves and restores them; :mod:`.texts` words their events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, NamedTuple

from .conditions import DelayState, PulseWindow
from .presence import Presence, presence
from .profile import ChairProfile, Condition, Profile

DRILL_PREFIX: Final = "drill-"
"""chair ids of drill boxes (``chairside drill``): their events carry ``drill=True``"""
AFIB_BUFFER: Final = 600  # at most this many 1-Hz pulse samples per chair


class AlarmState(StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    ACTIVE = "active"
    LATCHED = "latched"
    ACKED = "acked"


ANNOUNCED: Final = frozenset({AlarmState.ACTIVE, AlarmState.LATCHED, AlarmState.ACKED})
PRESENT: Final = frozenset({AlarmState.ACTIVE, AlarmState.ACKED})


@dataclass(slots=True)
class Slot:
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


class Rule(NamedTuple):
    cond: Condition
    present: Presence


class Rules:
    """A profile's conditions compiled per reading kind, once: in profile order,
    without those ``_observe`` always skips for that kind, each with its
    presence check (:mod:`.presence`)."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._live: dict[str, tuple[Rule, ...]] = {}
        self._standby: dict[str, tuple[Rule, ...]] = {}

    def get(self, kind: str, standby: bool) -> tuple[Rule, ...]:
        cache = self._standby if standby else self._live
        found = cache.get(kind)
        if found is None:
            found = cache[kind] = tuple(
                Rule(c, presence(c, kind, self.profile))
                for c in self.profile.conditions.values()
                if _may_observe(c.check, c.measurement, kind)
                and not (standby and c.name in STANDBY_QUIET)
            )
        return found


@dataclass(slots=True)
class Chair:
    site: str
    chair: str
    profile: ChairProfile
    first_seen_ms: int | None  # None until the first live reading
    slots: dict[str, Slot] = field(default_factory=dict)
    last_vitals_ms: int | None = None
    online_ms: int | None = None
    cuff_since_ms: int | None = None
    pulses: PulseWindow = field(default_factory=lambda: PulseWindow(AFIB_BUFFER))
    standby_by: str | None = None  # set between patients: technical alarms are quiet
    rules: Rules | None = None  # compiled for profile.effective (see AlarmEngine._rules_for)
    box_state: str | None = None  # last "state" of a status message: online / offline
    restored_ms: int | None = None  # when a snapshot was restored: the stale clock restarts

    def slot(self, name: str) -> Slot:
        found = self.slots.get(name)
        if found is None:
            found = self.slots[name] = Slot()
        return found

    def stale_base_ms(self) -> int | None:
        """The latest of first seen, last vitals, online and restored (the
        staleness clock's start); None if none is known.  Called for every
        chair at every tick: no allocation."""
        base = self.first_seen_ms
        for t in (self.last_vitals_ms, self.online_ms, self.restored_ms):
            if t is not None and (base is None or t > base):
                base = t
        return base


STANDBY_QUIET: frozenset[str] = frozenset({"probe_off", "box_offline", "data_stale", "nibp_failed"})
"""Technical conditions held while a chair is in standby between patients."""


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
