"""Replay a captured TinyJit graph on tinygrad's CPU device by calling its compiled kernels directly.

tinygrad 0.14's JIT replay spends tens of microseconds of Python per kernel (pattern rewrites, buffer resolution,
argument conversion), and a decode step has hundreds of kernels, so dispatch alone is a large share of the step
(cProfile figures: docs/MEASUREMENTS.md). The kernels of a captured graph, their buffers and their argument layout
never change between replays, so this resolves them once (runtime.tinygrad_seam.cpu_kernel_calls) and keeps, per
kernel, the C function and its prebuilt ctypes arguments; only kernels whose arguments depend on a symbolic
variable (the decode position) rebuild theirs per call.

The whole step goes to runtime.native.runner in one call: a pool of threads runs the kernels in
order and splits each kernel's core_id partitions (the hand-written matmuls) between them. Without the runner (no C
compiler, more arguments than it passes) the kernels are called one by one from Python, with the same prebuilt
arguments.

Only the plain CPU path is supported (kernels called as C functions); anything else returns None from
`build` and the caller keeps using TinyJit. The caller checks the first replay against TinyJit (runtime.graphs).
"""
from __future__ import annotations

import ctypes
import logging
from typing import Any

import numpy as np
from tinygrad import Tensor

from edgegen.runtime.tinygrad_seam import (
    KernelCall,
    UnsupportedGraph,
    captured_graph,
    cpu_float_view,
    cpu_kernel_calls,
    graph_output,
)

log = logging.getLogger(__name__)


class ThreadedSteps:
    """A graph's kernels as the native runner's step list. Buffers never move, so only the slots that hold a
    variable's value (the decode position) and the partition counts that depend on one are rewritten before each
    run: one numpy assignment, not a Python call per kernel (a Python call per kernel is a noticeable share of a
    decode step: docs/MEASUREMENTS.md)."""

    def __init__(self, calls: list[KernelCall], threads: int) -> None:
        from edgegen.runtime.native.runner import MAX_ARGS, STEP_DTYPE, RunnerUnavailable, ThreadPool

        self.calls = calls
        self.steps = np.zeros(len(calls), dtype=STEP_DTYPE)
        rows, cols, self._names = [], [], []  # (step, argument slot) of every variable, and the variable's name
        self._symbolic_parts: list[int] = []  # steps whose partition count depends on a variable
        for i, call in enumerate(calls):
            n_args = len(call.buffer_addresses) + len(call.info.vars)
            if n_args > MAX_ARGS:
                raise RunnerUnavailable(f"a kernel takes {n_args} arguments, the runner passes {MAX_ARGS}")
            self.steps["fn"][i] = ctypes.cast(call.function, ctypes.c_void_p).value
            core = call.core_argument
            self.steps["core_arg"][i] = -1 if core is None else core
            self.steps["args"][i, : len(call.buffer_addresses)] = call.buffer_addresses
            for j, var in enumerate(call.info.vars):
                if var.expr != "core_id":  # the runner sets core_id per partition (ProgramInfo.runtimevars)
                    rows.append(i)
                    cols.append(len(call.buffer_addresses) + j)
                    self._names.append(var.expr)
            size = call.info.global_size[0]
            if isinstance(size, int):
                self.steps["parts"][i] = size
            else:
                self._symbolic_parts.append(i)
        self._rows, self._cols = np.array(rows, dtype=np.intp), np.array(cols, dtype=np.intp)
        self.pool = ThreadPool(threads)

    def __call__(self, var_vals: dict[str, int]) -> None:
        if self._names:
            self.steps["args"][self._rows, self._cols] = [var_vals[n] for n in self._names]
        for i in self._symbolic_parts:
            self.steps["parts"][i] = int(self.calls[i].info.launch_dims(var_vals)[0][0])
        self.pool.run(self.steps)


class CPUReplay:
    def __init__(self, steps: list[tuple[KernelCall, list[tuple]]], threaded: ThreadedSteps | None = None,
                 output: Any = None) -> None:
        # (kernel, prebuilt argument tuples per thread; empty when they depend on the variables)
        self.steps = steps
        self.threaded = threaded
        self.output = output  # the graph's output tensor
        self._view: np.ndarray | None = None
        if output is not None and output.dtype.itemsize == 4 and output.uop.buffer.nbytes == 4 * output.numel():
            self._view = cpu_float_view(output)  # the whole buffer is the output: read it in place

    def result(self) -> np.ndarray:
        """The graph's output after a replay, flat float32 (a copy)."""
        if self._view is not None:
            return self._view.copy()
        return np.asarray(self.output.numpy()).reshape(-1)

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
            return cls([(call, call.arguments({}) if call.static else []) for call in calls], threaded,
                       graph_output(captured_graph(jit)))
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

