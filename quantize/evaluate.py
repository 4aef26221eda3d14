"""Quality of a model on a text: sliding-window perplexity, and against a reference model mean KL and top-1 agreement.

Any object with `logits(token_ids) -> (T, vocab)` can be evaluated: edgegen's TextGenerator, or an adapter around
another runtime (benchmarks wrap llama.cpp), so both are measured by the same code on the same token ids.

Windows and BOS. A window feeds `window` tokens; every target is scored once, the first window's all, each later
window's last `stride` (with the default stride = window / 2, its second half: llama.cpp's `llama-perplexity`
scores only the second half of each chunk too). A model whose vocabulary adds BOS (`tokenizer.ggml.add_bos_token`;
Gemma: true) has only ever seen text after a BOS and is far off without one, so, as `llama-perplexity` does
(tools/perplexity/perplexity.cpp, perplexity(): `tokens[batch_start] = llama_vocab_bos(vocab)` for each chunk when
the vocab adds BOS), the text is tokenized with its leading BOS and the first token fed in every window is replaced
by BOS. That token is context only, never a target, so each target still keeps at least window - stride - 1 tokens
of text before it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from edgegen.quantize.errors import QuantizeError


class LogitsModel(Protocol):
    def logits(self, token_ids: list[int]) -> np.ndarray: ...  # (T, vocab) float32


@dataclass(frozen=True)
class Window:
    start: int  # first token fed
    end: int  # one past the last token fed
    first_target: int  # first token index scored in this window (earlier ones were scored by the previous window)


@dataclass(frozen=True)
class EvalResult:
    tokens_scored: int
    perplexity: float
    mean_nll: float
    mean_kl: float | None  # KL(reference || model), nats per token
    top1_agreement: float | None  # fraction of positions where both models' most likely next token is the same
    window: int
    stride: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """Windows of `window` tokens every `stride` tokens; each target is scored once, with at least
    window - stride tokens of context after the first window (the Hugging Face perplexity recipe)."""
    if window < 2 or not 0 < stride <= window:
        raise QuantizeError(f"window {window} and stride {stride}: expected window >= 2 and 0 < stride <= window")
    out: list[Window] = []
    scored_until = 1  # token 0 has no prediction
    start = 0
    while scored_until < n_tokens:
        start = min(start, scored_until - 1)  # the first new target needs at least one token before it
        end = min(start + window, n_tokens)
        out.append(Window(start, end, scored_until))
        scored_until = end
        start += stride
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def evaluate(
    model: LogitsModel,
    token_ids: list[int],
    reference: LogitsModel | None = None,
    window: int = 256,
    stride: int = 128,
    track: Callable[[Iterable[Window], str, int], Iterable[Window]] = lambda it, desc, total: it,
    bos_id: int | None = None,
) -> EvalResult:
    """Perplexity of `model` on token_ids; with `reference`, mean KL(reference || model) and top-1 agreement.

    bos_id: the model's BOS when its vocabulary adds one (token_ids then start with it): the first token fed in
    every window is replaced by it, as llama.cpp's perplexity does (module docstring). None: windows as they are.
    """
    if len(token_ids) < 2:
        raise QuantizeError(f"evaluation needs at least 2 tokens of text, got {len(token_ids)}")
    nll = kl = 0.0
    agree = count = 0
    wins = sliding_windows(len(token_ids), window, stride)
    for w in track(wins, "evaluating", len(wins)):
        ids = list(token_ids[w.start:w.end])
        if bos_id is not None:
            ids[0] = int(bos_id)  # window position 0 is context only: the first target is w.first_target > w.start
        # logits at local position i predict token start + i + 1; keep the ones whose target is new here
        rows = slice(w.first_target - 1 - w.start, w.end - 1 - w.start)
        targets = np.asarray(token_ids[w.first_target:w.end])
        lp = log_softmax(np.asarray(model.logits(ids))[rows])  # (n, vocab)
        nll -= float(lp[np.arange(len(targets)), targets].sum())
        count += len(targets)
        if reference is not None:
            lr = log_softmax(np.asarray(reference.logits(ids))[rows])
            kl += float(np.sum(np.exp(lr) * (lr - lp)))
            agree += int(np.sum(lr.argmax(-1) == lp.argmax(-1)))
    mean_nll = nll / count
    return EvalResult(
        tokens_scored=count, perplexity=float(np.exp(mean_nll)), mean_nll=mean_nll,
        mean_kl=kl / count if reference is not None else None,
        top1_agreement=agree / count if reference is not None else None, window=window, stride=stride,
    )
