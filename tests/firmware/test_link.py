"""csfw.link state machine: fake Wi-Fi and MQTT connect functions, integer clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from csfw import link as L
from csfw.mqtt import MQTTError
from host.wlan import STAT_WRONG_PASSWORD, FakeWLAN


class Broker:
    """Scripted connect_mqtt: each call pops the next outcome
    (True/False = session_present, or an exception instance to raise)."""

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[int] = []
        self.closed = 0
        self.polls = 0
        self.poll_error: Exception | None = None

    def connect(self, now: int) -> bool:
        self.calls.append(now)
        out = self.outcomes.pop(0) if self.outcomes else True
        if isinstance(out, Exception):
            raise out
        return bool(out)

    def poll(self, now: int) -> None:
        self.polls += 1
        if self.poll_error is not None:
            raise self.poll_error

    def close(self) -> None:
        self.closed += 1


def make(
    outcomes: list[Any],
    rand: Callable[[], float] = lambda: 0.0,
    wlan: FakeWLAN | None = None,
    **kw: Any,
) -> tuple[L.Link, Broker, FakeWLAN, list[tuple[str, Any, int]]]:
    wlan = wlan or FakeWLAN()
    broker = Broker(outcomes)
    events: list[tuple[str, Any, int]] = []
    lk = L.Link(
        wlan,
        broker.connect,
        clock_rand=rand,
        ssid="clinic",
        key="secret",
        poll_online=broker.poll,
        close_mqtt=broker.close,
        on_online=lambda present, now: events.append(("online", present, now)),
        on_offline=lambda cause, now: events.append(("offline", cause, now)),
        **kw,
    )
    return lk, broker, wlan, events


def run_until(lk: L.Link, state: int, now: int, step: int = 10, limit: int = 100000) -> int:
    """Poll every `step` ms until lk reaches `state`; return the time."""
    for _ in range(limit):
        if lk.poll(now) == state:
            return now
        now += step
    raise AssertionError("never reached " + L.STATE_NAMES[state])


def test_happy_path_states_and_callback() -> None:
    lk, broker, wlan, events = make([True])
    assert lk.state == L.WIFI_DOWN and not lk.online
    assert lk.poll(0) == L.WIFI_JOINING and wlan.connect_calls == 1
    assert lk.poll(10) == L.BROKER_CONNECTING
    assert lk.poll(20) == L.ONLINE and lk.online
    assert events == [("online", True, 20)]
    assert broker.calls == [20] and lk.reconnects == 0 and lk.onlines == 1
    lk.poll(30)
    assert broker.polls == 1
    assert lk.rssi() == -55  # status('rssi'); config('rssi') raises on rp2


def test_backoff_grows_doubles_and_caps_at_max() -> None:
    err = OSError(111)
    lk, _b, _w, _e = make([err] * 12, min_backoff_ms=1000, max_backoff_ms=60000)
    now = run_until(lk, L.BACKOFF, 0)
    delays = []
    for _ in range(9):
        delays.append(lk.backoff_ms)
        now = run_until(lk, L.BROKER_CONNECTING, now, step=1)
        assert now - lk.since == 0
        now = run_until(lk, L.BACKOFF, now, step=1)
    assert delays == [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
    assert lk.failures[L.BROKER_UNREACHABLE] == 10
    assert lk.attempts == 10


def test_backoff_waits_the_whole_delay() -> None:
    lk, _b, _w, _e = make([OSError(111)])
    now = run_until(lk, L.BACKOFF, 0)
    start = now
    assert lk.backoff_ms == 1000
    assert lk.poll(start + 999) == L.BACKOFF
    assert lk.poll(start + 1000) == L.BROKER_CONNECTING
    assert lk.poll(start + 1001) == L.ONLINE


@pytest.mark.parametrize("r", [0.0, 0.25, 0.5, 0.999999])
def test_jitter_bounded(r: float) -> None:
    lk, _b, _w, _e = make([OSError(111)] * 8, rand=lambda: r, max_backoff_ms=8000)
    now = 0
    for attempt in range(1, 8):
        now = run_until(lk, L.BACKOFF, now, step=1)
        base = min(1000 * 2 ** (attempt - 1), 8000)
        assert base * 0.75 <= lk.backoff_ms <= base
        assert lk.backoff_ms == base - int(base * 0.25 * r)
        now = run_until(lk, L.BROKER_CONNECTING, now, step=1)


def test_jitter_differs_between_boxes_with_different_random_sources() -> None:
    seq = iter([0.1, 0.9])
    lk, _b, _w, _e = make([OSError(111)] * 2, rand=lambda: next(seq))
    now = run_until(lk, L.BACKOFF, 0)
    first = lk.backoff_ms
    now = run_until(lk, L.BROKER_CONNECTING, now, step=1)
    run_until(lk, L.BACKOFF, now, step=1)
    assert first == 1000 - 25 and lk.backoff_ms == 2000 - 450


def test_bad_random_source_falls_back() -> None:
    lk, _b, _w, _e = make([OSError(111)], rand=lambda: 7.0)
    run_until(lk, L.BACKOFF, 0)
    assert 750 <= lk.backoff_ms <= 1000


def test_backoff_resets_on_success_and_counts_reconnect() -> None:
    lk, broker, _w, events = make([OSError(111), OSError(111), OSError(111), False, True])
    now = run_until(lk, L.ONLINE, 0, step=50)
    assert lk.attempts == 0 and lk.reconnects == 0
    assert events[-1][:2] == ("online", False)
    broker.poll_error = OSError(110)
    assert lk.poll(now + 1) == L.BACKOFF
    assert lk.backoff_ms == 1000  # back to the minimum after the success
    assert lk.failures[L.BROKER_LOST] == 1 and lk.last_cause == L.BROKER_LOST
    assert ("offline", L.BROKER_LOST, now + 1) in events
    assert broker.closed >= 4
    broker.poll_error = None
    now = run_until(lk, L.ONLINE, now + 2, step=50)
    assert lk.reconnects == 1 and lk.onlines == 2 and lk.session_present is True


def test_broker_refused_counted_separately() -> None:
    lk, _b, _w, _e = make([MQTTError(5)])
    run_until(lk, L.BACKOFF, 0)
    assert lk.failures[L.BROKER_REFUSED] == 1
    assert isinstance(lk.last_error, MQTTError) and lk.last_error.code == 5


def test_wifi_join_timeout_then_success() -> None:
    wlan = FakeWLAN(join_polls=10**9)  # never finishes joining
    lk, _b, _w, _e = make([True], wlan=wlan, wifi_timeout_ms=15000)
    assert lk.poll(0) == L.WIFI_JOINING
    assert lk.poll(14999) == L.WIFI_JOINING
    assert lk.poll(15000) == L.BACKOFF
    assert lk.failures[L.WIFI_TIMEOUT] == 1
    wlan.join_polls = 2
    now = run_until(lk, L.WIFI_DOWN, 15000, step=100)
    now = run_until(lk, L.ONLINE, now, step=100)
    assert wlan.connect_calls == 2


def test_wifi_wrong_key_is_an_error_not_a_timeout() -> None:
    wlan = FakeWLAN(ssid="clinic", key="other")
    lk, _b, _w, _e = make([True], wlan=wlan)
    lk.poll(0)
    assert wlan.status() == STAT_WRONG_PASSWORD
    assert lk.poll(10) == L.BACKOFF
    assert lk.failures[L.WIFI_ERROR] == 1 and lk.last_error == STAT_WRONG_PASSWORD


def test_wifi_lost_while_online_and_recovery() -> None:
    lk, _b, wlan, events = make([True, True])
    now = run_until(lk, L.ONLINE, 0)
    wlan.cut()
    assert lk.poll(now + 10) == L.BACKOFF
    assert lk.failures[L.WIFI_LOST] == 1 and ("offline", L.WIFI_LOST, now + 10) in events
    # outage: joins keep failing (AP not found) with growing backoff
    now = run_until(lk, L.WIFI_DOWN, now + 10, step=10)
    now = run_until(lk, L.BACKOFF, now, step=10)
    assert lk.failures[L.WIFI_ERROR] == 1 and lk.backoff_ms == 2000
    wlan.restore()
    now = run_until(lk, L.ONLINE, now, step=10)
    assert lk.reconnects == 1 and events[-1] == ("online", True, now)


def test_on_online_failure_goes_to_backoff() -> None:
    wlan = FakeWLAN()
    broker = Broker([True])

    def on_online(present: bool, now: int) -> None:
        raise OSError(104)

    lk = L.Link(wlan, broker.connect, clock_rand=lambda: 0.0, on_online=on_online)
    run_until(lk, L.BACKOFF, 0)
    assert lk.failures[L.BROKER_LOST] == 1


def test_lost_reported_by_app() -> None:
    lk, broker, _w, _e = make([True])
    now = run_until(lk, L.ONLINE, 0)
    lk.lost(now + 5)
    assert lk.state == L.BACKOFF and lk.failures[L.BROKER_LOST] == 1 and broker.closed == 1
    lk.lost(now + 6)  # already down: no double count
    assert lk.failures[L.BROKER_LOST] == 1


def test_mqtt_link_wires_client() -> None:
    calls: list[str] = []

    class Client:
        def connect(self, now: int, timeout_ms: int) -> bool:
            calls.append(f"connect {timeout_ms}")
            return True

        def resend_inflight(self, now: int) -> None:
            calls.append("resend")

        def poll(self, now: int) -> None:
            calls.append("poll")

        def close(self) -> None:
            calls.append("close")

    seen: list[bool] = []
    lk = L.mqtt_link(
        FakeWLAN(),
        Client(),
        "ssid",
        "key",
        connect_timeout_ms=3000,
        on_online=lambda p, n: seen.append(p),
        clock_rand=lambda: 0.0,
    )
    run_until(lk, L.ONLINE, 0)
    lk.poll(100)
    assert calls == ["connect 3000", "resend", "poll"] and seen == [True]


class _FakeSocketModule:
    """The `socket` surface csfw.net uses; records every blocking call."""

    SOCK_STREAM = 1

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.connect_errors: list[Exception] = []

    def getaddrinfo(self, host: str, port: int, *_a: Any) -> list[Any]:
        self.calls.append("dns")
        return [(2, 1, 0, "", (host, port))]

    def socket(self) -> Any:
        mod = self

        class Sock:
            def settimeout(self, s: float) -> None:
                pass

            def connect(self, addr: Any) -> None:
                mod.calls.append("tcp")
                if mod.connect_errors:
                    raise mod.connect_errors.pop(0)

            def close(self) -> None:
                pass

        return Sock()


def test_dns_tcp_and_connect_each_get_a_poll_and_dns_is_cached() -> None:
    # issue 17 point 7: never DNS + connect in one poll (the watchdog is fed
    # between polls); DNS once, again only after MAX_CONNECT_FAILS failures
    from csfw import net

    mod = _FakeSocketModule()
    conn = net.Connector("broker.clinic", 1883, mod)
    polls: list[list[str]] = []

    def connect_mqtt(now: int) -> bool:
        conn()
        mod.calls.append("mqtt")
        return False

    wlan = FakeWLAN()
    lk = L.Link(wlan, connect_mqtt, clock_rand=lambda: 0.0, ssid="c", key="k", prepare=conn)
    now = 0
    while lk.state != L.ONLINE and now < 100:
        mod.calls.clear()
        lk.poll(now)
        if mod.calls:
            polls.append(list(mod.calls))
        now += 1
    assert polls == [["dns"], ["tcp"], ["mqtt"]]
    assert conn.resolves == 1
    # the link drops; reconnecting does not look the name up again
    lk.lost(now)
    polls.clear()
    for _ in range(3000):
        mod.calls.clear()
        lk.poll(now)
        if mod.calls:
            polls.append(list(mod.calls))
        now += 1
        if lk.state == L.ONLINE:
            break
    assert polls == [["tcp"], ["mqtt"]] and conn.resolves == 1
    # three connects in a row fail: the name is resolved again, in its own poll
    lk.lost(now)
    mod.connect_errors = [OSError(111), OSError(111), OSError(111)]
    polls.clear()
    for _ in range(100000):
        mod.calls.clear()
        lk.poll(now)
        if mod.calls:
            polls.append(list(mod.calls))
        now += 10
        if lk.state == L.ONLINE:
            break
    assert polls == [["tcp"], ["tcp"], ["tcp"], ["dns"], ["tcp"], ["mqtt"]]
    assert lk.failures[L.BROKER_UNREACHABLE] == 3 and conn.resolves == 2


def test_tls_verification_failure_is_its_own_cause() -> None:
    from csfw import net

    class Refusing:
        needs_resolve = False

        def prepare(self, now: int) -> bool:
            raise ValueError("The certificate is not correctly signed by the trusted CA")

        def discard(self) -> None:
            pass

    lk = L.Link(FakeWLAN(), lambda now: True, clock_rand=lambda: 0.0, ssid="c", key="k",
                prepare=Refusing())
    for now in range(10):
        lk.poll(now)
    assert lk.failures[L.BROKER_UNTRUSTED] >= 1 and lk.state == L.BACKOFF
    assert net.is_ip_literal("10.0.0.5") and not net.is_ip_literal("broker.clinic")
