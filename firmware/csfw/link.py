# Connection supervisor: Wi-Fi + broker as one explicit state machine, the
# box's single reconnect path (MicroPython 1.29 and CPython 3.11).
#
#   WIFI_DOWN --connect()--> WIFI_JOINING --isconnected--> BROKER_CONNECTING
#   BROKER_CONNECTING --connect_mqtt ok--> ONLINE
#   any failure --> BACKOFF --delay over--> WIFI_DOWN or BROKER_CONNECTING
#
# Backoff: min_backoff_ms * 2**(failures-1), capped at max_backoff_ms, minus a
# random jitter of up to jitter_frac of it (random source injected); reset to
# the minimum when ONLINE is reached.  `now` is uptime ms, passed in.
try:
    from micropython import const
except ImportError:
    const = lambda x: x  # noqa: E731

WIFI_DOWN = const(0)
WIFI_JOINING = const(1)
BROKER_CONNECTING = const(2)
ONLINE = const(3)
BACKOFF = const(4)

STATE_NAMES = ("WIFI_DOWN", "WIFI_JOINING", "BROKER_CONNECTING", "ONLINE", "BACKOFF")

# failure causes (keys of Link.failures)
WIFI_TIMEOUT = "wifi_timeout"      # join did not finish within wifi_timeout_ms
WIFI_ERROR = "wifi_error"          # status() < 0: no AP, wrong key, join failed
WIFI_LOST = "wifi_lost"            # association dropped while connecting/online
BROKER_REFUSED = "broker_refused"  # CONNACK return code != 0 (MQTTError)
BROKER_UNREACHABLE = "broker_unreachable"  # TCP/timeout during connect (OSError)
BROKER_LOST = "broker_lost"        # the online poll raised (dead link, ping timeout)
DNS_FAILED = "dns_failed"          # the broker's name did not resolve
BROKER_UNTRUSTED = "broker_untrusted"  # TLS: certificate not from the clinic CA / wrong name

CAUSES = (WIFI_TIMEOUT, WIFI_ERROR, WIFI_LOST, BROKER_REFUSED, BROKER_UNREACHABLE,
          BROKER_LOST, DNS_FAILED, BROKER_UNTRUSTED)


def _default_rand():
    try:
        import random
        return random.random()
    except (ImportError, AttributeError):
        return 0.5


class Link:
    """Drives Wi-Fi and the broker connection from poll(now).

    wlan: network.WLAN-like (active, connect, isconnected, status).
    connect_mqtt(now) -> session_present: opens the MQTT session (may block
        up to its own timeout); raises OSError / MQTTError on failure.
    poll_online(now): called on every poll while ONLINE (normally the MQTT
        client's poll); any exception means the link is lost.
    close_mqtt(): called whenever the broker session is abandoned.
    on_online(session_present, now): after each successful connect.
    on_offline(cause, now): whenever the ONLINE state is left.
    clock_rand(): float in [0, 1) for the backoff jitter.
    prepare: optional object (csfw.net.Connector) whose prepare(now) does one
        blocking step before the CONNECT (DNS, then TCP + TLS) and returns
        True when it did one: each step then gets a poll of its own, so the
        watchdog is fed between DNS, the TLS handshake and the CONNACK wait.
    """

    def __init__(self, wlan, connect_mqtt, clock_rand=None, min_backoff_ms=1000,
                 max_backoff_ms=60000, wifi_timeout_ms=15000, ssid=None, key=None,
                 poll_online=None, close_mqtt=None, on_online=None, on_offline=None,
                 jitter_frac=0.25, prepare=None):
        self.wlan = wlan
        self._prepare = prepare
        self._connect_mqtt = connect_mqtt
        self._rand = clock_rand or _default_rand
        self.min_backoff_ms = min_backoff_ms
        self.max_backoff_ms = max_backoff_ms
        self.wifi_timeout_ms = wifi_timeout_ms
        self.jitter_frac = jitter_frac
        self.ssid = ssid
        self.key = key
        self._poll_online = poll_online
        self._close_mqtt = close_mqtt
        self.on_online = on_online
        self.on_offline = on_offline
        self.state = WIFI_DOWN
        self.since = 0            # now when the current state was entered
        self._deadline = 0        # join deadline or backoff end
        self.backoff_ms = 0       # the last delay chosen
        self.attempts = 0         # consecutive failures since last ONLINE
        self.session_present = False
        self.last_cause = None
        self.last_error = None
        # counters
        self.onlines = 0          # successful connects
        self.reconnects = 0       # successful connects after the first
        self.joins = 0            # Wi-Fi connect() calls
        self.failures = {}
        for cause in CAUSES:
            self.failures[cause] = 0

    @property
    def online(self):
        return self.state == ONLINE

    @property
    def state_name(self):
        return STATE_NAMES[self.state]

    def rssi(self):
        """Signal strength in dBm, or None when the port cannot say."""
        for getter in ("status", "config"):
            try:
                value = getattr(self.wlan, getter)("rssi")
            except Exception:  # rp2: status('rssi'); some ports: config('rssi')
                continue
            if isinstance(value, int):
                return value
        return None

    def _enter(self, state, now):
        self.state = state
        self.since = now

    def _wifi_up(self):
        try:
            return bool(self.wlan.isconnected())
        except Exception:
            return False

    def lost(self, now, cause=BROKER_LOST, error=None):
        """The app saw the link die (e.g. publish raised OSError)."""
        if self.state in (ONLINE, BROKER_CONNECTING, WIFI_JOINING):
            self._fail(now, cause, error)

    def _fail(self, now, cause, error=None):
        was_online = self.state == ONLINE
        if self._close_mqtt is not None:
            try:
                self._close_mqtt()
            except Exception:
                pass
        if self._prepare is not None:
            self._prepare.discard()  # a socket opened for a CONNECT never sent
        self.failures[cause] = self.failures.get(cause, 0) + 1
        self.last_cause = cause
        self.last_error = error
        self.attempts += 1
        base = self.min_backoff_ms
        for _ in range(self.attempts - 1):
            base *= 2
            if base >= self.max_backoff_ms:
                break
        base = min(base, self.max_backoff_ms)
        r = self._rand()
        if r < 0 or r >= 1:
            r = 0.5
        self.backoff_ms = base - int(base * self.jitter_frac * r)
        self._deadline = now + self.backoff_ms
        self._enter(BACKOFF, now)
        if was_online and self.on_offline is not None:
            self.on_offline(cause, now)

    def poll(self, now):
        """Advance the state machine by at most one step; returns state."""
        state = self.state
        if state == WIFI_DOWN:
            if self._wifi_up():
                self._enter(BROKER_CONNECTING, now)
            else:
                try:
                    self.wlan.active(True)
                    if self.ssid is None:
                        self.wlan.connect()
                    else:
                        self.wlan.connect(self.ssid, self.key)
                except Exception as exc:
                    self._fail(now, WIFI_ERROR, exc)
                    return self.state
                self.joins += 1
                self._deadline = now + self.wifi_timeout_ms
                self._enter(WIFI_JOINING, now)
        elif state == WIFI_JOINING:
            if self._wifi_up():
                self._enter(BROKER_CONNECTING, now)
            else:
                try:
                    status = self.wlan.status()
                except Exception:
                    status = 0
                if isinstance(status, int) and status < 0:
                    self._fail(now, WIFI_ERROR, status)
                elif now >= self._deadline:
                    self._fail(now, WIFI_TIMEOUT)
        elif state == BROKER_CONNECTING:
            if not self._wifi_up():
                self._fail(now, WIFI_LOST)
                return self.state
            if self._prepare is not None:
                dns = self._prepare.needs_resolve
                try:
                    if self._prepare.prepare(now):
                        return self.state  # one blocking step per poll
                except OSError as exc:
                    self._fail(now, DNS_FAILED if dns else BROKER_UNREACHABLE, exc)
                    return self.state
                except Exception as exc:  # mbedtls: ValueError on a failed verification
                    self._fail(now, BROKER_UNTRUSTED, exc)
                    return self.state
            try:
                present = self._connect_mqtt(now)
            except OSError as exc:
                self._fail(now, BROKER_UNREACHABLE, exc)
                return self.state
            except Exception as exc:  # MQTTError: CONNACK refused / protocol
                self._fail(now, BROKER_REFUSED, exc)
                return self.state
            self.session_present = bool(present)
            self.attempts = 0
            self.onlines += 1
            if self.onlines > 1:
                self.reconnects += 1
            self._enter(ONLINE, now)
            if self.on_online is not None:
                try:
                    self.on_online(self.session_present, now)
                except Exception as exc:  # e.g. subscribe() hit a dead socket
                    self._fail(now, BROKER_LOST, exc)
        elif state == ONLINE:
            if not self._wifi_up():
                self._fail(now, WIFI_LOST)
            elif self._poll_online is not None:
                try:
                    self._poll_online(now)
                except Exception as exc:
                    self._fail(now, BROKER_LOST, exc)
        elif state == BACKOFF:
            if now >= self._deadline:
                self._enter(BROKER_CONNECTING if self._wifi_up() else WIFI_DOWN, now)
        return self.state


def mqtt_link(wlan, client, ssid=None, key=None, connect_timeout_ms=5000, on_online=None,
              on_offline=None, **kwargs):
    """A Link wired to a csfw.mqtt.MQTTClient: connects it, resends its
    unacknowledged QoS 1 messages (spec 4.4) before on_online runs, polls it
    while ONLINE and closes it when the link is abandoned."""

    def connect_mqtt(now):
        present = client.connect(now, connect_timeout_ms)
        client.resend_inflight(now)
        return present

    return Link(wlan, connect_mqtt, ssid=ssid, key=key, poll_online=client.poll,
                close_mqtt=client.close, on_online=on_online, on_offline=on_offline,
                **kwargs)
