"""Staff messages in the gateway: acknowledge, standby, limit change, drill end, session.

Each message on a chair's staff topic (``alarms/ack``, ``limits/set``,
``standby``, ``drill/end``, ``session``; contract.json) is applied to the alarm engine and
answered on the chair's ``staff/result`` topic (``ok`` 1 or 0 with a reason,
echoing the request ``id``), so ``chairside staff`` can tell applied from
refused.  Per-chair limits are saved atomically in the state dir and restored,
audited, after a restart.  Infusion sessions (start, end; standby ends one)
are kept by :mod:`chairside.staff.sessions`.  Site and chair ids follow the same rule as the box
topics (``contract.id_regex``): anything else is refused, never applied or saved.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from chairside import contract
from chairside.alarms import adapter
from chairside.alarms.engine import AlarmEngine
from chairside.alarms.profile import ProfileError
from chairside.jsondepth import too_deep
from chairside.metrics import Metrics
from chairside.model import AlarmEvent
from chairside.paths import atomic_write_json
from chairside.staff.sessions import SessionBook, SessionResult

log = logging.getLogger("chairside.staff.controls")

T = TypeVar("T")

_TAILS = {"alarms/ack": "alarm_ack", "limits/set": "limits_set", "standby": "chair_standby",
          "drill/end": "drill_end", "session": "chair_session"}
KINDS = tuple(_TAILS.values())
_ENDINGS = tuple(f"/{tail}" for tail in _TAILS)  # a box's topic ends otherwise: one check, no split


@dataclass(frozen=True, slots=True)
class Control(Generic[T]):
    """A staff message for a chair."""

    kind: str
    site: str
    chair: str
    payload: bytes
    token: T | None


def control_of(topic: str, payload: bytes, token: T | None) -> Control[T] | None:
    """Recognise the staff topics .../{site}/{chair}/alarms/ack, limits/set,
    standby, drill/end and session (contract.json topics); None for any other topic."""
    if not topic.endswith(_ENDINGS):
        return None
    parts = topic.split("/")
    if len(parts) not in (5, 6) or "/".join(parts[:2]) != contract.topic_root():
        return None
    kind = _TAILS.get("/".join(parts[4:]))
    if kind is None:
        return None
    return Control(kind, parts[2], parts[3], payload, token)


def standby_by(payload: bytes) -> str:
    """Who put the chair in standby (the payload was accepted, so ``by`` is valid)."""
    by = adapter.parse_who(payload)
    return "standby" if isinstance(by, adapter.Rejected) else by


class StaffControls:
    """Applies staff messages to the engine; returns the points to store."""

    def __init__(
        self,
        engine: AlarmEngine,
        metrics: Metrics,
        *,
        publish: Callable[[str, str], None],
        emit: Callable[[Sequence[AlarmEvent]], list[str]],
        publish_active: Callable[[str, str], None],
        state_dir: Path | None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self._publish = publish
        self._emit = emit
        self._publish_active = publish_active
        self._overrides_path = None if state_dir is None else state_dir / "limit_overrides.json"
        self.sessions = SessionBook(metrics, state_dir)

    def handle(self, item: Control[Any], now_ms: int) -> list[str]:
        """Apply ``item`` and answer it; the points (events, audit) to store."""
        lines: list[str] = []
        extra: dict[str, Any] = {}
        id_rule = contract.id_regex()
        if not (id_rule.fullmatch(item.site) and id_rule.fullmatch(item.chair)):
            rejected: adapter.Rejected | None = adapter.Rejected(
                "bad_id", f"site/chair id {item.site[:40]!r}/{item.chair[:40]!r} breaks the id rule")
        elif item.kind == "chair_session":
            session = self.sessions.handle(item.site, item.chair, item.payload, now_ms)
            rejected = session if isinstance(session, adapter.Rejected) else None
            if isinstance(session, SessionResult):
                lines.extend(session.lines)
                extra["session"] = session.session
        else:
            rejected = self._apply(item, now_ms, lines)
        if rejected is None:
            self._answer(item, now_ms, True, extra=extra)
        else:
            self.metrics.inc("control_rejected", reason=rejected.reason)
            self._answer(item, now_ms, False, rejected.reason, rejected.detail)
            log.warning("%s on %.40r/%.40r rejected: %s (%s)", item.kind, item.site, item.chair,
                        rejected.reason, rejected.detail)
        return lines

    def _apply(self, item: Control[Any], now: int, lines: list[str]) -> adapter.Rejected | None:
        """Apply one staff message to the engine, adding the points to store to
        ``lines``; returns the adapter's Rejected, or None when applied."""
        engine = self.engine
        if item.kind == "chair_standby":
            standby = adapter.handle_standby(engine, item.site, item.chair, item.payload, now)
            if isinstance(standby, adapter.Rejected):
                return standby
            events, records = standby
            log.warning("chair %s/%s in standby (%d limit(s) reset)", item.site, item.chair, len(records))
            lines.extend(self._emit(events))
            lines.extend(adapter.audit_line(record) for record in records)
            if records:
                self.save_overrides()
            lines.extend(self.sessions.on_standby(item.site, item.chair, standby_by(item.payload), now))
            self._publish_active(item.site, item.chair)  # empties even with no event
            return None
        if item.kind in ("alarm_ack", "drill_end"):
            handler = adapter.handle_ack if item.kind == "alarm_ack" else adapter.handle_drill_end
            result = handler(engine, item.site, item.chair, item.payload, now)
            if isinstance(result, adapter.Rejected):
                return result
            lines.extend(self._emit(result))
            if item.kind == "drill_end":
                log.warning("drill chair %s/%s forgotten", item.site, item.chair)
                self._publish_active(item.site, item.chair)
            return None
        record = adapter.handle_limits_set(engine, item.site, item.chair, item.payload, now)
        if isinstance(record, adapter.Rejected):
            return record
        log.warning("limit %s on %s/%s: %s -> %s by %s", record.param, item.site, item.chair,
                    record.old, record.new, record.by)
        self.metrics.inc("limit_changes")
        lines.append(adapter.audit_line(record))
        self.save_overrides()
        return None

    def _answer(self, item: Control[Any], now_ms: int, ok: bool, reason: str = "", detail: str = "",
                extra: dict[str, Any] | None = None) -> None:
        """Answer on the chair's staff/result topic, echoing the request's ``id``."""
        try:
            request = None if too_deep(item.payload) else json.loads(item.payload)
            request_id = request.get("id") if isinstance(request, dict) else None
        except (ValueError, RecursionError):
            request_id = None
        result: dict[str, Any] = {"v": 1, "kind": item.kind, "ok": 1 if ok else 0, "t": now_ms}
        if isinstance(request_id, str) and len(request_id) <= 36 and request_id.isprintable():
            result["id"] = request_id
        result.update(extra or {})
        if not ok:
            result["reason"] = reason
            result["detail"] = detail[:200]
        self._publish(contract.topic("control_result", item.site, item.chair),
                      json.dumps(result, separators=(",", ":")))

    # ---- per-chair limits across restarts -------------------------------------------

    def save_overrides(self) -> None:
        """Per-chair limits survive a gateway restart (written atomically)."""
        path = self._overrides_path
        if path is None:
            return
        try:
            atomic_write_json(path, self.engine.all_overrides())
        except OSError as exc:
            self.metrics.inc("persist_errors", what="limit_overrides")
            log.error("cannot save per-chair limits to %s: %s", path, exc)

    def restore_overrides(self, now_ms: int) -> list[str]:
        """Re-apply per-chair limits saved before a restart; each is audited
        (by "gateway", reason "restored after restart") so the record shows it."""
        path = self._overrides_path
        if path is None or not path.exists():
            return []
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable per-chair limits %s: %s", path, exc)
            return []
        now = now_ms
        lines: list[str] = []
        id_rule = contract.id_regex()
        for key, params in sorted(saved.items()) if isinstance(saved, dict) else []:
            site, _, chair = str(key).partition("/")
            if not (id_rule.fullmatch(site) and id_rule.fullmatch(chair)):
                log.error("ignoring saved limits of %.60r: not a valid site/chair", key)
                continue
            for param, value in sorted(params.items()) if isinstance(params, dict) else []:
                now += 1  # one ms apart: audit points of one chair must not share a timestamp
                try:
                    record = self.engine.set_limit(site, chair, param, value, "gateway",
                                                   "restored after restart", now)
                except (ProfileError, TypeError, ValueError) as exc:
                    log.error("cannot restore %s on %s: %s", param, key, exc)
                    continue
                lines.append(adapter.audit_line(record))
        if lines:
            log.warning("restored %d per-chair limit(s) from %s", len(lines), path)
        return lines
