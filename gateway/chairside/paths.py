"""Where the repository's non-package folders are (firmware, dashboards), and safe file writes.

The gateway package is installed editable from the repository (see
tools/setup.sh), so the firmware and its host layer sit beside it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FIRMWARE_DIR = REPO / "firmware"


def ensure_firmware_importable() -> None:
    """Put firmware/ on sys.path so `csfw` and `host` import on CPython."""
    path = str(FIRMWARE_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"), sort_keys=True, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
