"""Start real Mosquitto and InfluxDB 1.x processes on free loopback ports,
and the gateway itself as a child process.

Used by the demo, the benchmarks and the test fixtures, so that all three run
the same real services the same way.  Nothing here is a mock: each class
launches the Debian-packaged binary with a generated config in a private
temporary folder and stops it (and removes the folder) on ``stop()``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType

START_TIMEOUT_S = 20.0


class ServiceError(RuntimeError):
    """A service binary is missing or did not come up within its deadline."""


def free_port() -> int:
    """Ask the kernel for a free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, deadline_s: float, proc: subprocess.Popen[bytes] | None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"nothing listening on 127.0.0.1:{port} after {deadline_s} s")


def _find_binary(name: str, extra_dirs: tuple[str, ...] = ("/usr/sbin", "/usr/bin")) -> str:
    found = shutil.which(name)
    if found:
        return found
    for folder in extra_dirs:
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    raise ServiceError(f"{name} not found; install the Debian package (see README)")


class _Process:
    """Common lifecycle: a child process in its own temp folder."""

    name = "service"

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"chairside-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / f"{self.name}.log"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _wait_ready(self) -> None:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None  # inherit this process's environment

    def start(self) -> None:
        """Start (or restart) the process and wait until it serves requests."""
        if self.proc is not None and self.proc.poll() is None:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            self._command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=self._env(),
            start_new_session=True,
        )
        log.close()
        try:
            self._wait_ready()
        except ServiceError as exc:
            tail = self.log_tail()
            self.stop(remove=False)
            raise ServiceError(f"{self.name}: {exc}\n{tail}") from exc

    def kill(self) -> None:
        """SIGKILL the process (chaos tests); keep its data for a restart."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self, remove: bool = True) -> None:
        """Terminate the process; remove its folder when we created it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if remove and self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> _Process:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Mosquitto(_Process):
    """A private Mosquitto broker on 127.0.0.1:port.

    ``extra_config`` is appended to the generated config (used by the
    security tests to load the shipped ACL/password/TLS settings).  By default
    the broker allows anonymous clients, which is fine on loopback only.
    """

    name = "mosquitto"

    def __init__(
        self,
        port: int | None = None,
        extra_config: str = "",
        allow_anonymous: bool = True,
        workdir: Path | None = None,
    ) -> None:
        super().__init__(workdir)
        self.port = port or free_port()
        self.extra_config = extra_config
        self.allow_anonymous = allow_anonymous
        self.binary = _find_binary("mosquitto")

    def config_text(self) -> str:
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "max_queued_messages 1000000",
            "max_inflight_messages 100",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Run as root, Mosquitto drops to the `mosquitto` user and then
            # cannot write its persistence file in our private folder: queued
            # QoS 1 messages would be lost across a broker restart.
            lines.append("user root")
        return "\n".join(lines) + "\n" + self.extra_config + "\n"

    def _command(self) -> list[str]:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        return [self.binary, "-c", str(conf)]

    def _wait_ready(self) -> None:
        wait_for_port(self.port, START_TIMEOUT_S, self.proc)


class InfluxDB(_Process):
    """A private InfluxDB 1.x (influxd) with HTTP on 127.0.0.1:port.

    ``auth=True`` turns ``auth-enabled`` on (no user exists until one is
    created: ``chairside.install.influxdb.configure``); :meth:`query` then
    logs in as ``credentials``.  ``config_file`` runs influxd with that
    config instead of a generated one (the installer's, in its tests)."""

    name = "influxd"

    def __init__(self, port: int | None = None, workdir: Path | None = None, *,
                 auth: bool = False, config_file: Path | None = None) -> None:
        super().__init__(workdir)
        self.port = port or free_port()
        self.rpc_port = free_port()
        self.binary = _find_binary("influxd")
        self.auth = auth
        self.config_file = config_file
        self.credentials: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        root = self.workdir
        return f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{root}/meta"
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
  cache-snapshot-write-cold-duration = "10s"
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  max-body-size = 0
  auth-enabled = {"true" if self.auth else "false"}
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
"""

    def _command(self) -> list[str]:
        if self.config_file is not None:
            return [self.binary, "-config", str(self.config_file)]
        conf = self.workdir / "influxdb.conf"
        conf.write_text(self.config_text())
        return [self.binary, "-config", str(conf)]

    def _wait_ready(self) -> None:
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceError(f"influxd exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as resp:
                    if resp.status == 204:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise ServiceError(f"influxd /ping did not answer within {START_TIMEOUT_S} s")

    def query(self, influxql: str, database: str | None = None) -> dict[str, object]:
        """Run InfluxQL through the real /query endpoint and return its JSON."""
        params = {"q": influxql, "epoch": "ms"}
        if database:
            params["db"] = database
        data = urllib.parse.urlencode(params).encode()
        request = urllib.request.Request(f"{self.url}/query", data=data)
        if self.credentials is not None:
            token = base64.b64encode(":".join(self.credentials).encode()).decode("ascii")
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=30) as resp:
            result: dict[str, object] = json.loads(resp.read())
        return result


class GatewayProcess(_Process):
    """``chairside gateway`` as a child process (chaos tests, benchmarks), with
    /health and /metrics on a free port; ready once its subscription is granted.

    ``python_args`` replaces ``-m chairside.cli`` (a benchmark's bootstrap that
    overrides GatewayConfig fields); the gateway's arguments follow it."""

    name = "gateway"

    def __init__(self, mqtt_port: int, influx_url: str, state_dir: Path, *,
                 client_id: str = "chairside-gateway", workdir: Path | None = None,
                 python_args: list[str] | None = None) -> None:
        super().__init__(workdir)
        self.metrics_port = free_port()
        self.python_args = python_args or ["-m", "chairside.cli"]
        self.args = [
            "--log-level", "WARNING", "gateway", "--mqtt-port", str(mqtt_port),
            "--influx-url", influx_url, "--state-dir", str(state_dir),
            "--client-id", client_id, "--metrics-port", str(self.metrics_port),
        ]

    def _command(self) -> list[str]:
        return [sys.executable, *self.python_args, *self.args]

    def _env(self) -> dict[str, str]:
        package_root = str(Path(__file__).resolve().parents[2])  # gateway/, for a source tree
        path = os.environ.get("PYTHONPATH")
        return dict(os.environ, PYTHONPATH=package_root + (os.pathsep + path if path else ""))

    def _wait_ready(self) -> None:
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceError(f"gateway exited with {self.proc.returncode}")
            health = self.health()
            if health is not None and health.get("mqtt_subscribed"):
                return
            time.sleep(0.05)
        raise ServiceError(f"gateway not subscribed within {START_TIMEOUT_S} s")

    def health(self) -> dict[str, object] | None:
        """/health as a dict (served with 503 while degraded), None if not answering."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/health",
                                        timeout=2) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        except OSError:
            return None
        try:
            data: dict[str, object] = json.loads(body)
        except ValueError:
            return None
        return data


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in {"1", "true", "yes"}
