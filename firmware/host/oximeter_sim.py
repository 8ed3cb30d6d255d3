"""Simulated BCI pulse-oximeter module writing real frames into a FakeUART.

Frame rate: 60 frames/s (5-byte BCI frames at 4800 baud, as the module
vendors' protocol sheet gives it; see firmware/csfw/bci.py).  The pleth byte
is a synthetic pulse wave (systolic upstroke, dicrotic notch) at the
patient's pulse rate; the beep bit marks each beat.  After the probe or
finger comes back the module "searches" for ``search_ms`` before it reports
numbers again, as real modules do.

Faults: ``silent`` (module writes nothing), ``inject(raw)`` (line noise).
"""

from __future__ import annotations

import math

from csfw import bci

from .patient import Patient
from .uart import FakeUART

FRAMES_PER_S = bci.FRAMES_PER_S
MAX_CATCH_UP_MS = 1000  # older frames would have overflowed the box's UART anyway


def _pleth(phase: float) -> int:
    """Synthetic PPG over one beat (phase 0..1) scaled to 0..127."""
    up = math.exp(-(((phase - 0.18) / 0.09) ** 2))
    notch = 0.35 * math.exp(-(((phase - 0.5) / 0.12) ** 2))
    return max(0, min(127, round(10 + 105 * up + 50 * notch)))


class OximeterSim:
    def __init__(self, patient: Patient, uart: FakeUART, search_ms: int = 3000) -> None:
        self.patient = patient
        self.uart = uart
        self.search_ms = search_ms
        self.silent = False
        self.frames_sent = 0
        self.frames_skipped = 0
        self._base: int | None = None
        self._index = 0
        self._phase = 0.0
        self._search_until: int | None = None  # searching after (re)attach
        self._last_probe = "none"

    def inject(self, raw: bytes) -> None:
        self.uart.write(raw)

    def _frame_time(self, i: int) -> int:
        assert self._base is not None
        return self._base + (i * 1000) // FRAMES_PER_S

    def advance(self, now: int) -> int:
        """Emit the frames due up to ``now`` (uptime ms); returns how many."""
        if self._base is None:
            self._base = now
        oldest = now - MAX_CATCH_UP_MS
        while self._frame_time(self._index) < oldest:
            self._index += 1
            self.frames_skipped += 1
        n = 0
        while self._frame_time(self._index) <= now:
            t = self._frame_time(self._index)
            self._index += 1
            frame = self._frame(t)
            if not self.silent:
                self.uart.write(frame)
                self.frames_sent += 1
                n += 1
        return n

    def _frame(self, t: int) -> bytes:
        p = self.patient
        probe = p.probe(t)
        if probe != self._last_probe:
            if probe == "ok":
                self._search_until = t + self.search_ms
            self._last_probe = probe
        if probe == "probe_off":
            return bci.encode_frame(0, 0, None, None, probe_unplugged=True)
        if probe == "no_finger":
            return bci.encode_frame(0, 0, None, None, no_finger=True)
        pr = max(1, min(254, p.pulse(t)))
        self._phase += pr / 60.0 / FRAMES_PER_S
        beep = False
        if self._phase >= 1.0:
            self._phase -= math.floor(self._phase)
            beep = True
        pleth = _pleth(self._phase)
        if self._search_until is not None and t < self._search_until:
            return bci.encode_frame(2, pleth, None, None, searching=True)
        spo2 = max(0, min(100, p.spo2(t)))
        return bci.encode_frame(6, pleth, pr, spo2, beep=beep)
