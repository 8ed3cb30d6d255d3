"""``chairside staff``: what a nurse or the clinical lead does from a workstation.

* ``chairside staff ack --chair 3 --alarm spo2_low --by "RN Jones"`` acknowledges
  an alarm (the alarm engine records who and when; the pager stops escalating);
* ``chairside staff standby --chair 3 --by ...`` between patients (alarms
  cleared, technical alarms quiet until the next valid patient reading);
* ``chairside staff limit --chair 3 --param spo2_low.limit --value 88 --by ... --reason ...``
  changes one chair's limit (audited: who, when, old → new); ``--value default``
  returns to the profile's value.

Both publish the contract's staff messages (``alarm_ack``, ``limits_set``) and
wait, with a deadline, for the gateway's answer on MQTT.
"""

from __future__ import annotations

import argparse
import json
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from chairside import mqtt_auth
from chairside.contract import topic

ANSWER_TIMEOUT_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    for name, help_text in (("ack", "acknowledge an active alarm"), ("limit", "change one chair's limit"),
                            ("standby", "between patients: clear alarms, quiet technical alarms")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--site", default="demo-clinic")
        p.add_argument("--chair", required=True)
        p.add_argument("--by", required=True, help="your name, as it should appear in the record")
        p.add_argument("--mqtt-host", default="127.0.0.1")
        p.add_argument("--mqtt-port", type=int, default=1883)
        mqtt_auth.add_arguments(p)
        if name == "ack":
            p.add_argument("--alarm", required=True, help="condition name, e.g. spo2_low (docs/alarms.md)")
        elif name == "limit":
            p.add_argument("--param", required=True, help="e.g. spo2_low.limit or pulse_high.delay_s")
            p.add_argument("--value", required=True, help="a number, or 'default' to reset")
            p.add_argument("--reason", default="", help="why (kept in the audit record)")


def build_message(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The staff message and its topic, per contract.json gateway_messages."""
    if args.action == "ack":
        return topic("alarm_ack", args.site, args.chair), {"v": 1, "alarm": args.alarm, "by": args.by}
    if args.action == "standby":
        return topic("chair_standby", args.site, args.chair), {"v": 1, "by": args.by}
    value: float | None = None if args.value == "default" else float(args.value)
    message: dict[str, Any] = {"v": 1, "param": args.param, "value": value, "by": args.by}
    if args.reason:
        message["reason"] = args.reason
    return topic("limits_set", args.site, args.chair), message


def run(args: argparse.Namespace) -> int:
    target, message = build_message(args)
    answer: dict[str, Any] = {}
    answered = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"chairside-staff-{threading.get_ident()}")
    try:
        mqtt_auth.apply(client, args.mqtt_credentials, args.mqtt_ca)
    except mqtt_auth.CredentialsError as exc:
        print(exc)
        return 2

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            event = json.loads(msg.payload)
        except ValueError:
            return
        if args.action == "ack" and event.get("alarm") == args.alarm and event.get("event") == "acknowledged":
            answer.update(event)
            answered.set()

    client.on_message = on_message
    try:
        client.connect(args.mqtt_host, args.mqtt_port, keepalive=30)
    except OSError as exc:
        print(f"cannot reach the broker at {args.mqtt_host}:{args.mqtt_port}: {exc}")
        return 2
    client.loop_start()
    try:
        client.subscribe(topic("alarms", args.site, args.chair), qos=1)
        info = client.publish(target, json.dumps(message), qos=1)
        info.wait_for_publish(timeout=ANSWER_TIMEOUT_S)
        if not info.is_published():
            print("the broker did not accept the message in time")
            return 1
        if args.action == "limit":
            print(f"sent: {args.param} = {args.value} on chair {args.chair} (audited by the gateway)")
            return 0
        if args.action == "standby":
            print(f"chair {args.chair} in standby until the next valid patient reading")
            return 0
        if answered.wait(ANSWER_TIMEOUT_S):
            print(f"acknowledged: {answer.get('text', args.alarm)} by {answer.get('by')}")
            return 0
        print(f"no acknowledgement event within {ANSWER_TIMEOUT_S:.0f} s: "
              f"is {args.alarm} active on chair {args.chair}?")
        return 1
    finally:
        client.loop_stop()
        client.disconnect()
