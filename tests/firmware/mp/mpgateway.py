# The gateway's side of end-to-end delivery for the firmware tests, on
# MicroPython and CPython alike (kept out of mptest.py so the heap run, which
# loads mptest, does not carry it).
import json


class Gateway:
    """The gateway's side of end-to-end delivery, in miniature (the real one
    is gateway/chairside/store/watermark.py): follows each boot's chain of p
    links from the readings it `stores` and publishes the `stored` watermark
    to the box through a Broker, at most once per interval_ms.  `lose` > 0
    makes it lose that many readings (a broker that PUBACKed and crashed);
    track=False keeps no per-reading record (the heap run)."""

    def __init__(self, mqtt, broker, stored_topic, interval_ms=1000, track=True):
        self.mqtt = mqtt
        self.broker = broker
        self.topic = stored_topic
        self.interval_ms = interval_ms
        self.track = track
        self.w = {}  # boot -> watermark
        self.pending = {}  # boot -> {seq: p}
        self.stored = {}  # (boot, seq) -> times stored (track=True)
        self.readings = 0
        self.links = []  # (boot, seq, p, h) in arrival order (track=True)
        self.published = {}  # boot -> W last published
        self.lose = 0
        self.lost = []
        self.confirming = True
        self._next = 0

    def on_publish(self, topic, msg):
        if not (topic.endswith("/vitals") or topic.endswith("/nibp")):
            return
        m = json.loads(msg)
        boot, seq, p = m["boot"], m["seq"], m["p"]
        if self.lose:
            self.lose -= 1
            self.lost.append((boot, seq))
            return
        self.readings += 1
        if self.track:
            self.stored[(boot, seq)] = self.stored.get((boot, seq), 0) + 1
            self.links.append((boot, seq, p, m.get("h", 0)))
        w = self.w.get(boot, -1)
        if seq <= w:  # the box missed the watermark: publish it again
            if self.published.get(boot, -1) >= seq:
                self.published[boot] = seq - 1
            return
        pend = self.pending.get(boot)
        if pend is None:
            pend = self.pending[boot] = {}
        pend[seq] = p
        moved = True
        while moved:
            moved = False
            for s in list(pend):
                if pend[s] <= w:
                    del pend[s]
                    if s > w:
                        w = s
                    moved = True
        self.w[boot] = w

    def tick(self, now):
        """Publish the watermarks that moved (call every poll)."""
        if now < self._next or not self.broker.up or not self.confirming:
            return
        self._next = now + self.interval_ms
        for boot in self.w:
            w = self.w[boot]
            if w > self.published.get(boot, -1):
                self.published[boot] = w
                payload = json.dumps({"v": 1, "boot": boot, "seq": w, "t": now})
                self.broker.to_box.extend(self.mqtt.publish_packet(self.topic, payload, 1, True,
                                                                   False, 1))
