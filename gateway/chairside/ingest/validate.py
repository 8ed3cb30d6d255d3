"""Validate one box message against ``contract.json``.

``validate(topic, payload)`` never raises: it returns :class:`Accepted` with
the decoded fields or :class:`Rejected` with a ``reason`` from the small fixed
set :data:`REASONS` (used as a counter label) and a human ``detail`` naming
the field and value.  Every rule comes from the contract's field specs
(type, required, nullable, min, max, max_len, enum values).  A string must
also be storable and printable as text: valid Unicode that encodes as UTF-8
(no lone surrogates such as ``"\\ud800"``, which JSON escapes can produce) and
no control characters (C0, DEL, C1); else ``bad_string``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any, Final

from chairside import contract
from chairside.jsondepth import MAX_DEPTH, too_deep
from chairside.model import MessageKind

REASONS: Final[tuple[str, ...]] = (
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "bad_topic",
    "unknown_kind",
    "schema_version",
    "missing_field",
    "bad_type",
    "out_of_range",
    "bad_enum",
    "unknown_field",
    "bad_string",
)

BAD_TEXT: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""What a text field must not contain: control characters (C0, DEL, C1) and
surrogate code points (a lone surrogate cannot be encoded as UTF-8)."""


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text (``"lone surrogate U+D800 at 0"``,
    ``"control character U+000A at 3"``), or None."""
    bad = BAD_TEXT.search(value)
    if bad is None:
        return None
    char = bad.group()
    what = "lone surrogate" if "\ud800" <= char <= "\udfff" else "control character"
    return f"{what} U+{ord(char):04X} at {bad.start()}"

_DETAIL_MAX = 120


# not frozen, but never changed after construction: a frozen dataclass's __init__ costs
# about 0.3 µs a field, several µs a reading on the ingest path (docs/performance.md, round 8)
@dataclass(slots=True)
class Accepted:
    """A message that satisfies the contract."""

    topic: str
    site: str
    chair: str
    kind: MessageKind
    fields: Mapping[str, Any]
    last_will: bool = False
    ignored: tuple[str, ...] = ()
    """Unknown field names dropped from ``fields`` (only when not strict)."""

    @property
    def historical(self) -> bool:
        return self.fields.get("h") == 1


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that breaks the contract; ``reason`` is one of :data:`REASONS`."""

    topic: str
    reason: str
    detail: str = ""
    site: str | None = None
    chair: str | None = None
    kind: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _reject(
    topic: str,
    reason: str,
    detail: str,
    site: str | None = None,
    chair: str | None = None,
    kind: str | None = None,
) -> Rejected:
    return Rejected(topic, reason, detail[:_DETAIL_MAX], site, chair, kind)


@cache
def _max_payload_bytes() -> int:
    return contract.max_payload_bytes()


@cache
def _schema_version() -> int:
    return contract.schema_version()


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)
"""one decoder for every message (``json.loads`` with an option builds a new one per call)"""


def check_field(name: str, spec: Mapping[str, Any], value: Any) -> tuple[str, str] | None:
    """``(reason, detail)`` if ``value`` breaks ``spec``, else ``None``."""
    if value is None:
        if spec.get("nullable", False):
            return None
        return "bad_type", f"{name}=null not allowed"
    kind = spec.get("type")
    if kind == "int":
        # bool is a subclass of int in Python; JSON true must not pass as 1.
        if type(value) is not int:
            return "bad_type", f"{name}={_short(value)} is not an integer"
    elif kind == "float":
        if type(value) not in (int, float) or not math.isfinite(value):
            return "bad_type", f"{name}={_short(value)} is not a number"
    elif kind == "str":
        if not isinstance(value, str):
            return "bad_type", f"{name}={_short(value)} is not a string"
        max_len = spec.get("max_len")
        if max_len is not None and len(value) > int(max_len):
            return "out_of_range", f"{name} longer than {max_len} characters"
        problem = text_problem(value)
        if problem is not None:
            return "bad_string", f"{name}: {problem}"
        return None
    elif kind == "enum":
        if not isinstance(value, str):
            return "bad_type", f"{name}={_short(value)} is not a string"
        if value not in spec.get("values", ()):
            return "bad_enum", f"{name}={_short(value)} not in {list(spec.get('values', ()))}"
        return None
    elif kind == "list":
        if not isinstance(value, list):
            return "bad_type", f"{name}={_short(value)} is not a list"
        return None
    else:
        return "bad_type", f"{name}: contract type {kind!r} unsupported"
    low, high = spec.get("min"), spec.get("max")
    if low is not None and value < low:
        return "out_of_range", f"{name}={_short(value)} < min {low}"
    if high is not None and value > high:
        return "out_of_range", f"{name}={_short(value)} > max {high}"
    return None


_Compiled = tuple[tuple[str, Mapping[str, Any], bool, bool, Any, Any], ...]
"""per field: (name, spec, required, fast_int, min, max); fast_int = plain int range check"""


@cache
def _compiled(kind: str, last_will: bool) -> tuple[dict[str, Mapping[str, Any]], _Compiled]:
    """The merged common + message field specs of ``kind`` (cached), as a dict and compiled."""
    specs: dict[str, Mapping[str, Any]] = {}
    for name, spec in contract.common_fields().items():
        # The will carries no common fields except v; any it has must be valid.
        optional = last_will and name != "v"
        specs[name] = {**spec, "required": False} if optional else spec
    specs.update(contract.message_fields(kind))
    compiled = tuple(
        (
            name,
            spec,
            bool(spec.get("required", False)),
            spec.get("type") == "int" and not spec.get("nullable", False),
            spec.get("min"),
            spec.get("max"),
        )
        for name, spec in specs.items()
    )
    return specs, compiled


def _check_fields(msg: Mapping[str, Any], compiled: _Compiled) -> tuple[str, str] | None:
    for name, spec, required, fast_int, low, high in compiled:
        if name not in msg:
            if required:
                return "missing_field", name
            continue
        value = msg[name]
        if (
            fast_int
            and type(value) is int
            and (low is None or value >= low)
            and (high is None or value <= high)
        ):
            continue  # the common case, decided without check_field
        problem = check_field(name, spec, value)
        if problem is not None:
            return problem
    return None


@lru_cache(maxsize=8192)
def _parse_topic(topic: str) -> tuple[str, str, MessageKind] | None:
    """``contract.parse_topic``, remembered per topic string (a fixed set per clinic)."""
    return contract.parse_topic(topic)


def _is_last_will(kind: str, msg: Mapping[str, Any]) -> bool:
    # The will is {"v":1,"state":"offline"}: no common fields at all.
    return kind == "status" and msg.get("state") == "offline" and "seq" not in msg


def validate(
    topic: str, payload: bytes | bytearray, *, strict: bool = False
) -> Accepted | Rejected:
    """Check ``payload`` received on ``topic``; never raises.

    With ``strict`` an unknown field rejects the message (``unknown_field``);
    otherwise unknown fields are dropped and listed in ``Accepted.ignored``.
    """
    limit = _max_payload_bytes()
    if len(payload) > limit:
        return _reject(topic, "too_large", f"{len(payload)} bytes > {limit}")

    parsed = _parse_topic(topic)
    if parsed is None:
        parts = topic.split("/")
        root = contract.topic_root().split("/")
        ids = contract.id_regex()
        if (
            len(parts) == len(root) + 3
            and parts[: len(root)] == root
            and ids.fullmatch(parts[len(root)])
            and ids.fullmatch(parts[len(root) + 1])
        ):
            return _reject(topic, "unknown_kind", f"kind {_short(parts[-1])}")
        return _reject(topic, "bad_topic", _short(topic))
    site, chair, kind = parsed
    where = (site, chair, kind)

    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _reject(topic, "not_utf8", f"byte {exc.start}", *where)
    if too_deep(payload):
        return _reject(topic, "not_json", f"nested deeper than {MAX_DEPTH} levels", *where)
    try:
        msg = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        return _reject(topic, "not_json", str(exc), *where)
    if not isinstance(msg, dict):
        return _reject(topic, "not_object", type(msg).__name__, *where)

    if "v" not in msg:
        return _reject(topic, "missing_field", "v", *where)
    version = msg["v"]
    if type(version) is not int or version != _schema_version():
        return _reject(topic, "schema_version", f"v={_short(version)}", *where)

    last_will = _is_last_will(kind, msg)
    specs, compiled = _compiled(kind, last_will)

    unknown: tuple[str, ...] = ()
    if not specs.keys() >= msg.keys():
        unknown = tuple(sorted(name for name in msg if name not in specs))
    if unknown and strict:
        return _reject(topic, "unknown_field", ",".join(unknown), *where)

    problem = _check_fields(msg, compiled)
    if problem is not None:
        return _reject(topic, problem[0], problem[1], *where)

    # msg is this call's own fresh dict: no copy needed unless fields are dropped
    fields = {name: value for name, value in msg.items() if name not in unknown} if unknown else msg
    return Accepted(
        topic=topic,
        site=site,
        chair=chair,
        kind=kind,
        fields=fields,
        last_will=last_will,
        ignored=unknown,
    )
