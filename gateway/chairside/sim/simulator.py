"""``chairside simulate``: simulated chair boxes running the real firmware.

Each box is :class:`host.box.SimBox` — the firmware's ``csfw.app.App`` on the
host hardware layer, with sensor simulators that speak the real byte
protocols — connected to a real broker over TCP.  Boxes run in one thread,
paced against the wall clock (``speed`` > 1 runs simulated time faster).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from chairside.paths import ensure_firmware_importable

log = logging.getLogger("chairside.sim.simulator")

SCENARIOS = ("normal", "desat", "bp_spike", "probe_off", "afib_rvr")


def make_box(site: str, chair: str, scenario: str, mqtt_host: str, mqtt_port: int, **kwargs: Any) -> Any:
    """Build one SimBox (imported lazily: the firmware lives outside the package)."""
    ensure_firmware_importable()
    from host.box import SimBox

    return SimBox(site, chair, scenario, mqtt_host=mqtt_host, mqtt_port=mqtt_port, **kwargs)


class Fleet:
    """A set of simulated boxes stepped together in a background thread."""

    def __init__(self, boxes: Sequence[Any], speed: float = 1.0, step_ms: int = 100) -> None:
        self.boxes = list(boxes)
        self.speed = speed
        self.step_ms = step_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        self.sim_ms = 0
        self.on_step: Callable[[int], None] | None = None
        # the one SimClock all boxes share (stepped once per tick), or None
        clocks = {id(box.clock) for box in self.boxes}
        self.shared_clock: Any = self.boxes[0].clock if len(self.boxes) > 1 and len(clocks) == 1 else None


    def run_for(self, sim_ms: int) -> None:
        """Run `sim_ms` of simulated time as fast as possible (tests)."""
        end = self.sim_ms + sim_ms
        while self.sim_ms < end:
            self._step_all(min(self.step_ms, end - self.sim_ms))

    def _step_all(self, ms: int) -> None:
        clock = self.shared_clock
        if clock is not None:
            self._step_shared(clock, ms)
        else:
            for box in self.boxes:
                self._guarded(box.step, box, ms)
        self.sim_ms += ms
        if self.on_step is not None:
            self.on_step(self.sim_ms)

    def _step_shared(self, clock: Any, ms: int, tick_ms: int = 20) -> None:
        end = clock.now_ms() + ms
        while clock.now_ms() < end:
            clock.advance(min(tick_ms, end - clock.now_ms()))
            for box in self.boxes:
                self._guarded(box.poll_once, box)

    def _guarded(self, fn: Callable[..., None], box: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # one broken box must not stop the others
            self.errors += 1
            log.exception("simulated box %s failed a step", box.cfg.get("chair"))

    def _loop(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            due_ms = (time.monotonic() - start) * 1000 * self.speed
            if self.sim_ms + self.step_ms <= due_ms:
                self._step_all(self.step_ms)
            else:
                self._stop.wait(self.step_ms / 1000 / self.speed / 2)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fleet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.close()

    def close(self) -> None:
        for box in self.boxes:
            box.close()


def parse_chairs(spec: str) -> list[tuple[str, str]]:
    """'1:normal,2:desat' -> [('1', 'normal'), ('2', 'desat')]."""
    chairs: list[tuple[str, str]] = []
    for part in spec.split(","):
        chair, _, scenario = part.strip().partition(":")
        scenario = scenario or "normal"
        if scenario not in SCENARIOS:
            raise ValueError(f"--chairs: unknown scenario {scenario!r} (one of {', '.join(SCENARIOS)})")
        chairs.append((chair, scenario))
    return chairs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", default="demo-clinic")
    parser.add_argument("--chairs", default="1:normal,2:desat,3:bp_spike,4:probe_off",
                        help="chair:scenario list; scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--nibp-interval", type=int, default=120, help="automatic NIBP interval, s")
    parser.add_argument("--unsynced", action="store_true", help="boxes start without a synced clock")


def run(args: argparse.Namespace) -> int:
    try:
        chairs = parse_chairs(args.chairs)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    boxes = [
        make_box(args.site, chair, scenario, args.mqtt_host, args.mqtt_port,
                 nibp_interval_s=args.nibp_interval, synced=not args.unsynced,
                 epoch_at_boot_ms=int(time.time() * 1000), seed=i)
        for i, (chair, scenario) in enumerate(chairs)
    ]
    fleet = Fleet(boxes, speed=args.speed)
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    fleet.start()
    log.info("simulating %d chairs at %.1fx", len(boxes), args.speed)
    done.wait()
    fleet.stop()
    return 0
