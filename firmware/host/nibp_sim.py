"""Simulated SunTech-style NIBP module answering the box over a FakeUART.

Commands are parsed byte by byte with the firmware's own codec
(csfw.suntech.CommandParser) and answered with csfw.suntech.response().
A measurement runs: inflating ``inflate_ms`` (~8 s) -> measuring 20-30 s
(deterministic from ``seed``) -> done, with the patient's BP and pulse at the
moment it finishes.  ``abort`` deflates and returns to idle.

Faults: ``silent`` (reads and drops commands, answers nothing),
``fail_next(code)`` (the next measurement ends in the module error ``code``),
``corrupt_next()`` (the next answer has a wrong checksum).
"""

from __future__ import annotations

from csfw import suntech

from .patient import Patient
from .uart import FakeUART


class NibpSim:
    def __init__(self, patient: Patient, uart: FakeUART, seed: int = 0,
                 inflate_ms: int = 8000) -> None:
        self.patient = patient
        self.uart = uart
        self.seed = seed
        self.inflate_ms = inflate_ms
        self.silent = False
        self.parser = suntech.CommandParser()
        self.state = suntech.ST_IDLE
        self.err = 0
        self.result: tuple[int, int, int, int] | None = None
        self.commands: list[bytes] = []
        self.measurements = 0
        self._buf = bytearray(64)
        self._started = 0
        self._measure_ms = 0
        self._fail_code = 0
        self._corrupt = False

    def fail_next(self, code: int) -> None:
        self._fail_code = code

    def corrupt_next(self) -> None:
        self._corrupt = True

    def _measure_duration(self) -> int:
        # 20..30 s, deterministic per (seed, measurement number)
        x = (self.seed * 7919 + self.measurements * 104729) % 10001
        return 20000 + x

    def advance(self, now: int) -> None:
        self._update(now)
        while True:
            n = self.uart.readinto(self._buf)
            if not n:
                break
            for i in range(n):
                if self.parser.feed(self._buf[i], now) and not self.silent:
                    self._handle(bytes(self.parser.body[: self.parser.n]), now)

    def _update(self, now: int) -> None:
        if self.state == suntech.ST_INFLATING and now - self._started >= self.inflate_ms:
            self.state = suntech.ST_MEASURING
        if self.state == suntech.ST_MEASURING and \
                now - self._started >= self.inflate_ms + self._measure_ms:
            if self._fail_code:
                self.state = suntech.ST_ERROR
                self.err = self._fail_code
                self._fail_code = 0
                self.result = None
            else:
                sys_, dia, map_ = self.patient.bp(now)
                self.result = (sys_, dia, map_, self.patient.pulse(now))
                self.state = suntech.ST_DONE
                self.err = 0

    def _reply(self, payload: bytes) -> None:
        frame = bytearray(suntech.response(payload))
        if self._corrupt:
            frame[-1] ^= 0x55
            self._corrupt = False
        self.uart.write(bytes(frame))

    def _handle(self, body: bytes, now: int) -> None:
        self.commands.append(body)
        if body == suntech.START_BP:
            if self.state in (suntech.ST_INFLATING, suntech.ST_MEASURING):
                self._reply(bytes((suntech.R_START,)))
                return
            self.measurements += 1
            self._measure_ms = self._measure_duration()
            self._started = now
            self.state = suntech.ST_INFLATING
            self.err = 0
            self.result = None
            self._reply(bytes((suntech.R_START,)))
        elif body == suntech.ABORT_BP:
            self.state = suntech.ST_IDLE
            self.err = 0
            self._reply(bytes((suntech.R_ABORT,)))
        elif body == suntech.GET_STATUS:
            self._reply(suntech.status_payload(self.state, self.err))
        elif body == suntech.GET_BP_DATA:
            if self.result is not None:
                sys_, dia, map_, pr = self.result
                self._reply(suntech.bp_data_payload(sys_, dia, map_, pr, 0))
                self.state = suntech.ST_IDLE
            else:
                err = self.err or suntech.E_MODULE_TIMEOUT
                self._reply(suntech.bp_data_payload(0, 0, 0, 0, err))
                if self.state == suntech.ST_ERROR:
                    self.state = suntech.ST_IDLE
