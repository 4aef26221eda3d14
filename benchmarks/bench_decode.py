"""edgegen vs llama.cpp on the same GGUF, the same machine, the same run, the same thread count.

    .venv/bin/pip install -e ".[llamacpp]"       # llama-cpp-python (compiles llama.cpp once)
    .venv/bin/python benchmarks/bench_decode.py  # table on stdout, JSON in benchmarks/results/decode.json

Measured per runtime, each in its own process (so peak RSS and start-up are that runtime's alone):
- time to first token for a 64-token prompt (prefill + first sample), median over runs after one warm-up run
- decode tokens/s over 128 greedy tokens, median of 5 runs
- peak RSS of the process
- process start to first token, with a cold tinygrad kernel cache (empty CACHEDB) and with the warm one
The prompt is the first 64 tokens of ../shared/eval/gpl-3.txt; both runtimes get the same token ids.
tinygrad's CPU backend runs kernels on one thread, so llama.cpp runs with n_threads=1 too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_TEXT = ROOT.parent / "shared" / "eval" / "gpl-3.txt"


def prompt_ids(model: str, n: int, text_path: Path) -> list[int]:
    from edgegen.runtime.artifact.reader import open_model
    from edgegen.runtime.tokenizer import load_tokenizer

    tok = load_tokenizer(open_model(model))
    ids = tok.encode(text_path.read_text(encoding="utf-8"))
    if len(ids) < n:
        raise SystemExit(f"{text_path} has only {len(ids)} tokens, need {n}")
    return ids[:n]


def peak_rss_mb() -> float:
    """Peak resident set of this process. VmHWM belongs to the address space, which exec replaces; getrusage's
    ru_maxrss can carry the spawning parent's peak into the child on Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ---- workers: run in a child process, print one JSON line ---------------------------------------------------------
def worker_edgegen(a: argparse.Namespace, ids: list[int]) -> dict:
    from edgegen.runtime import SamplingParams
    from edgegen.runtime.engine import TextGenerator

    gen = TextGenerator.load(a.model, device=a.device, max_context=a.context)
    params = SamplingParams(max_tokens=a.gen_tokens)
    first_token_at = None
    ttft, decode = [], []
    for run in range(a.runs + 1):
        stream = gen.stream_ids(ids, params, ignore_eos=True)
        for _ in stream:
            if first_token_at is None:
                first_token_at = time.time()
        r = stream.result
        tokens = list(r.token_ids)
        if first_token_at is None:
            first_token_at = time.time()
        if a.start_only:
            break
        if run > 0:  # run 0 warms up: kernel compilation and JIT capture
            ttft.append(r.ttft_s)
            decode.append(r.decode_tokens_per_s)
    return {"first_token_wall": first_token_at, "ttft_s": ttft, "decode_tok_s": decode, "peak_rss_mb": peak_rss_mb(),
            "tokens": tokens, "device": gen.device}


def worker_llamacpp(a: argparse.Namespace, ids: list[int]) -> dict:
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=a.model, n_ctx=a.context, n_threads=a.threads, n_threads_batch=a.threads,
                n_batch=max(len(ids), 64), verbose=False)
    n_vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        # llama-cpp-python 0.3 no longer copies logits into `scores` unless logits_all; read the context's row.
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))

    first_token_at = None
    ttft, decode = [], []
    for run in range(a.runs + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        token = int(np.argmax(last_logits()))
        tokens = [token]
        t1 = time.perf_counter()
        if first_token_at is None:
            first_token_at = time.time()
        if a.start_only:
            break
        for _ in range(a.gen_tokens - 1):
            llm.eval([token])
            token = int(np.argmax(last_logits()))
            tokens.append(token)
        t2 = time.perf_counter()
        if run > 0:
            ttft.append(t1 - t0)
            decode.append((a.gen_tokens - 1) / (t2 - t1))
    return {"first_token_wall": first_token_at, "ttft_s": ttft, "decode_tok_s": decode, "peak_rss_mb": peak_rss_mb(),
            "tokens": tokens}


def worker_logits(a: argparse.Namespace, ids: list[int], runtime: str) -> list[list[float]]:
    """Next-token logits at every position of `ids` (teacher forcing), as nested lists."""
    if runtime == "edgegen":
        from edgegen.runtime.engine import TextGenerator

        return TextGenerator.load(a.model, max_context=a.context, jit_cache=False).logits(ids).tolist()
    from llama_cpp import Llama

    llm = Llama(model_path=a.model, n_ctx=a.context, n_threads=a.threads, n_batch=len(ids), logits_all=True,
                verbose=False)
    llm.eval(ids)
    return llm.scores[: len(ids)].tolist()


def logits_agreement(a: argparse.Namespace, ids: list[int]) -> dict:
    """Top-1 agreement and logit differences between the runtimes on the same token ids: separates arithmetic
    differences (llama.cpp quantizes activations to Q8_1 for its Q4_1 dot products) from implementation errors."""
    import numpy as np

    out = {}
    for rt in ("edgegen", "llamacpp"):
        cmd = [sys.executable, __file__, "--worker", f"logits-{rt}", "--model", a.model, "--context", str(a.context),
               "--threads", str(a.threads), "--text", str(a.text), "--prompt-tokens", str(len(ids))]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"logits worker {rt} failed:\n{proc.stderr[-3000:]}")
        out[rt] = np.asarray(json.loads(proc.stdout.strip().splitlines()[-1]), dtype=np.float32)
    e, lc = out["edgegen"], out["llamacpp"]
    return {"positions": len(ids), "top1_agreement": float((e.argmax(-1) == lc.argmax(-1)).mean()),
            "max_abs_logit_diff": float(np.abs(e - lc).max()), "mean_abs_logit_diff": float(np.abs(e - lc).mean()),
            "logit_scale_mean_abs": float(np.abs(lc).mean())}


# ---- parent ------------------------------------------------------------------------------------------------------
def spawn(a: argparse.Namespace, runtime: str, runs: int, start_only: bool = False,
          env_extra: dict | None = None, device: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", runtime, "--model", a.model, "--runs", str(runs),
           "--gen-tokens", str(a.gen_tokens), "--prompt-tokens", str(a.prompt_tokens), "--context", str(a.context),
           "--threads", str(a.threads), "--text", str(a.text)] + (["--device", device] if device else [])
    if start_only:
        cmd.append("--start-only")
    env = dict(os.environ, **(env_extra or {}))
    t_spawn = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{runtime} worker failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["start_to_first_token_s"] = out["first_token_wall"] - t_spawn
    return out


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="GGUF file (default: the shipped SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="llama.cpp threads (tinygrad's CPU backend uses one)")
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    p.add_argument("--out", type=Path, default=RESULTS / "decode.json")
    p.add_argument("--skip-llamacpp", action="store_true")
    p.add_argument("--backends", default="default",
                   help="edgegen backends to measure, comma-separated: 'default' (edgegen's own choice) and/or "
                        "tinygrad names such as CPU,CL; results for a named one are keyed edgegen-<NAME>")
    p.add_argument("--device", default=None, help=argparse.SUPPRESS)  # the edgegen worker's backend
    p.add_argument("--worker", choices=["edgegen", "llamacpp", "logits-edgegen", "logits-llamacpp"],
                   help=argparse.SUPPRESS)
    p.add_argument("--agreement-tokens", type=int, default=192, help="teacher-forced positions to compare logits on")
    p.add_argument("--start-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.model is None:
        from edgegen.runtime.artifact.reader import default_model_path

        a.model = str(default_model_path())
    ids = prompt_ids(a.model, a.prompt_tokens, a.text)

    if a.worker:
        if a.worker.startswith("logits-"):
            print(json.dumps(worker_logits(a, ids, a.worker.split("-", 1)[1])))
            return 0
        fn = worker_edgegen if a.worker == "edgegen" else worker_llamacpp
        print(json.dumps(fn(a, ids)))
        return 0

    # (result key, worker, edgegen backend): edgegen's default choice is "edgegen", a named backend "edgegen-CL"
    backends = [b.strip() for b in a.backends.split(",") if b.strip()] or ["default"]
    runtimes = [("edgegen" if b == "default" else f"edgegen-{b.upper()}", "edgegen", None if b == "default" else b)
                for b in backends] + ([] if a.skip_llamacpp else [("llamacpp", "llamacpp", None)])
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # cold: empty tinygrad kernel cache and empty edgegen graph cache; steady and warm runs share a graph cache
        cold_cache = {"CACHEDB": str(Path(tmp) / "cold-cache.db"), "EDGEGEN_CACHE": str(Path(tmp) / "cold-graphs")}
        os.environ["EDGEGEN_CACHE"] = str(Path(tmp) / "graphs")
        # Cold start first (empty kernel cache), then the steady-state runs, which also leave the cache warm, then a
        # warm start. llama.cpp has no kernel cache: its cold and warm starts are the same program.
        for key, rt, device in runtimes:
            print(f"[{key}] cold start ...", file=sys.stderr, flush=True)
            cold = spawn(a, rt, 0, start_only=True, env_extra=cold_cache if rt == "edgegen" else None, device=device)
            print(f"[{key}] {a.runs} runs of {a.prompt_tokens}-token prefill + {a.gen_tokens} tokens ...",
                  file=sys.stderr, flush=True)
            steady = spawn(a, rt, a.runs, device=device)
            print(f"[{key}] warm start ...", file=sys.stderr, flush=True)
            warm = spawn(a, rt, 0, start_only=True, device=device)
            results[key] = {
                "device": steady.get("device"),
                "ttft_64_s": median(steady["ttft_s"]),
                "decode_tok_s": median(steady["decode_tok_s"]),
                "decode_tok_s_runs": steady["decode_tok_s"],
                "ttft_runs_s": steady["ttft_s"],
                "peak_rss_mb": steady["peak_rss_mb"],
                "start_to_first_token_cold_s": cold["start_to_first_token_s"],
                "start_to_first_token_warm_s": warm["start_to_first_token_s"],
                "greedy_tokens": steady["tokens"],
            }

    report = {
        "model": a.model, "prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens, "runs": a.runs,
        "threads": a.threads, "context": a.context, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "results": results,
    }
    if "llamacpp" in results and "edgegen" in results:
        e, lc = results["edgegen"], results["llamacpp"]
        same = 0
        for x, y in zip(e["greedy_tokens"], lc["greedy_tokens"]):
            if x != y:
                break
            same += 1
        report["greedy_tokens_identical_prefix"] = f"{same}/{len(lc['greedy_tokens'])}"
        print(f"[both] teacher-forced logits over {a.agreement_tokens} tokens ...", file=sys.stderr, flush=True)
        report["logits_vs_llamacpp"] = logits_agreement(a, prompt_ids(a.model, a.agreement_tokens, a.text))
        report["ratios_edgegen_over_llamacpp"] = {
            "decode_tok_s": e["decode_tok_s"] / lc["decode_tok_s"],
            "ttft_64_s": e["ttft_64_s"] / lc["ttft_64_s"],
            "peak_rss_mb": e["peak_rss_mb"] / lc["peak_rss_mb"],
        }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\nwrote {a.out}")
    return 0


def print_table(report: dict) -> None:
    rows = [("time to first token, 64-token prompt (s)", "ttft_64_s", "{:.3f}"),
            ("decode tokens/s (median of runs)", "decode_tok_s", "{:.1f}"),
            ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
            ("start to first token, cold cache (s)", "start_to_first_token_cold_s", "{:.1f}"),
            ("start to first token, warm cache (s)", "start_to_first_token_warm_s", "{:.1f}")]
    names = list(report["results"])
    heads = [f"{n} ({r['device']})" if n == "edgegen" and r.get("device") else n
             for n, r in report["results"].items()]
    ratio = f"   {names[0]}/{names[-1]}" if len(names) > 1 else ""
    print(f"\n{'':44s}" + "".join(f"{h:>16s}" for h in heads) + ratio)
    for label, key, fmt in rows:
        vals = [report["results"][n][key] for n in names]
        line = f"{label:44s}" + "".join(f"{fmt.format(v):>16s}" if v is not None else f"{'-':>16s}" for v in vals)
        if len(names) > 1 and vals[0] and vals[-1]:
            line += f"   {vals[0] / vals[-1]:.2f}x"
        print(line)
    if "greedy_tokens_identical_prefix" in report:
        print(f"greedy tokens identical to llama.cpp's: {report['greedy_tokens_identical_prefix']}")
    if "logits_vs_llamacpp" in report:
        g = report["logits_vs_llamacpp"]
        print(f"teacher-forced over {g['positions']} tokens: top-1 agreement {100 * g['top1_agreement']:.1f}%, "
              f"mean |logit diff| {g['mean_abs_logit_diff']:.3f} (mean |logit| {g['logit_scale_mean_abs']:.2f})")
    print(f"(load average during the run: {report['load_avg_1m']:.1f} on {report['cpus']} CPUs)")


if __name__ == "__main__":
    sys.exit(main())
