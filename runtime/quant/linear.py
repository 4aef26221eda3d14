"""Linear layers over packed GGML blocks whose dequantization happens inside the tinygrad kernel.

The decode matvec sums over blocks first and over a block's lanes second (two reductions): that keeps partial sums
in vector registers and beats a single flat reduction (docs/TINYGRAD.md, docs/MEASUREMENTS.md). Block formats live
in `formats.py`; timings per type are in docs/QUANT_TYPES.md. The hand-written CPU kernels' layer is
runtime.native.linear.NativeLinear; pack_layer picks one of the two.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from gguf import GGMLQuantizationType as T
from tinygrad import Tensor

from edgegen.models.llama import Unfused
from edgegen.runtime.artifact.reader import TensorInfo
from edgegen.runtime.errors import ArtifactError
from edgegen.runtime.quant.formats import FLOAT_TYPES, FORMATS, float_weight, repack_float, type_size
from edgegen.runtime.tinygrad_seam import device_bytes, device_tensor

if TYPE_CHECKING:
    from edgegen.runtime.native.linear import NativeLinear
    from edgegen.runtime.native.options import KernelPlan

BLOCK = 32  # weights per block of the 32-weight types (Q8_0, Q4_x, Q5_x); K-quants use super-blocks of 256


@dataclass
class PackedLinear(Unfused):  # tinygrad's kernels have no fused forms (models.llama.Linear)
    """y = x @ W.T with W kept as packed blocks on the device. Call with x of shape (..., in_features)."""

    name: str  # the GGUF tensor name, or names joined by "+" for row-concatenated tensors
    ggml_type: T
    out_features: int
    in_features: int
    # per block format (formats.FORMATS): quants "qs" and scales, each (out, nb, ...); float types: "qs" (out, in)
    arrays: dict[str, Tensor] = field(repr=False)

    @property
    def qs(self) -> Tensor:
        return self.arrays["qs"]

    @property
    def d(self) -> Tensor | None:
        return self.arrays.get("d")

    @property
    def m(self) -> Tensor | None:
        return self.arrays.get("m")

    @property
    def size_bytes(self) -> int:
        return sum(t.nbytes() for t in self.arrays.values())

    def _pieces(self) -> list[tuple[Tensor, tuple]]:
        """(weight piece, index of its inputs in the block view) for every piece of the block format."""
        fmt = FORMATS[self.ggml_type]
        ranges = [range(fmt.view[a]) for a in fmt.piece_axes]
        idx = []
        for at in itertools.product(*ranges):
            pos = dict(zip(fmt.piece_axes, at))
            idx.append((slice(None), slice(None), *(pos.get(a, slice(None)) for a in range(len(fmt.view)))))
        return list(zip(fmt.pieces(self.arrays), idx))

    def weight(self) -> Tensor:
        """The float weight (out, in) as a lazy expression; only materialized if a caller realizes it."""
        if self.ggml_type in FLOAT_TYPES:
            return float_weight(self.ggml_type, self.qs)
        fmt = FORMATS[self.ggml_type]
        out, nb = self.out_features, self.in_features // fmt.block
        grid = [fmt.view[a] for a in fmt.piece_axes] + [fmt.view[a] for a in fmt.lane_axes]
        w = Tensor.stack(*(p for p, _ in self._pieces()), dim=2).reshape(out, nb, *grid)
        order = list(fmt.piece_axes) + list(fmt.lane_axes)  # the view axis each stacked axis holds
        w = w.permute(0, 1, *(2 + order.index(a) for a in range(len(fmt.view))))
        return w.reshape(out, self.in_features)

    def __call__(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        if any(not isinstance(d, int) for d in lead) or int(np.prod(lead)) != 1:  # type: ignore[arg-type]
            # (a symbolic token count, benchmarks/bench_prefill_shapes.py, counts as a batch)
            # Prefill / batches: dequantize once into a temporary float buffer, then an ordinary matmul. Fused
            # into the matmul, the dequantization is redone for every tile of rows (docs/MEASUREMENTS.md). The model
            # realizes layer by layer in this mode, so only one layer's temporaries
            # are alive at a time; decode (rows == 1) never takes this path.
            return x @ self.weight().contiguous().T
        out = self.out_features
        if self.ggml_type in FLOAT_TYPES:
            lanes = 16 if self.in_features % 16 == 0 else 1
            w = float_weight(self.ggml_type, self.qs).reshape(out, self.in_features // lanes, lanes)
            y = (w * x.reshape(1, self.in_features // lanes, lanes)).sum(axis=1).sum(axis=1)
            return y.reshape(*lead, out)
        # Sum over blocks first, then over the lanes (see the module docstring); each piece multiplies the inputs
        # at its place in the block. For Q8_0 the (2, 16) split of its 32 lanes also beat the flat form, which ran at
        # 0.75 GB/s on the output head.
        fmt = FORMATS[self.ggml_type]
        xb = x.reshape(1, self.in_features // fmt.block, *fmt.view)
        terms = [w * xb[at] for w, at in self._pieces()]
        t = terms[0]
        for term in terms[1:]:
            t = t + term
        t = t.sum(axis=1)
        return t.reshape(out, -1).sum(axis=1).reshape(*lead, out)


def _packed_arrays(info: TensorInfo) -> dict[str, np.ndarray]:
    """The numpy arrays a layer keeps for one tensor, by name: {"qs": weight} for floats, quants and scales else."""
    if len(info.shape) != 2:
        raise ArtifactError(f"tensor {info.name}: expected a 2-D weight, got shape {info.shape}")
    out, inn = info.shape
    t = info.ggml_type
    if t in FLOAT_TYPES:
        return {"qs": repack_float(t, info.data, (out, inn))}
    if t not in FORMATS:
        raise ArtifactError(f"tensor {info.name}: type {t.name} cannot be used as a linear layer "
                            f"(supported: {', '.join(x.name for x in (*FLOAT_TYPES, *FORMATS))})")
    block = FORMATS[t].block
    if inn % block:
        raise ArtifactError(f"tensor {info.name}: input size {inn} is not a multiple of the {t.name} block size "
                            f"{block}")
    raw = np.asarray(info.data).reshape(out, inn // block, type_size(t))
    return FORMATS[t].repack(raw)


def pack_layer(infos: TensorInfo | list[TensorInfo], device: str | None = None, plan: KernelPlan | None = None,
               release: Callable[[np.ndarray], None] | None = None) -> PackedLinear | NativeLinear:
    """A layer for the kernels `plan` names: a runtime.native.linear.NativeLinear where the hand-written kernels
    apply (runtime.native.linear.supports: the GGUF blocks kept exactly as stored, or 8 rows interleaved), else
    pack_linear's layer for tinygrad's kernels. Several tensors become one layer as in pack_linear.

    release(rows): called with parts of the tensors' data once they are on the device (ModelFile.release_span)."""
    infos = [infos] if isinstance(infos, TensorInfo) else list(infos)
    first = infos[0]
    _check_group(infos)
    if plan is not None and plan.native:
        from edgegen.runtime.native.layout import interleave_pieces, x8_supported
        from edgegen.runtime.native.linear import NativeLinear, supports

        if supports(first.ggml_type, first.shape[1], device):
            pieces = [np.asarray(i.data).reshape(-1).view(np.uint8) for i in infos]
            # one tensor: straight from the file's memory map into the device buffer, no host copy
            raw = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
            out = sum(i.shape[0] for i in infos)
            name = "+".join(i.name for i in infos)
            if x8_supported(first.ggml_type, out):  # rewritten piece by piece into the device buffer
                packed = device_bytes(raw.nbytes, interleave_pieces(raw, first.ggml_type, out, release), device)
                return NativeLinear(name, first.ggml_type, out, first.shape[1], packed, "x8", plan.parts)
            return NativeLinear(name, first.ggml_type, out, first.shape[1], device_tensor(raw, device), "rows",
                                plan.parts)
    return pack_linear(infos, device)


def _check_group(infos: list[TensorInfo]) -> None:
    first = infos[0]
    if any(i.ggml_type != first.ggml_type or i.shape[1:] != first.shape[1:] for i in infos):
        raise ArtifactError(f"cannot concatenate {[i.name for i in infos]}: types or input sizes differ")


def pack_linear(infos: TensorInfo | list[TensorInfo], device: str | None = None) -> PackedLinear:
    """Repack GGUF weight matrices for tinygrad's kernels on the device. Rows stay packed; only the block layout
    changes.

    Several tensors of one type and input size (Q, K and V; gate and up) become one layer with their rows
    concatenated, so one kernel computes all of them: fewer kernels per decode step, each costing a fixed
    dispatch overhead (docs/MEASUREMENTS.md).
    """
    infos = [infos] if isinstance(infos, TensorInfo) else list(infos)
    first = infos[0]
    _check_group(infos)
    parts = [_packed_arrays(i) for i in infos]
    arrays = {k: np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]}
    tensors = {k: Tensor(a, device=device).realize() for k, a in arrays.items()}
    out = sum(i.shape[0] for i in infos)
    return PackedLinear("+".join(i.name for i in infos), first.ggml_type, out, first.shape[1], tensors)


def embedding_rows(info: TensorInfo, token_ids: list[int] | np.ndarray) -> np.ndarray:
    """Float rows of an embedding table for the given tokens, dequantized on the host from the memory map.

    Looking the rows up on the host reads 2 KB per token; in a tinygrad kernel a gather by a token tensor
    becomes a one-hot reduction over the whole 49152-row table (30 MB read per token).
    """
    from gguf.quants import dequantize

    ids = np.asarray(token_ids, dtype=np.int64)
    rows = np.asarray(info.data)[ids]
    return dequantize(rows, info.ggml_type).reshape(len(ids), info.shape[1]).astype(np.float32)
