"""A numpy model of the hand-written kernels' arithmetic (runtime/native/c/common.h), written from the GGUF layouts.

Activation quantization is modelled bit for bit: float32 operations in the order eg_quantize_block_portable does
them (llama.cpp's Q8_0/Q8_1: q = x * (127 / amax) rounded to nearest, ties to even; d and d * sum(q) rounded to
f16). Weights are decoded from the raw GGUF block bytes
into integers (quants with their offset applied, per-16 scales and minimums) and float32 block scales, so the
integer sums of every (sub-)block are exact in int64; the float result multiplies them by the same float32 scale
products the kernels form (weight scale * activation scale) and sums in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

QK = 32
# eg_q8x in common.h: float d, s (f16-rounded scale and scale * sum), int16 bs[2] (each half's sum), int8 qs[32].
Q8X = np.dtype([("d", "<f4"), ("s", "<f4"), ("bs", "<i2", (2,)), ("qs", "i1", (QK,))])
assert Q8X.itemsize == 44


def quantize(x: np.ndarray) -> np.ndarray:
    """Activation rows (rows, k) float32 -> eg_q8x blocks (rows, k / 32), as eg_quantize_block_portable."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, k = x.shape
    blocks = x.reshape(rows, k // QK, QK)
    amax = np.abs(blocks).max(axis=2)
    d = amax / np.float32(127.0)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(amax != 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    # amax below ~3.7e-37: 127 / amax overflows; the C code then uses 0 (the block quantizes to zeros)
    inv = np.where(np.isfinite(inv), inv, np.float32(0.0)).astype(np.float32)
    q = np.rint(blocks * inv[..., None]).astype(np.int64)  # nearest, ties to even
    out = np.zeros((rows, k // QK), Q8X)
    with np.errstate(over="ignore"):  # numpy's float16 cast rounds to nearest, ties to even
        out["d"] = d.astype(np.float16).astype(np.float32)
    with np.errstate(over="ignore"):  # beyond f16's 65504 the scale is inf, in llama.cpp too
        out["s"] = (d * q.sum(axis=2).astype(np.float32)).astype(np.float16).astype(np.float32)
    out["qs"] = q
    out["bs"][..., 0], out["bs"][..., 1] = q[..., :16].sum(axis=2), q[..., 16:].sum(axis=2)
    return out


def rms_normed(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """The float32 rows the "rms" quantize kernel quantizes, in its order of operations: the squares summed one by
    one in float64 (ggml's rms_norm: np.cumsum adds sequentially), mean and scale in float32, (x * scale) * w."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    ss = np.cumsum((x * x).astype(np.float64), axis=1)[:, -1]
    mean = (ss / x.shape[1]).astype(np.float32)
    scale = np.float32(1.0) / np.sqrt(mean + np.float32(eps))
    return (x * scale[:, None]) * np.asarray(w, np.float32)[None, :]


def gated(gate_up: np.ndarray, activation: str) -> np.ndarray:
    """activation(gate) * up of rows (rows, 2k) in float64: SwiGLU ("silu") or GeGLU with tanh GELU."""
    g, u = np.split(np.asarray(gate_up, np.float64), 2, axis=1)
    if activation == "silu":
        return g / (1.0 + np.exp(-g)) * u
    return 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * g * (1.0 + 0.044715 * g * g))) * u


@dataclass
class Decoded:
    """Weights of `rows` rows as 32-blocks: w = D * s * q + M * m per 16-group (s, m are per group of 16)."""

    q: np.ndarray  # (rows, blocks, 32) int64, the offset (-8, -16, -32, -4) applied
    s: np.ndarray  # (rows, blocks, 2) int64 scales
    m: np.ndarray  # (rows, blocks, 2) int64 minimums (0 for types without one)
    D: np.ndarray  # (rows, blocks) float32: the block's f16 scale
    M: np.ndarray  # (rows, blocks) float32: + the f16 minimum (Q4_1/Q5_1), - dmin (K-quants), 0 otherwise
    # Q4_1/Q5_1: the minimum multiplies the activation block's f16 s (d * sum(q)), as llama.cpp's Q8_1 does, not
    # d times the integer sum
    min_times_s: bool = False

    def dequantize(self) -> np.ndarray:
        """The float weights (rows, k) in float64."""
        s, m = np.repeat(self.s, 16, axis=2), np.repeat(self.m, 16, axis=2)
        w = self.D[..., None].astype(np.float64) * s * self.q + self.M[..., None].astype(np.float64) * m
        return w.reshape(w.shape[0], -1)


def _f16(raw: np.ndarray, off: int) -> np.ndarray:
    return raw[..., off:off + 2].copy().view("<f2")[..., 0].astype(np.float32)


def _u32(raw: np.ndarray, off: int) -> np.ndarray:
    return raw[..., off:off + 4].copy().view("<u4")[..., 0].astype(np.int64)


def _bits(value: np.ndarray, count: int) -> np.ndarray:
    """(..., ) int -> (..., count) its low `count` bits, bit j at index j."""
    return (value[..., None] >> np.arange(count)) & 1


def _scale_min_k4(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 scale bytes (..., 12) -> 6-bit scales and minimums (..., 8) (ggml's get_scale_min_k4)."""
    q = sc.astype(np.int64)
    lo_s, lo_m = q[..., 0:4] & 63, q[..., 4:8] & 63
    hi_s = (q[..., 8:12] & 0xF) | ((q[..., 0:4] >> 6) << 4)
    hi_m = (q[..., 8:12] >> 4) | ((q[..., 4:8] >> 6) << 4)
    return np.concatenate([lo_s, hi_s], -1), np.concatenate([lo_m, hi_m], -1)


def _q3_scales(sc: np.ndarray) -> np.ndarray:
    """Q3_K's 12 scale bytes (..., 12) -> 16 signed 6-bit scales: low nibbles of bytes 0-7 then their high nibbles,
    each with two high bits from bytes 8-11."""
    q = sc.astype(np.int64)
    low = np.concatenate([q[..., 0:8] & 0xF, q[..., 0:8] >> 4], -1)
    i = np.arange(16)
    high = (q[..., 8 + i % 4] >> (2 * (i // 4))) & 3
    return (low | (high << 4)) - 32


def decode(raw: np.ndarray, ggml_type: T) -> Decoded:
    """Raw GGUF rows (rows, bytes per row) uint8 of `ggml_type` -> Decoded."""
    block, size = GGML_QUANT_SIZES[ggml_type]
    rows = raw.shape[0]
    b = raw.reshape(rows, -1, size)
    nsb = b.shape[1]
    zeros_f = np.zeros((rows, nsb * block // QK), np.float32)
    ones = np.ones((rows, nsb * block // QK, 2), np.int64)
    if block == QK:
        d = _f16(b, 0)
        if ggml_type == T.Q8_0:
            q = b[..., 2:34].view(np.int8).astype(np.int64)
            return Decoded(q, ones, 0 * ones, d, zeros_f)
        has_min, five = ggml_type in (T.Q4_1, T.Q5_1), ggml_type in (T.Q5_0, T.Q5_1)
        after_scales = 4 if has_min else 2  # d (and m), then Q5's qh (uint32), then qs[16]
        qs_off = after_scales + 4 if five else after_scales
        qs = b[..., qs_off:qs_off + 16].astype(np.int64)
        q = np.concatenate([qs & 0xF, qs >> 4], -1)  # byte j: weight j (low nibble), weight j + 16 (high)
        if five:
            q = q | (_bits(_u32(b, after_scales), 32) << 4)
        if has_min:
            return Decoded(q, ones, ones, d, _f16(b, 2), min_times_s=True)
        return Decoded(q - (16 if ggml_type == T.Q5_0 else 8), ones, 0 * ones, d, zeros_f)
    return _decode_k(b, ggml_type)


def _decode_k(b: np.ndarray, ggml_type: T) -> Decoded:
    """K-quant super-blocks (rows, n, bytes) -> Decoded, 8 activation blocks per super-block."""
    rows, nsb, _ = b.shape
    e = np.arange(256)
    if ggml_type == T.Q2_K:  # scales[16], qs[64], d, dmin; weight 128h + 32j + l: bits 2j of qs[32h + l]
        h, j, lane = e // 128, (e // 32) % 4, e % 32
        q = (b[..., 16 + 32 * h + lane].astype(np.int64) >> (2 * j)) & 3
        g = b[..., 0:16].astype(np.int64)
        s, m, D, M = g & 0xF, g >> 4, _f16(b, 80), -_f16(b, 82)
    elif ggml_type == T.Q3_K:  # hmask[32], qs[64], scales[12], d; minus 4 where bit 4h + j of hmask[l] is clear
        h, j, lane = e // 128, (e // 32) % 4, e % 32
        q = (b[..., 32 + 32 * h + lane].astype(np.int64) >> (2 * j)) & 3
        q = q - 4 * (1 - ((b[..., lane].astype(np.int64) >> (4 * h + j)) & 1))
        s, D = _q3_scales(b[..., 96:108]), _f16(b, 108)
        m, M = 0 * s, 0 * D
    elif ggml_type in (T.Q4_K, T.Q5_K):  # d, dmin, scales[12], (qh[32],) qs[128]: chunk c = 64 weights
        c, hi, lane = e // 64, (e // 32) % 2, e % 32
        qs_off = 16 if ggml_type == T.Q4_K else 48
        q = (b[..., qs_off + 32 * c + lane].astype(np.int64) >> (4 * hi)) & 0xF
        if ggml_type == T.Q5_K:
            q = q | (((b[..., 16 + lane].astype(np.int64) >> (2 * c + hi)) & 1) << 4)
        s8, m8 = _scale_min_k4(b[..., 4:16])
        s, m, D, M = np.repeat(s8, 2, -1), np.repeat(m8, 2, -1), _f16(b, 0), -_f16(b, 2)
    elif ggml_type == T.Q6_K:  # ql[128], qh[64], scales[16] int8, d; weight 128h + 32k + l
        h, k, lane = e // 128, (e // 32) % 4, e % 32
        ql = b[..., 64 * h + 32 * (k % 2) + lane].astype(np.int64) >> (4 * (k // 2)) & 0xF
        qhb = (b[..., 128 + 32 * h + lane].astype(np.int64) >> (2 * k)) & 3
        q = (ql | (qhb << 4)) - 32
        s, D = b[..., 192:208].view(np.int8).astype(np.int64), _f16(b, 208)
        m, M = 0 * s, 0 * D
    else:
        raise ValueError(f"no reference for {ggml_type.name}")
    blocks = nsb * 8
    per_block = lambda a: np.repeat(a, 8, axis=-1).reshape(rows, blocks)  # noqa: E731
    return Decoded(q.reshape(rows, blocks, QK), s.reshape(rows, blocks, 2), m.reshape(rows, blocks, 2),
                   per_block(D), per_block(M))


@dataclass
class DotResult:
    """y[rows, n] = x . W^T as the kernels compute it, with its parts."""

    isum: np.ndarray  # (rows, n, blocks) int64: sum over groups of s * sum(q * xq)
    imin: np.ndarray  # (rows, n, blocks) int64: sum over groups of m * sum(xq)
    y: np.ndarray  # (rows, n) float64: sum of fp32(D * xd) * isum + fp32(M * xd) * imin (or fp32(M * xs))
    magnitude: np.ndarray  # (rows, n) float64: the sum of those terms' absolute values (the float error's scale)


def dot(xq: np.ndarray, w: Decoded) -> DotResult:
    """The kernels' y = x . W^T from quantized activations (rows, blocks) Q8X and decoded weights."""
    q8 = xq["qs"].astype(np.int64).reshape(*xq.shape, 2, 16)  # (rows, blocks, 2, 16)
    qw = w.q.reshape(*w.q.shape[:2], 2, 16)  # (n, blocks, 2, 16)
    group = np.einsum("rbgl,nbgl->rnbg", q8, qw)  # exact: int64 accumulation
    isum = (group * w.s[None]).sum(-1)
    imin = (q8.sum(-1)[:, None] * w.m[None]).sum(-1)
    xd = xq["d"][:, None, :]
    fd = (w.D[None] * xd).astype(np.float32).astype(np.float64)
    if w.min_times_s:
        mins = (w.M[None] * xq["s"][:, None, :]).astype(np.float32).astype(np.float64)
    else:
        mins = (w.M[None] * xd).astype(np.float32).astype(np.float64) * imin
    terms = fd * isum + mins
    return DotResult(isum, imin, terms.sum(-1), (np.abs(fd * isum) + np.abs(mins)).sum(-1))


def activation_error_bound(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Worst-case |x . w - x^ . w| (rows, n) from rounding each activation to its block's step d = amax / 127: at most
    half a step each (0.501 covers the float32 rounding of x / d), plus the f16 rounding of d (2^-11 of d, times up
    to 127 steps), times |w|, summed."""
    rows, k = x.shape
    step = np.abs(x.reshape(rows, k // QK, QK)).max(-1).astype(np.float64) / 127.0
    wabs = np.abs(w).reshape(w.shape[0], k // QK, QK).sum(-1)
    return (0.501 + 127.0 / 2048.0) * step @ wabs.T


def attention(q: np.ndarray, kv: np.ndarray, start: int, window: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The attention kernel's arithmetic (runtime/native/source.py attention_kernel) in float64: q (T, H, hd) float32,
    kv (2, KvH, C, hd) float16 (the cache), query t at position start + t over keys lo..pos (lo = pos - window + 1
    on a sliding-window layer), head h reading KV head h // (H / KvH); keys and values widened from float16 exactly,
    the query rounded to f16, softmax with its maximum subtracted, each probability rounded to f16 (llama.cpp's CPU
    attention without flash attention). Returns (out (T, H, hd), sum of |p| |v| per output: the float32 error
    scale)."""
    t, heads, hd = q.shape
    kv_heads = kv.shape[1]
    k, v = kv[0].astype(np.float64), kv[1].astype(np.float64)
    qh = q.astype(np.float16).astype(np.float64)  # the query rounded to f16 (ggml converts it to K's type)
    out, mag = np.zeros((t, heads, hd)), np.zeros((t, heads, hd))
    for tq in range(t):
        pos = start + tq
        lo = max(0, pos - window + 1) if window > 0 else 0
        for h in range(heads):
            g = h // (heads // kv_heads)
            s = (k[g, lo:pos + 1] @ qh[tq, h]).astype(np.float32) * np.float32(scale)
            e = np.exp(s.astype(np.float64) - s.max()).astype(np.float32)
            # normalized by the reciprocal of the (double) sum, then each probability rounded to f16, as ggml does
            p = (e * np.float32(1.0 / e.astype(np.float64).sum())).astype(np.float16).astype(np.float64)
            out[tq, h] = p @ v[g, lo:pos + 1]
            mag[tq, h] = p @ np.abs(v[g, lo:pos + 1]) + np.abs(out[tq, h])
    return out, mag
