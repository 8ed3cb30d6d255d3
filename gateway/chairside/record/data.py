"""What a session record is built from: the rows InfluxDB holds, typed.

:mod:`chairside.record.query` fills these from InfluxDB; the figures
(:mod:`chairside.record.figures`), the PDF (:mod:`chairside.record.pdf`) and
the FHIR export (:mod:`chairside.record.fhir`) only read them.  Times are
ms since 1970-01-01 UTC, as stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Session:
    """One infusion session of one chair (measurement ``sessions``)."""

    id: str
    site: str
    chair: str
    start_ms: int
    end_ms: int | None
    """None while the session is open"""
    started_by: str
    ended_by: str | None = None
    ref: str = ""
    end_why: str | None = None
    """staff or standby; None while open"""


@dataclass(frozen=True, slots=True)
class Vital:
    """One oximeter reading (``vitals``): ``spo2``/``pr`` are None when invalid."""

    t_ms: int
    spo2: int | None
    pr: int | None
    st: str

    @property
    def valid(self) -> bool:
        """A patient reading: sensor state ok (docs/contract.md, ``st``)."""
        return self.st == "ok"


@dataclass(frozen=True, slots=True)
class Nibp:
    """One blood-pressure measurement (``nibp``)."""

    t_ms: int
    sys: int | None
    dia: int | None
    map: int | None
    pr: int | None
    st: str

    @property
    def valid(self) -> bool:
        return self.st == "ok" and self.sys is not None and self.dia is not None


@dataclass(frozen=True, slots=True)
class AlarmRow:
    """One stored alarm event (``alarm_events``)."""

    t_ms: int
    alarm: str
    event: str
    priority: str
    kind: str
    id: str
    text: str = ""
    by: str | None = None
    value: float | None = None
    limit: float | None = None
    drill: bool = False


@dataclass(frozen=True, slots=True)
class LimitChange:
    """One per-chair limit change (``limit_audit``)."""

    t_ms: int
    param: str
    old: float | None
    new: float | None
    by: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One box status (``device``): ``online`` 1 or 0."""

    t_ms: int
    online: int


@dataclass(slots=True)
class SessionData:
    """Everything stored for a session, time-ordered; ``nibp`` and ``device``
    also hold the rows of the look-back before the start (the baseline)."""

    session: Session
    vitals: list[Vital] = field(default_factory=list)
    nibp: list[Nibp] = field(default_factory=list)
    alarms: list[AlarmRow] = field(default_factory=list)
    limits: list[LimitChange] = field(default_factory=list)
    device: list[DeviceRow] = field(default_factory=list)
