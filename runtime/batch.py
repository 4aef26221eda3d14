"""Continuous batching: several generations share one model, each in its own KV cache slot, advanced together by
one decode step per token (llama.cpp's server calls these slots).

A scheduler thread owns the steps. Between two decode steps it admits at most one waiting request (its prompt is
prefilled into the batch-1 cache, reusing a prefix a previous prompt left there, and copied into a free slot), so the
streams already running keep flowing; then one decode step advances every busy slot (runtime.graphs.decode_slots: the
matmuls take one row per sequence, attention runs per sequence over its own cache) and each sequence samples its own
token (runtime.sequence.Sequence). A finished or cancelled sequence frees its slot at once. Requests wait in
first-come, first-served order.

Every row of a step is computed as that sequence's decode step alone would compute it (the hand-written kernels'
rows are independent: tests/native), so a request's tokens do not depend on what else runs beside it. That holds for
the hand-written CPU kernels only; with tinygrad's generated kernels a batch of rows is a different computation, and
TextGenerator.batched refuses.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgegen.runtime.artifact.constants import MAX_SLOTS
from edgegen.runtime.errors import GenerationError
from edgegen.runtime.sampling import SamplingParams
from edgegen.runtime.sequence import GenerationResult, Sequence, TextStream

if TYPE_CHECKING:
    from edgegen.runtime.engine import TextGenerator

log = logging.getLogger(__name__)


@dataclass
class _Request:
    ids: list[int]
    params: SamplingParams
    cancel: threading.Event
    end_ids: set[int] | tuple
    out: queue.Queue = field(default_factory=queue.Queue)  # text pieces, then a GenerationResult or an exception


class BatchGenerator:
    """Generations of one TextGenerator, up to `slots` at once. Thread-safe: any number of threads may call stream()
    and read their streams concurrently. close() stops the scheduler; streams still running end as cancelled."""

    def __init__(self, gen: TextGenerator, slots: int) -> None:
        if not 1 <= slots <= MAX_SLOTS:
            raise GenerationError(f"slots must be from 1 to {MAX_SLOTS}, got {slots}")
        if not gen.graphs.native:
            raise GenerationError("several sequences at once need the hand-written CPU kernels (--kernels native or "
                                  "auto on the CPU): with tinygrad's kernels a batched row is computed differently "
                                  "from the same row alone")
        self.gen, self.slots = gen, slots
        with gen.lock:
            gen.graphs.allocate_slots(slots)
        self._waiting: collections.deque[_Request] = collections.deque()
        self._busy: dict[int, tuple[_Request, Sequence]] = {}
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="edgegen-batch", daemon=True)
        self._thread.start()

    @property
    def busy_slots(self) -> int:
        with self._cv:
            return len(self._busy)

    @property
    def waiting(self) -> int:
        with self._cv:
            return len(self._waiting)

    def stream(self, prompt: str | list[dict], params: SamplingParams | None = None, chat: bool = True,
               cancel: threading.Event | None = None) -> TextStream:
        """As TextGenerator.stream: checked now, generated as a slot frees up."""
        return self.stream_ids(self.gen.encode_prompt(prompt, chat), params, cancel)

    def stream_ids(self, ids: list[int], params: SamplingParams | None = None,
                   cancel: threading.Event | None = None, ignore_eos: bool = False) -> TextStream:
        ids, params = self.gen.checked_ids(ids, params)
        request = _Request(ids, params, cancel or threading.Event(),
                           () if ignore_eos else self.gen.prompts.end_ids)
        with self._cv:
            if self._closed:
                raise GenerationError("the batch generator is closed")
            self._waiting.append(request)
            self._cv.notify()
        return TextStream(self._read(request))

    def generate(self, prompt: str | list[dict], params: SamplingParams | None = None, chat: bool = True,
                 cancel: threading.Event | None = None) -> GenerationResult:
        return self.stream(prompt, params, chat, cancel).finish()

    @staticmethod
    def _read(request: _Request) -> Generator[str, None, GenerationResult]:
        try:
            while True:
                item = request.out.get()
                if isinstance(item, str):
                    yield item
                elif isinstance(item, GenerationResult):
                    return item
                else:
                    raise item
        finally:  # a reader that stops reading cancels its generation, which frees its slot
            request.cancel.set()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=60)

    # ---- the scheduler thread ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._waiting and not self._busy:
                    self._cv.wait()
                if self._closed:
                    break
                request = self._waiting.popleft() if self._waiting and len(self._busy) < self.slots else None
            try:
                if request is not None:
                    self._admit(request)
                if self._busy:
                    self._step()
            except Exception as e:  # every running stream hears of it; the scheduler goes on
                log.exception("a batched step failed")
                with self._cv:
                    failed, self._busy = [req for req, _ in self._busy.values()], {}
                if request is not None and request not in failed:  # admitted before the step failed: told once
                    failed.append(request)
                for req in failed:
                    req.out.put(e)
        with self._cv:
            ended = list(self._busy.values()) + [(r, None) for r in self._waiting]
            self._busy, self._waiting = {}, collections.deque()
        for req, seq in ended:
            if seq is None:
                seq = Sequence(req.ids, req.params, self.gen.tokenizer, req.end_ids, self.gen.config.max_context)
            self._finish(req, seq, seq.cancel())

    def _admit(self, req: _Request) -> None:
        """Prefill `req`'s prompt into the batch-1 cache, copy it into the lowest free slot, sample its first token."""
        seq = self.gen.sequence(req.ids, req.params, req.end_ids)
        if req.cancel.is_set():
            self._finish(req, seq, seq.cancel())
            return
        slot = min(set(range(self.slots)) - set(self._busy))
        with self.gen.lock:
            logits = self.gen.graphs.prefill_reusing(seq.context)
            self.gen.graphs.copy_to_slot(slot, len(seq.context))
        piece = seq.advance(logits)
        if piece:
            req.out.put(piece)
        if seq.done:
            self._finish(req, seq, "")
        else:
            with self._cv:
                self._busy[slot] = (req, seq)

    def _step(self) -> None:
        """One decode step of every busy slot, through the smallest batch graph that covers them."""
        from edgegen.runtime.graphs import slot_batch_sizes

        busy = dict(self._busy)
        width = next(b for b in slot_batch_sizes(self.slots) if b > max(busy))
        tokens = [busy[i][1].context[-1] if i in busy else 0 for i in range(width)]
        positions = [busy[i][1].pos if i in busy else 0 for i in range(width)]
        with self.gen.lock:
            logits = self.gen.graphs.decode_slots(tokens, positions)
        for slot, (req, seq) in busy.items():
            seq.stepped()
            piece = seq.cancel() if req.cancel.is_set() else seq.advance(logits[slot])
            if piece:
                req.out.put(piece)
            if seq.done:
                with self._cv:
                    del self._busy[slot]
                self._finish(req, seq, "")

    @staticmethod
    def _finish(req: _Request, seq: Sequence, piece: str) -> None:
        if piece:
            req.out.put(piece)
        req.out.put(seq.result())
