"""The firmware's encoders produce what the gateway's validator accepts, and
docs/contract.md is generated from contract.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chairside import contract as gw_contract
from chairside.ingest.validate import Accepted, Rejected, validate
from chairside.store.watermark import stored_payload
from csfw import contract as fw_contract

REPO = Path(__file__).resolve().parents[1]


def _env(hist: bool = False) -> dict[str, object]:
    env: dict[str, object] = fw_contract.envelope(3, 1, 4000, 1_790_000_000_000, True, hist)
    return env


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("vitals", fw_contract.vitals_payload(_env(), 97, 72, 5, fw_contract.ST_OK)),
        ("vitals", fw_contract.vitals_payload(_env(True), None, None, 0, fw_contract.ST_PROBE_OFF, cuff=1)),
        ("vitals", fw_contract.vitals_payload(_env(), 95, 80, 3, fw_contract.ST_OK, src="max30102")),
        ("vitals", fw_contract.vitals_payload(fw_contract.link(_env(), -1), 97, 72, 5, fw_contract.ST_OK)),
        ("vitals", fw_contract.vitals_payload(fw_contract.link(_env(True), 2), 97, 72, 5, fw_contract.ST_OK)),
        ("nibp", fw_contract.nibp_payload(fw_contract.link(_env(), 2**31 - 1), True, 128, 82, 97, 70)),
        ("nibp", fw_contract.nibp_payload(_env(), True, 128, 82, 97, 70)),
        ("nibp", fw_contract.nibp_payload(_env(), False, None, None, None, None, err=3)),
        ("status", fw_contract.status_payload(_env(), {"fw": "0.1.0", "cfg": "deadbeef", "reset": "power",
                                                        "spool": 0, "dropped": 0, "oxi": "ok", "nibp": "ok",
                                                        "rssi": -60, "link": "wifi"})),
        ("status", fw_contract.OFFLINE_PAYLOAD.decode()),
        ("resp", fw_contract.resp_payload(_env(), "abc", "nibp_start", True)),
        ("resp", fw_contract.resp_payload(_env(), "abc", "nibp_interval", False, "bad_arg:s")),
    ],
)
def test_firmware_payloads_pass_gateway_validation(kind: str, payload: str) -> None:
    topic = gw_contract.topic(kind, "clinic-a", "3")
    assert topic == getattr(fw_contract.Topics("clinic-a", "3"), kind)
    result = validate(topic, payload.encode(), strict=True)
    assert isinstance(result, Accepted), result
    assert len(payload.encode()) <= gw_contract.max_payload_bytes()


def test_firmware_constants_match_contract() -> None:
    spec = gw_contract.load()
    assert spec["schema_version"] == fw_contract.SCHEMA_VERSION
    assert spec["topic_root"] == fw_contract.TOPIC_ROOT
    states = spec["messages"]["vitals"]["fields"]["st"]["values"]
    fw_states = [fw_contract.ST_OK, fw_contract.ST_SEARCHING, fw_contract.ST_NO_FINGER,
                 fw_contract.ST_PROBE_OFF, fw_contract.ST_NO_DATA]
    assert sorted(states) == sorted(fw_states)
    assert sorted(spec["commands"]) == sorted(fw_contract.COMMANDS)
    assert json.loads(fw_contract.OFFLINE_PAYLOAD) == {"v": 1, "state": "offline"}


def test_stored_watermark_round_trip_and_topic() -> None:
    payload = stored_payload(7, 1234, 1_790_000_000_000)
    assert fw_contract.parse_stored(payload) == (7, 1234)
    assert fw_contract.parse_stored(stored_payload(0, -1, 0)) == (0, -1)
    assert fw_contract.Topics("clinic-a", "3").stored == gw_contract.topic("stored", "clinic-a", "3")
    spec = gw_contract.load()
    assert spec["topics"]["stored"]["from"] == "gateway" and spec["topics"]["stored"]["retain"] is True
    assert sorted(json.loads(payload)) == sorted(spec["gateway_messages"]["stored"]["fields"])
    for bad in (b"{", b"[]", b'{"v":2,"boot":1,"seq":1}', b'{"v":1,"boot":-1,"seq":1}',
                b'{"v":1,"boot":1,"seq":-2}', b'{"v":1,"boot":1,"seq":1.0}', b'{"v":1,"boot":1}'):
        with pytest.raises(ValueError):
            fw_contract.parse_stored(bad)


@pytest.mark.parametrize(("kind", "p", "reason"), [("vitals", -2, "out_of_range"),
                                                   ("nibp", 2**31, "out_of_range"),
                                                   ("vitals", "1", "bad_type")])
def test_gateway_rejects_a_bad_link(kind: str, p: object, reason: str) -> None:
    msg = {"v": 1, "seq": 3, "boot": 1, "up": 4000, "t": 1_790_000_000_000, "sync": 1, "p": p}
    msg.update({"spo2": 97, "pr": 72, "sig": 5, "st": "ok"} if kind == "vitals" else
               {"st": "ok", "sys": 120, "dia": 80, "map": 93, "pr": 70})
    result = validate(gw_contract.topic(kind, "clinic-a", "3"), json.dumps(msg).encode(), strict=True)
    assert isinstance(result, Rejected) and result.reason == reason


def test_contract_doc_is_generated_from_json() -> None:
    result = subprocess.run([sys.executable, str(REPO / "tools" / "gen_contract_doc.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
