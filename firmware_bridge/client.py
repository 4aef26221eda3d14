"""The Python client: send a request to a device or a pool and stream its answer.

    with Client(BrokerOptions("127.0.0.1", 1883)) as client:
        stream = client.generate("Name three rivers.", device="dev1")
        for piece in stream:
            print(piece, end="", flush=True)
        print(stream.result["stats"])
"""
from __future__ import annotations

import collections
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgegen.firmware_bridge import responses, topics
from edgegen.firmware_bridge.connection import BrokerOptions, make_client
from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.schema import (
    CancelRequest,
    ImageRequest,
    TextRequest,
    encode,
    parse_request,
    parse_sampling,
)

CONNECT_TIMEOUT_S = 10.0
SESSION_EXPIRY_S = 300


class TextStream:
    """Iterate for text pieces in order; afterwards `result` holds the final message (text, finish_reason, stats).

    A device that restarts mid-answer sends the chunks again from seq 0: pieces already yielded are skipped.
    """

    def __init__(self, client: Client, request_id: str, correlation: bytes, timeout_s: float):
        self._client, self.request_id, self._correlation, self._timeout_s = client, request_id, correlation, timeout_s
        self.result: dict[str, Any] | None = None
        self.repeated_chunks = 0
        self.image: bytes | None = None

    def __iter__(self) -> Iterator[str]:
        if self.result is not None:
            return  # already read to the end: `text()` after a loop just returns the final text
        inbox = self._client._inboxes[self._correlation]
        next_seq = 0
        deadline = time.monotonic() + self._timeout_s
        try:
            while self.result is None:
                try:
                    content_type, payload = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise RequestError(ErrorCode.TIMEOUT, f"no answer to request {self.request_id} within "
                                       f"{self._timeout_s:g} s") from None
                if content_type == responses.PNG_CONTENT_TYPE:
                    self.image = payload
                    continue
                message = payload
                if message["type"] == "error":
                    raise RequestError(message["code"], message["message"])
                if message["type"] == "final":
                    self.result = message
                elif message["seq"] == next_seq:
                    next_seq += 1
                    yield message["text"]
                else:
                    self.repeated_chunks += 1
        finally:
            self._client._close_inbox(self._correlation)

    def text(self) -> str:
        """Consume the stream and return the final text."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result["text"]


class Client:
    """A connection to the broker with one response topic; `generate` and `image` may be called from many threads."""

    def __init__(self, broker: BrokerOptions, client_id: str | None = None, timeout_s: float = 300.0):
        self.client_id = topics.check_name(client_id or f"edgegen-client-{uuid.uuid4().hex[:12]}", "client id")
        self.broker, self.timeout_s = broker, timeout_s
        self.response_topic = topics.client_responses(self.client_id)
        self.late_messages = 0  # answers to requests already closed: duplicates, or replies after a timeout
        self.late_finals = 0
        self._inboxes: dict[bytes, queue.Queue] = {}
        self._closed: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._puback: dict[int, Any] = {}  # PUBACK reason codes by mid, until the publisher waiting for it takes it
        self._abandoned: set[int] = set()  # mids whose publisher stopped waiting: their PUBACK is dropped on arrival
        self._puback_cv = threading.Condition(self._lock)
        self._ready = threading.Event()
        self._refused: tuple[ErrorCode, str] | None = None
        self._mqtt = make_client(self.client_id, broker)
        self._mqtt.on_connect = self._on_connect
        self._mqtt.on_message = self._on_message
        self._mqtt.on_publish = self._on_publish
        self._mqtt.on_connect_fail = self._on_connect_fail
        self._mqtt.on_disconnect = self._on_disconnect

    def connect(self) -> Client:
        # A session that outlives a broker restart keeps our subscription, so answers a device sends before we are
        # back are queued for us, not dropped. clean_start=False even on the first connection: Mosquitto 2.0 saves
        # only sessions of clients that connected with clean_start=False (measured: with clean_start=True the
        # answers published between the broker's restart and our reconnect were lost).
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._mqtt.connect_async(self.broker.host, self.broker.port, self.broker.keepalive_s, clean_start=False,
                                 properties=props)
        self._mqtt.loop_start()
        if not self._ready.wait(CONNECT_TIMEOUT_S) or self._refused:
            self.close()
            code, why = self._refused or (ErrorCode.TIMEOUT, f"no answer within {CONNECT_TIMEOUT_S:g} s")
            raise RequestError(code, f"cannot connect to {self.broker.host}:{self.broker.port}: {why}")
        return self

    def close(self) -> None:
        # Our session only had to outlive a broker restart: end it now rather than have the broker keep it 300 s.
        props = Properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0
        self._mqtt.disconnect(properties=props)
        self._mqtt.loop_stop()

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._refused = (ErrorCode.NOT_AUTHORIZED, f"the broker refused us ({reason_code})")
            client.disconnect()
        else:
            client.subscribe(self.response_topic, qos=1)  # in on_connect: restored after every reconnect
        self._ready.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._ready.is_set():  # TCP or TLS handshake failed: do not keep retrying behind connect()'s back
            self._refused = (ErrorCode.CONNECTION_FAILED, "the connection failed (broker down, or TLS refused)")
            self._ready.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not self._ready.is_set():  # e.g. the broker rejected our TLS client certificate after the handshake
            self._refused = (ErrorCode.CONNECTION_FAILED, f"the broker closed the connection ({reason_code})")
            self._ready.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._lock:
            if mid in self._abandoned:
                self._abandoned.discard(mid)
                return
            self._puback[mid] = reason_code
            self._puback_cv.notify_all()

    def watch(self, topic: str, callback: Callable[[mqtt.MQTTMessage], None], qos: int = 1) -> None:
        """Also receive `topic` (a topic filter: a device's status, models, telemetry or errors): callback(message)
        on paho's network thread for each message. Watching this client's response topic takes its messages away
        from the streams (raw access, for tests of the protocol)."""
        self._mqtt.message_callback_add(topic, lambda c, u, msg: callback(msg))
        self._mqtt.subscribe(topic, qos=qos)

    def pending_acks(self) -> int:
        """PUBACKs kept or awaited (none once every publish has returned: nothing accumulates)."""
        with self._lock:
            return len(self._puback) + len(self._abandoned)

    def publish_acked(self, topic: str, payload: bytes, properties: Properties | None = None) -> Any:
        """Publish `payload` as is at QoS 1 and wait for the broker's PUBACK; its reason code (paho's ReasonCode), or
        None without one in time.

        Every PUBACK lands in `_puback` (paho may report it before `publish` returns the mid); the entry is taken
        here, or, after a timeout, dropped when it arrives, so nothing accumulates.
        """
        info = self._mqtt.publish(topic, payload, qos=1, properties=properties)
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        with self._lock:
            while info.mid not in self._puback and time.monotonic() < deadline:
                self._puback_cv.wait(deadline - time.monotonic())
            reason = self._puback.pop(info.mid, None)
            if reason is None:
                self._abandoned.add(info.mid)
        return reason

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        content_type = getattr(msg.properties, "ContentType", responses.JSON_CONTENT_TYPE)
        with self._lock:
            inbox = self._inboxes.get(correlation) if correlation is not None else None
            if inbox is None:
                self.late_messages += 1
                self.late_finals += b'"type":"final"' in msg.payload
                return
        if content_type == responses.PNG_CONTENT_TYPE:
            inbox.put((content_type, msg.payload))
            return
        try:
            inbox.put((content_type, json.loads(msg.payload)))
        except ValueError:
            inbox.put((content_type, {"type": "error", "code": ErrorCode.INVALID_JSON,
                                      "message": "the device sent a response that is not JSON"}))

    def _close_inbox(self, correlation: bytes) -> None:
        with self._lock:
            self._inboxes.pop(correlation, None)
            self._closed[correlation] = None
            while len(self._closed) > 4096:
                self._closed.popitem(last=False)

    def publish_request(self, topic: str, request: TextRequest | ImageRequest, expiry_s: int | None = None,
                        timeout_s: float | None = None) -> TextStream:
        """Check `request` as the device will (schema.parse_request of its to_json()), publish it at QoS 1, wait for
        the PUBACK; stream its answer."""
        payload = encode(request.to_json())
        parse_request(request.kind, payload)  # the same checks the device runs, before publishing
        return self.send_payload(topic, payload, request.id, expiry_s, timeout_s)

    def send_payload(self, topic: str, payload: bytes, request_id: str | None = None, expiry_s: int | None = None,
                     timeout_s: float | None = None) -> TextStream:
        """Publish `payload` as is (no validation) with our Response Topic and fresh Correlation Data.

        Raises RequestError(not_authorized) when the broker refuses the publish (PUBACK 0x87, an ACL).
        """
        correlation = uuid.uuid4().bytes
        stream = TextStream(self, request_id or "", correlation, timeout_s or self.timeout_s)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.response_topic
        props.CorrelationData = correlation
        props.ContentType = responses.JSON_CONTENT_TYPE
        if expiry_s:
            props.MessageExpiryInterval = expiry_s
        with self._lock:
            self._inboxes[correlation] = queue.Queue()  # before publishing: an answer may come back at once
        reason = self.publish_acked(topic, payload, props)
        if reason is None or reason.is_failure:
            self._close_inbox(correlation)
            code = ErrorCode.TIMEOUT if reason is None else ErrorCode.NOT_AUTHORIZED
            raise RequestError(code, f"broker did not accept the request on {topic}: {reason or 'no PUBACK'}")
        return stream

    def _target(self, kind: str, device: str | None, pool: str | None) -> str:
        if (device is None) == (pool is None):
            raise RequestError(ErrorCode.INVALID_REQUEST, "give exactly one of device or pool")
        return topics.device_request(device, kind) if device else topics.pool_request(pool, kind)  # type: ignore

    def generate(self, prompt: str | list[dict[str, str]], device: str | None = None, pool: str | None = None,
                 model: str = "default", max_tokens: int = 128, chat: bool = True,
                 sampling: dict[str, Any] | None = None, request_id: str | None = None,
                 expiry_s: int | None = None, timeout_s: float | None = None) -> TextStream:
        """Send a text request; iterate the returned stream for tokens. RequestError carries the device's code."""
        request_id = request_id or uuid.uuid4().hex
        messages = tuple(prompt) if isinstance(prompt, list) else None
        request = TextRequest(request_id, prompt=None if messages is not None else prompt,  # type: ignore[arg-type]
                              messages=messages, model=model, max_tokens=max_tokens, chat=chat,
                              sampling=parse_sampling(sampling or {}, request_id))
        return self.publish_request(self._target("text", device, pool), request, expiry_s, timeout_s)

    def image(self, prompt: str, device: str | None = None, pool: str | None = None, model: str = "default",
              steps: int | None = None, seed: int | None = None, timeout_s: float | None = None) -> bytes:
        """Ask for an image; returns PNG bytes."""
        request_id = uuid.uuid4().hex
        request = ImageRequest(request_id, prompt, model=model, steps=steps, seed=seed)
        stream = self.publish_request(self._target("image", device, pool), request, timeout_s=timeout_s)
        stream.text()
        if stream.image is None:
            raise RequestError(ErrorCode.INTERNAL, f"request {request_id} finished "
                               f"({stream.result and stream.result['finish_reason']}) without an image")
        return stream.image

    def cancel(self, request_id: str, device: str | None = None, pool: str | None = None) -> None:
        """Ask the device (or every member of the pool) to stop request `request_id`; returns once the broker has it.

        Raises RequestError(not_authorized) when the broker refuses the publish, timeout without its PUBACK.
        """
        if (device is None) == (pool is None):
            raise RequestError(ErrorCode.INVALID_REQUEST, "give exactly one of device or pool")
        topic = topics.device_request(device, "cancel") if device else topics.pool_cancel(pool)  # type: ignore
        payload = encode(CancelRequest(request_id).to_json())
        parse_request("cancel", payload)  # the device's checks, before publishing
        reason = self.publish_acked(topic, payload)
        if reason is None or reason.is_failure:
            code = ErrorCode.TIMEOUT if reason is None else ErrorCode.NOT_AUTHORIZED
            raise RequestError(code, f"broker did not accept the cancel on {topic}: {reason or 'no PUBACK'}")
