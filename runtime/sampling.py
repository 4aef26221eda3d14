"""Sampling parameters and the sampler: greedy, temperature, top-k, top-p, repetition penalty, seed.

Sampling runs on the host in numpy over one logits row (49k floats for SmolLM2: a 0.2 MB copy per token), which
keeps the decode kernel graph identical whatever the request's sampling settings are.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from edgegen.runtime.errors import GenerationError, shown

# The ranges a request may ask for; the MQTT schema (firmware_bridge/schema.py) imports them.
MAX_STOP_STRINGS = 16
MAX_TEMPERATURE = 10.0
MAX_REPETITION_PENALTY = 10.0
SEED_LIMIT = 2**63  # seeds are integers in [0, SEED_LIMIT)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 means no top-k cut
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # 1 means none; >1 discourages tokens already in the context (CTRL paper)
    seed: int | None = None
    max_tokens: int = 128
    stop: tuple[str, ...] = field(default_factory=tuple)
    json_schema: str | None = None  # JSON text of a schema the answer must follow (runtime.constrain)

    def __post_init__(self) -> None:
        """Checked once, when made: GenerationError names the first value out of range, so every SamplingParams that
        exists is valid and no caller checks it again."""
        def bad(name: str, value: object, expected: str) -> GenerationError:
            return GenerationError(f"{name}={value!r} is out of range: expected {expected}")

        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) \
                or not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise bad("temperature", self.temperature, f"a number from 0 (greedy) to {MAX_TEMPERATURE:g}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise bad("top_k", self.top_k, "an integer >= 0 (0 disables)")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", self.top_p, "a number in (0, 1]")
        if not isinstance(self.repetition_penalty, (int, float)) \
                or not 0.0 < self.repetition_penalty <= MAX_REPETITION_PENALTY:
            raise bad("repetition_penalty", self.repetition_penalty, f"a number in (0, {MAX_REPETITION_PENALTY:g}]")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not 0 <= self.seed < SEED_LIMIT):
            raise bad("seed", self.seed, "an integer in [0, 2**63)")
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise bad("max_tokens", self.max_tokens, "an integer >= 1")
        if not isinstance(self.stop, tuple) or len(self.stop) > MAX_STOP_STRINGS \
                or not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop", self.stop, f"up to {MAX_STOP_STRINGS} non-empty strings")
        if self.json_schema is not None and not _json_object(self.json_schema):
            raise bad("json_schema", shown(self.json_schema), "the JSON text of a schema object")


def _json_object(text: object) -> bool:
    try:
        return isinstance(text, str) and isinstance(json.loads(text), dict)
    except ValueError:
        return False


class Sampler:
    """Chooses the next token from a logits row. One Sampler per generation: it owns the seeded RNG."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, context: list[int], allowed: np.ndarray | None = None) -> int:
        """The next token; `allowed`: a boolean mask of the tokens it may be (structured output)."""
        p = self.params
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        if not math.isfinite(float(logits.sum())):  # one pass; NaN or inf anywhere makes the sum non-finite
            raise GenerationError("the model computed non-finite logits (NaN or infinity): its weights are corrupt")
        if allowed is not None:
            if not allowed.any():
                raise GenerationError("structured output: the grammar allows no token here")
            logits = np.where(allowed, logits, -np.inf)
        if p.repetition_penalty != 1.0 and context:
            seen = np.unique(np.asarray(context, dtype=np.int64))
            vals = logits[seen]
            logits[seen] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if p.temperature == 0.0:
            return int(np.argmax(logits))
        logits = logits / p.temperature
        if 0 < p.top_k < logits.size:
            kth = np.partition(logits, -p.top_k)[-p.top_k]
            logits = np.where(logits < kth, -np.inf, logits)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cumulative, p.top_p) + 1)]  # smallest set reaching top_p
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(self.rng.choice(probs.size, p=probs))


def find_stop(text: str, stops: tuple[str, ...], start: int = 0) -> int:
    """Index where the earliest stop string starts in text (at or after `start`), or -1."""
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else -1


def holdback(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might be the start of a stop string, and must not be streamed yet."""
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                longest = max(longest, k)
                break
    return longest
