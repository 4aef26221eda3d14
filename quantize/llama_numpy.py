"""A small float32 numpy forward of every decoder family the runtime runs, for calibration activations and tests.

Offline tooling, not the runtime: it is written for clarity, not speed. It computes what `models/llama.py` computes
from the same config (`artifact.config`, one path from metadata): RoPE over interleaved pairs (llama, whose
converter permuted the Q/K rows) or halves (NEOX: qwen2, qwen3, gemma3, phi3), partial RoPE (`rope_dim`), RoPE
frequency factors, Q/K/V biases (qwen2), per-head Q/K RMSNorm (qwen3, gemma3), post-attention and post-FFN norms,
GELU-tanh (gemma3), the embedding scale, sliding-window layers with their own RoPE base (gemma3), fused
`attn_qkv` and gate+up `ffn_up` tensors (phi3) and final logit soft-capping.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgegen.models.config import LlamaConfig
from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.source import ModelSource
from edgegen.runtime.artifact.config import config_from_metadata
from edgegen.runtime.artifact.constants import DEFAULT_MAX_CONTEXT, TEXT_ARCHITECTURES, rope_factors_tensor
from edgegen.runtime.errors import ArtifactError

# The forward's hyperparameters are the runtime's config, read from the metadata by the same code (artifact.config).
LlamaHParams = LlamaConfig


def config_from_source(source: ModelSource) -> LlamaConfig:
    """The decoder config of `source` (artifact.config over its metadata); QuantizeError for a non-decoder."""
    if source.architecture not in TEXT_ARCHITECTURES:
        raise QuantizeError(f"the calibration forward runs the decoder families {', '.join(TEXT_ARCHITECTURES)}, "
                            f"not {source.architecture!r}")
    embed = source.tensors.get("token_embd.weight")
    try:
        return config_from_metadata({k: m.value for k, m in source.metadata.items()}, source.path.name,
                                    embed.shape[0] if embed is not None else None)
    except ArtifactError as e:
        raise QuantizeError(str(e)) from None


def rms_norm(x: np.ndarray, eps: float) -> np.ndarray:
    """x / rms(x) over the last axis, without the weight."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def rope_factors(tensors: dict[str, np.ndarray], hp: LlamaHParams) -> np.ndarray | None:
    """The per-pair frequency divisors the runtime applies (runtime/loader.py rope_freq_factors): Llama 3.x
    `rope_freqs.weight`; Phi-3's `rope_factors_long` when the context exceeds the original one, else `_short`
    (llama.cpp build_rope_factors). The context is the one the runtime allocates by default."""
    name = rope_factors_tensor(tensors, min(hp.max_context, DEFAULT_MAX_CONTEXT), hp.rope_scaling_original_context)
    return None if name is None else tensors[name].reshape(-1)


def rope(x: np.ndarray, theta: float, pairs: str = "interleaved", rope_dim: int | None = None,
         factors: np.ndarray | None = None, attn_factor: float = 1.0) -> np.ndarray:
    """Rotate the first `rope_dim` dims of x (T, H, D) by position: pairs (x[2i], x[2i+1]) ("interleaved", ggml
    mode 0) or (x[i], x[i + R/2]) ("halves", NEOX); `factors` divide each pair's frequency, `attn_factor` scales
    cos and sin (ggml_rope_ext)."""
    T, _, D = x.shape
    R = D if rope_dim is None else rope_dim
    freqs = theta ** (-np.arange(0, R, 2, dtype=np.float64) / R)  # (R/2,)
    if factors is not None:
        freqs = freqs / np.asarray(factors, dtype=np.float64)
    ang = np.arange(T, dtype=np.float64)[:, None] * freqs[None, :]  # (T, R/2)
    cos = (np.cos(ang) * attn_factor).astype(np.float32)[:, None, :]
    sin = (np.sin(ang) * attn_factor).astype(np.float32)[:, None, :]
    out = x.copy()
    if pairs == "interleaved":
        x0, x1 = x[..., 0:R:2], x[..., 1:R:2]
        out[..., 0:R:2] = x0 * cos - x1 * sin
        out[..., 1:R:2] = x0 * sin + x1 * cos
    else:
        x0, x1 = x[..., : R // 2], x[..., R // 2 : R]
        out[..., : R // 2] = x0 * cos - x1 * sin
        out[..., R // 2 : R] = x0 * sin + x1 * cos
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, hp: LlamaHParams, window: int = 0) -> np.ndarray:
    """Causal grouped-query attention of one sequence, Q and K already rotated; q (T, H, D), k/v (T, KV, D) ->
    (T, H*D). window > 0: query p sees key j only if p - j < window (llama.cpp LLAMA_SWA_TYPE_STANDARD)."""
    T = q.shape[0]
    group = hp.n_heads // hp.n_kv_heads
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # (T, H, D)
    scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hp.head_dim)  # (H, T, T)
    pos = np.arange(T)
    seen = pos[None, :] <= pos[:, None]
    if window:
        seen &= (pos[:, None] - pos[None, :]) < window
    scores = np.where(seen[None], scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", scores, v).reshape(T, hp.n_heads * hp.head_dim)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU with the tanh approximation (ggml_gelu; Gemma's gelu_pytorch_tanh)."""
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


def qkv_projection(tensors: dict[str, np.ndarray], p: str, a: np.ndarray, hp: LlamaHParams
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q, K and V of the normed input a (T, dim): from the fused `attn_qkv` (Phi-3: Q, K, V rows in that order) or
    three tensors, plus their biases when the file has all three (Qwen 2), as models/llama.py adds them."""
    nq, nkv = hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim
    if p + "attn_qkv.weight" in tensors:
        qkv = a @ tensors[p + "attn_qkv.weight"].T
        q, k, v = qkv[:, :nq], qkv[:, nq : nq + nkv], qkv[:, nq + nkv :]
    else:
        q, k, v = (a @ tensors[p + f"attn_{n}.weight"].T for n in "qkv")
    biases = [p + f"attn_{n}.bias" for n in "qkv"]
    if all(b in tensors for b in biases):
        q, k, v = (x + tensors[b] for x, b in zip((q, k, v), biases))
    return q, k, v


def gate_up(tensors: dict[str, np.ndarray], p: str, f: np.ndarray, hp: LlamaHParams) -> tuple[np.ndarray, np.ndarray]:
    """The FFN's gate and up projections of f (T, dim): two tensors, or Phi-3's `ffn_up` with gate rows first."""
    if p + "ffn_gate.weight" in tensors:
        return f @ tensors[p + "ffn_gate.weight"].T, f @ tensors[p + "ffn_up.weight"].T
    gu = f @ tensors[p + "ffn_up.weight"].T
    return gu[:, : hp.hidden_dim], gu[:, hp.hidden_dim :]


# Called per layer with the inputs every linear layer saw: {"attn_in", "attn_out", "ffn_in", "ffn_act"}.
LayerHook = Callable[[int, dict[str, np.ndarray]], None]


def forward(
    tensors: dict[str, np.ndarray], hp: LlamaHParams, tokens: list[int], hook: LayerHook | None = None,
    with_head: bool = True,
) -> np.ndarray | None:
    """Logits (T, vocab) of one sequence; `hook` sees each layer's linear-layer inputs (float, unquantized)."""
    x = tensors["token_embd.weight"][np.asarray(tokens)].astype(np.float32) * np.float32(hp.embedding_scale)
    T, hd, eps = x.shape[0], hp.head_dim, hp.norm_eps
    factors = rope_factors(tensors, hp)
    # Local layers get their own table only when their base differs (models/llama.py); that table has no factors.
    local_own_table = hp.rope_theta_local != hp.rope_theta
    for i in range(hp.n_layers):
        p = f"blk.{i}."
        local = hp.is_local_layer(i)
        a = rms_norm(x, eps) * tensors[p + "attn_norm.weight"]
        q, k, v = qkv_projection(tensors, p, a, hp)
        q, k, v = q.reshape(T, hp.n_heads, hd), k.reshape(T, hp.n_kv_heads, hd), v.reshape(T, hp.n_kv_heads, hd)
        if hp.qk_norm:
            q = rms_norm(q, eps) * tensors[p + "attn_q_norm.weight"]
            k = rms_norm(k, eps) * tensors[p + "attn_k_norm.weight"]
        if local and local_own_table:
            q, k = (rope(t, hp.rope_theta_local, hp.rope_pairs, hp.rope_dim) for t in (q, k))
        else:
            q, k = (rope(t, hp.rope_theta, hp.rope_pairs, hp.rope_dim, factors, hp.rope_attn_factor) for t in (q, k))
        o_in = attention(q, k, v, hp, hp.sliding_window if local else 0)  # (T, H*D)
        attn = o_in @ tensors[p + "attn_output.weight"].T
        if hp.post_norms:
            attn = rms_norm(attn, eps) * tensors[p + "post_attention_norm.weight"]
        x = x + attn
        f = rms_norm(x, eps) * tensors[p + "ffn_norm.weight"]
        g, u = gate_up(tensors, p, f, hp)
        act = (gelu_tanh(g) if hp.ffn_activation == "gelu_tanh" else silu(g)) * u  # (T, hidden)
        down = act @ tensors[p + "ffn_down.weight"].T
        if hp.post_norms:
            down = rms_norm(down, eps) * tensors[p + "post_ffw_norm.weight"]
        x = x + down
        if hook is not None:
            hook(i, {"attn_in": a, "attn_out": o_in, "ffn_in": f, "ffn_act": act})
    if not with_head:
        return None
    head = tensors.get("output.weight", tensors["token_embd.weight"])
    logits = rms_norm(x, eps) * tensors["output_norm.weight"] @ head.T
    if hp.final_logit_softcapping:  # Gemma 2: cap * tanh(logits / cap), as models/llama.py
        cap = hp.final_logit_softcapping
        logits = np.tanh(logits / cap) * cap
    return logits
