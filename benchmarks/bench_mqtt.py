"""What MQTT costs: time to first token and total over MQTT vs calling the runtime directly (real SmolLM2 model),
QoS 1 round trip p50/p99 for a tiny request, and a 3-device pool's throughput. Prints a table, writes JSON.

    .venv/bin/python benchmarks/bench_mqtt.py                  # everything (the model part takes minutes)
    .venv/bin/python benchmarks/bench_mqtt.py --skip-model     # transport only, seconds

Devices run in their own processes, as on a network (in one process the client's and the device's threads would
queue for the same GIL). Transport numbers use an echo engine (answers at once, or after --work-ms), so they
measure the broker, paho and the bridge, not the model. A Mosquitto with the shipped settings is started for the run.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from local_broker import MOSQUITTO, LocalBroker, die_with_parent

from edgegen.firmware_bridge.client import Client
from edgegen.firmware_bridge.connection import BrokerOptions
from edgegen.firmware_bridge.engines import TextOutcome
from edgegen.firmware_bridge.schema import TextRequest
from edgegen.firmware_bridge.service import DeviceService, ServiceConfig

RESULTS = REPO / "benchmarks" / "results" / "mqtt.json"
PROMPT = "Name three things a microcontroller is good at."
SWITCH_INTERVAL_S = 0.001  # cli/serve.py


class EchoEngine:
    """Answers with the prompt's words after `work_s` of pretend compute: isolates the transport's cost."""

    def __init__(self, work_s: float = 0.0):
        self.work_s = work_s

    def check(self, request: TextRequest) -> None:
        pass

    def generate(self, request: TextRequest, cancel: threading.Event, emit: Callable[[str], None]) -> TextOutcome:
        if self.work_s:
            cancel.wait(self.work_s)
        words = (request.prompt or "").split()[: request.max_tokens]
        for w in words:
            emit(w + " ")
        return TextOutcome(" ".join(words) + " ", "length", len(words), len(words), 0.0)


def serve_worker(args: argparse.Namespace) -> int:
    """--worker mode: one device in this process until stdin closes; the echo engine, or the real model."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # as `edgegen serve` does
    if args.model:
        from edgegen.firmware_bridge.engines import RuntimeTextEngine

        engine = RuntimeTextEngine.load(args.model)
        request = TextRequest(id="warm", prompt=PROMPT, max_tokens=args.max_tokens)
        for _ in range(2):  # compile and capture the prefill bucket and decode graphs the benchmark prompt uses
            engine.generate(request, threading.Event(), lambda _: None)
    else:
        engine = EchoEngine(args.work_ms / 1000)  # type: ignore[assignment]
    service = DeviceService(ServiceConfig(args.device_id, pool=args.pool, queue_size=100_000),
                            BrokerOptions("127.0.0.1", args.port), {"default": engine})
    service.start()
    if not service.wait_connected(10):
        return 1
    print("ready", flush=True)
    sys.stdin.read()
    service.stop()
    return 0


def start_devices(port: int, ids: list[str], pool: str | None, work_ms: float,
                  extra_args: tuple[str, ...] = ()) -> list[subprocess.Popen]:
    """Device processes (separate from the client, as on a real network), once each is connected and subscribed."""
    procs = []
    for device_id in ids:
        cmd = [sys.executable, __file__, "--worker", "--port", str(port), "--device-id", device_id,
               "--work-ms", str(work_ms), *extra_args] + (["--pool", pool] if pool else [])
        procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      preexec_fn=die_with_parent))
    for p in procs:
        if p.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
            raise RuntimeError("a device process did not start")
    return procs


def stop_devices(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.stdin.close()  # type: ignore[union-attr]
    for p in procs:
        p.wait(timeout=30)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def bench_round_trip(client: Client, port: int, n: int) -> dict:
    """QoS 1 request -> one chunk + final, one at a time: the latency a tiny request pays for MQTT."""
    procs = start_devices(port, ["rtt"], None, 0.0)
    try:
        times = []
        for i in range(n + 20):
            t0 = time.perf_counter()
            client.generate("ping", device="rtt", max_tokens=1).text()
            if i >= 20:  # the first requests warm up sockets and caches
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        stop_devices(procs)
    return {"requests": n, "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
            "mean_ms": statistics.fmean(times)}


def bench_pool(client: Client, port: int, n_devices: int, n: int, work_ms: float) -> dict:
    """n requests sent at once to a pool of n_devices; requests/s until the last final arrives."""
    pool = f"pool{n_devices}w{int(work_ms)}"
    procs = start_devices(port, [f"{pool}-d{i}" for i in range(n_devices)], pool, work_ms)
    try:
        t0 = time.perf_counter()
        streams = [client.generate(f"req {i} of the pool", pool=pool, max_tokens=4) for i in range(n)]
        served = [s.result["device"] for s in streams if s.text() is not None]  # type: ignore[index]
        elapsed = time.perf_counter() - t0
    finally:
        stop_devices(procs)
    return {"devices": n_devices, "requests": n, "work_ms": work_ms, "seconds": elapsed,
            "requests_per_s": n / elapsed, "per_device": {d: served.count(d) for d in sorted(set(served))}}


def bench_model(client: Client, port: int, runs: int, max_tokens: int) -> dict:
    """The same greedy request: direct calls in this process, then over MQTT to a device process."""
    from edgegen.firmware_bridge.engines import RuntimeTextEngine

    t0 = time.perf_counter()
    engine = RuntimeTextEngine.load("default")
    load_s = time.perf_counter() - t0
    request = TextRequest(id="bench", prompt=PROMPT, max_tokens=max_tokens)
    for _ in range(2):  # compile and capture the prefill bucket and decode graphs this prompt uses
        engine.generate(request, threading.Event(), lambda _: None)
    direct, mqtt, overhead = [], [], []
    for _ in range(runs):
        first: list[float] = []

        def note_first(_: str, first: list[float] = first) -> None:
            if not first:
                first.append(time.perf_counter())

        t0 = time.perf_counter()
        out = engine.generate(request, threading.Event(), note_first)
        direct.append({"ttft_ms": (first[0] - t0) * 1000, "total_ms": (time.perf_counter() - t0) * 1000})
    del engine
    procs = start_devices(port, ["bench-model"], None, 0.0, ("--model", "default", "--max-tokens", str(max_tokens)))
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            stream = client.generate(PROMPT, device="bench-model", max_tokens=max_tokens)
            t_first = None
            for _ in stream:
                t_first = t_first or time.perf_counter()
            total_ms = (time.perf_counter() - t0) * 1000
            assert stream.result is not None and stream.result["text"] == out.text, "MQTT answer differs"
            mqtt.append({"ttft_ms": ((t_first or time.perf_counter()) - t0) * 1000, "total_ms": total_ms,
                         "device_stats": stream.result["stats"]})
            # Same request: the client's time to first token minus the device's own (the engine call's) one.
            overhead.append(mqtt[-1]["ttft_ms"] - stream.result["stats"]["ttft_ms"])
    finally:
        stop_devices(procs)

    def median(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    return {"model": "default (SmolLM2-135M-Instruct Q4_1)", "load_s": load_s, "runs": runs, "max_tokens": max_tokens,
            "completion_tokens": out.completion_tokens, "direct": direct, "mqtt": mqtt,
            "direct_ttft_ms_median": median(direct, "ttft_ms"), "mqtt_ttft_ms_median": median(mqtt, "ttft_ms"),
            "direct_total_ms_median": median(direct, "total_ms"), "mqtt_total_ms_median": median(mqtt, "total_ms"),
            "mqtt_ttft_overhead_ms": overhead, "mqtt_ttft_overhead_ms_median": statistics.median(overhead)}


def print_table(report: dict) -> None:
    rows = []
    if "model" in report:
        m = report["model"]
        rows += [("time to first token, direct (median)", f"{m['direct_ttft_ms_median']:.1f} ms"),
                 ("time to first token, over MQTT (median)", f"{m['mqtt_ttft_ms_median']:.1f} ms"),
                 ("MQTT overhead on first token, same request (median)", f"{m['mqtt_ttft_overhead_ms_median']:.2f} ms"),
                 ("total, direct (median)", f"{m['direct_total_ms_median']:.1f} ms"),
                 ("total, over MQTT (median)", f"{m['mqtt_total_ms_median']:.1f} ms")]
    rt = report["round_trip"]
    rows += [(f"QoS 1 tiny request round trip p50 / p99 ({rt['requests']})",
              f"{rt['p50_ms']:.2f} / {rt['p99_ms']:.2f} ms")]
    for p in report["pools"]:
        rows.append((f"{p['devices']}-device pool, {p['work_ms']:g} ms work/request, {p['requests']} requests",
                     f"{p['requests_per_s']:.1f} req/s"))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-model", action="store_true", help="transport numbers only (no SmolLM2)")
    parser.add_argument("--runs", type=int, default=3, help="direct and MQTT runs of the model request (3)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rtt-requests", type=int, default=500)
    parser.add_argument("--pool-requests", type=int, default=300)
    parser.add_argument("--work-ms", type=float, default=50.0, help="pretend compute per pool request (50)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--device-id", help=argparse.SUPPRESS)
    parser.add_argument("--pool", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return serve_worker(args)
    with tempfile.TemporaryDirectory() as tmp:
        broker = LocalBroker(Path(tmp)).start()
        options = BrokerOptions("127.0.0.1", broker.port)
        report: dict = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                                    "cpus": __import__("os").cpu_count(),
                                    "load_avg_1m": __import__("os").getloadavg()[0]},
                        "broker": "mosquitto " + subprocess.run([MOSQUITTO, "-h"], capture_output=True,
                                                                text=True, check=False).stdout.split()[2]}
        try:
            with Client(options, timeout_s=1200) as client:
                report["round_trip"] = bench_round_trip(client, broker.port, args.rtt_requests)
                report["pools"] = [bench_pool(client, broker.port, n, args.pool_requests, work)
                                   for work in (0.0, args.work_ms) for n in (1, 3)]
                if not args.skip_model:
                    report["model"] = bench_model(client, broker.port, args.runs, args.max_tokens)
        finally:
            broker.stop()
    print_table(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
