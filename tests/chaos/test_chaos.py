"""Chaos: real processes killed and restarted while simulated boxes (the real
firmware on the host layer) keep measuring.  The gateway runs as its own
process (``python -m chairside.cli gateway``) so it can be SIGKILLed.

Every scenario counts the readings the firmware produced against the rows in
InfluxDB by (chair, boot, seq): published = stored, nothing twice, and the
stored order (by time) is the production order for each chair.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chairside.sim.services import GatewayProcess, InfluxDB, Mosquitto
from chairside.sim.simulator import Fleet, make_box
from host.clock import SimClock

pytestmark = [pytest.mark.services, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SITE = "chaos"
DB = "chairside"


class World:
    """Two boxes on one simulated clock; every reading they produce is recorded."""

    def __init__(self, mosquitto: Mosquitto, tmp_path: Path) -> None:
        clock = SimClock(epoch_at_boot_ms=time.time_ns() // 1_000_000 - 3_600_000, synced=True)
        self.boxes = [
            make_box(SITE, chair, "normal", "127.0.0.1", mosquitto.port, fs_dir=str(tmp_path / f"box{chair}"),
                     seed=i, clock=clock, keepalive_s=10)
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


def stored(influxdb: InfluxDB) -> list[dict[str, Any]]:
    try:
        result: Any = influxdb.query(
            f"SELECT boot, seq FROM vitals, nibp WHERE site = '{SITE}' GROUP BY chair", DB
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
    assert health["spool_depth"] > 0
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
