"""Import a GGUF file of any tensor type gguf-py can dequantize into float32 tensors plus its metadata."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.quants import dequantize

from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.source import MetaValue, ModelSource, check_tokenizer, sha256_files
from edgegen.runtime.model_file import IMAGE_ARCHITECTURES

log = logging.getLogger(__name__)

# Keys the writer sets anew: the reader's pseudo-keys, the file type, and an earlier quantization's own report.
_DROPPED_PREFIXES = ("GGUF.", "general.file_type", "general.quantization_version", "edgegen.")


def read_metadata(reader: GGUFReader) -> dict[str, MetaValue]:
    """Every key-value of a GGUF file as MetaValue, except those the writer sets itself."""
    out: dict[str, MetaValue] = {}
    for key, f in reader.fields.items():
        if key.startswith(_DROPPED_PREFIXES):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        if vtype == GGUFValueType.ARRAY and len(f.types) > 2:
            log.warning("skipping nested-array metadata key %s", key)
            continue
        out[key] = MetaValue(f.contents(), vtype, sub)
    return out


def load_gguf(path: Path) -> ModelSource:
    """Read `path` and dequantize every tensor to float32 (numpy order: rows are output features)."""
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as e:
        raise QuantizeError(f"{path}: not a readable GGUF file ({e})") from e
    metadata = read_metadata(reader)
    if "general.architecture" not in metadata:
        raise QuantizeError(f"{path}: GGUF file has no general.architecture")
    if str(metadata["general.architecture"].value) not in IMAGE_ARCHITECTURES:  # image models have no tokenizer
        check_tokenizer(path, metadata)
    tensors: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    for t in reader.tensors:
        qtype = GGMLQuantizationType(t.tensor_type)
        try:
            arr = dequantize(np.asarray(t.data), qtype)
        except NotImplementedError as e:
            raise QuantizeError(
                f"{path}: tensor {t.name} has type {qtype.name}, which gguf-py cannot dequantize"
            ) from e
        # gguf shapes list the fastest dimension first; numpy's order is the reverse.
        tensors[t.name] = np.ascontiguousarray(arr, dtype=np.float32).reshape(tuple(int(d) for d in reversed(t.shape)))
        types[t.name] = qtype.name
    return ModelSource(
        path=path,
        architecture=str(metadata["general.architecture"].value),
        tensors=tensors,
        metadata=metadata,
        content_sha256=sha256_files([path]),
        source_types=types,
    )
