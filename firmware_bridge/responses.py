"""Response payloads a device publishes: token chunks, a final message, errors, images, status, models, telemetry.

On a request's Response Topic, in order, every message echoing the request's Correlation Data:
    {"v": 1, "type": "chunk", "id": "r-42", "seq": 0, "text": "Hel"}          (seq counts from 0, no gaps)
    ...
    {"v": 1, "type": "final", "id": "r-42", "text": "Hello", "finish_reason": "stop", "chunks": 2,
     "device": "dev1", "stats": {"prompt_tokens": 9, "completion_tokens": 2, "ttft_ms": 41.2, "tokens_per_s": 30.1,
                                  "total_ms": 95.0, "queue_ms": 0.3, "peak_rss_bytes": 210000000}}
or, instead of chunks and final, one {"v": 1, "type": "error", "id": "r-42", "code": "busy", "message": "..."}.
An image answer is one message whose payload is PNG bytes (Content Type `image/png`, the request's correlation data)
followed by a final message with empty text.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from edgegen.firmware_bridge.errors import ErrorCode
from edgegen.firmware_bridge.schema import SCHEMA_VERSION

JSON_CONTENT_TYPE = "application/json"
PNG_CONTENT_TYPE = "image/png"
# A final answer repeats the whole text: allow more than a request but stay far below Mosquitto's limits.
MAX_RESPONSE_BYTES = 256 * 1024
# A PNG answer: below the shipped broker's max_packet_size (1 MiB), which would disconnect the device otherwise.
MAX_IMAGE_BYTES = 512 * 1024
FINISH_REASONS = ("stop", "length", "cancelled", "deadline")


@dataclasses.dataclass(frozen=True)
class Stats:
    """What one generation cost on the device. ttft_ms: from the engine call (prompt rendering and tokenizing
    included, as for a direct caller of the runtime) to the first text piece; queue_ms: from arrival to that call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float = 0.0
    tokens_per_s: float = 0.0
    total_ms: float = 0.0
    queue_ms: float = 0.0
    peak_rss_bytes: int = 0


def chunk(request_id: str, seq: int, text: str) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "type": "chunk", "id": request_id, "seq": seq, "text": text}


def final(request_id: str, text: str, finish_reason: str, chunks: int, device: str, stats: Stats) -> dict[str, Any]:
    assert finish_reason in FINISH_REASONS, finish_reason
    return {"v": SCHEMA_VERSION, "type": "final", "id": request_id, "text": text, "finish_reason": finish_reason,
            "chunks": chunks, "device": device, "stats": dataclasses.asdict(stats)}


def error(request_id: str | None, code: ErrorCode | str, message: str, device: str) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "type": "error", "id": request_id, "code": str(code), "message": message,
            "device": device}


def status(device: str, state: str, timestamp_s: float) -> dict[str, Any]:
    assert state in ("online", "busy", "offline"), state
    return {"v": SCHEMA_VERSION, "device": device, "state": state, "ts": round(timestamp_s, 3)}


def models(device: str, text: list[str], image: list[str]) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "device": device, "text": text, "image": image}
