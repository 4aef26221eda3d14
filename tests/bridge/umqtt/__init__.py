"""Stand-in for MicroPython's `umqtt` package so the reference client runs under CPython in tests."""
