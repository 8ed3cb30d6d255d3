"""``chairside flash``: build the firmware, copy it and a box's config, verify, reset.

    chairside flash --port /dev/ttyACM0 --chair 3 --state-dir /var/lib/chairside

Steps, each with its own clear error:
 1. find the box's config.json (written by ``chairside provision``);
 2. build the firmware (``tools/build_firmware.py``) unless ``--build-dir`` is given;
 3. check the board answers a MicroPython raw REPL on ``--port``;
 4. copy every file with mpremote (``lib/csfw/*.mpy``, ``main.py``,
    ``MANIFEST.json``, ``config.json`` and, with TLS, the clinic ``ca.crt``);
 5. read every file's sha256 back *from the board* and compare;
 6. hard-reset the board and wait for its birth message: a live ``online``
    status on its retained status topic whose ``cfg`` is the hash of the new
    config.json.

``--port`` is anything mpremote/pyserial accepts: ``/dev/ttyACM0``, or
``socket://127.0.0.1:PORT`` for the stand-in board used by the tests.

Never flash a box while it is connected to a patient: the laptop's USB port is
not an isolated medical supply (hardware/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from chairside.install.provision import ProvisionError, State
from chairside.paths import REPO

BUILD_TOOL = REPO / "tools" / "build_firmware.py"
NOT_COPIED = {"config.template.json"}
MPREMOTE_TIMEOUT_S = 180.0
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class FlashError(RuntimeError):
    """A flashing step failed; the message says which and what to check."""


@dataclass(frozen=True, slots=True)
class Payload:
    """What goes onto the board: board path -> local file."""

    files: dict[str, Path]
    config_hash: str
    fw_version: str


def config_hash(raw: bytes) -> str:
    """Same as the firmware's csfw.config.config_hash."""
    return hashlib.sha256(raw).hexdigest()[:8]


def build_firmware(out: Path) -> Path:
    if not BUILD_TOOL.exists():
        raise FlashError(f"{BUILD_TOOL} is missing; pass --build-dir with a built firmware")
    proc = subprocess.run([sys.executable, str(BUILD_TOOL), "--out", str(out)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise FlashError(f"firmware build failed:\n{proc.stdout}{proc.stderr}")
    return out


def collect(build_dir: Path, config_json: Path, ca_file: Path | None) -> Payload:
    """The file set to copy: the build folder plus config.json (+ ca.crt)."""
    if not (build_dir / "main.py").exists():
        raise FlashError(f"{build_dir} has no main.py; is it a firmware build folder?")
    files: dict[str, Path] = {}
    for path in sorted(build_dir.rglob("*")):
        rel = path.relative_to(build_dir).as_posix()
        if path.is_file() and rel not in NOT_COPIED:
            files[rel] = path
    files["config.json"] = config_json
    if ca_file is not None:
        if not ca_file.exists():
            raise FlashError(f"the box uses TLS but {ca_file} does not exist "
                             "(run `chairside certs init` or pass --ca-file)")
        files["ca.crt"] = ca_file
    version = "unknown"
    manifest = build_dir / "MANIFEST.json"
    if manifest.exists():
        version = str(json.loads(manifest.read_text()).get("version", "unknown"))
    return Payload(files, config_hash(config_json.read_bytes()), version)


class Board:
    """A board reached through mpremote (the real tool, as a subprocess)."""

    def __init__(self, port: str, mpremote: list[str] | None = None) -> None:
        self.port = port
        self.mpremote = mpremote or [sys.executable, "-m", "mpremote"]

    def _run(self, *args: str, what: str) -> str:
        cmd = [*self.mpremote, "connect", self.port, *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=MPREMOTE_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise FlashError(f"{what}: no answer from {self.port} within "
                             f"{MPREMOTE_TIMEOUT_S:.0f} s") from exc
        if proc.returncode != 0:
            raise FlashError(self._explain(what, proc.stdout + proc.stderr))
        return proc.stdout

    def _explain(self, what: str, output: str) -> str:
        text = output.strip()
        if "failed to access" in text or "could not open port" in text.lower():
            return (f"{what}: cannot open {self.port} ({text.splitlines()[-1]}); "
                    "wrong port, or another program (a serial monitor, Thonny) has it open")
        if "Connection refused" in text:
            return f"{what}: nothing listening at {self.port} (wrong port?)"
        if "could not enter raw repl" in text or "could not exec command" in text:
            return (f"{what}: the device on {self.port} does not answer a MicroPython REPL; "
                    "is MicroPython installed? (hold BOOTSEL, plug in, copy the Pico W "
                    "MicroPython .uf2 to the RPI-RP2 drive, then flash again)")
        return f"{what} failed on {self.port}: {text[-500:]}"

    def check(self) -> str:
        """Return the board's MicroPython version or raise a FlashError."""
        if "://" not in self.port and not os.path.exists(self.port):
            raise FlashError(f"no board at {self.port}: the device does not exist "
                             "(is the USB cable connected? list ports with `ls /dev/ttyACM*`)")
        out = self._run("exec", "import sys;print('CSFW', sys.implementation.name, "
                        "'.'.join(str(x) for x in sys.implementation.version[:3]))",
                        what="board check")
        match = re.search(r"CSFW (\S+) (\S+)", out)
        if match is None or match.group(1) != "micropython":
            raise FlashError(f"the device on {self.port} is not running MicroPython "
                             f"(answered {out.strip()[:80]!r})")
        return match.group(2)

    def copy(self, payload: Payload) -> None:
        dirs = sorted({p.as_posix() for rel in payload.files for p in Path(rel).parents}
                      - {"."})  # sorted: every parent before its children
        mkdirs = "import os\nfor d in %r:\n try:\n  os.mkdir(d)\n except OSError:\n  pass\n"
        self._run("exec", mkdirs % (dirs,), what="create folders")
        args: list[str] = []
        for rel, local in payload.files.items():
            args += ["fs", "cp", "-f", str(local), f":{rel}", "+"]
        self._run(*args[:-1], what="copy")

    def hashes(self, paths: list[str]) -> dict[str, str]:
        args: list[str] = []
        for rel in paths:
            args += ["fs", "sha256sum", f":{rel}", "+"]
        out = self._run(*args[:-1], what="hash check")
        digests = [line.strip() for line in out.splitlines() if HEX64.match(line.strip())]
        if len(digests) != len(paths):
            raise FlashError(f"hash check: expected {len(paths)} hashes, got {len(digests)}")
        return dict(zip(paths, digests, strict=True))

    def verify(self, payload: Payload) -> None:
        on_board = self.hashes(list(payload.files))
        bad = [rel for rel, local in payload.files.items()
               if hashlib.sha256(local.read_bytes()).hexdigest() != on_board[rel]]
        if bad:
            raise FlashError(f"hash mismatch on the board for {', '.join(bad)}; "
                             "the copy is corrupt: flash again, try another cable")

    def reset(self) -> None:
        self._run("reset", what="reset")


def wait_for_birth(host: str, port: int, user: str, password: str, topic: str,
                   expect_cfg: str, timeout_s: float, ca_file: Path | None,
                   reset: object = None) -> dict[str, object]:
    """Subscribe, run ``reset()``, then wait for a live online status with our cfg."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv311)
    client.username_pw_set(user, password)
    if ca_file is not None:
        client.tls_set(ca_certs=str(ca_file))
    inbox: queue.Queue[tuple[bool, bytes]] = queue.Queue()
    subscribed: queue.Queue[bool] = queue.Queue()
    client.on_message = lambda c, u, m: inbox.put((bool(m.retain), bytes(m.payload)))
    client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.put(
        all(not rc.is_failure for rc in rcs))
    client.on_connect = lambda c, u, f, rc, p: (
        c.subscribe(topic, qos=1) if not rc.is_failure else subscribed.put(False))
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise FlashError(f"cannot reach the broker at {host}:{port} to wait for the box: "
                         f"{exc}") from exc
    client.loop_start()
    try:
        try:
            if not subscribed.get(timeout=10):
                raise FlashError(f"broker {host}:{port} refused user {user} or the subscription")
        except queue.Empty as exc:
            raise FlashError(f"no answer from the broker at {host}:{port}") from exc
        if callable(reset):
            reset()
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                retained, payload = inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            if retained:
                continue  # the previous boot's status, delivered on subscribe
            try:
                msg = json.loads(payload)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("state") == "online":
                if msg.get("cfg", expect_cfg) != expect_cfg:
                    raise FlashError(f"the box came online with config {msg.get('cfg')}, "
                                     f"not the flashed {expect_cfg}")
                return msg
        raise FlashError(f"no birth message on {topic} within {timeout_s:.0f} s: check the "
                         "box's LED code and docs/engineer.md (Troubleshooting)")
    finally:
        client.disconnect()
        client.loop_stop()


def flash(args: argparse.Namespace) -> int:
    state = State(args.state_dir)
    site = args.site or _only_site(state)
    chair = str(args.chair)
    config_path = state.box_config_path(site, chair)
    if not config_path.exists():
        raise FlashError(f"box {site}/{chair} is not provisioned: run `chairside provision "
                         f"--state-dir {args.state_dir} --site {site} --chair {chair} ...`")
    box_cfg = json.loads(config_path.read_text())
    mqtt_cfg = box_cfg["mqtt"]
    ca_file: Path | None = None
    if mqtt_cfg.get("tls"):
        ca_file = args.ca_file or (args.state_dir / "pki" / "ca.crt")
    build_dir = args.build_dir or build_firmware(REPO / "build" / "firmware")
    payload = collect(build_dir, config_path, ca_file)

    print("reminder: never flash a box that is connected to a patient "
          "(laptop USB is not an isolated medical supply; hardware/README.md)")
    board = Board(args.port)
    mp_version = board.check()
    print(f"board on {args.port}: MicroPython {mp_version}")
    board.copy(payload)
    print(f"copied {len(payload.files)} files")
    board.verify(payload)
    print(f"verified sha256 of {len(payload.files)} files on the board")
    if args.no_wait:
        board.reset()
        print("reset the board (not waiting for its birth message)")
        return 0
    # its own account: on the shipped broker the user name is the client id,
    # and the gateway's would knock the gateway's session off
    user, password = state.service_credentials("staff", "flash")
    host = args.mqtt_host or str(mqtt_cfg["host"])
    port = args.mqtt_port or int(mqtt_cfg["port"])
    topic = f"chairside/v1/{site}/{chair}/status"
    msg = wait_for_birth(host, port, user, password, topic, payload.config_hash,
                         args.wait_s, ca_file, reset=board.reset)
    print(f"box {site}/{chair} is online: fw {msg.get('fw', '?')}, "
          f"config {msg.get('cfg', '?')} (flashed fw {payload.fw_version}, "
          f"config {payload.config_hash})")
    return 0


def _only_site(state: State) -> str:
    sites = sorted({str(b["site"]) for b in state.accounts.get("boxes", {}).values()})
    if len(sites) != 1:
        raise FlashError(f"--site is required (provisioned sites: {', '.join(sites) or 'none'})")
    return sites[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", required=True,
                        help="serial port of the board, e.g. /dev/ttyACM0 (or socket://HOST:PORT)")
    parser.add_argument("--chair", required=True, help="chair id the box is provisioned for")
    parser.add_argument("--site", help="site id (optional when only one site is provisioned)")
    parser.add_argument("--state-dir", type=Path, required=True,
                        help="provisioning state folder (see `chairside provision`)")
    parser.add_argument("--build-dir", type=Path,
                        help="use this built firmware folder instead of building")
    parser.add_argument("--ca-file", type=Path, help="clinic CA (default STATE/pki/ca.crt)")
    parser.add_argument("--mqtt-host", help="broker to watch for the birth message "
                        "(default: the box's mqtt.host)")
    parser.add_argument("--mqtt-port", type=int, help="default: the box's mqtt.port")
    parser.add_argument("--wait-s", type=float, default=90.0,
                        help="how long to wait for the box to come online")
    parser.add_argument("--no-wait", action="store_true",
                        help="reset without waiting for the birth message (bench, no broker)")


def run(args: argparse.Namespace) -> int:
    try:
        return flash(args)
    except (FlashError, ProvisionError) as exc:
        print(f"chairside flash: {exc}", file=sys.stderr)
        return 1
