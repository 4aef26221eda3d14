"""A tiny random Llama written as GGUF with gguf-py's writer, and an independent numpy reference forward pass.

The reference dequantizes with gguf-py's own `gguf.quants` and implements llama.cpp's conventions directly
(interleaved RoPE pairs, grouped-query attention), sharing no code with `models/` or `runtime/`.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

DIM, N_LAYERS, N_HEADS, N_KV_HEADS, HIDDEN, VOCAB, CONTEXT = 64, 2, 4, 2, 128, 96, 64
EPS, THETA = 1e-5, 10000.0
HEAD_DIM = DIM // N_HEADS
# byte-level BPE symbols for the bytes '!'..: printable ASCII, their own ByteLevel representation
TOKENS = [chr(0x21 + i) for i in range(VOCAB - 2)] + ["<|im_start|>", "<|im_end|>"]


def random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    ws = {"token_embd.weight": w(VOCAB, DIM, scale=0.5), "output_norm.weight": 1 + w(DIM, scale=0.1)}
    for i in range(N_LAYERS):
        p = f"blk.{i}."
        ws |= {
            p + "attn_norm.weight": 1 + w(DIM, scale=0.1),
            p + "ffn_norm.weight": 1 + w(DIM, scale=0.1),
            p + "attn_q.weight": w(N_HEADS * HEAD_DIM, DIM),
            p + "attn_k.weight": w(N_KV_HEADS * HEAD_DIM, DIM),
            p + "attn_v.weight": w(N_KV_HEADS * HEAD_DIM, DIM),
            p + "attn_output.weight": w(DIM, N_HEADS * HEAD_DIM),
            p + "ffn_gate.weight": w(HIDDEN, DIM),
            p + "ffn_up.weight": w(HIDDEN, DIM),
            p + "ffn_down.weight": w(DIM, HIDDEN),
        }
    return ws


def write_gguf(path: Path, weights: dict[str, np.ndarray], qtype: Q, architecture: str = "llama",
               extra_tensor: tuple[str, np.ndarray, Q] | None = None,
               overrides: dict[str, Q] | None = None) -> dict[str, np.ndarray]:
    """Write the model with every matrix in `qtype` (norms stay F32) except those named in `overrides`;
    return the dequantized weights as stored."""
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_block_count(N_LAYERS)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(DIM)
    w.add_feed_forward_length(HIDDEN)
    w.add_head_count(N_HEADS)
    w.add_head_count_kv(N_KV_HEADS)
    w.add_layer_norm_rms_eps(EPS)
    w.add_rope_freq_base(THETA)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(TOKENS)
    w.add_token_types([1] * (VOCAB - 2) + [3, 3])
    w.add_token_merges([])
    w.add_eos_token_id(VOCAB - 1)
    w.add_bos_token_id(VOCAB - 2)
    stored = add_weights(w, weights, qtype, overrides)
    if extra_tensor is not None:
        name, arr, t = extra_tensor
        packed = gguf.quants.quantize(arr, t)
        w.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def add_weights(w: gguf.GGUFWriter, weights: dict[str, np.ndarray], qtype: Q,
                overrides: dict[str, Q] | None = None) -> dict[str, np.ndarray]:
    """Add every matrix in `qtype` (unless named in `overrides`) and every vector as F32; return them as stored."""
    stored = {}
    for name, arr in weights.items():
        t = (overrides or {}).get(name, qtype)
        if arr.ndim == 1 or t == Q.F32:
            stored[name] = arr
            w.add_tensor(name, arr)
        elif t == Q.F16:
            stored[name] = arr.astype(np.float16).astype(np.float32)
            w.add_tensor(name, arr.astype(np.float16))
        else:
            packed = gguf.quants.quantize(arr, t)
            stored[name] = gguf.quants.dequantize(packed, t).reshape(arr.shape)
            w.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=t)
    return stored


def _rms_norm(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * weight


def _rope(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """llama.cpp's normal (interleaved) RoPE: rotate (x[2i], x[2i+1]) by position * theta^(-2i/d). x: (T, H, D)."""
    d = x.shape[-1]
    inv = THETA ** (-np.arange(0, d, 2) / d)
    ang = positions[:, None] * inv[None, :]  # (T, D/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def reference_logits(w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Causal forward over the whole sequence in float64: (T, vocab)."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    T = len(ids)
    x = w["token_embd.weight"][ids]
    pos = np.arange(T, dtype=np.float64)
    group = N_HEADS // N_KV_HEADS
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(N_LAYERS):
        p = f"blk.{i}."
        h = _rms_norm(x, w[p + "attn_norm.weight"])
        q = _rope((h @ w[p + "attn_q.weight"].T).reshape(T, N_HEADS, HEAD_DIM), pos)
        k = _rope((h @ w[p + "attn_k.weight"].T).reshape(T, N_KV_HEADS, HEAD_DIM), pos)
        v = (h @ w[p + "attn_v.weight"].T).reshape(T, N_KV_HEADS, HEAD_DIM)
        out = np.empty((T, N_HEADS, HEAD_DIM))
        for hd in range(N_HEADS):
            kv = hd // group
            s = q[:, hd] @ k[:, kv].T / np.sqrt(HEAD_DIM) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, hd] = (s / s.sum(-1, keepdims=True)) @ v[:, kv]
        x = x + out.reshape(T, DIM) @ w[p + "attn_output.weight"].T
        h = _rms_norm(x, w[p + "ffn_norm.weight"])
        g = h @ w[p + "ffn_gate.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    head = w.get("output.weight", w["token_embd.weight"])
    return _rms_norm(x, w["output_norm.weight"]) @ head.T
