"""Write a GGUF file atomically with gguf-py's GGUFWriter: a temporary file beside the target, renamed at the end.

The one writer of model files: `edgegen quantize` (quantize/writer.py adds its recipe and quality report) and
training checkpoints go through write_gguf; nothing is left at the target, or beside it, if anything fails.
"""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFWriter, LlamaFileType

from edgegen.runtime.artifact.constants import DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType, Key
from edgegen.runtime.errors import ArtifactError

T = GGMLQuantizationType
# general.file_type names the type most matrices have; llama.cpp only reports it, it does not rely on it.
FILE_TYPES = {
    T.F32: LlamaFileType.ALL_F32, T.F16: LlamaFileType.MOSTLY_F16, T.Q8_0: LlamaFileType.MOSTLY_Q8_0,
    T.Q4_0: LlamaFileType.MOSTLY_Q4_0, T.Q4_1: LlamaFileType.MOSTLY_Q4_1,
}
QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION of the block layouts gguf-py writes
HEADER_BYTES = 24  # magic, version, tensor count, key-value count


@dataclass(frozen=True)
class MetaValue:
    """One GGUF key-value: the value and its GGUF type (sub_type for arrays)."""

    value: Any
    type: GGUFValueType
    sub_type: GGUFValueType | None = None

    @classmethod
    def infer(cls, value: Any) -> MetaValue:
        """The GGUF type of a Python value: str, bool, int (UINT32, or INT64 outside it), float (FLOAT32), a list."""
        if isinstance(value, (list, tuple)):
            if not value:
                raise ArtifactError("an empty metadata array has no element type: give MetaValue(value, ARRAY, type)")
            return cls(list(value), GGUFValueType.ARRAY, cls.infer(value[0]).type)
        if isinstance(value, str):
            return cls(value, GGUFValueType.STRING)
        if isinstance(value, bool):
            return cls(value, GGUFValueType.BOOL)
        if isinstance(value, int):
            return cls(value, GGUFValueType.UINT32 if 0 <= value < 2**32 else GGUFValueType.INT64)
        if isinstance(value, float):
            return cls(value, GGUFValueType.FLOAT32)
        raise ArtifactError(f"metadata value {value!r} of type {type(value).__name__} has no GGUF type "
                            f"(expected str, bool, int, float or a list of them)")


def check_writable(out_path: str | os.PathLike) -> Path:
    """Fail before any work if `out_path` cannot be created (missing folder, no permission, is a folder)."""
    p = Path(out_path)
    if p.is_dir():
        raise ArtifactError(f"output path {str(p)!r} is a directory (expected a .gguf file path)")
    parent = p.parent  # Path("m.gguf").parent is Path(".")
    if not parent.is_dir():
        raise ArtifactError(f"output path {str(p)!r} is not writable: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ArtifactError(f"output path {str(p)!r} is not writable: no permission to write in {str(parent)!r}")
    return p


def dominant_file_type(types: Mapping[str, GGMLQuantizationType]) -> LlamaFileType:
    """The LlamaFileType of the type most tensors use (F32 vectors not counted)."""
    counts: Counter[GGMLQuantizationType] = Counter(t for t in types.values() if t != T.F32) or Counter([T.F32])
    return FILE_TYPES.get(counts.most_common(1)[0][0], LlamaFileType.GUESSED)


def _value_nbytes(v: Any, vtype: GGUFValueType, sub: GGUFValueType | None) -> int:
    if vtype == GGUFValueType.STRING:
        return 8 + len(str(v).encode())
    if vtype == GGUFValueType.ARRAY:
        assert sub is not None
        return 12 + sum(_value_nbytes(x, sub, None) for x in v)
    return 8  # the widest scalar


def header_size_bytes(metadata: Mapping[str, MetaValue], tensor_shapes: Mapping[str, tuple[int, ...]]) -> int:
    """An upper bound of the bytes before the tensor data: header, key-values, tensor infos, alignment padding."""
    kv = sum(8 + len(k) + 4 + _value_nbytes(m.value, m.type, m.sub_type) for k, m in metadata.items())
    infos = sum(8 + len(n) + 4 + 8 * len(shape) + 12 + DEFAULT_ALIGNMENT for n, shape in tensor_shapes.items())
    return HEADER_BYTES + kv + infos


def write_gguf(out_path: str | os.PathLike, architecture: str, metadata: Mapping[str, MetaValue],
               tensors: Mapping[str, np.ndarray], packed_types: Mapping[str, GGMLQuantizationType] | None = None,
               progress: bool = False) -> int:
    """Write `tensors` (numpy order) and `metadata` as one GGUF file at `out_path`; returns its size in bytes.

    A tensor named in `packed_types` holds that type's blocks as uint8 rows; any other is written as its dtype
    (float32 or float16). `general.architecture` is `architecture` whatever `metadata` says. ArtifactError naming
    the path if the file cannot be written; a previous file at `out_path` survives a failed write.
    """
    out = check_writable(out_path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as e:
        raise ArtifactError(f"output path {str(out)!r} is not writable ({e.strerror})") from e
    os.close(fd)
    tmp = Path(tmp_name)
    packed_types = packed_types or {}
    try:
        w = GGUFWriter(tmp, architecture)
        for key, m in metadata.items():
            if key != Key.ARCHITECTURE:
                w.add_key_value(key, m.value, m.type, m.sub_type)
        for name, data in tensors.items():
            w.add_tensor(name, data, raw_dtype=packed_types.get(name))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=progress)
        w.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; the artifact gets the usual permissions
        os.replace(tmp, out)
    except OSError as e:
        raise ArtifactError(f"could not write {str(out)!r}: {e.strerror or e}") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return out.stat().st_size
