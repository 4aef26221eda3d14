"""all-MiniLM-L6-v2 as ONNX: edgegen's w8 / w4 files and onnxruntime's own int8 / int4, in tinygrad and onnxruntime.

One run measures, for each variant of the same model:
- file size;
- sentence-embedding cosine vs onnxruntime fp32 on the 62 sentences of tests/onnx/sentences.txt (mean and min),
  computed by tinygrad's runner (edgegen's `OnnxModel`) and by onnxruntime;
- latency, median of --runs calls after warm-up, for one sentence (batch 1, its own length) and for all 62 at once
  (padded to the longest), in tinygrad (TinyJit replay) and onnxruntime (1 thread, like tinygrad's CPU backend);
- the ratio tinygrad / onnxruntime.
Variants: fp32 (scripts/export_minilm_onnx.py, torch), edgegen `w8` and `w4` (`quantize.onnx_quant`), onnxruntime's
`quantize_dynamic` (int8 weights, activations quantized at run time) and `MatMulNBitsQuantizer` (int4, blocks of 32,
asymmetric, its contrib op MatMulNBits, which edgegen implements for tinygrad). The torch module's own embeddings
check the export.

    .venv/bin/python benchmarks/bench_onnx.py            # about 5 minutes on a loaded 2-core machine
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("DEV", "CPU")

RESULTS = ROOT / "benchmarks" / "results"
MODELS = RESULTS / "onnx_models.tmp"  # ignored by git
SENTENCES = ROOT / "tests" / "onnx" / "sentences.txt"
ONE_SENTENCE = "A small board can run a quantized language model slowly."
DECODER_CACHE = 64  # export_llama_onnx.DEFAULT_CACHE


def tokenize(sentences: list[str]) -> dict[str, np.ndarray]:
    from export_minilm_onnx import tokenize as minilm_tokenize

    return minilm_tokenize(sentences)


def build_variants(fp32: Path) -> dict[str, Path]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from edgegen.quantize.onnx_quant import ONNX_RECIPES, quantize_onnx_file

    out = {"fp32": fp32}
    for name, recipe in ONNX_RECIPES.items():
        out[f"edgegen {name}"] = MODELS / f"minilm-{name}.onnx"
        t0 = time.perf_counter()
        quantize_onnx_file(fp32, recipe, out[f"edgegen {name}"])
        print(f"edgegen {name}: quantized in {time.perf_counter() - t0:.1f} s", flush=True)
    out["ORT quantize_dynamic int8"] = MODELS / "minilm-ort-dynamic-int8.onnx"
    quantize_dynamic(str(fp32), str(out["ORT quantize_dynamic int8"]), weight_type=QuantType.QInt8)
    q = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=4, block_size=32, is_symmetric=False)
    q.process()
    out["ORT MatMulNBits int4"] = MODELS / "minilm-ort-matmulnbits-int4.onnx"
    onnx.save(q.model.model, str(out["ORT MatMulNBits int4"]))
    return out


def embedding_storage(path: Path) -> str:
    """How the file stores its largest tensor, the word-embedding table: element type and shape."""
    import onnx

    model = onnx.load(str(path))
    t = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    return f"{onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name} {'x'.join(map(str, t.dims))}"


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def measure(name: str, path: Path, workloads: dict[str, dict], reference: np.ndarray, runs: int) -> dict:
    import onnxruntime as ort

    from edgegen.runtime.onnx_run import OnnxModel

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    row: dict = {"variant": name, "file": path.name, "size_mb": round(path.stat().st_size / 1e6, 2),
                 "embedding_table": embedding_storage(path)}
    ort_emb = sess.run(["sentence_embedding"], workloads["batch"])[0]
    c = cosines(ort_emb, reference)
    row["ort_cos_mean"], row["ort_cos_min"] = round(float(c.mean()), 5), round(float(c.min()), 5)
    for wl, feeds in workloads.items():
        sess.run(None, feeds)
        row[f"ort_{wl}_ms"] = round(median_ms(lambda f=feeds: sess.run(None, f), runs * 4), 2)
    try:
        t0 = time.perf_counter()
        model = OnnxModel.load(path)
        tiny_emb = model.run(workloads["batch"])["sentence_embedding"]
        row["tinygrad_first_call_s"] = round(time.perf_counter() - t0, 1)
    except Exception as e:  # noqa: BLE001 - a variant tinygrad cannot run is a result, not a crash
        row["tinygrad_error"] = f"{type(e).__name__}: {e}"
        print(f"{name}: tinygrad cannot run it: {row['tinygrad_error']}", flush=True)
        return row
    c = cosines(tiny_emb, reference)
    row["tinygrad_cos_mean"], row["tinygrad_cos_min"] = round(float(c.mean()), 5), round(float(c.min()), 5)
    row["tinygrad_vs_ort_same_file_cos_min"] = round(float(cosines(tiny_emb, ort_emb).min()), 5)
    for wl, feeds in workloads.items():
        for _ in range(3):  # trace, capture, first replay
            model.run(feeds)
        row[f"tinygrad_{wl}_ms"] = round(median_ms(lambda f=feeds: model.run(f), runs), 2)
        row[f"ratio_{wl}"] = round(row[f"tinygrad_{wl}_ms"] / row[f"ort_{wl}_ms"], 1)
    print(json.dumps(row), flush=True)
    return row


def torch_check(fp32_reference: np.ndarray, feeds: dict[str, np.ndarray]) -> float:
    """min cosine between the torch module's embeddings and onnxruntime's on the exported file."""
    import torch
    from export_minilm_onnx import build_model, minilm_dir

    with torch.no_grad():
        emb = build_model(minilm_dir())(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
    return float(cosines(emb[0].numpy(), fp32_reference).min())


def decoder_check(n_new: int, runs: int) -> dict:
    """SmolLM2-135M exported as an ONNX decode step: greedy tokens vs the GGUF runtime, and the step's latency."""
    import export_llama_onnx as E

    from edgegen.runtime.artifact.reader import default_model_path
    from edgegen.runtime.engine import TextGenerator

    gguf = default_model_path()
    path = E.export(gguf, MODELS / "smollm2-135m-step.onnx", DECODER_CACHE)

    prompt = "The capital of France is"
    ids = TextGenerator.load(gguf, device="CPU").encode_prompt(prompt, chat=False)
    result = E.check(gguf, path, ids, n_new)
    result |= {"prompt": prompt, "size_mb": round(path.stat().st_size / 1e6, 1)}
    step, shape = E.tinygrad_step(path)
    feeds = {"input_ids": np.array([ids[0]], np.int64), "position": np.array([0], np.int64),
             "past_k": np.zeros(shape, np.float32), "past_v": np.zeros(shape, np.float32)}
    for _ in range(3):
        step(feeds)
    result["tinygrad_step_ms"] = round(median_ms(lambda: step(feeds), runs), 1)
    ort_step = E.onnxruntime_step(path, threads=1)
    ort_step(feeds)
    result["ort_step_ms"] = round(median_ms(lambda: ort_step(feeds), runs * 4), 2)
    result["ratio_step"] = round(result["tinygrad_step_ms"] / result["ort_step_ms"], 1)
    from edgegen.quantize.onnx_quant import ONNX_RECIPES, quantize_onnx_file

    for name, recipe in ONNX_RECIPES.items():  # quantized decoders: greedy agreement in onnxruntime
        q = MODELS / f"smollm2-135m-step-{name}.onnx"
        quantize_onnx_file(path, recipe, q)
        tokens = E.greedy(E.onnxruntime_step(q), shape, ids, n_new)
        same = next((i for i, (a, b) in enumerate(zip(tokens, result["gguf_runtime"])) if a != b), len(tokens))
        result[f"{name}_size_mb"], result[f"{name}_tokens"] = round(q.stat().st_size / 1e6, 1), tokens
        result[f"{name}_first_difference"] = same
    print(json.dumps(result), flush=True)
    return result


def markdown(rows: list[dict], meta: dict) -> str:
    head = ("| variant | file MB | embedding table | cos vs ORT fp32, tinygrad (mean / min) | "
            "cos, onnxruntime (mean / min) | tinygrad 1 sentence ms | ORT 1 sentence ms | ratio | "
            "tinygrad 62 sentences ms | ORT 62 sentences ms | ratio |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "tinygrad_error" in r:
            tiny = ("not run: " + r["tinygrad_error"][:80], "-", "-", "-", "-")
        else:
            tiny = (f"{r['tinygrad_cos_mean']:.4f} / {r['tinygrad_cos_min']:.4f}", f"{r['tinygrad_one_ms']:.1f}",
                    f"{r['ratio_one']:.1f}x", f"{r['tinygrad_batch_ms']:.0f}", f"{r['ratio_batch']:.1f}x")
        lines.append(f"| {r['variant']} | {r['size_mb']:.1f} | {r['embedding_table']} | {tiny[0]} | "
                     f"{r['ort_cos_mean']:.4f} / {r['ort_cos_min']:.4f} | {tiny[1]} | {r['ort_one_ms']:.2f} | "
                     f"{tiny[2]} | {tiny[3]} | {r['ort_batch_ms']:.1f} | {tiny[4]} |")
    notes = [
        "",
        (f"all-MiniLM-L6-v2, {meta['sentences']} sentences (batch padded to {meta['batch_tokens']} tokens); one "
         f"sentence is {meta['one_tokens']} tokens. Medians of {meta['runs']} tinygrad calls (JIT replay) and "
         f"{meta['runs'] * 4} onnxruntime calls, onnxruntime {meta['onnxruntime']} at 1 thread, tinygrad "
         f"{meta['tinygrad']} DEV={meta['device']}; load average {meta['loadavg']} on {meta['cpus']} CPUs."),
        f"Export check: torch module vs onnxruntime on the exported fp32 file, min cosine {meta['torch_vs_ort']:.6f}.",
        ("Sizes are whole files. ORT quantize_dynamic also quantizes activations at run time (DynamicQuantizeLinear,"
         " MatMulInteger); ORT MatMulNBits quantizes MatMul weights only. tinygrad runs MatMulNBits with edgegen's "
         "implementation of that contrib op."),
    ]
    if "decoder" in meta:
        d = meta["decoder"]
        notes += [
            "",
            (f"Decoder: SmolLM2-135M-Instruct (the shipped Q4_1 GGUF, dequantized) exported by "
            f"scripts/export_llama_onnx.py as one decode step with a {DECODER_CACHE}-slot KV cache "
            f"({d['size_mb']:.0f} MB fp32). Greedy, {len(d['gguf_runtime'])} tokens after {d['prompt']!r}: ONNX in "
            f"tinygrad {'equals' if d['tinygrad_equal'] else 'DIFFERS from'} edgegen's GGUF runtime, ONNX in "
            f"onnxruntime {'equals' if d['onnxruntime_equal'] else 'DIFFERS from'} it. One decode step: tinygrad "
            f"{d['tinygrad_step_ms']:.1f} ms, onnxruntime {d['ort_step_ms']:.2f} ms ({d['ratio_step']:.1f}x)."),
            (f"edgegen w8 of that file ({d['w8_size_mb']:.0f} MB) and w4 ({d['w4_size_mb']:.0f} MB) in onnxruntime: "
             f"greedy tokens equal the GGUF runtime's for the first {d['w8_first_difference']} and "
             f"{d['w4_first_difference']} of {len(d['gguf_runtime'])} tokens (the GGUF file is Q4_1, not the same "
             f"quantization)."),
        ]
    return "\n".join(lines + notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="timed tinygrad calls per workload (onnxruntime: 4x)")
    ap.add_argument("--decoder-tokens", type=int, default=16,
                    help="greedy tokens for the SmolLM2 decoder check (0: skip it)")
    args = ap.parse_args(argv)
    from importlib.metadata import version

    import onnxruntime as ort
    from export_minilm_onnx import export

    MODELS.mkdir(parents=True, exist_ok=True)
    fp32 = export(MODELS / "minilm-fp32.onnx")
    sentences = SENTENCES.read_text().splitlines()
    workloads = {"one": tokenize([ONE_SENTENCE]), "batch": tokenize(sentences)}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    reference = ort.InferenceSession(str(fp32), so, providers=["CPUExecutionProvider"]).run(
        ["sentence_embedding"], workloads["batch"])[0]
    meta = {"sentences": len(sentences), "batch_tokens": workloads["batch"]["input_ids"].shape[1],
            "one_tokens": workloads["one"]["input_ids"].shape[1], "runs": args.runs,
            "onnxruntime": ort.__version__, "tinygrad": version("tinygrad"), "device": os.environ["DEV"],
            "loadavg": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(), "machine": platform.machine(),
            "torch_vs_ort": torch_check(reference, workloads["batch"])}
    rows = [measure(name, path, workloads, reference, args.runs) for name, path in build_variants(fp32).items()]
    if args.decoder_tokens:
        meta["decoder"] = decoder_check(args.decoder_tokens, args.runs)
    meta["loadavg_end"] = round(os.getloadavg()[0], 2)
    (RESULTS / "onnx.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    md = markdown(rows, meta)
    (RESULTS / "onnx.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
