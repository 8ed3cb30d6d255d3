# BCI oximeter codec and byte-at-a-time parser (runs on MicroPython too).
from csfw import bci
from mptest import hexbytes, raises

# (frame bytes, decode_frame result) -- bit layout per csfw/bci.py header:
# b1 = 1|beep|probe|search-long|sig, b2 = pleth, b3 = 0|PR7|searching|no-finger|bar,
# b4 = PR 6..0, b5 = SpO2
DECODE_TABLE = (
    ("86 40 08 48 61", (6, 64, 72, 97, False, False, False, False)),      # 72 bpm, 97 %
    ("C6 7F 0F 48 61", (6, 127, 72, 97, False, False, False, True)),      # beep bit
    ("85 10 42 16 5E", (5, 16, 150, 94, False, False, False, False)),     # PR bit 7: 128+22
    ("80 00 40 7F 7F", (0, 0, None, None, False, False, False, False)),   # PR 255, SpO2 127
    ("A0 00 40 7F 7F", (0, 0, None, None, True, False, False, False)),    # probe unplugged
    ("80 00 50 7F 7F", (0, 0, None, None, False, True, False, False)),    # no finger
    ("82 20 64 7F 7F", (2, 32, None, None, False, False, True, False)),   # searching
    ("92 20 04 50 60", (2, 32, 80, 96, False, False, True, False)),       # searching too long
    ("88 00 00 00 00", (8, 0, 0, 0, False, False, False, False)),         # zeros are valid numbers
    ("84 00 00 3C 65", (4, 0, 60, None, False, False, False, False)),     # SpO2 101 -> invalid
)


def test_decode_table():
    for text, expected in DECODE_TABLE:
        assert bci.decode_frame(hexbytes(text)) == expected, text


def test_encode_exact_bytes():
    assert bci.encode_frame(6, 64, 72, 97) == hexbytes("86 40 08 48 61")
    assert bci.encode_frame(6, 127, 72, 97, beep=True) == hexbytes("C6 7F 0F 48 61")
    assert bci.encode_frame(5, 16, 150, 94) == hexbytes("85 10 42 16 5E")
    assert bci.encode_frame(0, 0, None, None) == hexbytes("80 00 40 7F 7F")
    assert bci.encode_frame(0, 0, None, None, probe_unplugged=True) == hexbytes("A0 00 40 7F 7F")
    assert bci.encode_frame(0, 0, None, None, no_finger=True) == hexbytes("80 00 50 7F 7F")


def test_round_trip():
    cases = (
        (6, 64, 72, 97, False, False, False, False),
        (8, 1, 254, 100, False, False, False, True),
        (0, 0, None, None, True, False, False, False),
        (1, 100, 128, 85, False, False, True, False),
        (3, 5, 127, 0, False, True, False, False),
    )
    for case in cases:
        frame = bci.encode_frame(*case)
        assert len(frame) == 5
        assert bci.decode_frame(frame) == case


def test_pr_invalid_7bit_variant():
    frame = hexbytes("86 40 00 7F 61")  # PR 127
    assert bci.decode_frame(frame)[2] == 127
    assert bci.decode_frame(frame, pr_invalid=127)[2] is None


def test_decode_rejects_bad_frames():
    raises(ValueError, bci.decode_frame, hexbytes("86 40 08 48"))
    raises(ValueError, bci.decode_frame, hexbytes("06 40 08 48 61"))
    raises(ValueError, bci.decode_frame, hexbytes("86 C0 08 48 61"))
    raises(ValueError, bci.decode_frame, hexbytes("86 40 08 48 61 00"))


def test_encode_rejects_out_of_range():
    raises(ValueError, bci.encode_frame, 16, 0, 72, 97)
    raises(ValueError, bci.encode_frame, 6, 128, 72, 97)
    raises(ValueError, bci.encode_frame, 6, 0, 255, 97)
    raises(ValueError, bci.encode_frame, 6, 0, 72, 101)


def _feed_all(parser, data):
    done = 0
    for b in data:
        if parser.feed(b):
            done += 1
    return done


def test_parser_one_frame():
    p = bci.BciParser()
    data = hexbytes("85 10 42 16 5E")
    for b in data[:4]:
        assert not p.feed(b)
    assert p.feed(data[4])
    assert (p.sig, p.pleth, p.pr, p.spo2, p.flags) == (5, 16, 150, 94, 0)
    assert p.frames == 1 and p.resync == 0 and p.garbage == 0


def test_parser_invalid_markers_and_flags():
    p = bci.BciParser()
    assert _feed_all(p, hexbytes("A0 00 40 7F 7F")) == 1
    assert p.pr == -1 and p.spo2 == -1 and p.flags == bci.F_PROBE_OFF
    _feed_all(p, hexbytes("80 00 50 7F 7F"))
    assert p.flags == bci.F_NO_FINGER
    _feed_all(p, hexbytes("C2 20 24 7F 7F"))
    assert p.flags == bci.F_SEARCHING | bci.F_BEEP
    _feed_all(p, hexbytes("92 20 04 50 60"))
    assert p.flags == bci.F_SEARCH_TOO_LONG and p.pr == 80 and p.spo2 == 96


def test_parser_resync_after_garbage():
    p = bci.BciParser()
    # 3 stray bytes before any sync, then a truncated frame, then a good one
    data = hexbytes("12 34 56") + hexbytes("86 40 08") + hexbytes("86 40 08 48 61")
    assert _feed_all(p, data) == 1
    assert p.garbage == 3 and p.resync == 1 and p.frames == 1
    assert (p.pr, p.spo2) == (72, 97)


def test_parser_stream_of_frames():
    p = bci.BciParser()
    stream = bytearray()
    for i in range(60):
        stream.extend(bci.encode_frame(6, i, 60 + i, 90 + i % 10))
    assert _feed_all(p, stream) == 60
    assert p.pr == 119 and p.spo2 == 99 and p.pleth == 59


def test_parser_pr_invalid_127_variant():
    p = bci.BciParser(pr_invalid=127)
    _feed_all(p, hexbytes("86 40 00 7F 61"))
    assert p.pr == -1 and p.spo2 == 97
