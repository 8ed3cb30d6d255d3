"""Refuse deeply nested JSON before decoding it.

``json.loads`` recurses once per nesting level; a message of a few
thousand ``[`` drives it to the interpreter's recursion limit.  The
``RecursionError`` is caught where messages are decoded, but reaching that
depth is harmful on its own: a garbage collection or a finaliser that runs
near the limit fails as an "unraisable" exception in whatever thread it
happens to run.  Every decoder of untrusted MQTT payloads therefore asks
:func:`too_deep` first.  No message of the contract nests more than a few
levels (docs/contract.md), so the common case costs two ``bytes.count``
calls.
"""

from __future__ import annotations

from typing import Final

MAX_DEPTH: Final = 32
"""deepest nesting of objects and arrays any decoder here accepts"""

_OPEN: Final = frozenset(b"[{")
_CLOSE: Final = frozenset(b"]}")
_QUOTE: Final = ord('"')
_BACKSLASH: Final = ord("\\")


def too_deep(raw: bytes | bytearray | str, max_depth: int = MAX_DEPTH) -> bool:
    """True if ``raw`` (JSON text) opens more than ``max_depth`` nested
    objects/arrays, brackets inside strings not counted."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return False  # not even that many brackets in all
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            if depth > max_depth:
                return True
        elif byte in _CLOSE:
            depth -= 1
    return False
