"""The alarm engine as it was before the hot-path work, frozen as a test oracle.

``engine.py`` and ``conditions.py`` are verbatim copies of
``chairside/alarms/engine.py`` and ``chairside/alarms/conditions.py`` at the
commit before the per-reading fast paths were added (only the profile import
was made absolute, and re-sorted).  ``tests/gateway/test_alarm_fastpath_equivalence.py``
feeds the same long randomized streams to this engine and to the real one and
requires identical events and states.

Do not optimise or "fix" these files.  An intentional behaviour change of the
engine must either be made here too or retire this oracle.
"""

from .engine import AlarmEngine, AlarmState

__all__ = ["AlarmEngine", "AlarmState"]
