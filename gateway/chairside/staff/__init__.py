"""Staff: acknowledgements, standby, limit changes and drills, from staff to the alarm engine.

:mod:`.controls` applies staff messages in the gateway; :mod:`.commands` is the
``chairside staff`` command that sends them; :mod:`.drill` runs emergency drills.
"""
