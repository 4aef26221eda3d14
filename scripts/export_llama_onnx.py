"""Export a GGUF Llama (default: the shipped SmolLM2-135M-Instruct) to ONNX with PyTorch, as one decode step with a
fixed-size KV cache, and check that greedy generation from the ONNX file equals edgegen's GGUF runtime.

    .venv/bin/pip install -e ".[export]"          # torch==2.13.0, the CPU build on this machine's disk
    .venv/bin/python scripts/export_llama_onnx.py -o smollm2.onnx --check 16 --prompt "The capital of France is"

The graph: inputs `input_ids` (1,) int64, `position` (1,) int64, `past_k` / `past_v`
(layers, kv_heads, cache, head_dim); outputs `logits` (1, vocab), `present_k` / `present_v`. Every shape is static,
so tinygrad compiles one graph and replays it (TinyJit) for every token; the new key/value are written into slot
`position` with a one-hot mask and
attention masks the slots after it. The weights are the GGUF's, dequantized to float32 by `quantize.source`
(gguf-py); the forward is written out in plain torch after `quantize.llama_numpy` (llama.cpp's interleaved RoPE on
GGUF-ordered Q/K rows, grouped-query attention). torch is a development dependency only.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INPUT_NAMES = ["input_ids", "position", "past_k", "past_v"]
OUTPUT_NAMES = ["logits", "present_k", "present_v"]
DEFAULT_CACHE = 64
EXPORT_OPSET = 18  # the newest the legacy (TorchScript) exporter writes; it needs no onnxscript


def build_step(gguf_path: str | Path, cache_len: int):
    """A torch module computing one decode step of the GGUF model, and its LlamaHParams."""
    import torch
    from torch import nn

    from edgegen.quantize.llama_numpy import config_from_source
    from edgegen.quantize.source import load_source

    source = load_source(gguf_path)
    hp = config_from_source(source)
    if hp.architecture != "llama":  # the graph below is the llama family's (interleaved RoPE, SwiGLU, no biases)
        raise SystemExit(f"{gguf_path}: architecture {hp.architecture!r}: this exporter writes llama models only")
    H, KV, D = hp.n_heads, hp.n_kv_heads, hp.head_dim
    tensors = source.tensors

    class Step(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(torch.from_numpy(v), requires_grad=False)
                                       for k, v in tensors.items()})
            freqs = hp.rope_theta ** (-np.arange(0, D, 2, dtype=np.float64) / D)  # (D/2,)
            self.register_buffer("freqs", torch.from_numpy(freqs.astype(np.float32)))
            self.register_buffer("slots", torch.arange(cache_len))

        def p(self, name: str) -> torch.Tensor:
            return self.w[name.replace(".", "__")]

        def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
            return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + hp.norm_eps) * self.p(name)

        @staticmethod
        def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
            x0, x1 = x[..., 0::2], x[..., 1::2]  # llama.cpp rotates adjacent pairs (GGUF Q/K row order)
            return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2)

        def forward(self, input_ids, position, past_k, past_v):
            x = self.p("token_embd.weight")[input_ids]  # (1, dim)
            ang = position.to(torch.float32)[:, None] * self.freqs[None]  # (1, D/2)
            cos, sin = ang.cos(), ang.sin()
            write = (self.slots == position).to(torch.float32)[:, None]  # (L, 1): the slot this token fills
            visible = self.slots <= position  # (L,)
            new_k, new_v = [], []
            for i in range(hp.n_layers):
                b = f"blk.{i}."
                a = self.norm(x, b + "attn_norm.weight")
                q = self.rope((a @ self.p(b + "attn_q.weight").T).view(H, D), cos, sin)
                k = self.rope((a @ self.p(b + "attn_k.weight").T).view(KV, D), cos, sin)
                v = (a @ self.p(b + "attn_v.weight").T).view(KV, D)
                kc = past_k[i] * (1 - write) + k[:, None, :] * write  # (KV, L, D)
                vc = past_v[i] * (1 - write) + v[:, None, :] * write
                new_k.append(kc)
                new_v.append(vc)
                kg, vg = kc.repeat_interleave(H // KV, 0), vc.repeat_interleave(H // KV, 0)  # (H, L, D)
                s = (kg @ q[:, :, None]).squeeze(-1) / float(np.sqrt(D))  # (H, L)
                s = s.masked_fill(~visible, float("-inf"))  # slots not yet written
                o = (s.softmax(-1)[:, None, :] @ vg).reshape(1, H * D)
                x = x + o @ self.p(b + "attn_output.weight").T
                f = self.norm(x, b + "ffn_norm.weight")
                act = nn.functional.silu(f @ self.p(b + "ffn_gate.weight").T) * (f @ self.p(b + "ffn_up.weight").T)
                x = x + act @ self.p(b + "ffn_down.weight").T
            head = self.p("output.weight") if "output.weight" in tensors else self.p("token_embd.weight")
            logits = self.norm(x, "output_norm.weight") @ head.T  # (1, vocab)
            return logits, torch.stack(new_k), torch.stack(new_v)

    return Step().eval(), hp


def export(gguf_path: str | Path, out: Path, cache_len: int = DEFAULT_CACHE) -> Path:
    import torch

    step, hp = build_step(gguf_path, cache_len)
    cache = torch.zeros(hp.n_layers, hp.n_kv_heads, cache_len, hp.head_dim)
    args = (torch.tensor([1]), torch.tensor([0]), cache, cache.clone())
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(step, args, str(out), dynamo=False, opset_version=EXPORT_OPSET, input_names=INPUT_NAMES,
                          output_names=OUTPUT_NAMES, external_data=False)
    return out


Step = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def greedy(step: Step, cache_shape: tuple[int, ...], prompt_ids: list[int], n_new: int) -> list[int]:
    """Greedy tokens from any runner of the exported graph: the prompt is fed one token per step."""
    past_k = past_v = np.zeros(cache_shape, np.float32)
    if len(prompt_ids) + n_new > cache_shape[2]:
        raise SystemExit(f"prompt + new tokens = {len(prompt_ids) + n_new} exceed the cache of {cache_shape[2]}")
    ids, out = list(prompt_ids), []
    for pos in range(len(prompt_ids) + n_new - 1):
        res = step({"input_ids": np.array([ids[pos]], np.int64), "position": np.array([pos], np.int64),
                    "past_k": past_k, "past_v": past_v})
        past_k, past_v = res["present_k"], res["present_v"]
        if pos >= len(prompt_ids) - 1:
            ids.append(int(np.argmax(res["logits"][0])))
            out.append(ids[-1])
    return out


def tinygrad_step(path: Path) -> tuple[Step, tuple[int, ...]]:
    from edgegen.runtime.onnx_run import OnnxModel

    model = OnnxModel.load(path)
    return model.run, tuple(int(d) for d in model.inputs["past_k"].shape)


def onnxruntime_step(path: Path, threads: int = 0) -> Step:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads  # 0: onnxruntime's default
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda feeds: dict(zip(OUTPUT_NAMES, sess.run(OUTPUT_NAMES, feeds)))


def gguf_greedy(gguf_path: str | Path, prompt_ids: list[int], n_new: int) -> list[int]:
    """edgegen's GGUF runtime (KV cache, TinyJit decode), greedy, past end-of-turn tokens."""
    from edgegen.runtime import SamplingParams
    from edgegen.runtime.engine import TextGenerator

    gen = TextGenerator.load(gguf_path, device="CPU", max_context=max(32, len(prompt_ids) + n_new))
    stream = gen.stream_ids(prompt_ids, SamplingParams(temperature=0.0, max_tokens=n_new), ignore_eos=True)
    for _ in stream:
        pass
    return list(stream.result.token_ids)


def check(gguf_path: str | Path, onnx_path: Path, prompt_ids: list[int], n_new: int) -> dict:
    """Greedy tokens from the GGUF runtime, the ONNX file in tinygrad, and in onnxruntime, with timings."""
    t0 = time.perf_counter()
    ref = gguf_greedy(gguf_path, prompt_ids, n_new)
    t1 = time.perf_counter()
    step, shape = tinygrad_step(onnx_path)
    tiny = greedy(step, shape, prompt_ids, n_new)
    t2 = time.perf_counter()
    ort_tokens = greedy(onnxruntime_step(onnx_path), shape, prompt_ids, n_new)
    t3 = time.perf_counter()
    return {"prompt_ids": prompt_ids, "gguf_runtime": ref, "onnx_tinygrad": tiny, "onnx_onnxruntime": ort_tokens,
            "tinygrad_equal": tiny == ref, "onnxruntime_equal": ort_tokens == ref,
            "seconds": {"gguf_runtime": round(t1 - t0, 1), "onnx_tinygrad": round(t2 - t1, 1),
                        "onnx_onnxruntime": round(t3 - t2, 1)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="GGUF Llama file, or 'default' for the shipped SmolLM2-135M")
    ap.add_argument("-o", "--output", required=True, help="ONNX file to write")
    ap.add_argument("--cache", type=int, default=DEFAULT_CACHE, help=f"KV cache slots (default {DEFAULT_CACHE})")
    ap.add_argument("--check", type=int, default=0, metavar="N",
                    help="then generate N greedy tokens with the GGUF runtime, tinygrad and onnxruntime and compare")
    ap.add_argument("--prompt", default="The capital of France is", help="prompt text for --check (no chat template)")
    args = ap.parse_args(argv)
    from edgegen.runtime.artifact.reader import resolve_model_path

    gguf_path = resolve_model_path(args.model)
    out = export(gguf_path, Path(args.output), args.cache)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", flush=True)
    if args.check:
        from edgegen.runtime.engine import TextGenerator

        ids = TextGenerator.load(gguf_path, device="CPU").encode_prompt(args.prompt, chat=False)
        result = check(gguf_path, out, ids, args.check)
        print(json.dumps(result))
        return 0 if result["tinygrad_equal"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
