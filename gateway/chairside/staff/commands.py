"""``chairside staff``: what a nurse or the clinical lead does from a workstation.

* ``chairside staff ack --chair 3 --alarm spo2_low --by "RN Jones"`` acknowledges
  an alarm (the alarm engine records who and when; the pager stops escalating);
* ``chairside staff standby --chair 3 --by ...`` between patients (alarms
  cleared, technical alarms quiet until the next valid patient reading);
* ``chairside staff limit --chair 3 --param spo2_low.limit --value 88 --by ... --reason ...``
  changes one chair's limit (audited: who, when, old → new); ``--value default``
  returns to the profile's value;
* ``chairside staff session start --chair 3 --by ... [--ref ENC-1234]`` and
  ``chairside staff session end --chair 3 --by ...`` start and end the
  chair's infusion session (``chairside report`` and ``chairside export``
  build its record; standby also ends it).

All publish the contract's staff messages (``alarm_ack``, ``limits_set``,
``chair_session``) and wait, with a deadline, for the gateway's answer on MQTT.
``--site`` is required unless ``CHAIRSIDE_SITE`` is set: a command meant for a
clinic never goes to the demo's site by default.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from chairside import mqtt_auth
from chairside.contract import topic

ANSWER_TIMEOUT_S = 10.0
SITE_ENV = "CHAIRSIDE_SITE"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    for name, help_text in (("ack", "acknowledge an active alarm"), ("limit", "change one chair's limit"),
                            ("standby", "between patients: clear alarms, quiet technical alarms"),
                            ("session", "start or end the chair's infusion session")):
        p = sub.add_parser(name, help=help_text)
        if name == "session":
            p.add_argument("what", choices=("start", "end"))
        p.add_argument("--site", default=os.environ.get(SITE_ENV), required=not os.environ.get(SITE_ENV),
                       help=f"site id (required unless {SITE_ENV} is set; the demo's is demo-clinic)")
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
        elif name == "session":
            p.add_argument("--ref", default="", help="start only: clinic reference, e.g. the EHR encounter "
                           "number (never a patient name)")


def build_message(args: argparse.Namespace, request_id: str) -> tuple[str, dict[str, Any]]:
    """The staff message and its topic, per contract.json gateway_messages."""
    message: dict[str, Any] = {"v": 1, "by": args.by, "id": request_id}
    if args.action == "ack":
        message["alarm"] = args.alarm
        return topic("alarm_ack", args.site, args.chair), message
    if args.action == "standby":
        return topic("chair_standby", args.site, args.chair), message
    if args.action == "session":
        message["action"] = args.what
        if getattr(args, "ref", ""):
            message["ref"] = args.ref
        return topic("chair_session", args.site, args.chair), message
    message["param"] = args.param
    message["value"] = None if args.value == "default" else float(args.value)
    if args.reason:
        message["reason"] = args.reason
    return topic("limits_set", args.site, args.chair), message


DONE = {
    "ack": "acknowledged {alarm} on chair {chair}",
    "standby": "chair {chair} in standby until the next valid patient reading (its limits are back to the profile)",
    "limit": "{param} = {value} on chair {chair} (audited)",
    "session": "session {session} {what}ed on chair {chair}",
}


def run(args: argparse.Namespace) -> int:
    request_id = uuid.uuid4().hex[:16]
    target, message = build_message(args, request_id)
    answer: dict[str, Any] = {}
    answered = threading.Event()
    try:
        # on the shipped broker the client id is the account (chairside-staff)
        client_id = mqtt_auth.client_id(args.mqtt_credentials, f"chairside-staff-{request_id}")
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        mqtt_auth.apply(client, args.mqtt_credentials, args.mqtt_ca)
    except mqtt_auth.CredentialsError as exc:
        print(exc)
        return 2

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            result = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(result, dict) and result.get("id") == request_id:
            answer.update(result)
            answered.set()

    subscribed = threading.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    try:
        client.connect(args.mqtt_host, args.mqtt_port, keepalive=30)
    except OSError as exc:
        print(f"cannot reach the broker at {args.mqtt_host}:{args.mqtt_port}: {exc}")
        return 2
    client.loop_start()
    try:
        client.subscribe(topic("control_result", args.site, args.chair), qos=1)
        if not subscribed.wait(ANSWER_TIMEOUT_S):
            print("could not subscribe for the gateway's answer (broker down or credentials?)")
            return 1
        info = client.publish(target, json.dumps(message), qos=1)
        info.wait_for_publish(timeout=ANSWER_TIMEOUT_S)
        if not info.is_published():
            print("the broker did not accept the message in time (credentials? see docs/engineer.md)")
            return 1
        if not answered.wait(ANSWER_TIMEOUT_S):
            print(f"no answer from the gateway within {ANSWER_TIMEOUT_S:.0f} s: nothing is confirmed; "
                  "check the chair's alarm log")
            return 1
        if not answer.get("ok"):
            print(f"refused: {answer.get('reason')}: {answer.get('detail')}")
            return 1
        print(DONE[args.action].format(**vars(args), session=answer.get("session", "?")))
        return 0
    finally:
        client.loop_stop()
        client.disconnect()
