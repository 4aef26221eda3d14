"""Round trips, bad input and its error codes, dedup, busy and cancel against a real Mosquitto (fake engine)."""
from __future__ import annotations

import json
import threading

import pytest
from bridge_fakes import FakeImageEngine, FakeTextEngine, expected_text, tiny_png
from bridge_helpers import connected_client, running_device

from edgegen.firmware_bridge import topics
from edgegen.firmware_bridge.connection import BrokerOptions
from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.responses import MAX_IMAGE_BYTES
from edgegen.firmware_bridge.schema import MAX_PROMPT_CHARS, MAX_REQUEST_BYTES


@pytest.fixture
def options(broker) -> BrokerOptions:
    return BrokerOptions("127.0.0.1", broker.port)


def test_round_trip_tokens_in_order(options: BrokerOptions) -> None:
    with running_device(options) as (_, _), connected_client(options) as client:
        stream = client.generate("river delta", device="dev1", max_tokens=12)
        pieces = list(stream)
        assert pieces == [f"river-{i} " for i in range(12)]
        assert stream.result["text"] == "".join(pieces) == expected_text("river", 12)
        assert stream.result["finish_reason"] == "length" and stream.result["chunks"] == 12
        assert stream.result["device"] == "dev1" and stream.result["stats"]["completion_tokens"] == 12
        assert stream.result["stats"]["peak_rss_bytes"] > 0


BAD_REQUESTS = [
    (b"\xff\xfe{not utf-8", ErrorCode.INVALID_UTF8),
    (b'{"v": 1, "id": "x", "prompt": ', ErrorCode.INVALID_JSON),
    (b'["v", 1]', ErrorCode.INVALID_REQUEST),
    (b'{"v": 2, "id": "x", "prompt": "hi"}', ErrorCode.UNSUPPORTED_VERSION),
    (b'{"id": "x", "prompt": "hi"}', ErrorCode.UNSUPPORTED_VERSION),
    (b'{"v": 1, "prompt": "hi"}', ErrorCode.INVALID_REQUEST),
    (b'{"v": 1, "id": "x", "prompt": "hi", "colour": 1}', ErrorCode.INVALID_REQUEST),
    (b'{"v": 1, "id": "x", "model": "gpt-5", "prompt": "hi"}', ErrorCode.UNKNOWN_MODEL),
    (b'{"v": 1, "id": "x"}', ErrorCode.MISSING_PROMPT),
    (b'{"v": 1, "id": "x", "prompt": "   "}', ErrorCode.MISSING_PROMPT),
    (b'{"v": 1, "id": "x", "messages": []}', ErrorCode.MISSING_PROMPT),
    (json.dumps({"v": 1, "id": "x", "prompt": "a" * (MAX_PROMPT_CHARS + 1)}).encode(), ErrorCode.PROMPT_TOO_LONG),
    (json.dumps({"v": 1, "id": "x", "prompt": "a " * 600}).encode(), ErrorCode.PROMPT_TOO_LONG),  # engine context
    (json.dumps({"v": 1, "id": "x", "prompt": "a" * MAX_REQUEST_BYTES}).encode(), ErrorCode.PAYLOAD_TOO_LARGE),
    (b'{"v": 1, "id": "x", "prompt": "hi", "sampling": {"temperature": -1}}', ErrorCode.INVALID_SAMPLING),
    (b'{"v": 1, "id": "x", "prompt": "hi", "sampling": {"top_p": 1.5}}', ErrorCode.INVALID_SAMPLING),
    (b'{"v": 1, "id": "x", "prompt": "hi", "sampling": {"top_p": 0}}', ErrorCode.INVALID_SAMPLING),
    (b'{"v": 1, "id": "x", "prompt": "hi", "sampling": {"temperature": "hot"}}', ErrorCode.INVALID_SAMPLING),
    (b'{"v": 1, "id": "x", "prompt": "hi", "sampling": {"top_k": 2.5}}', ErrorCode.INVALID_SAMPLING),
    (b'{"v": 1, "id": "x", "prompt": "hi", "sampling": {"repetition_penalty": 11}}', ErrorCode.INVALID_SAMPLING),
    (b'{"v": 1, "id": "x", "prompt": "hi", "sampling": {"seed": -3}}', ErrorCode.INVALID_SAMPLING),
    (b'{"v": 1, "id": "x", "prompt": "hi", "sampling": {"mirostat": 2}}', ErrorCode.INVALID_SAMPLING),
    (b'{"v": 1, "id": "x", "prompt": "hi", "max_tokens": 0}', ErrorCode.INVALID_SAMPLING),
    (b'{"v": 1, "id": "x", "prompt": "hi", "max_tokens": 100000}', ErrorCode.INVALID_SAMPLING),
    (b'{"v": 1, "id": "x", "prompt": "\\ud800"}', ErrorCode.INVALID_REQUEST),  # valid JSON, not encodable text
    (b'{"v": 1, "id": "x", "prompt": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", ErrorCode.INVALID_JSON),  # too deep
]


def test_every_bad_input_gets_its_code_and_the_device_keeps_serving(options: BrokerOptions) -> None:
    topic = topics.device_request("dev1", "text")
    with running_device(options) as (service, engine), connected_client(options) as client:
        for payload, code in BAD_REQUESTS:
            with pytest.raises(RequestError) as err:
                client.send_payload(topic, payload, timeout_s=10).text()
            assert err.value.code == code, (payload[:60], err.value)
            assert err.value.message
        assert engine.calls == []
        assert client.generate("still here", device="dev1", max_tokens=3).text() == expected_text("still", 3)
        assert service.counters["errors"] == len(BAD_REQUESTS)


def test_client_checks_before_publishing(options: BrokerOptions) -> None:
    with connected_client(options) as client:
        with pytest.raises(RequestError) as err:
            client.generate("a" * MAX_REQUEST_BYTES, device="dev1")
        assert err.value.code == ErrorCode.PAYLOAD_TOO_LARGE
        with pytest.raises(RequestError) as err:
            client.generate("hi", device="dev1", sampling={"temperature": 70})
        assert err.value.code == ErrorCode.INVALID_SAMPLING


def test_images_are_refused_until_a_diffusion_engine_is_plugged_in(options: BrokerOptions) -> None:
    with running_device(options), connected_client(options) as client:
        with pytest.raises(RequestError) as err:
            client.image("7", device="dev1")
        assert err.value.code == ErrorCode.UNSUPPORTED


def test_a_plugged_in_image_engine_answers_with_png(options: BrokerOptions) -> None:
    images = FakeImageEngine()
    engines = {"digits": images, "huge": FakeImageEngine(pad_bytes=MAX_IMAGE_BYTES)}
    with running_device(options, image_engines=engines), connected_client(options) as client:
        assert client.image("7", device="dev1", model="digits") == tiny_png(175)
        refusals = (("x", "digits", ErrorCode.INVALID_REQUEST), ("7", "default", ErrorCode.UNKNOWN_MODEL),
                    ("7", "huge", ErrorCode.INTERNAL))
        for prompt, model, code in refusals:
            with pytest.raises(RequestError) as err:
                client.image(prompt, device="dev1", model=model)
            assert err.value.code == code
        assert len(images.calls) == 1


def test_request_without_response_topic_is_reported_on_the_error_topic(options: BrokerOptions) -> None:
    received: list[dict] = []
    both = threading.Event()
    with running_device(options), connected_client(options) as client:
        def on_error(msg: object) -> None:
            received.append(json.loads(msg.payload))  # type: ignore[attr-defined]
            if len(received) == 2:
                both.set()

        client.watch(topics.errors("dev1"), on_error)  # SUBSCRIBE precedes the PUBLISHes on this connection
        # published as is: without the Response Topic property that requests carry
        client.publish_acked(topics.device_request("dev1", "text"), b'{"v": 1, "id": "lost", "prompt": "hi"}')
        client.publish_acked(topics.device_request("dev1", "text"), b"not json")
        assert both.wait(10)
    assert [(m["id"], m["code"]) for m in received] == [("lost", ErrorCode.NO_RESPONSE_TOPIC),
                                                        (None, ErrorCode.INVALID_JSON)]


def test_duplicate_request_is_answered_not_generated_twice(options: BrokerOptions) -> None:
    with running_device(options) as (service, engine), connected_client(options) as client:
        first = client.generate("twice", device="dev1", max_tokens=4, request_id="same-id").text()
        again = client.generate("twice", device="dev1", max_tokens=4, request_id="same-id")
        assert list(again) == []  # no chunks the second time: the remembered final answer only
        assert again.result["text"] == first == expected_text("twice", 4)
        assert engine.calls == ["same-id"] and service.counters["duplicates"] == 1


def test_repeat_of_a_running_request_joins_it(options: BrokerOptions) -> None:
    engine = FakeTextEngine(delay_s=0.01)
    with running_device(options, engine), connected_client(options) as client:
        first = client.generate("joined", device="dev1", max_tokens=20, request_id="twin")
        pieces = iter(first)
        next(pieces)  # running now
        repeat = client.generate("joined", device="dev1", max_tokens=20, request_id="twin")
        assert repeat.text() == "".join(["joined-0 ", *pieces]) == expected_text("joined", 20)
        assert engine.calls == ["twin"]


def test_full_queue_answers_busy_then_serves_again(options: BrokerOptions) -> None:
    gate = threading.Event()
    engine = FakeTextEngine(delay_s=0.005)
    with running_device(options, engine, queue_size=1) as (_, _), connected_client(options) as client:
        first_piece = threading.Event()
        engine.on_emit = lambda rid, seq: (first_piece.set(), gate.wait(10))
        running = client.generate("one", device="dev1", max_tokens=3)
        assert first_piece.wait(10)  # the first request is generating, the queue is empty
        queued = client.generate("two", device="dev1", max_tokens=3)
        with pytest.raises(RequestError) as err:
            client.generate("three", device="dev1", max_tokens=3).text()
        assert err.value.code == ErrorCode.BUSY
        gate.set()
        assert running.text() == expected_text("one", 3) and queued.text() == expected_text("two", 3)
        assert client.generate("four", device="dev1", max_tokens=2).text() == expected_text("four", 2)


def test_cancel_stops_a_running_generation(options: BrokerOptions) -> None:
    engine = FakeTextEngine(delay_s=0.02)
    with running_device(options, engine) as (_, _), connected_client(options) as client:
        stream = client.generate("long", device="dev1", max_tokens=1000, request_id="to-cancel")
        pieces = []
        for piece in stream:
            pieces.append(piece)
            if len(pieces) == 2:
                client.cancel("to-cancel", device="dev1")
        assert stream.result["finish_reason"] == "cancelled"
        assert 2 <= len(pieces) < 1000 and stream.result["text"] == "".join(pieces)
        assert client.generate("after", device="dev1", max_tokens=2).text() == expected_text("after", 2)


def test_cancels_leave_no_pending_acks_behind(options: BrokerOptions) -> None:
    with running_device(options), connected_client(options) as client:
        for i in range(50):
            client.cancel(f"nothing-{i}", device="dev1")  # returns once the broker acked it
        assert client.pending_acks() == 0
        assert client.generate("still fine", device="dev1", max_tokens=2).text() == expected_text("still", 2)
        assert client.pending_acks() == 0
        with pytest.raises(RequestError) as err:
            client.cancel("", device="dev1")  # checked as the device would, before publishing
        assert err.value.code == ErrorCode.INVALID_REQUEST and "id must be" in err.value.message


def test_status_and_models_are_retained_and_will_says_offline(options: BrokerOptions) -> None:
    with running_device(options) as (_, _), connected_client(options) as client:
        pass
    # The device stopped cleanly: a late subscriber still reads its retained status and models.
    states: dict[str, dict] = {}
    done = threading.Event()
    with connected_client(options) as client:
        def on_message(msg) -> None:
            states[msg.topic.rsplit("/", 1)[-1]] = json.loads(msg.payload)
            if len(states) == 2:
                done.set()

        client.watch(topics.status("dev1"), on_message)
        client.watch(topics.models("dev1"), on_message)
        assert done.wait(10)
    assert states["status"]["state"] == "offline"
    assert states["models"]["text"] == ["default"] and states["models"]["image"] == []


def test_message_expiry_is_a_deadline(options: BrokerOptions) -> None:
    engine = FakeTextEngine(delay_s=0.05)
    with running_device(options, engine) as (_, _), connected_client(options) as client:
        running = client.generate("slow", device="dev1", max_tokens=400, expiry_s=2)  # stops after 2 s
        waiting = client.generate("late", device="dev1", max_tokens=2, expiry_s=1)  # expired by the time it starts
        text = running.text()
        assert running.result["finish_reason"] == "deadline" and 0 < len(text.split()) < 400
        with pytest.raises(RequestError) as err:
            waiting.text()
        assert err.value.code == ErrorCode.EXPIRED
        assert engine.calls == [running.request_id]


def test_pool_cancel_reaches_the_member_running_it(options: BrokerOptions) -> None:
    engine = FakeTextEngine(delay_s=0.02)
    with running_device(options, engine, pool="fleet"), connected_client(options) as client:
        stream = client.generate("pooled", pool="fleet", max_tokens=1000, request_id="pool-cancel")
        pieces = iter(stream)
        assert next(pieces) == "pooled-0 "
        client.cancel("pool-cancel", pool="fleet")
        rest = list(pieces)
        assert stream.result["finish_reason"] == "cancelled" and len(rest) < 999


def test_telemetry_is_published_periodically(options: BrokerOptions) -> None:
    reports: list[dict] = []
    two = threading.Event()
    with connected_client(options) as client:
        def on_report(msg: object) -> None:
            reports.append(json.loads(msg.payload))  # type: ignore[attr-defined]
            if len(reports) == 2:
                two.set()

        client.watch(topics.telemetry("dev1"), on_report, qos=0)
        with running_device(options, telemetry_interval_s=0.05):
            client.generate("count me", device="dev1", max_tokens=2).text()
            assert two.wait(10)
    assert {"state", "queue_depth", "uptime_s", "peak_rss_bytes"} <= set(reports[-1])
    assert reports[-1]["device"] == "dev1" and reports[-1]["queue_depth"] == 0
