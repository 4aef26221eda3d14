"""Where one decode step's time goes: each kernel of the captured decode graph timed alone, summed by kernel name.

    .venv/bin/python benchmarks/profile_decode.py [--model default] [--kernels native] [--pos 64] [--steps 20]
    .venv/bin/python benchmarks/profile_decode.py --prefill 64     # the 64-token prefill graph instead

Calls the graph's compiled kernels one by one from Python (runtime.cpu_replay's single-thread path), so the total
includes ~1-3 us of call overhead per kernel that the threaded runner does not pay; the shares are what counts.
"""
from __future__ import annotations

import argparse

from kernel_times import kernel_times, print_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--kernels", default="native", choices=("native", "tinygrad"))
    p.add_argument("--pos", type=int, default=64, help="decode position the attention kernels read up to")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--prefill", type=int, default=0, metavar="TOKENS",
                   help="profile the prefill graph of a prompt of this many tokens (its bucket) instead of decode")
    a = p.parse_args(argv)

    from edgegen.runtime.artifact.constants import PREFILL_BUCKETS
    from edgegen.runtime.engine import TextGenerator
    from edgegen.runtime.native.options import KernelOptions
    from edgegen.runtime.sampling import SamplingParams

    gen = TextGenerator.load(a.model, "CPU", jit_cache=False, kernels=KernelOptions(a.kernels, 1))
    stream = gen.stream_ids(gen.tokenizer.encode("The quick brown fox jumps over the lazy dog"),
                            SamplingParams(max_tokens=4, temperature=0.0), ignore_eos=True)
    for _ in stream:
        pass
    replay, step, values = gen.graphs.decode_replay, "decode", {"start_pos": a.pos}
    if a.prefill:
        gen.graphs.prefill(list(range(1000, 1000 + a.prefill)))
        bucket = next(b for b in PREFILL_BUCKETS if b >= a.prefill)
        replay, step, values = gen.graphs.prefill_replay(bucket), f"prefill {bucket}", {"last": a.prefill - 1}
    if replay is None:
        raise SystemExit("the decode graph has no direct replay on this backend: nothing to profile")
    total, count = kernel_times(replay, values, a.steps)
    step_us = sum(total.values()) / a.steps / 1e3
    where = f"decode at position {a.pos}" if step == "decode" else step
    print(f"{a.model} ({a.kernels} kernels), {where}: {len(replay.steps)} kernels, "
          f"{step_us / 1e3:.2f} ms per step (one thread, kernels called one by one)")
    print_table(total, count, a.steps, a.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
