"""Replay a captured TinyJit graph on tinygrad's CPU device by calling its compiled kernels directly.

tinygrad 0.14's JIT replay spends ~90 us of Python per kernel (pattern rewrites, buffer resolution, argument
conversion); SmolLM2's decode step has 392 kernels, so dispatch alone cost ~35 ms per token, more than a third
of the step (cProfile, this machine). The kernels of a captured graph, their buffers and their argument layout
never change between replays, so this resolves them once (runtime.tinygrad_seam.cpu_kernel_calls) and keeps, per
kernel, the C function and its prebuilt ctypes arguments; only kernels whose arguments depend on a symbolic
variable (the decode position) rebuild theirs per call. Measured on SmolLM2: identical logits, 90 -> 75 ms per
decode step before prebuilding.

Only the plain CPU path is supported (kernels called as C functions); anything else returns None from
`build` and the caller keeps using TinyJit. The caller checks the first replay against TinyJit (runtime.graphs).
"""
from __future__ import annotations

import logging
from typing import Any

from tinygrad import Tensor

from edgegen.runtime.tinygrad_seam import KernelCall, UnsupportedGraph, cpu_kernel_calls

log = logging.getLogger(__name__)


class CPUReplay:
    def __init__(self, steps: list[tuple[KernelCall, list[tuple]]]) -> None:
        # (kernel, prebuilt argument tuples per thread; empty when they depend on the variables)
        self.steps = steps

    @classmethod
    def build(cls, jit: Any, inputs: tuple[Tensor, ...]) -> CPUReplay | None:
        """Resolve every kernel of `jit` (a captured TinyJit) for these input tensors, or None if unsupported."""
        try:
            calls = cpu_kernel_calls(jit, inputs)
            return cls([(call, call.arguments({}) if call.static else []) for call in calls])
        except UnsupportedGraph as e:
            log.info("direct CPU replay unavailable, using TinyJit: %s", e)
        except Exception as e:  # noqa: BLE001 - tinygrad internals: any surprise means "use TinyJit"
            log.info("direct CPU replay unavailable, using TinyJit: %s: %s", type(e).__name__, e)
        return None

    def __call__(self, var_vals: dict[str, int]) -> None:
        for call, prebuilt in self.steps:
            fxn = call.function
            for args in prebuilt if call.static else call.arguments(var_vals):
                fxn(*args)

    def __len__(self) -> int:
        return len(self.steps)

