"""The e2e helpers fail loudly: ``wait_rows`` never hands back partial rows or
swallows an InfluxDB error (issue 21)."""

from __future__ import annotations

import pytest
from e2e_support import wait_rows

from chairside.sim.services import InfluxDB

pytestmark = pytest.mark.services


def test_wait_rows_raises_with_influxdbs_last_error(influxdb: InfluxDB) -> None:
    with pytest.raises(AssertionError, match=r"0 row\(s\) after 0.3 s.*last InfluxDB error: .*error parsing query"):
        wait_rows(influxdb, "SELECT FROM WHERE", 1, timeout=0.3)


def test_wait_rows_raises_instead_of_returning_too_few_rows(influxdb: InfluxDB) -> None:
    with pytest.raises(AssertionError, match=r"wanted at least 1"):
        wait_rows(influxdb, "SELECT * FROM no_such_measurement_e2e", 1, timeout=0.3)
