"""A GGUF file's `{arch}.*` metadata -> models.config.LlamaConfig: the one path, for the runtime and the quantizer.

Key names are gguf-py's (artifact.constants.Key). Families differ in what their files state; what llama.cpp
assumes instead of reading (llama-model.cpp, load_hparams) is in FAMILY_DEFAULTS.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edgegen.models.config import LlamaConfig
from edgegen.runtime.artifact.constants import DEFAULT_CONTEXT_LENGTH, Key, arch_key
from edgegen.runtime.errors import ArtifactError, shown

if TYPE_CHECKING:
    from edgegen.runtime.artifact.reader import ModelFile

# What llama.cpp fixes per family rather than reading from the file. Gemma 3 (llama-model.cpp, LLM_ARCH_GEMMA3):
# set_swa_pattern(6), i.e. layers 5, 11, 17, ... attend globally and the rest within attention.sliding_window;
# rope_freq_base_train_swa = 10000 for the local layers. gguf-py also names `{arch}.rope.freq_base_swa`, which is
# read when a file has it; there is no `{arch}.rope.local_freq_base` key.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma3": {"sliding_window_pattern": 6, "rope_theta_local": 10000.0},
}
# How each family computes (llama.cpp: llama_model_rope_type gives NEOX, i.e. rotated halves, for qwen2, qwen3,
# gemma3 and phi3, whose converters do not permute Q/K rows; src/models/<family>.cpp for the rest). Options not
# named keep the llama value (models.config.LlamaConfig defaults). Biases, fused QKV / gate-up tensors and RoPE
# frequency factors are read from which tensors the file has, not from here.
FAMILY_OPTIONS: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen2": {"rope_pairs": "halves"},
    "qwen3": {"rope_pairs": "halves", "qk_norm": True},
    "gemma3": {"rope_pairs": "halves", "qk_norm": True, "post_norms": True, "ffn_activation": "gelu_tanh"},
    "phi3": {"rope_pairs": "halves"},
}
DEFAULT_NORM_EPS = 1e-5  # llama.cpp's default f_norm_rms_eps when a llama file lacks the key
DEFAULT_ROPE_THETA = 10000.0  # llama.cpp's default rope_freq_base


class _Meta:
    """Typed reads of `{arch}.*` keys; every problem is an ArtifactError naming the file, the key and the value."""

    def __init__(self, metadata: Mapping[str, Any], arch: str, source: str) -> None:
        self.metadata, self.arch, self.source = metadata, arch, source

    def _raw(self, template: str) -> tuple[str, Any]:
        key = arch_key(template, self.arch)
        return key, self.metadata.get(key)

    def require(self, template: str) -> int:
        key, value = self._raw(template)
        if value is None:
            raise ArtifactError(f"{self.source}: metadata key {key!r} is missing")
        return self._count(key, value, 1)

    def count(self, template: str, default: int, minimum: int = 1) -> int:
        key, value = self._raw(template)
        return default if value is None else self._count(key, value, minimum)

    def number(self, template: str, default: float, above: float | None = None, below: float | None = None,
               at_least: float | None = None) -> float:
        """A finite float key, optionally bounded (above < value < below, value >= at_least): NaN, infinities and
        out-of-range values are refused here, before any of them reaches a RoPE table or a kernel's C source."""
        key, value = self._raw(template)
        if value is None:
            return default
        bounds = [f"> {above:g}" if above is not None else "", f">= {at_least:g}" if at_least is not None else "",
                  f"< {below:g}" if below is not None else ""]
        expected = "a finite number" + "".join(f" {'and ' if i else ''}{b}" for i, b in enumerate(filter(None, bounds)))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArtifactError(f"{self.source}: metadata key {key!r} is {shown(value)}, expected {expected}")
        v = float(value)
        if (not math.isfinite(v) or (above is not None and v <= above) or (below is not None and v >= below)
                or (at_least is not None and v < at_least)):
            raise ArtifactError(f"{self.source}: metadata key {key!r} is {shown(value)}, expected {expected}")
        return v

    def text(self, template: str, default: str) -> str:
        key, value = self._raw(template)
        return default if value is None else str(value)

    def _count(self, key: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ArtifactError(f"{self.source}: metadata key {key!r} is {shown(value)}, expected {expected}")
        return value


def config_from_metadata(metadata: Mapping[str, Any], source: str, embedding_rows: int | None = None,
                         max_context: int | None = None) -> LlamaConfig:
    """The decoder config stated by `metadata` (GGUF key -> value); `source` names the file in errors.

    vocab_size: `{arch}.vocab_size`, else the tokenizer's token count, else `embedding_rows` (token_embd.weight).
    max_context: the KV cache to allocate, at most the trained `{arch}.context_length`; None: the trained one.
    Reads any architecture's keys (llama, qwen2, qwen3, gemma3, phi3 ...); which ones run is the caller's choice.
    """
    arch = metadata.get(Key.ARCHITECTURE)
    if not arch:
        raise ArtifactError(f"{source}: metadata key {Key.ARCHITECTURE!r} is missing")
    arch = str(arch)
    m = _Meta(metadata, arch, source)
    n_heads, dim = m.require(Key.HEAD_COUNT), m.require(Key.EMBEDDING_LENGTH)
    vocab = m.count(Key.VOCAB_SIZE, 0) or None  # 0: not stated
    if vocab is None:
        tokens = metadata.get(Key.TOKENS)
        vocab = len(tokens) if tokens else embedding_rows
    if vocab is None:
        raise ArtifactError(f"{source}: no vocabulary size ({arch_key(Key.VOCAB_SIZE, arch)!r}, "
                            f"{Key.TOKENS!r} and token_embd.weight are all missing)")
    file_context = m.count(Key.CONTEXT_LENGTH, DEFAULT_CONTEXT_LENGTH)
    context = file_context if max_context is None else int(max_context)
    if context < 1:
        raise ArtifactError(f"context length must be at least 1, got {context}")
    family = FAMILY_DEFAULTS.get(arch, {})
    rope_theta = m.number(Key.ROPE_FREQ_BASE, DEFAULT_ROPE_THETA, above=0)
    options = dict(FAMILY_OPTIONS.get(arch, {}))
    if arch == "gemma3":
        options["embedding_scale"] = float(dim) ** 0.5  # llama.cpp gemma3.cpp: inp_scaled = sqrt(n_embd)
    n_kv_heads, head_dim = m.count(Key.HEAD_COUNT_KV, n_heads), m.count(Key.KEY_LENGTH, 0, minimum=0)
    rope_dim = m.count(Key.ROPE_DIMENSION_COUNT, 0, minimum=0)
    _check_heads(m, dim, n_heads, n_kv_heads, head_dim, rope_dim)
    return LlamaConfig(
        dim=dim,
        n_layers=m.require(Key.BLOCK_COUNT),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        hidden_dim=m.require(Key.FEED_FORWARD_LENGTH),
        vocab_size=int(vocab),
        # an epsilon is a small positive guard against dividing by zero; 1 or more would swamp the mean square
        norm_eps=m.number(Key.LAYERNORM_RMS_EPS, DEFAULT_NORM_EPS, above=0, below=1),
        rope_theta=rope_theta,
        max_context=min(context, file_context),
        head_dim=head_dim,  # 0: dim // n_heads
        architecture=arch,
        rope_dim=rope_dim,
        rope_theta_local=m.number(Key.ROPE_FREQ_BASE_SWA, family.get("rope_theta_local", 0.0), above=0),
        rope_scaling=m.text(Key.ROPE_SCALING_TYPE, "none"),
        rope_scaling_factor=m.number(Key.ROPE_SCALING_FACTOR, 1.0, above=0),
        rope_scaling_original_context=m.count(Key.ROPE_SCALING_ORIG_CTX_LEN, 0, minimum=0),
        # only families with a layer pattern use it: a window stated by another family's file is not applied
        sliding_window=m.count(Key.SLIDING_WINDOW, 0, minimum=0) if family.get("sliding_window_pattern") else 0,
        sliding_window_pattern=family.get("sliding_window_pattern", 0),
        attn_logit_softcapping=m.number(Key.ATTN_LOGIT_SOFTCAPPING, 0.0, at_least=0),
        final_logit_softcapping=m.number(Key.FINAL_LOGIT_SOFTCAPPING, 0.0, at_least=0),
        rope_attn_factor=m.number(Key.ROPE_SCALING_ATTN_FACTOR, 1.0, above=0),
        **options,
    )


def _check_heads(m: _Meta, dim: int, n_heads: int, n_kv_heads: int, head_dim: int, rope_dim: int) -> None:
    """The attention shape the keys state is one the decoder can compute (llama.cpp asserts the same in
    llama-model.cpp: n_head % n_head_kv == 0, n_rot <= n_embd_head_k, an even n_rot)."""
    def key(template: str) -> str:
        return arch_key(template, m.arch)

    if not head_dim and dim % n_heads:
        raise ArtifactError(f"{m.source}: metadata key {key(Key.EMBEDDING_LENGTH)!r} is {dim}, not a multiple of "
                            f"{key(Key.HEAD_COUNT)!r} ({n_heads}), and {key(Key.KEY_LENGTH)!r} is not set")
    if n_heads % n_kv_heads:
        raise ArtifactError(f"{m.source}: metadata key {key(Key.HEAD_COUNT)!r} is {n_heads}, not a multiple of "
                            f"{key(Key.HEAD_COUNT_KV)!r} ({n_kv_heads})")
    head = head_dim or dim // n_heads
    rope, rope_key = (rope_dim, key(Key.ROPE_DIMENSION_COUNT)) if rope_dim else (head, key(Key.KEY_LENGTH))
    if rope > head or rope % 2:
        raise ArtifactError(f"{m.source}: metadata key {rope_key!r} is {rope}, expected an even number of rotated "
                            f"dimensions at most the head dimension ({head})")


def config_from_model_file(mf: ModelFile, max_context: int | None = None) -> LlamaConfig:
    """config_from_metadata of an opened file (artifact.reader.open_gguf / open_model)."""
    embed = mf.tensors.get("token_embd.weight")
    return config_from_metadata(mf.metadata, mf.path.name, embed.shape[0] if embed is not None else None, max_context)


def config_from_file(mf: ModelFile, cls: Any, arch: str) -> Any:
    """A frozen config dataclass from `<arch>.<field>` metadata (missing keys keep their defaults): integers and
    integer tuples, as the diffusion checkpoints (U-Net, classifier, autoencoder) store their configurations."""
    values = {}
    for f in cls.__dataclass_fields__:
        v = mf.get(f"{arch}.{f}")
        if v is not None:
            values[f] = tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else int(v)
    try:
        return cls(**values)
    except TypeError as e:
        raise ArtifactError(f"{mf.path.name}: bad {arch} configuration ({e})") from e
