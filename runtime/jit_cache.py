"""Keep captured TinyJit graphs (decode and prefill) on disk, so a new process skips scheduling them again.

tinygrad caches compiled kernel binaries on disk, but a new process still schedules and lowers every kernel of the
decode and prefill graphs in Python: measured here 26-29 s to first token with a warm kernel cache versus 6.7 s
from a pickled capture (TINYGRAD_NOTES.md). The pickle holds the graphs' buffers, packed weights and KV cache
included, so a warm start reads one file instead of repacking the GGUF. One file per (model file, device, context,
tinygrad and edgegen version); a stale or unreadable file is ignored and rewritten.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import logging
import mmap
import os
import pickle
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


def cache_dir() -> Path:
    base = os.environ.get("EDGEGEN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "edgegen")
    return Path(base).expanduser() / "jit"


@functools.cache
def _code_version() -> str:
    """Hash of the code that builds the graphs (runtime/ and models/), so a changed model never reuses old graphs."""
    import tinygrad

    h = hashlib.sha256(getattr(tinygrad, "__version__", "?").encode())
    for package in ("runtime", "models"):
        folder = Path(__file__).resolve().parents[1] / package
        for source in sorted(folder.glob("*.py")):
            h.update(source.read_bytes())
    return h.hexdigest()[:16]


def cache_key(model_path: Path, device: str, max_context: int) -> str:
    """Everything a captured graph depends on: the file, device, context, code, and BEAM (it picks the kernels)."""
    from tinygrad.helpers import BEAM, NUM_CPU_THREADS, getenv

    st = model_path.stat()
    ident = f"{FORMAT_VERSION}|{model_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{device}|{max_context}|" \
            f"{_code_version()}|beam={BEAM.value}|jitbeam={getenv('JITBEAM', BEAM.value)}|" \
            f"threads={getenv('THREADS', 1)}|cpu_threads={NUM_CPU_THREADS.value}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def load(key: str) -> dict[str, Any] | None:
    """The graphs saved under key, or None. Buffer bytes are read from the side file through a memory map, so
    loading holds no second in-memory copy of the weights."""
    path = cache_dir() / f"{key}.pkl"
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            header = pickle.load(f)
            blob = np.memmap(path.with_name(header["data"]), dtype=np.uint8, mode="r")
            graphs = pickle.load(f, buffers=_views_released_behind(blob, header["buffers"]))
        return graphs
    except Exception as e:  # noqa: BLE001 - any unreadable cache is a miss, never a failure
        log.warning("ignoring unreadable JIT cache %s: %s", path, e)
        return None


def _views_released_behind(blob: np.memmap, spans: list[tuple[int, int]]) -> Iterator[memoryview]:
    """Views of each buffer's bytes, in order. The unpickler builds each Buffer (copying the bytes into device
    memory) before it asks for the next view, so the previous span's pages can be dropped from RSS then."""
    mm = getattr(blob, "_mmap", None)
    can_release = mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED")
    previous: tuple[int, int] | None = None
    for start, size in [*spans, (len(blob), 0)]:
        if previous is not None and can_release:
            lo = previous[0] // mmap.PAGESIZE * mmap.PAGESIZE
            mm.madvise(mmap.MADV_DONTNEED, lo, previous[0] + previous[1] - lo)
        if size:
            yield memoryview(blob[start : start + size])
        previous = (start, size)


class _GraphPickler(pickle.Pickler):
    """Pickles captured graphs with two changes to tinygrad's own reductions.

    Slots: tinygrad numbers buffers from a per-process counter that starts at 0 and hash-conses UOps, so a buffer
    from an unpickled graph and a buffer the loading process creates can get the same slot and become the same
    UOp: the loading process then reads or writes the wrong memory (measured: fluent garbage). Shifting the
    pickled slots by a random 2**41-scale offset keeps them clear of any counter a process will reach.

    Bytes: a Buffer's contents go out of band (pickle protocol 5) as a zero-copy view of its memory, written by
    the caller to a side file, instead of a copy inside the pickle (measured: +70 MB peak RSS to save, +150 MB
    resident after loading SmolLM2's graphs).
    """

    def __init__(self, f: Any, offset: int, buffer_callback: Any) -> None:
        super().__init__(f, protocol=5, buffer_callback=buffer_callback)
        self.offset = offset

    def reducer_override(self, obj: Any) -> Any:
        from tinygrad.device import Buffer
        from tinygrad.uop.ops import Ops, UOp

        if type(obj) is UOp and obj.op is Ops.BUFFER:
            arg = obj.arg
            slot = arg.slot + self.offset if arg.slot >= 0 else arg.slot - self.offset
            args = [obj.op, obj.dtype, obj.src, dataclasses.replace(arg, slot=slot), obj.tag, obj.metadata]
            if obj.realized is not None:
                args.append(obj.realized)
            return UOp, tuple(args)
        if type(obj) is Buffer and obj._base is None and obj.is_allocated() and obj.device != "NPY":
            view = obj.as_memoryview(allow_zero_copy=True)
            return Buffer, (obj.device, obj.size, obj.dtype, None, obj.options, pickle.PickleBuffer(view),
                            obj.uop_refcount)
        return NotImplemented


def save(key: str, graphs: dict[str, Any]) -> Path | None:
    """Write `<key>.pkl` (structure) and a side file of buffer bytes; the .pkl is renamed into place last, so a
    killed process never leaves a cache entry that points at incomplete data."""
    folder = cache_dir()
    tmp_paths: list[str] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        data_name = f"{key}-{secrets.token_hex(4)}.bin"
        spans: list[tuple[int, int]] = []
        structure = io.BytesIO()
        with open(folder / data_name, "wb") as data:
            tmp_paths.append(str(folder / data_name))

            def write_buffer(pb: pickle.PickleBuffer) -> None:
                raw = pb.raw()
                pos = data.tell()
                data.write(raw)
                data.write(b"\0" * (-raw.nbytes % 64))  # keep every buffer 64-byte aligned in the map
                spans.append((pos, raw.nbytes))

            _GraphPickler(structure, secrets.randbits(40) + 2**41, write_buffer).dump(graphs)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        tmp_paths.append(tmp)
        with os.fdopen(fd, "wb") as f:
            pickle.dump({"data": data_name, "buffers": spans}, f)
            f.write(structure.getbuffer())
        path = folder / f"{key}.pkl"
        os.replace(tmp, path)
        for old in folder.glob(f"{key}-*.bin"):  # data files of earlier saves under this key
            if old.name != data_name:
                old.unlink(missing_ok=True)
        return path
    except Exception as e:  # noqa: BLE001 - a read-only or full disk must not break generation
        log.warning("could not save the JIT cache: %s", e)
        for p in tmp_paths[1:]:
            Path(p).unlink(missing_ok=True)
        return None
