"""The gateway's and the pager's Prometheus metrics, kept by ``prometheus_client``.

``Metrics`` is a thin adapter: the services name a metric and its labels at
the call (``metrics.inc("rejected", reason="schema")``), and the adapter
creates the ``prometheus_client`` ``Counter``/``Gauge``/``Histogram`` on first
use (label names from that first call), in a ``CollectorRegistry`` of its own
per instance, so several gateways in one process never share a series.
Labelled children are cached per label set: the gateway calls ``inc`` for
every message.

The exposition keeps what the hand-written registry before it served (same
names, types, HELP texts, label names; see tests/gateway/test_metrics.py):

* counters end in ``_total``; no ``_created`` series are exported;
* a metric declared with ``describe`` but not yet updated is shown as one
  unlabelled ``0`` sample (counter, gauge) or as HELP/TYPE only (histogram),
  and that sample goes once the metric has real series;
* families are sorted by name.

Differences of the text, not of the data: values are written as floats
(``1.0``, not ``1``) and histogram bounds as prometheus_client writes them
(``le="1.0"``, not ``le="1"``), which Prometheus parses to the same numbers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Final, Literal, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

Type = Literal["counter", "gauge", "histogram"]
_Key = tuple[str, tuple[tuple[str, str], ...]]
_Any = Counter | Gauge | Histogram

DEFAULT_BUCKETS: Final[tuple[float, ...]] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class _Declared:
    """Collector for metrics that were described but have no series yet."""

    def __init__(self) -> None:
        self.pending: dict[str, tuple[Type, str]] = {}  # full name -> (type, help)

    def collect(self) -> Iterable[Metric]:
        for full, (kind, help_text) in list(self.pending.items()):
            if kind == "counter":
                yield CounterMetricFamily(full, help_text, value=0)
            elif kind == "gauge":
                yield GaugeMetricFamily(full, help_text, value=0)
            else:
                yield HistogramMetricFamily(full, help_text)


class _Exposition:
    """The registry as the scrape sees it: sorted by name, without ``_created``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in sorted(self.registry.collect(), key=lambda f: f.name):
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class Metrics:
    """A registry; metric names get ``prefix`` in the exposition.

    ``registry`` is the instance's own ``prometheus_client.CollectorRegistry``;
    ``render()`` is the canonical exposition (``/metrics`` of the gateway and
    the pager).
    """

    def __init__(self, prefix: str = "chairside_gateway_") -> None:
        self.prefix = prefix
        self.registry = CollectorRegistry(auto_describe=False)
        self._declared = _Declared()
        self.registry.register(self._declared)
        self._exposition = _Exposition(self.registry)
        self._lock = threading.Lock()
        self._kinds: dict[str, Type] = {}
        self._help: dict[str, str] = {}
        self._metrics: dict[str, tuple[_Any, tuple[str, ...]]] = {}
        # label set -> child, one cache per type so a gauge is never inc()'d as a counter
        self._counters: dict[_Key, Counter] = {}
        self._gauges: dict[_Key, Gauge] = {}
        self._hists: dict[_Key, Histogram] = {}

    # ---- declaration -------------------------------------------------------

    def _check_kind(self, name: str, kind: Type) -> None:
        known = self._kinds.get(name)
        if known is not None and known != kind:
            raise ValueError(f"metric {name} is a {known}, not a {kind}")

    def describe(self, name: str, kind: Type, help_text: str) -> None:
        """Declare a metric so it is rendered (as 0) before its first update.

        The HELP text of a metric that already has series stays as it was.
        """
        with self._lock:
            self._check_kind(name, kind)
            self._kinds[name] = kind
            self._help[name] = help_text
            if name not in self._metrics:
                self._declared.pending[self.prefix + name] = (kind, help_text)

    def _metric(self, name: str, kind: Type, labels: dict[str, str], buckets: Sequence[float]) -> _Any:
        """The metric ``name`` (created on first use), checked for type and label names."""
        self._check_kind(name, kind)
        names = tuple(sorted(labels))
        found = self._metrics.get(name)
        if found is not None:
            metric, known = found
            if known != names:
                raise ValueError(f"metric {name} has labels {known}, not {names}")
            return metric
        full = self.prefix + name
        help_text = self._help.get(name) or name.replace("_", " ")
        metric_: _Any
        if kind == "counter":
            metric_ = Counter(full, help_text, names, registry=None)
        elif kind == "gauge":
            metric_ = Gauge(full, help_text, names, registry=None)
        else:
            metric_ = Histogram(full, help_text, names, registry=None, buckets=tuple(sorted(buckets)))
        self._declared.pending.pop(full, None)
        self.registry.register(metric_)
        self._kinds[name] = kind
        self._metrics[name] = (metric_, names)
        return metric_

    def _child(self, name: str, kind: Type, labels: dict[str, str], buckets: Sequence[float]) -> _Any:
        with self._lock:
            metric = self._metric(name, kind, labels, buckets)
            return metric.labels(**labels) if labels else metric

    # ---- updates (the hot path: one dict lookup when the label set is known) ----

    def inc(self, name: str, amount: float = 1, /, **labels: str) -> None:
        key = (name, tuple(labels.items()))
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = cast(Counter, self._child(name, "counter", labels, ()))
        child.inc(amount)

    def set(self, name: str, value: float, /, **labels: str) -> None:
        key = (name, tuple(labels.items()))
        child = self._gauges.get(key)
        if child is None:
            child = self._gauges[key] = cast(Gauge, self._child(name, "gauge", labels, ()))
        child.set(value)

    def observe(
        self,
        name: str,
        value: float,
        /,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        **labels: str,
    ) -> None:
        """Add ``value`` to a histogram; ``buckets`` count at its first observation only."""
        key = (name, tuple(labels.items()))
        child = self._hists.get(key)
        if child is None:
            child = self._hists[key] = cast(Histogram, self._child(name, "histogram", labels, buckets))
        child.observe(value)

    # ---- reading -----------------------------------------------------------

    def _samples(self, name: str, suffix: str) -> list[tuple[dict[str, str], float]]:
        with self._lock:
            found = self._metrics.get(name)
        if found is None:
            return []
        out: list[tuple[dict[str, str], float]] = []
        for family in found[0].collect():
            want = family.name + suffix
            out.extend((s.labels, s.value) for s in family.samples if s.name == want)
        return out

    def get(self, name: str, /, **labels: str) -> float:
        """Current value of a counter or gauge (0 if never set); histogram count."""
        suffix = {"counter": "_total", "gauge": "", "histogram": "_count"}.get(self._kinds.get(name, "gauge"), "")
        want = {k: str(v) for k, v in labels.items()}
        for sample_labels, value in self._samples(name, suffix):
            if sample_labels == want:
                return float(value)
        return 0.0

    def total(self, name: str) -> float:
        """Sum of a counter (or gauge) over all its label sets."""
        suffix = {"counter": "_total", "gauge": ""}.get(self._kinds.get(name, "histogram"))
        if suffix is None:
            return 0.0
        return float(sum(value for _, value in self._samples(name, suffix)))

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4 (``prometheus_client.generate_latest``)."""
        return generate_latest(self._exposition).decode()
