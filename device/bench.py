"""Latency, throughput, memory, compile time, bandwidth share and energy of a model on this machine, as one report.

`edgegen bench` is a front end over `bench` and `write_outputs`. With device/model_open.py one of the two modules of
`device` that import `runtime`, and only inside functions, because it must load and drive a model; the measurement
library it uses (device.measure, energy, report, planner) stays free of runtime imports.

Kernel compile time is measured in two fresh processes, each loading the model and producing a first token: one
with empty caches (tinygrad's compiled kernels: `CACHEDB` pointed at a new file; the runtime's captured JIT graphs:
`EDGEGEN_CACHE` pointed at a new folder), one with the default caches, which this process has just filled. Their
difference is the compilation a first deployment pays; the warm figure is what every later start pays.

    python -m edgegen.device.bench --startup-probe MODEL DEVICE PROMPT_TOKENS CONTEXT   # measure_startup's child
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from edgegen.device.backends import BACKENDS
from edgegen.device.energy import NOT_AVAILABLE, EnergyMeter
from edgegen.device.errors import DeviceError
from edgegen.device.measure import TokenTimer, latency_stats, peak_rss_bytes, tinygrad_memory_bytes
from edgegen.device.model_facts import ModelFacts
from edgegen.device.model_open import open_model_facts
from edgegen.device.planner import decode_bytes_per_token
from edgegen.device.profiles import BoardProfile, get_profile, match_profile
from edgegen.runtime.artifact.constants import DEFAULT_MAX_CONTEXT

log = logging.getLogger(__name__)
T = TypeVar("T")
# track(iterable, description, total) -> iterable: the CLI passes a progress bar over each run's tokens.
Track = Callable[[Iterable[T], str, int], Iterable[T]]
# Plain English that the tokenizer splits into ordinary word tokens; repeated to any prompt length.
PROMPT_TEXT = ("A microcontroller is a small computer on a single chip. It reads sensors, drives motors and talks "
               "to other devices over serial buses, and it runs for years on a battery. ")
STARTUP_TIMEOUT_S = 900
# measure_startup's child: the CLI's bench module, which can import the runtime (this library never does)
PROBE_MODULE, PROBE_FLAG = "edgegen.cli.bench", "--startup-probe"


def no_track(it: Iterable[T], desc: str, total: int) -> Iterable[T]:
    return it


@dataclass(frozen=True)
class BenchSettings:
    """What to measure; each field is the `edgegen bench` flag of the same name."""

    prompt_tokens: int = 64
    gen_tokens: int = 32
    runs: int = 3  # measured runs, after two warm-up generations
    device: str = "CPU"
    board: str | None = None  # profile to compare the achieved bandwidth with (None: the detected board, or host)
    context: int = DEFAULT_MAX_CONTEXT
    label: str | None = None  # name in the history and charts (None: the file's stem)
    compile_times: bool = True  # the cold/warm kernel-cache start-up measurement (two extra model loads)


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise DeviceError(f"{name} must be a positive integer, got {value}")


def validate(model: str, settings: BenchSettings) -> tuple[Path, ModelFacts, str]:
    """Every cheap check before minutes of work: numbers, device name, model file, context."""
    s = settings
    for name in ("prompt_tokens", "gen_tokens", "runs", "context"):
        _positive("--" + name.replace("_", "-"), getattr(s, name))
    device = s.device.upper()
    if device not in BACKENDS:
        raise DeviceError(f"unknown device {s.device!r}: expected one of {', '.join(BACKENDS)}")
    opened = open_model_facts(model)  # 'default', and one error line for a missing or unreadable file
    if opened.cannot_run is not None:
        raise DeviceError(f"{opened.facts.path}: cannot run here: {opened.cannot_run}")
    path, facts = Path(opened.facts.path), opened.facts
    if s.context > facts.max_context:
        raise DeviceError(f"--context {s.context} exceeds the model's trained context of {facts.max_context}")
    if s.prompt_tokens + s.gen_tokens > s.context:
        raise DeviceError(f"--prompt-tokens {s.prompt_tokens} + --gen-tokens {s.gen_tokens} do not fit a "
                          f"context of {s.context} tokens (raise --context)")
    return path, facts, device


def pick_board(name: str | None) -> BoardProfile:
    if name:
        return get_profile(name)
    from edgegen.device.host import read_host

    host = read_host()
    return match_profile(host.board_model, host.memory_total_bytes) or get_profile("host")


class Runner(Protocol):
    """What bench needs from a runtime, passed in by the caller (the CLI passes edgegen's): `device` measures, the
    runtime runs, and this package imports none of it (docs/ARCHITECTURE.md)."""

    def load(self, path: Path, device: str, context: int) -> Any:
        """A generator with `.tokenizer.encode(text)` and `.stream_ids(ids, params, ignore_eos=True)`; an unusable
        backend raises an error class with exit_code 2."""
        ...

    def greedy(self, max_tokens: int) -> Any:
        """Sampling parameters for exactly `max_tokens` greedy tokens."""
        ...

    def graphs_cached(self, path: Path, device: str, context: int) -> bool:
        """Whether a load would find captured graphs on disk."""
        ...


def make_prompt(tokenizer, n_tokens: int) -> list[int]:
    """Exactly `n_tokens` token ids of plain English."""
    ids = tokenizer.encode(PROMPT_TEXT * (n_tokens // 20 + 2))
    assert len(ids) >= n_tokens, "PROMPT_TEXT repeats enough to cover any length"
    return ids[:n_tokens]


def timed_generation(runner: Runner, gen: Any, prompt: list[int], max_tokens: int, track: Track = no_track,
                     desc: str = "generating") -> tuple[TokenTimer, Any, int]:
    """Run one greedy generation of exactly `max_tokens` tokens (end-of-turn ignored), marking every streamed
    piece; returns the timer, the runtime's result, and the number of pieces seen."""
    timer = TokenTimer()
    pieces = 0
    timer.start()
    stream = gen.stream_ids(prompt, runner.greedy(max_tokens), ignore_eos=True)
    for _ in track(stream, desc, max_tokens):
        timer.mark()
        pieces += 1
    return timer, stream.result, pieces


def measure_startup(path: Path, device: str, prompt_tokens: int, context: int, cache_dir: str | None) -> dict:
    """Load and first token in a fresh process, with empty caches in `cache_dir` (None: the default caches)."""
    env = dict(os.environ, DEV=device)
    if cache_dir is not None:
        env["CACHEDB"] = os.path.join(cache_dir, "tinygrad-cache.db")  # tinygrad.helpers.CACHEDB
        env["EDGEGEN_CACHE"] = os.path.join(cache_dir, "edgegen")  # runtime.jit_cache.cache_dir
    cmd = [sys.executable, "-m", PROBE_MODULE, PROBE_FLAG, str(path), device, str(prompt_tokens), str(context)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S,
                          check=False)
    wall = time.perf_counter() - start
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DeviceError(f"start-up probe failed (exit {proc.returncode}): {tail}") from None
    out["process_s"] = wall
    return out


def startup_probe(runner: Runner, path: str, device: str, prompt_tokens: int, context: int, t0: float) -> None:
    """Child of measure_startup (t0: when the child started importing): load, generate 2 tokens; print times and
    peak RSS as one JSON line."""
    cache_hit = runner.graphs_cached(Path(path), device, context)
    gen = runner.load(Path(path), device, context)
    t_load = time.perf_counter()
    timer, result, _ = timed_generation(runner, gen, make_prompt(gen.tokenizer, prompt_tokens), 2)
    t_end = time.perf_counter()
    print(json.dumps({"load_s": t_load - t0, "first_token_s": t_load - t0 + (timer.ttft_s or 0.0),
                      "first_generation_s": t_end - t0, "completion_tokens": result.completion_tokens,
                      "peak_rss_bytes": peak_rss_bytes(), "jit_cache_hit": cache_hit}))


def bench(model: str, runner: Runner, settings: BenchSettings = BenchSettings(), track: Track = no_track) -> dict:
    """Measure a model run by `runner`; return the report dict (every field present; None or a string where
    something does not apply)."""
    s = settings
    path, facts, device = validate(model, s)
    board = pick_board(s.board)
    label = s.label or path.stem
    t0 = time.perf_counter()
    gen = runner.load(path, device, s.context)
    load_s = time.perf_counter() - t0
    prompt = make_prompt(gen.tokenizer, s.prompt_tokens)

    # Warm-up: compiles the prefill and decode kernels and captures their graphs (the runtime's TinyJits capture
    # on the first call; tinygrad's default would be the second), so the measured runs only replay. Two warm-up
    # generations, because prefill runs once per generation, leave it replaying under either rule.
    warm_timer, _, _ = timed_generation(runner, gen, prompt, min(s.gen_tokens, 4) + 1)
    timed_generation(runner, gen, prompt, 2)
    timers, results, pieces = [], [], []
    with EnergyMeter() as meter:
        for i in range(s.runs):
            timer, result, n = timed_generation(runner, gen, prompt, s.gen_tokens, track,
                                                f"bench run {i + 1}/{s.runs}")
            timers.append(timer)
            results.append(result)
            pieces.append(n)
    peak_rss = peak_rss_bytes()
    device_now = tinygrad_memory_bytes() or {}

    latencies = [t.token_latencies_ms for t in timers]
    flat = [x for run in latencies for x in run]
    stats = latency_stats(flat)
    ttfts = sorted(t.ttft_s for t in timers if t.ttft_s is not None)
    ttft = ttfts[len(ttfts) // 2] if ttfts else None
    decode_rates = [t.decode_tokens_per_s for t in timers if t.decode_tokens_per_s]
    decode = sum(decode_rates) / len(decode_rates) if decode_rates else None
    prompt_tokens = results[0].prompt_tokens
    completion = [r.completion_tokens for r in results]
    # Bytes one decode step reads, at the run's average position; times tokens/s is the bandwidth decode used.
    mean_pos = prompt_tokens + sum(completion) / len(completion) / 2
    per_token = decode_bytes_per_token(facts, facts.device_weights_bytes, int(mean_pos))
    achieved = per_token * decode if decode else None
    generated = sum(completion)

    cold = warm = None
    if s.compile_times:
        with tempfile.TemporaryDirectory(prefix="edgegen-cold-cache-") as tmp:
            cold = measure_startup(path, device, s.prompt_tokens, s.context, tmp)
        warm = measure_startup(path, device, s.prompt_tokens, s.context, None)
    not_measured = "not measured (--no-compile-times)"
    return {
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "label": label, "model": str(path), "model_bytes": path.stat().st_size, "device": device,
        "board": board.name, "board_bandwidth_bytes_per_s": board.bandwidth_bytes_per_s,
        "board_bandwidth_source": board.bandwidth_source,
        "prompt_tokens": prompt_tokens, "gen_tokens": s.gen_tokens, "runs": s.runs, "context": s.context,
        "completion_tokens": completion, "finish_reasons": [r.finish_reason for r in results],
        "latency_unit": "token" if pieces == completion else "streamed text piece (some tokens were held back)",
        "load_s": load_s, "warmup_ttft_s": warm_timer.ttft_s,
        "ttft_s": ttft, "prefill_tok_s": prompt_tokens / ttft if ttft else None,
        "decode_tok_s": decode, "runtime_decode_tok_s": [r.decode_tokens_per_s for r in results],
        "latency_p50_ms": stats["p50_ms"], "latency_p99_ms": stats["p99_ms"], "latency_mean_ms": stats["mean_ms"],
        "latency_max_ms": stats["max_ms"], "token_latencies_ms": latencies,
        "peak_rss_bytes": peak_rss,
        "peak_device_bytes": max([t.peak_device_bytes for t in [warm_timer, *timers]] + [sum(device_now.values())]),
        "device_memory_bytes": device_now,
        "compile_cold_s": cold["first_token_s"] if cold else not_measured,
        "compile_warm_s": warm["first_token_s"] if warm else not_measured,
        "kernel_compile_s": cold["first_token_s"] - warm["first_token_s"] if cold and warm else not_measured,
        "startup_cold": cold or not_measured, "startup_warm": warm or not_measured,
        "decode_bytes_per_token": per_token, "achieved_bandwidth_bytes_per_s": achieved,
        "bandwidth_share": achieved / board.bandwidth_bytes_per_s if achieved else None,
        "energy_source": meter.source,
        "energy_j": meter.joules if meter.available else NOT_AVAILABLE,
        "joules_per_token": meter.joules / generated if meter.available and meter.joules and generated else None,
    }


def write_outputs(report: dict, results: Path, plots: bool) -> dict[str, str]:
    """bench-<label>.json, history.csv (appended), latency-<label>.png and comparison.png under `results`."""
    from edgegen.device import report as rep

    results.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in report["label"])
    files = {"json": results / f"bench-{safe}.json", "csv": results / "history.csv"}
    files["json"].write_text(json.dumps(report, indent=2) + "\n")
    rep.append_csv(report, files["csv"])
    if plots:
        files["latency_png"] = results / f"latency-{safe}.png"
        files["comparison_png"] = results / "comparison.png"
        rep.plot_latency(report, files["latency_png"])
        rep.plot_comparison(rep.read_history(files["csv"]), files["comparison_png"])
    return {k: str(v) for k, v in files.items()}


def plotting_available() -> bool:
    """Whether matplotlib (the 'bench' extra) is installed: a lean board install skips the plots, not the bench."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True

