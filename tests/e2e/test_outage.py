"""Issue 3's must-show: a box never loses a reading because the network blinked.

Real firmware (``csfw.app.App`` on the host hardware layer), real Mosquitto,
the real gateway (in this process, on the simulated wall clock) and real
InfluxDB.  Outages last minutes of accelerated time; afterwards every reading
is in InfluxDB once, in order, at the time it was measured, with ``hist``
true exactly for what was measured while the box was cut off, and replayed
readings never raise an alarm.

Pacing: around the outages the boxes run in small chunks with a short real
pause (:func:`pace`) so PUBACKs come back before the next reading, as they
would live (a box running faster than its broker round trip would spool
live readings for want of a free QoS 1 slot, and they would turn historical).
The outage itself runs flat out: nothing is sent then.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Observer, SimWallClock, query_rows, start_gateway, wait_rows

from chairside.service import Gateway
from chairside.sim.services import InfluxDB, Mosquitto
from chairside.sim.simulator import Fleet, make_box
from host.clock import SimClock

pytestmark = pytest.mark.services
SITE = "clinic-outage"
EPOCH = 1_790_000_000_000
OUTAGE_MS = 600_000  # ten simulated minutes


# ---------------------------------------------------------------- helpers


@pytest.fixture
def made() -> Iterator[list[Fleet]]:
    fleets: list[Fleet] = []
    yield fleets
    for fleet in fleets:
        fleet.close()


def _gateway(mosquitto: Mosquitto, influxdb: InfluxDB, state: Path, clock: SimClock) -> Gateway:
    """The real gateway on the simulated wall clock; short write batches and a
    1 s broker reconnect delay keep accelerated tests fast."""
    gw = start_gateway(mosquitto, influxdb, state, clock=SimWallClock(clock), batch_interval_s=0.05)
    gw.client.reconnect_delay_set(min_delay=1, max_delay=1)
    return gw


@pytest.fixture
def fast_gateway(mosquitto: Mosquitto, influxdb: InfluxDB, tmp_path: Path, sim_clock: SimClock) -> Iterator[Gateway]:
    gw = _gateway(mosquitto, influxdb, tmp_path / "gw", sim_clock)
    yield gw
    gw.stop()


def _fleet(mosquitto: Mosquitto, tmp_path: Path, made: list[Fleet], clock: SimClock,
           chairs: dict[str, str], **kwargs: Any) -> Fleet:
    boxes = [make_box(SITE, chair, scenario, "127.0.0.1", mosquitto.port, fs_dir=str(tmp_path / f"box{chair}"),
                      seed=i, clock=clock, **kwargs)
             for i, (chair, scenario) in enumerate(chairs.items())]
    fleet = Fleet(boxes, step_ms=200)
    made.append(fleet)
    return fleet


def pace(fleet: Fleet, sim_ms: int, chunk_ms: int = 200, pause_s: float = 0.002) -> None:
    """Run `sim_ms` of simulated time in chunks, pausing briefly (real time) after each."""
    for _ in range(sim_ms // chunk_ms):
        fleet.run_for(chunk_ms)
        time.sleep(pause_s)


CONFIRM_LAG_MS = 15_000
"""simulated time the newest readings may wait for the gateway's stored watermark
(published at most once a second per chair; the simulation runs ~100x real time)"""


def drained(fleet: Fleet) -> bool:
    """Every box online, holding only readings of the last few simulated seconds
    (a record leaves the spool once the gateway's watermark covers it)."""
    return all(b.app.link.online and only_recent_held(b) for b in fleet.boxes)


def only_recent_held(box: Any) -> bool:
    oldest = box.app.spool.peek(0)
    return oldest is None or box.app.clock.now_ms() - oldest[3] <= CONFIRM_LAG_MS


def pace_until_drained(fleet: Fleet, limit_ms: int = 180_000) -> int:
    """Pace until drained(fleet); returns the simulated ms it took."""
    ran = 0
    while not drained(fleet):
        assert ran < limit_ms, [(b.app.link.state_name, b.app.spool.depth) for b in fleet.boxes]
        pace(fleet, 1000)
        ran += 1000
    return ran


def rows_of(influxdb: InfluxDB, measurement: str, chair: str, count: int) -> list[dict[str, Any]]:
    q = f"SELECT * FROM {measurement} WHERE site = '{SITE}' AND chair = '{chair}'"
    rows = wait_rows(influxdb, q, count, timeout=20)
    return sorted(rows, key=lambda r: r["time"])


def assert_complete_in_order(rows: list[dict[str, Any]], last_up: int) -> None:
    """One vitals row per simulated second from up=1 s to last_up, once, in order."""
    ups = [r["up"] for r in rows]
    assert ups == list(range(1000, last_up + 1, 1000)), "every reading once, none lost"
    seqs = [r["seq"] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "stored order = measured order"


def assert_hist_exactly_for(rows: list[dict[str, Any]], cut_up: int, back_up: int) -> None:
    """hist is true for readings measured while the box was cut off, false otherwise.
    cut_up: box uptime when the outage began; back_up: when the box was online
    again.  The one reading right at the cut may still have gone out live."""
    for r in rows:
        if r["up"] <= cut_up or r["up"] > back_up:
            assert r["hist"] is False, r
        elif r["up"] > cut_up + 1000:
            assert r["hist"] is True, r


def online_since(box: Any) -> int:
    link = box.app.link
    assert link.online
    return int(link.since)


# ---------------------------------------------------------------- broker stop / Wi-Fi cut


@pytest.mark.parametrize("outage", ["broker_stop", "wifi_cut"])
def test_every_reading_of_a_ten_minute_outage_arrives_once_in_order_at_its_time(
    outage: str, mosquitto: Mosquitto, influxdb: InfluxDB, fast_gateway: Gateway, observer: Observer,
    tmp_path: Path, made: list[Fleet], sim_clock: SimClock,
) -> None:
    fleet = _fleet(mosquitto, tmp_path, made, sim_clock, {"1": "normal", "2": "normal"}, nibp_interval_s=120)
    box1, box2 = fleet.boxes
    pace(fleet, 20_000)
    cut_up = sim_clock.now_ms()
    if outage == "broker_stop":
        mosquitto.stop(remove=False)  # same port, same workdir (persistent sessions)
        fleet.run_for(OUTAGE_MS)
        assert not box1.app.link.online and not box2.app.link.online
        assert box1.app.spool.depth >= OUTAGE_MS // 1000 - 1
        mosquitto.start()
        cut = [box1, box2]
    else:
        box1.wlan.cut()  # box 2 keeps its Wi-Fi: it must stay all live
        # paced, so box 2 keeps getting the gateway's stored watermark (unconfirmed
        # readings are re-sent, flagged h=1, after 30 s without one)
        pace(fleet, OUTAGE_MS)
        assert not box1.app.link.online and box2.app.link.online
        box1.wlan.restore()
        cut = [box1]
    pace_until_drained(fleet)
    pace(fleet, 5_000)
    assert fast_gateway.wait_subscribed(15), "gateway did not come back to the broker"
    last_up = sim_clock.now_ms() // 1000 * 1000
    for box in fleet.boxes:
        chair = box.cfg["chair"]
        rows = rows_of(influxdb, "vitals", chair, last_up // 1000)
        assert_complete_in_order(rows, last_up)
        boot_epoch = EPOCH  # synced clock: t = epoch at boot + up
        assert all(r["time"] == boot_epoch + r["up"] == r["dev_t"] for r in rows), "stored at measured time"
        if box in cut:
            back_up = online_since(box)
            assert box.app.link.reconnects == 1
            assert_hist_exactly_for(rows, cut_up, back_up)
            assert sum(r["hist"] for r in rows) >= OUTAGE_MS // 1000 - 1
        else:
            assert not any(r["hist"] for r in rows)
        # NIBP every 120 s: the ones measured during the outage come back too
        nibp = rows_of(influxdb, "nibp", chair, box.nibp_sim.measurements)
        assert len(nibp) == box.nibp_sim.measurements >= 5
        assert [r["seq"] for r in nibp] == sorted({r["seq"] for r in nibp})
        assert all(r["time"] == boot_epoch + r["up"] for r in nibp)
        if box in cut:
            assert_hist_exactly_for(nibp, cut_up, online_since(box))
            assert any(r["hist"] for r in nibp)
        else:
            assert not any(r["hist"] for r in nibp)
    # the gateway saw duplicates at most from QoS 1 redelivery; InfluxDB holds each reading once
    assert fast_gateway.metrics.total("processing_errors") == 0


# ---------------------------------------------------------------- unsynced clock


def test_unsynced_box_replay_is_stored_at_exact_relative_times(
    mosquitto: Mosquitto, influxdb: InfluxDB, tmp_path: Path, made: list[Fleet],
) -> None:
    """A box whose clock was never synced boots without network, measures for
    three minutes, then connects: the gateway freezes its boot time from the
    first live message (the birth status) and every replayed reading lands at
    boot time + up, exactly one second apart."""
    clock = SimClock(epoch_at_boot_ms=EPOCH, synced=False)
    gw = _gateway(mosquitto, influxdb, tmp_path / "gw", clock)
    try:
        fleet = _fleet(mosquitto, tmp_path, made, clock, {"7": "normal"}, synced=False)
        (box,) = fleet.boxes
        box.wlan.cut()
        fleet.run_for(180_000)
        assert box.app.spool.depth == 180 and not clock.synced
        box.wlan.restore()
        pace_until_drained(fleet)
        pace(fleet, 10_000)
        last_up = clock.now_ms() // 1000 * 1000
        rows = rows_of(influxdb, "vitals", "7", last_up // 1000)
        assert_complete_in_order(rows, last_up)
        back_up = online_since(box)  # restore, then the link's backoff ran out
        assert_hist_exactly_for(rows, 0, back_up)
        replayed = [r for r in rows if r["hist"]]
        assert len(replayed) == back_up // 1000 >= 180
        assert all(r["sync"] == 0 for r in replayed)
        first = rows[0]
        unsynced = [r for r in rows if r["sync"] == 0]
        for r in unsynced:
            assert r["time"] - first["time"] == r["up"] - first["up"], r
        boot_ms = gw.timebase.boot_time(SITE, "7", box.boot)
        assert boot_ms is not None and all(r["time"] == boot_ms + r["up"] for r in unsynced)
        # the estimate comes from the receive time of the birth message: within a pacing chunk
        assert abs(boot_ms - EPOCH) <= 1000
        # the gateway then set the box clock (time command); later readings are synced
        assert clock.synced and rows[-1]["sync"] == 1
    finally:
        gw.stop()


# ---------------------------------------------------------------- spool overflow


def test_spool_overflow_drops_the_oldest_reports_it_and_delivers_the_rest(
    mosquitto: Mosquitto, influxdb: InfluxDB, fast_gateway: Gateway, observer: Observer,
    tmp_path: Path, made: list[Fleet], sim_clock: SimClock,
) -> None:
    # 2 flash segments of 1 KB (64 vitals records each) + a 16-record RAM ring
    fleet = _fleet(mosquitto, tmp_path, made, sim_clock, {"5": "normal"},
                   spool_kb=2, spool_seg_kb=1, hist_ram_records=16)
    (box,) = fleet.boxes
    pace(fleet, 10_000)
    cut_up = sim_clock.now_ms()
    # the last readings before the cut are stored but not yet confirmed: the box still holds them
    held_at_cut = box.app.spool.depth
    box.wlan.cut()
    fleet.run_for(OUTAGE_MS)
    dropped = box.app.spool.dropped
    assert dropped > held_at_cut and box.app.spool.depth + dropped == OUTAGE_MS // 1000 + held_at_cut
    box.wlan.restore()
    pace_until_drained(fleet)
    pace(fleet, 5_000)
    last_up = sim_clock.now_ms() // 1000 * 1000
    # `dropped` counts every record the box let go unconfirmed: an upper bound of
    # the loss (the ones held at the cut had been stored already)
    really_lost = dropped - held_at_cut
    expected = last_up // 1000 - really_lost
    rows = rows_of(influxdb, "vitals", "5", expected)
    ups = [r["up"] for r in rows]
    assert len(ups) == len(set(ups)) == expected
    lost = sorted(set(range(1000, last_up + 1, 1000)) - set(ups))
    # exactly the oldest readings of the outage are gone, as many as reported
    first_lost = cut_up // 1000 * 1000 + 1000
    assert lost == list(range(first_lost, first_lost + really_lost * 1000, 1000))
    hist = [r["up"] for r in rows if r["hist"]]
    assert hist == list(range(first_lost + really_lost * 1000, hist[-1] + 1, 1000)), "the newest survive, in order"
    assert all(r["time"] == EPOCH + r["up"] for r in rows)
    # the box says so: birth status after the outage, and the device measurement
    status = observer.wait_for("/5/status", lambda p: p.get("state") == "online" and p.get("dropped", 0) > 0)
    assert status["dropped"] == dropped
    device = wait_rows(influxdb, f"SELECT last(dropped) FROM device WHERE site = '{SITE}' AND chair = '5'", 1)
    assert device[0]["last"] == dropped


# ---------------------------------------------------------------- no alarm from history


def test_desaturation_during_an_outage_is_stored_but_never_alarms(
    mosquitto: Mosquitto, influxdb: InfluxDB, fast_gateway: Gateway, observer: Observer,
    tmp_path: Path, made: list[Fleet], sim_clock: SimClock,
) -> None:
    """Both chairs desaturate (97 % → 82 % at 80-100 s → 97 % at 130 s).  Chair 8
    loses Wi-Fi from 15 s to 150 s, so its low readings arrive only as replay:
    stored, never alarmed.  Chair 9 stays online: its live desaturation alarms
    (the control)."""
    fleet = _fleet(mosquitto, tmp_path, made, sim_clock, {"8": "desat", "9": "desat"})
    cut_box, live_box = fleet.boxes
    pace(fleet, 15_000)
    cut_box.wlan.cut()
    pace(fleet, 135_000)
    cut_box.wlan.restore()
    pace_until_drained(fleet)
    pace(fleet, 5_000)
    assert fast_gateway.wait_idle(10)
    observer.wait_for("/9/alarms", lambda p: p["alarm"].startswith("spo2") and p["event"] == "raised")
    rows = rows_of(influxdb, "vitals", "8", sim_clock.now_ms() // 1000)
    low = [r for r in rows if r["spo2"] is not None and r["spo2"] < 85]
    assert len(low) >= 20 and all(r["hist"] is True for r in low), "the desaturation is stored, as history"
    physiological_8 = [p for p in observer.payloads("/8/alarms") if p.get("kind") == "physiological"]
    assert physiological_8 == []
    stored = query_rows(influxdb, f"SELECT * FROM alarm_events WHERE site = '{SITE}' AND chair = '8'")
    assert not [r for r in stored if r["kind"] == "physiological"]
    assert cut_box.app.link.reconnects == 1 and live_box.app.link.reconnects == 0
