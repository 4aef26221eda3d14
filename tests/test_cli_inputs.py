"""What `plan`, `info`, `bench`, `quantize` and `eval` do with the model files users hand them: 'default', any GGUF
(architectures and tensor types the runtime cannot run included), bad files, and features whose extra is missing."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_clean_error, edgegen
from gguf import GGML_QUANT_SIZES, GGUFWriter
from gguf import GGMLQuantizationType as Q

import edgegen.cli as edgegen_cli
from edgegen.runtime.artifact.constants import SUPPORTED_ARCHITECTURES, SUPPORTED_TYPES, TEXT_ARCHITECTURES
from edgegen.runtime.artifact.reader import default_model_path

DEFAULT = default_model_path()
SHAPE = {"dim": 256, "heads": 4, "kv_heads": 2, "hidden": 512, "vocab": 320, "context": 2048}  # K-quant rows: 256
# name -> (type, rows, cols); the i-quants are types gguf-py knows and the runtime does not run.
FOREIGN_TENSORS = {
    "token_embd.weight": (Q.IQ4_XS, 320, 256),
    "blk.0.attn_norm.weight": (Q.F32, 1, 256),
    "blk.0.attn_q.weight": (Q.IQ2_XXS, 256, 256),
    "blk.0.attn_k.weight": (Q.IQ2_XXS, 128, 256),
    "blk.0.ffn_down.weight": (Q.IQ4_NL, 256, 512),
    "output_norm.weight": (Q.F32, 1, 256),
}
SUPPORTED = f"(supported: {', '.join(t.name for t in SUPPORTED_TYPES)})"
FOREIGN_TYPES = ("unsupported tensor types IQ4_XS (1 tensor: token_embd.weight), IQ2_XXS (2 tensors, e.g. "
                 f"blk.0.attn_q.weight), IQ4_NL (1 tensor: blk.0.ffn_down.weight) {SUPPORTED}")
FOREIGN_ARCH = "falcon"  # a decoder family the runtime does not run


def write_foreign_gguf(path: Path, architecture: str, tensors: dict = FOREIGN_TENSORS) -> Path:
    """A tiny GGUF of `architecture` with decoder hyperparameters, its tensors as raw blocks of their types."""
    w = GGUFWriter(path, architecture)
    w.add_name(f"tiny-{architecture}")
    w.add_block_count(1)
    w.add_context_length(SHAPE["context"])
    w.add_embedding_length(SHAPE["dim"])
    w.add_feed_forward_length(SHAPE["hidden"])
    w.add_head_count(SHAPE["heads"])
    w.add_head_count_kv(SHAPE["kv_heads"])
    w.add_vocab_size(SHAPE["vocab"])
    # a SentencePiece vocabulary of one piece per embedding row, as a real file carries
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>"] + [f"<t{i}>" for i in range(1, SHAPE["vocab"])])
    w.add_token_scores([0.0] * SHAPE["vocab"])
    w.add_token_types([2] + [1] * (SHAPE["vocab"] - 1))
    rng = np.random.default_rng(0)
    for name, (qtype, rows, cols) in tensors.items():
        if qtype == Q.F32:
            w.add_tensor(name, np.ones(cols, np.float32))
            continue
        block, type_size = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (rows, cols // block * type_size), dtype=np.uint8)  # any bytes: never decoded
        w.add_tensor(name, raw, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = edgegen_cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2 and out == "", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# 1. 'default' is the shipped SmolLM2 for every command that takes a model, as for `generate`.

def test_info_default(capsys):
    code, out, _ = run(capsys, "info", "default")
    assert code == 0
    assert out.splitlines()[0] == f"file          {DEFAULT} ({DEFAULT.stat().st_size / 2**20:.2f} MiB)"
    assert "architecture  llama (Smollm2 135M 8k Lc100K Mix1 Ep2)" in out
    assert "tensor types  F32: 61 (0.13 MiB), Q4_1: 210 (63.28 MiB), Q8_0: 1 (28.69 MiB)" in out
    assert out.splitlines()[-1] == "runnable here: yes"


def test_plan_default(capsys):
    code, out, _ = run(capsys, "plan", "default", "--board", "rpi5-4gb")
    assert code == 0
    assert out.splitlines()[0] == f"model:    {DEFAULT}"
    assert "verdict:  FITS: needs 251 MiB" in out and "advice:   fits as is" in out
    code, out, _ = run(capsys, "plan", "default", "--board", "rpi5-4gb", "--json")
    plan = json.loads(out)
    assert (plan["verdict"], plan["fits"], plan["memory_fits"], plan["cannot_run_reason"]) == ("fits", True, True, None)


def test_bench_default_reads_the_shipped_model(capsys):
    # The context check needs the model's trained context: it passes the file, and stops before loading anything.
    line = one_error_line(*run(capsys, "bench", "default", "--context", "10000"))
    assert line == "edgegen bench: error: --context 10000 exceeds the model's trained context of 8192"


def test_quantize_default_loads_the_shipped_model(capsys, tmp_path, monkeypatch):
    import edgegen.quantize.source as source

    loaded = []

    def fake_load_source(path):
        loaded.append(Path(path))
        raise source.QuantizeError("stop here")

    monkeypatch.setattr(source, "load_source", fake_load_source)
    line = one_error_line(*run(capsys, "quantize", "default", "--recipe", "w8", "-o", str(tmp_path / "m.gguf")))
    assert line == "edgegen quantize: error: stop here" and loaded == [DEFAULT]


def test_eval_default(capsys):
    line = one_error_line(*run(capsys, "eval", "default"))
    assert line == "edgegen eval: error: --text FILE is required to evaluate a text model"


# 2. `info` describes any GGUF file and says whether, and why not, the runtime can run it.

def test_info_describes_an_architecture_and_types_it_cannot_run(capsys, tmp_path):
    path = write_foreign_gguf(tmp_path / "falcon.gguf", FOREIGN_ARCH)
    code, out, err = run(capsys, "info", str(path))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[1] == "architecture  falcon (tiny-falcon)"
    assert lines[2] == ("config        block_count 1, context_length 2048, embedding_length 256, feed_forward_length "
                        "512, attention.head_count 4, attention.head_count_kv 2, vocab_size 320")
    # 311,808 weights in 144,640 bytes: 43,520 IQ4_XS + 25,344 IQ2_XXS + 73,728 IQ4_NL + 2,048 F32.
    assert lines[3] == "parameters    0.31 M in 0.14 MiB (3.711 bits/weight)"
    assert lines[4] == "tokenizer     llama (320 tokens), chat template: no"
    assert lines[5] == ("tensor types  F32: 2 (0.00 MiB), IQ2_XXS: 2 (0.02 MiB), IQ4_NL: 1 (0.07 MiB), "
                        "IQ4_XS: 1 (0.04 MiB)")
    assert lines[-1] == (f"runnable here: no (unsupported architecture 'falcon' (supported: "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}); {FOREIGN_TYPES})")
    code, out, _ = run(capsys, "info", str(path), "--json", "--metadata", "--tensors")
    info = json.loads(out)
    assert info["runnable"] is False and info["runnable_reason"] == lines[-1][len("runnable here: no ("):-1]
    # Packed sizes from GGML_QUANT_SIZES: IQ4_XS 136 B, IQ2_XXS 66 B per 256 weights; IQ4_NL 18 B per 32.
    assert info["bytes_by_type"] == {"IQ4_XS": 320 * 136, "F32": 2 * 256 * 4, "IQ2_XXS": 384 * 66,
                                     "IQ4_NL": 256 * 16 * 18}
    assert info["metadata"]["falcon.embedding_length"] == 256 and info["metadata"]["general.architecture"] == "falcon"
    assert {t["name"]: t["shape"] for t in info["tensors"]}["blk.0.ffn_down.weight"] == [256, 512]


def test_info_describes_a_llama_with_i_quants(capsys, tmp_path):
    path = write_foreign_gguf(tmp_path / "llama-iq.gguf", "llama")
    code, out, _ = run(capsys, "info", str(path))
    assert code == 0
    assert "layers        1  dim 256  heads 4/2 kv  ffn 512  vocab 320  context 2048" in out
    assert out.splitlines()[-1] == f"runnable here: no ({FOREIGN_TYPES})"


def test_info_of_a_llama_without_its_hyperparameters(capsys, tmp_path):
    w = GGUFWriter(tmp_path / "bare.gguf", "llama")
    w.add_tensor("output_norm.weight", np.ones(8, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    code, out, err = run(capsys, "info", str(tmp_path / "bare.gguf"))
    assert code == 2  # described as far as it reads, then refused: the file itself is broken, not only unsupported
    assert out.splitlines()[-1] == ("runnable here: no (metadata key 'llama.attention.head_count' is missing; the "
                                    "file carries no tokenizer ('tokenizer.ggml.model' is missing))")
    assert err == "edgegen info: error: bare.gguf: metadata key 'llama.attention.head_count' is missing\n"


# 3. `plan` says the runtime cannot run a file instead of calling it a fit.

def test_plan_of_a_file_the_runtime_cannot_run(capsys, tmp_path):
    path = write_foreign_gguf(tmp_path / "falcon.gguf", FOREIGN_ARCH)
    code, out, _ = run(capsys, "plan", str(path), "--board", "rpi5-4gb")
    assert code == 0  # a verdict, like DOES NOT FIT, not an input error
    lines = out.splitlines()
    verdict = next(i for i, line in enumerate(lines) if line.startswith("verdict:"))
    assert lines[verdict] == ("verdict:  cannot run here: unsupported architecture 'falcon' (supported: "
                              f"{', '.join(TEXT_ARCHITECTURES)}); {FOREIGN_TYPES}")
    assert lines[verdict + 1].startswith("          memory alone: FITS: needs ")
    assert "FITS" not in lines[verdict] and "fits as is" not in out
    assert "advice:   none: re-quantizing cannot remove what stops the runtime (see the verdict)" in lines
    code, out, _ = run(capsys, "plan", str(path), "--board", "rpi5-4gb", "--json")
    plan = json.loads(out)
    assert (plan["verdict"], plan["fits"], plan["memory_fits"]) == ("cannot_run", False, True)
    assert plan["cannot_run_reason"] == lines[verdict].removeprefix("verdict:  cannot run here: ")


def test_plan_of_a_llama_with_i_quants_suggests_requantizing(capsys, tmp_path):
    path = write_foreign_gguf(tmp_path / "llama-iq.gguf", "llama")
    code, out, _ = run(capsys, "plan", str(path), "--board", "rpi5-4gb")
    assert code == 0
    assert f"verdict:  cannot run here: {FOREIGN_TYPES}" in out.splitlines()
    assert ("advice:   re-quantize to tensor types the runtime runs: `edgegen quantize` with recipe f16 "
            "(fits: f16, w8, w4-mix8, w4a, w4)") in out.splitlines()


def test_bench_refuses_a_file_the_runtime_cannot_run(capsys, tmp_path):
    path = write_foreign_gguf(tmp_path / "llama-iq.gguf", "llama")
    line = one_error_line(*run(capsys, "bench", str(path), "--no-compile-times"))
    assert line == f"edgegen bench: error: {path}: cannot run here: {FOREIGN_TYPES}"


# 4. Every bad file is one line naming it and what is wrong, exit 2, for every command that reads a model.

def bad_file(kind: str, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A bad model file of `kind` and the error expected from each command (after 'edgegen CMD: error: ')."""
    if kind == "missing":
        p = tmp_path / "nope.gguf"
        return p, {"quantize": f"source '{p}' does not exist (expected a .gguf file or a Hugging Face folder)",
                   "*": f"model file not found: {p}"}
    if kind == "directory":
        p = tmp_path / "folder.gguf"
        p.mkdir()
        return p, {"quantize": f"{p}: no config.json (expected a Hugging Face model folder)",
                   "*": f"model path is not a file: {p}"}
    if kind == "text":
        p = tmp_path / "hostname"
        p.write_text("vm\n")
        return p, {"*": f"{p} is not a GGUF file (starts with b'vm\\n', expected b'GGUF')"}
    if kind == "empty":
        p = tmp_path / "empty.gguf"
        p.write_bytes(b"")
        return p, {"*": f"{p} is not a GGUF file (starts with b'', expected b'GGUF')"}
    whole = write_foreign_gguf(tmp_path / "whole.gguf", "llama").read_bytes()
    p = tmp_path / f"{kind}.gguf"
    if kind == "truncated-header":
        p.write_bytes(whole[:200])
        return p, {"*": f"{p} is truncated or corrupt: needs "}
    p.write_bytes(whole[: len(whole) - 1000])
    return p, {"*": f"{p} is truncated or corrupt: tensor output_norm.weight ends at byte {len(whole)}, file has "
                    f"{len(whole) - 1000}"}


COMMANDS = {
    "plan": ["--board", "rpi5-4gb"],
    "info": [],
    "bench": ["--no-compile-times"],
    "quantize": ["--recipe", "w8", "-o", "OUT"],
}


@pytest.mark.parametrize("kind", ["missing", "directory", "text", "empty", "truncated-header", "truncated-data"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_model_file(capsys, tmp_path, command, kind):
    path, expected = bad_file(kind, tmp_path)
    argv = [str(tmp_path / "out.gguf") if a == "OUT" else a for a in COMMANDS[command]]
    line = one_error_line(*run(capsys, command, str(path), *argv))
    assert line.startswith(f"edgegen {command}: error: {expected.get(command, expected['*'])}"), line
    assert not (tmp_path / "out.gguf").exists()


def test_plan_of_a_text_file_from_the_shell(tmp_path):
    (tmp_path / "hostname").write_text("vm\n")
    proc = edgegen("plan", str(tmp_path / "hostname"), "--board", "rpi5-4gb")
    assert_clean_error(proc, f"edgegen plan: error: {tmp_path / 'hostname'} is not a GGUF file (starts with b'vm\\n'")


# 6. A feature whose extra is not installed is one line naming the extra, not a traceback.

@pytest.mark.parametrize("missing", ["onnx", "ml_dtypes"])
def test_quantize_onnx_without_the_onnx_extra(capsys, tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # `import onnx` now raises ImportError, as when not installed
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    line = one_error_line(*run(capsys, "quantize", str(tmp_path / "m.onnx"), "--recipe", "w8", "-o",
                               str(tmp_path / "q.onnx")))
    assert line == ("edgegen quantize: error: quantizing an ONNX model needs the 'onnx' extra: "
                    "pip install 'edgegen[onnx]'")


def test_quantize_hf_folder_without_the_quantize_extra(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    (tmp_path / "hf").mkdir()
    line = one_error_line(*run(capsys, "quantize", str(tmp_path / "hf"), "--recipe", "w8", "-o",
                               str(tmp_path / "m.gguf")))
    assert line == ("edgegen quantize: error: reading a Hugging Face folder needs the 'quantize' extra: "
                    "pip install 'edgegen[quantize]'")


def test_generate_refuses_a_json_schema_file_it_cannot_use(capsys, tmp_path):
    """Refused before the model loads: a missing file, text that is not a JSON object."""
    line = one_error_line(*run(capsys, "generate", "--json-schema", str(tmp_path / "none.json"), "hi"))
    assert "--json-schema" in line and "cannot read it" in line
    (tmp_path / "list.json").write_text("[1, 2]")
    line = one_error_line(*run(capsys, "generate", "--json-schema", str(tmp_path / "list.json"), "hi"))
    assert "json_schema" in line and "a schema object" in line
