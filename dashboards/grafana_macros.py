"""Expand Grafana's InfluxQL macros the way the InfluxDB data source does.

No Grafana server can run in CI, so the tests prove the dashboards by
expanding each stored query here and running it against a real ``influxd``.
This follows the InfluxDB data source's documented interpolation:

* ``$timeFilter`` / ``${timeFilter}`` → ``time >= now() - 15m`` for a relative
  range ending now, or ``time >= <from>ms and time <= <to>ms`` for an absolute
  range (epoch milliseconds);
* ``$__interval`` → a duration such as ``10s``; ``$__interval_ms`` → an integer;
* ``$var``, ``${var}``, ``[[var]]`` → the variable's value; a multi-value or
  include-all variable is regex-escaped and, with several values, joined as
  ``(a|b)``, so ``"chair" =~ /^$chair$/`` matches exactly the selected chairs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

_REGEX_SPECIALS = re.compile(r"([\\/^$.|?*+()\[\]{}])")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def escape_regex(value: str) -> str:
    """Escape a value for an InfluxQL ``/regex/`` literal."""
    return _REGEX_SPECIALS.sub(r"\\\1", value)


def duration_ms(text: str) -> int:
    """``"15m"`` → 900000; raises ``ValueError`` naming the bad text."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a Grafana duration: {text!r}")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


@dataclass(frozen=True)
class TimeRange:
    """A dashboard or panel time range.

    ``relative`` is a lookback such as ``"15m"`` ending now; otherwise
    ``from_ms``/``to_ms`` give an absolute range in epoch milliseconds.
    """

    relative: str | None = "15m"
    from_ms: int | None = None
    to_ms: int | None = None

    @classmethod
    def absolute(cls, from_ms: int, to_ms: int) -> TimeRange:
        return cls(relative=None, from_ms=from_ms, to_ms=to_ms)

    def time_filter(self) -> str:
        if self.relative is not None:
            duration_ms(self.relative)  # validate
            return f"time >= now() - {self.relative}"
        if self.from_ms is None or self.to_ms is None:
            raise ValueError("absolute TimeRange needs from_ms and to_ms")
        return f"time >= {self.from_ms}ms and time <= {self.to_ms}ms"


@dataclass(frozen=True)
class Variable:
    """A template variable's current selection."""

    values: Sequence[str]
    multi: bool = True
    include_all: bool = True

    def render(self) -> str:
        if not self.multi and not self.include_all:
            return self.values[0] if self.values else ""
        escaped = [escape_regex(v) for v in self.values]
        if len(escaped) == 1:
            return escaped[0]
        return "(" + "|".join(escaped) + ")"


@dataclass(frozen=True)
class Scope:
    """Everything a query expansion needs: time range, interval, variables."""

    time_range: TimeRange = field(default_factory=TimeRange)
    interval: str = "10s"
    variables: Mapping[str, Variable] = field(default_factory=dict)


def expand(query: str, scope: Scope) -> str:
    """Return ``query`` with every Grafana macro and variable replaced.

    Raises ``KeyError`` for a variable the scope does not define, so a test
    catches a dashboard that references an undefined ``$variable``.
    """
    builtins = {
        "timeFilter": scope.time_range.time_filter(),
        "__interval": scope.interval,
        "__interval_ms": str(duration_ms(scope.interval)),
    }

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name in builtins:
            return builtins[name]
        if name in scope.variables:
            return scope.variables[name].render()
        raise KeyError(f"undefined template variable ${name} in: {query}")

    return _VARIABLE.sub(replace, query)


def variable_names(query: str) -> set[str]:
    """All ``$name`` / ``${name}`` / ``[[name]]`` references in a query."""
    names: set[str] = set()
    for match in _VARIABLE.finditer(query):
        names.add(match.group(1) or match.group(2) or match.group(3))
    return names


BUILTIN_NAMES = frozenset({"timeFilter", "__interval", "__interval_ms"})
