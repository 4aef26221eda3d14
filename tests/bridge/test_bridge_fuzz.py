"""Generated requests through the real request path: every message gets exactly one outcome, never `internal`.

Each message goes through the service's MqttTransport.receive (parse_request, the service's checks, the real
RuntimeTextEngine.check with SmolLM2's tokenizer and SamplingParams.validate) with a recording stand-in for paho. The
outcome is either "queued" (the test then runs the job as the worker would: chunks, then one final or one error),
"cancel applied" (a valid cancel: nothing to answer), or exactly one error answer whose code is an ErrorCode other
than `internal`. The message is acked exactly once either way, and no exception escapes.
"""
from __future__ import annotations

import copy
import functools
import json
from typing import Any

import pytest
from bridge_fakes import FakeImageEngine, Published, RecordingMqtt, TokenizerOnlyGenerator, request_message
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgegen.firmware_bridge import topics
from edgegen.firmware_bridge.answer_store import AnswerStore
from edgegen.firmware_bridge.connection import BrokerOptions
from edgegen.firmware_bridge.engines import RuntimeTextEngine
from edgegen.firmware_bridge.errors import ErrorCode
from edgegen.firmware_bridge.schema import parse_request
from edgegen.firmware_bridge.service import DeviceService, ServiceConfig

DEVICE = "dev1"
RESPONSES = topics.client_responses("fuzzer")
REPLY_TO = topics.client_responses("umqtt-board")
CORRELATION = b"fuzz-correlation"
MID = 7
CODES = {c.value for c in ErrorCode} - {ErrorCode.INTERNAL.value}
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# v and id last: hypothesis draws early list items more often, and a mutated version hides every later check.
VALID = {
    "text": [
        {"model": "default", "prompt": "Name three rivers.", "max_tokens": 3, "chat": True, "stream": True,
         "sampling": {"temperature": 0.7, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.1, "seed": 1,
                      "stop": ["\n"]}, "v": 1, "id": "t-1"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
         "stream": False, "reply_to": REPLY_TO, "v": 1, "id": "t-2"},
    ],
    "image": [{"model": "default", "prompt": "7", "steps": 4, "seed": 0, "v": 1, "id": "i-1"}],
    "cancel": [{"v": 1, "id": "t-1"}],
}

SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)  # st.text() never draws these: they are not encodable
TEXT = st.text(st.one_of(st.characters(), SURROGATE), max_size=12)
SPECIAL = st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, 2**63, -2**63, 10**30, 10**4000, 1e308, -1e308, 5e-324, 0.5,
                           float("nan"), float("inf"), float("-inf"), "", " ", "\ud800", "a\udfffb", "\x00", "7",
                           "default", "user", "#", "+", "$SYS/x", REPLY_TO, "x" * 300, [], {}, [[]], True, False,
                           None])
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), TEXT,
                   SPECIAL)
JSON = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=12)
# Objects shaped like requests: the schema's keys with arbitrary values, so parsing gets past the first checks.
SHAPED = st.fixed_dictionaries({}, optional={key: st.one_of(JSON, SPECIAL) for key in (
    "v", "id", "model", "prompt", "messages", "max_tokens", "chat", "stream", "sampling", "reply_to", "steps", "seed",
    "json_schema")})
KIND = st.sampled_from(["text", "image", "cancel"])
RESPONSE_TOPIC = st.one_of(st.just(RESPONSES), st.just(RESPONSES), st.none(), st.just("edgegen/v1/clients/+/x"),
                           st.text(st.characters(codec="utf-8"), max_size=20))


@functools.cache
def text_engine() -> RuntimeTextEngine:
    return RuntimeTextEngine(TokenizerOnlyGenerator())


@functools.cache
def service() -> DeviceService:
    config = ServiceConfig(DEVICE, queue_size=4)
    return DeviceService(config, BrokerOptions(), {"default": text_engine()}, {"default": FakeImageEngine()})


def fresh_service() -> tuple[DeviceService, RecordingMqtt]:
    """The one DeviceService, emptied (paho clients hold sockets: one per example would pile up)."""
    s = service()
    s.transport.client = fake = RecordingMqtt()
    s.admission.clear()
    s.admission.answers = AnswerStore(None)  # the old in-memory database goes with the garbage
    s.transport.state = "online"
    return s, fake


def serialize(value: Any, surrogatepass: bool) -> bytes:
    """JSON text: ASCII with \\uXXXX escapes (valid UTF-8, lone surrogates escaped), or raw, where a lone surrogate
    becomes bytes that are not UTF-8."""
    if surrogatepass:
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(value).encode("ascii")


def check_error(answer: Published, response_topic: str | None, payload: bytes) -> dict:
    body = json.loads(answer.payload.decode("utf-8"))
    assert body["type"] == "error" and body["code"] in CODES, body
    assert isinstance(body["message"], str) and body["message"], body
    assert body["id"] is None or isinstance(body["id"], str)
    assert answer.properties.CorrelationData == CORRELATION
    if response_topic is not None and topics.is_publishable(response_topic):
        assert answer.topic == response_topic
    else:  # the payload's reply_to, when it named a usable one, or the device's errors topic
        assert answer.topic == topics.errors(DEVICE) or answer.topic.encode() in payload.replace(b"\\/", b"/"), answer
    return body


def deliver(kind: str, payload: bytes, response_topic: str | None = RESPONSES) -> str:
    """Feed one message through the service as paho would; check its one outcome and return its name."""
    s, fake = fresh_service()
    # paho's network thread calls this; an exception escaping it would end that thread (and the device)
    s.transport.receive(request_message(DEVICE, kind, payload, response_topic, CORRELATION, MID))
    answers = fake.answers()
    if s.admission.waiting():
        assert len(s.admission.waiting()) == 1 and answers == [] and fake.acked == [], \
            "queued means: not answered, not acked"
        job = s.admission.take(timeout_s=0)
        assert job is not None
        s.run_job(job)  # the worker's step for this job
        answers = fake.answers()
        *chunks, last = answers
        assert all(json.loads(c.payload)["type"] == "chunk" for c in chunks if c.properties.ContentType ==
                   "application/json"), chunks
        body = json.loads(last.payload)
        if body["type"] == "error":  # an engine's refusal at generation time (e.g. the chat template's length)
            check_error(last, response_topic, payload)
            outcome = f"generate: {body['code']}"
        else:
            assert body["type"] == "final" and body["id"] == job.request.id, body
            outcome = "served"
        assert s.admission.answers.get(job.response_topic, job.request.id) is not None  # remembered before the ack
    elif not answers:
        assert kind == "cancel", "a request that was neither queued nor answered"
        parse_request("cancel", payload)  # only a valid cancel goes unanswered: it has nothing to say
        outcome = "cancel applied"
    else:
        assert len(answers) == 1, [a.payload[:80] for a in answers]
        outcome = check_error(answers[0], response_topic, payload)["code"]
    assert fake.acked == [MID], fake.acked
    assert s.counters["internal_errors"] == 0
    return outcome


@FUZZ
@given(kind=KIND, payload=st.binary(max_size=300), response_topic=RESPONSE_TOPIC)
def test_arbitrary_bytes_get_one_answer(kind: str, payload: bytes, response_topic: str | None) -> None:
    event(deliver(kind, payload, response_topic))


@FUZZ
@given(kind=KIND, value=st.one_of(JSON, SHAPED), surrogatepass=st.booleans(), response_topic=RESPONSE_TOPIC)
def test_arbitrary_json_values_get_one_answer(kind: str, value: Any, surrogatepass: bool,
                                              response_topic: str | None) -> None:
    event(deliver(kind, serialize(value, surrogatepass), response_topic))


def locations(obj: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every value inside `obj` (keys of objects, indices of arrays), outermost first."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    out = []
    for key, value in items:
        out.append((*path, key))
        out += locations(value, (*path, key))
    return out


def value_at(obj: Any, path: tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj


@st.composite
def mutated_requests(draw: st.DrawFn) -> tuple[str, dict]:
    """A valid request with 1-3 of: a key dropped, a value replaced by any JSON value, an unknown key added."""
    kind = draw(KIND)
    obj = copy.deepcopy(draw(st.sampled_from(VALID[kind])))
    for _ in range(draw(st.sampled_from([1, 1, 2, 3]))):
        op, paths = draw(st.sampled_from(["drop", "replace", "replace", "add"])), locations(obj)
        if op == "add" or not paths:
            target = draw(st.sampled_from([obj, *(v for p in paths if isinstance(v := value_at(obj, p), dict))]))
            target[draw(st.one_of(TEXT, st.sampled_from(["temperature", "colour"])))] = copy.deepcopy(draw(JSON))
            continue
        path = draw(st.sampled_from(paths))
        container = value_at(obj, path[:-1])
        if op == "drop":
            del container[path[-1]]
        else:
            # a copy: sampled_from hands out the same [] and {} each time, and they would be mutated in place
            container[path[-1]] = copy.deepcopy(draw(st.one_of(SPECIAL, JSON)))
    return kind, obj


@FUZZ
@given(request=mutated_requests(), surrogatepass=st.sampled_from([False, False, False, True]),
       response_topic=RESPONSE_TOPIC)
def test_mutated_valid_requests_get_one_answer(request: tuple[str, dict], surrogatepass: bool,
                                               response_topic: str | None) -> None:
    kind, obj = request
    event(deliver(kind, serialize(obj, surrogatepass), response_topic))


def test_the_valid_requests_are_served() -> None:
    """The fuzzer's starting points pass every check, so a mutation is what makes a request fail."""
    outcomes = {(kind, i): deliver(kind, serialize(obj, False)) for kind, objs in VALID.items()
                for i, obj in enumerate(objs)}
    assert outcomes == {("text", 0): "served", ("text", 1): "served", ("image", 0): "served",
                        ("cancel", 0): "cancel applied"}


def test_a_lone_surrogate_is_refused_before_the_tokenizer() -> None:
    """Before the schema checked, '\\ud800' reached the tokenizer, which raised TypeError: no answer at all."""
    with_surrogate = b'{"v": 1, "id": "x", "prompt": "\\ud800"}'
    with pytest.raises(TypeError):
        text_engine().generator.tokenizer.encode(json.loads(with_surrogate)["prompt"])  # what the engine would do
    assert deliver("text", with_surrogate) == ErrorCode.INVALID_REQUEST


def test_a_json_schema_the_device_cannot_enforce_is_refused_and_one_it_can_is_served() -> None:
    """Over MQTT: the request's json_schema is compiled against the model's own vocabulary at admission."""
    def request(schema: object) -> bytes:
        return json.dumps({"v": 1, "id": "s", "prompt": "hi", "json_schema": schema}).encode()

    assert deliver("text", request({"type": "object", "if": {"required": ["a"]}})) == ErrorCode.INVALID_REQUEST
    assert deliver("text", request({"type": "string", "format": "no-such-format"})) == ErrorCode.INVALID_REQUEST
    assert deliver("text", request(["not", "an", "object"])) == ErrorCode.INVALID_REQUEST
    assert deliver("text", request({"type": "object", "properties": {"a": {"type": "integer"}}})) == "served"
