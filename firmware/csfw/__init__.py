# Chairside chair-box firmware (MicroPython; also runs on CPython via firmware/host).
VERSION = "0.1.0"
