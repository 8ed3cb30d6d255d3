# NIBP driver state machine: measurement flow, retries, timeouts, abort.
from csfw import suntech
from csfw.nibp import IDLE, MEASURING, READING, STARTING, Nibp
from mptest import TinyUart, hexbytes

START = suntech.command(suntech.START_BP)
ABORT = suntech.command(suntech.ABORT_BP)
STATUS = suntech.command(suntech.GET_STATUS)
BP_DATA = suntech.command(suntech.GET_BP_DATA)


class Module:
    """Scripted module: answers each command with the frame from `replies`
    (a dict cmd-body -> payload, or None to stay quiet)."""

    def __init__(self, uart):
        self.uart = uart
        self.parser = suntech.CommandParser()
        self.pos = 0
        self.replies = {}
        self.seen = []
        self.corrupt = False

    def step(self, now):
        tx = self.uart.tx
        while self.pos < len(tx):
            b = tx[self.pos]
            self.pos += 1
            if self.parser.feed(b, now):
                body = bytes(self.parser.body[:self.parser.n])
                self.seen.append(body)
                payload = self.replies.get(body)
                if payload is not None:
                    frame = bytearray(suntech.response(payload))
                    if self.corrupt:
                        frame[-1] ^= 1
                    self.uart.rx.extend(frame)


def _setup():
    u = TinyUart()
    m = Module(u)
    return u, m, Nibp(u)


def _run(nibp, module, t0, t1, step=100):
    """Poll from t0 to t1 inclusive; return [(now, result)] for non-None results."""
    out = []
    now = t0
    while now <= t1:
        r = nibp.poll(now)
        if r is not None:
            out.append((now, r))
        module.step(now)
        now += step
    return out


def test_full_measurement():
    u, m, n = _setup()
    m.replies = {suntech.START_BP: b"\x20",
                 suntech.GET_STATUS: suntech.status_payload(suntech.ST_INFLATING)}
    assert n.start(0) and n.busy and n.inflating and n.state == STARTING
    assert bytes(u.tx) == hexbytes("3A 20 A6")
    assert not n.start(50)                     # already running
    assert _run(n, m, 0, 5000) == []
    assert n.state == MEASURING and n.inflating
    m.replies[suntech.GET_STATUS] = suntech.status_payload(suntech.ST_MEASURING)
    assert _run(n, m, 5100, 20000) == []
    assert n.inflating
    m.replies[suntech.GET_STATUS] = suntech.status_payload(suntech.ST_DONE)
    m.replies[suntech.GET_BP_DATA] = suntech.bp_data_payload(120, 80, 93, 72)
    res = _run(n, m, 20100, 23000)
    assert len(res) == 1 and res[0][1] == (True, 120, 80, 93, 72, 0)
    assert not n.busy and not n.inflating and n.state == IDLE
    assert n.health(23000) == "ok"
    # status polled about once a second while measuring, then data read once
    assert 15 <= m.seen.count(suntech.GET_STATUS) <= 25
    assert m.seen.count(suntech.GET_BP_DATA) == 1


def test_no_answer_retries_then_error_and_silent():
    _u, m, n = _setup()
    assert n.start(0)
    res = _run(n, m, 0, 5000)
    # first send + 3 retries at 1 s intervals, then an error result
    assert m.seen == [suntech.START_BP] * 4
    assert len(res) == 1
    t, r = res[0]
    assert t == 4000 and r == (False, None, None, None, None, suntech.E_NO_RESPONSE)
    assert n.health(t) == "silent" and not n.inflating and not n.busy


def test_late_answer_after_retry_is_accepted():
    _u, m, n = _setup()
    n.start(0)
    _run(n, m, 0, 1500)                         # quiet: one retry sent at 1000
    m.replies = {suntech.START_BP: b"\x20"}
    _run(n, m, 1600, 2500)
    assert n.state == MEASURING and n.health(2500) == "ok"


def test_module_error_status_gives_error_result():
    _u, m, n = _setup()
    m.replies = {suntech.START_BP: b"\x20",
                 suntech.GET_STATUS: suntech.status_payload(suntech.ST_ERROR, suntech.E_CUFF_LEAK)}
    n.start(0)
    res = _run(n, m, 0, 3000)
    assert [r for _, r in res] == [(False, None, None, None, None, suntech.E_CUFF_LEAK)]
    assert not n.inflating and n.state == IDLE
    assert n.health(3000) == "ok"               # the module answered: it is healthy


def test_bp_data_error_code():
    _u, m, n = _setup()
    m.replies = {suntech.START_BP: b"\x20",
                 suntech.GET_STATUS: suntech.status_payload(suntech.ST_DONE),
                 suntech.GET_BP_DATA: suntech.bp_data_payload(0, 0, 0, 0, suntech.E_MOTION)}
    n.start(0)
    res = _run(n, m, 0, 3000)
    assert [r for _, r in res] == [(False, None, None, None, None, suntech.E_MOTION)]


def test_measurement_over_150_s_is_aborted():
    _u, m, n = _setup()
    m.replies = {suntech.START_BP: b"\x20",
                 suntech.GET_STATUS: suntech.status_payload(suntech.ST_MEASURING),
                 suntech.ABORT_BP: b"\x01"}
    n.start(0)
    res = _run(n, m, 0, 152000, step=500)
    assert len(res) == 1
    t, r = res[0]
    assert 150000 < t <= 151000
    assert r == (False, None, None, None, None, suntech.E_BOX_TIMEOUT)
    assert suntech.ABORT_BP in m.seen and not n.inflating and n.state == IDLE


def test_stop_aborts_without_result():
    _u, m, n = _setup()
    m.replies = {suntech.START_BP: b"\x20",
                 suntech.GET_STATUS: suntech.status_payload(suntech.ST_INFLATING),
                 suntech.ABORT_BP: b"\x01"}
    n.start(0)
    _run(n, m, 0, 3000)
    n.stop(3050)
    assert not n.inflating
    assert _run(n, m, 3100, 4000) == []
    assert m.seen[-1] == suntech.ABORT_BP and n.state == IDLE and not n.busy


def test_stop_retries_abort_when_unanswered():
    _u, m, n = _setup()
    m.replies = {suntech.START_BP: b"\x20"}
    n.start(0)
    _run(n, m, 0, 500)
    n.stop(600)
    res = _run(n, m, 600, 6000)
    assert res == []                             # user stop: no error result
    assert m.seen.count(suntech.ABORT_BP) == 4
    assert n.state == IDLE and n.health(6000) == "silent"


def test_interval_starts_measurements():
    _u, m, n = _setup()
    m.replies = {suntech.GET_STATUS: suntech.status_payload(suntech.ST_IDLE),
                 suntech.START_BP: b"\x20"}
    n.set_interval(60, 0)
    _run(n, m, 0, 59900)
    assert suntech.START_BP not in m.seen
    _run(n, m, 60000, 60000)
    assert m.seen[-1] == suntech.START_BP and n.inflating
    n.stop(60100)
    n.set_interval(0, 60200)
    m.replies[suntech.ABORT_BP] = b"\x01"
    _run(n, m, 60200, 200000, step=1000)
    assert m.seen.count(suntech.START_BP) == 1


def test_idle_ping_tracks_health():
    _u, m, n = _setup()
    assert n.health(0) == "silent"               # nothing heard yet
    m.replies = {suntech.GET_STATUS: suntech.status_payload(suntech.ST_IDLE)}
    _run(n, m, 0, 500)
    assert n.health(500) == "ok" and m.seen == [suntech.GET_STATUS]
    m.replies = {}
    _run(n, m, 600, 15000)
    assert n.health(15000) == "silent"


def test_corrupt_answers_make_health_error():
    _u, m, n = _setup()
    m.replies = {suntech.START_BP: b"\x20"}
    m.corrupt = True
    n.start(0)
    res = _run(n, m, 0, 5000)
    assert [r[5] for _, r in res] == [suntech.E_NO_RESPONSE]
    assert n.health(5000) == "error"
    assert n.counters()["bad_checksum"] == 4


def test_reading_state_reached():
    _u, m, n = _setup()
    m.replies = {suntech.START_BP: b"\x20",
                 suntech.GET_STATUS: suntech.status_payload(suntech.ST_DONE)}
    n.start(0)
    _run(n, m, 0, 1500)
    assert n.state == READING and n.inflating
