"""Thread-safe counters, gauges and histograms with Prometheus text output."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

Labels = tuple[tuple[str, str], ...]
Type = Literal["counter", "gauge", "histogram"]

DEFAULT_BUCKETS: Final[tuple[float, ...]] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


@dataclass(slots=True)
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int]
    total: float = 0.0
    n: int = 0


@dataclass(slots=True)
class _Family:
    type: Type
    help: str
    values: dict[Labels, float] = field(default_factory=dict)
    hists: dict[Labels, _Histogram] = field(default_factory=dict)


def _labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: Labels = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _fmt_value(value: float) -> str:
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


class Metrics:
    """A registry; metric names get ``prefix`` in the exposition."""

    def __init__(self, prefix: str = "chairside_gateway_") -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}

    def _family(self, name: str, kind: Type, help_text: str) -> _Family:
        fam = self._families.get(name)
        if fam is None:
            fam = _Family(kind, help_text or name.replace("_", " "))
            self._families[name] = fam
        elif fam.type != kind:
            raise ValueError(f"metric {name} is a {fam.type}, not a {kind}")
        return fam

    def describe(self, name: str, kind: Type, help_text: str) -> None:
        """Declare a metric so it is rendered (as 0) before its first update."""
        with self._lock:
            self._family(name, kind, help_text).help = help_text

    def inc(self, name: str, amount: float = 1, /, **labels: str) -> None:
        with self._lock:
            fam = self._family(name, "counter", "")
            key = _labels(labels)
            fam.values[key] = fam.values.get(key, 0.0) + amount

    def set(self, name: str, value: float, /, **labels: str) -> None:
        with self._lock:
            self._family(name, "gauge", "").values[_labels(labels)] = float(value)

    def observe(
        self,
        name: str,
        value: float,
        /,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        **labels: str,
    ) -> None:
        with self._lock:
            fam = self._family(name, "histogram", "")
            key = _labels(labels)
            hist = fam.hists.get(key)
            if hist is None:
                bounds = tuple(sorted(buckets))
                hist = _Histogram(bounds, [0] * len(bounds))
                fam.hists[key] = hist
            index = bisect.bisect_left(hist.buckets, value)
            if index < len(hist.counts):
                hist.counts[index] += 1
            hist.total += value
            hist.n += 1

    def get(self, name: str, /, **labels: str) -> float:
        """Current value of a counter or gauge (0 if never set); histogram count."""
        with self._lock:
            fam = self._families.get(name)
            if fam is None:
                return 0.0
            key = _labels(labels)
            if fam.type == "histogram":
                hist = fam.hists.get(key)
                return 0.0 if hist is None else float(hist.n)
            return fam.values.get(key, 0.0)

    def total(self, name: str) -> float:
        """Sum of a counter over all its label sets."""
        with self._lock:
            fam = self._families.get(name)
            return 0.0 if fam is None else sum(fam.values.values())

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        out: list[str] = []
        with self._lock:
            for name in sorted(self._families):
                fam = self._families[name]
                full = self.prefix + name
                if fam.type == "counter" and not full.endswith("_total"):
                    full += "_total"
                out.append(f"# HELP {full} {fam.help}")
                out.append(f"# TYPE {full} {fam.type}")
                if fam.type == "histogram":
                    for key, hist in sorted(fam.hists.items()):
                        running = 0
                        for bound, count in zip(hist.buckets, hist.counts, strict=True):
                            running += count
                            le = (("le", _fmt_value(bound)),)
                            out.append(f"{full}_bucket{_fmt_labels(key, le)} {running}")
                        inf = (("le", "+Inf"),)
                        out.append(f"{full}_bucket{_fmt_labels(key, inf)} {hist.n}")
                        out.append(f"{full}_sum{_fmt_labels(key)} {hist.total!r}")
                        out.append(f"{full}_count{_fmt_labels(key)} {hist.n}")
                    continue
                values = fam.values or {(): 0.0}
                for key, value in sorted(values.items()):
                    out.append(f"{full}{_fmt_labels(key)} {_fmt_value(value)}")
        return "\n".join(out) + "\n"
