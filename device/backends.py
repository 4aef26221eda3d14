"""Which tinygrad backends actually initialise here: each probed in its own subprocess, with a timeout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

# The backends edgegen targets (docs/ARCHITECTURE.md, Execution): CPU needs clang, CL runs on any OpenCL platform
# (PoCL on a host without a GPU), CUDA and NV on Jetson-class boards, METAL on Apple.
BACKENDS = ("CPU", "CL", "CUDA", "NV", "METAL")
PROBE_TIMEOUT_S = 60.0  # generous: a cold CPU probe (import tinygrad, compile one kernel with clang) takes a fraction


def child_env() -> dict[str, str]:
    """This environment for a child `python -m edgegen.device...`: no DEV (the child imports the same installed
    edgegen through sys.executable's site-packages)."""
    env = dict(os.environ)
    env.pop("DEV", None)  # the probe names its device; a bogus DEV in the caller's environment must not interfere
    return env


def _failure(name: str, error: str, elapsed_s: float) -> dict:
    return {"backend": name, "usable": False, "error": error, "probe_s": round(elapsed_s, 3)}


def probe_backends(names: tuple[str, ...] = BACKENDS, timeout_s: float = PROBE_TIMEOUT_S) -> list[dict]:
    """Probe every backend in parallel; a hang becomes 'timed out', a crash 'exited with code N'."""
    start = time.perf_counter()
    procs = {name: subprocess.Popen([sys.executable, "-m", "edgegen.device.backend_probe", name], env=child_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in names}
    results = []
    for name, proc in procs.items():
        remaining = max(0.1, timeout_s - (time.perf_counter() - start))
        try:
            out, err = proc.communicate(timeout=remaining)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            results.append(_failure(name, f"timed out after {timeout_s:g} s", time.perf_counter() - start))
            continue
        lines = out.strip().splitlines()
        try:
            results.append(json.loads(lines[-1]))
        except (IndexError, json.JSONDecodeError):
            tail = err.strip().splitlines()[-1:] or ["no output"]
            results.append(_failure(name, f"probe exited with code {proc.returncode}: {tail[0]}",
                                    time.perf_counter() - start))
    return results
