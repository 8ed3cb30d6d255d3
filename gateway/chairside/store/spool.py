"""The gateway's durable on-disk spool of line-protocol batches.

While InfluxDB is unreachable the gateway appends each batch here, fsyncs,
and only then acknowledges the MQTT messages the batch came from; when
InfluxDB returns, the writer replays the spool oldest first and advances a
persisted read cursor.  A crash at any point loses nothing already
acknowledged: a record is either complete (CRC checks) or it is a torn tail
whose messages were never acknowledged (the broker redelivers them).  A
record replayed twice stores nothing twice (same series and timestamp ⇒ the
same InfluxDB point).

Layout of ``directory``::

    seg-0000000001.spool   append-only segments of records
    seg-0000000002.spool
    cursor.json            {"segment": n, "offset": bytes} of the next unread record

A record is ``u32 length | u32 crc32(payload) | payload`` (little endian),
the payload being the batch's lines joined by ``\\n`` in UTF-8.  Segments are
rotated at ``segment_bytes`` and deleted once fully read.  The total size of
the segment files is bounded by ``max_bytes``: an append that would pass it
is refused and counted in :attr:`PointSpool.dropped_points` (the caller
raises the technical alarm).  Not thread-safe: one writer thread owns it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

_HEADER: Final = struct.Struct("<II")
_SEGMENT_RE: Final = re.compile(r"^seg-(\d{10})\.spool$")
CURSOR_FILE: Final = "cursor.json"
MAX_RECORD_BYTES: Final = 64 * 1024 * 1024
"""a length above this in a header means a corrupt header, not a record"""


class SpoolError(Exception):
    """The spool could not write to its directory (disk full, permissions)."""


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """Lines read from the head of the spool; :meth:`PointSpool.commit` consumes them."""

    lines: list[str]
    records: int
    end_segment: int
    end_offset: int


def _segment_name(number: int) -> str:
    return f"seg-{number:010d}.spool"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PointSpool:
    """Bounded, crash-safe FIFO of line-protocol batches in ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        segment_bytes: int = 4 * 1024 * 1024,
        fsync: bool = True,
    ) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("PointSpool: max_bytes and segment_bytes must be > 0")
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.dropped_points = 0
        """points refused because the spool was full"""
        self.dropped_batches = 0
        self.corrupt_bytes = 0
        """bytes cut at open because they failed the length or CRC check"""
        self.pending_records = 0
        self.pending_points = 0
        self._sizes: dict[int, int] = {}
        """segment number → its size in bytes (all segments on disk)"""
        self._read_segment = 1
        self._read_offset = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open()

    # ---- state -------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        """Bytes of all segment files on disk (what ``max_bytes`` bounds)."""
        return sum(self._sizes.values())

    @property
    def pending_bytes(self) -> int:
        return self.total_bytes - self._read_offset if self._sizes else 0

    @property
    def empty(self) -> bool:
        return self.pending_records == 0

    @property
    def _write_segment(self) -> int:
        return max(self._sizes) if self._sizes else self._read_segment

    def _path(self, number: int) -> Path:
        return self.directory / _segment_name(number)

    # ---- open / recovery ----------------------------------------------------

    def _open(self) -> None:
        numbers = sorted(
            int(m.group(1))
            for name in os.listdir(self.directory)
            if (m := _SEGMENT_RE.match(name)) is not None
        )
        segment, offset = self._load_cursor()
        for number in numbers:
            if number < segment:
                # fully read before a crash, not yet deleted
                self._path(number).unlink(missing_ok=True)
                continue
            size = self._scan(number, offset if number == segment else 0)
            self._sizes[number] = size
        if self._sizes:
            first = min(self._sizes)
            if first != segment:
                segment, offset = first, 0
            offset = min(offset, self._sizes[first])
        self._read_segment, self._read_offset = segment, offset
        if self.pending_records:
            log.warning(
                "spool %s holds %d points in %d batches from before a restart",
                self.directory, self.pending_points, self.pending_records,
            )

    def _load_cursor(self) -> tuple[int, int]:
        path = self.directory / CURSOR_FILE
        try:
            data = json.loads(path.read_text())
            segment, offset = int(data["segment"]), int(data["offset"])
        except FileNotFoundError:
            return 1, 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("unreadable spool cursor %s (%s): replaying from the start", path, exc)
            return 1, 0
        if segment < 1 or offset < 0:
            return 1, 0
        return segment, offset

    def _scan(self, number: int, start: int) -> int:
        """Count the valid records after ``start``; cut a torn or corrupt tail."""
        path = self._path(number)
        with open(path, "r+b") as fh:
            data = fh.read()
            pos = start if start <= len(data) else len(data)
            good = pos
            while pos + _HEADER.size <= len(data):
                length, crc = _HEADER.unpack_from(data, pos)
                body_start = pos + _HEADER.size
                body = data[body_start : body_start + length]
                if length > MAX_RECORD_BYTES or len(body) != length or zlib.crc32(body) != crc:
                    break
                self.pending_records += 1
                self.pending_points += body.count(b"\n") + 1
                pos = body_start + length
                good = pos
            if good < len(data):
                cut = len(data) - good
                self.corrupt_bytes += cut
                log.error("spool segment %s: cut %d bytes of torn/corrupt tail", path.name, cut)
                fh.truncate(good)
                if self.fsync:
                    os.fsync(fh.fileno())
        return good

    # ---- append -------------------------------------------------------------

    def append(self, lines: Sequence[str]) -> bool:
        """Append one batch durably; False (counted) when the spool is full.

        Raises :class:`SpoolError` if the disk write fails (nothing counted:
        the caller keeps the batch and its acknowledgements).
        """
        if not lines:
            return True
        payload = "\n".join(lines).encode("utf-8")
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        if self.total_bytes + len(record) > self.max_bytes:
            self.dropped_points += len(lines)
            self.dropped_batches += 1
            return False
        number = self._write_segment
        size = self._sizes.get(number, 0)
        new_file = number not in self._sizes
        if size and size + len(record) > self.segment_bytes:
            number, size, new_file = number + 1, 0, True
        path = self._path(number)
        try:
            with open(path, "ab") as fh:
                if fh.tell() != size:
                    # a failed earlier write left bytes behind: cut them
                    fh.truncate(size)
                fh.write(record)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
        except OSError as exc:
            raise SpoolError(f"append to {path}: {exc}") from exc
        if new_file and self.fsync:
            _fsync_dir(self.directory)
        self._sizes[number] = size + len(record)
        self.pending_records += 1
        self.pending_points += len(lines)
        return True

    # ---- read / commit ------------------------------------------------------

    def read(self, max_lines: int) -> SpoolBatch | None:
        """The oldest records, up to about ``max_lines`` lines (at least one record)."""
        lines: list[str] = []
        records = 0
        segment, offset = self._read_segment, self._read_offset
        while self.pending_records > records and len(lines) < max_lines:
            size = self._sizes.get(segment)
            if size is None:
                break
            if offset >= size:
                later = [n for n in self._sizes if n > segment]
                if not later:
                    break
                segment, offset = min(later), 0
                continue
            with open(self._path(segment), "rb") as fh:
                fh.seek(offset)
                while offset < size and len(lines) < max_lines:
                    header = fh.read(_HEADER.size)
                    length, crc = _HEADER.unpack(header)
                    body = fh.read(length)
                    if len(body) != length or zlib.crc32(body) != crc:
                        raise SpoolError(f"{_segment_name(segment)}@{offset}: record changed on disk")
                    lines.extend(body.decode("utf-8", errors="replace").split("\n"))
                    records += 1
                    offset += _HEADER.size + length
        if not records:
            return None
        return SpoolBatch(lines, records, segment, offset)

    def commit(self, batch: SpoolBatch) -> None:
        """Mark ``batch`` stored: persist the cursor, delete finished segments."""
        self._read_segment, self._read_offset = batch.end_segment, batch.end_offset
        self.pending_records -= batch.records
        self.pending_points -= len(batch.lines)
        finished = [n for n in self._sizes if n < self._read_segment]
        if (
            self.pending_records == 0
            and self._read_offset >= self._sizes.get(self._read_segment, 0)
            and self._read_segment in self._sizes
        ):
            # everything read: start a fresh segment rather than grow this one
            finished.append(self._read_segment)
            self._read_segment += 1
            self._read_offset = 0
        self._save_cursor()
        for number in finished:
            self._sizes.pop(number, None)
            try:
                self._path(number).unlink(missing_ok=True)
            except OSError as exc:
                log.error("cannot delete spool segment %s: %s", number, exc)

    def _save_cursor(self) -> None:
        path = self.directory / CURSOR_FILE
        tmp = path.with_suffix(".tmp")
        text = json.dumps({"segment": self._read_segment, "offset": self._read_offset})
        try:
            with open(tmp, "w") as fh:
                fh.write(text)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            # the records are stored; a stale cursor only replays them again (idempotent)
            log.error("cannot persist spool cursor %s: %s", path, exc)
