"""edgegen's additions to tinygrad's ONNX runner: MatMulNBits, 4-bit tensors, one compiled graph per input shape."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_test_models import embedding_model, float_input, linear_model, model_from, ort_run, save

from edgegen.runtime.onnx_run import OnnxModel


@pytest.mark.parametrize("symmetric", [False, True])
def test_matmul_nbits_matches_onnxruntime(tmp_path, symmetric):
    """onnxruntime's own int4 format (com.microsoft::MatMulNBits), which tinygrad's runner lacks, runs in edgegen."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(linear_model(96, 40, opset=21), bits=4, block_size=32, is_symmetric=symmetric)
    q.process()
    path = tmp_path / "nbits.onnx"
    onnx.save(q.model.model, str(path))
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "MatMulNBits" in ops and "MatMul" not in ops
    x = np.random.default_rng(0).normal(0, 1, (5, 96)).astype(np.float32)
    ref = ort_run(path, {"x": x}, optimize=False)[0]
    np.testing.assert_allclose(OnnxModel.load(path).run({"x": x})["y"], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("elem,values", [
    (TensorProto.INT4, [-8, 7, 3, -1, 0, 5, -6]),  # odd count: the last byte is half used
    (TensorProto.UINT4, [0, 15, 9, 8, 1, 2, 7]),
])
def test_4bit_initializers_unpack(tmp_path, elem, values):
    """INT4 / UINT4 tensors (types 22 / 21), which tinygrad 0.14's parser rejects, are read as ONNX packs them."""
    t = helper.make_tensor("c", elem, [7], values)
    nodes = [helper.make_node("Cast", ["c"], ["cf"], to=TensorProto.FLOAT), helper.make_node("Add", ["x", "cf"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [float_input("x", 7)], [float_input("y", 7)], [t]),
                              opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    path = save(model, tmp_path / "c.onnx")
    out = OnnxModel.load(path).run({"x": np.zeros(7, np.float32)})["y"]
    np.testing.assert_array_equal(out, np.array(values, np.float32))
    np.testing.assert_array_equal(ort_run(path, {"x": np.zeros(7, np.float32)})[0], out)


def test_new_sequence_length_gets_new_shape_constants(tmp_path):
    """tinygrad's runner caches Reshape targets by name; edgegen keeps one cache per input shape."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 8])
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["r"]),
             helper.make_node("ReduceSum", ["r", "axes"], ["y"], keepdims=0)]
    path = save(model_from(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8])],
                           {"axes": np.array([1], np.int64)}), tmp_path / "r.onnx")
    model = OnnxModel.load(path)
    for t in (3, 5, 3, 5, 3, 7):  # enough calls with each shape to trace, capture and replay the JIT
        x = np.random.default_rng(t).normal(size=(2, t, 8)).astype(np.float32)
        np.testing.assert_allclose(model.run({"x": x})["y"], x.sum(1), rtol=1e-5, atol=1e-5)


def test_int32_ids_accepted_for_int64_input(tmp_path):
    path = save(embedding_model(50, 32, 32), tmp_path / "e.onnx")
    ids = np.array([[1, 2, 3]], np.int32)
    out = OnnxModel.load(path).run({"ids": ids})["y"]
    f = onnx.load(str(path))
    w = {t.name: numpy_helper.to_array(t) for t in f.graph.initializer}
    np.testing.assert_allclose(out, w["table"][ids] @ w["W"], rtol=1e-5, atol=1e-5)


def test_runs_on_opencl_like_on_cpu(tmp_path):
    """Any tinygrad backend: the int4 file on CL (PoCL here) gives the CPU's numbers. A separate process, since the
    device is chosen per process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from edgegen.quantize.onnx_quant import ONNX_RECIPES, quantize_onnx_file

    path = tmp_path / "w4.onnx"
    quantize_onnx_file(save(linear_model(64, 32), tmp_path / "f.onnx"), ONNX_RECIPES["w4"], path)
    x = np.random.default_rng(4).normal(0, 1, (3, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "edgegen.cli", "run-onnx", str(path), "--device", "CL", "--input",
                           f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "y.npz")], cwd=root, capture_output=True,
                          text=True, timeout=600, check=False, env={**os.environ, "DEV": "CL"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["y"], OnnxModel.load(path).run({"x": x})["y"],
                               rtol=1e-5, atol=1e-5)


def test_unusable_device_is_one_clear_error(capsys, tmp_path):
    import edgegen.cli as edgegen_cli

    path = save(linear_model(64, 32), tmp_path / "f.onnx")
    code = edgegen_cli.main(["run-onnx", str(path), "--device", "NOSUCHDEV", "--shape", "x=1x64"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("edgegen run-onnx: error: tinygrad device 'NOSUCHDEV' is not usable here"), err
