"""Which tinygrad backend edgegen runs on when the user names none, and checking one the user names.

tinygrad prefers OpenCL over its CPU backend whenever an OpenCL platform opens. On a host whose only OpenCL device
is the CPU itself (PoCL, Intel's CPU runtime) that is the slow choice: CL on PoCL decodes slower than tinygrad's CPU
backend and with far more peak RSS (benchmarks/bench_decode.py; the figures: docs/MEASUREMENTS.md). So
edgegen's default is a real accelerator when one is usable (CUDA/NV, METAL, AMD, an OpenCL GPU), and the CPU backend
otherwise. `DEV=...` in the environment or `--device` still decide when given.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgegen.runtime.errors import ArtifactError
from edgegen.runtime.tinygrad_seam import (
    install,
    named_default_device,
    opencl_device_type,
    set_default_device,
    tinygrad_default_device,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BackendChoice:
    device: str  # a tinygrad device name: CPU, CL, CUDA, NV, METAL, ...
    reason: str  # why, in one sentence for `edgegen device`


def _clang_available() -> bool:
    return shutil.which(os.environ.get("CC", "clang")) is not None


@functools.cache
def default_backend() -> BackendChoice:
    """edgegen's default backend, which also becomes tinygrad's process-wide default when DEV is not set (see
    runtime.tinygrad_seam.set_default_device: tinygrad consults its default inside ordinary calls)."""
    choice = _default_backend()
    if not os.environ.get("DEV"):
        set_default_device(choice.device)
    return choice


def _default_backend() -> BackendChoice:
    """The backend a run without `--device` uses, and why.

    Deciding means opening backends: tinygrad's own choice opens each in turn, and asking OpenCL for its devices
    loads every platform's driver (PoCL brings LLVM, which stays resident and raises the peak RSS of a run that then
    uses the CPU backend: docs/MEASUREMENTS.md). So the decision is made in a child process and remembered per boot
    and driver set (`choice_key`) in the edgegen cache; this process opens only the backend it will use."""
    if os.environ.get("DEV"):
        return BackendChoice(tinygrad_default_device(), "named by the DEV environment variable")
    key = choice_key()
    cache = _choice_cache()
    try:
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return BackendChoice(saved["device"], saved["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        done = subprocess.run([sys.executable, "-m", "edgegen.runtime.backend", "--choose"], capture_output=True,
                              text=True, timeout=120, check=True,
                              env={k: v for k, v in os.environ.items() if k != "DEV"})
        out = json.loads(done.stdout.strip().splitlines()[-1])
        choice = BackendChoice(out["device"], out["reason"])
    except Exception as e:  # noqa: BLE001 - a child that cannot decide: decide here, at the memory cost above
        log.info("backend choice in a child process failed (%s); choosing in this process", e)
        return choose_backend()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "device": choice.device, "reason": choice.reason}))
        os.replace(tmp, cache)
    except OSError as e:
        log.info("could not remember the backend choice: %s", e)
    return choice


def _choice_cache() -> Path:
    from edgegen.runtime.jit_cache import cache_root

    return cache_root() / "backend.json"


def choice_key() -> str:
    """What the choice depends on: this boot (drivers and devices are fixed until a reboot, near enough), the
    installed OpenCL drivers, the environment variables that steer drivers, clang, and the tinygrad version."""
    from edgegen.runtime.tinygrad_seam import tinygrad_version

    parts = [tinygrad_version(), str(_clang_available())]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    except OSError:
        parts.append(str(int(time.time() // 3600)))  # no boot id (macOS): decide again every hour
    vendors = Path(os.environ.get("OCL_ICD_VENDORS", "/etc/OpenCL/vendors"))
    if vendors.is_dir():
        parts += sorted(f"{f.name}:{f.stat().st_mtime_ns}" for f in vendors.iterdir())
    parts += [f"{k}={os.environ.get(k, '')}" for k in ("OCL_ICD_VENDORS", "CUDA_VISIBLE_DEVICES", "CC")]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def choose_backend() -> BackendChoice:
    """The decision itself, opening backends in this process (see default_backend)."""
    from tinygrad import Device

    install()
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
    """`device` checked to open (ArtifactError naming it if not), or the default backend. Callers pass the name to
    every tensor they create; tinygrad's process-wide default becomes the first device resolved (unless DEV names
    one), only so that finding it opens no other backend."""
    from tinygrad import Device

    install()
    name = default_backend().device if device is None else device.upper()
    try:
        Device[name]  # opens the backend: fails here if its compiler or driver is missing
    except Exception as e:
        raise ArtifactError(f"tinygrad device {name!r} is not usable here: {type(e).__name__}: {e}") from e
    if not named_default_device():
        # Left unset, tinygrad finds its default inside the first constant (Tensor.zeros(device=...) makes its value
        # on the default device) by opening every backend, PoCL's LLVM included, even for `--device CPU` (its
        # memory and time: docs/MEASUREMENTS.md). The first device a process resolves becomes that default.
        set_default_device(name)
    return name


def report() -> dict:
    """The default backend and the JIT cache's disk use, as JSON for `edgegen device` (run in a child process)."""
    from edgegen.runtime import jit_cache

    choice = choose_backend()
    use = jit_cache.usage()
    return {"default_backend": choice.device, "reason": choice.reason,
            "jit_cache": {"folder": str(use.folder), "entries": use.entries, "size_bytes": use.size_bytes,
                          "limit_bytes": use.limit_bytes}}


if __name__ == "__main__":
    if sys.argv[1:] == ["--choose"]:
        c = choose_backend()
        print(json.dumps({"device": c.device, "reason": c.reason}), flush=True)
    else:
        print(json.dumps(report()), flush=True)
