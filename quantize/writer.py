"""Write a quantized model as one GGUF file, atomically: a temporary file in the destination, renamed at the end."""
from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType

from edgegen.quantize.blocks import Q
from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.source import MetaValue, ModelSource

if TYPE_CHECKING:
    from edgegen.quantize.pipeline import QuantizedModel

log = logging.getLogger(__name__)

# general.file_type names the type most matrices have; llama.cpp only reports it, it does not rely on it.
_FILE_TYPES = {
    Q.F32: LlamaFileType.ALL_F32, Q.F16: LlamaFileType.MOSTLY_F16, Q.Q8_0: LlamaFileType.MOSTLY_Q8_0,
    Q.Q4_0: LlamaFileType.MOSTLY_Q4_0, Q.Q4_1: LlamaFileType.MOSTLY_Q4_1,
}
GGUF_ALIGNMENT = 32
REPORT_ALLOWANCE_BYTES = 64 * 1024  # room for the edgegen.* keys, whose size is known only after quantizing


def check_writable(out_path: str | Path) -> Path:
    """Fail before any work if `out_path` cannot be created (missing folder, no permission, is a folder)."""
    p = Path(out_path)
    if p.is_dir():
        raise QuantizeError(f"output path {str(p)!r} is a directory (expected a .gguf file path)")
    parent = p.parent  # Path("m.gguf").parent is Path(".")
    if not parent.is_dir():
        raise QuantizeError(f"output path {str(p)!r} is not writable: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise QuantizeError(f"output path {str(p)!r} is not writable: no permission to write in {str(parent)!r}")
    return p


def _value_nbytes(v: object, vtype: GGUFValueType, sub: GGUFValueType | None) -> int:
    if vtype == GGUFValueType.STRING:
        return 8 + len(str(v).encode())
    if vtype == GGUFValueType.ARRAY:
        assert sub is not None
        return 12 + sum(_value_nbytes(x, sub, None) for x in v)  # type: ignore[attr-defined]
    return 8  # the widest scalar


def estimate_overhead_bytes(source: ModelSource) -> int:
    """Bytes of the file that are not tensor data: header, metadata, tensor infos, alignment, our report."""
    kv = sum(8 + len(k) + 4 + _value_nbytes(m.value, m.type, m.sub_type) for k, m in source.metadata.items())
    infos = sum(8 + len(n) + 4 + 8 * w.ndim + 12 + GGUF_ALIGNMENT for n, w in source.tensors.items())
    return 24 + kv + infos + REPORT_ALLOWANCE_BYTES


def edgegen_metadata(source: ModelSource, result: QuantizedModel) -> dict[str, MetaValue]:
    """The `edgegen.*` keys: recipe, its parameters, the source's hash, and the quality report."""
    s, f = GGUFValueType.STRING, GGUFValueType.FLOAT32
    worst_name, worst_err = result.worst_tensor()
    return {
        "edgegen.recipe.name": MetaValue(result.recipe.name, s),
        "edgegen.recipe.params": MetaValue(json.dumps(result.recipe_params(), sort_keys=True), s),
        "edgegen.source.name": MetaValue(source.path.name, s),
        "edgegen.source.sha256": MetaValue(source.content_sha256, s),
        "edgegen.quality.worst_tensor": MetaValue(worst_name, s),
        "edgegen.quality.worst_rel_error": MetaValue(worst_err, f),
        "edgegen.quality.mean_rel_error": MetaValue(result.mean_error(), f),
        "edgegen.quality.report": MetaValue(json.dumps(result.report(), sort_keys=True), s),
    }


def dominant_file_type(types: dict[str, GGMLQuantizationType]) -> LlamaFileType:
    """The LlamaFileType of the type most tensors use (F32 vectors not counted)."""
    counts = Counter(t for t in types.values() if t != Q.F32) or Counter([Q.F32])
    return _FILE_TYPES.get(counts.most_common(1)[0][0], LlamaFileType.GUESSED)


def write_artifact(out_path: str | Path, source: ModelSource, result: QuantizedModel, progress: bool = False) -> int:
    """Write `result` with `source`'s metadata to `out_path`; returns the file size in bytes.

    Nothing is left at `out_path` (or beside it) if anything fails.
    """
    out = check_writable(out_path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as e:
        raise QuantizeError(f"output path {str(out)!r} is not writable ({e.strerror})") from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = GGUFWriter(tmp, source.architecture)
        for key, m in source.metadata.items():
            if key != "general.architecture":
                w.add_key_value(key, m.value, m.type, m.sub_type)
        w.add_uint32("general.file_type", int(dominant_file_type({n: q.qtype for n, q in result.tensors.items()})))
        w.add_uint32("general.quantization_version", 2)  # GGML_QNT_VERSION of the block layouts gguf-py writes
        for key, m in edgegen_metadata(source, result).items():
            w.add_key_value(key, m.value, m.type, m.sub_type)
        for name, q in result.tensors.items():
            w.add_tensor(name, q.data, raw_dtype=q.qtype if q.data.dtype.kind == "u" else None)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=progress)
        w.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; the artifact gets the usual permissions
        os.replace(tmp, out)
    except OSError as e:
        raise QuantizeError(f"could not write {str(out)!r}: {e.strerror or e}") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return out.stat().st_size
