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


def _line(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, Any], t_ms: int
) -> str:
    """One point: tags and fields limited to the contract's names, sorted, escaped."""
    spec = _spec(measurement)
    head = [spec.prefix]
    for name, key in spec.tags:
        value = tags.get(name)
        if value:
            text = str(value).translate(_ESCAPE_KEY)
            if text.endswith("\\"):
                text += " "
            head.append(f"{key}={text}")
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
    if written == 0:
        raise ValueError(f"{measurement}: no fields to write")
    if not body:
        return ""  # only non-finite floats: Point writes nothing either
    return f"{','.join(head)} {','.join(body)} {int(t_ms)}"


def reading_line(reading: Reading) -> str | None:
    """The point for a vitals/nibp/status reading; ``None`` for kinds not stored (resp)."""
    measurement = MEASUREMENT_FOR_KIND.get(reading.kind)
    if measurement is None:
        return None
    fields: dict[str, Any] = {
        name: value for name, value in reading.fields.items() if name not in ("v", "t", "h")
    }
    fields["rx_ms"] = reading.received_ms
    if measurement == "device":
        fields["online"] = 1 if reading.fields.get("state") == "online" else 0
    else:
        fields["hist"] = reading.historical
        fields["dev_t"] = reading.fields.get("t")
    tags = {"site": reading.site, "chair": reading.chair}
    return _line(measurement, tags, fields, reading.measured_ms)


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


def reject_line(reason: str, n: int, topic: str, detail: str, t_ms: int) -> str:
    """One aggregated ``rejects`` point: ``n`` rejects for ``reason``, with a sample."""
    return _line("rejects", {"reason": reason}, {"n": n, "topic": topic, "detail": detail}, t_ms)
