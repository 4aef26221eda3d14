"""The U-Net kernels of runtime/native/unet_kernels.py (GroupNorm + SiLU, attention) against numpy models.

The model computes each group's mean and variance in float64 and the activation with numpy's exp; the kernel sums in
float32 over 16 lanes and uses its own exp (relative error about 2e-7). They agree within 1e-5 relative to the
activation's magnitude, plus 1e-5, plus what float32 must lose subtracting a group's mean. The border the kernel
writes must be exactly zero, and neither the partition count nor the batch row may change a bit.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tinygrad import Tensor

from edgegen.runtime.native.unet_kernels import group_norm_silu_padded


def model(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, groups: int, eps: float
          ) -> tuple[np.ndarray, np.ndarray]:
    """(the activation in float64, the rounding a float32 computation cannot avoid: x - mean loses the float32
    precision of the mean, 2^-23 |mean|, scaled by gamma / std)."""
    b, c, h, w = x.shape
    g = x.astype(np.float64).reshape(b, groups, -1)
    mean = g.mean(-1, keepdims=True)
    var = ((g - mean) ** 2).mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(var + eps)
    y = ((g - mean) * rstd).reshape(b, c, h, w) * gamma[None, :, None, None] + beta[None, :, None, None]
    floor = (4 * 2.0**-23 * (np.abs(mean) + np.sqrt(var)) * rstd) * np.ones_like(g)
    return y / (1 + np.exp(-y)), floor.reshape(b, c, h, w) * np.abs(gamma)[None, :, None, None]


def run(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, groups: int, pad: int, parts: int) -> np.ndarray:
    return group_norm_silu_padded(Tensor(x, device="CPU"), Tensor(gamma, device="CPU"), Tensor(beta, device="CPU"),
                                  groups, pad, 1e-5, parts).numpy()


def check(b: int, c: int, h: int, w: int, groups: int, pad: int, seed: int, scale: float = 1.0, parts: int = 2
          ) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((b, c, h, w)) * scale + rng.standard_normal()).astype(np.float32)
    gamma = (1 + 0.5 * rng.standard_normal(c)).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    got = run(x, gamma, beta, groups, pad, parts)
    assert got.shape == (b, c, h + 2 * pad, w + 2 * pad)
    inner = got[:, :, pad:pad + h, pad:pad + w]
    ref, floor = model(x, gamma, beta, groups, 1e-5)
    assert np.all(np.abs(inner - ref) <= 1e-5 * np.abs(ref) + 1e-5 + floor), float(np.max(np.abs(inner - ref)))
    border = got.copy()
    border[:, :, pad:pad + h, pad:pad + w] = 0
    assert not border.any()
    return got


@pytest.mark.parametrize("b,c,h,groups,pad", [
    (2, 32, 28, 8, 1),   # the pixel U-Net's 28x28 blocks
    (3, 64, 7, 8, 1),    # its middle
    (2, 64, 8, 8, 1),    # latent sizes
    (1, 128, 2, 8, 1),   # fewer elements per group than a vector
    (2, 32, 14, 4, 0),   # no padding
])
def test_group_norm_silu_matches_the_numpy_model(b, c, h, groups, pad):
    check(b, c, h, h, groups, pad, seed=b * 100 + c + h)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(b=st.integers(1, 3), cpg=st.integers(1, 5), groups=st.integers(1, 4), h=st.integers(1, 9), w=st.integers(1, 9),
       pad=st.integers(0, 2), scale=st.sampled_from([1e-3, 1.0, 30.0]), seed=st.integers(0, 2**31))
def test_generated_shapes_and_scales(b, cpg, groups, h, w, pad, scale, seed):
    check(b, cpg * groups, h, w, groups, pad, seed, scale)


def test_partitions_and_batch_rows_change_no_bit():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 32, 14, 14)).astype(np.float32)
    gamma, beta = np.ones(32, np.float32), np.zeros(32, np.float32)
    one = run(x, gamma, beta, 8, 1, parts=1)
    assert np.array_equal(one, run(x, gamma, beta, 8, 1, parts=3))
    assert np.array_equal(one[2:3], run(x[2:3], gamma, beta, 8, 1, parts=2))


def attention_model(qkv: np.ndarray, heads: int) -> np.ndarray:
    """(B, C, T) of qkv (B, 3 C, T), channel-major."""
    b, c3, t = qkv.shape
    c = c3 // 3
    parts = qkv.astype(np.float64).reshape(b, 3, heads, c // heads, t)
    q, k, v = (parts[:, i].transpose(0, 1, 3, 2) for i in range(3))  # (B, heads, T, d)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(c // heads)
    e = np.exp(s - s.max(-1, keepdims=True))
    return ((e / e.sum(-1, keepdims=True)) @ v).transpose(0, 1, 3, 2).reshape(b, c, t)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(b=st.integers(1, 3), t=st.integers(1, 50), heads=st.integers(1, 4), d=st.sampled_from([1, 8, 16, 32]),
       scale=st.sampled_from([0.1, 1.0, 5.0]), seed=st.integers(0, 2**31))
def test_attention_matches_the_numpy_model(b, t, heads, d, scale, seed):
    from edgegen.runtime.native.unet_kernels import self_attention

    qkv = (np.random.default_rng(seed).standard_normal((b, 3 * heads * d, t)) * scale).astype(np.float32)
    got = self_attention(Tensor(qkv, device="CPU"), heads, 2).numpy()
    ref = attention_model(qkv, heads)
    assert np.all(np.abs(got - ref) <= 1e-4 * (np.abs(qkv).max() + 1)), float(np.abs(got - ref).max())
    if b > 1:  # an image's rows do not depend on the other images, nor on the partitions
        assert np.array_equal(got[1:2], self_attention(Tensor(qkv[1:2], device="CPU"), heads, 1).numpy())
