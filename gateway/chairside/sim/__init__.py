"""Simulation: simulated chairs, the demo, and launchers of real Mosquitto/InfluxDB for demo, tests and benchmarks."""
