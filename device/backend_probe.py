"""Child process of the backend probe: open one tinygrad backend, run one kernel, print one JSON line.

Run as `python -m device.backend_probe NAME`. It lives in its own process because a broken driver can hang or
crash the interpreter (a CUDA library that segfaults on load, an OpenCL ICD that blocks), and the caller must
survive that. Device names and memory are read through the same ctypes bindings tinygrad itself uses.
"""
from __future__ import annotations

import ctypes
import json
import sys
import time


def _describe(name: str, dev) -> dict:
    """Best-effort device name and memory for an opened backend; fields stay None where nothing is reported."""
    info: dict = {"device_name": None, "device_memory_bytes": None}
    if name == "CL":
        from tinygrad.runtime.autogen import opencl as cl

        info["device_name"] = f"{dev.device_name} ({dev.driver_version})"
        size = ctypes.c_uint64()
        if cl.clGetDeviceInfo(dev.cl_dev, cl.CL_DEVICE_GLOBAL_MEM_SIZE, 8, ctypes.byref(size), None) == 0:
            info["device_memory_bytes"] = int(size.value)
    elif name == "CUDA":
        from tinygrad.runtime.autogen import cuda

        buf = ctypes.create_string_buffer(256)
        if cuda.cuDeviceGetName(buf, 256, dev.cu_device) == 0:
            info["device_name"] = buf.value.decode()
        size = ctypes.c_size_t()
        if cuda.cuDeviceTotalMem_v2(ctypes.byref(size), dev.cu_device) == 0:
            info["device_memory_bytes"] = int(size.value)
    elif name == "METAL":
        from tinygrad.runtime.ops_metal import from_ns_str

        info["device_name"] = from_ns_str(dev.sysdevice.name())
        # What Metal lets one process keep resident: the useful limit on unified-memory Macs.
        info["device_memory_bytes"] = int(dev.sysdevice.recommendedMaxWorkingSetSize())
    elif name == "CPU":
        info["device_name"] = "host CPU (shares host memory)"
    info["arch"] = getattr(dev, "arch", None)
    return info


def probe(name: str) -> dict:
    """Open backend `name`, add 1 to a 4-element tensor on it, and say whether the answer came back right."""
    start = time.perf_counter()
    result: dict = {"backend": name, "usable": False, "error": None}
    try:
        from tinygrad import Device, Tensor

        dev = Device[name]
        values = (Tensor([0.0, 1.0, 2.0, 3.0], device=name) + 1).tolist()
        if values != [1.0, 2.0, 3.0, 4.0]:
            raise RuntimeError(f"test kernel returned {values}, expected [1.0, 2.0, 3.0, 4.0]")
        result["usable"] = True
        try:
            result.update(_describe(name, dev))
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
