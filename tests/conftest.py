"""Shared fixtures: real Mosquitto and InfluxDB on free loopback ports.

Every test that needs a broker or a database gets its own real process,
started here and stopped after the test (function scope) or after the module
(``*_module`` fixtures, for tests that only read).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO / "gateway", REPO / "firmware"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from chairside.sim.services import InfluxDB, Mosquitto  # noqa: E402


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(workdir=tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def influxdb(tmp_path: Path) -> Iterator[InfluxDB]:
    db = InfluxDB(workdir=tmp_path / "influxd")
    db.start()
    yield db
    db.stop()


@pytest.fixture(scope="module")
def mosquitto_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto(workdir=tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def influxdb_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB]:
    db = InfluxDB(workdir=tmp_path_factory.mktemp("influxd"))
    db.start()
    yield db
    db.stop()
