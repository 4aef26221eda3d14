"""Each kernel of a direct CPU replay (runtime.cpu_replay) timed alone, summed by kernel name: the profile scripts'
shared loop (profile_decode.py, profile_diffusion.py)."""
from __future__ import annotations

import collections
import re
import time
from typing import Any


def kernel_times(replay: Any, values: dict[str, int], repeats: int) -> tuple[collections.Counter, collections.Counter]:
    """(nanoseconds per kernel name over all repeats, calls per name over all repeats), one thread, kernels called
    one by one from Python (~1-3 us of call overhead each that the threaded runner does not pay)."""
    total: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for _ in range(repeats):
        for call, prebuilt in replay.steps:
            args = prebuilt if call.static else call.arguments(values)
            t0 = time.perf_counter_ns()
            for arg in args:
                call.function(*arg)
            name = re.sub(r"\x1b\[[0-9;]*m", "", call.info.name)
            total[name] += time.perf_counter_ns() - t0
            count[name] += 1
    return total, count


def print_table(total: collections.Counter, count: collections.Counter, repeats: int, top: int) -> None:
    alone = sum(total.values()) / repeats / 1e3
    print(f"{'us/call':>9} {'share':>6} {'calls':>5}  kernel")
    for name, ns in total.most_common(top):
        us = ns / repeats / 1e3
        print(f"{us:9.1f} {100 * us / alone:5.1f}% {count[name] // repeats:5d}  {name}")
