"""The shipped systemd units (deploy/systemd/): what ``systemd-analyze verify`` says,
and whether the ``chairside`` command lines in them are ones the CLI accepts.

``systemd-analyze verify`` runs here without systemd as PID 1 (it loads the
units into an offline manager).  It checks that the executables exist, so the
units are verified from a copy in which the install prefix's venv
(``/opt/chairside/.venv/bin/``) points at this test's venv and any other path
under ``/opt/chairside/`` at this checkout; every other line is verified as
shipped (including the units' dependencies, e.g. ``mosquitto.service`` from
Debian's package).  What it cannot show: that systemd really starts
the service as user ``chairside`` and restarts it (no systemd manager runs in
the test container).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chairside.cli import build_parser
from chairside.health import HealthServer

REPO = Path(__file__).resolve().parents[2]
UNIT_DIR = REPO / "deploy" / "systemd"
UNITS = sorted(p for p in UNIT_DIR.iterdir() if p.suffix in (".service", ".timer", ".socket", ".path"))
SERVICES = [p for p in UNITS if p.suffix == ".service"]
DROPIN_DIRS = sorted(p for p in UNIT_DIR.iterdir() if p.is_dir() and p.name.endswith(".d"))
INSTALL_PREFIX = "/opt/chairside/"
INSTALLED_BIN = INSTALL_PREFIX + ".venv/bin/"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (a key may repeat), continuation lines joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path.name}: {line!r} before any section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_units_are_shipped() -> None:
    names = {p.name for p in UNITS}
    assert {"chairside-gateway.service", "chairside-pager.service"} <= names


def test_systemd_analyze_verify_accepts_every_shipped_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (tools/setup.sh installs Debian's systemd)")
    venv_bin = Path(sys.executable).parent
    assert (venv_bin / "chairside").exists(), "the project is not installed in this venv"
    def copy(source: Path, target: Path) -> None:  # the install prefix is this checkout, its venv ours
        target.write_text(source.read_text().replace(INSTALLED_BIN, f"{venv_bin}/")
                          .replace(INSTALL_PREFIX, f"{REPO}/"))

    for unit in UNITS:
        copy(unit, tmp_path / unit.name)
    for dropins in DROPIN_DIRS:  # e.g. chairside-gateway.service.d/*.conf, read with their unit
        (tmp_path / dropins.name).mkdir()
        for conf in dropins.glob("*.conf"):
            copy(conf, tmp_path / dropins.name / conf.name)
    result = subprocess.run(
        [analyze, "verify", "--man=no", "--generators=no", *(str(tmp_path / u.name) for u in UNITS)],
        capture_output=True, text=True, timeout=60,
    )
    report = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and report == "", report


@pytest.mark.parametrize("unit", SERVICES, ids=[p.name for p in SERVICES])
def test_start_limits_are_unit_settings(unit: Path) -> None:
    """In [Service] systemd ignores them (and then gives up after 5 quick failures)."""
    sections = parse_unit(unit)
    for key in ("StartLimitIntervalSec", "StartLimitBurst"):
        assert key not in sections.get("Service", {}), f"{unit.name}: {key} belongs in [Unit]"
    if unit.name.startswith("chairside-") and sections["Service"].get("Restart") == ["always"]:
        assert sections["Unit"].get("StartLimitIntervalSec") == ["0"], f"{unit.name}: must never stop restarting"


def _chairside_argv(unit: Path) -> list[str] | None:
    exec_start = parse_unit(unit)["Service"]["ExecStart"]
    argv = shlex.split(exec_start[-1].lstrip("-@:+!"))
    if argv[0] != INSTALLED_BIN + "chairside":
        return None
    return argv[1:]


@pytest.mark.parametrize("unit", SERVICES, ids=[p.name for p in SERVICES])
def test_chairside_command_lines_parse(unit: Path) -> None:
    """Every option in a unit's ``chairside ...`` line is one the CLI knows."""
    argv = _chairside_argv(unit)
    if argv is None:
        pytest.skip(f"{unit.name} does not run chairside")
    build_parser().parse_args(argv)


def test_gateway_unit_serves_health_and_metrics_on_loopback() -> None:
    argv = _chairside_argv(UNIT_DIR / "chairside-gateway.service")
    assert argv is not None
    args = build_parser().parse_args(argv)
    assert args.metrics_port is not None, "the deployed gateway must serve /health and /metrics"
    server = HealthServer(0, lambda: (True, {}), lambda: "")  # what the gateway starts on that port
    try:
        assert server._server.server_address[0] == "127.0.0.1"
    finally:
        server.close()
