# SunTech-style NIBP codec (runs on MicroPython too).  Frame layouts: see the
# header of csfw/suntech.py and docs/hardware-protocols.md.
from csfw import suntech
from mptest import hexbytes, raises

# every byte sequence below is quoted by a public source (docs/hardware-protocols.md)
COMMANDS = (
    (suntech.START_BP, "3A 20 A6"),
    (suntech.ABORT_BP, "3A 79 01 00 4C"),
    (suntech.GET_BP_DATA, "3A 79 03 00 4A"),
    (suntech.GET_CUFF_PRESSURE, "3A 79 05 00 48"),
)

MANUAL_BP = "3E 18 73 00 4A 00 1E 01 00 00 00 00 00 00 31 07 55 00 58 00 00 00 00 E9"
RESPONSES = (
    # (frame, data)
    ("3E 05 02 01 BA", "02 01"),                                # cuff pressure 258 mmHg
    (MANUAL_BP, MANUAL_BP[6:-3]),                               # Get BP Data, 24 bytes
    ("3E 04 4B 73", "4B"),                                      # 'K' measurement complete
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
    assert _feed(p, hexbytes("3E 05 02 01 BB")) == 0
    assert p.bad_checksum == 1
    assert _feed(p, hexbytes("3E 05 02 01 BA")) == 1
    assert p.frames == 1


def test_response_parser_garbage_and_bad_length():
    p = suntech.ResponseParser()
    assert _feed(p, hexbytes("00 FF 12")) == 0 and p.garbage == 3
    assert _feed(p, hexbytes("3E 02")) == 0 and p.bad_length == 1       # too short
    assert _feed(p, hexbytes("3E 19")) == 0 and p.bad_length == 2       # > 24 bytes
    assert _feed(p, hexbytes("3E 04 4B 73")) == 1


def test_response_parser_resets_after_gap():
    p = suntech.ResponseParser()
    # half a frame at t=1000, the rest 1 s later: dropped as a gap
    assert _feed(p, hexbytes("3E 05 02"), now=1000) == 0
    assert _feed(p, hexbytes("01 BA"), now=2000) == 0
    assert p.gaps == 1
    # a whole frame spread over 150 ms is fine
    assert _feed(p, hexbytes("3E 05 02"), now=3000) == 0
    assert _feed(p, hexbytes("01 BA"), now=3150) == 1


def test_decode_bp_data_the_manual_example():
    # issue 17 point 6: a real module's answer must decode (it was rejected)
    data = hexbytes(MANUAL_BP)[2:-1]
    assert suntech.decode_bp_data(data) == (115, 74, 88, 85, 0)
    # little-endian 16-bit SYS: 0x0104 = 260
    big = bytearray(data)
    big[0], big[1] = 0x04, 0x01
    assert suntech.decode_bp_data(bytes(big))[0] == 260
    err = bytearray(data)
    err[18] = 0x03                                   # error code byte
    assert suntech.decode_bp_data(bytes(err)) == (None, None, None, None, 3)
    enc = suntech.bp_data_payload(115, 74, 88, 85, 0, beats=0x1E, status=1)
    assert suntech.decode_bp_data(enc) == (115, 74, 88, 85, 0) and len(enc) == 21
    raises(ValueError, suntech.decode_bp_data, hexbytes("73 00 4A"))


def test_cuff_pressure():
    assert suntech.decode_cuff(hexbytes("02 01")) == 258
    assert suntech.response(suntech.cuff_payload(258)) == hexbytes("3E 05 02 01 BA")
    raises(ValueError, suntech.decode_cuff, hexbytes("02"))


def test_tick_diff_wraps():
    m = suntech.TICK_MASK
    assert suntech.tick_diff(5, m - 4) == 10
    assert suntech.tick_diff(m - 4, 5) == -10
    assert suntech.tick_diff(1000, 200) == 800


def test_command_parser_module_side():
    p = suntech.CommandParser()
    stream = hexbytes("55") + hexbytes("3A 20 A6") + hexbytes("3A 79 05 00 48")
    got = []
    for b in stream:
        if p.feed(b, 0):
            got.append(bytes(p.body[:p.n]))
    assert got == [suntech.START_BP, suntech.GET_CUFF_PRESSURE]
    assert p.garbage == 1
    assert _feed(p, hexbytes("3A 20 A7")) == 0 and p.bad_checksum == 1
    assert _feed(p, hexbytes("3A 42")) == 0 and p.unknown == 1
