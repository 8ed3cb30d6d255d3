"""Dead letters: points InfluxDB rejected as malformed, kept with the reason.

One JSON object per line in ``deadletter.jsonl``::

    {"t": 1790000000000, "reason": "HTTP 400: unable to parse ...", "line": "vitals,..."}

Written with fsync so an auditor can see every point that was not stored and
why.  The file is bounded by ``max_bytes``; letters past it are counted in
:attr:`DeadLetters.dropped` and logged, never raised.  Thread-safe.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

FILE_NAME: Final = "deadletter.jsonl"
_REASON_MAX: Final = 500


class DeadLetters:
    """Append-only, bounded dead-letter file in ``directory``."""

    def __init__(self, directory: Path, *, max_bytes: int = 64 * 1024 * 1024, fsync: bool = True) -> None:
        if max_bytes <= 0:
            raise ValueError("DeadLetters: max_bytes must be > 0")
        self.path = directory / FILE_NAME
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        try:
            self._size = self.path.stat().st_size
        except FileNotFoundError:
            self._size = 0

    def add(self, line: str, reason: str, t_ms: int) -> bool:
        """Record ``line`` with ``reason``; False when it could not be kept (counted)."""
        text = json.dumps({"t": t_ms, "reason": reason[:_REASON_MAX], "line": line}, ensure_ascii=False)
        data = (text + "\n").encode("utf-8")
        with self._lock:
            if self._size + len(data) > self.max_bytes:
                self.dropped += 1
                log.error("dead-letter file full (%d bytes): dropped %r (%s)", self._size, line[:200], reason)
                return False
            try:
                with open(self.path, "ab") as fh:
                    fh.write(data)
                    fh.flush()
                    if self.fsync:
                        os.fsync(fh.fileno())
            except OSError as exc:
                self.errors += 1
                log.error("cannot write dead letter to %s: %s (line %r)", self.path, exc, line[:200])
                return False
            self._size += len(data)
            self.written += 1
        return True

    def read(self) -> list[dict[str, object]]:
        """All letters (for tests and audits); unreadable lines are skipped."""
        letters: list[dict[str, object]] = []
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return letters
        for raw in text.splitlines():
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            if isinstance(item, dict):
                letters.append(item)
        return letters
