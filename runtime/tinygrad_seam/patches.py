"""Patches to tinygrad 0.14 that every process applies once: a kernel disk cache per thread, quiet compilers.

- Kernel disk cache: tinygrad keeps ONE process-wide sqlite3 connection (`tinygrad.helpers.db_connection`), created
  by whichever thread first compiles a kernel; sqlite3 refuses it in any other thread (`ProgrammingError: SQLite
  objects created in a thread can only be used in that same thread`). An MQTT worker thread compiling a kernel for a
  new prompt length failed every request that way. The cause is the connection's thread affinity, so each thread
  gets its own connection to the same file (sqlite handles concurrent connections; tinygrad already enables WAL).
- CPU device start-up: `CPUDevice()` compiles its four queue programs (signal, wait, timestamp, worker) through
  tinygrad's whole codegen in every process, a large share of a warm start (docs/MEASUREMENTS.md); their ELF depends
  only on each program's AST and the renderer, so it is kept in tinygrad's own disk cache under both.
- Compiler diagnostics: PoCL's in-process clang prints "1 warning generated." on file descriptor 2 while building
  OpenCL kernels, and clang (CPU backend) may print warnings too. Those go to the log at DEBUG instead of the
  user's terminal; a failing build still raises with the text.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

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
        _install_cached_cpu_device_programs()
        _installed = True


# ---- kernel disk cache ----------------------------------------------------------------------------------------------
def _install_thread_local_diskcache() -> None:
    """Wraps `tinygrad.helpers.db_connection` (and clears its global `_db_connection`) so each thread has its own."""
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


# ---- CPU device programs -------------------------------------------------------------------------------------------
class _CompiledProgram:
    """What `CPUDevice.__init__` uses of `do_to_program`'s result: `to_elf()`."""

    def __init__(self, elf: Any) -> None:
        self._elf = elf

    def to_elf(self) -> Any:
        return self._elf


def _install_cached_cpu_device_programs() -> None:
    """Wraps the `do_to_program` name `tinygrad.runtime.ops_cpu` imported (it calls it only in `CPUDevice.__init__`,
    then `.to_elf()`): the TinyELF comes from `tinygrad.helpers.diskcache_get/put` keyed by `UOp.key` of the AST
    and the renderer's `target`; a miss compiles as unpatched tinygrad does (and CACHELEVEL=0 caches nothing)."""
    from tinygrad.helpers import diskcache_get, diskcache_put
    from tinygrad.runtime import ops_cpu

    original = ops_cpu.do_to_program

    def do_to_program(ast: Any, renderer: Any) -> Any:
        key = f"{ast.key.hex()}|{renderer.target}"
        if (elf := diskcache_get("edgegen_cpu_device_program", key)) is None:
            elf = diskcache_put("edgegen_cpu_device_program", key, original(ast, renderer).to_elf())
        return _CompiledProgram(elf)

    ops_cpu.do_to_program = do_to_program


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
    """Replaces `tinygrad.runtime.support.compiler_cpu.ClangCompiler.compile` (same clang arguments, stderr captured)
    and wraps `tinygrad.runtime.ops_cl.CLCompiler.compile` and `CLProgram.__init__` in `captured_stderr`."""
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

    compiler_cpu.ClangCompiler.compile = clang_compile  # type: ignore[method-assign]
    try:
        from tinygrad.runtime import ops_cl
    except Exception:  # noqa: BLE001 - no OpenCL library installed: nothing to quiet
        return
    ops_cl.CLCompiler.compile = _quiet(ops_cl.CLCompiler.compile, "the OpenCL compiler")  # type: ignore[method-assign]
    ops_cl.CLProgram.__init__ = _quiet(  # type: ignore[method-assign]
        ops_cl.CLProgram.__init__, "the OpenCL program loader")
