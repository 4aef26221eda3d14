"""Block packing: golden blocks built by hand from the ggml spec, bit-exact against gguf-py; round-trip bounds."""
from __future__ import annotations

import numpy as np
import pytest
from gguf.quants import dequantize, quantize

from edgegen.quantize.blocks import Q, bits_per_weight, packed_nbytes, quantize_tensor, relative_error


def f16_bytes(x: float) -> bytes:
    return np.float16(x).tobytes()


def test_q8_0_golden_block():
    # block_q8_0 (ggml-common.h): d = amax / 127 as f16, then qs[i] = round(x[i] / d) as int8.
    x = (np.arange(32, dtype=np.float32) - 16) * 0.25  # amax 4.0 at x[0]
    d = 4.0 / 127
    qs = np.round(x / np.float32(d)).astype(np.int8)
    expected = f16_bytes(d) + qs.tobytes()
    got = quantize_tensor(x[None, :], Q.Q8_0)
    assert got.data.tobytes() == expected
    assert got.data.tobytes() == quantize(x[None, :], Q.Q8_0).tobytes()
    np.testing.assert_array_equal(dequantize(got.data, Q.Q8_0)[0], np.float16(d).astype(np.float32) * qs)


def test_q4_0_golden_block():
    # block_q4_0: d = max / -8 where max is the signed value of largest magnitude; q = min(15, trunc(x/d + 8.5));
    # byte j holds q[j] in its low nibble and q[j + 16] in its high nibble.
    x = np.linspace(-1.0, 0.5, 32, dtype=np.float32)  # largest magnitude -1.0 -> d = 0.125
    d = -1.0 / -8
    q = np.minimum(15, np.trunc(x / np.float32(d) + 8.5)).astype(np.uint8)
    qs = (q[:16] | (q[16:] << 4)).astype(np.uint8)
    expected = f16_bytes(d) + qs.tobytes()
    got = quantize_tensor(x[None, :], Q.Q4_0)
    assert got.data.tobytes() == expected
    deq = dequantize(got.data, Q.Q4_0)[0]
    np.testing.assert_allclose(deq, (q.astype(np.float32) - 8) * d)


def test_q4_1_golden_block():
    # block_q4_1: d = (max - min) / 15, m = min; q = min(15, trunc((x - m) / d + 0.5)).
    x = np.linspace(-0.5, 1.0, 32, dtype=np.float32)
    d, m = 1.5 / 15, -0.5
    q = np.minimum(15, np.trunc((x - np.float32(m)) / np.float32(d) + 0.5)).astype(np.uint8)
    qs = (q[:16] | (q[16:] << 4)).astype(np.uint8)
    expected = f16_bytes(d) + f16_bytes(m) + qs.tobytes()
    got = quantize_tensor(x[None, :], Q.Q4_1)
    assert got.data.tobytes() == expected
    deq = dequantize(got.data, Q.Q4_1)[0]
    np.testing.assert_allclose(deq, q * np.float16(d).astype(np.float32) + m, rtol=0, atol=1e-6)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.F16])
def test_packing_is_gguf_py_bit_for_bit_on_random_rows(qtype):
    w = np.random.default_rng(1).normal(0, 0.02, (48, 256)).astype(np.float32)
    assert quantize_tensor(w, qtype).data.tobytes() == quantize(w, qtype).tobytes()


# Relative Frobenius error on Gaussian weights: theory for a uniform quantizer with step = amax_block/levels gives
# about 0.005 (Q8_0), 0.09 (Q4_0), 0.08 (Q4_1); bounds are within a factor 1.5 and fail on a wrong scale or order.
@pytest.mark.parametrize("qtype,low,high", [
    (Q.F16, 0.0, 5e-4), (Q.Q8_0, 0.002, 0.008), (Q.Q4_0, 0.06, 0.13), (Q.Q4_1, 0.05, 0.12),
])
def test_round_trip_error_bounds(qtype, low, high):
    w = np.random.default_rng(2).normal(0, 1.0, (64, 512)).astype(np.float32)
    q = quantize_tensor(w, qtype)
    assert low <= q.rel_error <= high
    assert q.rel_error == pytest.approx(relative_error(w, dequantize(q.data, qtype).reshape(w.shape)))
    assert q.nbytes == packed_nbytes(w.shape, qtype) == w.size * bits_per_weight(qtype) / 8


def test_error_ordering_follows_bits():
    w = np.random.default_rng(3).standard_t(4, (64, 256)).astype(np.float32)  # heavy tails, like real weights
    errs = {t: quantize_tensor(w, t).rel_error for t in (Q.F16, Q.Q8_0, Q.Q4_1, Q.Q4_0)}
    assert errs[Q.F16] < errs[Q.Q8_0] < errs[Q.Q4_1] < errs[Q.Q4_0]
