"""The gateway's settings (validated at construction, errors name the field) and its clock."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from chairside import contract


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall clock, milliseconds since 1970-01-01 UTC."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewayConfig:
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    client_id: str = "chairside-gateway"
    keepalive_s: int = 30
    influx_url: str = "http://127.0.0.1:8086"
    database: str = "chairside"
    influx_credentials: Path | None = None
    """JSON file {"user", "password"} of an InfluxDB user with WRITE on ``database``
    (InfluxDB with auth-enabled); None: no login"""
    influx_timeout_s: float = 2.0
    state_dir: Path | None = None
    store_max_lines: int = 200_000
    """store buffer bound (lines waiting for InfluxDB, incl. retries)"""
    batch_max: int = 500
    batch_interval_s: float = 0.05
    ack_window: int = 16
    """Flush as soon as this many MQTT messages wait for their ack: the broker
    sends no more than its in-flight limit (max_inflight_messages) unacked, so
    waiting for a full batch would cap throughput at in-flight ÷ interval."""
    tick_interval_s: float = 0.25  # condition delays are honoured to within this
    late_live_ms: int = 30_000
    """A live reading measured longer ago than this is treated as historical by the alarm stage."""
    retry_min_s: float = 0.5
    retry_max_s: float = 15.0
    reject_interval_s: float = 10.0
    """at most one ``rejects`` point per reason per interval"""
    skew_limit_ms: int = 120_000
    manual_ack: bool = True
    strict_fields: bool = False
    stop_timeout_s: float = 5.0
    metrics_port: int | None = None
    """serve /metrics and /health on 127.0.0.1:PORT"""
    spool_max_bytes: int = 256 * 1024 * 1024
    """bound of the on-disk spool (state_dir/spool); past it batches are dropped"""
    spool_segment_bytes: int = 4 * 1024 * 1024
    spool_fsync: bool = True
    deadletter_max_bytes: int = 64 * 1024 * 1024
    probe_interval_s: float = 5.0
    """while idle, check InfluxDB is reachable this often (for /health)"""
    health_write_age_s: float = 10.0
    """/health reports 503 when points are waiting and none was written, spooled or
    dead-lettered for this long (the writer cannot make progress)"""
    watermark_interval_ms: int = 1_000
    """a chair's stored watermark is published at most this often (docs/contract.md);
    1,000 chairs cost up to 1,000 retained messages a second: raise it for a large
    clinic (its cost is measured in benchmarks/throughput.py, docs/performance.md)"""
    probe_down_s: float = 1.0
    """while InfluxDB is unavailable, probe it this often, so writes resume within about this"""
    site: str = "gateway"
    """site id under which the gateway publishes its own technical alarm events"""

    def __post_init__(self) -> None:
        positive = {
            "mqtt_port": self.mqtt_port,
            "keepalive_s": self.keepalive_s,
            "influx_timeout_s": self.influx_timeout_s,
            "store_max_lines": self.store_max_lines,
            "batch_max": self.batch_max,
            "batch_interval_s": self.batch_interval_s,
            "ack_window": self.ack_window,
            "tick_interval_s": self.tick_interval_s,
            "retry_min_s": self.retry_min_s,
            "reject_interval_s": self.reject_interval_s,
            "stop_timeout_s": self.stop_timeout_s,
            "spool_max_bytes": self.spool_max_bytes,
            "spool_segment_bytes": self.spool_segment_bytes,
            "deadletter_max_bytes": self.deadletter_max_bytes,
            "probe_interval_s": self.probe_interval_s,
            "health_write_age_s": self.health_write_age_s,
            "probe_down_s": self.probe_down_s,
            "watermark_interval_ms": self.watermark_interval_ms,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"GatewayConfig.{name} must be > 0, got {value!r}")
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("GatewayConfig.retry_max_s must be >= retry_min_s")
        if self.store_max_lines < self.batch_max:
            raise ValueError("GatewayConfig.store_max_lines must be >= batch_max")
        if not contract.id_regex().fullmatch(self.site):
            raise ValueError(f"GatewayConfig.site {self.site!r} is not a valid id")
