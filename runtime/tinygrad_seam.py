"""Every use of tinygrad 0.14's internals that edgegen makes from new code, in one place, with contract tests.

tinygrad's engine and runtime modules change fast; code here names exactly which private behaviour edgegen relies
on, so an upgrade fails in tests/test_tinygrad_seam.py first and loudly. `install()` is called by every runtime
module that runs tinygrad work, before any of it.

What is patched, and why (docs/TINYGRAD.md has the measurements):
- Kernel disk cache: tinygrad keeps ONE process-wide sqlite3 connection, created by whichever thread first compiles
  a kernel; sqlite3 refuses it in any other thread (`ProgrammingError: SQLite objects created in a thread can only
  be used in that same thread`). An MQTT worker thread compiling a kernel for a new prompt length failed every
  request that way. The cause is the connection's thread affinity, so each thread gets its own connection to the
  same file (sqlite handles concurrent connections; tinygrad already enables WAL).
- Compiler diagnostics: PoCL's in-process clang prints "1 warning generated." on file descriptor 2 while building
  OpenCL kernels, and clang (CPU backend) may print warnings too. Those go to the log at DEBUG instead of the
  user's terminal; a failing build still raises with the text.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

# tinygrad's scheduler, UOp caches and device state are not made for concurrent use from several threads. Every
# compute step edgegen runs (load, prefill, decode, a diffusion step) holds this lock; steps from two threads then
# interleave, never overlap. It is never held across a `yield` to the caller.
TINYGRAD_LOCK = threading.RLock()
_installed = False
_install_lock = threading.Lock()
_stderr_lock = threading.RLock()  # re-entrant: a wrapped CL program load calls the wrapped compiler


def install() -> None:
    """Apply the patches above once per process (idempotent, thread-safe)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _install_thread_local_diskcache()
        _install_quiet_compilers()
        _installed = True


# ---- kernel disk cache ----------------------------------------------------------------------------------------------
def _install_thread_local_diskcache() -> None:
    from tinygrad import helpers

    local = threading.local()
    original: Callable[[], sqlite3.Connection] = helpers.db_connection
    creating = threading.Lock()

    def db_connection() -> sqlite3.Connection:
        conn = getattr(local, "conn", None)
        if conn is None:
            # tinygrad's own function makes and configures the connection (path, timeout, WAL); clearing its
            # global first makes it build a fresh one for this thread, which is then kept thread-locally.
            with creating:
                helpers._db_connection = None
                conn = local.conn = original()
                helpers._db_connection = None
        return conn

    helpers.db_connection = db_connection  # diskcache_get/put look the name up in tinygrad.helpers at call time


# ---- compiler output ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def captured_stderr(what: str) -> Iterator[None]:
    """Send file descriptor 2 to a temporary file while the block runs; log what was written at DEBUG (or at
    WARNING when the block raised). Native compilers write there directly, so sys.stderr cannot catch it."""
    with _stderr_lock, tempfile.TemporaryFile() as sink:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all (a daemon): nothing to protect
            yield
            return
        failed = False
        try:
            os.dup2(sink.fileno(), 2)
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                (log.warning if failed else log.debug)("%s wrote: %s", what, text)


def _quiet(fn: Callable[..., Any], what: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with captured_stderr(what):
            return fn(*args, **kwargs)

    wrapper.__edgegen_quiet__ = True  # type: ignore[attr-defined]
    return wrapper


def _install_quiet_compilers() -> None:
    import subprocess

    from tinygrad.runtime.support import compiler_cpu

    def clang_compile(self: Any, src: str) -> bytes:
        # tinygrad's ClangCompiler.compile with clang's stderr captured (its argument list, unchanged).
        args = [os.environ.get("CC", "clang"), "-c", "-x", "c", "-O2", "-fPIC", "-ffreestanding", "-fno-math-errno",
                "-nostdlib", "-fno-ident", f"--target={self.arch}-none-unknown-elf", *self.args, "-", "-o", "-"]
        done = subprocess.run(args, input=src.encode(), capture_output=True, check=False)
        if done.stderr.strip():
            log.debug("clang wrote: %s", done.stderr.decode(errors="replace").strip())
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, args, done.stdout, done.stderr)
        return done.stdout

    compiler_cpu.ClangCompiler.compile = clang_compile
    try:
        from tinygrad.runtime import ops_cl
    except Exception:  # noqa: BLE001 - no OpenCL library installed: nothing to quiet
        return
    ops_cl.CLCompiler.compile = _quiet(ops_cl.CLCompiler.compile, "the OpenCL compiler")
    ops_cl.CLProgram.__init__ = _quiet(ops_cl.CLProgram.__init__, "the OpenCL program loader")


# ---- device facts ---------------------------------------------------------------------------------------------------
def opencl_device_type(device: Any) -> str | None:
    """'cpu', 'gpu', 'accelerator' or None for an opened tinygrad CL device (CLDevice.cl_dev, CL_DEVICE_TYPE)."""
    from tinygrad.runtime.autogen import opencl as cl

    value = ctypes.c_uint64()
    if cl.clGetDeviceInfo(device.cl_dev, cl.CL_DEVICE_TYPE, 8, ctypes.byref(value), None) != 0:
        return None
    for name, flag in (("gpu", cl.CL_DEVICE_TYPE_GPU), ("cpu", cl.CL_DEVICE_TYPE_CPU),
                       ("accelerator", cl.CL_DEVICE_TYPE_ACCELERATOR)):
        if value.value & flag:
            return name
    return None


def tinygrad_default_device() -> str:
    """The backend tinygrad itself would pick (its DEV variable, else the first that opens)."""
    from tinygrad import Device

    return Device.DEFAULT


def set_default_device(name: str) -> None:
    """Make `name` tinygrad's process-wide default (its DEV variable; `Device.DEFAULT` is read-only in 0.14).

    tinygrad evaluates its default device inside ordinary calls (every constant, e.g. `Tensor.zeros(device=...)`,
    is first made on the default device), and finding that default opens each backend in turn: with PoCL installed
    that loads LLVM (+~100 MB peak RSS, measured) even for a model that runs on the CPU backend. Setting the default
    to edgegen's own choice once, before any tensor exists, avoids it."""
    from tinygrad.helpers import DEV

    DEV.value = name


def tinygrad_version() -> str:
    """The installed tinygrad's version (0.14 defines no `tinygrad.__version__`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tinygrad")
    except PackageNotFoundError:
        import tinygrad

        return getattr(tinygrad, "__version__", "unknown")


# ---- buffers --------------------------------------------------------------------------------------------------------
def write_buffer(tensor: Any, array: Any) -> None:
    """Overwrite a realized tensor's device buffer in place with `array`'s bytes (same size), without a new UOp.

    A captured graph reads its input buffer by address; `Tensor.assign` would build and schedule a copy kernel
    per call. tinygrad 0.14: `tensor.uop.buffer` is the Buffer, `allocator._copyin(opaque, memoryview)` the raw copy.
    """
    import numpy as np

    buf = tensor.uop.buffer
    data = memoryview(np.ascontiguousarray(array, dtype=np.float32)).cast("B")
    if data.nbytes != buf.nbytes:
        raise ValueError(f"write_buffer: {data.nbytes} bytes for a {buf.nbytes}-byte buffer")
    buf.allocator._copyin(buf._buf, data)
