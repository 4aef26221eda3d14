"""The HTTP API's cost: time to first token and decode speed of one request through `edgegen serve --http` and
through `edgegen gateway`, as ratios to the same request over MQTT directly; requests/s through the gateway with 8
concurrent clients; and decode speed with a JSON schema (constrained decoding) against without. SmolLM2, greedy,
one device (`--parallel 4`) behind a real Mosquitto; medians over --runs, the ways interleaved within each run.

    .venv/bin/python benchmarks/bench_http.py          # a few minutes on 2 cores
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import openai
from local_broker import LocalBroker, die_with_parent

from edgegen.firmware_bridge import topics
from edgegen.firmware_bridge.client import Client
from edgegen.firmware_bridge.connection import BrokerOptions
from edgegen.firmware_bridge.schema import TextRequest, parse_sampling

RESULTS = REPO / "benchmarks" / "results" / "http.json"
PROMPT = "Name three things a microcontroller is good at."
# long enough an answer (eight items) that decode speed is measured over as many tokens as the plain answer's
SCHEMA = {"type": "object", "properties": {"things": {"type": "array", "items": {"type": "string", "maxLength": 40},
                                                      "minItems": 8, "maxItems": 8}},
          "required": ["things"], "additionalProperties": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(pieces: object, start: float) -> tuple[float, float, int]:
    """(seconds from `start`, before the request was sent, to the first piece; seconds after it; pieces) of an
    iterator of text pieces."""
    first, n = None, 0
    for piece in pieces:  # type: ignore[attr-defined]
        if piece:
            first = first or time.perf_counter()
            n += 1
    end = time.perf_counter()
    return (first or end) - start, end - (first or end), n


def mqtt_run(client: Client, tokens: int, schema: dict | None = None) -> dict:
    """One request over MQTT directly (with a json_schema when given)."""
    request = TextRequest(f"bench-{time.time_ns()}", prompt=PROMPT, max_tokens=tokens,
                          sampling=parse_sampling({"temperature": 0.0}, "bench"), json_schema=schema)
    start = time.perf_counter()
    stream = client.publish_request(topics.device_request("bench", "text"), request)
    ttft, rest, _ = timed(stream, start)
    stats = stream.result["stats"]
    # the device's own decode speed too: what constrained decoding costs, without the transport
    return {"ttft_s": ttft, "decode_tok_s": (stats["completion_tokens"] - 1) / rest,
            "device_decode_tok_s": stats["tokens_per_s"], "tokens": stats["completion_tokens"]}


def http_run(api: openai.OpenAI, tokens: int) -> dict:
    start = time.perf_counter()
    chunks = api.chat.completions.create(model="default", messages=[{"role": "user", "content": PROMPT}],
                                         max_tokens=tokens, temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    usage: list[int] = []

    def pieces():
        for c in chunks:
            if c.usage is not None:
                usage.append(c.usage.completion_tokens)
            for choice in c.choices:
                yield choice.delta.content or ""

    ttft, rest, _ = timed(pieces(), start)
    return {"ttft_s": ttft, "decode_tok_s": (usage[0] - 1) / rest}


def median_of(runs: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--output", type=Path, default=RESULTS)
    a = parser.parse_args()
    results: dict = {"machine": platform.machine(), "cores": os.cpu_count(), "tokens": a.tokens, "runs": a.runs}
    with tempfile.TemporaryDirectory() as tmp:
        broker = LocalBroker(Path(tmp) / "broker").start()
        http_port, gw_port = free_port(), free_port()
        serve = subprocess.Popen([sys.executable, "-m", "edgegen.cli", "serve", "--broker", f"127.0.0.1:{broker.port}",
                                  "--device-id", "bench", "--parallel", "4", "--http", f"127.0.0.1:{http_port}",
                                  "--state-dir", str(Path(tmp) / "state")], stdout=subprocess.PIPE, text=True,
                                 preexec_fn=die_with_parent)
        gateway = subprocess.Popen([sys.executable, "-m", "edgegen.cli", "gateway", "--broker",
                                    f"127.0.0.1:{broker.port}", "--listen", f"127.0.0.1:{gw_port}"],
                                   stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
        try:
            assert serve.stdout is not None and gateway.stdout is not None
            for proc in (serve, gateway):
                line = proc.stdout.readline() if proc.stdout else ""
                if not line.startswith("edgegen "):
                    raise SystemExit(f"did not start: {line!r}")
            device = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="-", timeout=600)
            fleet = openai.OpenAI(base_url=f"http://127.0.0.1:{gw_port}/v1", api_key="-", timeout=600)
            deadline = time.monotonic() + 30
            while not fleet.models.list().data and time.monotonic() < deadline:
                time.sleep(0.2)
            with Client(BrokerOptions("127.0.0.1", broker.port), client_id="bench-http") as client:
                client.timeout_s = 600
                ways = {"mqtt": lambda: mqtt_run(client, a.tokens), "http": lambda: http_run(device, a.tokens),
                        "gateway": lambda: http_run(fleet, a.tokens),
                        "mqtt_json_schema": lambda: mqtt_run(client, a.tokens, SCHEMA)}
                for run in ways.values():
                    run()  # warm: captures and compiles what each way needs
                samples: dict[str, list[dict]] = {way: [] for way in ways}
                for _ in range(a.runs):  # the ways interleaved, so that the machine's noise falls on all of them
                    for way, run in ways.items():
                        samples[way].append(run())
                for way in ways:
                    results[way] = median_of(samples[way])
                    print(way, results[way], flush=True)
            rates = []
            for _ in range(3):
                started = time.perf_counter()
                threads = [threading.Thread(target=lambda: fleet.chat.completions.create(
                    model="default", messages=[{"role": "user", "content": PROMPT}], max_tokens=16, temperature=0))
                    for _ in range(8)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                rates.append(8 / (time.perf_counter() - started))
            results["gateway_8_clients_requests_per_s"] = round(statistics.median(rates), 2)
        finally:
            for proc in (serve, gateway):
                proc.terminate()
                proc.wait(60)
            broker.stop()
    m = results["mqtt"]
    results["ratios"] = {
        **{f"{w}_ttft_vs_mqtt": round(results[w]["ttft_s"] / m["ttft_s"], 2) for w in ("http", "gateway")},
        **{f"{w}_decode_vs_mqtt": round(results[w]["decode_tok_s"] / m["decode_tok_s"], 2)
           for w in ("http", "gateway")},
        "json_schema_decode_vs_without": round(results["mqtt_json_schema"]["device_decode_tok_s"] /
                                               m["device_decode_tok_s"], 2)}
    print(json.dumps(results["ratios"], indent=1))
    print("gateway requests/s with 8 clients:", results["gateway_8_clients_requests_per_s"])
    a.output.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
