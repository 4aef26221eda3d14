"""A GGUF file's `{arch}.*` metadata -> models.config.LlamaConfig: the one path, for the runtime and the quantizer.

Key names are gguf-py's (artifact.constants.Key). Families differ in what their files state; what llama.cpp
assumes instead of reading (llama-model.cpp, load_hparams) is in FAMILY_DEFAULTS.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edgegen.models.config import LlamaConfig
from edgegen.runtime.artifact.constants import DEFAULT_CONTEXT_LENGTH, Key, arch_key
from edgegen.runtime.errors import ArtifactError

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

    def number(self, template: str, default: float) -> float:
        key, value = self._raw(template)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArtifactError(f"{self.source}: metadata key {key!r} is {value!r}, expected a number")
        return float(value)

    def text(self, template: str, default: str) -> str:
        key, value = self._raw(template)
        return default if value is None else str(value)

    def _count(self, key: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ArtifactError(f"{self.source}: metadata key {key!r} is {value!r}, expected {expected}")
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
    vocab = metadata.get(arch_key(Key.VOCAB_SIZE, arch))
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
    rope_theta = m.number(Key.ROPE_FREQ_BASE, DEFAULT_ROPE_THETA)
    options = dict(FAMILY_OPTIONS.get(arch, {}))
    if arch == "gemma3":
        options["embedding_scale"] = float(dim) ** 0.5  # llama.cpp gemma3.cpp: inp_scaled = sqrt(n_embd)
    return LlamaConfig(
        dim=dim,
        n_layers=m.require(Key.BLOCK_COUNT),
        n_heads=n_heads,
        n_kv_heads=m.count(Key.HEAD_COUNT_KV, n_heads),
        hidden_dim=m.require(Key.FEED_FORWARD_LENGTH),
        vocab_size=int(vocab),
        norm_eps=m.number(Key.LAYERNORM_RMS_EPS, DEFAULT_NORM_EPS),
        rope_theta=rope_theta,
        max_context=min(context, file_context),
        head_dim=m.count(Key.KEY_LENGTH, 0, minimum=0),  # 0: dim // n_heads
        architecture=arch,
        rope_dim=m.count(Key.ROPE_DIMENSION_COUNT, 0, minimum=0),
        rope_theta_local=m.number(Key.ROPE_FREQ_BASE_SWA, family.get("rope_theta_local", 0.0)),
        rope_scaling=m.text(Key.ROPE_SCALING_TYPE, "none"),
        rope_scaling_factor=m.number(Key.ROPE_SCALING_FACTOR, 1.0),
        rope_scaling_original_context=m.count(Key.ROPE_SCALING_ORIG_CTX_LEN, 0, minimum=0),
        # only families with a layer pattern use it: a window stated by another family's file is not applied
        sliding_window=m.count(Key.SLIDING_WINDOW, 0, minimum=0) if family.get("sliding_window_pattern") else 0,
        sliding_window_pattern=family.get("sliding_window_pattern", 0),
        attn_logit_softcapping=m.number(Key.ATTN_LOGIT_SOFTCAPPING, 0.0),
        final_logit_softcapping=m.number(Key.FINAL_LOGIT_SOFTCAPPING, 0.0),
        rope_attn_factor=m.number(Key.ROPE_SCALING_ATTN_FACTOR, 1.0),
        **options,
    )


def config_from_model_file(mf: ModelFile, max_context: int | None = None) -> LlamaConfig:
    """config_from_metadata of an opened file (artifact.reader.open_gguf / open_model)."""
    embed = mf.tensors.get("token_embd.weight")
    return config_from_metadata(mf.metadata, mf.path.name, embed.shape[0] if embed is not None else None, max_context)
