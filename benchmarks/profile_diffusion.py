"""Where one U-Net call's time goes: each kernel of the captured graph of a batch bucket timed alone, by kernel name.

    .venv/bin/python benchmarks/profile_diffusion.py [--model mnist|mnist-latent|FILE] [--bucket 16] [--kind eps]

Calls the graph's compiled kernels one by one from Python on one thread (runtime.cpu_replay's single-thread path),
then the whole graph on the native runner's threads; the shares are what counts (docs/MEASUREMENTS.md).
"""
from __future__ import annotations

import argparse
import time

from kernel_times import kernel_times, print_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mnist")
    p.add_argument("--bucket", type=int, default=16)
    p.add_argument("--kind", default="eps", choices=("eps", "decode"))
    p.add_argument("--kernels", default="auto", choices=("auto", "native", "tinygrad"))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--top", type=int, default=20)
    a = p.parse_args(argv)

    import numpy as np

    from edgegen.runtime.diffusion import BATCH_BUCKETS, ImageGenerator
    from edgegen.runtime.native.options import KernelOptions

    if a.bucket not in BATCH_BUCKETS:
        raise SystemExit(f"--bucket must be one of {BATCH_BUCKETS}")
    gen = ImageGenerator.load(a.model, device="CPU", jit_cache=False, options=KernelOptions(a.kernels))
    replay = gen.replay(a.bucket, a.kind)
    if replay is None:
        raise SystemExit("this graph has no direct CPU replay (--kernels tinygrad): nothing to profile")
    whole = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        replay({})
        whole.append(time.perf_counter() - t0)
    total, count = kernel_times(replay, {}, a.repeats)
    alone = sum(total.values()) / a.repeats / 1e6
    print(f"{a.model} {a.kind} batch {a.bucket} ({a.kernels} kernels): {len(replay)} kernels; {alone:.2f} ms one by "
          f"one on one thread, {1e3 * float(np.median(whole)):.2f} ms (median) on the runner's threads")
    print_table(total, count, a.repeats, a.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
