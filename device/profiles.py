"""Board profiles: memory, memory bandwidth and what the OS keeps, each figure with its source.

Decode on these boards is memory-bound (every weight is read once per token), so bandwidth sets the ceiling the
planner predicts and the share `bench` reports. Bandwidths are the vendors' peak figures unless stated: sustained
copies reach roughly 60-85% of them. Reserves are our estimates, labelled as such.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgegen.device.errors import DeviceError

GB = 1000**3  # vendors quote decimal gigabytes per second
GIB = 1024**3  # and binary gibibytes of RAM


@dataclass(frozen=True)
class BoardProfile:
    """What the planner needs to know about one board."""

    name: str
    description: str
    backend: str  # the tinygrad DEV a model would run on there
    memory_bytes: int
    memory_source: str
    bandwidth_bytes_per_s: float
    bandwidth_source: str
    reserved_bytes: int  # OS, desktop and driver: not available to the model
    reserved_source: str

    @property
    def usable_bytes(self) -> int:
        return self.memory_bytes - self.reserved_bytes

    def to_dict(self) -> dict:
        return {
            "name": self.name, "description": self.description, "backend": self.backend,
            "memory_bytes": self.memory_bytes, "memory_source": self.memory_source,
            "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s, "bandwidth_source": self.bandwidth_source,
            "reserved_bytes": self.reserved_bytes, "reserved_source": self.reserved_source,
            "usable_bytes": self.usable_bytes,
        }


_JETSON_MODULES = "NVIDIA Jetson module data sheets / developer.nvidia.com/embedded/jetson-modules"
_JETSON_RESERVE = "estimate: JetPack 6 Ubuntu desktop plus a CUDA context (a headless image frees about 0.8 GB)"
_RPI5_BUS = ("Raspberry Pi 5 product brief: LPDDR4X-4267 on a 32-bit bus; peak derived as 4267 MT/s x 4 B "
             "(STREAM-style copies reach about 10 GB/s)")
_RPI5_RESERVE = "estimate: Raspberry Pi OS Lite idle plus the firmware's CMA carve-out"
_APPLE_RESERVE = ("estimate: macOS on an 8 GB Mac leaves Metal a recommendedMaxWorkingSetSize of about 5.3-5.7 GB "
                  "and the rest of the system needs some of that too")

BOARD_PROFILES: dict[str, BoardProfile] = {p.name: p for p in [
    BoardProfile(
        "jetson-orin-nano-4gb", "NVIDIA Jetson Orin Nano 4GB", "CUDA",
        4 * GIB, f"{_JETSON_MODULES}: 4GB 64-bit LPDDR5",
        34 * GB, f"{_JETSON_MODULES}: 34 GB/s (51 GB/s in JetPack 6.2 'Super' mode)",
        int(1.2 * GIB), _JETSON_RESERVE),
    BoardProfile(
        "jetson-orin-nano-8gb", "NVIDIA Jetson Orin Nano 8GB", "CUDA",
        8 * GIB, f"{_JETSON_MODULES}: 8GB 128-bit LPDDR5",
        68 * GB, f"{_JETSON_MODULES}: 68 GB/s (102 GB/s in JetPack 6.2 'Super' mode)",
        int(1.5 * GIB), _JETSON_RESERVE),
    BoardProfile(
        "jetson-agx-orin-32gb", "NVIDIA Jetson AGX Orin 32GB", "CUDA",
        32 * GIB, f"{_JETSON_MODULES}: 32GB 256-bit LPDDR5",
        204.8 * GB, f"{_JETSON_MODULES}: 204.8 GB/s",
        2 * GIB, _JETSON_RESERVE),
    BoardProfile(
        "jetson-agx-orin-64gb", "NVIDIA Jetson AGX Orin 64GB", "CUDA",
        64 * GIB, f"{_JETSON_MODULES}: 64GB 256-bit LPDDR5",
        204.8 * GB, f"{_JETSON_MODULES}: 204.8 GB/s",
        2 * GIB, _JETSON_RESERVE),
    BoardProfile(
        "rpi5-4gb", "Raspberry Pi 5 4GB", "CPU",
        4 * GIB, "Raspberry Pi 5 product brief: 4GB LPDDR4X-4267 SDRAM",
        4267e6 * 4, _RPI5_BUS,
        int(0.4 * GIB), _RPI5_RESERVE),
    BoardProfile(
        "rpi5-8gb", "Raspberry Pi 5 8GB", "CPU",
        8 * GIB, "Raspberry Pi 5 product brief: 8GB LPDDR4X-4267 SDRAM",
        4267e6 * 4, _RPI5_BUS,
        int(0.4 * GIB), _RPI5_RESERVE),
    BoardProfile(
        "apple-m1-8gb", "Apple M1, 8 GB unified memory", "METAL",
        8 * GIB, "Apple M1 technical specifications: 8GB unified memory",
        68.25 * GB, "AnandTech M1 review (2020): LPDDR4X-4266 on a 128-bit bus = 68.25 GB/s (Apple publishes none)",
        int(2.5 * GIB), _APPLE_RESERVE),
    BoardProfile(
        "apple-m2-8gb", "Apple M2, 8 GB unified memory", "METAL",
        8 * GIB, "Apple M2 technical specifications: 8GB unified memory",
        100 * GB, "Apple newsroom, M2 announcement (June 2022): 100GB/s unified memory bandwidth",
        int(2.5 * GIB), _APPLE_RESERVE),
    BoardProfile(
        "generic-opencl-gpu", "A generic integrated OpenCL GPU sharing dual-channel DDR4-3200", "CL",
        4 * GIB, "assumption: 4 GB of shared memory the GPU may allocate from",
        51.2 * GB, "assumption: dual-channel DDR4-3200 shared with the CPU, 2 x 64-bit x 3200 MT/s = 51.2 GB/s",
        int(0.5 * GIB), "estimate: driver and display buffers"),
]}


def get_profile(name: str) -> BoardProfile:
    """The registered profile called `name` ("host": this machine, bandwidth measured); DeviceError otherwise."""
    if name == "host":
        from edgegen.device.machine import host_profile  # measures; only when asked for

        return host_profile()
    try:
        return BOARD_PROFILES[name]
    except KeyError:
        known = ", ".join([*BOARD_PROFILES, "host"])
        raise DeviceError(f"unknown board {name!r}: expected one of {known}") from None


def match_profile(board_model: str | None, memory_bytes: int) -> BoardProfile | None:
    """The profile for a detected board identity (device-tree model or Apple chip name), picked by memory size."""
    if not board_model:
        return None
    model = board_model.lower()
    families = {"orin nano": "jetson-orin-nano", "agx orin": "jetson-agx-orin", "raspberry pi 5": "rpi5",
                "apple m1": "apple-m1", "apple m2": "apple-m2"}
    for key, prefix in families.items():
        if key in model:
            candidates = [p for p in BOARD_PROFILES.values() if p.name.startswith(prefix)]
            # The variant whose nominal memory is closest to what the OS reports (the OS sees a bit less).
            return min(candidates, key=lambda p: abs(p.memory_bytes - memory_bytes))
    return None
