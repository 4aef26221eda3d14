"""Import a GGUF file of any tensor type gguf-py can dequantize into float32 tensors plus its metadata."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.source import MetaValue, ModelSource, sha256_files
from edgegen.runtime.artifact.constants import SUPPORTED_ARCHITECTURES, GGUFValueType, Key
from edgegen.runtime.artifact.reader import ModelFile, dequantize_tensor, open_gguf
from edgegen.runtime.artifact.validate import check_file
from edgegen.runtime.errors import ArtifactError

log = logging.getLogger(__name__)

# Keys the writer sets anew: the file type, and an earlier quantization's own report.
_DROPPED_PREFIXES = (Key.FILE_TYPE, Key.QUANTIZATION_VERSION, "edgegen.")


def read_metadata(mf: ModelFile) -> dict[str, MetaValue]:
    """Every key-value of a GGUF file as MetaValue, except those the writer sets itself."""
    out: dict[str, MetaValue] = {}
    for key, value in mf.metadata.items():
        if key.startswith(_DROPPED_PREFIXES):
            continue
        vtype, sub = mf.value_types[key]
        if sub == GGUFValueType.ARRAY:
            log.warning("skipping nested-array metadata key %s", key)
            continue
        out[key] = MetaValue(value, vtype, sub)
    return out


def check_architecture(path: Path, architecture: str) -> None:
    """Refuse a file the runtime could not run after quantizing: its architecture must be a decoder family
    (artifact.constants.TEXT_ARCHITECTURES) or one of edgegen's image models."""
    if not architecture:
        raise QuantizeError(f"{path}: GGUF file has no general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise QuantizeError(f"{path}: architecture {architecture!r} is not one the runtime runs "
                            f"(expected one of: {', '.join(SUPPORTED_ARCHITECTURES)})")


def load_gguf(path: Path) -> ModelSource:
    """Read `path` and dequantize every tensor to float32 (numpy order: rows are output features).

    Tensors of any type gguf-py dequantizes (K-quants included) come back as float32; every metadata key is kept
    (tokenizer, chat template, family keys) except those the writer sets anew.
    """
    try:
        mf = open_gguf(path)
        check_architecture(path, mf.architecture)  # before dequantizing: that is the work
        check_file(mf)  # hyperparameters, tensor shapes, tokenizer: a broken file's facts are not carried forward
    except ArtifactError as e:
        raise QuantizeError(str(e)) from None
    metadata = read_metadata(mf)  # a text model's tokenizer was checked by check_file (image models have none)
    tensors: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    for t in mf.tensors.values():
        try:
            tensors[t.name] = np.ascontiguousarray(dequantize_tensor(t))
        except ArtifactError as e:
            raise QuantizeError(f"{path}: {e}") from None
        types[t.name] = t.ggml_type.name
    return ModelSource(
        path=path,
        architecture=mf.architecture,
        tensors=tensors,
        metadata=metadata,
        content_sha256=sha256_files([path]),
        source_types=types,
    )
