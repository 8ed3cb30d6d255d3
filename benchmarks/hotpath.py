"""Per-stage cost of the gateway's hot path, in process, no network.

    python benchmarks/hotpath.py [--chairs 1000] [--readings 50000] [--profile]

Feeds contract-exact vitals payloads (the firmware's encoders) through the
same calls the gateway makes per message -- ``validate`` → ``Timebase.stamp``
→ ``Reading`` → ``reading_line`` → ``AlarmEngine.on_reading`` → metrics
counter -- and prints microseconds per reading for each stage and in total
(best of ``--repeat`` passes).  ``--profile`` prints the top of a cProfile of
the whole loop instead.  Transport (paho, Mosquitto, HTTP) is not included:
``benchmarks/ingest.py`` measures the whole chain.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _extra in (REPO / "gateway", REPO / "firmware"):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

from chairside.alarms.engine import AlarmEngine  # noqa: E402
from chairside.ingest.timebase import Timebase  # noqa: E402
from chairside.ingest.validate import Accepted, validate  # noqa: E402
from chairside.metrics import Metrics  # noqa: E402
from chairside.model import Reading  # noqa: E402
from chairside.store.points import reading_line  # noqa: E402
from csfw import contract as fw  # noqa: E402

T0 = 1_700_000_000_000


def make_messages(chairs: int, readings: int) -> list[tuple[str, bytes, int]]:
    out = []
    for k in range(readings):
        i, seq = k % chairs, k // chairs
        t = T0 + seq * 1000 + i
        env = fw.link(fw.envelope(seq, 1, 60_000 + seq * 1000, t, True, False), seq - 1)
        payload = fw.vitals_payload(env, 96 + (k % 4), 70 + (i % 20), 7, fw.ST_OK).encode()
        out.append((fw.Topics("clinic1", f"chair{i:04d}").vitals, payload, t + 40))
    return out


def timed(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - began)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chairs", type=int, default=1000)
    parser.add_argument("--readings", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the full loop")
    args = parser.parse_args(argv)
    msgs = make_messages(args.chairs, args.readings)
    n = len(msgs)

    accepted: list[Accepted] = []
    readings: list[Reading] = []

    def stage_validate() -> None:
        accepted.clear()
        for topic, payload, _rx in msgs:
            res = validate(topic, payload)
            assert isinstance(res, Accepted)
            accepted.append(res)

    stage_validate()
    tb = Timebase(None)

    def stage_stamp() -> None:
        readings.clear()
        for acc, (_t, _p, rx) in zip(accepted, msgs, strict=True):
            st = tb.stamp(acc.site, acc.chair, acc.fields, rx, historical=acc.historical)
            readings.append(Reading(acc.site, acc.chair, acc.kind, acc.fields, st.measured_ms, rx,
                                    acc.historical, st.time_estimated))

    stage_stamp()

    def stage_points() -> None:
        for r in readings:
            reading_line(r)

    def stage_alarms() -> None:
        engine = AlarmEngine(id_prefix="bench")
        for r in readings:
            engine.on_reading(r, r.received_ms)

    metrics = Metrics()

    def stage_metrics() -> None:
        for _ in range(n):
            metrics.inc("messages_in")

    def stage_metrics_labelled() -> None:
        for _ in range(n):
            metrics.inc("rejected", reason="schema")

    def stage_metrics_observe() -> None:
        for _ in range(n):
            metrics.observe("write_seconds", 0.004)

    def full() -> None:
        engine = AlarmEngine(id_prefix="bench")
        stamp = Timebase(None)
        for topic, payload, rx in msgs:
            metrics.inc("messages_in")
            acc = validate(topic, payload)
            assert isinstance(acc, Accepted)
            st = stamp.stamp(acc.site, acc.chair, acc.fields, rx, historical=acc.historical)
            r = Reading(acc.site, acc.chair, acc.kind, acc.fields, st.measured_ms, rx,
                        acc.historical, st.time_estimated)
            reading_line(r)
            engine.on_reading(r, rx)

    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(full)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    stages = [
        ("validate", stage_validate),
        ("timestamp + Reading", stage_stamp),
        ("alarm engine", stage_alarms),
        ("line protocol", stage_points),
        ("metrics.inc", stage_metrics),
        ("metrics.inc(reason=)", stage_metrics_labelled),
        ("metrics.observe", stage_metrics_observe),
        ("all of the above", full),
    ]
    print(f"hot path: {n:,} vitals readings from {args.chairs:,} chairs, best of {args.repeat}")
    print(f"{'stage':<22}{'us/reading':>12}{'readings/s':>14}")
    for name, fn in stages:
        best = timed(fn, args.repeat)
        print(f"{name:<22}{best / n * 1e6:>12.1f}{n / best:>14,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
