"""What every importer produces: named float32 tensors in GGUF naming and layout, metadata, a content hash."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.quantize.errors import QuantizeError
from edgegen.runtime.artifact.constants import Key
from edgegen.runtime.artifact.writer import MetaValue

__all__ = ["MetaValue", "ModelSource", "check_tokenizer", "load_source", "sha256_files"]

# The tokenizer fields a runtime (ours or llama.cpp's) needs to turn text into ids; a source without them is refused.
REQUIRED_TOKENIZER_KEYS = (Key.TOKENIZER_MODEL, Key.TOKENS)


@dataclass
class ModelSource:
    """A model ready to quantize.

    tensors: GGUF names (`blk.0.attn_q.weight`) -> float32 arrays in numpy order, (out_features, in_features) for
    weights, with the Q/K rows already in llama.cpp's RoPE order. metadata: every GGUF key-value to carry over
    (`general.*`, `<arch>.*` hyperparameters, `tokenizer.*`). content_sha256: hash of the source bytes.
    """

    path: Path
    architecture: str
    tensors: dict[str, np.ndarray]
    metadata: dict[str, MetaValue]
    content_sha256: str
    source_types: dict[str, str] = field(default_factory=dict)  # tensor name -> type name in the source

    def hparam(self, key: str) -> Any:
        """`<arch>.<key>` from the metadata, e.g. hparam("block_count")."""
        full = f"{self.architecture}.{key}"
        if full not in self.metadata:
            raise QuantizeError(f"{self.path}: metadata key {full!r} is missing")
        return self.metadata[full].value

    @property
    def size_bytes(self) -> int:
        """Size of the tensors as float32."""
        return sum(t.nbytes for t in self.tensors.values())


def check_tokenizer(path: Path, metadata: dict[str, MetaValue]) -> None:
    """Refuse a source without a tokenizer: its output could not turn text into tokens."""
    missing = [k for k in REQUIRED_TOKENIZER_KEYS if k not in metadata]
    if missing:
        raise QuantizeError(f"{path}: no tokenizer in the source (missing {', '.join(missing)})")


def sha256_files(paths: list[Path], root: Path | None = None) -> str:
    """sha256 over files in the given order; with root, each file's relative name is hashed before its bytes."""
    h = hashlib.sha256()
    for p in paths:
        if root is not None:
            h.update(str(p.relative_to(root)).encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def load_source(path: str | Path) -> ModelSource:
    """Import a GGUF file or a Hugging Face-style folder (config.json + *.safetensors + tokenizer.json);
    `default` names the shipped SmolLM2-135M-Instruct GGUF, as everywhere in edgegen."""
    if str(path) == "default":
        from edgegen.runtime.artifact.reader import default_model_path

        path = default_model_path()
    p = Path(path)
    if p.is_dir():
        from edgegen.quantize.import_hf import load_hf_folder

        return load_hf_folder(p)
    if p.is_file():
        from edgegen.quantize.import_gguf import load_gguf

        return load_gguf(p)
    raise QuantizeError(f"source {str(path)!r} does not exist (expected a .gguf file or a Hugging Face folder)")
