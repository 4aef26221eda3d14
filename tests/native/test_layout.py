"""The x8 weight layout (runtime.native.layout): each byte where c/x8.h's comment says it is, written piece by piece
the same as whole, used only where the kernels have it, and a clear error for what it cannot lay out. The kernels
that read it are checked against reference.py in test_kernels.py (the *x8 cases)."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from edgegen.runtime.native import layout
from edgegen.runtime.native.layout import (
    X8_HEADERS,
    X8_HIGH_BITS,
    interleave_pieces,
    interleave_rows,
    x8_supported,
)
from edgegen.runtime.native.source import matmul_kernel, quantize_kernel

SLOT_OF_ROW = {0: (0, 0), 1: (0, 1), 4: (0, 2), 5: (0, 3), 2: (1, 0), 3: (1, 1), 6: (1, 2), 7: (1, 3)}  # (half, j)


def _random_rows(t: T, rows: int, blocks: int, seed: int = 0) -> np.ndarray:
    _, size = GGML_QUANT_SIZES[t]
    return np.random.default_rng(seed).integers(0, 256, (rows, blocks * size), dtype=np.uint8)


@pytest.mark.parametrize("t", list(X8_HEADERS), ids=[t.name for t in X8_HEADERS])
def test_every_byte_is_where_the_header_says(t: T) -> None:
    rows, blocks = 24, 3
    _, size = GGML_QUANT_SIZES[t]
    head, high = X8_HEADERS[t], X8_HIGH_BITS.get(t, 0)
    chunks = (size - head - high) // 8
    raw = _random_rows(t, rows, blocks)
    out = interleave_rows(raw, t, rows).reshape(rows // 8, blocks, 8 * size)
    assert out.nbytes == raw.nbytes
    for g in range(rows // 8):
        for b in range(blocks):
            blk = out[g, b]
            for r in range(8):
                src = raw[8 * g + r, b * size : (b + 1) * size]
                for field in range(head // 2):  # d (and m): the 8 rows' f16 side by side, in row order
                    at = 16 * field + 2 * r
                    assert blk[at : at + 2].tolist() == src[2 * field : 2 * field + 2].tolist()
                h, j = SLOT_OF_ROW[r]
                if high:  # Q5's fifth bits: the row's 4 bytes whole, at its slot
                    at = 8 * head + high * (4 * h + j)
                    assert blk[at : at + high].tolist() == src[head : head + high].tolist()
                for c in range(chunks):
                    at = 8 * (head + high) + (h * chunks + c) * 32 + 8 * j
                    got, want = blk[at : at + 8], src[head + high + 8 * c : head + high + 8 * c + 8]
                    assert got.tolist() == want.tolist()


def test_pieces_join_to_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _random_rows(T.Q4_1, 8 * 7, 2, seed=1)
    whole = interleave_rows(raw, T.Q4_1, 8 * 7)
    monkeypatch.setattr(layout, "GROUPS_PER_PIECE", 3)
    sources: list[np.ndarray] = []
    pieces = []
    for piece in interleave_pieces(raw, T.Q4_1, 8 * 7, sources.append):
        assert len(sources) == len(pieces)  # a piece's source rows are handed on only once it has been taken
        pieces.append(piece)
    assert [p.nbytes for p in pieces] == [3 * 8 * 40, 3 * 8 * 40, 8 * 40]
    assert np.array_equal(np.concatenate(pieces), whole)
    assert np.array_equal(np.concatenate(sources), raw)  # every row released once, in order


def test_used_only_where_the_kernels_have_it() -> None:
    assert x8_supported(T.Q4_1, 3072, "x86_64") and x8_supported(T.Q8_0, 49152, "AMD64")
    assert not x8_supported(T.Q4_1, 3072, "aarch64")  # ARM keeps its NEON row kernels
    assert not x8_supported(T.Q4_1, 3076, "x86_64")  # not whole groups of 8 rows
    assert not x8_supported(T.Q4_K, 3072, "x86_64")  # no x8 kernel for the K-quants


def test_bad_layouts_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="no x8 layout for Q6_K"):
        interleave_rows(_random_rows(T.Q6_K, 8, 1), T.Q6_K, 8)
    with pytest.raises(ValueError, match="12 rows are not a multiple of 8"):
        interleave_rows(_random_rows(T.Q4_0, 12, 1), T.Q4_0, 12)
    with pytest.raises(ValueError, match="not whole Q4_0 blocks of 18"):
        interleave_rows(np.zeros((8, 20), np.uint8), T.Q4_0, 8)
    with pytest.raises(ValueError, match="no x8 layout for 12 rows of Q8_0"):
        matmul_kernel(T.Q8_0, 1, 12, 64, 1, layout="x8")
    with pytest.raises(ValueError, match="unknown weight layout 'x9'"):
        matmul_kernel(T.Q8_0, 1, 16, 64, 1, layout="x9")
    with pytest.raises(ValueError, match="unknown row operation 'tanh'"):
        quantize_kernel(1, 64, 1, pre="tanh")
