"""Gemma 3 270M Q4_K_M end to end (the real file set-up joins from its PyPI chunks): a base model with Q4_K, Q5_0,
Q6_K and Q8_0 tensors, a 262k SentencePiece vocabulary, sliding-window layers and tied embeddings.

A missing model fails (set-up installs it); only the llama.cpp comparison skips where llama-cpp-python is absent.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgegen.runtime import SamplingParams
from edgegen.runtime.artifact import catalog
from edgegen.runtime.engine import TextGenerator

pytestmark = pytest.mark.slow
TEXT = Path(__file__).parent / "data" / "gpl-3.txt"  # the GNU GPL v3, English prose (verbatim copies allowed)


@pytest.fixture(scope="module")
def gemma() -> TextGenerator:
    return TextGenerator.load(catalog.model_path("gemma3-270m"), max_context=512)


def test_the_file_has_what_this_test_is_about(gemma):
    types = Counter(t.ggml_type.name for t in gemma.model_file.tensors.values())
    assert {"Q4_K", "Q5_0", "Q6_K", "Q8_0"} <= set(types)
    cfg = gemma.config
    assert cfg.architecture == "gemma3" and cfg.sliding_window == 512 and cfg.head_dim == 256
    assert [cfg.is_local_layer(i) for i in range(cfg.n_layers)].count(False) == 3  # layers 5, 11, 17


def test_greedy_continuation_is_coherent(gemma):
    text = gemma.generate("The three primary colours are", SamplingParams(max_tokens=8, temperature=0.0),
                          chat=False).text.lower()
    assert all(colour in text for colour in ("red", "yellow", "blue")), text


def test_prompt_starts_with_bos(gemma):
    ids = gemma.encode_prompt("Hello", chat=False)
    assert ids[0] == gemma.tokenizer.bos_id == 2


def test_teacher_forced_agreement_with_llama_cpp(gemma):
    """Top-1 agreement >= 95% over 256 tokens of English text, and perplexity within 3% of llama.cpp's, both
    runtimes given the same token ids (BOS first) in one window."""
    llama_cpp = pytest.importorskip("llama_cpp")
    ids = gemma.tokenizer.encode(TEXT.read_text()[:4000])[:256]  # BOS first, as the file asks
    assert ids[0] == gemma.tokenizer.bos_id and len(ids) == 256
    ref = llama_cpp.Llama(model_path=str(gemma.model_file.path), n_ctx=512, logits_all=True, verbose=False,
                          n_threads=2)
    ref.eval(ids)
    ref_logits = np.asarray(ref.scores[: len(ids)], dtype=np.float64)
    got = gemma.logits(ids).astype(np.float64)
    agree = float(np.mean(got[:-1].argmax(-1) == ref_logits[:-1].argmax(-1)))
    assert agree >= 0.95, agree

    def perplexity(logits: np.ndarray) -> float:
        z = logits[:-1] - logits[:-1].max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        return float(np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean()))

    ours, theirs = perplexity(got), perplexity(ref_logits)
    print(f"gemma3-270m over {len(ids)} tokens: top-1 agreement {agree:.1%}, perplexity {ours:.3f} (edgegen) vs "
          f"{theirs:.3f} (llama.cpp)")  # shown with pytest -s: the figures the closing note quotes
    # Measured with llama-cpp-python 0.3.36 built for this CPU (AVX-512/VNNI): 13.18 default path, 13.05 the float
    # path (--kernels tinygrad), 12.89 llama.cpp on this window. The float path's 1.3% gap is not our kernels'; the
    # default path is 1% above the float path here (+0.4% over 1,024 tokens, docs/KERNELS.md).
    assert abs(ours / theirs - 1) < 0.03, (ours, theirs)
