"""Issue 15, "Done when": mutated payloads on every topic the gateway and the
pager subscribe to, while good chairs publish, against real Mosquitto, real
InfluxDB, the real gateway and the real pager.

The harness (strategies, services, checks) is ``benchmarks/fuzz_services.py``;
here it runs with hypothesis's fixed derandomized sequence and a CI-sized
number of messages.  Asserted: both services answer ``/health``/``/healthz``
200 throughout and stay alive, good chairs lose no reading, every refused
message is counted with a reason (gateway ``rejected`` exactly as its own
validator decides, ``control_rejected`` = the refusals answered on
``staff/result``, the pager counts every message once), and nothing invalid is
stored (InfluxDB) or applied (saved limits, pager threads).  Then the gateway
is restarted on its state dir: it gets every retained (fuzzed) status again and
comes up healthy, refusing the bad ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from chairside.sim.services import InfluxDB, Mosquitto

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import fuzz_services

pytestmark = [pytest.mark.services, pytest.mark.slow]

EXAMPLES = 1000  # about 10 s here; benchmarks/fuzz_services.py for long runs


@pytest.mark.timeout(120)
def test_services_survive_fuzzed_messages_while_good_chairs_publish(
    mosquitto: Mosquitto, influxdb: InfluxDB, tmp_path: Path
) -> None:
    report = fuzz_services.fuzz(mosquitto, influxdb, tmp_path, EXAMPLES, seed=None, good_interval_s=0.1)
    print(report.text())
    assert sum(report.sent.values()) >= EXAMPLES * 0.9, report.text()
    # every target and every mutation class was exercised
    assert set(report.sent) == {"box", "staff", "pager_alarm", "pager_ack"}, report.text()
    assert set(report.mutations) == set(fuzz_services.MUTATIONS), report.text()
    assert report.refused["box"] > 0 and report.refused["staff"] > 0 and report.refused["pager_alarm"] > 0
    assert report.counts["good readings sent"] > 0
    assert report.counts["gateway duplicates"] > 0  # same (boot, seq), other content: the first copy stays
    assert report.counts["retained topics replayed at restart"] > 0
    assert not report.failures, report.text()


def test_ids_with_a_trailing_newline_are_refused() -> None:
    """What the fuzz found: ``^...$`` with ``re.match`` lets ``"spo2_low\\n"``
    through (``$`` also matches before a final newline), so the pager accepted
    alarm events naming such an alarm or inhibitor, the drill command such a
    site, and the pager policy such a person id or e-mail address."""
    from chairside.pager.inbound import parse_event
    from chairside.pager.policy import PolicyError, parse_policy
    from chairside.staff.drill import SCENARIOS, DrillConfig

    event = {"v": 1, "id": "e1", "site": "clinic1", "chair": "c3", "alarm": "spo2_low", "priority": "high",
             "kind": "physiological", "event": "raised", "t": 1, "text": "SpO2 84 %"}  # fmt: skip
    topic = "chairside/v1/clinic1/c3/alarms"
    assert not isinstance(parse_event(topic, event), str)
    for change in ({"alarm": "spo2_low\n"}, {"inhibits": ["pulse_high\n"]}, {"inhibited_by": "pulse_high\n"}):
        assert isinstance(parse_event(topic, {**event, **change}), str), change
    scenario = next(iter(SCENARIOS))
    with pytest.raises(ValueError, match="site"):
        DrillConfig(site="clinic1\n", chair="3", scenario=scenario)
    for people in ({"alice\n": {"channels": [{"type": "mqtt"}]}},
                   {"alice": {"channels": [{"type": "email", "to": "a@example.org\n"}]}}):  # fmt: skip
        with pytest.raises(PolicyError):
            parse_policy({"timezone": "UTC", "people": people, "fallback": [next(iter(people))]})


def test_token_with_a_non_ascii_signature_is_refused_not_raised(tmp_path: Path) -> None:
    """What the fuzz found: ``hmac.compare_digest`` raises ``TypeError`` on a
    str holding non-ASCII characters, so a page ack ``{"v":1,"token":"x.é"}``
    on MQTT ended in the pager's last-resort guard (an unexpected error, no
    ``ack_result`` answer) and ``GET /ack?token=x.é`` got no HTTP answer."""
    import urllib.error
    import urllib.request

    from chairside.pager.ackserver import AckServer
    from chairside.pager.policy import parse_policy
    from chairside.pager.service import Pager
    from chairside.pager.tokens import TokenError, verify_token

    for token in ("eyJrIjoxfQ.é", "eyJrIjoxfQ.\ud800"):
        with pytest.raises(TokenError, match="bad signature"):
            verify_token(b"s" * 20, token, 0.0)
    policy = parse_policy({"timezone": "UTC", "people": {"alice": {"channels": [{"type": "mqtt"}]}},
                           "fallback": ["alice"],
                           "priorities": {"high": {"delay_s": 0, "ack_timeout_s": 60},
                                          "medium": {"delay_s": 0, "ack_timeout_s": 60},
                                          "low": {"page": False, "ack_timeout_s": 60}}})  # fmt: skip
    pager = Pager(policy, secret=b"s" * 20, state_path=tmp_path / "pager.json", clock=lambda: 1_717_408_800.0)
    why = pager.handle_message("chairside/v1/clinic1/pages/ack", b'{"v":1,"token":"eyJrIjoxfQ.\\u00e9"}', 0.0)
    assert why == "bad signature"
    assert pager.metrics.get("page_acks", result="refused") == 1 and pager.metrics.total("errors") == 0
    server = AckServer("127.0.0.1", 0, pager.check_token, pager.ack_token)
    server.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/ack?token=eyJrIjoxfQ.%C3%A9", timeout=5)
        assert answer.value.code == 400 and b"bad signature" in answer.value.read()
    finally:
        server.stop()


def test_fuzz_ack_link_tokens_never_raise(tmp_path: Path) -> None:
    """The ack page's other inbound path: any token on GET/POST /ack is
    answered (check_token/ack_token return a reason), never raised."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from chairside.pager.policy import parse_policy
    from chairside.pager.service import Pager

    policy = parse_policy({"timezone": "UTC", "people": {"alice": {"channels": [{"type": "mqtt"}]}},
                           "fallback": ["alice"],
                           "priorities": {"high": {"delay_s": 0, "ack_timeout_s": 60},
                                          "medium": {"delay_s": 0, "ack_timeout_s": 60},
                                          "low": {"page": False, "ack_timeout_s": 60}}})  # fmt: skip
    pager = Pager(policy, secret=b"s" * 20, state_path=tmp_path / "pager.json", clock=lambda: 1_717_408_800.0)
    parts = st.text(max_size=40) | st.text(alphabet="ABCDEFabcdef0123456789-_=", max_size=40)

    @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(parts, parts, st.booleans())
    def one(payload: str, signature: str, dotted: bool) -> None:
        token = f"{payload}.{signature}" if dotted else payload + signature
        for answer in (pager.check_token(token), pager.ack_token(token)):
            assert answer[0] is False and isinstance(answer[1], str) and answer[1]

    one()
