"""A generative decoder as ONNX: the tiny random Llama GGUF exported by scripts/export_llama_onnx.py (torch, one
decode step with a static KV cache), run by tinygrad and onnxruntime, checked against edgegen's GGUF runtime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx_test_models import load_script, ort_run

from edgegen.quantize.onnx_quant import ONNX_RECIPES, quantize_onnx_file
from edgegen.runtime.engine import TextGenerator
from edgegen.runtime.native.options import KernelOptions
from edgegen.runtime.onnx_run import OnnxModel

pytestmark = pytest.mark.slow
IDS = [5, 17, 42, 3, 88, 60, 7, 7, 31, 90, 12]
CACHE = 32


@pytest.fixture(scope="module")
def exporter():
    return load_script("export_llama_onnx")


@pytest.fixture(scope="module")
def decoder_onnx(exporter, tiny_q4_path, tmp_path_factory):
    return exporter.export(tiny_q4_path, tmp_path_factory.mktemp("decoder") / "tiny-llama.onnx", CACHE)


@pytest.fixture(scope="module")
def gguf(tiny_q4_path):
    # tinygrad's kernels: float activations, as the exported ONNX graph computes (the default CPU kernels round
    # activations to 8 bits, which moves logits by ~1%)
    return TextGenerator.load(tiny_q4_path, device="CPU", max_context=CACHE, kernels=KernelOptions("tinygrad"))


def step_logits(run, shape, ids) -> np.ndarray:
    """Teacher-forced: the logits after each token, one decode step per token."""
    past_k = past_v = np.zeros(shape, np.float32)
    rows = []
    for pos, tok in enumerate(ids):
        out = run({"input_ids": np.array([tok], np.int64), "position": np.array([pos], np.int64),
                   "past_k": past_k, "past_v": past_v})
        past_k, past_v = out["present_k"], out["present_v"]
        rows.append(out["logits"][0])
    return np.stack(rows)


def test_decode_steps_match_the_gguf_runtime_logits(decoder_onnx, gguf):
    model = OnnxModel.load(decoder_onnx)
    shape = tuple(model.inputs["past_k"].shape)
    assert shape == (2, 2, CACHE, 16)  # tiny_llama: 2 layers, 2 KV heads, head_dim 16
    ref = gguf.logits(IDS)  # one causal prefill pass of the Q4_1 file
    got = step_logits(model.run, shape, IDS)
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


def test_greedy_generation_equals_the_gguf_runtime(exporter, decoder_onnx, tiny_q4_path):
    prompt, n = IDS[:5], 10
    ref = exporter.gguf_greedy(tiny_q4_path, prompt, n)
    step, shape = exporter.tinygrad_step(decoder_onnx)
    assert exporter.greedy(step, shape, prompt, n) == ref
    assert exporter.greedy(exporter.onnxruntime_step(decoder_onnx), shape, prompt, n) == ref


def test_quantized_decoder_runs_in_both_runtimes(decoder_onnx, gguf, tmp_path):
    out = tmp_path / "tiny-llama-w8.onnx"
    result = quantize_onnx_file(decoder_onnx, ONNX_RECIPES["w8"], out)
    assert {w.kind for w in result.weights} == {"int8/channel"}
    model = OnnxModel.load(out)
    shape = tuple(model.inputs["past_k"].shape)
    got = step_logits(model.run, shape, IDS[:4])
    names = ["logits", "present_k", "present_v"]
    ort = step_logits(lambda f: dict(zip(names, ort_run(out, f, optimize=False))), shape, IDS[:4])
    np.testing.assert_allclose(got, ort, rtol=1e-4, atol=1e-4)
    ref = gguf.logits(IDS[:4])
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99
