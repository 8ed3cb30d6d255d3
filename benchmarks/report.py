"""How long the session record takes: a one-hour session at 1 Hz, from InfluxDB to PDF.

    python benchmarks/report.py [--seconds 3600] [--repeat 3]

Starts a real InfluxDB, stores one session of ``--seconds`` 1 Hz oximeter
readings (the gateway's own line builders), NIBP every 5 minutes (and two
before the start for the baseline), a desaturation alarm with its
acknowledgement and clear, and a box status a minute; then times, best of
``--repeat``: ``chairside report``'s work (InfluxDB queries, figures, chart
PNG, PDF) and ``chairside export --format fhir``'s (the same queries, the
Bundle, its fhir.resources validation) in this process, and the
``chairside report`` command as a new process (Python start and the imports
of matplotlib and fpdf2 included).  The target (issue 20): a one-hour
session reports in under 5 s.  The figure belongs in docs/performance.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "gateway") not in sys.path:
    sys.path.insert(0, str(REPO / "gateway"))

from chairside.model import AlarmEvent, Reading  # noqa: E402
from chairside.record import fhir  # noqa: E402
from chairside.record.query import InfluxReader  # noqa: E402
from chairside.record.report_command import Loaded, load_session, write_report  # noqa: E402
from chairside.sim.services import InfluxDB  # noqa: E402
from chairside.store.influx import InfluxWriter  # noqa: E402
from chairside.store.points import alarm_event_line, reading_line, session_line  # noqa: E402

SITE, CHAIR = "bench", "1"
T0 = 1_790_000_000_000
TARGET_S = 5.0


def seed(writer: InfluxWriter, seconds: int) -> None:
    """One session of ``seconds`` at 1 Hz, with NIBP every 5 min, an alarm and a status a minute."""
    sid = f"{SITE}.{CHAIR}.{T0}"
    lines = [session_line(SITE, CHAIR, "start", {"session": sid, "by": "RN Lee", "ref": "ENC-1", "why": "staff"}, T0),
             session_line(SITE, CHAIR, "end", {"session": sid, "by": "RN Lee", "why": "staff"}, T0 + seconds * 1000)]
    for i in range(seconds):
        spo2 = 84 if 1200 <= i < 1230 else 97
        lines.append(reading_line(Reading(SITE, CHAIR, "vitals", {
            "spo2": spo2, "pr": 70 + i % 7, "sig": 6, "st": "ok", "seq": i, "boot": 1, "up": i * 1000, "sync": 1,
            "t": T0 + i * 1000 + 250}, T0 + i * 1000 + 250, T0 + i * 1000 + 300)) or "")
    for k in range(-2, seconds // 300 + 1):
        t = T0 + k * 300_000 + 30_000
        sys_ = 122 + max(0, min(k, 8)) * 4
        lines.append(reading_line(Reading(SITE, CHAIR, "nibp", {
            "st": "ok", "sys": sys_, "dia": 80, "map": round(80 + (sys_ - 80) / 3), "pr": 72, "seq": 100_000 + k,
            "boot": 1, "up": 0, "sync": 1, "t": t}, t, t)) or "")
        if k >= 0:
            lines.append(reading_line(Reading(SITE, CHAIR, "status", {
                "state": "online", "seq": 200_000 + k, "boot": 1, "up": 0, "sync": 1, "t": t}, t, t)) or "")
    for t, event, by in ((1200_500, "raised", None), (1215_000, "acknowledged", "RN Kim"), (1240_000, "cleared", None)):
        lines.append(alarm_event_line(AlarmEvent("bench-a", SITE, CHAIR, "spo2_critical", "high", "physiological",
                                                 event, T0 + t, "SpO2 critically low", 84, 85, by)))  # type: ignore[arg-type]
    for i in range(0, len(lines), 5000):
        writer.write(lines[i:i + 5000])


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3600, help="session length at 1 Hz")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chairside-bench-report-") as work:
        influxdb = InfluxDB(workdir=Path(work) / "influxd")
        influxdb.start()
        try:
            writer = InfluxWriter(influxdb.url, "chairside", timeout_s=30)
            writer.ensure_database()
            seed(writer, args.seconds)
            writer.close()
            reader = InfluxReader(influxdb.url, "chairside", timeout_s=30)
            now = T0 + args.seconds * 1000 + 60_000
            out = Path(work) / "out"

            def load() -> Loaded:
                loaded = load_session(reader, SITE, CHAIR, None, now)
                assert isinstance(loaded, Loaded), loaded
                return loaded

            loaded = load()
            assert loaded.figures.vitals_valid == args.seconds, loaded.figures.vitals_valid
            query_s = best(load, args.repeat)
            report_s = best(lambda: write_report(load(), out, tz=UTC, now_ms=now), args.repeat)
            export_s = best(lambda: fhir.bundle_json(*(lambda x: (x.data, x.figures))(load())), args.repeat)
            command = [sys.executable, "-m", "chairside.cli", "--log-level", "WARNING", "report", "--site", SITE,
                       "--chair", CHAIR, "--influx-url", influxdb.url, "--out", str(out)]
            command_s = best(lambda: subprocess.run(command, check=True, capture_output=True, timeout=120),
                             args.repeat)
        finally:
            influxdb.stop()
    print(f"session: {args.seconds} s at 1 Hz ({args.seconds} oximeter readings, "
          f"{loaded.figures.nibp_valid} NIBP in the session), best of {args.repeat}")
    print(f"{'step':<44}{'seconds':>8}")
    print(f"{'InfluxDB queries + figures':<44}{query_s:>8.2f}")
    print(f"{'chairside report (queries, figures, PNG, PDF)':<44}{report_s:>8.2f}")
    print(f"{'chairside export --format fhir (validated)':<44}{export_s:>8.2f}")
    print(f"{'`chairside report` command (new process)':<44}{command_s:>8.2f}")
    verdict = "met" if command_s < TARGET_S else "NOT met"
    print(f"target: a one-hour session reports in under {TARGET_S:g} s: {verdict} "
          f"({command_s:.2f} s as a command, {report_s:.2f} s of work in process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
