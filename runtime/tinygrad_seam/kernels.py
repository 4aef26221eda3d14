"""The compiled kernels of a captured TinyJit graph on tinygrad 0.14's CPU device, as plain C calls.

runtime.cpu_replay calls them directly to skip TinyJit's Python work per kernel; this module knows how the
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
    static: bool  # no symbolic variable but core_id in its arguments or launch size: the arguments never change

    @property
    def core_argument(self) -> int | None:
        """Index of the core_id argument among (buffers, variables), or None (`CPUProgram.runtimevars`; -1 there
        counts from the end)."""
        core = self.program.runtimevars.get("core_id")
        return None if core is None else core % (len(self.buffer_addresses) + len(self.info.vars))

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

    Wraps `tinygrad.engine.jit._prepare_jit_inputs`, `CapturedJit.linear`, `tinygrad.engine.realize.get_runtime` /
    `resolve_params`, `ProgramInfo.outs` and `Buffer.ensure_allocated().get_buf(dev).va_addr`. Whether a kernel
    writes an input is decided by address ranges, not by TinyJit's `CapturedJit._written_uops`, which rewrites every
    output's view again (a large share of building the replays at a warm start: docs/MEASUREMENTS.md)."""
    from tinygrad.engine.jit import _prepare_jit_inputs
    from tinygrad.engine.realize import get_runtime, resolve_params
    from tinygrad.uop.ops import Ops

    captured = jit.captured
    if captured is None:
        raise UnsupportedGraph("the jit has not captured a graph")
    input_uops = tuple(_prepare_jit_inputs(inputs, {})[0])
    input_spans = []
    for u in input_uops:
        b = u.buffer.ensure_allocated()
        start = int(b.get_buf(b.device).va_addr)
        input_spans.append((start, start + b.nbytes))
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
        info = ast.arg
        buffers = {i: resolved[i].buffer.ensure_allocated() for i in info.globals}
        addrs = tuple(int(buffers[i].get_buf(device).va_addr) for i in info.globals)
        for k in (set(info.outs) - set(info.ins)) & buffers.keys():
            lo = int(buffers[k].get_buf(device).va_addr)
            if any(lo < end and start < lo + buffers[k].nbytes for start, end in input_spans):
                raise UnsupportedGraph("the graph writes one of its inputs (TinyJit copies those per call)")
        # core_id is a launch variable the replay sets per partition, not one the caller binds
        static = all(getattr(v.arg, "name", None) == "core_id" for v in info.vars) and \
            all(isinstance(s, int) for s in info.global_size)
        calls.append(KernelCall(rt.fxn, addrs, rt, info, static))
    return calls


def c_kernel(name: str, source: str, out: Tensor, inputs: tuple[Tensor, ...], parts: int,
             variables: tuple[tuple[str, int, int], ...] = ()) -> Tensor:
    """`out` after the hand-written C function `name` (in `source`) ran on it and `inputs`, as one kernel of the graph.

    The function takes the buffers in this order (out, *inputs), then one `int` per named variable (name, min, max:
    the graph binds it by name, e.g. the decode position), then `int core_id`; tinygrad launches `parts`
    partitions (core_id 0..parts-1; its CPU device runs them one after another, runtime.native.runner on threads).
    Wraps `Tensor.custom_kernel` with a function returning a raw `Ops.PROGRAM` whose `Ops.SOURCE` the device compiles,
    `KernelInfo(name=...)` (the C function name) and `UOp.variable(..., param=True)` for core_id."""
    from tinygrad import UOp, dtypes
    from tinygrad.uop.ops import KernelInfo, Ops

    def program(*params: UOp) -> UOp:
        named = [UOp.variable(n, lo, hi, dtypes.int, param=True) for n, lo, hi in variables]
        core = UOp.variable("core_id", 0, parts - 1, dtypes.int, param=True)
        sink = UOp.sink(*params, *named, core, arg=KernelInfo(name=name))
        return UOp(Ops.PROGRAM, src=(sink, UOp(Ops.LINEAR, src=(*sink.src, sink)), UOp(Ops.SOURCE, arg=source)))

    return out.custom_kernel(*inputs, fxn=program)[0]


def variable_spec(v: Any) -> tuple[str, int, int]:
    """(name, min, max) of a symbolic variable, bound to a value or not (`UOp.is_variable`; a bound one is an
    `Ops.AFTER` that `UOp.unbind` splits; `ParamArg.name` and `.vmin_vmax`)."""
    var = v if v.is_variable else v.unbind()[0]
    lo, hi = var.arg.vmin_vmax
    return str(var.arg.name), int(lo), int(hi)


def load_image(obj: bytes) -> bytes:
    """A compiled ELF object laid out as tinygrad's CPU device loads it (entry point first, relocations applied):
    `tinygrad.runtime.support.elf.jit_loader`. Used to check cross-compiled kernels under an emulator."""
    from tinygrad.runtime.support.elf import jit_loader

    return jit_loader(obj)
