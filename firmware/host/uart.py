"""Fake UART pair: the box's end and the device's end of one serial link.

Each direction is a bounded ring buffer (like a UART driver's receive buffer):
bytes written while the receiver's buffer is full are dropped and counted in
the receiving endpoint's ``dropped``.  ``cut()`` simulates an unplugged
module: nothing flows in either direction (written bytes are lost and
counted in ``lost``) until ``restore()``.

Kept MicroPython-compatible (no typing, no collections) so firmware tests on
the MicroPython VM may reuse it.
"""


class _Ring:
    def __init__(self, capacity):
        self.buf = bytearray(capacity)
        self.capacity = capacity
        self.head = 0
        self.count = 0
        self.dropped = 0

    def put(self, b):
        if self.count >= self.capacity:
            self.dropped += 1
            return False
        self.buf[(self.head + self.count) % self.capacity] = b
        self.count += 1
        return True

    def get(self):
        b = self.buf[self.head]
        self.head = (self.head + 1) % self.capacity
        self.count -= 1
        return b

    def clear(self):
        self.head = 0
        self.count = 0


class _Link:
    def __init__(self):
        self.connected = True
        self.lost = 0


class FakeUART:
    """One endpoint: any(), read(n), readinto(buf[, n]), write(b)."""

    def __init__(self, rx, tx, link):
        self._rx = rx
        self._tx = tx
        self._link = link
        self.written = 0

    @property
    def dropped(self):
        """Bytes dropped because this endpoint's receive buffer was full."""
        return self._rx.dropped

    @property
    def lost(self):
        """Bytes written while the link was cut (both directions)."""
        return self._link.lost

    def any(self):
        if not self._link.connected:
            return 0
        return self._rx.count

    def read(self, n=None):
        avail = self.any()
        if not avail:
            return None
        if n is None or n > avail:
            n = avail
        out = bytearray(n)
        for i in range(n):
            out[i] = self._rx.get()
        return bytes(out)

    def readinto(self, buf, n=None):
        avail = self.any()
        if not avail:
            return None
        if n is None or n > len(buf):
            n = len(buf)
        if n > avail:
            n = avail
        for i in range(n):
            buf[i] = self._rx.get()
        return n

    def write(self, data):
        if not self._link.connected:
            self._link.lost += len(data)
            return len(data)
        for b in data:
            self._tx.put(b)
        self.written += len(data)
        return len(data)

    def cut(self):
        """Disconnect the link: pending bytes are lost, nothing flows."""
        self._link.connected = False
        self._link.lost += self._rx.count + self._tx.count
        self._rx.clear()
        self._tx.clear()

    def restore(self):
        self._link.connected = True

    @property
    def connected(self):
        return self._link.connected


def uart_pair(capacity=1024):
    """(box_side, device_side) endpoints of one link; capacity per direction."""
    to_box = _Ring(capacity)
    to_device = _Ring(capacity)
    link = _Link()
    box = FakeUART(to_box, to_device, link)
    device = FakeUART(to_device, to_box, link)
    return box, device


def reclock(data, tx_baud, rx_baud, phase=0.0):
    """The bytes a UART receiving at rx_baud makes of `data` sent back to
    back (8N1) at tx_baud: a wrong baud rate as the box would see it.

    The receiver waits for a low level (start bit), samples the 8 data bits
    (LSB first) in the middle of each of its own bit times, and then hunts
    for the next start bit after its stop-bit sample; a byte whose stop bit
    reads low (framing error) is still delivered, as many UART drivers do.
    ``phase`` (in tx bit times) delays the receiver's first look at the line.
    """
    bits = []
    for b in data:
        bits.append(0)
        for i in range(8):
            bits.append((b >> i) & 1)
        bits.append(1)
    n = len(bits)

    def line(t):  # t in seconds
        k = int(t * tx_baud)
        return bits[k] if 0 <= k < n else 1

    out = bytearray()
    rx_bit = 1.0 / rx_baud
    step = rx_bit / 16  # 16x oversampling, as UARTs do
    t = phase / tx_baud
    end = n / tx_baud
    while t < end:
        if line(t):
            t += step
            continue
        value = 0
        for i in range(8):
            value |= line(t + (1.5 + i) * rx_bit) << i
        out.append(value)
        t += 9.5 * rx_bit  # the stop-bit sample; hunt for the next start from here
    return bytes(out)
