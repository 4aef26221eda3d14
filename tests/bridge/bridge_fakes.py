"""Small deterministic text and image engines for the bridge's protocol tests (the real model is tested separately)."""
from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable

from firmware_bridge.engines import ImageOutcome, TextOutcome
from firmware_bridge.errors import ErrorCode, RequestError
from firmware_bridge.schema import ImageRequest, TextRequest


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
        if not request.prompt.isdigit():
            raise RequestError(ErrorCode.INVALID_REQUEST, f"prompt must be a digit, got {request.prompt!r}")

    def generate(self, request: ImageRequest, cancel: threading.Event) -> ImageOutcome:
        self.calls.append(request.id)
        return ImageOutcome(png=tiny_png(25 * int(request.prompt)) + bytes(self.pad_bytes))
