"""``chairside backup`` and ``--restore`` on an installed layout (issue 18, point 3).

Install into a folder, start influxd from the installed config, write points
as the gateway's user, back up, lose everything (InfluxDB's data, the state
folders, the logins), install again (a new server: new passwords, empty
database), restore: the points are back, the restored gateway login writes
again, and a second restore duplicates nothing.  Also: old backups are pruned
and an incomplete one is never counted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from chairside.install import backup, server
from chairside.install.influxdb import InfluxClient
from chairside.sim.services import InfluxDB, free_port
from chairside.store.influx import InfluxWriter, read_credentials

pytestmark = pytest.mark.services


def _install(root: Path, ports: dict[str, int]) -> None:
    parser = argparse.ArgumentParser()
    server.add_arguments(parser)
    argv = ["--site", "clinic1", "--root", str(root), "--venv-from", sys.prefix, "--server-host", "127.0.0.1"]
    args = parser.parse_args(argv + [item for option, port in ports.items() for item in (f"--{option}", str(port))])
    assert server.install(server.Layout(root), args, out=lambda line: None) == []


def _rows(root: Path, url: str) -> list[tuple[str, int]]:
    reader = InfluxClient(url, read_credentials(root / "etc/chairside/influx/grafana.json"))
    return [(r["chair"], r["spo2"]) for r in reader.rows("SELECT chair, spo2 FROM vitals", "chairside")]


def test_backup_wipe_restore_brings_the_points_back(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ports = {"mqtt-port": free_port(), "mqtt-tls-port": free_port(), "influx-port": free_port(),
             "influx-rpc-port": free_port()}
    _install(root, ports)
    layout = server.Layout(root)
    conf = root / "etc/influxdb/influxdb.conf"
    url = f"http://127.0.0.1:{ports['influx-port']}"
    now = time.time_ns() // 1_000_000
    influxd = InfluxDB(port=ports["influx-port"], workdir=tmp_path / "influxd-1", config_file=conf)
    influxd.start()
    try:
        gateway_login = read_credentials(root / "etc/chairside/influx/gateway.json")
        writer = InfluxWriter(url, "chairside", 5.0, credentials=gateway_login)
        writer.write([f"vitals,site=clinic1,chair={chair} spo2={90 + chair}i {now - 1000 * chair}"
                      for chair in range(1, 6)])
        writer.close()
        (root / "var/lib/chairside/gateway/marker").write_text("gateway state")
        made = backup.backup(layout, out=lambda line: None)
    finally:
        influxd.stop()
    manifest = json.loads((made / "MANIFEST.json").read_text())
    assert manifest["state_folders"] == ["/etc/chairside", "/var/lib/chairside", "/etc/mosquitto/chairside"]
    assert (made / "state.tar.gz").stat().st_mode & 0o077 == 0

    # the server is lost: InfluxDB's data, the state folders, every login
    for folder in ("var/lib/influxdb", "var/lib/chairside", "etc/chairside", "etc/mosquitto/chairside"):
        shutil.rmtree(root / folder)
    _install(root, ports)  # a new server: new passwords, an empty database
    assert read_credentials(root / "etc/chairside/influx/gateway.json") != gateway_login

    influxd = InfluxDB(port=ports["influx-port"], workdir=tmp_path / "influxd-2", config_file=conf)
    influxd.start()
    try:
        assert _rows(root, url) == []
        assert backup.restore(layout, made, out=lambda line: None) == 5
        assert sorted(_rows(root, url)) == [(str(c), 90 + c) for c in range(1, 6)]
        assert (root / "var/lib/chairside/gateway/marker").read_text() == "gateway state"
        assert read_credentials(root / "etc/chairside/influx/gateway.json") == gateway_login
        writer = InfluxWriter(url, "chairside", 5.0, credentials=gateway_login)  # the restored login writes
        writer.write([f"vitals,site=clinic1,chair=9 spo2=99i {now}"])
        writer.close()
        backup.restore(layout, made, out=lambda line: None)  # again: nothing duplicated
        assert len(_rows(root, url)) == 6
        admin = InfluxClient(url, read_credentials(root / "etc/chairside/influx/admin.json"))
        assert [r["name"] for r in admin.rows("SHOW DATABASES")] == ["chairside"]
    finally:
        influxd.stop()


def test_old_backups_are_pruned_and_partial_ones_ignored(tmp_path: Path) -> None:
    dest = tmp_path / "backups"
    for day in range(1, 5):
        folder = dest / f"2027010{day}T023000Z"
        folder.mkdir(parents=True)
        (folder / "MANIFEST.json").write_text("{}")
    (dest / "20270105T023000Z.partial").mkdir()  # interrupted: never counted, removed
    (dest / "20270106T023000Z").mkdir()  # no manifest: not a backup, left alone
    assert [p.name for p in backup.backups_in(dest)] == [f"2027010{d}T023000Z" for d in range(1, 5)]
    removed = backup.prune(dest, keep=2)
    assert [p.name for p in removed] == ["20270101T023000Z", "20270102T023000Z"]
    assert sorted(p.name for p in dest.iterdir()) == ["20270103T023000Z", "20270104T023000Z", "20270106T023000Z"]
    with pytest.raises(backup.BackupError, match="run `chairside install` first"):
        backup.backup(server.Layout(tmp_path / "nothing"), dest, keep=2)
