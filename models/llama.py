"""The Llama-family decoder (RMSNorm, RoPE, grouped-query attention, gated FFN), written once in tinygrad.

The model does no file I/O and knows nothing of quantization: it asks a `WeightSource` for each linear layer and
norm vector by its GGUF name, so the same code runs float, int8 or int4 weights. It takes token *embeddings*
(looked up by the caller) and returns logits.

One decoder serves Llama 2/3, SmolLM, Qwen 2/3, Gemma 3 and Phi-3: each family is a set of options in
`models.config.LlamaConfig` named for what they do (`rope_pairs`, `qk_norm`, `post_norms`, `ffn_activation`,
`embedding_scale`, `sliding_window`), plus what the file's tensors show (Q/K/V biases, fused `attn_qkv` and gate+up
tensors, RoPE frequency factors). RoPE pairs: llama.cpp's llama converter permutes the Q/K rows so that rotation
pairs are adjacent (x[2i], x[2i+1]); the other families keep Hugging Face's order and rotate the halves
(x[i], x[i + d/2]), llama.cpp's NEOX mode.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from tinygrad import Tensor, UOp, dtypes

from edgegen.models.config import LlamaConfig


class Linear(Protocol):
    """A layer x @ W.T, with its fused forms where the kernels have them (the runtime's hand-written CPU kernels
    fold the norm or the gate into the quantization of the layer's input), else None and the model norms or gates
    first: normed(x, weight, eps) = layer(rms_norm(x, weight, eps)); gated(gate_up, activation) =
    layer(activation(gate) * up) of gate+up rows."""

    def __call__(self, x: Tensor) -> Tensor: ...

    @property
    def normed(self) -> Callable[[Tensor, Tensor, float], Tensor] | None: ...

    @property
    def gated(self) -> Callable[[Tensor, str], Tensor] | None: ...


class Unfused:
    """A Linear without fused forms: the model norms and gates before calling it."""

    @property
    def normed(self) -> None:
        return None

    @property
    def gated(self) -> None:
        return None


class ConcatLinear(Unfused):
    """Several layers over the same input, outputs side by side (tensors of different types in one group)."""

    def __init__(self, layers: Sequence[Linear]) -> None:
        self.layers = list(layers)

    def __call__(self, x: Tensor) -> Tensor:
        return Tensor.cat(*[layer(x) for layer in self.layers], dim=-1)


Attention = Callable[[Tensor, Tensor, "int | UOp", int], Tensor]


class WeightSource(Protocol):
    """Where a model gets its parameters: `linear` returns a callable layer (x @ W.T), `vector` a 1-D tensor."""

    def linear(self, name: str, in_features: int, out_features: int) -> Linear: ...

    def linear_group(self, names: list[str], in_features: int, out_features: list[int]) -> Linear:
        """One layer computing several projections of the same input, outputs concatenated in order."""
        ...

    def vector(self, name: str, size: int) -> Tensor: ...

    def has(self, name: str) -> bool:
        """Whether the file has the tensor (optional ones: biases, fused layers, RoPE factors)."""
        ...

    # `attention(q (1, T, H, hd), cache (2, 1, KvH, C, hd), start_pos, window)` -> (1, T, H, hd): a fused attention
    # kernel for the device (the runtime's hand-written CPU kernel), or None: the block uses tinygrad's
    # scaled_dot_product_attention. With it the KV cache holds float16, as llama.cpp's does by default (half the
    # memory); tinygrad's attention keeps a float32 cache (runtime.artifact.constants.kv_element_bytes).
    attention: Attention | None


def _batched(t: int | UOp) -> bool:
    """More than one token, or a symbolic token count (one graph for every prompt length)."""
    return not isinstance(t, int) or t > 1


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return (x * (x.square().mean(axis=-1, keepdim=True) + eps).rsqrt()) * weight


def normed(layer: Linear, x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """layer(rms_norm(x, weight, eps)), through the layer's fused form where it has one."""
    fused = layer.normed
    return fused(x, weight, eps) if fused is not None else layer(rms_norm(x, weight, eps))


def rope_table(rope_dim: int, max_context: int, theta: float, device: str | None = None,
               freq_factors: np.ndarray | None = None, attn_factor: float = 1.0) -> tuple[Tensor, Tensor]:
    """cos and sin of every (position, pair) angle: two (max_context, rope_dim // 2) tensors.

    freq_factors (Llama 3.x `rope_freqs.weight`, Phi-3 `rope_factors_*`) divide each pair's frequency, as
    ggml_rope_ext does; attn_factor scales cos and sin (ggml's mscale)."""
    # In numpy, then uploaded: tinygrad 0.14's Tensor.arange takes no device, and a Python scalar on the left of an
    # operator (theta ** t) becomes a tensor on the process-wide default device, which is not this model's when
    # two models run on two backends (and opening that default device costs resident memory: docs/MEASUREMENTS.md).
    freqs = 1.0 / (np.float64(theta) ** (np.arange(0, rope_dim, 2, dtype=np.float64) / np.float64(rope_dim)))
    if freq_factors is not None:
        freqs = freqs / np.asarray(freq_factors, dtype=np.float64)
    angles = np.arange(max_context, dtype=np.float64)[:, None] * freqs[None, :]
    return (Tensor((np.cos(angles) * attn_factor).astype(np.float32), device=device).realize(),
            Tensor((np.sin(angles) * attn_factor).astype(np.float32), device=device).realize())


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, pairs: str = "interleaved") -> Tensor:
    """Rotate pairs of the first 2 * cos.shape[-1] dims of the last axis; the rest pass through (partial RoPE).
    x: (B, T, H, D); cos, sin: (T, R/2); pairs: "interleaved" (x[2i], x[2i+1]) or "halves" (x[i], x[i + R/2])."""
    B, T, H, D = x.shape
    R = 2 * cos.shape[-1]
    rot, rest = (x, None) if R == D else (x[..., :R], x[..., R:])
    c, s = cos.reshape(1, T, 1, R // 2), sin.reshape(1, T, 1, R // 2)
    if pairs == "interleaved":
        p = rot.reshape(B, T, H, R // 2, 2)
        x0, x1 = p[..., 0], p[..., 1]  # (B, T, H, R/2)
        out = Tensor.stack(x0 * c - x1 * s, x0 * s + x1 * c, dim=-1).reshape(B, T, H, R)
    else:
        x0, x1 = rot[..., : R // 2], rot[..., R // 2 :]
        out = Tensor.cat(x0 * c - x1 * s, x0 * s + x1 * c, dim=-1)
    return out if rest is None else Tensor.cat(out, rest, dim=-1)


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU with the tanh approximation (ggml_gelu; Gemma's gelu_pytorch_tanh)."""
    return 0.5 * x * (1.0 + (0.7978845608028654 * (x + 0.044715 * x * x * x)).tanh())


class Block:
    def __init__(self, cfg: LlamaConfig, layer: int, weights: WeightSource) -> None:
        p, hd = f"blk.{layer}.", cfg.head_dim
        self.cfg, self.local = cfg, cfg.is_local_layer(layer)
        self.attn_norm = weights.vector(p + "attn_norm.weight", cfg.dim)
        self.ffn_norm = weights.vector(p + "ffn_norm.weight", cfg.dim)
        self.qkv_sizes = [cfg.n_heads * hd, cfg.n_kv_heads * hd, cfg.n_kv_heads * hd]
        if weights.has(p + "attn_qkv.weight"):  # Phi-3: Q, K and V rows in one tensor, in that order
            self.attn_qkv = weights.linear(p + "attn_qkv.weight", cfg.dim, sum(self.qkv_sizes))
        else:
            self.attn_qkv = weights.linear_group([p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"],
                                                 cfg.dim, self.qkv_sizes)
        # Qwen 2: biases on Q, K and V, added to the one fused projection as one vector
        biases = [p + f"attn_{n}.bias" for n in "qkv"]
        self.qkv_bias = (Tensor.cat(*[weights.vector(n, size) for n, size in zip(biases, self.qkv_sizes)])
                         .realize() if all(weights.has(n) for n in biases) else None)
        self.q_norm = self.k_norm = None
        if cfg.qk_norm:
            self.q_norm = weights.vector(p + "attn_q_norm.weight", hd)
            self.k_norm = weights.vector(p + "attn_k_norm.weight", hd)
        self.attn_output = weights.linear(p + "attn_output.weight", cfg.n_heads * hd, cfg.dim)
        self.attend: Attention | None = weights.attention
        if weights.has(p + "ffn_gate.weight"):
            self.ffn_gate_up = weights.linear_group([p + "ffn_gate.weight", p + "ffn_up.weight"], cfg.dim,
                                                    [cfg.hidden_dim, cfg.hidden_dim])
        else:  # Phi-3: gate and up rows fused in ffn_up, gate first (llama.cpp LLM_FFN_SWIGLU on one tensor)
            self.ffn_gate_up = weights.linear(p + "ffn_up.weight", cfg.dim, 2 * cfg.hidden_dim)
        self.ffn_down = weights.linear(p + "ffn_down.weight", cfg.hidden_dim, cfg.dim)
        self.post_attn_norm = self.post_ffn_norm = None
        if cfg.post_norms:
            self.post_attn_norm = weights.vector(p + "post_attention_norm.weight", cfg.dim)
            self.post_ffn_norm = weights.vector(p + "post_ffw_norm.weight", cfg.dim)
        self.cache_kv: Tensor | None = None
        self.slot_caches: list[Tensor] = []

    def allocate_cache(self, batch: int, device: str) -> None:
        cfg = self.cfg
        shape = (2, batch, cfg.n_kv_heads, cfg.max_context, cfg.head_dim)
        dtype = dtypes.float32 if self.attend is None else dtypes.float16
        self.cache_kv = Tensor.zeros(*shape, dtype=dtype, device=device).contiguous().realize()

    def allocate_slots(self, n: int, device: str) -> None:
        """Caches for `n` sequences decoded together (decode_slots), each shaped as the batch-1 cache."""
        assert self.cache_kv is not None, "allocate_cache() first"
        self.slot_caches = [Tensor.zeros(*self.cache_kv.shape, dtype=self.cache_kv.dtype, device=device)
                            .contiguous().realize() for _ in range(n)]

    def _qkv(self, x: Tensor) -> Tensor:
        # contiguous: left lazy, the projection is recomputed inside the RoPE + cache-store kernel for every
        # element it writes (docs/MEASUREMENTS.md).
        qkv = normed(self.attn_qkv, x, self.attn_norm, self.cfg.norm_eps)
        if self.qkv_bias is not None:
            qkv = qkv + self.qkv_bias
        return qkv.contiguous()  # (B, T, q + k + v)

    def attention(self, x: Tensor, start_pos: int | UOp, rope: tuple[Tensor, Tensor],
                  positions: Tensor | None) -> Tensor:
        """Attention of the block input x (not yet normed), over the batch-1 cache."""
        assert self.cache_kv is not None, "allocate_cache() first"
        B, T, _ = x.shape
        out = self._attend(self._qkv(x), x.dtype, start_pos, rope, positions, self.cache_kv)
        return self.attn_output(out.reshape(B, T, self.cfg.n_heads * self.cfg.head_dim))

    def attention_slots(self, x: Tensor, starts: Sequence[int | UOp], ropes: Sequence[tuple[Tensor, Tensor]],
                        positions: Tensor | None) -> Tensor:
        """Attention of one token per sequence, x (N, 1, dim): sequence i at position starts[i] of slot_caches[i].
        The projections take the N rows in one matmul; each sequence attends over its own cache alone, so its rows
        are computed as they would be alone."""
        qkv, n = self._qkv(x), len(starts)
        outs = [self._attend(qkv[i : i + 1], x.dtype, starts[i], ropes[i], positions, self.slot_caches[i])
                for i in range(n)]
        return self.attn_output(Tensor.cat(*outs, dim=0).reshape(n, 1, self.cfg.n_heads * self.cfg.head_dim))

    def _attend(self, qkv: Tensor, dtype: Any, start_pos: int | UOp, rope: tuple[Tensor, Tensor],
                positions: Tensor | None, cache_kv: Tensor) -> Tensor:
        """Attention of projected rows qkv (B, T, q + k + v) over `cache_kv`, writing their keys and values at
        start_pos..; returns (B, T, H, hd) before the output projection."""
        cfg, hd = self.cfg, self.cfg.head_dim
        B, T, _ = qkv.shape
        nq, nk, _ = self.qkv_sizes
        q = qkv[..., :nq].reshape(B, T, cfg.n_heads, hd)
        k = qkv[..., nq : nq + nk].reshape(B, T, cfg.n_kv_heads, hd)
        v = qkv[..., nq + nk :].reshape(B, T, cfg.n_kv_heads, hd)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = rms_norm(q, self.q_norm, cfg.norm_eps), rms_norm(k, self.k_norm, cfg.norm_eps)
        # q contiguous: left lazy, its rotation is recomputed inside the score kernel for every cached key
        # (docs/MEASUREMENTS.md).
        cos, sin = rope
        q, k = apply_rope(q, cos, sin, cfg.rope_pairs).contiguous(), apply_rope(k, cos, sin, cfg.rope_pairs)
        q_rows = q  # (B, T, H, hd)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd)

        # Write this step's keys and values into the cache without realizing inside the layer: a realize here made
        # every layer recompute the earlier ones (docs/TINYGRAD.md). The store is ordered before the reads by
        # `after`, the idiom tinygrad 0.14's own model uses.
        store = cache_kv[:, :, :, start_pos : start_pos + T, :].uop.store(Tensor.stack(k, v).cast(cache_kv.dtype).uop)
        cache = Tensor(cache_kv.uop.after(store))
        if self.attend is not None and B == 1:
            return self.attend(q_rows, cache, start_pos, cfg.sliding_window if self.local else 0)  # (1, T, H, hd)
        keys = cache[0, :, :, 0 : start_pos + T, :].cast(dtype)  # (B, KvH, S, hd)
        values = cache[1, :, :, 0 : start_pos + T, :].cast(dtype)

        mask = None
        if _batched(T):  # causal, aligned to the end: query t sees keys 0 .. start_pos + t
            mask = Tensor.full((1, 1, T, start_pos + T), float("-inf"), dtype=dtype, device=qkv.device)
            mask = mask.triu(start_pos + 1)
        if self.local and positions is not None:
            # sliding window (llama.cpp LLAMA_SWA_TYPE_STANDARD): query p sees key j only if p - j < window
            q_pos = positions[start_pos : start_pos + T].reshape(1, 1, T, 1)
            k_pos = positions[0 : start_pos + T].reshape(1, 1, 1, -1)
            far = (q_pos - k_pos) >= cfg.sliding_window
            window = far.where(float("-inf"), 0.0).cast(dtype)
            mask = window if mask is None else mask + window
        out = q.scaled_dot_product_attention(keys, values, attn_mask=mask, enable_gqa=True)  # (B, H, T, hd)
        return out.transpose(1, 2)

    def feed_forward(self, x: Tensor) -> Tensor:
        """The gated FFN of x (not yet normed)."""
        # One matvec over gate and up rows, made contiguous: left lazy, the down projection recomputes both for
        # each of its output rows; and two separate reductions fused into one kernel generate poor code
        # (docs/MEASUREMENTS.md).
        gate_up = normed(self.ffn_gate_up, x, self.ffn_norm, self.cfg.norm_eps).contiguous()
        gated = self.ffn_down.gated
        if gated is not None:
            return gated(gate_up, self.cfg.ffn_activation)
        hidden = self.cfg.hidden_dim
        gate = gate_up[..., :hidden]
        act = gelu_tanh(gate) if self.cfg.ffn_activation == "gelu_tanh" else gate.silu()
        return self.ffn_down((act * gate_up[..., hidden:]).contiguous())

    def __call__(self, x: Tensor, start_pos: int | UOp, rope: tuple[Tensor, Tensor],
                 positions: Tensor | None = None) -> Tensor:
        return self._after_attention(x, self.attention(x, start_pos, rope, positions))

    def decode_slots(self, x: Tensor, starts: Sequence[int | UOp], ropes: Sequence[tuple[Tensor, Tensor]],
                     positions: Tensor | None = None) -> Tensor:
        """One token per sequence (x: (N, 1, dim)), sequence i in slot_caches[i] at starts[i]."""
        return self._after_attention(x, self.attention_slots(x, starts, ropes, positions))

    def _after_attention(self, x: Tensor, a: Tensor) -> Tensor:
        eps = self.cfg.norm_eps
        if self.post_attn_norm is not None:
            a = rms_norm(a, self.post_attn_norm, eps)
        h = x + a
        f = self.feed_forward(h)
        if self.post_ffn_norm is not None:
            f = rms_norm(f, self.post_ffn_norm, eps)
        return (h + f).contiguous()


class Llama:
    """Decoder stack. `__call__(embeddings (B, T, dim), start_pos)` returns logits (B, T or 1, vocab)."""

    def __init__(self, cfg: LlamaConfig, weights: WeightSource, has_output: bool = True,
                 rope_freq_factors: np.ndarray | None = None) -> None:
        self.cfg = cfg
        self.blocks = [Block(cfg, i, weights) for i in range(cfg.n_layers)]
        self.output_norm = weights.vector("output_norm.weight", cfg.dim)
        # Tied embeddings: small models reuse the token embedding as the output head when the file has no output.
        head = "output.weight" if has_output else "token_embd.weight"
        self.output = weights.linear(head, cfg.dim, cfg.vocab_size)
        # On the weights' device: a tensor made without `device=` lands on tinygrad's process-wide default, which
        # is not this model's when two models run on different backends in one process.
        device: str = self.output_norm.device  # type: ignore[assignment]  # a tuple only for sharded tensors
        self.rope = rope_table(cfg.rope_dim, cfg.max_context, cfg.rope_theta, device, rope_freq_factors,
                               cfg.rope_attn_factor)
        self.cos, self.sin = self.rope
        # Local (sliding-window) layers rotate with their own base (Gemma 3: 10000 vs 1e6 for the global layers)
        self.rope_local = self.rope
        if any(b.local for b in self.blocks) and cfg.rope_theta_local != cfg.rope_theta:
            self.rope_local = rope_table(cfg.rope_dim, cfg.max_context, cfg.rope_theta_local, device)
        self.positions = None
        if any(b.local for b in self.blocks):
            self.positions = Tensor(np.arange(cfg.max_context, dtype=np.float32), device=device).realize()

    def allocate_cache(self, batch: int = 1, device: str | None = None) -> None:
        for block in self.blocks:
            block.allocate_cache(batch, device or self.cos.device)  # type: ignore[arg-type]  # never sharded

    def allocate_slots(self, n: int) -> None:
        """KV caches for `n` sequences that decode_slots advances together (beside the batch-1 cache)."""
        for block in self.blocks:
            block.allocate_slots(n, self.cos.device)  # type: ignore[arg-type]  # never sharded

    def decode_slots(self, h: Tensor, starts: Sequence[int | UOp]) -> Tensor:
        """Logits (N, 1, vocab) after one token per sequence, h (N, 1, dim): sequence i continues the tokens in
        slot i's cache, at position starts[i]. Every row is computed as a decode step of that sequence alone (the
        layers' kernels are row-independent, attention is per sequence)."""
        if self.cfg.embedding_scale != 1.0:
            h = h * self.cfg.embedding_scale
        ropes = [(self.cos[s : s + 1], self.sin[s : s + 1]) for s in starts]
        local = ropes if self.rope_local is self.rope else \
            [(self.rope_local[0][s : s + 1], self.rope_local[1][s : s + 1]) for s in starts]
        for block in self.blocks:
            h = block.decode_slots(h, starts, local if block.local else ropes, self.positions)
        return self._logits(h)

    def __call__(self, h: Tensor, start_pos: int | UOp, last_only: bool = True,
                 logits_at: int | UOp | None = None) -> Tensor:
        """Logits for the last position (or position `logits_at`, e.g. the last real token of a padded prompt),
        or for every position when last_only is False. h: (B, T, dim) token embeddings."""
        T = h.shape[1]
        if self.cfg.embedding_scale != 1.0:
            h = h * self.cfg.embedding_scale
        rope = (self.cos[start_pos : start_pos + T], self.sin[start_pos : start_pos + T])
        local = rope if self.rope_local is self.rope else \
            (self.rope_local[0][start_pos : start_pos + T], self.rope_local[1][start_pos : start_pos + T])
        for block in self.blocks:
            h = block(h, start_pos, local if block.local else rope, self.positions)
            if _batched(T):
                # Batched steps schedule layer by layer: a weight the layer dequantizes into a temporary buffer is
                # then freed before the next layer, instead of the scheduler hoisting every layer's dequantization
                # to the front of the graph (and sizing the arena for all of them: docs/MEASUREMENTS.md).
                h = h.realize()
        if logits_at is not None:
            h = h[:, logits_at : logits_at + 1, :]  # (B, 1, dim)
        elif last_only:
            h = h[:, -1:, :]
        return self._logits(h)

    def _logits(self, h: Tensor) -> Tensor:
        logits = normed(self.output, h, self.output_norm, self.cfg.norm_eps)
        if self.cfg.final_logit_softcapping:  # Gemma 2: cap * tanh(logits / cap)
            cap = self.cfg.final_logit_softcapping
            logits = (logits / cap).tanh() * cap
        return logits
