"""Provisioning against a real Mosquitto running the shipped configuration.

deploy/mosquitto/chairside.conf is started as shipped (only its paths and
ports are moved to a temp folder and loopback): no anonymous access, the
password file and ACL written by `chairside provision`, TLS with certificates
from `chairside certs`.
"""

from __future__ import annotations

import json
import queue
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from chairside import contract, mqtt_auth
from chairside.alarms import load_profile
from chairside.install import pki, provision
from chairside.install.provision import ShippedMosquitto, State
from chairside.station.board import Board
from chairside.station.feed import Feed

pytestmark = pytest.mark.services

SITE = "clinic1"


class Conn:
    """A paho client that records the CONNACK and every message it receives."""

    def __init__(self, port: int, user: str | None = None, password: str | None = None,
                 ca: Path | None = None, client_id: str = "", clean_session: bool = True,
                 will_topic: str | None = None) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=clean_session, protocol=mqtt.MQTTv311)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        if will_topic is not None:
            self.client.will_set(will_topic, b'{"v":1,"state":"offline"}', qos=1, retain=True)
        self.disconnects = 0
        self.client.on_disconnect = lambda *_a: setattr(self, "disconnects", self.disconnects + 1)
        if user is not None:
            self.client.username_pw_set(user, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.connack: queue.Queue[bool] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: self.connack.put(not rc.is_failure)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.port = port

    def connect(self) -> bool:
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=10)
        except (ssl.SSLError, OSError):
            sock = self.client.socket()
            if sock is not None:
                sock.close()
            return False
        self.client.loop_start()
        try:
            ok = self.connack.get(timeout=5)
        except queue.Empty:
            ok = False
        if not ok:
            self.close()
        return ok

    def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(5)

    def publish(self, topic: str, payload: bytes = b"{}", retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)

    def received(self, until_topic: str, timeout: float = 5) -> list[str]:
        """Topics received up to and including ``until_topic``."""
        seen: list[str] = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                topic, _ = self.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            seen.append(topic)
            if topic == until_topic:
                return seen
        raise AssertionError(f"{until_topic} never arrived; got {seen}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


class Clinic:
    def __init__(self, root: Path) -> None:
        self.state = State(root / "state")
        self.pki_dir = root / "pki"
        pki.init_ca(self.pki_dir)
        pki.issue_server(self.pki_dir, ["localhost", "127.0.0.1"])
        for name in ("gateway", "pager", "staff", "drill"):
            self.state.provision_service(name)
        for chair in ("3", "4"):
            self.state.provision_box(SITE, chair, mqtt_host="127.0.0.1")
        conf = self.state.broker_dir
        for name in ("ca.crt", "server.crt", "server.key"):
            shutil.copy(self.pki_dir / name, conf / name)
        self.broker = ShippedMosquitto(conf, workdir=root / "broker")
        self.conns: list[Conn] = []

    def box_creds(self, chair: str) -> tuple[str, str]:
        cfg = json.loads(self.state.box_config_path(SITE, chair).read_text())
        return str(cfg["mqtt"]["user"]), str(cfg["mqtt"]["password"])

    def conn(self, who: str, tls_ca: Path | None = None, must_connect: bool = True,
             client_id: str = "", **kwargs: Any) -> Conn:
        if who.startswith("box"):
            user, password = self.box_creds(who[3:])
        else:
            name, _, login = who.partition(".")
            user, password = self.state.service_credentials(name, login or None)
        port = self.broker.tls_port if tls_ca else self.broker.port
        c = Conn(port, user, password, tls_ca, client_id=client_id, **kwargs)
        ok = c.connect()
        self.conns.append(c)
        if must_connect:
            assert ok, f"{who} could not connect"
        return c


@pytest.fixture
def clinic(tmp_path: Path) -> Iterator[Clinic]:
    c = Clinic(tmp_path)
    c.broker.start()
    yield c
    for conn in c.conns:
        conn.close()
    c.broker.stop()


def t(name: str, chair: str = "3") -> str:
    return provision._topic(name, SITE, chair)


def test_anonymous_connection_refused(clinic: Clinic) -> None:
    assert not Conn(clinic.broker.port).connect()
    assert not Conn(clinic.broker.tls_port, ca=clinic.pki_dir / "ca.crt").connect()
    assert not Conn(clinic.broker.port, "box-clinic1-3", "wrong password").connect()


def test_box_cannot_publish_to_another_chair(clinic: Clinic) -> None:
    gateway = clinic.conn("gateway")
    gateway.subscribe("chairside/v1/#")
    box3 = clinic.conn("box3")
    for name in ("vitals", "nibp", "status", "resp"):
        box3.publish(t(name, "4"))
    box3.publish(t("cmd", "4"))          # nor command another box
    box3.publish(t("alarms", "3"))       # nor fake gateway output for itself
    box3.publish(t("stored", "3"))       # nor confirm its own readings
    box3.publish(t("stored", "4"))       # nor another box's
    box3.publish(t("vitals", "3"))       # allowed: marks the end
    seen = clinic.conns[0].received(t("vitals", "3"))
    assert seen == [t("vitals", "3")]


def test_box_reads_only_its_own_command_and_stored_topics(clinic: Clinic) -> None:
    box3 = clinic.conn("box3")
    box3.subscribe("chairside/v1/#")
    gateway = clinic.conn("gateway.publisher")  # the gateway's publishing connection
    gateway.publish(t("cmd", "4"))
    gateway.publish(t("vitals", "4"))
    gateway.publish(t("stored", "4"), b'{"v":1,"boot":1,"seq":5,"t":0}', retain=True)
    gateway.publish(t("stored", "3"), b'{"v":1,"boot":1,"seq":7,"t":0}', retain=True)
    gateway.publish(t("cmd", "3"))
    assert box3.received(t("cmd", "3")) == [t("stored", "3"), t("cmd", "3")]
    # the retained watermark reaches the box when it (re)subscribes, its own only
    again = clinic.conn("box3")
    again.subscribe("chairside/v1/+/+/stored")
    assert again.received(t("stored", "3")) == [t("stored", "3")]


def test_gateway_receives_everything(clinic: Clinic) -> None:
    gateway = clinic.conn("gateway")
    gateway.subscribe("chairside/v1/#")
    box3, box4 = clinic.conn("box3"), clinic.conn("box4")
    staff, pager = clinic.conn("staff"), clinic.conn("pager")
    expected = []
    for box, chair in ((box3, "3"), (box4, "4")):
        for name in ("vitals", "nibp", "status", "resp"):
            box.publish(t(name, chair))
            expected.append(t(name, chair))
    for name in ("alarm_ack", "limits_set"):
        staff.publish(t(name))
        expected.append(t(name))
    staff.publish(provision._topic("page_ack", SITE))
    pager.publish(provision._topic("pages", SITE))
    expected += [provision._topic("page_ack", SITE), provision._topic("pages", SITE)]
    seen = gateway.received(expected[-1])
    assert sorted(seen) == sorted(expected)


PAGER_WRITES = ("pages", "alarm_ack")  # and its own technical alarms (chair "pager")


def test_pager_reads_alarms_and_writes_pages_only(clinic: Clinic) -> None:
    pager = clinic.conn("pager")
    pager.subscribe("chairside/v1/+/+/alarms")
    pager.subscribe("chairside/v1/+/+/vitals")   # accepted but never delivered
    gateway = clinic.conn("gateway")
    gateway.publish(t("vitals"))
    gateway.publish(t("alarms"))
    assert pager.received(t("alarms")) == [t("alarms")]
    # what the pager may write, seen by a listener on the whole tree: every
    # other topic of the contract (and a chair's alarms: only the engine speaks
    # for a chair) is denied, so nothing arrives before the end marker, the
    # pager's own technical alarm, which it may write
    gateway.subscribe("chairside/v1/#")
    names = sorted(contract.load()["topics"])
    denied = [t(name) for name in names if name not in PAGER_WRITES] + ["chairside/v1/other/3/alarms"]
    for topic in denied:
        pager.publish(topic)
    allowed = [t(name) for name in PAGER_WRITES]
    for topic in allowed:
        pager.publish(topic)
    tech = provision._topic("alarms", SITE, "pager")
    pager.publish(tech)
    assert gateway.received(tech) == [*allowed, tech]


def test_drill_accounts_touch_drill_chairs_only(clinic: Clinic) -> None:
    """The drill box publishes as drill-3 (a provisioned chair's drill chair),
    never as chair 3 nor as a drill chair of no provisioned box; the drill's
    watcher reads drill-3 and the site's pages, not chair 3, and writes only
    drill-3's cmd, alarms/ack and drill/end."""
    gateway = clinic.conn("gateway")
    gateway.subscribe("chairside/v1/#")
    box = clinic.conn("drill.box")
    for name in ("vitals", "nibp", "status", "resp"):
        box.publish(t(name, "3"))                 # denied: a real chair
    box.publish(t("vitals", "drill-9"))           # denied: no box 9, no drill chair 9
    box.publish(t("alarms", "drill-3"))           # denied: gateway output
    box.publish(t("vitals", "drill-3"))           # allowed: marks the end
    assert gateway.received(t("vitals", "drill-3")) == [t("vitals", "drill-3")]

    watch = clinic.conn("drill")
    watch.subscribe(f"chairside/v1/{SITE}/drill-3/#")
    watch.subscribe(provision._topic("pages", SITE))
    watch.subscribe(f"chairside/v1/{SITE}/3/#")   # accepted or not, never delivered
    publisher = clinic.conn("gateway.publisher")
    publisher.publish(t("vitals", "3"))
    publisher.publish(t("alarms", "3"))
    publisher.publish(provision._topic("pages", SITE))
    publisher.publish(t("alarms", "drill-3"))
    assert watch.received(t("alarms", "drill-3")) == [provision._topic("pages", SITE), t("alarms", "drill-3")]
    for name in ("cmd", "alarm_ack", "drill_end", "limits_set"):
        watch.publish(t(name, "3"))               # denied: a real chair
    watch.publish(t("limits_set", "drill-3"))     # denied: not a drill's message
    for name in ("cmd", "alarm_ack", "drill_end"):
        watch.publish(t(name, "drill-3"))
    seen = gateway.received(t("drill_end", "drill-3"), timeout=5)
    assert seen[-3:] == [t("cmd", "drill-3"), t("alarm_ack", "drill-3"), t("drill_end", "drill-3")]
    denied = [t(name, "3") for name in ("cmd", "alarm_ack", "drill_end", "limits_set")]
    assert not set(seen) & {*denied, t("limits_set", "drill-3")}, seen


def test_drill_chairs_follow_the_provisioned_boxes(tmp_path: Path) -> None:
    state = State(tmp_path / "s")
    state.provision_service("drill")
    state.provision_box(SITE, "3", mqtt_host="h")
    state.provision_box("clinic2", "7", mqtt_host="h")
    acl = (state.broker_dir / "acl").read_text()
    assert f"topic write chairside/v1/{SITE}/drill-3/vitals" in acl
    assert "topic write chairside/v1/clinic2/drill-7/vitals" in acl
    assert f"topic read chairside/v1/{SITE}/pages" in acl
    state.revoke_box("clinic2", "7")
    acl = (state.broker_dir / "acl").read_text()
    assert "drill-7" not in acl and "clinic2" not in acl
    assert provision.drill_chairs(state.accounts) == [(SITE, "drill-3")]


def refused_after_reload(clinic: Clinic, user: str, password: str, timeout: float = 5.0) -> bool:
    """SIGHUP, then wait for its observable effect: Mosquitto re-reads the
    password file and ACL in its main loop, so try the login until it is
    refused (each try is a real CONNECT; a login that still works is closed).
    False if it is still accepted after ``timeout``."""
    clinic.broker.reload()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        conn = Conn(clinic.broker.port, user, password)
        if not conn.connect():
            return True
        conn.close()
        time.sleep(0.05)
    return False


def test_revoked_and_rotated_boxes_cannot_connect(clinic: Clinic) -> None:
    old_user, old_password = clinic.box_creds("3")
    clinic.conn("box3").close()
    clinic.state.provision_box(SITE, "3")           # rotate
    clinic.state.revoke_box(SITE, "4")
    assert refused_after_reload(clinic, old_user, old_password)
    clinic.conn("box3")                               # the new password works
    user4 = provision.box_user(SITE, "4")
    assert not clinic.state.box_config_path(SITE, "4").exists()
    assert user4 not in (clinic.state.broker_dir / "passwd").read_text()
    assert user4 not in (clinic.state.broker_dir / "acl").read_text()


def test_revoked_box_with_saved_password_is_refused(clinic: Clinic) -> None:
    user, password = clinic.box_creds("4")
    assert Conn(clinic.broker.port, user, password).connect()
    clinic.state.revoke_box(SITE, "4")
    assert refused_after_reload(clinic, user, password)


def test_tls_with_generated_ca_succeeds_and_wrong_ca_fails(clinic: Clinic, tmp_path: Path) -> None:
    box = clinic.conn("box3", tls_ca=clinic.pki_dir / "ca.crt")
    gateway = clinic.conn("gateway")
    gateway.subscribe(t("status"))
    box.publish(t("status"), b'{"v":1,"state":"online"}', retain=True)
    assert gateway.received(t("status")) == [t("status")]

    other = tmp_path / "other-ca"
    pki.init_ca(other, name="Some other CA")
    # (checked with the ssl module directly: paho leaks the socket of a failed handshake)
    context = ssl.create_default_context(cafile=str(other / "ca.crt"))
    with (
        socket.create_connection(("127.0.0.1", clinic.broker.tls_port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="localhost").close()
    context = ssl.create_default_context(cafile=str(clinic.pki_dir / "ca.crt"))
    with socket.create_connection(("127.0.0.1", clinic.broker.tls_port), timeout=5) as raw:
        context.wrap_socket(raw, server_hostname="localhost").close()  # the right CA: ok


def test_password_hash_format_matches_mosquitto() -> None:
    digest = provision.hash_password("p", salt=b"\x00" * 12)
    assert digest.startswith("$7$101$AAAAAAAAAAAAAAAA$") and len(digest.split("$")[4]) == 88


def test_acl_has_no_anonymous_rules_and_cli_round_trip(tmp_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    provision.add_arguments(parser)
    state_dir = tmp_path / "s"
    base = ["--state-dir", str(state_dir)]
    assert provision.run(parser.parse_args([*base, "--site", SITE, "--chair", "3"])) == 1
    args = [*base, "--site", SITE, "--chair", "3", "--mqtt-host", "10.0.0.2",
            "--wifi-ssid", "clinic-iot"]
    assert provision.run(parser.parse_args(args)) == 0
    cfg = json.loads((state_dir / "boxes/clinic1/3/config.json").read_text())
    assert cfg["mqtt"]["tls"] is True and cfg["mqtt"]["port"] == 8883
    assert cfg["mqtt"]["ca_file"] == "ca.crt" and cfg["wifi"]["ssid"] == "clinic-iot"
    assert (state_dir / "boxes/clinic1/3/config.json").stat().st_mode & 0o077 == 0
    acl = (state_dir / "mosquitto/acl").read_text()
    first_user = acl.index("user ")
    assert "topic" not in acl[:first_user].replace("# No topic lines", "")
    assert provision.run(parser.parse_args([*base, "--site", "Bad Site", "--chair", "3",
                                            "--mqtt-host", "x"])) == 1
    assert provision.run(parser.parse_args([*base, "--site", SITE, "--chair", "3",
                                            "--revoke"])) == 0


def test_real_gateway_and_firmware_box_through_the_shipped_broker(clinic: Clinic, tmp_path: Path) -> None:
    """The gateway logs in with `--mqtt-credentials` (the file provision writes)
    and the real firmware with its provisioned config; readings land in InfluxDB."""
    from chairside.config import GatewayConfig
    from chairside.service import Gateway, default_alarm_stage
    from chairside.sim.services import InfluxDB
    from chairside.sim.simulator import make_box

    user, password = clinic.box_creds("3")
    with InfluxDB(workdir=tmp_path / "influxd") as influx:
        gw = Gateway(GatewayConfig(mqtt_port=clinic.broker.port, influx_url=influx.url,
                                   state_dir=tmp_path / "gw"), default_alarm_stage())
        gw.use_broker_login(clinic.state.service_path("gateway"), None)
        gw.start()
        box = make_box(SITE, "3", "normal", "127.0.0.1", clinic.broker.port, fs_dir=str(tmp_path / "box"),
                       mqtt_user=user, mqtt_password=password)
        try:
            assert gw.wait_subscribed(10)
            for _ in range(10):
                box.step(1000)
                time.sleep(0.01)
            assert box.app.link.online
            end = time.monotonic() + 10
            count = 0
            while time.monotonic() < end and count < 10:
                result: Any = influx.query(f"SELECT count(seq) FROM vitals WHERE site = '{SITE}'", "chairside")
                series = result["results"][0].get("series")
                count = series[0]["values"][0][1] if series else 0
                time.sleep(0.2)
            assert count == 10
        finally:
            box.close()
            gw.stop()


def test_every_connection_has_its_own_account(clinic: Clinic) -> None:
    """Provisioning writes one account per broker connection (the broker makes
    the user name the client id): the gateway's publisher and the flash
    watcher have their own, and all log in at once without knocking each
    other off."""
    users = {}
    for who in ("gateway", "gateway.publisher", "pager", "staff", "staff.flash", "staff.station"):
        name, _, login = who.partition(".")
        users[who] = clinic.state.service_credentials(name, login or None)[0]
    assert len(set(users.values())) == len(users)
    conns = [clinic.conn(who) for who in users]
    conns += [clinic.conn("box3"), clinic.conn("box4")]
    time.sleep(1.0)
    assert [c.disconnects for c in conns] == [0] * len(conns)
    passwd = (clinic.state.broker_dir / "passwd").read_text()
    assert all(f"{user}:$7$" in passwd for user in users.values())


def test_station_login_has_the_staff_grants_on_its_own_connection(clinic: Clinic, tmp_path: Path) -> None:
    """The nurses' station logs in with the staff file's ``station`` login, so a
    ``chairside staff`` command (the main staff account) no longer takes its
    connection over; it may send what staff send, and nothing a box sends."""
    creds = clinic.state.service_path("staff")
    assert mqtt_auth.has_login(creds, "station") and not mqtt_auth.has_login(creds, "nosuch")
    feed = Feed(Board(SITE, load_profile(), None), lambda: 0, lambda _chair: None,
                port=clinic.broker.port, credentials=creds)
    assert feed.client._client_id.decode() == clinic.state.service_credentials("staff", "station")[0]
    gateway = clinic.conn("gateway")
    gateway.subscribe(f"{contract.topic_root()}/#")
    station = clinic.conn("staff.station")
    staff = clinic.conn("staff")  # a staff command beside it
    station.publish(t("vitals"))  # a box's topic: denied
    station.publish(t("alarm_ack"))
    assert gateway.received(t("alarm_ack")) == [t("alarm_ack")]
    time.sleep(0.5)
    assert station.disconnects == 0 and staff.disconnects == 0


def test_box_cannot_take_another_clients_id(clinic: Clinic) -> None:
    """Box 3 asks for box 4's client id, then the gateway's: the broker gives
    it its own account's id instead, so neither victim is knocked off and box
    4's offline will never fires."""
    watcher = clinic.conn("staff")
    watcher.subscribe(t("status", "4"))
    gateway = clinic.conn("gateway", client_id="chairside-gateway", clean_session=False)
    gateway.subscribe(t("vitals", "4"))
    box4 = clinic.conn("box4", client_id="box-clinic1-4", clean_session=False,
                       will_topic=t("status", "4"))
    for victim in ("box-clinic1-4", "chairside-gateway", "chairside-gateway-pub", "chairside-pager"):
        clinic.conn("box3", client_id=victim)
    time.sleep(1.5)
    assert box4.disconnects == 0 and gateway.disconnects == 0
    box4.publish(t("vitals", "4"))
    assert gateway.received(t("vitals", "4")) == [t("vitals", "4")]
    offline = [topic for topic, _ in list(watcher.messages.queue) if topic == t("status", "4")]
    assert offline == []


def _count(influx: Any, q: str) -> int:
    result: Any = influx.query(q, "chairside")
    series = result["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def test_gateway_session_survives_a_box_taking_its_ids(clinic: Clinic, tmp_path: Path) -> None:
    """A real gateway and a real firmware box on the shipped broker; box 3's
    account connects as `chairside-gateway` (clean session: on a broker that
    lets it, this discards the gateway's persistent session), as the
    publisher and as box 4, while box 4 keeps measuring.  The gateway's
    ingest session is never dropped, box 4 is never offline (no box_offline
    alarm), and every reading of box 4 is stored."""
    from chairside.service import Gateway, GatewayConfig, default_alarm_stage
    from chairside.sim.services import InfluxDB
    from chairside.sim.simulator import make_box

    user, password = clinic.box_creds("4")
    watcher = clinic.conn("staff")
    watcher.subscribe(t("status", "4"))
    watcher.subscribe(t("alarms", "4"))
    with InfluxDB(workdir=tmp_path / "influxd") as influx:
        gw = Gateway(GatewayConfig(mqtt_port=clinic.broker.port, influx_url=influx.url,
                                   state_dir=tmp_path / "gw"), default_alarm_stage())
        gw.use_broker_login(clinic.state.service_path("gateway"), None)
        states: list[str] = []
        on_state = gw.ingest.on_state
        gw.ingest.on_state = lambda state: (states.append(state), on_state(state))[-1]
        gw.start()
        box = make_box(SITE, "4", "normal", "127.0.0.1", clinic.broker.port, fs_dir=str(tmp_path / "box"),
                       mqtt_user=user, mqtt_password=password)
        steps = 0
        try:
            assert gw.wait_subscribed(10)
            for _ in range(5):
                box.step(1000)
                steps += 1
                time.sleep(0.05)
            assert box.app.link.online
            receiving = states.count("receiving")
            for victim in ("chairside-gateway", "chairside-gateway-pub", "box-clinic1-4"):
                attacker = clinic.conn("box3", client_id=victim)
                for _ in range(5):  # box 4 measures while the attacker is connected
                    box.step(1000)
                    steps += 1
                    time.sleep(0.1)
                attacker.close()
            end = time.monotonic() + 15
            stored = 0
            while time.monotonic() < end and stored < steps:
                stored = _count(influx, "SELECT count(seq) FROM vitals WHERE chair = '4'")
                time.sleep(0.2)
            assert stored == steps
            assert states.count("receiving") == receiving, states  # never reconnected
            assert box.app.link.online
            seen = [(topic, payload) for topic, payload in list(watcher.messages.queue)]
            assert not [p for topic, p in seen if topic == t("status", "4") and b"offline" in p]
            assert not [p for topic, p in seen if topic == t("alarms", "4") and b"box_offline" in p]
            assert not [a for a in gw.alarm_stage.active(SITE, "4") if "box_offline" in str(a)]
        finally:
            box.close()
            gw.stop()


def test_staff_command_and_flash_account_beside_the_gateway(clinic: Clinic, tmp_path: Path) -> None:
    """`chairside staff` logs in with the staff account (its client id becomes
    chairside-staff) and gets the gateway's answer while the gateway, the
    pager and the flash watcher are connected with their own accounts; no one
    is knocked off."""
    import argparse

    from chairside.service import Gateway, GatewayConfig, default_alarm_stage
    from chairside.sim.services import InfluxDB
    from chairside.staff import commands

    with InfluxDB(workdir=tmp_path / "influxd") as influx:
        gw = Gateway(GatewayConfig(mqtt_port=clinic.broker.port, influx_url=influx.url,
                                   state_dir=tmp_path / "gw"), default_alarm_stage())
        gw.use_broker_login(clinic.state.service_path("gateway"), None)
        states: list[str] = []
        on_state = gw.ingest.on_state
        gw.ingest.on_state = lambda state: (states.append(state), on_state(state))[-1]
        gw.start()
        try:
            assert gw.wait_subscribed(10)
            others = [clinic.conn("pager"), clinic.conn("staff.flash")]
            parser = argparse.ArgumentParser()
            commands.add_arguments(parser)
            args = parser.parse_args([
                "standby", "--site", SITE, "--chair", "3", "--by", "RN Lee",
                "--mqtt-port", str(clinic.broker.port),
                "--mqtt-credentials", str(clinic.state.service_path("staff"))])
            assert commands.run(args) == 0
            assert commands.run(args) == 0  # again: the previous session ended cleanly
            assert [c.disconnects for c in others] == [0, 0]
            assert states.count("receiving") == 1 and gw.outbound.connected
        finally:
            gw.stop()
