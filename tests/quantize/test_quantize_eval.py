"""Evaluation: sliding windows score every token once; perplexity, KL and top-1 against hand computations."""
from __future__ import annotations

import numpy as np
import pytest

from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.evaluate import evaluate, log_softmax, sliding_windows


class CountingModel:
    """A context-dependent toy LM: logits depend on the last token and the position in the window."""

    def __init__(self, vocab: int = 50, seed: int = 0, noise: float = 0.0):
        rng = np.random.default_rng(seed)
        self.table = rng.normal(0, 2, (vocab, vocab))
        self.pos = rng.normal(0, 0.5, (512, vocab))
        self.noise = rng.normal(0, noise, (vocab, vocab)) if noise else 0.0
        self.calls: list[int] = []

    def logits(self, ids):
        self.calls.append(len(ids))
        ids = np.asarray(ids)
        return (self.table + self.noise)[ids] + self.pos[: len(ids)]


@pytest.mark.parametrize("n,window,stride", [(10, 4, 2), (100, 32, 16), (33, 32, 32), (5, 256, 128)])
def test_windows_score_every_target_once(n, window, stride):
    wins = sliding_windows(n, window, stride)
    targets = [t for w in wins for t in range(w.first_target, w.end)]
    assert targets == list(range(1, n))
    for w in wins:
        assert w.end - w.start <= window and w.start < w.first_target
    for w in wins[1:]:
        assert w.first_target - w.start >= window - stride  # every later target keeps this much context


def test_window_arguments_checked():
    with pytest.raises(QuantizeError, match="window 8 and stride 9"):
        sliding_windows(20, 8, 9)


def test_perplexity_matches_a_hand_computation():
    model = CountingModel()
    ids = list(np.random.default_rng(1).integers(0, 50, 40))
    res = evaluate(model, ids, window=256, stride=128)  # one window: a plain causal perplexity
    lp = log_softmax(model.logits(ids))
    nll = -np.mean([lp[i, ids[i + 1]] for i in range(len(ids) - 1)])
    assert res.tokens_scored == 39
    assert res.perplexity == pytest.approx(np.exp(nll), rel=1e-9)
    assert res.mean_kl is None and res.top1_agreement is None


def test_sliding_window_uses_positions_within_each_window():
    model = CountingModel()
    ids = list(np.random.default_rng(2).integers(0, 50, 30))
    res = evaluate(model, ids, window=10, stride=5)
    expected = 0.0
    for w in sliding_windows(30, 10, 5):
        lp = log_softmax(model.logits(ids[w.start:w.end]))
        expected -= sum(lp[t - 1 - w.start, ids[t]] for t in range(w.first_target, w.end))
    assert res.mean_nll == pytest.approx(expected / 29, rel=1e-9)
    assert max(model.calls) == 10


def test_kl_and_top1_against_reference():
    ids = list(np.random.default_rng(3).integers(0, 50, 60))
    same = evaluate(CountingModel(), ids, reference=CountingModel(), window=16, stride=8)
    assert same.mean_kl == pytest.approx(0.0, abs=1e-12) and same.top1_agreement == 1.0
    ref, noisy = CountingModel(), CountingModel(noise=1.0)
    res = evaluate(noisy, ids, reference=ref, window=16, stride=8)
    assert res.mean_kl > 0.1 and res.top1_agreement < 1.0
    rows = list(_rows(ref, noisy, ids, 16, 8))
    assert res.mean_kl == pytest.approx(np.mean([np.sum(np.exp(a) * (a - b)) for a, b in rows]), rel=1e-9)
    assert res.top1_agreement == pytest.approx(np.mean([a.argmax() == b.argmax() for a, b in rows]))


def _rows(ref, model, ids, window, stride):
    for w in sliding_windows(len(ids), window, stride):
        a = log_softmax(ref.logits(ids[w.start:w.end]))
        b = log_softmax(model.logits(ids[w.start:w.end]))
        for t in range(w.first_target, w.end):
            yield a[t - 1 - w.start], b[t - 1 - w.start]


def test_too_little_text():
    with pytest.raises(QuantizeError, match="at least 2 tokens"):
        evaluate(CountingModel(), [3])


@pytest.mark.parametrize("bos_id", [None, 49])
def test_every_window_starts_with_bos_when_the_model_adds_one(bos_id):
    """llama.cpp's perplexity rule: the first token fed in each window is BOS (a vocabulary that adds BOS); it is
    context only, so the same targets are scored, each against the window that holds it."""
    model = CountingModel()
    fed: list[list[int]] = []
    inner = model.logits
    model.logits = lambda ids: fed.append(list(ids)) or inner(ids)
    ids = [49] + list(np.random.default_rng(5).integers(0, 49, 30))  # tokenized with a leading BOS
    res = evaluate(model, ids, window=10, stride=5, bos_id=bos_id)
    wins = sliding_windows(len(ids), 10, 5)
    assert [f[1:] for f in fed] == [ids[w.start + 1:w.end] for w in wins]
    assert [f[0] for f in fed] == [ids[w.start] if bos_id is None else bos_id for w in wins]
    expected = 0.0
    for w, window_ids in zip(wins, fed):
        lp = log_softmax(inner(window_ids))
        expected -= sum(lp[t - 1 - w.start, ids[t]] for t in range(w.first_target, w.end))
    assert res.tokens_scored == len(ids) - 1
    assert res.mean_nll == pytest.approx(expected / res.tokens_scored, rel=1e-9)
