# NIBP driver state machine: measurement flow, retries, timeouts, abort,
# against a scripted module speaking the SunTech Advantage protocol
# (csfw/suntech.py): 'O' ack, cuff pressure polls, unsolicited 'K'/'E',
# 24-byte BP data.
from csfw import suntech
from csfw.nibp import IDLE, MEASURING, READING, STARTING, Nibp
from mptest import TinyUart, hexbytes

ACK = suntech.char_payload(suntech.R_ACK)
ABORTED = suntech.char_payload(suntech.R_ABORTED)
DONE = suntech.char_payload(suntech.R_DONE)
ERROR = suntech.char_payload(suntech.R_ERROR)
CUFF = suntech.GET_CUFF_PRESSURE
# the Get BP Data answer quoted from the module manual in the public driver's
# test (docs/hardware-protocols.md): 115/74, MAP 88, HR 85, error 0
MANUAL_BP = "3E 18 73 00 4A 00 1E 01 00 00 00 00 00 00 31 07 55 00 58 00 00 00 00 E9"


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

    def push(self, payload):
        """A frame the module sends on its own."""
        self.uart.rx.extend(suntech.response(payload))


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


def test_full_measurement_with_the_manual_answer():
    u, m, n = _setup()
    m.replies = {suntech.START_BP: ACK, CUFF: suntech.cuff_payload(150)}
    assert n.start(0) and n.busy and n.inflating and n.state == STARTING
    assert bytes(u.tx) == hexbytes("3A 20 A6")
    assert not n.start(50)                     # already running
    assert _run(n, m, 0, 20000) == []
    assert n.state == MEASURING and n.inflating and n.cuff_mmhg == 150
    # cuff pressure polled about once a second while measuring
    assert 15 <= m.seen.count(CUFF) <= 21
    assert hexbytes("3A 79 05 00 48") in u.tx
    # the manual's frame, byte for byte (response() rebuilds the same checksum)
    assert suntech.response(hexbytes(MANUAL_BP)[2:-1]) == hexbytes(MANUAL_BP)
    m.replies[suntech.GET_BP_DATA] = hexbytes(MANUAL_BP)[2:-1]
    m.push(DONE)                                # the module: measurement complete
    res = [r for _, r in _run(n, m, 20100, 23000)]
    assert res == [(True, 115, 74, 88, 85, 0)]
    assert not n.busy and not n.inflating and n.state == IDLE
    assert n.health(23000) == "ok"


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
    m.replies = {suntech.START_BP: ACK}
    _run(n, m, 1600, 2500)
    assert n.state == MEASURING and n.health(2500) == "ok"


def test_module_error_gives_the_error_code_of_its_bp_data():
    _u, m, n = _setup()
    m.replies = {suntech.START_BP: ACK, CUFF: suntech.cuff_payload(90),
                 suntech.GET_BP_DATA: suntech.bp_data_payload(0, 0, 0, 0, 0x0A)}
    n.start(0)
    _run(n, m, 0, 2000)
    m.push(ERROR)
    res = _run(n, m, 2100, 4000)
    assert [r for _, r in res] == [(False, None, None, None, None, 0x0A)]
    assert not n.inflating and n.state == IDLE
    assert n.health(4000) == "ok"               # the module answered: it is healthy


def test_error_without_a_code_is_still_an_error():
    _u, m, n = _setup()
    m.replies = {suntech.START_BP: ACK, suntech.GET_BP_DATA: suntech.bp_data_payload(120, 80, 93, 72)}
    n.start(0)
    _run(n, m, 0, 500)
    m.push(ERROR)
    res = _run(n, m, 600, 2000)
    assert [r for _, r in res] == [(False, None, None, None, None, suntech.E_MODULE_ERROR)]


def test_bp_data_error_code():
    _u, m, n = _setup()
    m.replies = {suntech.START_BP: ACK,
                 suntech.GET_BP_DATA: suntech.bp_data_payload(0, 0, 0, 0, 0x03)}
    n.start(0)
    _run(n, m, 0, 500)
    m.push(DONE)
    res = _run(n, m, 600, 3000)
    assert [r for _, r in res] == [(False, None, None, None, None, 0x03)]


def test_measurement_over_150_s_is_aborted():
    _u, m, n = _setup()
    m.replies = {suntech.START_BP: ACK, CUFF: suntech.cuff_payload(120),
                 suntech.ABORT_BP: ABORTED}
    n.start(0)
    res = _run(n, m, 0, 152000, step=500)
    assert len(res) == 1
    t, r = res[0]
    assert 150000 < t <= 151000
    assert r == (False, None, None, None, None, suntech.E_BOX_TIMEOUT)
    assert suntech.ABORT_BP in m.seen and not n.inflating and n.state == IDLE


def test_stop_aborts_without_result():
    _u, m, n = _setup()
    m.replies = {suntech.START_BP: ACK, CUFF: suntech.cuff_payload(100),
                 suntech.ABORT_BP: ABORTED}
    n.start(0)
    _run(n, m, 0, 3000)
    n.stop(3050)
    assert not n.inflating
    assert _run(n, m, 3100, 4000) == []
    assert m.seen[-1] == suntech.ABORT_BP and n.state == IDLE and not n.busy


def test_stop_retries_abort_when_unanswered():
    _u, m, n = _setup()
    m.replies = {suntech.START_BP: ACK}
    n.start(0)
    _run(n, m, 0, 500)
    n.stop(600)
    res = _run(n, m, 600, 6000)
    assert res == []                             # user stop: no error result
    assert m.seen.count(suntech.ABORT_BP) == 4
    assert n.state == IDLE and n.health(6000) == "silent"


def test_interval_starts_measurements():
    _u, m, n = _setup()
    m.replies = {CUFF: suntech.cuff_payload(0), suntech.START_BP: ACK}
    n.set_interval(60, 0)
    _run(n, m, 0, 59900)
    assert suntech.START_BP not in m.seen
    _run(n, m, 60000, 60000)
    assert m.seen[-1] == suntech.START_BP and n.inflating
    n.stop(60100)
    n.set_interval(0, 60200)
    m.replies[suntech.ABORT_BP] = ABORTED
    _run(n, m, 60200, 200000, step=1000)
    assert m.seen.count(suntech.START_BP) == 1


def test_idle_ping_tracks_health():
    _u, m, n = _setup()
    assert n.health(0) == "silent"               # nothing heard yet
    m.replies = {CUFF: suntech.cuff_payload(0)}
    _run(n, m, 0, 500)
    assert n.health(500) == "ok" and m.seen == [CUFF]
    m.replies = {}
    _run(n, m, 600, 15000)
    assert n.health(15000) == "silent"


def test_corrupt_answers_make_health_error():
    _u, m, n = _setup()
    m.replies = {suntech.START_BP: ACK}
    m.corrupt = True
    n.start(0)
    res = _run(n, m, 0, 5000)
    assert [r[5] for _, r in res] == [suntech.E_NO_RESPONSE]
    assert n.health(5000) == "error"
    assert n.counters()["bad_checksum"] == 4


def test_reading_state_reached():
    _u, m, n = _setup()
    m.replies = {suntech.START_BP: ACK}
    n.start(0)
    _run(n, m, 0, 1500)
    m.push(DONE)
    _run(n, m, 1600, 1700)
    assert n.state == READING and n.inflating


def test_parser_at_a_year_of_uptime():
    # issue 17 point 4: the byte parser runs on a 30-bit tick, so a frame
    # split across the tick wrap still completes and a stalled one is dropped
    _u, m, n = _setup()
    year = 365 * 24 * 3600 * 1000
    m.replies = {suntech.START_BP: ACK}
    n.start(year)
    m.step(year)
    assert n.poll(year + 10) is None and n.state == MEASURING
    p = suntech.ResponseParser()
    wrap = suntech.TICK_MASK - 50
    frame = hexbytes(MANUAL_BP)
    for i in range(12):
        assert not p.feed(frame[i], wrap)
    done = False
    for i in range(12, len(frame)):
        done = p.feed(frame[i], (wrap + 100) & suntech.TICK_MASK)
    assert done and p.gaps == 0
    for i in range(12):
        p.feed(frame[i], 10)
    for i in range(12, len(frame)):
        assert not p.feed(frame[i], 400)        # 390 ms later: a gap
    assert p.gaps == 1
