"""Several requests at once on one board: `edgegen serve --parallel 8` through a real Mosquitto, against llama.cpp
decoding the same number of sequences in one batch (llama-cpp-python's low-level batch API, one sequence id per
request, as its server does), on the same model and machine.

For 1, 2, 4 and 8 concurrent requests (distinct prompts, greedy, --tokens each), per round: aggregate tokens/s (all
generated tokens over the round's wall time, prompts included), each stream's decode tokens/s (after its first
token) and its latency (request sent to final answer); medians over --rounds rounds, p50/p99 over every request.
A request ends at --tokens or at an end-of-generation token, in both runtimes. llama.cpp gets the same prompt token
ids (the model's chat template, edgegen's tokenizer), all cores, its prompts prefilled in one batch, then one decode
call per step for all live sequences.

    .venv/bin/python benchmarks/bench_concurrency.py               # SmolLM2; needs the llamacpp extra for the peer
"""
from __future__ import annotations

import argparse
import json
import os
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

from local_broker import LocalBroker, die_with_parent

from edgegen.firmware_bridge.client import Client
from edgegen.firmware_bridge.connection import BrokerOptions

RESULTS = REPO / "benchmarks" / "results" / "concurrency.json"
PROMPTS = ["Name three things a microcontroller is good at.", "What is the capital of France?",
           "Write a haiku about the sea.", "Explain photosynthesis in one sentence.", "List three prime numbers.",
           "Translate 'good morning' into Spanish.", "Why is the sky blue?", "Give me a tip for learning to code."]
CONCURRENCY = (1, 2, 4, 8)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def timed_together(run: Callable[[int], None], n: int) -> float:
    """Seconds until run(0) .. run(n-1), each on a thread of its own and started together, have all returned."""
    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def edgegen_rounds(a: argparse.Namespace, port: int) -> dict:
    with Client(BrokerOptions("127.0.0.1", port), client_id="bench-concurrency") as client:
        client.timeout_s = 600
        out: dict = {}
        for n in CONCURRENCY:
            rounds, streams_tok_s, latencies = [], [], []
            for r in range(a.rounds + 1):  # the first round of each width captures its graph: not counted
                results: list[dict] = [{} for _ in range(n)]

                def one(i: int, results: list[dict] = results, r: int = r) -> None:
                    sent = time.perf_counter()
                    stream = client.generate(PROMPTS[(i + r) % len(PROMPTS)], device="bench", max_tokens=a.tokens,
                                             sampling={"temperature": 0.0})
                    first = None
                    for _ in stream:
                        first = first or time.perf_counter()
                    end = time.perf_counter()
                    tokens = stream.result["stats"]["completion_tokens"]
                    results[i] = {"tokens": tokens, "latency_s": end - sent,
                                  "decode_tok_s": (tokens - 1) / (end - first) if first and tokens > 1 else 0.0}

                wall = timed_together(one, n)
                if r:
                    rounds.append(sum(x["tokens"] for x in results) / wall)
                    streams_tok_s += [x["decode_tok_s"] for x in results]
                    latencies += [x["latency_s"] for x in results]
            out[str(n)] = {"aggregate_tok_s": round(statistics.median(rounds), 2),
                           "stream_decode_tok_s": round(statistics.median(streams_tok_s), 2),
                           "latency_p50_s": round(percentile(latencies, 0.5), 3),
                           "latency_p99_s": round(percentile(latencies, 0.99), 3)}
            print("edgegen", n, out[str(n)], flush=True)
        return out


def burst(port: int, clients: int = 3, per_client: int = 10, tokens: int = 16) -> dict:
    """The issue's burst: `clients` MQTT clients send `per_client` short requests each, all at once, to one device
    (default queue of 8): answered vs `busy`, requests/s and tokens/s over the burst, latency of the answered."""
    from edgegen.firmware_bridge.errors import RequestError

    outcomes: list[dict] = []
    lock = threading.Lock()

    def client_run(c: int) -> None:
        with Client(BrokerOptions("127.0.0.1", port), client_id=f"burst-{c}") as client:
            client.timeout_s = 600
            sent = time.perf_counter()
            streams = [client.generate(f"{PROMPTS[(c + i) % len(PROMPTS)]} ({c}.{i})", device="bench",
                                       max_tokens=tokens, sampling={"temperature": 0.0}) for i in range(per_client)]
            for stream in streams:
                try:
                    stream.text()
                    row = {"ok": True, "tokens": stream.result["stats"]["completion_tokens"],
                           "latency_s": time.perf_counter() - sent}
                except RequestError as e:
                    row = {"ok": False, "code": str(e.code)}
                with lock:
                    outcomes.append(row)

    wall = timed_together(client_run, clients)
    ok = [o for o in outcomes if o["ok"]]
    latencies = [o["latency_s"] for o in ok]
    return {"requests": len(outcomes), "answered": len(ok), "busy": sum(o.get("code") == "busy" for o in outcomes),
            "wall_s": round(wall, 2), "requests_per_s": round(len(ok) / wall, 2),
            "tokens_per_s": round(sum(o["tokens"] for o in ok) / wall, 2),
            "latency_p50_s": round(percentile(latencies, 0.5), 2) if ok else None,
            "latency_p99_s": round(percentile(latencies, 0.99), 2) if ok else None}


def llamacpp_rounds(a: argparse.Namespace, model: str) -> dict:
    import llama_cpp
    import numpy as np

    from edgegen.runtime.artifact.reader import open_model
    from edgegen.runtime.prompt import PromptEncoder
    from edgegen.runtime.tokenizer import load_tokenizer

    mf = open_model(model)
    prompts = PromptEncoder(mf, load_tokenizer(mf), 1024)
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    lm = llama_cpp.llama_model_load_from_file(model.encode(), mparams)
    vocab = llama_cpp.llama_model_get_vocab(lm)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    out: dict = {}
    for n in CONCURRENCY:
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx, cparams.n_seq_max, cparams.n_batch = 512 * n, n, 512 * n
        cparams.n_threads = cparams.n_threads_batch = a.threads
        ctx = llama_cpp.llama_init_from_model(lm, cparams)
        batch = llama_cpp.llama_batch_init(512 * n, 0, n)
        rounds, streams_tok_s = [], []
        for r in range(a.rounds + 1):
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            ids = [prompts.encode(PROMPTS[(i + r) % len(PROMPTS)]) for i in range(n)]
            started = time.perf_counter()
            batch.n_tokens = 0
            rows = []
            for s, seq in enumerate(ids):  # every prompt in one batch, each in its own sequence
                for pos, tok in enumerate(seq):
                    k = batch.n_tokens
                    batch.token[k], batch.pos[k], batch.n_seq_id[k] = tok, pos, 1
                    batch.seq_id[k][0], batch.logits[k] = s, pos == len(seq) - 1
                    batch.n_tokens += 1
                rows.append(batch.n_tokens - 1)
            assert llama_cpp.llama_decode(ctx, batch) == 0
            positions = [len(seq) for seq in ids]
            first = time.perf_counter()
            live = {s: rows[s] for s in range(n)}  # sequence -> its logits row in the last batch
            counts = [0] * n
            while live:
                tokens = {s: int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row),
                                                                 shape=(n_vocab,)))) for s, row in live.items()}
                for s, tok in tokens.items():  # a sequence ends at an end-of-generation token, as edgegen's do
                    if llama_cpp.llama_vocab_is_eog(vocab, tok):
                        del live[s]
                    else:
                        counts[s] += 1
                        if counts[s] == a.tokens:
                            del live[s]
                if not live:
                    break
                batch.n_tokens = 0
                for k, s in enumerate(live):  # one token per live sequence, one decode call for all
                    batch.token[k], batch.pos[k], batch.n_seq_id[k] = tokens[s], positions[s], 1
                    batch.seq_id[k][0], batch.logits[k] = s, True
                    positions[s] += 1
                    live[s] = k
                batch.n_tokens = len(live)
                assert llama_cpp.llama_decode(ctx, batch) == 0
            end = time.perf_counter()
            if r:
                rounds.append(sum(counts) / (end - started))
                streams_tok_s.append((max(counts) - 1) / (end - first))
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        out[str(n)] = {"aggregate_tok_s": round(statistics.median(rounds), 2),
                       "stream_decode_tok_s": round(statistics.median(streams_tok_s), 2)}
        print("llama.cpp", n, out[str(n)], flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--tokens", type=int, default=48, help="tokens per request (default 48)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-llamacpp", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    a = parser.parse_args()
    from edgegen.runtime.artifact.reader import open_model

    model = str(open_model(a.model).path)
    results: dict = {"model": Path(model).name, "machine": platform.machine(), "cores": os.cpu_count(),
                     "tokens_per_request": a.tokens, "rounds": a.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        broker = LocalBroker(Path(tmp) / "broker").start()
        serve = subprocess.Popen([sys.executable, "-m", "edgegen.cli", "serve", "--broker", f"127.0.0.1:{broker.port}",
                                  "--device-id", "bench", "--model", model, "--parallel", str(max(CONCURRENCY)),
                                  "--threads", str(a.threads), "--state-dir", str(Path(tmp) / "state")],
                                 stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
        try:
            assert serve.stdout is not None
            line = serve.stdout.readline()  # "edgegen serve: ..." once warmed up and connected
            if not line.startswith("edgegen serve:"):
                raise SystemExit(f"edgegen serve did not start: {line!r}")
            results["edgegen"] = edgegen_rounds(a, broker.port)
            results["burst_30_from_3_clients"] = burst(broker.port)
            print("burst", results["burst_30_from_3_clients"], flush=True)
        finally:
            serve.terminate()
            serve.wait(60)
            broker.stop()
    if not a.skip_llamacpp:
        quiet = os.open(os.devnull, os.O_WRONLY)
        saved = os.dup(2)
        os.dup2(quiet, 2)  # llama.cpp logs every tensor it loads to stderr
        try:
            results["llamacpp"] = llamacpp_rounds(a, model)
        finally:
            os.dup2(saved, 2)
        one = results["edgegen"]["1"]["aggregate_tok_s"]
        results["ratios"] = {n: {"aggregate_vs_edgegen_single": round(e["aggregate_tok_s"] / one, 2),
                                 "aggregate_vs_llamacpp": round(e["aggregate_tok_s"] /
                                                                results["llamacpp"][n]["aggregate_tok_s"], 2),
                                 "stream_vs_lone_stream": round(e["stream_decode_tok_s"] /
                                                                results["edgegen"]["1"]["stream_decode_tok_s"], 2)}
                             for n, e in results["edgegen"].items()}
        print(json.dumps(results["ratios"], indent=1))
    a.output.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
