"""Simulated SunTech Advantage OEM NIBP module answering the box over a FakeUART.

Speaks the module's serial protocol as the public sources describe it
(csfw/suntech.py, docs/hardware-protocols.md): commands are parsed byte by
byte with the firmware's own codec (csfw.suntech.CommandParser).  Start BP is
acknowledged with 'O'; the cuff inflates for ``inflate_ms`` (~8 s), then
deflates while measuring 20-30 s (deterministic from ``seed``; ``measure_ms``
fixes it, e.g. for the demo's quicker first reading); at the end the
module sends 'K' on its own (or 'E' for a failed measurement) and answers
Get BP Data with the 24-byte frame holding the patient's BP and heart rate
at that moment (error code 0) or the error code.  Abort deflates and answers
'A'.  Get Cuff Pressure answers the current cuff pressure.

Faults: ``silent`` (reads and drops commands, answers nothing),
``fail_next(code)`` (the next measurement ends with 'E' and module error
``code``), ``corrupt_next()`` (the next answer has a wrong checksum).
"""

from __future__ import annotations

from csfw import suntech

from .patient import Patient
from .uart import FakeUART

IDLE, INFLATING, MEASURING, DONE, ERROR = range(5)
INFLATE_TO_MMHG = 160


class NibpSim:
    def __init__(self, patient: Patient, uart: FakeUART, seed: int = 0,
                 inflate_ms: int = 8000, measure_ms: int | None = None) -> None:
        self.patient = patient
        self.uart = uart
        self.seed = seed
        self.inflate_ms = inflate_ms
        self.measure_ms = measure_ms
        self.silent = False
        self.parser = suntech.CommandParser()
        self.state = IDLE
        self.err = 0
        self.result: tuple[int, int, int, int] | None = None
        self.commands: list[bytes] = []
        self.measurements = 0
        self._buf = bytearray(64)
        self._started = 0
        self._measure_ms = 0
        self._fail_code = 0
        self._corrupt = False
        self._now = 0

    def fail_next(self, code: int) -> None:
        self._fail_code = code

    def corrupt_next(self) -> None:
        self._corrupt = True

    def _measure_duration(self) -> int:
        if self.measure_ms is not None:
            return self.measure_ms
        # 20..30 s, deterministic per (seed, measurement number)
        x = (self.seed * 7919 + self.measurements * 104729) % 10001
        return 20000 + x

    def cuff_pressure(self, now: int) -> int:
        elapsed = now - self._started
        if self.state == INFLATING:
            return min(INFLATE_TO_MMHG, INFLATE_TO_MMHG * elapsed // max(self.inflate_ms, 1))
        if self.state == MEASURING:
            left = self.inflate_ms + self._measure_ms - elapsed
            return max(0, INFLATE_TO_MMHG * left // max(self._measure_ms, 1))
        return 0

    def advance(self, now: int) -> None:
        self._now = now
        self._update(now)
        tick = now & suntech.TICK_MASK
        while True:
            n = self.uart.readinto(self._buf)
            if not n:
                break
            for i in range(n):
                if self.parser.feed(self._buf[i], tick) and not self.silent:
                    self._handle(bytes(self.parser.body[: self.parser.n]), now)

    def _update(self, now: int) -> None:
        if self.state == INFLATING and now - self._started >= self.inflate_ms:
            self.state = MEASURING
        if self.state == MEASURING and now - self._started >= self.inflate_ms + self._measure_ms:
            if self._fail_code:
                self.state = ERROR
                self.err = self._fail_code
                self._fail_code = 0
                self.result = None
                self._send(suntech.char_payload(suntech.R_ERROR))
            else:
                sys_, dia, map_ = self.patient.bp(now)
                self.result = (sys_, dia, map_, self.patient.pulse(now))
                self.state = DONE
                self.err = 0
                self._send(suntech.char_payload(suntech.R_DONE))

    def _send(self, payload: bytes) -> None:
        if self.silent:
            return
        frame = bytearray(suntech.response(payload))
        if self._corrupt:
            frame[-1] ^= 0x55
            self._corrupt = False
        self.uart.write(bytes(frame))

    def _handle(self, body: bytes, now: int) -> None:
        self.commands.append(body)
        if body == suntech.START_BP:
            if self.state in (INFLATING, MEASURING):
                self._send(suntech.char_payload(suntech.R_ACK))
                return
            self.measurements += 1
            self._measure_ms = self._measure_duration()
            self._started = now
            self.state = INFLATING
            self.err = 0
            self.result = None
            self._send(suntech.char_payload(suntech.R_ACK))
        elif body == suntech.ABORT_BP:
            self.state = IDLE
            self.err = 0
            self._send(suntech.char_payload(suntech.R_ABORTED))
        elif body == suntech.GET_CUFF_PRESSURE:
            self._send(suntech.cuff_payload(self.cuff_pressure(now)))
        elif body == suntech.GET_BP_DATA:
            if self.result is not None:
                sys_, dia, map_, pr = self.result
                self._send(suntech.bp_data_payload(sys_, dia, map_, pr, 0, beats=30, status=1))
                self.state = IDLE
            else:
                self._send(suntech.bp_data_payload(0, 0, 0, 0, self.err or 0x0A))
                if self.state == ERROR:
                    self.state = IDLE
