"""Which kernels run a text model on the CPU, and on how many threads (`--kernels`, `--threads`)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from edgegen.runtime.errors import GenerationError

KERNEL_CHOICES = ("auto", "native", "tinygrad")
MAX_THREADS = 256


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, so `taskset -c 0 edgegen ...` means one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS)
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class KernelOptions:
    """kernels: "auto" (the default: the hand-written int8-dot kernels on the CPU backend, tinygrad's generated
    kernels on every other backend), "native" (the hand-written ones: an error on a backend other than the CPU),
    "tinygrad" (tinygrad's generated kernels everywhere, for comparison: they reproduce the float reference, where
    the hand-written ones do llama.cpp's arithmetic with 8-bit activations; docs/KERNELS.md).
    threads: threads that run a decode or prefill step on the CPU; None: every core the process may use."""

    kernels: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.kernels not in KERNEL_CHOICES:
            raise GenerationError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got {self.kernels!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or not 1 <= self.threads <= MAX_THREADS):
            raise GenerationError(f"threads must be an integer from 1 to {MAX_THREADS}, got {self.threads!r}")

    def plan(self, device: str) -> KernelPlan:
        """These options resolved for one tinygrad device, once; GenerationError for native off the CPU."""
        cpu = device.split(":")[0] == "CPU"
        if self.kernels == "native" and not cpu:
            raise GenerationError(f"--kernels native runs on the CPU backend only, not {device}")
        return KernelPlan(cpu and self.kernels in ("native", "auto"), self.threads or available_cores())

    def describe(self, device: str) -> str:
        return self.plan(device).describe()


@dataclass(frozen=True)
class KernelPlan:
    """Which kernels run a text model and on how many threads, decided once (KernelOptions.plan) and passed down
    whole: to the graphs, the loader, every layer and the direct replays.

    native: the hand-written kernels run the packed layers and attention (runtime.native.linear.NativeLinear).
    threads: threads that run a step; each hand-written kernel splits its output rows into that many partitions."""

    native: bool = False
    threads: int = 1

    @property
    def parts(self) -> int:
        """Row partitions of each hand-written kernel (core_id 0..parts-1)."""
        return self.threads

    def describe(self) -> str:
        """The plan as the JIT cache key and benchmark records name it: "nativex2", "tinygradx1"."""
        return f"{'native' if self.native else 'tinygrad'}x{self.threads if self.native else 1}"
