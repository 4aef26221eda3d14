"""Tiny random decoders of every supported family, written with gguf-py under llama.cpp's tensor names, and an
independent numpy forward pass for each.

The reference implements llama.cpp's graph for each family directly from its tensors (llama.cpp's
`src/models/{llama,qwen2,qwen3,gemma3,phi3}.cpp`), sharing no code with `models/` or `runtime/`. Families differ in:

| family | RoPE pairs | extra tensors | FFN | other |
|---|---|---|---|---|
| llama | interleaved (x[2i], x[2i+1]) | `rope_freqs` (Llama 3.x) | SiLU(gate) * up | |
| qwen2 | halves (NEOX) | Q/K/V biases | SiLU(gate) * up | |
| qwen3 | halves | per-head RMSNorm on Q and K | SiLU(gate) * up | |
| gemma3 | halves | Q/K norms, post-attention and post-FFN norms | GELU-tanh(gate) * up | see below |
| phi3 | halves | fused `attn_qkv`, fused gate+up in `ffn_up` | SiLU(first half) * second half | |

gemma3 also scales the embeddings by sqrt(dim) and slides a window on 5 of every 6 layers, with RoPE base 10000 there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from tiny_llama import add_weights

FAMILIES = ("llama", "llama3", "qwen2", "qwen3", "gemma3", "phi3")
VOCAB, CONTEXT = 96, 64
# byte-level symbols for '!'.., one merged pair (llama.cpp refuses a BPE vocabulary without merges), two specials
TOKENS = [chr(0x21 + i) for i in range(VOCAB - 3)] + ['!"', "<|im_start|>", "<|im_end|>"]
GEMMA3_SWA_BASE = 10000.0  # llama.cpp: hparams.rope_freq_base_train_swa for gemma3 (not stored in the file)
GEMMA3_SWA_PATTERN = 6  # llama.cpp: set_swa_pattern(6): layers 5, 11, 17, ... attend globally


@dataclass(frozen=True)
class Shape:
    """Hyper-parameters of one tiny family model; head_dim may differ from dim / n_heads (qwen3, gemma3)."""

    family: str
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 16
    hidden: int = 128
    eps: float = 1e-5
    theta: float = 10000.0
    sliding_window: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return "llama" if self.family == "llama3" else self.family


def shape_for(family: str) -> Shape:
    if family == "qwen3":
        return Shape(family, head_dim=32, eps=1e-6, theta=1e6)  # head_dim * heads != dim, as in Qwen3
    if family == "gemma3":
        # 7 layers: 0-4 local, 5 global, 6 local; a window of 5 so that a 12-token prompt exercises it
        return Shape(family, n_layers=7, n_heads=2, n_kv_heads=1, head_dim=32, eps=1e-6, theta=1e6, sliding_window=5)
    if family == "phi3":
        return Shape(family, n_kv_heads=4)
    return Shape(family, theta=500000.0 if family == "llama3" else 10000.0)


def random_weights(s: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return 1 + w(n, scale=0.1)

    q_dim, kv_dim = s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim
    ws = {"token_embd.weight": w(VOCAB, s.dim, scale=0.5), "output_norm.weight": norm(s.dim)}
    if s.family in ("qwen2", "phi3"):
        ws["output.weight"] = w(VOCAB, s.dim, scale=0.2)  # an untied head, as these families ship
    if s.family == "llama3":
        ws["rope_freqs.weight"] = (1 + rng.uniform(0, 7, s.head_dim // 2)).astype(np.float32)
    for i in range(s.n_layers):
        p = f"blk.{i}."
        ws |= {p + "attn_norm.weight": norm(s.dim), p + "ffn_norm.weight": norm(s.dim),
               p + "attn_output.weight": w(s.dim, q_dim), p + "ffn_down.weight": w(s.dim, s.hidden)}
        if s.family == "phi3":
            ws[p + "attn_qkv.weight"] = w(q_dim + 2 * kv_dim, s.dim)
            ws[p + "ffn_up.weight"] = w(2 * s.hidden, s.dim)
            continue
        ws |= {p + "attn_q.weight": w(q_dim, s.dim), p + "attn_k.weight": w(kv_dim, s.dim),
               p + "attn_v.weight": w(kv_dim, s.dim), p + "ffn_gate.weight": w(s.hidden, s.dim),
               p + "ffn_up.weight": w(s.hidden, s.dim)}
        if s.family == "qwen2":
            ws |= {p + "attn_q.bias": w(q_dim, scale=0.3), p + "attn_k.bias": w(kv_dim, scale=0.3),
                   p + "attn_v.bias": w(kv_dim, scale=0.3)}
        if s.family in ("qwen3", "gemma3"):
            ws |= {p + "attn_q_norm.weight": norm(s.head_dim), p + "attn_k_norm.weight": norm(s.head_dim)}
        if s.family == "gemma3":
            ws |= {p + "post_attention_norm.weight": norm(s.dim), p + "post_ffw_norm.weight": norm(s.dim)}
    return ws


def write_gguf(path: Path, s: Shape, weights: dict[str, np.ndarray], qtype: Q = Q.F32,
               overrides: dict[str, Q] | None = None) -> dict[str, np.ndarray]:
    """Write the model (matrices in `qtype` unless named in `overrides`, vectors F32); return the weights as
    stored (dequantized)."""
    w = gguf.GGUFWriter(str(path), s.arch)
    w.add_block_count(s.n_layers)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(s.dim)
    w.add_feed_forward_length(s.hidden)
    w.add_head_count(s.n_heads)
    w.add_head_count_kv(s.n_kv_heads)
    w.add_key_length(s.head_dim)
    w.add_value_length(s.head_dim)
    w.add_layer_norm_rms_eps(s.eps)
    w.add_rope_freq_base(s.theta)
    w.add_rope_dimension_count(s.head_dim)
    if s.sliding_window:
        w.add_sliding_window(s.sliding_window)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(TOKENS)
    w.add_token_types([1] * (VOCAB - 2) + [3, 3])
    w.add_token_merges(['! "'])
    w.add_eos_token_id(VOCAB - 1)
    w.add_bos_token_id(VOCAB - 2)
    stored = add_weights(w, weights, qtype, overrides)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def _rope(x: np.ndarray, positions: np.ndarray, theta: float, interleaved: bool,
          freq_factors: np.ndarray | None = None) -> np.ndarray:
    """Rotate pairs by position * theta^(-2i/d) / factor_i; pairs are (x[2i], x[2i+1]) in llama.cpp's normal mode and
    (x[i], x[i + d/2]) in its NEOX mode. x: (T, H, D)."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    if freq_factors is not None:
        inv = inv / freq_factors
    ang = positions[:, None] * inv[None, :]  # (T, D/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if interleaved:
        x0, x1 = x[..., 0::2], x[..., 1::2]
    else:
        x0, x1 = x[..., : d // 2], x[..., d // 2 :]
    r0, r1 = x0 * cos - x1 * sin, x0 * sin + x1 * cos
    out = np.empty_like(x)
    if interleaved:
        out[..., 0::2], out[..., 1::2] = r0, r1
    else:
        out[..., : d // 2], out[..., d // 2 :] = r0, r1
    return out


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def is_local_layer(s: Shape, layer: int) -> bool:
    return s.family == "gemma3" and (layer + 1) % GEMMA3_SWA_PATTERN != 0


def reference_logits(s: Shape, w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Causal forward over the whole sequence in float64: (T, vocab)."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    T, hd = len(ids), s.head_dim
    q_dim, kv_dim = s.n_heads * hd, s.n_kv_heads * hd
    x = w["token_embd.weight"][ids]
    if s.family == "gemma3":
        x = x * np.sqrt(s.dim)
    pos = np.arange(T, dtype=np.float64)
    group = s.n_heads // s.n_kv_heads
    causal = np.triu(np.full((T, T), -np.inf), 1)
    interleaved = s.arch == "llama"
    freq_factors = w.get("rope_freqs.weight")
    for i in range(s.n_layers):
        p = f"blk.{i}."
        h = _rms_norm(x, w[p + "attn_norm.weight"], s.eps)
        if s.family == "phi3":
            qkv = h @ w[p + "attn_qkv.weight"].T
            q, k, v = qkv[:, :q_dim], qkv[:, q_dim : q_dim + kv_dim], qkv[:, q_dim + kv_dim :]
        else:
            q, k, v = (h @ w[p + f"attn_{n}.weight"].T + w.get(p + f"attn_{n}.bias", 0.0) for n in "qkv")
        q, k, v = q.reshape(T, s.n_heads, hd), k.reshape(T, s.n_kv_heads, hd), v.reshape(T, s.n_kv_heads, hd)
        if p + "attn_q_norm.weight" in w:
            q = _rms_norm(q, w[p + "attn_q_norm.weight"], s.eps)
            k = _rms_norm(k, w[p + "attn_k_norm.weight"], s.eps)
        local = is_local_layer(s, i)
        theta = GEMMA3_SWA_BASE if local else s.theta
        q, k = _rope(q, pos, theta, interleaved, freq_factors), _rope(k, pos, theta, interleaved, freq_factors)
        mask = causal.copy()
        if local:
            mask[pos[:, None] - pos[None, :] >= s.sliding_window] = -np.inf
        out = np.empty((T, s.n_heads, hd))
        for head in range(s.n_heads):
            kv = head // group
            sc = q[:, head] @ k[:, kv].T / np.sqrt(hd) + mask
            sc = np.exp(sc - sc.max(-1, keepdims=True))
            out[:, head] = (sc / sc.sum(-1, keepdims=True)) @ v[:, kv]
        a = out.reshape(T, q_dim) @ w[p + "attn_output.weight"].T
        if s.family == "gemma3":
            a = _rms_norm(a, w[p + "post_attention_norm.weight"], s.eps)
        x = x + a
        h = _rms_norm(x, w[p + "ffn_norm.weight"], s.eps)
        if s.family == "phi3":
            gu = h @ w[p + "ffn_up.weight"].T
            g, u = gu[:, : s.hidden], gu[:, s.hidden :]
        else:
            g, u = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        act = _gelu_tanh(g) if s.family == "gemma3" else g / (1 + np.exp(-g))
        f = (act * u) @ w[p + "ffn_down.weight"].T
        if s.family == "gemma3":
            f = _rms_norm(f, w[p + "post_ffw_norm.weight"], s.eps)
        x = x + f
    head = w.get("output.weight", w["token_embd.weight"])
    return _rms_norm(x, w["output_norm.weight"], s.eps) @ head.T
