"""Every decoder family on a tiny random model: runtime logits vs an independent numpy forward (tests/tiny_arch.py).

Checks the batched forward (prefill / eval), the bucketed prefill and KV-cached decode steps under TinyJit, so
each family option (halves RoPE, Q/K norms, biases, fused tensors, post-norms, GELU, sliding window with its own
RoPE base, RoPE frequency factors) is exercised on both paths.
"""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from tiny_arch import FAMILIES, VOCAB, is_local_layer, random_weights, reference_logits, shape_for, write_gguf

from edgegen.runtime.artifact.config import config_from_model_file
from edgegen.runtime.artifact.reader import open_gguf
from edgegen.runtime.engine import TextGenerator
from edgegen.runtime.native.options import KernelOptions

IDS = [5, 17, 42, 3, 88, 60, 7, 7, 31, 90, 12, 44]


def check(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max(), err_msg=what)


@pytest.mark.parametrize("family", FAMILIES)
def test_config_names_the_family_options(tmp_path, family):
    s = shape_for(family)
    write_gguf(tmp_path / "m.gguf", s, random_weights(s))
    cfg = config_from_model_file(open_gguf(tmp_path / "m.gguf"))
    assert cfg.architecture == s.arch and cfg.head_dim == s.head_dim
    assert cfg.rope_pairs == ("interleaved" if s.arch == "llama" else "halves")
    assert cfg.qk_norm == (family in ("qwen3", "gemma3"))
    assert cfg.post_norms == (family == "gemma3") and cfg.ffn_activation == ("gelu_tanh" if family == "gemma3"
                                                                               else "silu")
    assert [cfg.is_local_layer(i) for i in range(s.n_layers)] == [is_local_layer(s, i) for i in range(s.n_layers)]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_logits_match_numpy_reference(tmp_path, family):
    s = shape_for(family)
    path = tmp_path / f"tiny-{family}.gguf"
    stored = write_gguf(path, s, random_weights(s, seed=3), Q.Q8_0)
    # tinygrad's kernels: float activations like the reference (the native kernels: tests/test_runtime_native.py)
    gen = TextGenerator.load(path, max_context=32, kernels=KernelOptions("tinygrad"))
    ref = reference_logits(s, stored, IDS)
    got = gen.logits(IDS)
    assert got.shape == (len(IDS), VOCAB)
    check(got, ref, f"{family}: batched forward")
    check(gen.graphs.prefill(IDS[:4]), ref[3], f"{family}: prefill")
    for pos in range(4, len(IDS)):  # past the tiny gemma3 window of 5: the local layers' mask is exercised
        check(gen.graphs.decode(IDS[pos], pos), ref[pos], f"{family}: decode step at position {pos}")


def test_sliding_window_changes_the_answer(tmp_path):
    """The reference itself: with the window wider than the prompt, gemma3's logits differ from the windowed ones,
    so the runtime test above would catch a runtime that ignores the window."""
    s = shape_for("gemma3")
    w = random_weights(s, seed=3)
    wide = type(s)(**{**s.__dict__, "sliding_window": 64})
    assert not np.allclose(reference_logits(s, w, IDS)[-1], reference_logits(wide, w, IDS)[-1], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_llama_cpp(tmp_path, family):
    """llama.cpp is the reference implementation of every family: the same file gives the same logits there, in the
    numpy forward and in the runtime."""
    llama_cpp = pytest.importorskip("llama_cpp")
    s = shape_for(family)
    path = tmp_path / f"tiny-{family}.gguf"
    stored = write_gguf(path, s, random_weights(s, seed=3))
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=32, logits_all=True, verbose=False, n_threads=2)
    llm.eval(IDS)
    theirs = np.asarray(llm.scores[: len(IDS)], dtype=np.float64)
    check(reference_logits(s, stored, IDS), theirs, f"{family}: numpy reference vs llama.cpp")
    check(TextGenerator.load(path, max_context=32, kernels=KernelOptions("tinygrad")).logits(IDS), theirs,
          f"{family}: edgegen vs llama.cpp")
