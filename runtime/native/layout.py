"""Weight layouts of the hand-written kernels: the GGUF rows as stored ("rows"), or 8 rows interleaved ("x8").

The x8 layout (c/x8.h says byte by byte) lets the AVX2 kernels dot 8 weight rows with one activation block at a
time, as llama.cpp's repacked Q4_0 does, which makes a matvec much faster than the row kernels on x86
(docs/MEASUREMENTS.md). It has the same size as the rows it replaces, and is written once when a model is
packed (a warm start reads it back from the JIT cache). Only x86 builds have x8 kernels of their own; elsewhere the
portable C one would run, slower than the NEON row kernels, so ARM keeps the row layout.
"""
from __future__ import annotations

import platform
from collections.abc import Callable, Iterator

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

GROUP = 8  # weight rows interleaved
# per type: bytes of f16 scales at the start of each block (d, or d and m); the rest of the block is quants, after
# the fifth bits (4 bytes, X8_HIGH_BITS) of the Q5 types
X8_HEADERS: dict[T, int] = {T.Q4_0: 2, T.Q4_1: 4, T.Q5_0: 2, T.Q5_1: 4, T.Q8_0: 2}
X8_HIGH_BITS: dict[T, int] = {T.Q5_0: 4, T.Q5_1: 4}
# a group's slot 4h + j holds row ROW_ORDER[4h + j], so that _mm256_hadd_epi32 of the two halves gives rows 0..7
ROW_ORDER = np.array([0, 1, 4, 5, 2, 3, 6, 7])
CHUNK = 8  # bytes of one row's quants side by side with the other rows'
GROUPS_PER_PIECE = 512  # rewrite this many groups at a time (about 1.4 MB of Q8_0 576-wide rows)


def x8_supported(ggml_type: T, out_features: int, machine: str | None = None) -> bool:
    """Whether a layer of this type and height gets the x8 layout on this machine's kernels."""
    arch = (machine or platform.machine()).lower()
    return ggml_type in X8_HEADERS and out_features % GROUP == 0 and arch in ("x86_64", "amd64")


def interleave_rows(raw: np.ndarray, ggml_type: T, out_features: int) -> np.ndarray:
    """The x8 layout of `out_features` rows of GGUF blocks (uint8, rows back to back), as one array."""
    return np.concatenate(list(interleave_pieces(raw, ggml_type, out_features)))


def interleave_pieces(raw: np.ndarray, ggml_type: T, out_features: int,
                      done: Callable[[np.ndarray], None] | None = None) -> Iterator[np.ndarray]:
    """The x8 layout of `raw` in consecutive flat uint8 pieces of at most GROUPS_PER_PIECE groups each; `done` gets
    each piece's source rows once the consumer has taken the piece (to drop their file pages)."""
    if ggml_type not in X8_HEADERS:
        raise ValueError(f"no x8 layout for {ggml_type.name}")
    if out_features % GROUP:
        raise ValueError(f"{out_features} rows are not a multiple of {GROUP}")
    _, size = GGML_QUANT_SIZES[ggml_type]
    head, high = X8_HEADERS[ggml_type], X8_HIGH_BITS.get(ggml_type, 0)
    rows = np.asarray(raw).reshape(out_features, -1)
    nb = rows.shape[1] // size
    if rows.shape[1] != nb * size:
        raise ValueError(f"a row of {rows.shape[1]} bytes is not whole {ggml_type.name} blocks of {size}")
    chunks = (size - head - high) // CHUNK
    groups = out_features // GROUP
    for g0 in range(0, groups, GROUPS_PER_PIECE):
        g1 = min(groups, g0 + GROUPS_PER_PIECE)
        r = rows[GROUP * g0 : GROUP * g1].reshape(g1 - g0, GROUP, nb, size)
        # scales: each 2-byte field of the 8 rows side by side, in row order: (G, nb, fields, 8, 2)
        scales = r[..., :head].reshape(g1 - g0, GROUP, nb, head // 2, 2).transpose(0, 2, 3, 1, 4)
        # fifth bits: each row's 4 bytes whole, in slot order: (G, nb, slot, 4)
        bits = r[:, ROW_ORDER, :, head : head + high].transpose(0, 2, 1, 3)
        # quants: (G, slot, nb, chunk, 8) -> (G, nb, half, chunk, j, 8) with slot = 4 * half + j
        q = r[:, ROW_ORDER, :, head + high :].reshape(g1 - g0, 2, 4, nb, chunks, CHUNK).transpose(0, 3, 1, 4, 2, 5)
        parts = [scales.reshape(g1 - g0, nb, -1), bits.reshape(g1 - g0, nb, -1), q.reshape(g1 - g0, nb, -1)]
        yield np.concatenate(parts, axis=2).reshape(-1)
        if done is not None:
            done(rows[GROUP * g0 : GROUP * g1])
