# csfw.config: defaults from csfw.pins, validation errors that name the field.
# Plain test_* functions so this file also runs on the MicroPython VM.
import json

from csfw import config, pins
from mptest import raises


def base():
    return {
        "site": "clinic1",
        "chair": "3",
        "wifi": {"ssid": "clinic-iot", "key": "correct horse"},
        "mqtt": {"host": "10.0.0.2", "user": "box-clinic1-3", "password": "s3cret-s3cret"},
    }


def err(cfg):
    return str(raises(config.ConfigError, config.validate, cfg))


def test_defaults_are_merged():
    cfg = config.validate(base())
    assert cfg["mqtt"]["port"] == 8883 and cfg["mqtt"]["tls"] is True
    assert cfg["mqtt"]["ca_file"] == "ca.crt" and cfg["mqtt"]["keepalive_s"] == 60
    assert cfg["pins"] == pins.DEFAULTS
    assert cfg["nibp_interval_s"] == 300
    assert cfg["hist_ram_records"] == 64 and cfg["spool_kb"] == 512


def test_partial_pins_override_keeps_other_defaults():
    raw = base()
    raw["pins"] = {"led": 16}
    cfg = config.validate(raw)
    assert cfg["pins"]["led"] == 16 and cfg["pins"]["oxi_tx"] == pins.OXI_TX


def test_chair_number_becomes_a_string():
    raw = base()
    raw["chair"] = 3
    assert config.validate(raw)["chair"] == "3"


def test_required_fields_are_named():
    for field, path in (("site", None), ("chair", None), ("host", "mqtt"),
                        ("user", "mqtt"), ("password", "mqtt")):
        raw = base()
        if path:
            del raw[path][field]
            assert err(raw) == path + "." + field + ": required"
        else:
            del raw[field]
            assert err(raw) == field + ": required"


def test_errors_name_the_field():
    cases = (
        (("mqtt", "port"), 0, "mqtt.port:"),
        (("mqtt", "port"), "1883", "mqtt.port:"),
        (("mqtt", "tls"), 1, "mqtt.tls:"),
        (("mqtt", "keepalive_s"), 5, "mqtt.keepalive_s:"),
        (("wifi", "key"), "short", "wifi.key:"),
        ((None, "site"), "Clinic 1", "site:"),
        ((None, "nibp_interval_s"), 30, "nibp_interval_s:"),
        ((None, "nibp_interval_s"), True, "nibp_interval_s:"),
        ((None, "hist_ram_records"), 1, "hist_ram_records:"),
        (("pins", "led"), 25, "pins.led:"),
        (("pins", "led"), 0, "pins.oxi_tx: GPIO 0 already used by pins.led"),
        (("pins", "oxi_tx"), 2, "pins.oxi_tx:"),
        (("pins", "oxi_baud"), 4801, "pins.oxi_baud:"),
    )
    for where, value, prefix in cases:
        raw = base()
        section, key = where
        if section is None:
            raw[key] = value
        else:
            raw.setdefault(section, {})[key] = value
        msg = err(raw)
        assert msg.startswith(prefix), msg


def test_unknown_keys_are_rejected():
    raw = base()
    raw["mqtt"]["hots"] = "x"
    assert err(raw) == "mqtt.hots: unknown key"
    raw = base()
    raw["nibp_intervall_s"] = 60
    assert err(raw) == "nibp_intervall_s: unknown key"


def test_tls_off_needs_no_ca_file():
    raw = base()
    raw["mqtt"]["tls"] = False
    raw["mqtt"]["ca_file"] = ""
    raw["mqtt"]["port"] = 1883
    assert config.validate(raw)["mqtt"]["tls"] is False
    raw["mqtt"]["tls"] = True
    assert err(raw).startswith("mqtt.ca_file:")


def test_config_hash_is_8_hex_digits_of_sha256():
    assert config.config_hash(b"abc") == "ba7816bf"
    assert len(config.config_hash(b"")) == 8


class FakeFile:
    def __init__(self, data):
        self.data = data

    def read(self):
        return self.data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_load_reads_through_open_fn_and_adds_hash():
    raw = json.dumps(base()).encode()
    seen = []

    def open_fn(path, mode):
        seen.append((path, mode))
        return FakeFile(raw)

    cfg = config.load("config.json", open_fn)
    assert seen == [("config.json", "rb")]
    assert cfg["_hash"] == config.config_hash(raw)
    assert cfg["site"] == "clinic1"


def test_load_missing_file_and_bad_json():
    def missing(path, mode):
        raise OSError(2)

    assert str(raises(config.ConfigError, config.load, "config.json", missing)) == \
        "config: cannot read config.json"
    assert str(raises(config.ConfigError, config.parse, b"{not json")) == "config: not valid JSON"
    assert str(raises(config.ConfigError, config.parse, b"[1]")) == "config: must be a JSON object"
