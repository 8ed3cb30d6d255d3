"""Value objects shared by the gateway's pipeline stages.

A validated box message becomes a :class:`Reading`; the alarm stage turns
readings and clock ticks into :class:`AlarmEvent` objects; the pager consumes
alarm events from MQTT (their JSON form is ``AlarmEvent.to_payload()``, see
``contract.json`` → ``gateway_messages.alarm_event``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

MessageKind = Literal["vitals", "nibp", "status", "resp"]
Priority = Literal["high", "medium", "low"]
AlarmKind = Literal["physiological", "technical"]
EventType = Literal["raised", "escalated", "renotify", "acknowledged", "cleared"]

PRIORITY_RANK: dict[str, int] = {"high": 3, "medium": 2, "low": 1}


# not frozen, but never changed after construction: a frozen dataclass's __init__ costs
# about 0.3 µs a field, several µs a reading on the ingest path (docs/performance.md, round 8)
@dataclass(slots=True)
class Reading:
    """One validated message from a box, with the times the gateway derived.

    ``measured_ms`` is the wall time the reading was taken (device time when
    the box clock was synced, else boot time + uptime); ``received_ms`` is the
    gateway's wall clock on receipt.  ``historical`` readings were replayed
    from a buffer and must never raise a live alarm.
    """

    site: str
    chair: str
    kind: MessageKind
    fields: Mapping[str, Any]
    measured_ms: int
    received_ms: int
    historical: bool = False
    time_estimated: bool = False

    @property
    def seq(self) -> int:
        return int(self.fields.get("seq", -1))

    @property
    def boot(self) -> int:
        return int(self.fields.get("boot", -1))


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """An alarm state change, published on MQTT and stored in ``alarm_events``."""

    id: str
    site: str
    chair: str
    alarm: str
    priority: Priority
    kind: AlarmKind
    event: EventType
    t: int
    text: str
    value: float | None = None
    limit: float | None = None
    by: str | None = None
    drill: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    inhibits: tuple[str, ...] = ()
    """the alarms this alarm inhibits (profile ``inhibits``): one episode, one thread"""
    inhibited_by: str | None = None
    """the announced alarm of the same chair that inhibits this one, if any"""

    @property
    def key(self) -> str:
        """Dedup key: one page thread per site, chair and condition."""
        return f"{self.site}/{self.chair}/{self.alarm}"

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "v": 1,
            "id": self.id,
            "key": self.key,
            "site": self.site,
            "chair": self.chair,
            "alarm": self.alarm,
            "priority": self.priority,
            "kind": self.kind,
            "event": self.event,
            "t": self.t,
            "text": self.text,
            "value": self.value,
            "limit": self.limit,
        }
        if self.by is not None:
            payload["by"] = self.by
        if self.drill:
            payload["drill"] = 1
        if self.inhibits:
            payload["inhibits"] = list(self.inhibits)
        if self.inhibited_by is not None:
            payload["inhibited_by"] = self.inhibited_by
        return payload


class AlarmStage(Protocol):
    """What the gateway needs from an alarm engine (the walking skeleton's
    thresholds and the full engine both implement it)."""

    def on_reading(self, reading: Reading, now_ms: int) -> list[AlarmEvent]: ...

    def tick(self, now_ms: int) -> list[AlarmEvent]: ...

    def active(self, site: str, chair: str) -> list[dict[str, Any]]: ...
