"""`chairside simulate` on the clinic's broker (deploy/mosquitto/chairside.conf as
provisioning configures it): refused loudly without a login, delivering with
each box's provisioned config over TLS."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from e2e_support import ShippedClinic
from paho.mqtt.enums import CallbackAPIVersion

from chairside import mqtt_auth
from chairside.sim import simulator

pytestmark = pytest.mark.services
SITE = "clinic-sim"


@pytest.fixture
def clinic(tmp_path: Path) -> Iterator[ShippedClinic]:
    c = ShippedClinic(tmp_path / "clinic", SITE, chairs=("3", "4"))
    c.broker.start()
    yield c
    c.broker.stop()


def test_simulate_without_a_login_exits_2_and_says_why(clinic: ShippedClinic) -> None:
    """Before: the boxes retried for ever and nothing reached the broker, silently."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "chairside.cli", "simulate", "--site", SITE, "--chairs", "3:normal",
         "--mqtt-port", str(clinic.broker.port)],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert time.monotonic() - started < 20
    assert f"box {SITE}/3: the broker refused the connection: not authorized" in result.stderr, result.stderr
    assert "--mqtt-credentials" in result.stderr


def test_simulate_credentials_must_match_the_chairs(clinic: ShippedClinic) -> None:
    box3 = clinic.state.box_config_path(SITE, "3")
    box4 = clinic.state.box_config_path(SITE, "4")
    chairs = [("3", "normal"), ("4", "desat")]
    assert [u for u, _ in simulator.box_logins(SITE, chairs, [box3, box4])] == [f"box-{SITE}-3", f"box-{SITE}-4"]
    with pytest.raises(ValueError, match=r"one box config\.json per simulated chair"):
        simulator.box_logins(SITE, chairs, [box3])
    with pytest.raises(ValueError, match=f"box {SITE}/4, not the simulated {SITE}/3"):
        simulator.box_logins(SITE, chairs, [box4, box3])
    with pytest.raises(mqtt_auth.CredentialsError):
        simulator.box_logins(SITE, chairs[:1], [box3.parent / "missing.json"])


def test_simulated_boxes_deliver_through_tls_with_their_provisioned_logins(clinic: ShippedClinic) -> None:
    chairs = [("3", "normal"), ("4", "desat")]
    logins = simulator.box_logins(SITE, chairs, [clinic.state.box_config_path(SITE, c) for c, _ in chairs])
    user, password = mqtt_auth.read_credentials(clinic.creds("gateway"))
    seen: queue.Queue[str] = queue.Queue()
    subscribed = threading.Event()
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user)
    watcher.username_pw_set(user, password)
    watcher.on_message = lambda _c, _u, msg: seen.put(msg.topic)
    watcher.on_subscribe = lambda *_a: subscribed.set()
    watcher.connect("127.0.0.1", clinic.broker.port)
    watcher.loop_start()
    watcher.subscribe(f"chairside/v1/{SITE}/+/vitals", qos=1)
    boxes = [
        simulator.make_box(SITE, chair, scenario, "127.0.0.1", clinic.broker.tls_port, seed=i,
                           mqtt_user=u, mqtt_password=p, mqtt_ca=str(clinic.pki_dir / "ca.crt"))
        for i, ((chair, scenario), (u, p)) in enumerate(zip(chairs, logins, strict=True))
    ]
    fleet = simulator.Fleet(boxes, speed=20.0)
    done = threading.Event()
    outcome: list[int] = []
    try:
        assert subscribed.wait(5)
        fleet.start()
        checker = threading.Thread(target=lambda: outcome.append(simulator.watch_fleet(fleet, SITE, done)))
        checker.start()
        got: set[str] = set()
        end = time.monotonic() + 15
        while len(got) < 2 and time.monotonic() < end:
            try:
                got.add(seen.get(timeout=0.2))
            except queue.Empty:
                continue
        done.set()
        checker.join(5)
    finally:
        fleet.stop()
        watcher.loop_stop()
        watcher.disconnect()
    assert got == {f"chairside/v1/{SITE}/{c}/vitals" for c, _ in chairs}
    assert outcome == [0]
    assert all(box.app.link.onlines >= 1 for box in boxes)
