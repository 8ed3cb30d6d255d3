"""The `chairside` command and the README's demo, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from chairside.cli import SUBCOMMANDS, build_parser


def test_every_subcommand_is_wired() -> None:
    parser = build_parser()
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0


MARKER = "CHAIRSIDE_TEST_RUN"


def marked_processes(value: str) -> list[int]:
    """Pids of processes whose environment holds ``CHAIRSIDE_TEST_RUN=value``.

    Every process a test starts inherits its environment (Mosquitto and
    influxd too, though they run in sessions of their own and are re-parented
    once the demo exits), so this finds exactly one run's descendants and
    never another engineer's demo on the same machine (Linux ``/proc``).
    """
    needle = f"{MARKER}={value}".encode()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def test_marked_processes_finds_only_its_own_run() -> None:
    run_id, other = uuid.uuid4().hex, uuid.uuid4().hex
    mine = subprocess.Popen(["sleep", "30"], env=dict(os.environ, **{MARKER: run_id}))
    theirs = subprocess.Popen(["sleep", "30"], env=dict(os.environ, **{MARKER: other}))
    try:
        assert marked_processes(run_id) == [mine.pid]
    finally:
        for proc in (mine, theirs):
            proc.kill()
            proc.wait(timeout=10)
    assert marked_processes(run_id) == []


@pytest.mark.services
def test_demo_runs_four_chairs_and_stops_everything(tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex
    # another demo on this machine (or anything named like one) is not ours
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "chairside-demo-decoy"])
    try:
        result = subprocess.run(
            [sys.executable, "-m", "chairside.cli", "demo", "--duration", "8", "--speed", "5"],
            capture_output=True, text=True, timeout=90,
            env=dict(os.environ, TMPDIR=str(tmp_path), **{MARKER: run_id}),
        )
        leftovers = marked_processes(run_id)
    finally:
        decoy.kill()
        decoy.wait(timeout=10)
    assert result.returncode == 0, result.stderr[-2000:]
    last_screen = result.stdout.split("Chairside demo")[-1]
    for chair in ("1", "2", "3", "4"):
        assert f"\n{chair}     online" in last_screen, last_screen
    assert "readings stored in InfluxDB: 0" not in last_screen
    assert "everything it started is stopped" in result.stdout
    assert leftovers == [], f"processes the demo left running: {leftovers}"
    assert list(tmp_path.iterdir()) == [], "the demo removes its data folder"
