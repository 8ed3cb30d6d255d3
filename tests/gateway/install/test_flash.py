"""`chairside flash` against a stand-in board and a real broker.

The stand-in (tools/mpvm/board_standin.mjs) is the official MicroPython
WebAssembly VM serving a raw REPL on a TCP port, so mpremote performs the real
copy and reads every file's sha256 back from the VM.  The VM has no network,
so after `machine.reset()` this test plays the booting firmware's part: it
reads the config.json that landed on the stand-in's filesystem and publishes
the birth message with that box's credentials, as csfw does on connect.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from chairside.install import flash, pki
from chairside.install.provision import ShippedMosquitto, State
from chairside.sim.services import free_port

pytestmark = [pytest.mark.services, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
MPVM = REPO / "tools" / "mpvm"
SITE = "clinic1"

if shutil.which("node") is None or not (MPVM / "node_modules").exists():
    pytest.skip("node and tools/mpvm/node_modules are needed", allow_module_level=True)


class StandIn:
    def __init__(self, root: Path, *extra: str) -> None:
        self.persist = root / "board"
        self.proc = subprocess.Popen(
            ["node", str(MPVM / "board_standin.mjs"), "--persist", str(self.persist), *extra],
            cwd=MPVM, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().split()
        assert first[:1] == ["LISTENING"], first
        self.url = f"socket://127.0.0.1:{first[1]}"
        self.events: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(line.strip())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def board(tmp_path: Path) -> Iterator[StandIn]:
    b = StandIn(tmp_path)
    yield b
    b.stop()


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fw")
    tool = REPO / "tools" / "build_firmware.py"
    # the real build (mpy-cross) or nothing: a stand-in folder would let the
    # test pass without the firmware that ships (issue 21)
    assert tool.exists(), f"{tool} is missing"
    proc = subprocess.run([sys.executable, str(tool), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, f"firmware build failed:\n{proc.stdout}\n{proc.stderr}"
    assert (out / "main.py").is_file(), "the build wrote no main.py"
    assert sorted(p.stem for p in (out / "lib" / "csfw").glob("*.mpy")) == sorted(
        p.stem for p in (REPO / "firmware" / "csfw").glob("*.py")), "not every csfw module was compiled"
    return out


@pytest.fixture
def clinic(tmp_path: Path) -> Iterator[tuple[State, ShippedMosquitto]]:
    state = State(tmp_path / "state")
    state.provision_service("gateway")
    state.provision_service("staff")  # chairside flash watches with its `flash` login
    pki.init_ca(tmp_path / "pki")
    pki.issue_server(tmp_path / "pki", ["127.0.0.1"])
    for name in ("ca.crt", "server.crt", "server.key"):
        shutil.copy(tmp_path / "pki" / name, state.broker_dir / name)
    broker = ShippedMosquitto(state.broker_dir, workdir=tmp_path / "broker")
    state.provision_box(SITE, "3", mqtt_host="127.0.0.1", mqtt_port=broker.port, tls=False)
    broker.start()
    yield state, broker
    broker.stop()


def args_for(state: State, port: str, build_dir: Path, **extra: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    flash.add_arguments(parser)
    argv = ["--port", port, "--chair", "3", "--site", SITE, "--state-dir", str(state.dir),
            "--build-dir", str(build_dir), "--wait-s", "20"]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return parser.parse_args(argv)


def play_firmware_boot(board: StandIn) -> threading.Thread:
    """After the reset, publish the birth message the flashed firmware would send."""

    def run() -> None:
        assert board.events.get(timeout=30).startswith("RESET")
        raw = (board.persist / "config.json").read_bytes()
        cfg = json.loads(raw)
        manifest = json.loads((board.persist / "MANIFEST.json").read_text())
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        client.username_pw_set(cfg["mqtt"]["user"], cfg["mqtt"]["password"])
        client.will_set(f"chairside/v1/{cfg['site']}/{cfg['chair']}/status",
                        b'{"v":1,"state":"offline"}', qos=1, retain=True)
        client.connect(cfg["mqtt"]["host"], cfg["mqtt"]["port"])
        client.loop_start()
        birth = {"v": 1, "seq": 0, "boot": 1, "up": 900, "t": 0, "sync": 0,
                 "state": "online", "fw": str(manifest.get("version", "?")),
                 "cfg": flash.config_hash(raw)}
        info = client.publish(f"chairside/v1/{cfg['site']}/{cfg['chair']}/status",
                              json.dumps(birth), qos=1, retain=True)
        info.wait_for_publish(10)
        client.disconnect()
        client.loop_stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_flash_copies_verifies_resets_and_sees_the_birth(
    board: StandIn, build_dir: Path, clinic: tuple[State, ShippedMosquitto],
    capsys: pytest.CaptureFixture[str],
) -> None:
    state, _ = clinic
    boot = play_firmware_boot(board)
    assert flash.run(args_for(state, board.url, build_dir)) == 0
    boot.join(10)
    out = capsys.readouterr().out
    assert "verified sha256" in out and "box clinic1/3 is online" in out
    # every built file and the box's config landed byte for byte on the board
    for path in build_dir.rglob("*"):
        if path.is_file() and path.name != "config.template.json":
            rel = path.relative_to(build_dir)
            assert (board.persist / rel).read_bytes() == path.read_bytes(), rel
    assert (board.persist / "config.json").read_bytes() == \
        state.box_config_path(SITE, "3").read_bytes()


def test_flash_without_waiting(board: StandIn, build_dir: Path,
                               clinic: tuple[State, ShippedMosquitto]) -> None:
    state, _ = clinic
    assert flash.run(args_for(state, board.url, build_dir, no_wait=True)) == 0
    assert board.events.get(timeout=10).startswith("RESET")


def test_no_board(build_dir: Path, clinic: tuple[State, ShippedMosquitto],
                  capsys: pytest.CaptureFixture[str]) -> None:
    assert flash.run(args_for(clinic[0], "/dev/ttyACM_chairside_none", build_dir)) == 1
    assert "no board at /dev/ttyACM_chairside_none" in capsys.readouterr().err


def test_wrong_port(build_dir: Path, clinic: tuple[State, ShippedMosquitto],
                    capsys: pytest.CaptureFixture[str]) -> None:
    url = f"socket://127.0.0.1:{free_port()}"
    assert flash.run(args_for(clinic[0], url, build_dir)) == 1
    err = capsys.readouterr().err
    assert "wrong port" in err
    assert flash.run(args_for(clinic[0], "/dev/null", build_dir)) == 1
    assert "/dev/null" in capsys.readouterr().err


def test_board_without_micropython(build_dir: Path, clinic: tuple[State, ShippedMosquitto],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A device that talks, but not a MicroPython raw REPL (other firmware)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(30)

    def serve() -> None:
        for _ in range(2):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"Arduino sketch v2 ready\r\n")
                conn.settimeout(12)
                try:
                    while conn.recv(100):
                        conn.sendall(b"?\r\n")
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    url = f"socket://127.0.0.1:{server.getsockname()[1]}"
    try:
        assert flash.run(args_for(clinic[0], url, build_dir)) == 1
    finally:
        server.close()
    assert "is MicroPython installed?" in capsys.readouterr().err


def test_failed_copy(tmp_path: Path, build_dir: Path, clinic: tuple[State, ShippedMosquitto],
                     capsys: pytest.CaptureFixture[str]) -> None:
    """The link drops in the middle of the copy (cable pulled)."""
    board = StandIn(tmp_path / "dropping", "--drop-after-bytes", "4000")
    try:
        assert flash.run(args_for(clinic[0], board.url, build_dir)) == 1
    finally:
        board.stop()
    err = capsys.readouterr().err
    assert "copy failed" in err or "create folders failed" in err


def test_hash_check_reads_from_the_board(board: StandIn, build_dir: Path,
                                         clinic: tuple[State, ShippedMosquitto],
                                         tmp_path: Path) -> None:
    state, _ = clinic
    payload = flash.collect(build_dir, state.box_config_path(SITE, "3"), None)
    target = flash.Board(board.url)
    target.copy(payload)
    target.verify(payload)
    corrupt = tmp_path / "main.py"
    corrupt.write_text("# not what was flashed\n")
    subprocess.run([sys.executable, "-m", "mpremote", "connect", board.url,
                    "fs", "cp", str(corrupt), ":main.py"], check=True, capture_output=True)
    with pytest.raises(flash.FlashError, match=r"hash mismatch on the board for main\.py"):
        target.verify(payload)


def test_unprovisioned_chair(board: StandIn, build_dir: Path,
                             clinic: tuple[State, ShippedMosquitto],
                             capsys: pytest.CaptureFixture[str]) -> None:
    args = args_for(clinic[0], board.url, build_dir)
    args.chair = "9"
    assert flash.run(args) == 1
    assert "not provisioned" in capsys.readouterr().err
