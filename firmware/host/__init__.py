"""Host hardware layer: fakes and simulators for running the firmware on CPython."""
