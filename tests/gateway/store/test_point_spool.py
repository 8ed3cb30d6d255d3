"""The gateway's on-disk spool: order, durability across reopen, torn tails,
the size bound and its drop counter, segment rotation and clean-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from chairside.store.spool import CURSOR_FILE, PointSpool


def lines(start: int, n: int) -> list[str]:
    return [f"vitals,chair=1,site=s seq={i}i {1_790_000_000_000 + i}" for i in range(start, start + n)]


def drain(spool: PointSpool, max_lines: int = 7) -> list[str]:
    out: list[str] = []
    for _ in range(10_000):
        batch = spool.read(max_lines)
        if batch is None:
            return out
        out.extend(batch.lines)
        spool.commit(batch)
    raise AssertionError("spool did not drain")


def test_fifo_order_across_segments_and_finished_segments_deleted(tmp_path: Path) -> None:
    spool = PointSpool(tmp_path, segment_bytes=300)
    for k in range(10):
        assert spool.append(lines(k * 3, 3))
    assert spool.pending_points == 30 and spool.pending_records == 10
    assert len(list(tmp_path.glob("seg-*.spool"))) > 2
    assert drain(spool) == lines(0, 30)
    assert spool.empty and spool.pending_points == 0
    assert list(tmp_path.glob("seg-*.spool")) == []


def test_reopen_resumes_at_the_persisted_cursor(tmp_path: Path) -> None:
    spool = PointSpool(tmp_path, segment_bytes=500)
    for k in range(6):
        spool.append(lines(k * 4, 4))
    batch = spool.read(8)
    assert batch is not None and batch.lines == lines(0, 8)
    spool.commit(batch)
    unread = spool.read(4)  # read but not committed: must come back after a crash
    assert unread is not None
    again = PointSpool(tmp_path, segment_bytes=500)
    assert again.pending_points == 16
    assert drain(again) == lines(8, 16)
    again.append(lines(100, 2))
    assert drain(PointSpool(tmp_path)) == lines(100, 2)


def test_torn_tail_is_cut_and_later_appends_are_readable(tmp_path: Path) -> None:
    spool = PointSpool(tmp_path)
    spool.append(lines(0, 3))
    spool.append(lines(3, 3))
    segment = next(tmp_path.glob("seg-*.spool"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-5])  # crash in the middle of the second append
    again = PointSpool(tmp_path)
    assert again.corrupt_bytes > 0 and again.pending_points == 3
    again.append(lines(6, 2))
    assert drain(again) == lines(0, 3) + lines(6, 2)


def test_corrupt_record_is_cut_not_replayed(tmp_path: Path) -> None:
    spool = PointSpool(tmp_path)
    spool.append(lines(0, 2))
    spool.append(lines(2, 2))
    segment = next(tmp_path.glob("seg-*.spool"))
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF  # bit rot in the last record: its CRC fails
    segment.write_bytes(bytes(data))
    again = PointSpool(tmp_path)
    assert drain(again) == lines(0, 2)
    assert again.corrupt_bytes > 0


def test_bound_refuses_and_counts_then_accepts_after_drain(tmp_path: Path) -> None:
    spool = PointSpool(tmp_path, max_bytes=1000, segment_bytes=400)
    accepted = 0
    for k in range(20):
        if spool.append(lines(k * 2, 2)):
            accepted += 2
    assert spool.total_bytes <= 1000
    assert spool.dropped_points == 40 - accepted > 0
    assert spool.dropped_batches == spool.dropped_points // 2
    assert len(drain(spool)) == accepted
    assert spool.append(lines(500, 2))


def test_unreadable_cursor_replays_from_the_start(tmp_path: Path) -> None:
    spool = PointSpool(tmp_path)
    spool.append(lines(0, 2))
    (tmp_path / CURSOR_FILE).write_text("{not json")
    assert drain(PointSpool(tmp_path)) == lines(0, 2)


def test_rejects_bad_bounds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        PointSpool(tmp_path, max_bytes=0)
