"""The ONNX weight quantizer on small graphs: packing math, graph structure, and that onnxruntime and tinygrad
compute the same thing from the quantized file as numpy does from the dequantized weights."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx_test_models import conv_model, embedding_model, linear_model, ort_run, save

from edgegen.quantize.onnx_blocks import quantize_int8_channels, quantize_uint4_blocks
from edgegen.quantize.onnx_quant import ONNX_RECIPES, quantize_onnx, quantize_onnx_file
from edgegen.runtime.onnx_run import OnnxModel


def test_int8_channels_golden():
    w = np.array([[1.0, -0.5], [-127.0, 0.25], [63.5, 0.0]], np.float32)  # (K=3, N=2), channels along axis 1
    q, scale, deq = quantize_int8_channels(w, axis=1)
    np.testing.assert_array_equal(scale, np.array([1.0, 0.5 / 127], np.float32))
    np.testing.assert_array_equal(q[:, 0], [1, -127, 64])  # 63.5 rounds half to even
    assert q[0, 1] == -127 and q[2, 1] == 0
    np.testing.assert_allclose(deq, q * scale, rtol=0)


def test_int8_zero_channel_has_no_nan():
    q, scale, deq = quantize_int8_channels(np.zeros((4, 3), np.float32), axis=1)
    assert np.all(scale == 1.0) and not q.any() and not deq.any()


def test_uint4_blocks_exact_on_a_grid():
    # A block whose values sit on 16 evenly spaced levels including 0 is stored exactly.
    levels = (np.arange(16) - 5) * 0.125
    w = np.concatenate([levels, levels[::-1]]).astype(np.float32)[:, None]  # (K=32, N=1), blocks along axis 0
    codes, scale, zp, deq = quantize_uint4_blocks(w, axis=0, block_size=32)
    assert codes.dtype == ml_dtypes.uint4 and zp.dtype == ml_dtypes.uint4
    assert scale.shape == (1, 1) and zp.shape == (1, 1)
    np.testing.assert_allclose(scale, 0.125)
    assert int(zp[0, 0]) == 5
    np.testing.assert_allclose(deq, w, atol=1e-7)


def test_uint4_blocks_shapes_and_error():
    w = np.random.default_rng(1).normal(0, 1, (64, 8)).astype(np.float32)
    codes, scale, zp, deq = quantize_uint4_blocks(w, axis=0, block_size=32)
    assert codes.shape == w.shape and scale.shape == (2, 8) and zp.shape == (2, 8)
    rel = np.linalg.norm(deq - w) / np.linalg.norm(w)
    assert 0.02 < rel < 0.12  # 16 levels on Gaussian data: ~8%, never exact
    expect = (codes.astype(np.float32) - np.repeat(zp.astype(np.float32), 32, 0)) * np.repeat(scale, 32, 0)
    np.testing.assert_allclose(deq, expect, rtol=1e-6, atol=1e-7)


def _dequantized_weight(model: onnx.ModelProto, name: str) -> np.ndarray:
    """The weight the quantized graph computes with, dequantized here in numpy from its stored initializers."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == name)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    q = inits[node.input[0]].astype(np.float32)
    scale = inits[node.input[1]]
    zp = inits[node.input[2]].astype(np.float32) if len(node.input) > 2 else np.zeros_like(scale)
    axis, block = attrs["axis"], attrs.get("block_size", 0)
    if block:
        return (q - np.repeat(zp, block, axis)) * np.repeat(scale, block, axis)
    shape = [-1 if d == axis else 1 for d in range(q.ndim)]
    return (q - zp.reshape(shape)) * scale.reshape(shape)


@pytest.mark.parametrize("recipe,op,kind,axis", [
    ("w8", "MatMul", onnx.TensorProto.INT8, 1), ("w4", "MatMul", onnx.TensorProto.UINT4, 0),
    ("w8", "Gemm", onnx.TensorProto.INT8, 0), ("w4", "Gemm", onnx.TensorProto.UINT4, 1),
])
def test_linear_weights_quantized_and_run_everywhere(tmp_path, recipe, op, kind, axis):
    src = save(linear_model(64, 48, op), tmp_path / "f.onnx")
    out = tmp_path / "q.onnx"
    result = quantize_onnx_file(src, ONNX_RECIPES[recipe], out)
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert next(o.version for o in model.opset_import if o.domain == "") == 21
    (dq,) = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dq.output[0] == "W" and "W" not in {t.name for t in model.graph.initializer}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in dq.attribute}
    assert attrs["axis"] == axis and attrs.get("block_size", 0) == (32 if recipe == "w4" else 0)
    assert next(t for t in model.graph.initializer if t.name == "W_q").data_type == kind
    (w,) = result.weights
    assert w.node == "proj" and w.kind == ("uint4/block32" if recipe == "w4" else "int8/channel")
    assert w.rel_error < (0.12 if recipe == "w4" else 0.01)

    x = np.random.default_rng(2).normal(0, 1, (3, 64)).astype(np.float32)
    f = onnx.load(str(src))
    w_float = numpy_helper.to_array(next(t for t in f.graph.initializer if t.name == "W"))
    w_deq = _dequantized_weight(model, "W")
    b = numpy_helper.to_array(next(t for t in f.graph.initializer if t.name == "b"))
    expect = x @ (w_deq.T if op == "Gemm" else w_deq) + b
    np.testing.assert_allclose(ort_run(out, {"x": x}, optimize=False)[0], expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(OnnxModel.load(out).run({"x": x})["y"], expect, rtol=1e-5, atol=1e-5)
    # and the quantization changed the weight only as much as reported
    np.testing.assert_allclose(np.linalg.norm(w_deq - w_float) / np.linalg.norm(w_float), w.rel_error, rtol=1e-4)


def test_reduction_not_a_multiple_of_the_block_falls_back_to_int8(tmp_path):
    result = quantize_onnx(linear_model(40, 32), ONNX_RECIPES["w4"])
    assert [w.kind for w in result.weights] == ["int8/channel"]


def test_conv_weights(tmp_path):
    out = tmp_path / "q.onnx"
    quantize_onnx_file(save(conv_model(32, 8), tmp_path / "c.onnx"), ONNX_RECIPES["w4"], out)
    x = np.random.default_rng(3).normal(0, 1, (1, 32, 8, 8)).astype(np.float32)
    ref = ort_run(out, {"x": x}, optimize=False)[0]
    np.testing.assert_allclose(OnnxModel.load(out).run({"x": x})["y"], ref, rtol=1e-4, atol=1e-4)
    (dq,) = [n for n in onnx.load(str(out)).graph.node if n.op_type == "DequantizeLinear"]
    assert {a.name: a.i for a in dq.attribute} == {"axis": 1, "block_size": 32}  # blocks along input channels


def test_embedding_table_stays_int8_in_w4(tmp_path):
    out = tmp_path / "q.onnx"
    result = quantize_onnx_file(save(embedding_model(300, 64, 32), tmp_path / "e.onnx"), ONNX_RECIPES["w4"], out)
    assert {w.name: w.kind for w in result.weights} == {"table": "int8/channel", "W": "uint4/block32"}
    ids = np.array([[0, 5, 299, 5]], np.int64)
    ref = ort_run(out, {"ids": ids}, optimize=False)[0]
    np.testing.assert_allclose(OnnxModel.load(out).run({"ids": ids})["y"], ref, rtol=1e-5, atol=1e-5)


def test_old_opset_is_converted_to_21(tmp_path):
    result = quantize_onnx(linear_model(64, 8, opset=13), ONNX_RECIPES["w8"])
    assert next(o.version for o in result.model.opset_import if o.domain == "") == 21
    assert result.model.ir_version >= 10
