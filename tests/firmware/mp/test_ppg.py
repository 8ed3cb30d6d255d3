# MAX30102 path: register helpers and the PPG estimator (runs on MicroPython).
# The estimate is NOT clinically validated; these tests only check that a
# known synthetic rate and ratio are recovered.
import math

from csfw import max30102, ppg
from mptest import raises


def _feed(est, bpm, ratio, seconds, rate=100, dc_ir=120000, dc_red=90000, perf=0.01):
    for i in range(int(seconds * rate)):
        w = math.sin(2 * math.pi * bpm / 60.0 * i / rate)
        ir = int(dc_ir * (1 + perf * w))
        red = int(dc_red * (1 + perf * ratio * w))
        est.add(red, ir)


def test_known_rate_and_ratio_recovered():
    table = (
        # (bpm, ratio, expected spo2 = 110 - 25 R)
        (72, 0.6, 95),
        (50, 0.5, 98),
        (120, 1.0, 85),
        (150, 0.8, 90),
    )
    for bpm, ratio, spo2 in table:
        est = ppg.PpgEstimator(rate_sps=100, window_s=4)
        _feed(est, bpm, ratio, 5)
        got_spo2, got_pr, got_ratio = est.estimate()
        assert abs(got_ratio - ratio) < 0.02, (bpm, got_ratio)
        assert abs(got_spo2 - spo2) <= 1, (bpm, got_spo2)
        assert abs(got_pr - bpm) <= 3, (bpm, got_pr)


def test_not_enough_samples_or_no_finger():
    est = ppg.PpgEstimator(rate_sps=100, window_s=4)
    _feed(est, 72, 0.6, 2)
    assert est.estimate() == (None, None, None)
    est = ppg.PpgEstimator(rate_sps=100, window_s=4)
    _feed(est, 72, 0.6, 5, dc_ir=400, dc_red=300)       # ambient light only
    assert est.estimate() == (None, None, None)
    est = ppg.PpgEstimator(rate_sps=100, window_s=4)
    _feed(est, 72, 0.6, 5, perf=0.0)                     # no pulsatile component
    assert est.estimate() == (None, None, None)


def test_register_helpers():
    assert max30102.samples_waiting(5, 2, 0) == 3
    assert max30102.samples_waiting(1, 30, 0) == 3       # pointer wrap
    assert max30102.samples_waiting(4, 4, 2) == 32       # overflowed: FIFO full
    assert max30102.spo2_config(100, 3, 1) == 0x27
    assert max30102.spo2_config(400, 1, 0) == 0x0D
    raises(ValueError, max30102.spo2_config, 120)
    assert max30102.led_code(70) == 35                   # 7.0 mA at 0.2 mA/LSB
    raises(ValueError, max30102.led_code, 600)
    assert max30102.fifo_config(4, True, 0xF) == 0x5F


class FakeI2C:
    def __init__(self, part_id):
        self.regs = bytearray(256)
        self.regs[0xFF] = part_id
        self.writes = []

    def readfrom_mem_into(self, addr, reg, buf):
        for i in range(len(buf)):
            buf[i] = self.regs[reg + i]

    def writeto_mem(self, addr, reg, buf):
        self.writes.append((reg, buf[0]))
        self.regs[reg] = buf[0]


def test_driver_init_checks_part_id_and_configures():
    bad = FakeI2C(0x11)
    raises(max30102.Max30102Error, max30102.Max30102(bad).init)
    ok = FakeI2C(0x15)
    dev = max30102.Max30102(ok)
    dev.init(rate_sps=100, red_ma_x10=70, ir_ma_x10=70)
    assert (max30102.REG_SPO2_CONFIG, 0x27) in ok.writes
    assert (max30102.REG_LED1_PA, 35) in ok.writes
    assert ok.writes[-1] == (max30102.REG_MODE_CONFIG, max30102.MODE_SPO2)
    assert dev.read(lambda r, i: None) == 0
