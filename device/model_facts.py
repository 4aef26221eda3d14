"""What the planner needs from a GGUF file: its tensor table (sizes as packed) and its attention shape.

Only the header and tensor table are read, never the weights, by the model-file package (edgegen.runtime.artifact,
which imports no tinygrad).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgegen.device.errors import DeviceError
from edgegen.runtime.artifact.config import config_from_metadata
from edgegen.runtime.artifact.constants import (
    BLOCK_SIZES,
    GGUF_MAGIC,
    REPACK_EXTRA_BYTES_PER_BLOCK,
    GGMLQuantizationType,
    Key,
)
from edgegen.runtime.artifact.reader import ModelFile, open_gguf
from edgegen.runtime.errors import ArtifactError

VECTOR_DEVICE_BYTES = 4  # norms and biases are widened to float32 on the host, whatever their stored type


@dataclass(frozen=True)
class TensorFacts:
    name: str
    n_elements: int
    n_bytes: int  # as packed in the file
    type_name: str  # GGML type: F32, Q8_0, Q4_1, ...
    n_dims: int  # 1 for norm vectors, 2 for weight matrices
    n_rows: int  # the slowest dimension: the vocabulary of an embedding table

    @property
    def device_bytes(self) -> int:
        """Bytes the runtime holds for this tensor once loaded: vectors as float32, K-quant matrices with their
        scales unpacked (REPACK_EXTRA_BYTES_PER_BLOCK), everything else as in the file."""
        if self.n_dims < 2:
            return self.n_elements * VECTOR_DEVICE_BYTES
        qtype = GGMLQuantizationType[self.type_name]
        extra = REPACK_EXTRA_BYTES_PER_BLOCK.get(qtype, 0)
        return self.n_bytes + self.n_elements // BLOCK_SIZES[qtype][0] * extra


@dataclass(frozen=True)
class ModelFacts:
    """Sizes and shape of one model file."""

    path: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    dim: int
    hidden_dim: int
    vocab_size: int
    max_context: int
    tensors: tuple[TensorFacts, ...] = field(repr=False)

    @property
    def weights_bytes(self) -> int:
        """The tensors' bytes as packed in the file."""
        return sum(t.n_bytes for t in self.tensors)

    @property
    def device_weights_bytes(self) -> int:
        """The tensors' bytes once the runtime has loaded them (TensorFacts.device_bytes)."""
        return sum(t.device_bytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tied_embeddings(self) -> bool:
        """No separate `output.weight`: the token embedding doubles as the output head (read every token)."""
        return not any(t.name == "output.weight" for t in self.tensors)

    def type_counts(self) -> dict[str, int]:
        """Parameters per GGML type, e.g. {'Q4_1': 106168320, 'Q8_0': 28311552, 'F32': 35136}."""
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.type_name] = counts.get(t.type_name, 0) + t.n_elements
        return counts


def facts_from_header(path: str, metadata: Mapping[str, Any], tensors: tuple[TensorFacts, ...]) -> ModelFacts:
    """Facts from a GGUF header already read (key -> value, and the tensor table); DeviceError for a missing key.

    The shape comes from artifact.config, the path the runtime builds its config by, so the planner's model is
    the one the runtime allocates (head size from attention.key_length, a missing context_length as the runtime's
    default).
    """
    if not metadata.get(Key.ARCHITECTURE):
        raise DeviceError(f"{path!r} has no {Key.ARCHITECTURE} key: expected a GGUF model file")
    embed = next((t for t in tensors if t.name == "token_embd.weight"), None)
    try:
        cfg = config_from_metadata(metadata, repr(path), embed.n_rows if embed is not None else None)
    except ArtifactError as e:
        raise DeviceError(str(e)) from None  # names the file, the key and what was expected
    return ModelFacts(
        path=path, architecture=cfg.architecture, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, dim=cfg.dim, hidden_dim=cfg.hidden_dim,
        vocab_size=cfg.vocab_size, max_context=cfg.max_context, tensors=tensors,
    )


def facts_from_model_file(mf: ModelFile) -> ModelFacts:
    """Facts of a file opened by artifact.reader.open_gguf (sizes as packed; shapes in numpy order)."""
    tensors = tuple(TensorFacts(t.name, t.n_elements, t.size_bytes, t.ggml_type.name, len(t.shape),
                                t.shape[0] if t.shape else 1)
                    for t in mf.tensors.values())
    return facts_from_header(str(mf.path), mf.metadata, tensors)


def read_model_facts(path: str | Path) -> ModelFacts:
    """Facts of the GGUF file at `path`; DeviceError naming the file for a missing file, a folder, a file that is
    not GGUF or is truncated, or a missing key."""
    path = Path(path)
    if not path.exists():
        raise DeviceError(f"model file {str(path)!r} does not exist")
    if not path.is_file():
        raise DeviceError(f"model path {str(path)!r} is not a file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise DeviceError(f"{str(path)!r} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    try:
        mf = open_gguf(path)
    except ArtifactError as e:  # truncated or corrupt: the message names the file and where it ends
        raise DeviceError(str(e)) from None
    return facts_from_model_file(mf)
