"""``chairside install`` from a fresh clone into a folder, then the installed
services started from that layout and one reading pushed through (issue 18,
point 1).

The install runs twice (the second is an upgrade and must change no secret).
Then, as systemd would from the installed files: Mosquitto with the installed
``conf.d/chairside.conf`` (TLS listener, password file, ACL, certificate),
influxd with the installed ``influxdb.conf`` (auth on), and the gateway with
the installed unit's ``ExecStart`` and drop-in environment.  A box provisioned
against the installed broker publishes one reading over TLS; it must arrive in
InfluxDB, readable by Grafana's read-only user.  The nurses' station (issue
19) starts from its installed unit too: its TLS certificate from the installed
clinic CA, the lead account the installer created, and the session record
download reading InfluxDB with its installed login.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from chairside.install import doctor, pki, provision
from chairside.install.influxdb import InfluxClient
from chairside.install.server import Layout, Owners, Report, step_station, unit_command
from chairside.paths import REPO
from chairside.sim.services import InfluxDB, Mosquitto, ServiceError, _Process, free_port
from chairside.station.accounts import Accounts
from csfw import contract as fw

LEAD, LEAD_PASSWORD = "RN Lead", "lead password 4711"

pytestmark = pytest.mark.services


def fresh_clone(dest: Path) -> Path:
    """A clone of this repository's committed HEAD (a copy when it is not a git checkout)."""
    if (REPO / ".git").exists() and shutil.which("git"):
        subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, timeout=60)
    else:
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".venv", "node_modules", "__pycache__"))
    return dest


class InstalledMosquitto(Mosquitto):
    """Mosquitto running the installed conf.d/chairside.conf (Debian's main
    mosquitto.conf would add persistence and logging around it)."""

    def __init__(self, conf: Path, port: int, workdir: Path) -> None:
        super().__init__(port=port, allow_anonymous=False, workdir=workdir)
        self.conf = conf

    def config_text(self) -> str:
        return self.conf.read_text() + f"\nuser root\npersistence false\nlog_dest file {self.log_path}\n"


class InstalledGateway(_Process):
    """The gateway as the installed unit starts it (its ExecStart and Environment)."""

    name = "gateway"

    def __init__(self, root: Path, workdir: Path) -> None:
        super().__init__(workdir)
        self.metrics_port = free_port()
        self.argv, self.unit_env = unit_command(root / "etc/systemd/system/chairside-gateway.service")
        self.root = root

    def _command(self) -> list[str]:
        return [*self.argv, "--metrics-port", str(self.metrics_port), "--log-level", "WARNING"]

    def _env(self) -> dict[str, str]:
        # the installed copy of the project, not this checkout (the venv is shared: --venv-from)
        return dict(os.environ, **self.unit_env, PYTHONPATH=str(self.root / "opt/chairside/gateway"))

    def _wait_ready(self) -> None:
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceError(f"gateway exited with {self.proc.returncode}")
            health = self.health()
            if health and health.get("mqtt_subscribed") and health.get("influx_reachable"):
                return
            time.sleep(0.05)
        raise ServiceError("the installed gateway did not subscribe within 20 s")

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/health", timeout=2) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        except OSError:
            return None
        data: dict[str, Any] = json.loads(body)
        return data


class InstalledStation(_Process):
    """The nurses' station as its installed unit starts it."""

    name = "station"

    def __init__(self, root: Path, workdir: Path, port: int) -> None:
        super().__init__(workdir)
        self.argv, self.unit_env = unit_command(root / "etc/systemd/system/chairside-station.service")
        self.root = root
        self.port = port
        self.tls = ssl.create_default_context(cafile=str(root / "etc/chairside/pki/ca.crt"))

    def _command(self) -> list[str]:
        return self.argv

    def _env(self) -> dict[str, str]:
        return dict(os.environ, **self.unit_env, PYTHONPATH=str(self.root / "opt/chairside/gateway"))

    def _wait_ready(self) -> None:
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceError(f"station exited with {self.proc.returncode}: {self.log_path.read_text()[-800:]}")
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/healthz", timeout=2,
                                            context=self.tls) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise ServiceError("the installed station did not answer /healthz within 20 s")


def _install(clone: Path, root: Path, ports: dict[str, int], extra: tuple[str, ...] = (),
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "chairside.cli", "install", "--site", "clinic1", "--root", str(root),
            "--venv-from", sys.prefix, "--server-host", "127.0.0.1", "--retention", "30d",
            "--mqtt-tls-listen", "127.0.0.1", *extra]
    for option, port in ports.items():
        argv += [f"--{option}", str(port)]
    env = dict(os.environ, PYTHONPATH=str(clone / "gateway"))  # run the clone's installer
    return subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True, timeout=120, check=False,
                          input=stdin)


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int]]]:
    clone = fresh_clone(tmp_path / "clone")
    root = tmp_path / "root"
    ports = {"mqtt-port": free_port(), "mqtt-tls-port": free_port(), "influx-port": free_port(),
             "influx-rpc-port": free_port(), "station-port": free_port()}
    for kind in ("datasources", "dashboards"):  # as if Grafana were installed
        (root / "etc/grafana/provisioning" / kind).mkdir(parents=True)
    first = _install(clone, root, ports, ("--station-lead", LEAD, "--station-lead-password-stdin"),
                     stdin=LEAD_PASSWORD + "\n")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"station lead account '{LEAD}' created (password from standard input)" in first.stdout
    assert "skipped: useradd chairside and every chown" in first.stdout
    assert "pager policy template written" in first.stdout
    secrets_before = {p: p.read_bytes() for p in (root / "etc/chairside").rglob("*") if p.is_file()}
    again = _install(clone, root, ports, ("--station-lead", LEAD))  # an upgrade: same secrets, same accounts
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"station account '{LEAD}' (lead) exists: kept" in again.stdout
    assert "pager policy" in again.stdout and "kept" in again.stdout
    for path, content in secrets_before.items():
        assert path.read_bytes() == content, f"{path} changed on re-install"
    yield root, ports


def test_install_into_a_folder_then_start_it_and_push_a_reading(
    installed: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    root, ports = installed
    assert (root / "opt/chairside/gateway/chairside/cli.py").exists()
    assert not (root / "opt/chairside/tests").exists()
    influx_conf = (root / "etc/influxdb/influxdb.conf").read_text()
    assert "auth-enabled = true" in influx_conf and f'"127.0.0.1:{ports["influx-port"]}"' in influx_conf
    assert (root / "var/lib/chairside/services/gateway.json").stat().st_mode & 0o077 == 0
    assert (root / "etc/chairside/influx/gateway.json").stat().st_mode & 0o077 == 0
    assert len((root / "etc/chairside/pager-ack.secret").read_text().strip()) >= 32
    users_file = root / "etc/chairside/station-users.json"
    assert users_file.stat().st_mode & 0o077 == 0 and LEAD_PASSWORD not in users_file.read_text()
    users = json.loads(users_file.read_text())["users"]
    assert list(users) == [LEAD] and users[LEAD]["role"] == "lead" and users[LEAD]["hash"].startswith("$argon2id$")

    # a box, provisioned against the installed broker files (before the broker starts)
    state = provision.State(root / "var/lib/chairside", root / "etc/mosquitto/chairside")
    box_conf, _ = state.provision_box("clinic1", "1", mqtt_host="127.0.0.1", mqtt_port=ports["mqtt-tls-port"])
    state.provision_box("clinic1", "2", mqtt_host="127.0.0.1", mqtt_port=ports["mqtt-tls-port"])
    box = json.loads(box_conf.read_text())["mqtt"]

    broker = InstalledMosquitto(root / "etc/mosquitto/conf.d/chairside.conf", ports["mqtt-port"],
                                tmp_path / "mosquitto")
    influxd = InfluxDB(port=ports["influx-port"], workdir=tmp_path / "influxd",
                       config_file=root / "etc/influxdb/influxdb.conf")
    gateway = InstalledGateway(root, tmp_path / "gateway")
    started: list[_Process] = []
    try:
        for service in (broker, influxd, gateway):
            service.start()
            started.append(service)
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=box["user"])
        client.username_pw_set(box["user"], box["password"])
        client.tls_set(ca_certs=str(root / "etc/mosquitto/chairside/ca.crt"))
        client.connect("127.0.0.1", ports["mqtt-tls-port"])
        client.loop_start()
        try:
            now = time.time_ns() // 1_000_000
            env = fw.envelope(0, 4, 60_000, now, True, False)
            topics = fw.Topics("clinic1", "1")
            status = fw.status_payload(fw.envelope(1, 4, 60_500, now, True, False),
                                       {"fw": "1.2.3", "spool": 2, "dropped": 0})
            for topic, payload in ((topics.vitals, fw.vitals_payload(env, 96, 71, 6, "ok")),
                                   (topics.status, status)):
                info = client.publish(topic, payload, qos=1)
                info.wait_for_publish(timeout=5)
                assert info.is_published()
        finally:
            client.disconnect()
            client.loop_stop()
        # Grafana's view: the provisioned data source with the environment the installer wrote
        assert (root / "etc/grafana/provisioning/datasources/chairside.yaml").exists()
        drop_in = root / "etc/systemd/system/grafana-server.service.d/chairside.conf"
        env_file = root / "etc/chairside/grafana/grafana.env"
        assert f"EnvironmentFile={env_file}" in drop_in.read_text()
        grafana = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        assert grafana["CHAIRSIDE_INFLUX_USER"] == "chairside-grafana"
        reader = InfluxClient(grafana["CHAIRSIDE_INFLUX_URL"],
                              (grafana["CHAIRSIDE_INFLUX_USER"], grafana["CHAIRSIDE_INFLUX_PASSWORD"]))
        deadline = time.monotonic() + 10
        rows: list[dict[str, Any]] = []
        while not rows and time.monotonic() < deadline:
            rows = reader.rows("SELECT spo2, pr FROM vitals WHERE chair = '1'", grafana["CHAIRSIDE_INFLUX_DB"])
            time.sleep(0.1)
        assert [(r["spo2"], r["pr"]) for r in rows] == [(96, 71)]
        policies = reader.rows('SHOW RETENTION POLICIES ON "chairside"')
        assert [(p["name"], p["duration"]) for p in policies if p["default"]] == [("chairside", "720h0m0s")]
        health = gateway.health()
        assert health is not None and health["influx_write_refused"] is None

        # `chairside doctor` on the running layout: all well but the pager (template
        # policy) and the box never seen; then the gateway stops and the clock is off
        health_url = f"http://127.0.0.1:{gateway.metrics_port}/health"
        layout = Layout(root)
        found = {f.what: f for f in doctor.diagnose(layout, clock_synced=lambda: True, gateway_health=health_url)}
        by_level = {level: sorted(w for w, f in found.items() if f.level == level) for level in ("OK", "WARN", "FAIL")}
        assert by_level["FAIL"] == [], found
        assert [w for w in by_level["WARN"] if not w.startswith("pager") and "clinic1/2" not in w] == []
        assert any(w.startswith("box clinic1/1: last reading") and "fw 1.2.3" in w for w in by_level["OK"])
        assert any(w.startswith("InfluxDB retention of chairside: 720h0m0s") for w in by_level["OK"])
        assert any(w.startswith("broker: TLS on port") for w in by_level["OK"])
        assert any(w.startswith("server certificate valid until") for w in by_level["OK"])
        assert any(w.startswith("box clinic1/2: never sent a reading") for w in by_level["WARN"])

        # the nurses' station from its installed unit: TLS from the clinic CA, the installed lead's login,
        # and the session record download reading InfluxDB with the installed read-only login
        station = InstalledStation(root, tmp_path / "station", ports["station-port"])
        station.start()
        started.append(station)
        base = f"https://127.0.0.1:{ports['station-port']}"
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
                                              urllib.request.HTTPSHandler(context=station.tls))
        with browser.open(f"{base}/chair/1/report", timeout=5) as resp:  # anonymous: sent to the login
            page = resp.read().decode()
        assert resp.url == f"{base}/login?next=/chair/1/report" and "Chairside station" in page
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token is not None
        form = urllib.parse.urlencode({"csrf_token": token.group(1), "name": LEAD, "password": LEAD_PASSWORD,
                                       "next": "/chair/1/report"}).encode()
        with pytest.raises(urllib.error.HTTPError) as missing:  # logged in, back to the report: none yet
            browser.open(f"{base}/login", data=form, timeout=10)
        assert missing.value.code == 404, missing.value.read()
        assert missing.value.read().decode().startswith("No session stored for chair clinic1/1")
        station.stop()
        started.remove(station)

        gateway.stop()
        started.remove(gateway)
        failed = [f for f in doctor.diagnose(layout, clock_synced=lambda: False, gateway_health=health_url)
                  if f.level == "FAIL"]
        assert [f.what.split(":")[0] for f in failed] == ["gateway", "clock"]
        assert all(f.fix for f in failed)
    finally:
        for service in reversed(started):
            service.stop()


def test_the_station_step_generates_a_lead_password_once_and_keeps_accounts(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    pki.init_ca(layout.pki, name="Test CA")
    layout.station_dir.mkdir(parents=True)
    settings = {"site": "clinic1", "server_hosts": ["127.0.0.1", "station.clinic.lan"]}
    lines: list[str] = []
    report = Report(lines.append)
    step_station(layout, settings, report, Owners(layout, report), lead=LEAD)
    shown = [line for line in lines if "shown only now" in line]
    assert len(shown) == 1
    password = shown[0].rsplit(": ", 1)[1]
    assert len(password) >= 16 and password not in layout.station_users.read_text()
    assert Accounts(layout.station_users).login(LEAD, password, 0).user is not None
    cert = (layout.station_dir / "server.crt").read_text()
    before = (layout.station_users.read_bytes(), cert)
    lines.clear()
    step_station(layout, settings, report, Owners(layout, report), lead=LEAD)  # a re-install
    assert not [line for line in lines if "shown only now" in line]
    assert any(f"station account '{LEAD}' (lead) exists: kept" in line for line in lines)
    assert (layout.station_users.read_bytes(), (layout.station_dir / "server.crt").read_text()) == before
    assert "station.clinic.lan" in pki._openssl("x509", "-in", str(layout.station_dir / "server.crt"), "-noout",
                                                  "-ext", "subjectAltName")
