"""Linear layers over packed GGML blocks whose dequantization happens inside the tinygrad kernel.

A GGML block of 32 weights is repacked once at load into separate arrays of the same total size, so a kernel
reads quants and scales with plain strided loads instead of unpacking a 18/20/34-byte record:

  Q8_0  (ggml-common.h block_q8_0): d f16, qs int8[32]          -> w = d * q
  Q4_0  (block_q4_0):               d f16, qs u8[16] (2 nibbles) -> w = d * (q - 8)
  Q4_1  (block_q4_1):               d f16, m f16, qs u8[16]      -> w = d * q + m
Nibble order (ggml-quants.c dequantize_row_q4_0): byte j holds weight j in its low nibble and weight j + 16 in
its high nibble. Scales stay f16 in memory and are widened in the kernel.

The decode matvec sums over blocks first and over the 16/32 lanes second (two reductions): measured here that
keeps partial sums in vector registers and beat a single flat reduction (docs/TINYGRAD.md, and a spike for this
module: 109 ms -> 78 ms per 40 Q4_1 matvecs with a loaded machine).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T
from tinygrad import Tensor, dtypes

from edgegen.runtime.errors import ArtifactError
from edgegen.runtime.model_file import TensorInfo

BLOCK = 32
# bytes per block of 32 weights (GGML_QUANT_SIZES)
BLOCK_BYTES = {T.Q8_0: 34, T.Q4_0: 18, T.Q4_1: 20}


def _f16(raw: np.ndarray, start: int) -> np.ndarray:
    """The f16 stored at byte `start` of every block: raw (rows, nb, block_bytes) uint8 -> (rows, nb) float16."""
    return np.ascontiguousarray(raw[:, :, start : start + 2]).view(np.float16)[..., 0]


@dataclass
class PackedLinear:
    """y = x @ W.T with W kept as packed blocks on the device. Call with x of shape (..., in_features)."""

    name: str  # the GGUF tensor name, or names joined by "+" for row-concatenated tensors
    ggml_type: T
    out_features: int
    in_features: int
    qs: Tensor  # Q8_0: int8 (out, nb, 32); Q4_x: uint8 (out, nb, 16); F32/F16: the weight (out, in)
    d: Tensor | None = None  # f16 (out, nb)
    m: Tensor | None = None  # f16 (out, nb), Q4_1 only

    @property
    def size_bytes(self) -> int:
        return sum(t.nbytes() for t in (self.qs, self.d, self.m) if t is not None)

    def _halves(self) -> tuple[Tensor, Tensor]:
        """Dequantized weights of the first and second 16 inputs of every block: two (out, nb, 16) expressions.

        The one place each block format's formula lives; the decode matvec multiplies the halves by the matching
        input halves, which measured faster than one stacked (out, nb, 32) operand.
        """
        out, nb = self.out_features, self.in_features // BLOCK
        d = self.d.cast(dtypes.float32).reshape(out, nb, 1)
        if self.ggml_type == T.Q8_0:
            q = self.qs.reshape(out, nb, 2, 16).cast(dtypes.float32)
            return q[:, :, 0, :] * d, q[:, :, 1, :] * d
        lo, hi = (self.qs & 0xF).cast(dtypes.float32), (self.qs >> 4).cast(dtypes.float32)
        if self.ggml_type == T.Q4_0:
            return (lo - 8.0) * d, (hi - 8.0) * d
        m = self.m.cast(dtypes.float32).reshape(out, nb, 1)
        return lo * d + m, hi * d + m

    def weight(self) -> Tensor:
        """The float weight (out, in) as a lazy expression; only materialized if a caller realizes it."""
        if self.ggml_type in (T.F32, T.F16):
            return self.qs.cast(dtypes.float32)
        return Tensor.stack(*self._halves(), dim=2).reshape(self.out_features, self.in_features)

    def __call__(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        rows = int(np.prod(lead)) if lead else 1
        if rows != 1:
            # Prefill / batches: dequantize once into a temporary float buffer, then an ordinary matmul. Fused
            # into the matmul, the dequantization was redone for every tile of rows (2.8 s vs 1.7 s for a 64-token
            # prefill, measured). The model realizes layer by layer in this mode, so only one layer's temporaries
            # are alive at a time; decode (rows == 1) never takes this path.
            return x @ self.weight().contiguous().T
        out = self.out_features
        if self.ggml_type in (T.F32, T.F16):
            lanes = 16 if self.in_features % 16 == 0 else 1
            w = self.qs.cast(dtypes.float32).reshape(out, self.in_features // lanes, lanes)
            y = (w * x.reshape(1, self.in_features // lanes, lanes)).sum(axis=1).sum(axis=1)
            return y.reshape(*lead, out)
        # Sum over blocks first, then over the 16 lanes (see the module docstring). For Q8_0 the (2, 16) split of
        # its 32 lanes also beat the flat form, which ran at 0.75 GB/s on the output head.
        xg = x.reshape(1, self.in_features // BLOCK, 2, 16)
        w_lo, w_hi = self._halves()
        t = w_lo * xg[:, :, 0, :] + w_hi * xg[:, :, 1, :]
        return t.sum(axis=1).sum(axis=1).reshape(*lead, out)


def _packed_arrays(info: TensorInfo) -> list[np.ndarray]:
    """The numpy arrays a layer keeps for one tensor: [weight] for floats, [qs, d] or [qs, d, m] for blocks."""
    if len(info.shape) != 2:
        raise ArtifactError(f"tensor {info.name}: expected a 2-D weight, got shape {info.shape}")
    out, inn = info.shape
    t = info.ggml_type
    if t in (T.F32, T.F16):
        # a writable copy: tinygrad refuses a read-only memory map ("underlying buffer is not writable")
        return [np.array(info.data, copy=True).reshape(out, inn)]
    if t not in BLOCK_BYTES:
        raise ArtifactError(f"tensor {info.name}: type {t.name} cannot be used as a linear layer")
    if inn % BLOCK:
        raise ArtifactError(f"tensor {info.name}: input size {inn} is not a multiple of the block size {BLOCK}")
    raw = np.asarray(info.data).reshape(out, inn // BLOCK, BLOCK_BYTES[t])
    if t == T.Q8_0:
        return [np.ascontiguousarray(raw[:, :, 2:]).view(np.int8), _f16(raw, 0)]
    if t == T.Q4_0:
        return [np.ascontiguousarray(raw[:, :, 2:]), _f16(raw, 0)]
    return [np.ascontiguousarray(raw[:, :, 4:]), _f16(raw, 0), _f16(raw, 2)]


def pack_linear(infos: TensorInfo | list[TensorInfo], device: str | None = None) -> PackedLinear:
    """Repack GGUF weight matrices for the device. Rows stay packed; only the block layout changes.

    Several tensors of one type and input size (Q, K and V; gate and up) become one layer with their rows
    concatenated, so one kernel computes all of them: fewer kernels per decode step, each costing a fixed
    dispatch overhead (~90 us measured on this CPU backend).
    """
    infos = [infos] if isinstance(infos, TensorInfo) else list(infos)
    first = infos[0]
    if any(i.ggml_type != first.ggml_type or i.shape[1:] != first.shape[1:] for i in infos):
        raise ArtifactError(f"cannot concatenate {[i.name for i in infos]}: types or input sizes differ")
    parts = [_packed_arrays(i) for i in infos]
    arrays = [np.concatenate(group) if len(infos) > 1 else group[0] for group in zip(*parts)]
    tensors = [Tensor(a, device=device).realize() for a in arrays]
    out = sum(i.shape[0] for i in infos)
    return PackedLinear("+".join(i.name for i in infos), first.ggml_type, out, first.shape[1], *tensors)


def embedding_rows(info: TensorInfo, token_ids: list[int] | np.ndarray) -> np.ndarray:
    """Float rows of an embedding table for the given tokens, dequantized on the host from the memory map.

    Looking the rows up on the host reads 2 KB per token; in a tinygrad kernel a gather by a token tensor
    becomes a one-hot reduction over the whole 49152-row table (30 MB read per token).
    """
    from gguf.quants import dequantize

    ids = np.asarray(token_ids, dtype=np.int64)
    rows = np.asarray(info.data)[ids]
    return dequantize(rows, info.ggml_type).reshape(len(ids), info.shape[1]).astype(np.float32)
