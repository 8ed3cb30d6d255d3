"""The pager service end to end: real Mosquitto, real HTTP receiver, real
subprocess restarts (kill -9) with durable state."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from gw_support import wait_until
from paho.mqtt.enums import CallbackAPIVersion

from chairside.pager.policy import parse_policy
from chairside.pager.service import Pager
from chairside.pager.state import StateStore, empty_state
from chairside.sim.services import Mosquitto, free_port

REPO = Path(__file__).resolve().parents[3]
SECRET = "service-test-secret-0123456789"
KEY = "clinic1/chair3/spo2_low"


class Receiver:
    """Real local HTTP server standing in for a PagerDuty-compatible tool."""

    def __init__(self) -> None:
        self.bodies: list[tuple[float, dict[str, Any]]] = []
        self.answering = threading.Event()  # cleared: requests are recorded but left unanswered
        self.answering.set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                outer.bodies.append((time.time(), json.loads(data)))
                if not outer.answering.wait(30):
                    return  # never answered (the sender's timeout decides)
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, who: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{who}"

    def events(self, action: str, to: str | None = None) -> list[tuple[float, dict[str, Any]]]:
        return [
            (t, b)
            for t, b in list(self.bodies)
            if b["event_action"] == action
            and (to is None or b.get("payload", {}).get("custom_details", {}).get("to") == to)
        ]

    def close(self) -> None:
        self.answering.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class Watcher:
    """A paho client recording everything under chairside/v1/#."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{port}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("chairside/v1/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.ready.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
        try:
            self.messages.append((m.topic, json.loads(m.payload)))
        except (ValueError, RecursionError):  # poison messages a test publishes
            self.messages.append((m.topic, {"undecodable": True}))

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(timeout=5)

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [p for t, p in list(self.messages) if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def alarm(event: str = "raised", drill: bool = False, n: int = 1) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "v": 1, "id": f"evt-{event}-{n}-{time.time_ns()}", "key": KEY, "site": "clinic1",
        "chair": "chair3", "alarm": "spo2_low", "priority": "high", "kind": "physiological",
        "event": event, "t": int(time.time() * 1000), "text": "SpO2 84 % < 85 % (chair 3)",
        "value": 84.0, "limit": 85.0,
    }  # fmt: skip
    if drill:
        payload["drill"] = 1
    return payload


def policy_doc(rx: Receiver, ack_port: int, timeout_s: float = 3) -> dict[str, Any]:
    return {
        "timezone": "UTC",
        "people": {
            "alice": {"channels": [{"type": "webhook", "url": rx.url("alice"), "routing_key": "k"}]},
            "bob": {"channels": [{"type": "webhook", "url": rx.url("bob"), "routing_key": "k"}]},
            "carol": {"channels": [{"type": "mqtt"}]},
        },
        "fallback": ["alice", "bob"],
        "priorities": {
            "high": {"delay_s": 0, "ack_timeout_s": timeout_s},
            "medium": {"delay_s": 0, "ack_timeout_s": timeout_s},
            "low": {"page": False, "ack_timeout_s": 60},
        },
        "flap_window_s": 1,
        "retry": {"attempts": 2, "backoff_s": 0.1},
        "ack": {"base_url": f"http://127.0.0.1:{ack_port}", "port": ack_port},
    }  # fmt: skip


@pytest.fixture
def rx() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def watcher(mosquitto: Mosquitto) -> Iterator[Watcher]:
    w = Watcher(mosquitto.port)
    yield w
    w.close()


def start_pager(doc: dict[str, Any], mosquitto: Mosquitto, state: Path) -> Pager:
    pager = Pager(
        parse_policy(doc), secret=SECRET.encode(), state_path=state,
        broker_port=mosquitto.port, client_id=f"pager-{state.parent.name}",
    )  # fmt: skip
    pager.start()
    assert pager.wait_subscribed(10)  # the SUBACK has landed: alarms reach it from now on
    return pager


pytestmark = pytest.mark.services


def test_page_via_webhook_ack_via_link_forwarded_and_resolved(
    mosquitto: Mosquitto, rx: Receiver, watcher: Watcher, tmp_path: Path
) -> None:
    ack_port = free_port()
    pager = start_pager(policy_doc(rx, ack_port), mosquitto, tmp_path / "state.json")
    try:
        watcher.publish("chairside/v1/clinic1/chair3/alarms", alarm())
        (_, trigger), = wait_until(lambda: rx.events("trigger", "alice"), 10, "alice paged")
        assert trigger["dedup_key"] == KEY
        link = trigger["links"][0]["href"]
        assert link.startswith(f"http://127.0.0.1:{ack_port}/ack?token=")

        with urllib.request.urlopen(link, timeout=5) as resp:  # GET only shows a button
            page = resp.read().decode()
        assert resp.status == 200 and "<form method='post'" in page
        assert pager.threads()[KEY].state == "paged"

        token = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["token"][0]
        data = urllib.parse.urlencode({"token": token}).encode()
        with urllib.request.urlopen(f"http://127.0.0.1:{ack_port}/ack", data=data, timeout=5) as r:
            done = r.read().decode()
        assert "Acknowledged" in done and "alice" in done

        forwarded = wait_until(
            lambda: watcher.on("chairside/v1/clinic1/chair3/alarms/ack"), 5, "ack forwarded"
        )
        assert forwarded == [{"v": 1, "alarm": "spo2_low", "by": "alice"}]
        wait_until(lambda: rx.events("acknowledge"), 5, "webhook acknowledge")
        thread = pager.threads()[KEY]
        assert thread.state == "acked" and thread.acked_by == "alice" and thread.ack_via == "link"

        time.sleep(3.5)  # past the 3 s ack timeout: nobody else is paged
        assert rx.events("trigger", "bob") == []

        watcher.publish("chairside/v1/clinic1/chair3/alarms", alarm("cleared"))
        wait_until(lambda: rx.events("resolve"), 6, "resolve after flap window")

        def records_with_resolve() -> list[dict[str, Any]]:
            found = [p for p in watcher.on("chairside/v1/clinic1/pages") if p["type"] == "record"]
            return found if any(r["action"] == "resolve" for r in found) else []

        records = wait_until(records_with_resolve, 5, "resolve record on the pages topic")
        actions = [r["action"] for r in records]
        assert actions[:2] == ["page", "acknowledge"] and "resolve" in actions
        page_rec = records[0]
        assert page_rec["ok"] and page_rec["channel"] == "webhook" and page_rec["to"] == "alice"
        assert page_rec["first_page_t"] >= page_rec["event_t"]
        ack_rec = records[1]
        assert ack_rec["by"] == "alice" and ack_rec["acked_t"] >= ack_rec["first_page_t"]
        log_rows = (tmp_path / "state.json.deliveries.jsonl").read_text().splitlines()
        assert json.loads(log_rows[0])["channel"] == "webhook"

        with urllib.request.urlopen(f"http://127.0.0.1:{ack_port}/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            exposition = resp.read().decode().splitlines()
        for sample in (
            'chairside_pager_pages_sent_total{action="page",channel="webhook"} 1.0',
            'chairside_pager_pages_sent_total{action="acknowledge",channel="webhook"} 1.0',
            'chairside_pager_pages_sent_total{action="resolve",channel="webhook"} 1.0',
            'chairside_pager_acks_total{via="link"} 1.0',
            'chairside_pager_alarm_events_total{event="raised"} 1.0',
            'chairside_pager_page_threads{state="resolved"} 1.0',
            "chairside_pager_pages_failed_total 0.0",
            "chairside_pager_outbox_depth 0.0",
        ):
            assert sample in exposition, sample
    finally:
        pager.stop()


def test_drill_page_on_mqtt_and_ack_via_page_ack_topic(
    mosquitto: Mosquitto, rx: Receiver, watcher: Watcher, tmp_path: Path
) -> None:
    doc = policy_doc(rx, free_port())
    doc["fallback"] = ["carol", "alice"]
    pager = start_pager(doc, mosquitto, tmp_path / "state.json")
    try:
        watcher.publish("chairside/v1/clinic1/chair3/alarms", alarm(drill=True))
        pages = wait_until(
            lambda: [p for p in watcher.on("chairside/v1/clinic1/pages") if p["type"] == "page"],
            10,
            "page on the pages topic",
        )
        assert pages[0]["to"] == "carol" and pages[0]["drill"] == 1
        assert pages[0]["text"].split()[0] == "DRILL"
        assert "/ack?token=" in pages[0]["ack_url"]

        # a bad ack is rejected with a reason, not an exception
        watcher.publish("chairside/v1/clinic1/pages/ack", {"v": 1, "key": KEY})
        watcher.publish("chairside/v1/clinic1/pages/ack", {"v": 1, "key": KEY, "by": "carol"})
        wait_until(lambda: watcher.on("chairside/v1/clinic1/chair3/alarms/ack"), 5, "forward")
        assert pager.threads()[KEY].acked_by == "carol"
        assert pager.metrics.get("rejected", reason="missing or blank by") == 1
        records = wait_until(
            lambda: [
                p
                for p in watcher.on("chairside/v1/clinic1/pages")
                if p["type"] == "record" and p["action"] == "forward_ack"
            ],
            5,
            "forward record",
        )
        rec = records[0]
        # what `chairside drill` needs: time-to-page and time-to-ack
        assert rec["drill"] == 1
        assert rec["first_page_t"] - rec["event_t"] >= 0
        assert rec["acked_t"] - rec["first_page_t"] >= 0
        # the engine's own "acknowledged" echo does not ack twice
        watcher.publish("chairside/v1/clinic1/chair3/alarms", alarm("acknowledged") | {"by": "carol"})
        time.sleep(0.5)
        assert len(watcher.on("chairside/v1/clinic1/chair3/alarms/ack")) == 1
        assert pager.metrics.get("acks", via="mqtt") == 1 and pager.metrics.total("acks") == 1
    finally:
        pager.stop()


def test_rate_limit_suppresses_then_sends_one_summary(
    mosquitto: Mosquitto, rx: Receiver, watcher: Watcher, tmp_path: Path
) -> None:
    doc = policy_doc(rx, free_port())
    doc["fallback"] = ["alice"]
    doc["rate_limit"] = {"max_pages": 1, "window_s": 2}
    pager = start_pager(doc, mosquitto, tmp_path / "state.json")
    try:
        for chair in ("chair1", "chair2", "chair4"):  # a fault on several chairs at once
            event = alarm() | {"chair": chair, "key": f"clinic1/{chair}/spo2_low"}
            watcher.publish(f"chairside/v1/clinic1/{chair}/alarms", event)
        wait_until(lambda: pager.metrics.get("pages_suppressed") >= 2, 10, "pages suppressed")
        summaries = wait_until(
            lambda: [b for _, b in rx.events("trigger") if b["dedup_key"] == "rate-limit/alice"],
            10,
            "summary page",
        )
        assert "held by the rate limit" in summaries[0]["payload"]["summary"]
        time.sleep(0.5)
        real_pages = [b for _, b in rx.events("trigger") if b["dedup_key"] != "rate-limit/alice"]
        assert len(real_pages) == 1  # one page in the window, the rest held and summarised
        assert pager.ratelimit.suppressed_total["alice"] >= 2
        records = [p for p in watcher.on("chairside/v1/clinic1/pages") if p["type"] == "record"]
        assert {"page", "suppressed", "summary"} <= {r["action"] for r in records}
    finally:
        pager.stop()


def test_acknowledge_and_resolve_notices_are_not_rate_limited(
    mosquitto: Mosquitto, rx: Receiver, watcher: Watcher, tmp_path: Path
) -> None:
    """docs/paging.md, "Rate limits": alice may get 1 page a minute and gets
    it; the acknowledge and the resolve notice of that thread still reach her
    at once (neither held nor summarised)."""
    doc = policy_doc(rx, free_port(), timeout_s=60)
    doc["fallback"] = ["alice"]
    doc["rate_limit"] = {"max_pages": 1, "window_s": 60}
    pager = start_pager(doc, mosquitto, tmp_path / "state.json")
    try:
        watcher.publish("chairside/v1/clinic1/chair3/alarms", alarm())
        wait_until(lambda: rx.events("trigger", "alice"), 10, "alice paged")
        watcher.publish("chairside/v1/clinic1/pages/ack", {"v": 1, "key": KEY, "by": "alice"})
        wait_until(lambda: rx.events("acknowledge"), 5, "acknowledge notice")
        watcher.publish("chairside/v1/clinic1/chair3/alarms", alarm("cleared"))
        wait_until(lambda: rx.events("resolve"), 6, "resolve notice after the 1-s flap window")
        assert [b["dedup_key"] for _, b in rx.bodies] == [KEY, KEY, KEY]  # no summary page
        assert pager.metrics.get("pages_suppressed") == 0
        assert pager.ratelimit.suppressed_total.get("alice", 0) == 0
    finally:
        pager.stop()


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CHAIRSIDE_PAGER_SECRET=SECRET, PYTHONPATH=str(REPO / "gateway"))
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip


def _pager_cmd(policy: Path, broker_port: int, state: Path, client_id: str) -> list[str]:
    """``chairside pager`` as a process of its own (restart tests kill it)."""
    return [
        sys.executable, "-m", "chairside.pager", "--policy", str(policy),
        "--broker-port", str(broker_port), "--state", str(state),
        "--client-id", client_id, "--ack-port", "0",
    ]  # fmt: skip


def _subscribed(log: Path, count: int) -> bool:
    """The pager log's SUBACK line appeared ``count`` times (once per start)."""
    return log.read_text().count("subscribed to alarms") >= count if log.exists() else False


def _reap(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


@pytest.mark.slow
def test_restart_after_kill_9_keeps_escalation_schedule(
    mosquitto: Mosquitto, rx: Receiver, watcher: Watcher, tmp_path: Path
) -> None:
    policy_path = tmp_path / "policy.json"
    policy_path.write_text(json.dumps(policy_doc(rx, free_port(), timeout_s=4)))
    log = tmp_path / "pager.log"
    cmd = _pager_cmd(policy_path, mosquitto.port, tmp_path / "state.json", "pager-restart")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(_spawn(cmd, log))
        wait_until(lambda: _subscribed(log, 1), 15, "first pager subscribed")  # logged on the SUBACK
        watcher.publish("chairside/v1/clinic1/chair3/alarms", alarm())
        (t_page, _), = wait_until(lambda: rx.events("trigger", "alice"), 10, "alice paged")

        time.sleep(1.0)  # an open, unacknowledged page; escalation due at t_page + 4 s
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=10)
        assert rx.events("trigger", "bob") == []

        procs.append(_spawn(cmd, log))
        wait_until(lambda: _subscribed(log, 2), 15, "restarted pager subscribed")
        t_up = time.time()
        assert "restored 1 page thread" in log.read_text()
        (t_bob, bob), = wait_until(lambda: rx.events("trigger", "bob"), 10, "bob paged")
        # the schedule survives: bob is paged at t_page + 4 s (the ack timeout),
        # or, when the restart on a loaded machine took longer than that, within
        # a tick (1 s) plus delivery of the restarted pager coming up
        assert t_bob - t_page >= 3.0, t_bob - t_page
        assert t_bob <= max(t_page + 4.0, t_up) + 3.0, (t_bob - t_page, t_up - t_page)
        assert bob["dedup_key"] == KEY and bob["payload"]["custom_details"]["level"] == 2
        assert len(rx.events("trigger", "alice")) == 1  # same thread, alice not re-paged
        state = json.loads((tmp_path / "state.json").read_text())
        assert state["threads"][KEY]["level"] == 2 and state["threads"][KEY]["paged"] == [
            "alice",
            "bob",
        ]
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(timeout=15) == 0
    finally:
        _reap(procs)
    assert not re.search(r"Traceback", log.read_text()), log.read_text()


@pytest.mark.slow
def test_restart_after_kill_9_mid_delivery_carries_the_page_out_again(
    mosquitto: Mosquitto, rx: Receiver, watcher: Watcher, tmp_path: Path
) -> None:
    """docs/paging.md, "Durability": an action interrupted mid-delivery is
    carried out again.  The paging tool receives alice's page but does not
    answer; the pager is killed while it waits for the answer; the restarted
    pager sends the page again (it may arrive twice, it is never lost)."""
    doc = policy_doc(rx, free_port(), timeout_s=60)  # no escalation during the test
    doc["webhook"] = {"timeout_s": 30}  # still waiting for the answer when it is killed
    policy_path = tmp_path / "policy.json"
    policy_path.write_text(json.dumps(doc))
    state_path = tmp_path / "state.json"
    log = tmp_path / "pager.log"
    cmd = _pager_cmd(policy_path, mosquitto.port, state_path, "pager-mid-delivery")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        rx.answering.clear()
        procs.append(_spawn(cmd, log))
        wait_until(lambda: _subscribed(log, 1), 15, "first pager subscribed")
        watcher.publish("chairside/v1/clinic1/chair3/alarms", alarm())
        wait_until(lambda: rx.events("trigger", "alice"), 10, "the page reached the tool (unanswered)")
        saved = json.loads(state_path.read_text())
        assert [(i["kind"], i["key"]) for i in saved["outbox"]] == [("page", KEY)]  # on disk, not yet done
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=10)
        rx.answering.set()

        procs.append(_spawn(cmd, log))
        wait_until(lambda: _subscribed(log, 2), 15, "restarted pager subscribed")
        again = wait_until(lambda: rx.events("trigger", "alice")[1:], 15, "the page carried out again")
        assert again[0][1]["dedup_key"] == KEY
        wait_until(lambda: json.loads(state_path.read_text())["outbox"] == [], 10, "the outbox emptied")
        assert len(rx.events("trigger", "alice")) == 2 and rx.events("trigger", "bob") == []
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(timeout=15) == 0
    finally:
        _reap(procs)
    assert not re.search(r"Traceback", log.read_text()), log.read_text()


def test_state_store_atomic_and_corrupt_file_kept(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s" / "state.json")
    assert store.load() == empty_state()
    data = empty_state() | {"seq": {KEY: 3}}
    store.save(data)
    assert store.load()["seq"] == {KEY: 3}
    assert [p.name for p in store.path.parent.iterdir()] == ["state.json"]  # no temp left
    store.path.write_text('{"v": 1, "threads": {')  # torn by hand
    assert store.load() == empty_state()
    assert any(p.name.startswith("state.json.corrupt-") for p in store.path.parent.iterdir())
