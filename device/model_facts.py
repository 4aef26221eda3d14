"""What the planner needs from a GGUF file: its tensor table (sizes as packed) and its attention shape.

Read with gguf-py's memory-mapped reader, so only the header and tensor table are touched, never the weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from device.errors import DeviceError


@dataclass(frozen=True)
class TensorFacts:
    name: str
    n_elements: int
    n_bytes: int  # as packed in the file
    type_name: str  # GGML type: F32, Q8_0, Q4_1, ...
    n_dims: int  # 1 for norm vectors, 2 for weight matrices


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


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def read_model_facts(path: str | Path) -> ModelFacts:
    """Facts of the GGUF file at `path`; DeviceError for a missing file, a non-GGUF file or a missing key."""
    path = Path(path)
    if not path.is_file():
        raise DeviceError(f"model file {str(path)!r} does not exist")
    from gguf import GGUFReader  # numpy-heavy import, only when a file is actually read

    try:
        reader = GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - gguf-py raises ValueError, struct errors, ... on a bad file
        raise DeviceError(f"{str(path)!r} is not a readable GGUF file ({type(e).__name__}: {e})") from None
    arch = _field(reader, "general.architecture")
    if not arch:
        raise DeviceError(f"{str(path)!r} has no general.architecture key: expected a GGUF model file")

    def need(key: str) -> int:
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise DeviceError(f"{str(path)!r} lacks {arch}.{key}: the planner needs a decoder's attention shape")
        return int(value)

    n_heads, dim = need("attention.head_count"), need("embedding_length")
    tensors = tuple(TensorFacts(t.name, int(t.n_elements), int(t.n_bytes), t.tensor_type.name, len(t.shape))
                    for t in reader.tensors)
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    vocab = _field(reader, f"{arch}.vocab_size") or (int(embed.shape[-1]) if embed is not None else 0)
    return ModelFacts(
        path=str(path), architecture=str(arch), n_layers=need("block_count"), n_heads=n_heads,
        n_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", n_heads)),
        head_dim=int(_field(reader, f"{arch}.attention.key_length", dim // n_heads)),
        dim=dim, hidden_dim=need("feed_forward_length"), vocab_size=int(vocab),
        max_context=need("context_length"), tensors=tensors,
    )
