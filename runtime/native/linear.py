"""Linear layers through the hand-written kernels: quantize the activations once, then one integer-dot matmul.

Two kernels per layer inside the tinygrad graph (runtime.tinygrad_seam.c_kernel): the activation rows quantized to
int8 blocks of 32 (as llama.cpp's CPU path does, so the same arithmetic), then y = x . W^T reading W as the GGUF
file's own blocks. Decode (one row) and prefill (a bucket of rows) use the same kernels with the row count as a
constant; output rows are split over `parts` core_id partitions, which runtime.native.runner runs on threads.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T
from tinygrad import Device, Tensor, UOp, dtypes

from edgegen.runtime.native.source import (
    ACT_BLOCK,
    ACT_BLOCK_BYTES,
    KERNEL_TYPES,
    attention_kernel,
    matmul_kernel,
    quantize_kernel,
)
from edgegen.runtime.tinygrad_seam.kernels import c_kernel, variable_spec


def on_cpu(device: str | None) -> bool:
    """Whether `device` (None: tinygrad's default) is the CPU backend, the one that compiles these kernels."""
    name = Device.canonicalize(device) if device else Device.DEFAULT
    return name.split(":")[0] == "CPU"


def supports(ggml_type: T, in_features: int, device: str | None) -> bool:
    """Whether a (type, width) layer on `device` can use the hand-written kernels (CPU, a kernel type, 32 | width)."""
    return ggml_type in KERNEL_TYPES and in_features % ACT_BLOCK == 0 and on_cpu(device)


@dataclass(frozen=True)
class QuantizedRows:
    """Activation rows quantized for the matmul kernels (eg_q8x blocks): `rows` rows of `k` values that stand for a
    float tensor of shape (*lead, k)."""

    packed: Tensor
    lead: tuple[int, ...]
    k: int


def _quantized(x: Tensor, k: int, inputs: tuple[Tensor, ...], parts: int, pre: str = "",
               eps: float = 0.0) -> QuantizedRows:
    """Quantize the rows of x (..., width) after the row operation `pre` (source.PRE_OPS), k values per result row."""
    lead = tuple(int(s) for s in x.shape[:-1])
    rows = int(np.prod(lead)) if lead else 1
    qparts = max(1, min(parts, rows // 8))  # a row is a few hundred ns to quantize: split only real batches
    flat = x.reshape(rows, int(x.shape[-1])).cast(dtypes.float32).contiguous()
    name, src = quantize_kernel(rows, k, qparts, pre=pre, eps=eps)
    packed = Tensor.empty(rows * (k // ACT_BLOCK) * ACT_BLOCK_BYTES, dtype=dtypes.uint8, device=x.device)
    return QuantizedRows(c_kernel(name, src, packed, (flat, *inputs), qparts), lead, k)


def quantize(x: Tensor, parts: int) -> QuantizedRows:
    """x (..., k) quantized as llama.cpp's CPU path quantizes a matmul's input."""
    return _quantized(x, int(x.shape[-1]), (), parts)


def quantize_rms_normed(x: Tensor, weight: Tensor, eps: float, parts: int) -> QuantizedRows:
    """RMSNorm(x) * weight, quantized, in one kernel (llama.cpp's arithmetic: rms_norm, then mul)."""
    return _quantized(x, int(x.shape[-1]), (weight.cast(dtypes.float32).contiguous(),), parts, "rms", eps)


def quantize_gated(gate_up: Tensor, activation: str, parts: int) -> QuantizedRows:
    """activation(gate) * up of gate+up rows (..., 2 * hidden), quantized, in one kernel; activation "silu" or
    "gelu_tanh"."""
    if activation not in ("silu", "gelu_tanh"):
        raise ValueError(f"no fused kernel for the activation {activation!r}")
    return _quantized(gate_up, int(gate_up.shape[-1]) // 2, (), parts, activation)


def matmul(x: Tensor | QuantizedRows, weights: Tensor, ggml_type: T, out_features: int, parts: int,
           layout: str = "rows") -> Tensor:
    """x (..., in) @ W.T with W the GGUF blocks of `ggml_type` in `weights` (uint8): out rows back to back as the
    file stores them (layout "rows"), or 8 rows interleaved (layout "x8", runtime.native.layout). x is a float
    tensor, quantized here, or rows quantized already (quantize, quantize_rms_normed, quantize_gated)."""
    xq = x if isinstance(x, QuantizedRows) else quantize(x, parts)
    rows = int(np.prod(xq.lead)) if xq.lead else 1
    name, src = matmul_kernel(ggml_type, rows, out_features, xq.k, parts, layout=layout)
    y = c_kernel(name, src, Tensor.empty(rows, out_features, device=xq.packed.device), (xq.packed, weights), parts)
    return y.reshape(*xq.lead, out_features)


@dataclass
class NativeLinear:
    """y = x @ W.T through the hand-written CPU kernels, W the GGUF blocks of `ggml_type` as the file stores them
    (layout "rows") or 8 rows interleaved (layout "x8", runtime.native.layout), in one uint8 tensor. Declares the
    fused forms of models.llama.Linear: the RMSNorm or the FFN gate folded into the quantization of the input."""

    name: str  # the GGUF tensor name, or names joined by "+" for row-concatenated tensors
    ggml_type: T
    out_features: int
    in_features: int
    packed: Tensor
    layout: str  # "rows" or "x8"
    parts: int  # output rows split into this many partitions (KernelPlan.parts)

    @property
    def size_bytes(self) -> int:
        return self.packed.nbytes()

    def __call__(self, x: Tensor | QuantizedRows) -> Tensor:
        return matmul(x, self.packed, self.ggml_type, self.out_features, self.parts, self.layout)

    def normed(self, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        """self(rms_norm(x, weight, eps)), the norm in the activation quantization's kernel."""
        return self(quantize_rms_normed(x, weight, eps, self.parts))

    def gated(self, gate_up: Tensor, activation: str) -> Tensor:
        """self(activation(gate) * up) of gate+up rows (..., 2 * in_features), the gate in the quantization."""
        return self(quantize_gated(gate_up, activation, self.parts))


def attention(q: Tensor, cache: Tensor, start_pos: int | UOp, window: int, parts: int) -> Tensor:
    """Causal attention of q (1, T, heads, head_dim) over the KV cache (2, 1, kv_heads, context, head_dim) whose
    rows up to start_pos + T - 1 are written; returns (1, T, heads, head_dim). One kernel per layer instead of
    tinygrad's score, softmax and weighted-sum kernels."""
    _, t, heads, head_dim = (int(s) for s in q.shape)
    _, _, kv_heads, context, _ = (int(s) for s in cache.shape)
    variables: tuple[tuple[str, int, int], ...] = ()
    start: int | None
    if isinstance(start_pos, int):
        start = start_pos
    else:
        variables, start = (variable_spec(start_pos),), None
    tparts = max(1, min(parts, t * heads)) if t > 1 else 1  # one query: ~12 us per layer, not worth a barrier
    name, src = attention_kernel(t, heads, kv_heads, head_dim, context, window, float(head_dim) ** -0.5, start,
                                 tparts)
    out = Tensor.empty(1, t, heads, head_dim, device=q.device)
    return c_kernel(name, src, out, (q.contiguous(), cache), tparts, variables)
