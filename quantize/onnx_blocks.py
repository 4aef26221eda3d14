"""numpy quantizers for ONNX's DequantizeLinear: symmetric int8 per channel, asymmetric uint4 per block.

Each returns the stored values, scales (and zero points), and the dequantized float copy, shaped the way
DequantizeLinear reads them: y = (x - zero_point) * scale, with `scale` broadcast along `axis` (per channel) or
repeated `block_size` times along it (blocked).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

INT8_MAX = 127  # symmetric: -128 is never used, so negating a weight negates its code
UINT4_MAX = 15
# Candidate fractions of a block's range that its 16 levels span; the one with the least squared error wins.
# The search brings a sentence-embedding model closer to fp32 for both symmetric int4 and asymmetric uint4, and
# searching both ends separately gains almost nothing more at a much higher cost (docs/MEASUREMENTS.md).
# Clipping a block's one or two outliers refines the other 30.
INT4_CLIP_FRACTIONS = np.linspace(1.0, 0.6, 17, dtype=np.float32)


def quantize_int8_channels(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int8 with one scale per index of `axis` (absmax / 127); scales have shape (w.shape[axis],)."""
    others = tuple(d for d in range(w.ndim) if d != axis)
    absmax = np.abs(w).max(axis=others, keepdims=True)
    scale = np.where(absmax > 0, absmax / INT8_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale.reshape(-1), (q * scale).astype(np.float32)


def quantize_uint4_blocks(w: np.ndarray, axis: int,
                          block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ONNX UINT4 in blocks of `block_size` along `axis`, with a uint4 zero point per block.

    Returns (codes, scales, zero points, dequantized); scales and zero points have w's shape with `axis` divided by
    the block size. Each block's range [min, max] (widened to include 0, so zero stays exact) is shrunk by the
    fraction in INT4_CLIP_FRACTIONS that gives the least squared error.
    """
    n = w.shape[axis]
    assert n % block_size == 0, (w.shape, axis, block_size)
    moved = np.moveaxis(w.astype(np.float32), axis, -1)  # (..., n)
    blocks = moved.reshape(*moved.shape[:-1], n // block_size, block_size)  # (..., nb, bs)
    lo0 = np.minimum(blocks.min(-1, keepdims=True), 0)  # (..., nb, 1)
    hi0 = np.maximum(blocks.max(-1, keepdims=True), 0)
    best_err = np.full(lo0.shape, np.inf, np.float32)
    best_scale, best_zp = np.ones_like(lo0), np.zeros_like(lo0)
    for frac in INT4_CLIP_FRACTIONS:
        scale = np.where(hi0 > lo0, (hi0 - lo0) * frac / UINT4_MAX, 1.0).astype(np.float32)
        zp = np.clip(np.rint(-lo0 * frac / scale), 0, UINT4_MAX)
        deq = (np.clip(np.rint(blocks / scale) + zp, 0, UINT4_MAX) - zp) * scale
        err = ((deq - blocks) ** 2).sum(-1, keepdims=True)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale, best_zp = np.where(better, scale, best_scale), np.where(better, zp, best_zp)
    codes = np.clip(np.rint(blocks / best_scale) + best_zp, 0, UINT4_MAX)
    deq = ((codes - best_zp) * best_scale).reshape(moved.shape)

    def back(a: np.ndarray, dtype) -> np.ndarray:  # (..., nb | n) -> the axis back in its place
        return np.ascontiguousarray(np.moveaxis(a, -1, axis)).astype(dtype)

    return (back(codes.reshape(moved.shape), ml_dtypes.uint4), back(best_scale[..., 0], np.float32),
            back(best_zp[..., 0], ml_dtypes.uint4), back(deq, np.float32))
