"""Delivery channels: SMTP (email and email-to-SMS), a PagerDuty Events API
v2 shaped JSON webhook, and the MQTT pages topic.

Each sender has one method, ``send(spec, message)``, that either returns or
raises :class:`DeliveryError`; every network wait has a timeout.
:func:`deliver` is the retry stage: it tries a person's channels in order,
each up to ``retry.attempts`` times with exponential backoff, stops at the
first success and records every attempt.
"""

from __future__ import annotations

import json
import smtplib
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Literal, Protocol

from .policy import ChannelSpec, Person, RetryRule, SmtpConfig

MessageAction = Literal["trigger", "acknowledge", "resolve", "summary"]
SMS_MAX = 160
SMS_TWO_PARTS = 306
SMS_MIN_HEAD = 60
PD_SEVERITY: dict[str, str] = {"high": "critical", "medium": "error", "low": "warning"}


class DeliveryError(RuntimeError):
    """A channel could not deliver; the message says why."""


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Message:
    """Everything a channel needs to render one page, ack notice, resolve
    notice or rate-limit summary."""

    action: MessageAction
    key: str
    n: int
    site: str
    chair: str
    alarm: str
    priority: str
    text: str
    t: float
    drill: bool = False
    level: int = 0
    round: int = 0
    to: str = ""
    ack_url: str | None = None
    by: str | None = None

    @property
    def prefix(self) -> str:
        return "DRILL " if self.drill else ""

    @property
    def subject(self) -> str:
        where = f"{self.site}/{self.chair}"
        if self.action == "trigger":
            return f"{self.prefix}{self.priority.upper()} {where}: {self.text}"
        if self.action == "acknowledge":
            return f"{self.prefix}ACKED by {self.by}: {where}: {self.text}"
        if self.action == "resolve":
            return f"{self.prefix}RESOLVED {where}: {self.text}"
        return f"{self.prefix}PAGES HELD: {self.text}"

    @property
    def body(self) -> str:
        lines: list[str] = []
        if self.drill:
            lines += ["DRILL - this is a rehearsal, not a patient emergency.", ""]
        lines.append(self.subject)
        lines.append("")
        if self.action == "summary":
            lines.append("Pages to you were held back by the rate limit (see docs/paging.md).")
            lines.append("Check the Chairside dashboard for the alarms listed above.")
        else:
            lines += [
                f"Alarm:     {self.text}",
                f"Priority:  {self.priority}",
                f"Site:      {self.site}",
                f"Chair:     {self.chair}",
                f"Condition: {self.alarm}",
                f"Time:      {iso(self.t)}",
            ]
            if self.action == "trigger":
                lines.append(f"Level:     {self.level} (round {self.round})")
            if self.by:
                lines.append(f"Acknowledged by: {self.by}")
        if self.ack_url and self.action == "trigger":
            lines += ["", "Acknowledge (you will own this alarm):", self.ack_url]
            lines += [
                "",
                f'Or publish {{"v":1,"key":"{self.key}","by":"<your id>"}}',
                f"on chairside/v1/{self.site}/pages/ack",
            ]
        lines += ["", f"Reference: {self.key} #{self.n}"]
        return "\n".join(lines) + "\n"

    @property
    def short(self) -> str:
        """SMS text: the subject cut to fit one 160-character SMS with the ack
        link whole; with a long link it keeps at least ``SMS_MIN_HEAD``
        characters of subject and becomes a two-part SMS (<= 306)."""
        tail = f" Ack: {self.ack_url}" if self.ack_url and self.action == "trigger" else ""
        room = max(SMS_MAX - len(tail), SMS_MIN_HEAD)
        head = self.subject
        if len(head) > room:
            head = head[: room - 1] + "~"
        return (head + tail)[:SMS_TWO_PARTS]


class Sender(Protocol):
    def send(self, spec: ChannelSpec, message: Message) -> None: ...


class SmtpSender:
    """Email and email-to-SMS gateways through one SMTP relay."""

    def __init__(self, cfg: SmtpConfig, password: str = "") -> None:
        self.cfg = cfg
        self.password = password

    def build(self, spec: ChannelSpec, message: Message) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.cfg.sender
        mail["To"] = spec.to
        mail["X-Chairside-Key"] = message.key
        if spec.type == "sms":
            mail.set_content(message.short)
        else:
            mail["Subject"] = message.subject
            mail.set_content(message.body)
        return mail

    def send(self, spec: ChannelSpec, message: Message) -> None:
        mail = self.build(spec, message)
        try:
            with smtplib.SMTP(self.cfg.host, self.cfg.port, timeout=self.cfg.timeout_s) as smtp:
                if self.cfg.starttls:
                    smtp.starttls()
                if self.cfg.username:
                    smtp.login(self.cfg.username, self.password)
                refused = smtp.send_message(mail)
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"smtp {self.cfg.host}:{self.cfg.port}: {exc}") from exc
        if refused:
            raise DeliveryError(f"smtp refused {sorted(refused)}")


def pagerduty_event(message: Message, routing_key: str) -> dict[str, Any]:
    """The PagerDuty Events API v2 body for ``message``."""
    action = "trigger" if message.action in ("trigger", "summary") else message.action
    dedup = message.key if message.action != "summary" else f"rate-limit/{message.to}"
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": dedup,
    }
    if action != "trigger":
        return event
    event["payload"] = {
        "summary": message.subject[:1024],
        "source": f"chairside/{message.site}/{message.chair}",
        "severity": "info" if message.action == "summary" else PD_SEVERITY[message.priority],
        "timestamp": iso(message.t),
        "component": message.chair,
        "group": message.site,
        "class": message.alarm,
        "custom_details": {
            "text": message.text,
            "priority": message.priority,
            "drill": message.drill,
            "level": message.level,
            "round": message.round,
            "to": message.to,
            "thread": message.n,
        },
    }
    event["client"] = "Chairside pager"
    if message.ack_url:
        event["client_url"] = message.ack_url
        event["links"] = [{"href": message.ack_url, "text": "Acknowledge"}]
    return event


class WebhookSender:
    """POST a PagerDuty-v2-shaped JSON event; any 2xx answer is success."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def send(self, spec: ChannelSpec, message: Message) -> None:
        body = json.dumps(pagerduty_event(message, spec.routing_key)).encode("utf-8")
        req = urllib.request.Request(
            spec.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                status = int(resp.status)
        except urllib.error.HTTPError as exc:
            raise DeliveryError(f"webhook {spec.url}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise DeliveryError(f"webhook {spec.url}: {exc}") from exc
        if not 200 <= status < 300:
            raise DeliveryError(f"webhook {spec.url}: HTTP {status}")


def page_payload(message: Message) -> dict[str, Any]:
    """What an in-house pager app receives on chairside/v1/{site}/pages."""
    return {
        "v": 1,
        "type": message.action if message.action != "trigger" else "page",
        "to": message.to,
        "key": message.key,
        "thread": message.n,
        "site": message.site,
        "chair": message.chair,
        "alarm": message.alarm,
        "priority": message.priority,
        "drill": 1 if message.drill else 0,
        "level": message.level,
        "text": message.subject,
        "ack_url": message.ack_url,
        "by": message.by,
        "t": int(message.t * 1000),
    }


class MqttPageSender:
    """Publish to the site's pages topic; ``publish(topic, payload)`` raises
    :class:`DeliveryError` when the broker did not take the message."""

    def __init__(self, publish: Callable[[str, dict[str, Any]], None]) -> None:
        self.publish = publish

    def send(self, spec: ChannelSpec, message: Message) -> None:
        self.publish(f"chairside/v1/{message.site}/pages", page_payload(message))


@dataclass(frozen=True, slots=True)
class Attempt:
    t: float
    person: str
    channel: str
    target: str
    attempt: int
    ok: bool
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Delivery:
    ok: bool
    channel: str | None
    attempts: tuple[Attempt, ...]


def deliver(
    message: Message,
    person: Person,
    senders: Mapping[str, Sender],
    retry: RetryRule,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], object],
    should_stop: Callable[[], bool] = lambda: False,
) -> Delivery:
    """Try ``person``'s channels in order; retry each with backoff; the
    first success ends it.  Every attempt is in the result."""
    attempts: list[Attempt] = []
    for spec in person.channels:
        sender = senders.get(spec.type)
        for n in range(1, retry.attempts + 1):
            if should_stop():
                return Delivery(False, None, tuple(attempts))
            if sender is None:
                attempts.append(
                    Attempt(clock(), person.id, spec.type, spec.target, n, False, "not configured")
                )
                break
            try:
                sender.send(spec, message)
            except DeliveryError as exc:
                attempts.append(
                    Attempt(clock(), person.id, spec.type, spec.target, n, False, str(exc))
                )
                if n < retry.attempts:
                    sleep(retry.backoff(n))
                continue
            attempts.append(Attempt(clock(), person.id, spec.type, spec.target, n, True))
            return Delivery(True, spec.type, tuple(attempts))
    return Delivery(False, None, tuple(attempts))
