"""``chairside simulate``: simulated chair boxes running the real firmware.

Each box is :class:`host.box.SimBox` — the firmware's ``csfw.app.App`` on the
host hardware layer, with sensor simulators that speak the real byte
protocols — connected to a real broker over TCP.  Boxes run in one thread,
paced against the wall clock (``speed`` > 1 runs simulated time faster).

On a secured broker (the shipped ``deploy/mosquitto/chairside.conf``) every
box needs its own account: ``--mqtt-credentials`` once per simulated chair,
each a box's ``config.json`` from ``chairside provision`` (its site and chair
must be the simulated one's), and ``--mqtt-ca`` for TLS.  A broker that
refuses a box (CONNACK "not authorized", an untrusted certificate) stops the
command with exit code 2 and the reason; a box still offline after
``ONLINE_WARN_S`` is reported on stderr.  (A broker drops publishes outside
an account's ACL without telling the client: that, no simulator can see.)
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chairside import mqtt_auth
from chairside.paths import ensure_firmware_importable

log = logging.getLogger("chairside.sim.simulator")

SCENARIOS = ("normal", "desat", "bp_spike", "probe_off", "afib_rvr")
ONLINE_WARN_S = 15.0
# csfw.link failure causes that no retry will cure
_REFUSALS = ("broker_refused", "broker_untrusted")


def make_box(site: str, chair: str, scenario: str, mqtt_host: str, mqtt_port: int, **kwargs: Any) -> Any:
    """Build one SimBox (imported lazily: the firmware lives outside the package)."""
    ensure_firmware_importable()
    from host.box import SimBox

    return SimBox(site, chair, scenario, mqtt_host=mqtt_host, mqtt_port=mqtt_port, **kwargs)


def box_refused(box: Any) -> str | None:
    """Why the broker refuses ``box`` (a SimBox that has never been online), or None.

    Reads the firmware's own link state (``csfw.link.Link``): the last
    failure was a CONNACK refusal or an untrusted broker certificate."""
    link = box.app.link
    if link.onlines or link.last_cause not in _REFUSALS:
        return None
    err = link.last_error
    code = getattr(err, "code", None)
    if link.last_cause == "broker_refused" and isinstance(code, int) and code > 0:
        from csfw.mqtt import CONNACK_TEXT

        return f"the broker refused the connection: {CONNACK_TEXT.get(code, code)} (CONNACK {code})"
    return f"the broker refused the connection: {err}"


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
    parser.add_argument("--mqtt-credentials", type=Path, action="append", default=None,
                        help="a box's config.json from `chairside provision`, once per simulated chair "
                        "(in --chairs order); needed by a broker without anonymous access")
    parser.add_argument("--mqtt-ca", type=Path, default=None,
                        help="clinic CA certificate: connect with TLS and verify the broker")


def box_logins(site: str, chairs: Sequence[tuple[str, str]], files: Sequence[Path] | None
               ) -> list[tuple[str | None, str | None]]:
    """(user, password) per chair from ``--mqtt-credentials`` files; raises ValueError."""
    if not files:
        return [(None, None)] * len(chairs)
    if len(files) != len(chairs):
        raise ValueError(f"--mqtt-credentials: {len(files)} file(s) for {len(chairs)} chair(s); give one "
                         "box config.json per simulated chair, in the order of --chairs")
    logins: list[tuple[str | None, str | None]] = []
    for (chair, _), path in zip(chairs, files, strict=True):
        user, password = mqtt_auth.read_credentials(path)
        data = json.loads(path.read_text())
        is_box = "site" in data or "chair" in data  # a box's config.json: it must be this chair's
        if is_box and (str(data.get("site")), str(data.get("chair"))) != (site, chair):
            raise ValueError(f"--mqtt-credentials {path}: box {data.get('site')}/{data.get('chair')}, "
                             f"not the simulated {site}/{chair}")
        logins.append((user, password))
    return logins


def _complain(line: str) -> None:
    print(f"chairside simulate: {line}", file=sys.stderr, flush=True)
    log.error("%s", line)


def watch_fleet(fleet: Fleet, site: str, done: threading.Event, online_warn_s: float = ONLINE_WARN_S,
                poll_s: float = 0.25) -> int:
    """Until ``done``: 2 as soon as the broker refuses a box (with the reason
    on stderr), a warning for each box not online after ``online_warn_s``; 0 when done."""
    start = time.monotonic()
    warned: set[int] = set()
    while not done.wait(poll_s):
        for i, box in enumerate(fleet.boxes):
            chair = box.cfg.get("chair")
            why = box_refused(box)
            if why is not None:
                hint = ("give each box's config.json with --mqtt-credentials (and --mqtt-ca for TLS)"
                        if box.cfg["mqtt"].get("user") is None else
                        "is the box provisioned, its password current, the broker reloaded?")
                _complain(f"box {site}/{chair}: {why}; nothing is delivered. {hint}")
                return 2
            if i not in warned and not box.app.link.onlines and time.monotonic() - start > online_warn_s:
                warned.add(i)
                _complain(f"box {site}/{chair} not online after {online_warn_s:g} s "
                          f"(last failure: {box.app.link.last_cause}: {box.app.link.last_error})")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        chairs = parse_chairs(args.chairs)
        logins = box_logins(args.site, chairs, getattr(args, "mqtt_credentials", None))
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    ca = getattr(args, "mqtt_ca", None)
    try:
        boxes = [
            make_box(args.site, chair, scenario, args.mqtt_host, args.mqtt_port,
                     nibp_interval_s=args.nibp_interval, synced=not args.unsynced,
                     epoch_at_boot_ms=int(time.time() * 1000), seed=i,
                     mqtt_user=user, mqtt_password=password, mqtt_ca=None if ca is None else str(ca))
            for i, ((chair, scenario), (user, password)) in enumerate(zip(chairs, logins, strict=True))
        ]
    except OSError as exc:  # an unreadable --mqtt-ca
        log.error("--mqtt-ca %s: %s", ca, exc)
        return 2
    fleet = Fleet(boxes, speed=args.speed)
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    fleet.start()
    log.info("simulating %d chairs at %.1fx", len(boxes), args.speed)
    try:
        return watch_fleet(fleet, args.site, done)
    finally:
        fleet.stop()
