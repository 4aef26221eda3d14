"""This machine as a whole: host facts, working backends, the matching board profile, and a 'host' profile."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from edgegen.device.backends import BACKENDS, child_env, probe_backends
from edgegen.device.host import read_host
from edgegen.device.profiles import BoardProfile, match_profile

COPY_BYTES = 256 * 1024 * 1024  # larger than any last-level cache, so the copy measures DRAM


def measure_copy_bandwidth(size_bytes: int = COPY_BYTES, repeats: int = 5) -> float:
    """Best sustained bytes/s of a numpy array copy (read + write counted), STREAM 'copy' style.

    The first pass only faults the destination pages in; the best of the rest is what the memory can do when
    the other tenants of a shared machine let it.
    """
    src = np.ones(size_bytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best_s = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        np.copyto(dst, src)
        best_s = min(best_s, time.perf_counter() - start)
    return 2 * src.nbytes / best_s


def measure_copy_bandwidth_in_child(timeout_s: float = 120) -> float:
    """measure_copy_bandwidth in a child process, so that its 512 MiB of arrays never count in the caller's peak
    RSS (a bench process measures its own)."""
    code = "from edgegen.device.machine import measure_copy_bandwidth; print(measure_copy_bandwidth())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, check=True,
                         env=child_env())
    return float(out.stdout.strip().splitlines()[-1])


def host_profile(bandwidth_bytes_per_s: float | None = None) -> BoardProfile:
    """A profile of this very machine: its memory now, and its copy bandwidth measured (or given)."""
    host = read_host()
    if bandwidth_bytes_per_s is None:
        bandwidth_bytes_per_s = measure_copy_bandwidth_in_child()
        source = "measured on this host: best numpy copy of 256 MiB (read + write), a sustained figure, not peak"
    else:
        source = "given by the caller"
    return BoardProfile(
        name="host", description=f"this machine ({host.cpu_model or host.machine})", backend="CPU",
        memory_bytes=host.memory_total_bytes, memory_source="MemTotal (/proc/meminfo via psutil)",
        bandwidth_bytes_per_s=bandwidth_bytes_per_s, bandwidth_source=source,
        reserved_bytes=host.memory_total_bytes - host.memory_available_bytes,
        reserved_source="in use by other processes now: MemTotal - MemAvailable",
    )


def machine_report(backends: tuple[str, ...] = BACKENDS, timeout_s: float = 60.0) -> dict:
    """Everything `edgegen device` reports, as one JSON-ready dict."""
    host = read_host()
    probed = probe_backends(backends, timeout_s=timeout_s)
    profile = match_profile(host.board_model, host.memory_total_bytes)
    return {
        "host": host.to_dict(),
        "backends": probed,
        "usable_backends": [b["backend"] for b in probed if b["usable"]],
        "board_profile": profile.name if profile else None,
    }
