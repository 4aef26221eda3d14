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
import logging
import os
import pickle
import secrets
import tempfile
from pathlib import Path
from typing import Any

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
    from tinygrad.helpers import BEAM, getenv

    st = model_path.stat()
    ident = f"{FORMAT_VERSION}|{model_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{device}|{max_context}|" \
            f"{_code_version()}|beam={BEAM.value}|jitbeam={getenv('JITBEAM', BEAM.value)}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def load(key: str) -> dict[str, Any] | None:
    path = cache_dir() / f"{key}.pkl"
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception as e:  # noqa: BLE001 - any unreadable cache is a miss, never a failure
        log.warning("ignoring unreadable JIT cache %s: %s", path, e)
        return None


class _GraphPickler(pickle.Pickler):
    """Moves every buffer's slot number into a namespace of its own while pickling.

    tinygrad numbers buffers from a per-process counter that starts at 0 and hash-conses UOps, so a buffer from
    an unpickled graph and a buffer the loading process creates can get the same slot and become the same UOp:
    the loading process then reads or writes the wrong memory (measured: fluent garbage). Shifting the pickled
    slots by a random 2**40-scale offset keeps them clear of any counter a process will reach.
    """

    def __init__(self, f: Any, offset: int) -> None:
        super().__init__(f, protocol=pickle.HIGHEST_PROTOCOL)
        self.offset = offset

    def reducer_override(self, obj: Any) -> Any:
        from tinygrad.uop.ops import Ops, UOp

        if type(obj) is UOp and obj.op is Ops.BUFFER:
            arg = obj.arg
            slot = arg.slot + self.offset if arg.slot >= 0 else arg.slot - self.offset
            args = [obj.op, obj.dtype, obj.src, dataclasses.replace(arg, slot=slot), obj.tag, obj.metadata]
            if obj.realized is not None:
                args.append(obj.realized)
            return UOp, tuple(args)
        return NotImplemented


def save(key: str, graphs: dict[str, Any]) -> Path | None:
    """Write atomically (temp file + rename) so a killed process never leaves a half-written cache."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            _GraphPickler(f, secrets.randbits(40) + 2**41).dump(graphs)
        path = folder / f"{key}.pkl"
        os.replace(tmp, path)
        return path
    except Exception as e:  # noqa: BLE001 - a read-only or full disk must not break generation
        log.warning("could not save the JIT cache: %s", e)
        return None
