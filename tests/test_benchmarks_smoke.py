"""Smoke test of benchmarks/ingest.py: it runs end to end on a tiny load,
prints its table and loses nothing.  No performance assertions (figures come
from running the benchmark itself; see docs/performance.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.mark.timeout(60)
def test_ingest_benchmark_tiny_run() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "ingest.py"), "--chairs", "5", "--rate", "1", "--seconds", "3"],
        capture_output=True,
        text=True,
        timeout=55,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["chairs"])
    assert "stored/s" in lines[header] and "lost" in lines[header]
    columns = lines[header].split("  ")
    columns = [c.strip() for c in columns if c.strip()]
    row = [c.strip() for c in lines[header + 2].split("  ") if c.strip()]
    assert len(row) == len(columns), (columns, row)
    values = dict(zip(columns, row, strict=True))
    assert values["chairs"] == "5"
    assert values["published"] == "15"
    assert values["lost"] == "0", proc.stdout
    assert "15 stored of 15" in proc.stdout
