"""Fuzz the running services (issue 15): mutated payloads on every topic the
gateway and the pager subscribe to, while good chairs keep publishing.

Run from the repository root with the project's Python::

    python benchmarks/fuzz_services.py                       # 2,000 messages, seed 1
    python benchmarks/fuzz_services.py --examples 20000 --seed 7

Everything is real and on loopback: a private Mosquitto and InfluxDB 1.x
(``chairside.sim.services``), the gateway (``chairside.service.Gateway``,
adult profile, ``/health`` and ``/metrics`` on a free port) and the pager
(``chairside.pager.service.Pager``, ``/healthz`` on its ack port), both in
this process.  Hypothesis draws each message: a valid contract payload (box
payloads from the firmware's encoders, ``firmware/csfw/contract.py``; staff,
alarm-event and page-ack payloads as contract.json and docs/paging.md define
them) with one mutation: byte flips, truncation, lone surrogates
(``"\\ud800"``), control characters, deep nesting (up to 1,100 ``[``), huge
numbers (``1e400``, 400-digit integers), NaN/Infinity, wrong types, unknown
keys, oversized payloads, invalid UTF-8, dropped fields, random bytes,
invalid ids in the topic (``G2``, ``Chair 3``, emoji), ids with a trailing
newline, staff messages with a blank ``by``, limit changes of every settable
parameter to any finite value, page acks with forged or garbled tokens
(non-ASCII signatures included), and duplicates (an accepted
``(boot, seq)`` again with other content; an alarm event id again).  A share
is left valid.

Checked at the end (each failure is printed; the exit status is 1 if any):

* both services answered ``/health`` / ``/healthz`` with 200 throughout
  (polled every 0.25 s) and at the end; their threads are alive;
* every good chair's ``(boot, seq)`` is in InfluxDB exactly once;
* the gateway's ``rejected`` counter grew by exactly the box messages its own
  validator (``chairside.ingest.validate.validate``) refuses, reason by
  reason, and the ``rejects`` measurement holds the same total; every staff
  message is answered on ``staff/result``, every refusal (``ok`` 0, with a
  reason) is counted in ``control_rejected``, which is at least the staff
  messages the gateway's staff parser (``chairside.alarms.adapter``) or its id
  rule refuses; the pager counts every message on its topics exactly once,
  and refuses at least those its own ``decode_payload``/``parse_event`` refuse;
* nothing refused is stored or applied: every stored box point of a fuzzed
  chair is the first copy the validator accepted of its ``(boot, seq)``, with
  that copy's kind and values (a later duplicate never overwrites it); every
  tag is a valid id and every stored string is printable UTF-8 text; the
  saved per-chair limits name valid chairs only; every pager thread key is
  made of valid ids, and no alarm event the pager accepted breaks the id rule
  (checked with ``fullmatch``); nothing was dead-lettered and no unexpected
  error counted.

``tests/fuzz/test_fuzz_services.py`` runs the same harness with a fixed seed
and a small number of messages in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import math
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _extra in (REPO / "gateway", REPO / "firmware"):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

import paho.mqtt.client as mqtt  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from chairside import contract  # noqa: E402
from chairside.alarms import adapter  # noqa: E402
from chairside.alarms.profile import SETTABLE_CONDITION, SETTABLE_TOP, load_profile  # noqa: E402
from chairside.config import GatewayConfig  # noqa: E402
from chairside.ingest.validate import Rejected, text_problem, validate  # noqa: E402
from chairside.pager.inbound import decode_payload, parse_event  # noqa: E402
from chairside.pager.policy import parse_policy  # noqa: E402
from chairside.pager.service import ALARMS_SUB, PAGE_ACK_SUB, Pager  # noqa: E402
from chairside.service import SUBSCRIBED_KINDS, Gateway, default_alarm_stage  # noqa: E402
from chairside.sim.services import InfluxDB, Mosquitto, free_port  # noqa: E402
from chairside.staff import controls  # noqa: E402
from csfw import contract as fw  # noqa: E402

DB = "chairside_fuzz"
GOOD_SITE = "clinic1"
GOOD_CHAIRS = ("g1", "g2", "g3")
GOOD_BOOT = 5
FUZZ_SITE = "fuzz"
FUZZ_CHAIRS = ("f1", "f2", "drill-1")
FUZZ_BOOT = 9
BAD_IDS = ("G2", "Chair 3", "😀", "drill-😀", "x" * 33, "-lead", "", "a.b")
BOX_KINDS = ("vitals", "nibp", "status", "resp")
STAFF_KINDS = ("alarm_ack", "limits_set", "chair_standby", "drill_end", "chair_session")
ALARMS = ("spo2_low", "spo2_critical", "pulse_high", "box_offline")
MEASUREMENT = {"vitals": "vitals", "nibp": "nibp", "status": "device"}
COMPARED = {"vitals": ("spo2", "pr", "sig", "st"), "nibp": ("sys", "dia", "map", "st"), "device": ("state", "fw")}
"""fields compared between a stored point and the first copy of its message"""
MUTATIONS = (
    "none", "flip", "truncate", "surrogate", "control", "nesting", "huge", "nan", "wrong_type",
    "unknown_key", "oversized", "bad_utf8", "drop_field", "random", "bad_topic_id", "newline_id",
    "blank_by", "duplicate",
)  # fmt: skip
HUGE = ("1e400", "-1e400", "9" * 400, "-" + "9" * 400, "1" + "0" * 30)
NON_FINITE = ("NaN", "Infinity", "-Infinity")
BAD_TEXT = ("\ud800", "ok\udfff", "a\x00b", "\x1b[2J", "line\nbreak", "\x7f", "\x9b", "tab\there")
_HTTP_TIMEOUT_S = 2.0
TOKENS = ("", ".", "a.b", "eyJrIjoxfQ.é", "eyJrIjoxfQ.\ud800", "é.abc", "x" * 2000, "a.b.c",
          "AAAA.AAAAAAAAAAAAAAAAAAAAAA")
"""page-ack tokens (``payload.signature``) no pager signed"""
SETTABLE_PARAMS = tuple(sorted(SETTABLE_TOP)) + tuple(
    f"{cond}.{key}" for cond in sorted(load_profile().conditions) for key in sorted(SETTABLE_CONDITION)
)
"""every parameter a staff limits_set may name (adult profile)"""
BOX_FILTERS = tuple(contract.subscription(kind) for kind in SUBSCRIBED_KINDS)
STAFF_FILTERS = tuple(contract.subscription(kind) for kind in controls.KINDS)
GATEWAY_FILTERS = BOX_FILTERS + STAFF_FILTERS
PAGER_FILTERS = (ALARMS_SUB, PAGE_ACK_SUB)
RESULT_FILTER = contract.subscription("control_result")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


# ---- what is sent ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    """One fuzzed message: where it went, how it was made, and whether the
    service's own parser refuses it (``None``: only the service can tell)."""

    target: str  # "box", "staff", "pager_alarm", "pager_ack"
    topic: str
    payload: bytes
    mutation: str
    refused: bool | None
    reason: str = ""
    problem: str | None = None
    """why the message is invalid although the service's parser accepts it (a bug)"""
    retain: bool = False
    """published retained (box status, as the contract says): the broker hands it to every new subscription"""


def _box_base(kind: str, chair_seq: int, t: int) -> dict[str, Any]:
    env = fw.envelope(chair_seq, FUZZ_BOOT, 10_000 + chair_seq, t, True, False)
    text = {
        "vitals": lambda: fw.vitals_payload(env, 97, 72, 6, "ok"),
        "nibp": lambda: fw.nibp_payload(env, True, 120, 80, 93, 70),
        "status": lambda: fw.status_payload(env, {"fw": "0.9.1", "cfg": "abcd1234", "rssi": -60}),
        "resp": lambda: fw.resp_payload(env, "c1", "status", True),
    }[kind]()
    doc: dict[str, Any] = json.loads(text)
    return doc


def _staff_base(kind: str, n: int) -> dict[str, Any]:
    if kind == "alarm_ack":
        return {"v": 1, "alarm": "spo2_low", "by": "nurse kim", "id": f"fz-{n}"}
    if kind == "limits_set":
        return {"v": 1, "param": "spo2_low.limit", "value": 88, "by": "dr lee", "reason": "COPD",
                "id": f"fz-{n}"}  # fmt: skip
    if kind == "chair_standby":
        return {"v": 1, "by": "rn lee", "id": f"fz-{n}"}
    if kind == "chair_session":  # start and end alternate; either may be refused by the open session's state
        return {"v": 1, "action": ("start", "end")[n % 2], "by": "rn lee", "ref": f"ENC-{n}", "id": f"fz-{n}"}
    return {"v": 1, "by": "rn lee"}


def _alarm_base(n: int, site: str, chair: str, alarm: str, t: int) -> dict[str, Any]:
    return {"v": 1, "id": f"fz-evt-{n}", "key": f"{site}/{chair}/{alarm}", "site": site, "chair": chair,
            "alarm": alarm, "priority": "high", "kind": "physiological", "event": "raised", "t": t,
            "text": f"{alarm} (fuzz)", "value": 84.0, "limit": 85.0}  # fmt: skip


def _ack_base(site: str, chair: str, alarm: str) -> dict[str, Any]:
    return {"v": 1, "key": f"{site}/{chair}/{alarm}", "by": "alice", "thread": 1}


@st.composite
def _mutated(draw: st.DrawFn, doc: dict[str, Any], mutation: str) -> bytes:
    """``doc`` serialised, then changed by ``mutation``."""
    keys = sorted(doc)
    text_keys = [k for k in keys if isinstance(doc[k], str)] or keys
    doc = dict(doc)
    if mutation in ("none", "bad_topic_id", "duplicate"):
        return json.dumps(doc).encode()
    if mutation in ("surrogate", "control"):
        pool = BAD_TEXT[:2] if mutation == "surrogate" else BAD_TEXT[2:]
        doc[draw(st.sampled_from(text_keys + ["fw"]))] = draw(st.sampled_from(pool))
        if draw(st.booleans()):  # also raw, unescaped, in the JSON text
            return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
        return json.dumps(doc).encode()
    if mutation == "blank_by":
        doc["by"] = draw(st.sampled_from(("", " ", "   ", "\t", "\n")))
        return json.dumps(doc).encode()
    if mutation == "newline_id":
        # an id field with a trailing newline: "^...$" lets it through where re.match is used
        if "event" in doc:  # an alarm event: ids the topic does not repeat
            name = draw(st.sampled_from(("alarm", "inhibits", "inhibited_by")))
            if name == "alarm":
                doc["alarm"] += "\n"
                doc["key"] = f"{doc['site']}/{doc['chair']}/{doc['alarm']}"
            elif name == "inhibits":
                doc["inhibits"] = ["pulse_high\n"]
            else:
                doc["inhibited_by"] = "pulse_high\n"
            return json.dumps(doc).encode()
        name = draw(st.sampled_from(text_keys))
        doc[name] = f"{doc[name]}\n" if isinstance(doc[name], str) else "x\n"
        return json.dumps(doc).encode()
    if mutation in ("huge", "nan"):
        name = draw(st.sampled_from(keys))
        doc[name] = "__LITERAL__"
        literal = draw(st.sampled_from(HUGE if mutation == "huge" else NON_FINITE))
        return json.dumps(doc).replace('"__LITERAL__"', literal).encode()
    if mutation == "wrong_type":
        doc[draw(st.sampled_from(keys))] = draw(json_values)
        return json.dumps(doc, allow_nan=True).encode()
    if mutation == "unknown_key":
        doc.update(draw(st.dictionaries(st.text(max_size=8), json_values, min_size=1, max_size=3)))
        return json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")
    if mutation == "drop_field":
        doc.pop(draw(st.sampled_from(keys)))
        return json.dumps(doc).encode()
    if mutation == "oversized":
        doc["pad"] = "x" * draw(st.sampled_from((1100, 5000, 17000)))
        return json.dumps(doc).encode()
    if mutation == "nesting":
        depth = draw(st.sampled_from((1100, 1000, 990)) | st.integers(500, 1100))
        opener = draw(st.sampled_from(("[", '{"a":', '{"v":1,"x":[')))
        if draw(st.booleans()):
            return (opener * depth).encode()
        return (opener * depth + "1" + "]" * depth).encode()
    raw = bytearray(json.dumps(doc).encode())
    if mutation == "flip":
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, 1 << 16)) % len(raw)] = draw(st.integers(0, 255))
        return bytes(raw)
    if mutation == "truncate":
        return bytes(raw[: draw(st.integers(0, 1 << 16)) % len(raw)])
    if mutation == "bad_utf8":
        at = draw(st.integers(0, 1 << 16)) % (len(raw) + 1)
        bad = draw(st.sampled_from((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80")))
        return bytes(raw[:at]) + bad + bytes(raw[at:])
    assert mutation == "random", mutation
    return draw(st.binary(max_size=300))


def _ids(draw: st.DrawFn, mutation: str, site: str, chairs: tuple[str, ...]) -> tuple[str, str]:
    chair = draw(st.sampled_from(chairs))
    if mutation != "bad_topic_id":
        return site, chair
    bad = draw(st.sampled_from(BAD_IDS))
    return (bad, chair) if draw(st.booleans()) else (site, bad)


class Numbers:
    """Unique numbers for ids and sequence numbers (deterministic per run)."""

    def __init__(self) -> None:
        self._n = itertools.count(1000)
        self.accepted: dict[tuple[str, str], list[int]] = {}

    def next(self) -> int:
        return next(self._n)

    def remember(self, site: str, chair: str, seq: int) -> None:
        """A box message the validator accepted: a later ``duplicate`` may reuse its seq."""
        self.accepted.setdefault((site, chair), []).append(seq)


@st.composite
def fuzzed_message(draw: st.DrawFn, numbers: Numbers) -> Sent:
    """One message for one of the topics the gateway or the pager subscribe to."""
    target = draw(st.sampled_from(("box", "box", "box", "staff", "staff", "pager_alarm", "pager_ack")))
    mutation = draw(st.sampled_from(MUTATIONS))
    n = numbers.next()
    if target == "box":
        kind = draw(st.sampled_from(BOX_KINDS))
        site, chair = _ids(draw, mutation, FUZZ_SITE, FUZZ_CHAIRS)
        topic = f"{contract.topic_root()}/{site}/{chair}/{kind}"
        # draws never depend on what was sent before (hypothesis replays choice sequences)
        earlier = numbers.accepted.get((site, chair), [])
        if mutation == "duplicate":  # an earlier (boot, seq) of this box, other content
            back, jitter = draw(st.integers(1, 30)), draw(st.integers(-5000, 5000))
            seq = earlier[-min(back, len(earlier))] if earlier else n
            doc = _box_base(kind, seq, wall_ms() + jitter)
            other: dict[str, dict[str, Any]] = {"vitals": {"spo2": 81, "pr": 140}, "nibp": {"sys": 190},
                                                "status": {"fw": "dup"}, "resp": {"ok": 0}}  # fmt: skip
            doc.update(other[kind])
        else:
            doc = _box_base(kind, n, wall_ms())
        payload = draw(_mutated(doc, mutation))
        retain = kind == "status" and draw(st.booleans())
        result = validate(topic, payload)
        if isinstance(result, Rejected):
            return Sent(target, topic, payload, mutation, True, result.reason, retain=retain)
        if isinstance(result.fields.get("seq"), int):
            numbers.remember(site, chair, result.fields["seq"])
        return Sent(target, topic, payload, mutation, False, retain=retain)
    if target == "staff":
        kind = draw(st.sampled_from(STAFF_KINDS))
        site, chair = _ids(draw, mutation, FUZZ_SITE, FUZZ_CHAIRS)
        topic = contract.topic(kind, site, chair)
        staff = _staff_base(kind, n)
        if kind == "limits_set":  # any settable parameter, any finite value
            staff["param"] = draw(st.sampled_from(SETTABLE_PARAMS))
            staff["value"] = draw(st.sampled_from((None, 0, 1, 88, 1e308, -1e308, 5e-324, 2**63))
                                  | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False, allow_infinity=False))
        payload = draw(_mutated(staff, mutation))
        why = staff_refusal(kind, site, chair, payload)
        return Sent(target, topic, payload, mutation, True if why else None, why or "")
    site, chair = _ids(draw, mutation, FUZZ_SITE, FUZZ_CHAIRS)
    alarm = draw(st.sampled_from(ALARMS))
    if target == "pager_alarm":
        topic = f"{contract.topic_root()}/{site}/{chair}/alarms"
        doc = _alarm_base(n, FUZZ_SITE, chair, alarm, wall_ms())
        if mutation == "duplicate":  # an earlier event id, other content
            doc.update(id=f"fz-evt-{n - draw(st.integers(1, 30))}", event="cleared")
        payload = draw(_mutated(doc, mutation))
        decoded = decode_payload(payload)
        parsed = decoded if isinstance(decoded, str) else parse_event(topic, decoded)
        if isinstance(parsed, str):
            return Sent(target, topic, payload, mutation, True, parsed)
        return Sent(target, topic, payload, mutation, None, "", strict_event_problem(parsed))
    topic = f"{contract.topic_root()}/{site}/pages/ack"
    ack = _ack_base(FUZZ_SITE, chair, alarm)
    if draw(st.booleans()):  # the link form: a forged or garbled token
        ack = {"v": 1, "token": draw(st.sampled_from(TOKENS) | st.sampled_from(TOKENS) | st.text(max_size=60))}
    payload = draw(_mutated(ack, mutation))
    decoded = decode_payload(payload)
    return Sent(target, topic, payload, mutation, True if isinstance(decoded, str) else None,
                decoded if isinstance(decoded, str) else "")  # fmt: skip


def strict_event_problem(event: Any) -> str | None:
    """What is wrong with an alarm event the pager accepted, by the contract's
    id rule applied to the whole string (``fullmatch``)."""
    ids = contract.id_regex()
    names = [event.site, event.chair, event.alarm, *event.inhibits]
    if event.inhibited_by is not None:
        names.append(event.inhibited_by)
    bad = [name for name in names if not ids.fullmatch(name)]
    return f"accepted invalid ids {bad!r}" if bad else None


def staff_refusal(kind: str, site: str, chair: str, payload: bytes) -> str | None:
    """Why the gateway must refuse this staff message, by its own rules (id
    rule, ``drill/end`` on a non-drill chair, the adapter's parsers); None if
    it may be applied (it can still be refused: unknown alarm, limit out of
    range, nothing to acknowledge, a session already open or none open)."""
    ids = contract.id_regex()
    if not (ids.fullmatch(site) and ids.fullmatch(chair)):
        return "bad_id"
    if kind == "drill_end" and not chair.startswith("drill-"):
        return "not_a_drill_chair"
    parsed: Any
    if kind == "alarm_ack":
        parsed = adapter.parse_ack(payload)
    elif kind == "limits_set":
        parsed = adapter.parse_limits_set(payload)
    elif kind == "chair_session":
        parsed = adapter.parse_session(payload)
    else:
        parsed = adapter.parse_who(payload)
    return parsed.reason if isinstance(parsed, adapter.Rejected) else None


# ---- the services under test ------------------------------------------------------------


class Peer:
    """A paho client: publishes with QoS 1; optionally records a topic filter."""

    def __init__(self, port: int, name: str, filters: tuple[str, ...] = ()) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
        self.client.max_inflight_messages_set(100)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if filters:
            self.client.subscribe([(f, 1) for f in filters])
            if not subscribed.wait(10):
                raise RuntimeError(f"{name}: no SUBACK")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.append((msg.topic, bytes(msg.payload)))

    def messages(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return list(self.received)

    def send(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=10)
        return info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class GoodChairs:
    """Stand-in boxes publishing valid vitals (increasing seq) until stopped."""

    def __init__(self, port: int, interval_s: float) -> None:
        self.peer = Peer(port, "fuzz-good-chairs")
        self.interval_s = interval_s
        self.sent = dict.fromkeys(GOOD_CHAIRS, 0)
        self.infos: list[mqtt.MQTTMessageInfo] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="good-chairs", daemon=True)
        self._last_t = 0

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            t = max(wall_ms(), self._last_t + 1)
            self._last_t = t
            for chair in GOOD_CHAIRS:
                seq = self.sent[chair]
                env = fw.envelope(seq, GOOD_BOOT, 60_000 + seq * 100, t, True, False)
                payload = fw.vitals_payload(env, 97, 72, 6, "ok")
                self.infos.append(self.peer.client.publish(fw.Topics(GOOD_SITE, chair).vitals, payload, qos=1))
                self.sent[chair] = seq + 1

    def stop(self, timeout_s: float) -> bool:
        """Stop publishing; True once the broker has every reading."""
        self._stop.set()
        self._thread.join(5)
        end = time.monotonic() + timeout_s
        for info in self.infos:
            info.wait_for_publish(timeout=max(0.0, end - time.monotonic()))
        return all(info.is_published() for info in self.infos)


class Monitor:
    """Polls the gateway's /health and the pager's /healthz while the fuzz runs."""

    def __init__(self, urls: dict[str, str], interval_s: float = 0.25) -> None:
        self.urls = urls
        self.interval_s = interval_s
        self.polls = 0
        self.slowest_s = 0.0
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fuzz-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def check(self) -> None:
        for name, url in self.urls.items():
            started = time.monotonic()
            status, body = http_get(url)
            took = time.monotonic() - started
            self.polls += 1
            self.slowest_s = max(self.slowest_s, took)
            if status != 200:
                self.problems.append(f"{name}: {url} answered {status} ({body[:200]!r})")

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_S) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def metric_total(url: str, family: str) -> float | None:
    """Sum of a counter's samples as served in Prometheus text on ``url``; None if unreachable."""
    status, text = http_get(url)
    if status != 200:
        return None
    total = 0.0
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name == family:
            total += float(line.rsplit(" ", 1)[1])
    return total


def pager_accounted(pager: Pager) -> float:
    """Messages on the pager's topics that it counted with an outcome."""
    m = pager.metrics
    return (m.total("rejected") + m.total("alarm_events") + m.total("duplicate_events")
            + sum(m.get("page_acks", result=r) for r in ("acknowledged", "already", "unmatched")))  # fmt: skip


@dataclass
class Report:
    sent: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    mutations: Counter[str] = field(default_factory=Counter)
    counts: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failures.append(what)

    def text(self) -> str:
        lines = ["sent by target:   " + ", ".join(f"{k} {v}" for k, v in sorted(self.sent.items())),
                 "refused (own parser): " + ", ".join(f"{k} {v}" for k, v in sorted(self.refused.items())),
                 "mutations:        " + ", ".join(f"{k} {v}" for k, v in sorted(self.mutations.items()))]  # fmt: skip
        lines += [f"{k:<28} {v:g}" for k, v in self.counts.items()]
        lines += [f"FAIL: {f}" for f in self.failures] or ["all checks passed"]
        return "\n".join(lines)


class Harness:
    """The services, the good chairs, the fuzz publisher and the final checks."""

    def __init__(self, mosquitto: Mosquitto, influx: InfluxDB, workdir: Path,
                 good_interval_s: float = 0.1) -> None:  # fmt: skip
        self.mosquitto = mosquitto
        self.influx = influx
        self.workdir = workdir
        self.numbers = Numbers()
        self.report = Report()
        self.sent: list[Sent] = []
        self.unpublished = 0
        port = mosquitto.port
        self.state_dir = workdir / "gateway-state"
        self.gateway_config = GatewayConfig(
            mqtt_port=port, influx_url=influx.url, database=DB, state_dir=self.state_dir,
            client_id="fuzz-gateway", reject_interval_s=0.3, retry_min_s=0.1, retry_max_s=0.5,
            influx_timeout_s=2.0, metrics_port=free_port(),
        )  # fmt: skip
        self.gateway = Gateway(self.gateway_config, default_alarm_stage())
        ack_port = free_port()
        policy = parse_policy({
            "timezone": "UTC", "people": {"alice": {"channels": [{"type": "mqtt"}]},
                                          "bob": {"channels": [{"type": "mqtt"}]}},
            "fallback": ["alice", "bob"],
            "priorities": {"high": {"delay_s": 0, "ack_timeout_s": 60},
                           "medium": {"delay_s": 0, "ack_timeout_s": 60},
                           "low": {"page": False, "ack_timeout_s": 60}},
            "ack": {"base_url": f"http://127.0.0.1:{ack_port}", "port": ack_port},
        })  # fmt: skip
        self.pager = Pager(policy, secret=b"fuzz-secret-0123456789", state_path=workdir / "pager-state.json",
                           broker_port=port, client_id="fuzz-pager", ack_listen="127.0.0.1",
                           ack_port=ack_port)  # fmt: skip
        # the same filters as the gateway and the pager: what the broker delivered to them
        # (the pager's own acknowledgements on alarms/ack and the gateway's alarm events included)
        self.ears = Peer(port, "fuzz-ears", GATEWAY_FILTERS + PAGER_FILTERS + (RESULT_FILTER,))
        self.fuzzer = Peer(port, "fuzz-publisher")
        self.good = GoodChairs(port, good_interval_s)
        self.monitor = Monitor({
            "gateway": self.gateway_url("/health"),
            "pager": f"http://127.0.0.1:{ack_port}/healthz",
        })  # fmt: skip
        self._started = False

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self.gateway.start()
        self.pager.start()
        self._started = True
        if not self.gateway.wait_subscribed(15) or not self.pager.wait_subscribed(15):
            raise RuntimeError("gateway or pager did not connect")
        end = time.monotonic() + 10
        while time.monotonic() < end and not self.gateway.health()[0]:
            time.sleep(0.05)
        self.base = {
            "messages_in": self.gateway.metrics.total("messages_in"),
            "rejected": self.gateway.metrics.total("rejected"),
            "control_rejected": self.gateway.metrics.total("control_rejected"),
            "pager": pager_accounted(self.pager),
        }
        self.monitor.check()
        self.monitor.start()
        self.good.start()

    def stop(self) -> None:
        self.monitor.stop()
        with contextlib.suppress(Exception):
            self.good.stop(1)
        for peer in (self.good.peer, self.fuzzer, self.ears):
            with contextlib.suppress(Exception):
                peer.close()
        if self._started:
            self.pager.stop()
            self.gateway.stop()
            self._started = False

    # -- fuzzing ----------------------------------------------------------------------
    def send(self, msg: Sent) -> None:
        if not self.fuzzer.send(msg.topic, msg.payload, msg.retain):
            self.unpublished += 1  # the broker refused it (never happened so far): not counted as sent
            return
        self.sent.append(msg)
        self.report.sent[msg.target] += 1
        self.report.mutations[msg.mutation] += 1
        if msg.refused:
            self.report.refused[msg.target] += 1

    def run(self, examples: int, seed: int | None) -> None:
        """Draw and send ``examples`` messages with hypothesis (``seed`` None:
        the fixed derandomized sequence)."""
        numbers = self.numbers
        chosen = settings(max_examples=examples, deadline=None, database=None, derandomize=seed is None,
                          suppress_health_check=list(HealthCheck))  # fmt: skip

        @chosen
        @given(fuzzed_message(numbers))
        def one(msg: Sent) -> None:
            self.send(msg)

        if seed is not None:
            from hypothesis import seed as fixed_seed

            one = fixed_seed(seed)(one)
        one()

    # -- the checks ---------------------------------------------------------------------
    def finish(self) -> Report:
        rep = self.report
        gw, pager, metrics = self.gateway, self.pager, self.gateway.metrics
        if not self.good.stop(30):
            rep.fail("the broker did not take every good reading")
        good_sent = sum(self.good.sent.values())
        box = [m for m in self.sent if m.target == "box"]
        staff = [m for m in self.sent if m.target == "staff"]
        to_pager = [m for m in self.sent if m.target in ("pager_alarm", "pager_ack")]
        expected_in = good_sent + len(box) + len(staff)
        self._wait(lambda: self._delivered(GATEWAY_FILTERS) >= expected_in, 30)
        self._settle(60)
        time.sleep(0.5)  # one more reject flush
        self._wait(lambda: gw.wait_idle(1), 30)
        staff_in = self._delivered(STAFF_FILTERS)
        answers = self._results()
        delivered = self._delivered(PAGER_FILTERS)
        self.monitor.stop()
        self.monitor.check()
        for problem in self.monitor.problems:
            rep.fail(problem)

        # responsive and alive
        if gw.ingest.state != "receiving" or gw.ingest._thread is None or not gw.ingest._thread.is_alive():
            rep.fail(f"gateway ingest session not receiving ({gw.ingest.state})")
        if gw.writer._thread is None or not gw.writer._thread.is_alive():
            rep.fail("gateway writer thread ended")
        healthy, why = pager.health()
        if not healthy:
            rep.fail(f"pager unhealthy: {why}")

        # good chairs lose nothing
        for chair in GOOD_CHAIRS:
            rows = self._rows(f"SELECT seq, boot FROM vitals WHERE site = '{GOOD_SITE}' AND chair = '{chair}'")
            seqs = sorted(int(r["seq"]) for r in rows if r["boot"] == GOOD_BOOT)
            if seqs != list(range(self.good.sent[chair])):
                missing = sorted(set(range(self.good.sent[chair])) - set(seqs))
                rep.fail(f"good chair {chair}: {len(seqs)} stored of {self.good.sent[chair]} "
                         f"(missing {missing[:10]}, doubles {len(seqs) - len(set(seqs))})")  # fmt: skip

        # box refusals: exactly what the validator refuses, by reason, also in InfluxDB
        got_in = metrics.total("messages_in") - self.base["messages_in"]
        gateway_delivered = self._delivered(GATEWAY_FILTERS)
        if got_in != gateway_delivered or gateway_delivered < expected_in:
            rep.fail(f"gateway received {got_in:g} messages; {gateway_delivered} were delivered on its topics, "
                     f"{expected_in} sent there by the fuzzer and the good chairs")  # fmt: skip
        want = Counter(m.reason for m in box if m.refused)
        rejected = metrics.total("rejected") - self.base["rejected"]
        if rejected != sum(want.values()):
            rep.fail(f"gateway rejected {rejected:g}; its validator refuses {sum(want.values())} of those sent")
        for reason, n in want.items():
            if metrics.get("rejected", reason=reason) < n:
                rep.fail(f"rejected{{reason={reason}}} = {metrics.get('rejected', reason=reason):g} < {n}")
        stored_rejects = self._wait(lambda: (s := self._scalar("SELECT sum(n) FROM rejects")) == rejected and s, 10)
        if stored_rejects != rejected:
            rep.fail(f"rejects measurement holds {self._scalar('SELECT sum(n) FROM rejects')}, counter {rejected:g}")

        # what /metrics serves is what was counted
        served = {
            "gateway rejected": (self.gateway_url("/metrics"), "chairside_gateway_rejected_total",
                                 metrics.total("rejected")),
            "gateway control_rejected": (self.gateway_url("/metrics"), "chairside_gateway_control_rejected_total",
                                         metrics.total("control_rejected")),
            "pager rejected": (f"http://127.0.0.1:{pager.ack_port}/metrics", "chairside_pager_rejected_total",
                               pager.metrics.total("rejected")),
        }  # fmt: skip
        for what, (url, family, counted) in served.items():
            if metric_total(url, family) != counted:
                rep.fail(f"{what}: {url} serves {metric_total(url, family)}, counted {counted:g}")

        # staff: every message answered, every refusal counted with a reason
        refused_answers = [a for a in answers if a.get("ok") == 0]
        control_rejected = metrics.total("control_rejected") - self.base["control_rejected"]
        if len(answers) != staff_in:
            rep.fail(f"{len(answers)} staff/result answers for {staff_in} staff messages ({len(staff)} fuzzed)")
        if control_rejected != len(refused_answers):
            rep.fail(f"control_rejected grew by {control_rejected:g}, {len(refused_answers)} refusals answered")
        if any(not a.get("reason") for a in refused_answers):
            rep.fail("a staff refusal without a reason")
        must_refuse = sum(1 for m in staff if m.refused)
        if control_rejected < must_refuse:
            rep.fail(f"control_rejected {control_rejected:g} < {must_refuse} staff messages its parser refuses")

        # pager: every message on its topics counted once; its parser's refusals refused
        accounted = pager_accounted(pager) - self.base["pager"]
        if accounted != delivered:
            rep.fail(f"pager counted {accounted:g} messages, {delivered} were delivered on its topics")
        pager_must_refuse = sum(1 for m in to_pager if m.refused)
        if pager.metrics.total("rejected") < pager_must_refuse:
            rep.fail(f"pager rejected {pager.metrics.total('rejected'):g} < {pager_must_refuse} its parser refuses")
        for m in to_pager:
            if m.problem is not None:
                rep.fail(f"pager parser {m.problem} on {m.topic} ({m.mutation})")
        if pager.metrics.total("errors"):
            _status, text = http_get(f"http://127.0.0.1:{pager.ack_port}/metrics")
            which = [line for line in text.splitlines() if "handler error" in line or line.startswith(
                "chairside_pager_errors_total")]  # fmt: skip
            rep.fail(f"pager counted {pager.metrics.total('errors'):g} unexpected errors: {which}")

        self._check_nothing_invalid_stored(box)
        self._check_nothing_invalid_applied()
        if metrics.total("processing_errors"):
            rep.fail(f"gateway counted {metrics.total('processing_errors'):g} processing errors")
        if gw.deadletters.written:
            rep.fail(f"{gw.deadletters.written} points dead-lettered (InfluxDB refused what validation let through)")

        rep.counts.update({
            "good readings sent": good_sent,
            "gateway messages_in": got_in,
            "gateway rejected": rejected,
            "gateway control_rejected": control_rejected,
            "gateway duplicates": metrics.total("duplicates"),
            "staff messages delivered": staff_in,
            "staff answers ok": len(answers) - len(refused_answers),
            "pager messages delivered": delivered,
            "pager rejected": pager.metrics.total("rejected"),
            "pager alarm_events": pager.metrics.total("alarm_events"),
            "pager threads": len(pager.threads()),
            "health polls": self.monitor.polls,
            "slowest health answer s": round(self.monitor.slowest_s, 3),
            "not published (broker)": self.unpublished,
        })  # fmt: skip
        return rep

    def _settle(self, timeout_s: float) -> None:
        """Wait until messages stop flowing: what the gateway and the pager
        received, the staff answers and the pager's own acknowledgements to
        the gateway (and the events they cause) all stay the same for 0.5 s,
        and each service has taken what was delivered to it."""
        gw, pager = self.gateway, self.pager

        def snapshot() -> tuple[float, ...]:
            return (self._delivered(GATEWAY_FILTERS), gw.metrics.total("messages_in") - self.base["messages_in"],
                    self._delivered(STAFF_FILTERS), len(self._results()), self._delivered(PAGER_FILTERS),
                    pager_accounted(pager) - self.base["pager"])  # fmt: skip

        end = time.monotonic() + timeout_s
        previous: tuple[float, ...] = ()
        while time.monotonic() < end:
            gw.wait_idle(5)
            now = snapshot()
            if now == previous and now[0] == now[1] and now[2] == now[3] and now[4] == now[5]:
                return
            previous = now
            time.sleep(0.5)

    def gateway_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.gateway_config.metrics_port}{path}"

    def restart_gateway(self) -> None:
        """Restart the gateway on its state dir: it gets every retained box
        message again (its SUBSCRIBE on connect), restores the saved limits,
        and must come up healthy, refusing the bad ones and dropping the
        accepted ones as duplicates of what it stored (``Duplicates`` starts
        empty: an accepted retained status is stored again at its own time,
        the same point)."""
        rep = self.report
        last: dict[str, Sent] = {}
        for m in self.sent:
            if m.retain:
                last[m.topic] = m
        retained = [m for m in last.values() if m.payload]  # an empty retained payload clears the topic
        self.gateway.stop()
        self.gateway = gw = Gateway(self.gateway_config, default_alarm_stage())
        gw.start()
        if not gw.wait_subscribed(15):
            rep.fail("gateway: no subscription after the restart")
            return
        self._wait(lambda: gw.metrics.total("messages_in") >= len(retained), 20)
        self._wait(lambda: gw.wait_idle(1), 20)
        self._wait(lambda: gw.health()[0], 10)
        status, body = http_get(self.gateway_url("/health"))
        if status != 200:
            rep.fail(f"gateway after a restart: /health {status} ({body[:200]!r})")
        got = gw.metrics.total("messages_in")
        if got != len(retained):
            rep.fail(f"gateway after a restart received {got:g} messages; {len(retained)} retained on its topics")
        want = sum(1 for m in retained if m.refused)
        if gw.metrics.total("rejected") != want:
            rep.fail(f"gateway after a restart rejected {gw.metrics.total('rejected'):g} of the retained "
                     f"messages; its validator refuses {want}")  # fmt: skip
        if gw.metrics.total("processing_errors") or gw.deadletters.written:
            rep.fail("gateway after a restart: processing errors or dead letters")
        rep.counts.update({"retained topics replayed at restart": len(retained),
                           "  of them refused": want})  # fmt: skip

    def _check_nothing_invalid_stored(self, box: list[Sent]) -> None:
        rep = self.report
        first: dict[tuple[Any, ...], Any] = {}  # (site, chair, boot, seq) -> first accepted copy
        for m in box:
            if m.refused:
                continue
            result = validate(m.topic, m.payload)
            assert not isinstance(result, Rejected)
            key = (result.site, result.chair, result.fields.get("boot"), result.fields.get("seq"))
            first.setdefault(key, result)
        ids = contract.id_regex()
        for measurement in ("vitals", "nibp", "device", "alarm_events", "limit_audit", "drills", "rejects"):
            for row in self._rows(f"SELECT * FROM {measurement}", group_by_tags=True):
                site, chair = row.get("site"), row.get("chair")
                valid_ids = all(isinstance(x, str) and ids.fullmatch(x) for x in (site, chair))
                if measurement != "rejects" and not valid_ids:  # rejects: no site/chair tags
                    rep.fail(f"{measurement} point with invalid ids {site!r}/{chair!r}")
                for name, value in row.items():
                    if isinstance(value, str) and text_problem(value) is not None:
                        rep.fail(f"{measurement}.{name} stores bad text {value[:40]!r}")
                    if isinstance(value, float) and not math.isfinite(value):
                        rep.fail(f"{measurement}.{name} stores {value}")
                if measurement in ("vitals", "nibp", "device") and site == FUZZ_SITE and row.get("seq") is not None:
                    self._check_stored_copy(measurement, row, first.get((site, chair, row.get("boot"), row.get("seq"))))

    def _check_stored_copy(self, measurement: str, row: dict[str, Any], copy: Any) -> None:
        """A stored point of a fuzzed chair is the first accepted message with its (boot, seq), as sent."""
        key = (row.get("site"), row.get("chair"), row.get("boot"), row.get("seq"))
        if copy is None:
            self.report.fail(f"{measurement} {key} stored: the validator refused it or it was never sent")
            return
        if MEASUREMENT.get(copy.kind) != measurement:
            self.report.fail(f"{measurement} {key} stored; the first copy was a {copy.kind} message")
            return
        for name in COMPARED[measurement]:
            if row.get(name) != copy.fields.get(name):
                self.report.fail(f"{measurement} {key}: stored {name}={row.get(name)!r}, "
                                 f"the first copy had {copy.fields.get(name)!r}")  # fmt: skip

    def _check_nothing_invalid_applied(self) -> None:
        rep = self.report
        ids = contract.id_regex()
        path = self.state_dir / "limit_overrides.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        for key, params in saved.items():
            site, _, chair = key.partition("/")
            if not (ids.fullmatch(site) and ids.fullmatch(chair)):
                rep.fail(f"limit override saved for an invalid chair {key!r}")
            for param, value in params.items():
                if value is not None and not (isinstance(value, int | float) and math.isfinite(value)):
                    rep.fail(f"limit override {key} {param} = {value!r}")
        for key, thread in self.pager.threads().items():
            parts = key.split("/")
            if len(parts) != 3 or not all(ids.fullmatch(p) for p in parts):
                rep.fail(f"pager thread with an invalid key {key!r}")
            for name in ("by", "acked_by", "text"):
                value = getattr(thread, name, None)
                if isinstance(value, str) and text_problem(value) is not None:
                    rep.fail(f"pager thread {key!r} holds bad text in {name}: {value[:40]!r}")

    # -- helpers -------------------------------------------------------------------------
    def _results(self) -> list[dict[str, Any]]:
        out = []
        for topic, payload in self.ears.messages():
            if mqtt.topic_matches_sub(RESULT_FILTER, topic):
                out.append(json.loads(payload))
        return out

    def _delivered(self, filters: tuple[str, ...]) -> int:
        """Messages the broker delivered on ``filters`` (seen by a peer subscribed to the same filters)."""
        return sum(1 for topic, _ in self.ears.messages()
                   if any(mqtt.topic_matches_sub(f, topic) for f in filters))  # fmt: skip

    @staticmethod
    def _wait(pred: Callable[[], Any], timeout_s: float) -> Any:
        end = time.monotonic() + timeout_s
        got = pred()
        while not got and time.monotonic() < end:
            time.sleep(0.1)
            got = pred()
        return got

    def _rows(self, q: str, group_by_tags: bool = False) -> list[dict[str, Any]]:
        result: Any = self.influx.query(q + (" GROUP BY *" if group_by_tags else ""), DB)
        rows: list[dict[str, Any]] = []
        for series in result["results"][0].get("series", []):
            tags = series.get("tags", {})
            for values in series["values"]:
                row = dict(zip(series["columns"], values, strict=True))
                row.update(tags)
                rows.append(row)
        return rows

    def _scalar(self, q: str) -> float | None:
        result: Any = self.influx.query(q, DB)
        series = result["results"][0].get("series")
        return float(series[0]["values"][0][1]) if series else None


def fuzz(mosquitto: Mosquitto, influx: InfluxDB, workdir: Path, examples: int, seed: int | None = None,
         good_interval_s: float = 0.1) -> Report:  # fmt: skip
    """Start the services, fuzz them with ``examples`` messages, check, stop."""
    harness = Harness(mosquitto, influx, workdir, good_interval_s)
    try:
        harness.start()
        harness.run(examples, seed)
        report = harness.finish()
        harness.restart_gateway()
        return report
    finally:
        harness.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="fuzzed messages (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="hypothesis seed (default 1)")
    parser.add_argument("--good-interval", type=float, default=0.05,
                        help="seconds between two readings of each good chair (default 0.05)")  # fmt: skip
    parser.add_argument("--log-level", default="ERROR",
                        help="the services' log level (default ERROR: refusals are logged as warnings)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chairside-fuzz-") as tmp:
        work = Path(tmp)
        broker, db = Mosquitto(workdir=work / "mosquitto"), InfluxDB(workdir=work / "influxd")
        broker.start()
        db.start()
        try:
            report = fuzz(broker, db, work, args.examples, args.seed, args.good_interval)
        finally:
            broker.stop()
            db.stop()
    print(report.text())
    print(f"{time.monotonic() - started:.1f} s")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
