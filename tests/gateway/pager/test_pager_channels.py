"""Channels against real servers: aiosmtpd SMTP and a local HTTP receiver."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message as EmailMsg
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from chairside.pager.channels import (
    SMS_MAX,
    SMS_TWO_PARTS,
    DeliveryError,
    Message,
    MqttPageSender,
    Sender,
    SmtpSender,
    WebhookSender,
    deliver,
    pagerduty_event,
)
from chairside.pager.policy import ChannelSpec, Person, RetryRule, SmtpConfig
from chairside.pager.tokens import TokenError, make_token, verify_token
from chairside.sim.services import free_port

SECRET = b"0123456789abcdef-test-secret"
T0 = 1_717_408_800.0


class SmtpSink:
    """Collects every message the real aiosmtpd server accepts."""

    def __init__(self) -> None:
        self.messages: list[EmailMsg] = []
        self.rcpts: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        self.rcpts.append(list(envelope.rcpt_tos))
        return "250 OK"


class Receiver:
    """A real local HTTP server that stores JSON bodies; ``status`` is what it answers."""

    def __init__(self, status: int = 202) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                outer.bodies.append(json.loads(data))
                self.send_response(outer.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v2/enqueue"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpSink, int]]:
    sink = SmtpSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, port
    controller.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def msg(action: str = "trigger", drill: bool = False, **over: Any) -> Message:
    fields: dict[str, Any] = {
        "action": action, "key": "clinic1/chair3/spo2_low", "n": 1, "site": "clinic1",
        "chair": "chair3", "alarm": "spo2_low", "priority": "high",
        "text": "SpO2 84 % < 85 % (chair 3)", "t": T0, "drill": drill, "level": 1, "round": 1,
        "to": "alice",
        "ack_url": "http://pager.lan:8088/ack?token=" + make_token(
            SECRET, "clinic1/chair3/spo2_low", 1, "alice", int(T0 + 3600)),
    }  # fmt: skip
    fields.update(over)
    return Message(**fields)


def text_of(mail: EmailMsg) -> str:
    payload = mail.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def test_email_page_has_drill_first_and_ack_link(smtp: tuple[SmtpSink, int]) -> None:
    sink, port = smtp
    sender = SmtpSender(SmtpConfig(host="127.0.0.1", port=port, sender="pager@clinic.example"))
    page = msg(drill=True)
    sender.send(ChannelSpec(type="email", to="alice@clinic.example"), page)
    sender.send(ChannelSpec(type="sms", to="447700900001@sms.example.net"), page)
    sender.send(ChannelSpec(type="email", to="alice@clinic.example"), msg())
    email, sms, real = sink.messages
    assert email["Subject"].split()[0] == "DRILL"
    assert email["Subject"] == "DRILL HIGH clinic1/chair3: SpO2 84 % < 85 % (chair 3)"
    body = text_of(email)
    assert body.split()[0] == "DRILL"
    assert page.ack_url is not None and page.ack_url in body
    assert "chairside/v1/clinic1/pages/ack" in body
    assert sink.rcpts[1] == ["447700900001@sms.example.net"]
    sms_text = text_of(sms).strip()
    assert sms_text.startswith("DRILL HIGH") and len(sms_text) <= SMS_TWO_PARTS
    assert sms_text.endswith(page.ack_url)
    short = msg(ack_url="http://p.lan/ack?token=abc", text="x" * 200).short
    assert len(short) == SMS_MAX and short.endswith(" Ack: http://p.lan/ack?token=abc")
    assert real["Subject"].startswith("HIGH clinic1/chair3")
    assert real["X-Chairside-Key"] == "clinic1/chair3/spo2_low"


def test_webhook_is_pagerduty_v2_shaped(receiver: Receiver) -> None:
    sender = WebhookSender(timeout_s=2)
    spec = ChannelSpec(type="webhook", url=receiver.url, routing_key="R" * 32)
    for action in ("trigger", "acknowledge", "resolve"):
        sender.send(spec, msg(action, by="alice" if action == "acknowledge" else None))
    trigger, ack, resolve = receiver.bodies
    assert trigger["routing_key"] == "R" * 32
    assert trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == ack["dedup_key"] == resolve["dedup_key"]
    assert trigger["dedup_key"] == "clinic1/chair3/spo2_low"
    payload = trigger["payload"]
    assert payload["severity"] == "critical"
    assert payload["source"] == "chairside/clinic1/chair3"
    assert payload["summary"].startswith("HIGH clinic1/chair3")
    assert payload["timestamp"] == "2024-06-03T10:00:00.000Z"
    assert payload["custom_details"]["level"] == 1
    assert trigger["links"][0]["href"].startswith("http://pager.lan:8088/ack?token=")
    assert ack == {"routing_key": "R" * 32, "event_action": "acknowledge",
                   "dedup_key": "clinic1/chair3/spo2_low"}  # fmt: skip
    assert resolve["event_action"] == "resolve" and "payload" not in resolve
    drill = pagerduty_event(msg(drill=True), "k")
    assert drill["payload"]["summary"].split()[0] == "DRILL"


def test_webhook_error_status_raises(receiver: Receiver) -> None:
    receiver.status = 500
    with pytest.raises(DeliveryError, match="HTTP 500"):
        WebhookSender(2).send(ChannelSpec(type="webhook", url=receiver.url), msg())
    with pytest.raises(DeliveryError):
        WebhookSender(2).send(
            ChannelSpec(type="webhook", url=f"http://127.0.0.1:{free_port()}/x"), msg()
        )


def test_smtp_down_falls_back_to_next_channel_and_records_failures(receiver: Receiver) -> None:
    dead = free_port()  # nothing listens here: SMTP is down
    senders: dict[str, Sender] = {
        "email": SmtpSender(SmtpConfig(host="127.0.0.1", port=dead, timeout_s=2)),
        "webhook": WebhookSender(2),
    }
    person = Person(
        id="alice",
        name="Alice",
        channels=(
            ChannelSpec(type="email", to="alice@clinic.example"),
            ChannelSpec(type="webhook", url=receiver.url, routing_key="k"),
        ),
    )
    sleeps: list[float] = []
    result = deliver(
        msg(), person, senders, RetryRule(attempts=3, backoff_s=0.01, factor=2),
        clock=time.time, sleep=sleeps.append,
    )  # fmt: skip
    assert result.ok and result.channel == "webhook"
    assert [(a.channel, a.attempt, a.ok) for a in result.attempts] == [
        ("email", 1, False),
        ("email", 2, False),
        ("email", 3, False),
        ("webhook", 1, True),
    ]
    assert all(f"127.0.0.1:{dead}" in a.error for a in result.attempts[:3])
    assert sleeps == [0.01, 0.02]  # backoff between retries, none after the last
    assert len(receiver.bodies) == 1


def test_every_channel_failing_is_reported() -> None:
    published: list[tuple[str, dict[str, Any]]] = []

    def broken(topic: str, payload: dict[str, Any]) -> None:
        published.append((topic, payload))
        raise DeliveryError("broker gone")

    person = Person(id="bob", name="Bob", channels=(ChannelSpec(type="mqtt"),
                                                    ChannelSpec(type="sms", to="1@sms.x.y")))  # fmt: skip
    result = deliver(
        msg(), person, {"mqtt": MqttPageSender(broken)}, RetryRule(attempts=2, backoff_s=0),
        clock=time.time, sleep=lambda s: None,
    )  # fmt: skip
    assert not result.ok
    assert [(a.channel, a.error) for a in result.attempts] == [
        ("mqtt", "broker gone"),
        ("mqtt", "broker gone"),
        ("sms", "not configured"),
    ]
    assert published[0][0] == "chairside/v1/clinic1/pages"
    assert published[0][1]["type"] == "page" and published[0][1]["to"] == "alice"


TOKEN_CASES = [
    ("valid", lambda t: t, T0, None),
    ("expired", lambda t: t, T0 + 3600, "token expired"),
    ("tampered payload", lambda t: "x" + t, T0, "bad signature"),
    ("tampered signature", lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"), T0,
     "bad signature"),
    ("not a token", lambda t: "hello", T0, "malformed token"),
    ("empty", lambda t: "", T0, "malformed token"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "mangle", "now", "error"), TOKEN_CASES, ids=[c[0] for c in TOKEN_CASES])
def test_ack_tokens(name: str, mangle: Any, now: float, error: str | None) -> None:
    token = make_token(SECRET, "clinic1/chair3/spo2_low", 4, "alice", int(T0 + 3600))
    if error is None:
        claim = verify_token(SECRET, mangle(token), now)
        assert (claim.key, claim.n, claim.person) == ("clinic1/chair3/spo2_low", 4, "alice")
        with pytest.raises(TokenError, match="bad signature"):
            verify_token(b"another-secret-of-16+bytes", token, now)
    else:
        with pytest.raises(TokenError, match=error):
            verify_token(SECRET, mangle(token), now)
