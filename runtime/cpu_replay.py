"""Replay a captured TinyJit graph on tinygrad's CPU device by calling its compiled kernels directly.

tinygrad 0.14's JIT replay spends ~90 us of Python per kernel (pattern rewrites, buffer resolution, argument
conversion); SmolLM2's decode step has 392 kernels, so dispatch alone cost ~35 ms per token, more than a third
of the step (cProfile, this machine). The kernels of a captured graph, their buffers and their argument layout
never change between replays, so this resolves them once (runtime.tinygrad_seam.cpu_kernel_calls) and keeps, per
kernel, the C function and its prebuilt ctypes arguments; only kernels whose arguments depend on a symbolic
variable (the decode position) rebuild theirs per call. Measured on SmolLM2: identical logits, 90 -> 75 ms per
decode step before prebuilding.

The whole step goes to runtime.native.runner in one call: a pool of threads runs the kernels in
order and splits each kernel's core_id partitions (the hand-written matmuls) between them. Without the runner (no C
compiler, more arguments than it passes) the kernels are called from Python as before.

Only the plain CPU path is supported (kernels called as C functions); anything else returns None from
`build` and the caller keeps using TinyJit. The caller checks the first replay against TinyJit (runtime.graphs).
"""
from __future__ import annotations

import ctypes
import logging
from typing import Any

import numpy as np
from tinygrad import Tensor

from edgegen.runtime.tinygrad_seam import KernelCall, UnsupportedGraph, cpu_kernel_calls

log = logging.getLogger(__name__)


class ThreadedSteps:
    """A graph's kernels as the native runner's step list; the steps whose arguments depend on the variables (the
    decode position) are rewritten before each run."""

    def __init__(self, calls: list[KernelCall], threads: int) -> None:
        from edgegen.runtime.native.runner import MAX_ARGS, STEP_DTYPE, RunnerUnavailable, ThreadPool

        self.calls = calls
        self.steps = np.zeros(len(calls), dtype=STEP_DTYPE)
        self.dynamic = [i for i, c in enumerate(calls) if not c.static]
        for i, call in enumerate(calls):
            n_args = len(call.buffer_addresses) + len(call.info.vars)
            if n_args > MAX_ARGS:
                raise RunnerUnavailable(f"a kernel takes {n_args} arguments, the runner passes {MAX_ARGS}")
            self.steps["fn"][i] = ctypes.cast(call.function, ctypes.c_void_p).value
            core = call.core_argument
            self.steps["core_arg"][i] = -1 if core is None else core
            if call.static:
                self._write(i, {})
        self.pool = ThreadPool(threads)

    def _write(self, i: int, var_vals: dict[str, int]) -> None:
        call = self.calls[i]
        global_size, _ = call.info.launch_dims(var_vals)
        args = [*call.buffer_addresses, *(int(v or 0) for v in call.info.vals(var_vals))]  # core_id: None, set per part
        self.steps["parts"][i] = int(global_size[0])
        self.steps["args"][i, : len(args)] = args

    def __call__(self, var_vals: dict[str, int]) -> None:
        for i in self.dynamic:
            self._write(i, var_vals)
        self.pool.run(self.steps)


class CPUReplay:
    def __init__(self, steps: list[tuple[KernelCall, list[tuple]]], threaded: ThreadedSteps | None = None) -> None:
        # (kernel, prebuilt argument tuples per thread; empty when they depend on the variables)
        self.steps = steps
        self.threaded = threaded

    @classmethod
    def build(cls, jit: Any, inputs: tuple[Tensor, ...], threads: int = 1) -> CPUReplay | None:
        """Resolve every kernel of `jit` (a captured TinyJit) for these input tensors, or None if unsupported;
        threads > 1 runs them on the native runner's thread pool where it is available."""
        from edgegen.runtime.native.runner import RunnerUnavailable

        try:
            calls = cpu_kernel_calls(jit, inputs)
            threaded = None
            if threads >= 1:  # one thread too: one C call per step instead of a Python call per kernel
                try:
                    threaded = ThreadedSteps(calls, threads)
                except RunnerUnavailable as e:
                    log.warning("the threaded runner is unavailable, running on one thread: %s", e)
            return cls([(call, call.arguments({}) if call.static else []) for call in calls], threaded)
        except UnsupportedGraph as e:
            log.info("direct CPU replay unavailable, using TinyJit: %s", e)
        except Exception as e:  # noqa: BLE001 - tinygrad internals: any surprise means "use TinyJit"
            log.info("direct CPU replay unavailable, using TinyJit: %s: %s", type(e).__name__, e)
        return None

    def __call__(self, var_vals: dict[str, int]) -> None:
        if self.threaded is not None:
            self.threaded(var_vals)
            return
        for call, prebuilt in self.steps:
            fxn = call.function
            for args in prebuilt if call.static else call.arguments(var_vals):
                fxn(*args)

    def __len__(self) -> int:
        return len(self.steps)

