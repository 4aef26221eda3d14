"""all-MiniLM-L6-v2 end to end: exported by the repo's torch script, quantized by edgegen, run by tinygrad and
onnxruntime, sentence embeddings compared on the 62 sentences of sentences.txt."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx_test_models import SENTENCES, minilm_feeds, ort_run

from edgegen.runtime.onnx_run import OnnxModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def feeds() -> dict[str, np.ndarray]:
    sentences = SENTENCES.read_text().splitlines()
    assert len(sentences) >= 50
    return minilm_feeds(sentences)


@pytest.fixture(scope="module")
def reference(minilm_fp32, feeds) -> np.ndarray:
    """onnxruntime's fp32 sentence embeddings: the reference every variant is measured against."""
    return ort_run(minilm_fp32, feeds)[0]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_export_is_the_sentence_embedding_model(minilm_fp32, reference):
    # The model's documented behaviour: paraphrases close, unrelated sentences far, unit-length outputs.
    np.testing.assert_allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-5)
    sim = reference @ reference.T
    assert sim[0, 1] > 0.7  # "A man is eating food." / "A man is eating a piece of bread."
    assert sim[0, 9] < 0.15  # / "The stock market fell sharply after the announcement."
    assert sim[3, 6] > 0.6  # riding a horse / riding a white horse


def test_fp32_tinygrad_matches_onnxruntime(minilm_fp32, feeds, reference):
    out = OnnxModel.load(minilm_fp32).run(feeds)
    assert cosines(out["sentence_embedding"], reference).min() > 0.99999


@pytest.mark.parametrize("recipe,mean_target,min_target", [("w8", 0.995, 0.99), ("w4", 0.97, 0.94)])
def test_quantized_meets_quality_targets_in_both_runtimes(minilm_fp32, minilm_quantized, feeds, reference,
                                                          recipe, mean_target, min_target):
    path = minilm_quantized[recipe]
    model = onnx.load(str(path), load_external_data=False)
    assert next(o.version for o in model.opset_import if o.domain == "") == 21
    assert path.stat().st_size < minilm_fp32.stat().st_size * (0.3 if recipe == "w8" else 0.25)

    tiny = OnnxModel.load(path).run(feeds)["sentence_embedding"]
    ort_exact = ort_run(path, feeds, optimize=False)[0]  # the graph as written
    ort_default = ort_run(path, feeds)[0]  # with onnxruntime's fusions (it may requantize activations)
    # The same file means the same numbers in both runtimes.
    np.testing.assert_allclose(tiny, ort_exact, atol=2e-5)
    assert cosines(tiny, ort_default).min() > 0.995
    cos = cosines(tiny, reference)
    assert cos.mean() >= mean_target and cos.min() >= min_target, (cos.mean(), cos.min())
