"""The device agent: takes requests from MQTT, runs them one at a time on an engine, streams the answers back.

Reliability (docs/ARCHITECTURE.md, MQTT): requests arrive at QoS 1 into a persistent session (clean_start=False, session
expiry) and are acknowledged by hand only once their answer is published, so a device killed mid-generation gets
them again after a restart. Request ids are remembered: a redelivered or repeated request is answered from memory
or joins the running generation instead of being generated twice; with a state folder that memory is a file
(answer_store.py), committed before the ack, so it survives a restart. The queue is bounded and answers `busy` when
full.

Deployment (firmware_bridge/deploy/agent.py) plugs in through `deploy_hook` (told of every connect, stopped with
the service), `swap_engine` (between requests) and `leave_pool`/`join_pool`.

Test-only fault injection: with the environment variable EDGEGEN_FAULT=exit-after-answer the process calls
os._exit(137) right after a final answer was published and stored, before the request is acked (the crash window
the answer store exists for). Never set it on a device.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgegen.device.measure import peak_rss_bytes
from edgegen.firmware_bridge import responses, topics
from edgegen.firmware_bridge.answer_store import DEFAULT_MAX_BYTES, Answer, AnswerStore
from edgegen.firmware_bridge.connection import BrokerOptions, make_client
from edgegen.firmware_bridge.counters import Counters
from edgegen.firmware_bridge.engines import ImageEngine, TextEngine
from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.schema import CancelRequest, ImageRequest, Request, TextRequest, encode, parse_request

log = logging.getLogger(__name__)
PUBLISH_WAIT_S = 10.0
FAULT_ENV = "EDGEGEN_FAULT"  # test-only, see the module docstring
FAULTS = ("exit-after-answer",)


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    device_id: str
    pool: str | None = None
    queue_size: int = 8  # requests waiting behind the running one; one more gets `busy`
    telemetry_interval_s: float = 10.0
    session_expiry_s: int = 24 * 3600  # how long the broker keeps our session (and our unacked requests) offline
    remembered_answers: int = 1024  # answers kept for redeliveries and repeats, oldest dropped first ...
    remembered_answer_bytes: int = DEFAULT_MAX_BYTES  # ... and at most this many payload bytes of them
    state_dir: Path | None = None  # where the answers survive a restart; None: in memory only


@dataclasses.dataclass(eq=False)
class _Job:
    key: tuple[str, str]  # (response topic, request id): two clients may both use id "1"
    request: TextRequest | ImageRequest
    response_topic: str
    correlation: bytes | None
    deliveries: list[tuple[int, int]]  # (mid, connection number) of each copy received, acked once answered
    received_s: float
    deadline_s: float | None
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    twin_correlations: list[bytes | None] = dataclasses.field(default_factory=list)  # repeats that joined this job


def _json(payload: bytes) -> Answer:
    return ((payload, responses.JSON_CONTENT_TYPE),)


def stable_seed(request_id: str) -> int:
    """A seed derived from the request id, so a redelivered request samples the same text as its first run."""
    return int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big") >> 1


class DeviceService:
    """Serve `text_engines` (and `image_engines`) by model name for one device id, optionally in a pool."""

    def __init__(self, config: ServiceConfig, broker: BrokerOptions, text_engines: dict[str, TextEngine],
                 image_engines: dict[str, ImageEngine] | None = None):
        topics.check_name(config.device_id)
        if config.pool is not None:
            topics.check_name(config.pool, "pool")
        self.config, self.broker = config, broker
        self.text_engines, self.image_engines = dict(text_engines), dict(image_engines or {})
        self.device = config.device_id
        self.counters = Counters()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[_Job] = collections.deque()
        self._active: dict[tuple[str, str], _Job] = {}
        self._answers = AnswerStore.open(config.state_dir, config.remembered_answers, config.remembered_answer_bytes)
        self._fault = os.environ.get(FAULT_ENV)
        if self._fault is not None and self._fault not in FAULTS:
            log.warning("%s=%s is not a known fault (%s); ignored", FAULT_ENV, self._fault, ", ".join(FAULTS))
        self._connection = 0
        self._state = "online"
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._started_s = time.monotonic()
        self._threads: list[threading.Thread] = []
        self._run_lock = threading.Lock()  # held by the worker while it runs a request: a swap waits for it
        self._in_pool = config.pool is not None
        self.deploy_hook: Any = None  # an object with on_connect(client) and stop(); see deploy/agent.py
        self.client = make_client(config.device_id, broker, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._subscribe_mid = -1
        offline = encode(responses.status(self.device, "offline", time.time()))
        self.client.will_set(topics.status(self.device), offline, qos=1, retain=True)

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (retrying with backoff) and start the worker and telemetry threads."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        self.client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive_s, clean_start=False,
                                  properties=props)
        self.client.loop_start()
        for target, name in ((self._work, "worker"), (self._report, "telemetry")):
            t = threading.Thread(target=target, name=f"edgegen-{name}-{self.device}", daemon=True)
            t.start()
            self._threads.append(t)

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until connected and subscribed."""
        return self._connected.wait(timeout_s)

    def stop(self) -> None:
        """Publish `offline`, stop the running generation without acking it (the broker keeps it), disconnect."""
        self._stopping.set()
        if self.deploy_hook is not None:
            self.deploy_hook.stop()
        with self._lock:
            for job in self._active.values():
                job.cancel.set()
            self._wake.notify_all()
        for t in self._threads:
            t.join(timeout=PUBLISH_WAIT_S)
        if self._connected.is_set():
            self._wait(self._publish_status("offline"))
        self.client.disconnect()
        self.client.loop_stop()
        self._answers.close()

    # -- MQTT callbacks (paho's network thread) --------------------------------------------------------------------
    def _subscriptions(self) -> list[tuple[str, SubscribeOptions]]:
        filters = [topics.device_request(self.device, kind) for kind in ("text", "image", "cancel")]
        if self.config.pool is not None:
            if self._in_pool:
                filters += self._pool_filters()
            filters.append(topics.pool_cancel(self.config.pool))
        return [(f, SubscribeOptions(qos=1)) for f in filters]

    def _pool_filters(self) -> list[str]:
        assert self.config.pool is not None
        return [topics.pool_shared_filter(self.config.pool, kind) for kind in topics.KINDS]

    def leave_pool(self) -> None:
        """Stop taking pool requests (unsubscribe the shared subscriptions); requests already here are answered."""
        if self.config.pool is not None and self._in_pool:
            self._in_pool = False
            self.client.unsubscribe(self._pool_filters())

    def join_pool(self) -> None:
        """Take pool requests again after `leave_pool`."""
        if self.config.pool is not None and not self._in_pool:
            self._in_pool = True
            self.client.subscribe([(f, SubscribeOptions(qos=1)) for f in self._pool_filters()])

    def swap_engine(self, kind: str, name: str, engine: TextEngine | ImageEngine) -> None:
        """Serve `name` (a "text" or "image" model) with `engine` from the next request on: waits for the running
        request, never interrupts one; then republishes the models list."""
        assert kind in topics.KINDS, kind
        with self._run_lock:  # new dicts, not updates: _check reads them on paho's thread
            if kind == "text":
                self.text_engines = {**self.text_engines, name: engine}  # type: ignore[dict-item]
            else:
                self.image_engines = {**self.image_engines, name: engine}  # type: ignore[dict-item]
        self._publish_models()

    def _publish_models(self) -> mqtt.MQTTMessageInfo:
        models = responses.models(self.device, sorted(self.text_engines), sorted(self.image_engines))
        return self.client.publish(topics.models(self.device), encode(models), qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        with self._lock:
            self._connection += 1
        # Subscribing here restores the subscriptions after any reconnect, even to a broker that lost our session.
        _, mid = client.subscribe(self._subscriptions())
        self._subscribe_mid = -1 if mid is None else mid
        self._publish_status(self._state)
        self._publish_models()
        if self.deploy_hook is not None:
            self.deploy_hook.on_connect(client)
        log.info("connected to %s:%d (session present: %s)", self.broker.host, self.broker.port,
                 flags.session_present)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list, properties: Any) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("broker refused subscriptions: %s", refused)
        self._connected.set()  # ready: requests published from now on reach us

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.clear()
        if not self._stopping.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            delivery = (msg.mid, self._connection)
        try:
            if self._accept(msg, delivery):
                return  # queued: acknowledged when answered
        except Exception:  # a bug or a failing answer store: the sender still gets one answer, the device goes on
            log.exception("failed to handle a message on %s", msg.topic)
            self.counters.add("internal_errors")
            self._answer_failure(msg)
        self._ack([delivery])

    @staticmethod
    def _response_topic(props: Any) -> str | None:
        topic = getattr(props, "ResponseTopic", None)
        return topic if topic is not None and topics.is_publishable(topic) else None

    def _answer_failure(self, msg: mqtt.MQTTMessage) -> None:
        """One `internal` error for a message whose handling failed: on its response topic, else the errors topic."""
        correlation = getattr(msg.properties, "CorrelationData", None)
        for topic in dict.fromkeys((self._response_topic(msg.properties), None)):
            try:
                self._send_error(topic, correlation, None, ErrorCode.INTERNAL,
                                 "the device failed to handle this request; see the device log")
                return
            except Exception:  # e.g. paho refused the topic: try the errors topic, and never raise into paho's loop
                log.exception("could not report the failure on %s", topic or "the errors topic")

    def _accept(self, msg: mqtt.MQTTMessage, delivery: tuple[int, int]) -> bool:
        """Handle one request message; True when it was queued (or joined a queued twin) and must not be acked yet."""
        kind = msg.topic.rsplit("/", 1)[-1]
        props = msg.properties
        response_topic = self._response_topic(props)
        correlation = getattr(props, "CorrelationData", None)
        try:
            request: Request = parse_request(kind, bytes(msg.payload))
        except RequestError as e:
            self._send_error(response_topic or e.reply_to, correlation, e.request_id, e.code, e.message)
            return False
        if isinstance(request, CancelRequest):
            self._cancel(request.id)
            return False
        response_topic = response_topic or request.reply_to
        if response_topic is None:
            self._send_error(None, correlation, request.id, ErrorCode.NO_RESPONSE_TOPIC,
                             f"request on {msg.topic} has no usable MQTT 5 Response Topic")
            return False
        key = (response_topic, request.id)
        with self._lock:
            twin = self._active.get(key)
            if twin is not None:
                twin.deliveries.append(delivery)
                if correlation != twin.correlation:  # a repeat, not a redelivered copy: it is owed its own answer
                    twin.twin_correlations.append(correlation)
        # Not active: never seen, or finished, and then stored already (_finish stores before it drops the job).
        answer = None if twin is not None else self._answers.get(*key)
        if answer is not None or twin is not None:
            self.counters.add("duplicates")
        if twin is not None:
            log.info("request %s is already queued or running; answering it once", request.id)
            return True
        if answer is not None:
            log.info("request %s was answered before; sending the answer again", request.id)
            self._send_answer(response_topic, correlation, answer)
            return False
        try:
            self._check(request)
        except RequestError as e:
            self._send_error(response_topic, correlation, request.id, e.code, e.message)
            return False
        expiry_s = getattr(props, "MessageExpiryInterval", None)
        now = time.monotonic()
        job = _Job(key, request, response_topic, correlation, [delivery], now,
                   now + expiry_s if expiry_s else None)
        with self._lock:
            full = len(self._queue) >= self.config.queue_size
            if not full:
                self._queue.append(job)
                self._active[key] = job
                self._wake.notify()
        if full:
            self.counters.add("busy")
            self._send_error(response_topic, correlation, request.id, ErrorCode.BUSY,
                             f"device {self.device} has {self.config.queue_size} requests waiting; retry later")
            return False
        return True

    def _check(self, request: TextRequest | ImageRequest) -> None:
        engines: dict[str, Any] = self.text_engines if request.kind == "text" else self.image_engines
        if not engines:
            raise RequestError(ErrorCode.UNSUPPORTED, f"device {self.device} has no {request.kind} engine")
        if request.model not in engines:
            raise RequestError(ErrorCode.UNKNOWN_MODEL, f"model {request.model!r} is not served here; "
                               f"{request.kind} models: {sorted(engines)}")
        engines[request.model].check(request)

    def _cancel(self, request_id: str) -> None:
        with self._lock:
            jobs = [job for job in self._active.values() if job.request.id == request_id]
            for job in jobs:
                job.cancel.set()
        log.info("cancel %s: %s", request_id, "stopping it" if jobs else "not queued here")

    # -- publishing ------------------------------------------------------------------------------------------------
    def _publish(self, topic: str, correlation: bytes | None, payload: bytes,
                 content_type: str = responses.JSON_CONTENT_TYPE) -> mqtt.MQTTMessageInfo:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = content_type
        if correlation is not None:
            props.CorrelationData = correlation
        return self.client.publish(topic, payload, qos=1, properties=props)

    def _send_error(self, response_topic: str | None, correlation: bytes | None, request_id: str | None,
                    code: ErrorCode | str, message: str) -> bytes:
        self.counters.add("errors")
        log.info("request %s refused: %s: %s", request_id, code, message)
        payload = encode(responses.error(request_id, code, message, self.device), responses.MAX_RESPONSE_BYTES)
        self._publish(response_topic or topics.errors(self.device), correlation, payload)
        return payload

    def _publish_status(self, state: str) -> mqtt.MQTTMessageInfo:
        self._state = state
        payload = encode(responses.status(self.device, state, time.time()))
        return self.client.publish(topics.status(self.device), payload, qos=1, retain=True)

    @staticmethod
    def _wait(info: mqtt.MQTTMessageInfo, timeout_s: float = PUBLISH_WAIT_S) -> bool:
        """Wait for the broker's PUBACK; False when not connected (paho keeps the message and resends it)."""
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            return False
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def _ack(self, deliveries: list[tuple[int, int]]) -> None:
        with self._lock:
            current = self._connection
        for mid, connection in deliveries:
            # A mid from an earlier connection means nothing now; the broker redelivers that copy and it is answered
            # from memory then.
            if connection == current:
                self.client.ack(mid, 1)

    # -- worker and telemetry threads ------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                if not self._queue:
                    self._wake.wait(timeout=1.0)
                    continue
                job = self._queue.popleft()
            try:
                with self._run_lock:
                    self._run(job)
            except Exception:  # the device keeps serving
                log.exception("request %s failed", job.request.id)
                self._finish(job, _json(self._send_error(job.response_topic, job.correlation, job.request.id,
                                                         ErrorCode.INTERNAL, "the engine failed; see the device log")))

    def _run(self, job: _Job) -> None:
        now = time.monotonic()
        if job.deadline_s is not None and now > job.deadline_s and not job.cancel.is_set():
            self._finish(job, _json(self._send_error(job.response_topic, job.correlation, job.request.id,
                                                     ErrorCode.EXPIRED, f"request waited {now - job.received_s:.1f} s, "
                                                     "past its message expiry")))
            return
        if self._state != "busy":
            self._publish_status("busy")
        queue_ms = (now - job.received_s) * 1000
        try:
            if isinstance(job.request, TextRequest):
                payload = self._run_text(job, job.request, queue_ms)
            else:
                payload = self._run_image(job, job.request, queue_ms)
        except RequestError as e:
            payload = _json(self._send_error(job.response_topic, job.correlation, job.request.id, e.code, e.message))
        if payload is not None:
            self._finish(job, payload)
        with self._lock:
            idle = not self._queue
        if idle and not self._stopping.is_set():
            self._publish_status("online")

    def _run_text(self, job: _Job, request: TextRequest, queue_ms: float) -> Answer | None:
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
                payload = encode(responses.chunk(request.id, seq, text), responses.MAX_RESPONSE_BYTES)
                self._publish(job.response_topic, job.correlation, payload)
                seq += 1

        if job.cancel.is_set():  # cancelled while queued: nothing to run
            outcome_text, reason, stats = "", "cancelled", responses.Stats(queue_ms=round(queue_ms, 3))
        else:
            out = self.text_engines[request.model].generate(request, job.cancel, emit)
            if self._stopping.is_set():
                return None  # not acked: the broker redelivers it to this device's session after a restart
            outcome_text, reason = out.text, "deadline" if deadline_hit else out.finish_reason
            stats = responses.Stats(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                                    ttft_ms=round(((first_piece_s or time.monotonic()) - start) * 1000, 3),
                                    tokens_per_s=round(out.tokens_per_s, 2),
                                    total_ms=round((time.monotonic() - start) * 1000, 3),
                                    queue_ms=round(queue_ms, 3), peak_rss_bytes=peak_rss_bytes())
        if reason == "cancelled":
            self.counters.add("cancelled")
        self.counters.add("served")
        payload = encode(responses.final(request.id, outcome_text, reason, seq, self.device, stats),
                         responses.MAX_RESPONSE_BYTES)
        self._wait(self._publish(job.response_topic, job.correlation, payload))
        return _json(payload)

    def _run_image(self, job: _Job, request: ImageRequest, queue_ms: float) -> Answer | None:
        start = time.monotonic()
        out = self.image_engines[request.model].generate(request, job.cancel)
        if self._stopping.is_set():
            return None
        if len(out.png) > responses.MAX_IMAGE_BYTES:  # checked before publishing: see responses.MAX_IMAGE_BYTES
            raise RequestError(ErrorCode.INTERNAL, f"the image engine made a {len(out.png)}-byte PNG, over the "
                               f"{responses.MAX_IMAGE_BYTES}-byte limit")
        image: Answer = ((out.png, responses.PNG_CONTENT_TYPE),) if out.finish_reason == "stop" else ()
        if image:
            self._publish(job.response_topic, job.correlation, out.png, responses.PNG_CONTENT_TYPE)
        stats = responses.Stats(total_ms=round((time.monotonic() - start) * 1000, 3), queue_ms=round(queue_ms, 3),
                                peak_rss_bytes=peak_rss_bytes())
        self.counters.add("served")
        payload = encode(responses.final(request.id, "", out.finish_reason, 0, self.device, stats))
        self._wait(self._publish(job.response_topic, job.correlation, payload))
        return image + _json(payload)

    def _finish(self, job: _Job, answer: Answer) -> None:
        """Remember the answer (committed, so a repeat or a redelivery after a restart gets it again), send it to
        repeats that joined, ack every copy."""
        try:
            self._answers.put(job.response_topic, job.request.id, answer)
        except sqlite3.Error:  # e.g. a full disk: the answer went out, but a redelivery will be generated again
            log.exception("could not remember the answer to request %s", job.request.id)
        with self._lock:
            self._active.pop(job.key, None)
            deliveries, twins = list(job.deliveries), list(job.twin_correlations)
        if self._fault == "exit-after-answer":
            log.warning("%s=%s: exiting before the ack of request %s", FAULT_ENV, self._fault, job.request.id)
            logging.shutdown()
            os._exit(137)
        for correlation in twins:
            self._send_answer(job.response_topic, correlation, answer)
        self._ack(deliveries)

    def _send_answer(self, topic: str, correlation: bytes | None, answer: Answer) -> None:
        for payload, content_type in answer:
            self._publish(topic, correlation, payload, content_type)

    def _report(self) -> None:
        while not self._stopping.wait(self.config.telemetry_interval_s):
            if not self._connected.is_set():
                continue
            with self._lock:
                depth = len(self._queue)
            report = {"v": 1, "device": self.device, "ts": round(time.time(), 3), "state": self._state,
                      "queue_depth": depth, "uptime_s": round(time.monotonic() - self._started_s, 1),
                      "peak_rss_bytes": peak_rss_bytes(), **self.counters.snapshot()}
            try:
                self.client.publish(topics.telemetry(self.device), encode(report), qos=0)
            except Exception:  # one report that cannot go out must not end telemetry for good
                log.exception("telemetry report not sent")
