"""Timebase: which clock a stored timestamp comes from, and that it is frozen."""

from __future__ import annotations

from pathlib import Path

from chairside.ingest.timebase import Timebase

T0 = 1_700_000_000_000


def f(up: int, *, boot: int = 1, sync: int = 0, t: int = 0, **extra: int) -> dict[str, int]:
    return {"v": 1, "seq": 1, "boot": boot, "up": up, "t": t, "sync": sync, **extra}


def test_synced_device_time_is_used() -> None:
    tb = Timebase()
    stamp = tb.stamp("s", "c", f(5_000, sync=1, t=T0), rx_ms=T0 + 300)
    assert (stamp.measured_ms, stamp.time_estimated, stamp.source) == (T0, False, "device")
    assert stamp.skew_ms is None


def test_unsynced_boot_estimated_from_first_live_message_then_frozen() -> None:
    tb = Timebase()
    first = tb.stamp("s", "c", f(10_000), rx_ms=T0 + 10_000)
    assert first.measured_ms == T0 + 10_000 and first.time_estimated
    # later message arrives with 700 ms network delay: still boot + up
    later = tb.stamp("s", "c", f(20_000), rx_ms=T0 + 20_700)
    assert later.measured_ms == T0 + 20_000
    # a replay of the first message an hour later lands on the same timestamp
    replay = tb.stamp("s", "c", f(10_000), rx_ms=T0 + 3_600_000)
    assert replay.measured_ms == first.measured_ms


def test_status_boot_t_wins_when_first() -> None:
    tb = Timebase()
    tb.stamp("s", "c", f(1_000, sync=1, t=T0 + 1_000, boot_t=T0), rx_ms=T0 + 1_000)
    stamp = tb.stamp("s", "c", f(5_000), rx_ms=T0 + 9_000)
    assert (stamp.measured_ms, stamp.time_estimated, stamp.source) == (T0 + 5_000, False, "boot_t")


def test_historical_first_uses_rx_and_does_not_freeze() -> None:
    tb = Timebase()
    hist = tb.stamp("s", "c", f(1_000), rx_ms=T0 + 50_000, historical=True)
    assert (hist.measured_ms, hist.time_estimated, hist.source) == (T0 + 50_000, True, "rx")
    assert tb.boot_time("s", "c", 1) is None
    live = tb.stamp("s", "c", f(40_000), rx_ms=T0 + 50_000)
    assert tb.boot_time("s", "c", 1) == T0 + 10_000
    assert live.measured_ms == T0 + 50_000
    again = tb.stamp("s", "c", f(1_000), rx_ms=T0 + 60_000, historical=True)
    assert again.measured_ms == T0 + 11_000


def test_boots_and_chairs_are_separate() -> None:
    tb = Timebase()
    tb.stamp("s", "c", f(1_000, boot=1), rx_ms=T0)
    tb.stamp("s", "c", f(1_000, boot=2), rx_ms=T0 + 99_000)
    tb.stamp("s", "d", f(5_000, boot=1), rx_ms=T0)
    assert tb.boot_time("s", "c", 1) == T0 - 1_000
    assert tb.boot_time("s", "c", 2) == T0 + 98_000
    assert tb.boot_time("s", "d", 1) == T0 - 5_000


def test_last_will_without_common_fields_uses_rx() -> None:
    stamp = Timebase().stamp("s", "c", {"v": 1, "state": "offline"}, rx_ms=T0)
    assert (stamp.measured_ms, stamp.time_estimated) == (T0, True)


def test_clock_skew_flagged_on_live_synced_data_only() -> None:
    tb = Timebase(skew_limit_ms=60_000)
    live = tb.stamp("s", "c", f(1_000, sync=1, t=T0), rx_ms=T0 + 600_000)
    assert live.skew_ms == -600_000
    assert live.measured_ms == T0  # still the device's time
    hist = tb.stamp("s", "c", f(1_000, sync=1, t=T0), rx_ms=T0 + 600_000, historical=True)
    assert hist.skew_ms is None


def test_frozen_boot_times_survive_a_restart(tmp_path: Path) -> None:
    first = Timebase(tmp_path)
    a = first.stamp("s", "c", f(10_000), rx_ms=T0 + 10_000)
    restarted = Timebase(tmp_path)
    b = restarted.stamp("s", "c", f(10_000), rx_ms=T0 + 999_999)
    assert a.measured_ms == b.measured_ms == T0 + 10_000


def test_corrupt_state_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "boot_times.json").write_text("{not json")
    tb = Timebase(tmp_path)
    assert tb.stamp("s", "c", f(1_000), rx_ms=T0).measured_ms == T0
