"""Request payloads (schema v1) as frozen dataclasses, validated on entry with machine-readable error codes.

A text request, UTF-8 JSON on `.../requests/text`:
    {"v": 1, "id": "r-42", "model": "default", "prompt": "Hi" | "messages": [{"role": "user", "content": "Hi"}],
     "max_tokens": 64, "chat": true, "stream": true,
     "sampling": {"temperature": 0.7, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.1, "seed": 1, "stop": ["\\n"]}}
The answer goes to the MQTT 5 Response Topic; a client that speaks only MQTT 3.1.1 (MicroPython's umqtt) names it
in the payload instead: "reply_to": "edgegen/v1/clients/<client>/responses".
An image request on `.../requests/image`: {"v": 1, "id": "r-43", "model": "default", "prompt": "7", "steps": 20,
"seed": 0}. A cancel on `.../requests/cancel` or the pool's cancel topic: {"v": 1, "id": "r-42"}.
"""
from __future__ import annotations

import dataclasses
import json
import math
import reprlib
from collections.abc import Callable
from typing import Any

from edgegen.firmware_bridge import topics
from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.runtime.sampling import MAX_REPETITION_PENALTY, MAX_STOP_STRINGS, MAX_TEMPERATURE, SEED_LIMIT

SCHEMA_VERSION = 1
# A request is a prompt, not a document: 64 KiB keeps one far below Mosquitto's and paho's packet limits, and
# both sides check it before publishing (docs/ARCHITECTURE.md: an oversized packet makes paho reconnect in a loop).
MAX_REQUEST_BYTES = 64 * 1024
MAX_PROMPT_CHARS = 16_000
MAX_MESSAGES = 64
MAX_TOKENS_LIMIT = 4096
MAX_ID_CHARS = 128
MAX_IMAGE_STEPS = 1000
ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Sampling options; the ranges are runtime.SamplingParams.validate()'s, checked here before queueing."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TextRequest:
    id: str
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    model: str = "default"
    max_tokens: int = 128
    chat: bool = True
    stream: bool = True  # false: no chunks, only the final message (one request, one answer, as mosquitto_rr wants)
    sampling: Sampling = Sampling()
    reply_to: str | None = None  # for MQTT 3.1.1 clients (umqtt), which cannot send a Response Topic property
    json_schema: dict[str, Any] | None = None  # the answer must follow this JSON Schema (runtime.constrain)
    v: int = SCHEMA_VERSION
    kind = "text"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": self.v, "id": self.id, "model": self.model, "max_tokens": self.max_tokens,
                               "chat": self.chat, "stream": self.stream, "sampling": dataclasses.asdict(self.sampling)}
        out["sampling"]["stop"] = list(self.sampling.stop)
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.messages is not None:
            out["messages"] = list(self.messages)  # as given: parse_request says what is wrong with an odd one
        if self.reply_to is not None:
            out["reply_to"] = self.reply_to
        if self.json_schema is not None:
            out["json_schema"] = self.json_schema
        return out


@dataclasses.dataclass(frozen=True)
class ImageRequest:
    id: str
    prompt: str
    model: str = "default"
    steps: int | None = None
    seed: int | None = None
    reply_to: str | None = None
    v: int = SCHEMA_VERSION
    kind = "image"

    def to_json(self) -> dict[str, Any]:
        out = {"v": self.v, "id": self.id, "model": self.model, "prompt": self.prompt, "steps": self.steps,
               "seed": self.seed}
        return out if self.reply_to is None else {**out, "reply_to": self.reply_to}


@dataclasses.dataclass(frozen=True)
class CancelRequest:
    id: str
    v: int = SCHEMA_VERSION
    kind = "cancel"

    def to_json(self) -> dict[str, Any]:
        return {"v": self.v, "id": self.id}


Request = TextRequest | ImageRequest | CancelRequest


# Error messages quote the client's values: briefly, and without recursing into a deeply nested value.
_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong, _REPR.maxlevel = 80, 80, 40, 3


def _show(value: Any) -> str:
    return _REPR.repr(value)


def _fail(code: ErrorCode, message: str, request_id: str | None) -> RequestError:
    return RequestError(code, message, request_id)


def decode_json(payload: bytes, request_id: str | None = None) -> dict[str, Any]:
    """Bytes -> JSON object, checking size, UTF-8 and JSON in that order."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise _fail(ErrorCode.PAYLOAD_TOO_LARGE, f"payload is {len(payload)} bytes, limit {MAX_REQUEST_BYTES}", None)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(ErrorCode.INVALID_UTF8, f"payload is not UTF-8 ({e.reason} at byte {e.start})", None) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(ErrorCode.INVALID_JSON, f"payload is not JSON ({e.msg} at line {e.lineno} col {e.colno})",
                    None) from None
    except RecursionError:  # 64 KiB of '[' nests deeper than the decoder's recursion limit
        raise _fail(ErrorCode.INVALID_JSON, "payload nests arrays or objects too deeply", None) from None
    except ValueError as e:  # an integer of more than sys.get_int_max_str_digits() digits
        raise _fail(ErrorCode.INVALID_JSON, f"payload is not JSON we accept ({e!s:.120})", None) from None
    if not isinstance(obj, dict):
        raise _fail(ErrorCode.INVALID_REQUEST, f"payload must be a JSON object, got {type(obj).__name__}", None)
    return obj


def _is_utf8(text: str) -> bool:
    """False for a string holding a lone surrogate: JSON can escape one (\\ud800), UTF-8 cannot encode it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_non_utf8(obj: Any) -> str | None:
    """Where the first string (value or key, at any depth) that UTF-8 cannot encode sits, e.g. 'messages[0].content'.

    Iterative: json.loads nests as deep as the recursion limit allows, a recursive walk would not get back up.
    """
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not _is_utf8(value):
                return path
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                if not _is_utf8(key):
                    return f"a field name in {path or 'the request'} ({_show(key)})"
                stack.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


def _check_text(obj: dict[str, Any]) -> None:
    """Every string must be valid Unicode text: the tokenizer, the answer and the MQTT topic are all UTF-8."""
    where = _first_non_utf8(obj)
    if where is not None:
        raw_id = obj.get("id")
        rid = raw_id if isinstance(raw_id, str) and _valid_id(raw_id) else None
        raise _fail(ErrorCode.INVALID_REQUEST, f"{where:.200} is not valid Unicode text: it holds a lone surrogate "
                    "(e.g. \\ud800), which UTF-8 cannot encode", rid)


def _valid_id(rid: str) -> bool:
    return 0 < len(rid) <= MAX_ID_CHARS and rid.isprintable() and _is_utf8(rid)


def _number(obj: dict, key: str, lo: float, hi: float, default: float, rid: str | None, integer: bool = False,
            above_lo: bool = False) -> Any:
    """obj[key] (or `default`) if it is a number in [lo, hi] ((lo, hi] with above_lo), else INVALID_SAMPLING."""
    value = obj.get(key, default)
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (isinstance(value, float) and not math.isfinite(value)):
        raise _fail(ErrorCode.INVALID_SAMPLING, f"{key} must be {'an integer' if integer else 'a number'}, "
                    f"got {_show(value)}", rid)
    if not (lo < value if above_lo else lo <= value) or value > hi:
        interval = f"{'(' if above_lo else '['}{lo}, {hi}]"
        raise _fail(ErrorCode.INVALID_SAMPLING, f"{key}={_show(value)} is out of range {interval}", rid)
    return value


def parse_sampling(obj: Any, rid: str) -> Sampling:
    """`obj` (a request's "sampling" object) checked; RequestError(invalid_sampling) names what is wrong."""
    if not isinstance(obj, dict):
        raise _fail(ErrorCode.INVALID_REQUEST, f"sampling must be an object, got {type(obj).__name__}", rid)
    unknown = set(obj) - {f.name for f in dataclasses.fields(Sampling)}
    if unknown:
        raise _fail(ErrorCode.INVALID_SAMPLING, f"unknown sampling option(s) {_show(sorted(unknown))}", rid)
    seed = obj.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT):
        raise _fail(ErrorCode.INVALID_SAMPLING, f"seed must be null or an integer in [0, 2**63), got {_show(seed)}",
                    rid)
    stop = obj.get("stop", [])
    if (not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and 0 < len(s) <= 64 for s in stop)):
        raise _fail(ErrorCode.INVALID_SAMPLING, f"stop must be a list of up to {MAX_STOP_STRINGS} non-empty strings "
                    f"of up to 64 characters, got {_show(stop)}", rid)
    return Sampling(temperature=float(_number(obj, "temperature", 0.0, MAX_TEMPERATURE, 0.0, rid)),
                    top_k=_number(obj, "top_k", 0, 1_000_000, 0, rid, integer=True),
                    top_p=float(_number(obj, "top_p", 0.0, 1.0, 1.0, rid, above_lo=True)),
                    repetition_penalty=float(_number(obj, "repetition_penalty", 0.0, MAX_REPETITION_PENALTY, 1.0, rid,
                                                     above_lo=True)),
                    seed=seed, stop=tuple(stop))


def _parse_messages(value: Any, rid: str) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_MESSAGES:
        raise _fail(ErrorCode.MISSING_PROMPT if value == [] else ErrorCode.INVALID_REQUEST,
                    f"messages must be a list of 1-{MAX_MESSAGES} objects", rid)
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or set(m) != {"role", "content"} or m["role"] not in ROLES \
                or not isinstance(m["content"], str):
            raise _fail(ErrorCode.INVALID_REQUEST, f"messages[{i}] must be {{'role': one of {ROLES}, "
                        f"'content': string}}, got {_show(m)}", rid)
        out.append({"role": m["role"], "content": m["content"]})
    if sum(len(m["content"]) for m in out) > MAX_PROMPT_CHARS:
        raise _fail(ErrorCode.PROMPT_TOO_LONG, f"messages hold more than {MAX_PROMPT_CHARS} characters", rid)
    if not any(m["content"].strip() for m in out):
        raise _fail(ErrorCode.MISSING_PROMPT, "every message is empty", rid)
    return tuple(out)


def _check_head(obj: dict[str, Any], allowed: set[str]) -> str:
    """Check the schema version and request id common to every request; return the id."""
    raw_id = obj.get("id")
    rid = raw_id if isinstance(raw_id, str) else None
    version = obj.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:  # not `true`, which equals 1 in Python
        raise _fail(ErrorCode.UNSUPPORTED_VERSION, f"schema version v={_show(version)} is not supported "
                    f"(this device speaks v={SCHEMA_VERSION})", rid)
    if rid is None or not _valid_id(rid):
        raise _fail(ErrorCode.INVALID_REQUEST, f"id must be a printable string of 1-{MAX_ID_CHARS} characters, "
                    f"got {_show(raw_id)}", None)
    unknown = set(obj) - allowed
    if unknown:
        raise _fail(ErrorCode.INVALID_REQUEST, f"unknown field(s) {_show(sorted(unknown))}", rid)
    return rid


def _reply_to(obj: dict[str, Any], rid: str) -> str | None:
    reply_to = obj.get("reply_to")
    if reply_to is not None and not (isinstance(reply_to, str) and len(reply_to) <= 256 and topics.is_publishable(
            reply_to)):
        raise _fail(ErrorCode.INVALID_REQUEST, f"reply_to must be a topic without wildcards, got {_show(reply_to)}",
                    rid)
    return reply_to


def _model(obj: dict[str, Any], rid: str) -> str:
    model = obj.get("model", "default")
    if not isinstance(model, str) or not 0 < len(model) <= 256:
        raise _fail(ErrorCode.INVALID_REQUEST, f"model must be a non-empty string, got {_show(model)}", rid)
    return model


def parse_text_request(obj: dict[str, Any]) -> TextRequest:
    rid = _check_head(obj, {"v", "id", "model", "prompt", "messages", "max_tokens", "chat", "stream", "sampling",
                      "reply_to", "json_schema"})
    json_schema = obj.get("json_schema")
    if json_schema is not None and not isinstance(json_schema, dict):
        raise _fail(ErrorCode.INVALID_REQUEST, f"json_schema must be a JSON Schema object, got {_show(json_schema)}",
                    rid)
    prompt, messages = obj.get("prompt"), obj.get("messages")
    if prompt is not None and messages is not None:
        raise _fail(ErrorCode.INVALID_REQUEST, "give either prompt or messages, not both", rid)
    if prompt is None and messages is None:
        raise _fail(ErrorCode.MISSING_PROMPT, "a text request needs prompt (string) or messages (list)", rid)
    if prompt is not None:
        if not isinstance(prompt, str):
            raise _fail(ErrorCode.INVALID_REQUEST, f"prompt must be a string, got {type(prompt).__name__}", rid)
        if not prompt.strip():
            raise _fail(ErrorCode.MISSING_PROMPT, "prompt is empty", rid)
        if len(prompt) > MAX_PROMPT_CHARS:
            raise _fail(ErrorCode.PROMPT_TOO_LONG, f"prompt has {len(prompt)} characters, limit {MAX_PROMPT_CHARS}",
                        rid)
    parsed_messages = _parse_messages(messages, rid) if messages is not None else None
    chat, stream = obj.get("chat", True), obj.get("stream", True)
    if not isinstance(chat, bool) or not isinstance(stream, bool):
        raise _fail(ErrorCode.INVALID_REQUEST, f"chat and stream must be true or false, got {_show(chat)}, "
                    f"{_show(stream)}", rid)
    max_tokens = _number(obj, "max_tokens", 1, MAX_TOKENS_LIMIT, 128, rid, integer=True)
    return TextRequest(id=rid, prompt=prompt, messages=parsed_messages, model=_model(obj, rid), max_tokens=max_tokens,
                       chat=chat, stream=stream, sampling=parse_sampling(obj.get("sampling", {}), rid),
                       reply_to=_reply_to(obj, rid), json_schema=json_schema)


def parse_image_request(obj: dict[str, Any]) -> ImageRequest:
    rid = _check_head(obj, {"v", "id", "model", "prompt", "steps", "seed", "reply_to"})
    prompt = obj.get("prompt")
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        raise _fail(ErrorCode.MISSING_PROMPT, "an image request needs a non-empty prompt (e.g. a class label '7')", rid)
    if not isinstance(prompt, str):
        raise _fail(ErrorCode.INVALID_REQUEST, f"prompt must be a string, got {type(prompt).__name__}", rid)
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _fail(ErrorCode.PROMPT_TOO_LONG, f"prompt has {len(prompt)} characters, limit {MAX_PROMPT_CHARS}", rid)
    steps = obj.get("steps")
    if steps is not None:
        steps = _number(obj, "steps", 1, MAX_IMAGE_STEPS, 0, rid, integer=True)
    seed = obj.get("seed")
    if seed is not None:
        seed = _number(obj, "seed", 0, 2**63 - 1, 0, rid, integer=True)
    return ImageRequest(id=rid, prompt=prompt, model=_model(obj, rid), steps=steps, seed=seed,
                        reply_to=_reply_to(obj, rid))


def parse_cancel(obj: dict[str, Any]) -> CancelRequest:
    return CancelRequest(id=_check_head(obj, {"v", "id"}))


_PARSERS: dict[str, Callable[[dict[str, Any]], Request]] = {
    "text": parse_text_request, "image": parse_image_request, "cancel": parse_cancel}


def parse_request(kind: str, payload: bytes) -> Request:
    """Validate a request payload of `kind` ("text", "image", "cancel"); RequestError with an ErrorCode on bad input.

    >>> parse_request("text", b'{"v": 1, "id": "a", "prompt": "Hi"}').prompt
    'Hi'
    """
    obj = decode_json(payload)
    try:
        _check_text(obj)  # first: every later message may quote a field, and an answer must be encodable
        return _PARSERS[kind](obj)
    except RequestError as e:
        reply_to = obj.get("reply_to")
        if isinstance(reply_to, str) and len(reply_to) <= 256 and _is_utf8(reply_to) and \
                topics.is_publishable(reply_to):
            e.reply_to = reply_to  # so an MQTT 3.1.1 client hears about its bad request
        raise


def encode(obj: dict[str, Any], limit_bytes: int = MAX_REQUEST_BYTES) -> bytes:
    """Compact UTF-8 JSON; raises RequestError(payload_too_large) so nothing oversized is ever published."""
    data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(data) > limit_bytes:
        raise RequestError(ErrorCode.PAYLOAD_TOO_LARGE, f"message is {len(data)} bytes, limit {limit_bytes}")
    return data
