"""A simulated chair box: the real firmware (``csfw.app.App``) on the host
hardware layer, wired to sensor simulators that speak the real byte
protocols and to a real MQTT broker through a real TCP socket — or, with
``transport="serial"``, to a pseudo-terminal pair standing in for the USB CDC
port (``serial_path`` is the host end for ``chairside serial-bridge``).

Time is simulated (:class:`host.clock.SimClock`): ``step(ms)`` advances it in
small ticks, letting the simulators write their bytes and the app poll, so a
minute of patient data takes a fraction of a second.  CPython only; never
copied to a board.
"""

from __future__ import annotations

import errno
import os
import random
import ssl
import tempfile
import tty
from typing import Any

from csfw import VERSION
from csfw.app import App, Hardware, next_boot_count
from csfw.serial_link import SerialLink
from host.clock import SimClock
from host.nibp_sim import NibpSim
from host.oximeter_sim import OximeterSim
from host.patient import make_patient
from host.sockets import make_connect_fn
from host.uart import uart_pair
from host.wlan import FakeWLAN

TICK_MS = 20


class FakeWDT:
    """machine.WDT stand-in: records feeds; `expired(now)` tells whether the
    real one would have reset the board."""

    def __init__(self, timeout_ms: int = 8000) -> None:
        self.timeout_ms = timeout_ms
        self.feeds = 0

    def feed(self) -> None:
        self.feeds += 1


class FakePin:
    """machine.Pin stand-in for the status LED."""

    def __init__(self) -> None:
        self.level = 0
        self.changes = 0

    def value(self, level: int | None = None) -> int:
        if level is not None and level != self.level:
            self.level = level
            self.changes += 1
        return self.level


def _tls_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class SimBox:
    def __init__(
        self,
        site: str,
        chair: str,
        scenario: str = "normal",
        mqtt_host: str = "127.0.0.1",
        mqtt_port: int = 1883,
        clock: SimClock | None = None,
        synced: bool = True,
        ntp: bool = False,
        seed: int = 0,
        fs_dir: str | None = None,
        nibp_interval_s: int = 0,
        keepalive_s: int = 30,
        mqtt_user: str | None = None,
        mqtt_password: str | None = None,
        mqtt_ca: str | None = None,
        epoch_at_boot_ms: int | None = None,
        spool_kb: int | None = None,
        spool_seg_kb: int | None = None,
        hist_ram_records: int | None = None,
        transport: str = "mqtt",
    ) -> None:
        """``mqtt_ca``: the clinic CA file; the box then connects with TLS and
        verifies the broker's certificate against it and ``mqtt_host``."""
        if transport not in ("mqtt", "serial"):
            raise ValueError(f"transport must be 'mqtt' or 'serial', not {transport!r}")
        self.clock = clock or SimClock(
            epoch_at_boot_ms=epoch_at_boot_ms or 1_790_000_000_000, synced=synced
        )
        self.patient = make_patient(scenario, seed=seed)
        self.oxi_box, oxi_dev = uart_pair()
        self.nibp_box, nibp_dev = uart_pair()
        self.oxi_sim = OximeterSim(self.patient, oxi_dev)
        self.nibp_sim = NibpSim(self.patient, nibp_dev, seed=seed)
        self.wlan = FakeWLAN()
        self.wdt = FakeWDT()
        self.led = FakePin()
        self.fs_dir = fs_dir or tempfile.mkdtemp(prefix=f"chairside-box-{chair}-")
        os.makedirs(self.fs_dir, exist_ok=True)
        self.cfg: dict[str, Any] = {
            "site": site,
            "chair": chair,
            "wifi": {"ssid": "clinic", "key": "sim"},
            "mqtt": {"host": mqtt_host, "port": mqtt_port, "keepalive_s": keepalive_s,
                     "user": mqtt_user, "password": mqtt_password},
            "nibp_interval_s": nibp_interval_s,
        }
        for key, value in (("spool_kb", spool_kb), ("spool_seg_kb", spool_seg_kb),
                           ("hist_ram_records", hist_ram_records)):
            if value is not None:
                self.cfg[key] = value
        self.serial_path: str | None = None
        self._pty: tuple[int, int] | None = None
        self._tx = bytearray()
        serial_link = None
        if transport == "serial":
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo, no newline translation, like a CDC port
            os.set_blocking(master, False)
            self._pty = (master, slave)
            self.serial_path = os.ttyname(slave)
            serial_link = SerialLink(self._serial_write, self._serial_read)
        rng = random.Random(seed)
        hw = Hardware(
            oxi_uart=self.oxi_box,
            nibp_uart=self.nibp_box,
            wlan=self.wlan,
            connect_fn=make_connect_fn(mqtt_host, mqtt_port, self.wlan, timeout_s=2,
                                       tls=None if mqtt_ca is None else _tls_context(mqtt_ca)),
            fs_dir=self.fs_dir,
            os_module=os,
            wdt=self.wdt,
            led_pin=self.led,
            reset_cause="power",
            rand=rng.random,
            ntp_sync=self._ntp_sync if ntp else None,
            serial_link=serial_link,
        )
        self.boot = next_boot_count(os, self.fs_dir)
        self.app = App(self.cfg, hw, self.clock, boot=self.boot, fw_version=VERSION,
                       cfg_hash="51a7b0c5")

    def _ntp_sync(self) -> None:
        if self.wlan.is_cut:
            raise OSError("ntp unreachable")
        self.clock.set_epoch_ms(self.clock.true_epoch_ms())

    # -- USB CDC stand-in (transport="serial"): the box end of the pty pair
    def _serial_write(self, data: bytes) -> None:
        self._tx.extend(data)
        self._serial_flush()

    def _serial_flush(self) -> None:
        if self._pty is None:
            self._tx.clear()
            return
        while self._tx:
            try:
                n = os.write(self._pty[0], self._tx)
            except BlockingIOError:
                return  # host not reading: keep the bytes, as a CDC buffer would
            except OSError as exc:
                if exc.errno == errno.EIO:  # no host end open
                    return
                raise
            del self._tx[:n]

    def _serial_read(self) -> bytes:
        if self._pty is None:
            return b""
        try:
            return os.read(self._pty[0], 4096)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise

    def poll_once(self) -> None:
        if self._tx:
            self._serial_flush()
        now = self.clock.now_ms()
        self.oxi_sim.advance(now)
        self.nibp_sim.advance(now)
        self.app.poll()

    def step(self, ms: int, tick_ms: int = TICK_MS) -> None:
        """Advance simulated time by `ms`, polling every `tick_ms`."""
        end = self.clock.now_ms() + ms
        while self.clock.now_ms() < end:
            self.clock.advance(min(tick_ms, end - self.clock.now_ms()))
            self.poll_once()

    def power_off(self) -> None:
        """Drop the TCP connection as a power cut would (broker fires the will)."""
        self.wlan.cut()

    def close(self) -> None:
        """Close the box's socket (the broker then publishes its last will);
        over serial, unplug the USB cable (close both ends of the pty)."""
        self.app.mqtt.close()
        if self._pty is not None:
            for fd in self._pty:
                os.close(fd)
            self._pty = None

    @property
    def seq(self) -> int:
        return self.app.seq
