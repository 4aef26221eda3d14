"""Pack float tensors into GGUF block types with gguf-py and measure what each packing lost."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize, quantize

Q = GGMLQuantizationType

# The types a weight may get, cheapest first. All are standard ggml types, so llama.cpp runs the output too.
WEIGHT_TYPES = (Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.F16)


@dataclass(frozen=True)
class QuantizedTensor:
    """A tensor in its stored form: `data` is what goes in the file (uint8 blocks, float16 or float32)."""

    qtype: GGMLQuantizationType
    data: np.ndarray
    shape: tuple[int, ...]  # numpy order, (out_features, in_features) for a weight
    rel_error: float  # ||W - dequant(pack(W))|| / ||W||, Frobenius

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def bits_per_weight(qtype: GGMLQuantizationType) -> float:
    """Stored bits per element, block scales included (Q4_0: 4.5, Q4_1: 5.0, Q8_0: 8.5)."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    return 8.0 * type_size / block


def packed_nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    """Bytes `shape` takes when stored as `qtype`."""
    n = int(np.prod(shape))
    block, type_size = GGML_QUANT_SIZES[qtype]
    return n // block * type_size


def fits_blocks(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> bool:
    """Blocks run along a row (the input dimension); a row must hold a whole number of them."""
    return shape[-1] % GGML_QUANT_SIZES[qtype][0] == 0


def relative_error(w: np.ndarray, approx: np.ndarray) -> float:
    """Frobenius norm of the difference over the norm of `w` (0 for an all-zero `w` copied exactly)."""
    num = float(np.linalg.norm((w - approx).ravel()))
    den = float(np.linalg.norm(w.ravel()))
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def quantize_tensor(w: np.ndarray, qtype: GGMLQuantizationType) -> QuantizedTensor:
    """Pack `w` (float32) as `qtype` with gguf-py's reference quantizer and measure the round-trip error."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    data = quantize(w, qtype)
    approx = dequantize(data, qtype).reshape(w.shape) if qtype != Q.F32 else w
    return QuantizedTensor(qtype, data, tuple(w.shape), relative_error(w, approx))


def dequantized(w: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """`w` after a round trip through `qtype`: what a runtime will compute with."""
    if qtype == Q.F32:
        return w
    return dequantize(quantize(np.ascontiguousarray(w, dtype=np.float32), qtype), qtype).reshape(w.shape)
