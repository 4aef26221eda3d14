"""Facts about the machine and the run that bench_decode.py records beside its numbers: weight bytes a decode step
reads, a STREAM-like copy bandwidth, CPU and memory, versions."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY_BYTES = 512 * 2**20


def bytes_read_per_token(model: Path) -> dict:
    """Weight bytes one decode step reads: every tensor, except that token_embd is read one row at a time when the
    model has its own output head (tied embeddings are read whole by the head)."""
    from edgegen.runtime.artifact.reader import open_model

    tensors = open_model(model).tensors
    total = sum(t.size_bytes for t in tensors.values())
    read = total
    embd = tensors.get("token_embd.weight")
    if "output.weight" in tensors and embd is not None:
        read -= embd.size_bytes - embd.size_bytes // embd.shape[0]
    return {"tensor_bytes": total, "bytes_read_per_token": read}


def copy_bandwidth(nbytes: int = COPY_BYTES, repeats: int = 3) -> dict:
    """A STREAM-like copy of this machine, one thread."""
    import numpy as np

    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.zeros_like(src)  # zeros_like writes every page: no page faults inside the timed copies
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    del src, dst
    return {"bytes_per_s": 2 * nbytes / min(times), "copy_runs_s": times,
            "method": f"numpy.copyto of a {nbytes // 2**20} MiB float64 array into a pre-touched one, best of "
                      f"{repeats}, read + written bytes (STREAM copy), one thread in one process"}


def machine_info() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0))}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info["cpu"] = fields.get("model name", "")
        flags = set(fields.get("flags", fields.get("Features", "")).split())
        info["simd"] = sorted(flags & {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                                       "asimd", "asimddp"})
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
        info["memory_mb"] = int(mem[1]) // 1024
    except (OSError, IndexError, ValueError):
        pass
    return info


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("edgegen", "tinygrad", "numpy", "llama_cpp_python"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         check=False)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False)
    out["git"] = git.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    return out
