"""One broker account per connection (issue 15, point 8): what provisioning
writes and how the clients read it.  The real broker is exercised in
test_provision_broker.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chairside import mqtt_auth
from chairside.install import provision
from chairside.install.provision import State


@pytest.fixture
def state(tmp_path: Path) -> State:
    s = State(tmp_path / "state")
    for name in ("gateway", "pager", "staff"):
        s.provision_service(name)
    s.provision_box("clinic1", "3", mqtt_host="10.0.0.2")
    return s


def test_services_get_one_account_per_connection(state: State) -> None:
    path = state.service_path("gateway")
    assert mqtt_auth.read_credentials(path)[0] == "chairside-gateway"
    assert mqtt_auth.read_credentials(path, "publisher")[0] == "chairside-gateway-pub"
    assert state.service_credentials("staff", "flash")[0] == "chairside-flash"
    assert state.service_credentials("staff", "station")[0] == "chairside-station"
    assert state.service_credentials("pager")[0] == "chairside-pager"
    passwd = (state.broker_dir / "passwd").read_text()
    users = [line.split(":")[0] for line in passwd.splitlines()]
    assert users == sorted(["box-clinic1-3", "chairside-flash", "chairside-gateway",
                            "chairside-gateway-pub", "chairside-pager", "chairside-staff",
                            "chairside-station"])
    assert path.stat().st_mode & 0o077 == 0
    accounts = json.loads(state.accounts_path.read_text())
    assert "password" not in json.dumps(accounts)  # hashes only


def test_acl_of_the_extra_logins_and_the_stored_topic(state: State) -> None:
    acl = (state.broker_dir / "acl").read_text()
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in acl.split("\n\n") if b.startswith("user ")}
    assert blocks["user chairside-gateway-pub"] == ["topic write chairside/v1/#"]
    assert blocks["user chairside-flash"] == ["topic read chairside/v1/+/+/status"]
    box = blocks["user box-clinic1-3"]
    assert "topic read chairside/v1/clinic1/3/stored" in box
    assert "topic read chairside/v1/clinic1/3/cmd" in box
    assert [line for line in box if line.startswith("topic read")] == [
        "topic read chairside/v1/clinic1/3/cmd", "topic read chairside/v1/clinic1/3/stored"]
    staff = blocks["user chairside-staff"]
    for tail in ("alarms/ack", "limits/set", "standby", "drill/end", "session"):
        assert f"topic write chairside/v1/+/+/{tail}" in staff
    assert "topic write chairside/v1/+/pages/ack" in staff
    assert blocks["user chairside-station"] == staff  # the nurses' station: the staff grants
    assert "topic write chairside/v1/+/+/alarms/ack" in blocks["user chairside-pager"]


def test_rotating_a_service_rotates_every_login(state: State) -> None:
    path = state.service_path("gateway")
    before = json.loads(path.read_text())
    _, rotated = state.provision_service("gateway")
    after = json.loads(path.read_text())
    assert rotated
    assert after["password"] != before["password"]
    assert after["logins"]["publisher"]["password"] != before["logins"]["publisher"]["password"]
    state.revoke_service("gateway")
    passwd = (state.broker_dir / "passwd").read_text()
    assert "chairside-gateway" not in passwd  # also the publisher
    assert "chairside-gateway" not in (state.broker_dir / "acl").read_text()


def test_credentials_of_a_box_and_a_missing_login(state: State, tmp_path: Path) -> None:
    box_cfg = state.box_config_path("clinic1", "3")
    user, password = mqtt_auth.read_credentials(box_cfg)  # the serial bridge's login
    assert user == "box-clinic1-3" and password == json.loads(box_cfg.read_text())["mqtt"]["password"]
    assert mqtt_auth.client_id(box_cfg, "chairside-serial-clinic1-3") == "box-clinic1-3"
    assert mqtt_auth.client_id(None, "chairside-serial-clinic1-3") == "chairside-serial-clinic1-3"
    old = tmp_path / "old-gateway.json"  # written before one account per connection
    old.write_text('{"user": "chairside-gateway", "password": "p"}')
    with pytest.raises(mqtt_auth.CredentialsError, match=r"no 'publisher' login.*provision"):
        mqtt_auth.read_credentials(old, "publisher")
    with pytest.raises(provision.ProvisionError, match="no 'flash' login"):
        bad = State(tmp_path / "s2")
        bad.service_path("staff").parent.mkdir(parents=True)
        bad.service_path("staff").write_text('{"user": "chairside-staff", "password": "p"}')
        bad.service_credentials("staff", "flash")


def test_gateway_logs_in_each_connection_with_its_own_account(state: State, tmp_path: Path) -> None:
    from chairside.config import GatewayConfig
    from chairside.service import Gateway, default_alarm_stage

    gw = Gateway(GatewayConfig(state_dir=tmp_path / "gw", client_id="something-else"),
                 default_alarm_stage())
    try:
        gw.use_broker_login(state.service_path("gateway"), None)
        assert gw.ingest.config.user == gw.ingest.config.client_id == "chairside-gateway"
        assert gw.client._username == b"chairside-gateway-pub"
        old = tmp_path / "old.json"
        old.write_text('{"user": "chairside-gateway", "password": "p"}')
        with pytest.raises(mqtt_auth.CredentialsError):
            gw.use_broker_login(old, None)
    finally:
        gw.ingest.stop(0.1)  # never started: closes its wake-up socket pair


def test_ntp_host_is_written_remembered_and_accepted_by_the_firmware(tmp_path: Path) -> None:
    """The box's NTP server comes from provisioning (a clinic network may block
    pool.ntp.org); the firmware's own config parser reads what it writes."""
    from csfw import config as box_config

    s = State(tmp_path / "s")
    path, _ = s.provision_box("clinic1", "3", mqtt_host="10.0.0.2")
    assert "ntp_host" not in json.loads(path.read_text())
    assert box_config.parse(path.read_bytes())["ntp_host"] == "pool.ntp.org"  # firmware default kept

    s.provision_box("clinic1", "3", ntp_host="10.0.0.1")
    assert box_config.parse(path.read_bytes())["ntp_host"] == "10.0.0.1"
    s.provision_box("clinic1", "3")  # rotation keeps it
    assert json.loads(path.read_text())["ntp_host"] == "10.0.0.1"
    s.provision_box("clinic1", "3", ntp_host="")  # NTP off: the gateway's time command sets the clock
    assert box_config.parse(path.read_bytes())["ntp_host"] == ""
    with pytest.raises(provision.ProvisionError, match="--ntp-host"):
        s.provision_box("clinic1", "3", ntp_host="ntp server; rm")

    import argparse

    parser = argparse.ArgumentParser()
    provision.add_arguments(parser)
    assert provision.run(parser.parse_args(["--state-dir", str(tmp_path / "s"), "--site", "clinic1",
                                            "--chair", "3", "--ntp-host", "ntp.clinic1.lan"])) == 0
    assert json.loads(path.read_text())["ntp_host"] == "ntp.clinic1.lan"
