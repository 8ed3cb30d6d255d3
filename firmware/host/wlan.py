"""FakeWLAN: MicroPython's ``network.WLAN`` (station) API for host runs.

``cut()`` simulates a Wi-Fi outage: ``isconnected()`` turns False and every
socket opened through :mod:`host.sockets` with this WLAN is closed (so the
broker sees the drop and publishes the last will) and fails from then on.
``restore()`` lets the next ``connect()`` succeed again.
"""

from __future__ import annotations

from typing import Any

# network.STAT_* values of the MicroPython rp2 (CYW43) port
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_GOT_IP = 3
STAT_CONNECT_FAIL = -1
STAT_NO_AP_FOUND = -2
STAT_WRONG_PASSWORD = -3


class FakeWLAN:
    """Station interface.  ``join_polls``: how many ``isconnected()`` /
    ``status()`` calls a join takes before the link is up (0 = at once).
    ``ssid``/``key``: when set, a ``connect()`` with other values fails."""

    def __init__(
        self,
        ssid: str | None = None,
        key: str | None = None,
        join_polls: int = 0,
        rssi: int = -55,
    ) -> None:
        self._ssid = ssid
        self._key = key
        self.join_polls = join_polls
        self.rssi = rssi
        self._active = False
        self._status = STAT_IDLE
        self._joining = 0
        self._cut = False
        self._sockets: list[Any] = []
        self.connect_calls = 0
        self.cuts = 0

    # -- network.WLAN API

    def active(self, is_active: bool | None = None) -> bool:
        if is_active is not None:
            self._active = bool(is_active)
            if not self._active:
                self.disconnect()
        return self._active

    def connect(self, ssid: str | None = None, key: str | None = None) -> None:
        if not self._active:
            raise OSError("WLAN not active")
        self.connect_calls += 1
        if self._cut:
            self._status = STAT_NO_AP_FOUND
            return
        if self._ssid is not None and ssid != self._ssid:
            self._status = STAT_NO_AP_FOUND
            return
        if self._key is not None and key != self._key:
            self._status = STAT_WRONG_PASSWORD
            return
        self._status = STAT_CONNECTING
        self._joining = self.join_polls
        self._advance()

    def disconnect(self) -> None:
        self._status = STAT_IDLE
        self._close_sockets()

    def isconnected(self) -> bool:
        self._advance()
        return self._status == STAT_GOT_IP

    def status(self, param: str | None = None) -> int:
        if param is None:
            self._advance()
            return self._status
        if param == "rssi":
            if self._status != STAT_GOT_IP:
                raise OSError("not connected")
            return self.rssi
        raise ValueError("unknown status param")

    def config(self, *args: str, **kwargs: Any) -> Any:
        # The rp2 port answers config('mac'/'ssid'/...); 'rssi' is not a
        # config parameter there (status('rssi') is), so it raises here too.
        if kwargs:
            return None
        if args == ("mac",):
            return b"\x28\xcd\xc1\x00\x00\x01"
        if args == ("ssid",):
            return self._ssid or ""
        raise ValueError("unknown config param")

    def ifconfig(self) -> tuple[str, str, str, str]:
        if self._status != STAT_GOT_IP:
            return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    # -- test controls

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Wi-Fi outage: drop the association and kill every open socket."""
        self._cut = True
        self.cuts += 1
        if self._status in (STAT_GOT_IP, STAT_CONNECTING):
            self._status = STAT_CONNECT_FAIL
        self._close_sockets()

    def restore(self) -> None:
        """End of the outage; the next connect() joins again."""
        self._cut = False

    # -- used by host.sockets

    def register(self, sock: Any) -> None:
        self._sockets = [s for s in self._sockets if not s.closed]
        self._sockets.append(sock)

    def _close_sockets(self) -> None:
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.kill()

    def _advance(self) -> None:
        if self._status == STAT_CONNECTING and not self._cut:
            if self._joining > 0:
                self._joining -= 1
            else:
                self._status = STAT_GOT_IP
