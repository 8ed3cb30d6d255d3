"""Store: readings, alarm events and audit records made durable in InfluxDB.

Line protocol (:mod:`.points`), the InfluxDB client (:mod:`.influx`), the disk
spool for outages (:mod:`.spool`), dead letters for lines InfluxDB refuses
(:mod:`.deadletter`) and the writer loop that ties them together (:mod:`.writer`).
"""
