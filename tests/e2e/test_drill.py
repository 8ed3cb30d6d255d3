"""A drill end to end: drill box (real firmware) → real Mosquitto → gateway with
the alarm engine → pager (webhook to a real local HTTP receiver) → on-call
staff (this test) acknowledging on the page_ack topic → timings printed and
stored in real InfluxDB."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Observer, query_rows, start_gateway, wait_rows

from chairside.pager.policy import parse_policy
from chairside.pager.service import Pager
from chairside.service import Gateway
from chairside.sim.services import InfluxDB, Mosquitto, free_port
from chairside.staff.drill import Drill, DrillConfig, DrillResult, store

pytestmark = pytest.mark.services
SITE = "clinic-drill"
SECRET = b"drill-test-secret-0123456789"


class Receiver:
    """A local HTTP server standing in for the clinic's incident tool."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                outer.bodies.append(json.loads(data))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/events"

    def triggers(self) -> list[dict[str, Any]]:
        return [b for b in list(self.bodies) if b.get("event_action") == "trigger"]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


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
    assert service.wait_connected(10)
    time.sleep(0.3)  # let the SUBACK land
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
    assert result.alarm_ms < 1000  # no condition delay for spo2_critical
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
