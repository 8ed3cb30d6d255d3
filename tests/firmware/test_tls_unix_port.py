"""The board's real broker connection (firmware/main.py's make_connect_fn ->
csfw.net) on the MicroPython Unix port: real `socket`, real mbedtls `ssl`,
against a real Mosquitto TLS listener using the clinic CA made by
`chairside certs` (chairside.pki), with a real gateway writing to a real
InfluxDB.  Issue 17 points 1, 2 and 7.

main.py is imported on the Unix port with stand-in `machine`/`network`
modules (it only runs main() as __main__), so the factory under test is the
board's own; the whole csfw.app.App loop then runs over it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chairside.install import pki
from chairside.sim.services import GatewayProcess, InfluxDB, Mosquitto, free_port

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parents[2]
SITE = "clinic1"
CHAIR = "3"

# Runs on the MicroPython Unix port.  argv: mode config_path fs_dir
BOX = r"""
import sys
import time

class _Stub:
    def __getattr__(self, name):
        raise AttributeError(name)

sys.modules["machine"] = _Stub()   # main.py imports them at the top
sys.modules["network"] = _Stub()
import main  # firmware/main.py, not run: __name__ is "main" here
from csfw import config
from csfw import bci
from csfw.app import App, Hardware
from csfw.clock import BoardClock
from mptest import TinyUart, UpWlan
import os

mode, cfg_path, fs_dir = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = config.load(cfg_path)
connect_fn = main.make_connect_fn(cfg["mqtt"])   # the board's factory

if mode == "open":
    try:
        while connect_fn.prepare(0):   # DNS, then TCP + TLS handshake
            pass
        print("RESULT connected")
    except Exception as exc:
        print("RESULT refused", repr(exc))
    sys.exit(0)

try:
    os.mkdir(fs_dir)
except OSError:
    pass
clock = BoardClock(time)
clock.set_epoch_ms(time.time() * 1000)   # as NTP would
oxi, nibp = TinyUart(), TinyUart()
hw = Hardware(oxi, nibp, UpWlan(), connect_fn, fs_dir, os, rand=lambda: 0.5)
app = App(cfg, hw, clock, boot=1, fw_version="tls-test", cfg_hash="00000000")
frame = bci.encode_frame(6, 50, 72, 97)
import gc
gc.collect()
peak = gc.mem_alloc()
deadline = time.ticks_add(time.ticks_ms(), 20000)
polls = 0
while time.ticks_diff(deadline, time.ticks_ms()) > 0:
    for _ in range(2):
        oxi.push(frame)
    app.poll()
    polls += 1
    gc.collect()  # live heap only, with the TLS session and its mbedtls buffers
    peak = max(peak, gc.mem_alloc())
    if app.published_live >= 3 and not app.mqtt.inflight:
        break
    time.sleep_ms(10)
print("HEAP", peak, gc.mem_free() + gc.mem_alloc())
print("RESULT " + ("delivered" if app.published_live >= 3 and not app.mqtt.inflight else "stuck"),
      app.published_live, app.errors, app.last_error, app.link.state_name,
      app.link.last_error, connect_fn.resolves, app.mqtt.connects)
"""


def _unix_port() -> str:
    import sys

    beside = Path(sys.executable).with_name("micropython")
    found = str(beside) if beside.is_file() else shutil.which("micropython")
    if not found:
        pytest.skip("MicroPython Unix port missing (pip install -e '.[dev]')")
    return found


def run_box(tmp_path: Path, mode: str, host: str, port: int, ca: Path) -> str:
    ca_file = f"ca-{ca.parent.name}.crt"  # relative, as on the board
    shutil.copy(ca, tmp_path / ca_file)
    cfg = {"site": SITE, "chair": CHAIR, "nibp_interval_s": 0,
           "mqtt": {"host": host, "port": port, "user": f"box-{SITE}-{CHAIR}",
                    "password": "unused-by-this-broker", "tls": True, "ca_file": ca_file}}
    cfg_path = tmp_path / f"config-{mode}-{port}.json"
    cfg_path.write_text(json.dumps(cfg))
    script = tmp_path / "box.py"
    script.write_text(BOX)
    path = ":".join([".frozen", str(REPO / "firmware"), str(REPO / "tests" / "firmware" / "mp")])
    proc = subprocess.run(
        [_unix_port(), "-X", "heapsize=192k", str(script), mode, str(cfg_path),
         str(tmp_path / "fs")],
        capture_output=True, text=True, timeout=60, env={"MICROPYPATH": path}, check=False,
        cwd=tmp_path)
    for ln in proc.stdout.splitlines():
        if ln.startswith("HEAP "):
            print(ln)  # peak live heap with TLS, shown with -s (docs/firmware-toolchain.md)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert lines, f"box run failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return lines[-1]


class Pki:
    """The clinic CA with its broker certificate, the same CA's certificate for
    another host name, and an impostor CA with a certificate for our host."""

    def __init__(self, root: Path) -> None:
        self.clinic = root / "clinic"
        pki.init_ca(self.clinic)
        pki.issue_server(self.clinic, ["localhost", "127.0.0.1"])
        self.other_name = root / "other-name"
        self.other_name.mkdir()
        for name in ("ca.key", "ca.crt"):
            shutil.copy(self.clinic / name, self.other_name / name)
        pki.issue_server(self.other_name, ["broker.elsewhere.example"])
        self.impostor = root / "impostor"
        pki.init_ca(self.impostor, name="Impostor CA")
        pki.issue_server(self.impostor, ["localhost", "127.0.0.1"])


def _listener(port: int, d: Path) -> str:
    return (f"listener {port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\n"
            f"keyfile {d}/server.key\n")


@pytest.fixture
def tls_world(tmp_path: Path) -> Iterator[tuple[Pki, Mosquitto, dict[str, int]]]:
    keys = Pki(tmp_path / "pki")
    ports = {"clinic": free_port(), "other_name": free_port(), "impostor": free_port()}
    extra = (_listener(ports["clinic"], keys.clinic)
             + _listener(ports["other_name"], keys.other_name)
             + _listener(ports["impostor"], keys.impostor))
    broker = Mosquitto(extra_config=extra, workdir=tmp_path / "broker")
    broker.start()
    yield keys, broker, ports
    broker.stop()


def _stored(influxdb: InfluxDB) -> list[list[object]]:
    try:
        result = influxdb.query(
            f"SELECT spo2, pr, st, boot, seq, hist FROM vitals WHERE chair = '{CHAIR}'", "chairside")
    except OSError:
        return []
    rows: list[list[object]] = []
    for res in result.get("results", []):  # type: ignore[attr-defined]
        for series in res.get("series", []) or []:
            rows.extend(series["values"])
    return rows


def test_box_connects_over_tls_and_the_gateway_stores_its_readings(
        tls_world: tuple[Pki, Mosquitto, dict[str, int]], influxdb: InfluxDB,
        tmp_path: Path) -> None:
    keys, broker, ports = tls_world
    gateway = GatewayProcess(broker.port, influxdb.url, tmp_path / "gw-state",
                             workdir=tmp_path / "gw")
    gateway.start()
    try:
        result = run_box(tmp_path, "app", "localhost", ports["clinic"], keys.clinic / "ca.crt")
        assert result.startswith("RESULT delivered"), result
        # no error in the loop, online, the DNS step ran once, one CONNECT/CONNACK
        fields = result.split()
        assert fields[3:6] == ["0", "None", "ONLINE"] and fields[-2:] == ["1", "1"], result
        end = time.monotonic() + 20
        rows: list[list[object]] = []
        while time.monotonic() < end:
            rows = _stored(influxdb)
            if len(rows) >= 3:
                break
            time.sleep(0.2)
        assert len(rows) >= 3, (f"gateway stored {rows}; "
                                f"{influxdb.query('SELECT * FROM vitals', 'chairside')}\n"
                                f"{gateway.log_tail(40)}")
        assert all(r[1] == 97 and r[2] == 72 and r[3] == "ok" for r in rows), rows
    finally:
        gateway.stop()


def test_certificate_from_another_ca_is_refused(
        tls_world: tuple[Pki, Mosquitto, dict[str, int]], tmp_path: Path) -> None:
    keys, _broker, ports = tls_world
    # the impostor's certificate names the right host but is not the clinic's
    result = run_box(tmp_path, "open", "localhost", ports["impostor"], keys.clinic / "ca.crt")
    assert result.startswith("RESULT refused"), result
    # control: the same box accepts the clinic's broker
    assert run_box(tmp_path, "open", "localhost", ports["clinic"],
                   keys.clinic / "ca.crt") == "RESULT connected"


def test_wrong_host_name_is_refused(
        tls_world: tuple[Pki, Mosquitto, dict[str, int]], tmp_path: Path) -> None:
    keys, _broker, ports = tls_world
    # signed by the clinic CA, but for another host name
    result = run_box(tmp_path, "open", "localhost", ports["other_name"], keys.clinic / "ca.crt")
    assert result.startswith("RESULT refused"), result
    # control: an address the clinic's certificate does carry works
    assert run_box(tmp_path, "open", "127.0.0.1", ports["clinic"],
                   keys.clinic / "ca.crt") == "RESULT connected"


class _NtpServer:
    """A one-answer-per-request SNTP server on loopback (RFC 4330 reply)."""

    def __init__(self, epoch_s: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.epoch_s = epoch_s
        self.requests = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                _data, addr = self.sock.recvfrom(512)
            except OSError:
                return
            self.requests += 1
            reply = bytearray(48)
            reply[0] = 0x1C  # LI 0, version 3, mode 4 (server)
            reply[1] = 2     # stratum
            reply[40:44] = (self.epoch_s + 2208988800).to_bytes(4, "big")
            reply[44:48] = (1 << 31).to_bytes(4, "big")  # .5 s
            self.sock.sendto(bytes(reply), addr)

    def close(self) -> None:
        self.sock.close()


NTP_BOX = r"""
import socket, sys
from csfw import net
port = int(sys.argv[1])
ntp = net.NtpClient("127.0.0.1", socket, timeout_s=1, port=port)
first = ntp()
second = ntp()
silent = net.NtpClient("127.0.0.1", socket, timeout_s=1, port=int(sys.argv[2]))
silent()
try:
    silent()
    third = "answered"
except OSError as exc:
    third = "timeout"
print("RESULT", first, second, third)
"""


def test_ntp_client_on_the_unix_port(tmp_path: Path) -> None:
    server = _NtpServer(1_790_000_000)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        script = tmp_path / "ntp.py"
        script.write_text(NTP_BOX)
        path = ":".join([".frozen", str(REPO / "firmware")])
        t0 = time.monotonic()
        proc = subprocess.run(
            [_unix_port(), str(script), str(server.port), str(silent.getsockname()[1])],
            capture_output=True, text=True, timeout=30, env={"MICROPYPATH": path}, check=False)
        elapsed = time.monotonic() - t0
        assert proc.stdout.split() == ["RESULT", "False", "1790000000500", "timeout"], (
            proc.stdout + proc.stderr)
        assert server.requests == 1
        assert elapsed < 5  # the silent server costs the 1 s timeout, not more
    finally:
        server.close()
        silent.close()
