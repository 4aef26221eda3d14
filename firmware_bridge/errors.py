"""Errors of the MQTT bridge: a machine-readable code plus a message naming the bad value."""
from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Codes carried in `{"type": "error", "code": ...}` responses; stable, part of the protocol (schema v1)."""

    INVALID_UTF8 = "invalid_utf8"  # payload is not UTF-8 (Mosquitto does not check it)
    INVALID_JSON = "invalid_json"
    UNSUPPORTED_VERSION = "unsupported_version"  # "v" is not a schema version this device speaks
    INVALID_REQUEST = "invalid_request"  # a field has the wrong type, an unknown field, a bad id
    MISSING_PROMPT = "missing_prompt"
    PROMPT_TOO_LONG = "prompt_too_long"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_SAMPLING = "invalid_sampling"  # a sampling option out of its range
    UNKNOWN_MODEL = "unknown_model"
    UNSUPPORTED = "unsupported"  # a request kind this device has no engine for (images without a diffusion engine)
    BUSY = "busy"  # the device's queue is full; retry later or on another device
    EXPIRED = "expired"  # the request's Message Expiry passed before it could start
    NO_RESPONSE_TOPIC = "no_response_topic"  # reported on the device's error topic
    INTERNAL = "internal"  # the engine failed; the device keeps serving
    # Raised by the client, never sent by a device:
    NOT_AUTHORIZED = "not_authorized"  # the broker refused the connection or the publish (PUBACK 0x87)
    CONNECTION_FAILED = "connection_failed"  # no broker there, or the TLS handshake failed
    TIMEOUT = "timeout"  # no answer in time


class RequestError(Exception):
    """A request the bridge refuses, or a failure reported back by a device; `code` is an `ErrorCode` value."""

    exit_code = 2

    def __init__(self, code: ErrorCode | str, message: str, request_id: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = str(code)
        self.message = message
        self.request_id = request_id  # echoed in the error answer when the request got that far
        self.reply_to: str | None = None  # where an MQTT 3.1.1 client asked for answers, if readable
