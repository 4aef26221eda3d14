"""The threaded graph runner (c/runner.c): compiled once per machine with the system clang, cached on disk.

runtime.cpu_replay hands it a captured graph's kernels as a step list (entry point, partition count, the index of
the core_id argument, the 64-bit arguments); one call runs the whole step on a pool of threads with the GIL released.
The library is built outside tinygrad because it is host code that calls the kernels, not a kernel.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from importlib import resources
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
MAX_ARGS = 24  # EG_MAX_ARGS in runner.c

STEP_DTYPE = np.dtype([("fn", np.uint64), ("parts", np.int32), ("core_arg", np.int32), ("args", np.uint64, MAX_ARGS)])

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


class RunnerUnavailable(Exception):
    """The runner cannot be built or loaded here (no clang, a compile error); the caller replays in Python."""


def cache_dir() -> Path:
    """Where the built runner lives: `native/` in edgegen's cache folder (runtime.jit_cache.cache_root)."""
    from edgegen.runtime.jit_cache import cache_root

    return cache_root() / "native"


def _source() -> bytes:
    return (resources.files("edgegen.runtime.native") / "c" / "runner.c").read_bytes()


def library() -> ctypes.CDLL:
    """The loaded runner library, building it on first use (clang -O2, once per machine: docs/MEASUREMENTS.md)."""
    global _lib
    with _lock:
        if _lib is not None:
            return _lib
        src = _source()
        compiler = shutil.which("clang") or shutil.which("cc")
        if compiler is None:
            raise RunnerUnavailable("no C compiler (clang) on PATH")
        tag = hashlib.sha256(src + compiler.encode() + os.uname().machine.encode()).hexdigest()[:16]
        path = cache_dir() / f"runner-{tag}.so"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                c_file, out = Path(tmp) / "runner.c", Path(tmp) / "runner.so"
                c_file.write_bytes(src)
                run = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-pthread", "-o", str(out), str(c_file)],
                                     capture_output=True, text=True)
                if run.returncode != 0:
                    raise RunnerUnavailable(f"building the runner failed: {run.stderr.strip()[:500]}")
                os.replace(out, path)  # atomic: a concurrent process sees the old state or the whole library
        lib = ctypes.CDLL(str(path))
        lib.eg_pool_create.restype = ctypes.c_void_p
        lib.eg_pool_create.argtypes = [ctypes.c_int]
        lib.eg_pool_threads.argtypes = [ctypes.c_void_p]
        lib.eg_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        lib.eg_pool_destroy.argtypes = [ctypes.c_void_p]
        if lib.eg_step_size() != STEP_DTYPE.itemsize or lib.eg_max_args() != MAX_ARGS:
            raise RunnerUnavailable("the runner's step layout differs from runner.py's")
        _lib = lib
        return lib


class ThreadPool:
    """A pool of `threads` threads (the caller is thread 0) that runs step lists; closed when garbage collected."""

    def __init__(self, threads: int) -> None:
        self._lib = library()
        self._pool = self._lib.eg_pool_create(threads)
        if not self._pool:
            raise RunnerUnavailable(f"could not start a pool of {threads} threads")
        self.threads = int(self._lib.eg_pool_threads(self._pool))

    def run(self, steps: np.ndarray) -> None:
        """Run every step (a STEP_DTYPE array) in order; returns when all threads are done."""
        self._lib.eg_run(self._pool, steps.ctypes.data, len(steps))

    def __del__(self) -> None:
        pool, self._pool = getattr(self, "_pool", None), None
        if pool:
            self._lib.eg_pool_destroy(pool)
