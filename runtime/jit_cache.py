"""Keep captured TinyJit graphs (decode and prefill; the diffusion U-Net per batch bucket) on disk, so a new process
skips scheduling them again.

tinygrad caches compiled kernel binaries on disk, but a new process still schedules and lowers every kernel of the
decode and prefill graphs in Python, most of the time to first token even with a warm kernel cache; a pickled
capture skips that (docs/TINYGRAD.md, docs/MEASUREMENTS.md). The pickle holds the graphs' buffers, packed weights
and KV cache included, so a warm start reads one file instead of repacking the GGUF. One entry per (model file,
device, context, tinygrad version, edgegen code, the tinygrad settings that pick kernels); a stale or unreadable
entry is ignored and rewritten. How a graph's buffers are pickled is tinygrad's business:
runtime.tinygrad_seam.graph_reduction.

The folder is private (0700): it holds pickles that this process loads, and an MQTT-facing process must not load
one that another user planted. Entries are written to temporary names and renamed into place, so a killed process
leaves no partial entry. Total size is bounded (EDGEGEN_JIT_CACHE_MB, default 1024; least recently used entries are
evicted first), because a board's flash is small and an entry holds a model's packed weights (docs/MEASUREMENTS.md).
This module only stores and loads; runtime.graphs checks every loaded graph against the probe result saved with it
before trusting it, and removes an entry that fails.
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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
FORMAT_VERSION = 2  # 2: entries carry a probe result that loaded graphs are checked against
DEFAULT_LIMIT_MB = 1024


def cache_root() -> Path:
    """edgegen's cache folder: $EDGEGEN_CACHE, else $XDG_CACHE_HOME/edgegen (~/.cache/edgegen)."""
    base = os.environ.get("EDGEGEN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "edgegen")
    return Path(base).expanduser()


def cache_dir() -> Path:
    return cache_root() / "jit"


def limit_bytes() -> int:
    """The cache's size bound: EDGEGEN_JIT_CACHE_MB (0 keeps nothing), default 1024 MB."""
    raw = os.environ.get("EDGEGEN_JIT_CACHE_MB", "")
    try:
        mb = float(raw) if raw.strip() else DEFAULT_LIMIT_MB
    except ValueError:
        log.warning("EDGEGEN_JIT_CACHE_MB=%r is not a number; using %d", raw, DEFAULT_LIMIT_MB)
        mb = DEFAULT_LIMIT_MB
    return max(0, int(mb * 2**20))


def _private_dir() -> Path:
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if folder.stat().st_mode & 0o077:
        folder.chmod(0o700)  # created by an older edgegen, or by a umask-less mkdir of a parent
    return folder


@functools.cache
def code_version() -> str:
    """Hash of the tinygrad version and the code that builds the graphs (runtime/ and models/), so an upgraded
    tinygrad or a changed model never reuses old graphs."""
    from edgegen.runtime.tinygrad_seam import tinygrad_version

    h = hashlib.sha256(tinygrad_version().encode())
    for package in ("runtime", "models"):
        folder = Path(__file__).resolve().parents[1] / package
        # subpackages too (the seam, diffusion), and the hand-written kernels' C source
        for source in sorted(p for ext in ("*.py", "*.h", "*.c") for p in folder.rglob(ext)):
            h.update(source.relative_to(folder).as_posix().encode())
            h.update(source.read_bytes())
    return h.hexdigest()[:16]


def cache_key(model_path: Path, device: str, max_context: int, variant: str = "") -> str:
    """Everything a captured graph depends on: the file, device, context, code, BEAM (it picks the kernels), and the
    variant (which kernels, how many partitions: runtime.native.options)."""
    from edgegen.runtime.tinygrad_seam import kernel_settings

    st = model_path.stat()
    ident = f"{FORMAT_VERSION}|{model_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{device}|{max_context}|" \
            f"{code_version()}|{kernel_settings()}|{variant}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def load(key: str) -> dict[str, Any] | None:
    """The graphs saved under key, or None. Buffer bytes are read from the side file through a memory map, so
    loading holds no second in-memory copy of the weights."""
    from edgegen.runtime.tinygrad_seam import copied_chunks

    path = cache_dir() / f"{key}.pkl"
    if not path.is_file():
        return None
    try:
        if path.parent.stat().st_mode & 0o022 or path.stat().st_uid != os.getuid():
            log.warning("ignoring JIT cache %s: its folder is writable by others or it is not ours", path)
            return None
        with open(path, "rb") as f:
            header = pickle.load(f)
            # Copy-on-write: tinygrad copies in from these views, and some backends (OpenCL) need a writable
            # buffer for that (a read-only map fails with "underlying buffer is not writable").
            blob = np.memmap(path.with_name(header["data"]), dtype=np.uint8, mode="c")
            base = blob.ctypes.data

            def copied(chunk: memoryview) -> None:  # in device memory now: drop its pages (never written)
                _release(blob, np.frombuffer(chunk, dtype=np.uint8).ctypes.data - base, chunk.nbytes)

            # pages go as they are copied, so the peak holds one chunk of a buffer, not the whole largest buffer
            # (docs/MEASUREMENTS.md)
            with copied_chunks(copied):
                graphs = pickle.load(f, buffers=_views_released_behind(blob, header["buffers"]))
            _release(blob)  # the unpickler never asks past the last view: drop its pages too
        _touch(path)  # least recently used is evicted first
        return graphs
    except Exception as e:  # noqa: BLE001 - any unreadable cache is a miss, never a failure
        log.warning("ignoring unreadable JIT cache %s: %s", path, e)
        return None


def _views_released_behind(blob: np.memmap, spans: list[tuple[int, int]]) -> Iterator[memoryview]:
    """Views of each buffer's bytes, in order. The unpickler builds each Buffer (copying the bytes into device
    memory) before it asks for the next view, so the previous span's pages can be dropped from RSS then."""
    previous: tuple[int, int] | None = None
    for start, size in spans:
        if previous is not None:
            _release(blob, *previous)
        yield memoryview(blob[start : start + size])  # type: ignore[arg-type]  # numpy's stubs lack __buffer__
        previous = (start, size)


def _release(blob: np.memmap, start: int = 0, size: int | None = None) -> None:
    """Drop the resident pages of bytes [start, start + size) of a copy-on-write map (all of it by default)."""
    mm = getattr(blob, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    lo = start // mmap.PAGESIZE * mmap.PAGESIZE
    end = len(blob) if size is None else start + size
    if end > lo:
        mm.madvise(mmap.MADV_DONTNEED, lo, end - lo)


class _GraphPickler(pickle.Pickler):
    """Pickles captured graphs with two changes to tinygrad's own reductions.

    Slots: tinygrad numbers buffers from a per-process counter that starts at 0 and hash-conses UOps, so a buffer
    from an unpickled graph and a buffer the loading process creates can get the same slot and become the same
    UOp: the loading process then reads or writes the wrong memory (and generates fluent garbage). Shifting the
    pickled slots by a random 2**41-scale offset keeps them clear of any counter a process will reach.

    Bytes: a Buffer's contents go out of band (pickle protocol 5) as a zero-copy view of its memory, written by
    the caller to a side file, instead of a copy inside the pickle, which would raise peak RSS to save and leave
    the bytes resident after loading (docs/MEASUREMENTS.md).
    """

    def __init__(self, f: Any, offset: int, buffer_callback: Any) -> None:
        super().__init__(f, protocol=5, buffer_callback=buffer_callback)
        self.offset = offset

    def reducer_override(self, obj: Any) -> Any:
        from edgegen.runtime.tinygrad_seam import graph_reduction

        reduction = graph_reduction(obj, self.offset)
        return NotImplemented if reduction is None else reduction


def save(key: str, graphs: dict[str, Any]) -> Path | None:
    """Write `<key>.pkl` (structure) and a side file of buffer bytes, each under a temporary name renamed into place,
    the .pkl last; then evict old entries down to the size bound. None when nothing was kept."""
    tmp_paths: list[Path] = []
    try:
        folder = _private_dir()
        data_name = f"{key}-{secrets.token_hex(4)}.bin"
        spans: list[tuple[int, int]] = []
        structure = io.BytesIO()
        fd, data_tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        tmp_paths.append(Path(data_tmp))
        with os.fdopen(fd, "wb") as data:

            def write_buffer(pb: pickle.PickleBuffer) -> None:
                raw = pb.raw()
                pos = data.tell()
                data.write(raw)
                data.write(b"\0" * (-raw.nbytes % 64))  # keep every buffer 64-byte aligned in the map
                spans.append((pos, raw.nbytes))

            _GraphPickler(structure, secrets.randbits(40) + 2**41, write_buffer).dump(graphs)
        limit = limit_bytes()
        size = os.path.getsize(data_tmp) + structure.getbuffer().nbytes
        if size > limit:
            log.warning("not caching the captured graphs: %d MB is over the JIT cache limit of %d MB "
                        "(EDGEGEN_JIT_CACHE_MB)", size >> 20, limit >> 20)
            Path(data_tmp).unlink(missing_ok=True)
            return None
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        tmp_paths.append(Path(tmp))
        with os.fdopen(fd, "wb") as f:
            pickle.dump({"data": data_name, "buffers": spans}, f)
            f.write(structure.getbuffer())
        os.replace(data_tmp, folder / data_name)
        path = folder / f"{key}.pkl"
        os.replace(tmp, path)
        _touch(path)
        for old in folder.glob(f"{key}-*.bin"):  # data files of earlier saves under this key
            if old.name != data_name:
                old.unlink(missing_ok=True)
        evict(limit, keep=key)
        return path
    except Exception as e:  # noqa: BLE001 - a read-only or full disk must not break generation
        log.warning("could not save the JIT cache: %s", e)
        for p in tmp_paths:
            p.unlink(missing_ok=True)
        return None


def _touch(path: Path) -> None:
    """Mark an entry used now, at full clock resolution (a file's own mtime comes from a coarser kernel clock,
    which ties entries written within a few milliseconds)."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


@dataclasses.dataclass(frozen=True)
class Usage:
    folder: Path
    entries: int
    size_bytes: int
    limit_bytes: int


def _entries(folder: Path) -> list[tuple[float, str, int]]:
    """(last use, key, bytes of .pkl + .bin) per entry, oldest first."""
    out = []
    for pkl in folder.glob("*.pkl"):
        key = pkl.stem
        try:
            size = pkl.stat().st_size + sum(b.stat().st_size for b in folder.glob(f"{key}-*.bin"))
            out.append((pkl.stat().st_mtime, key, size))
        except FileNotFoundError:  # removed by another process meanwhile
            continue
    return sorted(out)


def remove(key: str) -> None:
    """Delete one entry (a graph that failed its check after loading)."""
    folder = cache_dir()
    (folder / f"{key}.pkl").unlink(missing_ok=True)
    for b in folder.glob(f"{key}-*.bin"):
        b.unlink(missing_ok=True)


def evict(limit: int, keep: str | None = None) -> None:
    """Remove least recently used entries until the folder holds at most `limit` bytes; also orphaned data files
    and temporary files older than an hour (left by a process killed mid-save)."""
    folder = cache_dir()
    if not folder.is_dir():
        return
    entries = _entries(folder)
    total = sum(size for _, _, size in entries)
    for _, key, size in entries:
        if total <= limit:
            break
        if key != keep:
            remove(key)
            total -= size
            log.info("evicted JIT cache entry %s (%d MB) to stay under %d MB", key, size >> 20, limit >> 20)
    live = {key for _, key, _ in _entries(folder)}
    for f in [*folder.glob("*.bin"), *folder.glob("*.tmp")]:
        try:
            orphan = f.suffix == ".bin" and f.name.rsplit("-", 1)[0] not in live
            if orphan or (f.suffix == ".tmp" and time.time() - f.stat().st_mtime > 3600):
                f.unlink(missing_ok=True)
        except FileNotFoundError:
            continue


def usage() -> Usage:
    """What the cache holds now, for `edgegen device`."""
    folder = cache_dir()
    entries = _entries(folder) if folder.is_dir() else []
    return Usage(folder, len(entries), sum(size for _, _, size in entries), limit_bytes())
