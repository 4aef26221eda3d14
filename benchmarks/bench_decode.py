"""edgegen vs llama.cpp on the same GGUF files, the same machine, the same run: at 1 pinned core and at all cores.

    .venv/bin/pip install -e ".[llamacpp]"               # llama-cpp-python (compiles llama.cpp once)
    .venv/bin/python benchmarks/bench_decode.py          # table on stdout, JSON in benchmarks/results/decode.json
    .venv/bin/python benchmarks/bench_decode.py --quick  # smoke run: one model, 1 run, 16 tokens (JSON in /tmp)
    .venv/bin/python benchmarks/bench_decode.py --models default,q8_0 --with-tinygrad

Models (--models): `default` (the shipped SmolLM2-135M-Instruct Q4_1), `q8_0` (that file re-quantized with
`edgegen quantize --recipe w8`, cached in .cache/bench-decode/), catalog names such as `gemma3-270m`, or paths.
By default all three; q8_0 and gemma3-270m are skipped with a note when they cannot be made or are not installed.

Each runtime runs in its own process (so peak RSS and start-up are that runtime's alone), in two configurations:
- 1 thread: the child pins itself to one core (os.sched_setaffinity before importing anything heavy), the same
  core for every runtime; edgegen runs `--kernels native` with 1 thread, llama.cpp n_threads=1.
- all cores: the parent's affinity mask; threads = its size for both.
Optionally (--with-tinygrad) edgegen with tinygrad's generated kernels at 1 core, for comparison.

Measured per (model, configuration, runtime); times are medians over --runs after one warm-up run:
- time to first token for a 64-token prompt (prefill + first greedy sample)
- decode tokens/s over 128 greedy tokens
- time to first token with a reused 200-token system prompt: request A = system + 16 user tokens (8 tokens
  generated), then request B = the same system + 16 other user tokens; B's time to first token. edgegen gets the
  two requests as two `stream_ids` calls (the engine keeps the KV prefix it shares); llama.cpp keeps its KV cache
  (Llama.n_tokens set to 200, then eval of B's 16 tokens, which is how Llama.generate reuses a prefix). A's time
  to first token is the same-length prompt with nothing to reuse.
- share of memory bandwidth: weight bytes read per token (the file's tensor bytes; a separate output head means
  only one row of token_embd is read) x decode tokens/s / this machine's copy bandwidth (numpy.copyto of a 512 MiB
  array into a pre-touched one, best of 3, counted as read + written bytes as STREAM "copy" does, one thread in
  the parent). KV-cache reads are not counted, so the share is a lower bound.
- peak RSS of the steady process (it captures its graphs) and of a warm start to its first token; process start to
  first token with an empty kernel/graph cache (cold) and a warm one.
The token ids come from ../shared/eval/gpl-3.txt through edgegen's tokenizer, computed once in the parent and handed
to every child, so both runtimes get the same ids and tokenizing is not part of start-up.
Per model, teacher-forced top-1 agreement with llama.cpp over 192 tokens (all cores).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from machine_facts import bytes_read_per_token, copy_bandwidth, machine_info, versions  # benchmarks/, beside this file

if TYPE_CHECKING:  # numpy is imported where it is used: a pinned worker sets its affinity before any import
    import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL_CACHE = ROOT / ".cache" / "bench-decode"  # git-ignored: derived model files
DEFAULT_TEXT = ROOT.parent / "shared" / "eval" / "gpl-3.txt"
DEFAULT_MODELS = "default,q8_0,gemma3-270m"
OPTIONAL_MODELS = ("q8_0", "gemma3-270m")  # skipped with a note when absent, unless named with --models
SYSTEM_TOKENS, USER_TOKENS, FIRST_REPLY_TOKENS = 200, 16, 8
SYSTEM_OFFSET = 1024  # the system prompt starts here in the text: no prefix shared with the 64-token prompt
TARGETS = ("issue 14 targets, edgegen/llama.cpp: decode >= 1.1x, ttft 64 <= 1.0x, peak RSS <= 1.2x; "
           "warm start to first token < 1 s; ttft with the reused system prompt < 0.1 s")


def peak_rss_mb() -> float:
    """Peak resident set of this process (device.measure.peak_rss_bytes: VmHWM, which exec resets), in MiB."""
    from edgegen.device.measure import peak_rss_bytes

    return peak_rss_bytes() / 2**20


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


# ---- workers: run in a child process, print one JSON line ---------------------------------------------------------
def worker_edgegen(a: argparse.Namespace, p: dict) -> dict:
    from edgegen.runtime import SamplingParams
    from edgegen.runtime.engine import TextGenerator
    from edgegen.runtime.native.options import KernelOptions

    options = KernelOptions(a.kernels, a.threads)
    gen = TextGenerator.load(a.model, device=a.device, max_context=a.context, kernels=options)

    def request(ids: list[int], n: int):  # (result, wall clock when the stream ended)
        stream = gen.stream_ids(ids, SamplingParams(max_tokens=n), ignore_eos=True)
        for _ in stream:
            pass
        return stream.result, time.time()

    info = {"device": gen.device, "kernels": options.describe(gen.device),
            "graphs_native": getattr(gen.graphs, "native", None),
            "graphs_threads": getattr(gen.graphs, "threads", None)}
    if a.start_only:  # one generated token: the stream ends right after it
        _, first_token_wall = request(p["prompt"], 1)
        return {"first_token_wall": first_token_wall, "peak_rss_mb": peak_rss_mb(), **info}
    out: dict[str, list] = {"ttft_64_s": [], "decode_tok_s": [], "ttft_216_no_reuse_s": [], "ttft_prefix_reuse_s": []}
    for run in range(a.runs + 1):  # run 0 warms up: kernel compilation and graph capture for every prompt length
        r, _ = request(p["prompt"], a.gen_tokens)
        tokens = list(r.token_ids)
        first, _ = request(p["system"] + p["user_a"], FIRST_REPLY_TOKENS)
        second, _ = request(p["system"] + p["user_b"], 1)
        if run > 0:
            out["ttft_64_s"].append(r.ttft_s)
            out["decode_tok_s"].append(r.decode_tokens_per_s)
            out["ttft_216_no_reuse_s"].append(first.ttft_s)
            out["ttft_prefix_reuse_s"].append(second.ttft_s)
    return {**out, "peak_rss_mb": peak_rss_mb(), "tokens": tokens, **info}


def worker_llamacpp(a: argparse.Namespace, p: dict) -> dict:
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    longest = max(len(p["prompt"]), len(p["system"]) + len(p["user_a"]))
    llm = Llama(model_path=a.model, n_ctx=a.context, n_threads=a.threads, n_threads_batch=a.threads,
                n_batch=max(longest, 64), verbose=False)
    n_vocab = llm.n_vocab()

    def next_token(ids: list[int]) -> int:
        llm.eval(ids)  # after the llm.n_tokens cached positions
        # llama-cpp-python 0.3 no longer copies logits into `scores` unless logits_all; read the context's row.
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))

    def prefill(ids: list[int], keep: int = 0) -> tuple[int, float]:
        """Greedy first token after `ids`, keeping the first `keep` cached positions; (token, seconds)."""
        if keep and list(llm.input_ids[:keep]) != ids[:keep]:
            raise SystemExit("llama.cpp: the cached prefix is not the system prompt")
        t0 = time.perf_counter()
        if keep:
            llm.n_tokens = keep  # Llama.eval drops the cache from n_tokens on: Llama.generate's prefix reuse
        else:
            llm.reset()
        token = next_token(ids[keep:])
        return token, time.perf_counter() - t0

    def generate(ids: list[int], n: int) -> tuple[list[int], float, float]:
        token, ttft = prefill(ids)
        tokens, t1 = [token], time.perf_counter()
        for _ in range(n - 1):
            token = next_token([token])
            tokens.append(token)
        return tokens, ttft, (n - 1) / (time.perf_counter() - t1) if n > 1 else 0.0

    if a.start_only:
        prefill(p["prompt"])
        return {"first_token_wall": time.time(), "peak_rss_mb": peak_rss_mb()}
    out: dict[str, list] = {"ttft_64_s": [], "decode_tok_s": [], "ttft_216_no_reuse_s": [], "ttft_prefix_reuse_s": []}
    for run in range(a.runs + 1):
        tokens, ttft, tok_s = generate(p["prompt"], a.gen_tokens)
        _, ttft_first, _ = generate(p["system"] + p["user_a"], FIRST_REPLY_TOKENS)
        _, ttft_second = prefill(p["system"] + p["user_b"], keep=len(p["system"]))
        if run > 0:
            out["ttft_64_s"].append(ttft)
            out["decode_tok_s"].append(tok_s)
            out["ttft_216_no_reuse_s"].append(ttft_first)
            out["ttft_prefix_reuse_s"].append(ttft_second)
    return {**out, "peak_rss_mb": peak_rss_mb(), "tokens": tokens}


def worker_logits(a: argparse.Namespace, ids: list[int], runtime: str) -> np.ndarray:
    """Next-token logits at every position of `ids` (teacher forcing), (T, vocab) float32."""
    import numpy as np

    if runtime == "edgegen":
        from edgegen.runtime.engine import TextGenerator
        from edgegen.runtime.native.options import KernelOptions

        gen = TextGenerator.load(a.model, device=a.device, max_context=a.context, jit_cache=False,
                                 kernels=KernelOptions(a.kernels, a.threads))
        return np.asarray(gen.logits(ids), dtype=np.float32)
    from llama_cpp import Llama

    # llama.cpp at its defaults, and two variants whose arithmetic differs only in rounding: its floor of agreement
    variant = {"llamacpp": {}, "llamacpp-f32kv": {"type_k": 0, "type_v": 0},  # GGML_TYPE_F32 KV cache
               "llamacpp-ubatch1": {"n_batch": 1, "n_ubatch": 1}}[runtime]  # one token per graph (decode kernels)
    kw = {"n_batch": len(ids), **variant}
    llm = Llama(model_path=a.model, n_ctx=a.context, n_threads=a.threads, n_threads_batch=a.threads,
                logits_all=True, verbose=False, **kw)
    llm.eval(ids)
    return np.asarray(llm.scores[: len(ids)], dtype=np.float32)


# ---- parent: preparing models, ids, machine facts ------------------------------------------------------------------
def q8_0_model(timeout_s: float) -> Path:
    """The shipped Q4_1 model re-quantized to Q8_0 (edgegen quantize --recipe w8), made once and cached."""
    from edgegen.runtime.artifact.reader import default_model_path

    source = Path(default_model_path())
    out = MODEL_CACHE / f"{source.stem}.requantized-Q8_0.gguf"
    if out.is_file() and out.stat().st_mtime >= source.stat().st_mtime:
        return out
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.gguf")
    proc = subprocess.run([sys.executable, "-m", "edgegen.cli", "quantize", str(source), "--recipe", "w8", "-o",
                           str(tmp), "--no-progress"], capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0 or not tmp.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"edgegen quantize --recipe w8 failed (exit {proc.returncode}): {tail[0]}")
    tmp.replace(out)  # never leave a half-written file under the cached name
    return out


def resolve_models(spec: str, timeout_s: float) -> tuple[list[tuple[str, Path]], list[str]]:
    """[(label, path)] for the --models list, and notes on optional models that were skipped."""
    from edgegen.runtime.artifact import catalog
    from edgegen.runtime.errors import ArtifactError

    models, notes = [], []
    for name in (n.strip() for n in spec.split(",")):
        if not name:
            continue
        try:
            if name == "q8_0":
                models.append((name, q8_0_model(timeout_s)))
            elif name in catalog.CATALOG:
                models.append((name, catalog.model_path(name)))
            elif Path(name).is_file():
                models.append((Path(name).stem, Path(name).resolve()))
            else:
                raise SystemExit(f"--models: {name!r} is neither a file nor one of q8_0, "
                                 f"{', '.join(sorted(catalog.CATALOG))}")
        except (ArtifactError, RuntimeError, subprocess.TimeoutExpired) as e:
            if name not in OPTIONAL_MODELS or spec != DEFAULT_MODELS:
                raise SystemExit(f"--models: cannot use {name!r}: {e}") from e
            notes.append(f"skipped {name}: {e}")
    return models, notes


def prompts_for(model: Path, a: argparse.Namespace) -> dict[str, list[int]]:
    """Every token-id list the workers need, from one tokenization of the text with edgegen's tokenizer."""
    from edgegen.runtime.artifact.reader import open_model
    from edgegen.runtime.tokenizer import load_tokenizer

    ids = [int(i) for i in load_tokenizer(open_model(model)).encode(a.text.read_text(encoding="utf-8"))]
    user_b_at = SYSTEM_OFFSET + SYSTEM_TOKENS + 4 * USER_TOKENS
    need = max(a.prompt_tokens, a.agreement_tokens, user_b_at + 4 * USER_TOKENS)
    if len(ids) < need:
        raise SystemExit(f"{a.text} has only {len(ids)} tokens for {model.name}, need {need}")
    user_a = ids[SYSTEM_OFFSET + SYSTEM_TOKENS:][:USER_TOKENS]
    # B must leave the shared prefix at its first user token, or more than the system prompt would be reused
    while ids[user_b_at] == user_a[0]:
        user_b_at += 1
    return {"prompt": ids[: a.prompt_tokens], "agreement": ids[: a.agreement_tokens],
            "system": ids[SYSTEM_OFFSET:][:SYSTEM_TOKENS], "user_a": user_a, "user_b": ids[user_b_at:][:USER_TOKENS]}


# ---- parent: running the workers -----------------------------------------------------------------------------------
def spawn(a: argparse.Namespace, worker: str, model: Path, ids_file: Path, threads: int, cores: list[int],
          kernels: str = "native", device: str = "CPU", runs: int = 0, start_only: bool = False,
          env_extra: dict | None = None) -> dict:
    """Run one worker process; its JSON, or {"error": ...} when it failed (the other measurements go on)."""
    cmd = [sys.executable, __file__, "--worker", worker, "--model", str(model), "--ids", str(ids_file),
           "--runs", str(runs), "--gen-tokens", str(a.gen_tokens), "--context", str(a.context),
           "--threads", str(threads), "--cores", ",".join(map(str, cores)), "--kernels", kernels, "--device", device]
    if start_only:
        cmd.append("--start-only")
    t_spawn = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **(env_extra or {})),
                              timeout=a.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {a.timeout:.0f} s"}
    print(f"    ... {time.time() - t_spawn:.0f} s", file=sys.stderr, flush=True)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "first_token_wall" in out:
        out["start_to_first_token_s"] = out.pop("first_token_wall") - t_spawn
    return out


def measure(a: argparse.Namespace, key: str, model: Path, ids_file: Path, threads: int, cores: list[int],
            kernels: str, tmp: Path, bandwidth: dict, bytes_per_token: int, warm_start: bool = True) -> dict:
    """Cold start (not with --quick), steady runs, warm start of one runtime in one configuration."""
    worker = "llamacpp" if key == "llamacpp" else "edgegen"
    device = key.split("-", 1)[1] if key.startswith("edgegen-") and key != "edgegen-tinygrad" else "CPU"
    run = functools.partial(spawn, a, worker, model, ids_file, threads, cores, kernels, device)
    label = f"[{model.name} {key} x{threads}]"
    cold = {}
    if not a.quick:
        # empty tinygrad kernel cache, graph cache and native-runner cache; llama.cpp has none, so its "cold" start
        # is the same program started once more
        folder = Path(tempfile.mkdtemp(dir=tmp, prefix="cold-"))
        empty = {"CACHEDB": str(folder / "cache.db"), "EDGEGEN_CACHE": str(folder / "graphs"),
                 "EDGEGEN_CACHE_DIR": str(folder / "native")}
        print(f"{label} cold start ...", file=sys.stderr, flush=True)
        cold = run(start_only=True, env_extra=empty if worker == "edgegen" else None)
    print(f"{label} {a.runs} runs ...", file=sys.stderr, flush=True)
    steady = run(runs=a.runs)
    warm = {}
    if warm_start:
        print(f"{label} warm start ...", file=sys.stderr, flush=True)
        warm = run(start_only=True)
    errors = {k: v["error"] for k, v in (("cold", cold), ("steady", steady), ("warm", warm)) if "error" in v}
    tok_s = median(steady.get("decode_tok_s", []))
    res = {
        "threads": threads, "cores": cores,
        "ttft_64_s": median(steady.get("ttft_64_s", [])),
        "ttft_prefix_reuse_s": median(steady.get("ttft_prefix_reuse_s", [])),
        "ttft_216_no_reuse_s": median(steady.get("ttft_216_no_reuse_s", [])),
        "decode_tok_s": tok_s,
        "bandwidth_share": tok_s * bytes_per_token / bandwidth["bytes_per_s"] if tok_s else None,
        "peak_rss_mb": steady.get("peak_rss_mb"),
        "peak_rss_warm_mb": warm.get("peak_rss_mb"),  # a process that starts from the graph cache, one answer
        "start_to_first_token_cold_s": cold.get("start_to_first_token_s"),
        "start_to_first_token_warm_s": warm.get("start_to_first_token_s"),
        "runs": {k: steady[k] for k in ("ttft_64_s", "decode_tok_s", "ttft_216_no_reuse_s", "ttft_prefix_reuse_s")
                 if k in steady},
        "greedy_tokens": steady.get("tokens"),
    }
    if worker == "edgegen":
        res.update({k: steady.get(k) for k in ("device", "kernels", "graphs_native", "graphs_threads")})
    if errors:
        res["errors"] = errors
        print(f"{label} FAILED: {errors}", file=sys.stderr, flush=True)
    return res


def logits_agreement(a: argparse.Namespace, model: Path, ids_file: Path, ids: list[int], threads: int,
                     tmp: Path) -> dict:
    """Top-1 agreement and logit differences between the runtimes on the same token ids: separates arithmetic
    differences (activation quantization) from implementation errors."""
    import numpy as np

    out = {}
    for rt in ("edgegen", "edgegen-tinygrad", "llamacpp", "llamacpp-f32kv", "llamacpp-ubatch1"):
        npy = tmp / f"logits-{rt}.npy"  # (T, vocab) floats: 38 MB for SmolLM2, far too slow as JSON
        kernels = "tinygrad" if rt == "edgegen-tinygrad" else "native"
        cmd = [sys.executable, __file__, "--worker", f"logits-{rt.split('-')[0] if rt.startswith('edgegen') else rt}",
               "--model", str(model), "--ids", str(ids_file), "--context", str(a.context), "--threads", str(threads),
               "--kernels", kernels, "--device", "CPU", "--logits-out", str(npy)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"logits-{rt} timed out after {a.timeout:.0f} s"}
        if proc.returncode != 0:
            return {"error": f"logits-{rt} exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"}
        out[rt] = np.load(npy)
    lc = out["llamacpp"]
    # Against llama.cpp at its defaults. Its own variants (F32 instead of F16 KV cache; one token per graph) round
    # differently and nothing else: their agreement is the floor that arithmetic-level differences reach.
    return {"positions": len(ids), "logit_scale_mean_abs": float(np.abs(lc).mean()), **{
        f"{rt}_top1_agreement": float((e.argmax(-1) == lc.argmax(-1)).mean()) for rt, e in out.items()
        if rt != "llamacpp"}, **{f"{rt}_mean_abs_logit_diff": float(np.abs(e - lc).mean()) for rt, e in out.items()
                                 if rt != "llamacpp"},
        "top1_agreement": float((out["edgegen"].argmax(-1) == lc.argmax(-1)).mean()),
        "max_abs_logit_diff": float(np.abs(out["edgegen"] - lc).max()),
        "mean_abs_logit_diff": float(np.abs(out["edgegen"] - lc).mean())}


def ratios(runs: dict) -> dict:
    e, lc = runs.get("edgegen"), runs.get("llamacpp")
    if not e or not lc:
        return {}
    keys = ("decode_tok_s", "ttft_64_s", "ttft_prefix_reuse_s", "peak_rss_mb", "peak_rss_warm_mb",
            "start_to_first_token_warm_s")
    return {k: e[k] / lc[k] for k in keys if e.get(k) and lc.get(k)}


def identical_prefix(x: list[int] | None, y: list[int] | None) -> str | None:
    if not x or not y:
        return None
    same = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
    return f"{same}/{len(y)}"


def bench_model(a: argparse.Namespace, label: str, model: Path, tmp: Path, bandwidth: dict) -> dict:
    prompts = prompts_for(model, a)
    ids_file = tmp / f"{label}-ids.json"
    ids_file.write_text(json.dumps(prompts))
    weights = bytes_read_per_token(model)
    mask = sorted(os.sched_getaffinity(0))
    core = a.pin_core if a.pin_core is not None else mask[-1]
    configs = ((f"1 thread (core {core})", 1, [core]), (f"all cores ({len(mask)} threads)", len(mask), mask))
    out = {"path": str(model), **weights, "configs": {}}
    for name, threads, cores in configs:
        keys = ["edgegen", *([] if a.skip_llamacpp else ["llamacpp"])]
        if a.with_tinygrad and cores != mask:
            keys.append("edgegen-tinygrad")
        if cores == mask:
            keys += [f"edgegen-{b.upper()}" for b in a.backends]
        runs = {}
        for key in keys:
            kernels = "tinygrad" if key == "edgegen-tinygrad" else ("auto" if key.startswith("edgegen-") else "native")
            # --quick times the warm start at all cores only: it is most of a smoke run's minutes
            runs[key] = measure(a, key, model, ids_file, threads, cores, kernels, tmp, bandwidth,
                                weights["bytes_read_per_token"], warm_start=not (a.quick and cores != mask))
        out["configs"][name] = {"threads": threads, "cores": cores, "results": runs, "ratios_edgegen_over_llamacpp":
                                ratios(runs), "greedy_tokens_identical_prefix": identical_prefix(
                                    runs.get("edgegen", {}).get("greedy_tokens"),
                                    runs.get("llamacpp", {}).get("greedy_tokens"))}
        for r in runs.values():
            r.pop("greedy_tokens", None)  # long lists: the JSON keeps the comparison, not the ids
    if not a.skip_llamacpp:
        print(f"[{model.name}] teacher-forced logits over {a.agreement_tokens} tokens ...", file=sys.stderr,
              flush=True)
        out["logits_vs_llamacpp"] = logits_agreement(a, model, ids_file, prompts["agreement"], len(mask), tmp)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help="comma-separated: default, q8_0 (default re-quantized), catalog names, GGUF paths")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--pin-core", type=int, default=None, help="core for the 1-thread runs (default: the last one "
                                                              "this process may use)")
    p.add_argument("--with-tinygrad", action="store_true", help="also edgegen --kernels tinygrad at 1 core")
    p.add_argument("--backends", default="", help="also edgegen on these tinygrad backends (e.g. CL), tinygrad's "
                                                  "kernels, all cores; keyed edgegen-<NAME>")
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/decode.json; "
                                                          "with --quick, one in the temp folder)")
    p.add_argument("--skip-llamacpp", action="store_true")
    p.add_argument("--agreement-tokens", type=int, default=192, help="teacher-forced positions to compare logits on")
    p.add_argument("--timeout", type=float, default=3600, help="seconds each worker process may take")
    p.add_argument("--quick", action="store_true", help="smoke run: the first model only, 1 run, 16 tokens, no "
                                                        "cold start")
    # worker-only arguments
    p.add_argument("--worker", choices=["edgegen", "llamacpp", "logits-edgegen", "logits-llamacpp",
                                        "logits-llamacpp-f32kv", "logits-llamacpp-ubatch1"],
                   help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ids", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--cores", default="", help=argparse.SUPPRESS)
    p.add_argument("--kernels", default="native", help=argparse.SUPPRESS)
    p.add_argument("--device", default="CPU", help=argparse.SUPPRESS)
    p.add_argument("--start-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--logits-out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.worker:
        if a.cores:  # before edgegen, tinygrad or llama.cpp start threads: they inherit the mask
            os.sched_setaffinity(0, {int(c) for c in a.cores.split(",")})
        prompts = json.loads(a.ids.read_text())
        if a.worker.startswith("logits-"):
            import numpy as np

            np.save(a.logits_out, worker_logits(a, prompts["agreement"], a.worker.split("-", 1)[1]))
        else:
            print(json.dumps((worker_edgegen if a.worker == "edgegen" else worker_llamacpp)(a, prompts)))
        return 0

    if a.model and a.models == DEFAULT_MODELS:
        a.models = a.model  # the old single-model flag
    if a.quick:
        a.models, a.runs, a.gen_tokens = a.models.split(",")[0], 1, 16
    a.backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    if a.pin_core is not None and a.pin_core not in os.sched_getaffinity(0):
        raise SystemExit(f"--pin-core {a.pin_core}: not one of the cores this process may use "
                         f"{sorted(os.sched_getaffinity(0))}")
    out_path = a.out or (Path(tempfile.gettempdir()) / "edgegen-decode-quick.json" if a.quick
                         else RESULTS / "decode.json")
    models, notes = resolve_models(a.models, a.timeout)
    print("measuring copy bandwidth ...", file=sys.stderr, flush=True)
    bandwidth = copy_bandwidth()
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(), "versions": versions(), "load_avg_1m_start": os.getloadavg()[0],
        "settings": {"prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens, "runs": a.runs,
                     "context": a.context, "system_prompt_tokens": SYSTEM_TOKENS, "user_tokens": USER_TOKENS,
                     "agreement_tokens": a.agreement_tokens, "quick": a.quick, "text": str(a.text)},
        "memory_bandwidth": bandwidth, "notes": notes, "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        # the steady and warm runs of every configuration share one graph cache, emptied at the end
        os.environ["EDGEGEN_CACHE"] = str(Path(tmp) / "graphs")
        for label, path in models:
            report["models"][label] = bench_model(a, label, path, Path(tmp), bandwidth)
    report["load_avg_1m_end"] = os.getloadavg()[0]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))
    print_report(report)
    print(f"\nwrote {out_path}")
    failed = [f"{m} / {c} / {k}" for m, mr in report["models"].items() for c, cr in mr["configs"].items()
              for k, r in cr["results"].items() if "errors" in r]
    failed += [f"{m} / logits" for m, mr in report["models"].items() if "error" in mr.get("logits_vs_llamacpp", {})]
    if failed:
        print("failed: " + "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0


ROWS = (("time to first token, {prompt}-token prompt (s)", "ttft_64_s", "{:.3f}"),
        ("ttft, reused {system}-token system prompt (s)", "ttft_prefix_reuse_s", "{:.3f}"),
        ("ttft, {long}-token prompt, nothing reused (s)", "ttft_216_no_reuse_s", "{:.3f}"),
        ("decode tokens/s (median of runs)", "decode_tok_s", "{:.1f}"),
        ("share of memory bandwidth, decode", "bandwidth_share", "{:.1%}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("peak RSS, warm start to first token (MB)", "peak_rss_warm_mb", "{:.0f}"),
        ("start to first token, cold cache (s)", "start_to_first_token_cold_s", "{:.2f}"),
        ("start to first token, warm cache (s)", "start_to_first_token_warm_s", "{:.2f}"))
SHORT = {"edgegen": "edgegen", "llamacpp": "llama.cpp", "edgegen-tinygrad": "eg-tinygrad"}


def print_report(report: dict) -> None:
    w = 12
    st = report["settings"]
    sizes = {"prompt": st["prompt_tokens"], "system": st["system_prompt_tokens"],
             "long": st["system_prompt_tokens"] + st["user_tokens"]}
    for label, m in report["models"].items():
        print(f"\n== {label}: {Path(m['path']).name}, {m['bytes_read_per_token'] / 1e6:.1f} MB of weights read per "
              f"token ==")
        cols = [(c, k) for c, cr in m["configs"].items() for k in [*cr["results"], "ratio"]
                if k != "ratio" or cr["ratios_edgegen_over_llamacpp"]]
        line = f"{'':44s}"
        for c in m["configs"]:
            n = sum(1 for cc, _ in cols if cc == c)
            line += f"{c:>{w * n}s}"
        print(line)
        print(f"{'':44s}" + "".join(f"{SHORT.get(k, k) if k != 'ratio' else 'e/l':>{w}s}" for _, k in cols))
        for text, key, fmt in ROWS:
            line = f"{text.format(**sizes):44s}"
            for c, k in cols:
                cr = m["configs"][c]
                v = cr["ratios_edgegen_over_llamacpp"].get(key) if k == "ratio" else cr["results"][k].get(key)
                line += f"{'-' if v is None else (f'{v:.2f}x' if k == 'ratio' else fmt.format(v)):>{w}s}"
            print(line)
        for c, cr in m["configs"].items():
            if cr["greedy_tokens_identical_prefix"]:
                print(f"{c}: greedy tokens identical to llama.cpp's: {cr['greedy_tokens_identical_prefix']}")
            for k, r in cr["results"].items():
                if "errors" in r:
                    print(f"{c}: {k} FAILED: " + "; ".join(f"{s}: {e.splitlines()[-1] if e else ''}"
                                                          for s, e in r["errors"].items()))
                elif k.startswith("edgegen") and r.get("kernels"):
                    print(f"{c}: {k} ran {r['kernels']} on {r.get('device')}")
        g = m.get("logits_vs_llamacpp")
        if g and "error" in g:
            print(f"teacher-forced logits FAILED: {g['error'].splitlines()[-1]}")
        elif g:
            print(f"teacher-forced over {g['positions']} tokens, top-1 agreement with llama.cpp (mean |logit diff|; "
                  f"mean |logit| {g['logit_scale_mean_abs']:.2f}):")
            for rt in ("edgegen", "edgegen-tinygrad", "llamacpp-f32kv", "llamacpp-ubatch1"):
                if f"{rt}_top1_agreement" in g:
                    print(f"  {rt:18s} {100 * g[f'{rt}_top1_agreement']:5.1f}% ({g[f'{rt}_mean_abs_logit_diff']:.3f})")
    bw = report["memory_bandwidth"]
    print(f"\ne/l = edgegen / llama.cpp (decode: higher is better; times and RSS: lower). {TARGETS}.")
    print(f"memory bandwidth {bw['bytes_per_s'] / 1e9:.1f} GB/s: {bw['method']}")
    for n in report["notes"]:
        print(n)
    print(f"(load average {report['load_avg_1m_start']:.1f} at the start, {report['load_avg_1m_end']:.1f} at the end, "
          f"on {report['machine']['cpus']} CPUs)")


if __name__ == "__main__":
    sys.exit(main())
