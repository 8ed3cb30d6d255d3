"""What the gateway publishes: alarm events, chairs' active sets, technical
alarms, box commands and staff answers, over one paho connection.

QoS 1 messages are queued in paho while the broker is away (up to
``MAX_QUEUED``) and sent on reconnect; the ingest session is a separate
connection, so publishing never waits for receiving or the other way round.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from chairside import contract
from chairside.metrics import Metrics
from chairside.model import AlarmEvent, Priority
from chairside.store.points import alarm_event_line

log = logging.getLogger("chairside.outbound")

MAX_QUEUED = 10_000


class Outbound:
    """The publishing connection and the messages the gateway sends."""

    def __init__(self, client_id: str, metrics: Metrics,
                 active_of: Callable[[str, str], list[dict[str, Any]]],
                 now_ms: Callable[[], int]) -> None:
        self.metrics = metrics
        self._active_of = active_of
        self._now_ms = now_ms
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.max_queued_messages_set(MAX_QUEUED)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def start(self, host: str, port: int, keepalive_s: int) -> None:
        self.client.connect_async(host, port, keepalive=keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    @property
    def connected(self) -> bool:
        return self.metrics.get("mqtt_publisher_connected") == 1

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker refused the publishing connection: %s", reason_code)
            return
        self.metrics.set("mqtt_publisher_connected", 1)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason_code: ReasonCode, properties: Any) -> None:
        self.metrics.set("mqtt_publisher_connected", 0)
        if reason_code.is_failure:
            log.warning("publishing connection lost: %s (paho reconnects)", reason_code)

    def publish(self, topic: str, payload: str, *, retain: bool = False, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN: QoS 1 messages are queued by paho and sent on reconnect
            self.metrics.inc("publish_errors")
            log.error("publish to %s failed: %s", topic, mqtt.error_string(info.rc))

    def publish_json(self, topic: str, message: dict[str, Any], *, retain: bool = False) -> None:
        self.publish(topic, json.dumps(message, separators=(",", ":")), retain=retain)

    def events(self, events: Sequence[AlarmEvent]) -> list[str]:
        """Publish alarm events and their chairs' active sets; return their points."""
        lines: list[str] = []
        chairs: set[tuple[str, str]] = set()
        for event in events:
            self.metrics.inc("alarm_events", event=event.event, priority=event.priority)
            log.warning("alarm %s %s: %s", event.event, event.key, event.text)
            self.publish_json(contract.topic("alarms", event.site, event.chair), event.to_payload())
            chairs.add((event.site, event.chair))
            try:
                lines.append(alarm_event_line(event))
            except ValueError as exc:
                log.error("cannot store alarm event %s: %s", event.id, exc)
        for site, chair in sorted(chairs):
            self.active_set(site, chair)
        return lines

    def active_set(self, site: str, chair: str) -> None:
        """Retained set of a chair's active alarms, for late subscribers."""
        try:
            active = self._active_of(site, chair)
        except Exception:
            self.metrics.inc("processing_errors", stage="alarm_active")
            log.exception("alarm stage active() failed for %s/%s", site, chair)
            return
        message = {"v": 1, "t": self._now_ms(), "active": active}
        self.publish_json(contract.topic("alarms_active", site, chair), message, retain=True)

    def technical_alarm(self, *, site: str, alarm: str, raised: bool, text: str, value: float,
                        limit: float, chair: str = "gateway", priority: Priority = "high") -> list[str]:
        """Raise or clear one of the gateway's own technical alarms; its point."""
        now = self._now_ms()
        event = AlarmEvent(
            id=f"gw-{alarm}-{chair}-{'raised' if raised else 'cleared'}-{now}",
            site=site, chair=chair, alarm=alarm, priority=priority, kind="technical",
            event="raised" if raised else "cleared", t=now, text=text, value=value, limit=limit,
        )
        self.metrics.inc("alarm_events", event=event.event, priority=event.priority)
        log.error("technical alarm %s %s: %s", alarm, event.event, text)
        self.publish_json(contract.topic("alarms", event.site, event.chair), event.to_payload())
        try:
            return [alarm_event_line(event)]
        except ValueError as exc:
            log.error("cannot store alarm event %s: %s", event.id, exc)
            return []
