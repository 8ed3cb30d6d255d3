# The box's broker connection: DNS once, TCP with a timeout, TLS that
# verifies the broker.  firmware/main.py builds a Connector with the board's
# `socket` and `ssl` modules; tests run the same code on the MicroPython Unix
# port (real `socket` and mbedtls `ssl`) against a real Mosquitto.
#
# Why each step is separate (docs/engineer.md, "Watchdog"):
# - lwIP's getaddrinfo has no timeout of its own (one silent DNS server costs
#   ~7 s, two ~14 s, the rp2 watchdog fires at 8.3 s).  resolve() is the only
#   call that does DNS; the link runs it in a poll of its own, right after the
#   watchdog was fed, and the address is cached until MAX_CONNECT_FAILS
#   connects in a row failed.  A broker given as an IP address never costs DNS.
# - connect() does TCP (timeout_s) + the TLS handshake (same timeout on the
#   plain socket, which MicroPython's SSLSocket reads through); the CONNACK
#   wait is the MQTT client's.
# - MicroPython's SSLContext starts with verify_mode CERT_NONE: the box would
#   hand its password to any impostor.  It is set to CERT_REQUIRED here, the
#   clinic CA is loaded, and server_hostname makes mbedtls check the broker
#   certificate's name (subjectAltName) against the configured host.
# - MicroPython's SSLSocket has no settimeout(): TlsSocket forwards it to the
#   plain socket underneath, so csfw.mqtt can bound every wait the same way
#   over TLS and plain TCP.
try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731

import binascii

EHOSTUNREACH = const(113)
EAGAIN = const(11)
MAX_CONNECT_FAILS = const(3)  # connects in a row that failed -> resolve again


def is_ip_literal(host):
    """True for a dotted IPv4 address (no DNS needed)."""
    parts = host.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p or len(p) > 3:
            return False
        for ch in p:
            if ch < "0" or ch > "9":
                return False
        if int(p) > 255:
            return False
    return True


def ca_der(data):
    """The clinic CA as DER bytes.  MicroPython's mbedtls build parses DER
    only (a PEM ca.crt raises "invalid cert"), so a PEM file, as `chairside
    certs` writes it, is decoded here: the first CERTIFICATE block."""
    if data[:1] == b"\x30":  # DER: an ASN.1 SEQUENCE
        return data
    begin = data.find(b"-----BEGIN CERTIFICATE-----")
    end = data.find(b"-----END CERTIFICATE-----")
    if begin < 0 or end < begin:
        raise ValueError("ca: neither DER nor a PEM certificate")
    body = data[begin + 27:end]
    b64 = bytearray()
    for ch in body:
        if ch > 32:  # drop line breaks and spaces
            b64.append(ch)
    return binascii.a2b_base64(bytes(b64))


class TlsSocket:
    """An SSLSocket plus the plain socket under it: settimeout() and
    setblocking() go to the plain socket (MicroPython's SSLSocket has no
    settimeout), recv/send to the TLS layer.  A non-blocking read with no
    data raises OSError(EAGAIN), as a plain socket's does."""

    def __init__(self, tls, raw):
        self._tls = tls
        self._raw = raw

    def settimeout(self, s):
        self._raw.settimeout(s)

    def setblocking(self, flag):
        self._raw.setblocking(flag)

    def recv(self, n):
        data = self._tls.read(n)
        if data is None:  # MicroPython stream: no data on a non-blocking socket
            raise OSError(EAGAIN)
        return data

    def send(self, data):
        n = self._tls.write(data)
        if n is None:
            raise OSError(EAGAIN)
        return n

    def close(self):
        try:
            self._tls.close()
        finally:
            try:
                self._raw.close()
            except OSError:
                pass


class Connector:
    """connect_fn for csfw.mqtt.MQTTClient, plus the separate resolve step.

    socket_mod: the `socket` module (board, Unix port, or firmware/host).
    ssl_mod, ca_data: the `ssl` module and the clinic CA (PEM or DER bytes; kept as DER);
        both None for plain TCP (only on a trusted wired test network).
    server_hostname: the name the broker certificate must carry (default:
        host).  timeout_s bounds the TCP connect and each TLS handshake read.
    """

    def __init__(self, host, port, socket_mod, ssl_mod=None, ca_data=None, timeout_s=3,
                 server_hostname=None):
        self.host = host
        self.port = port
        self._socket = socket_mod
        self._ssl = ssl_mod
        self._ca = None if ca_data is None else ca_der(ca_data)
        self.timeout_s = timeout_s
        self.server_hostname = server_hostname or host
        self.addr = None  # getaddrinfo answers an IP address without DNS
        self._open = None
        self.fails = 0           # connects in a row that failed
        self.resolves = 0
        self.resolve_failures = 0
        if ca_data is not None and ssl_mod is None:
            raise ValueError("ca_data without ssl")

    @property
    def tls(self):
        return self._ca is not None

    @property
    def needs_resolve(self):
        return self.addr is None

    def resolve(self):
        """The one DNS lookup (may block; see the header).  Raises OSError."""
        self.resolves += 1
        try:
            info = self._socket.getaddrinfo(self.host, self.port, 0, self._socket.SOCK_STREAM)
            addr = info[0][-1]
        except (OSError, IndexError) as exc:
            self.resolve_failures += 1
            raise OSError(EHOSTUNREACH) if isinstance(exc, IndexError) else exc
        self.addr = addr
        self.fails = 0
        return addr

    def prepare(self, now=0):
        """One blocking step towards a connection, for csfw.link: DNS if the
        address is not known, else TCP + TLS if no socket is prepared.
        Returns True when it did a step (the CONNECT waits for the next
        poll, after the watchdog was fed), False when ready.  Raises OSError
        (DNS or connect failed; the link backs off)."""
        if self.addr is None:
            self.resolve()
            return True
        if self._open is None:
            self.open()
            return True
        return False

    def _context(self):
        ssl = self._ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = ssl.CERT_REQUIRED  # MicroPython's default is CERT_NONE
        ctx.load_verify_locations(cadata=self._ca)
        return ctx

    @property
    def opened(self):
        return self._open is not None

    def open(self):
        """TCP connect (+ TLS handshake, broker verified); the socket is kept
        for the next __call__ (the MQTT client's CONNECT), so the link can do
        this and the CONNECT/CONNACK wait in two polls.  Never does DNS:
        without a resolved address it raises OSError."""
        self.discard()
        if self.addr is None:
            raise OSError(EHOSTUNREACH)
        raw = self._socket.socket()
        raw.settimeout(self.timeout_s)  # before wrapping: SSLSocket has no settimeout
        try:
            raw.connect(self.addr)
            if self._ca is None:
                sock = raw
            else:
                tls = self._context().wrap_socket(raw, server_hostname=self.server_hostname)
                sock = TlsSocket(tls, raw)
        except Exception:
            raw.close()
            self._failed()
            raise
        self.fails = 0
        self._open = sock
        return sock

    def discard(self):
        """Close a socket opened but not handed to the MQTT client."""
        sock = self._open
        self._open = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def __call__(self):
        """connect_fn: the socket open() prepared, or a new one."""
        sock = self._open
        self._open = None
        if sock is None:
            sock = self.open()
            self._open = None
        return sock

    def _failed(self):
        self.fails += 1
        if self.fails >= MAX_CONNECT_FAILS and not is_ip_literal(self.host):
            self.addr = None  # the broker may have moved: look it up again (own poll)


def make_connector(mq, socket_mod, ssl_mod=None, open_fn=open, timeout_s=3):
    """The Connector for a validated config.json "mqtt" section (what
    firmware/main.py runs): TLS with the clinic CA from mq["ca_file"] when
    mq["tls"] is true."""
    ca_data = None
    if mq.get("tls"):
        with open_fn(mq.get("ca_file") or "ca.crt", "rb") as f:
            ca_data = f.read()
        if ssl_mod is None:
            raise ValueError("mqtt.tls: no ssl module")
    return Connector(mq["host"], mq["port"], socket_mod, ssl_mod if ca_data is not None else None,
                     ca_data, timeout_s)


NTP_DELTA_S = const(2208988800)  # 1900-01-01 to 1970-01-01 (RFC 5905)


class NtpClient:
    """SNTP (RFC 4330) against one configured server, one blocking step per
    call so the watchdog is fed in between: the first call resolves the
    server (DNS; returns False), later calls send one query and return the
    server's time as epoch ms.  Every receive is bounded by timeout_s.
    Raises OSError (unreachable, timeout) or ValueError (a reply that is
    not a server answer with a time: wrong mode, stratum 0 / kiss-of-death,
    zero timestamp)."""

    def __init__(self, host, socket_mod, timeout_s=1, port=123):
        self.host = host
        self.port = port
        self._socket = socket_mod
        self.timeout_s = timeout_s
        self.addr = None
        self.queries = 0

    def __call__(self):
        sock_mod = self._socket
        if self.addr is None:
            self.addr = sock_mod.getaddrinfo(self.host, self.port, 0, sock_mod.SOCK_DGRAM)[0][-1]
            return False
        req = bytearray(48)
        req[0] = 0x1B  # LI 0, version 3, mode 3 (client)
        s = sock_mod.socket(sock_mod.AF_INET, sock_mod.SOCK_DGRAM)
        try:
            s.settimeout(self.timeout_s)
            s.sendto(req, self.addr)
            msg = s.recv(48)
        finally:
            s.close()
        self.queries += 1
        return ntp_epoch_ms(msg)


def ntp_epoch_ms(msg):
    """An SNTP server reply -> its transmit timestamp as ms since 1970."""
    if len(msg) < 48:
        raise ValueError("ntp: short reply")
    if msg[0] & 7 != 4 or msg[1] == 0:
        raise ValueError("ntp: not a server reply with a time")
    secs = (msg[40] << 24) | (msg[41] << 16) | (msg[42] << 8) | msg[43]
    frac = (msg[44] << 24) | (msg[45] << 16) | (msg[46] << 8) | msg[47]
    if secs == 0:
        raise ValueError("ntp: zero timestamp")
    return (secs - NTP_DELTA_S) * 1000 + ((frac * 1000) >> 32)
