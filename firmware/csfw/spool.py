# Store-and-forward spool: a bounded RAM ring in front of segment files on
# flash.  It holds every kept reading the gateway has not yet confirmed as
# stored (csfw.app: sent live or not, the `stored` watermark covers it); the
# app re-sends from it oldest first (peek, sequential reads are O(1)) and
# commits (forgets) only the oldest records the watermark covers.  In normal
# operation the gateway confirms about every second, so the records stay in
# the RAM ring and nothing is written to flash; the ring spills to flash when
# it is full (an outage, or a gateway that does not confirm).
#
# Records are compact fixed-layout binary (vitals 16 bytes, NIBP 21 bytes),
# each ending in a 16-bit CRC (low half of binascii.crc32), so a torn or
# corrupted record is detected and skipped on read.  The kind in the first
# byte gives the length; after a bad CRC the reader moves on one byte at a
# time until records line up again.
#
# Flash layout, in fs_dir:
#   NNNNNNNN.sp  segment files, numbered upwards, at most seg_bytes each
#   cursor       read position (segment, offset) + CRC; replaced by rename
#
# Capacity: max_bytes // seg_bytes segment files.  When a new segment is
# needed and all are in use, the oldest segment is deleted and its unread
# records are counted in `dropped`.  With the defaults (512 KB, 32 KB
# segments) at least 15 full segments survive a drop: 491,520 bytes, more
# than 8 h of 1 Hz vitals (28,800 x 16 B) plus NIBP every 5 min (96 x 21 B)
# = 462,816 bytes.
#
# Power cuts: littlefs keeps the last committed state of a file, so a cut
# mid-write loses at most the records in that write.  If a torn tail is
# left anyway, a new Spool (after reboot) finds it while counting records and
# starts a fresh segment, so nothing is ever appended after garbage.  A lost
# cursor update means records are replayed twice: harmless, because the
# gateway stores a reading at the time it was measured (same point again).
#
# Identity and time: a record keeps the reading's boot counter, sequence
# number (26 bits: ~2.1 years at 1 Hz) and uptime `up` (ms, up to 63 * 2**32: ~8.5
# years; it was 32 bits, 49.7 days, before issue 17) plus the sync flag.
# The extra bits live in fields that had room: seq bits 24-25 in head bits
# 2-3, up bits 32-37 in the top 6 bits of the 16-bit pulse-rate field (pulse
# rate 0..1022, 0x3FF = none).  A record written by the older layout reads
# the same (its spare bits are 0; its "no pulse rate" marker 0xFFFF is
# recognised).  The app rebuilds the device time t from the boot's
# epoch when it replays, and the gateway from the boot time it learned, so a
# replayed reading is stored at exactly the timestamp a live one would have
# had (idempotent writes).
import binascii
import struct

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

KIND_VITALS = const(1)
KIND_NIBP = const(2)
VITALS_LEN = const(16)
NIBP_LEN = const(21)
MAX_LEN = const(21)

# sensor states (contract messages.vitals.fields.st), indexed by code
STATES = ("ok", "searching", "no_finger", "probe_off", "no_data")

_NONE8 = const(0xFF)
_NONE16 = const(0xFFFF)
_PR_NONE = const(0x3FF)  # 10-bit pulse rate: none
UP_HI_MAX = const(63)  # up < 63 * 2**32 ms (8.5 years): 0xFFFF stays the legacy marker
SEQ_BITS = const(26)
_CHUNK = const(256)
_SEG_SUFFIX = ".sp"
ENOSPC = const(28)
# kept free on the filesystem beyond the spool: littlefs needs spare blocks
# for copy-on-write metadata, and boot.count / cursor / config live there too
FS_RESERVE_BYTES = const(64 * 1024)
_CURSOR = "cursor"

# head byte: kind << 4 | seq bits 24-25 << 2 | flags.  vitals flags: 1 sync,
# 2 cuff; nibp: 1 sync, 2 ok.  pr: up bits 32-37 << 10 | pulse rate (10 bits)
# vitals: head st<<4|sig boot seq_hi seq_lo up spo2 pr crc
_VITALS_FMT = ">BBHBHIBHH"
# nibp: head err boot seq_hi seq_lo up sys dia map pr crc
_NIBP_FMT = ">BBHBHIHHHHH"


def _crc16(buf, end):
    return binascii.crc32(memoryview(buf)[:end]) & 0xFFFF


def _n8(v):
    return _NONE8 if v is None else v


def _n16(v):
    return _NONE16 if v is None else v


def _v8(v):
    return None if v == _NONE8 else v


def _v16(v):
    return None if v == _NONE16 else v


def _pr_up(pr, up_hi):
    """Pulse rate (None or 0..1022) and up bits 32-37 -> the 16-bit field."""
    if pr is None:
        pr = _PR_NONE
    elif pr < 0 or pr >= _PR_NONE:
        raise ValueError("pr")
    return (up_hi << 10) | pr


def _pr_of(field):
    """16-bit field -> (pulse rate or None, up bits 32-37)."""
    if field == _NONE16:  # the layout before issue 17: no pulse rate, up < 2**32
        return None, 0
    pr = field & _PR_NONE
    return (None if pr == _PR_NONE else pr), field >> 10


def vitals_record(boot, seq, up, sync, spo2, pr, sig, st, cuff=0):
    """Build the tuple push() takes for one vitals reading."""
    return (KIND_VITALS, boot, seq, up, 1 if sync else 0, spo2, pr, sig, st, 1 if cuff else 0)


def nibp_record(boot, seq, up, sync, ok, sys_, dia, map_, pr, err=0):
    """Build the tuple push() takes for one NIBP result."""
    return (KIND_NIBP, boot, seq, up, 1 if sync else 0, 1 if ok else 0, sys_, dia, map_, pr, err)


def record_len(head):
    """Length of the record whose first byte is `head`; 0 if not a record."""
    kind = head >> 4
    if kind == KIND_VITALS:
        return VITALS_LEN
    if kind == KIND_NIBP:
        return NIBP_LEN
    return 0


def encode_record(rec):
    """Record tuple (see vitals_record / nibp_record) -> bytes."""
    kind = rec[0]
    boot = rec[1] & 0xFFFF
    seq = rec[2] & 0x3FFFFFF  # SEQ_BITS
    up = rec[3]
    up_hi = up >> 32
    if up < 0 or up_hi >= UP_HI_MAX:
        raise ValueError("up")
    up = up & 0xFFFFFFFF
    flags = (1 if rec[4] else 0) | ((seq >> 24) << 2)
    seq = seq & 0xFFFFFF
    if kind == KIND_VITALS:
        buf = bytearray(VITALS_LEN)
        if rec[9]:
            flags |= 2
        st = STATES.index(rec[8])
        struct.pack_into(_VITALS_FMT, buf, 0, (KIND_VITALS << 4) | flags, (st << 4) | (rec[7] & 0x0F),
                         boot, seq >> 16, seq & 0xFFFF, up, _n8(rec[5]), _pr_up(rec[6], up_hi), 0)
    elif kind == KIND_NIBP:
        buf = bytearray(NIBP_LEN)
        if rec[5]:
            flags |= 2
        struct.pack_into(_NIBP_FMT, buf, 0, (KIND_NIBP << 4) | flags, rec[10] & 0xFF, boot,
                         seq >> 16, seq & 0xFFFF, up, _n16(rec[6]), _n16(rec[7]), _n16(rec[8]),
                         _pr_up(rec[9], up_hi), 0)
    else:
        raise ValueError("kind")
    n = len(buf)
    crc = _crc16(buf, n - 2)
    buf[n - 2] = crc >> 8
    buf[n - 1] = crc & 0xFF
    return bytes(buf)


def decode_record(buf, off=0):
    """bytes at buf[off:] -> record tuple, or None if short, unknown or bad CRC."""
    if len(buf) - off < 1:
        return None
    n = record_len(buf[off])
    if n == 0 or len(buf) - off < n:
        return None
    mv = memoryview(buf)[off:off + n]
    crc = (mv[n - 2] << 8) | mv[n - 1]
    if binascii.crc32(mv[:n - 2]) & 0xFFFF != crc:
        return None
    head = mv[0]
    s_top = ((head >> 2) & 3) << 24
    if n == VITALS_LEN:
        _, stsig, boot, s_hi, s_lo, up, spo2, prf, _ = struct.unpack_from(_VITALS_FMT, mv, 0)
        st = stsig >> 4
        if st >= len(STATES):
            return None
        pr, up_hi = _pr_of(prf)
        return (KIND_VITALS, boot, s_top | (s_hi << 16) | s_lo, (up_hi << 32) | up, head & 1,
                _v8(spo2), pr, stsig & 0x0F, STATES[st], (head >> 1) & 1)
    _, err, boot, s_hi, s_lo, up, s, d, m, prf, _ = struct.unpack_from(_NIBP_FMT, mv, 0)
    pr, up_hi = _pr_of(prf)
    return (KIND_NIBP, boot, s_top | (s_hi << 16) | s_lo, (up_hi << 32) | up, head & 1,
            (head >> 1) & 1, _v16(s), _v16(d), _v16(m), pr, err)


def errno_of(exc):
    n = getattr(exc, "errno", None)
    if n is None and exc.args and isinstance(exc.args[0], int):
        n = exc.args[0]
    return n


def fs_budget(os_module, path, want_bytes, seg_bytes, spool_bytes=0):
    """The spool size the filesystem at `path` can really hold: free space
    (os.statvfs: f_bsize * f_bfree) plus what the spool already uses, minus
    FS_RESERVE_BYTES, in whole segments, at most want_bytes and at least two
    segments.  A Pico W's littlefs is ~848 KB, so spool_kb 1024 is bounded
    here.  Without statvfs (some test stand-ins) want_bytes is returned."""
    try:
        st = os_module.statvfs(path)
    except (AttributeError, OSError):
        return want_bytes
    room = st[0] * st[3] + spool_bytes - FS_RESERVE_BYTES
    room = room // seg_bytes * seg_bytes
    return max(2 * seg_bytes, min(want_bytes, room))


class Spool:
    def __init__(self, fs_dir, os_module, ram_records=64, max_bytes=512 * 1024,
                 seg_bytes=32 * 1024, opener=None):
        self._dir = fs_dir.rstrip("/")
        self._os = os_module
        self._open = opener or open  # os.open is the fd-level call on CPython
        self._ram = [None] * ram_records
        self._ram_head = 0  # index of the oldest record in the ring
        self._ram_n = 0
        self._seg_bytes = seg_bytes
        self.dropped = 0  # records dropped since this object was made (boot)
        self.write_errors = 0
        self._base = 0  # records removed from the head so far (commit, drops): index origin
        self._rd = None  # (index, seg, off): where flash record `index` starts (peek cache)
        self.fs_full = 0  # writes refused by a full filesystem (ENOSPC)
        self._ensure_dir()
        self._segs = self._list_segments()
        # bound the configured size by what the filesystem can hold now
        self.max_bytes = fs_budget(self._os, self._dir, max_bytes, seg_bytes,
                                   self._spool_bytes())
        self._max_segs = max(2, self.max_bytes // seg_bytes)
        if self.max_bytes < max_bytes:
            print("chairside: spool limited to", self.max_bytes // 1024,
                  "KB by the filesystem (configured", max_bytes // 1024, "KB)")
        self._cur_seg, self._cur_off = self._load_cursor()
        # count what is waiting, and find a clean place to append
        self._flash_n = 0
        self._wseg = self._segs[-1] if self._segs else 0
        self._wsize = self._file_size(self._wseg) if self._segs else 0
        for seg in self._segs:
            if seg < self._cur_seg:
                continue
            start = self._cur_off if seg == self._cur_seg else 0
            end, count, clean = self._scan(seg, start, -1, None)
            self._flash_n += count
            if seg == self._wseg:
                self._wsize = end
                if not clean or end != self._file_size(seg):
                    self._wseg += 1  # torn tail: never append after it
                    self._wsize = 0
        if not self._segs:
            self._wseg = max(self._cur_seg, 0)

    # ---- public -------------------------------------------------------
    @property
    def depth(self):
        """Records waiting to be replayed (RAM + flash)."""
        return self._ram_n + self._flash_n

    @property
    def ram_depth(self):
        return self._ram_n

    def push(self, rec):
        """Queue one record tuple; spills the RAM ring to flash when full."""
        if self._ram_n == len(self._ram):
            self.flush()
            if self._ram_n == len(self._ram):  # flash failed: drop the oldest
                self._ram_pop(1)
                self.dropped += 1
                self._rd = None
        i = (self._ram_head + self._ram_n) % len(self._ram)
        self._ram[i] = rec
        self._ram_n += 1

    def flush(self):
        """Write every RAM record to flash (call before a planned reset too).

        Records leave the RAM ring only after the file they were appended to
        was closed without error (littlefs commits a file on close): a full
        or failing flash keeps them in RAM, where push() counts every one it
        has to drop."""
        written = 0
        while self._ram_n:
            n = self._write_session()
            if n <= 0:
                break
            written += n
        return written

    def _write_session(self):
        """Append RAM records to the current segment in one open/close."""
        size = len(self._ram)
        first = encode_record(self._ram[self._ram_head])
        if self._wsize + len(first) > self._seg_bytes:
            self._rotate()
        if not self._segs or self._segs[-1] != self._wseg:
            self._make_room()
        f = None
        n = 0
        end = self._wsize
        try:
            f = self._open(self._seg_path(self._wseg), "ab")
            if not self._segs or self._segs[-1] != self._wseg:
                self._segs.append(self._wseg)
            data = first
            while True:
                f.write(data)
                end += len(data)
                n += 1
                if n >= self._ram_n:
                    break
                data = encode_record(self._ram[(self._ram_head + n) % size])
                if end + len(data) > self._seg_bytes:
                    break
            f.close()
            f = None
        except OSError as exc:
            self.write_errors += 1
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
            self._wseg += 1  # the failed segment may have a torn tail
            self._wsize = 0
            if errno_of(exc) == ENOSPC:
                # the filesystem holds less than max_bytes: from now on keep
                # one segment fewer (the oldest goes, its records counted)
                self.fs_full += 1
                self._max_segs = max(2, len(self._segs) - 1)
            return 0
        self._wsize = end
        self._flash_n += n
        self._ram_pop(n)
        return n

    def next_batch(self, n):
        """Up to n oldest records, oldest first (flash, then RAM).

        Nothing is removed: publish them, then commit() what the gateway
        confirmed.  Calling it again without commit returns the same ones.
        """
        out = []
        if self._flash_n:
            seg, off = self._cur_seg, self._cur_off
            for s in self._segs:
                if s < seg:
                    continue
                self._scan(s, off if s == seg else 0, n - len(out), out)
                if len(out) >= n:
                    return out
        i = 0
        while len(out) < n and i < self._ram_n:
            out.append(self._ram[(self._ram_head + i) % len(self._ram)])
            i += 1
        return out

    def peek(self, i=0):
        """The i-th oldest record not yet committed, or None.

        Reading i, i+1, i+2... in turn costs one record read each (the flash
        position of the next index is remembered, also across commits)."""
        if i >= self._flash_n:
            j = i - self._flash_n
            if j < self._ram_n:
                return self._ram[(self._ram_head + j) % len(self._ram)]
            return None
        want = self._base + i
        rd = self._rd
        if rd is None or rd[0] != want:
            pos = self._skip(i)
            rd = None if pos is None else (want, pos[0], pos[1])
        if rd is not None:
            got = self._read_from(rd[1], rd[2])
            if got is not None:
                self._rd = (want + 1, got[1], got[2])
                return got[0]
        self._rd = None
        batch = self.next_batch(i + 1)  # unreadable flash: the slow, careful way
        return batch[i] if len(batch) > i else None

    def commit(self, n):
        """Forget the n oldest records (after the gateway confirmed them).

        Returns how many were removed.  Commit in order: the records are the
        oldest ones at the time of the call.
        """
        done = 0
        if n > 0 and self._flash_n:
            ends = []
            seg, off = self._cur_seg, self._cur_off
            for s in self._segs:
                if s < seg:
                    continue
                self._scan(s, off if s == seg else 0, n - len(ends), None, ends)
                if len(ends) >= n:
                    break
            if ends:
                done = len(ends)
                self._set_cursor(ends[-1][0], ends[-1][1])
                self._flash_n = max(0, self._flash_n - done)
            if done < n:
                self._flash_n = 0  # scanned to the end: nothing else is readable
                self._rd = None
        k = min(n - done, self._ram_n)
        if k > 0:
            self._ram_pop(k)
            done += k
        self._base += done
        return done

    def pop(self):
        """Remove and return the oldest record (None if empty)."""
        rec = self.peek()
        if rec is not None:
            self.commit(1)
        return rec

    def _skip(self, n):
        """(seg, off) where the flash record n places after the cursor
        starts (None if flash holds fewer); no list is built."""
        seg, off = self._cur_seg, self._cur_off
        for s in self._segs:
            if s < seg:
                continue
            start = off if s == seg else 0
            if n == 0:
                return s, start
            end, count, _ = self._scan(s, start, n, None)
            n -= count
            if n == 0:
                return s, end
        return None

    def _read_from(self, seg, off):
        """The first good record at or after (seg, off) -> (rec, seg, end) or None."""
        out = []
        ends = []
        for s in self._segs:
            if s < seg:
                continue
            self._scan(s, off if s == seg else 0, 1, out, ends)
            if out:
                return out[0], ends[0][0], ends[0][1]
        return None

    # ---- RAM ring -----------------------------------------------------
    def _ram_pop(self, n):
        size = len(self._ram)
        for _ in range(n):
            self._ram[self._ram_head] = None
            self._ram_head = (self._ram_head + 1) % size
            self._ram_n -= 1

    # ---- files --------------------------------------------------------
    def _ensure_dir(self):
        try:
            self._os.stat(self._dir)
        except OSError:
            self._os.mkdir(self._dir)

    def _seg_path(self, seg):
        return "%s/%08d%s" % (self._dir, seg, _SEG_SUFFIX)

    def _list_segments(self):
        segs = []
        for name in self._os.listdir(self._dir):
            if name.endswith(_SEG_SUFFIX):
                try:
                    segs.append(int(name[:-len(_SEG_SUFFIX)]))
                except ValueError:
                    pass
        segs.sort()
        return segs

    def _spool_bytes(self):
        total = 0
        for seg in self._segs:
            total += self._file_size(seg)
        return total

    def _file_size(self, seg):
        try:
            return self._os.stat(self._seg_path(seg))[6]
        except OSError:
            return 0

    def _load_cursor(self):
        first = self._segs[0] if self._segs else 0
        try:
            f = self._open(self._dir + "/" + _CURSOR, "rb")
            try:
                data = f.read(10)
            finally:
                f.close()
        except OSError:
            return first, 0
        if len(data) == 10 and binascii.crc32(data[:8]) & 0xFFFF == (data[8] << 8) | data[9]:
            seg, off = struct.unpack(">II", data[:8])
            if seg >= first:
                return seg, off
        return first, 0

    def _set_cursor(self, seg, off):
        # drop fully read segments (all but the one being written)
        while self._segs and self._segs[0] < seg:
            self._remove(self._segs.pop(0))
        if seg != self._wseg and off >= self._file_size(seg) and self._segs \
                and self._segs[0] == seg:
            self._remove(self._segs.pop(0))
            seg, off = seg + 1, 0
        self._cur_seg, self._cur_off = seg, off
        data = bytearray(10)
        struct.pack_into(">II", data, 0, seg, off)
        crc = binascii.crc32(memoryview(data)[:8]) & 0xFFFF
        data[8] = crc >> 8
        data[9] = crc & 0xFF
        tmp = self._dir + "/" + _CURSOR + ".new"
        try:
            f = self._open(tmp, "wb")
            try:
                f.write(data)
            finally:
                f.close()
            self._os.rename(tmp, self._dir + "/" + _CURSOR)
        except OSError:
            self.write_errors += 1

    def _remove(self, seg):
        try:
            self._os.remove(self._seg_path(seg))
        except OSError:
            self.write_errors += 1

    def _rotate(self):
        self._wseg += 1
        self._wsize = 0
        self._make_room()

    def _make_room(self):
        """Delete the oldest segments until a new one fits in _max_segs
        (their unread records are counted in `dropped`)."""
        while len(self._segs) >= self._max_segs:
            oldest = self._segs.pop(0)
            start = self._cur_off if oldest == self._cur_seg else 0
            if oldest >= self._cur_seg:
                _, lost, _ = self._scan(oldest, start, -1, None)
                self.dropped += lost
                self._base += lost
                self._flash_n = max(0, self._flash_n - lost)
                self._rd = None
            self._remove(oldest)
            if oldest >= self._cur_seg:
                nxt = self._segs[0] if self._segs else self._wseg
                self._set_cursor(nxt, 0)

    def _scan(self, seg, off, limit, out, ends=None):
        """Read records of one segment from byte `off`.

        Appends up to `limit` (-1: all) decoded records to `out` (if given) and
        their (seg, end offset) to `ends`.  Returns (offset after the last good
        record, records read, clean) where clean is False if bytes that are not
        a good record were found (torn tail or corruption).
        """
        count = 0
        clean = True
        try:
            f = self._open(self._seg_path(seg), "rb")
        except OSError:
            return off, 0, True
        try:
            f.seek(off)
            buf = b""
            pos = off  # file offset of buf[0]
            good_end = off
            eof = False
            while limit < 0 or count < limit:
                if len(buf) < MAX_LEN and not eof:
                    chunk = f.read(_CHUNK)
                    if chunk:
                        buf = buf + chunk
                        continue
                    eof = True
                if not buf:
                    break
                n = record_len(buf[0])
                if n and len(buf) < n:
                    clean = False  # torn tail
                    break
                rec = decode_record(buf) if n else None
                if rec is None:
                    clean = False
                    buf = buf[1:]
                    pos += 1
                    continue
                buf = buf[n:]
                pos += n
                good_end = pos
                count += 1
                if out is not None:
                    out.append(rec)
                if ends is not None:
                    ends.append((seg, pos))
        finally:
            f.close()
        return good_end, count, clean
