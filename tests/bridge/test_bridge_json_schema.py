"""The published JSON Schemas (firmware_bridge/schemas/) agree with the device's parser and its answers.

The parser (firmware_bridge/schema.py) is the authority; the schemas are what firmware authors validate against. Their
limits are compared with the Python constants, and a corpus of hand-written and generated requests must get the
same verdict from both, except for the few refusals JSON Schema cannot state (KNOWN_DIFFERENCES, also written in
the schemas' descriptions).
"""
from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from edgegen.firmware_bridge import responses, schema
from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.schema import parse_request
from edgegen.runtime import sampling as runtime_sampling

SCHEMAS = Path(schema.__file__).resolve().parent / "schemas"
REQUEST_FILES = {"text": "request.text.v1.json", "image": "request.image.v1.json", "cancel": "request.cancel.v1.json"}
ANSWER_FILES = ["stream.v1.json", "answer.v1.json", "error.v1.json", "status.v1.json", "models.v1.json"]
CLIENT_ONLY_CODES = {ErrorCode.NOT_AUTHORIZED, ErrorCode.CONNECTION_FAILED, ErrorCode.TIMEOUT}


def load(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


# The request schemas refer to each other by file name ("request.text.v1.json#/$defs/id"), as they lie on disk.
REGISTRY = Registry().with_resources(
    (name, Resource.from_contents(load(name))) for name in [*REQUEST_FILES.values(), *ANSWER_FILES])
VALIDATORS = {name: Draft202012Validator(load(name), registry=REGISTRY) for name in [*REQUEST_FILES.values(),
                                                                                     *ANSWER_FILES]}
TEXT, IMAGE = load(REQUEST_FILES["text"]), load(REQUEST_FILES["image"])


def schema_accepts(kind: str, obj: Any) -> bool:
    return VALIDATORS[REQUEST_FILES[kind]].is_valid(obj)


def parser_verdict(kind: str, obj: Any) -> str | None:
    """None if the device accepts `obj` as a `kind` request, else the error code it answers with."""
    try:
        parse_request(kind, json.dumps(obj).encode("utf-8"))
    except RequestError as e:
        return e.code
    return None


def assert_agree(kind: str, obj: Any) -> None:
    verdict, accepted = parser_verdict(kind, obj), schema_accepts(kind, obj)
    errors = [e.message for e in VALIDATORS[REQUEST_FILES[kind]].iter_errors(obj)][:3]
    assert accepted == (verdict is None), f"{kind} {obj!r:.300}: parser says {verdict or 'ok'}, schema {errors or 'ok'}"


@pytest.mark.parametrize("name", [*REQUEST_FILES.values(), *ANSWER_FILES])
def test_schema_files_are_valid_draft_2020_12(name):
    Draft202012Validator.check_schema(load(name))
    assert load(name)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_limits_are_the_parsers_constants():
    props, sampling = TEXT["properties"], TEXT["properties"]["sampling"]["properties"]
    assert TEXT["x-max-payload-bytes"] == IMAGE["x-max-payload-bytes"] == schema.MAX_REQUEST_BYTES
    assert props["prompt"]["maxLength"] == IMAGE["properties"]["prompt"]["maxLength"] == schema.MAX_PROMPT_CHARS
    assert props["messages"]["items"]["properties"]["content"]["maxLength"] == schema.MAX_PROMPT_CHARS
    assert props["messages"]["maxItems"] == schema.MAX_MESSAGES
    assert tuple(props["messages"]["items"]["properties"]["role"]["enum"]) == schema.ROLES
    assert props["max_tokens"]["maximum"] == schema.MAX_TOKENS_LIMIT
    assert props["max_tokens"]["default"] == schema.TextRequest.__dataclass_fields__["max_tokens"].default
    assert props["v"] == {"$ref": "#/$defs/version"} and TEXT["$defs"]["version"]["const"] == schema.SCHEMA_VERSION
    assert TEXT["$defs"]["id"]["maxLength"] == schema.MAX_ID_CHARS
    assert sampling["stop"]["maxItems"] == schema.MAX_STOP_STRINGS
    assert set(sampling) == {f.name for f in dataclasses.fields(schema.Sampling)}
    for f in dataclasses.fields(schema.Sampling):
        assert sampling[f.name]["default"] == (list(f.default) if isinstance(f.default, tuple) else f.default), f.name
    assert IMAGE["properties"]["steps"]["maximum"] == schema.MAX_IMAGE_STEPS
    # The sampling ranges are the runtime's (SamplingParams.validate), which schema.py imports.
    assert sampling["seed"]["maximum"] == IMAGE["properties"]["seed"]["maximum"] == runtime_sampling.SEED_LIMIT - 1
    assert sampling["temperature"]["maximum"] == runtime_sampling.MAX_TEMPERATURE
    assert sampling["repetition_penalty"]["maximum"] == runtime_sampling.MAX_REPETITION_PENALTY
    assert sampling["stop"]["maxItems"] == runtime_sampling.MAX_STOP_STRINGS


def test_answer_schemas_match_the_responses_module():
    assert load("answer.v1.json")["x-max-message-bytes"] == responses.MAX_RESPONSE_BYTES
    assert tuple(load("answer.v1.json")["properties"]["finish_reason"]["enum"]) == responses.FINISH_REASONS
    stats = load("answer.v1.json")["properties"]["stats"]
    assert set(stats["required"]) == set(stats["properties"]) == {f.name for f in dataclasses.fields(responses.Stats)}
    sent_codes = {str(c) for c in ErrorCode} - {str(c) for c in CLIENT_ONLY_CODES}
    assert set(load("error.v1.json")["properties"]["code"]["enum"]) == sent_codes
    for name in ANSWER_FILES:
        assert load(name)["properties"]["v"] == {"const": schema.SCHEMA_VERSION}, name


def test_id_pattern_is_pythons_isprintable_on_the_basic_plane():
    """The id schema spells str.isprintable() as a character class; checked for every assigned BMP character."""
    bad = re.compile(TEXT["$defs"]["id"]["not"]["pattern"])
    for code in range(0x10000):
        ch = chr(code)
        if unicodedata.category(ch) in ("Cn", "Cs"):  # unassigned, lone surrogates: KNOWN_DIFFERENCES
            continue
        assert (bad.search(ch) is None) == ch.isprintable(), f"U+{code:04X} {unicodedata.category(ch)}"


OK_TEXT = {"v": 1, "id": "r-1", "prompt": "Hi"}
GOOD = [
    ("text", OK_TEXT),
    ("text", {"v": 1, "id": "r-42", "model": "default", "prompt": "Hi", "max_tokens": 64, "chat": True, "stream": True,
              "sampling": {"temperature": 0.7, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.1, "seed": 1,
                           "stop": ["\n"]}}),
    ("text", {"v": 1, "id": "r", "messages": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}]}),
    ("text", {"v": 1, "id": "r", "prompt": None, "messages": [{"role": "user", "content": "Hi"}]}),
    ("text", {"v": 1, "id": "r", "prompt": "Hi", "messages": None, "reply_to": None}),
    ("text", {**OK_TEXT, "prompt": "x" * schema.MAX_PROMPT_CHARS, "max_tokens": schema.MAX_TOKENS_LIMIT}),
    ("text", {**OK_TEXT, "id": "é" * schema.MAX_ID_CHARS, "sampling": {"seed": None, "top_p": 1, "temperature": 10}}),
    ("text", {**OK_TEXT, "sampling": {"seed": 2**63 - 1, "top_k": 1_000_000, "stop": ["x" * 64] * 8}}),
    ("text", {**OK_TEXT, "reply_to": "edgegen/v1/clients/board/responses", "id": "a b"}),
    ("image", {"v": 1, "id": "i", "model": "default", "prompt": "7", "steps": 20, "seed": 0}),
    ("image", {"v": 1, "id": "i", "prompt": "7", "steps": None, "seed": None, "reply_to": "a/b"}),
    ("image", {"v": 1, "id": "i", "prompt": "7", "steps": schema.MAX_IMAGE_STEPS, "seed": 2**63 - 1}),
    ("cancel", {"v": 1, "id": "r-42"}),
]
BAD = [  # (kind, request, the code the device answers with)
    ("text", [], ErrorCode.INVALID_REQUEST),
    ("text", {"id": "r", "prompt": "Hi"}, ErrorCode.UNSUPPORTED_VERSION),
    ("text", {**OK_TEXT, "v": 2}, ErrorCode.UNSUPPORTED_VERSION),
    ("text", {**OK_TEXT, "v": True}, ErrorCode.UNSUPPORTED_VERSION),
    ("text", {**OK_TEXT, "v": "1"}, ErrorCode.UNSUPPORTED_VERSION),
    ("text", {"v": 1, "prompt": "Hi"}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "id": ""}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "id": "x" * (schema.MAX_ID_CHARS + 1)}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "id": "a\nb"}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "id": "a\u200bb"}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "id": 7}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "extra": 1}, ErrorCode.INVALID_REQUEST),
    ("text", {"v": 1, "id": "r"}, ErrorCode.MISSING_PROMPT),
    ("text", {"v": 1, "id": "r", "prompt": None}, ErrorCode.MISSING_PROMPT),
    ("text", {**OK_TEXT, "prompt": " \n\t"}, ErrorCode.MISSING_PROMPT),
    ("text", {**OK_TEXT, "prompt": 5}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "messages": [{"role": "user", "content": "Hi"}]}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "prompt": "x" * (schema.MAX_PROMPT_CHARS + 1)}, ErrorCode.PROMPT_TOO_LONG),
    ("text", {"v": 1, "id": "r", "messages": []}, ErrorCode.MISSING_PROMPT),
    ("text", {"v": 1, "id": "r", "messages": [{"role": "user", "content": " "}]}, ErrorCode.MISSING_PROMPT),
    ("text", {"v": 1, "id": "r", "messages": [{"role": "user", "content": "a"}] * (schema.MAX_MESSAGES + 1)},
     ErrorCode.INVALID_REQUEST),
    ("text", {"v": 1, "id": "r", "messages": [{"role": "robot", "content": "a"}]}, ErrorCode.INVALID_REQUEST),
    ("text", {"v": 1, "id": "r", "messages": [{"role": "user", "content": "a", "name": "x"}]},
     ErrorCode.INVALID_REQUEST),
    ("text", {"v": 1, "id": "r", "messages": ["Hi"]}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "max_tokens": 0}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "max_tokens": schema.MAX_TOKENS_LIMIT + 1}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "max_tokens": "64"}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "max_tokens": None}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "chat": "yes"}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "stream": 1}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "model": ""}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "model": None}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "sampling": None}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "sampling": {"temperature": -0.1}}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "sampling": {"temperature": 10.5}}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "sampling": {"temperature": True}}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "sampling": {"top_p": 0}}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "sampling": {"top_k": -1}}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "sampling": {"top_k": 1.5}}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "sampling": {"repetition_penalty": 0}}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "sampling": {"seed": -1}}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "sampling": {"seed": 2**63}}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "sampling": {"stop": [""]}}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "sampling": {"stop": ["x" * 65]}}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "sampling": {"stop": ["a"] * (schema.MAX_STOP_STRINGS + 1)}}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "sampling": {"stop": "\n"}}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "sampling": {"min_p": 0.1}}, ErrorCode.INVALID_SAMPLING),
    ("text", {**OK_TEXT, "reply_to": "edgegen/v1/+/responses"}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "reply_to": "a/#"}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "reply_to": "$SYS/x"}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "reply_to": ""}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "reply_to": "a\u0000b"}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "reply_to": "a" * 257}, ErrorCode.INVALID_REQUEST),
    ("image", {"v": 1, "id": "i"}, ErrorCode.MISSING_PROMPT),
    ("image", {"v": 1, "id": "i", "prompt": None}, ErrorCode.MISSING_PROMPT),
    ("image", {"v": 1, "id": "i", "prompt": " "}, ErrorCode.MISSING_PROMPT),
    ("image", {"v": 1, "id": "i", "prompt": 7}, ErrorCode.INVALID_REQUEST),
    ("image", {"v": 1, "id": "i", "prompt": "7", "steps": 0}, ErrorCode.INVALID_SAMPLING),
    ("image", {"v": 1, "id": "i", "prompt": "7", "steps": schema.MAX_IMAGE_STEPS + 1}, ErrorCode.INVALID_SAMPLING),
    ("image", {"v": 1, "id": "i", "prompt": "7", "seed": -1}, ErrorCode.INVALID_SAMPLING),
    ("image", {"v": 1, "id": "i", "prompt": "7", "max_tokens": 3}, ErrorCode.INVALID_REQUEST),
    ("cancel", {"v": 1}, ErrorCode.INVALID_REQUEST),
    ("cancel", {"v": 1, "id": "r", "prompt": "Hi"}, ErrorCode.INVALID_REQUEST),
    ("cancel", {"v": 2, "id": "r"}, ErrorCode.UNSUPPORTED_VERSION),
]
# What the device refuses and JSON Schema cannot say (each also named in the request schema's description):
KNOWN_DIFFERENCES = [
    # JSON Schema's integer is any number with a zero fraction (2020-12 validation, 6.1.1); Python's json gives 1.0
    # a float, which the parser refuses where it wants an integer.
    ("text", {**OK_TEXT, "v": 1.0}, ErrorCode.UNSUPPORTED_VERSION),
    ("text", {**OK_TEXT, "max_tokens": 64.0}, ErrorCode.INVALID_SAMPLING),
    # A sum over the items: no keyword for it.
    ("text", {"v": 1, "id": "r", "messages": [{"role": "user", "content": "x" * 8000}] * 3}, ErrorCode.PROMPT_TOO_LONG),
    # Lone surrogates: valid JSON escapes, not encodable text; validators disagree on what a pattern sees of them.
    ("text", {**OK_TEXT, "prompt": "a\ud800"}, ErrorCode.INVALID_REQUEST),
    # Astral format characters (U+E0001 LANGUAGE TAG) and unassigned code points are not printable.
    ("text", {**OK_TEXT, "id": "a\U000e0001"}, ErrorCode.INVALID_REQUEST),
    ("text", {**OK_TEXT, "id": "a\u0378"}, ErrorCode.INVALID_REQUEST),
    # NaN is not JSON (RFC 8259), but Python's decoder reads it; a conforming parser would refuse the payload.
    ("text", {**OK_TEXT, "sampling": {"temperature": float("nan")}}, ErrorCode.INVALID_SAMPLING),
]


@pytest.mark.parametrize("kind, obj", GOOD)
def test_good_requests_pass_both(kind, obj):
    assert parser_verdict(kind, obj) is None
    assert_agree(kind, obj)


@pytest.mark.parametrize("kind, obj, code", BAD)
def test_bad_requests_fail_both(kind, obj, code):
    assert parser_verdict(kind, obj) == code
    assert_agree(kind, obj)


@pytest.mark.parametrize("kind, obj, code", KNOWN_DIFFERENCES)
def test_known_differences_are_refused_by_the_parser_only(kind, obj, code):
    assert parser_verdict(kind, obj) == code
    assert schema_accepts(kind, obj)


# Generated requests: valid ones, then one field replaced by an arbitrary JSON value, dropped, or added. Floats with
# a zero fraction and strings with lone surrogates or unassigned characters are KNOWN_DIFFERENCES, not generated.
CHARS = st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs", "Cn"))
FLOATS = st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer())
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | FLOATS | st.text(CHARS, max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(CHARS, max_size=6), inner, max_size=3),
    max_leaves=6)
TEXTS = st.text(CHARS, max_size=20) | st.sampled_from(["", " ", "\n\t", "\u3000", "\x1c", "a\u2028"])
IDS = st.text(CHARS, max_size=8) | st.integers(schema.MAX_ID_CHARS - 1, schema.MAX_ID_CHARS + 1).map("i".__mul__)
NUMBERS = st.integers(-2, 12) | st.floats(-1, 12, allow_nan=False) | st.sampled_from([0.0, 1.0, 10.0, 1e-300])
TOPICS = st.none() | st.text(st.sampled_from("ab/+#$\x00 é"), max_size=8) | st.sampled_from(["a" * 256, "a" * 257])
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from([*schema.ROLES, "tool"]), "content": TEXTS}),
                    max_size=schema.MAX_MESSAGES + 1)
SAMPLING = st.fixed_dictionaries({}, optional={
    "temperature": NUMBERS, "top_k": st.integers(-1, 1_000_001), "top_p": NUMBERS, "repetition_penalty": NUMBERS,
    "seed": st.none() | st.integers(-1, 2**64) | st.sampled_from([2**63 - 1, 2**63]),
    "stop": st.lists(TEXTS | st.integers(63, 65).map("s".__mul__), max_size=schema.MAX_STOP_STRINGS + 1)})
LONG_PROMPTS = st.integers(schema.MAX_PROMPT_CHARS - 1, schema.MAX_PROMPT_CHARS + 1).map("p".__mul__)
REQUESTS = {
    "text": st.fixed_dictionaries({"v": st.just(1), "id": IDS}, optional={
        "prompt": st.none() | TEXTS | LONG_PROMPTS, "messages": st.none() | MESSAGES, "model": TEXTS,
        "max_tokens": st.integers(-1, schema.MAX_TOKENS_LIMIT + 1), "chat": st.booleans(), "stream": st.booleans(),
        "sampling": SAMPLING, "reply_to": TOPICS}),
    "image": st.fixed_dictionaries({"v": st.just(1), "id": IDS}, optional={
        "prompt": st.none() | TEXTS, "model": TEXTS, "steps": st.none() | st.integers(-1, schema.MAX_IMAGE_STEPS + 1),
        "seed": st.none() | st.integers(-1, 2**63), "reply_to": TOPICS}),
    "cancel": st.fixed_dictionaries({"v": st.just(1), "id": IDS}),
}


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    obj = draw(REQUESTS[kind])
    how = draw(st.sampled_from(["as is", "replace", "drop", "add"]))
    if how == "replace" or (how == "drop" and obj):
        key = draw(st.sampled_from(sorted(obj)))
        if how == "drop":
            del obj[key]
        else:
            obj[key] = draw(JSON)
    elif how == "add":
        obj[draw(st.sampled_from(["v", "id", "prompt", "extra", "sampling", "steps", "messages"]))] = draw(JSON)
    return obj


@pytest.mark.parametrize("kind", sorted(REQUESTS))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_requests_get_the_same_verdict(kind, data):
    assert_agree(kind, data.draw(mutated(kind)))


STATS = st.builds(responses.Stats, prompt_tokens=st.integers(0, 10**6), completion_tokens=st.integers(0, 10**6),
                  ttft_ms=st.floats(0, 1e7), tokens_per_s=st.floats(0, 1e5), total_ms=st.floats(0, 1e7),
                  queue_ms=st.floats(0, 1e7), peak_rss_bytes=st.integers(0, 2**40))
DEVICES = st.text(st.sampled_from("abz09_.-"), min_size=1, max_size=64)


@settings(max_examples=100, deadline=None)
@given(rid=st.text(CHARS, min_size=1, max_size=8), seq=st.integers(0, 10**6), text=TEXTS, stats=STATS,
       reason=st.sampled_from(responses.FINISH_REASONS), device=DEVICES, code=st.sampled_from(sorted(
           {str(c) for c in ErrorCode} - {str(c) for c in CLIENT_ONLY_CODES})), state=st.sampled_from(
           ["online", "busy", "offline"]), ts=st.floats(0, 2e9), names=st.lists(TEXTS, max_size=3))
def test_what_the_device_sends_matches_the_answer_schemas(rid, seq, text, stats, reason, device, code, state, ts,
                                                          names):
    sent = {"stream.v1.json": responses.chunk(rid, seq, text),
            "answer.v1.json": responses.final(rid, text, reason, seq, device, stats),
            "error.v1.json": responses.error(rid, code, text, device),
            "status.v1.json": responses.status(device, state, ts),
            "models.v1.json": responses.models(device, names, names[:1])}
    for name, message in sent.items():
        message = json.loads(json.dumps(message))  # what a board decodes
        errors = [e.message for e in VALIDATORS[name].iter_errors(message)]
        assert not errors, (name, message, errors)
    assert VALIDATORS["error.v1.json"].is_valid(json.loads(json.dumps(responses.error(None, code, text, device))))


@pytest.mark.parametrize("name, message", [
    ("stream.v1.json", {"v": 1, "type": "chunk", "id": "r", "seq": -1, "text": "x"}),
    ("answer.v1.json", {"v": 1, "type": "final", "id": "r", "text": "", "finish_reason": "tired", "chunks": 0,
                        "device": "d", "stats": dataclasses.asdict(responses.Stats())}),
    ("error.v1.json", {"v": 1, "type": "error", "id": "r", "code": "timeout", "message": "m", "device": "d"}),
    ("status.v1.json", {"v": 1, "device": "d", "state": "asleep", "ts": 0}),
    ("models.v1.json", {"v": 1, "device": "d", "text": "default", "image": []}),
])
def test_answer_schemas_refuse_what_a_device_never_sends(name, message):
    assert not VALIDATORS[name].is_valid(message)
