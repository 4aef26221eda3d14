"""The MQTT 5 transport of the device service: paho's client, its callbacks, and everything published.

It turns each message on the device's request topics into an `Incoming` for the service to admit, and answers
through `send`/`error` (the `workers.Replies` a worker uses) to the request's Response Topic with its Correlation
Data. Requests arrive at QoS 1 into a persistent session (clean_start=False, a session expiry) and are acknowledged
by hand (`ack`) only once answered, so a device killed mid-generation gets them again after a restart. Subscribing
in on_connect restores the subscriptions after any reconnect. The retained status topic has a last will (`offline`).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgegen.firmware_bridge import responses, topics
from edgegen.firmware_bridge.admission import Job
from edgegen.firmware_bridge.answer_store import Answer
from edgegen.firmware_bridge.connection import BrokerOptions, make_client, wait_published
from edgegen.firmware_bridge.counters import Counters
from edgegen.firmware_bridge.errors import ErrorCode
from edgegen.firmware_bridge.schema import encode

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Incoming:
    """One request message as the service admits it."""

    kind: str  # the topic's last level: text, image or cancel
    topic: str
    payload: bytes
    response_topic: str | None  # the MQTT 5 Response Topic, when publishable
    correlation: bytes | None
    expiry_s: float | None  # Message Expiry Interval
    delivery: tuple[int, int]  # (message id, connection number): acked by `ack` once answered


class ConnectHook(Protocol):
    """Told of every connect (subscribe its own topics there) and stopped with the service: the deploy agent."""

    def on_connect(self, client: mqtt.Client) -> None: ...

    def stop(self) -> None: ...


class MqttTransport:
    """`on_request(incoming)` is called on paho's network thread and returns True when the request is pending (it
    is acked later, once answered); otherwise the transport acks it at once."""

    def __init__(self, device: str, pool: str | None, broker: BrokerOptions, session_expiry_s: int,
                 counters: Counters, on_request: Callable[[Incoming], bool]) -> None:
        self.device, self.pool, self.broker, self.counters = device, pool, broker, counters
        self.session_expiry_s = session_expiry_s
        self.on_request = on_request
        self.connected = threading.Event()  # connected and subscribed: requests published now reach us
        self.stopping = threading.Event()
        self.hooks: list[ConnectHook] = []
        self.state = "online"
        self.models: tuple[list[str], list[str]] = ([], [])  # (text, image) model names, published on connect
        self._lock = threading.Lock()
        self._connection = 0
        self._subscribe_mid = -1
        self._in_pool = pool is not None
        self.client = make_client(device, broker, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda client, userdata, msg: self.receive(msg)
        self.client.on_subscribe = self._on_subscribe
        offline = encode(responses.status(device, "offline", time.time()))
        self.client.will_set(topics.status(device), offline, qos=1, retain=True)

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background, retrying with backoff."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        self.client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive_s, clean_start=False,
                                  properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        """Publish `offline` (when connected) and disconnect; unacked requests stay with the broker."""
        self.stopping.set()
        if self.connected.is_set():
            wait_published(self.publish_status("offline"))
        self.client.disconnect()
        self.client.loop_stop()

    # -- subscriptions and pools -----------------------------------------------------------------------------------
    def _subscriptions(self) -> list[tuple[str, SubscribeOptions]]:
        filters = [topics.device_request(self.device, kind) for kind in ("text", "image", "cancel")]
        if self.pool is not None:
            if self._in_pool:
                filters += self._pool_filters()
            filters.append(topics.pool_cancel(self.pool))
        return [(f, SubscribeOptions(qos=1)) for f in filters]

    def _pool_filters(self) -> list[str]:
        assert self.pool is not None
        return [topics.pool_shared_filter(self.pool, kind) for kind in topics.KINDS]

    def leave_pool(self) -> None:
        if self.pool is not None and self._in_pool:
            self._in_pool = False
            self.client.unsubscribe(self._pool_filters())

    def join_pool(self) -> None:
        if self.pool is not None and not self._in_pool:
            self._in_pool = True
            self.client.subscribe([(f, SubscribeOptions(qos=1)) for f in self._pool_filters()])

    # -- paho's callbacks (its network thread) ---------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        with self._lock:
            self._connection += 1
        # Subscribing here restores the subscriptions after any reconnect, even to a broker that lost our session.
        _, mid = client.subscribe(self._subscriptions())
        self._subscribe_mid = -1 if mid is None else mid
        self.publish_status(self.state)
        self.publish_models()
        for hook in self.hooks:
            hook.on_connect(client)
        log.info("connected to %s:%d (session present: %s)", self.broker.host, self.broker.port,
                 flags.session_present)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list, properties: Any) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("broker refused subscriptions: %s", refused)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self.connected.clear()
        if not self.stopping.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def receive(self, msg: mqtt.MQTTMessage) -> None:
        """One message on the request topics (paho's on_message; a test hands messages in here directly)."""
        with self._lock:
            delivery = (msg.mid, self._connection)
        props = msg.properties
        response_topic = getattr(props, "ResponseTopic", None)
        incoming = Incoming(msg.topic.rsplit("/", 1)[-1], msg.topic, bytes(msg.payload),
                            response_topic if response_topic is not None and topics.is_publishable(response_topic)
                            else None, getattr(props, "CorrelationData", None),
                            getattr(props, "MessageExpiryInterval", None), delivery)
        try:
            if self.on_request(incoming):
                return  # pending: acknowledged when answered
        except Exception:  # a bug or a failing answer store: the sender still gets one answer, the device goes on
            log.exception("failed to handle a message on %s", msg.topic)
            self.counters.add("internal_errors")
            self._answer_failure(incoming)
        self.ack([delivery])

    def _answer_failure(self, incoming: Incoming) -> None:
        """One `internal` error for a message whose handling failed: on its response topic, else the errors topic."""
        for topic in dict.fromkeys((incoming.response_topic, None)):
            try:
                self.send_error(topic, incoming.correlation, None, ErrorCode.INTERNAL,
                                "the device failed to handle this request; see the device log")
                return
            except Exception:  # e.g. paho refused the topic: try the errors topic, and never raise into paho's loop
                log.exception("could not report the failure on %s", topic or "the errors topic")

    # -- publishing ------------------------------------------------------------------------------------------------
    def publish(self, topic: str, correlation: bytes | None, payload: bytes,
                content_type: str = responses.JSON_CONTENT_TYPE) -> mqtt.MQTTMessageInfo:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = content_type
        if correlation is not None:
            props.CorrelationData = correlation
        return self.client.publish(topic, payload, qos=1, properties=props)

    def send_error(self, response_topic: str | None, correlation: bytes | None, request_id: str | None,
                   code: ErrorCode | str, message: str) -> bytes:
        self.counters.add("errors")
        log.info("request %s refused: %s: %s", request_id, code, message)
        payload = encode(responses.error(request_id, code, message, self.device), responses.MAX_RESPONSE_BYTES)
        self.publish(response_topic or topics.errors(self.device), correlation, payload)
        return payload

    def send(self, job: Job, payload: bytes, content_type: str = responses.JSON_CONTENT_TYPE,
             wait: bool = False) -> None:
        info = self.publish(job.response_topic, job.correlation, payload, content_type)
        if wait:
            wait_published(info)

    def send_answer(self, topic: str, correlation: bytes | None, answer: Answer) -> None:
        """Every payload of a stored answer, in order (a repeat of an answered request, a twin that joined it)."""
        for payload, content_type in answer:
            self.publish(topic, correlation, payload, content_type)

    def error(self, job: Job, code: ErrorCode | str, message: str) -> bytes:
        return self.send_error(job.response_topic, job.correlation, job.request.id, code, message)

    def publish_status(self, state: str) -> mqtt.MQTTMessageInfo:
        self.state = state
        payload = encode(responses.status(self.device, state, time.time()))
        return self.client.publish(topics.status(self.device), payload, qos=1, retain=True)

    def publish_models(self) -> mqtt.MQTTMessageInfo:
        text, image = self.models
        payload = encode(responses.models(self.device, sorted(text), sorted(image)))
        return self.client.publish(topics.models(self.device), payload, qos=1, retain=True)

    def publish_telemetry(self, report: dict[str, Any]) -> None:
        self.client.publish(topics.telemetry(self.device), encode(report), qos=0)

    def ack(self, deliveries: list[tuple[int, int]]) -> None:
        with self._lock:
            current = self._connection
        for mid, connection in deliveries:
            # A mid from an earlier connection means nothing now; the broker redelivers that copy and it is answered
            # from memory then.
            if connection == current:
                self.client.ack(mid, 1)
