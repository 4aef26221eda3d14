"""What the planner needs from a GGUF file: its tensor table (sizes as packed) and its attention shape.

Only the header and tensor table are read, never the weights: by gguf-py's memory-mapped reader here, by the
runtime's faster header parser in the CLI front ends (device/model_open.py).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgegen.device.errors import DeviceError


@dataclass(frozen=True)
class TensorFacts:
    name: str
    n_elements: int
    n_bytes: int  # as packed in the file
    type_name: str  # GGML type: F32, Q8_0, Q4_1, ...
    n_dims: int  # 1 for norm vectors, 2 for weight matrices
    n_rows: int  # the slowest dimension: the vocabulary of an embedding table


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
        return sum(t.n_bytes for t in self.tensors)

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

    The one place that knows which keys the planner needs: read_model_facts feeds it gguf-py's reader, the CLI
    front ends the runtime's own header parser (device/model_open.py).
    """
    arch = metadata.get("general.architecture")
    if not arch:
        raise DeviceError(f"{path!r} has no general.architecture key: expected a GGUF model file")

    def need(key: str) -> int:
        value = metadata.get(f"{arch}.{key}")
        if value is None:
            raise DeviceError(f"{path!r} lacks {arch}.{key}: the planner needs a decoder's attention shape")
        return int(value)

    n_heads, dim = need("attention.head_count"), need("embedding_length")
    embed = next((t for t in tensors if t.name == "token_embd.weight"), None)
    vocab = metadata.get(f"{arch}.vocab_size") or (embed.n_rows if embed is not None else 0)
    return ModelFacts(
        path=path, architecture=str(arch), n_layers=need("block_count"), n_heads=n_heads,
        n_kv_heads=int(metadata.get(f"{arch}.attention.head_count_kv", n_heads)),
        head_dim=int(metadata.get(f"{arch}.attention.key_length", dim // n_heads)),
        dim=dim, hidden_dim=need("feed_forward_length"), vocab_size=int(vocab),
        max_context=need("context_length"), tensors=tensors,
    )


def read_model_facts(path: str | Path) -> ModelFacts:
    """Facts of the GGUF file at `path` (gguf-py's reader); DeviceError naming the file for a missing file, a
    folder, a file that is not GGUF or is truncated, or a missing key."""
    path = Path(path)
    if not path.exists():
        raise DeviceError(f"model file {str(path)!r} does not exist")
    if not path.is_file():
        raise DeviceError(f"model path {str(path)!r} is not a file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":  # gguf-py's GGUF_MAGIC, as bytes in file order
        raise DeviceError(f"{str(path)!r} is not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    from gguf import GGUFReader  # numpy-heavy import, only when a file is actually read

    try:
        reader = GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - gguf-py raises ValueError, struct errors, ... on a bad file
        raise DeviceError(f"{str(path)!r} is truncated or corrupt: gguf-py cannot read it "
                          f"({type(e).__name__})") from None
    metadata = {key: f.contents() for key, f in reader.fields.items() if not key.startswith("GGUF.")}
    tensors = tuple(TensorFacts(t.name, int(t.n_elements), int(t.n_bytes), t.tensor_type.name, len(t.shape),
                                int(t.shape[-1]) if len(t.shape) else 1)
                    for t in reader.tensors)
    return facts_from_header(str(path), metadata, tensors)
