"""Every use of tinygrad 0.14's internals that edgegen makes, in one place, with contract tests.

tinygrad's engine and runtime modules change fast; code here names exactly which private behaviour edgegen relies
on, so an upgrade fails in tests/test_tinygrad_seam.py first and loudly. Everything else in edgegen uses tinygrad's
public API (`from tinygrad import Tensor, TinyJit, Device, Context, UOp, dtypes, Variable` and `tinygrad.nn`);
tests/test_tinygrad_seam.py checks that no other module imports tinygrad's internals. Importing the seam imports
no tinygrad: each function imports what it wraps when it runs. docs/TINYGRAD.md lists what is wrapped and why.

- `patches`: `install()`, called by every runtime module that runs tinygrad work before any of it (a kernel disk
  cache connection per thread, compiler output to the log), and `captured_stderr`.
- `devices`: backend facts (OpenCL device type, names and memory), the default device, the version, the settings
  that pick kernels, device memory in use.
- `graphs`: TinyJit's captured graphs (capture on first call, install a loaded one, its output), writing a device
  buffer in place, watching buffer allocations, pickling a graph's buffers.
- `kernels`: a captured CPU graph's kernels as plain C calls (runtime.cpu_replay).
"""
from __future__ import annotations

import threading

from edgegen.runtime.tinygrad_seam.devices import (
    describe_device,
    device_memory_bytes,
    kernel_settings,
    named_default_device,
    opencl_device_type,
    set_default_device,
    tinygrad_default_device,
    tinygrad_version,
)
from edgegen.runtime.tinygrad_seam.graphs import (
    buffer_allocations,
    capture_on_first_call,
    captured_graph,
    copied_chunks,
    cpu_float_view,
    cpu_view,
    device_bytes,
    device_tensor,
    graph_buffer_devices,
    graph_output,
    graph_reduction,
    install_captured,
    write_buffer,
)
from edgegen.runtime.tinygrad_seam.kernels import KernelCall, UnsupportedGraph, cpu_kernel_calls
from edgegen.runtime.tinygrad_seam.patches import captured_stderr, install

# tinygrad's scheduler, UOp caches and device state are not made for concurrent use from several threads. Every
# compute step edgegen runs (load, prefill, decode, a diffusion step) holds this lock; steps from two threads then
# interleave, never overlap. It is never held across a `yield` to the caller.
TINYGRAD_LOCK = threading.RLock()

__all__ = [
    "TINYGRAD_LOCK", "KernelCall", "UnsupportedGraph", "buffer_allocations", "capture_on_first_call",
    "captured_graph", "captured_stderr", "copied_chunks", "cpu_float_view", "cpu_view", "cpu_kernel_calls",
    "describe_device",
    "device_bytes", "device_memory_bytes", "device_tensor", "graph_buffer_devices", "graph_output", "graph_reduction",
    "install",
    "install_captured", "kernel_settings", "named_default_device", "opencl_device_type", "set_default_device",
    "tinygrad_default_device", "tinygrad_version", "write_buffer",
]
