"""The `chairside` command and the README's demo, run as a user would."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from chairside.cli import SUBCOMMANDS, build_parser

# the commands the docs promise (README, docs/engineer.md), listed here and not
# taken from the implementation: each must parse --help and name a module with run()
EXPECTED_SUBCOMMANDS = ("gateway", "simulate", "demo", "pager", "drill", "staff", "report", "export", "dashboards",
                        "provision", "certs", "flash", "serial-bridge", "install", "backup", "doctor", "station")


@pytest.mark.parametrize("name", EXPECTED_SUBCOMMANDS)
def test_every_subcommand_is_wired(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: chairside {name}" in capsys.readouterr().out
    module = importlib.import_module(SUBCOMMANDS[name][0])
    assert callable(getattr(module, "run", None)), f"{name}: {module.__name__} has no run()"


def test_no_unlisted_subcommand() -> None:
    assert sorted(SUBCOMMANDS) == sorted(EXPECTED_SUBCOMMANDS)


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


def check_first_impressions(screen: str) -> None:
    """The README's promise: within 30 s of simulated time a desaturation
    alarm, a BP alarm and a page for each; the broker's and InfluxDB's ports
    and an example staff command stay on screen; nothing wider than 80
    columns; a space before the alarms column."""
    lines = screen.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert re.search(r"^Mosquitto 127\.0\.0\.1:\d+ +InfluxDB http://127\.0\.0\.1:\d+", screen, re.M), screen
    assert "chairside staff ack --site demo-clinic --mqtt-port " in screen
    header = next(line for line in lines if line.startswith("chair "))
    assert " alarms" in header and header.index("alarms") > header.index("last BP") + len("last BP")

    def first(pattern: str) -> float:
        times = [float(m.group(1)) for m in re.finditer(rf"^ *(\d+)s {pattern}", screen, re.M)]
        assert times, f"{pattern!r} not on the last screen:\n{screen}"
        return min(times)

    assert first(r"chair 2: \[raised\] SpO2 critically low") < 30
    assert first(r"chair 3: \[raised\] BP at clinic intervention point") < 30
    assert first(r"PAGE to dr-amber: HIGH demo-clinic/2: SpO2 critically low") < 30
    assert first(r"PAGE to dr-amber: HIGH demo-clinic/3: BP at clinic intervention") < 30
    rows = {line.split()[0]: line for line in lines[lines.index(header) + 1:] if line.strip()[:1].isdigit()}
    for chair, alarm in (("2", "spo2_critical(H)"), ("3", "bp_intervention(H)")):
        assert re.search(rf"\S \s*{re.escape(alarm)}", rows[chair]), rows[chair]


def test_demo_screen_fits_80_columns_and_keeps_alarms_apart() -> None:
    """The live view alone (no services): long BP cells, many alarms and long
    texts stay inside 80 columns, with a space before the alarms."""
    from chairside.sim.demo import ChairView, LiveView

    view = LiveView.__new__(LiveView)  # render only: no broker connection
    view.site, view.header, view.events, view.pages = "demo-clinic", ["ports line"], [], []
    view._lock = threading.Lock()
    view.elapsed = lambda: 12.0
    view.chairs = {
        "12": ChairView(spo2=80, pr=130, st="probe_off", bp="error 1234567", bp_at=time.monotonic() - 999,
                        state="offline", alarms=["spo2_critical(H)", "bp_intervention(H)", "nibp_failed(L)"],
                        last_seen=time.monotonic()),
        "drill-3": ChairView(bp="226/124", bp_at=time.monotonic() - 5, alarms=["x" * 60]),
    }
    view.events = ["  12s chair 12: [raised] " + "long text " * 20]
    screen = view.render(123456789)
    assert max(len(line) for line in screen.splitlines()) <= 80, screen
    (row12,) = [line for line in screen.splitlines() if line.startswith("12 ")]
    assert "error 12 999s ago " in row12 and " spo2_critical(H) +2" in row12, row12
    (drill,) = [line for line in screen.splitlines() if line.startswith("drill-")]
    assert "226/124 5s ago " in drill and drill.endswith("…")


@pytest.mark.services
def test_demo_runs_four_chairs_and_stops_everything(tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex
    # another demo on this machine (or anything named like one) is not ours
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "chairside-demo-decoy"])
    try:
        demo = subprocess.Popen(
            [sys.executable, "-m", "chairside.cli", "demo", "--duration", "8", "--speed", "5"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, TMPDIR=str(tmp_path), **{MARKER: run_id}),
        )
        assert demo.stdout is not None
        seen = []
        for line in demo.stdout:  # the first screen names the nurses' station and its demo login
            seen.append(line)
            if "nurses' station: " in line:
                url = line.split("nurses' station: ")[1].split()[0]
                with urllib.request.urlopen(f"{url}/login", timeout=5) as page:
                    assert page.status == 200 and "station" in page.read().decode().lower()
                break
        else:
            raise AssertionError("no nurses' station line: " + "".join(seen)[-2000:])
        rest, stderr = demo.communicate(timeout=90)
        result = subprocess.CompletedProcess(demo.args, demo.returncode, "".join(seen) + rest, stderr)
        leftovers = marked_processes(run_id)
    finally:
        decoy.kill()
        decoy.wait(timeout=10)
        if "demo" in locals() and demo.poll() is None:  # an assertion above failed: no stray demo
            demo.kill()
            demo.communicate(timeout=30)
    assert result.returncode == 0, result.stderr[-2000:]
    last_screen = result.stdout.split("Chairside demo")[-1]
    for chair in ("1", "2", "3", "4"):
        assert f"\n{chair}      online" in last_screen, last_screen
    assert "readings stored in InfluxDB: 0" not in last_screen
    check_first_impressions("Chairside demo" + last_screen)
    assert "everything it started is stopped" in result.stdout
    assert leftovers == [], f"processes the demo left running: {leftovers}"
    assert list(tmp_path.iterdir()) == [], "the demo removes its data folder"
