"""OpenAI's HTTP API on a board (`edgegen serve --http HOST:PORT`), beside MQTT: the same queue, workers and
batching (a request is a service job with replies of its own), translated by openai_api.py.

    POST /v1/chat/completions, /v1/completions   streamed as server-sent events (`data: [DONE]` last) or whole
    GET  /v1/models, /health, /metrics           the served text models; liveness; Prometheus metrics

A client that goes away cancels its generation (a streamed request notices at its next write or keep-alive
comment, a whole one by watching its socket). Optional API keys (`Authorization: Bearer KEY`).

Python's ThreadingHTTPServer, not a web framework: a board needs no further dependency, one thread per connection
suits the few clients a board has, and the work is the engine's; server-sent events need only writes and flushes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import logging
import queue
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from edgegen.firmware_bridge import openai_api, responses
from edgegen.firmware_bridge.admission import Admitted, Job
from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.schema import MAX_REQUEST_BYTES, TextRequest, encode

log = logging.getLogger(__name__)
KEEPALIVE_S = 1.0  # a streamed request waiting for its first token sends a comment this often (and so notices a
# client that left); a whole one checks its socket as often


class Host(Protocol):
    """What the API needs of the device service (service.DeviceService)."""

    device: str

    def submit(self, request: TextRequest, replies: Any) -> Admitted: ...

    def text_models(self) -> list[str]: ...

    def metrics_text(self) -> bytes: ...


class Channel:
    """workers.Replies for one HTTP request: the protocol's payloads (chunk, final, error) into a queue its handler
    thread drains."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()

    def send(self, job: Job, payload: bytes, content_type: str = responses.JSON_CONTENT_TYPE,
             wait: bool = False) -> None:
        if content_type == responses.JSON_CONTENT_TYPE:
            self.messages.put(json.loads(payload))

    def error(self, job: Job, code: ErrorCode | str, message: str) -> bytes:
        payload = encode(responses.error(job.request.id, code, message, self.device))
        self.messages.put(json.loads(payload))
        return payload


class _ClientGone(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # ---- responses -----------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def _error(self, code: ErrorCode | str, message: str) -> None:
        status, body = openai_api.error_body(code, message)
        retry = {"Retry-After": str(openai_api.RETRY_AFTER_S)} if status == 429 else None
        self._json(status, body, retry)

    def _authorized(self) -> bool:
        keys = self.server.api_keys
        if not keys:
            return True
        given = self.headers.get("Authorization", "")
        token = given[7:] if given.startswith("Bearer ") else ""
        if any(hmac.compare_digest(token, k) for k in keys):
            return True
        self._error(ErrorCode.NOT_AUTHORIZED, "a valid API key is needed: Authorization: Bearer KEY")
        return False

    # ---- routes --------------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        host = self.server.host
        if self.path == "/health":
            self._json(200, {"status": "ok", "device": host.device})
        elif not self._authorized():
            return
        elif self.path == "/v1/models":
            self._json(200, openai_api.models_body(host.text_models()))
        elif self.path == "/metrics":
            self._send(200, host.metrics_text(), "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._error(ErrorCode.UNKNOWN_MODEL, f"no route {self.path}")

    def do_POST(self) -> None:
        parse = {"/v1/chat/completions": openai_api.parse_chat, "/v1/completions": openai_api.parse_completion}
        if self.path not in parse:
            self._error(ErrorCode.UNKNOWN_MODEL, f"no route {self.path}")
            return
        if not self._authorized():
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_REQUEST_BYTES:
                raise RequestError(ErrorCode.PAYLOAD_TOO_LARGE, f"body of {length} bytes, limit {MAX_REQUEST_BYTES}")
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except ValueError as e:
                raise RequestError(ErrorCode.INVALID_JSON, f"the body is not JSON: {e}") from None
            request = parse[self.path](body)
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise RequestError(ErrorCode.INVALID_REQUEST, f"stream must be true or false, got {stream!r}")
            options = body.get("stream_options") or {}
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
        except RequestError as e:
            self._error(e.code, e.message)
            return
        self._run(dataclasses.replace(request, stream=stream), openai_api.Answer(request, include_usage))

    def _run(self, request: TextRequest, answer: openai_api.Answer) -> None:
        channel = Channel(self.server.host.device)
        admitted = self.server.host.submit(request, channel)
        if admitted.error is not None:
            self._error(admitted.error.code, admitted.error.message)
            return
        assert admitted.job is not None
        job = admitted.job
        try:
            if request.stream:
                self._stream(channel, answer)
            else:
                self._whole(channel, answer)
        except (_ClientGone, BrokenPipeError, ConnectionResetError):
            job.cancel.set()  # the worker stops generating at its next token (or skips a queued job)
            self.close_connection = True

    def _next(self, channel: Channel, on_wait: Any) -> dict[str, Any]:
        while True:
            try:
                return channel.messages.get(timeout=KEEPALIVE_S)
            except queue.Empty:
                on_wait()

    def _gone(self) -> None:
        """Raise _ClientGone if the client closed its connection (its socket reads as ended)."""
        sock: socket.socket = self.connection
        readable, _, _ = select.select([sock], [], [], 0)
        if readable and not sock.recv(1, socket.MSG_PEEK):
            raise _ClientGone

    def _whole(self, channel: Channel, answer: openai_api.Answer) -> None:
        message = self._next(channel, self._gone)
        if message["type"] == "error":
            self._error(message["code"], message["message"])
            return
        self._json(200, answer.body(message))

    def _stream(self, channel: Channel, answer: openai_api.Answer) -> None:
        first = self._next(channel, self._gone)  # errors before any token still get their HTTP status
        if first["type"] == "error":
            self._error(first["code"], first["message"])
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the stream ends when the connection does
        self.end_headers()
        self.close_connection = True
        message = first
        while True:
            if message["type"] == "chunk":
                self._event(answer.chunk(message["text"]))
            elif message["type"] == "final":
                for event in answer.end_chunks(message):
                    self._event(event)
                break
            else:  # an error after the stream began: OpenAI's error object as an event
                self._event(openai_api.error_body(message["code"], message["message"])[1])
                break
            message = self._next(channel, lambda: self._write(b": keep-alive\n\n"))
        self._write(b"data: [DONE]\n\n")

    def _event(self, obj: Any) -> None:
        self._write(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], host: Host, api_keys: set[str]) -> None:
        super().__init__(address, _Handler)
        self.host, self.api_keys = host, api_keys


class HttpApi:
    """The API of `host` on `address` (HOST, PORT; port 0 picks a free one), served on a thread of its own."""

    def __init__(self, host: Host, address: tuple[str, int], api_keys: set[str] | None = None) -> None:
        """RequestError(invalid_request) when nothing can listen on `address` (an unknown host, a port in use)."""
        try:
            self._server = _Server(address, host, set(api_keys or ()))
        except OSError as e:
            raise RequestError(ErrorCode.INVALID_REQUEST, f"cannot listen on {address[0]}:{address[1]}: "
                               f"{e.strerror or e}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="edgegen-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> HttpApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            if self._thread.is_alive():  # shutdown() waits for serve_forever, forever if it never ran
                self._server.shutdown()
            self._server.server_close()


def read_api_keys(path: str) -> set[str]:
    """API keys, one per line (blank lines and # comments skipped); RequestError for an unreadable or empty file."""
    try:
        with open(path) as f:
            keys = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    except OSError as e:
        raise RequestError(ErrorCode.INVALID_REQUEST, f"cannot read the API key file {path}: {e.strerror}") from None
    if not keys:
        raise RequestError(ErrorCode.INVALID_REQUEST, f"the API key file {path} holds no key")
    return keys
