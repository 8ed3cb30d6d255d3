"""End-to-end fixtures (helpers live in e2e_support)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import Observer, SimWallClock, start_gateway

from chairside.service import Gateway
from chairside.sim.services import InfluxDB, Mosquitto
from host.clock import SimClock


@pytest.fixture
def sim_clock() -> SimClock:
    """One simulated clock for the boxes and the gateway (accelerated time)."""
    return SimClock(epoch_at_boot_ms=1_790_000_000_000, synced=True)


@pytest.fixture
def gateway(mosquitto: Mosquitto, influxdb: InfluxDB, tmp_path: Path, sim_clock: SimClock) -> Iterator[Gateway]:
    gw = start_gateway(mosquitto, influxdb, tmp_path / "gateway-state", clock=SimWallClock(sim_clock))
    yield gw
    gw.stop()


@pytest.fixture
def observer(mosquitto: Mosquitto) -> Iterator[Observer]:
    obs = Observer(mosquitto.port)
    yield obs
    obs.close()
