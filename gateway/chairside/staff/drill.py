"""``chairside drill``: a labelled emergency drill through the real chain.

A simulated chair box (:class:`host.box.SimBox`, the real firmware on the host
hardware layer, scripted patient) connects to the clinic's broker as chair
``drill-N`` — never as chair ``N``, so the real box on that chair, its alarms
and its page threads are untouched.  The running gateway validates and stores
its readings like any box's; the alarm engine labels events of ``drill-*``
chairs ``drill=1`` (``chairside.alarms.engine.DRILL_PREFIX``) and the pager
starts their pages with ``DRILL``.  Staff acknowledge the page as they would a
real one; this command watches the chain (:mod:`.drill_watch`) and measures:

* **time to alarm**: the crossing reading (or, for ``offline``, the box's last
  will) arriving on MQTT → the alarm event arriving on MQTT (both seen by this
  command, one clock);
* **time to page**: ``first_page_t - event_t`` of the pager's first ``page``
  record on ``chairside/v1/{site}/pages``;
* **time to acknowledgement**: ``acked_t - first_page_t`` of its
  ``acknowledge``/``forward_ack`` record, or "not acknowledged within
  ``--ack-timeout``".

The result is printed and stored in InfluxDB (measurement ``drills``; tags
site, chair = the rehearsed chair N, scenario; fields alarm_ms, page_ms,
ack_ms, acked_by, result).  When nobody acknowledged, the drill acknowledges
its alarm at the chair as ``drill-end`` so escalation does not run on after
the command has given up (the stored result still says ``not_acked``).

Scenarios (conditions of ``profiles/adult.json``):

========== ====================== ============================================
scenario   condition              what the drill box does
========== ====================== ============================================
desat      spo2_critical          SpO2 80 % after the lead-in
bp-spike   bp_intervention        patient at 225/125, ``nibp_start`` command
afib-rvr   afib_rvr_suspected     irregular 130-170 bpm after the lead-in
offline    box_offline            link cut after the lead-in (last will)
========== ====================== ============================================

On the clinic's broker the drill logs in with the drill account
(``--mqtt-credentials services/drill.json`` from ``chairside provision
--service drill``; ``--mqtt-ca`` for TLS): its main login watches, its
``box`` login is the drill box, and the ACL lets both touch only drill chairs
(``drill-<chair>`` of every provisioned box).  While it waits, the drill
prints what it is waiting for (every ``PROGRESS_EVERY_S`` seconds).

``--site`` is required (or ``CHAIRSIDE_SITE`` in the environment): a drill
never falls back to the demo's site on a real install.

Exit code: 0 acknowledged, 1 drill finished without an acknowledgement (or
no alarm/page), 2 bad arguments, the broker refused the drill's logins, or
the broker/database unreachable.

Why this module is longer than ~500 lines: a drill is one scripted procedure (scenarios, the run, its
result, storing it and the command); the watching is in ``drill_watch.py``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from chairside import contract, mqtt_auth
from chairside.alarms.engine import DRILL_PREFIX
from chairside.sim.simulator import box_refused, make_box
from chairside.store.influx import InfluxError, InfluxWriter
from chairside.store.influx import read_credentials as read_influx_credentials

from .drill_watch import BoxRunner, Clock, Payload, Seen, SystemClock, Watch

log = logging.getLogger("chairside.staff.drill")

# influxdb-client ships partial annotations; its Point is used through Any.
_point_module: Any = importlib.import_module("influxdb_client.client.write.point")
_Point: Any = _point_module.Point
_MS: Any = importlib.import_module("influxdb_client.domain.write_precision").WritePrecision.MS

RAISE_EVENTS: Final = ("raised", "escalated", "renotify")
ACK_ACTIONS: Final = ("acknowledge", "forward_ack")
END_ACK_BY: Final = "drill-end"
PROGRESS_EVERY_S: Final = 15.0
DRILL_BOX_LOGIN: Final = "box"
SITE_ENV: Final = "CHAIRSIDE_SITE"


@dataclass(frozen=True, slots=True)
class Scenario:
    """What the drill box does and which alarm the chain must produce."""

    name: str
    alarm: str
    patient: str
    crossing_kind: str
    """box topic of the crossing message (vitals, nibp or status)"""
    crossing: Callable[[Payload], bool]
    script: Callable[[int], list[tuple[int, str, Any]]]
    """patient script for a lead-in of ``lead_ms`` (simulated uptime)"""
    nibp_start: bool = False
    cut_link: bool = False
    max_sim_s: float = 60.0
    """simulated seconds after the lead-in within which the crossing must come"""


def _int(payload: Payload, name: str) -> int | None:
    value = payload.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _desat_crossing(p: Payload) -> bool:
    spo2 = _int(p, "spo2")
    return p.get("st") == "ok" and spo2 is not None and spo2 < 85


def _bp_crossing(p: Payload) -> bool:
    sys_, dia = _int(p, "sys"), _int(p, "dia")
    return p.get("st") == "ok" and ((sys_ or 0) >= 220 or (dia or 0) >= 120)


def _afib_crossing(p: Payload) -> bool:
    pr = _int(p, "pr")
    return p.get("st") == "ok" and pr is not None and pr >= 110


def _offline_crossing(p: Payload) -> bool:
    return p.get("state") == "offline"


SCENARIOS: Final[dict[str, Scenario]] = {
    "desat": Scenario(
        "desat", "spo2_critical", "normal", "vitals", _desat_crossing,
        lambda lead: [(lead, "spo2", 80)], max_sim_s=30,
    ),
    "bp-spike": Scenario(
        "bp-spike", "bp_intervention", "normal", "nibp", _bp_crossing,
        lambda lead: [(0, "bp", (225, 125))], nibp_start=True, max_sim_s=90,
    ),
    "afib-rvr": Scenario(
        "afib-rvr", "afib_rvr_suspected", "afib_rvr", "vitals", _afib_crossing,
        lambda lead: [(0, "pulse", 72), (lead, "pulse", None)], max_sim_s=30,
    ),
    "offline": Scenario(
        "offline", "box_offline", "normal", "status", _offline_crossing,
        lambda lead: [], cut_link=True, max_sim_s=30,
    ),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class DrillConfig:
    site: str
    chair: str
    scenario: str
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    influx_url: str = "http://127.0.0.1:8086"
    database: str = "chairside"
    ack_timeout_s: float = 300.0
    page_timeout_s: float = 600.0
    """the clinic's policy may delay medium-priority pages (60 s in the example)"""
    alarm_timeout_s: float = 60.0
    speed: float = 1.0
    lead_s: float = 5.0
    """normal readings before the emergency (the gateway sees the chair online)"""
    connect_timeout_s: float = 15.0
    mqtt_credentials: Path | None = None
    """the drill account's file (``chairside provision --service drill``): main
    login for the watcher, login ``box`` for the drill box"""
    mqtt_ca: Path | None = None
    """the clinic CA: both connections use TLS"""

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario: unknown {self.scenario!r} (one of {', '.join(SCENARIOS)})")
        ids = contract.id_regex()
        if not ids.fullmatch(self.site):
            raise ValueError(f"site: {self.site!r} does not match {ids.pattern}")
        if not ids.fullmatch(self.drill_chair):
            raise ValueError(f"chair: {self.drill_chair!r} does not match {ids.pattern}")
        if self.chair.startswith(DRILL_PREFIX):
            raise ValueError("chair: give the real chair id; the drill box adds the drill- prefix")
        for name in ("ack_timeout_s", "page_timeout_s", "alarm_timeout_s", "speed", "connect_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0")
        if self.lead_s < 0:
            raise ValueError("lead_s: must be >= 0")

    @property
    def drill_chair(self) -> str:
        return DRILL_PREFIX + self.chair

    def box_login(self) -> tuple[str | None, str | None]:
        """(user, password) of the drill box, or (None, None) without credentials;
        raises :class:`chairside.mqtt_auth.CredentialsError` (a ValueError)."""
        if self.mqtt_credentials is None:
            return None, None
        try:
            return mqtt_auth.read_credentials(self.mqtt_credentials, DRILL_BOX_LOGIN)
        except mqtt_auth.CredentialsError as exc:
            raise mqtt_auth.CredentialsError(
                f"{exc} (a drill needs the drill account: `chairside provision --service drill`, "
                "then reload the broker)") from exc

    @property
    def key(self) -> str:
        return f"{self.site}/{self.drill_chair}/{SCENARIOS[self.scenario].alarm}"


@dataclass(slots=True)
class DrillResult:
    site: str
    chair: str
    scenario: str
    alarm: str
    started_ms: int
    result: str = "no_alarm"
    """acked | not_acked | no_page | no_alarm | no_crossing | no_box"""
    alarm_ms: int | None = None
    page_ms: int | None = None
    ack_ms: int | None = None
    acked_by: str | None = None
    ack_via: str | None = None
    paged: str | None = None
    channel: str | None = None
    alarm_text: str | None = None
    notes: list[str] = field(default_factory=list)

    def influx_line(self) -> str:
        point = _Point("drills").tag("site", self.site).tag("chair", self.chair)
        point.tag("scenario", self.scenario)
        for name in ("alarm_ms", "page_ms", "ack_ms"):
            value = getattr(self, name)
            if value is not None:
                point.field(name, int(value))
        if self.acked_by is not None:
            point.field("acked_by", self.acked_by)
        point.field("result", self.result)
        point.time(self.started_ms, _MS)
        return str(point.to_line_protocol())

    def summary(self, ack_timeout_s: float) -> str:
        def ms(value: int | None) -> str:
            return "-" if value is None else (f"{value} ms" if value < 10_000 else f"{value / 1000:.1f} s")

        lines = [
            f"DRILL {self.scenario} on chair {self.chair} (site {self.site}, drill box "
            f"{DRILL_PREFIX}{self.chair}, alarm {self.alarm})",
        ]
        if self.alarm_text:
            lines.append(f"  alarm text:              {self.alarm_text}")
        lines.append(f"  time to alarm:           {ms(self.alarm_ms)}  (crossing reading → alarm event)")
        to = f", to {self.paged} via {self.channel}" if self.paged else ""
        lines.append(f"  time to page:            {ms(self.page_ms)}  (alarm event → first page{to})")
        if self.ack_ms is not None:
            lines.append(
                f"  time to acknowledgement: {ms(self.ack_ms)}  (first page → ack by {self.acked_by}"
                f" via {self.ack_via})"
            )
        elif self.page_ms is not None:
            lines.append(f"  time to acknowledgement: not acknowledged within {ack_timeout_s:g} s")
        lines.extend(f"  note: {note}" for note in self.notes)
        lines.append(f"  result: {self.result}")
        return "\n".join(lines)


class Drill:
    """One drill run; ``run()`` returns the result (nothing stored yet).

    ``progress(line)`` is told what the drill is waiting for, and again every
    ``PROGRESS_EVERY_S`` seconds of a wait (the command prints it)."""

    def __init__(self, config: DrillConfig, clock: Clock | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.scenario = SCENARIOS[config.scenario]
        self.box_user, self.box_password = config.box_login()
        self.watch = Watch(config, self.clock)
        self.progress = progress or (lambda line: None)

    def _wait(self, predicate: Callable[[Seen], bool], timeout_s: float, what: str,
              give_up: Callable[[], bool] = lambda: False) -> Seen | None:
        """watch.wait_for with progress lines; ``give_up()`` ends the wait early."""
        self.progress(f"waiting for {what} (up to {timeout_s:g} s)")
        start = time.monotonic()
        next_note = start + PROGRESS_EVERY_S
        while True:
            left = start + timeout_s - time.monotonic()
            if left <= 0:
                return None
            seen = self.watch.wait_for(predicate, min(left, 0.5))
            if seen is not None:
                self.progress(f"  seen after {time.monotonic() - start:.1f} s")
                return seen
            if give_up():
                return None
            if time.monotonic() >= next_note:
                next_note += PROGRESS_EVERY_S
                self.progress(f"  still waiting for {what}: {time.monotonic() - start:.0f} s of {timeout_s:g} s")

    def _topic(self, kind: str) -> str:
        return contract.topic(kind, self.config.site, self.config.drill_chair)

    def run(self) -> DrillResult:
        cfg, sc = self.config, self.scenario
        result = DrillResult(cfg.site, cfg.chair, cfg.scenario, sc.alarm, started_ms=self.clock.now_ms())
        self.progress(f"connecting to the broker at {cfg.mqtt_host}:{cfg.mqtt_port}")
        if not self.watch.start():
            self.watch.stop()
            why = self.watch.refused or f"not reachable/subscribed within {cfg.connect_timeout_s:g} s"
            raise ConnectionError(f"broker {cfg.mqtt_host}:{cfg.mqtt_port}: {why}")
        lead_ms = int(cfg.lead_s * 1000)
        box = make_box(
            cfg.site, cfg.drill_chair, sc.patient, cfg.mqtt_host, cfg.mqtt_port,
            epoch_at_boot_ms=self.clock.now_ms(), synced=True, nibp_interval_s=0,
            fs_dir=tempfile.mkdtemp(prefix=f"chairside-drill-{cfg.chair}-"),
            mqtt_user=self.box_user, mqtt_password=self.box_password,
            mqtt_ca=None if cfg.mqtt_ca is None else str(cfg.mqtt_ca),
        )  # fmt: skip
        box.patient.script(sc.script(lead_ms))
        runner = BoxRunner(box, cfg.speed)
        runner.start()
        graceful = True
        try:
            graceful = self._run(result, runner, lead_ms)
        finally:
            self._end(result, runner, graceful)
            self.watch.stop()
        return result

    def _run(self, result: DrillResult, runner: BoxRunner, lead_ms: int) -> bool:
        """The drill proper; returns whether the box should disconnect gracefully."""
        cfg, sc = self.config, self.scenario
        status_topic, alarms_topic = self._topic("status"), self._topic("alarms")
        online = self._wait(
            lambda s: s.topic == status_topic and s.payload.get("state") == "online", cfg.connect_timeout_s,
            f"drill box {cfg.drill_chair} to come online", lambda: box_refused(runner.box) is not None,
        )
        if online is None:
            result.result = "no_box"
            refused = box_refused(runner.box)
            if refused is not None:
                result.notes.append(f"drill box {cfg.drill_chair}: {refused} (is the drill account provisioned "
                                    "for this chair, the broker reloaded, --mqtt-credentials its file?)")
            else:
                result.notes.append(f"drill box did not come online within {cfg.connect_timeout_s:g} s")
            return True
        self.progress(f"drill box online; {cfg.lead_s:g} s of normal readings, then the {sc.name} emergency")
        if sc.nibp_start:
            self._start_nibp(result)
        graceful = True
        if sc.cut_link:
            lead_wall_s = max(0.0, (lead_ms - runner.sim_ms) / 1000 / cfg.speed)
            time.sleep(lead_wall_s)  # bounded: the lead-in, at most lead_s / speed
            runner.run_in_box_thread(runner.box.power_off)
            graceful = False
        crossing_topic = self._topic(sc.crossing_kind)
        crossing = self._wait(
            lambda s: s.topic == crossing_topic and sc.crossing(s.payload),
            cfg.lead_s / cfg.speed + sc.max_sim_s / cfg.speed + 5, f"the drill box's {sc.name} reading",
        )
        if crossing is None:
            result.result = "no_crossing"
            result.notes.append("the drill box never sent the crossing reading")
            return graceful
        alarm = self._wait(
            lambda s: s.topic == alarms_topic
            and s.payload.get("alarm") == sc.alarm
            and s.payload.get("event") in RAISE_EVENTS
            and s.rx_ms >= crossing.rx_ms - 1000,
            cfg.alarm_timeout_s, f"the gateway's {sc.alarm} alarm",
        )
        if alarm is None:
            result.result = "no_alarm"
            result.notes.append(f"no {sc.alarm} alarm event within {cfg.alarm_timeout_s:g} s: is the gateway running?")
            return graceful
        result.alarm_ms = max(0, alarm.rx_ms - crossing.rx_ms)
        result.alarm_text = str(alarm.payload.get("text", ""))
        if alarm.payload.get("drill") != 1:
            result.notes.append("the alarm event is not labelled drill=1 (gateway older than the drill labelling?)")
        page = self._wait(lambda s: self._record(s, ("page",)) and bool(s.payload.get("ok")), cfg.page_timeout_s,
                          "the pager's first page")
        if page is None:
            result.result = "no_page"
            result.notes.append(f"no page within {cfg.page_timeout_s:g} s: is the pager running, does the "
                                f"policy page {alarm.payload.get('priority')} alarms?")
            return graceful
        first_page_t, event_t = _int(page.payload, "first_page_t"), _int(page.payload, "event_t")
        if first_page_t is not None and event_t is not None:
            result.page_ms = max(0, first_page_t - event_t)
        result.paged, result.channel = page.payload.get("to"), page.payload.get("channel")
        self.progress(f"paged {result.paged} via {result.channel}: acknowledge the DRILL page as you would "
                      "a real one")
        ack = self._wait(
            lambda s: self._record(s, ACK_ACTIONS) and s.payload.get("acked_t") is not None, cfg.ack_timeout_s,
            "the acknowledgement",
        )
        if ack is None:
            result.result = "not_acked"
            return graceful
        acked_t = _int(ack.payload, "acked_t")
        if acked_t is not None and first_page_t is not None:
            result.ack_ms = max(0, acked_t - first_page_t)
        result.acked_by = str(ack.payload.get("by") or "")
        result.ack_via = str(ack.payload.get("via") or "")
        result.result = "acked"
        return graceful

    def _record(self, seen: Seen, actions: tuple[str, ...]) -> bool:
        p = seen.payload
        return (
            seen.topic == self.watch.pages_topic
            and p.get("type") == "record"
            and p.get("key") == self.config.key
            and p.get("action") in actions
        )

    def _start_nibp(self, result: DrillResult) -> None:
        cmd_id = f"drill-{self.clock.now_ms()}"
        command = {"v": 1, "cmd": "nibp_start", "id": cmd_id}
        resp_topic = self._topic("resp")
        for _ in range(3):  # the box subscribes just after its birth message
            self.watch.publish(self._topic("cmd"), command)
            resp = self.watch.wait_for(lambda s: s.topic == resp_topic and s.payload.get("id") == cmd_id, 3.0)
            if resp is not None:
                if resp.payload.get("ok") != 1:
                    result.notes.append(f"nibp_start refused: {resp.payload.get('err')}")
                return
        result.notes.append("the drill box did not answer nibp_start")

    def _end(self, result: DrillResult, runner: BoxRunner, graceful: bool) -> None:
        """Stop escalation of an unacknowledged drill alarm, then stop the box."""
        if result.alarm_ms is not None and result.result != "acked":
            ack = {"v": 1, "alarm": self.scenario.alarm, "by": END_ACK_BY}
            if self.watch.publish(self._topic("alarm_ack"), ack):
                result.notes.append(f"drill alarm acknowledged at the chair as {END_ACK_BY!r} to stop escalation")
        runner.stop(graceful=graceful)
        # the engine forgets the drill chair and resolves its page threads, so
        # a silent drill box never raises "data stale" DRILL pages afterwards
        self.watch.publish(self._topic("drill_end"), {"v": 1, "by": END_ACK_BY})
        if runner.errors:
            result.notes.append(f"the drill box failed {runner.errors} step(s) (see log)")


def store(result: DrillResult, influx_url: str, database: str, timeout_s: float = 5.0,
          credentials: tuple[str, str] | None = None) -> None:
    """Write the drill to ``drills`` (logging in with ``credentials`` on an InfluxDB
    with auth on); raises :class:`chairside.store.influx.InfluxError`."""
    writer = InfluxWriter(influx_url, database, timeout_s, credentials=credentials)
    try:
        writer.ensure_database()
        writer.write([result.influx_line()])
    finally:
        writer.close()


# ---- command line -----------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chair", required=True, help="the real chair id being rehearsed (box id drill-<chair>)")
    parser.add_argument("--scenario", required=True, choices=sorted(SCENARIOS), help="emergency to rehearse")
    parser.add_argument("--site", default=os.environ.get(SITE_ENV), required=not os.environ.get(SITE_ENV),
                        help=f"site id (required unless {SITE_ENV} is set; the demo's is demo-clinic)")
    parser.add_argument("--mqtt-host", default="127.0.0.1", help="broker host")
    parser.add_argument("--mqtt-port", type=int, default=1883, help="broker port")
    parser.add_argument("--influx-url", default="http://127.0.0.1:8086", help="InfluxDB 1.x URL")
    parser.add_argument("--database", default=contract.influx_database(), help="database")
    parser.add_argument(
        "--influx-credentials", type=Path,
        default=Path(os.environ["CHAIRSIDE_INFLUX_CREDENTIALS"]) if os.environ.get("CHAIRSIDE_INFLUX_CREDENTIALS")
        else None,
        help="JSON file {user, password} of an InfluxDB user with WRITE (an installed server: "
        "/etc/chairside/influx/gateway.json; default $CHAIRSIDE_INFLUX_CREDENTIALS)")
    parser.add_argument("--ack-timeout", type=float, default=300.0,
                        help="seconds to wait for the acknowledgement after the first page")
    parser.add_argument("--page-timeout", type=float, default=600.0,
                        help="seconds to wait for the first page after the alarm")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--lead", type=float, default=5.0, help="seconds of normal readings first")
    mqtt_auth.add_arguments(parser)


def config_from_args(args: argparse.Namespace) -> DrillConfig:
    return DrillConfig(
        site=args.site, chair=str(args.chair), scenario=args.scenario,
        mqtt_host=args.mqtt_host, mqtt_port=args.mqtt_port, influx_url=args.influx_url,
        database=args.database, ack_timeout_s=args.ack_timeout, page_timeout_s=args.page_timeout,
        speed=args.speed, lead_s=args.lead,
        mqtt_credentials=getattr(args, "mqtt_credentials", None), mqtt_ca=getattr(args, "mqtt_ca", None),
    )  # fmt: skip


def _print(line: str) -> None:
    print(line, flush=True)


def run(args: argparse.Namespace) -> int:
    if not args.site:
        log.error("bad arguments: --site is required (or set %s); the demo's site is demo-clinic", SITE_ENV)
        return 2
    try:
        config = config_from_args(args)
        influx_path = getattr(args, "influx_credentials", None)
        influx_login = read_influx_credentials(influx_path) if influx_path is not None else None
        drill = Drill(config, progress=_print)
    except ValueError as exc:  # including mqtt_auth.CredentialsError and the InfluxDB login's
        log.error("bad arguments: %s", exc)
        return 2
    except OSError as exc:  # the CA file (the credentials file's errors are CredentialsErrors)
        log.error("bad arguments: --mqtt-ca %s: %s", args.mqtt_ca, exc)
        return 2
    print(f"DRILL {config.scenario} on chair {config.chair}: drill box {config.drill_chair} at site "
          f"{config.site}; acknowledge the DRILL page as you would a real one.", flush=True)
    try:
        result = drill.run()
    except ConnectionError as exc:
        log.error("%s", exc)
        return 2
    print(result.summary(config.ack_timeout_s), flush=True)
    try:
        store(result, config.influx_url, config.database, credentials=influx_login)
    except InfluxError as exc:
        log.error("drill not stored in InfluxDB: %s", exc)
        return 2
    return 0 if result.result == "acked" else 1
