"""Thin, pure glue between MQTT/InfluxDB and the alarm engine.

* ``alarm_ack`` / ``limits_set`` / ``chair_standby`` / ``drill_end`` / ``chair_session`` payloads
  (contract ``gateway_messages``) are parsed into commands or a
  :class:`Rejected` with a reason: bad input never raises out of here.  Refused:
  more than MAX_PAYLOAD bytes (``too_large``); not UTF-8, not JSON, nested
  deeper than Python's parser allows, NaN/Infinity, or not an object
  (``bad_json``); ``v`` other than 1 (``bad_version``); a text field (``by``,
  ``reason``, ``alarm``, ``param``, ``ref``, ``id``) that is not a string, too long,
  holds a control character or a lone surrogate (``bad_field``); an ``action``
  other than start/end (``bad_field``); a ``value``
  that is not a finite number, e.g. ``1e400`` (``bad_field``).
* :func:`audit_line` turns an :class:`AuditRecord` into a ``limit_audit`` line;
  :func:`alarm_event_line` (from ``chairside.store.points``) does ``alarm_events``.
* :func:`active_payload` builds the retained ``alarms/active`` message.

No MQTT client and no clock here: the gateway passes ``now_ms``.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from chairside.ingest.validate import text_problem
from chairside.jsondepth import too_deep
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
MAX_NAME: Final = 64
"""``alarm`` and ``param`` names"""
MAX_REF: Final = 64
"""a session's clinic reference (``chair_session`` ``ref``)"""
MAX_ID: Final = 36
"""the request ``id`` echoed on ``staff/result``"""


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
class SessionCommand:
    action: str
    """start or end"""
    by: str
    ref: str
    """optional clinic reference (start only; "" when absent)"""


@dataclass(frozen=True, slots=True)
class LimitsCommand:
    param: str
    value: float | None
    by: str
    reason: str


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _json_object(payload: bytes | str | Mapping[str, Any]) -> Mapping[str, Any] | Rejected:
    if isinstance(payload, Mapping):
        return payload
    try:
        raw = payload.encode() if isinstance(payload, str) else payload
    except UnicodeEncodeError as exc:
        return Rejected("bad_json", f"not encodable as UTF-8: {exc.reason} at {exc.start}")
    if len(raw) > MAX_PAYLOAD:
        return Rejected("too_large", f"payload {len(raw)} bytes > {MAX_PAYLOAD}")
    if too_deep(raw):
        return Rejected("bad_json", "nested too deeply")
    try:
        # strict UTF-8 first: json.loads(bytes) would let an encoded surrogate through
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        return Rejected("bad_json", "nested too deeply")
    except ValueError as exc:  # incl. UnicodeDecodeError and JSONDecodeError
        return Rejected("bad_json", str(exc)[:120])
    if not isinstance(doc, dict):
        return Rejected("bad_json", "expected a JSON object")
    return doc


def _text(doc: Mapping[str, Any], name: str, max_len: int, *, required: bool = True,
          default: str = "") -> str | Rejected:
    """A text field: a string of at most ``max_len`` characters, non-empty
    when ``required``, storable as UTF-8 and free of control characters."""
    value = doc.get(name)
    if value is None and not required:
        return default
    if not isinstance(value, str) or (required and not value.strip()):
        return Rejected("bad_field", f"{name}: expected a {'non-empty ' if required else ''}string")
    if len(value) > max_len:
        return Rejected("bad_field", f"{name}: longer than {max_len} characters")
    problem = text_problem(value)
    if problem is not None:
        return Rejected("bad_field", f"{name}: {problem}")
    return value


def _decode(payload: bytes | str | Mapping[str, Any]) -> Mapping[str, Any] | Rejected:
    """The staff message as a mapping, or why not (size, JSON, schema version, request id)."""
    doc = _json_object(payload)
    if isinstance(doc, Rejected):
        return doc
    v = doc.get("v")
    if isinstance(v, bool) or v != 1:
        return Rejected("bad_version", f"v: expected 1, got {str(v)[:20]!r}")
    if "id" in doc:
        request_id = _text(doc, "id", MAX_ID)
        if isinstance(request_id, Rejected):
            return request_id
    return doc


def _who(doc: Mapping[str, Any]) -> str | Rejected:
    by = _text(doc, "by", MAX_BY)
    return by if isinstance(by, Rejected) else by.strip()


def parse_ack(
    payload: bytes | str | Mapping[str, Any], known_alarms: Iterable[str] | None = None
) -> AckCommand | Rejected:
    """``{"v":1,"alarm":"spo2_low","by":"nurse kim"}`` → :class:`AckCommand`."""
    doc = _decode(payload)
    if isinstance(doc, Rejected):
        return doc
    alarm = _text(doc, "alarm", MAX_NAME)
    if isinstance(alarm, Rejected):
        return alarm
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
    param = _text(doc, "param", MAX_NAME)
    if isinstance(param, Rejected):
        return param
    if "value" not in doc:
        return Rejected("bad_field", "value: missing (use null to reset)")
    value = doc["value"]
    number: float | None = None
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return Rejected("bad_field", "value: expected number or null")
        try:
            number = float(value)  # an integer of 400 digits overflows here
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            return Rejected("bad_field", "value: not a finite number")
    by = _who(doc)
    if isinstance(by, Rejected):
        return by
    reason = _text(doc, "reason", MAX_REASON, required=False)
    if isinstance(reason, Rejected):
        return reason
    return LimitsCommand(param=param, value=number, by=by, reason=reason)


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


def parse_session(payload: bytes | str | Mapping[str, Any]) -> SessionCommand | Rejected:
    """``{"v":1,"action":"start","by":"RN Lee","ref":"ENC-1234"}`` (chair_session) →
    :class:`SessionCommand`; ``ref`` is optional and only meaningful on start."""
    doc = _decode(payload)
    if isinstance(doc, Rejected):
        return doc
    action = doc.get("action")
    if action not in ("start", "end"):
        return Rejected("bad_field", f"action: expected 'start' or 'end', got {str(action)[:20]!r}")
    by = _who(doc)
    if isinstance(by, Rejected):
        return by
    ref = _text(doc, "ref", MAX_REF, required=False)
    if isinstance(ref, Rejected):
        return ref
    return SessionCommand(action=str(action), by=by, ref=ref.strip())


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
