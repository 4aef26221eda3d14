"""One generation's text side, whatever runs its steps: sampling each token, detokenizing, stop strings, hold-back,
limits, and the result. TextGenerator drives one at a time; runtime.batch drives several between decode steps."""
from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgegen.runtime.sampling import Sampler, SamplingParams, find_stop, holdback

if TYPE_CHECKING:
    from edgegen.runtime.constrain import Constraint


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float  # request start to the first generated token
    decode_tokens_per_s: float  # tokens after the first / time after the first
    total_s: float
    token_ids: tuple[int, ...] = ()

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("token_ids")
        return d


class TextStream:
    """Iterate for text deltas; `result` is set once the iteration has finished (the generation's return value)."""

    def __init__(self, run: Generator[str, None, GenerationResult]) -> None:
        self._run = run
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        self.result = yield from self._run

    def finish(self) -> GenerationResult:
        """Read the rest; the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


class Sequence:
    """Feed it the logits after each step (advance); it samples the next token and says what text to emit and
    whether the generation is over. `context` is the prompt and the tokens so far; the next step writes context[-1]
    at position `pos`."""

    def __init__(self, ids: list[int], params: SamplingParams, tokenizer: object, end_ids: set[int] | tuple,
                 max_context: int, constraint: Constraint | None = None) -> None:
        """constraint: the grammar the tokens must follow (runtime.constrain, for params.json_schema)."""
        self.constraint = constraint
        self.started = time.perf_counter()
        self.params, self.end_ids, self.max_context = params, end_ids, max_context
        self.sampler = Sampler(params)
        self.decoder = tokenizer.stream_decoder()  # type: ignore[attr-defined]
        self.longest_stop = max((len(s) for s in params.stop), default=0)
        self.prompt_tokens = len(ids)
        self.context, self.generated = list(ids), []  # type: tuple[list[int], list[int]]
        self.pos = len(ids)
        self.text, self.emitted, self.finish = "", 0, "length"
        self.first_s: float | None = None
        self.done, self._stopped = False, False

    def advance(self, logits: np.ndarray) -> str:
        """Sample the token after `logits`; the text that is safe to emit now (may be ""). Sets `done` at the end."""
        # only tokens the schema allows here; the end of turn only once the JSON is complete
        allowed = self.constraint.allowed() if self.constraint is not None else None
        token = self.sampler(logits, self.context, allowed)
        if self.constraint is not None:
            self.constraint.consume(token)
        if self.first_s is None:
            self.first_s = time.perf_counter()
        if token in self.end_ids:
            return self._end("stop")
        self.generated.append(token)
        self.context.append(token)
        out = ""
        piece = self.decoder.step(token)  # "" while the token ends inside a UTF-8 sequence
        if piece:
            self.text += piece
            # Only the new text and the tail before it can complete a stop string.
            cut = find_stop(self.text, self.params.stop, max(0, len(self.text) - len(piece) - self.longest_stop + 1))
            if cut >= 0:
                self.text, self._stopped = self.text[:cut], True
                return self._end("stop")
            safe = len(self.text) - holdback(self.text, self.params.stop)  # what cannot grow into a stop string
            if safe > self.emitted:
                out, self.emitted = self.text[self.emitted:safe], safe
        if len(self.generated) >= self.params.max_tokens or self.pos >= self.max_context:
            return out + self._end("length")
        return out

    def stepped(self) -> None:
        """The step that wrote context[-1] at `pos` ran."""
        self.pos += 1

    def cancel(self) -> str:
        return self._end("cancelled")

    def _end(self, reason: str) -> str:
        """Finish: flush the decoder (a stop string may end in its tail) and return the text not yet emitted."""
        self.finish, self.done = reason, True
        if not self._stopped and (tail := self.decoder.flush()):
            self.text += tail
            start = max(0, len(self.text) - len(tail) - self.longest_stop + 1)
            if (cut := find_stop(self.text, self.params.stop, start)) >= 0:
                self.text, self.finish = self.text[:cut], "stop"
        out = self.text[self.emitted:]
        self.emitted = len(self.text)
        return out

    def result(self) -> GenerationResult:
        end = time.perf_counter()
        first, n = self.first_s or end, len(self.generated)
        return GenerationResult(
            text=self.text, finish_reason=self.finish, prompt_tokens=self.prompt_tokens, completion_tokens=n,
            ttft_s=first - self.started,
            decode_tokens_per_s=(n - 1) / (end - first) if n > 1 and end > first else 0.0,
            total_s=end - self.started, token_ids=tuple(self.generated))
