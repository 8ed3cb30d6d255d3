"""``chairside install``: a clinic server in one idempotent command.

    sudo chairside install --site clinic1 [--server-host broker.clinic.lan ...]
    chairside install --site clinic1 --root DIR [--venv-from VENV] [ports ...]

On a fresh Debian 12 server (run as root; or ``sh deploy/install.sh``, which
installs the Debian packages first) it:

1. creates the ``chairside`` system user and its folders (``/etc/chairside``,
   ``/var/lib/chairside/{gateway,pager,services}``, ``/var/backups/chairside``)
   with the right owners and modes;
2. copies the project to ``/opt/chairside`` and installs it into its own venv
   ``/opt/chairside/.venv`` (``--venv-from`` reuses an existing venv: tests);
3. writes the broker's files: the Mosquitto config
   (``deploy/mosquitto/chairside.conf`` → ``/etc/mosquitto/conf.d/``), the
   clinic CA and the server certificate (:mod:`chairside.install.pki`, in
   ``/etc/chairside/pki``; copied to ``/etc/mosquitto/chairside/``), and the
   service accounts, password file and ACL (:mod:`chairside.install.provision`,
   state in ``/var/lib/chairside``);
4. configures InfluxDB: ``deploy/influxdb/influxdb.conf`` (loopback, auth on),
   an admin, the gateway's write user and Grafana's read-only user, the
   database and its retention policy (:mod:`chairside.install.influxdb`);
5. writes the pager policy (from ``gateway/chairside/pager/example-policy.json``,
   only if there is none: the clinic edits it) and the ack secret (only if none);
6. prepares the nurses' station: its TLS certificate from the clinic CA
   (``/etc/chairside/station/``), its accounts file
   (``/etc/chairside/station-users.json``) and, with ``--station-lead NAME``,
   the first lead account (password from standard input with
   ``--station-lead-password-stdin``, else generated and printed once; an
   existing account is kept);
7. installs the units (``deploy/systemd``) and enables them;
8. checks that everything is up: the files (:func:`check`), then ``chairside
   doctor`` until nothing fails (up to a minute; :func:`check_running`).

Re-running it is an upgrade: the project and units are replaced, the broker
config rewritten, the InfluxDB users' grants and the retention policy set
again; existing secrets, certificates, accounts and the pager policy are kept.
Settings given once (site, retention, ports) are remembered in
``/etc/chairside/install.json``.

``--root DIR`` installs into a folder instead of ``/`` (every path above is
under DIR, and the configs name the paths under DIR, so the services can be
started from that layout): nothing outside DIR is touched, so there is no
``useradd``, no ``chown`` and no ``systemctl`` (the command says what it
skipped); InfluxDB is configured by starting ``influxd`` with the installed
config for the duration of the install.

Why this module is longer than ~500 lines: the install is one ordered procedure (the eight steps above) over one
:class:`Layout`; each step is a short function here, and what they call is in
modules of its own (``pki``, ``provision``, ``influxdb``, ``doctor``).  Split
across files, the order of the steps and what each leaves for the next would
no longer read from top to bottom.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chairside import contract
from chairside.install import influxdb, pki, provision
from chairside.paths import REPO

USER = "chairside"
CERT_RENEW_DAYS = 60
SERVICES = tuple(provision.SERVICES)
"""every service account provisioning knows (gateway, pager, staff, drill)"""
RUN_BY_SERVICE = frozenset({"gateway", "pager", "staff"})
"""read by the units (owned by chairside; staff: the station unit uses its ``station`` login, and people
with sudo its main one); the others (drill) by people with sudo (root only)"""
UNITS_DIR = REPO / "deploy" / "systemd"
INFLUX_TEMPLATE = REPO / "deploy" / "influxdb" / "influxdb.conf"
PAGER_TEMPLATE = REPO / "gateway" / "chairside" / "pager" / "example-policy.json"
DATASOURCE = REPO / "dashboards" / "provisioning" / "datasources" / "chairside.yaml"
DASHBOARD_PROVIDER = REPO / "dashboards" / "provisioning" / "dashboards" / "chairside.yaml"
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "node_modules", "__pycache__", "*.pyc", ".*_cache",
                                     ".hypothesis", "*.egg-info", "build", "demo-state", "tests")
ADMIN_USER = "chairside-admin"
WRITE_USER = "chairside-gateway"
READ_USER = "chairside-grafana"
DEFAULTS: dict[str, Any] = {
    "retention": influxdb.DEFAULT_RETENTION,
    "database": contract.influx_database(),
    "mqtt_port": provision.PLAIN_PORT,
    "mqtt_tls_port": provision.TLS_PORT,
    "mqtt_tls_listen": "",
    "influx_port": 8086,
    "influx_rpc_port": 8089,  # not Debian's 8088: the pager's ack page uses that (example policy)
    "server_hosts": [],
    "station_port": 8443,
    "grafana_url": "",
}
STATION_UNIT_SITE = "--site clinic1"
STATION_UNIT_GRAFANA = "--grafana-url https://grafana.clinic.lan"
STATION_UNIT_PORT = "--port 8443"


class InstallError(RuntimeError):
    """A step that cannot go on; the message says what to do."""


# ---- where things go ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    """The server's paths, under ``root`` (``/`` for a real install)."""

    root: Path

    def at(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    @property
    def real(self) -> bool:
        return self.root == Path("/")

    @property
    def opt(self) -> Path:
        return self.at("/opt/chairside")

    @property
    def venv(self) -> Path:
        return self.at("/opt/chairside/.venv")

    @property
    def etc(self) -> Path:
        return self.at("/etc/chairside")

    @property
    def settings(self) -> Path:
        return self.at("/etc/chairside/install.json")

    @property
    def pki(self) -> Path:
        return self.at("/etc/chairside/pki")

    @property
    def influx_dir(self) -> Path:
        return self.at("/etc/chairside/influx")

    @property
    def grafana_dir(self) -> Path:
        return self.at("/etc/chairside/grafana")

    @property
    def station_dir(self) -> Path:
        return self.at("/etc/chairside/station")

    @property
    def station_users(self) -> Path:
        return self.at("/etc/chairside/station-users.json")

    @property
    def state(self) -> Path:
        return self.at("/var/lib/chairside")

    @property
    def backups(self) -> Path:
        return self.at("/var/backups/chairside")

    @property
    def broker_dir(self) -> Path:
        return self.at("/etc/mosquitto/chairside")

    @property
    def mosquitto_conf(self) -> Path:
        return self.at("/etc/mosquitto/conf.d/chairside.conf")

    @property
    def influx_conf(self) -> Path:
        return self.at("/etc/influxdb/influxdb.conf")

    @property
    def influx_data(self) -> Path:
        return self.at("/var/lib/influxdb")

    @property
    def units(self) -> Path:
        return self.at("/etc/systemd/system")

    def rewrite(self, text: str) -> str:
        """Absolute server paths in ``text`` → the same paths under root."""
        if self.real:
            return text
        for prefix in ("/opt/chairside", "/etc/chairside", "/var/lib/chairside", "/var/backups/chairside",
                       "/etc/mosquitto/chairside", "/var/lib/influxdb", "/etc/influxdb"):
            text = re.sub(rf"(?<![\w/.]){re.escape(prefix)}(?=[/\s\"']|$)", str(self.at(prefix)), text,
                          flags=re.M)
        return text


# ---- small file helpers ------------------------------------------------------------


class Report:
    """What the install did, printed as it goes."""

    def __init__(self, out: Callable[[str], None] = print) -> None:
        self.out = out
        self.skipped: list[str] = []

    def __call__(self, text: str) -> None:
        self.out(f"install: {text}")

    def skip(self, text: str) -> None:
        self.skipped.append(text)
        self.out(f"install: skipped: {text}")


def _write(path: Path, text: str, mode: int) -> bool:
    """Write atomically; True if the content changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == text:
        path.chmod(mode)
        return False
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.chmod(mode)
    tmp.replace(path)
    return True


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _secret_json(path: Path, user: str) -> tuple[str, str]:
    """The (user, password) kept in ``path``; a new random password the first time."""
    data = _load_json(path)
    password = data.get("password")
    if data.get("user") != user or not isinstance(password, str) or len(password) < 16:
        password = secrets.token_urlsafe(32)
        _write(path, json.dumps({"user": user, "password": password}) + "\n", 0o600)
    return user, password


class Owners:
    """chown/chmod when installing for real (root, ``/``); otherwise nothing."""

    def __init__(self, layout: Layout, report: Report) -> None:
        self.active = layout.real and os.geteuid() == 0
        self.report = report

    def __call__(self, path: Path, user: str, group: str, mode: int | None = None) -> None:
        if mode is not None:
            path.chmod(mode)
        if not self.active:
            return
        try:
            shutil.chown(path, user, group)
        except (LookupError, OSError) as exc:
            raise InstallError(f"chown {user}:{group} {path}: {exc}") from exc


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _run(argv: list[str], report: Report, check: bool = True) -> int:
    report(f"$ {shlex.join(argv)}")
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise InstallError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.returncode


# ---- the steps ------------------------------------------------------------------------


def step_user_and_folders(layout: Layout, report: Report, owners: Owners) -> None:
    if owners.active:
        try:
            pwd.getpwnam(USER)
            report(f"user {USER} exists")
        except KeyError:
            _run(["useradd", "--system", "--user-group", "--home-dir", "/var/lib/chairside",
                  "--no-create-home", "--shell", "/usr/sbin/nologin", USER], report)
    else:
        report.skip(f"useradd {USER} and every chown (--root or not root: nothing outside "
                    f"{layout.root} is touched; files keep this user's ownership)")
    folders: list[tuple[Path, str, str, int]] = [
        (layout.etc, "root", USER, 0o750),
        (layout.pki, "root", "root", 0o700),
        (layout.influx_dir, "root", USER, 0o750),
        (layout.grafana_dir, "root", "root", 0o755),
        (layout.state, USER, USER, 0o750),
        (layout.state / "gateway", USER, USER, 0o750),
        (layout.state / "pager", USER, USER, 0o750),
        (layout.state / "station", USER, USER, 0o750),
        (layout.station_dir, "root", USER, 0o750),
        (layout.state / "services", USER, USER, 0o700),
        (layout.backups, "root", "root", 0o700),
        (layout.broker_dir, "root", "mosquitto", 0o750),
        (layout.opt, "root", "root", 0o755),
    ]
    for path, user, group, mode in folders:
        path.mkdir(parents=True, exist_ok=True)
        if group == "mosquitto" and owners.active and not _group_exists(group):
            group = "root"
        owners(path, user, group, mode)
    report(f"folders under {layout.root}: /etc/chairside, /var/lib/chairside, /var/backups/chairside")


def step_project(layout: Layout, report: Report, venv_from: Path | None) -> None:
    source = REPO.resolve()
    target = layout.opt
    if source != target.resolve():
        for child in list(target.iterdir()):
            if child.name == ".venv":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        shutil.copytree(source, target, ignore=COPY_IGNORE, dirs_exist_ok=True)
        report(f"project copied from {source} to {target}")
    if venv_from is not None:
        if not (venv_from / "bin" / "python").exists():
            raise InstallError(f"--venv-from {venv_from}: no bin/python there")
        if layout.venv.is_symlink() or layout.venv.is_file():
            layout.venv.unlink()
        elif layout.venv.exists():
            raise InstallError(f"{layout.venv} is a real venv; --venv-from would replace it")
        layout.venv.symlink_to(venv_from.resolve())
        report.skip(f"creating the venv: {layout.venv} -> {venv_from} (--venv-from)")
        return
    if not (layout.venv / "bin" / "python").exists():
        _run([sys.executable, "-m", "venv", str(layout.venv)], report)
    _run([str(layout.venv / "bin" / "pip"), "install", "--quiet", "--upgrade", "-e", str(target)], report)
    report(f"project installed into {layout.venv}")


def _server_hosts(settings: dict[str, Any]) -> list[str]:
    hosts = [str(h) for h in settings.get("server_hosts") or []]
    return hosts or [socket.getfqdn()]


def _expires_within(crt: Path, days: int) -> bool:
    try:
        pki._openssl("x509", "-in", str(crt), "-noout", "-checkend", str(days * 86400))
    except pki.PkiError:
        return True  # openssl -checkend exits 1 when it expires within that time
    return False


def step_broker(layout: Layout, settings: dict[str, Any], report: Report, owners: Owners,
                renew: bool = False) -> None:
    pki_dir = layout.pki
    if not (pki_dir / "ca.crt").exists():
        pki.init_ca(pki_dir, name=f"Chairside {settings['site']} CA")
        report(f"clinic CA created in {pki_dir} (copy ca.key somewhere safe and offline)")
    hosts = _server_hosts(settings)
    why = _renew_reason(pki_dir / "server.crt", hosts, renew)
    if why:
        pki.issue_server(pki_dir, hosts, force=True)
        report(f"server certificate for {', '.join(hosts)} ({why}); valid {pki.LEAF_DAYS} days")
    group = "mosquitto" if _group_exists("mosquitto") else "root"
    for name, mode in (("ca.crt", 0o644), ("server.crt", 0o644), ("server.key", 0o640)):
        dest = layout.broker_dir / name
        shutil.copyfile(pki_dir / name, dest)
        owners(dest, "root", group, mode)
    state = provision.State(layout.state, layout.broker_dir)
    for name in SERVICES:
        if name in state.accounts["services"] and state.service_path(name).exists():
            continue
        path, _ = state.provision_service(name)
        report(f"broker account for {name}: {path}")
    state.save()
    for name in SERVICES:
        who = USER if name in RUN_BY_SERVICE else "root"
        owners(state.service_path(name), who, who, 0o600)
    owners(state.accounts_path, "root", "root", 0o600)
    owners(layout.broker_dir / "passwd", "root", group, 0o640)
    owners(layout.broker_dir / "acl", "root", group, 0o644)
    text = (REPO / "deploy" / "mosquitto" / "chairside.conf").read_text()
    tls_listen = str(settings["mqtt_tls_listen"])
    text = text.replace(f"\nlistener {provision.TLS_PORT}\n",
                        f"\nlistener {settings['mqtt_tls_port']}{' ' + tls_listen if tls_listen else ''}\n")
    text = text.replace(f"\nlistener {provision.PLAIN_PORT} 127.0.0.1\n",
                        f"\nlistener {settings['mqtt_port']} 127.0.0.1\n")
    text = text.replace(provision.SHIPPED_DIR, f"{layout.broker_dir}/")
    changed = _write(layout.mosquitto_conf, text, 0o644)
    report(f"Mosquitto config {layout.mosquitto_conf} ({'changed' if changed else 'unchanged'})")


def _renew_reason(crt: Path, hosts: list[str], renew: bool) -> str:
    """Why ``crt`` must be issued (again), or "" when it is still good."""
    return ("none yet" if not crt.exists()
            else "asked (--renew-server-cert)" if renew
            else "its host names changed" if _cert_hosts(crt) != sorted(hosts)
            else f"it expires within {CERT_RENEW_DAYS} days" if _expires_within(crt, CERT_RENEW_DAYS)
            else "")


def _cert_hosts(crt: Path) -> list[str]:
    try:
        text = pki._openssl("x509", "-in", str(crt), "-noout", "-ext", "subjectAltName")
    except pki.PkiError:
        return []
    return sorted(item.split(":", 1)[1].strip() for item in re.findall(r"(?:DNS|IP Address):[^,\n]+", text))


def influx_conf_text(layout: Layout, settings: dict[str, Any]) -> str:
    text = INFLUX_TEMPLATE.read_text()
    for key, value in (("@RPC_PORT@", settings["influx_rpc_port"]), ("@HTTP_PORT@", settings["influx_port"]),
                       ("@DATA_DIR@", layout.influx_data)):
        text = text.replace(key, str(value))
    return text


def influx_url(settings: dict[str, Any]) -> str:
    return f"http://127.0.0.1:{settings['influx_port']}"


def step_influxdb(layout: Layout, settings: dict[str, Any], report: Report, owners: Owners) -> None:
    conf = layout.influx_conf
    original = conf.with_name("influxdb.conf.chairside-orig")
    if conf.exists() and not original.exists() and "Chairside" not in conf.read_text():
        shutil.copyfile(conf, original)
        report(f"Debian's InfluxDB config kept as {original}")
    changed = _write(conf, influx_conf_text(layout, settings), 0o644)
    for sub in ("meta", "data", "wal"):
        (layout.influx_data / sub).mkdir(parents=True, exist_ok=True)
        if owners.active and _group_exists("influxdb"):
            owners(layout.influx_data / sub, "influxdb", "influxdb")
    report(f"InfluxDB config {conf} ({'changed' if changed else 'unchanged'}): loopback, auth on")
    admin = influxdb.Account(*_secret_json(layout.influx_dir / "admin.json", ADMIN_USER))
    writer = influxdb.Account(*_secret_json(layout.influx_dir / "gateway.json", WRITE_USER))
    reader = influxdb.Account(*_secret_json(layout.influx_dir / "grafana.json", READ_USER))
    owners(layout.influx_dir / "admin.json", "root", "root", 0o600)
    owners(layout.influx_dir / "gateway.json", USER, USER, 0o600)
    owners(layout.influx_dir / "grafana.json", USER, USER, 0o600)  # the station reads records with it
    plan = influxdb.InfluxPlan(database=str(settings["database"]), retention=str(settings["retention"]),
                               admin=admin, writer=writer, reader=reader)
    url = influx_url(settings)
    if layout.real:
        if changed:
            _run(["systemctl", "restart", "influxdb"], report)
        _wait_influx(url, 30.0)
        done = influxdb.configure(url, plan)
    else:
        from chairside.sim.services import InfluxDB, ServiceError

        temp = InfluxDB(port=int(settings["influx_port"]), config_file=conf)
        temp.rpc_port = int(settings["influx_rpc_port"])
        try:
            temp.start()
        except ServiceError as exc:
            raise InstallError(f"influxd with {conf} did not start: {exc}") from exc
        report.skip("systemctl restart influxdb: influxd started with the installed config for this step")
        try:
            done = influxdb.configure(url, plan)
        finally:
            temp.stop()
    for line in done:
        report(f"InfluxDB: {line}")
    env = (f"CHAIRSIDE_INFLUX_URL={url}\nCHAIRSIDE_INFLUX_DB={plan.database}\n"
           f"CHAIRSIDE_INFLUX_USER={reader.user}\nCHAIRSIDE_INFLUX_PASSWORD={reader.password}\n"
           f"CHAIRSIDE_DASHBOARDS_DIR={layout.opt / 'dashboards' / 'json'}\n")
    env_path = layout.grafana_dir / "grafana.env"
    _write(env_path, env, 0o640)
    owners(env_path, "root", "grafana" if _group_exists("grafana") else "root", 0o640)
    shutil.copyfile(DATASOURCE, layout.grafana_dir / "datasource.yaml")
    shutil.copyfile(DASHBOARD_PROVIDER, layout.grafana_dir / "dashboards.yaml")
    report(f"Grafana provisioning and its read-only login in {layout.grafana_dir} (docs/install-server.md)")
    grafana = layout.at("/etc/grafana/provisioning")
    if grafana.is_dir():  # Grafana is installed: point it at them
        for kind, name in (("datasources", "datasource.yaml"), ("dashboards", "dashboards.yaml")):
            shutil.copyfile(layout.grafana_dir / name, grafana / kind / "chairside.yaml")
        _write(layout.units / "grafana-server.service.d" / "chairside.conf",
               f"[Service]\nEnvironmentFile={env_path}\n", 0o644)
        report(f"Grafana: provisioning files in {grafana}, environment from {env_path} "
               "(systemctl restart grafana-server)")
    else:
        report.skip(f"Grafana provisioning: no {grafana} (install Grafana, then re-run; docs/install-server.md)")


def _wait_influx(url: str, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
                if resp.status == 204:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > end:
            raise InstallError(f"InfluxDB at {url} does not answer /ping (journalctl -u influxdb)")
        time.sleep(0.2)


def step_pager(layout: Layout, report: Report, owners: Owners) -> None:
    policy = layout.etc / "pager-policy.json"
    if not policy.exists():
        _write(policy, PAGER_TEMPLATE.read_text(), 0o640)
        report(f"pager policy template written to {policy}: EDIT IT (people, rota, smtp, ack.base_url), "
               "then `systemctl restart chairside-pager`")
    else:
        report(f"pager policy {policy} kept")
    owners(policy, "root", USER, 0o640)
    secret = layout.etc / "pager-ack.secret"
    if not secret.exists() or len(secret.read_bytes().strip()) < 16:
        _write(secret, secrets.token_hex(32) + "\n", 0o640)
        report(f"pager ack secret written to {secret}")
    owners(secret, "root", USER, 0o640)


def step_station(layout: Layout, settings: dict[str, Any], report: Report, owners: Owners, *,
                 renew: bool = False, lead: str | None = None,
                 read_password: Callable[[], str] | None = None) -> None:
    """The station's TLS certificate and accounts file, and the first lead account.

    ``read_password`` gives the lead's password (``--station-lead-password-stdin``);
    without it one is generated and printed once.  Only its argon2id hash is stored."""
    from chairside.station.accounts import AccountError, Accounts

    hosts = _server_hosts(settings)
    why = _renew_reason(layout.pki / "station.crt", hosts, renew)
    if why:
        pki.issue_server(layout.pki, hosts, force=True, stem="station")
        report(f"station certificate for {', '.join(hosts)} ({why}); valid {pki.LEAF_DAYS} days")
    for name, mode in (("server.crt", 0o644), ("server.key", 0o640)):
        dest = layout.station_dir / name
        shutil.copyfile(layout.pki / name.replace("server", "station"), dest)
        owners(dest, "root", USER, mode)
    accounts = Accounts(layout.station_users)
    if accounts.ensure_file():  # empty, then owned by the station's user
        report(f"station accounts file {layout.station_users} (no account yet)")
    owners(layout.station_users, USER, USER, 0o600)
    if lead is None:
        if not accounts.names():
            report("no station account: `chairside station user add NAME --role lead --users "
                   f"{layout.station_users}` (or re-run with --station-lead NAME)")
        return
    try:
        existing = dict(accounts.names())
        if lead.strip() in existing:
            report(f"station account {lead.strip()!r} ({existing[lead.strip()]}) exists: kept")
            return
        password = read_password() if read_password is not None else secrets.token_urlsafe(12)
        user = accounts.add(lead, password, "lead", time.time_ns() // 1_000_000)
    except AccountError as exc:
        raise InstallError(f"--station-lead: {exc}") from exc
    owners(layout.station_users, USER, USER, 0o600)
    if read_password is not None:
        report(f"station lead account {user.name!r} created (password from standard input)")
    else:
        report(f"station lead account {user.name!r} created; its password, shown only now: {password}")
        report("  (change it: chairside station user add NAME --role lead --replace --users ...)")


def pager_policy_edited(layout: Layout) -> bool:
    policy = layout.etc / "pager-policy.json"
    return policy.exists() and policy.read_text() != PAGER_TEMPLATE.read_text()


def shipped_units() -> list[Path]:
    """Every unit, timer and drop-in under deploy/systemd."""
    return sorted(p for p in UNITS_DIR.rglob("*") if p.is_file())


def unit_text(layout: Layout, settings: dict[str, Any], text: str) -> str:
    """A shipped unit with the layout's paths and the configured ports."""
    text = layout.rewrite(text)
    text = re.sub(rf"(--(?:mqtt|broker)-port) {provision.PLAIN_PORT}\b", rf"\1 {settings['mqtt_port']}", text)
    if STATION_UNIT_SITE in text:  # the station's unit: this site, its port, this server's Grafana
        grafana = str(settings.get("grafana_url") or f"http://{_server_hosts(settings)[0]}:3000")
        text = (text.replace(STATION_UNIT_SITE, f"--site {settings['site']}")
                .replace(STATION_UNIT_PORT, f"--port {settings['station_port']}")
                .replace(STATION_UNIT_GRAFANA, f"--grafana-url {grafana}"))
    return text.replace("http://127.0.0.1:8086", influx_url(settings))


def step_units(layout: Layout, settings: dict[str, Any], report: Report) -> list[str]:
    names = []
    for source in shipped_units():
        relative = source.relative_to(UNITS_DIR)
        _write(layout.units / relative, unit_text(layout, settings, source.read_text()), 0o644)
        if source.parent == UNITS_DIR and source.suffix in (".service", ".timer"):
            names.append(source.name)
    report(f"units written to {layout.units}: {', '.join(names)}")
    return names


def step_enable(layout: Layout, units: list[str], report: Report) -> None:
    timers = [u for u in units if u.endswith(".timer")]
    services = [u for u in units if u.endswith(".service") and u.removesuffix(".service") + ".timer" not in units]
    if not layout.real:
        report.skip(f"systemctl daemon-reload/enable/restart {' '.join(services + timers)} (--root)")
        return
    _run(["systemctl", "daemon-reload"], report)
    _run(["systemctl", "enable", "mosquitto", "influxdb", *services, *timers], report)
    _run(["systemctl", "restart", "mosquitto"], report)
    for unit in services:
        if unit == "chairside-pager.service" and not pager_policy_edited(layout):
            report(f"{unit} enabled, not started: edit /etc/chairside/pager-policy.json first")
            continue
        _run(["systemctl", "restart", unit], report)
    for unit in timers:
        _run(["systemctl", "start", unit], report)


# ---- the final check --------------------------------------------------------------------


def check(layout: Layout) -> list[str]:
    """Files the services need that are missing (empty when all are there)."""
    needed = [layout.mosquitto_conf, layout.broker_dir / "passwd", layout.broker_dir / "acl",
              layout.broker_dir / "server.crt", layout.broker_dir / "server.key", layout.influx_conf,
              layout.influx_dir / "gateway.json", layout.etc / "pager-policy.json",
              layout.etc / "pager-ack.secret", layout.venv / "bin" / "python",
              layout.station_dir / "server.crt", layout.station_dir / "server.key", layout.station_users]
    needed += [layout.state / "services" / f"{name}.json" for name in SERVICES]
    return [f"missing {path}" for path in needed if not path.exists()]


def check_running(layout: Layout, report: Report, deadline_s: float = 60.0) -> list[str]:
    """``chairside doctor`` until nothing FAILs (the services need a few seconds
    after their restart) or the deadline; returns the FAIL lines."""
    from chairside.install import doctor

    end = time.monotonic() + deadline_s
    while True:
        found = doctor.diagnose(layout)
        failed = [f.line() for f in found if f.level == doctor.FAIL]
        if not failed or time.monotonic() > end:
            break
        time.sleep(2.0)
    for finding in found:
        if finding.level != doctor.FAIL:
            report(f"check: {finding.line()}")
    return failed


def check_broker(layout: Layout, settings: dict[str, Any]) -> list[str]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from chairside import mqtt_auth

    credentials = layout.state / "services" / "staff.json"
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=mqtt_auth.client_id(credentials, "chairside-staff"))
    mqtt_auth.apply(client, credentials, None)
    result: list[Any] = []
    client.on_connect = lambda c, u, flags, reason, props: result.append(reason)
    try:
        client.connect("127.0.0.1", int(settings["mqtt_port"]), keepalive=10)
        client.loop_start()
        end = time.monotonic() + 5
        while not result and time.monotonic() < end:
            time.sleep(0.05)
    except OSError as exc:
        return [f"broker on 127.0.0.1:{settings['mqtt_port']}: {exc}"]
    finally:
        client.disconnect()
        client.loop_stop()
    if not result:
        return [f"broker on 127.0.0.1:{settings['mqtt_port']}: no CONNACK within 5 s"]
    if result[0].is_failure:
        return [f"broker on 127.0.0.1:{settings['mqtt_port']} refused the staff account: {result[0]}"]
    return []


# ---- the command -------------------------------------------------------------------------


def settings_of(layout: Layout, args: argparse.Namespace) -> dict[str, Any]:
    """Stored settings, overridden by the options given; saved back by :func:`install`."""
    settings = dict(DEFAULTS)
    settings.update(_load_json(layout.settings))
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value not in (None, []):
            settings[key] = value
    if args.site:
        settings["site"] = args.site
    if not settings.get("site"):
        raise InstallError("--site is required the first time (the clinic's site id, e.g. clinic1)")
    if not contract.id_regex().fullmatch(str(settings["site"])):
        raise InstallError(f"--site {settings['site']!r} is not a valid id (letters, digits, '-', '_')")
    try:
        settings["retention"] = influxdb.check_retention(str(settings["retention"]))
    except ValueError as exc:
        raise InstallError(str(exc)) from exc
    return settings


def _stdin_line() -> str:
    return sys.stdin.readline().rstrip("\n")


def install(layout: Layout, args: argparse.Namespace, out: Callable[[str], None] = print) -> list[str]:
    """Run every step; returns the problems the final check found."""
    report = Report(out)
    settings = settings_of(layout, args)
    owners = Owners(layout, report)
    step_user_and_folders(layout, report, owners)
    _write(layout.settings, json.dumps(settings, indent=1, sort_keys=True) + "\n", 0o644)
    step_project(layout, report, args.venv_from)
    step_broker(layout, settings, report, owners, renew=bool(getattr(args, "renew_server_cert", False)))
    step_influxdb(layout, settings, report, owners)
    step_pager(layout, report, owners)
    lead = getattr(args, "station_lead", None)
    step_station(layout, settings, report, owners, renew=bool(getattr(args, "renew_server_cert", False)),
                 lead=lead, read_password=(_stdin_line if getattr(args, "station_lead_password_stdin", False)
                                           else None))
    units = step_units(layout, settings, report)
    step_enable(layout, units, report)
    problems = check(layout)
    if problems:
        return problems
    if not layout.real:
        report.skip("checking the running services (--root: start them from the layout, then "
                    f"`chairside doctor --root {layout.root}`)")
        return []
    return check_running(layout, report)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", help="the clinic's site id (required the first time), e.g. clinic1")
    parser.add_argument("--root", type=Path, default=Path("/"),
                        help="install into this folder instead of / (no useradd, chown or systemctl)")
    parser.add_argument("--venv-from", type=Path, default=None,
                        help="use this existing venv instead of creating /opt/chairside/.venv (tests, CI)")
    parser.add_argument("--retention", default=None,
                        help=f"how long InfluxDB keeps readings (default {influxdb.DEFAULT_RETENTION}; "
                        "e.g. 400d, 52w, INF; see docs/install-server.md)")
    parser.add_argument("--server-host", dest="server_hosts", action="append", default=[],
                        help="name or address the boxes use for the broker (repeat; default: this host's FQDN)")
    parser.add_argument("--mqtt-port", type=int, default=None, help="loopback MQTT port (default 1883)")
    parser.add_argument("--mqtt-tls-port", type=int, default=None, help="TLS MQTT port (default 8883)")
    parser.add_argument("--mqtt-tls-listen", default=None,
                        help="address of the TLS listener (default: every interface)")
    parser.add_argument("--influx-port", type=int, default=None, help="InfluxDB HTTP port on loopback (8086)")
    parser.add_argument("--influx-rpc-port", type=int, default=None,
                        help="InfluxDB backup/restore port on loopback (8089; the pager's ack page has 8088)")
    parser.add_argument("--renew-server-cert", action="store_true",
                        help="issue new broker and station certificates now (else only when hosts change or "
                        f"they expire within {CERT_RENEW_DAYS} days)")
    parser.add_argument("--station-port", type=int, default=None, help="the nurses' station's HTTPS port (8443)")
    parser.add_argument("--grafana-url", default=None,
                        help="Grafana's URL, for the station's links (default http://<first --server-host>:3000)")
    parser.add_argument("--station-lead", metavar="NAME", default=None,
                        help="create this lead account on the station (kept if it exists)")
    parser.add_argument("--station-lead-password-stdin", action="store_true",
                        help="read the lead's password from standard input (else one is generated and printed once)")


def run(args: argparse.Namespace) -> int:
    layout = Layout(args.root.resolve())
    if layout.real and os.geteuid() != 0:
        print("chairside install: run as root (sudo), or give --root DIR to install into a folder")
        return 2
    try:
        problems = install(layout, args)
    except (InstallError, influxdb.InfluxSetupError, pki.PkiError, provision.ProvisionError, OSError,
            ValueError) as exc:
        print(f"chairside install: {exc}")
        return 1
    for problem in problems:
        print(f"install: PROBLEM: {problem}")
    if problems:
        return 1
    print("install: done" + (" (run `chairside doctor` any time)" if layout.real else f" under {layout.root}"))
    return 0


def unit_command(unit: Path) -> tuple[list[str], dict[str, str]]:
    """``ExecStart`` (continuations joined, split as systemd does for plain words)
    and ``Environment=`` of a unit and its ``NAME.d/*.conf`` drop-ins: what systemd
    would run (tests start the installed services with it)."""
    env: dict[str, str] = {}
    command: list[str] = []
    files = [unit, *sorted(unit.with_name(unit.name + ".d").glob("*.conf"))]
    for path in files:
        text = re.sub(r"\\\n", " ", path.read_text())
        for line in text.splitlines():
            key, _, value = line.strip().partition("=")
            if key == "ExecStart" and value:
                command = shlex.split(value)
            elif key == "Environment":
                for item in shlex.split(value):
                    name, _, val = item.partition("=")
                    env[name] = val
    return command, env

