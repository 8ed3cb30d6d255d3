"""``chairside backup`` and ``chairside restore``: InfluxDB plus the state folders.

    chairside backup [--root DIR] [--dest DIR] [--keep 14]
    chairside backup --restore BACKUP [--root DIR]

A backup is one folder ``/var/backups/chairside/<UTC time>/`` (root only, 0700):

* ``influx/``: ``influxd backup -portable -db chairside`` through InfluxDB's
  backup port (``bind-address``, 127.0.0.1:8089; it has no login, which is
  why the installer binds it to loopback), a consistent snapshot taken while
  InfluxDB runs;
* ``state.tar.gz``: ``/etc/chairside`` (settings, CA and certificates, InfluxDB
  logins, pager policy and ack secret), ``/var/lib/chairside`` (broker
  accounts, service credentials, box configs, the gateway's spool, dead
  letters, watermarks and alarm state, the pager's state) and
  ``/etc/mosquitto/chairside`` (password file, ACL, certificates), copied
  while the services run (their state files are replaced atomically);
* ``MANIFEST.json``: when, what, sizes.

It is written as ``<time>.partial`` and renamed when complete; then all but
the newest ``--keep`` complete backups are deleted.  **It holds secrets**
(the CA key, every password): keep copies off the server encrypted.

Restore (a new server, or the same one after a loss): install first
(``chairside install --site ...``), start InfluxDB, then ``chairside backup
--restore BACKUP``.  It stops the gateway and pager (``systemctl``; not under
``--root``), puts the state folders back, sets the InfluxDB users' passwords
and grants to the restored logins (logging in with this server's admin), then
restores the database into a temporary database
(``influxd restore -portable -newdb``) and copies every point into
``chairside`` (``SELECT * INTO ... GROUP BY *``: tags stay tags, types are
kept, points already there are not duplicated), drops the temporary database
and starts the services again.  Running it twice restores the same points.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chairside.install import influxdb
from chairside.install.server import ADMIN_USER, READ_USER, WRITE_USER, Layout, influx_url
from chairside.store.influx import CredentialsError, read_credentials

STATE_FOLDERS = ("/etc/chairside", "/var/lib/chairside", "/etc/mosquitto/chairside")
DEFAULT_KEEP = 14
PARTIAL = ".partial"
SERVICES = ("chairside-gateway", "chairside-pager")


class BackupError(RuntimeError):
    """A backup or restore that cannot go on; the message says why."""


def _settings(layout: Layout) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(layout.settings.read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{layout.settings}: {exc} (run `chairside install` first)") from exc
    return data


def _influxd(*args: str) -> str:
    binary = shutil.which("influxd") or "/usr/bin/influxd"
    proc = subprocess.run([binary, *args], capture_output=True, text=True, check=False, timeout=3600)
    if proc.returncode != 0:
        raise BackupError(f"influxd {' '.join(args[:2])} failed ({proc.returncode}): "
                          f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc.stdout + proc.stderr


def backups_in(dest: Path) -> list[Path]:
    """Complete backups, oldest first (their names are UTC times)."""
    if not dest.is_dir():
        return []
    return sorted(p for p in dest.iterdir() if p.is_dir() and (p / "MANIFEST.json").exists()
                  and not p.name.endswith(PARTIAL))


def backup(layout: Layout, dest: Path | None = None, keep: int = DEFAULT_KEEP,
           now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
           out: Callable[[str], None] = print) -> Path:
    """Make one backup; returns its folder."""
    if keep < 1:
        raise BackupError("--keep must be at least 1")
    settings = _settings(layout)
    dest = dest or layout.backups
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o700)
    stamp = now().strftime("%Y%m%dT%H%M%SZ")
    final = dest / stamp
    work = dest / (stamp + PARTIAL)
    if final.exists():
        raise BackupError(f"{final} exists (one backup per second at most)")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    database = str(settings["database"])
    _influxd("backup", "-portable", "-db", database, "-host", f"127.0.0.1:{settings['influx_rpc_port']}",
             str(work / "influx"))
    members = []
    with tarfile.open(work / "state.tar.gz", "w:gz") as tar:
        for folder in STATE_FOLDERS:
            path = layout.at(folder)
            if path.exists():
                tar.add(path, arcname=folder.lstrip("/"))
                members.append(folder)
    (work / "state.tar.gz").chmod(0o600)
    manifest = {
        "created": now().isoformat(timespec="seconds"),
        "database": database,
        "influx_files": sorted(p.name for p in (work / "influx").iterdir()),
        "state_folders": members,
        "bytes": sum(p.stat().st_size for p in work.rglob("*") if p.is_file()),
    }
    (work / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    work.rename(final)
    out(f"backup: {final} ({manifest['bytes']} bytes: database {database}, {', '.join(members)})")
    for old in prune(dest, keep):
        out(f"backup: removed {old} (keeping the newest {keep})")
    return final


def prune(dest: Path, keep: int) -> list[Path]:
    """Delete leftovers of interrupted backups and all but the newest ``keep``
    complete ones; returns the complete backups deleted."""
    for stale in dest.iterdir():
        if stale.is_dir() and stale.name.endswith(PARTIAL):
            shutil.rmtree(stale, ignore_errors=True)
    old = backups_in(dest)[:-keep]
    for path in old:
        shutil.rmtree(path)
    return old


def _extract(archive: Path, root: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if not any(member.name == f.lstrip("/") or member.name.startswith(f.lstrip("/") + "/")
                       for f in STATE_FOLDERS):
                raise BackupError(f"{archive}: unexpected member {member.name!r}")
        tar.extractall(root, filter="tar")


def _systemctl(layout: Layout, verb: str, out: Callable[[str], None]) -> None:
    if not layout.real:
        out(f"restore: skipped: systemctl {verb} {' '.join(SERVICES)} (--root)")
        return
    subprocess.run(["systemctl", verb, *SERVICES], check=False)


def restore(layout: Layout, source: Path, out: Callable[[str], None] = print) -> int:
    """Restore ``source`` (a backup folder); returns the number of points copied."""
    manifest_path = source / "MANIFEST.json"
    if not manifest_path.exists():
        raise BackupError(f"{source} is not a complete backup (no MANIFEST.json)")
    manifest = json.loads(manifest_path.read_text())
    database = str(manifest["database"])
    influx_dir = layout.influx_dir
    try:  # this server's admin login (the restored files may hold another server's)
        admin_now: tuple[str, str] | None = read_credentials(influx_dir / "admin.json")
    except CredentialsError:
        admin_now = None
    _systemctl(layout, "stop", out)
    _extract(source / "state.tar.gz", layout.root)
    out(f"restore: {', '.join(manifest['state_folders'])} restored under {layout.root}")
    if layout.real:  # the restored password file, ACL and Grafana login
        subprocess.run(["systemctl", "reload", "mosquitto"], check=False)
        subprocess.run(["systemctl", "try-restart", "grafana-server"], check=False)
    settings = _settings(layout)
    url = influx_url(settings)
    admin = influxdb.Account(*(admin_now or read_credentials(influx_dir / "admin.json")))
    if admin_now is not None:  # keep this server's admin login in the restored folder
        (influx_dir / "admin.json").write_text(json.dumps({"user": admin.user, "password": admin.password}) + "\n")
        (influx_dir / "admin.json").chmod(0o600)
    plan = influxdb.InfluxPlan(
        database=database, retention=str(settings["retention"]), admin=admin,
        writer=influxdb.Account(*read_credentials(influx_dir / "gateway.json")),
        reader=influxdb.Account(*read_credentials(influx_dir / "grafana.json")))
    if {plan.writer.user, plan.reader.user} != {WRITE_USER, READ_USER} or admin.user != ADMIN_USER:
        out("restore: note: user names differ from this version's defaults; restoring them as they are")
    for line in influxdb.configure(url, plan):
        out(f"restore: InfluxDB: {line}")
    client = influxdb.InfluxClient(url, (admin.user, admin.password), timeout_s=3600)
    temp = f"{database}_restore_{source.name.lower()}"
    client.query(f'DROP DATABASE "{temp}"')
    _influxd("restore", "-portable", "-db", database, "-newdb", temp,
             "-host", f"127.0.0.1:{settings['influx_rpc_port']}", str(source / "influx"))
    try:
        copied = _copy_back(client, temp, database, shards=_backup_shards(source / "influx"))
    finally:
        client.query(f'DROP DATABASE "{temp}"')
    out(f"restore: {copied} points copied into {database}")
    _systemctl(layout, "start", out)
    return copied


def _backup_shards(folder: Path) -> int:
    """How many shards the portable backup holds (its ``*.manifest``)."""
    count = 0
    for manifest in folder.glob("*.manifest"):
        count += len(json.loads(manifest.read_text()).get("files") or [])
    return count


def _counts(client: influxdb.InfluxClient, database: str, rp: str) -> dict[tuple[str, str], int]:
    """(measurement, field) -> number of values, over every shard of ``rp``."""
    out: dict[tuple[str, str], int] = {}
    for item in client.query(f'SELECT count(*) FROM "{database}"."{rp}"./.*/', database):
        for column, value in zip(item["columns"][1:], item["values"][0][1:], strict=True):
            if value:
                out[(str(item["name"]), column.removeprefix("count_"))] = int(value)
    return out


def _copy_back(client: influxdb.InfluxClient, temp: str, database: str, shards: int,
               deadline_s: float = 600.0) -> int:
    """Copy every point of ``temp`` into ``database``'s default policy; returns the
    points written.

    Restored shards open in the background: until then a query answers "engine
    is closed", or sees no measurement at all, and a ``SELECT INTO`` may copy
    nothing without an error.  So the copy (idempotent: same points) is repeated
    until ``database`` holds at least as many values of each measurement and
    field as ``temp`` does, and ``temp`` shows data when the backup had shards."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            policies = [str(rp["name"]) for rp in client.rows(f'SHOW RETENTION POLICIES ON "{temp}"')]
            source: dict[tuple[str, str], int] = {}
            for rp in policies:
                for key, value in _counts(client, temp, rp).items():
                    source[key] = source.get(key, 0) + value
            copied = 0
            if source or not shards:
                for rp in policies:
                    series = client.query(f'SELECT * INTO "{database}"."{influxdb.RETENTION_POLICY}".:MEASUREMENT '
                                          f'FROM "{temp}"."{rp}"./.*/ GROUP BY *')
                    if series:
                        copied += int(series[0]["values"][0][1])
                target = _counts(client, database, influxdb.RETENTION_POLICY)
                if all(target.get(key, 0) >= value for key, value in source.items()):
                    return copied
        except influxdb.InfluxSetupError as exc:
            if "engine is closed" not in str(exc):
                raise
        if time.monotonic() > end:
            raise BackupError(f"the restored database {temp} did not become readable within {deadline_s:.0f} s")
        time.sleep(0.2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("/"), help="the installed layout's root (see install)")
    parser.add_argument("--dest", type=Path, default=None, help="folder of backups (/var/backups/chairside)")
    parser.add_argument("--keep", type=int, default=DEFAULT_KEEP, help="how many backups to keep")
    parser.add_argument("--restore", type=Path, default=None, metavar="BACKUP",
                        help="restore this backup folder instead (docs/install-server.md)")


def run(args: argparse.Namespace) -> int:
    layout = Layout(args.root.resolve())
    os.umask(0o077)
    try:
        if args.restore is not None:
            restore(layout, args.restore)
        else:
            backup(layout, args.dest, args.keep)
    except (BackupError, influxdb.InfluxSetupError, CredentialsError, OSError, tarfile.TarError) as exc:
        print(f"chairside backup: {exc}")
        return 1
    return 0
