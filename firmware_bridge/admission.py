"""Admission: what happens to a parsed request between its transport and a worker, whatever transport it came by.

One place decides, for every request: answer it again from memory (a redelivered or repeated request that was
answered), join it to the same request already queued or running (answered once, every copy acked then), refuse it
(the engine's check, before queueing), answer `busy` (the queue is full), or queue it. After a worker's answer,
`finish` stores the answer (committed before any ack, so a restart answers a redelivery from it) and hands back the
deliveries to ack and the repeats owed a copy. A job is keyed by (response topic, request id): two clients may both
use id "1".
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from edgegen.firmware_bridge.answer_store import Answer, AnswerStore
from edgegen.firmware_bridge.counters import Counters
from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.schema import ImageRequest, TextRequest

log = logging.getLogger(__name__)
Delivery = Any  # the transport's handle on one received copy (MQTT: message id and connection number), acked later


@dataclasses.dataclass(eq=False)
class Job:
    key: tuple[str, str]  # (response topic, request id)
    request: TextRequest | ImageRequest
    response_topic: str
    correlation: bytes | None
    deliveries: list[Delivery]  # every copy received, acked once answered
    received_s: float
    deadline_s: float | None
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    twin_correlations: list[bytes | None] = dataclasses.field(default_factory=list)  # repeats that joined this job
    replies: Any = None  # workers.Replies for a transport of its own (HTTP); None: the service's MQTT transport
    remember: bool = True  # store the answer for redeliveries (MQTT); an HTTP request is never redelivered


@dataclasses.dataclass(frozen=True)
class Admitted:
    """What admission did with a request: `queued` or `joined` (ack later), `answered` (send `answer` again),
    `refused` (send `error`), `busy` (send a busy error). Only queued and joined requests wait for their ack."""

    outcome: str
    job: Job | None = None
    answer: Answer | None = None
    error: RequestError | None = None

    @property
    def pending(self) -> bool:
        return self.outcome in ("queued", "joined")


class Admission:
    """The queue (bounded), the jobs queued or running, and the answers remembered; safe from any thread."""

    def __init__(self, queue_size: int, answers: AnswerStore, counters: Counters,
                 check: Callable[[TextRequest | ImageRequest], None], device: str) -> None:
        self.queue_size, self.answers, self.counters, self.device = queue_size, answers, counters, device
        self._check = check
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[Job] = collections.deque()
        self._active: dict[tuple[str, str], Job] = {}

    def admit(self, request: TextRequest | ImageRequest, response_topic: str, correlation: bytes | None,
              delivery: Delivery, expiry_s: float | None = None, replies: Any = None) -> Admitted:
        """`replies`: answer through these (workers.Replies) instead of the MQTT transport: a request of another
        transport (HTTP), which is neither acked nor remembered."""
        key = (response_topic, request.id)
        with self._lock:
            twin = self._active.get(key)
            if twin is not None:
                twin.deliveries.append(delivery)
                if correlation != twin.correlation:  # a repeat, not a redelivered copy: it is owed its own answer
                    twin.twin_correlations.append(correlation)
        # Not active: never seen, or finished, and then stored already (finish stores before it drops the job).
        answer = None if twin is not None else self.answers.get(*key)
        if answer is not None or twin is not None:
            self.counters.add("duplicates")
        if twin is not None:
            return Admitted("joined", twin)
        if answer is not None:
            return Admitted("answered", answer=answer)
        try:
            self._check(request)
        except RequestError as e:
            return Admitted("refused", error=e)
        now = time.monotonic()
        job = Job(key, request, response_topic, correlation, [] if replies is not None else [delivery], now,
                  now + expiry_s if expiry_s else None, replies=replies, remember=replies is None)
        with self._lock:
            if len(self._queue) >= self.queue_size:
                full = True
            else:
                full = False
                self._queue.append(job)
                self._active[key] = job
                self._wake.notify()
        if full:
            self.counters.add("busy")
            return Admitted("busy", error=RequestError(
                ErrorCode.BUSY, f"device {self.device} has {self.queue_size} requests waiting; retry later"))
        return Admitted("queued", job)

    def take(self, timeout_s: float) -> Job | None:
        """The oldest queued job (first come, first served), or None after `timeout_s` with none."""
        with self._lock:
            if not self._queue:
                self._wake.wait(timeout=timeout_s)
            return self._queue.popleft() if self._queue else None

    def cancel(self, request_id: str) -> int:
        """Set the cancel flag of every queued or running job with this id; how many there were."""
        with self._lock:
            jobs = [job for job in self._active.values() if job.request.id == request_id]
            for job in jobs:
                job.cancel.set()
        return len(jobs)

    def cancel_all(self) -> None:
        with self._lock:
            for job in self._active.values():
                job.cancel.set()
            self._wake.notify_all()

    def finish(self, job: Job, answer: Answer) -> tuple[list[Delivery], list[bytes | None]]:
        """Remember the answer (committed), then drop the job: the deliveries to ack and the correlations of repeats
        owed a copy."""
        try:
            if job.remember:
                self.answers.put(job.response_topic, job.request.id, answer)
        except sqlite3.Error:  # e.g. a full disk: the answer went out, but a redelivery will be generated again
            log.exception("could not remember the answer to request %s", job.request.id)
        with self._lock:
            self._active.pop(job.key, None)
            return list(job.deliveries), list(job.twin_correlations)

    @property
    def depth(self) -> int:
        """Requests waiting (not the running ones)."""
        with self._lock:
            return len(self._queue)

    def waiting(self) -> list[Job]:
        """A copy of the queue, oldest first."""
        with self._lock:
            return list(self._queue)

    def clear(self) -> None:
        """Forget every queued and running job (their requests stay unacked: the broker redelivers them)."""
        with self._lock:
            self._queue.clear()
            self._active.clear()
