"""GGML block formats as the runtime keeps them: one host repacking and one in-kernel dequantization per type.

Each block is repacked once at load into separate arrays (rows, blocks, ...) so a kernel reads quants and scales with
plain strided loads instead of unpacking a byte record. Layouts are ggml-common.h's `block_<type>`; the formulas are
gguf-py's `gguf/quants.py` (the tests compare against it). Only the 6-bit packed scales of Q3_K/Q4_K/Q5_K are
unpacked on the host (to one byte per scale: 4 bytes more per 256 weights); quants stay packed as uint8.

A format's dequantization returns *pieces*: a block's inputs are viewed as an array `view` in ggml's order, and each
piece is the weights at one index of the `piece_axes` over the remaining (lane) axes. Pieces are chosen so every
shift inside a piece is a constant and its lanes are contiguous: tinygrad turns a per-lane shift amount (from
`arange` or a constant vector) into chains of compares and selects, and strided lanes run far slower
(docs/QUANT_TYPES.md, docs/MEASUREMENTS.md).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf.quants import Q4_K as GgufQ4K
from tinygrad import Tensor, dtypes

Arrays = dict[str, np.ndarray]
Pieces = Callable[[dict[str, Tensor]], list[Tensor]]

F32 = dtypes.float32


@dataclass(frozen=True)
class BlockFormat:
    """How one GGML block type is repacked on the host and dequantized inside a kernel."""

    block: int  # weights per block (GGML_QUANT_SIZES)
    view: tuple[int, ...]  # a block's inputs as an array, in ggml's order (product == block)
    piece_axes: tuple[int, ...]  # axes of `view` enumerated by the pieces; the others are lanes
    repack: Callable[[np.ndarray], Arrays]  # raw (rows, nb, type_size) uint8 -> arrays (rows, nb, ...)
    pieces: Pieces  # device arrays -> weight pieces, each (rows, nb, *lane_shape), float32

    @property
    def lane_axes(self) -> tuple[int, ...]:
        return tuple(a for a in range(len(self.view)) if a not in self.piece_axes)


def type_size(t: T) -> int:
    """Bytes per block of `t` (gguf-py's GGML_QUANT_SIZES)."""
    return GGML_QUANT_SIZES[t][1]


def _f16(raw: np.ndarray, start: int) -> np.ndarray:
    """The f16 at byte `start` of every block: raw (rows, nb, type_size) uint8 -> (rows, nb, 1) float16."""
    return np.ascontiguousarray(raw[:, :, start : start + 2]).view(np.float16)


def _u8(raw: np.ndarray, start: int, stop: int) -> np.ndarray:
    return np.ascontiguousarray(raw[:, :, start:stop])


def _f(t: Tensor) -> Tensor:
    return t.cast(F32)


def _bits(v: Tensor, at: int, width: int, to: int = 0) -> Tensor:
    """The `width` bits of uint8 `v` from bit `at`, moved to bit `to`, with at most one shift and one mask."""
    if at + width == 8 and to == 0:
        return v >> at
    moved = v if at == to else v >> (at - to) if at > to else v << (to - at)
    return moved & (((1 << width) - 1) << to)


# --- blocks of 32 --------------------------------------------------------------------------------------------------
# Q8_0 (block_q8_0): d f16, qs int8[32] -> w = d * q. Q4_0: d, qs u8[16] -> w = d * (q - 8); byte j holds weight j in
# its low nibble and weight j + 16 in its high nibble (dequantize_row_q4_0). Q4_1: d, m, qs -> w = d * q + m.
# Pieces: the first and second 16 inputs (faster than one stacked (rows, nb, 32) operand).

def _q8_0(a: dict[str, Tensor]) -> list[Tensor]:
    q, d = _f(a["qs"]), _f(a["d"])
    return [q[:, :, :16] * d, q[:, :, 16:] * d]


def _q4_0(a: dict[str, Tensor]) -> list[Tensor]:
    d = _f(a["d"])
    return [(_f(_bits(a["qs"], 0, 4)) - 8.0) * d, (_f(_bits(a["qs"], 4, 4)) - 8.0) * d]


def _q4_1(a: dict[str, Tensor]) -> list[Tensor]:
    d, m = _f(a["d"]), _f(a["m"])
    return [_f(_bits(a["qs"], 0, 4)) * d + m, _f(_bits(a["qs"], 4, 4)) * d + m]


# Q5_0 (block_q5_0): d f16, qh u8[4] (bit k = 5th bit of weight k), qs u8[16] as Q4_0 -> w = d * (q - 16).
# Q5_1: d, m, qh, qs -> w = d * q + m. Weight k = 16h + 4t' + c (t' = 2j + bh) is nibble h of qs[4t' + c]. The host
# transposes qh's 32 bits as a 8x4 matrix, so byte c holds bit t = 4h + t' of weights 4t + c: pieces t over 4
# contiguous lanes c then read their 5th bit with one constant shift (strided lanes run far slower than Q4_1:
# docs/MEASUREMENTS.md).

def _q5_high_bits(raw: np.ndarray, start: int) -> np.ndarray:
    bits = np.unpackbits(_u8(raw, start, start + 4), axis=2, bitorder="little")  # (rows, nb, 32): bit k of weight k
    return np.packbits(bits.reshape(*raw.shape[:2], 8, 4).transpose(0, 1, 3, 2), axis=3, bitorder="little")[..., 0]


def _q5_quants(a: dict[str, Tensor]) -> list[Tensor]:
    rows, nb = a["qs"].shape[:2]
    qs = a["qs"].reshape(rows, nb, 4, 4)
    return [_f(_bits(qs[:, :, t % 4], 4 * (t // 4), 4) | _bits(a["qh"], t, 1, 4)) for t in range(8)]


def _q5_0(a: dict[str, Tensor]) -> list[Tensor]:
    d = _f(a["d"])
    return [(q - 16.0) * d for q in _q5_quants(a)]


def _q5_1(a: dict[str, Tensor]) -> list[Tensor]:
    d, m = _f(a["d"]), _f(a["m"])
    return [q * d + m for q in _q5_quants(a)]


# --- super-blocks of 256 (K-quants) ---------------------------------------------------------------------------------
# Q4_K (block_q4_K): d, dmin f16, scales u8[12] (8 6-bit scales and mins), qs u8[128]. Weight k = 64j + 32p + l is
# nibble p of qs[32j + l] in sub-block 2j + p: w = d * sc * q - dmin * m. Q5_K adds qh u8[32]: bit 2j + p of qh[l]
# is the 5th bit. Pieces (j, p) over 32 lanes.

def _kquant_scales(raw: np.ndarray, start: int) -> Arrays:
    rows, nb = raw.shape[:2]
    sc, mn = GgufQ4K.get_scale_min(_u8(raw, start, start + 12).reshape(rows * nb, 12))
    return {"sc": sc.reshape(rows, nb, 8), "mn": mn.reshape(rows, nb, 8)}


def _q4k_like(a: dict[str, Tensor], with_high_bit: bool) -> list[Tensor]:
    rows, nb = a["qs"].shape[:2]
    qs, d, dmin = a["qs"].reshape(rows, nb, 4, 32), _f(a["d"]), _f(a["dmin"])
    out = []
    for j in range(4):
        for p in range(2):
            q = _bits(qs[:, :, j], 4 * p, 4)
            if with_high_bit:
                q = q | _bits(a["qh"], 2 * j + p, 1, 4)
            s = 2 * j + p
            out.append(d * _f(a["sc"][:, :, s : s + 1]) * _f(q) - dmin * _f(a["mn"][:, :, s : s + 1]))
    return out


# Q6_K (block_q6_K): ql u8[128], qh u8[64], scales int8[16], d f16. Weight k = 128n + 32(2s + c) + 16g + l is nibble s
# of ql[64n + 32c + 16g + l] with bits 2(2s + c) of qh[32n + 16g + l] above it, scale 8n + 2(2s + c) + g:
# w = d * sc * (q - 32) (dequantize_row_q6_K). Pieces (n, 2s + c) over 32 contiguous lanes (g, l), like the other
# K-quants (docs/QUANT_TYPES.md has the timings).

def _q6_k(a: dict[str, Tensor]) -> list[Tensor]:
    rows, nb = a["qs"].shape[:2]
    ql, qh = a["qs"].reshape(rows, nb, 2, 2, 2, 16), a["qh"].reshape(rows, nb, 2, 2, 16)
    sc, d = a["sc"].reshape(rows, nb, 2, 4, 2), _f(a["d"]).reshape(rows, nb, 1, 1)
    out = []
    for n in range(2):
        for s in range(2):
            for c in range(2):
                p = 2 * s + c
                q = _bits(ql[:, :, n, c], 4 * s, 4) | _bits(qh[:, :, n], 2 * p, 2, 4)
                out.append(d * _f(sc[:, :, n, p]).reshape(rows, nb, 2, 1) * (_f(q) - 32.0))
    return out


# Q3_K (block_q3_K): hmask u8[32], qs u8[64], scales u8[12] (16 6-bit scales, offset 32), d f16. Weight
# k = 128h + 32s + 16g + l: bits 2s of qs[32h + 16g + l], bit 4h + s of hmask[16g + l] set means no -4 offset,
# scale 8h + 2s + g: w = d * (sc - 32) * (q - 4 + 4 * hbit). Pieces (h, s) over lanes (g, l).

def _q3_k_scales(raw: np.ndarray) -> np.ndarray:
    """The 16 signed scales of every Q3_K block, as dequantize_row_q3_K unpacks its 12 bytes."""
    s = raw[:, :, 96:108]
    low = np.concatenate([s[:, :, :8] & 0xF, s[:, :, :8] >> 4], axis=2)  # (rows, nb, 16)
    high = np.concatenate([(s[:, :, 8:12] >> sh) & 3 for sh in (0, 2, 4, 6)], axis=2)
    return ((low | (high << 4)).astype(np.int16) - 32).astype(np.int8)


def _q3_k(a: dict[str, Tensor]) -> list[Tensor]:
    rows, nb = a["qs"].shape[:2]
    qs, hm = a["qs"].reshape(rows, nb, 2, 2, 16), a["hmask"].reshape(rows, nb, 2, 16)
    sc, d = a["sc"].reshape(rows, nb, 2, 4, 2), _f(a["d"]).reshape(rows, nb, 1, 1)
    out = []
    for h in range(2):
        for s in range(2 * 2):
            q = _bits(qs[:, :, h], 2 * s, 2) | _bits(hm, 4 * h + s, 1, 2)
            out.append(d * _f(sc[:, :, h, s]).reshape(rows, nb, 2, 1) * (_f(q) - 4.0))
    return out


# Q2_K (block_q2_K): scales u8[16] (low nibble scale, high nibble min), qs u8[64], d, dmin f16. Weight
# k = 128h + 32s + 16g + l: bits 2s of qs[32h + 16g + l], sub-block 8h + 2s + g: w = d * sc * q - dmin * m.
# The 4-bit scales stay packed (unpacking would add 16 bytes to 84). Pieces (h, s) over 32 lanes (g, l).

def _q2_k(a: dict[str, Tensor]) -> list[Tensor]:
    rows, nb = a["qs"].shape[:2]
    qs, sc = a["qs"].reshape(rows, nb, 2, 2, 16), a["sc"].reshape(rows, nb, 2, 4, 2)
    d, dmin = _f(a["d"]).reshape(rows, nb, 1, 1), _f(a["dmin"]).reshape(rows, nb, 1, 1)
    out = []
    for h in range(2):
        for s in range(4):
            b = sc[:, :, h, s].reshape(rows, nb, 2, 1)
            out.append(d * _f(_bits(b, 0, 4)) * _f(_bits(qs[:, :, h], 2 * s, 2)) - dmin * _f(_bits(b, 4, 4)))
    return out


FORMATS: dict[T, BlockFormat] = {
    T.Q8_0: BlockFormat(32, (2, 16), (0,), lambda r: {"qs": _u8(r, 2, 34).view(np.int8), "d": _f16(r, 0)}, _q8_0),
    T.Q4_0: BlockFormat(32, (2, 16), (0,), lambda r: {"qs": _u8(r, 2, 18), "d": _f16(r, 0)}, _q4_0),
    T.Q4_1: BlockFormat(32, (2, 16), (0,), lambda r: {"qs": _u8(r, 4, 20), "d": _f16(r, 0), "m": _f16(r, 2)}, _q4_1),
    T.Q5_0: BlockFormat(32, (8, 4), (0,), lambda r: {"qs": _u8(r, 6, 22), "qh": _q5_high_bits(r, 2), "d": _f16(r, 0)},
                        _q5_0),
    T.Q5_1: BlockFormat(32, (8, 4), (0,),
                        lambda r: {"qs": _u8(r, 8, 24), "qh": _q5_high_bits(r, 4), "d": _f16(r, 0), "m": _f16(r, 2)},
                        _q5_1),
    T.Q4_K: BlockFormat(256, (4, 2, 32), (0, 1),
                        lambda r: {"qs": _u8(r, 16, 144), "d": _f16(r, 0), "dmin": _f16(r, 2), **_kquant_scales(r, 4)},
                        lambda a: _q4k_like(a, False)),
    T.Q5_K: BlockFormat(256, (4, 2, 32), (0, 1),
                        lambda r: {"qs": _u8(r, 48, 176), "qh": _u8(r, 16, 48), "d": _f16(r, 0), "dmin": _f16(r, 2),
                                   **_kquant_scales(r, 4)},
                        lambda a: _q4k_like(a, True)),
    T.Q6_K: BlockFormat(256, (2, 4, 2, 16), (0, 1),
                        lambda r: {"qs": _u8(r, 0, 128), "qh": _u8(r, 128, 192), "sc": _u8(r, 192, 208).view(np.int8),
                                   "d": _f16(r, 208)}, _q6_k),
    T.Q3_K: BlockFormat(256, (2, 4, 2, 16), (0, 1),
                        lambda r: {"qs": _u8(r, 32, 96), "hmask": _u8(r, 0, 32), "sc": _q3_k_scales(r),
                                   "d": _f16(r, 108)}, _q3_k),
    T.Q2_K: BlockFormat(256, (2, 4, 2, 16), (0, 1),
                        lambda r: {"qs": _u8(r, 16, 80), "sc": _u8(r, 0, 16), "d": _f16(r, 80), "dmin": _f16(r, 82)},
                        _q2_k),
}
# Float types kept whole (rows, in): F32 and F16 as themselves, BF16 as its raw uint16 bits.
FLOAT_TYPES = (T.F32, T.F16, T.BF16)


def float_weight(t: T, w: Tensor) -> Tensor:
    """The float32 weight of a float-typed layer; BF16 is the top half of an f32 (ggml_bf16_to_fp32)."""
    if t == T.BF16:
        return (w.cast(dtypes.uint32) << 16).bitcast(F32)
    return w.cast(F32)


def repack_float(t: T, data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A writable copy of a float weight (tinygrad refuses a read-only memory map: "buffer is not writable")."""
    arr = np.array(data, copy=True)
    return (arr.view(np.uint16) if t == T.BF16 else arr).reshape(shape)
