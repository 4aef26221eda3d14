"""Write a quantized model as one GGUF file with its recipe and quality report (through artifact.writer)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.source import MetaValue, ModelSource
from edgegen.runtime.artifact import writer as artifact_writer
from edgegen.runtime.artifact.constants import GGMLQuantizationType, GGUFValueType, Key
from edgegen.runtime.errors import ArtifactError

if TYPE_CHECKING:
    from gguf import LlamaFileType

    from edgegen.quantize.pipeline import QuantizedModel

log = logging.getLogger(__name__)

REPORT_ALLOWANCE_BYTES = 64 * 1024  # room for the edgegen.* keys, whose size is known only after quantizing


def check_writable(out_path: str | Path) -> Path:
    """Fail before any work if `out_path` cannot be created (missing folder, no permission, is a folder)."""
    try:
        return artifact_writer.check_writable(out_path)
    except ArtifactError as e:
        raise QuantizeError(str(e)) from None


def estimate_overhead_bytes(source: ModelSource) -> int:
    """Bytes of the file that are not tensor data: header, metadata, tensor infos, alignment, our report."""
    shapes = {n: w.shape for n, w in source.tensors.items()}
    return artifact_writer.header_size_bytes(source.metadata, shapes) + REPORT_ALLOWANCE_BYTES


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
    return artifact_writer.dominant_file_type(types)


def write_artifact(out_path: str | Path, source: ModelSource, result: QuantizedModel, progress: bool = False) -> int:
    """Write `result` with `source`'s metadata to `out_path`; returns the file size in bytes.

    Nothing is left at `out_path` (or beside it) if anything fails.
    """
    u32 = GGUFValueType.UINT32
    file_type = dominant_file_type({n: q.qtype for n, q in result.tensors.items()})
    metadata = {
        **source.metadata,
        Key.FILE_TYPE: MetaValue(int(file_type), u32),
        Key.QUANTIZATION_VERSION: MetaValue(artifact_writer.QUANTIZATION_VERSION, u32),
        **edgegen_metadata(source, result),
    }
    packed = {n: q.qtype for n, q in result.tensors.items() if q.data.dtype.kind == "u"}
    try:
        return artifact_writer.write_gguf(out_path, source.architecture, metadata,
                                          {n: q.data for n, q in result.tensors.items()}, packed, progress)
    except ArtifactError as e:
        raise QuantizeError(str(e)) from None
