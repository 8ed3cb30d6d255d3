# Oximeter driver: UART draining, summary states, no_data timing, health.
from csfw import bci, contract
from csfw.oximeter import RUN_FRAMES, Oximeter
from mptest import TinyUart, hexbytes


def _make():
    u = TinyUart()
    return u, Oximeter(u)


def _run_of(frame, n=RUN_FRAMES):
    """A plausible stream: n frames back to back (BCI has no checksum)."""
    return frame * n


def test_no_data_before_any_frame():
    _u, oxi = _make()
    oxi.poll(0)
    assert oxi.summary(0) == (None, None, 0, contract.ST_NO_DATA)
    assert oxi.health(0) == "silent"


def test_ok_reading():
    u, oxi = _make()
    u.push(_run_of(bci.encode_frame(6, 64, 72, 97)))
    oxi.poll(1000)
    assert oxi.summary(1000) == (97, 72, 6, contract.ST_OK)
    assert oxi.health(1000) == "ok"
    assert oxi.counters()["frames"] == RUN_FRAMES


def test_a_short_run_is_not_believed():
    u, oxi = _make()
    u.push(_run_of(bci.encode_frame(6, 64, 72, 97), RUN_FRAMES - 1))
    oxi.poll(1000)
    assert oxi.summary(1000) == (None, None, 0, contract.ST_NO_DATA)
    assert oxi.counters()["implausible"] == RUN_FRAMES - 1


def test_sensor_states_table():
    enc = bci.encode_frame
    table = (
        (enc(0, 0, None, None, probe_unplugged=True), (None, None, 0, contract.ST_PROBE_OFF)),
        (enc(0, 0, None, None, no_finger=True), (None, None, 0, contract.ST_NO_FINGER)),
        (enc(2, 30, None, None, searching=True), (None, None, 2, contract.ST_SEARCHING)),
        # numbers present but the module is still searching: not a reading
        (enc(3, 30, 80, 95, searching=True), (None, None, 3, contract.ST_SEARCHING)),
        # no flags but invalid markers: searching
        (enc(4, 30, None, 95), (None, None, 4, contract.ST_SEARCHING)),
        (enc(4, 30, 80, None), (None, None, 4, contract.ST_SEARCHING)),
        (enc(7, 30, 150, 88), (88, 150, 7, contract.ST_OK)),
        # byte 1 bit 5 is "probe unplugged" in one source and "SpO2
        # decreasing" in another: valid numbers during a desaturation are
        # reported, not withheld (issue 17 point 6)
        (enc(6, 30, 118, 84, probe_unplugged=True), (84, 118, 6, contract.ST_OK)),
        (bytes((0x80 | 0x10 | 6, 30, 3, 118 & 0x7F, 84)), (84, 118, 6, contract.ST_OK)),
    )
    for frame, expected in table:
        u, oxi = _make()
        u.push(_run_of(frame))
        oxi.poll(5000)
        assert oxi.summary(5000) == expected, expected


def test_latest_frame_wins():
    u, oxi = _make()
    u.push(_run_of(bci.encode_frame(6, 64, 72, 97)))
    u.push(bci.encode_frame(6, 64, 75, 95))
    oxi.poll(10)
    assert oxi.summary(10)[:2] == (95, 75)


def test_no_data_after_2000_ms_silence():
    u, oxi = _make()
    u.push(_run_of(bci.encode_frame(6, 64, 72, 97)))
    oxi.poll(10000)
    for now, st, health in ((11000, contract.ST_OK, "ok"),
                            (12000, contract.ST_OK, "ok"),
                            (12001, contract.ST_NO_DATA, "silent")):
        oxi.poll(now)
        assert oxi.summary(now)[3] == st, now
        assert oxi.health(now) == health, now
    # the module comes back
    u.push(_run_of(bci.encode_frame(6, 64, 72, 97)))
    oxi.poll(13000)
    assert oxi.summary(13000)[3] == contract.ST_OK and oxi.health(13000) == "ok"


def test_garbage_only_is_error_health():
    u, oxi = _make()
    u.push(bci.encode_frame(6, 64, 72, 97))
    oxi.poll(0)
    # wrong baud rate: bytes arrive but never a frame
    for now in range(500, 4001, 500):
        u.push(hexbytes("12 34 56 07"))
        oxi.poll(now)
    assert oxi.health(4000) == "error"
    assert oxi.summary(4000)[3] == contract.ST_NO_DATA
    assert oxi.counters()["garbage"] > 0


def test_resync_mid_stream():
    u, oxi = _make()
    u.push(hexbytes("86 40"))           # truncated frame
    u.push(_run_of(bci.encode_frame(6, 64, 72, 97)))
    oxi.poll(100)
    c = oxi.counters()
    assert c["resync"] == 1 and c["frames"] == RUN_FRAMES
    assert oxi.summary(100)[3] == contract.ST_OK


def test_poll_is_bounded_and_catches_up():
    u, oxi = _make()
    for _ in range(200):                # 1000 bytes > 8 x 64 per poll
        u.push(bci.encode_frame(6, 64, 72, 97))
    oxi.poll(0)
    assert u.any() > 0 and oxi.backlog == 1
    oxi.poll(1)
    assert u.any() == 0 and oxi.counters()["frames"] == 200


def test_start_up_is_not_a_module_fault():
    # the first frames after the module starts talking are still being
    # checked: no "error" health (a technical alarm) for NO_DATA_MS
    u, oxi = _make()
    u.push(_run_of(bci.encode_frame(6, 64, 72, 97), 3))
    oxi.poll(0)
    assert oxi.health(100) == "ok" and oxi.summary(100)[3] == contract.ST_NO_DATA
    for now in range(500, 3001, 500):
        u.push(hexbytes("12 34 56 07"))
        oxi.poll(now)
    assert oxi.health(3000) == "error"
