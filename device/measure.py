"""Measurement helpers: a token timer, latency statistics, peak RSS and tinygrad's device-memory counters.

Pure library: nothing here loads a model. Wall time is `time.perf_counter`; tinygrad's CPU device runs
asynchronously, so a caller marks a token only once its id is on the host (the runtime's stream does that).
"""
from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import psutil


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation, numpy's default); None for no values."""
    return float(np.percentile(values, q)) if values else None


def peak_rss_bytes() -> int:
    """This process's peak resident set since it started: VmHWM on Linux, getrusage elsewhere.

    Not getrusage on Linux: its ru_maxrss survives execve, so a child forked from a large parent reports at least
    the parent's size (start-up probes forked from a bench process all reported the bench's size:
    docs/MEASUREMENTS.md).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # the file says kB and means KiB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


def current_rss_bytes() -> int:
    """This process's resident set now."""
    return int(psutil.Process().memory_info().rss)


def tinygrad_memory_bytes() -> dict[str, int] | None:
    """Bytes tinygrad's allocators hold now, per device ({'CPU': ...}); None if tinygrad is not loaded.

    Read through runtime.tinygrad_seam.device_memory_bytes, which never imports tinygrad itself, so a caller that
    did not use it pays nothing.
    """
    from edgegen.runtime.tinygrad_seam import device_memory_bytes

    return device_memory_bytes()


@dataclass
class TokenTimer:
    """Times one generation: start(), then mark() as each token arrives.

    >>> t = TokenTimer(); t.start(); t.mark(); t.mark(); t.ttft_s > 0 and len(t.token_latencies_ms) == 1
    True
    """

    start_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)
    peak_device_bytes: int = 0  # largest tinygrad allocation total seen at any mark

    def start(self) -> None:
        self.start_s = time.perf_counter()
        self.token_times_s.clear()
        self._sample_device_memory()

    def mark(self) -> None:
        assert self.start_s is not None, "mark() before start()"
        self.token_times_s.append(time.perf_counter())
        self._sample_device_memory()

    def _sample_device_memory(self) -> None:
        used = tinygrad_memory_bytes()
        if used:
            self.peak_device_bytes = max(self.peak_device_bytes, sum(used.values()))

    @property
    def ttft_s(self) -> float | None:
        """Time to first token: prompt in, first token out (prefill plus one sampling step)."""
        return self.token_times_s[0] - self.start_s if self.token_times_s and self.start_s is not None else None

    @property
    def token_latencies_ms(self) -> list[float]:
        """Gap before each token after the first: the per-token decode latency."""
        times = self.token_times_s
        return [(b - a) * 1000 for a, b in pairwise(times)]

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens after the first over the time they took."""
        if len(self.token_times_s) < 2:
            return None
        return (len(self.token_times_s) - 1) / (self.token_times_s[-1] - self.token_times_s[0])


def latency_stats(latencies_ms: list[float]) -> dict[str, float | None]:
    """p50, p99, mean and max of per-token latencies."""
    return {
        "p50_ms": percentile(latencies_ms, 50), "p99_ms": percentile(latencies_ms, 99),
        "mean_ms": float(np.mean(latencies_ms)) if latencies_ms else None,
        "max_ms": max(latencies_ms) if latencies_ms else None,
    }
