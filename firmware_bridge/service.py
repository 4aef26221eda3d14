"""The device service: a transport, admission, workers and telemetry put together for one device id.

    request ─► transport (mqtt_transport: paho, topics, acks) ─► admission (dedupe, answer store, queue)
            ─► worker (workers: the engine, chunks and the final answer) ─► admission.finish (store) ─► ack

Reliability (docs/MQTT.md): a request is acked only once its answer is published and stored, so a device killed
mid-generation gets it again after a restart, and a redelivered or repeated request is answered from memory or joins
the running one instead of being generated twice. The queue is bounded and answers `busy` when full.

Deployment (firmware_bridge/deploy/agent.py) plugs in as a `DeployHost` user: `add_hook` (told of every connect,
stopped with the service), `swap_engine` (between requests), `leave_pool`/`join_pool`. `after_answer` is a test hook:
called with each job after its answer is stored and before it is acked (the crash window the answer store exists for).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

from edgegen.device.measure import peak_rss_bytes
from edgegen.firmware_bridge import topics
from edgegen.firmware_bridge.admission import Admission, Admitted, Job
from edgegen.firmware_bridge.answer_store import DEFAULT_MAX_BYTES, AnswerStore
from edgegen.firmware_bridge.connection import PUBLISH_WAIT_S, BrokerOptions
from edgegen.firmware_bridge.counters import Counters
from edgegen.firmware_bridge.engines import ImageEngine, TextEngine
from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.metrics import Metrics
from edgegen.firmware_bridge.mqtt_transport import ConnectHook, Incoming, MqttTransport
from edgegen.firmware_bridge.schema import CancelRequest, ImageRequest, TextRequest, parse_request
from edgegen.firmware_bridge.workers import Replies, RunGate, Workers, json_answer, stable_seed

__all__ = ["DeviceService", "ServiceConfig", "stable_seed"]
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    device_id: str
    pool: str | None = None
    queue_size: int = 8  # requests waiting behind the running ones; one more gets `busy`
    parallel: int = 1  # requests run at once (worker threads; the text engines' slots: `serve --parallel`)
    telemetry_interval_s: float = 10.0
    session_expiry_s: int = 24 * 3600  # how long the broker keeps our session (and our unacked requests) offline
    remembered_answers: int = 1024  # answers kept for redeliveries and repeats, oldest dropped first ...
    remembered_answer_bytes: int = DEFAULT_MAX_BYTES  # ... and at most this many payload bytes of them
    state_dir: Path | None = None  # where the answers survive a restart; None: in memory only


class DeviceService:
    """Serve `text_engines` (and `image_engines`) by model name for one device id, optionally in a pool."""

    def __init__(self, config: ServiceConfig, broker: BrokerOptions, text_engines: dict[str, TextEngine],
                 image_engines: dict[str, ImageEngine] | None = None,
                 after_answer: Callable[[Job], None] | None = None):
        topics.check_name(config.device_id)
        if config.pool is not None:
            topics.check_name(config.pool, "pool")
        self.config, self.broker, self.device, self.pool = config, broker, config.device_id, config.pool
        self.text_engines, self.image_engines = dict(text_engines), dict(image_engines or {})
        self.counters = Counters()
        self.after_answer = after_answer
        self.transport = MqttTransport(self.device, config.pool, broker, config.session_expiry_s, self.counters,
                                       self._on_request)
        self.client: mqtt.Client = self.transport.client
        answers = AnswerStore.open(config.state_dir, config.remembered_answers, config.remembered_answer_bytes)
        self.admission = Admission(config.queue_size, answers, self.counters, self._check, self.device)
        self.metrics = Metrics(self.report)
        self.workers = Workers(self.device, self.transport, self.counters, self.transport.stopping,
                               self.metrics.observe)
        self._started_s = time.monotonic()
        self._threads: list[threading.Thread] = []
        self.gate = RunGate()  # workers pass it while they run a request: a swap waits for all of them
        self._set_models()

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (retrying with backoff) and start the worker and telemetry threads."""
        self.transport.start()
        names = [f"worker{i}" for i in range(self.config.parallel)] + ["telemetry"]
        for target, name in [(self._work, n) for n in names[:-1]] + [(self.run_telemetry, names[-1])]:
            t = threading.Thread(target=target, name=f"edgegen-{name}-{self.device}", daemon=True)
            t.start()
            self._threads.append(t)

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until connected and subscribed."""
        return self.transport.connected.wait(timeout_s)

    def is_connected(self) -> bool:
        return self.transport.connected.is_set()

    def stop(self) -> None:
        """Publish `offline`, stop the running generation without acking it (the broker keeps it), disconnect."""
        self.transport.stopping.set()
        for hook in self.transport.hooks:
            hook.stop()
        self.admission.cancel_all()
        for t in self._threads:
            t.join(timeout=PUBLISH_WAIT_S)
        self.transport.stop()
        self.admission.answers.close()

    # -- what the deploy agent uses (deploy.agent.DeployHost) ------------------------------------------------------
    def add_hook(self, hook: ConnectHook) -> None:
        self.transport.hooks.append(hook)

    def leave_pool(self) -> None:
        """Stop taking pool requests (unsubscribe the shared subscriptions); requests already here are answered."""
        self.transport.leave_pool()

    def join_pool(self) -> None:
        """Take pool requests again after `leave_pool`."""
        self.transport.join_pool()

    def swap_engine(self, kind: str, name: str, engine: TextEngine | ImageEngine) -> None:
        """Serve `name` (a "text" or "image" model) with `engine` from the next request on: waits for the running
        request, never interrupts one; then republishes the models list."""
        assert kind in topics.KINDS, kind
        with self.gate.alone():  # new dicts, not updates: _check reads them on paho's thread
            if kind == "text":
                self.text_engines = {**self.text_engines, name: engine}  # type: ignore[dict-item]
            else:
                self.image_engines = {**self.image_engines, name: engine}  # type: ignore[dict-item]
        self._set_models()
        self.transport.publish_models()

    def _set_models(self) -> None:
        self.transport.models = (list(self.text_engines), list(self.image_engines))

    # -- admission (paho's network thread) -------------------------------------------------------------------------
    def _on_request(self, m: Incoming) -> bool:
        """Handle one request message; True when it is pending (queued or joined a twin) and must not be acked yet."""
        t = self.transport
        try:
            request = parse_request(m.kind, m.payload)
        except RequestError as e:
            t.send_error(m.response_topic or e.reply_to, m.correlation, e.request_id, e.code, e.message)
            return False
        if isinstance(request, CancelRequest):
            n = self.admission.cancel(request.id)
            log.info("cancel %s: %s", request.id, "stopping it" if n else "not queued here")
            return False
        response_topic = m.response_topic or request.reply_to
        if response_topic is None:
            t.send_error(None, m.correlation, request.id, ErrorCode.NO_RESPONSE_TOPIC,
                         f"request on {m.topic} has no usable MQTT 5 Response Topic")
            return False
        admitted = self.admission.admit(request, response_topic, m.correlation, m.delivery, m.expiry_s)
        if admitted.outcome == "joined":
            log.info("request %s is already queued or running; answering it once", request.id)
        elif admitted.outcome == "answered":
            log.info("request %s was answered before; sending the answer again", request.id)
            t.send_answer(response_topic, m.correlation, admitted.answer or ())
        elif admitted.error is not None:
            t.send_error(response_topic, m.correlation, request.id, admitted.error.code, admitted.error.message)
        return admitted.pending

    def submit(self, request: TextRequest, replies: Replies) -> Admitted:
        """A request of another transport (HTTP): queued as MQTT ones are, answered through `replies`."""
        return self.admission.admit(request, f"local/{uuid.uuid4().hex}", None, None, replies=replies)

    def text_models(self) -> list[str]:
        return sorted(self.text_engines)

    def metrics_text(self) -> bytes:
        return self.metrics.exposition()

    def _check(self, request: TextRequest | ImageRequest) -> None:
        engines: dict = self.text_engines if request.kind == "text" else self.image_engines
        if not engines:
            raise RequestError(ErrorCode.UNSUPPORTED, f"device {self.device} has no {request.kind} engine")
        if request.model not in engines:
            raise RequestError(ErrorCode.UNKNOWN_MODEL, f"model {request.model!r} is not served here; "
                               f"{request.kind} models: {sorted(engines)}")
        engines[request.model].check(request)

    # -- the worker and telemetry threads --------------------------------------------------------------------------
    def _work(self) -> None:
        while not self.transport.stopping.is_set():
            job = self.admission.take(timeout_s=1.0)
            if job is not None:
                self.run_job(job)

    def run_job(self, job: Job) -> None:
        """Run one admitted job to its stored, acked answer (the worker thread's step; tests call it directly)."""
        t = self.transport
        try:
            with self.gate.running():
                if t.state != "busy":
                    t.publish_status("busy")
                answer = self.workers.run(job, self.text_engines, self.image_engines)
        except Exception:  # the device keeps serving
            log.exception("request %s failed", job.request.id)
            answer = json_answer(t.error(job, ErrorCode.INTERNAL, "the engine failed; see the device log"))
        if answer is not None:
            deliveries, twins = self.admission.finish(job, answer)
            if self.after_answer is not None:
                self.after_answer(job)
            for correlation in twins:
                t.send_answer(job.response_topic, correlation, answer)
            t.ack(deliveries)
        if self.admission.depth == 0 and self.gate.busy == 0 and not t.stopping.is_set():
            t.publish_status("online")

    def report(self) -> dict:
        """The telemetry report published every `telemetry_interval_s`."""
        return {"v": 1, "device": self.device, "ts": round(time.time(), 3), "state": self.transport.state,
                "queue_depth": self.admission.depth, "queue_size": self.config.queue_size,
                "slots": self.config.parallel, "busy_slots": self.gate.busy,
                "uptime_s": round(time.monotonic() - self._started_s, 1),
                "peak_rss_bytes": peak_rss_bytes(), **self.counters.snapshot()}

    def run_telemetry(self) -> None:
        while not self.transport.stopping.wait(self.config.telemetry_interval_s):
            if not self.transport.connected.is_set():
                continue
            try:
                self.transport.publish_telemetry(self.report())
            except Exception:  # one report that cannot go out must not end telemetry for good
                log.exception("telemetry report not sent")


def serve(config: ServiceConfig, broker: BrokerOptions, text_engines: dict[str, TextEngine],
          image_engines: dict[str, ImageEngine] | None = None, *, stop: threading.Event,
          setup: Callable[[DeviceService], None] | None = None, ready: Callable[[DeviceService], None] | None = None,
          after_answer: Callable[[Job], None] | None = None, connect_wait_s: float = 10.0) -> None:
    """Serve until `stop` is set: the library call behind `edgegen serve` (the CLI only parses its flags).

    setup(service): before it connects (the deploy agent attaches here); ready(service): once connected and
    subscribed, or after `connect_wait_s` (it goes on trying); then the service runs until `stop`, and stops."""
    service = DeviceService(config, broker, text_engines, image_engines, after_answer)
    if setup is not None:
        setup(service)
    service.start()
    try:
        if not service.wait_connected(connect_wait_s):
            log.warning("not connected to %s:%d yet; still trying", broker.host, broker.port)
        if ready is not None:
            ready(service)
        stop.wait()
    finally:
        service.stop()
