"""Fake MAX30102 on a fake I2C bus: synthetic PPG with a known pulse rate and
red/IR ratio of ratios, delivered through the real register interface
(FIFO pointers, 6-byte samples, overflow counter; see csfw/max30102.py)."""

from __future__ import annotations

import math

from csfw import max30102 as reg


class Max30102Sim:
    def __init__(self, pulse_bpm: float = 72.0, ratio: float = 0.6,
                 dc_ir: int = 120_000, dc_red: int = 90_000, perfusion: float = 0.01,
                 part_id: int = reg.PART_ID_VALUE) -> None:
        self.pulse_bpm = pulse_bpm
        self.ratio = ratio
        self.dc_ir = dc_ir
        self.dc_red = dc_red
        self.perfusion = perfusion
        self.finger = True
        self.regs = bytearray(256)
        self.regs[reg.REG_PART_ID] = part_id
        self.fifo: list[tuple[int, int]] = []
        self.overflow = 0
        self._t_next: float | None = None
        self._index = 0

    # -- I2C interface (as machine.I2C) -------------------------------------
    def writeto_mem(self, addr: int, memaddr: int, buf: bytes) -> None:
        assert addr == reg.ADDR
        for i, b in enumerate(buf):
            self.regs[memaddr + i] = b
        if memaddr == reg.REG_MODE_CONFIG and buf[0] & reg.MODE_RESET:
            self.regs[reg.REG_MODE_CONFIG] = 0
            self.fifo.clear()
            self.overflow = 0
        if memaddr in (reg.REG_FIFO_WR_PTR, reg.REG_FIFO_RD_PTR, reg.REG_OVF_COUNTER):
            self.fifo.clear()
            self.overflow = 0

    def readfrom_mem_into(self, addr: int, memaddr: int, buf: bytearray | memoryview) -> None:
        assert addr == reg.ADDR
        if memaddr == reg.REG_FIFO_DATA:
            for i in range(0, len(buf), reg.BYTES_PER_SAMPLE):
                red, ir = self.fifo.pop(0) if self.fifo else (0, 0)
                for j, v in enumerate((red, ir)):
                    buf[i + 3 * j] = (v >> 16) & 0x03
                    buf[i + 3 * j + 1] = (v >> 8) & 0xFF
                    buf[i + 3 * j + 2] = v & 0xFF
            self.overflow = 0
            return
        for i in range(len(buf)):
            r = memaddr + i
            if r == reg.REG_FIFO_WR_PTR:
                buf[i] = len(self.fifo) & 0x1F  # read pointer kept at 0
            elif r == reg.REG_OVF_COUNTER:
                buf[i] = min(self.overflow, 0x1F)
            elif r == reg.REG_FIFO_RD_PTR:
                buf[i] = 0
            else:
                buf[i] = self.regs[r]

    # -- simulation ------------------------------------------------------------
    @property
    def rate_sps(self) -> int:
        return reg.SAMPLE_RATES[(self.regs[reg.REG_SPO2_CONFIG] >> 2) & 0x07]

    def _sample(self, t_s: float) -> tuple[int, int]:
        if not self.finger:
            return 300, 400  # ambient light only
        phase = 2 * math.pi * self.pulse_bpm / 60.0 * t_s
        wave = math.sin(phase)
        ir = self.dc_ir * (1 + self.perfusion * wave)
        red = self.dc_red * (1 + self.perfusion * self.ratio * wave)
        return round(red), round(ir)

    def advance(self, now: int) -> None:
        if (self.regs[reg.REG_MODE_CONFIG] & 0x07) != reg.MODE_SPO2:
            self._t_next = None
            return
        period = 1000.0 / self.rate_sps
        if self._t_next is None:
            self._t_next = float(now)
        while self._t_next <= now:
            sample = self._sample(self._index / self.rate_sps)
            self._index += 1
            self._t_next += period
            if len(self.fifo) >= reg.FIFO_DEPTH:
                self.overflow += 1  # FIFO full: sample lost (counted, as the chip does)
                continue
            self.fifo.append(sample)
