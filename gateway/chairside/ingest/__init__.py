"""Ingest: box messages in (MQTT session or USB-serial bridge), validated, time-stamped and de-duplicated.

Next stage: :mod:`chairside.alarms` (live readings), then :mod:`chairside.store`.
"""
