# MAX30102 pulse-oximetry/heart-rate sensor, I2C driver (alternative sensor
# path, src "max30102": its estimates are NOT clinically validated).
#
# Register map, bit fields and figures from the Maxim MAX30102 datasheet
# (19-7740): 7-bit I2C address 0x57; PART_ID (0xFF) reads 0x15; a 32-sample
# FIFO with write/read pointers (0x04/0x06) and an overflow counter (0x05);
# in SpO2 mode each sample is 6 bytes (3 red, then 3 IR), 18-bit values
# right-justified in 3 bytes; LED pulse amplitude 0.2 mA per LSB.
#
# The i2c object is injected (machine.I2C on the board, a fake on the host):
# readfrom_mem_into(addr, reg, buf) and writeto_mem(addr, reg, buf).
try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731

ADDR = const(0x57)
PART_ID_VALUE = const(0x15)

REG_INT_STATUS_1 = const(0x00)
REG_INT_STATUS_2 = const(0x01)
REG_INT_ENABLE_1 = const(0x02)
REG_INT_ENABLE_2 = const(0x03)
REG_FIFO_WR_PTR = const(0x04)
REG_OVF_COUNTER = const(0x05)
REG_FIFO_RD_PTR = const(0x06)
REG_FIFO_DATA = const(0x07)
REG_FIFO_CONFIG = const(0x08)
REG_MODE_CONFIG = const(0x09)
REG_SPO2_CONFIG = const(0x0A)
REG_LED1_PA = const(0x0C)     # red
REG_LED2_PA = const(0x0D)     # IR
REG_TEMP_INT = const(0x1F)
REG_TEMP_FRAC = const(0x20)
REG_TEMP_CONFIG = const(0x21)
REG_REV_ID = const(0xFE)
REG_PART_ID = const(0xFF)

MODE_RESET = const(0x40)
MODE_SHDN = const(0x80)
MODE_HR = const(0x02)         # red only
MODE_SPO2 = const(0x03)       # red + IR

FIFO_DEPTH = const(32)
BYTES_PER_SAMPLE = const(6)   # SpO2 mode
SAMPLE_MASK = const(0x3FFFF)  # 18-bit ADC

# SPO2_CONFIG[4:2] sample-rate codes (samples per second)
SAMPLE_RATES = (50, 100, 200, 400, 800, 1000, 1600, 3200)
# SPO2_CONFIG[1:0] LED pulse width code -> ADC resolution bits
PULSE_WIDTH_BITS = (15, 16, 17, 18)
# SPO2_CONFIG[6:5] ADC full scale (nA): 2048, 4096, 8192, 16384
ADC_RANGE_CODES = (0, 1, 2, 3)
# FIFO_CONFIG[7:5] sample averaging: 1, 2, 4, 8, 16, 32 samples
AVERAGING = (1, 2, 4, 8, 16, 32)

LED_MA_PER_LSB_X10 = const(2)  # 0.2 mA per LSB


class Max30102Error(Exception):
    pass


def led_code(ma_x10):
    """LED current in tenths of mA -> register value (0.2 mA steps, 0..51 mA)."""
    code = ma_x10 // LED_MA_PER_LSB_X10
    if code < 0 or code > 255:
        raise ValueError("led current")
    return code


def spo2_config(rate_sps, pw_code=3, adc_range=1):
    if rate_sps not in SAMPLE_RATES:
        raise ValueError("sample rate")
    if pw_code not in (0, 1, 2, 3) or adc_range not in ADC_RANGE_CODES:
        raise ValueError("pulse width / range")
    return (adc_range << 5) | (SAMPLE_RATES.index(rate_sps) << 2) | pw_code


def fifo_config(averaging=1, rollover=True, almost_full=0x0F):
    if averaging not in AVERAGING:
        raise ValueError("averaging")
    return (AVERAGING.index(averaging) << 5) | (0x10 if rollover else 0) | (almost_full & 0x0F)


def samples_waiting(wr_ptr, rd_ptr, ovf):
    """Samples in the FIFO from its pointers (datasheet FIFO description)."""
    if ovf:
        return FIFO_DEPTH
    return (wr_ptr - rd_ptr) & (FIFO_DEPTH - 1)


class Max30102:
    """Configure, then call read(cb) to drain the FIFO: cb(red, ir) per sample."""

    def __init__(self, i2c, addr=ADDR):
        self._i2c = i2c
        self._addr = addr
        self._one = bytearray(1)
        self._ptrs = bytearray(3)       # WR_PTR, OVF_COUNTER, RD_PTR
        self._fifo = bytearray(FIFO_DEPTH * BYTES_PER_SAMPLE)
        self.rate_sps = 100
        self.overflows = 0
        self.samples = 0

    def _read_reg(self, reg):
        self._i2c.readfrom_mem_into(self._addr, reg, self._one)
        return self._one[0]

    def _write_reg(self, reg, value):
        self._one[0] = value
        self._i2c.writeto_mem(self._addr, reg, self._one)

    def part_id(self):
        return self._read_reg(REG_PART_ID)

    def init(self, rate_sps=100, red_ma_x10=70, ir_ma_x10=70, averaging=1):
        """Check the part ID, reset, configure SpO2 mode. Raises Max30102Error."""
        pid = self.part_id()
        if pid != PART_ID_VALUE:
            raise Max30102Error("part id 0x%02x" % pid)
        self._write_reg(REG_MODE_CONFIG, MODE_RESET)
        self._write_reg(REG_FIFO_CONFIG, fifo_config(averaging))
        self._write_reg(REG_SPO2_CONFIG, spo2_config(rate_sps))
        self._write_reg(REG_LED1_PA, led_code(red_ma_x10))
        self._write_reg(REG_LED2_PA, led_code(ir_ma_x10))
        self._write_reg(REG_FIFO_WR_PTR, 0)
        self._write_reg(REG_OVF_COUNTER, 0)
        self._write_reg(REG_FIFO_RD_PTR, 0)
        self._write_reg(REG_MODE_CONFIG, MODE_SPO2)
        self.rate_sps = rate_sps // averaging

    def read(self, cb):
        """Drain the FIFO; cb(red, ir) per sample; returns the sample count."""
        self._i2c.readfrom_mem_into(self._addr, REG_FIFO_WR_PTR, self._ptrs)
        n = samples_waiting(self._ptrs[0], self._ptrs[2], self._ptrs[1])
        if self._ptrs[1]:
            self.overflows += self._ptrs[1]
        if not n:
            return 0
        mv = memoryview(self._fifo)
        self._i2c.readfrom_mem_into(self._addr, REG_FIFO_DATA, mv[:n * BYTES_PER_SAMPLE])
        f = self._fifo
        for i in range(n):
            j = i * BYTES_PER_SAMPLE
            red = ((f[j] << 16) | (f[j + 1] << 8) | f[j + 2]) & SAMPLE_MASK
            ir = ((f[j + 3] << 16) | (f[j + 4] << 8) | f[j + 5]) & SAMPLE_MASK
            cb(red, ir)
        self.samples += n
        return n
