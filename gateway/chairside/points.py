"""Turn readings, alarm events, rejects and device status into line protocol.

Measurement, tag and field names come from ``contract.json`` →
``influx.measurements``; timestamps are milliseconds.  ``None`` values are
omitted (InfluxDB has no null); Python ints are written as integers, so a
field keeps one type for its whole life.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from chairside import contract
from chairside.model import AlarmEvent, Reading

# influxdb-client ships partial annotations; its Point is used through Any.
_point_module: Any = importlib.import_module("influxdb_client.client.write.point")
_Point: Any = _point_module.Point
_MS: Any = importlib.import_module("influxdb_client.domain.write_precision").WritePrecision.MS

MEASUREMENT_FOR_KIND: dict[str, str] = {"vitals": "vitals", "nibp": "nibp", "status": "device"}


def _line(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, Any], t_ms: int
) -> str:
    spec = contract.measurement(measurement)
    point = _Point(measurement)
    for name in spec["tags"]:
        value = tags.get(name)
        if value:
            point.tag(name, value)
    allowed = set(spec["fields"])
    written = 0
    for name, value in fields.items():
        if value is None or name not in allowed:
            continue
        point.field(name, value)
        written += 1
    if written == 0:
        raise ValueError(f"{measurement}: no fields to write")
    point.time(t_ms, _MS)
    return str(point.to_line_protocol())


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
