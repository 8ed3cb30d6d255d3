"""Static checks for the MicroPython firmware (firmware/csfw/*.py, firmware/main.py).

    .venv/bin/python tools/fwcheck.py [--firmware DIR] [--no-mypy] [--no-ast]

(a) mypy against the official Pico W stubs (micropython-rp2-rpi-pico-w-stubs,
    pinned below, installed with ``pip install --target tools/stubs`` on first
    use).  The stubs replace the CPython standard library (custom_typeshed_dir),
    so unknown modules, misspelled attributes (``machine.WDT(...).kick()``,
    ``network.WLAN.conect``) and wrong call signatures are reported.  The
    firmware has no annotations, so mypy runs non-strict with the inference
    noise codes switched off; only "does this exist on the board" errors remain.
(b) an AST pass for CPython-only constructs that mypy (and mpy-cross) accept
    but MicroPython 1.29 rejects or runs differently.

firmware/host is CPython-only and is not checked.  Prints ``file:line: reason``
per finding and exits 1 if there are any (2 if the stubs cannot be installed).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware"
STUBS = REPO / "tools" / "stubs"
STUBS_PACKAGE = "micropython-rp2-rpi-pico-w-stubs"
STUBS_VERSION = "1.29.0.post1"  # MicroPython 1.29, same as mpy-cross and tools/mpvm

# mypy error codes that only complain about missing annotations or inferred
# types in unannotated firmware code; what is left is about names that do not
# exist on the board and calls that do not match the stubs.
MYPY_QUIET_CODES = (
    "var-annotated",
    "misc",
    "assignment",
    "union-attr",
    "arg-type",
    "return-value",
    "index",
    "operator",
    "no-redef",
    "has-type",
    "list-item",
    "dict-item",
    "override",
    "call-overload",
    "valid-type",
    "func-returns-value",
    "annotation-unchecked",
)

CPYTHON_ONLY_MODULES = {
    "__future__": "__future__ import (MicroPython has no __future__ module)",
    "typing": "typing import (not on MicroPython)",
    "typing_extensions": "typing_extensions import (not on MicroPython)",
    "dataclasses": "dataclasses import (not on MicroPython)",
    "abc": "abc import (not on MicroPython)",
    "enum": "enum import (not on MicroPython)",
    "pathlib": "pathlib import (not on MicroPython)",
    "asyncio": "asyncio import (firmware rule: one polled loop, no asyncio)",
}
# docs/architecture.md: hardware is injected; only main.py builds it
HARDWARE_MODULES = ("machine", "network", "socket", "rp2", "_thread")


def firmware_files(firmware: Path) -> list[Path]:
    files = sorted((firmware / "csfw").glob("*.py"))
    if (firmware / "main.py").exists():
        files.append(firmware / "main.py")
    return files


# ---------------------------------------------------------------- AST pass


def _fstring_debug(node: ast.JoinedStr, source: str) -> bool:
    """True for f"{x=}": the text part ends with the expression and '='."""
    values = node.values
    for i in range(len(values) - 1):
        text, fv = values[i], values[i + 1]
        if not (isinstance(text, ast.Constant) and isinstance(fv, ast.FormattedValue)):
            continue
        if not isinstance(text.value, str):
            continue
        stripped = text.value.rstrip()
        if not stripped.endswith("="):
            continue
        expr = ast.get_source_segment(source, fv.value) or ast.unparse(fv.value)
        if stripped[:-1].rstrip().endswith(expr.strip()):
            return True
    return False


def ast_findings(path: Path, display: str, is_main: bool) -> Iterator[tuple[int, str]]:
    source = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(source, str(path))
    except SyntaxError as exc:
        yield exc.lineno or 0, f"syntax error: {exc.msg}"
        return
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import | ast.ImportFrom):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                names = [alias.name for alias in node.names]
            for name in names:
                top = name.split(".")[0]
                if top in CPYTHON_ONLY_MODULES:
                    yield line, CPYTHON_ONLY_MODULES[top]
                elif top in HARDWARE_MODULES and not is_main:
                    yield line, (
                        f"import {top} outside main.py (hardware is injected; "
                        "see docs/architecture.md)"
                    )
        elif isinstance(node, ast.Match):
            yield line, "match statement (not supported by MicroPython)"
        elif isinstance(node, ast.TryStar):
            yield line, "except* (not supported by MicroPython)"
        elif isinstance(node, ast.Attribute) and node.attr in ("removeprefix", "removesuffix"):
            yield line, f"str.{node.attr} (not on MicroPython; slice instead)"
        elif isinstance(node, ast.Delete):
            for target in node.targets:
                if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Slice):
                    yield line, (
                        "del x[a:b] slice deletion (raises on a MicroPython bytearray; "
                        "copy with memoryview or keep an index)"
                    )
        elif isinstance(node, ast.JoinedStr) and _fstring_debug(node, source):
            yield line, "f-string '=' specifier (not supported by MicroPython)"
        elif isinstance(node, ast.NamedExpr):
            yield line, "walrus ':=' (avoid in firmware: not supported in comprehensions)"
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            if node.args.posonlyargs:
                yield line, "positional-only parameters '/' (not supported by MicroPython)"
        elif isinstance(node, ast.Dict) and any(k is None for k in node.keys):
            yield line, "dict unpacking {**d} (not supported by MicroPython)"
        elif isinstance(node, ast.List | ast.Tuple | ast.Set) and isinstance(node.ctx, ast.Load):
            if any(isinstance(e, ast.Starred) for e in node.elts):
                yield line, "star unpacking in a display [*a] (not supported by MicroPython)"
        elif isinstance(node, ast.Set) and any(isinstance(e, ast.Starred) for e in node.elts):
            yield line, "star unpacking in a display {*a} (not supported by MicroPython)"
        elif isinstance(node, ast.comprehension) and node.is_async:
            yield line, "async comprehension (not supported by MicroPython)"
        elif isinstance(node, ast.ClassDef):
            for kw in node.keywords:
                if kw.arg == "metaclass":
                    yield line, "metaclass= (not supported by MicroPython)"


def run_ast(firmware: Path) -> list[str]:
    out = []
    for path in firmware_files(firmware):
        display = _display(path)
        for line, reason in sorted(ast_findings(path, display, path.name == "main.py")):
            out.append(f"{display}:{line}: {reason}")
    return out


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- mypy pass


def stubs_installed(stubs: Path) -> bool:
    dist = f"{STUBS_PACKAGE.replace('-', '_')}-{STUBS_VERSION}.dist-info"
    return (stubs / dist).is_dir() and (stubs / "machine.pyi").exists()


def ensure_stubs(stubs: Path) -> None:
    if stubs_installed(stubs):
        return
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--upgrade", "--target", str(stubs), f"{STUBS_PACKAGE}=={STUBS_VERSION}",
    ]
    print(f"fwcheck: installing {STUBS_PACKAGE}=={STUBS_VERSION} into {stubs}", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not stubs_installed(stubs):
        raise RuntimeError(f"could not install the Pico W stubs:\n{proc.stderr.strip()}")


def mypy_config(stubs: Path, firmware: Path) -> str:
    stub_modules = sorted(
        {p.stem for p in stubs.glob("*.pyi")}
        | {p.name for p in stubs.iterdir() if p.is_dir() and not p.name.endswith("-info")}
    )
    lines = [
        "[mypy]",
        f"custom_typeshed_dir = {stubs}",
        f"mypy_path = {stubs}:{firmware}",
        "no_site_packages = True",
        "explicit_package_bases = True",
        "check_untyped_defs = True",
        "warn_unused_configs = False",
        "show_error_codes = True",
        "disable_error_code = " + ", ".join(MYPY_QUIET_CODES),
    ]
    for mod in stub_modules:
        if mod.isidentifier():
            lines += [f"[mypy-{mod},{mod}.*]", "ignore_errors = True"]
    return "\n".join(lines) + "\n"


def run_mypy(firmware: Path, stubs: Path) -> list[str]:
    targets = [p.relative_to(firmware).as_posix() for p in firmware_files(firmware)]
    if not targets:
        return []
    with tempfile.TemporaryDirectory(prefix="fwcheck-") as tmp:
        cfg = Path(tmp) / "mypy.ini"
        cfg.write_text(mypy_config(stubs, firmware))
        cmd = [
            sys.executable, "-m", "mypy", "--config-file", str(cfg),
            "--cache-dir", str(REPO / ".mypy_cache" / "fwcheck"),
            "--no-error-summary", "--hide-error-context", *targets,
        ]
        proc = subprocess.run(
            cmd, cwd=firmware, capture_output=True, text=True, check=False
        )
    if proc.returncode not in (0, 1):
        return [f"mypy failed to run (exit {proc.returncode}): {proc.stderr.strip()}"]
    findings = []
    for line in proc.stdout.splitlines():
        if ": error:" not in line:
            continue
        path, _, rest = line.partition(":")
        full = (firmware / path) if not Path(path).is_absolute() else Path(path)
        if full.is_relative_to(stubs):
            continue
        lineno, _, msg = rest.partition(": error: ")
        findings.append(f"{_display(full)}:{lineno}: mypy: {msg.strip()}")
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--firmware", type=Path, default=FIRMWARE)
    parser.add_argument("--stubs", type=Path, default=STUBS)
    parser.add_argument("--no-mypy", action="store_true", help="skip the stub-based mypy pass")
    parser.add_argument("--no-ast", action="store_true", help="skip the AST pass")
    args = parser.parse_args(argv)
    firmware = args.firmware.resolve()
    findings: list[str] = []
    if not args.no_ast:
        findings += run_ast(firmware)
    if not args.no_mypy:
        try:
            ensure_stubs(args.stubs.resolve())
        except RuntimeError as exc:
            print(f"fwcheck: {exc}", file=sys.stderr)
            return 2
        findings += run_mypy(firmware, args.stubs.resolve())
    for line in findings:
        print(line)
    n = len(firmware_files(firmware))
    if findings:
        print(f"fwcheck: {len(findings)} finding(s) in {n} firmware files", file=sys.stderr)
        return 1
    print(f"fwcheck: {n} firmware files OK (MicroPython {STUBS_VERSION.split('.post')[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
