# Chairside chair box - board entry point (Raspberry Pi Pico W, MicroPython).
#
# The only firmware file that touches `machine`, `network`, `socket` and
# `ssl`: it builds the real hardware objects and hands them to
# csfw.app.App, which is the same code the host tests run against fakes.
# A bad config.json shows the NO_CONFIG blink code and prints which field is
# wrong on the USB serial console; it never crash-loops.
import gc
import os
import time

import machine
import network

from csfw import VERSION
from csfw import config as box_config
from csfw import net
from csfw.app import App, Hardware, next_boot_count
from csfw.clock import BoardClock
from csfw.led import NO_CONFIG, StatusLed

FS_DIR = "/data"
WDT_TIMEOUT_MS = 8000  # RP2040 maximum is ~8.3 s
LOOP_SLEEP_MS = 5

RESET_CAUSES = {
    getattr(machine, "PWRON_RESET", -1): "power",
    getattr(machine, "WDT_RESET", -2): "watchdog",
    getattr(machine, "SOFT_RESET", -3): "soft",
}


def reset_cause():
    try:
        return RESET_CAUSES.get(machine.reset_cause(), "unknown")
    except Exception:
        return "unknown"


def ensure_dir(path):
    try:
        os.stat(path)
    except OSError:
        os.mkdir(path)


def make_connect_fn(mq):
    """connect_fn for the MQTT client: a csfw.net.Connector (DNS once and
    cached, TCP with a 3 s timeout, then TLS with CERT_REQUIRED against the
    clinic CA in mq["ca_file"] and the broker name checked against
    mq["host"]).  MicroPython's ssl does not verify by default
    (SSLContext starts with CERT_NONE); csfw.net sets it.  The same code runs
    on the MicroPython Unix port in tests/firmware/test_tls_unix_port.py."""
    import socket
    import ssl

    return net.make_connector(mq, socket, ssl if mq.get("tls") else None)


def make_ntp_sync(clock, host):
    """ntp_sync() for the app: one blocking step per call (DNS first, then
    one query with a 1 s timeout); None when NTP is off (ntp_host "")."""
    if not host:
        return None
    import socket

    ntp = net.NtpClient(host, socket, timeout_s=1)

    def ntp_sync():
        ms = ntp()
        if ms is False:
            return False  # resolved only: the query runs in a later poll
        clock.set_epoch_ms(ms)
        return True

    return ntp_sync


def halt_with_config_error(err, led_pin):
    print("chairside: config.json invalid:", err)
    led = StatusLed(led_pin)
    led.show(NO_CONFIG)
    start = time.ticks_ms()
    while True:  # no watchdog yet: wait for an engineer to fix the file
        led.poll(time.ticks_diff(time.ticks_ms(), start))
        time.sleep_ms(50)


def main():
    ensure_dir(FS_DIR)
    try:
        cfg = box_config.load(box_config.CONFIG_PATH)
    except (OSError, ValueError) as err:
        halt_with_config_error(err, machine.Pin(box_config.pins.LED, machine.Pin.OUT))
        return
    pins = cfg["pins"]
    oxi_uart = machine.UART(pins["oxi_uart"], baudrate=pins["oxi_baud"],
                            tx=machine.Pin(pins["oxi_tx"]), rx=machine.Pin(pins["oxi_rx"]),
                            rxbuf=4096)  # ~8 s of BCI frames at 4800 baud: survives a blocking reconnect
    nibp_uart = machine.UART(pins["nibp_uart"], baudrate=pins["nibp_baud"],
                             tx=machine.Pin(pins["nibp_tx"]), rx=machine.Pin(pins["nibp_rx"]),
                             rxbuf=1024)
    i2c = None
    if cfg.get("sensor") == "max30102":  # optional optical path, not clinically validated
        i2c = machine.I2C(0, sda=machine.Pin(pins["i2c_sda"]), scl=machine.Pin(pins["i2c_scl"]),
                          freq=400000)
    wlan = network.WLAN(network.STA_IF)
    clock = BoardClock(time)
    hw = Hardware(
        oxi_uart=oxi_uart,
        nibp_uart=nibp_uart,
        wlan=wlan,
        connect_fn=make_connect_fn(cfg["mqtt"]),
        fs_dir=FS_DIR,
        os_module=os,
        wdt=machine.WDT(timeout=WDT_TIMEOUT_MS),
        led_pin=machine.Pin(pins["led"], machine.Pin.OUT),
        reset_cause=reset_cause(),
        ntp_sync=make_ntp_sync(clock, cfg.get("ntp_host")),
        i2c=i2c,
    )
    boot = next_boot_count(os, FS_DIR)
    app = App(cfg, hw, clock, boot=boot, fw_version=VERSION, cfg_hash=cfg.get("_hash", ""))
    gc.collect()
    while True:
        app.poll()
        time.sleep_ms(LOOP_SLEEP_MS)


# The board runs main.py as __main__; tests import it (fake machine/network)
# to run make_connect_fn on the MicroPython Unix port.
if __name__ == "__main__":
    main()
