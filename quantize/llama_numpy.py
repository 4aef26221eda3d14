"""A small float32 numpy forward of a GGUF-layout Llama, for calibration activations and as a test reference.

Offline tooling, not the runtime: it is written for clarity, not speed. Weights are in GGUF layout, so the Q/K rows
are in llama.cpp's order and RoPE rotates adjacent pairs (x[2i], x[2i+1]) (ggml_rope, mode 0).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgegen.models.config import LlamaConfig
from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.source import ModelSource
from edgegen.runtime.artifact.config import config_from_metadata
from edgegen.runtime.errors import ArtifactError

# The forward's hyperparameters are the runtime's config, read from the metadata by the same code (artifact.config).
LlamaHParams = LlamaConfig


def config_from_source(source: ModelSource) -> LlamaConfig:
    """The decoder config of `source` (artifact.config over its metadata); QuantizeError if it is not a llama."""
    if source.architecture != "llama":
        raise QuantizeError(f"calibration supports the llama architecture, not {source.architecture!r}")
    embed = source.tensors.get("token_embd.weight")
    try:
        return config_from_metadata({k: m.value for k, m in source.metadata.items()}, source.path.name,
                                    embed.shape[0] if embed is not None else None)
    except ArtifactError as e:
        raise QuantizeError(str(e)) from None


def rms_norm(x: np.ndarray, eps: float) -> np.ndarray:
    """x / rms(x) over the last axis, without the weight."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def rope(x: np.ndarray, theta: float) -> np.ndarray:
    """Rotate adjacent pairs of x (T, H, D) by position (llama.cpp's mode-0 RoPE on GGUF-ordered Q/K rows)."""
    T, _, D = x.shape
    freqs = theta ** (-np.arange(0, D, 2, dtype=np.float64) / D)  # (D/2,)
    ang = np.arange(T, dtype=np.float64)[:, None] * freqs[None, :]  # (T, D/2)
    cos, sin = np.cos(ang).astype(np.float32)[:, None, :], np.sin(ang).astype(np.float32)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, hp: LlamaHParams) -> np.ndarray:
    """Causal grouped-query attention of one sequence; q (T, H*D), k/v (T, KV*D) -> (T, H*D)."""
    T = q.shape[0]
    q = rope(q.reshape(T, hp.n_heads, hp.head_dim), hp.rope_theta)
    k = rope(k.reshape(T, hp.n_kv_heads, hp.head_dim), hp.rope_theta)
    v = v.reshape(T, hp.n_kv_heads, hp.head_dim)
    group = hp.n_heads // hp.n_kv_heads
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # (T, H, D)
    scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hp.head_dim)  # (H, T, T)
    scores = np.where(np.tril(np.ones((T, T), dtype=bool))[None], scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", scores, v).reshape(T, hp.n_heads * hp.head_dim)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


# Called per layer with the inputs every linear layer saw: {"attn_in", "attn_out", "ffn_in", "ffn_act"}.
LayerHook = Callable[[int, dict[str, np.ndarray]], None]


def forward(
    tensors: dict[str, np.ndarray], hp: LlamaHParams, tokens: list[int], hook: LayerHook | None = None,
    with_head: bool = True,
) -> np.ndarray | None:
    """Logits (T, vocab) of one sequence; `hook` sees each layer's linear-layer inputs (float, unquantized)."""
    x = tensors["token_embd.weight"][np.asarray(tokens)].astype(np.float32)  # (T, dim)
    for i in range(hp.n_layers):
        p = f"blk.{i}."
        a = rms_norm(x, hp.norm_eps) * tensors[p + "attn_norm.weight"]
        o_in = attention(a @ tensors[p + "attn_q.weight"].T, a @ tensors[p + "attn_k.weight"].T,
                         a @ tensors[p + "attn_v.weight"].T, hp)
        x = x + o_in @ tensors[p + "attn_output.weight"].T
        f = rms_norm(x, hp.norm_eps) * tensors[p + "ffn_norm.weight"]
        act = silu(f @ tensors[p + "ffn_gate.weight"].T) * (f @ tensors[p + "ffn_up.weight"].T)  # (T, hidden)
        x = x + act @ tensors[p + "ffn_down.weight"].T
        if hook is not None:
            hook(i, {"attn_in": a, "attn_out": o_in, "ffn_in": f, "ffn_act": act})
    if not with_head:
        return None
    head = tensors.get("output.weight", tensors["token_embd.weight"])
    return rms_norm(x, hp.norm_eps) * tensors["output_norm.weight"] @ head.T
