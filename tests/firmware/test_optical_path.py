"""The optical (MAX30102) sensor path behind the same surface as the OEM
oximeter driver; its readings say src=max30102 (not clinically validated)."""

from __future__ import annotations

from csfw import ppg
from csfw.contract import ST_NO_DATA, ST_OK
from csfw.optical import OpticalOximeter
from host.max30102_sim import Max30102Sim


def _run(sim: Max30102Sim, oxi: OpticalOximeter, until_ms: int, start_ms: int = 0) -> None:
    for now in range(start_ms, until_ms, 20):
        sim.advance(now)
        oxi.poll(now)


def test_estimates_known_rate_and_ratio_through_the_register_interface() -> None:
    sim = Max30102Sim(pulse_bpm=75, ratio=0.6)
    oxi = OpticalOximeter(sim)
    _run(sim, oxi, 6000)
    spo2, pr, _sig, st = oxi.summary(6000)
    assert st == ST_OK and oxi.health(6000) == "ok"
    assert pr is not None and abs(pr - 75) <= 4
    assert spo2 is not None and abs(spo2 - (ppg.SPO2_A - ppg.SPO2_B * 0.6)) <= 2
    assert oxi.src == "max30102" and "not clinically validated" in ppg.NOT_VALIDATED


def test_wrong_part_is_a_status_not_a_crash() -> None:
    sim = Max30102Sim(part_id=0x11)
    oxi = OpticalOximeter(sim)
    _run(sim, oxi, 3000)
    assert oxi.health(3000) == "error"
    assert oxi.summary(3000)[3] == ST_NO_DATA
