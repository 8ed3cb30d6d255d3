"""Where the repository's non-package folders are (firmware, dashboards).

The gateway package is installed editable from the repository (see
tools/setup.sh), so the firmware and its host layer sit beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIRMWARE_DIR = REPO / "firmware"


def ensure_firmware_importable() -> None:
    """Put firmware/ on sys.path so `csfw` and `host` import on CPython."""
    path = str(FIRMWARE_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)
