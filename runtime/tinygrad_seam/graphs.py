"""TinyJit's captured graphs and tinygrad's device buffers, as tinygrad 0.14 lays them out.

A `TinyJit` records its kernels on a call and replays them afterwards; edgegen keeps those recordings on disk
(runtime.jit_cache), reads their output after a direct replay (runtime.cpu_replay) and writes inputs in place.
Each function names the attribute it relies on: `TinyJit.cnt` / `.captured`, `CapturedJit.ret` / `._linear`,
`Tensor.uop.buffer`, `Buffer.allocator._copyin`, `Buffer.get_buf().va_addr`, `Buffer.allocate`, `Buffer(device, size,
dtype, options=, uop_refcount=)`, and the pickle reductions of `UOp` (Ops.BUFFER) and `Buffer`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import pickle
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # tinygrad is imported when a function runs, not when the seam is imported
    from tinygrad import Tensor


def capture_on_first_call(jit: Any) -> Any:
    """Make `jit` record its kernels on its first call (sets `TinyJit.cnt = 1`).

    TinyJit's default first call runs the function eagerly without recording it, which in a fresh process costs as
    much Python scheduling time as the capture itself."""
    jit.cnt = 1
    return jit


def captured_graph(jit: Any) -> Any | None:
    """The graph `jit` has recorded (`TinyJit.captured`, a `CapturedJit`), or None before its capture."""
    return jit.captured


def install_captured(jit: Any, graph: Any) -> None:
    """Make `jit` replay `graph` (a `CapturedJit`, e.g. unpickled) from its next call: sets `TinyJit.captured` and
    `TinyJit.cnt = 2`, the state TinyJit is in after recording."""
    jit.captured, jit.cnt = graph, 2


def graph_output(graph: Any) -> Any:
    """What a captured graph's function returned, whose buffers each replay rewrites (`CapturedJit.ret`)."""
    return graph.ret


def graph_buffer_devices(graph: Any) -> set[str]:
    """The devices of the buffers a captured graph's kernels use: the BUFFER UOps of `CapturedJit._linear`."""
    from tinygrad.uop.ops import Ops

    return {str(u.arg.device) for u in graph._linear.toposort() if u.op is Ops.BUFFER}


def write_buffer(tensor: Tensor, array: np.ndarray) -> None:
    """Overwrite a realized tensor's device buffer in place with `array`'s bytes (same size), without a new UOp.

    A captured graph reads its input buffer by address; `Tensor.assign` would build and schedule a copy kernel
    per call. Wraps `tensor.uop.buffer` (the Buffer) and `Buffer.allocator._copyin(Buffer._buf, memoryview)`.
    """
    buf: Any = tensor.uop.buffer  # a Buffer (a MultiBuffer only for sharded tensors, which edgegen never makes)
    buf.ensure_allocated()
    data = np.ascontiguousarray(array, dtype=np.float32).data.cast("B")
    if data.nbytes != buf.nbytes:
        raise ValueError(f"write_buffer: {data.nbytes} bytes for a {buf.nbytes}-byte buffer")
    buf.allocator._copyin(buf._buf, data)


def device_tensor(array: np.ndarray, device: str | None) -> Tensor:
    """A tensor on `device` holding `array` (float32, or uint8 such as packed weight blocks), allocated and filled
    without scheduling a copy kernel or making a host copy: `Tensor(array, device=...).realize()` first compiles
    the scheduler's patterns, which costs start-up time, and stages the bytes through a host buffer, which raises
    peak RSS (docs/MEASUREMENTS.md). Wraps `Tensor.empty`, `Buffer.ensure_allocated` and
    `Buffer.allocator._copyin`, as write_buffer does."""
    from tinygrad import dtypes

    dtype = {np.dtype(np.float32): dtypes.float32, np.dtype(np.uint8): dtypes.uint8}.get(array.dtype)
    if dtype is None:
        raise ValueError(f"device_tensor: unsupported dtype {array.dtype}")
    return _filled(array.shape, dtype, [array], device)


def device_bytes(nbytes: int, chunks: Iterable[np.ndarray], device: str | None) -> Tensor:
    """A flat uint8 tensor of `nbytes` on `device`, filled from `chunks` in order, each copied in and dropped before
    the next is made: a layout rewritten in pieces (runtime.native.layout) never exists whole on the host."""
    from tinygrad import dtypes

    return _filled((nbytes,), dtypes.uint8, chunks, device)


def _filled(shape: tuple[int, ...], dtype: Any, chunks: Iterable[np.ndarray], device: str | None) -> Tensor:
    import ctypes

    from tinygrad import Tensor

    out = Tensor.empty(*shape, dtype=dtype, device=device)
    buf: Any = out.uop.buffer
    buf.ensure_allocated()
    cpu = str(buf.device).split(":")[0] == "CPU"
    offset = 0
    for chunk in chunks:
        src = np.ascontiguousarray(chunk)
        if offset + src.nbytes > buf.nbytes:
            raise ValueError(f"device_tensor: more than {buf.nbytes} bytes for a {buf.nbytes}-byte buffer")
        if cpu:
            # the CPU allocator's _copyin wants a writable view; a file's read-only map is copied from by address
            ctypes.memmove(int(buf.get_buf(buf.device).va_addr) + offset, src.ctypes.data, src.nbytes)
        elif offset == 0 and src.nbytes == buf.nbytes:
            buf.allocator._copyin(buf._buf, (src if src.flags.writeable else src.copy()).data.cast("B"))
        else:
            raise ValueError("device_tensor: chunked fills are for the CPU device")
        offset += src.nbytes
    if offset != buf.nbytes:
        raise ValueError(f"device_tensor: {offset} bytes for a {buf.nbytes}-byte buffer")
    return out


def cpu_float_view(tensor: Tensor) -> np.ndarray:
    """A float32 numpy view of a realized CPU tensor's memory, in place: reading it after a direct replay costs a
    copy of the bytes, where `Tensor.numpy()` spends far longer in Python per decode step (docs/MEASUREMENTS.md).
    Wraps `Buffer.ensure_allocated().get_buf(device).va_addr`, as runtime.tinygrad_seam.kernels does."""
    return cpu_view(tensor).view(np.float32)


def cpu_view(tensor: Tensor) -> np.ndarray:
    """The bytes of a realized CPU tensor's memory as a flat uint8 numpy view, in place (see cpu_float_view)."""
    import ctypes

    buf: Any = tensor.uop.buffer
    raw = buf.ensure_allocated().get_buf(buf.device)
    return np.ctypeslib.as_array((ctypes.c_uint8 * buf.nbytes).from_address(int(raw.va_addr)))


@contextlib.contextmanager
def buffer_allocations(record: Callable[[int, str], None]) -> Iterator[None]:
    """Call `record(nbytes, dtype name)` for every device buffer tinygrad allocates (not views) while active.

    Wraps `tinygrad.device.Buffer.allocate` and `Buffer._base` (None for a buffer that owns its memory)."""
    from tinygrad.device import Buffer

    original = Buffer.allocate

    def allocate(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._base is None:
            record(self.nbytes, str(self.dtype))
        return original(self, *args, **kwargs)

    Buffer.allocate = allocate  # type: ignore[method-assign]
    try:
        yield
    finally:
        Buffer.allocate = original  # type: ignore[method-assign]


def graph_reduction(obj: Any, slot_offset: int) -> tuple | None:
    """A pickle reduction for a captured graph's BUFFER UOps and Buffers, for `pickle.Pickler.reducer_override`;
    None for any other object (pickle's default applies).

    BUFFER UOps (`UOp.op is Ops.BUFFER`, `arg.slot`) are rebuilt with their slot moved by `slot_offset` (negative
    slots away from zero), keeping `obj.realized`. A Buffer that owns allocated memory (`_base is None`, not the
    NPY device) is rebuilt by rebuild_buffer from `(device, size, dtype, options, bytes, uop_refcount)`, its bytes a
    zero-copy `pickle.PickleBuffer` of `Buffer.as_memoryview(allow_zero_copy=True)` (out of band with protocol 5)."""
    from tinygrad import UOp
    from tinygrad.device import Buffer
    from tinygrad.uop.ops import Ops

    if type(obj) is UOp and obj.op is Ops.BUFFER:
        arg = obj.arg
        slot = arg.slot + slot_offset if arg.slot >= 0 else arg.slot - slot_offset
        args = [obj.op, obj.dtype, obj.src, dataclasses.replace(arg, slot=slot), obj.tag, obj.metadata]
        if obj.realized is not None:
            args.append(obj.realized)
        return UOp, tuple(args)
    if type(obj) is Buffer and obj._base is None and obj.is_allocated() and obj.device != "NPY":
        view = obj.as_memoryview(allow_zero_copy=True)
        return rebuild_buffer, (obj.device, obj.size, obj.dtype, obj.options, pickle.PickleBuffer(view),
                                obj.uop_refcount)
    return None


# Bytes copied per step when rebuilding a CPU buffer, so that the source pages already copied can be dropped while a
# large buffer (SmolLM2's 29 MB output head) is still being copied (copied_chunks).
COPY_CHUNK = 4 << 20
_chunk_hooks = threading.local()


@contextlib.contextmanager
def copied_chunks(done: Callable[[memoryview], None]) -> Iterator[None]:
    """While active, rebuild_buffer calls `done(view)` on each part of its source bytes once they are in device
    memory (parts of COPY_CHUNK bytes on the CPU device, the whole buffer elsewhere), in order, on this thread."""
    previous = getattr(_chunk_hooks, "done", None)
    _chunk_hooks.done = done
    try:
        yield
    finally:
        _chunk_hooks.done = previous


def rebuild_buffer(device: str, size: int, dtype: Any, options: Any, data: Any, uop_refcount: int) -> Any:
    """Unpickle a Buffer reduced by graph_reduction: allocate it and copy `data` (a buffer-protocol object, the
    out-of-band bytes) straight in, by address on the CPU device, else with `Buffer.allocator._copyin`.
    `Buffer(..., initial_value=data)` would first copy the bytes into a bytearray: a second copy, which for the
    largest buffer (the output head) raises peak RSS (docs/MEASUREMENTS.md)."""
    import ctypes

    from tinygrad.device import Buffer

    buf = Buffer(device, size, dtype, options=options, uop_refcount=uop_refcount).allocate()
    view = memoryview(data).cast("B")
    if view.nbytes != buf.nbytes:
        raise ValueError(f"rebuild_buffer: {view.nbytes} bytes for a {buf.nbytes}-byte buffer")
    done = getattr(_chunk_hooks, "done", None)
    if str(device).split(":")[0] == "CPU" and view.nbytes:
        dest = int(buf.get_buf(buf.device).va_addr)
        src = np.frombuffer(view, dtype=np.uint8)
        for start in range(0, view.nbytes, COPY_CHUNK):
            end = min(start + COPY_CHUNK, view.nbytes)
            ctypes.memmove(dest + start, src[start:].ctypes.data, end - start)
            if done is not None:
                done(view[start:end])
        del src
    else:
        buf.allocator._copyin(buf._buf, view)
        if done is not None:
            done(view)
    if isinstance(data, pickle.PickleBuffer):
        view.release()
        data.release()
    return buf
