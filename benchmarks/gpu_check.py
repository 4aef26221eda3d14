"""What benchmarks/gpu_check.sh runs on a lent GPU: edgegen on tinygrad's CUDA (or NV) backend, as JSON.

1. correctness: each tiny decoder family (tests/tiny_arch.py) through the runtime on the GPU against its numpy
   forward pass, and greedy tokens on the GPU against the CPU's reference path;
2. speed: a SmolLM2-135M-shaped Q4_1 file (random blocks, written here) decoded 64 tokens after a 64-token prompt:
   load, time to first token, decode tokens/s (median of 3 runs);
3. diffusion: the shipped pixel and latent MNIST models, one image and a batch of 16, 20 DDIM steps, wall time.
Every section is timed and caught on its own, so a failure in one still reports the others.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

SMOLLM2 = {"dim": 576, "n_layers": 30, "n_heads": 9, "n_kv_heads": 3, "hidden": 1536, "vocab": 49152}


def correctness(device: str) -> dict:
    from gguf import GGMLQuantizationType as Q
    from tiny_arch import FAMILIES, random_weights, reference_logits, shape_for, write_gguf

    from edgegen.runtime.engine import TextGenerator

    out, folder = {}, Path(tempfile.mkdtemp())
    ids = [5, 17, 42, 3, 88, 60, 7, 7, 31, 90, 12, 44]
    for family in FAMILIES:
        s = shape_for(family)
        path = folder / f"{family}.gguf"
        stored = write_gguf(path, s, random_weights(s, seed=3), Q.F32)
        got = TextGenerator.load(path, device=device, max_context=64, jit_cache=False).logits(ids)
        want = reference_logits(s, stored, ids)
        err = float(np.abs(got - want).max() / np.abs(want).max())
        out[family] = {"max_rel_error": err, "top1_agree": float((got.argmax(-1) == want.argmax(-1)).mean()),
                       "ok": err < 1e-3}
    return out


def write_smollm2_shaped(path: Path) -> None:
    """SmolLM2-135M's shapes and tokenizer-free metadata, Q4_1 matrices of random quants with small f16 scales."""
    import gguf

    rng = np.random.default_rng(0)
    s = SMOLLM2
    hd = s["dim"] // s["n_heads"]
    w = gguf.GGUFWriter(str(path), "llama")
    for add, v in ((w.add_block_count, s["n_layers"]), (w.add_context_length, 2048), (w.add_embedding_length, s["dim"]),
                   (w.add_feed_forward_length, s["hidden"]), (w.add_head_count, s["n_heads"]),
                   (w.add_head_count_kv, s["n_kv_heads"]), (w.add_rope_dimension_count, hd)):
        add(v)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(100000.0)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>"] + [f"<t{i}>" for i in range(1, s["vocab"])])
    w.add_token_scores([0.0] * s["vocab"])
    w.add_token_types([2] + [1] * (s["vocab"] - 1))

    def q4_1(rows: int, cols: int) -> np.ndarray:
        raw = rng.integers(0, 256, (rows, cols // 32, 20), dtype=np.uint8)
        raw[..., 0:2] = np.full((rows, cols // 32), 0.002, np.float16).view(np.uint8).reshape(rows, cols // 32, 2)
        raw[..., 2:4] = np.full((rows, cols // 32), -0.015, np.float16).view(np.uint8).reshape(rows, cols // 32, 2)
        return raw.reshape(rows, -1)

    def matrix(name: str, rows: int, cols: int) -> None:
        w.add_tensor(name, q4_1(rows, cols), raw_dtype=gguf.GGMLQuantizationType.Q4_1)

    matrix("token_embd.weight", s["vocab"], s["dim"])
    w.add_tensor("output_norm.weight", np.ones(s["dim"], np.float32))
    kv = s["n_kv_heads"] * hd
    for i in range(s["n_layers"]):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(s["dim"], np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(s["dim"], np.float32))
        for name, rows, cols in (("attn_q", s["dim"], s["dim"]), ("attn_k", kv, s["dim"]), ("attn_v", kv, s["dim"]),
                                 ("attn_output", s["dim"], s["dim"]), ("ffn_gate", s["hidden"], s["dim"]),
                                 ("ffn_up", s["hidden"], s["dim"]), ("ffn_down", s["dim"], s["hidden"])):
            matrix(p + name + ".weight", rows, cols)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def speed(device: str) -> dict:
    from edgegen.runtime import SamplingParams
    from edgegen.runtime.engine import TextGenerator

    path = Path(tempfile.mkdtemp()) / "smollm2-shaped-q4_1.gguf"
    write_smollm2_shaped(path)
    t0 = time.perf_counter()
    gen = TextGenerator.load(path, device=device, max_context=1024)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    runs = []
    for i in range(4):  # the first captures and compiles; a new prompt per run (no prefix reuse)
        ids = [int(t) for t in rng.integers(1, SMOLLM2["vocab"], 64)]
        stream = gen.stream_ids(ids, SamplingParams(max_tokens=64), ignore_eos=True)
        for _ in stream:
            pass
        assert stream.result is not None
        if i:
            runs.append(stream.result)
    return {"load_s": load_s, "ttft_s": statistics.median(r.ttft_s for r in runs),
            "decode_tok_s": statistics.median(r.decode_tokens_per_s for r in runs),
            "weights_bytes": path.stat().st_size}


def diffusion(device: str) -> dict:
    from edgegen.runtime.diffusion.sampler import DiffusionParams, ImageGenerator

    out = {}
    for model in ("mnist", "mnist-latent"):
        gen = ImageGenerator.load(model, device=device)
        for n in (1, 16):
            for label in ("first", "again"):
                t0 = time.perf_counter()
                images = gen.generate("3", DiffusionParams(steps=20, n=n, seed=7))
                out[f"{model}_batch{n}_{label}_s"] = time.perf_counter() - t0
            out[f"{model}_batch{n}_shape"] = list(images.shape)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    device = os.environ.get("DEV", "CUDA")
    report: dict = {"device": device}
    for name, section in (("correctness", correctness), ("speed", speed), ("diffusion", diffusion)):
        t0 = time.perf_counter()
        try:
            report[name] = section(device)
        except Exception as e:  # noqa: BLE001 - reported, and the next section still runs
            report[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        report[name + "_wall_s"] = time.perf_counter() - t0
        a.out.write_text(json.dumps(report, indent=2))
        print(json.dumps({name: report[name]}, default=str)[:2000], flush=True)


if __name__ == "__main__":
    main()
