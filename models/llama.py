"""The Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU), written once in tinygrad.

The model does no file I/O and knows nothing of quantization: it asks a `WeightSource` for each linear layer and
norm vector by its GGUF name, so the same code runs float, int8 or int4 weights. It takes token *embeddings*
(looked up by the caller) and returns logits.

RoPE follows GGUF's convention: llama.cpp stores the Q and K projection rows permuted so that rotation pairs are
adjacent (interleaved, "normal" RoPE mode), so we rotate (x[2i], x[2i+1]) pairs rather than the two halves.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from tinygrad import Tensor, UOp, dtypes

Linear = Callable[[Tensor], Tensor]


class WeightSource(Protocol):
    """Where a model gets its parameters: `linear` returns a callable layer (x @ W.T), `vector` a 1-D tensor."""

    def linear(self, name: str, in_features: int, out_features: int) -> Linear: ...

    def linear_group(self, names: list[str], in_features: int, out_features: list[int]) -> Linear:
        """One layer computing several projections of the same input, outputs concatenated in order."""
        ...

    def vector(self, name: str, size: int) -> Tensor: ...


@dataclass(frozen=True)
class LlamaConfig:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    vocab_size: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_context: int = 1024
    head_dim: int = 0  # 0: dim // n_heads

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return (x * (x.square().mean(axis=-1, keepdim=True) + eps).rsqrt()) * weight


def rope_table(head_dim: int, max_context: int, theta: float, device: str | None = None) -> tuple[Tensor, Tensor]:
    """cos and sin of every (position, pair) angle: two (max_context, head_dim // 2) tensors."""
    # In numpy, then uploaded: tinygrad 0.14's Tensor.arange takes no device, and a Python scalar on the left of an
    # operator (theta ** t) becomes a tensor on the process-wide default device, which is not this model's when
    # two models run on two backends (and opening that default cost ~100 MB of RSS here).
    freqs = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    angles = np.arange(max_context, dtype=np.float32)[:, None] * freqs[None, :].astype(np.float32)
    return (Tensor(np.cos(angles).astype(np.float32), device=device).realize(),
            Tensor(np.sin(angles).astype(np.float32), device=device).realize())


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs of the last axis. x: (B, T, H, D); cos, sin: (T, D/2)."""
    B, T, H, D = x.shape
    pairs = x.reshape(B, T, H, D // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]  # (B, T, H, D/2)
    c, s = cos.reshape(1, T, 1, D // 2), sin.reshape(1, T, 1, D // 2)
    return Tensor.stack(x0 * c - x1 * s, x0 * s + x1 * c, dim=-1).reshape(B, T, H, D)


class Block:
    def __init__(self, cfg: LlamaConfig, layer: int, weights: WeightSource) -> None:
        p, hd = f"blk.{layer}.", cfg.head_dim
        self.cfg = cfg
        self.attn_norm = weights.vector(p + "attn_norm.weight", cfg.dim)
        self.ffn_norm = weights.vector(p + "ffn_norm.weight", cfg.dim)
        self.qkv_sizes = [cfg.n_heads * hd, cfg.n_kv_heads * hd, cfg.n_kv_heads * hd]
        self.attn_qkv = weights.linear_group([p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"],
                                             cfg.dim, self.qkv_sizes)
        self.attn_output = weights.linear(p + "attn_output.weight", cfg.n_heads * hd, cfg.dim)
        self.ffn_gate_up = weights.linear_group([p + "ffn_gate.weight", p + "ffn_up.weight"], cfg.dim,
                                                [cfg.hidden_dim, cfg.hidden_dim])
        self.ffn_down = weights.linear(p + "ffn_down.weight", cfg.hidden_dim, cfg.dim)
        self.cache_kv: Tensor | None = None

    def allocate_cache(self, batch: int, device: str) -> None:
        cfg = self.cfg
        shape = (2, batch, cfg.n_kv_heads, cfg.max_context, cfg.head_dim)
        self.cache_kv = Tensor.zeros(*shape, dtype=dtypes.float32, device=device).contiguous().realize()

    def attention(self, x: Tensor, start_pos: int | UOp, cos: Tensor, sin: Tensor) -> Tensor:
        cfg, hd = self.cfg, self.cfg.head_dim
        B, T, _ = x.shape
        # contiguous: left lazy, the projection was recomputed inside the RoPE + cache-store kernel for every
        # element it wrote (measured: 7 ms instead of 0.05 ms per layer).
        qkv = self.attn_qkv(x).contiguous()  # (B, T, q + k + v)
        nq, nk, _ = self.qkv_sizes
        q = qkv[..., :nq].reshape(B, T, cfg.n_heads, hd)
        k = qkv[..., nq : nq + nk].reshape(B, T, cfg.n_kv_heads, hd)
        v = qkv[..., nq + nk :].reshape(B, T, cfg.n_kv_heads, hd)
        # q contiguous: left lazy, its rotation was recomputed inside the score kernel for every cached key
        # (2.65 ms per layer at position 180, measured).
        q, k = apply_rope(q, cos, sin).contiguous(), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd)

        # Write this step's keys and values into the cache without realizing inside the layer: a realize here made
        # every layer recompute the earlier ones (docs/TINYGRAD.md). The store is ordered before the reads by
        # `after`, the idiom tinygrad 0.14's own model uses.
        assert self.cache_kv is not None, "allocate_cache() first"
        store = self.cache_kv[:, :, :, start_pos : start_pos + T, :].uop.store(Tensor.stack(k, v).uop)
        cache = Tensor(self.cache_kv.uop.after(store))
        keys = cache[0, :, :, 0 : start_pos + T, :]  # (B, KvH, S, hd)
        values = cache[1, :, :, 0 : start_pos + T, :]

        mask = None
        if T > 1:  # causal, aligned to the end: query t sees keys 0 .. start_pos + t
            mask = Tensor.full((1, 1, T, start_pos + T), float("-inf"), dtype=x.dtype, device=x.device)
            mask = mask.triu(start_pos + 1)
        out = q.scaled_dot_product_attention(keys, values, attn_mask=mask, enable_gqa=True)  # (B, H, T, hd)
        return self.attn_output(out.transpose(1, 2).reshape(B, T, cfg.n_heads * hd))

    def feed_forward(self, x: Tensor) -> Tensor:
        # One matvec over gate and up rows, made contiguous: left lazy, the down projection recomputed both for
        # each of its output rows; and two separate reductions fused into one kernel generated poor code (3 ms vs
        # 0.2 ms each, measured).
        gate_up = self.ffn_gate_up(x).contiguous()
        hidden = self.cfg.hidden_dim
        return self.ffn_down((gate_up[..., :hidden].silu() * gate_up[..., hidden:]).contiguous())

    def __call__(self, x: Tensor, start_pos: int | UOp, cos: Tensor, sin: Tensor) -> Tensor:
        h = x + self.attention(rms_norm(x, self.attn_norm, self.cfg.norm_eps), start_pos, cos, sin)
        return (h + self.feed_forward(rms_norm(h, self.ffn_norm, self.cfg.norm_eps))).contiguous()


class Llama:
    """Decoder stack. `__call__(embeddings (B, T, dim), start_pos)` returns logits (B, T or 1, vocab)."""

    def __init__(self, cfg: LlamaConfig, weights: WeightSource, has_output: bool = True) -> None:
        self.cfg = cfg
        self.blocks = [Block(cfg, i, weights) for i in range(cfg.n_layers)]
        self.output_norm = weights.vector("output_norm.weight", cfg.dim)
        # Tied embeddings: small models reuse the token embedding as the output head when the file has no output.
        head = "output.weight" if has_output else "token_embd.weight"
        self.output = weights.linear(head, cfg.dim, cfg.vocab_size)
        # On the weights' device: a tensor made without `device=` lands on tinygrad's process-wide default, which
        # is not this model's when two models run on different backends in one process.
        self.cos, self.sin = rope_table(cfg.head_dim, cfg.max_context, cfg.rope_theta,
                                        self.output_norm.device)

    def allocate_cache(self, batch: int = 1, device: str | None = None) -> None:
        for block in self.blocks:
            block.allocate_cache(batch, device or self.cos.device)

    def __call__(self, h: Tensor, start_pos: int | UOp, last_only: bool = True,
                 logits_at: int | UOp | None = None) -> Tensor:
        """Logits for the last position (or position `logits_at`, e.g. the last real token of a padded prompt),
        or for every position when last_only is False. h: (B, T, dim) token embeddings."""
        T = h.shape[1]
        cos, sin = self.cos[start_pos : start_pos + T], self.sin[start_pos : start_pos + T]
        for block in self.blocks:
            h = block(h, start_pos, cos, sin)
            if T > 1:
                # Batched steps schedule layer by layer: a weight the layer dequantizes into a temporary buffer is
                # then freed before the next layer, instead of the scheduler hoisting every layer's dequantization
                # to the front of the graph (measured: a 425 MB arena for SmolLM2's 64-token prefill).
                h = h.realize()
        if logits_at is not None:
            h = h[:, logits_at : logits_at + 1, :]  # (B, 1, dim)
        elif last_only:
            h = h[:, -1:, :]
        return self.output(rms_norm(h, self.output_norm, self.cfg.norm_eps))
