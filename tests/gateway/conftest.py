"""Fixtures of the gateway tests: a gateway (real engine, spo2_low without delay)
and a stand-in box, on the real Mosquitto and InfluxDB of tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gw_support import DB, Box, next_id
from instant_engine import instant_engine

from chairside.config import GatewayConfig
from chairside.service import Gateway
from chairside.sim.services import InfluxDB, Mosquitto


@pytest.fixture
def gateway(mosquitto: Mosquitto, influxdb: InfluxDB, tmp_path: Path) -> Iterator[Gateway]:
    config = GatewayConfig(
        mqtt_port=mosquitto.port,
        influx_url=influxdb.url,
        database=DB,
        state_dir=tmp_path / "state",
        client_id=f"gw-test-{next_id()}",
        reject_interval_s=0.3,
        retry_min_s=0.1,
        retry_max_s=0.5,
        influx_timeout_s=1.0,
    )
    gw = Gateway(config, instant_engine())
    gw.start()
    assert gw.wait_subscribed(10)
    yield gw
    gw.stop()


@pytest.fixture
def box(mosquitto: Mosquitto) -> Iterator[Box]:
    b = Box(mosquitto)
    yield b
    b.close()
