"""edgegen device: what the board is (backends, memory, identity), what fits on it, and what a run cost.

A leaf package: it never imports runtime, quantize, models or firmware_bridge. tinygrad is imported only inside
the backend probe subprocess, so `edgegen device` and `edgegen plan` never load tinygrad's compiler.
"""
from device.errors import DeviceError
from device.profiles import BOARD_PROFILES, BoardProfile, get_profile

__all__ = ["BOARD_PROFILES", "BoardProfile", "DeviceError", "get_profile"]
