"""Rewrite a GGUF file with chosen facts changed, the way bad converters and broken downloads change them.

Read with gguf-py's GGUFReader (independent of edgegen's own parser), written back by a plain serializer of the
GGUF v3 layout (spec: ggml/docs/gguf.md) that, unlike gguf.GGUFWriter, writes what it is told: a tensor's type
relabelled without touching its data, an offset moved by a byte, an alignment of 0 or 7, NaN floats.

    parts = read("model.gguf")
    parts.metadata["llama.rope.freq_base"] = (GGUFValueType.FLOAT32, float("nan"))
    write(parts, "bad.gguf")
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGUFValueType as V

_SCALAR = {V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I", V.INT32: "<i",
           V.FLOAT32: "<f", V.BOOL: "<?", V.UINT64: "<Q", V.INT64: "<q", V.FLOAT64: "<d"}


@dataclass
class Tensor:
    name: str
    dims: list[int]  # fastest-first, as stored
    type_id: int
    offset: int  # relative to the data section


@dataclass
class Parts:
    """A GGUF file taken apart: metadata key -> (value type, value) with arrays as (ARRAY, (element type, list))."""

    metadata: dict[str, tuple[V, Any]]
    tensors: list[Tensor]
    data: bytes  # the data section as it was (from its aligned start to the end of the file)
    alignment_for_layout: int = 32  # the alignment the header is padded with (independent of general.alignment)
    extra: dict = field(default_factory=dict)

    def set(self, key: str, value: Any, vtype: V | None = None) -> None:
        """Set a scalar or string key, keeping the type it had (or `vtype`, or one inferred from the value)."""
        if vtype is None:
            vtype = self.metadata[key][0] if key in self.metadata else _infer(value)
        self.metadata[key] = (vtype, value)

    def tensor(self, name: str) -> Tensor:
        return next(t for t in self.tensors if t.name == name)


def _infer(value: Any) -> V:
    if isinstance(value, bool):
        return V.BOOL
    if isinstance(value, int):
        return V.UINT32 if value >= 0 else V.INT32
    if isinstance(value, float):
        return V.FLOAT32
    return V.STRING


def read(path: Path | str) -> Parts:
    r = gguf.GGUFReader(str(path))
    metadata: dict[str, tuple[V, Any]] = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue  # the header's own counts, not key-value pairs
        vtype = V(f.types[0])
        if vtype == V.ARRAY:
            etype = V(f.types[1]) if len(f.types) > 1 else V.UINT8
            metadata[name] = (V.ARRAY, (etype, list(f.contents())))
        else:
            metadata[name] = (vtype, f.contents())
    tensors = [Tensor(t.name, [int(d) for d in t.shape], int(t.tensor_type), int(t.data_offset) - r.data_offset)
               for t in r.tensors]
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    align = int(metadata.get("general.alignment", (V.UINT32, 32))[1])
    return Parts(metadata, tensors, bytes(raw[r.data_offset:]), align if align > 0 and not align & (align - 1) else 32)


def _value(vtype: V, value: Any) -> bytes:
    if vtype == V.STRING:
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        return struct.pack("<Q", len(raw)) + raw
    if vtype == V.ARRAY:
        etype, items = value
        return struct.pack("<IQ", int(etype), len(items)) + b"".join(_value(etype, v) for v in items)
    return struct.pack(_SCALAR[vtype], value)


def header(parts: Parts) -> bytes:
    out = [b"GGUF", struct.pack("<IQQ", 3, len(parts.tensors), len(parts.metadata))]
    for key, (vtype, value) in parts.metadata.items():
        out += [_value(V.STRING, key), struct.pack("<I", int(vtype)), _value(vtype, value)]
    for t in parts.tensors:
        out += [_value(V.STRING, t.name), struct.pack("<I", len(t.dims)), struct.pack(f"<{len(t.dims)}Q", *t.dims),
                struct.pack("<IQ", t.type_id, t.offset)]
    return b"".join(out)


def write(parts: Parts, path: Path | str) -> Path:
    head = header(parts)
    align = parts.alignment_for_layout
    pad = (-len(head)) % align
    Path(path).write_bytes(head + b"\0" * pad + parts.data)
    return Path(path)
