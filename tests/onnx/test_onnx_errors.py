"""Every bad input to `edgegen quantize x.onnx` / `edgegen run-onnx`: one clear line, exit code 2, at CLI and API."""
from __future__ import annotations

import numpy as np
import pytest
from onnx_test_models import custom_op_model, embedding_model, linear_model, save

import edgegen.cli as edgegen_cli
from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.onnx_quant import ONNX_RECIPES, quantize_onnx_file
from edgegen.runtime.errors import OnnxModelError
from edgegen.runtime.onnx_run import OnnxModel


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = edgegen_cli.main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line(code: int, err: str, command: str, expected: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"edgegen {command}: error: "), err
    assert expected in err, err


@pytest.fixture
def not_onnx(tmp_path):
    p = tmp_path / "notes.onnx"
    p.write_text("these are notes, not a protobuf\n" * 20)
    return p


@pytest.fixture
def old_opset(tmp_path):
    return save(linear_model(64, 8, opset=11), tmp_path / "old.onnx")


def test_not_onnx(capsys, tmp_path, not_onnx):
    with pytest.raises(QuantizeError, match="is not an ONNX file"):
        quantize_onnx_file(not_onnx, ONNX_RECIPES["w8"], tmp_path / "q.onnx")
    with pytest.raises(OnnxModelError, match="is not an ONNX file"):
        OnnxModel.load(not_onnx)
    assert_one_line(*cli(capsys, "quantize", str(not_onnx), "--recipe", "w8", "-o", str(tmp_path / "q.onnx"),
                         "--no-progress"), "quantize", "notes.onnx' is not an ONNX file")
    assert_one_line(*cli(capsys, "run-onnx", str(not_onnx)), "run-onnx", "notes.onnx' is not an ONNX file")
    assert not (tmp_path / "q.onnx").exists()


def test_empty_and_missing_files(capsys, tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert_one_line(*cli(capsys, "run-onnx", str(empty)), "run-onnx", "is empty, not an ONNX file")
    assert_one_line(*cli(capsys, "run-onnx", str(tmp_path / "nope.onnx")), "run-onnx", "does not exist")
    assert_one_line(*cli(capsys, "quantize", str(tmp_path / "nope.onnx"), "--recipe", "w4", "-o",
                         str(tmp_path / "q.onnx")), "quantize", "does not exist")


def test_opset_too_old(capsys, tmp_path, old_opset):
    expected = "uses ONNX opset 11, older than 13, the oldest edgegen"
    with pytest.raises(QuantizeError, match=expected):
        quantize_onnx_file(old_opset, ONNX_RECIPES["w4"], tmp_path / "q.onnx")
    with pytest.raises(OnnxModelError, match=expected):
        OnnxModel.load(old_opset)
    assert_one_line(*cli(capsys, "quantize", str(old_opset), "--recipe", "w4", "-o", str(tmp_path / "q.onnx")),
                    "quantize", expected)
    assert_one_line(*cli(capsys, "run-onnx", str(old_opset)), "run-onnx", expected)


def test_unsupported_op_names_the_node(capsys, tmp_path):
    path = save(custom_op_model(), tmp_path / "custom.onnx")
    expected = "node 'mystery_node': op com.example::FancyActivation"
    with pytest.raises(OnnxModelError, match=expected):
        OnnxModel.load(path)
    assert_one_line(*cli(capsys, "run-onnx", str(path), "--shape", "x=1x4"), "run-onnx", expected)


def test_unsupported_standard_op_names_the_node(tmp_path):
    from onnx import helper
    from onnx_test_models import float_input, model_from

    node = helper.make_node("Det", ["x"], ["y"], name="determinant")
    path = save(model_from([node], [float_input("x", 3, 3)], [float_input("y")], {}), tmp_path / "det.onnx")
    with pytest.raises(OnnxModelError, match=r"node 'determinant': op ai.onnx::Det \(opset 18\) is implemented "
                                             r"neither by tinygrad's ONNX runner nor by edgegen"):
        OnnxModel.load(path)


def test_dynamic_dimensions_not_given(capsys, tmp_path):
    path = save(embedding_model(50, 32, 32), tmp_path / "e.onnx")
    assert_one_line(*cli(capsys, "run-onnx", str(path)), "run-onnx",
                    "input 'ids' (int64 [batch, seq]) has dynamic dimensions batch, seq and was not given: "
                    "pass --input ids=FILE.npy or --shape ids=DIMS")
    with pytest.raises(OnnxModelError, match=r"input 'ids' \(int64 \[batch, seq\]\) was not given"):
        OnnxModel.load(path).run({})
    assert_one_line(*cli(capsys, "run-onnx", str(path), "--shape", "ids=1x0"), "run-onnx",
                    "--shape ids=1x0 is not positive dimensions like 1x16")
    code, _ = cli(capsys, "run-onnx", str(path), "--shape", "ids=2x3")  # given: it runs
    assert code == 0


def test_bad_inputs(capsys, tmp_path):
    path = save(embedding_model(50, 32, 32), tmp_path / "e.onnx")
    model = OnnxModel.load(path)
    with pytest.raises(OnnxModelError, match=r"input 'ids' is float32, expected int64 \[batch, seq\]"):
        model.run({"ids": np.zeros((1, 3), np.float32)})
    with pytest.raises(OnnxModelError, match=r"input 'ids' has shape \[3\], expected int64 \[batch, seq\]"):
        model.run({"ids": np.zeros(3, np.int64)})
    with pytest.raises(OnnxModelError, match="unknown input 'tokens': the model's inputs are ids"):
        model.run({"ids": np.zeros((1, 3), np.int64), "tokens": np.zeros(1)})
    ids = tmp_path / "ids.npy"
    ids.write_text("not numpy")
    assert_one_line(*cli(capsys, "run-onnx", str(path), "--input", f"ids={ids}"), "run-onnx", "is not a .npy array")
    assert_one_line(*cli(capsys, "run-onnx", str(path), "--input", "ids"), "run-onnx",
                    "--input 'ids' is not NAME=VALUE")
    assert_one_line(*cli(capsys, "run-onnx", str(path), "--input", f"tokens={ids}"), "run-onnx",
                    "unknown input 'tokens'")


def test_shape_mismatch_between_inputs(tmp_path):
    x = linear_model(64, 8)
    model = OnnxModel.load(save(x, tmp_path / "l.onnx"))
    with pytest.raises(OnnxModelError, match=r"input 'x' has shape \[2, 63\], expected float32 \[batch, 64\]"):
        model.run({"x": np.zeros((2, 63), np.float32)})


def test_quantize_cli_rejects_gguf_options_and_bad_output(capsys, tmp_path):
    src = save(linear_model(64, 32), tmp_path / "l.onnx")
    assert_one_line(*cli(capsys, "quantize", str(src), "--recipe", "w4a", "-o", str(tmp_path / "q.onnx")),
                    "quantize", "recipe 'w4a' does not apply to ONNX models: expected one of w8, w4")
    assert_one_line(*cli(capsys, "quantize", str(src), "--recipe", "w8", "-o", str(tmp_path / "q.gguf")),
                    "quantize", "must be an .onnx file path")
    assert_one_line(*cli(capsys, "quantize", str(src), "--recipe", "w8", "--budget-mb", "1", "-o",
                         str(tmp_path / "q.onnx")), "quantize", "--budget-mb applies to GGUF outputs")
    assert_one_line(*cli(capsys, "quantize", str(src), "--recipe", "w8", "-o", str(src)), "quantize",
                    "is the input file")
    assert not (tmp_path / "q.onnx").exists()


def test_quantize_cli_then_run_onnx(capsys, tmp_path):
    src = save(linear_model(64, 32), tmp_path / "l.onnx")
    out = tmp_path / "q.onnx"
    code = edgegen_cli.main(["quantize", str(src), "--recipe", "w4", "-o", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0 and "uint4/block32: 1 weights" in text and out.exists()
    x = tmp_path / "x.npy"
    np.save(x, np.ones((2, 64), np.float32))
    code = edgegen_cli.main(["run-onnx", str(out), "--input", f"x={x}", "-o", str(tmp_path / "y.npz")])
    text = capsys.readouterr().out
    assert code == 0 and "y: float32 [2, 32]" in text
    assert np.load(tmp_path / "y.npz")["y"].shape == (2, 32)
