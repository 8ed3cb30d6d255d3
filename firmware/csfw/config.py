# The box's configuration: config.json on the board's filesystem, written by
# `chairside provision` and copied by `chairside flash`.  Defaults for the pin
# map come from csfw.pins (generated from hardware/pins.json); everything is
# validated here, and every error names the field, e.g.
#   ConfigError("mqtt.port: must be an integer 1..65535")
# so the LED can show NO_CONFIG and the serial log says exactly what to fix.
# Reference: docs/configuration.md.
import binascii
import hashlib
import json

from csfw import pins

CONFIG_PATH = "config.json"

# Non-pin defaults.  A key with value None is required in config.json.
MQTT_DEFAULTS = {
    "host": None,
    "port": 8883,
    "user": None,
    "password": None,
    "tls": True,
    "ca_file": "ca.crt",
    "keepalive_s": 60,
}
TOP_DEFAULTS = {
    "site": None,
    "chair": None,
    "nibp_interval_s": 300,
    "hist_ram_records": 64,
    "spool_kb": 512,
    "sensor": "oem",
    "ntp_host": "pool.ntp.org",
}
SENSORS = ("oem", "max30102")
WIFI_DEFAULTS = {"ssid": "", "key": ""}

UART_KEYS = ("oxi_uart", "nibp_uart")
BAUD_KEYS = ("oxi_baud", "nibp_baud")
BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
# Pico W: GPIO 23, 24, 25 and 29 belong to the CYW43 radio, GPIO 26-28 are
# fine as digital I/O.
RESERVED_GPIO = (23, 24, 25, 29)
# RP2040 UART pin multiplexing (datasheet, GPIO function table).
UART_TX = {0: (0, 12, 16, 28), 1: (4, 8, 20, 24)}
UART_RX = {0: (1, 13, 17), 1: (5, 9, 21, 25)}


class ConfigError(ValueError):
    """config.json is missing or invalid; str(err) starts with the field."""


def config_hash(raw):
    """First 8 hex digits of sha256(raw bytes of config.json)."""
    digest = hashlib.sha256(raw).digest()
    return binascii.hexlify(digest).decode()[:8]


def defaults():
    """A complete default config (required fields None), as a new dict."""
    cfg = {}
    for key in TOP_DEFAULTS:
        cfg[key] = TOP_DEFAULTS[key]
    cfg["wifi"] = dict(WIFI_DEFAULTS)
    cfg["mqtt"] = dict(MQTT_DEFAULTS)
    cfg["pins"] = dict(pins.DEFAULTS)
    return cfg


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _int(cfg, key, lo, hi, field):
    value = cfg[key]
    if not _is_int(value) or value < lo or value > hi:
        raise ConfigError(field + ": must be an integer " + str(lo) + ".." + str(hi))


def _str(cfg, key, field, min_len, max_len):
    value = cfg[key]
    if value is None:
        raise ConfigError(field + ": required")
    if not isinstance(value, str) or len(value) < min_len or len(value) > max_len:
        raise ConfigError(field + ": must be a string of " + str(min_len) + ".."
                          + str(max_len) + " characters")


def valid_id(text):
    """contract.json id_pattern ^[a-z0-9][a-z0-9_-]{0,31}$ without `re`."""
    if not isinstance(text, str) or not 1 <= len(text) <= 32:
        return False
    for i in range(len(text)):
        ch = text[i]
        ok = ("a" <= ch <= "z") or ("0" <= ch <= "9") or (i > 0 and ch in "_-")
        if not ok:
            return False
    return True


def _merge(given, defaults_, field):
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ConfigError(field + ": must be an object")
    out = dict(defaults_)
    for key in given:
        if key not in defaults_:
            raise ConfigError(field + "." + key + ": unknown key")
        out[key] = given[key]
    return out


def _check_pins(p):
    for key in p:
        if not _is_int(p[key]):
            raise ConfigError("pins." + key + ": must be an integer")
    used = {}
    for key in sorted(p):  # sorted: the same error on every port (dict order differs)
        if key in UART_KEYS:
            _int(p, key, 0, 1, "pins." + key)
        elif key in BAUD_KEYS:
            if p[key] not in BAUDS:
                raise ConfigError("pins." + key + ": unsupported baud rate")
        else:
            _int(p, key, 0, 28, "pins." + key)
            if p[key] in RESERVED_GPIO:
                raise ConfigError("pins." + key + ": GPIO used by the Pico W radio")
            if p[key] in used:
                raise ConfigError("pins." + key + ": GPIO " + str(p[key])
                                  + " already used by pins." + used[p[key]])
            used[p[key]] = key
    for dev in ("oxi", "nibp"):
        uart = p[dev + "_uart"]
        if p[dev + "_tx"] not in UART_TX[uart]:
            raise ConfigError("pins." + dev + "_tx: GPIO cannot be UART" + str(uart) + " TX")
        if p[dev + "_rx"] not in UART_RX[uart]:
            raise ConfigError("pins." + dev + "_rx: GPIO cannot be UART" + str(uart) + " RX")
    if p["oxi_uart"] == p["nibp_uart"]:
        raise ConfigError("pins.nibp_uart: same UART as pins.oxi_uart")


def validate(given):
    """Merge defaults into a parsed config.json dict and validate it."""
    if not isinstance(given, dict):
        raise ConfigError("config: must be a JSON object")
    known = ("wifi", "mqtt", "pins")
    for key in given:
        if key not in TOP_DEFAULTS and key not in known:
            raise ConfigError(key + ": unknown key")
    cfg = defaults()
    for key in TOP_DEFAULTS:
        if key in given:
            cfg[key] = given[key]
    cfg["wifi"] = _merge(given.get("wifi"), WIFI_DEFAULTS, "wifi")
    cfg["mqtt"] = _merge(given.get("mqtt"), MQTT_DEFAULTS, "mqtt")
    cfg["pins"] = _merge(given.get("pins"), pins.DEFAULTS, "pins")

    if _is_int(cfg["chair"]):
        cfg["chair"] = str(cfg["chair"])
    for key in ("site", "chair"):
        if cfg[key] is None:
            raise ConfigError(key + ": required")
        if not valid_id(cfg[key]):
            raise ConfigError(key + ": must match ^[a-z0-9][a-z0-9_-]{0,31}$")

    wifi = cfg["wifi"]
    _str(wifi, "ssid", "wifi.ssid", 0, 32)
    _str(wifi, "key", "wifi.key", 0, 63)
    if wifi["ssid"] and len(wifi["key"]) < 8:
        raise ConfigError("wifi.key: WPA2 key of 8..63 characters required")

    mqtt = cfg["mqtt"]
    _str(mqtt, "host", "mqtt.host", 1, 253)
    _int(mqtt, "port", 1, 65535, "mqtt.port")
    _str(mqtt, "user", "mqtt.user", 1, 64)
    _str(mqtt, "password", "mqtt.password", 1, 128)
    if not isinstance(mqtt["tls"], bool):
        raise ConfigError("mqtt.tls: must be true or false")
    if mqtt["tls"]:
        _str(mqtt, "ca_file", "mqtt.ca_file", 1, 64)
    elif mqtt["ca_file"] is not None and not isinstance(mqtt["ca_file"], str):
        raise ConfigError("mqtt.ca_file: must be a string")
    _int(mqtt, "keepalive_s", 10, 600, "mqtt.keepalive_s")

    _check_pins(cfg["pins"])

    _int(cfg, "nibp_interval_s", 0, 3600, "nibp_interval_s")
    if 0 < cfg["nibp_interval_s"] < 60:
        raise ConfigError("nibp_interval_s: 0 (off) or at least 60")
    _int(cfg, "hist_ram_records", 8, 512, "hist_ram_records")
    _int(cfg, "spool_kb", 64, 1024, "spool_kb")
    _str(cfg, "ntp_host", "ntp_host", 0, 253)
    if cfg.get("sensor") not in SENSORS:
        raise ConfigError("sensor: one of oem, max30102 (max30102 is not clinically validated)")
    return cfg


def parse(raw):
    """config.json bytes -> validated dict; adds "_hash" (see config_hash)."""
    try:
        given = json.loads(raw.decode())
    except ValueError:  # bad JSON or bad UTF-8 (UnicodeError is a ValueError)
        raise ConfigError("config: not valid JSON")
    cfg = validate(given)
    cfg["_hash"] = config_hash(raw)
    return cfg


def load(path=CONFIG_PATH, open_fn=open):
    """Read, merge and validate config.json from the board's filesystem."""
    try:
        with open_fn(path, "rb") as f:
            raw = f.read()
    except OSError:
        raise ConfigError("config: cannot read " + path)
    return parse(raw)
