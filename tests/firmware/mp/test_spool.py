# Store-and-forward spool (csfw.spool): codec, RAM ring, segments, cursor,
# capacity, overflow and power cuts.  Runs on CPython (pytest) and on the
# MicroPython WebAssembly port (tools/mpvm/run_tests.mjs).
import os

from csfw import spool
from csfw.spool import Spool, decode_record, encode_record, nibp_record, vitals_record
from mptest import fresh_dir


def _v(i, sync=1):
    # 1 Hz vitals, t = 1.79e12 + i s, values cycle through the ranges
    return vitals_record(3, i, 5000 + i * 1000, sync, 90 + i % 11,
                         60 + i % 200, i % 16, spool.STATES[i % 5], i % 2)


def _n(i, ok=True):
    return nibp_record(3, 100000 + i, 5000 + i * 1000, 1, ok, 120 + i % 100, 80, 93, 70, 0)


def _drain(sp, batch=7):
    out = []
    while True:
        got = sp.next_batch(batch)
        if not got:
            return out
        out.extend(got)
        assert sp.commit(len(got)) == len(got)


def _seg_files(path):
    return sorted(n for n in os.listdir(path) if n.endswith(".sp"))


def test_codec_round_trip_and_sizes():
    v = vitals_record(65535, 0xFFFFFF, 0xFFFFFFFF, True, 100, 300, 15, "no_data", 1)
    n = nibp_record(2, 123456, 99, False, True, 300, 0, 155, None, 7)
    bv = encode_record(v)
    bn = encode_record(n)
    assert len(bv) == spool.VITALS_LEN == 16
    assert len(bn) == spool.NIBP_LEN == 21
    assert decode_record(bv) == v
    assert decode_record(bn) == n
    nulls = vitals_record(0, 0, 0, False, None, None, 0, "probe_off")
    assert decode_record(encode_record(nulls)) == nulls
    err = nibp_record(1, 5, 6, True, False, None, None, None, None, 42)
    assert decode_record(encode_record(err)) == err
    # exact bytes: head (kind 1, sync, cuff) st<<4|sig boot seq(24) up spo2 pr crc
    b = encode_record(vitals_record(1, 0x010203, 0x04050607, True, 97, 72, 5, "ok", 0))
    assert b[:14] == bytes([0x11, 0x05, 0, 1, 1, 2, 3, 4, 5, 6, 7, 97, 0, 72])


def test_decode_rejects_torn_and_corrupt():
    b = encode_record(_v(1))
    for cut in range(len(b)):
        assert decode_record(b[:cut]) is None
    for i in range(len(b)):
        bad = bytearray(b)
        bad[i] ^= 0x40
        assert decode_record(bytes(bad)) is None
    assert decode_record(b"\x00" * 16) is None


def test_ram_ring_order_and_commit_after_puback():
    sp = Spool(fresh_dir("ram"), os, ram_records=8)
    for i in range(5):
        sp.push(_v(i))
    assert sp.depth == 5 and sp.ram_depth == 5
    batch = sp.next_batch(3)
    assert batch == [_v(0), _v(1), _v(2)]
    # no PUBACK yet: the same records come again
    assert sp.next_batch(3) == batch
    assert sp.commit(2) == 2  # only two were acknowledged
    assert sp.peek() == _v(2)
    assert _drain(sp) == [_v(2), _v(3), _v(4)]
    assert sp.depth == 0 and sp.dropped == 0
    assert sp.commit(5) == 0


def test_spills_to_flash_in_order_across_segments_and_reboot():
    d = fresh_dir("order")
    sp = Spool(d, os, ram_records=16, max_bytes=8 * 512, seg_bytes=512)
    recs = []
    for i in range(150):
        rec = _n(i) if i % 30 == 0 else _v(i)
        recs.append(rec)
        sp.push(rec)
    assert sp.depth == 150 and sp.dropped == 0
    assert len(_seg_files(d)) > 2
    # read part, acknowledge it, then "reboot" (RAM contents flushed first)
    first = sp.next_batch(40)
    assert first == recs[:40]
    sp.commit(40)
    sp.flush()
    sp2 = Spool(d, os, ram_records=16, max_bytes=8 * 512, seg_bytes=512)
    assert sp2.depth == 110
    assert _drain(sp2) == recs[40:]
    assert sp2.depth == 0
    # fully read segments are deleted, except the one being written
    assert len(_seg_files(d)) <= 1


def test_peek_and_commit_span_flash_and_ram():
    sp = Spool(fresh_dir("span"), os, ram_records=4, max_bytes=4096, seg_bytes=1024)
    for i in range(10):
        sp.push(_v(i))
    assert sp.ram_depth < 10 and sp.depth == 10
    assert sp.peek() == _v(0) and sp.peek(9) == _v(9) and sp.peek(10) is None
    assert sp.next_batch(20) == [_v(i) for i in range(10)]
    assert sp.commit(7) == 7
    assert sp.next_batch(20) == [_v(7), _v(8), _v(9)]
    assert sp.pop() == _v(7)
    assert sp.commit(10) == 2
    assert sp.depth == 0 and sp.pop() is None


def test_uncommitted_batch_is_replayed_after_reboot():
    d = fresh_dir("nocommit")
    sp = Spool(d, os, ram_records=4, max_bytes=4096, seg_bytes=1024)
    for i in range(20):
        sp.push(_v(i))
    sp.flush()
    assert sp.next_batch(5) == [_v(i) for i in range(5)]
    # power cut before the PUBACK: nothing committed
    sp2 = Spool(d, os, ram_records=4, max_bytes=4096, seg_bytes=1024)
    assert _drain(sp2) == [_v(i) for i in range(20)]


def test_capacity_eight_hours_fit_in_512k():
    # the shipped sizes (512 KB of 32 KB segments, 64 records in RAM) on the
    # real code path: 1 Hz vitals + NIBP every 5 min until the spool is full
    # and drops its oldest segment; right after that drop (its lowest point)
    # it still holds at least the last 8 h, and a reboot finds them all
    d = fresh_dir("cap8h")
    sp = Spool(d, os, ram_records=64, max_bytes=512 * 1024, seg_bytes=32 * 1024)
    assert sp.max_bytes == 512 * 1024  # not shrunk by the filesystem budget
    eight_hours = 8 * 3600 + 8 * 3600 // 300  # records
    i = 0
    pushed = 0
    while sp.dropped == 0:
        sp.push(_v(i))
        pushed += 1
        if i % 300 == 0:
            sp.push(_n(i))
            pushed += 1
        i += 1
        assert i < 12 * 3600, "never full"
    assert pushed > eight_hours
    assert sp.depth == pushed - sp.dropped
    assert sp.depth >= eight_hours, (sp.depth, eight_hours)
    sp.flush()
    sp2 = Spool(d, os, ram_records=64, max_bytes=512 * 1024, seg_bytes=32 * 1024)
    assert sp2.depth == sp.depth


def test_capacity_full_run_small_segments():
    # the same ratio at 1/16 scale on the real code path: 30 min of vitals +
    # NIBP every 5 min into 32 KB of 2 KB segments, nothing dropped
    d = fresh_dir("cap")
    sp = Spool(d, os, ram_records=64, max_bytes=32 * 1024, seg_bytes=2 * 1024)
    recs = []
    for i in range(1800):
        rec = _v(i)
        sp.push(rec)
        recs.append(rec)
        if i % 300 == 0:
            rec = _n(i)
            sp.push(rec)
            recs.append(rec)
    sp.flush()
    assert sp.dropped == 0 and sp.depth == len(recs)
    total = 0
    for name in _seg_files(d):
        total += os.stat(d + "/" + name)[6]
    assert total <= 32 * 1024
    sp2 = Spool(d, os, ram_records=64, max_bytes=32 * 1024, seg_bytes=2 * 1024)
    assert _drain(sp2, 50) == recs


def test_overflow_drops_oldest_and_counts():
    d = fresh_dir("over")
    seg = 256  # 16 vitals per segment
    sp = Spool(d, os, ram_records=8, max_bytes=4 * seg, seg_bytes=seg)
    n = 200
    for i in range(n):
        sp.push(_v(i))
    sp.flush()
    assert len(_seg_files(d)) <= 4
    assert sp.dropped > 0
    assert sp.depth + sp.dropped == n
    left = sp.depth
    got = _drain(sp)
    assert len(got) == left and sp.depth == 0
    # what is left is the newest, in order, with no gap
    assert got == [_v(i) for i in range(n - len(got), n)]
    assert len(got) + sp.dropped == n
    total = 0
    for name in _seg_files(d):
        total += os.stat(d + "/" + name)[6]
    assert total <= 4 * seg


def test_ram_only_overflow_when_flash_fails():
    class NoFlash:
        def __init__(self):
            self.made = []

        def stat(self, p):
            return (0x4000, 0, 0, 0, 0, 0, 0, 0, 0, 0)

        def mkdir(self, p):
            self.made.append(p)

        def listdir(self, p):
            return []

        def open(self, p, mode="r"):
            raise OSError(28)

        def remove(self, p):
            raise OSError(2)

        def rename(self, a, b):
            raise OSError(28)

    nf = NoFlash()
    sp = Spool("/spool", nf, ram_records=4, opener=nf.open)
    for i in range(10):
        sp.push(_v(i))
    assert sp.depth == 4 and sp.dropped == 6
    assert sp.write_errors > 0
    assert sp.next_batch(10) == [_v(6), _v(7), _v(8), _v(9)]


def test_power_cut_at_every_byte_of_a_record():
    # Earlier records are on flash; the next record's write is cut after k
    # bytes (k = 0 .. len-1).  After "reboot" every earlier record reads back,
    # the torn one is skipped, and records written afterwards follow in order.
    for torn_kind in (0, 1):
        torn = encode_record(_n(99) if torn_kind else _v(99))
        for k in range(len(torn)):
            d = fresh_dir("cut")
            sp = Spool(d, os, ram_records=4, max_bytes=8192, seg_bytes=1024)
            for i in range(10):
                sp.push(_v(i))
            sp.flush()
            names = _seg_files(d)
            with open(d + "/" + names[-1], "ab") as f:
                f.write(torn[:k])
            sp2 = Spool(d, os, ram_records=4, max_bytes=8192, seg_bytes=1024)
            assert sp2.depth == 10, (k, sp2.depth)
            for i in range(100, 105):
                sp2.push(_v(i))
            sp2.flush()
            sp3 = Spool(d, os, ram_records=4, max_bytes=8192, seg_bytes=1024)
            want = [_v(i) for i in range(10)] + [_v(i) for i in range(100, 105)]
            assert _drain(sp3) == want, k


def test_corrupt_record_in_the_middle_is_skipped():
    d = fresh_dir("corrupt")
    sp = Spool(d, os, ram_records=4, max_bytes=8192, seg_bytes=4096)
    for i in range(10):
        sp.push(_v(i))
    sp.flush()
    path = d + "/" + _seg_files(d)[0]
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[16 * 4 + 5] ^= 0xFF  # damage record 4
    with open(path, "wb") as f:
        f.write(data)
    sp2 = Spool(d, os, ram_records=4, max_bytes=8192, seg_bytes=4096)
    assert sp2.depth == 9
    got = _drain(sp2)
    assert got == [_v(i) for i in range(10) if i != 4]


def test_corrupt_cursor_replays_from_oldest():
    d = fresh_dir("cursor")
    sp = Spool(d, os, ram_records=4, max_bytes=8192, seg_bytes=4096)
    for i in range(8):
        sp.push(_v(i))
    sp.flush()
    sp.next_batch(3)
    sp.commit(3)
    with open(d + "/cursor", "wb") as f:
        f.write(b"\x00\x01garbage!")
    sp2 = Spool(d, os, ram_records=4, max_bytes=8192, seg_bytes=4096)
    assert _drain(sp2) == [_v(i) for i in range(8)]


def test_sequential_peek_reads_one_record_each_across_commits_and_drops():
    # the app re-sends from index k while commits (watermark) move the head
    d = fresh_dir("seqpeek")
    sp = Spool(d, os, ram_records=8, max_bytes=4 * 512, seg_bytes=512)
    recs = [_n(i) if i % 7 == 0 else _v(i) for i in range(100)]
    for rec in recs:
        sp.push(rec)
    assert sp.dropped == 0 and sp.depth == 100
    read = [0]
    real_scan = sp._scan

    def counting_scan(*args):
        res = real_scan(*args)
        read[0] += res[1]
        return res

    sp._scan = counting_scan
    for i in range(40):
        assert sp.peek(i) == recs[i]
    assert read[0] == 40  # one record read per peek (not i + 1)
    assert sp.commit(25) == 25  # confirmed: the head moves, the read position does not
    for i in range(15, 60):  # records 40.. are now at index 15..
        assert sp.peek(i) == recs[25 + i]
    assert sp.peek(100) is None and sp.peek(74) == recs[99] and sp.peek(0) == recs[25]
    # a full flash drops the oldest segment: indices move with the head
    for i in range(100, 180):
        sp.push(_v(i))
    assert sp.dropped > 0
    first = 25 + sp.dropped
    assert sp.peek(0) == (recs + [_v(i) for i in range(100, 180)])[first]
    everything = recs + [_v(i) for i in range(100, 180)]
    assert [sp.peek(i) for i in range(sp.depth)] == everything[first:]


def test_uptime_and_seq_past_49_7_days_survive_the_spool():
    # issue 17 point 4: `up` was masked to 32 bits, so a replay after 49.7
    # days of uptime carried the wrong time
    year = 365 * 24 * 3600 * 1000
    for up in (0xFFFFFFFF + 1, year, year + 123456789, (63 << 32) - 1):
        for seq in (0, 0xFFFFFF + 1, 0x3FFFFFF):
            for pr in (None, 0, 72, 300):
                v = vitals_record(9, seq, up, True, 95, pr, 6, "ok", 0)
                assert decode_record(encode_record(v)) == v, (up, seq, pr)
                n = nibp_record(9, seq, up, True, True, 120, 80, 93, pr, 0)
                assert decode_record(encode_record(n)) == n, (up, seq, pr)
    try:
        encode_record(vitals_record(9, 1, 63 << 32, True, 95, 70, 6, "ok", 0))
        raise AssertionError("up beyond 8.5 years must be refused")
    except ValueError:
        pass


def test_record_of_the_older_layout_still_reads():
    # before issue 17 a missing pulse rate was 0xFFFF and up had 32 bits
    old = bytearray(encode_record(vitals_record(1, 5, 1000, True, None, None, 0, "probe_off")))
    old[12], old[13] = 0xFF, 0xFF
    crc = spool._crc16(old, 14)
    old[14], old[15] = crc >> 8, crc & 0xFF
    assert decode_record(bytes(old)) == vitals_record(1, 5, 1000, True, None, None, 0, "probe_off")


def test_replay_after_a_year_of_uptime_rebuilds_t_exactly():
    year = 365 * 24 * 3600 * 1000
    d = fresh_dir("spool_year")
    sp = Spool(d, os, ram_records=8, max_bytes=64 * 1024, seg_bytes=4 * 1024)
    recs = [vitals_record(2, 10 + i, year + i * 1000, True, 90, 70, 6, "ok", 0)
            for i in range(320)]
    for r in recs:
        sp.push(r)
    sp.flush()
    again = Spool(d, os, ram_records=8, max_bytes=64 * 1024, seg_bytes=4 * 1024)
    assert _drain(again) == recs  # 320 of 320 with the exact uptime


class QuotaFs:
    """A filesystem of `quota` bytes over a real folder, as littlefs behaves:
    a file's appended bytes are committed on close(), and close() raises
    OSError(28) (ENOSPC) when they do not fit (the file keeps its last
    committed state).  statvfs reports 4 KB blocks."""

    def __init__(self, quota):
        self.quota = quota

    def used(self, d):
        total = 0
        for name in os.listdir(d):
            total += os.stat(d + "/" + name)[6]
        return total

    def statvfs(self, path):
        free = max(0, self.quota - self.used(path)) // 4096
        return (4096, 4096, self.quota // 4096, free, free, 0, 0, 0, 0, 255)

    def stat(self, p):
        return os.stat(p)

    def mkdir(self, p):
        os.mkdir(p)

    def listdir(self, p):
        return os.listdir(p)

    def remove(self, p):
        os.remove(p)

    def rename(self, a, b):
        os.rename(a, b)

    def open(self, path, mode="r"):
        fs = self

        class Pending:
            def __init__(self):
                self.buf = bytearray()

            def write(self, data):
                self.buf.extend(data)
                return len(data)

            def close(self):
                d = path[:path.rfind("/")]
                if fs.used(d) + len(self.buf) > fs.quota:
                    raise OSError(28)
                with open(path, mode) as f:
                    f.write(self.buf)

        if "a" in mode or "w" in mode:
            return Pending()
        return open(path, mode)


def test_spool_size_is_bounded_by_the_filesystem():
    # issue 17 point 8: spool_kb 1024 on a ~848 KB filesystem
    d = fresh_dir("quota_bound")
    fs = QuotaFs(848 * 1024)
    sp = Spool(d, fs, ram_records=8, max_bytes=1024 * 1024, seg_bytes=32 * 1024, opener=fs.open)
    assert sp.max_bytes == 24 * 32 * 1024  # (848 - 64 reserve) KB in whole 32 KB segments
    fs2 = QuotaFs(8 * 1024 * 1024)
    d2 = fresh_dir("quota_roomy")
    sp2 = Spool(d2, fs2, ram_records=8, max_bytes=512 * 1024, seg_bytes=32 * 1024,
                opener=fs2.open)
    assert sp2.max_bytes == 512 * 1024


def test_full_flash_loses_no_record_uncounted():
    # the filesystem fills before max_bytes (statvfs not trusted here: the
    # quota shrinks under the spool's feet, as when other files grow)
    d = fresh_dir("quota_full")
    fs = QuotaFs(1 << 30)
    sp = Spool(d, fs, ram_records=8, max_bytes=64 * 1024, seg_bytes=1024, opener=fs.open)
    fs.quota = 5 * 1024  # room for ~5 segments only
    pushed = 2000
    for i in range(pushed):
        sp.push(_v(i))
    sp.flush()
    got = _drain(sp)
    assert sp.fs_full > 0
    # every record is either readable or counted as dropped
    assert len(got) + sp.dropped == pushed, (len(got), sp.dropped)
    seqs = [r[2] for r in got]
    assert seqs == sorted(seqs) and seqs[-1] == pushed - 1  # the newest survive
