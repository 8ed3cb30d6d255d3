"""``chairside.metrics``: the gateway's and the pager's Prometheus metrics.

The scrape must keep working across the move from the hand-written registry
to ``prometheus_client`` (issue 13): ``data/metrics_before_*.prom`` hold what
the hand-written registry (``chairside/metrics.py`` as of main 887d6d5)
rendered for the same calls, ``fresh()`` and ``exercise()`` below: every
``metrics.inc``, ``set`` and ``observe`` call site in the gateway's and the
pager's modules, read from their source (as of main b52a13c).  The new output
must carry the same metric names, types, HELP texts, label names, label
values and sample values; metrics added later may come on top.  Known
differences of the text format, as documented in docs/paging.md: values
print as floats (``1.0`` for ``1``), histogram ``le`` labels as
prometheus_client writes them (``le="1.0"`` for ``le="1"``).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest

from chairside.health import describe_gateway_metrics as describe_gateway
from chairside.metrics import Metrics
from chairside.pager.service import _describe_metrics as describe_pager

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
PACKAGE = REPO / "gateway" / "chairside"
SOURCES = {
    # the pager and the station have registries of their own
    "gateway": sorted(p for p in PACKAGE.rglob("*.py")
                      if not {"pager", "station"} & set(p.parts) and p.name != "metrics.py"),
    "pager": sorted((PACKAGE / "pager").rglob("*.py")),
}
PREFIX = {"gateway": "chairside_gateway_", "pager": "chairside_pager_"}
_CALL = re.compile(r'\b_?metrics\.(inc|set|observe)\(\s*"(\w+)"(.*)$')
_KWARG = re.compile(r"\b(\w+)=(?!=)")
OBSERVED = (0.003, 0.02, 0.02, 0.7, 12.0)


def call_sites(service: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """(method, metric, label names) of every metrics call in a service's source."""
    found: set[tuple[str, str, tuple[str, ...]]] = set()
    for source in SOURCES[service]:
        for line in source.read_text().splitlines():
            match = _CALL.search(line)
            if match:
                method, name, rest = match.groups()
                found.add((method, name, tuple(sorted(_KWARG.findall(rest)))))
    return sorted(found)


def fresh(service: str) -> Metrics:
    m = Metrics(prefix=PREFIX[service])
    if service == "gateway":
        describe_gateway(m)
    else:
        describe_pager(m)
    return m


def exercise(service: str) -> Metrics:
    """A service's metrics after a fixed set of updates through every call site."""
    m = fresh(service)
    for method, name, labels in call_sites(service):
        label_sets = [{k: f"{k}-{v}" for k in labels} for v in ("a", "b")] if labels else [{}]
        for i, kw in enumerate(label_sets, start=1):
            if method == "inc":
                m.inc(name, **kw)
                m.inc(name, i, **kw)
            elif method == "set":
                m.set(name, 2.5 * i, **kw)
            else:
                for value in OBSERVED:
                    m.observe(name, value, **kw)
    return m


def families(text: str) -> dict[str, Any]:
    """name → (type, help, {(sample name, labels): value}), ``le`` compared as a number."""
    help_: dict[str, str] = {}
    type_: dict[str, str] = {}
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    family = ""
    for line in text.splitlines():
        if line.startswith("# HELP "):
            family, _, doc = line[7:].partition(" ")
            help_[family] = doc
        elif line.startswith("# TYPE "):
            family, _, kind = line[7:].partition(" ")
            type_[family] = kind
            samples[family] = {}
        elif line:
            head, _, value = line.rpartition(" ")
            name, _, label_text = head.partition("{")
            labels = tuple(sorted(
                (k, str(float(v)) if k == "le" and v != "+Inf" else v)
                for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', label_text)
            ))
            assert name.startswith(family), f"{name} outside its family {family}"
            samples[family][(name, labels)] = float(value)
    assert help_.keys() == type_.keys()
    return {name: (type_[name], help_[name], samples[name]) for name in type_}


@pytest.mark.parametrize("service", ["gateway", "pager"])
def test_call_sites_are_found(service: str) -> None:
    sites = call_sites(service)
    assert len(sites) >= 8
    if service == "gateway":
        assert ("inc", "rejected", ("reason",)) in sites and ("observe", "write_seconds", ()) in sites
    else:
        assert ("inc", "pages_sent", ("action", "channel")) in sites


@pytest.mark.parametrize("state", ["fresh", "exercised"])
@pytest.mark.parametrize("service", ["gateway", "pager"])
def test_exposition_matches_the_hand_written_registry(service: str, state: str) -> None:
    m = fresh(service) if state == "fresh" else exercise(service)
    before = (DATA / f"metrics_before_{service}_{state}.prom").read_text()
    now = m.render()
    old, new = families(before), families(now)
    for name, family in old.items():  # metrics added later may come on top
        assert new.get(name) == family, name
    # HELP and TYPE lines are byte for byte the same
    assert {x for x in before.splitlines() if x.startswith("#")} <= set(now.splitlines())
    assert "_created" not in now


def test_counters_gauges_histograms_and_get() -> None:
    m = Metrics(prefix="t_")
    m.describe("hits", "counter", "hits by way")
    assert m.get("hits") == 0 and m.total("hits") == 0
    m.inc("hits", way="a")
    m.inc("hits", 2, way="b")
    m.inc("hits", way="a")
    assert m.get("hits", way="a") == 2 and m.get("hits", way="b") == 2 and m.total("hits") == 4
    assert m.get("hits", way="zzz") == 0
    m.set("depth", 7)
    m.set("depth", 3)
    assert m.get("depth") == 3
    m.observe("latency", 0.2)
    m.observe("latency", 3.0)
    assert m.get("latency") == 2
    text = m.render()
    assert '# TYPE t_hits_total counter' in text and 't_hits_total{way="a"} 2.0' in text
    assert "\nt_hits_total 0" not in text, "the described placeholder goes once labelled"
    assert "# HELP t_depth depth" in text, "undescribed metrics get their name as help"
    assert 't_latency_bucket{le="0.25"} 1.0' in text and "t_latency_count 2.0" in text
    assert "t_latency_sum 3.2" in text


def test_type_and_label_mismatches_are_refused() -> None:
    m = Metrics(prefix="t_")
    m.inc("hits", way="a")
    with pytest.raises(ValueError, match="counter"):
        m.set("hits", 1, way="a")
    with pytest.raises(ValueError, match="labels"):
        m.inc("hits", other="x")
    m.describe("level", "gauge", "a level")
    with pytest.raises(ValueError, match="gauge"):
        m.inc("level")


def test_each_instance_has_its_own_registry() -> None:
    """Several gateways (and a pager) run in one test process."""
    a, b = Metrics(), Metrics()
    a.inc("messages_in")
    a.describe("rejected", "counter", "x")
    b.describe("rejected", "counter", "x")
    assert a.get("messages_in") == 1 and b.get("messages_in") == 0
    assert "chairside_gateway_messages_in_total 1.0" in a.render()
    assert "messages_in" not in b.render()


def test_concurrent_increments_are_all_counted() -> None:
    m = Metrics()

    def work(reason: str) -> None:
        for _ in range(5000):
            m.inc("messages_in")
            m.inc("rejected", reason=reason)

    threads = [threading.Thread(target=work, args=(f"r{i % 2}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.get("messages_in") == 20_000 and m.total("rejected") == 20_000
    assert m.get("rejected", reason="r0") == 10_000

