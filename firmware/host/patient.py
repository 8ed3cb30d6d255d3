"""Deterministic scripted patients for the sensor simulators.

A patient answers, for a simulated time ``t_ms`` (uptime ms):
``spo2(t)`` (int %), ``pulse(t)`` (int bpm), ``bp(t) -> (sys, dia, map)``
(mmHg ints) and ``probe(t) -> "ok" | "probe_off" | "no_finger"``.

Scenarios (``make_patient(name, seed)``): normal, desat, bp_spike,
probe_off, afib_rvr.  Everything is a pure function of (scenario, seed, t),
so runs repeat exactly.  ``Patient.script([(t_ms, field, value), ...])``
overrides a field from ``t_ms`` on (``value None`` hands the field back to
the scenario); fields are "spo2", "pulse", "bp" (a (sys, dia) or
(sys, dia, map) tuple) and "probe".

These numbers are simulated for testing and drills, not clinical data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

BP = tuple[int, int, int]
FIELDS = ("spo2", "pulse", "bp", "probe")
PROBE_STATES = ("ok", "probe_off", "no_finger")


def mean_arterial(sys_: int, dia: int) -> int:
    """MAP ~ DIA + (SYS - DIA) / 3 (the usual bedside estimate)."""
    return round(dia + (sys_ - dia) / 3)


def _noise(seed: int, key: int, span: int) -> int:
    """Deterministic integer in [-span, span] for (seed, key) (integer hash)."""
    x = (key * 2654435761 + seed * 40503 + 0x9E3779B9) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 2246822519) & 0xFFFFFFFF
    x ^= x >> 13
    return x % (2 * span + 1) - span


def _ramp(t: float, t0: float, t1: float, v0: float, v1: float) -> float:
    if t <= t0:
        return v0
    if t >= t1:
        return v1
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0)


class Patient:
    """Baseline patient; scenarios override the ``_base_*`` methods."""

    name = "normal"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._script: dict[str, list[tuple[int, Any]]] = {f: [] for f in FIELDS}

    # -- scripting ----------------------------------------------------------
    def script(self, events: Iterable[tuple[int, str, Any]]) -> Patient:
        for t_ms, field, value in events:
            if field not in FIELDS:
                raise ValueError(f"unknown field {field!r}; expected one of {FIELDS}")
            if field == "probe" and value is not None and value not in PROBE_STATES:
                raise ValueError(f"probe must be one of {PROBE_STATES}")
            self._script[field].append((int(t_ms), value))
            self._script[field].sort(key=lambda e: e[0])
        return self

    def _override(self, field: str, t_ms: int) -> Any:
        value = None
        for t0, v in self._script[field]:
            if t0 > t_ms:
                break
            value = v
        return value

    # -- answers ------------------------------------------------------------
    def spo2(self, t_ms: int) -> int:
        v = self._override("spo2", t_ms)
        return int(v) if v is not None else max(0, min(100, round(self._base_spo2(t_ms))))

    def pulse(self, t_ms: int) -> int:
        v = self._override("pulse", t_ms)
        return int(v) if v is not None else max(0, round(self._base_pulse(t_ms)))

    def bp(self, t_ms: int) -> BP:
        v = self._override("bp", t_ms)
        if v is not None:
            sys_, dia = int(v[0]), int(v[1])
            return (sys_, dia, int(v[2]) if len(v) > 2 else mean_arterial(sys_, dia))
        sys_, dia = self._base_bp(t_ms)
        s, d = round(sys_), round(dia)
        return s, d, mean_arterial(s, d)

    def probe(self, t_ms: int) -> str:
        v = self._override("probe", t_ms)
        return str(v) if v is not None else self._base_probe(t_ms)

    # -- scenario baseline ------------------------------------------------------
    def _base_spo2(self, t_ms: int) -> float:
        return 97.5 + 0.5 * math.sin(t_ms / 23000.0 + self.seed)

    def _base_pulse(self, t_ms: int) -> float:
        return 72 + 3 * math.sin(t_ms / 17000.0 + self.seed) + _noise(self.seed, t_ms // 5000, 1)

    def _base_bp(self, t_ms: int) -> tuple[float, float]:
        minute = t_ms // 60000
        return 122 + _noise(self.seed, minute, 4), 78 + _noise(self.seed + 1, minute, 3)

    def _base_probe(self, t_ms: int) -> str:
        return "ok"


class Desat(Patient):
    """97 % until 20 s, down to ~82 % at 80 s, held 20 s, back to 97 % at 130 s."""

    name = "desat"

    def _base_spo2(self, t_ms: int) -> float:
        t = t_ms / 1000.0
        if t < 80:
            return _ramp(t, 20, 80, 97, 82)
        if t < 100:
            return 82
        return _ramp(t, 100, 130, 82, 97)

    def _base_pulse(self, t_ms: int) -> float:
        # mild compensatory tachycardia during the desaturation
        return super()._base_pulse(t_ms) + (97 - self._base_spo2(t_ms)) * 1.2


class BpSpike(Patient):
    """Hypertensive surge: 125/80 until 30 s, rising to 225/125 at 150 s, held."""

    name = "bp_spike"

    def _base_bp(self, t_ms: int) -> tuple[float, float]:
        t = t_ms / 1000.0
        return _ramp(t, 30, 150, 125, 225), _ramp(t, 30, 150, 80, 125)

    def _base_pulse(self, t_ms: int) -> float:
        return _ramp(t_ms / 1000.0, 30, 150, 74, 96) + _noise(self.seed, t_ms // 5000, 1)


class ProbeOff(Patient):
    """Every 120 s: probe unplugged 30-45 s, finger out 90-100 s."""

    name = "probe_off"

    def _base_probe(self, t_ms: int) -> str:
        phase = (t_ms // 1000) % 120
        if 30 <= phase < 45:
            return "probe_off"
        if 90 <= phase < 100:
            return "no_finger"
        return "ok"


class AfibRvr(Patient):
    """Atrial fibrillation with rapid ventricular response: 130-170 bpm, irregular."""

    name = "afib_rvr"

    def _base_pulse(self, t_ms: int) -> float:
        # a new irregular rate every 700 ms, uniformly spread over 130..170
        return 150 + _noise(self.seed, t_ms // 700, 20)

    def _base_spo2(self, t_ms: int) -> float:
        return 95.5 + 0.5 * math.sin(t_ms / 19000.0 + self.seed)

    def _base_bp(self, t_ms: int) -> tuple[float, float]:
        minute = t_ms // 60000
        return 108 + _noise(self.seed, minute, 8), 70 + _noise(self.seed + 1, minute, 6)


SCENARIOS: dict[str, Callable[[int], Patient]] = {
    "normal": Patient,
    "desat": Desat,
    "bp_spike": BpSpike,
    "probe_off": ProbeOff,
    "afib_rvr": AfibRvr,
}


def make_patient(name: str, seed: int = 0) -> Patient:
    try:
        factory = SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown patient {name!r}; expected one of {sorted(SCENARIOS)}") from None
    return factory(seed)
