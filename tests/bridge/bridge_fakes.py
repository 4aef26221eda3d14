"""Small deterministic text and image engines for the bridge's protocol tests (the real model is tested separately),
a generator with the real tokenizer but no model, and a stand-in for the service's paho client."""
from __future__ import annotations

import dataclasses
import functools
import struct
import threading
import zlib
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgegen.firmware_bridge import topics
from edgegen.firmware_bridge.engines import ImageOutcome, TextOutcome
from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.schema import ImageRequest, TextRequest
from edgegen.runtime.artifact.constants import DEFAULT_MAX_CONTEXT as DEFAULT_CONTEXT  # tinygrad-free


def expected_text(prompt: str, max_tokens: int) -> str:
    """What FakeTextEngine answers: the prompt's first word numbered max_tokens times."""
    word = prompt.split()[0]
    return "".join(f"{word}-{i} " for i in range(max_tokens))


class FakeTextEngine:
    """Emits `expected_text` one piece at a time, waiting `delay_s` between pieces (interruptible by cancel)."""

    def __init__(self, delay_s: float = 0.0, context_chars: int = 1000,
                 on_emit: Callable[[str, int], None] | None = None):
        self.delay_s, self.context_chars, self.on_emit = delay_s, context_chars, on_emit
        self.calls: list[str] = []

    def check(self, request: TextRequest) -> None:
        prompt = request.prompt or " ".join(m["content"] for m in request.messages or ())
        if len(prompt) > self.context_chars:
            raise RequestError(ErrorCode.PROMPT_TOO_LONG, f"prompt has {len(prompt)} characters, context "
                               f"{self.context_chars}")

    def generate(self, request: TextRequest, cancel: threading.Event, emit: Callable[[str], None]) -> TextOutcome:
        self.calls.append(request.id)
        prompt = request.prompt or request.messages[-1]["content"]  # type: ignore[index]
        pieces = expected_text(prompt, request.max_tokens).split(" ")[:-1]
        text, reason = "", "length"
        for i, piece in enumerate(pieces):
            if cancel.is_set() or (self.delay_s and cancel.wait(self.delay_s)):
                reason = "cancelled"
                break
            emit(piece + " ")
            text += piece + " "
            if self.on_emit:
                self.on_emit(request.id, i)
        return TextOutcome(text=text, finish_reason=reason, prompt_tokens=len(prompt.split()),
                           completion_tokens=len(text.split()), tokens_per_s=1000.0)


def tiny_png(gray: int) -> bytes:
    """A valid 1x1 8-bit grayscale PNG (PNG spec: signature, IHDR, IDAT, IEND chunks)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes([0, gray]))) + \
        chunk(b"IEND", b"")


class FakeImageEngine:
    """Draws the digit prompt as a 1x1 PNG whose gray level is 25 times the digit."""

    def __init__(self, pad_bytes: int = 0) -> None:
        self.calls: list[str] = []
        self.pad_bytes = pad_bytes  # trailing bytes after IEND: an oversized image

    def check(self, request: ImageRequest) -> None:
        if not (len(request.prompt) == 1 and request.prompt.isdecimal()):  # isdigit() takes '²', int() does not
            raise RequestError(ErrorCode.INVALID_REQUEST, f"prompt must be a digit, got {request.prompt!r}")

    def generate(self, request: ImageRequest, cancel: threading.Event) -> ImageOutcome:
        self.calls.append(request.id)
        return ImageOutcome(png=tiny_png(25 * int(request.prompt)) + bytes(self.pad_bytes))




@functools.cache
def smollm2_file() -> Any:
    """The shipped SmolLM2 model file, opened (mmap, metadata only: about 1 s, no tinygrad)."""
    from edgegen.runtime.artifact.reader import open_model

    return open_model("default")


class TokenizerOnlyGenerator:
    """The request-facing half of runtime.engine.TextGenerator without a model: the real SmolLM2 tokenizer, chat
    template and prompt rule (runtime.prompt.PromptEncoder, as the generator uses it), then a canned answer.

    Wrapped in the real firmware_bridge.engines.RuntimeTextEngine, a request reaches every check it would reach on a
    device, in milliseconds.
    """

    def __init__(self, pieces: tuple[str, ...] = ("Hello", ",", " world")) -> None:
        from edgegen.runtime.constrain import Grammars
        from edgegen.runtime.prompt import PromptEncoder
        from edgegen.runtime.tokenizer import load_tokenizer

        mf = smollm2_file()
        self.model_file, self.tokenizer = mf, load_tokenizer(mf)
        self.config = SimpleNamespace(max_context=DEFAULT_CONTEXT)
        self.prompts = PromptEncoder(mf, self.tokenizer, DEFAULT_CONTEXT)
        self.grammars = Grammars(mf, self.tokenizer, self.prompts.end_ids, self.tokenizer.vocab_size)
        self.pieces = pieces
        self.calls: list[list[int]] = []

    def encode_prompt(self, prompt: str | list[dict], chat: bool = True) -> list[int]:
        return self.prompts.encode(prompt, chat)

    def stream_ids(self, ids: list[int], params: Any, cancel: threading.Event | None = None) -> Any:
        from edgegen.runtime import SamplingParams

        assert isinstance(params, SamplingParams)
        self.prompts.check_length(len(ids))
        self.calls.append(ids)
        return _CannedStream(self.pieces[:params.max_tokens], len(ids))


class _CannedStream:
    """Iterates like runtime.engine.TextStream; `result` is set once the pieces are read."""

    def __init__(self, pieces: tuple[str, ...], prompt_tokens: int) -> None:
        self._pieces, self._prompt_tokens = pieces, prompt_tokens
        self.result: Any = None

    def __iter__(self) -> Any:
        yield from self._pieces
        self.result = SimpleNamespace(text="".join(self._pieces), finish_reason="length",
                                      prompt_tokens=self._prompt_tokens, completion_tokens=len(self._pieces),
                                      decode_tokens_per_s=100.0)


@dataclasses.dataclass
class Published:
    topic: str
    payload: bytes
    properties: Any
    retain: bool


class RecordingMqtt:
    """Stands in for DeviceService.client: records publishes and acks; every publish counts as acked by the broker.

    Topics are checked as paho checks them (UTF-8, no wildcards), so a topic paho would refuse raises here too.
    """

    def __init__(self) -> None:
        self.published: list[Published] = []
        self.acked: list[int] = []
        self._lock = threading.Lock()
        self._mid = 0

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                properties: Any = None) -> mqtt.MQTTMessageInfo:
        mqtt.Client._raise_for_invalid_topic(topic.encode("utf-8"))
        assert isinstance(payload, bytes), type(payload)
        with self._lock:
            self._mid += 1
            info = mqtt.MQTTMessageInfo(self._mid)
            self.published.append(Published(topic, payload, properties, retain))
        info.rc = mqtt.MQTT_ERR_SUCCESS
        info._set_as_published()
        return info

    def ack(self, mid: int, qos: int) -> None:
        with self._lock:
            self.acked.append(mid)

    def answers(self) -> list[Published]:
        """What went to request senders (response topics, the errors topic), not status, models or telemetry."""
        with self._lock:
            return [p for p in self.published if not p.topic.endswith(("/status", "/models", "/telemetry"))]


def request_message(device: str, kind: str, payload: bytes, response_topic: str | None,
                    correlation: bytes | None = b"corr", mid: int = 7) -> mqtt.MQTTMessage:
    """An incoming request as paho hands it to on_message."""
    msg = mqtt.MQTTMessage(mid, topics.device_request(device, kind).encode())
    msg.payload = payload
    props = Properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    msg.properties = props
    return msg
