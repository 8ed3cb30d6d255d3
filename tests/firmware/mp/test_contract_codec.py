# Box-side contract encoders and command parser (runs on MicroPython too).
import json

from csfw import contract
from mptest import raises


def test_vitals_payload_carries_common_fields():
    env = contract.envelope(7, 2, 12345, 1790000000000, True, False)
    msg = json.loads(contract.vitals_payload(env, 97, 72, 5, contract.ST_OK))
    assert msg["v"] == 1 and msg["seq"] == 7 and msg["boot"] == 2
    assert msg["up"] == 12345 and msg["t"] == 1790000000000 and msg["sync"] == 1
    assert msg["spo2"] == 97 and msg["pr"] == 72 and msg["st"] == "ok"
    assert "h" not in msg


def test_historical_flag():
    env = contract.envelope(1, 0, 1, 0, False, True)
    msg = json.loads(contract.vitals_payload(env, None, None, 0, contract.ST_PROBE_OFF))
    assert msg["h"] == 1 and msg["sync"] == 0 and msg["spo2"] is None


def test_parse_command_ok_and_errors():
    assert contract.parse_command(b'{"v":1,"cmd":"nibp_start","id":"a1"}') == ("nibp_start", "a1", {})
    _cmd, _cid, args = contract.parse_command(b'{"v":1,"cmd":"nibp_interval","id":"x","s":300}')
    assert args["s"] == 300
    assert raises(contract.CommandError, contract.parse_command, b"nope").reason == "not_json"
    assert raises(contract.CommandError, contract.parse_command,
                      b'{"v":2,"cmd":"status","id":"x"}').reason == "schema_version"
    assert raises(contract.CommandError, contract.parse_command,
                      b'{"v":1,"cmd":"nibp_interval","id":"x","s":30}').reason == "bad_arg:s"
    assert raises(contract.CommandError, contract.parse_command,
                      b'{"v":1,"cmd":"reboot","id":"x"}').reason == "unknown_cmd"


def test_topics():
    t = contract.Topics("clinic1", "3")
    assert t.vitals == "chairside/v1/clinic1/3/vitals"
    assert t.cmd == "chairside/v1/clinic1/3/cmd"
