"""Quantize an ONNX model's weights to standard ONNX int8 / int4 so that any ONNX runtime can run the file.

Each quantized weight initializer `W` becomes a packed initializer `W_q` plus a float scale `W_scale`, and one
`DequantizeLinear` node at the top of the graph that outputs the original name `W`, so every consumer is untouched:

- int8, one scale per output channel (`axis` = the output-channel axis), symmetric, values in [-127, 127];
- int4 (ONNX UINT4, two values per byte), one scale and one uint4 zero point per block of 32 along the reduction
  axis (`DequantizeLinear(axis=reduction axis, block_size=32)`, which needs opset 21:
  https://onnx.ai/onnx/operators/onnx__DequantizeLinear.html). Embedding tables (Gather) stay int8 per row.

The graph work uses the `onnx` library (load, version conversion to opset 21, checker, save); numpy does the math.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgegen.quantize.blocks import relative_error
from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.onnx_blocks import quantize_int8_channels, quantize_uint4_blocks
from edgegen.runtime.onnx_format import MIN_OPSET

log = logging.getLogger(__name__)

QUANT_OPSET = 21  # DequantizeLinear with block_size, INT4 tensors
QUANT_IR_VERSION = 10  # INT4 / UINT4 element types need IR version 10
BLOCK_SIZE = 32
# Tables and weights smaller than this stay float: their bytes do not matter and biases/norms live there.
MIN_ELEMENTS = 1024
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv", "Gather")


@dataclass(frozen=True)
class OnnxRecipe:
    """Bits for the weights of MatMul/Gemm/Conv nodes and for the tables that Gather nodes index."""

    name: str
    description: str
    matmul_bits: int
    gather_bits: int = 8


ONNX_RECIPES: dict[str, OnnxRecipe] = {
    r.name: r for r in (
        OnnxRecipe("w8", "int8 weights, one scale per output channel; int8 embedding tables", 8),
        OnnxRecipe("w4", "int4 weights in blocks of 32 along the reduction axis; int8 embedding tables", 4),
    )
}


def get_onnx_recipe(name: str) -> OnnxRecipe:
    if name not in ONNX_RECIPES:
        raise QuantizeError(f"recipe {name!r} does not apply to ONNX models: expected one of {', '.join(ONNX_RECIPES)}")
    return ONNX_RECIPES[name]


@dataclass(frozen=True)
class QuantizedWeight:
    """What happened to one weight: where it is used, its packed format and the error the packing cost."""

    name: str
    node: str  # the first consuming node's name (op type if unnamed)
    shape: tuple[int, ...]
    kind: str  # "int8/channel" or "uint4/block32"
    rel_error: float  # ||dequant(W_q) - W|| / ||W||


@dataclass
class OnnxQuantResult:
    model: onnx.ModelProto
    weights: list[QuantizedWeight] = field(default_factory=list)
    kept_float: list[tuple[str, str]] = field(default_factory=list)  # (initializer, why)


def is_onnx_file(path: str | Path) -> bool:
    """True for a `.onnx` name; the caller then gets a clear error if the content is not ONNX."""
    return Path(path).suffix.lower() == ".onnx"


def load_onnx_model(path: str | Path) -> onnx.ModelProto:
    """Parse and check an ONNX file; QuantizeError names what is wrong (missing, not ONNX, opset too old)."""
    p = Path(path)
    if not p.is_file():
        raise QuantizeError(f"ONNX file {str(p)!r} does not exist")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends: the bytes are not a ModelProto
        raise QuantizeError(f"{str(p)!r} is not an ONNX file (protobuf parse failed: {e})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise QuantizeError(f"{str(p)!r} is not an ONNX model (no graph nodes)")
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise QuantizeError(f"{str(p)!r} uses ONNX opset {opset}, older than {MIN_OPSET}, the oldest edgegen reads: "
                            f"re-export it with opset {MIN_OPSET} or newer")
    return model


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


# (weight input index, output-channel axis, reduction axis) of a node that consumes a weight, or None.
def _weight_axes(node: onnx.NodeProto, ndim: int) -> tuple[int, int, int] | None:
    if node.op_type == "MatMul" and ndim == 2:
        return 1, 1, 0  # B is (K, N)
    if node.op_type == "Gemm" and ndim == 2:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return (1, 0, 1) if trans_b else (1, 1, 0)
    if node.op_type == "Conv" and ndim >= 3:
        return 1, 0, 1  # W is (M, C/group, k...): blocks along input channels
    return None


def quantize_onnx(model: onnx.ModelProto, recipe: OnnxRecipe,
                  track: Callable[[list, str], Iterable] = lambda it, desc: it) -> OnnxQuantResult:
    """A new opset-21 model with the weights of `recipe` packed; the input model is not changed."""
    model = _to_opset(model, QUANT_OPSET)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in inits:
                consumers.setdefault(name, []).append((node, i))
    graph_outputs = {o.name for o in graph.output}
    result = OnnxQuantResult(model)
    dq_nodes, new_inits = [], []
    for name in track(list(consumers), "quantizing"):
        plan = _plan(inits[name], consumers[name], recipe, name in graph_outputs)
        if isinstance(plan, str):
            if plan:
                result.kept_float.append((name, plan))
            continue
        bits, axis = plan
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        stored: dict[str, np.ndarray] = {}  # filled in initializer order: q, scale[, zero_point]
        attrs: dict[str, int]
        if bits == 4:
            stored["q"], stored["scale"], stored["zero_point"], deq = quantize_uint4_blocks(w, axis, BLOCK_SIZE)
            attrs, kind = {"axis": axis, "block_size": BLOCK_SIZE}, f"uint4/block{BLOCK_SIZE}"
        else:
            stored["q"], stored["scale"], deq = quantize_int8_channels(w, axis)
            attrs, kind = {"axis": axis}, "int8/channel"
        new_inits += [numpy_helper.from_array(a, f"{name}_{part}") for part, a in stored.items()]
        dq_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_{part}" for part in stored], [name],
                                         name=f"{name}_dequantize", **attrs))  # type: ignore[arg-type]
        node = consumers[name][0][0]
        result.weights.append(QuantizedWeight(name, node.name or node.op_type, tuple(w.shape), kind,
                                              relative_error(w, deq)))
    done = {w.name for w in result.weights}
    kept = [t for t in graph.initializer if t.name not in done]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    # Older exporters list initializers among the graph inputs too; a replaced one must go from there as well.
    inputs = [i for i in graph.input if i.name not in done]
    del graph.input[:]
    graph.input.extend(inputs)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(dq_nodes + nodes)
    model.ir_version = max(model.ir_version, QUANT_IR_VERSION)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise QuantizeError(f"the quantized graph does not pass the ONNX checker: {e}") from None
    return result


def _plan(init: onnx.TensorProto, uses: list[tuple[onnx.NodeProto, int]], recipe: OnnxRecipe,
          is_output: bool) -> tuple[int, int] | str:
    """(bits, DequantizeLinear axis) for a weight, or the reason it stays float ('' for nothing to report)."""
    if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
        return ""
    dims = tuple(init.dims)
    if int(np.prod(dims)) < MIN_ELEMENTS or is_output:
        return ""
    node, index = uses[0]
    if not any(n.op_type in QUANTIZED_OPS for n, _ in uses):
        return ""  # a bias, a norm's scale, a position table read by Slice: not a weight this recipe packs
    if node.op_type == "Gather" and index == 0 and len(dims) == 2:
        kinds = {(n.op_type, i) for n, i in uses}
        if kinds != {("Gather", 0)} or any(_attr(n, "axis", 0) != 0 for n, _ in uses):
            return "a Gather table that is also used otherwise"
        return recipe.gather_bits, 0  # one scale per row (token)
    axes = {(_weight_axes(n, len(dims)), i) for n, i in uses}
    if len(axes) != 1:
        return f"used by {len(uses)} nodes in different roles"
    (found, index_used), = axes
    if found is None or found[0] != index_used:
        return f"input {index} of {node.op_type} node {node.name!r} is not a weight edgegen quantizes"
    _, channel_axis, reduction_axis = found
    if recipe.matmul_bits == 4:
        if dims[reduction_axis] % BLOCK_SIZE == 0:
            return 4, reduction_axis
        log.info("%s: reduction dim %d is not a multiple of %d, int8 instead", init.name, dims[reduction_axis],
                 BLOCK_SIZE)
    return 8, channel_axis


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _to_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    if default_opset(model) == opset:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    if default_opset(model) > opset:
        raise QuantizeError(f"the model uses opset {default_opset(model)}; edgegen writes opset {opset}")
    try:
        return onnx.version_converter.convert_version(model, opset)
    except Exception as e:  # noqa: BLE001 - the converter raises many kinds; each means "cannot convert"
        raise QuantizeError(f"cannot convert the model from opset {default_opset(model)} to {opset}: {e}") from None


def quantize_onnx_file(source: str | Path, recipe: OnnxRecipe, output: str | Path,
                       track: Callable[[list, str], Iterable] = lambda it, desc: it) -> OnnxQuantResult:
    """Load, quantize and save; returns the per-weight report."""
    result = quantize_onnx(load_onnx_model(source), recipe, track)
    out = Path(output)
    tmp = out.with_name(f".{out.name}.tmp")  # a failed write leaves no half file under the real name
    try:
        onnx.save(result.model, str(tmp))
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise QuantizeError(f"cannot write {str(output)!r}: {e}") from None
    return result


def format_onnx_summary(result: OnnxQuantResult, source_bytes: int, output_bytes: int) -> str:
    """A few lines: how many weights of each kind, their worst error, and the sizes."""
    lines = []
    for kind in sorted({w.kind for w in result.weights}):
        ws = [w for w in result.weights if w.kind == kind]
        worst = max(ws, key=lambda w: w.rel_error)
        lines.append(f"{kind}: {len(ws)} weights, relative error mean {np.mean([w.rel_error for w in ws]):.4f}, "
                     f"worst {worst.rel_error:.4f} ({worst.name})")
    for name, why in result.kept_float:
        lines.append(f"kept float: {name} ({why})")
    lines.append(f"size {source_bytes / 1e6:.2f} MB -> {output_bytes / 1e6:.2f} MB "
                 f"({output_bytes / max(source_bytes, 1):.2f}x)")
    return "\n".join(lines)
