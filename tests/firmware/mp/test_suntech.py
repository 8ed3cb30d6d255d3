# SunTech-style NIBP codec (runs on MicroPython too).  Frame layouts: see the
# header of csfw/suntech.py and docs/hardware-protocols.md.
from csfw import suntech
from mptest import hexbytes, raises

COMMANDS = (
    (suntech.START_BP, "3A 20 A6"),          # the documented start-BP example
    (suntech.ABORT_BP, "3A 79 01 00 4C"),
    (suntech.GET_STATUS, "3A 79 11 00 3C"),
    (suntech.GET_BP_DATA, "3A 79 03 00 4A"),
)

RESPONSES = (
    # (frame, payload)
    ("3E 04 20 9E", "20"),                                      # start ack
    ("3E 06 11 02 00 A9", "11 02 00"),                          # status: measuring
    ("3E 0D 03 78 00 50 00 5D 00 48 00 00 45",
     "03 78 00 50 00 5D 00 48 00 00"),                          # 120/80 (93), 72 bpm
)


def test_checksum_makes_sum_zero():
    assert suntech.checksum(hexbytes("3A 20")) == 0xA6
    assert suntech.checksum(b"") == 0
    for data in (hexbytes("3A 79 01 00"), hexbytes("FF FF FF"), hexbytes("01")):
        assert (sum(data) + suntech.checksum(data)) & 0xFF == 0


def test_command_exact_bytes():
    assert suntech.command(b"\x20") == bytes([0x3A, 0x20, 0xA6])
    for body, text in COMMANDS:
        assert suntech.command(body) == hexbytes(text), text


def test_response_exact_bytes():
    for frame, payload in RESPONSES:
        assert suntech.response(hexbytes(payload)) == hexbytes(frame), frame
    raises(ValueError, suntech.response, b"")


def _feed(parser, data, now=0):
    done = 0
    for b in data:
        if parser.feed(b, now):
            done += 1
    return done


def test_response_parser_table():
    for frame, payload in RESPONSES:
        p = suntech.ResponseParser()
        assert _feed(p, hexbytes(frame)) == 1
        assert bytes(p.payload[:p.n]) == hexbytes(payload)


def test_response_parser_bad_checksum_then_recovers():
    p = suntech.ResponseParser()
    assert _feed(p, hexbytes("3E 06 11 02 00 AA")) == 0
    assert p.bad_checksum == 1
    assert _feed(p, hexbytes("3E 06 11 02 00 A9")) == 1
    assert p.frames == 1


def test_response_parser_garbage_and_bad_length():
    p = suntech.ResponseParser()
    assert _feed(p, hexbytes("00 FF 12")) == 0 and p.garbage == 3
    assert _feed(p, hexbytes("3E 02")) == 0 and p.bad_length == 1       # too short
    assert _feed(p, hexbytes("3E 40")) == 0 and p.bad_length == 2       # too long
    assert _feed(p, hexbytes("3E 04 20 9E")) == 1


def test_response_parser_resets_after_gap():
    p = suntech.ResponseParser()
    # half a frame at t=1000, the rest 1 s later: dropped as a gap
    assert _feed(p, hexbytes("3E 06 11"), now=1000) == 0
    assert _feed(p, hexbytes("02 00 A9"), now=2000) == 0
    assert p.gaps == 1
    # a whole frame spread over 150 ms is fine
    assert _feed(p, hexbytes("3E 06 11"), now=3000) == 0
    assert _feed(p, hexbytes("02 00 A9"), now=3150) == 1


def test_decode_bp_data():
    payload = hexbytes("03 78 00 50 00 5D 00 48 00 00")
    assert suntech.decode_bp_data(payload) == (120, 80, 93, 72, 0)
    # little-endian: 0x0104 = 260
    assert suntech.decode_bp_data(hexbytes("03 04 01 50 00 5D 00 48 00 00"))[0] == 260
    assert suntech.decode_bp_data(hexbytes("03 00 00 00 00 00 00 00 00 03")) == \
        (None, None, None, None, suntech.E_MOTION)
    assert suntech.bp_data_payload(120, 80, 93, 72) == payload
    raises(ValueError, suntech.decode_bp_data, hexbytes("11 02 00"))
    raises(ValueError, suntech.decode_bp_data, hexbytes("03 78 00"))


def test_decode_status():
    table = (
        ("11 00 00", (suntech.ST_IDLE, 0), "idle"),
        ("11 01 00", (suntech.ST_INFLATING, 0), "inflating"),
        ("11 02 00", (suntech.ST_MEASURING, 0), "measuring"),
        ("11 03 00", (suntech.ST_DONE, 0), "done"),
        ("11 04 01", (suntech.ST_ERROR, suntech.E_CUFF_LEAK), "error"),
    )
    for text, expected, name in table:
        assert suntech.decode_status(hexbytes(text)) == expected
        assert suntech.state_name(expected[0]) == name
    raises(ValueError, suntech.decode_status, hexbytes("11 09 00"))
    raises(ValueError, suntech.decode_status, hexbytes("03 00 00"))


def test_command_parser_module_side():
    p = suntech.CommandParser()
    stream = hexbytes("55") + hexbytes("3A 20 A6") + hexbytes("3A 79 11 00 3C")
    got = []
    for b in stream:
        if p.feed(b, 0):
            got.append(bytes(p.body[:p.n]))
    assert got == [suntech.START_BP, suntech.GET_STATUS]
    assert p.garbage == 1
    assert _feed(p, hexbytes("3A 20 A7")) == 0 and p.bad_checksum == 1
    assert _feed(p, hexbytes("3A 42")) == 0 and p.unknown == 1
