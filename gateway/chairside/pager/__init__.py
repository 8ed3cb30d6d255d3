"""Chairside pager: pages on-call staff for alarm events (see docs/paging.md).

Stages: :mod:`.policy` (who, when) → :mod:`.escalation` (pure state machine
per dedup key) → :mod:`.ratelimit` → :mod:`.channels` (SMTP, webhook, MQTT)
→ records; :mod:`.state` keeps it durable, :mod:`.tokens` and
:mod:`.ackserver` serve the ack link, :mod:`.service` wires it to MQTT.
"""

from .policy import Person, Policy, PolicyError, load_policy, on_call, parse_policy

__all__ = ["Person", "Policy", "PolicyError", "load_policy", "on_call", "parse_policy"]
