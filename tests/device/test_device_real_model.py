"""On the real SmolLM2 files: the planner against measured peak RSS, and `edgegen bench` end to end.

Peak RSS is measured in fresh processes that load a model with the runtime and generate a few tokens, each in
both of the runtime's start paths: a first start (empty caches: repack the GGUF, capture the graphs, save them)
and a cached start (graphs from the JIT cache the first start wrote). For the Q4_1 file those processes are the
bench's own cold and warm start-up probes; for the w8 file (made by the quantize package) a plain script.
Everything starts at once from one module-scoped fixture so that kernel compilation overlaps.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from device_helpers import REPO, SMOLLM2_Q4_1

from edgegen.device.machine import host_profile
from edgegen.device.model_facts import read_model_facts
from edgegen.device.planner import kv_cache_bytes, plan_memory

pytestmark = pytest.mark.slow
MIB = 1024 * 1024
TOLERANCE = 0.20  # the bar: prediction within 20% of measured peak RSS
PROCESS_TIMEOUT_S = 1200

# Load with the runtime, generate a few tokens, report the process's peak RSS (VmHWM, see device.measure).
RSS_SCRIPT = """
import json, sys
from pathlib import Path
from edgegen.device.measure import peak_rss_bytes
from edgegen.runtime import SamplingParams, jit_cache
from edgegen.runtime.engine import TextGenerator
from edgegen.runtime.native.options import KernelOptions
key = jit_cache.cache_key(Path(sys.argv[1]), 'CPU', 1024, KernelOptions().describe('CPU'))
hit = (jit_cache.cache_dir() / f"{key}.pkl").is_file()
gen = TextGenerator.load(sys.argv[1])
result = gen.generate("Name three things a microcontroller is good at.", SamplingParams(max_tokens=8))
print(json.dumps({"peak_rss_bytes": peak_rss_bytes(),
                  "context": gen.config.max_context, "completion_tokens": result.completion_tokens,
                  "jit_cache_hit": hit}))
"""
# The JIT cache key hashes runtime/ and models/ sources: an edit there between two processes makes a miss.
STALE_CACHE = "expected a JIT cache hit: did runtime/ or models/ change while the test ran?"
BENCH_ARGS = ["--prompt-tokens", "16", "--gen-tokens", "8", "--runs", "2", "--json", "--no-progress"]


def _env(jit_cache: Path) -> dict[str, str]:
    # EDGEGEN_CACHE: runtime.jit_cache's folder, private to this test so that its state is known.
    return dict(os.environ, DEV="CPU", PYTHONPATH=str(REPO), EDGEGEN_CACHE=str(jit_cache))


def _popen(cmd: list[str], jit_cache: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=_env(jit_cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _json_result(proc: subprocess.Popen, what: str) -> dict:
    out, err = proc.communicate(timeout=PROCESS_TIMEOUT_S)
    assert proc.returncode == 0, f"{what} failed:\n{err[-3000:]}"
    return json.loads(out[out.index("{"):])


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("real")
    bench = _popen([sys.executable, "-m", "edgegen.cli", "bench", str(SMOLLM2_Q4_1), "--results", str(tmp / "results"),
                    *BENCH_ARGS], tmp / "bench-cache")
    # The w8 file comes from the quantize package: the same model with every matrix at Q8_0.
    w8 = tmp / "smollm2-w8.gguf"
    quantize = subprocess.run([sys.executable, "-m", "edgegen.cli", "quantize", str(SMOLLM2_Q4_1), "--recipe", "w8",
                               "-o", str(w8), "--no-progress"], cwd=REPO, env=_env(tmp / "unused"),
                              capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S, check=False)
    assert quantize.returncode == 0, quantize.stderr[-3000:]
    cmd = [sys.executable, "-c", RSS_SCRIPT, str(w8)]
    w8_first = _json_result(_popen(cmd, tmp / "w8-cache"), "w8 first start")
    w8_cached = _json_result(_popen(cmd, tmp / "w8-cache"), "w8 cached start")
    return {"w8_path": w8, "w8_first": w8_first, "w8_cached": w8_cached, "bench": _json_result(bench, "edgegen bench")}


def _prediction_error(path: Path, peak_rss: int, context: int, start: str) -> float:
    """Relative error of the planner's peak-RSS prediction for `start` ("first" or "cached")."""
    plan = plan_memory(read_model_facts(path), host_profile(bandwidth_bytes_per_s=10e9), context)
    predicted = plan.first_start_bytes if start == "first" else plan.cached_start_bytes
    error = predicted / peak_rss - 1
    print(f"{path.name} {start} start: predicted {predicted / MIB:.0f} MiB, measured {peak_rss / MIB:.0f} MiB "
          f"({100 * error:+.1f}%)")
    return error


def test_planner_predicts_q4_1_peak_rss(measured):
    cold, warm = measured["bench"]["startup_cold"], measured["bench"]["startup_warm"]
    assert cold["completion_tokens"] > 0 and warm["completion_tokens"] > 0
    assert not cold["jit_cache_hit"] and warm["jit_cache_hit"], STALE_CACHE
    assert abs(_prediction_error(SMOLLM2_Q4_1, cold["peak_rss_bytes"], 1024, "first")) < TOLERANCE
    assert abs(_prediction_error(SMOLLM2_Q4_1, warm["peak_rss_bytes"], 1024, "cached")) < TOLERANCE


def test_planner_predicts_w8_peak_rss(measured):
    first, cached = measured["w8_first"], measured["w8_cached"]
    assert first["completion_tokens"] > 0 and first["context"] == 1024  # the runtime's default context
    assert not first["jit_cache_hit"] and cached["jit_cache_hit"], STALE_CACHE
    assert abs(_prediction_error(measured["w8_path"], first["peak_rss_bytes"], 1024, "first")) < TOLERANCE
    assert abs(_prediction_error(measured["w8_path"], cached["peak_rss_bytes"], 1024, "cached")) < TOLERANCE


def test_larger_weights_cost_resident_memory(measured):
    # w8's weights are 46 MB larger than Q4_1's, and they are resident: a first start needs more memory.
    extra = measured["w8_path"].stat().st_size - SMOLLM2_Q4_1.stat().st_size
    q4_first = measured["bench"]["startup_cold"]["peak_rss_bytes"]
    assert measured["w8_first"]["peak_rss_bytes"] - q4_first > extra / 2
    # A cached start skips the repacking and the map: it needs less than a first start.
    assert measured["w8_cached"]["peak_rss_bytes"] < measured["w8_first"]["peak_rss_bytes"]


BENCH_FIELDS = (
    "timestamp", "label", "model", "model_bytes", "device", "board", "board_bandwidth_bytes_per_s",
    "board_bandwidth_source", "prompt_tokens", "gen_tokens", "runs", "context", "completion_tokens",
    "finish_reasons", "latency_unit", "load_s", "warmup_ttft_s", "ttft_s", "prefill_tok_s", "decode_tok_s",
    "runtime_decode_tok_s", "latency_p50_ms", "latency_p99_ms", "latency_mean_ms", "latency_max_ms",
    "token_latencies_ms", "peak_rss_bytes", "peak_device_bytes", "device_memory_bytes", "compile_cold_s",
    "compile_warm_s", "kernel_compile_s", "startup_cold", "startup_warm", "decode_bytes_per_token",
    "achieved_bandwidth_bytes_per_s", "bandwidth_share", "energy_source", "energy_j", "joules_per_token", "files",
)


def test_bench_json_has_every_field(measured):
    r = measured["bench"]
    assert set(BENCH_FIELDS) <= set(r), set(BENCH_FIELDS) - set(r)
    assert r["device"] == "CPU" and r["board"] == "host" and r["runs"] == 2 and r["context"] == 1024
    assert r["prompt_tokens"] == 16 and len(r["completion_tokens"]) == 2


def test_bench_timings_are_sane_and_consistent(measured):
    r = measured["bench"]
    assert all(n >= 2 for n in r["completion_tokens"])
    lat = r["token_latencies_ms"]
    if r["latency_unit"] == "token":
        assert [len(run) for run in lat] == [n - 1 for n in r["completion_tokens"]]
    assert 0 < r["ttft_s"] < r["warmup_ttft_s"] + 60  # the warm-up paid the compilation
    assert r["prefill_tok_s"] == pytest.approx(r["prompt_tokens"] / r["ttft_s"])
    assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"] <= r["latency_max_ms"] < 60_000
    # Decode rate and latencies are two views of the same clock readings.
    mean_rate = sum(r["runtime_decode_tok_s"]) / len(r["runtime_decode_tok_s"])
    assert r["decode_tok_s"] == pytest.approx(mean_rate, rel=0.25)
    assert 0.05 < r["decode_tok_s"] < 1000
    for key in ("startup_cold", "startup_warm"):
        probe = r[key]
        assert 0 < probe["load_s"] < probe["first_token_s"] <= probe["first_generation_s"] < probe["process_s"]
    assert r["compile_cold_s"] == r["startup_cold"]["first_token_s"]
    assert r["kernel_compile_s"] == pytest.approx(r["compile_cold_s"] - r["compile_warm_s"])


def test_bench_memory_figures(measured):
    r = measured["bench"]
    facts = read_model_facts(SMOLLM2_Q4_1)
    # The packed weights and the KV cache live in tinygrad CPU buffers, which are part of the process's RSS.
    assert facts.weights_bytes + kv_cache_bytes(facts, 1024) <= r["peak_device_bytes"] < r["peak_rss_bytes"]
    assert r["peak_device_bytes"] < facts.weights_bytes + kv_cache_bytes(facts, 1024) + 256 * MIB
    # The bench process is one more first start (its JIT cache folder starts empty): the planner covers it too, so
    # nothing of the harness (the host bandwidth measurement's arrays, plots) leaks into the figure.
    assert abs(_prediction_error(SMOLLM2_Q4_1, r["peak_rss_bytes"], 1024, "first")) < TOLERANCE
    assert r["device_memory_bytes"]["CPU"] >= facts.weights_bytes


def test_bench_bandwidth_share(measured):
    r = measured["bench"]
    facts = read_model_facts(SMOLLM2_Q4_1)
    # One decode step reads every packed weight (the tied embedding is the output head) plus the KV cache so far.
    assert facts.weights_bytes < r["decode_bytes_per_token"] < facts.weights_bytes + kv_cache_bytes(facts, 24) + 1
    assert r["achieved_bandwidth_bytes_per_s"] == pytest.approx(r["decode_bytes_per_token"] * r["decode_tok_s"])
    assert r["bandwidth_share"] == pytest.approx(r["achieved_bandwidth_bytes_per_s"] / r["board_bandwidth_bytes_per_s"])
    assert 0 < r["bandwidth_share"] < 1
    assert "measured on this host" in r["board_bandwidth_source"]


def test_bench_energy_is_not_guessed(measured):
    r = measured["bench"]
    if any(Path("/sys/class/powercap").glob("*/energy_uj")):
        assert r["energy_j"] > 0 and r["joules_per_token"] > 0
    else:
        assert r["energy_source"] == r["energy_j"] == "not available" and r["joules_per_token"] is None


def test_bench_writes_json_csv_and_plots(measured):
    files = {k: Path(v) for k, v in measured["bench"]["files"].items()}
    assert json.loads(files["json"].read_text())["decode_tok_s"] == measured["bench"]["decode_tok_s"]
    rows = files["csv"].read_text().strip().splitlines()
    assert len(rows) == 2 and rows[0].startswith("timestamp,label,model")
    for key in ("latency_png", "comparison_png"):
        assert files[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
