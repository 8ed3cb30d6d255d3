"""The words of alarm events: what is wrong (with the latest value) and what a
clear means, at most ``MAX_TEXT`` characters."""

from __future__ import annotations

from typing import Final

from chairside.model import EventType

from .profile import Condition
from .slots import Chair, Slot

UNITS: Final[dict[str, str]] = {
    "spo2": "%",
    "pr": "bpm",
    "sys": "mmHg",
    "dia": "mmHg",
    "map": "mmHg",
}
MAX_TEXT: Final = 200


def event_text(chair: Chair, cond: Condition, slot: Slot, event: EventType, why: str | None = None) -> str:
    """The text of one event of ``cond`` on ``chair``."""
    body = f"{cond.text}: {why or recovery(cond, slot)}" if event == "cleared" else situation(cond, slot)
    text = f"{body} (chair {chair.chair})"
    if event == "acknowledged" and slot.acked_by:
        text = f"{text}, acknowledged by {slot.acked_by}"
    elif event == "renotify":
        text = f"still active: {text}"
    elif event == "escalated":
        text = f"escalated: {text}"
    return " ".join(text.split())[:MAX_TEXT]


_LABELS: Final[dict[str, str]] = {"spo2": "SpO2", "pr": "pulse"}
_RECOVERED: Final[dict[str, str]] = {
    "probe": "SpO2 signal back",
    "module": "module answering again",
    "nibp_error": "next NIBP measurement succeeded",
    "offline": "box back online",
    "stale": "vitals received again",
    "unsynced": "box clock synchronised",
}


def measure(name: str | None, value: float) -> str:
    unit = UNITS.get(name or "", "")
    return f"{_LABELS.get(name or '', name or '')} {value:g} {unit}".strip()


def situation(cond: Condition, slot: Slot) -> str:
    """What is wrong, with the latest value (raise, escalation, ack, renotify)."""
    if cond.check == "threshold" and slot.value is not None and slot.limit is not None:
        unit = UNITS.get(slot.field or "", "")
        now = measure(slot.field, slot.value)
        if slot.present:
            return f"{cond.text}: {now} {slot.op or ''} {slot.limit:g} {unit}"
        return f"{cond.text}: {now}, not yet recovered (limit {slot.limit:g} {unit})"
    if slot.detail:
        return f"{cond.text}: {slot.detail}"
    return cond.text


def recovery(cond: Condition, slot: Slot) -> str:
    """What a clear means: the value back, or the technical problem gone."""
    if cond.check == "threshold" and slot.value is not None and slot.limit is not None:
        unit = UNITS.get(slot.field or "", "")
        label = _LABELS.get(slot.field or "", slot.field or "")
        text = f"{label} back to {slot.value:g} {unit} (limit {slot.limit:g} {unit})"
        if slot.alt is not None:
            name, value, limit = slot.alt
            alt_unit = UNITS.get(name, "")
            text += f", {_LABELS.get(name, name)} {value:g} {alt_unit} (limit {limit:g} {alt_unit})"
        return text
    if cond.check == "afib":
        return f"no longer rapid and irregular: {slot.detail}" if slot.detail else "no longer rapid and irregular"
    return _RECOVERED.get(cond.check, "condition ended")

