"""edgegen device: what the board is (backends, memory, identity), what fits on it, and what a run cost.

Its library modules reach the rest of edgegen only through the model-file package (edgegen.runtime.artifact, which
imports no tinygrad): never the engine, quantize or firmware_bridge. tinygrad is imported only inside the backend
probe subprocess and by `bench` (the one front end that runs the engine), so `edgegen device`
and `edgegen plan` never load tinygrad's compiler.
"""
from edgegen.device.errors import DeviceError
from edgegen.device.profiles import BOARD_PROFILES, BoardProfile, get_profile

__all__ = ["BOARD_PROFILES", "BoardProfile", "DeviceError", "get_profile"]
