"""On the real SmolLM2 files: the planner against measured peak RSS, and `edgegen bench` end to end.

One module-scoped fixture starts every model process at once (the bench with its cold- and warm-cache start-up
probes, and a plain load-and-generate process per file), so their kernel compilation overlaps: each costs about a
minute of CPU on this 2-core machine.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SMOLLM2_Q4_1

from device.machine import host_profile
from device.model_facts import read_model_facts
from device.planner import kv_cache_bytes, plan_memory

pytestmark = pytest.mark.slow
MIB = 1024 * 1024
TOLERANCE = 0.20  # the bar: prediction within 20% of measured peak RSS
PROCESS_TIMEOUT_S = 1200

# Load with the runtime, generate a few tokens, report the process's peak RSS (getrusage: KiB on Linux).
RSS_SCRIPT = """
import json, resource, sys
from runtime import SamplingParams
from runtime.engine import TextGenerator
gen = TextGenerator.load(sys.argv[1])
result = gen.generate("Name three things a microcontroller is good at.", SamplingParams(max_tokens=8))
print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "context": gen.config.max_context, "completion_tokens": result.completion_tokens}))
"""
BENCH_ARGS = ["--prompt-tokens", "16", "--gen-tokens", "8", "--runs", "2", "--json", "--no-progress"]


def _env() -> dict[str, str]:
    import os

    return dict(os.environ, DEV="CPU", PYTHONPATH=str(REPO))


def _popen(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _json_result(proc: subprocess.Popen, what: str) -> dict:
    out, err = proc.communicate(timeout=PROCESS_TIMEOUT_S)
    assert proc.returncode == 0, f"{what} failed:\n{err[-3000:]}"
    return json.loads(out[out.index("{"):])


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("real")
    results = tmp / "results"
    bench = _popen([sys.executable, "-m", "edgegen_cli", "bench", str(SMOLLM2_Q4_1), "--results", str(results),
                    *BENCH_ARGS])
    rss_q4 = _popen([sys.executable, "-c", RSS_SCRIPT, str(SMOLLM2_Q4_1)])
    # The w8 file comes from the quantize package: the same model with every matrix at Q8_0.
    w8 = tmp / "smollm2-w8.gguf"
    quantize = subprocess.run([sys.executable, "-m", "edgegen_cli", "quantize", str(SMOLLM2_Q4_1), "--recipe", "w8",
                               "-o", str(w8), "--no-progress"], cwd=REPO, env=_env(), capture_output=True, text=True,
                              timeout=PROCESS_TIMEOUT_S, check=False)
    assert quantize.returncode == 0, quantize.stderr[-3000:]
    rss_w8 = _popen([sys.executable, "-c", RSS_SCRIPT, str(w8)])
    start = time.perf_counter()
    out = {
        "w8_path": w8, "results": results,
        "rss_q4": _json_result(rss_q4, "Q4_1 RSS measurement"),
        "rss_w8": _json_result(rss_w8, "w8 RSS measurement"),
        "bench": _json_result(bench, "edgegen bench"),
    }
    out["wait_s"] = time.perf_counter() - start
    return out


def _check_prediction(path: Path, peak_rss: int, context: int) -> float:
    facts = read_model_facts(path)
    plan = plan_memory(facts, host_profile(bandwidth_bytes_per_s=10e9), context, file_bytes=path.stat().st_size)
    error = plan.total_bytes / peak_rss - 1
    print(f"{path.name}: predicted {plan.total_bytes / MIB:.0f} MiB, measured {peak_rss / MIB:.0f} MiB "
          f"({100 * error:+.1f}%)")
    return error


def test_planner_predicts_q4_1_peak_rss(measured):
    m = measured["rss_q4"]
    assert m["completion_tokens"] > 0 and m["context"] == 1024  # the runtime's default context
    assert abs(_check_prediction(SMOLLM2_Q4_1, m["peak_rss_bytes"], m["context"])) < TOLERANCE


def test_planner_predicts_w8_peak_rss(measured):
    m = measured["rss_w8"]
    assert m["completion_tokens"] > 0
    assert abs(_check_prediction(measured["w8_path"], m["peak_rss_bytes"], m["context"])) < TOLERANCE
    # The w8 file is larger, and the extra bytes are resident (packed copy and mapped file): RSS grows with it.
    extra = measured["w8_path"].stat().st_size - SMOLLM2_Q4_1.stat().st_size
    assert m["peak_rss_bytes"] - measured["rss_q4"]["peak_rss_bytes"] > extra


def test_planner_predicts_the_bench_start_up_processes(measured):
    # Two more fresh processes, one compiling every kernel from an empty cache: the prediction holds for both.
    for key in ("startup_cold", "startup_warm"):
        probe = measured["bench"][key]
        assert abs(_check_prediction(SMOLLM2_Q4_1, probe["peak_rss_bytes"], 1024)) < TOLERANCE


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
    assert 200 * MIB < r["peak_rss_bytes"] < 4096 * MIB
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
