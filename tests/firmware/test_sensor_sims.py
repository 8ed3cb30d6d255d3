"""Simulators (CPython only): scripted patients, OximeterSim -> Oximeter and
NibpSim <-> Nibp over the fake UART, driven by an integer simulated clock."""

from __future__ import annotations

import random

import pytest

from csfw import bci, contract, suntech
from csfw.nibp import Nibp
from csfw.oximeter import Oximeter
from host import nibp_sim
from host.nibp_sim import NibpSim
from host.oximeter_sim import OximeterSim
from host.patient import SCENARIOS, make_patient
from host.uart import reclock, uart_pair

# ---------------------------------------------------------------- patients


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_patients_are_deterministic(name: str) -> None:
    a, b = make_patient(name, seed=3), make_patient(name, seed=3)
    for t in range(0, 300_000, 7_000):
        assert (a.spo2(t), a.pulse(t), a.bp(t), a.probe(t)) == \
            (b.spo2(t), b.pulse(t), b.bp(t), b.probe(t))
        sys_, dia, map_ = a.bp(t)
        assert dia < map_ < sys_
        assert 0 <= a.spo2(t) <= 100


def test_normal_patient_ranges() -> None:
    p = make_patient("normal")
    for t in range(0, 600_000, 5_000):
        assert 96 <= p.spo2(t) <= 99
        assert 60 <= p.pulse(t) <= 85
        assert p.probe(t) == "ok"


def test_desat_curve() -> None:
    p = make_patient("desat")
    assert p.spo2(10_000) == 97
    assert p.spo2(50_000) < 92
    assert 81 <= p.spo2(85_000) <= 83
    assert p.spo2(140_000) >= 96


def test_bp_spike() -> None:
    p = make_patient("bp_spike")
    assert p.bp(0)[:2] == (125, 80)
    sys_, dia, _ = p.bp(160_000)
    assert (sys_, dia) == (225, 125)


def test_probe_off_stretches() -> None:
    p = make_patient("probe_off")
    assert [p.probe(t * 1000) for t in (10, 35, 60, 95, 110, 155)] == \
        ["ok", "probe_off", "ok", "no_finger", "ok", "probe_off"]


def test_afib_rvr_irregular_fast() -> None:
    p = make_patient("afib_rvr", seed=1)
    rates = [p.pulse(t) for t in range(0, 60_000, 700)]
    assert min(rates) >= 130 and max(rates) <= 170
    assert len(set(rates)) > 15


def test_script_overrides_and_releases() -> None:
    p = make_patient("normal").script([
        (10_000, "spo2", 85), (20_000, "spo2", None),
        (5_000, "bp", (180, 100)), (5_000, "probe", "no_finger"),
    ])
    assert p.spo2(9_999) >= 96 and p.spo2(10_000) == 85 and p.spo2(20_000) >= 96
    assert p.bp(6_000) == (180, 100, 127)
    assert p.probe(4_999) == "ok" and p.probe(5_000) == "no_finger"
    with pytest.raises(ValueError, match="unknown field"):
        p.script([(0, "temp", 37)])
    with pytest.raises(ValueError, match="unknown patient"):
        make_patient("zombie")


# ---------------------------------------------------------------- fake UART


def test_uart_pair_bounded_and_cut() -> None:
    box, dev = uart_pair(capacity=8)
    dev.write(b"0123456789")
    assert box.any() == 8 and box.dropped == 2
    buf = bytearray(4)
    assert box.readinto(buf, 3) == 3 and bytes(buf[:3]) == b"012"
    assert box.read() == b"34567"
    assert box.read() is None and box.readinto(buf) is None
    box.write(b"\x3a\x20\xa6")
    assert dev.read(2) == b"\x3a\x20" and dev.any() == 1
    dev.cut()
    assert dev.any() == 0 and box.any() == 0
    dev.write(b"xyz")
    assert box.any() == 0 and box.lost == 4  # 1 pending + 3 written while cut
    box.restore()
    dev.write(b"ok")
    assert box.read() == b"ok"


# ---------------------------------------------------------------- oximeter


def _oxi_run(name: str, until_ms: int, step: int = 100, seed: int = 0,
             script: list[tuple[int, str, object]] | None = None):
    patient = make_patient(name, seed)
    if script:
        patient.script(script)
    box, dev = uart_pair(capacity=1024)
    sim = OximeterSim(patient, dev)
    oxi = Oximeter(box)
    samples: dict[int, tuple] = {}
    for now in range(0, until_ms + 1, step):
        sim.advance(now)
        oxi.poll(now)
        if now % 1000 == 0:
            samples[now] = oxi.summary(now)
    return samples, sim, oxi, box


def test_oximeter_round_trip_normal() -> None:
    samples, sim, oxi, box = _oxi_run("normal", 20_000)
    assert samples[0][3] == contract.ST_NO_DATA           # one frame at t=0: not yet believed
    assert samples[2000][3] == contract.ST_SEARCHING      # module searching at start
    for t in range(4000, 20_001, 1000):
        spo2, pr, sig, st = samples[t]
        assert st == contract.ST_OK and 96 <= spo2 <= 99 and 60 <= pr <= 85 and sig == 6
    assert oxi.health(20_000) == "ok"
    c = oxi.counters()
    assert c["frames"] == sim.frames_sent == 1201      # 60 frames/s over 20 s, plus t=0
    assert c["garbage"] == 0 and c["resync"] == 0 and box.dropped == 0


def test_oximeter_round_trip_desat() -> None:
    samples, *_ = _oxi_run("desat", 140_000)
    assert samples[15_000][0] == 97
    assert samples[85_000][0] <= 83 and samples[85_000][3] == contract.ST_OK
    assert samples[140_000][0] >= 96


def test_oximeter_round_trip_probe_off() -> None:
    samples, *_ = _oxi_run("probe_off", 100_000)
    assert samples[20_000][3] == contract.ST_OK
    assert samples[35_000] == (None, None, 0, contract.ST_PROBE_OFF)
    assert samples[46_000][3] == contract.ST_SEARCHING   # searching after re-attach
    assert samples[50_000][3] == contract.ST_OK
    assert samples[95_000][3] == contract.ST_NO_FINGER


def test_oximeter_module_silent_then_back() -> None:
    patient = make_patient("normal")
    box, dev = uart_pair()
    sim = OximeterSim(patient, dev, search_ms=0)
    oxi = Oximeter(box)
    for now in range(0, 5001, 50):
        sim.advance(now)
        oxi.poll(now)
    assert oxi.summary(5000)[3] == contract.ST_OK
    sim.silent = True
    for now in range(5050, 8001, 50):
        sim.advance(now)
        oxi.poll(now)
    assert oxi.summary(7000)[3] == contract.ST_OK         # within 2 s of the last frame
    assert oxi.summary(8000)[3] == contract.ST_NO_DATA
    assert oxi.health(8000) == "silent"
    sim.silent = False
    dev.cut()                                             # now unplug the cable instead
    for now in range(8050, 11001, 50):
        sim.advance(now)
        oxi.poll(now)
    assert oxi.health(11_000) == "silent"
    dev.restore()
    for now in range(11_050, 12_001, 50):
        sim.advance(now)
        oxi.poll(now)
    assert oxi.summary(12_000)[3] == contract.ST_OK and oxi.health(12_000) == "ok"


def test_oximeter_line_noise_is_survived() -> None:
    patient = make_patient("normal")
    box, dev = uart_pair()
    sim = OximeterSim(patient, dev, search_ms=0)
    oxi = Oximeter(box)
    for now in range(0, 3001, 100):
        if now == 1500:
            sim.inject(b"\x85\x01\xff\x00\x12")
        sim.advance(now)
        oxi.poll(now)
    c = oxi.counters()
    assert c["resync"] + c["garbage"] > 0
    assert oxi.summary(3000)[3] == contract.ST_OK


# ---------------------------------------------------------------- NIBP


def _nibp_setup(name: str = "normal", seed: int = 0):
    patient = make_patient(name, seed)
    box, dev = uart_pair()
    sim = NibpSim(patient, dev, seed=seed)
    return patient, sim, Nibp(box)


def _nibp_run(sim: NibpSim, nibp: Nibp, t0: int, t1: int, step: int = 50):
    results = []
    inflating = []
    for now in range(t0, t1 + 1, step):
        sim.advance(now)
        r = nibp.poll(now)
        inflating.append((now, nibp.inflating))
        if r is not None:
            results.append((now, r))
    return results, inflating


def test_nibp_full_measurement_bp_spike() -> None:
    patient, sim, nibp = _nibp_setup("bp_spike")
    assert nibp.start(150_000)
    results, inflating = _nibp_run(sim, nibp, 150_000, 200_000)
    assert len(results) == 1
    t, (ok, sys_, dia, map_, pr, err) = results[0]
    assert ok and err == 0
    assert 150_000 + 28_000 <= t <= 150_000 + 40_000      # ~8 s inflate + 20-30 s measure
    assert (sys_, dia, map_) == patient.bp(t) == (225, 125, 158)
    assert 85 <= pr <= 100
    assert all(flag for now, flag in inflating if now < t)
    assert not nibp.inflating and not nibp.busy
    assert nibp.health(t) == "ok"
    assert sim.commands[0] == suntech.START_BP and suntech.GET_BP_DATA in sim.commands
    assert suntech.GET_CUFF_PRESSURE in sim.commands and nibp.cuff_mmhg >= 0


def test_nibp_module_error_code() -> None:
    _, sim, nibp = _nibp_setup()
    sim.fail_next(0x03)
    nibp.start(0)
    results, _ = _nibp_run(sim, nibp, 0, 45_000)
    assert [r for _, r in results] == [(False, None, None, None, None, 0x03)]
    # the next measurement works again
    nibp.start(50_000)
    results, _ = _nibp_run(sim, nibp, 50_000, 95_000)
    assert len(results) == 1 and results[0][1][0] is True


def test_nibp_module_silent() -> None:
    _, sim, nibp = _nibp_setup()
    sim.silent = True
    nibp.start(0)
    results, _ = _nibp_run(sim, nibp, 0, 6_000)
    assert [r for _, r in results] == [(False, None, None, None, None, suntech.E_NO_RESPONSE)]
    assert nibp.health(6_000) == "silent"
    assert sim.measurements == 0


def test_nibp_corrupt_answer_is_retried() -> None:
    _, sim, nibp = _nibp_setup()
    sim.corrupt_next()
    nibp.start(0)
    results, _ = _nibp_run(sim, nibp, 0, 45_000)
    assert len(results) == 1 and results[0][1][0] is True
    assert nibp.counters()["bad_checksum"] == 1 and nibp.counters()["timeouts"] == 1


def test_nibp_stop_deflates_module() -> None:
    _, sim, nibp = _nibp_setup()
    nibp.start(0)
    _nibp_run(sim, nibp, 0, 5_000)
    assert sim.state == nibp_sim.INFLATING and 0 < sim.cuff_pressure(5_000) <= 160
    nibp.stop(5_050)
    results, _ = _nibp_run(sim, nibp, 5_050, 40_000)
    assert results == [] and sim.state == nibp_sim.IDLE and not nibp.busy


def test_nibp_cable_cut_mid_measurement() -> None:
    _, sim, nibp = _nibp_setup()
    nibp.start(0)
    _nibp_run(sim, nibp, 0, 10_000)
    sim.uart.cut()
    results, _ = _nibp_run(sim, nibp, 10_050, 20_000)
    assert [r[1][5] for r in results] == [suntech.E_NO_RESPONSE]
    assert nibp.health(20_000) == "silent" and not nibp.inflating


def test_nibp_interval_with_sim() -> None:
    _, sim, nibp = _nibp_setup()
    nibp.set_interval(60, 0)
    results, _ = _nibp_run(sim, nibp, 0, 290_000, step=100)
    # started at 60, 120, 180 and 240 s; each done ~30-40 s later
    assert [r[1][0] for r in results] == [True, True, True, True]
    assert sim.measurements == 4
    assert all(60_000 * (i + 1) < t < 60_000 * (i + 1) + 40_000
               for i, (t, _) in enumerate(results))


# ---------------------------------------------------------------- MAX30102 (stretch)


def test_max30102_sim_driver_estimator() -> None:
    from csfw import max30102, ppg
    from host.max30102_sim import Max30102Sim

    sim = Max30102Sim(pulse_bpm=84, ratio=0.7)
    dev = max30102.Max30102(sim)
    dev.init(rate_sps=100)
    est = ppg.PpgEstimator(rate_sps=dev.rate_sps, window_s=4)
    for now in range(0, 6001, 100):           # read every 100 ms: ~10 samples
        sim.advance(now)
        dev.read(est.add)
    spo2, pr, ratio = est.estimate()
    assert ratio is not None and abs(ratio - 0.7) < 0.02
    assert spo2 is not None and abs(spo2 - (110 - 25 * 0.7)) <= 1
    assert pr is not None and abs(pr - 84) <= 3
    assert dev.overflows == 0 and dev.samples == 601  # 100 sps, 0..6000 ms inclusive
    assert "not clinically validated" in ppg.NOT_VALIDATED and ppg.SRC == "max30102"
    # a slow reader loses samples and the driver counts the overflow
    for now in range(6100, 7101, 1000):
        sim.advance(now)
        dev.read(est.add)
    assert dev.overflows > 0


def test_max30102_wrong_part_id() -> None:
    from csfw import max30102
    from host.max30102_sim import Max30102Sim

    with pytest.raises(max30102.Max30102Error, match="part id"):
        max30102.Max30102(Max30102Sim(part_id=0x11)).init()


# ------------------------------------------------- oximeter plausibility (issue 17 point 5)


def _feed_stream(oxi: Oximeter, data: bytes, rate_per_s: int, until_ms: int,
                 step: int = 100) -> dict[int, tuple]:
    """Feed `data` as it would arrive at rate_per_s bytes/s; summary every second."""
    box, dev = uart_pair(capacity=4096)
    oxi._uart = box
    samples: dict[int, tuple] = {}
    sent = 0
    for now in range(0, until_ms + 1, step):
        due = min(len(data), now * rate_per_s // 1000)
        if due > sent:
            dev.write(data[sent:due])
            sent = due
        oxi.poll(now)
        if now % 1000 == 0:
            samples[now] = oxi.summary(now)
    return samples


def _true_frames(seconds: int, spo2: int = 97, pr: int = 72) -> bytes:
    out = bytearray()
    for i in range(seconds * 60):
        out += bci.encode_frame(6, (i * 7) % 128, pr, spo2)
    return bytes(out)


def test_random_bytes_never_become_readings() -> None:
    # 10 minutes of random bytes at 4800 baud (480 bytes/s): before the fix,
    # 33 readings with st=ok came out of this (e.g. SpO2 44 / PR 104)
    rng = random.Random(17)
    noise = bytes(rng.getrandbits(8) for _ in range(600 * 480))
    oxi = Oximeter(None)
    samples = _feed_stream(oxi, noise, 480, 600_000, step=200)
    ok = [s for s in samples.values() if s[3] == contract.ST_OK]
    assert ok == []
    assert oxi.health(600_000) == "error"
    c = oxi.counters()
    assert c["frames"] > 1000 and c["implausible"] == c["frames"]  # "frames" happen; none believed


@pytest.mark.parametrize("rx_baud", [2400, 9600, 19200, 115200])
def test_wrong_baud_rate_gives_no_readings_and_error_health(rx_baud: int) -> None:
    # the module sends at 4800 baud; the box's UART is set to another rate
    frames = _true_frames(30)
    seen = reclock(frames, 4800, rx_baud)
    assert seen and seen != frames
    oxi = Oximeter(None)
    rate = len(seen) * 1000 // 30_000 + 1
    samples = _feed_stream(oxi, seen, rate, 30_000)
    assert [s for s in samples.values() if s[3] == contract.ST_OK] == []
    assert oxi.health(30_000) == "error"


def test_right_baud_through_the_reclocker_is_fine() -> None:
    # control for the test above: the same path at the right rate works
    frames = _true_frames(10)
    assert reclock(frames, 4800, 4800) == frames
    oxi = Oximeter(None)
    samples = _feed_stream(oxi, frames, 300, 10_000)  # 60 frames/s x 5 bytes
    assert samples[10_000] == (97, 72, 6, contract.ST_OK)


def test_half_unplugged_line_reports_only_true_values() -> None:
    # a loose contact: bytes lost, some bytes garbled (line floating)
    rng = random.Random(5)
    frames = _true_frames(120, spo2=93, pr=88)
    damaged = bytearray()
    for b in frames:
        r = rng.random()
        if r < 0.15:
            continue                        # lost
        damaged.append(rng.getrandbits(8) if r < 0.30 else b)
    oxi = Oximeter(None)
    samples = _feed_stream(oxi, bytes(damaged), len(damaged) // 120, 120_000)
    ok = [s for s in samples.values() if s[3] == contract.ST_OK]
    assert all(s[:2] == (93, 88) for s in ok)   # never a made-up number
    assert len(ok) < len(samples) // 4
    assert oxi.health(120_000) == "error"
