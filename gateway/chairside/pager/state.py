"""Durable pager state: one JSON document, replaced atomically.

``save`` writes a temp file in the same folder, flushes and fsyncs it,
renames it over the old file and fsyncs the folder, so after a crash the
file is either the old or the new document, never a torn mix.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("chairside.pager.state")

STATE_VERSION = 1


def empty_state() -> dict[str, Any]:
    return {
        "v": STATE_VERSION,
        "threads": {},
        "seq": {},
        "outbox": [],
        "seen": [],
        "ratelimit": {},
        "next_id": 1,
        "tech": {"unreachable": {}, "exhausted": {}},
    }


class StateStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.saves = 0

    def load(self) -> dict[str, Any]:
        """The saved state, or an empty one.  An unreadable file is kept
        aside (``.corrupt-<time>``) and logged, never silently overwritten."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return empty_state()
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("v") != STATE_VERSION:
                raise ValueError("not a pager state document")
        except ValueError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("pager state %s unreadable (%s); moved to %s", self.path, exc, aside)
            return empty_state()
        state = empty_state()
        state.update(data)
        return state

    def save(self, data: dict[str, Any]) -> None:
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, separators=(",", ":"), sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.saves += 1
