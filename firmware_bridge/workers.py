"""Workers: a queued job run on its engine, its answer assembled and sent through the transport's `Replies`.

A text job streams chunks as the engine emits them (when the request asked for a stream) and ends with one final
message; an image job sends its PNG, then the final message. The answer (every payload sent, in order) is returned
for the answer store. A job the service stops in the middle returns None: it is neither answered nor acked, and the
broker redelivers it after a restart.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from edgegen.device.measure import peak_rss_bytes
from edgegen.firmware_bridge import responses
from edgegen.firmware_bridge.admission import Job
from edgegen.firmware_bridge.answer_store import Answer
from edgegen.firmware_bridge.counters import Counters
from edgegen.firmware_bridge.engines import ImageEngine, TextEngine
from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.schema import ImageRequest, TextRequest, encode


class Replies(Protocol):
    """What a worker needs from the transport: send a payload to the job's requester (`wait`: until the transport
    has it delivered, for final messages) and send an error (returns the payload it sent)."""

    def send(self, job: Job, payload: bytes, content_type: str = responses.JSON_CONTENT_TYPE,
             wait: bool = False) -> None: ...

    def error(self, job: Job, code: ErrorCode | str, message: str) -> bytes: ...


def json_answer(payload: bytes) -> Answer:
    return ((payload, responses.JSON_CONTENT_TYPE),)


def stable_seed(request_id: str) -> int:
    """A seed derived from the request id, so a redelivered request samples the same text as its first run."""
    return int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big") >> 1


class RunGate:
    """Requests run side by side (running()); a swap of the engines waits until none runs and holds new ones back
    until it is done (alone())."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self.busy = 0
        self._alone = False

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        with self._cv:
            self._cv.wait_for(lambda: not self._alone)
            self.busy += 1
        try:
            yield
        finally:
            with self._cv:
                self.busy -= 1
                self._cv.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        with self._cv:
            self._cv.wait_for(lambda: not self._alone)
            self._alone = True
            self._cv.wait_for(lambda: self.busy == 0)
        try:
            yield
        finally:
            with self._cv:
                self._alone = False
                self._cv.notify_all()


class Workers:
    """Runs jobs on the engines the service holds now (read at each job: a deployment swaps them between jobs)."""

    def __init__(self, device: str, replies: Replies, counters: Counters, stopping: threading.Event,
                 observe: Callable[[responses.Stats], None] | None = None) -> None:
        """replies: the MQTT transport (a job of another transport brings its own); observe(stats): each text
        answer's cost, for the metrics."""
        self.device, self.replies, self.counters, self.stopping = device, replies, counters, stopping
        self.observe = observe

    def run(self, job: Job, text_engines: dict[str, TextEngine],
            image_engines: dict[str, ImageEngine]) -> Answer | None:
        """The job's answer, sent; an expired or refused job gets its error. None: stopped mid-way, not answered."""
        now = time.monotonic()
        replies: Replies = job.replies or self.replies
        if job.deadline_s is not None and now > job.deadline_s and not job.cancel.is_set():
            return json_answer(replies.error(job, ErrorCode.EXPIRED, f"request waited {now - job.received_s:.1f}"
                                                                          " s, past its message expiry"))
        queue_ms = (now - job.received_s) * 1000
        try:
            if isinstance(job.request, TextRequest):
                return self._text(job, job.request, text_engines[job.request.model], queue_ms, replies)
            return self._image(job, job.request, image_engines[job.request.model], queue_ms, replies)
        except RequestError as e:
            return json_answer(replies.error(job, e.code, e.message))

    def _text(self, job: Job, request: TextRequest, engine: TextEngine, queue_ms: float,
              replies: Replies) -> Answer | None:
        if request.sampling.seed is None:
            request = dataclasses.replace(request, sampling=dataclasses.replace(request.sampling,
                                                                                seed=stable_seed(request.id)))
        seq, start = 0, time.monotonic()
        deadline_hit, first_piece_s = False, 0.0

        def emit(text: str) -> None:
            nonlocal seq, deadline_hit, first_piece_s
            first_piece_s = first_piece_s or time.monotonic()
            if job.deadline_s is not None and time.monotonic() > job.deadline_s:
                deadline_hit = True
                job.cancel.set()
            if request.stream:
                replies.send(job, encode(responses.chunk(request.id, seq, text), responses.MAX_RESPONSE_BYTES))
                seq += 1

        if job.cancel.is_set():  # cancelled while queued: nothing to run
            text, reason, stats = "", "cancelled", responses.Stats(queue_ms=round(queue_ms, 3))
        else:
            out = engine.generate(request, job.cancel, emit)
            if self.stopping.is_set():
                return None  # not acked: the broker redelivers it to this device's session after a restart
            text, reason = out.text, "deadline" if deadline_hit else out.finish_reason
            stats = responses.Stats(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                                    ttft_ms=round(((first_piece_s or time.monotonic()) - start) * 1000, 3),
                                    tokens_per_s=round(out.tokens_per_s, 2),
                                    total_ms=round((time.monotonic() - start) * 1000, 3),
                                    queue_ms=round(queue_ms, 3), peak_rss_bytes=peak_rss_bytes())
        if reason == "cancelled":
            self.counters.add("cancelled")
        self.counters.add("served")
        self.counters.add("generated_tokens", stats.completion_tokens)
        if self.observe is not None and stats.completion_tokens:
            self.observe(stats)
        payload = encode(responses.final(request.id, text, reason, seq, self.device, stats),
                         responses.MAX_RESPONSE_BYTES)
        replies.send(job, payload, wait=True)
        return json_answer(payload)

    def _image(self, job: Job, request: ImageRequest, engine: ImageEngine, queue_ms: float,
               replies: Replies) -> Answer | None:
        start = time.monotonic()
        out = engine.generate(request, job.cancel)
        if self.stopping.is_set():
            return None
        if len(out.png) > responses.MAX_IMAGE_BYTES:  # checked before publishing: see responses.MAX_IMAGE_BYTES
            raise RequestError(ErrorCode.INTERNAL, f"the image engine made a {len(out.png)}-byte PNG, over the "
                               f"{responses.MAX_IMAGE_BYTES}-byte limit")
        image: Answer = ((out.png, responses.PNG_CONTENT_TYPE),) if out.finish_reason == "stop" else ()
        if image:
            replies.send(job, out.png, responses.PNG_CONTENT_TYPE)
        stats = responses.Stats(total_ms=round((time.monotonic() - start) * 1000, 3), queue_ms=round(queue_ms, 3),
                                peak_rss_bytes=peak_rss_bytes())
        self.counters.add("served")
        payload = encode(responses.final(request.id, "", out.finish_reason, 0, self.device, stats))
        replies.send(job, payload, wait=True)
        return image + json_answer(payload)
