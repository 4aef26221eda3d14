"""Helpers for the device tests: paths, and a sparse GGUF writer for models far larger than this disk would hold."""
from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from edgegen.device.energy import NOT_AVAILABLE
from edgegen.runtime import default_model_path

REPO = Path(__file__).resolve().parents[2]
SMOLLM2_Q4_1 = Path(default_model_path())  # the shipped SmolLM2-135M-Instruct Q4_1 file

# Llama-2-7B's published shape (its config.json): what a board with a few GB cannot hold with a long context.
LLAMA7B = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "hidden": 11008, "vocab": 32000,
           "context": 4096}


def write_sparse_llama(path: Path, qtype: Q = Q.Q4_0, dim: int = 4096, n_layers: int = 32, n_heads: int = 32,
                       n_kv_heads: int = 32, hidden: int = 11008, vocab: int = 32000, context: int = 4096) -> Path:
    """A complete GGUF header and tensor table for a Llama of this shape, with the data region left as a hole.

    The planner reads only the table, so the file costs a few KB of disk however large the model it describes.
    """
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(n_layers)
    w.add_context_length(context)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(hidden)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("llama")  # a SentencePiece vocabulary of one piece per embedding row, as a real file has
    w.add_token_list([f"<t{i}>" for i in range(vocab)])
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([1] * vocab)
    block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    total = 0

    def matrix(name: str, rows: int, cols: int) -> None:
        nonlocal total
        nbytes = rows * cols // block * block_bytes
        w.add_tensor_info(name, (rows, cols // block * block_bytes), np.dtype(np.uint8), nbytes, raw_dtype=qtype)
        total += -(-nbytes // 32) * 32  # padded to gguf's default alignment, as the writer pads it

    def vector(name: str, n: int) -> None:
        nonlocal total
        w.add_tensor_info(name, (n,), np.dtype(np.float32), n * 4)
        total += -(-n * 4 // 32) * 32

    head_dim = dim // n_heads
    matrix("token_embd.weight", vocab, dim)
    vector("output_norm.weight", dim)
    matrix("output.weight", vocab, dim)
    for i in range(n_layers):
        p = f"blk.{i}."
        vector(p + "attn_norm.weight", dim)
        vector(p + "ffn_norm.weight", dim)
        matrix(p + "attn_q.weight", n_heads * head_dim, dim)
        matrix(p + "attn_k.weight", n_kv_heads * head_dim, dim)
        matrix(p + "attn_v.weight", n_kv_heads * head_dim, dim)
        matrix(p + "attn_output.weight", dim, n_heads * head_dim)
        matrix(p + "ffn_gate.weight", hidden, dim)
        matrix(p + "ffn_up.weight", hidden, dim)
        matrix(p + "ffn_down.weight", dim, hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    data_start = -(-os.path.getsize(path) // 32) * 32  # the data section starts aligned after the header
    os.truncate(path, data_start + total)  # a hole: no disk blocks are written
    return path


def sample_report(label: str, decode: float) -> dict:
    """A bench report as device.bench.bench returns it, with made-up figures."""
    return {
        "timestamp": "2026-01-01T00:00:00+00:00", "label": label, "model": "/m.gguf", "device": "CPU",
        "board": "host", "board_bandwidth_bytes_per_s": 20e9, "prompt_tokens": 16, "gen_tokens": 4, "runs": 2,
        "load_s": 3.0, "ttft_s": 0.5, "prefill_tok_s": 32.0, "decode_tok_s": decode, "latency_p50_ms": 100.0,
        "latency_p99_ms": 150.0, "peak_rss_bytes": 500 * 2**20, "peak_device_bytes": 200 * 2**20,
        "compile_cold_s": 40.0, "compile_warm_s": 20.0, "kernel_compile_s": 20.0,
        "achieved_bandwidth_bytes_per_s": 1e9, "bandwidth_share": 0.05, "energy_source": NOT_AVAILABLE,
        "joules_per_token": None, "token_latencies_ms": [[100.0, 120.0, 150.0], [90.0, 110.0, 100.0]],
    }
