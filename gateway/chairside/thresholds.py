"""The walking skeleton's alarm stage: fixed adult thresholds, no delays.

A condition is raised when a valid live reading crosses its limit and
cleared when a valid live reading is back inside.  Invalid readings (sensor
state not ``ok``, null values) change nothing; historical readings never
raise or clear.  The full engine (``chairside.alarms``) implements the same
:class:`~chairside.model.AlarmStage` protocol and replaces this one.
"""

from __future__ import annotations

import itertools
import operator
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from chairside.model import AlarmEvent, Priority, Reading


@dataclass(frozen=True, slots=True)
class Threshold:
    alarm: str
    kind: str  # message kind: vitals or nibp
    field: str
    compare: Callable[[float, float], bool]
    limit: float
    priority: Priority
    label: str
    unit: str
    symbol: str


ADULT_DEFAULTS: Final[tuple[Threshold, ...]] = (
    Threshold("spo2_low", "vitals", "spo2", operator.lt, 90, "medium", "SpO2", "%", "<"),
    Threshold("pr_low", "vitals", "pr", operator.lt, 50, "medium", "Pulse", "bpm", "<"),
    Threshold("pr_high", "vitals", "pr", operator.gt, 120, "medium", "Pulse", "bpm", ">"),
    Threshold("sys_high", "nibp", "sys", operator.ge, 180, "medium", "Systolic", "mmHg", ">="),
    Threshold("sys_low", "nibp", "sys", operator.lt, 90, "medium", "Systolic", "mmHg", "<"),
    Threshold("dia_high", "nibp", "dia", operator.ge, 110, "medium", "Diastolic", "mmHg", ">="),
    # the clinic's intervention point
    Threshold("sys_crit", "nibp", "sys", operator.ge, 220, "high", "Systolic", "mmHg", ">="),
    Threshold("dia_crit", "nibp", "dia", operator.ge, 120, "high", "Diastolic", "mmHg", ">="),
)


@dataclass(slots=True)
class _Active:
    threshold: Threshold
    since: int


class ThresholdStage:
    """Implements ``model.AlarmStage`` with fixed thresholds; thread-safe."""

    def __init__(self, thresholds: tuple[Threshold, ...] = ADULT_DEFAULTS) -> None:
        self._thresholds = thresholds
        self._active: dict[tuple[str, str, str], _Active] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:12]

    def _event_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def on_reading(self, reading: Reading, now_ms: int) -> list[AlarmEvent]:
        if reading.historical or reading.kind not in ("vitals", "nibp"):
            return []
        if reading.fields.get("st") != "ok":
            return []
        events: list[AlarmEvent] = []
        with self._lock:
            for th in self._thresholds:
                if th.kind != reading.kind:
                    continue
                value = reading.fields.get(th.field)
                if not isinstance(value, int | float) or isinstance(value, bool):
                    continue
                key = (reading.site, reading.chair, th.alarm)
                crossed = th.compare(value, th.limit)
                if crossed and key not in self._active:
                    self._active[key] = _Active(th, now_ms)
                    events.append(self._event(reading, th, "raised", value, now_ms))
                elif not crossed and key in self._active:
                    del self._active[key]
                    events.append(self._event(reading, th, "cleared", value, now_ms))
        return events

    def _event(
        self, reading: Reading, th: Threshold, event: str, value: float, now_ms: int
    ) -> AlarmEvent:
        limit = f"{th.limit:g}"
        if event == "raised":
            text = f"{th.label} {value:g} {th.unit} {th.symbol} {limit} {th.unit}"
        else:
            text = f"{th.label} {value:g} {th.unit} back within {limit} {th.unit}"
        return AlarmEvent(
            id=self._event_id(),
            site=reading.site,
            chair=reading.chair,
            alarm=th.alarm,
            priority=th.priority,
            kind="physiological",
            event="raised" if event == "raised" else "cleared",
            t=now_ms,
            text=f"{text} (chair {reading.chair})",
            value=float(value),
            limit=float(th.limit),
        )

    def tick(self, now_ms: int) -> list[AlarmEvent]:
        return []

    def active(self, site: str, chair: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {
                    "alarm": a.threshold.alarm,
                    "priority": a.threshold.priority,
                    "kind": "physiological",
                    "since": a.since,
                    "acked": False,
                    "latched": False,
                }
                for (s, c, _), a in sorted(self._active.items())
                if s == site and c == chair
            ]
