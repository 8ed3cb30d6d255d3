"""The `chairside` command and the README's demo, run as a user would."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chairside.cli import SUBCOMMANDS, build_parser


def test_every_subcommand_is_wired() -> None:
    parser = build_parser()
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0


@pytest.mark.services
def test_demo_runs_four_chairs_and_stops_everything() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chairside.cli", "demo", "--duration", "8", "--speed", "5"],
        capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    last_screen = result.stdout.split("Chairside demo")[-1]
    for chair in ("1", "2", "3", "4"):
        assert f"\n{chair}     online" in last_screen, last_screen
    assert "readings stored in InfluxDB: 0" not in last_screen
    assert "everything it started is stopped" in result.stdout
    leftovers = subprocess.run(["pgrep", "-f", "chairside-demo-"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""
