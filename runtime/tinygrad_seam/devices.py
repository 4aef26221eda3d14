"""Device facts read through tinygrad 0.14's internals: backend type and memory, the default device, settings.

Nothing here imports tinygrad at module level: `device_memory_bytes` must cost nothing to a process that never
used tinygrad, and `edgegen device` probes backends in child processes.
"""
from __future__ import annotations

import ctypes
import sys
from typing import Any


def opencl_device_type(device: Any) -> str | None:
    """'cpu', 'gpu', 'accelerator' or None for an opened tinygrad CL device.

    Wraps `CLDevice.cl_dev` and `tinygrad.runtime.autogen.opencl.clGetDeviceInfo(CL_DEVICE_TYPE)`."""
    from tinygrad.runtime.autogen import opencl as cl

    value = ctypes.c_uint64()
    if cl.clGetDeviceInfo(device.cl_dev, cl.CL_DEVICE_TYPE, 8, ctypes.byref(value), None) != 0:
        return None
    for name, flag in (("gpu", cl.CL_DEVICE_TYPE_GPU), ("cpu", cl.CL_DEVICE_TYPE_CPU),
                       ("accelerator", cl.CL_DEVICE_TYPE_ACCELERATOR)):
        if value.value & flag:
            return name
    return None


def describe_device(name: str, device: Any) -> dict[str, Any]:
    """Best-effort {'device_name', 'device_memory_bytes', 'arch'} of an opened backend (None where unreported).

    Wraps the driver bindings tinygrad itself loads: `tinygrad.runtime.autogen.opencl` (`CLDevice.cl_dev`,
    `.device_name`, `.driver_version`), `tinygrad.runtime.autogen.cuda` (`CUDADevice.cu_device`) and
    `tinygrad.runtime.ops_metal.from_ns_str` (`MetalDevice.sysdevice`)."""
    info: dict[str, Any] = {"device_name": None, "device_memory_bytes": None}
    if name == "CL":
        from tinygrad.runtime.autogen import opencl as cl

        info["device_name"] = f"{device.device_name} ({device.driver_version})"
        size = ctypes.c_uint64()
        if cl.clGetDeviceInfo(device.cl_dev, cl.CL_DEVICE_GLOBAL_MEM_SIZE, 8, ctypes.byref(size), None) == 0:
            info["device_memory_bytes"] = int(size.value)
    elif name == "CUDA":
        from tinygrad.runtime.autogen import cuda

        buf = ctypes.create_string_buffer(256)
        if cuda.cuDeviceGetName(buf, 256, device.cu_device) == 0:
            info["device_name"] = buf.value.decode()
        size_t = ctypes.c_size_t()
        if cuda.cuDeviceTotalMem_v2(ctypes.byref(size_t), device.cu_device) == 0:
            info["device_memory_bytes"] = int(size_t.value)
    elif name == "METAL":
        from tinygrad.runtime.ops_metal import from_ns_str

        info["device_name"] = from_ns_str(device.sysdevice.name())
        # What Metal lets one process keep resident: the useful limit on unified-memory Macs.
        info["device_memory_bytes"] = int(device.sysdevice.recommendedMaxWorkingSetSize())
    elif name == "CPU":
        info["device_name"] = "host CPU (shares host memory)"
    info["arch"] = getattr(device, "arch", None)
    return info


def device_memory_bytes() -> dict[str, int] | None:
    """Bytes tinygrad's allocators hold now, per device ({'CPU': ...}); None if tinygrad is not loaded.

    Wraps `tinygrad.helpers.GlobalCounters.mem_used_per_device`, which every Buffer allocation and free updates.
    Read from sys.modules, never imported, so a caller that did not use tinygrad pays nothing."""
    helpers = sys.modules.get("tinygrad.helpers")
    if helpers is None:
        return None
    return {dev: int(n) for dev, n in helpers.GlobalCounters.mem_used_per_device.items() if n}


def tinygrad_default_device() -> str:
    """The backend tinygrad itself would pick (its DEV variable, else the first that opens): `Device.DEFAULT`."""
    from tinygrad import Device

    return Device.DEFAULT


def named_default_device() -> str:
    """The default device named to tinygrad (the DEV environment variable, or set_default_device), "" if none: read
    from `tinygrad.helpers.DEV.device`, so asking opens no backend (`Device.DEFAULT` would, to find one)."""
    from tinygrad.helpers import DEV

    return str(DEV.device or "")


def set_default_device(name: str) -> None:
    """Make `name` tinygrad's process-wide default: sets `tinygrad.helpers.DEV.value` (`Device.DEFAULT` is read-only
    in 0.14).

    tinygrad evaluates its default device inside ordinary calls (every constant, e.g. `Tensor.zeros(device=...)`,
    is first made on the default device), and finding that default opens each backend in turn: with PoCL installed
    that loads LLVM (raising peak RSS: docs/MEASUREMENTS.md) even for a model that runs on the CPU backend. Setting
    the default to edgegen's own choice once, before any tensor exists, avoids it."""
    from tinygrad.helpers import DEV

    DEV.value = name


def tinygrad_version() -> str:
    """The installed tinygrad's version: the distribution's metadata (0.14 defines no `tinygrad.__version__`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tinygrad")
    except PackageNotFoundError:
        import tinygrad

        return getattr(tinygrad, "__version__", "unknown")


def kernel_settings() -> str:
    """The tinygrad settings that decide which kernels a captured graph holds, as one stable string.

    Wraps `tinygrad.helpers.BEAM`, `NUM_CPU_THREADS` and `getenv` ('JITBEAM' defaults to BEAM, 'THREADS' to 1)."""
    from tinygrad.helpers import BEAM, NUM_CPU_THREADS, getenv

    return (f"beam={BEAM.value}|jitbeam={getenv('JITBEAM', BEAM.value)}|threads={getenv('THREADS', 1)}|"
            f"cpu_threads={NUM_CPU_THREADS.value}")
