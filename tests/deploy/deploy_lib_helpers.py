"""Deploy test helpers: the tiny models' family and prompt, and manifests made by hand for arbitrary bytes."""
from __future__ import annotations

import hashlib
import math
import time

from edgegen.firmware_bridge.deploy.manifest import Manifest

# qwen2 has an untied output head, so its greedy answer depends on the weights (the tied tiny llama only ever
# repeats the prompt's last token, whatever its weights).
FAMILY = "qwen2"
GOLDEN_PROMPT = "abcd"
FAKE_GOLDEN = {"prompt": "abcd", "max_tokens": 4, "token_ids": [1, 2, 3]}
FAKE_PLAN = {"context": 64, "weights_bytes": 100_000, "load_transient_bytes": 10_000, "kv_cache_bytes": 30_000,
             "activations_bytes": 200_000, "total_bytes": 151_000_000, "backend": "CPU"}


def fake_manifest(data: bytes, *, name: str = "m", version: int = 1, block_size: int = 1024,
                  expires_in_s: int = 3600, kind: str = "text") -> Manifest:
    """A manifest for arbitrary bytes (transfer and slot tests need no real model file)."""
    blocks = [hashlib.sha256(data[i:i + block_size]).hexdigest() for i in range(0, len(data), block_size)]
    assert len(blocks) == math.ceil(len(data) / block_size)
    now = int(time.time())
    golden = FAKE_GOLDEN if kind == "text" else {"prompt": "seven", "seed": 0, "steps": 4, "verdict": 7}
    return Manifest.from_dict({
        "v": 1, "name": name, "version": version, "kind": kind, "file_sha256": hashlib.sha256(data).hexdigest(),
        "file_size": len(data), "block_size": block_size, "block_sha256": blocks, "architecture": "qwen2",
        "tensor_types": ["F32", "Q8_0"], "created": now, "expires": now + expires_in_s, "golden": golden,
        "plan": FAKE_PLAN, "baseline_decode_tok_s": None, "key_id": "0" * 16})
