"""The decoder's configuration, a frozen dataclass with no tinygrad import (the model-file package builds it)."""
from __future__ import annotations

from dataclasses import dataclass

ROPE_PAIRS = ("interleaved", "halves")
FFN_ACTIVATIONS = ("silu", "gelu_tanh")


@dataclass(frozen=True)
class LlamaConfig:
    """Hyperparameters of a Llama-family decoder; fields past `head_dim` are per-family options, neutral by default.

    Built from a GGUF file's `{arch}.*` keys by `edgegen.runtime.artifact.config` (the one path from metadata).
    """

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    vocab_size: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_context: int = 1024
    head_dim: int = 0  # 0: dim // n_heads ({arch}.attention.key_length may say otherwise: Qwen3, Gemma 3)
    architecture: str = "llama"  # the GGUF general.architecture the config was read from
    rope_dim: int = 0  # rotated dimensions per head ({arch}.rope.dimension_count); 0: head_dim
    rope_theta_local: float = 0.0  # RoPE base of the sliding-window layers (Gemma 3); 0: rope_theta
    rope_scaling: str = "none"  # {arch}.rope.scaling.type: none, linear, yarn, ...
    rope_scaling_factor: float = 1.0
    rope_scaling_original_context: int = 0  # {arch}.rope.scaling.original_context_length; 0: not stated
    sliding_window: int = 0  # tokens a local layer attends to; 0: every layer attends to the whole context
    sliding_window_pattern: int = 0  # every Nth layer attends globally (Gemma 3: 6); 0: no pattern
    attn_logit_softcapping: float = 0.0  # 0: none
    final_logit_softcapping: float = 0.0  # 0: none
    # How the family computes, from its architecture name (artifact.config.FAMILY_OPTIONS); llama's by default.
    rope_pairs: str = "interleaved"  # "interleaved": rotate (x[2i], x[2i+1]) (llama); "halves": (x[i], x[i + d/2])
    ffn_activation: str = "silu"  # the gate's activation: "silu" (SwiGLU) or "gelu_tanh" (GeGLU, Gemma)
    embedding_scale: float = 1.0  # token embeddings are multiplied by this (Gemma: sqrt(dim))
    qk_norm: bool = False  # RMSNorm over each head of Q and K before RoPE (Qwen3, Gemma 3)
    post_norms: bool = False  # RMSNorm of the attention and FFN outputs before the residual add (Gemma 2/3)
    rope_attn_factor: float = 1.0  # scales cos and sin ({arch}.rope.scaling.attn_factor, Phi-3 long RoPE)

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.rope_dim == 0:
            object.__setattr__(self, "rope_dim", self.head_dim)
        if self.rope_theta_local == 0.0:
            object.__setattr__(self, "rope_theta_local", self.rope_theta)
        if self.rope_pairs not in ROPE_PAIRS:
            raise ValueError(f"rope_pairs {self.rope_pairs!r}: expected one of {ROPE_PAIRS}")
        if self.ffn_activation not in FFN_ACTIVATIONS:
            raise ValueError(f"ffn_activation {self.ffn_activation!r}: expected one of {FFN_ACTIVATIONS}")

    def is_local_layer(self, layer: int) -> bool:
        """Whether `layer` attends only to the last `sliding_window` positions (llama.cpp's set_swa_pattern: with
        pattern N, layers N-1, 2N-1, ... are global)."""
        if not self.sliding_window or not self.sliding_window_pattern:
            return False
        return layer % self.sliding_window_pattern < self.sliding_window_pattern - 1
