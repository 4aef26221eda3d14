"""One prefill graph over a symbolic token count (tinygrad's apps/llm.py way) against edgegen's bucketed prefill
graphs (runtime.graphs: one graph per padded length in PREFILL_BUCKETS), on the same model in the same process.

Both run tinygrad's generated kernels (`--kernels tinygrad`): the hand-written CPU kernels are C compiled per row
count, so a symbolic length would need new kernels before it could be compared there. For each way: the time of the
first calls of four prompt lengths (compiling and capturing: TinyJit captures a graph on its second call), then the
median of three calls per length in steady state. The verdict the runtime follows is in docs/MEASUREMENTS.md.

    .venv/bin/python benchmarks/bench_prefill_shapes.py            # SmolLM2, a few minutes on 2 cores
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DEV", "CPU")
RESULTS = ROOT / "benchmarks" / "results" / "prefill_shapes.json"
FIRST_LENGTHS = (20, 60, 33, 9)  # buckets 32, 64, 64, 16
STEADY_LENGTHS = (9, 20, 33, 60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="GGUF file (default: the shipped SmolLM2)")
    parser.add_argument("--runs", type=int, default=3, help="steady-state calls per length (median)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    a = parser.parse_args()
    from tinygrad import Tensor, TinyJit, UOp

    from edgegen.runtime.artifact.constants import PREFILL_BUCKETS
    from edgegen.runtime.engine import TextGenerator
    from edgegen.runtime.native.options import KernelOptions

    gen = TextGenerator.load(a.model, max_context=256, jit_cache=False, kernels=KernelOptions("tinygrad", 1))
    model, dim, longest = gen.graphs.model, gen.config.dim, max(STEADY_LENGTHS)
    count, last = UOp.variable("tokens", 1, longest), UOp.variable("last", 0, longest - 1)
    padded = Tensor.zeros(1, longest, dim, device=gen.device).contiguous().realize()
    jit = TinyJit(lambda x, t, at: model(x[:, 0:t], 0, logits_at=at).realize())

    def symbolic(ids: list[int]) -> np.ndarray:
        emb = np.zeros((1, longest, dim), np.float32)
        emb[0, :len(ids)] = gen.graphs.embed(ids)
        padded.assign(Tensor(emb, device=gen.device)).realize()
        return jit(padded, count.bind(len(ids)), last.bind(len(ids) - 1)).numpy().reshape(-1)

    rng = np.random.default_rng(0)
    results: dict = {"model": str(gen.path.name), "machine": platform.machine(),
                     "prefill_buckets": list(PREFILL_BUCKETS)}
    outputs: dict[str, list[np.ndarray]] = {}
    for way, run in (("symbolic", symbolic), ("buckets", gen.graphs.prefill)):
        firsts, steady = [], {}
        for n in FIRST_LENGTHS:
            ids = [int(i) for i in rng.integers(0, gen.config.vocab_size, n)]
            started = time.perf_counter()
            run(ids)
            firsts.append(round(time.perf_counter() - started, 2))
        for n in STEADY_LENGTHS:
            times = []
            for _ in range(a.runs):
                ids = [int(i) for i in np.random.default_rng(n).integers(0, gen.config.vocab_size, n)]
                started = time.perf_counter()
                out = run(ids)
                times.append(time.perf_counter() - started)
            outputs.setdefault(way, []).append(out)
            steady[n] = round(statistics.median(times), 4)
        results[way] = {"first_calls_s": dict(zip(map(str, FIRST_LENGTHS), firsts)), "steady_median_s": steady}
        print(way, results[way], flush=True)
    results["steady_ratio_symbolic_over_buckets"] = {
        n: round(results["symbolic"]["steady_median_s"][n] / results["buckets"]["steady_median_s"][n], 2)
        for n in STEADY_LENGTHS}
    results["same_argmax"] = all(int(s.argmax()) == int(b.argmax())
                                 for s, b in zip(outputs["symbolic"], outputs["buckets"]))
    a.output.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results["steady_ratio_symbolic_over_buckets"]), "same argmax:", results["same_argmax"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
