"""Which tinygrad backend edgegen runs on when the user names none, and checking one the user names.

tinygrad prefers OpenCL over its CPU backend whenever an OpenCL platform opens. On a host whose only OpenCL device
is the CPU itself (PoCL, Intel's CPU runtime) that is the slow choice: measured here on SmolLM2 Q4_1
(benchmarks/bench_decode.py), CL on PoCL decoded 12.6 tok/s with 1461 MB peak RSS, tinygrad's CPU backend 20.6
tok/s with 301 MB. So edgegen's default is a real accelerator when one is usable (CUDA/NV, METAL, AMD, an OpenCL
GPU), and the CPU backend otherwise. `DEV=...` in the environment or `--device` still decide when given.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil

from runtime.errors import ArtifactError
from runtime.tinygrad_seam import install, opencl_device_type, tinygrad_default_device


@dataclasses.dataclass(frozen=True)
class BackendChoice:
    device: str  # a tinygrad device name: CPU, CL, CUDA, NV, METAL, ...
    reason: str  # why, in one sentence for `edgegen device`


def _clang_available() -> bool:
    return shutil.which(os.environ.get("CC", "clang")) is not None


@functools.cache
def default_backend() -> BackendChoice:
    """The backend a run without `--device` uses, and why (computed once per process)."""
    from tinygrad import Device

    install()
    if os.environ.get("DEV"):
        return BackendChoice(tinygrad_default_device(), "named by the DEV environment variable")
    try:
        picked = tinygrad_default_device()
    except Exception as e:  # noqa: BLE001 - nothing opens at all: the CPU backend is the one to try
        return BackendChoice("CPU", f"tinygrad found no backend that opens ({type(e).__name__}: {e})")
    if picked == "CPU":
        return BackendChoice("CPU", "tinygrad's CPU backend (clang) is the only one that opens here")
    if picked != "CL":
        return BackendChoice(picked, f"{picked} is an accelerator and opens here")
    try:
        kind = opencl_device_type(Device["CL"])
    except Exception as e:  # noqa: BLE001 - a CL device we cannot describe is not known to be a GPU
        kind, detail = None, f" ({type(e).__name__}: {e})"
    else:
        detail = ""
    if kind in ("gpu", "accelerator"):
        return BackendChoice("CL", f"the OpenCL device is a {kind}")
    if not _clang_available():
        return BackendChoice("CL", "the OpenCL device runs on the CPU, but clang (for the CPU backend) is missing")
    what = "runs on the CPU" if kind == "cpu" else f"is of unknown type{detail}"
    return BackendChoice("CPU", f"the only OpenCL device {what} (e.g. PoCL), where tinygrad's CPU backend is "
                                "faster and smaller")


def resolve_device(device: str | None) -> str:
    """`device` checked to open (ArtifactError naming it if not), or the default backend. Never changes tinygrad's
    process-wide default: callers pass the name to every tensor they create."""
    from tinygrad import Device

    install()
    name = default_backend().device if device is None else device.upper()
    try:
        Device[name]  # opens the backend: fails here if its compiler or driver is missing
    except Exception as e:
        raise ArtifactError(f"tinygrad device {name!r} is not usable here: {type(e).__name__}: {e}") from e
    return name


def report() -> dict:
    """The default backend and the JIT cache's disk use, as JSON for `edgegen device` (run in a child process)."""
    from runtime import jit_cache

    choice = default_backend()
    use = jit_cache.usage()
    return {"default_backend": choice.device, "reason": choice.reason,
            "jit_cache": {"folder": str(use.folder), "entries": use.entries, "size_bytes": use.size_bytes,
                          "limit_bytes": use.limit_bytes}}


if __name__ == "__main__":
    import json

    print(json.dumps(report()), flush=True)
