"""Hypothesis against the pager's inbound path (issue 15.3): any payload on
the alarms and page-ack topics is handled or refused with a reason and
counted, never raised, and the durable state stays writable.  Fixed seed
(``derandomize``) so CI is repeatable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chairside.pager.policy import parse_policy
from chairside.pager.service import Pager
from chairside.pager.state import StateStore

FUZZ = settings(max_examples=250, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
T0 = 1_717_408_800.0
TOPICS = ("chairside/v1/clinic1/chair3/alarms", "chairside/v1/clinic1/pages/ack")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
GOOD_EVENT: dict[str, Any] = {
    "v": 1, "id": "e1", "key": "clinic1/chair3/spo2_low", "site": "clinic1", "chair": "chair3",
    "alarm": "spo2_low", "priority": "high", "kind": "physiological", "event": "raised",
    "t": int(T0 * 1000), "text": "SpO2 84 %", "inhibits": ["x"], "inhibited_by": None,
}  # fmt: skip
GOOD_ACK: dict[str, Any] = {"v": 1, "key": "clinic1/chair3/spo2_low", "by": "alice", "thread": 1}
FIELDS = sorted(set(GOOD_EVENT) | set(GOOD_ACK) | {"token", "drill"})


def accounted(p: Pager) -> float:
    m = p.metrics
    return (m.total("rejected") + m.total("alarm_events") + m.total("duplicate_events")
            + sum(m.get("page_acks", result=r) for r in ("acknowledged", "already", "unmatched")))  # fmt: skip


def make_pager(tmp: Path) -> Pager:
    policy = parse_policy({
        "timezone": "UTC", "people": {"alice": {"channels": [{"type": "mqtt"}]}},
        "fallback": ["alice"],
        "priorities": {"high": {"delay_s": 0, "ack_timeout_s": 60},
                       "medium": {"delay_s": 0, "ack_timeout_s": 60},
                       "low": {"page": False, "ack_timeout_s": 60}},
    })  # fmt: skip
    return Pager(policy, secret=b"fuzz-secret-0123456789", state_path=tmp / "state.json",
                 clock=lambda: T0)  # fmt: skip


def run(pager: Pager, topic: str, raw: bytes) -> None:
    before = accounted(pager)
    why = pager.handle_message(topic, raw, T0)  # must not raise
    assert isinstance(why, str)
    assert accounted(pager) >= before + 1, (topic, raw[:80], why)


def test_fuzz_random_bytes_and_mutated_messages(tmp_path: Path) -> None:
    pager = make_pager(tmp_path)
    counter = iter(range(10**9))

    @FUZZ
    @given(st.sampled_from(TOPICS), st.binary(max_size=400))
    def random_bytes(topic: str, raw: bytes) -> None:
        run(pager, topic, raw)

    @FUZZ
    @given(st.sampled_from(TOPICS), st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
           st.sampled_from(("", "[", "{\"a\":")), st.integers(0, 3000))  # fmt: skip
    def mutated(topic: str, changes: dict[str, Any], nest: str, depth: int) -> None:
        base = dict(GOOD_EVENT if topic.endswith("/alarms") else GOOD_ACK)
        base["id"] = f"e{next(counter)}"
        base.update(changes)
        try:
            body = json.dumps(base, allow_nan=True)
        except (ValueError, OverflowError):
            return
        raw = (nest * depth + body).encode("utf-8", "surrogatepass") if nest else body.encode()
        run(pager, topic, raw)

    random_bytes()
    mutated()
    # the durable state is still a readable document
    assert StateStore(tmp_path / "state.json").load()["v"] == 1
    assert pager.metrics.total("errors") == 0
