"""parse_request on inputs the JSON decoder accepts but the device cannot use: lone surrogates, deep nesting, huge
integers, `true` as a version. Each is refused with its code and a message naming the field."""
from __future__ import annotations

import json

import pytest

from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.schema import parse_request

REPLY_TO = "edgegen/v1/clients/board/responses"
TEXT = {"v": 1, "id": "r-1", "prompt": "Hi"}

# (kind, request with a lone surrogate somewhere, the field the message must name)
SURROGATES = [
    ("text", {**TEXT, "prompt": "\ud800"}, "prompt"),
    ("text", {**TEXT, "id": "r\udc00"}, "id"),
    ("text", {"v": 1, "id": "r-1", "messages": [{"role": "user", "content": "a\udfffb"}]}, "messages[0].content"),
    ("text", {"v": 1, "id": "r-1", "messages": [{"role": "user", "content": "hi"}, {"role": "\ud83d", "content": "x"}]},
     "messages[1].role"),
    ("text", {**TEXT, "sampling": {"stop": ["\n", "\ud800"]}}, "sampling.stop[1]"),
    ("text", {**TEXT, "model": "\udbff"}, "model"),
    ("text", {**TEXT, "reply_to": "edgegen/v1/clients/\ud800/responses"}, "reply_to"),
    ("text", {**TEXT, "extra": {"deep": [1, {"deeper": "\ud800"}]}}, "extra.deep[1].deeper"),
    ("text", {**TEXT, "sampling": {"\ud800": 1}}, "a field name in sampling ('\\ud800')"),
    ("text", {**TEXT, "v": 2, "id": "\ud800"}, "id"),  # before the version check, whose message would quote the id
    ("image", {"v": 1, "id": "i-1", "prompt": "7\ud800"}, "prompt"),
    ("cancel", {"v": 1, "id": "\ud800"}, "id"),
]


@pytest.mark.parametrize(("kind", "request_obj", "field"), SURROGATES, ids=[f for _, _, f in SURROGATES])
def test_a_lone_surrogate_anywhere_is_an_invalid_request_naming_the_field(kind: str, request_obj: dict,
                                                                          field: str) -> None:
    payload = json.dumps(request_obj).encode("ascii")  # valid JSON: the surrogate travels as a \\uXXXX escape
    with pytest.raises(RequestError) as err:
        parse_request(kind, payload)
    assert err.value.code == ErrorCode.INVALID_REQUEST
    assert err.value.message.startswith(f"{field} is not valid Unicode text"), err.value.message
    assert "surrogate" in err.value.message
    err.value.message.encode("utf-8")  # the error answer itself must be publishable
    # The error echoes the id only when the id itself is usable.
    assert err.value.request_id == (None if field == "id" else request_obj["id"])


def test_the_error_for_a_surrogate_still_reaches_a_valid_reply_to() -> None:
    payload = json.dumps({**TEXT, "prompt": "\ud800", "reply_to": REPLY_TO}).encode()
    with pytest.raises(RequestError) as err:
        parse_request("text", payload)
    assert err.value.code == ErrorCode.INVALID_REQUEST and err.value.reply_to == REPLY_TO


def test_a_surrogate_reply_to_is_never_used_as_a_topic() -> None:
    payload = json.dumps({**TEXT, "reply_to": "a/\ud800"}).encode()
    with pytest.raises(RequestError) as err:
        parse_request("text", payload)
    assert err.value.code == ErrorCode.INVALID_REQUEST and err.value.reply_to is None


@pytest.mark.parametrize(("payload", "code", "words"), [
    (b"[" * 60_000 + b"]" * 60_000, ErrorCode.PAYLOAD_TOO_LARGE, "limit"),
    (b'{"v": 1, "id": "x", "prompt": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", ErrorCode.INVALID_JSON,
     "too deeply"),
    (b'{"v": 1, "id": "x", "prompt": "hi", "max_tokens": 1' + b"0" * 5000 + b"}", ErrorCode.INVALID_JSON,
     "digits"),
    (b'{"v": true, "id": "x", "prompt": "hi"}', ErrorCode.UNSUPPORTED_VERSION, "v=True"),
    (b'{"v": 1, "id": "x", "prompt": "hi", "max_tokens": NaN}', ErrorCode.INVALID_SAMPLING, "max_tokens"),
    (b'{"v": 1, "id": "x", "prompt": "hi", "sampling": {"temperature": Infinity}}', ErrorCode.INVALID_SAMPLING,
     "temperature"),
    (b'{"v": 1, "id": "x", "prompt": "hi", "sampling": {"top_p": 1e999}}', ErrorCode.INVALID_SAMPLING, "top_p"),
    (b'{"v": 1, "id": "x", "prompt": "hi", "max_tokens": ' + b"[" * 900 + b"]" * 900 + b"}",
     ErrorCode.INVALID_SAMPLING, "max_tokens"),  # quoting the value must not recurse 900 levels deep
], ids=["too-large", "deep", "huge-int", "v-true", "nan", "infinity", "1e999", "deep-value"])
def test_json_the_decoder_accepts_or_chokes_on_gets_a_client_error(payload: bytes, code: ErrorCode,
                                                                   words: str) -> None:
    with pytest.raises(RequestError) as err:
        parse_request("text", payload)
    assert err.value.code == code and words in err.value.message, err.value
    assert len(err.value.message) < 400


@pytest.mark.parametrize("name", ["dev1\n", "dev1\r\n", "", "a" * 65, "dev/1", "dev+", "dev#", "dév"])
def test_topic_names_refuse_what_is_not_one_topic_level(name):
    """A trailing newline once passed (`$` matches before it): it would make a second, broken topic level."""
    from edgegen.firmware_bridge.topics import check_name

    with pytest.raises(RequestError, match="must be 1-64 characters"):
        check_name(name)
    assert check_name("dev-1.a_b") == "dev-1.a_b"
