# The chair box's main loop: sensors -> readings -> outbox -> MQTT.
#
# One cooperative loop, polled as fast as the board allows (~every 5 ms).
# Every component is non-blocking and takes `now` (uptime ms).  Hardware and
# the clock are injected (`hw`, `clock`), so the same code runs on the Pico W
# (firmware/main.py) and on CPython against firmware/host.
#
# Delivery rule (nothing lost, live first; docs/contract.md, "End-to-end
# delivery"):
# - every kept reading (vitals, nibp) goes into the spool (RAM ring, then
#   flash) and stays there until the gateway's `stored` watermark covers it:
#   the gateway has it in InfluxDB or in its disk spool.  A PUBACK only means
#   the broker has it, and a broker can lose it (crash, lost session);
# - a new reading is also published at once, live (no `h`), when the link is
#   up and the QoS 1 window has room; otherwise it waits in the spool;
# - while online, what the spool holds and was not sent in the current pass
#   is replayed oldest first with h=1 in the window's spare slots;
# - a new pass (every record held is re-sent, oldest first, h=1) starts after
#   each (re)connect and when the watermark has not moved for RESEND_AFTER_MS
#   while records wait (doubling up to RESEND_MAX_MS while nothing moves);
# - each kept reading carries p (contract.link), computed when it is sent: the
#   seq of the previous reading of its boot the box still holds, or the
#   highest confirmed seq of that boot (-1: none), so the gateway confirms
#   nothing past a reading it has not stored, and a reading the spool dropped
#   (flash full, counted in `dropped`) never blocks the chain;
# - in normal operation the gateway confirms about every second: the records
#   stay in the RAM ring and nothing is written to flash.  The gateway writes
#   idempotently, so a re-sent reading is stored once; the gateway treats any
#   reading measured more than 30 s before it arrives as history (no alarm).
#
# Transport: Wi-Fi + MQTT (csfw.link + csfw.mqtt), or, when the board gives
# `hw.serial_link` (a csfw.serial_link.SerialLink on the USB CDC port), the
# same contract as lines to `chairside serial-bridge` (SerialTransport below).
from csfw import contract
from csfw.led import OFFLINE, OK, SENSOR_FAULT, StatusLed
from csfw.link import mqtt_link
from csfw.mqtt import ERR_INFLIGHT_FULL, InflightFull, MQTTClient
from csfw.nibp import Nibp
from csfw.oximeter import Oximeter
from csfw.spool import Spool
from csfw.supervisor import Supervisor

VITALS_PERIOD_MS = 1000
STATUS_PERIOD_MS = 60000
REPLAY_PER_POLL = 4  # bound the work one loop iteration does for the replay
LIVE_RESERVE = 2  # inflight slots kept free for live readings during a replay
FLUSH_PERIOD_MS = 10000  # while offline, RAM ring -> flash at least this often
RESEND_AFTER_MS = 30000  # online, records sent, no watermark progress: re-send them
RESEND_MAX_MS = 240000  # ... doubling up to this (below the gateway's 600 s gap rule)
CONFIRM_PER_POLL = 16  # spool records checked against the watermark per poll
MAX_LIVE_SENT = 64  # live-sent seqs remembered beyond the pass (more: re-sent, harmless)
MAX_CONF_BOOTS = 3  # boots whose watermark the box remembers
NTP_RETRY_MS = 600000
MAX_PENDING = 8
CONNECT_TIMEOUT_MS = 3000  # CONNACK wait; see firmware/main.py for the TCP part
SERIAL_ACK_TIMEOUT_MS = 10000  # the bridge answers `A` within ms when the broker is up
# A `time` command is applied only in the boot whose message it answers and
# at most this long (box uptime) after that message's `up`: a command the
# broker queued during an outage would set the clock back by the outage and
# make the gateway file live readings as history (issue 17).
TIME_CMD_MAX_AGE_MS = 30000

KIND_VITALS = 1
KIND_NIBP = 2


class Hardware:
    """What the app needs from the board; firmware/main.py and
    firmware/host/box.py each build one."""

    def __init__(self, oxi_uart, nibp_uart, wlan, connect_fn, fs_dir, os_module,
                 wdt=None, led_pin=None, reset_cause="unknown", rand=None, ntp_sync=None,
                 serial_link=None, i2c=None):
        self.oxi_uart = oxi_uart
        self.nibp_uart = nibp_uart
        self.wlan = wlan
        self.connect_fn = connect_fn
        self.fs_dir = fs_dir
        self.os = os_module
        self.wdt = wdt
        self.led_pin = led_pin
        self.reset_cause = reset_cause
        self.rand = rand
        self.ntp_sync = ntp_sync
        self.i2c = i2c  # only for the optical (MAX30102) sensor path
        self.serial_link = serial_link  # csfw.serial_link.SerialLink: USB instead of Wi-Fi


class SerialTransport:
    """A SerialLink as the app's `mqtt` client and `link` at once (same
    surface: publish, subscribe, inflight, max_inflight, online, poll, lost,
    rssi, close).  The link is up while the host bridge talks; going down,
    the host forgets unacknowledged lines (the app re-spools them)."""

    def __init__(self, serial, on_online, on_offline):
        self.serial = serial
        self.on_online = on_online
        self.on_offline = on_offline
        self.max_inflight = serial.max_inflight
        self.online = False

    @property
    def inflight(self):
        return self.serial.inflight

    def publish(self, topic, msg, qos=0, retain=False, now=0):
        if not self.online:
            raise OSError(107)  # ENOTCONN
        if qos and len(self.serial.inflight) >= self.serial.max_inflight:
            raise InflightFull(ERR_INFLIGHT_FULL)
        return self.serial.publish(topic, msg, qos, retain, now)

    def subscribe(self, topic, qos=1, now=0):
        return 0  # the bridge forwards this chair's cmd and stored topics by itself

    def poll(self, now):
        self.serial.poll(now)
        if self.online and self._ack_overdue(now):
            # an `A` line was lost: start over (the app re-spools what is
            # unacknowledged; a duplicate is harmless, the gateway is idempotent)
            self.lost(now, "ack_timeout")
            return
        if self.serial.online and not self.online:
            self.online = True
            self.on_online(False, now)
        elif self.online and not self.serial.online:
            self.online = False
            self.on_offline("host_silent", now)

    def _ack_overdue(self, now):
        for pid in self.serial.inflight:
            if now - self.serial.inflight[pid] > SERIAL_ACK_TIMEOUT_MS:
                return True
        return False

    def lost(self, now, cause="write_failed", error=None):
        if self.online:
            self.online = False
            self.serial.inflight = {}
            self.on_offline(cause, now)

    def rssi(self):
        return None

    def close(self):
        self.online = False


def next_boot_count(os_module, fs_dir):
    """Increment and return the boot counter kept in flash."""
    path = fs_dir + "/boot.count"
    count = 0
    try:
        with open(path) as f:
            count = int(f.read().strip() or "0") + 1
    except (OSError, ValueError):
        count = 0
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(count))
    try:
        os_module.remove(path)
    except OSError:
        pass
    os_module.rename(tmp, path)
    return count


class App:
    def __init__(self, cfg, hw, clock, boot=0, fw_version="0", cfg_hash=""):
        self.cfg = cfg
        self.hw = hw
        self.clock = clock
        self.boot = boot
        self.fw_version = fw_version
        self.cfg_hash = cfg_hash
        self.topics = contract.Topics(cfg["site"], cfg["chair"])
        if cfg.get("sensor") == "max30102":
            from csfw.optical import OpticalOximeter

            self.oxi = OpticalOximeter(hw.i2c)
        else:
            self.oxi = Oximeter(hw.oxi_uart)
        self.src = getattr(self.oxi, "src", None)
        self.nibp = Nibp(hw.nibp_uart)
        self.spool = Spool(hw.fs_dir + "/spool", hw.os, ram_records=cfg.get("hist_ram_records", 64),
                           max_bytes=cfg.get("spool_kb", 512) * 1024,
                           seg_bytes=cfg.get("spool_seg_kb", 32) * 1024)
        if hw.serial_link is not None:
            self.mqtt = self.link = SerialTransport(hw.serial_link, self._on_online,
                                                    self._on_offline)
            hw.serial_link.on_message = self._on_message
            hw.serial_link.on_time = self._on_host_time
        else:
            self._init_mqtt(cfg, hw)
        self.sup = Supervisor(hw.wdt)
        self._task_sensors = self.sup.register("sensors", 0)
        self._task_link = self.sup.register("link", 0)
        self.led = StatusLed(hw.led_pin)
        self.seq = 0
        # end-to-end delivery state (see the top of this file)
        self._conf = {}  # boot -> highest seq the gateway confirmed as stored
        self._k = 0  # spool records [0, k) were sent in the current pass
        self._prev_boot = -1  # boot and seq of spool record k-1 (-1: none)
        self._prev_seq = -1
        self._live_sent = []  # seqs of this boot sent live past the pass
        self._tail = -1  # seq of the newest kept reading of this boot in the spool
        self._check_conf = False  # a watermark arrived: commit what it covers
        self._seen_dropped = 0  # spool.dropped already accounted for in k
        self._resend_ms = RESEND_AFTER_MS
        self._progress_at = clock.now_ms()
        self.resends = 0  # passes restarted for lack of watermark progress
        self.confirmed = 0  # records committed because the watermark covered them
        self.stored_bad = 0  # `stored` messages that could not be read
        self._pending = []  # (topic, payload, retain) that could not be sent yet
        now = clock.now_ms()
        self._next_vitals = now + VITALS_PERIOD_MS
        self._next_status = now + STATUS_PERIOD_MS
        self._next_flush = now
        self._next_ntp = now
        self.errors = 0  # exceptions caught in the loop (a fault is a status)
        self.published_live = 0
        self.published_hist = 0
        self.cmd_expired = 0  # commands ignored as stale (status field cmd_expired)
        interval = cfg.get("nibp_interval_s", 0)
        if interval:
            self.nibp.set_interval(interval, now)

    def _init_mqtt(self, cfg, hw):
        mq = cfg["mqtt"]
        # the client id is the box's account (box-<site>-<chair>): the shipped
        # broker binds ids to accounts (use_username_as_clientid)
        self.mqtt = MQTTClient(
            mq.get("user") or "chairside-" + cfg["site"] + "-" + cfg["chair"], hw.connect_fn,
            keepalive_s=mq.get("keepalive_s", 30), user=mq.get("user"), password=mq.get("password"),
            will_topic=self.topics.status, will_msg=contract.OFFLINE_PAYLOAD, will_qos=1,
            will_retain=True, clean_session=False, max_inflight=8,
            on_message=self._on_message)
        wifi = cfg.get("wifi") or {}
        # a connect attempt blocks the loop; with a csfw.net.Connector as
        # connect_fn, DNS, TCP + TLS and CONNECT/CONNACK each get a poll of
        # their own (3 s bounds each), so the watchdog is fed between them
        self.link = mqtt_link(hw.wlan, self.mqtt, ssid=wifi.get("ssid"), key=wifi.get("key"),
                              connect_timeout_ms=CONNECT_TIMEOUT_MS, on_online=self._on_online,
                              on_offline=self._on_offline, clock_rand=hw.rand,
                              prepare=hw.connect_fn if hasattr(hw.connect_fn, "prepare") else None)

    # -- loop ------------------------------------------------------------
    def poll(self):
        now = self.clock.now_ms()
        # the byte parsers' 30-bit tick: a small int at any uptime (issue 17)
        tick = self.clock.tick_ms() if hasattr(self.clock, "tick_ms") else now & 0x3FFFFFFF
        try:
            self.oxi.poll(now, tick)
            result = self.nibp.poll(now, tick)
            if result is not None:
                self._record_nibp(result, now)
            if now >= self._next_vitals:
                self._next_vitals += VITALS_PERIOD_MS
                if now - self._next_vitals > 5 * VITALS_PERIOD_MS:
                    self._next_vitals = now + VITALS_PERIOD_MS  # loop stalled: don't burst
                self._record_vitals(now)
            self.sup.progress(self._task_sensors, now)
        except Exception as exc:  # a sensor fault is a status, never a crash
            self._fault("sensors", exc)
        try:
            was_online = self.link.online
            self.link.poll(now)
            self._commit_confirmed()
            if self.link.online:
                self._send_pending(now)
                self._maybe_resend(now)
                self._replay_some(now)
                if now >= self._next_status or self._health_changed(now):
                    self._next_status = now + STATUS_PERIOD_MS
                    self._publish_status(now)
                if was_online:  # never NTP in the poll that connected (watchdog)
                    self._maybe_ntp(now)
            elif now >= self._next_flush:
                self._next_flush = now + FLUSH_PERIOD_MS
                self.spool.flush()  # bound what a power cut during an outage loses
            self.sup.progress(self._task_link, now)
        except Exception as exc:
            self._fault("link", exc)
            self.link.lost(now, error=exc)
        self._update_led(now)
        self.led.poll(now)
        self.sup.check(now)
        return now

    def _fault(self, where, exc):
        self.errors += 1
        self.last_error = where + ": " + repr(exc)

    # -- readings --------------------------------------------------------
    def _next_seq(self):
        seq = self.seq
        self.seq = (self.seq + 1) & 0x7FFFFFFF
        return seq

    def _record_vitals(self, now):
        spo2, pr, sig, st = self.oxi.summary(now)
        self.sensor_state = st  # for the LED: probe off shows as a sensor fault
        rec = (KIND_VITALS, self.boot, self._next_seq(), now, 1 if self.clock.synced else 0,
               spo2, pr, sig, st, 1 if self.nibp.inflating else 0)
        self._deliver(rec, now)

    def _record_nibp(self, result, now):
        ok, sys_, dia, map_, pr, err = result
        rec = (KIND_NIBP, self.boot, self._next_seq(), now, 1 if self.clock.synced else 0,
               1 if ok else 0, sys_, dia, map_, pr, err or 0)
        self._deliver(rec, now)

    def _payload(self, rec, hist, p):
        """Record tuple -> (topic, JSON).  Device time t = boot epoch + up:
        exact for this boot while the clock is synced; otherwise sync=0 and
        the gateway derives the time from the boot time it learned."""
        kind, boot, seq, up, sync = rec[0], rec[1], rec[2], rec[3], rec[4]
        this_boot = boot == self.boot
        t = self.clock.epoch_ms() - self.clock.now_ms() + up if this_boot else 0
        if t < 0:
            t = 0
        if not (this_boot and self.clock.synced):
            sync = 0
        env = contract.link(contract.envelope(seq, boot, up, t, sync, hist), p)
        if kind == KIND_VITALS:
            return self.topics.vitals, contract.vitals_payload(env, rec[5], rec[6], rec[7], rec[8],
                                                               rec[9], self.src)
        ok = rec[5]
        err = None if ok else rec[10]
        return self.topics.nibp, contract.nibp_payload(env, ok, rec[6], rec[7], rec[8], rec[9], err)

    def _deliver(self, rec, now):
        """Keep the record until confirmed; publish it live if the link and
        the QoS 1 window allow."""
        self._sync_drops()
        sent = False
        if self.link.online and len(self.mqtt.inflight) < self.mqtt.max_inflight:
            topic, payload = self._payload(rec, False, self._link_of(rec[1], self._tail))
            try:
                sent = self.mqtt.publish(topic, payload, 1, False, now) != 0
            except InflightFull:
                pass
            except OSError as exc:
                self.link.lost(now, error=exc)
            if sent:
                self.published_live += 1
        in_pass = sent and self._k >= self.spool.depth
        self.spool.push(rec)
        self._tail = rec[2]
        if in_pass:  # nothing older waits to be sent: the pass covers it
            self._k = self.spool.depth
            self._prev_boot, self._prev_seq = rec[1], rec[2]
        elif sent:
            if len(self._live_sent) >= MAX_LIVE_SENT:
                self._live_sent.pop(0)  # forgotten: the pass re-sends it (a duplicate)
            self._live_sent.append(rec[2])

    def _link_of(self, boot, prev_seq):
        """p for a reading of `boot` whose predecessor held is prev_seq (-1: none)."""
        conf = self._conf.get(boot, -1)
        return prev_seq if prev_seq > conf else conf

    def _replay_some(self, now):
        """Send held records not sent in this pass, oldest first, h=1, in the
        window's spare slots."""
        for _ in range(REPLAY_PER_POLL):
            if self.mqtt.max_inflight - len(self.mqtt.inflight) <= LIVE_RESERVE:
                return
            rec = self.spool.peek(self._k)
            if rec is None:
                return
            boot, seq = rec[1], rec[2]
            conf = self._conf.get(boot, -1)
            if seq <= conf:
                pass  # confirmed already, waiting behind an older boot's reading
            elif boot == self.boot and seq in self._live_sent:
                self._live_sent.remove(seq)  # sent live already: now part of the pass
            else:
                prev = self._prev_seq if self._prev_boot == boot else -1
                topic, payload = self._payload(rec, True, self._link_of(boot, prev))
                self.mqtt.publish(topic, payload, 1, False, now)
                self.published_hist += 1
            self._k += 1
            self._prev_boot, self._prev_seq = boot, seq

    def _restart_pass(self, now):
        self._k = 0
        self._prev_boot = self._prev_seq = -1
        self._live_sent = []
        self._progress_at = now

    def _maybe_resend(self, now):
        """No watermark progress for a while although records were sent: the
        broker or the gateway may have lost them; send everything again."""
        if (self.spool.depth and (self._k or self._live_sent)
                and now - self._progress_at >= self._resend_ms):
            self.resends += 1
            self._restart_pass(now)
            self._resend_ms = min(self._resend_ms * 2, RESEND_MAX_MS)

    def _sync_drops(self):
        # the spool dropped its oldest records (flash full): the pass's
        # prefix shrinks with them
        dropped = self.spool.dropped
        if dropped != self._seen_dropped:
            self._k = max(0, self._k - (dropped - self._seen_dropped))
            self._seen_dropped = dropped
            if not self._k:
                self._prev_boot = self._prev_seq = -1

    def _on_stored(self, msg, now):
        try:
            boot, seq = contract.parse_stored(msg)
        except ValueError as exc:
            self.stored_bad += 1
            self.last_error = "stored: " + str(exc)
            return
        if seq <= self._conf.get(boot, -1):
            return
        self._conf[boot] = seq
        if len(self._conf) > MAX_CONF_BOOTS:
            oldest = min(b for b in self._conf if b != self.boot)
            del self._conf[oldest]
        self._check_conf = True
        self._progress_at = now
        self._resend_ms = RESEND_AFTER_MS

    def _commit_confirmed(self):
        """Forget the oldest held records the watermark covers (bounded per poll)."""
        if not self._check_conf:
            return
        self._sync_drops()
        n = 0
        # next_batch reads from the head without moving peek's read position
        for rec in self.spool.next_batch(CONFIRM_PER_POLL):
            conf = self._conf.get(rec[1])
            if conf is None or rec[2] > conf:
                self._check_conf = False
                break
            n += 1
        else:
            if n < CONFIRM_PER_POLL:
                self._check_conf = False  # all covered, nothing more held
        if not n:
            return
        done = self.spool.commit(n)
        self.confirmed += done
        self._k = max(0, self._k - done)
        if not self._k:
            self._prev_boot = self._prev_seq = -1
        conf = self._conf.get(self.boot, -1)
        if self._live_sent and self._live_sent[0] <= conf:
            self._live_sent = [q for q in self._live_sent if q > conf]

    # -- link events -----------------------------------------------------
    def _on_online(self, session_present, now):
        # `stored` on every connect: a session from older firmware lacks it,
        # and subscribing again brings the retained watermark
        self.mqtt.subscribe(self.topics.stored, 1, now)
        if not session_present:
            self.mqtt.subscribe(self.topics.cmd, 1, now)
        self._publish_status(now)
        self._next_status = now + STATUS_PERIOD_MS
        self._restart_pass(now)  # whatever is unconfirmed is sent again
        self._resend_ms = RESEND_AFTER_MS

    def _on_offline(self, cause, now):
        # Every kept reading is still in the spool until confirmed, so nothing
        # moves here: the next connect starts a new pass.  (MQTT also resends
        # what awaited a PUBACK, with DUP; a duplicate is harmless.)
        pass

    def _on_host_time(self, epoch_ms):
        # the bridge's heartbeat carries the host wall time: set an unsynced
        # clock once (re-setting it would move t of readings not yet sent)
        if not self.clock.synced:
            self.clock.set_epoch_ms(epoch_ms)

    def _send_pending(self, now):
        while self._pending:
            topic, payload, retain = self._pending[0]
            try:
                self.mqtt.publish(topic, payload, 1, retain, now)
            except InflightFull:
                return
            self._pending.pop(0)

    def _queue(self, topic, payload, retain, now):
        """Non-reading messages (status, command answers): small bounded queue."""
        if len(self._pending) >= MAX_PENDING:
            self._pending.pop(0)
            self.pending_dropped += 1
        self._pending.append((topic, payload, retain))
        if self.link.online:
            self._send_pending(now)

    pending_dropped = 0
    last_error = None
    sensor_state = contract.ST_SEARCHING

    def status_fields(self, now):
        return {
            "fw": self.fw_version, "cfg": self.cfg_hash, "reset": self.hw.reset_cause,
            "boot_t": (self.clock.epoch_ms() - now) if self.clock.synced else None,
            "spool": self.spool.depth, "dropped": self.spool.dropped + self.pending_dropped,
            "oxi": self.oxi.health(now), "nibp": self.nibp.health(now),
            "rssi": self.link.rssi(), "link": "wifi" if self.hw.serial_link is None else "usb",
            "cmd_expired": self.cmd_expired,
        }

    _sent_oxi = None  # the module health the last status said (contract: status on change)
    _sent_nibp = None

    def _health_changed(self, now):
        # compares the health strings (constants): nothing is allocated per poll
        return self.oxi.health(now) != self._sent_oxi or self.nibp.health(now) != self._sent_nibp

    def _publish_status(self, now):
        fields = self.status_fields(now)
        self._sent_oxi, self._sent_nibp = fields["oxi"], fields["nibp"]
        if fields["boot_t"] is None:
            del fields["boot_t"]
        env = contract.envelope(self._next_seq(), self.boot, now, self.clock.epoch_ms(),
                                self.clock.synced, False)
        self._queue(self.topics.status, contract.status_payload(env, fields), True, now)

    def _maybe_ntp(self, now):
        if self.clock.synced or self.hw.ntp_sync is None or now < self._next_ntp:
            return
        self._next_ntp = now + NTP_RETRY_MS
        try:
            if self.hw.ntp_sync() is False:  # did its DNS step only: query next poll
                self._next_ntp = now + 1000
        except Exception as exc:  # NTP unreachable: the gateway's time command covers it
            self._fault("ntp", exc)

    # -- commands --------------------------------------------------------
    def _on_message(self, topic, msg):
        now = self.clock.now_ms()
        if topic == self.topics.stored:
            self._on_stored(msg, now)
            return
        cmd_id = "?"
        cmd = "?"
        try:
            cmd, cmd_id, args = contract.parse_command(msg)
            ok, err = self._run_command(cmd, args, now)
        except contract.CommandError as exc:
            ok, err = False, exc.reason
            cmd_id, cmd = exc.cmd_id, exc.cmd
        env = contract.envelope(self._next_seq(), self.boot, now, self.clock.epoch_ms(),
                                self.clock.synced, False)
        self._queue(self.topics.resp, contract.resp_payload(env, cmd_id, cmd, ok, err), False, now)

    def _stale(self, cmd, reason):
        self.cmd_expired += 1
        self.last_error = "cmd " + cmd + ": " + reason
        print("chairside: ignored", cmd, "command:", reason)
        return False, reason

    def _run_command(self, cmd, args, now):
        exp = args.get("exp")
        if exp is not None and self.clock.synced and self.clock.epoch_ms() > exp:
            return self._stale(cmd, "expired")
        if cmd == "nibp_start":
            if not self.nibp.start(now):
                return False, "busy"
        elif cmd == "nibp_stop":
            self.nibp.stop(now)
        elif cmd == "nibp_interval":
            self.nibp.set_interval(args["s"], now)
        elif cmd == "time":
            if "boot" not in args:
                return self._stale(cmd, "stale_unsafe")  # cannot tell how old it is
            age = now - args["up"]
            if args["boot"] != self.boot or age < 0 or age > TIME_CMD_MAX_AGE_MS:
                return self._stale(cmd, "expired")
            self.clock.set_epoch_ms(args["t"])
        elif cmd == "status":
            self._publish_status(now)
        return True, None

    def _update_led(self, now):
        if not self.link.online:
            self.led.show(OFFLINE)
        elif (self.sensor_state != contract.ST_OK or self.oxi.health(now) != "ok"
              or self.nibp.health(now) == "silent"):
            self.led.show(SENSOR_FAULT)
        else:
            self.led.show(OK)
