"""Stored watermarks: what the gateway tells each box it has made durable.

A box keeps every kept reading (``vitals``, ``nibp``) until the gateway says
it is durable (docs/contract.md, "End-to-end delivery").  The gateway says so
on the retained ``stored`` topic: ``{"v":1,"boot":B,"seq":S,"t":...}`` means
every kept reading of boot B that the box sent with seq <= S is in InfluxDB
or in the gateway's disk spool.

Each kept reading carries ``p``: the seq of the box's previous kept reading
of the same boot that the box still holds unconfirmed, or, when it holds none
older, the highest seq it has seen confirmed (-1 when none).  The readings a
box holds therefore form a chain, and the gateway advances a per-boot
watermark W only along it:

* :meth:`Watermarks.durable` records a durable reading as pending ``{seq: p}``;
  while a pending record has ``p <= W``, W becomes ``max(W, seq)`` and the
  record is removed.  A record is never confirmed before the record its ``p``
  names, so a reading the broker lost holds W back until the box re-sends it.
* Start of a chain: with no W known for a boot (a new boot, or a gateway that
  restarted without its snapshot), a record with ``p = -1`` starts W at -1 at
  once.  Otherwise W starts at the smallest pending ``p`` once records have
  waited ``start_delay_ms`` (default 45 s) of *heard* time (below), longer
  than the box's 30 s re-send timer, so the box's oldest held reading - whose
  ``p`` is the last confirmation it saw - has arrived by then.
  ``start_delay_ms=0`` starts W at the first record's ``p`` at once; that is
  unsafe for a box that spooled readings before its first live one (the live
  one's ``p`` names a spooled reading the gateway has not seen yet, and
  confirming it would let the box forget the spooled ones).
* Gap rule (:meth:`Watermarks.expire_gaps`): if W has not advanced for
  ``gap_timeout_ms`` (default 10 min) of heard time while records are
  pending, W jumps to the smallest pending ``p`` and the readings between are
  declared lost: an online box re-sends what it holds after 30 s without
  progress (at most every 240 s), so a reading still missing after 10 min is
  one the box no longer has.
* Heard time: the start delay and the gap clock advance only while the box's
  readings of that boot keep arriving (gaps up to ``heard_idle_ms``, default
  60 s).  A box that is offline cannot re-send; without this rule the
  gateway would give up on a reading the box still holds and, when the box
  comes back, the retained watermark would tell it to forget that reading.
* :meth:`Watermarks.due` (which also applies the start and gap rules)
  returns the watermarks to publish, at most once per
  ``min_interval_ms`` per chair (the gateway's default 1 s: 1,000 chairs cost
  about 1,000 small messages a second); :meth:`Watermarks.mark_published` records a
  publish.
* A durable reading at or below W means the box missed the watermark (it
  rebooted, and the retained message is its new boot's): that boot's W is due
  again.
* :meth:`Watermarks.snapshot` / :meth:`Watermarks.restore` carry W (not the
  pending records: boxes re-send those) across a gateway restart as JSON-able
  data.
* Boots: a chair's watermarks are kept for at most three boots; a new boot
  forgets the one heard least recently (a box replays an older boot's
  readings from flash while its current boot is live, so both are heard).
  A forgotten boot that is heard again starts a new chain by the start rule,
  so the box's re-sends are confirmed again (only later, never wrongly).

Pure: no I/O, no clock of its own (every method takes ``now_ms``), bounded
(``max_pending`` records per chair; the one furthest ahead of W is
dropped and counted, the box re-sends it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

SNAPSHOT_VERSION: Final = 1
MAX_SEQ: Final = 0x7FFFFFFF
BOOTS_PER_CHAIR: Final = 3
MAX_UNREAD_GAPS: Final = 1_000

ChairKey = tuple[str, str]


def stored_payload(boot: int, seq: int, now_ms: int) -> bytes:
    """The ``stored`` message for one watermark (contract.json
    ``gateway_messages.stored``); sent QoS 0, retained."""
    return b'{"v":1,"boot":%d,"seq":%d,"t":%d}' % (boot, seq, now_ms)  # ints only: no JSON escaping


@dataclass(frozen=True, slots=True)
class Gap:
    """A watermark that jumped over readings that never arrived."""

    site: str
    chair: str
    boot: int
    from_w: int
    to_w: int
    reason: str


@dataclass(slots=True)
class _Boot:
    w: int | None  # None: the chain's start is not known yet
    pending: dict[int, int] = field(default_factory=dict)  # seq -> p
    heard_ms: int = 0  # when the last reading of this boot arrived
    waited_ms: int = 0  # time the box was heard while W stood still with records pending
    published: int = -2  # last W published for this boot (-2: never)


@dataclass(slots=True)
class _Chair:
    boots: dict[int, _Boot] = field(default_factory=dict)
    published_ms: int | None = None  # when this chair's watermark was last published


@dataclass(slots=True)
class Counters:
    advanced: int = 0  # durable() calls that moved a watermark
    stale: int = 0  # durable readings at or below W (re-sends of confirmed ones)
    bad_p: int = 0  # p outside -1..seq-1: ignored
    boots_forgotten: int = 0  # boots dropped for a newer one (least recently heard)
    pending_dropped: int = 0  # pending records dropped (bound per chair)
    watermark_gaps: int = 0  # gap-rule jumps (readings declared lost)
    restore_skipped: int = 0  # snapshot entries that were not understood
    gaps_unread: int = 0  # gaps found by due() beyond what take_gaps() holds


class Watermarks:
    """Per (site, chair, boot) stored watermarks; see the module docstring."""

    def __init__(
        self,
        *,
        gap_timeout_ms: int = 600_000,
        min_interval_ms: int = 1_000,
        start_delay_ms: int = 45_000,
        heard_idle_ms: int = 60_000,
        max_pending: int = 4_096,
    ) -> None:
        if (gap_timeout_ms <= 0 or min_interval_ms < 0 or start_delay_ms < 0 or heard_idle_ms <= 0
                or max_pending < 1):
            raise ValueError("watermark timings must be >= 0 (gap timeout and heard idle > 0), "
                             "max_pending >= 1")
        self.gap_timeout_ms = gap_timeout_ms
        self.min_interval_ms = min_interval_ms
        self.start_delay_ms = start_delay_ms
        self.heard_idle_ms = heard_idle_ms
        self.max_pending = max_pending
        self.counters = Counters()
        self._chairs: dict[ChairKey, _Chair] = {}
        self._dirty: set[ChairKey] = set()  # chairs with an unpublished advance
        self._waiting: set[ChairKey] = set()  # chairs with pending records or an unstarted chain
        self._gaps: list[Gap] = []  # found by due(), for take_gaps()

    # ---- input ---------------------------------------------------------------------------
    def durable(self, site: str, chair: str, boot: int, seq: int, p: int, now_ms: int) -> bool:
        """A kept reading (boot, seq) with chain link ``p`` is durable.

        Returns True if the boot's watermark advanced."""
        if not -1 <= p < seq <= MAX_SEQ:
            self.counters.bad_p += 1
            return False
        key = (site, chair)
        ch = self._chairs.get(key)
        if ch is None:
            ch = self._chairs[key] = _Chair()
        b = ch.boots.get(boot)
        if b is None:
            self._make_room(ch)
            b = ch.boots[boot] = _Boot(w=None, heard_ms=now_ms)
        self._hear(b, now_ms)
        w = b.w
        if w is not None:
            if seq <= w:
                # the box still holds a reading we confirmed: it missed the
                # watermark (e.g. it rebooted; the retained one is another
                # boot's), so publish this boot's W again
                self.counters.stale += 1
                if b.published >= seq:
                    b.published = seq - 1
                    self._dirty.add(key)
                return False
            if p <= w and not b.pending:  # the common case: the chain's next link
                b.w = seq
                b.waited_ms = 0
                self.counters.advanced += 1
                self._dirty.add(key)
                return True
        b.pending[seq] = p  # a re-send replaces p: the box recomputes it at send time
        self._bound(ch)
        if w is not None and p > w:
            # nothing pending links to W (invariant), nor does this record: no
            # advance possible, so no pass over the pending records
            self._waiting.add(key)
            return False
        if b.w is None:
            if p == -1:
                b.w = -1
            elif self.start_delay_ms == 0:
                b.w = p
            else:
                self._track_waiting(key, ch)
                return False
        return self._advance(key, ch, b, now_ms)

    # ---- periodic ------------------------------------------------------------------------
    def expire_gaps(self, now_ms: int) -> list[Gap]:
        """Start chains whose start delay is over and apply the gap rule.

        :meth:`due` calls it too; call it yourself first on each publish tick
        to get the gaps at once, and log each :class:`Gap` (its ``reason``) at
        WARNING."""
        gaps: list[Gap] = []
        for key in list(self._waiting):
            ch = self._chairs.get(key)
            if ch is None:
                self._waiting.discard(key)
                continue
            for boot, b in list(ch.boots.items()):
                if not b.pending:
                    continue
                smallest_p = min(b.pending.values())
                if b.w is None:
                    if b.waited_ms >= self.start_delay_ms:
                        b.w = smallest_p
                        self._advance(key, ch, b, now_ms, force=True)
                elif b.waited_ms >= self.gap_timeout_ms:
                    old = b.w
                    self.counters.watermark_gaps += 1
                    b.w = jump = max(old, smallest_p)
                    self._advance(key, ch, b, now_ms, force=True)
                    self._dirty.add(key)
                    gaps.append(Gap(key[0], key[1], boot, old, jump, (
                        f"{key[0]}/{key[1]} boot {boot}: no reading with seq {old + 1}..{jump} "
                        f"arrived within {self.gap_timeout_ms // 1000} s; watermark jumps {old} -> "
                        f"{jump}, now {b.w} (a reading the box no longer held is lost)")))
            self._track_waiting(key, ch)
        return gaps

    def take_gaps(self) -> list[Gap]:
        """Gaps found by :meth:`due` since the last call (log each at WARNING)."""
        gaps, self._gaps = self._gaps, []
        return gaps

    def due(self, now_ms: int) -> list[tuple[str, str, int, int]]:
        """(site, chair, boot, W) to publish: watermarks that advanced since
        their last publish, on chairs last published >= min_interval_ms ago.

        Runs :meth:`expire_gaps` first, so chains start and gaps are applied
        even if the caller never calls it; the gaps found that way wait in
        :meth:`take_gaps` (at most 1,000; more are counted in ``gaps_unread``)."""
        for gap in self.expire_gaps(now_ms):
            if len(self._gaps) < MAX_UNREAD_GAPS:
                self._gaps.append(gap)
            else:
                self.counters.gaps_unread += 1
        out: list[tuple[str, str, int, int]] = []
        for key in list(self._dirty):
            ch = self._chairs.get(key)
            if ch is None:
                self._dirty.discard(key)
                continue
            if ch.published_ms is not None and now_ms - ch.published_ms < self.min_interval_ms:
                continue
            found = False
            for boot in sorted(ch.boots):
                b = ch.boots[boot]
                if b.w is not None and b.w > b.published:
                    out.append((key[0], key[1], boot, b.w))
                    found = True
            if not found:
                self._dirty.discard(key)
        return out

    def mark_published(self, site: str, chair: str, boot: int, seq: int, now_ms: int) -> None:
        """The watermark (boot, seq) of a chair was published (retained)."""
        key = (site, chair)
        ch = self._chairs.get(key)
        if ch is None:
            return
        ch.published_ms = now_ms
        b = ch.boots.get(boot)
        if b is not None and seq > b.published:
            b.published = seq
        if all(x.w is None or x.w <= x.published for x in ch.boots.values()):
            self._dirty.discard(key)

    def watermark(self, site: str, chair: str, boot: int) -> int | None:
        """The current W of a boot (None: unknown or chain not started)."""
        ch = self._chairs.get((site, chair))
        b = ch.boots.get(boot) if ch is not None else None
        return b.w if b is not None else None

    def pending(self, site: str, chair: str) -> int:
        """Durable records waiting for their chain link, all boots of a chair."""
        ch = self._chairs.get((site, chair))
        return sum(len(b.pending) for b in ch.boots.values()) if ch is not None else 0

    # ---- persistence ---------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """W of every started chain, JSON-able (pending records are not kept)."""
        chairs = []
        for (site, chair), ch in sorted(self._chairs.items()):
            boots = [[boot, b.w] for boot, b in sorted(ch.boots.items()) if b.w is not None]
            if boots:
                chairs.append({"site": site, "chair": chair, "boots": boots})
        return {"v": SNAPSHOT_VERSION, "chairs": chairs}

    def restore(self, data: Mapping[str, Any], now_ms: int) -> int:
        """Load a :meth:`snapshot` (W only, counted as already published).

        Entries that are not understood are skipped and counted; returns the
        number of boots restored.  A boot already known keeps the higher W."""
        if not isinstance(data, Mapping) or data.get("v") != SNAPSHOT_VERSION:
            self.counters.restore_skipped += 1
            return 0
        chairs = data.get("chairs")
        if not isinstance(chairs, list):
            self.counters.restore_skipped += 1
            return 0
        restored = 0
        for entry in chairs:
            if not (isinstance(entry, Mapping) and isinstance(entry.get("site"), str)
                    and isinstance(entry.get("chair"), str) and isinstance(entry.get("boots"), list)):
                self.counters.restore_skipped += 1
                continue
            key = (entry["site"], entry["chair"])
            for item in entry["boots"]:
                if not (isinstance(item, list) and len(item) == 2
                        and all(type(x) is int for x in item) and item[0] >= 0
                        and -1 <= item[1] <= MAX_SEQ):
                    self.counters.restore_skipped += 1
                    continue
                boot, w = item
                ch = self._chairs.setdefault(key, _Chair())
                b = ch.boots.get(boot)
                if b is None:
                    if len(ch.boots) >= BOOTS_PER_CHAIR:
                        self.counters.restore_skipped += 1
                        continue
                    b = ch.boots[boot] = _Boot(w=w, heard_ms=now_ms, published=w)
                elif b.w is None or w > b.w:
                    b.w = w
                    b.published = max(b.published, w)
                    self._advance(key, ch, b, now_ms, force=True)
                restored += 1
        return restored

    # ---- internals -----------------------------------------------------------------------
    def _make_room(self, ch: _Chair) -> None:
        while len(ch.boots) >= BOOTS_PER_CHAIR:
            del ch.boots[min(ch.boots, key=lambda bt: (ch.boots[bt].heard_ms, bt))]
            self.counters.boots_forgotten += 1

    def _hear(self, b: _Boot, now_ms: int) -> None:
        # The start delay and the gap clock count only time in which the box
        # is heard (a reading at least every heard_idle_ms): a box that is
        # offline cannot re-send, and must not lose a reading it still holds
        # because the gateway gave up on it meanwhile.
        if b.pending or b.w is None:
            gap = now_ms - b.heard_ms
            if 0 < gap <= self.heard_idle_ms:
                b.waited_ms += gap
        b.heard_ms = now_ms

    def _advance(self, key: ChairKey, ch: _Chair, b: _Boot, now_ms: int, force: bool = False) -> bool:
        assert b.w is not None
        start = w = b.w
        if b.pending:
            # W only grows, so one pass in order of p finds every link: the
            # first record whose p is above W ends it
            for p, seq in sorted((p, s) for s, p in b.pending.items()):
                if p > w:
                    break
                del b.pending[seq]
                if seq > w:
                    w = seq
        b.w = w
        if w > start or force:
            b.waited_ms = 0
        if w > start:
            self.counters.advanced += 1
            self._dirty.add(key)
        self._track_waiting(key, ch)
        return w > start

    def _track_waiting(self, key: ChairKey, ch: _Chair) -> None:
        if any(b.pending for b in ch.boots.values()):
            self._waiting.add(key)
        else:
            self._waiting.discard(key)

    def _bound(self, ch: _Chair) -> None:
        # drop the record furthest ahead of W: it is the last that could be
        # confirmed, and the box re-sends it (a hole's filler is kept)
        total = sum(len(b.pending) for b in ch.boots.values())
        while total > self.max_pending:
            pending = max((b.pending for b in ch.boots.values()), key=len)
            del pending[max(pending)]
            self.counters.pending_dropped += 1
            total -= 1
