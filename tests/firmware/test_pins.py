"""The firmware's default pin map is generated from hardware/pins.json and cannot drift."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def _gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_fw_config", REPO / "tools/gen_fw_config.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_fw_config"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_current() -> None:
    assert _gen().main(["--check"]) == 0


def test_firmware_default_pins_equal_pins_json() -> None:
    pin_map = json.loads((REPO / "hardware/pins.json").read_text())
    from csfw import config, pins

    expected = {s["key"]: s["gpio"] for s in pin_map["signals"]}
    for name, uart in pin_map["uarts"].items():
        expected[f"{name}_uart"] = uart["id"]
        expected[f"{name}_baud"] = uart["baud"]
    assert expected == pins.DEFAULTS
    assert config.defaults()["pins"] == expected
    template = json.loads((REPO / "firmware/config.template.json").read_text())
    assert template["pins"] == expected


def test_pins_json_is_a_valid_firmware_pin_map() -> None:
    from csfw import config

    cfg = json.loads((REPO / "firmware/config.template.json").read_text())
    cfg.update(site="clinic1", chair="3")
    assert config.validate(cfg)["pins"] == cfg["pins"]


def test_wiring_table_lists_every_signal() -> None:
    pin_map = json.loads((REPO / "hardware/pins.json").read_text())
    wiring = (REPO / "hardware/wiring.md").read_text()
    for sig in pin_map["signals"]:
        row = re.search(rf"^\|\s*GP{sig['gpio']}\s*\|\s*{sig['pico_pin']}\s*\|.*$", wiring, re.M)
        assert row is not None, f"hardware/wiring.md has no row for GP{sig['gpio']}"
        assert sig["net"] in row.group(0)


def test_generator_rejects_a_gpio_used_twice() -> None:
    gen = _gen()
    pin_map = json.loads((REPO / "hardware/pins.json").read_text())
    pin_map["signals"][1]["gpio"] = pin_map["signals"][0]["gpio"]
    try:
        gen.pin_defaults(pin_map)
    except gen.PinMapError as exc:
        assert "already used" in str(exc)
    else:
        raise AssertionError("expected PinMapError")
