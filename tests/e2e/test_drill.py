"""A drill end to end: drill box (real firmware) → real Mosquitto → gateway with
the alarm engine → pager (webhook to a real local HTTP receiver) → on-call
staff (this test) acknowledging on the page_ack topic → timings printed and
stored in real InfluxDB."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Observer, Receiver, ShippedClinic, query_rows, start_gateway, wait_rows

from chairside.pager.policy import parse_policy
from chairside.pager.service import Pager
from chairside.service import Gateway
from chairside.sim.services import InfluxDB, Mosquitto, free_port
from chairside.staff.drill import Drill, DrillConfig, DrillResult, store

pytestmark = pytest.mark.services
SITE = "clinic-drill"
SECRET = b"drill-test-secret-0123456789"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    yield rx
    rx.close()


@pytest.fixture
def live_gateway(mosquitto: Mosquitto, influxdb: InfluxDB, tmp_path: Path) -> Iterator[Gateway]:
    gw = start_gateway(mosquitto, influxdb, tmp_path / "gateway-state")  # wall clock: the drill runs live
    yield gw
    gw.stop()


@pytest.fixture
def pager(mosquitto: Mosquitto, receiver: Receiver, tmp_path: Path) -> Iterator[Pager]:
    ack_port = free_port()
    policy = parse_policy({
        "timezone": "UTC",
        "people": {"nurse-kim": {"channels": [{"type": "webhook", "url": receiver.url, "routing_key": "k"}]}},
        "fallback": ["nurse-kim"],
        "priorities": {
            "high": {"delay_s": 0, "ack_timeout_s": 60},
            "medium": {"delay_s": 0, "ack_timeout_s": 60},
            "low": {"page": False, "ack_timeout_s": 60},
        },
        "ack": {"base_url": f"http://127.0.0.1:{ack_port}", "port": ack_port},
    })  # fmt: skip
    service = Pager(policy, secret=SECRET, state_path=tmp_path / "pager-state.json",
                    broker_port=mosquitto.port, client_id="drill-test-pager", tick_s=0.2)
    service.start()
    assert service.wait_subscribed(10)  # the SUBACK has landed
    yield service
    service.stop()


def test_desat_drill_pages_is_acknowledged_and_is_stored(
    mosquitto: Mosquitto, influxdb: InfluxDB, live_gateway: Gateway, pager: Pager, receiver: Receiver,
) -> None:
    config = DrillConfig(site=SITE, chair="3", scenario="desat", mqtt_port=mosquitto.port,
                         influx_url=influxdb.url, ack_timeout_s=20, page_timeout_s=20,
                         alarm_timeout_s=10, lead_s=2.0)  # fmt: skip
    real_chair = Observer(mosquitto.port, f"chairside/v1/{SITE}/3/#")
    results: list[DrillResult] = []
    drill_thread = threading.Thread(target=lambda: results.append(Drill(config).run()), daemon=True)
    drill_thread.start()
    try:
        end = time.monotonic() + 30
        while not receiver.triggers() and time.monotonic() < end:
            time.sleep(0.05)
        (trigger,) = receiver.triggers()
        summary = trigger["payload"]["summary"]
        assert summary.startswith("DRILL "), summary
        assert trigger["dedup_key"] == f"{SITE}/drill-3/spo2_critical"
        assert trigger["payload"]["custom_details"]["drill"] is True
        time.sleep(0.3)  # the nurse reads the page
        real_chair.client.publish(f"chairside/v1/{SITE}/pages/ack", json.dumps(
            {"v": 1, "key": f"{SITE}/drill-3/spo2_critical", "by": "nurse-kim"}), qos=1).wait_for_publish(5)
        drill_thread.join(30)
        assert not drill_thread.is_alive()
    finally:
        real_chair.close()
    (result,) = results
    print("\n" + result.summary(config.ack_timeout_s))
    assert result.result == "acked", result.summary(config.ack_timeout_s)
    assert result.alarm_ms is not None and result.alarm_ms >= 0  # ms resolution: can be 0 on loopback
    assert result.page_ms is not None and result.page_ms >= 0
    assert result.ack_ms is not None and result.ack_ms >= 300
    assert result.acked_by == "nurse-kim" and result.ack_via == "mqtt"
    # no condition delay for spo2_critical: far below spo2_low's 15 s, with room for a loaded 2-core CI
    assert result.alarm_ms < 5000
    # the drill never touched the real chair 3
    assert real_chair.messages == []
    assert live_gateway.wait_idle(10)
    events = wait_rows(influxdb, f"SELECT * FROM alarm_events WHERE site = '{SITE}'", 2)
    assert {r["chair"] for r in events} == {"drill-3"}
    assert all(r["drill"] is True for r in events)
    assert {"raised", "acknowledged"} <= {r["event"] for r in events}

    store(result, influxdb.url, "chairside")
    (row,) = query_rows(influxdb, f"SELECT * FROM drills WHERE site = '{SITE}'")
    assert row["chair"] == "3" and row["scenario"] == "desat" and row["result"] == "acked"
    assert row["alarm_ms"] == result.alarm_ms and row["page_ms"] == result.page_ms
    assert row["ack_ms"] == result.ack_ms and row["acked_by"] == "nurse-kim"


# ---- on the clinic's broker: deploy/mosquitto/chairside.conf as provisioning configures it


@pytest.fixture
def clinic(tmp_path: Path) -> Iterator[ShippedClinic]:
    c = ShippedClinic(tmp_path / "clinic", SITE)
    c.broker.start()
    yield c
    c.broker.stop()


def _drill_args(clinic: ShippedClinic, influxdb: InfluxDB, *extra: str) -> Any:
    import argparse

    from chairside.staff import drill

    parser = argparse.ArgumentParser()
    drill.add_arguments(parser)
    return parser.parse_args([
        "--site", SITE, "--chair", "3", "--scenario", "desat", "--mqtt-port", str(clinic.broker.tls_port),
        "--mqtt-host", "127.0.0.1", "--mqtt-ca", str(clinic.pki_dir / "ca.crt"),
        "--influx-url", influxdb.url, "--ack-timeout", "20", "--page-timeout", "20", "--lead", "2", *extra,
    ])  # fmt: skip


def test_drill_on_the_shipped_broker_with_the_drill_account(
    clinic: ShippedClinic, influxdb: InfluxDB, receiver: Receiver, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`chairside drill --mqtt-credentials services/drill.json --mqtt-ca ca.crt`
    on the TLS listener of the shipped broker, with the gateway and the pager
    logged in with their own accounts on the loopback listener: the drill box
    comes online as drill-3, the chain pages, a nurse acknowledges with the
    staff account, and the command prints its progress and the three times."""
    from chairside import mqtt_auth
    from chairside.config import GatewayConfig
    from chairside.service import default_alarm_stage
    from chairside.staff import drill

    gw = Gateway(GatewayConfig(mqtt_port=clinic.broker.port, influx_url=influxdb.url,
                               state_dir=tmp_path / "gw"), default_alarm_stage())
    gw.use_broker_login(clinic.creds("gateway"), None)
    ack_port = free_port()
    policy = parse_policy({
        "timezone": "UTC",
        "people": {"nurse-kim": {"channels": [{"type": "webhook", "url": receiver.url, "routing_key": "k"}]}},
        "fallback": ["nurse-kim"],
        "priorities": {"high": {"delay_s": 0, "ack_timeout_s": 60}, "medium": {"delay_s": 0, "ack_timeout_s": 60},
                       "low": {"page": False, "ack_timeout_s": 60}},
        "ack": {"base_url": f"http://127.0.0.1:{ack_port}", "port": ack_port},
    })  # fmt: skip
    pager = Pager(policy, secret=SECRET, state_path=tmp_path / "pager-state.json",
                  broker_port=clinic.broker.port, client_id="chairside-pager", tick_s=0.2)
    mqtt_auth.apply(pager.client, clinic.creds("pager"), None)
    nurse_user, nurse_password = mqtt_auth.read_credentials(clinic.creds("staff"))
    acked = threading.Event()

    def nurse() -> None:  # acknowledges the DRILL page with the staff account
        end = time.monotonic() + 30
        while not receiver.triggers() and time.monotonic() < end:
            time.sleep(0.05)
        if not receiver.triggers():
            return
        import paho.mqtt.publish as publish

        publish.single(f"chairside/v1/{SITE}/pages/ack", json.dumps(
            {"v": 1, "key": f"{SITE}/drill-3/spo2_critical", "by": "nurse-kim"}), qos=1,
            hostname="127.0.0.1", port=clinic.broker.port, client_id=nurse_user,
            auth={"username": nurse_user, "password": nurse_password})
        acked.set()

    gw.start()
    pager.start()
    nurse_thread = threading.Thread(target=nurse, daemon=True)
    try:
        assert gw.wait_subscribed(10) and pager.wait_connected(10)
        time.sleep(0.3)  # the pager's SUBACK
        nurse_thread.start()
        code = drill.run(_drill_args(clinic, influxdb, "--mqtt-credentials", str(clinic.creds("drill"))))
        nurse_thread.join(10)
    finally:
        pager.stop()
        gw.stop()
    out = capsys.readouterr().out
    assert acked.is_set()
    assert code == 0, out
    for progress in ("waiting for drill box drill-3 to come online", "drill box online",
                     "waiting for the gateway's spo2_critical alarm", "waiting for the pager's first page",
                     "acknowledge the DRILL page", "waiting for the acknowledgement"):
        assert progress in out, out
    summary = out[out.index("DRILL desat on chair 3 (site"):]
    for line in ("time to alarm:", "time to page:", "time to acknowledgement:"):
        value = summary.split(line)[1].split("(")[0].strip()
        assert value.endswith(("ms", " s")) and value != "-", summary
    assert "result: acked" in summary and "ack by nurse-kim via mqtt" in summary
    (row,) = query_rows(influxdb, f"SELECT * FROM drills WHERE site = '{SITE}'")
    assert row["result"] == "acked" and row["chair"] == "3"


def test_drill_refused_without_the_drill_account_says_why(
    clinic: ShippedClinic, influxdb: InfluxDB, caplog: pytest.LogCaptureFixture,
) -> None:
    """Anonymous: the broker's CONNACK refusal, at once, exit 2.  With the
    staff account (no `box` login): a bad-arguments error naming the drill account."""
    from chairside.staff import drill

    started = time.monotonic()
    assert drill.run(_drill_args(clinic, influxdb)) == 2
    assert time.monotonic() - started < 5
    assert "refused the drill's login" in caplog.text and "Not authorized" in caplog.text, caplog.text
    caplog.clear()
    assert drill.run(_drill_args(clinic, influxdb, "--mqtt-credentials", str(clinic.creds("staff")))) == 2
    assert "provision --service drill" in caplog.text, caplog.text


def test_drill_requires_a_site(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from chairside.staff import commands, drill

    monkeypatch.delenv("CHAIRSIDE_SITE", raising=False)
    for module, argv in ((drill, ["--chair", "3", "--scenario", "desat"]),
                         (commands, ["ack", "--chair", "3", "--alarm", "spo2_low", "--by", "RN"])):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    monkeypatch.setenv("CHAIRSIDE_SITE", "demo-clinic")
    for module, argv in ((drill, ["--chair", "3", "--scenario", "desat"]),
                         (commands, ["ack", "--chair", "3", "--alarm", "spo2_low", "--by", "RN"])):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert parser.parse_args(argv).site == "demo-clinic"
