"""Turn readings, alarm events, rejects and device status into line protocol.

Measurement, tag and field names come from ``contract.json`` →
``influx.measurements``; timestamps are milliseconds.  ``None`` values are
omitted (InfluxDB has no null); Python ints are written as integers, so a
field keeps one type for its whole life.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any, Final

from chairside import contract
from chairside.model import AlarmEvent, Reading

MEASUREMENT_FOR_KIND: dict[str, str] = {"vitals": "vitals", "nibp": "nibp", "status": "device"}

# Line-protocol escaping, byte for byte what influxdb_client's Point emits
# (tests/gateway/test_points_equivalence.py compares the two on tricky values).
_ESCAPE_MEASUREMENT: Final = str.maketrans(
    {",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"}
)
_ESCAPE_KEY: Final = str.maketrans(
    {",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"}
)
_ESCAPE_STRING: Final = str.maketrans({'"': r'\"', "\\": r"\\"})


@dataclass(frozen=True, slots=True)
class _Spec:
    """One measurement's names, escaped once: ``(name, escaped)`` sorted by name."""

    prefix: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, str], ...]


@cache
def _spec(measurement: str) -> _Spec:
    spec = contract.measurement(measurement)
    return _Spec(
        prefix=measurement.translate(_ESCAPE_MEASUREMENT),
        tags=tuple((n, n.translate(_ESCAPE_KEY)) for n in sorted(set(spec["tags"]))),
        fields=tuple((n, n.translate(_ESCAPE_KEY)) for n in sorted(set(spec["fields"]))),
    )


def _field_text(key: str, value: Any) -> str | None:
    """``key=value`` as Point writes it; ``None`` for a non-finite float (Point skips it)."""
    cls = value.__class__
    if cls is int:  # the common cases first, by exact type (bool and subclasses below)
        return f"{key}={value}i"
    if cls is str:
        if '"' in value or "\\" in value:
            value = value.translate(_ESCAPE_STRING)
        return f'{key}="{value}"'
    if isinstance(value, float | Decimal):
        if not math.isfinite(value):
            return None
        text = str(value)
        if text.endswith(".0"):
            text = text[:-2]
        return f"{key}={text}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{key}={value}i"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, str):
        return f'{key}="{value.translate(_ESCAPE_STRING)}"'
    raise ValueError(f'Type: "{type(value)}" of field: "{key}" is not supported.')


def _head(spec: _Spec, tags: Mapping[str, str]) -> str:
    """``measurement,tag=value,...``: the non-empty tags, sorted, escaped."""
    head = [spec.prefix]
    for name, key in spec.tags:
        value = tags.get(name)
        if value:
            text = str(value).translate(_ESCAPE_KEY)
            if text.endswith("\\"):
                text += " "
            head.append(f"{key}={text}")
    return ",".join(head)


def _finish(measurement: str, head: str, body: list[str], written: int, t_ms: int) -> str:
    if written == 0:
        raise ValueError(f"{measurement}: no fields to write")
    if not body:
        return ""  # only non-finite floats: Point writes nothing either
    return f"{head} {','.join(body)} {int(t_ms)}"


def _line(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, Any], t_ms: int
) -> str:
    """One point: tags and fields limited to the contract's names, sorted, escaped."""
    spec = _spec(measurement)
    body: list[str] = []
    written = 0
    for name, key in spec.fields:
        value = fields.get(name)
        if value is None:
            continue
        written += 1
        pair = _field_text(key, value)
        if pair is not None:
            body.append(pair)
    return _finish(measurement, _head(spec, tags), body, written, t_ms)


# A reading's fields as stored: the message's fields except v, t and h, plus
# values the gateway derives, which win over a message field of the same name.
_FROM_MESSAGE: Final = -1
_DROPPED: Final = 0  # v, t, h: never stored under their own name
_RX_MS, _HIST, _DEV_T, _ONLINE = 1, 2, 3, 4
_DERIVED: Final[Mapping[str, Mapping[str, int]]] = {
    "device": {"rx_ms": _RX_MS, "online": _ONLINE},
    "vitals": {"rx_ms": _RX_MS, "hist": _HIST, "dev_t": _DEV_T},
    "nibp": {"rx_ms": _RX_MS, "hist": _HIST, "dev_t": _DEV_T},
}
_HEADS_MAX: Final = 65_536


@dataclass(frozen=True, slots=True)
class _ReadingPlan:
    """How to write the readings of one kind: per contract field, in order,
    where its value comes from; and the escaped ``measurement,tags`` head per
    (site, chair), which rarely changes."""

    measurement: str
    spec: _Spec
    fields: tuple[tuple[str, str, int], ...]  # (name, escaped key, _FROM_MESSAGE or a slot of _derived)
    heads: dict[tuple[str, str], str]

    def head(self, site: str, chair: str) -> str:
        found = self.heads.get((site, chair))
        if found is None:
            if len(self.heads) >= _HEADS_MAX:
                self.heads.clear()
            found = self.heads[(site, chair)] = _head(self.spec, {"site": site, "chair": chair})
        return found


@cache
def _reading_plan(kind: str) -> _ReadingPlan | None:
    measurement = MEASUREMENT_FOR_KIND.get(kind)
    if measurement is None:
        return None
    spec = _spec(measurement)
    derived = _DERIVED[measurement]

    def source(name: str) -> int:
        if name in derived:
            return derived[name]
        return _DROPPED if name in ("v", "t", "h") else _FROM_MESSAGE

    fields = tuple((name, key, source(name)) for name, key in spec.fields)
    return _ReadingPlan(measurement, spec, fields, {})


def reading_line(reading: Reading) -> str | None:
    """The point for a vitals/nibp/status reading; ``None`` for kinds not stored (resp).

    Fields: the message's except ``v``, ``t`` and ``h``; ``rx_ms`` (receipt);
    ``online`` (1/0) for status, ``hist`` and ``dev_t`` (the device time ``t``)
    for the others.  Tags: ``site``, ``chair``."""
    plan = _reading_plan(reading.kind)
    if plan is None:
        return None
    message = reading.fields
    derived = (
        None,
        reading.received_ms,
        reading.historical,
        message.get("t"),
        1 if message.get("state") == "online" else 0,
    )
    body: list[str] = []
    written = 0
    for name, key, source in plan.fields:
        value = message.get(name) if source == _FROM_MESSAGE else derived[source]
        if value is None:
            continue
        written += 1
        pair = _field_text(key, value)
        if pair is not None:
            body.append(pair)
    return _finish(plan.measurement, plan.head(reading.site, reading.chair), body, written, reading.measured_ms)


def alarm_event_line(event: AlarmEvent) -> str:
    """The ``alarm_events`` point; ``active``/``level`` may come from ``event.extra``."""
    active = event.extra.get("active", event.event != "cleared")
    level = event.extra.get("level")
    fields: dict[str, Any] = {
        "id": event.id,
        "kind": event.kind,
        "text": event.text,
        "value": None if event.value is None else float(event.value),
        "limit": None if event.limit is None else float(event.limit),
        "active": bool(active),
        "level": None if level is None else int(level),
        "by": event.by,
        "drill": event.drill,
    }
    tags = {
        "site": event.site,
        "chair": event.chair,
        "alarm": event.alarm,
        "priority": event.priority,
        "event": event.event,
    }
    return _line("alarm_events", tags, fields, event.t)


def session_line(site: str, chair: str, event: str, fields: Mapping[str, Any], t_ms: int) -> str:
    """One ``sessions`` point (tags site, chair, event start|end; fields session, by, ref, why)."""
    return _line("sessions", {"site": site, "chair": chair, "event": event}, fields, t_ms)


def reject_line(reason: str, n: int, topic: str, detail: str, t_ms: int) -> str:
    """One aggregated ``rejects`` point: ``n`` rejects for ``reason``, with a sample."""
    return _line("rejects", {"reason": reason}, {"n": n, "topic": topic, "detail": detail}, t_ms)
