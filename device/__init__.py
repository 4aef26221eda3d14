"""edgegen device: what the board is (backends, memory, identity), what fits on it, and what a run cost.

A leaf package: its library modules never import runtime, quantize, models or firmware_bridge. Only the `plan` and
`bench` front ends reach the runtime, inside functions: its model-file parser through device/model_open.py, and
bench its engine. tinygrad is imported only inside the backend probe subprocess and by `bench`, so `edgegen device`
and `edgegen plan` never load tinygrad's compiler.
"""
from edgegen.device.errors import DeviceError
from edgegen.device.profiles import BOARD_PROFILES, BoardProfile, get_profile

__all__ = ["BOARD_PROFILES", "BoardProfile", "DeviceError", "get_profile"]
