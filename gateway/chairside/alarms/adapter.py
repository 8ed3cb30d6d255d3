"""Thin, pure glue between MQTT/InfluxDB and the alarm engine.

* ``alarm_ack`` / ``limits_set`` payloads (contract ``gateway_messages``) are
  parsed into commands or a :class:`Rejected` with a reason: bad input never
  raises out of here.
* :func:`audit_line` turns an :class:`AuditRecord` into a ``limit_audit`` line;
  :func:`alarm_event_line` (from ``chairside.store.points``) does ``alarm_events``.
* :func:`active_payload` builds the retained ``alarms/active`` message.

No MQTT client and no clock here: the gateway passes ``now_ms``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from chairside.model import AlarmEvent
from chairside.store.points import alarm_event_line

from .engine import DRILL_PREFIX, AlarmEngine
from .profile import AuditRecord, ProfileError

_point_module: Any = importlib.import_module("influxdb_client.client.write.point")
_Point: Any = _point_module.Point
_MS: Any = importlib.import_module("influxdb_client.domain.write_precision").WritePrecision.MS

MAX_PAYLOAD: Final = 1024
MAX_BY: Final = 64
MAX_REASON: Final = 200


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a command was refused: ``reason`` is a short counter key, ``detail`` names the field."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class AckCommand:
    alarm: str
    by: str


@dataclass(frozen=True, slots=True)
class LimitsCommand:
    param: str
    value: float | None
    by: str
    reason: str


def _json_object(payload: bytes | str | Mapping[str, Any]) -> Mapping[str, Any] | Rejected:
    if isinstance(payload, Mapping):
        return payload
    raw = payload.encode() if isinstance(payload, str) else payload
    if len(raw) > MAX_PAYLOAD:
        return Rejected("too_large", f"payload {len(raw)} bytes > {MAX_PAYLOAD}")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Rejected("bad_json", str(exc)[:120])
    if not isinstance(doc, dict):
        return Rejected("bad_json", "expected a JSON object")
    return doc


def _decode(payload: bytes | str | Mapping[str, Any]) -> Mapping[str, Any] | Rejected:
    """The staff message as a mapping, or why not (size, JSON, schema version)."""
    doc = _json_object(payload)
    if isinstance(doc, Rejected):
        return doc
    v = doc.get("v")
    if isinstance(v, bool) or v != 1:
        return Rejected("bad_version", f"v: expected 1, got {v!r}")
    return doc


def _who(doc: Mapping[str, Any]) -> str | Rejected:
    by = doc.get("by")
    if not isinstance(by, str) or not by.strip():
        return Rejected("bad_field", "by: expected a non-empty string")
    if len(by) > MAX_BY:
        return Rejected("bad_field", f"by: longer than {MAX_BY} characters")
    return by.strip()


def parse_ack(
    payload: bytes | str | Mapping[str, Any], known_alarms: Iterable[str] | None = None
) -> AckCommand | Rejected:
    """``{"v":1,"alarm":"spo2_low","by":"nurse kim"}`` → :class:`AckCommand`."""
    doc = _decode(payload)
    if isinstance(doc, Rejected):
        return doc
    alarm = doc.get("alarm")
    if not isinstance(alarm, str) or not alarm:
        return Rejected("bad_field", "alarm: expected a non-empty string")
    if known_alarms is not None and alarm not in set(known_alarms):
        return Rejected("unknown_alarm", f"alarm: unknown condition {alarm!r}")
    by = _who(doc)
    if isinstance(by, Rejected):
        return by
    return AckCommand(alarm=alarm, by=by)


def parse_limits_set(payload: bytes | str | Mapping[str, Any]) -> LimitsCommand | Rejected:
    """``{"v":1,"param":"spo2_low.limit","value":88,"by":"dr lee","reason":"COPD"}``.

    ``value`` is required and may be ``null`` (reset to the profile default).
    """
    doc = _decode(payload)
    if isinstance(doc, Rejected):
        return doc
    param = doc.get("param")
    if not isinstance(param, str) or not param:
        return Rejected("bad_field", "param: expected a non-empty string")
    if "value" not in doc:
        return Rejected("bad_field", "value: missing (use null to reset)")
    value = doc["value"]
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        return Rejected("bad_field", "value: expected number or null")
    by = _who(doc)
    if isinstance(by, Rejected):
        return by
    reason = doc.get("reason", "")
    if reason is None:
        reason = ""
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        return Rejected("bad_field", f"reason: expected a string of at most {MAX_REASON}")
    return LimitsCommand(
        param=param, value=None if value is None else float(value), by=by, reason=reason
    )


def handle_ack(
    engine: AlarmEngine,
    site: str,
    chair: str,
    payload: bytes | str | Mapping[str, Any],
    now_ms: int,
) -> list[AlarmEvent] | Rejected:
    """Parse an ``alarm_ack`` and apply it; an ack of a non-announced alarm is rejected."""
    cmd = parse_ack(payload, engine.profile_for(site, chair).conditions)
    if isinstance(cmd, Rejected):
        return cmd
    events = engine.acknowledge(site, chair, cmd.alarm, cmd.by, now_ms)
    if not events:
        return Rejected("not_active", f"alarm: {cmd.alarm} is not active on {site}/{chair}")
    return events


def handle_limits_set(
    engine: AlarmEngine,
    site: str,
    chair: str,
    payload: bytes | str | Mapping[str, Any],
    now_ms: int,
) -> AuditRecord | Rejected:
    """Parse a ``limits_set`` and apply it; validation errors come back as Rejected."""
    cmd = parse_limits_set(payload)
    if isinstance(cmd, Rejected):
        return cmd
    try:
        return engine.set_limit(site, chair, cmd.param, cmd.value, cmd.by, cmd.reason, now_ms)
    except ProfileError as exc:
        return Rejected("bad_limit", str(exc)[:200])


def parse_who(payload: bytes | str | Mapping[str, Any]) -> str | Rejected:
    """``{"v":1,"by":"RN Lee"}`` (chair_standby, drill_end) → who."""
    doc = _decode(payload)
    return doc if isinstance(doc, Rejected) else _who(doc)


def handle_standby(
    engine: AlarmEngine, site: str, chair: str, payload: bytes | str | Mapping[str, Any], now_ms: int
) -> tuple[list[AlarmEvent], list[AuditRecord]] | Rejected:
    """Put a chair in standby between patients (see AlarmEngine.standby)."""
    by = parse_who(payload)
    if isinstance(by, Rejected):
        return by
    return engine.standby(site, chair, by, now_ms)


def handle_drill_end(
    engine: AlarmEngine, site: str, chair: str, payload: bytes | str | Mapping[str, Any], now_ms: int
) -> list[AlarmEvent] | Rejected:
    """Forget a drill chair (``drill-N`` only: a real chair can never be dropped this way)."""
    if not chair.startswith(DRILL_PREFIX):
        return Rejected("not_a_drill_chair", f"chair: {chair!r} does not start with {DRILL_PREFIX!r}")
    by = parse_who(payload)
    if isinstance(by, Rejected):
        return by
    return engine.forget(site, chair, now_ms)


def audit_line(record: AuditRecord) -> str:
    """The ``limit_audit`` point (tags site, chair; fields param, old, new, by, reason)."""
    point = _Point("limit_audit").tag("site", record.site).tag("chair", record.chair)
    point.field("param", record.param)
    if record.old is not None:
        point.field("old", float(record.old))
    if record.new is not None:
        point.field("new", float(record.new))
    point.field("by", record.by)
    point.field("reason", record.reason)
    point.time(record.t, _MS)
    return str(point.to_line_protocol())


def event_line(event: AlarmEvent) -> str:
    """The ``alarm_events`` point (delegates to ``chairside.store.points.alarm_event_line``)."""
    return alarm_event_line(event)


def active_payload(engine: AlarmEngine, site: str, chair: str, now_ms: int) -> dict[str, Any]:
    """The retained ``alarms/active`` message for one chair."""
    return {"v": 1, "t": now_ms, "active": engine.active(site, chair)}


def chairs_touched(events: Iterable[AlarmEvent]) -> list[tuple[str, str]]:
    """Chairs whose retained active set must be republished, in first-seen order."""
    seen: dict[tuple[str, str], None] = {}
    for event in events:
        seen.setdefault((event.site, event.chair), None)
    return list(seen)
