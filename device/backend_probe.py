"""Child process of the backend probe: open one tinygrad backend, run one kernel, print one JSON line.

Run as `python -m edgegen.device.backend_probe NAME`. It lives in its own process because a broken driver can hang or
crash the interpreter (a CUDA library that segfaults on load, an OpenCL ICD that blocks), and the caller must
survive that. Device names and memory are read through the same ctypes bindings tinygrad itself uses
(runtime.tinygrad_seam.describe_device).
"""
from __future__ import annotations

import json
import sys
import time


def probe(name: str) -> dict:
    """Open backend `name`, add 1 to a 4-element tensor on it, and say whether the answer came back right."""
    start = time.perf_counter()
    result: dict = {"backend": name, "usable": False, "error": None}
    try:
        from tinygrad import Device, Tensor

        from edgegen.runtime.tinygrad_seam import describe_device

        dev = Device[name]
        values = (Tensor([0.0, 1.0, 2.0, 3.0], device=name) + 1).tolist()
        if values != [1.0, 2.0, 3.0, 4.0]:
            raise RuntimeError(f"test kernel returned {values}, expected [1.0, 2.0, 3.0, 4.0]")
        result["usable"] = True
        try:
            result.update(describe_device(name, dev))
        except Exception as e:  # noqa: BLE001 - a name we cannot read does not make the backend unusable
            result["describe_error"] = f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - every failure is the answer, reported as data
        while isinstance(e, ExceptionGroup):  # NV tries several interfaces: the first one's reason is the news
            e = e.exceptions[0]
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        result["error"] = f"{type(e).__name__}: {lines[-1] if lines else ''}".strip()
    result["probe_s"] = round(time.perf_counter() - start, 3)
    return result


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1])), flush=True)
