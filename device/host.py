"""Host facts: memory, CPU model and cores, and the board identity the OS exposes."""
from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

# Where Linux boards name themselves: Jetson and Raspberry Pi both publish a device-tree model string.
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
TEGRA_RELEASE = Path("/etc/nv_tegra_release")


@dataclass(frozen=True)
class HostInfo:
    """One snapshot of the machine."""

    system: str  # platform.system(): Linux, Darwin, ...
    machine: str  # x86_64, aarch64, arm64
    cpu_model: str | None
    cpu_logical_cores: int
    cpu_physical_cores: int | None
    memory_total_bytes: int
    memory_available_bytes: int
    board_model: str | None  # device-tree model or Apple chip; None on a generic PC/VM
    tegra_release: str | None  # first line of /etc/nv_tegra_release on a Jetson

    def to_dict(self) -> dict:
        return asdict(self)


def _read_text(path: Path) -> str | None:
    try:
        # The device-tree strings are NUL-terminated.
        return path.read_text(errors="replace").strip("\x00\n ") or None
    except OSError:
        return None


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def read_cpu_model() -> str | None:
    """The CPU's marketing name: /proc/cpuinfo on Linux (x86 'model name', Arm 'Model'), sysctl on macOS."""
    if platform.system() == "Darwin":
        return _sysctl("machdep.cpu.brand_string")
    info = _read_text(Path("/proc/cpuinfo")) or ""
    for key in ("model name", "Model", "Hardware"):
        for line in info.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or None


def read_board_model() -> str | None:
    """The board's own name: device-tree model (Jetson, Raspberry Pi) or the Apple chip (sysctl)."""
    if platform.system() == "Darwin":
        return _sysctl("machdep.cpu.brand_string")  # "Apple M1", "Apple M2 Pro", ...
    return _read_text(DEVICE_TREE_MODEL)


def read_memory() -> tuple[int, int]:
    """(total, available) bytes; on Linux psutil reads MemTotal and MemAvailable from /proc/meminfo."""
    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def read_host() -> HostInfo:
    """Snapshot this machine; never raises for a missing file (a field is None instead)."""
    total, available = read_memory()
    tegra = _read_text(TEGRA_RELEASE)
    return HostInfo(
        system=platform.system(), machine=platform.machine(), cpu_model=read_cpu_model(),
        cpu_logical_cores=os.cpu_count() or 1, cpu_physical_cores=psutil.cpu_count(logical=False),
        memory_total_bytes=total, memory_available_bytes=available,
        board_model=read_board_model(), tegra_release=tegra.splitlines()[0] if tegra else None,
    )
