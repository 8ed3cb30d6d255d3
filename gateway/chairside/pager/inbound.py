"""The pager's inbound messages: payloads decoded and alarm events parsed, never raising.

Everything a broker delivers to the pager passes :func:`decode_payload`
(size, UTF-8, JSON nesting, numbers that overflow) and then
:func:`parse_event` or the page-ack parser: a bad message becomes a reason,
never an exception in the network loop.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from chairside import contract
from chairside.jsondepth import too_deep

from .escalation import EventIn

PRIORITIES = ("high", "medium", "low")
KINDS = ("physiological", "technical")
EVENTS = ("raised", "escalated", "renotify", "acknowledged", "cleared")
BY_MAX = 64
"""longest ``by`` accepted (the same rule as the gateway's staff messages)"""
PAYLOAD_MAX = 16384
INHIBITS_MAX = 16
T_MAX_MS = 2**53


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text}: number out of range")


def decode_payload(raw: bytes) -> dict[str, Any] | str:
    """An MQTT payload as a JSON object, or the reason it is refused.  Never
    raises: nesting too deep (``RecursionError``), numbers that overflow
    and anything else unexpected become a reason."""
    try:
        if len(raw) > PAYLOAD_MAX:
            return f"payload larger than {PAYLOAD_MAX} bytes"
        if too_deep(raw):
            return "JSON nested too deeply"
        doc = json.loads(
            raw.decode("utf-8"), parse_float=_finite, parse_constant=_no_constant
        )
    except RecursionError:
        return "JSON nested too deeply"
    except UnicodeDecodeError:
        return "not UTF-8"
    except ValueError as exc:  # JSONDecodeError, out-of-range numbers, huge ints
        return "number out of range" if "out of range" in str(exc) else "not JSON"
    except Exception as exc:  # whatever it is, refuse the message
        return f"undecodable ({type(exc).__name__})"
    if not isinstance(doc, dict):
        return "not a JSON object"
    return doc


def clean_text(value: object, max_len: int) -> str | None:
    """``value`` if it is a non-blank string of printable, UTF-8-encodable
    characters of at most ``max_len``, stripped; otherwise None."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > max_len:
        return None
    if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) <= 0xDFFF for c in text):
        return None
    return text


def printable(text: str) -> bool:
    return clean_text(text, len(text) or 1) == text


def is_id(value: object) -> bool:
    return isinstance(value, str) and contract.id_regex().fullmatch(value) is not None


def parse_event(topic: str, payload: Mapping[str, Any]) -> EventIn | str:
    """An alarm event from the engine, or the reason it is rejected.
    ``inhibits``/``inhibited_by`` are optional (older gateways omit them)."""
    parts = topic.split("/")
    if payload.get("v") != 1 or isinstance(payload.get("v"), bool):
        return "unsupported version"
    if clean_text(payload.get("id"), 200) is None:
        return "missing or bad field id"
    for name in ("site", "chair", "alarm"):
        if not is_id(payload.get(name)):
            return f"missing or bad field {name}"
    text = payload.get("text")
    if not isinstance(text, str) or clean_text(text[:200], 200) is None:
        return "missing or bad field text"
    if payload.get("priority") not in PRIORITIES:
        return "bad field priority"
    if payload.get("kind") not in KINDS:
        return "bad field kind"
    if payload.get("event") not in EVENTS:
        return "bad field event"
    t = payload.get("t")
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < T_MAX_MS:
        return "bad field t"
    site, chair, alarm = payload["site"], payload["chair"], payload["alarm"]
    if len(parts) == 5 and (parts[2], parts[3]) != (site, chair):
        return "topic site/chair differ from the payload"
    key = f"{site}/{chair}/{alarm}"
    if payload.get("key", key) != key:
        return "key is not site/chair/alarm"
    inhibits = payload.get("inhibits", [])
    if inhibits is None:
        inhibits = []
    if (
        not isinstance(inhibits, list)
        or len(inhibits) > INHIBITS_MAX
        or not all(is_id(x) and x != alarm for x in inhibits)
    ):
        return "bad field inhibits"
    inhibited_by = payload.get("inhibited_by")
    if inhibited_by is not None and (not is_id(inhibited_by) or inhibited_by == alarm):
        return "bad field inhibited_by"
    by = payload.get("by")
    return EventIn(
        key=key,
        site=site,
        chair=chair,
        alarm=alarm,
        priority=payload["priority"],
        kind=payload["kind"],
        event=payload["event"],
        t=t,
        text=clean_text(text[:200], 200) or alarm,
        by=clean_text(by[:BY_MAX], BY_MAX) if isinstance(by, str) else None,
        drill=payload.get("drill") == 1,
        inhibits=tuple(dict.fromkeys(inhibits)),
        inhibited_by=inhibited_by,
    )
