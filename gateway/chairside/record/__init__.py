"""The infusion session record (issue 20): ``chairside report`` and ``chairside export``.

:mod:`.data` (typed rows) ← :mod:`.query` (InfluxDB) → :mod:`.figures`
(the numbers, pure) → :mod:`.chart` (PNG), :mod:`.pdf` (PDF), :mod:`.fhir`
(FHIR R4 Bundle).  Sessions themselves are started and ended by staff
through the gateway (:mod:`chairside.staff.sessions`).
"""
