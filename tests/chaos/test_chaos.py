"""Chaos: real processes killed and restarted while simulated boxes (the real
firmware on the host layer) keep measuring.  The gateway runs as its own
process (``python -m chairside.cli gateway``) so it can be SIGKILLed.

Every scenario counts the readings the firmware produced against the rows in
InfluxDB by (chair, boot, seq): published = stored, nothing twice, and the
stored order (by time) is the production order for each chair.  Every box
ends with its whole spool confirmed by the gateway's `stored` watermark
(docs/contract.md, "End-to-end delivery"): a reading leaves a box only once
the gateway has made it durable.

The broker-crash scenarios at the end run Mosquitto exactly as deploy/ ships
it (deploy/mosquitto/chairside.conf through ShippedMosquitto: provisioned
accounts, ACL, no anonymous access), and once more with persistence switched
off (a variant, named as such); boxes and the real gateway log in with their
provisioned credentials.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chairside.install import pki
from chairside.install.provision import ShippedMosquitto, State
from chairside.sim.services import GatewayProcess, InfluxDB, Mosquitto
from chairside.sim.simulator import Fleet, make_box
from host.clock import SimClock

pytestmark = [pytest.mark.services, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SITE = "chaos"
DB = "chairside"


class World:
    """Two boxes on one simulated clock; every reading they produce is recorded."""

    def __init__(self, mosquitto: Mosquitto, tmp_path: Path,
                 logins: dict[str, tuple[str, str]] | None = None) -> None:
        clock = SimClock(epoch_at_boot_ms=time.time_ns() // 1_000_000 - 3_600_000, synced=True)
        logins = logins or {}
        self.boxes = [
            make_box(SITE, chair, "normal", "127.0.0.1", mosquitto.port, fs_dir=str(tmp_path / f"box{chair}"),
                     seed=i, clock=clock, keepalive_s=10,
                     mqtt_user=logins.get(chair, (None, None))[0],
                     mqtt_password=logins.get(chair, (None, None))[1])
            for i, chair in enumerate(("1", "2"))
        ]
        self.fleet = Fleet(self.boxes, step_ms=1000)
        self.produced: dict[str, list[tuple[int, int]]] = {"1": [], "2": []}
        for box in self.boxes:
            self._record(box)

    def _record(self, box: Any) -> None:
        deliver: Callable[[Any, int], None] = box.app._deliver
        chair = box.cfg["chair"]

        def recording(rec: Any, now: int) -> None:
            self.produced[chair].append((rec[1], rec[2]))  # (boot, seq) of a vitals/nibp record
            deliver(rec, now)

        box.app._deliver = recording

    def run(self, sim_s: int) -> None:
        self.fleet.run_for(sim_s * 1000)

    def pace(self, sim_s: int, real_s_per_sim_s: float = 0.1) -> None:
        """Run `sim_s` simulated seconds with real time passing in between,
        so the gateway (on real time) keeps confirming as boxes measure."""
        for _ in range(sim_s):
            self.fleet.run_for(1000)
            time.sleep(real_s_per_sim_s)

    def oldest_held_age_ms(self) -> int:
        """Age of the oldest reading any box still holds unconfirmed."""
        ages = [0]
        for box in self.boxes:
            oldest = box.app.spool.peek(0)
            if oldest is not None:
                ages.append(box.app.clock.now_ms() - oldest[3])
        return max(ages)

    def settle(self, gateway: GatewayProcess, influxdb: InfluxDB, timeout: float = 40.0) -> None:
        """Stop producing; let boxes and gateway finish; then wait for the rows."""
        end = time.monotonic() + timeout
        while not all(box.app.link.online for box in self.boxes):
            assert time.monotonic() < end, "boxes did not reconnect"
            self.run(1)
        # the clock stands still from here: no new readings, only replay and acks
        while any(box.app.spool.depth or box.app.mqtt.inflight for box in self.boxes):
            assert time.monotonic() < end, "boxes did not drain their spools"
            for box in self.boxes:
                box.app.poll()
            time.sleep(0.005)
        want = sum(len(v) for v in self.produced.values())
        while time.monotonic() < end:
            if len(stored(influxdb)) >= want:
                break
            time.sleep(0.2)
        health = gateway.health()
        assert health is not None

    def close(self) -> None:
        self.fleet.close()


def stored(influxdb: InfluxDB, fields: str = "boot, seq") -> list[dict[str, Any]]:
    try:
        result: Any = influxdb.query(
            f"SELECT {fields} FROM vitals, nibp WHERE site = '{SITE}' GROUP BY chair", DB
        )
    except OSError:
        return []
    rows: list[dict[str, Any]] = []
    for res in result.get("results", []):
        for series in res.get("series", []) or []:
            for values in series["values"]:
                row = dict(zip(series["columns"], values, strict=True))
                row["chair"] = series["tags"]["chair"]
                rows.append(row)
    return rows


def assert_complete(world: World, influxdb: InfluxDB) -> dict[str, int]:
    rows = stored(influxdb)
    counts: dict[str, int] = {}
    for chair, produced in world.produced.items():
        mine = sorted((r for r in rows if r["chair"] == chair), key=lambda r: r["time"])
        keys = [(r["boot"], r["seq"]) for r in mine]
        assert len(keys) == len(set(keys)), f"chair {chair}: duplicates"
        assert sorted(keys) == sorted(produced), (
            f"chair {chair}: published {len(produced)}, stored {len(keys)}, "
            f"missing {sorted(set(produced) - set(keys))[:10]}"
        )
        assert keys == produced, f"chair {chair}: order differs"
        counts[chair] = len(keys)
    for box in world.boxes:
        assert box.app.spool.dropped == 0
        # every reading left the box because the watermark covered it
        assert box.app.confirmed == len(world.produced[box.cfg["chair"]])
    return counts


@pytest.fixture
def world(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[World]:
    w = World(mosquitto, tmp_path)
    yield w
    w.close()


@pytest.fixture
def gateway(mosquitto: Mosquitto, influxdb: InfluxDB, tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(mosquitto.port, influxdb.url, tmp_path / "gateway-state",
                        client_id="chaos-gateway", workdir=tmp_path)
    gw.start()
    yield gw
    gw.stop()


def test_mosquitto_restart(
    mosquitto: Mosquitto, influxdb: InfluxDB, gateway: GatewayProcess, world: World
) -> None:
    world.run(15)
    mosquitto.stop(remove=False)  # persistence saved: the gateway's session survives
    world.run(20)
    mosquitto.start()
    world.run(20)
    world.settle(gateway, influxdb, timeout=15)
    counts = assert_complete(world, influxdb)
    assert min(counts.values()) >= 50


def test_influxd_down_for_a_while(
    mosquitto: Mosquitto, influxdb: InfluxDB, gateway: GatewayProcess, world: World
) -> None:
    world.run(10)
    influxdb.kill()
    world.run(40)
    end = time.monotonic() + 15
    while (health := gateway.health()) is None or health["influx_reachable"] is not False:
        assert time.monotonic() < end, f"gateway never noticed InfluxDB down: {health}"
        time.sleep(0.1)
    assert isinstance(depth := health["spool_depth"], int) and depth > 0
    influxdb.start()
    world.run(10)
    world.settle(gateway, influxdb)
    counts = assert_complete(world, influxdb)
    assert min(counts.values()) >= 55


def test_gateway_sigkill_mid_stream(
    mosquitto: Mosquitto, influxdb: InfluxDB, gateway: GatewayProcess, world: World
) -> None:
    world.run(10)
    for _ in range(3):
        world.run(3)
        gateway.kill()  # no goodbye: whatever it had not acknowledged is redelivered
        world.run(5)
        gateway.start()
    world.run(10)
    world.settle(gateway, influxdb)
    counts = assert_complete(world, influxdb)
    assert min(counts.values()) >= 40


def test_gateway_paused_while_boxes_resend(
    mosquitto: Mosquitto, influxdb: InfluxDB, gateway: GatewayProcess, world: World
) -> None:
    """SIGSTOP: the gateway's connection stays open but nothing is read,
    stored or confirmed.  The boxes keep every reading and, the watermark not
    moving for 30 s, send everything they hold again (the broker queues both
    copies for the gateway's session); woken, the gateway stores each once and
    confirms them all."""
    world.pace(20)
    assert all(box.app.confirmed >= 5 for box in world.boxes)
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGSTOP)
    try:
        world.pace(45, 0.02)  # ~1 s of real time: the broker keeps the gateway's connection
        assert all(box.app.resends >= 1 and box.app.spool.depth >= 40 for box in world.boxes), [
            (box.app.resends, box.app.spool.depth, box.app.confirmed) for box in world.boxes]
    finally:
        gateway.proc.send_signal(signal.SIGCONT)
    world.pace(10)
    world.settle(gateway, influxdb)
    counts = assert_complete(world, influxdb)
    assert min(counts.values()) >= 60


def test_box_wifi_cut_and_restore(
    mosquitto: Mosquitto, influxdb: InfluxDB, gateway: GatewayProcess, world: World
) -> None:
    world.run(10)
    cut = world.boxes[0]
    cut.wlan.cut()
    world.run(30)
    assert cut.app.spool.depth > 0  # the firmware kept the readings
    cut.wlan.restore()
    world.run(30)
    world.settle(gateway, influxdb)
    counts = assert_complete(world, influxdb)
    assert min(counts.values()) >= 65


# ---- broker crash, with the broker as deploy/ ships it ------------------------------


class ShippedMosquittoWithoutPersistence(ShippedMosquitto):
    """VARIANT, not what deploy/ ships: deploy/mosquitto/chairside.conf with
    persistence switched off entirely (Debian's `persistence true` turned to
    false), so a restarted broker has no sessions, queues or retained
    messages at all, whatever the autosave settings say."""

    def config_text(self) -> str:
        text = super().config_text().replace("persistence true", "persistence false")
        assert "persistence false" in text and "persistence true" not in text
        return text


class ShippedClinic:
    """Provisioned accounts (a gateway service account, one box account per
    chair), and the broker with the shipped configuration on loopback."""

    def __init__(self, root: Path, broker_class: type[ShippedMosquitto]) -> None:
        self.state = State(root / "state")
        self.gateway_credentials, _ = self.state.provision_service("gateway")
        self.box_logins: dict[str, tuple[str, str]] = {}
        for chair in ("1", "2"):
            path, _ = self.state.provision_box(SITE, chair, mqtt_host="127.0.0.1", tls=False)
            cfg = json.loads(path.read_text())
            self.box_logins[chair] = (str(cfg["mqtt"]["user"]), str(cfg["mqtt"]["password"]))
        pki_dir = root / "pki"  # the TLS listener (unused here) needs its certificates
        pki.init_ca(pki_dir)
        pki.issue_server(pki_dir, ["localhost", "127.0.0.1"])
        for name in ("ca.crt", "server.crt", "server.key"):
            shutil.copy(pki_dir / name, self.state.broker_dir / name)
        self.broker = broker_class(self.state.broker_dir, workdir=root / "broker")


def gateway_metric(gateway: GatewayProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values = [float(m.group(1)) for m in re.finditer(rf"^\S*{name}_total(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    assert values, f"{name} not in /metrics"
    return sum(values)


def broker_crash_with_boxes_back_first(broker_class: type[ShippedMosquitto], influxdb: InfluxDB,
                                       tmp_path: Path) -> None:
    """kill -9 of the broker while boxes measure; the broker restarts with
    whatever its disk holds; the boxes reconnect and publish while the
    gateway is still SIGSTOPped (their readings go to nobody: the gateway's
    session is gone), then the gateway wakes, finds its session lost, and the
    boxes re-send what stays unconfirmed.  Every (boot, seq) is stored once."""
    clinic = ShippedClinic(tmp_path, broker_class)
    broker = clinic.broker
    broker.start()
    gateway = GatewayProcess(broker.port, influxdb.url, tmp_path / "gateway-state",
                             client_id="chaos-gateway", workdir=tmp_path / "gateway")
    gateway.args += ["--mqtt-credentials", str(clinic.gateway_credentials)]
    world = World(broker, tmp_path, clinic.box_logins)
    try:
        gateway.start()
        world.pace(20)
        assert all(box.app.link.online and box.app.confirmed >= 5 for box in world.boxes), (
            "boxes log in with their provisioned accounts and the gateway confirms their readings")
        assert gateway_metric(gateway, "mqtt_sessions_lost") == 0

        # crash: the gateway is frozen first so that it cannot reconnect
        # before the boxes; the broker has not saved since it started (the
        # shipped autosave is every 30 s), so its restart knows no session
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGSTOP)
        broker.kill()
        seq_at_kill = {box.cfg["chair"]: box.app.seq for box in world.boxes}
        assert not list(broker.workdir.glob("*.db")), "no autosave yet: the broker's disk holds nothing"
        world.pace(5)  # boxes keep measuring, offline
        assert not any(box.app.link.online for box in world.boxes)
        broker.start()
        before = {box.cfg["chair"]: box.app.published_live for box in world.boxes}
        end = time.monotonic() + 15
        while not all(box.app.link.online and box.app.published_live >= before[box.cfg["chair"]] + 3
                      for box in world.boxes):
            assert time.monotonic() < end, "boxes did not reconnect to the restarted broker"
            world.pace(1)
        # the boxes are back and have published (live and re-sent) to nobody
        seq_at_wake = {box.cfg["chair"]: box.app.seq for box in world.boxes}
        gateway.proc.send_signal(signal.SIGCONT)
        # it finds its connection dead, reconnects, and the broker has no
        # session for it: logged at WARNING and counted
        end = time.monotonic() + 15
        while gateway_metric(gateway, "mqtt_sessions_lost") < 1 or not (
                (health := gateway.health()) and health.get("mqtt_subscribed")):
            assert time.monotonic() < end, "gateway did not count a lost session and re-subscribe"
            world.pace(1)
        assert gateway_metric(gateway, "mqtt_sessions_lost") == 1
        assert "was lost by the broker (session present: 0)" in gateway.log_path.read_text()

        # boxes keep measuring; what went to nobody stays unconfirmed, so the
        # box re-sends it (30 s without watermark progress) and the gateway stores it
        end = time.monotonic() + 25
        world.pace(35)
        while world.oldest_held_age_ms() > 5_000:
            assert time.monotonic() < end, (
                f"readings stay unconfirmed: oldest held {world.oldest_held_age_ms()} ms old")
            world.pace(1)
        assert sum(box.app.resends for box in world.boxes) >= 1
        world.settle(gateway, influxdb, timeout=20)
        counts = assert_complete(world, influxdb)
        assert min(counts.values()) >= 60
        # what the boxes measured from the crash until the gateway woke up was
        # published to nobody (or not at all): it is in InfluxDB only because
        # the boxes kept it and re-sent it, flagged as history
        for chair in ("1", "2"):
            outage = [r for r in stored(influxdb, "boot, seq, hist") if r["chair"] == chair
                      and seq_at_kill[chair] <= r["seq"] < seq_at_wake[chair]]
            made = [k for k in world.produced[chair] if seq_at_kill[chair] <= k[1] < seq_at_wake[chair]]
            assert len(outage) == len(made) >= 8
            assert all(r["hist"] is True for r in outage), outage
    finally:
        if gateway.proc is not None and gateway.proc.poll() is None:
            gateway.proc.send_signal(signal.SIGCONT)
        world.close()
        gateway.stop()
        broker.stop()


def test_broker_kill9_as_shipped_boxes_back_before_the_gateway(influxdb: InfluxDB, tmp_path: Path) -> None:
    broker_crash_with_boxes_back_first(ShippedMosquitto, influxdb, tmp_path)


def test_broker_kill9_with_persistence_off_boxes_back_before_the_gateway(
    influxdb: InfluxDB, tmp_path: Path
) -> None:
    broker_crash_with_boxes_back_first(ShippedMosquittoWithoutPersistence, influxdb, tmp_path)
