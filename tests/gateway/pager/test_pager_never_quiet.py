"""Issue 14 (pager side) and issue 15.3/15.4 (pager): paging never goes quiet
while an alarm is unresolved, and no message can stop the pager.

Real Mosquitto, the real pager (its own MQTT loop, tick thread and ack web
server), a real HTTP receiver for webhooks and a real aiosmtpd server that
answers 500 for the failure case.  Alarm events are written here, with the
``inhibits``/``inhibited_by`` fields the engine adds; accelerated time means
ack timeouts of 1.5-2 s instead of minutes.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from gw_support import wait_until
from test_pager_service import Receiver, Watcher, start_pager

from chairside.pager.policy import parse_policy
from chairside.pager.service import Pager
from chairside.sim.services import Mosquitto, free_port

pytestmark = pytest.mark.services

SITE, CHAIR = "clinic1", "chair3"
ALARMS = f"chairside/v1/{SITE}/{CHAIR}/alarms"
PAGES = f"chairside/v1/{SITE}/pages"
PAGE_ACK = f"chairside/v1/{SITE}/pages/ack"
_ids = iter(range(1, 1_000_000))


def event(alarm: str, kind: str = "raised", priority: str = "high", **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "v": 1, "id": f"{SITE}-{CHAIR}-{alarm}-{kind}-{next(_ids)}-{time.time_ns()}",
        "key": f"{SITE}/{CHAIR}/{alarm}", "site": SITE, "chair": CHAIR, "alarm": alarm,
        "priority": priority, "kind": "physiological", "event": kind,
        "t": int(time.time() * 1000), "text": f"{alarm} {kind} (chair 3)",
    }  # fmt: skip
    payload.update(extra)
    return payload


def doc(people: dict[str, Any], levels: list[str], ack_port: int, timeout_s: float = 2.0,
        **over: Any) -> dict[str, Any]:  # fmt: skip
    d: dict[str, Any] = {
        "timezone": "UTC",
        "people": people,
        "fallback": levels,
        "priorities": {
            "high": {"delay_s": 0, "ack_timeout_s": timeout_s},
            "medium": {"delay_s": 0, "ack_timeout_s": timeout_s},
            "low": {"page": False, "ack_timeout_s": 60},
        },
        "flap_window_s": 5,
        "max_rounds": 3,
        "retry": {"attempts": 2, "backoff_s": 0.05, "max_backoff_s": 0.1},
        "ack": {"base_url": f"http://127.0.0.1:{ack_port}", "port": ack_port},
    }
    d.update(over)
    return d


def webhook_people(rx: Receiver, *names: str) -> dict[str, Any]:
    return {n: {"channels": [{"type": "webhook", "url": rx.url(n), "routing_key": "k"}]}
            for n in names}  # fmt: skip


def pages_for(rx: Receiver, alarm: str, to: str | None = None) -> list[tuple[float, dict[str, Any]]]:
    return [(t, b) for t, b in rx.events("trigger", to) if b["dedup_key"] == f"{SITE}/{CHAIR}/{alarm}"]


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


@pytest.fixture
def pagers() -> Iterator[list[Pager]]:
    running: list[Pager] = []
    yield running
    for p in running:
        p.stop()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def ack_results(w: Watcher) -> list[dict[str, Any]]:
    return [p for p in w.on(PAGES) if p.get("type") == "ack_result"]


# ------------------------------------------------------------------ point 1


def test_raise_after_clear_after_ack_is_paged_again_and_escalates(
    mosquitto: Mosquitto, rx: Receiver, watcher: Watcher, tmp_path: Path, pagers: list[Pager]
) -> None:
    port = free_port()
    pager = start_pager(doc(webhook_people(rx, "alice", "bob"), ["alice", "bob"], port),
                        mosquitto, tmp_path / "state.json")  # fmt: skip
    pagers.append(pager)
    watcher.publish(ALARMS, event("spo2_critical"))
    wait_until(lambda: pages_for(rx, "spo2_critical", "alice"), 10, "alice paged")
    watcher.publish(PAGE_ACK, {"v": 1, "key": f"{SITE}/{CHAIR}/spo2_critical", "by": "alice"})
    wait_until(lambda: watcher.on(f"{ALARMS}/ack"), 5, "ack forwarded to the engine")
    watcher.publish(ALARMS, event("spo2_critical", "cleared"))
    time.sleep(0.5)  # well inside the 5 s flap window
    watcher.publish(ALARMS, event("spo2_critical"))
    # paged again (the level reached was 1: alice, who acknowledged) ...
    wait_until(lambda: len(pages_for(rx, "spo2_critical", "alice")) == 2, 5, "alice paged again")
    # ... and, not acknowledged, it escalates
    wait_until(lambda: pages_for(rx, "spo2_critical", "bob"), 5, "bob paged after the timeout")
    thread = pager.threads()[f"{SITE}/{CHAIR}/spo2_critical"]
    assert thread.n == 2 and thread.reopened_from == 1 and thread.state == "paged"


def test_unacknowledged_flapping_stays_one_thread(
    mosquitto: Mosquitto, rx: Receiver, watcher: Watcher, tmp_path: Path, pagers: list[Pager]
) -> None:
    port = free_port()
    pager = start_pager(doc(webhook_people(rx, "alice", "bob"), ["alice", "bob"], port, 10),
                        mosquitto, tmp_path / "state.json")  # fmt: skip
    pagers.append(pager)
    for _ in range(3):
        watcher.publish(ALARMS, event("spo2_low"))
        time.sleep(0.3)
        watcher.publish(ALARMS, event("spo2_low", "cleared"))
        time.sleep(0.3)
    watcher.publish(ALARMS, event("spo2_low"))
    wait_until(lambda: pager.threads().get(f"{SITE}/{CHAIR}/spo2_low"), 5, "thread")
    time.sleep(1.0)
    assert len(pages_for(rx, "spo2_low")) == 1
    assert pager.threads()[f"{SITE}/{CHAIR}/spo2_low"].flaps == 3


# ------------------------------------------------------------------ point 2


def test_renotify_is_paged_and_escalates_every_time(
    mosquitto: Mosquitto, rx: Receiver, watcher: Watcher, tmp_path: Path, pagers: list[Pager]
) -> None:
    port = free_port()
    people = webhook_people(rx, "alice", "bob", "carol")
    pager = start_pager(doc(people, ["alice", "bob", "carol"], port),
                        mosquitto, tmp_path / "state.json")  # fmt: skip
    pagers.append(pager)
    key = f"{SITE}/{CHAIR}/spo2_low"
    watcher.publish(ALARMS, event("spo2_low"))
    wait_until(lambda: pages_for(rx, "spo2_low", "alice"), 10, "alice paged")
    watcher.publish(PAGE_ACK, {"v": 1, "key": key, "by": "alice"})
    wait_until(lambda: pager.threads()[key].state == "acked", 5, "acknowledged")

    watcher.publish(ALARMS, event("spo2_low", "renotify", text="still active: SpO2 86 %"))
    wait_until(lambda: len(pages_for(rx, "spo2_low", "alice")) == 2, 5, "renotify paged")
    (_, bob), = wait_until(lambda: pages_for(rx, "spo2_low", "bob"), 5, "escalated to bob")
    assert bob["payload"]["custom_details"]["level"] == 2
    watcher.publish(PAGE_ACK, {"v": 1, "key": key, "by": "bob"})
    wait_until(lambda: pager.threads()[key].acked_by == "bob", 5, "bob acknowledged")

    watcher.publish(ALARMS, event("spo2_low", "renotify", text="still active: SpO2 86 %"))
    wait_until(lambda: len(pages_for(rx, "spo2_low", "bob")) == 2, 5, "second renotify paged")
    wait_until(lambda: pages_for(rx, "spo2_low", "carol"), 5, "escalated again")
    assert pager.threads()[key].n == 3
    assert len(watcher.on(f"{ALARMS}/ack")) == 2  # each ack went to the engine


# ------------------------------------------------------------------ point 3


class FailingSmtp:
    """A real SMTP server (aiosmtpd) answering ``status`` to every message.
    ``tried`` keeps the pages for the patient alarm under test (the pager
    also pages its own technical alarms through the same server)."""

    def __init__(self) -> None:
        self.status = "500 mailbox unavailable"
        self.tried: list[tuple[float, list[str]]] = []
        self.delivered: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = message_from_bytes(envelope.content)
        if mail["X-Chairside-Key"] == f"{SITE}/{CHAIR}/spo2_critical":
            self.tried.append((time.time(), list(envelope.rcpt_tos)))
        if self.status.startswith("250"):
            self.delivered.append(list(envelope.rcpt_tos))
        return self.status


@pytest.fixture
def smtp500() -> Iterator[tuple[FailingSmtp, int]]:
    handler = FailingSmtp()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


def tech(w: Watcher, alarm: str, kind: str) -> list[dict[str, Any]]:
    return [p for p in w.on(f"chairside/v1/{SITE}/pager/alarms")
            if p["alarm"] == alarm and p["event"] == kind]  # fmt: skip


@pytest.mark.slow
def test_delivery_failure_keeps_paging_and_raises_technical_alarms(
    mosquitto: Mosquitto, smtp500: tuple[FailingSmtp, int], watcher: Watcher, tmp_path: Path,
    pagers: list[Pager],
) -> None:  # fmt: skip
    smtp, smtp_port = smtp500
    port = free_port()
    people = {
        "alice": {"channels": [{"type": "email", "to": "alice@clinic.example"},
                               {"type": "sms", "to": "447700900001@sms.example.net"}]},
        "bob": {"channels": [{"type": "email", "to": "bob@clinic.example"}]},
    }  # fmt: skip
    policy = doc(people, ["alice", "bob"], port, timeout_s=1.5, max_rounds=2,
                 smtp={"host": "127.0.0.1", "port": smtp_port, "timeout_s": 5})  # fmt: skip
    pager = start_pager(policy, mosquitto, tmp_path / "state.json")
    pagers.append(pager)
    key = f"{SITE}/{CHAIR}/spo2_critical"
    t0 = time.time()
    watcher.publish(ALARMS, event("spo2_critical"))

    # retries with backoff, and alice's other channel, before level 2 is tried at once
    wait_until(lambda: any("bob@clinic.example" in r for _, r in smtp.tried), 5, "bob tried")
    alice_first = [t for t, r in smtp.tried if r == ["alice@clinic.example"]]
    assert len(alice_first) == 2  # email attempted twice (retry with backoff)
    assert any(r == ["447700900001@sms.example.net"] for _, r in smtp.tried)  # then the SMS
    raised = wait_until(lambda: tech(watcher, "pager_undeliverable", "raised"), 5, "tech alarm")
    assert raised[0]["kind"] == "technical" and raised[0]["priority"] == "high"
    assert "alice" in raised[0]["text"] and "500" in raised[0]["text"]

    # the rota starts over only after the last level's ack timeout: no 4-s run-through
    def alice_rounds() -> list[float]:
        times = sorted(t for t, r in smtp.tried if r == ["alice@clinic.example"])
        starts = [times[0]]
        for t in times[1:]:
            if t - starts[-1] > 1.0:
                starts.append(t)
        return starts

    rounds = wait_until(lambda: alice_rounds() if len(alice_rounds()) >= 2 else None, 8,
                        "round 2")  # fmt: skip
    assert rounds[1] - rounds[0] >= 1.4, rounds
    # after max_rounds: exhausted is reported, but a high alarm is never abandoned
    wait_until(lambda: tech(watcher, "pager_exhausted", "raised"), 10, "exhausted alarm")
    exhausted_at = time.time()
    assert exhausted_at - t0 >= 2.5  # two rounds took their ack timeouts
    bob_before = len([1 for _, r in smtp.tried if r == ["bob@clinic.example"]])
    wait_until(lambda: len([1 for _, r in smtp.tried if r == ["bob@clinic.example"]])
               >= bob_before + 4, 8, "last level paged again and again")  # fmt: skip
    thread = pager.threads()[key]
    assert thread.state == "paged" and thread.exhausted_at is not None
    assert thread.next_at is not None
    records = [p for p in watcher.on(PAGES)
               if p.get("type") == "record" and p["key"] == key and p["action"] == "exhausted"]  # fmt: skip
    assert len(records) == 1 and "could not be delivered" in records[0]["reason"]
    assert "within the timeout" not in records[0]["reason"]

    _status, metrics = get(f"http://127.0.0.1:{pager.ack_port}/metrics")
    lines = metrics.splitlines()
    assert 'chairside_pager_technical_alarm{alarm="pager_undeliverable"} 1.0' in lines
    assert 'chairside_pager_technical_alarm{alarm="pager_exhausted"} 1.0' in lines
    assert "chairside_pager_unreachable_people 2.0" in lines
    assert any(x.startswith("chairside_pager_threads_exhausted_total ") for x in lines)
    assert pager.metrics.get("threads_exhausted") >= 1

    # mail works again; an acknowledgement ends the exhausted state, notices reach everyone
    smtp.status = "250 OK"
    watcher.publish(PAGE_ACK, {"v": 1, "key": key, "by": "alice"})
    wait_until(lambda: tech(watcher, "pager_exhausted", "cleared"), 10, "exhausted cleared")
    wait_until(lambda: tech(watcher, "pager_undeliverable", "cleared"), 10, "undeliverable cleared")
    assert pager.metrics.get("technical_alarm", alarm="pager_exhausted") == 0
    assert pager.metrics.get("unreachable_people") == 0


# ------------------------------------------------------------------ point 4


def test_inhibited_alarms_join_the_inhibitors_thread(
    mosquitto: Mosquitto, rx: Receiver, watcher: Watcher, tmp_path: Path, pagers: list[Pager]
) -> None:
    port = free_port()
    people = webhook_people(rx, "alice", "bob", "carol")
    pager = start_pager(doc(people, ["alice", "bob", "carol"], port),
                        mosquitto, tmp_path / "state.json")  # fmt: skip
    pagers.append(pager)
    watcher.publish(ALARMS, event("sys_high", priority="medium"))
    wait_until(lambda: pages_for(rx, "sys_high", "alice"), 10, "sys_high paged")
    wait_until(lambda: pages_for(rx, "sys_high", "bob"), 5, "sys_high escalated to bob")

    # the engine raises the inhibitor: one episode, one escalation chain
    watcher.publish(ALARMS, event("bp_intervention", inhibits=["dia_high", "sys_high"]))
    (_, first), = wait_until(lambda: pages_for(rx, "bp_intervention"), 5, "bp paged")
    assert first["payload"]["custom_details"]["to"] == "bob"  # the level sys_high had reached
    assert first["payload"]["custom_details"]["level"] == 2
    watcher.publish(ALARMS, event("dia_high", inhibited_by="bp_intervention"))
    wait_until(lambda: pages_for(rx, "bp_intervention", "carol"), 5, "bp escalated to carol")
    time.sleep(0.5)
    assert len(pages_for(rx, "sys_high")) == 2  # no more pages for the inhibited alarm
    assert pages_for(rx, "dia_high") == []
    assert pager.threads()[f"{SITE}/{CHAIR}/sys_high"].state == "merged"
    merges = [p for p in watcher.on(PAGES) if p.get("type") == "record" and p["action"] == "merge"]
    assert [m["alarm"] for m in merges] == ["sys_high"]

    # one ack for the episode, forwarded for the inhibitor (the engine acks what it inhibits)
    watcher.publish(PAGE_ACK, {"v": 1, "key": f"{SITE}/{CHAIR}/sys_high", "by": "carol"})
    wait_until(lambda: watcher.on(f"{ALARMS}/ack"), 5, "forwarded")
    assert watcher.on(f"{ALARMS}/ack") == [{"v": 1, "alarm": "bp_intervention", "by": "carol"}]
    # the thread resolves only when every alarm of the episode has cleared
    watcher.publish(ALARMS, event("bp_intervention", "cleared"))
    watcher.publish(ALARMS, event("dia_high", "cleared", inhibited_by="bp_intervention"))
    time.sleep(6)
    thread = pager.threads()[f"{SITE}/{CHAIR}/bp_intervention"]
    assert thread.state == "acked" and thread.active_alarms == ("sys_high",)
    assert rx.events("resolve") == []
    watcher.publish(ALARMS, event("sys_high", "cleared", priority="medium"))
    wait_until(lambda: rx.events("resolve"), 10, "RESOLVED after the last alarm cleared")


def test_events_without_inhibit_fields_page_as_before(
    mosquitto: Mosquitto, rx: Receiver, watcher: Watcher, tmp_path: Path, pagers: list[Pager]
) -> None:
    port = free_port()
    pager = start_pager(doc(webhook_people(rx, "alice", "bob"), ["alice", "bob"], port),
                        mosquitto, tmp_path / "state.json")  # fmt: skip
    pagers.append(pager)
    watcher.publish(ALARMS, event("pulse_high", priority="medium"))
    watcher.publish(ALARMS, event("afib_rvr_suspected", priority="medium"))
    wait_until(lambda: pages_for(rx, "pulse_high") and pages_for(rx, "afib_rvr_suspected"), 10,
               "both paged (an older gateway says nothing about inhibits)")  # fmt: skip
    assert pager.metrics.total("rejected") == 0


# ------------------------------------------------------------------ point 5


def test_blank_by_refused_and_unmatched_acks_answered_and_counted(
    mosquitto: Mosquitto, rx: Receiver, watcher: Watcher, tmp_path: Path, pagers: list[Pager]
) -> None:
    port = free_port()
    pager = start_pager(doc(webhook_people(rx, "alice", "bob"), ["alice", "bob"], port, 3),
                        mosquitto, tmp_path / "state.json")  # fmt: skip
    pagers.append(pager)
    key = f"{SITE}/{CHAIR}/spo2_low"
    watcher.publish(ALARMS, event("spo2_low"))
    wait_until(lambda: pages_for(rx, "spo2_low", "alice"), 10, "alice paged")
    for by in ("", "   ", "\t\n"):
        watcher.publish(PAGE_ACK, {"v": 1, "key": key, "by": by})
    watcher.publish(PAGE_ACK, {"v": 1, "key": f"{SITE}/chair9/spo2_low", "by": "alice"})
    answers = wait_until(lambda: ack_results(watcher) if len(ack_results(watcher)) >= 4 else None,
                         5, "every ack answered")  # fmt: skip
    assert [a["ok"] for a in answers] == [False, False, False, False]
    assert all("blank by" in a["reason"] for a in answers[:3])
    assert "no page thread" in answers[3]["reason"]
    assert pager.threads()[key].state == "paged"  # not acknowledged: paging goes on
    assert watcher.on(f"{ALARMS}/ack") == []  # nothing the engine would refuse
    wait_until(lambda: pages_for(rx, "spo2_low", "bob"), 5, "escalation continued")
    assert pager.metrics.get("page_acks", result="refused") == 3
    assert pager.metrics.get("page_acks", result="unmatched") == 1
    _, metrics = get(f"http://127.0.0.1:{pager.ack_port}/metrics")
    assert 'chairside_pager_page_acks_total{result="unmatched"} 1.0' in metrics.splitlines()


# ------------------------------------------------------- issue 15.3 / 15.4


def test_poison_messages_are_refused_and_the_pager_stays_alive(
    mosquitto: Mosquitto, rx: Receiver, watcher: Watcher, tmp_path: Path, pagers: list[Pager]
) -> None:
    port = free_port()
    pager = start_pager(doc(webhook_people(rx, "alice"), ["alice"], port),
                        mosquitto, tmp_path / "state.json")  # fmt: skip
    pagers.append(pager)
    raw = watcher.client
    for topic in (PAGE_ACK, ALARMS):
        raw.publish(topic, b"[" * 1100, qos=1).wait_for_publish(5)
        raw.publish(topic, b'{"v": 1e400}', qos=1).wait_for_publish(5)
        raw.publish(topic, b"\xff\xfe", qos=1).wait_for_publish(5)
        raw.publish(topic, b'{"v": 1, "x": ' + b"9" * 5000 + b"}", qos=1).wait_for_publish(5)
    raw.publish(PAGE_ACK, json.dumps({"v": 1, "key": f"{SITE}/{CHAIR}/x", "by": "al",
                                      "thread": 1e300}), qos=1).wait_for_publish(5)  # fmt: skip
    watcher.publish(ALARMS, event("spo2_low", t=10**30))
    watcher.publish(ALARMS, event("spo2_low", by="\ud800"))  # a lone surrogate: by dropped
    watcher.publish(ALARMS, event("spo2_critical"))
    wait_until(lambda: pages_for(rx, "spo2_critical", "alice"), 10, "still paging after poison")
    assert pager.metrics.get("rejected", reason="JSON nested too deeply") == 2
    assert pager.metrics.get("rejected", reason="number out of range") == 2
    assert pager.metrics.get("rejected", reason="not UTF-8") == 2
    assert pager.metrics.get("rejected", reason="not JSON") == 2
    assert pager.metrics.get("rejected", reason="bad thread") == 1
    assert pager.metrics.get("rejected", reason="bad field t") == 1
    answers = wait_until(lambda: ack_results(watcher) if len(ack_results(watcher)) >= 5 else None,
                         5, "refused acks answered")  # fmt: skip
    assert all(not a["ok"] and a["reason"].startswith("refused") for a in answers)
    assert get(f"http://127.0.0.1:{pager.ack_port}/healthz")[0] == 200


def test_healthz_reports_a_dead_network_loop(
    mosquitto: Mosquitto, rx: Receiver, tmp_path: Path, pagers: list[Pager]
) -> None:
    port = free_port()
    pager = start_pager(doc(webhook_people(rx, "alice"), ["alice"], port),
                        mosquitto, tmp_path / "state.json")  # fmt: skip
    pagers.append(pager)
    assert get(f"http://127.0.0.1:{pager.ack_port}/healthz")[0] == 200
    pager.client.disconnect()  # ends the network loop while the pager keeps running
    _status, body = wait_until(
        lambda: (s := get(f"http://127.0.0.1:{pager.ack_port}/healthz"))[0] == 503 and s, 5,
        "healthz 503",
    )
    assert "MQTT network loop not running" in body


def test_routing_of_inhibited_events_without_a_broker(tmp_path: Path) -> None:
    """The service's routing on an injected clock (no network: nothing is drained)."""
    rx_url = "http://127.0.0.1:9/unused"
    people = {n: {"channels": [{"type": "webhook", "url": rx_url, "routing_key": "k"}]}
              for n in ("alice", "bob")}  # fmt: skip
    now = [1_717_408_800.0]
    pager = Pager(parse_policy(doc(people, ["alice", "bob"], free_port())), secret=b"x" * 20,
                  state_path=tmp_path / "s.json", clock=lambda: now[0])  # fmt: skip
    pager.handle_alarm(ALARMS, event("pulse_high"), now[0])
    # an older gateway: the inhibitor says nothing about inhibits -> two threads
    pager.handle_alarm(ALARMS, event("afib_rvr_suspected"), now[0])
    # the clear of pulse_high names its inhibitor, but pulse_high has its own open thread
    pager.handle_alarm(ALARMS, event("pulse_high", "cleared", inhibited_by="afib_rvr_suspected"),
                       now[0])  # fmt: skip
    threads = pager.threads()
    assert threads[f"{SITE}/{CHAIR}/pulse_high"].cleared_at == now[0]
    assert threads[f"{SITE}/{CHAIR}/afib_rvr_suspected"].active_alarms == ("afib_rvr_suspected",)
    # a raise that names an inhibitor with an open thread joins it: no page of its own
    pending = len(pager.pending())
    pager.handle_alarm(ALARMS, event("pulse_high", inhibited_by="afib_rvr_suspected"), now[0])
    threads = pager.threads()
    assert "pulse_high" in threads[f"{SITE}/{CHAIR}/afib_rvr_suspected"].active_alarms
    assert threads[f"{SITE}/{CHAIR}/pulse_high"].state == "merged"
    assert [i["kind"] for i in pager.pending()[pending:]] == ["merge"]
    # an ack for the merged alarm's key acknowledges the episode
    ok, why = pager.handle_page_ack(SITE, {"v": 1, "key": f"{SITE}/{CHAIR}/pulse_high",
                                           "by": "bob"}, now[0])  # fmt: skip
    assert ok, why
    assert pager.threads()[f"{SITE}/{CHAIR}/afib_rvr_suspected"].acked_by == "bob"
    forward = [i for i in pager.pending() if i["kind"] == "forward_ack"]
    assert forward[0]["alarms"] == ["afib_rvr_suspected"]
    # an unknown inhibitor falls back to the alarm's own thread (today's behaviour)
    pager.handle_alarm(ALARMS, event("spo2_low", inhibited_by="spo2_critical"), now[0])
    assert pager.threads()[f"{SITE}/{CHAIR}/spo2_low"].state == "paged"
