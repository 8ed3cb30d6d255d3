"""The gateway against a real influxd with ``auth-enabled`` (issue 18, point 2).

One auth-enabled influxd per module (started only when these tests run),
configured by the installer's own :func:`chairside.install.influxdb.configure`:
an admin, the gateway's write user, Grafana's read-only user, the database and
its retention policy.  Shows that the gateway writes with its write user,
that an anonymous write and a read-only user's write are refused, and that a
refused write is reported (log, /health, /metrics) and kept in the spool
until InfluxDB accepts it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gw_support import Box, health, next_id, vitals, wait_until, wall_ms
from instant_engine import instant_engine

from chairside import gateway_command
from chairside.config import GatewayConfig
from chairside.install.influxdb import Account, InfluxClient, InfluxPlan, configure, retention_of
from chairside.metrics import Metrics
from chairside.paths import REPO
from chairside.service import Gateway
from chairside.sim.services import InfluxDB, Mosquitto, free_port
from chairside.staff import drill
from chairside.store.deadletter import DeadLetters
from chairside.store.influx import InfluxUnauthorized, InfluxWriter
from chairside.store.spool import PointSpool
from chairside.store.writer import Writer, WriterConfig
from csfw import contract as fw

pytestmark = pytest.mark.services

DB = "chairside"
PLAN = InfluxPlan(database=DB, retention="30d", admin=Account("cs-admin", "admin-pw-1"),
                  writer=Account("cs-gateway", "gw-pw-1"), reader=Account("cs-grafana", "ro-pw-1"))


class AuthInflux:
    def __init__(self, db: InfluxDB, files: Path) -> None:
        self.db = db
        self.url = db.url
        self.admin = InfluxClient(db.url, (PLAN.admin.user, PLAN.admin.password))
        self.files = files

    def credentials_file(self, account: Account) -> Path:
        path = self.files / f"{account.user}.json"
        path.write_text(json.dumps({"user": account.user, "password": account.password}))
        path.chmod(0o600)
        return path

    def rows(self, q: str) -> list[dict[str, Any]]:
        reader = InfluxClient(self.url, (PLAN.reader.user, PLAN.reader.password))
        return reader.rows(q, DB)


@pytest.fixture(scope="module")
def auth_influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthInflux]:
    db = InfluxDB(workdir=tmp_path_factory.mktemp("influxd-auth"), auth=True)
    db.start()
    try:
        configure(db.url, PLAN)
        yield AuthInflux(db, tmp_path_factory.mktemp("influx-credentials"))
    finally:
        db.stop()


def test_configure_is_idempotent_and_sets_the_retention(auth_influx: AuthInflux) -> None:
    again = configure(auth_influx.url, PLAN)  # a re-run (upgrade) changes nothing it should not
    assert any("retention policy" in line for line in again)
    users = {row["user"]: row["admin"] for row in auth_influx.admin.rows("SHOW USERS")}
    assert users == {"cs-admin": True, "cs-gateway": False, "cs-grafana": False}
    grants = {row["database"]: row["privilege"]
              for row in auth_influx.admin.rows('SHOW GRANTS FOR "cs-gateway"')}
    assert grants == {DB: "WRITE"}
    grants = {row["database"]: row["privilege"]
              for row in auth_influx.admin.rows('SHOW GRANTS FOR "cs-grafana"')}
    assert grants == {DB: "READ"}
    assert retention_of(auth_influx.admin, DB) == "720h0m0s"


def test_anonymous_and_read_only_writes_are_refused(auth_influx: AuthInflux) -> None:
    line = f"vitals,site=s,chair=refused spo2=97i {wall_ms()}"
    for credentials, status in ((None, 401), (("cs-grafana", "ro-pw-1"), 403),
                                (("cs-gateway", "wrong"), 401)):
        writer = InfluxWriter(auth_influx.url, DB, 2.0, credentials=credentials)
        with pytest.raises(InfluxUnauthorized) as refused:
            writer.write([line])
        assert refused.value.status == status
        writer.close()
    writer = InfluxWriter(auth_influx.url, DB, 2.0, credentials=("cs-gateway", "gw-pw-1"))
    assert writer.ensure_database() is False  # a write user may not create databases...
    writer.check_write()  # ...but may write
    writer.close()
    assert auth_influx.rows("SELECT * FROM vitals WHERE chair = 'refused'") == []


def test_the_datasource_provisioning_reads_with_the_read_only_user(auth_influx: AuthInflux) -> None:
    """Grafana's provisioning file takes user and password from the environment
    (the installer's grafana env file): as that user, queries work and writes do not."""
    text = (REPO / "dashboards" / "provisioning" / "datasources" / "chairside.yaml").read_text()
    assert re.search(r"^\s+user: \$\{CHAIRSIDE_INFLUX_USER\}$", text, re.M)
    assert re.search(r"^\s+password: \$\{CHAIRSIDE_INFLUX_PASSWORD\}$", text, re.M)
    assert re.search(r"^\s+dbName: \$\{CHAIRSIDE_INFLUX_DB\}$", text, re.M)
    grafana = InfluxClient(auth_influx.url, (PLAN.reader.user, PLAN.reader.password))
    assert grafana.query("SELECT * FROM vitals LIMIT 1", DB) == []
    status, _ = grafana.request("/write", {"db": DB}, b"vitals,site=s,chair=g spo2=1i")
    assert status == 403


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as answer:
        return answer.read().decode()


def _gateway(broker: Mosquitto, influx: AuthInflux, credentials: Path | None, state: Path,
             port: int | None = None) -> Gateway:
    config = GatewayConfig(
        mqtt_port=broker.port, influx_url=influx.url, database=DB, state_dir=state,
        client_id=f"gw-auth-{next_id()}", influx_credentials=credentials, metrics_port=port,
        retry_min_s=0.1, retry_max_s=0.3, probe_down_s=0.2, influx_timeout_s=1.0)
    return Gateway(config, instant_engine())


def test_gateway_writes_with_its_write_user(
    mosquitto: Mosquitto, auth_influx: AuthInflux, box: Box, tmp_path: Path
) -> None:
    port = free_port()
    gw = _gateway(mosquitto, auth_influx, auth_influx.credentials_file(PLAN.writer), tmp_path / "s", port)
    gw.start()
    try:
        assert gw.wait_subscribed(10)
        topics = fw.Topics("clinic1", "auth-ok")
        base = wall_ms() - 10_000
        for seq in range(3):
            box.send(topics.vitals, vitals(seq, base + seq * 1000))
        rows = wait_until(lambda: len(r := auth_influx.rows("SELECT seq FROM vitals WHERE chair = 'auth-ok'")) == 3
                      and r, 10, "the gateway's points never arrived")
        assert [r["seq"] for r in rows] == [0, 1, 2]
        _code, body = wait_until(lambda: (h := health(port))[0] == 200 and h, 10, "/health stayed degraded")
        assert body["influx_write_refused"] is None
    finally:
        gw.stop()


def test_a_refused_write_is_reported_and_kept_in_the_spool(
    mosquitto: Mosquitto, auth_influx: AuthInflux, box: Box, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A user without WRITE (403): the ERROR line names user and database, /health
    is 503 with InfluxDB's answer, /metrics counts it; nothing is dead-lettered;
    once the grant is given the spooled points are all written."""
    caplog.set_level(logging.ERROR, logger="chairside.store.writer")
    late = Account(f"cs-late-{next_id()}", "late-pw-1")
    auth_influx.admin.query(f"CREATE USER \"{late.user}\" WITH PASSWORD '{late.password}'")
    port = free_port()
    gw = _gateway(mosquitto, auth_influx, auth_influx.credentials_file(late), tmp_path / "s", port)
    gw.start()
    try:
        assert gw.wait_subscribed(10)
        topics = fw.Topics("clinic1", "auth-late")
        base = wall_ms() - 10_000
        for seq in range(5):
            box.send(topics.vitals, vitals(seq, base + seq * 1000))
        _code, body = wait_until(lambda: (h := health(port))[0] == 503 and h[1]["spool_depth"] >= 5 and h,
                            10, "/health never reported the refusal")
        assert body["influx_write_refused"].startswith("HTTP 403")
        assert "not authorized to write" in body["influx_write_refused"]
        assert body["deadletters"] == 0
        text = _metrics(port)
        assert "chairside_gateway_influx_write_refused 1.0" in text
        assert 'chairside_gateway_write_errors_total{kind="unauthorized"}' in text
        logged = [r.getMessage() for r in caplog.records if "refused the gateway's writes" in r.getMessage()]
        assert logged and f"user '{late.user}'" in logged[0] and "lacks WRITE on database 'chairside'" in logged[0]
        assert auth_influx.rows("SELECT seq FROM vitals WHERE chair = 'auth-late'") == []

        auth_influx.admin.query(f'GRANT WRITE ON "{DB}" TO "{late.user}"')
        rows = wait_until(lambda: len(r := auth_influx.rows("SELECT seq FROM vitals WHERE chair = 'auth-late'")) == 5
                      and r, 10, "the spooled points were not written after the grant")
        assert [r["seq"] for r in rows] == [0, 1, 2, 3, 4]
        _code, body = wait_until(lambda: (h := health(port))[0] == 200 and h, 10, "/health stayed degraded")
        assert body["influx_write_refused"] is None and body["spool_depth"] == 0
        assert "chairside_gateway_influx_write_refused 0.0" in _metrics(port)
    finally:
        gw.stop()


def test_wrong_password_is_spooled_not_dead_lettered(auth_influx: AuthInflux, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="chairside.store.writer")
    durable: list[int] = []
    spool = PointSpool(tmp_path / "spool")
    metrics = Metrics()
    influx = InfluxWriter(auth_influx.url, DB, 2.0, credentials=("cs-gateway", "not-the-password"))
    writer: Writer[int] = Writer(
        WriterConfig(database=DB, batch_interval_s=0.02, retry_min_s=5.0), influx, spool,
        DeadLetters(tmp_path / "dl"), metrics,
        on_durable=durable.append, now_ms=wall_ms, on_spool_full=lambda full: None)
    writer.start()
    try:
        writer.submit([f"vitals,site=s,chair=pw seq={i}i {wall_ms() - 1000 + i}" for i in range(3)], 1)
        wait_until(lambda: durable == [1], 5, "the refused batch was not made durable (spooled)")
    finally:
        writer.stop(5)
        influx.close()
    assert spool.pending_points == 3
    assert DeadLetters(tmp_path / "dl").read() == []
    assert writer.influx_refused is not None and writer.influx_refused.startswith("HTTP 401")
    assert metrics.get("write_errors", kind="unauthorized") >= 1
    assert any("wrong or missing credentials" in r.getMessage() for r in caplog.records)


def test_gateway_command_refuses_a_bad_credentials_file(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    gateway_command.add_arguments(parser)
    bad = tmp_path / "influx.json"
    bad.write_text('{"user": "cs-gateway"}')
    args = parser.parse_args(["--influx-credentials", str(bad), "--state-dir", str(tmp_path / "s")])
    caplog.set_level(logging.ERROR)
    assert gateway_command.run(args) == 2
    assert any("InfluxDB credentials" in r.getMessage() and "password" in r.getMessage()
               for r in caplog.records)


def test_the_idle_probe_recreates_a_dropped_database_when_it_may(influxdb: InfluxDB, tmp_path: Path) -> None:
    """The probe now writes nothing (an empty POST /write, which checks the login and
    the grant); a database dropped while the gateway idles is still created again."""
    influx = InfluxWriter(influxdb.url, "probe_db", 2.0)
    writer: Writer[int] = Writer(
        WriterConfig(database="probe_db", batch_interval_s=0.02, probe_interval_s=0.1), influx,
        PointSpool(tmp_path / "spool"), DeadLetters(tmp_path / "dl"), Metrics(),
        on_durable=lambda token: None, now_ms=wall_ms, on_spool_full=lambda full: None)
    writer.start()
    try:
        wait_until(lambda: writer.influx_ok, 5, "the first probe did not succeed")
        influxdb.query('DROP DATABASE "probe_db"')
        def databases() -> list[str]:
            result: Any = influxdb.query("SHOW DATABASES")
            return [row[0] for row in result["results"][0]["series"][0].get("values", [])]

        assert "probe_db" not in databases()
        wait_until(lambda: "probe_db" in databases(), 5, "the probe did not create the database again")
        assert writer.influx_ok and writer.influx_refused is None
    finally:
        writer.stop(5)
        influx.close()


def test_a_drill_is_stored_with_the_write_login(auth_influx: AuthInflux) -> None:
    """`chairside drill --influx-credentials`: its result goes in with the write user's
    login; without one an auth-enabled InfluxDB refuses it."""

    class Result:
        def influx_line(self) -> str:
            return f'drills,site=clinic1,chair=4,scenario=desat result="acked" {wall_ms()}'

    result: Any = Result()
    with pytest.raises(InfluxUnauthorized):
        drill.store(result, auth_influx.url, DB)
    drill.store(result, auth_influx.url, DB, credentials=(PLAN.writer.user, PLAN.writer.password))
    assert [r["result"] for r in auth_influx.rows("SELECT result FROM drills WHERE chair = '4'")] == ["acked"]
