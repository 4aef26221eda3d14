"""The hand-written convolution kernel (runtime/native/conv.py) against a numpy model of the same sum.

The kernel adds the taps to the bias in one order (input channel, kernel row, kernel column) in float32 with fused
multiply-adds where the CPU has them; the model below sums the same products in float64. They agree within 1e-5
of the sum of the terms' magnitudes (float32 rounding of up to in*k*k additions). The partition count (threads)
must not change a single bit: each output is computed by one task whatever the split.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tinygrad import Tensor

from edgegen.runtime.native.conv import conv2d


def conv_model(x: np.ndarray, w: np.ndarray, bias: np.ndarray, k: int, stride: int, padding: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """(the convolution in float64, the sum of the magnitudes of its terms) for x (B, C, H, W), w (O, C*k*k)."""
    b, c, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = (h + 2 * padding - k) // stride + 1, (wd + 2 * padding - k) // stride + 1
    cols = np.stack([xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] for i in range(k) for j in range(k)],
                    2).reshape(b, c * k * k, ho, wo)  # tap (c, i, j) at index (c*k + i)*k + j
    w64 = w.astype(np.float64)
    out = np.einsum("bkhw,ok->bohw", cols, w64) + bias[None, :, None, None]
    mag = np.einsum("bkhw,ok->bohw", np.abs(cols), np.abs(w64)) + np.abs(bias)[None, :, None, None]
    return out, mag


def run(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, k: int, stride: int, padding: int, parts: int
        ) -> np.ndarray:
    return conv2d(Tensor(x), Tensor(w), None if bias is None else Tensor(bias), k, stride, padding, parts).numpy()


def check(b: int, c: int, h: int, o: int, k: int, stride: int, seed: int, parts: int = 2, bias: bool = True) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, c, h, h)).astype(np.float32)
    w = rng.standard_normal((o, c * k * k)).astype(np.float32)
    bv = rng.standard_normal(o).astype(np.float32) if bias else None
    got = run(x, w, bv, k, stride, k // 2, parts)
    ref, mag = conv_model(x, w, bv if bv is not None else np.zeros(o, np.float32), k, stride, k // 2)
    assert got.shape == ref.shape
    assert np.all(np.abs(got - ref) <= 1e-5 * mag + 1e-6), float(np.max(np.abs(got - ref) / (mag + 1e-6)))


@pytest.mark.parametrize("b,c,h,o,k,stride", [
    (2, 1, 28, 32, 3, 1),    # the U-Net's first layer: one input channel
    (2, 32, 28, 32, 3, 1),   # a 28x28 residual conv
    (3, 32, 28, 64, 3, 2),   # a downsampling conv
    (2, 64, 7, 64, 3, 1),    # the 7x7 middle
    (2, 96, 14, 32, 1, 1),   # a 1x1 skip merge
    (1, 32, 28, 1, 3, 1),    # conv_out: one output channel (a vector of 16 mostly unused)
    (2, 4, 8, 96, 3, 1),     # latent sizes; 96 channels = one pass of 64 and one of 32
    (1, 8, 2, 128, 3, 1),    # a 2x2 image: fewer pixels than a task block
])
def test_conv_matches_the_numpy_model(b, c, h, o, k, stride):
    check(b, c, h, o, k, stride, seed=b * 1000 + c + o)


def test_no_bias_means_zero_bias():
    check(1, 3, 9, 5, 3, 1, seed=1, bias=False)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(b=st.integers(1, 3), c=st.integers(1, 40), h=st.integers(1, 17), o=st.integers(1, 80),
       k=st.sampled_from([1, 3, 5]), stride=st.sampled_from([1, 2]), seed=st.integers(0, 2**16))
def test_any_shape_matches_the_numpy_model(b, c, h, o, k, stride, seed):
    check(b, c, h, o, k, stride, seed)


def test_the_partition_count_changes_no_bit():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 16, 14, 14)).astype(np.float32)
    w = rng.standard_normal((48, 16 * 9)).astype(np.float32)
    bias = rng.standard_normal(48).astype(np.float32)
    outs = [run(x, w, bias, 3, 1, 1, parts) for parts in (1, 2, 5)]
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("h", [16, 28, 32])
def test_few_output_channels_sum_as_the_channel_vectors_do(h):
    """Up to 4 output channels run as vectors of 16 pixels (conv.FEW_OUT), more as vectors of 16 channels; every
    output adds the same products in the same order either way, so the first channels agree bit for bit."""
    rng = np.random.default_rng(h)
    x = rng.standard_normal((2, 8, h, h)).astype(np.float32)
    w = rng.standard_normal((5, 8 * 9)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    many = run(x, w, bias, 3, 1, 1, 2)
    few = run(x, w[:4], bias[:4], 3, 1, 1, 2)
    assert np.array_equal(few, many[:, :4])
