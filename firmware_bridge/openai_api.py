"""OpenAI's chat and completions API, translated to and from the device protocol (schema.py, responses.py): what
`edgegen serve --http` (http_api.py) and a fleet gateway speak to clients, with no state of its own.

A request body becomes the protocol's request dict and goes through schema.parse_text_request, so an HTTP request
is checked by the same code as an MQTT one. Fields the device cannot honour are refused by name (400), never
ignored: n > 1, logprobs, tools, penalties, logit_bias. response_format json_object and json_schema become the
protocol's json_schema (constrained decoding on the device). OpenAI's own defaults apply where they differ from the
protocol's: temperature 1, and no token limit but the context (max_tokens up to schema.MAX_TOKENS_LIMIT).
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.schema import MAX_TOKENS_LIMIT, SCHEMA_VERSION, TextRequest, parse_text_request

# Our error codes as HTTP statuses and OpenAI error types (llama.cpp's server and Ollama answer the same way).
HTTP_STATUS: dict[str, int] = {ErrorCode.BUSY: 429, ErrorCode.UNKNOWN_MODEL: 404, ErrorCode.UNSUPPORTED: 404,
               ErrorCode.INTERNAL: 500, ErrorCode.TIMEOUT: 504, ErrorCode.CONNECTION_FAILED: 503,
               ErrorCode.NOT_AUTHORIZED: 401, ErrorCode.EXPIRED: 504, ErrorCode.PAYLOAD_TOO_LARGE: 413}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error",
               504: "server_error"}
RETRY_AFTER_S = 1  # a `busy` answer's Retry-After
# The protocol's finish reasons as OpenAI's (a deadline is a length limit; a cancelled stream has no reader left)
FINISH = {"stop": "stop", "length": "length", "deadline": "length", "cancelled": "stop"}
_COMMON = {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed", "stop", "user",
           "n", "top_k", "repetition_penalty", "response_format", "frequency_penalty", "presence_penalty",
           "logprobs", "logit_bias"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
                         "parallel_tool_calls"}
COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "suffix", "best_of"}
# Accepted only at the value that asks for nothing: anything else is a feature the device does not have.
NEUTRAL = {"n": 1, "frequency_penalty": 0, "presence_penalty": 0, "logprobs": (False, None), "logit_bias": ({}, None),
           "top_logprobs": (0, None), "tools": ([], None), "tool_choice": ("none", None), "echo": False,
           "suffix": (None, ""), "best_of": 1, "parallel_tool_calls": (True, False, None)}


def error_body(code: ErrorCode | str, message: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OpenAI's error body) for one of our error codes; 400 for a bad request of any kind."""
    status = HTTP_STATUS.get(str(code), 400)  # ErrorCode keys are str (StrEnum)
    return status, {"error": {"message": message, "type": ERROR_TYPES[status], "param": None, "code": str(code)}}


def _bad(message: str) -> RequestError:
    return RequestError(ErrorCode.INVALID_REQUEST, message)


def _check_fields(body: Any, allowed: set[str]) -> None:
    if not isinstance(body, dict):
        raise _bad(f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _bad(f"unsupported field(s): {', '.join(unknown)}")
    for name, neutral in NEUTRAL.items():
        if name in body and body[name] not in (neutral if isinstance(neutral, tuple) else (neutral,)):
            raise _bad(f"{name}={body[name]!r} is not supported by this device")



def _json_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """response_format as the protocol's json_schema: json_object is any object, json_schema its `schema`."""
    fmt = body.get("response_format")
    if fmt is None or fmt == {"type": "text"}:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
            return spec["schema"]
        raise _bad("response_format json_schema needs {\"json_schema\": {\"name\": ..., \"schema\": {...}}}")
    raise _bad(f"response_format must be text, json_object or json_schema, got {fmt!r}")


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"temperature": body.get("temperature", 1.0)}
    for name in ("top_p", "top_k", "seed", "repetition_penalty"):
        if body.get(name) is not None:
            out[name] = body[name]
    stop = body.get("stop")
    if stop is not None:
        out["stop"] = [stop] if isinstance(stop, str) else stop
    return out


def _content(message: Any, i: int) -> dict[str, Any]:
    """One OpenAI message as the protocol's {"role", "content"}: text parts joined; developer means system."""
    if not isinstance(message, dict) or "role" not in message:
        raise _bad(f"messages[{i}] must be an object with a role and content")
    role, content = message["role"], message.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise _bad(f"messages[{i}]: only text content parts are supported")
        content = "".join(p["text"] for p in content)
    return {"role": "system" if role == "developer" else role, "content": content}


def parse_chat(body: Any) -> TextRequest:
    """A /v1/chat/completions body as a protocol TextRequest (chat template on); RequestError on anything wrong."""
    _check_fields(body, CHAT_FIELDS)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _bad("messages must be a list of {role, content} objects")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    obj = {"v": SCHEMA_VERSION, "id": f"chatcmpl-{uuid.uuid4().hex}", "model": body.get("model", "default"),
           "messages": [_content(m, i) for i, m in enumerate(messages)], "chat": True,
           "max_tokens": MAX_TOKENS_LIMIT if limit is None else limit, "sampling": _sampling(body)}
    return parse_text_request(_with_schema(obj, body))


def _with_schema(obj: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    schema = _json_schema(body)
    return obj if schema is None else {**obj, "json_schema": schema}


def parse_completion(body: Any) -> TextRequest:
    """A /v1/completions body as a protocol TextRequest (the prompt as it is, no chat template)."""
    _check_fields(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    limit = body.get("max_tokens")
    obj = {"v": SCHEMA_VERSION, "id": f"cmpl-{uuid.uuid4().hex}", "model": body.get("model", "default"),
           "prompt": prompt, "chat": False, "max_tokens": MAX_TOKENS_LIMIT if limit is None else limit,
           "sampling": _sampling(body)}
    return parse_text_request(_with_schema(obj, body))


class Answer:
    """One request's answer in OpenAI's shapes: stream chunks as they come, then the end (or the whole body)."""

    def __init__(self, request: TextRequest, include_usage: bool = False) -> None:
        self.request, self.include_usage = request, include_usage
        self.chat = request.messages is not None
        self.created = int(time.time())
        self.object = "chat.completion" if self.chat else "text_completion"

    def _choice(self, text: str | None, finish: str | None, stream: bool) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if stream:
            delta = {} if text is None else {"role": "assistant", "content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish}

    def _envelope(self, choices: list[dict[str, Any]], stream: bool) -> dict[str, Any]:
        kind = self.object + (".chunk" if stream and self.chat else "")
        return {"id": self.request.id, "object": kind, "created": self.created, "model": self.request.model,
                "system_fingerprint": "edgegen", "choices": choices}

    def chunk(self, text: str) -> dict[str, Any]:
        return self._envelope([self._choice(text, None, True)], True)

    @staticmethod
    def usage(final: dict[str, Any]) -> dict[str, int]:
        stats = final.get("stats", {})
        prompt, completion = int(stats.get("prompt_tokens", 0)), int(stats.get("completion_tokens", 0))
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def end_chunks(self, final: dict[str, Any]) -> list[dict[str, Any]]:
        """The closing chunk (finish_reason) and, when asked for (stream_options.include_usage), the usage chunk."""
        out = [self._envelope([self._choice(None, FINISH[final["finish_reason"]], True)], True)]
        if self.include_usage:
            out.append({**self._envelope([], True), "usage": self.usage(final)})
        return out

    def body(self, final: dict[str, Any]) -> dict[str, Any]:
        """The non-streaming response."""
        return {**self._envelope([self._choice(final["text"], FINISH[final["finish_reason"]], False)], False),
                "usage": self.usage(final)}


def models_body(names: list[str], created: int = 0) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "edgegen"}
                                       for n in names]}
