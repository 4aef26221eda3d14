"""The compiled kernels of a captured TinyJit graph on tinygrad 0.14's CPU device, as plain C calls.

runtime.cpu_replay calls them directly to skip TinyJit's ~90 us of Python per kernel; this module knows how the
graph stores them: `CapturedJit.linear.src` is a sequence of `Ops.CALL` UOps whose first source is an `Ops.PROGRAM`
(its `arg` a ProgramInfo: `globals`, `vars`, `global_size`, `launch_dims`, `vals`), `get_runtime` gives the loaded
`CPUProgram` (`fxn`, `runtimevars`, `lvp`), `resolve_params` binds the call's buffers to the jit's inputs.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # tinygrad is imported when a function runs, not when the seam is imported
    from tinygrad import Tensor


@dataclass(frozen=True)
class KernelCall:
    """One kernel of a graph: its C function, its buffers' addresses, and what its arguments depend on."""

    function: Any  # ctypes function: called with one argument tuple per thread partition
    buffer_addresses: tuple[int, ...]
    program: Any  # the loaded CPUProgram (runtimevars)
    info: Any  # its ProgramInfo (launch_dims, vals)
    static: bool  # no symbolic variable in its arguments or launch size: the arguments never change

    def arguments(self, var_vals: dict[str, int]) -> list[tuple]:
        """One ctypes argument tuple per thread partition (`ProgramInfo.launch_dims` / `.vals`, and the `core_id`
        runtime variable): tinygrad's CPUProgram runs the partitions one after another."""
        global_size, _ = self.info.launch_dims(var_vals)
        args = [*self.buffer_addresses, *self.info.vals(var_vals)]
        core = self.program.runtimevars.get("core_id")
        out = []
        for tid in range(global_size[0]):
            if core is not None:
                args[core] = tid
            out.append(tuple(ctypes.c_uint64(int(x)) for x in args))
        return out


class UnsupportedGraph(Exception):
    """The graph holds something a direct CPU replay cannot call (the reason is the message)."""


def cpu_kernel_calls(jit: Any, inputs: tuple[Tensor, ...]) -> list[KernelCall]:
    """Every kernel of `jit`'s captured graph, bound to these input tensors, in order; UnsupportedGraph if the graph
    is not captured, writes one of its inputs, or holds anything but plain CPU kernels (copies, graphs, LLVM).

    Wraps `tinygrad.engine.jit._prepare_jit_inputs`, `CapturedJit._written_uops` / `.linear`,
    `tinygrad.engine.realize.get_runtime` / `resolve_params` and `Buffer.ensure_allocated().get_buf(dev).va_addr`."""
    from tinygrad.engine.jit import _prepare_jit_inputs
    from tinygrad.engine.realize import get_runtime, resolve_params
    from tinygrad.uop.ops import Ops

    captured = jit.captured
    if captured is None:
        raise UnsupportedGraph("the jit has not captured a graph")
    input_uops = tuple(_prepare_jit_inputs(inputs, {})[0])
    if any(u in captured._written_uops for u in input_uops):
        raise UnsupportedGraph("the graph writes one of its inputs (TinyJit copies those per call)")
    calls = []
    for call in captured.linear.src:
        ast = call.src[0]
        if call.op is not Ops.CALL or ast.op is not Ops.PROGRAM:
            raise UnsupportedGraph(f"a step is {call.op}/{ast.op}, not a CALL of a PROGRAM")
        device = call.src[1].device
        device = device if isinstance(device, str) else device[0]
        if not device.startswith("CPU"):
            raise UnsupportedGraph(f"a kernel runs on {device}, not CPU")
        rt = get_runtime(device, ast)
        if getattr(rt, "lvp", True) or not hasattr(rt, "fxn"):
            raise UnsupportedGraph(f"{type(rt).__name__} is not a plain C function")
        resolved = resolve_params(call, input_uops)
        addrs = tuple(int(resolved[i].buffer.ensure_allocated().get_buf(device).va_addr) for i in ast.arg.globals)
        info = ast.arg
        static = not info.vars and all(isinstance(s, int) for s in info.global_size)
        calls.append(KernelCall(rt.fxn, addrs, rt, info, static))
    return calls
