"""Run an ONNX model with tinygrad's ONNX runner (`tinygrad.nn.onnx`), on any tinygrad backend.

What edgegen adds to the runner of tinygrad 0.14, and why:
- INT4 / UINT4 initializers (ONNX element types 22 / 21, two values per byte, low nibble first): the runner's parser
  stops at `22 is not a valid OnnxDataType`. They stay packed on the device and are unpacked inside the kernels.
- `com.microsoft::MatMulNBits`, onnxruntime's int4 matmul (what its `MatMulNBitsQuantizer` writes), in `onnx_ops`.
- Checks before any kernel compiles, each a one-line `OnnxModelError`: not an ONNX file, opset too old, an op
  neither the runner nor edgegen implements (naming the node), inputs missing, of the wrong type or shape.
- Weights are copied to the device once at load (the runner would re-read the file's bytes on every call), and each
  input-shape signature gets its own `TinyJit` and its own cache of shape constants: the runner caches those by
  name and would reuse one sequence length's Reshape targets for another.

    model = OnnxModel.load("minilm.onnx")
    out = model.run({"input_ids": ids, "attention_mask": mask})   # {output name: numpy array}
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tinygrad import Context, Device, Tensor, TinyJit, dtypes

# Deliberately not in runtime.tinygrad_seam: `tinygrad.nn.onnx` is part of the public `tinygrad.nn` package, and what
# edgegen reaches into here (the parser's `_parse_NodeProto` / `_parse_TensorProto` / `_parse_message` / `reader`,
# the runner's `_init_from_graph` / `_select_op` / `_python_const_cache` / `variable_dims` / `graph_values`) is ONNX
# protobuf and op dispatch, not tinygrad's engine: moving it would put ONNX format knowledge into the seam, and
# tests/onnx/ exercises each override (test_onnx_runner: INT4 tensors, per-shape caches; test_onnx_errors: an unknown
# domain, an unsupported op), so an upgrade that renames one fails there.
from tinygrad.nn.onnx import Domain, OnnxPBParser, OnnxRunner, OpSetId, onnx_ops

from edgegen.runtime.backend import resolve_device
from edgegen.runtime.errors import OnnxModelError
from edgegen.runtime.onnx_format import INT4, MIN_OPSET, UINT4
from edgegen.runtime.tinygrad_seam import TINYGRAD_LOCK

log = logging.getLogger(__name__)

INT4_TYPES = {UINT4: False, INT4: True}  # -> signed


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | str, ...]  # str: a dynamic dimension's name
    dtype: Any  # tinygrad DType

    @property
    def dynamic_dims(self) -> tuple[str, ...]:
        return tuple(d for d in self.shape if isinstance(d, str) or d is None)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype.fmt)

    def describe(self) -> str:
        return f"{self.np_dtype.name} [{', '.join(str(d) for d in self.shape)}]"


def _unpack_4bit(packed: Tensor, shape: tuple[int, ...], signed: bool) -> Tensor:
    """Two values per byte, low nibble first (ONNX's INT4 layout), as int8 / uint8 of `shape`; lazy, so the unpacking
    happens inside whichever kernel reads the values."""
    n = math.prod(shape)
    pairs = (packed & 0xF).unsqueeze(-1).cat((packed >> 4).unsqueeze(-1), dim=-1)  # (bytes, 2)
    values = pairs.flatten()[:n]
    if signed:
        values = values.cast(dtypes.int8) - (values >= 8).where(16, 0).cast(dtypes.int8)
    return values.reshape(shape)


def _unsupported(node: str, domain: str, op: str, opset: int | None = None) -> OnnxModelError:
    version = f" (opset {opset})" if opset is not None else ""
    return OnnxModelError(f"node {node!r}: op {domain or 'ai.onnx'}::{op}{version} is implemented neither by "
                          f"tinygrad's ONNX runner nor by edgegen")


class _Parser(OnnxPBParser):
    """tinygrad's ONNX protobuf parser, plus INT4 / UINT4 tensors and a named error for a node in an op domain the
    parser does not know (it raises `'com.example' is not a valid Domain`)."""

    def _parse_NodeProto(self) -> dict:
        start = self.reader.tell()
        try:
            return super()._parse_NodeProto()
        except ValueError as e:
            if "is not a valid Domain" not in str(e):
                raise
        self.reader.seek(start)
        fields = {3: "", 4: "", 7: ""}  # name, op_type, domain
        for fid, wire_type in self._parse_message(self._decode_end_pos()):
            if fid in fields:
                fields[fid] = self.reader.read_string()
            else:
                self.reader.skip_field(wire_type)
        raise _unsupported(fields[3], fields[7], fields[4])

    def _parse_TensorProto(self) -> dict:
        start = self.reader.tell()
        end = self._decode_end_pos()
        fields: dict[str, Any] = {"dims": []}
        for fid, wire_type in self._parse_message(end):
            if fid == 1:
                fields["dims"].append(self.reader.read_int64())
            elif fid == 2:
                fields["data_type"] = self.reader.read_int64()
            elif fid == 5:
                fields["int32_data"] = self.reader.read_packed_int64s()
            elif fid == 8:
                fields["name"] = self.reader.read_string()
            elif fid == 9:
                fields["raw_data"] = self.reader.read_bytes()
            else:
                self.reader.skip_field(wire_type)
        if fields.get("data_type") not in INT4_TYPES:
            self.reader.seek(start)
            return super()._parse_TensorProto()
        shape = tuple(fields["dims"])
        if "raw_data" in fields:
            packed = fields["raw_data"].to(Device.DEFAULT).contiguous().realize()
        elif "int32_data" in fields:
            packed = Tensor(np.asarray(fields["int32_data"], np.int64).astype(np.uint8))
        else:
            raise OnnxModelError(f"4-bit tensor {fields.get('name')!r} keeps its data outside raw_data/int32_data "
                                 f"(external data is not supported for INT4 / UINT4)")
        fields["parsed_tensor"] = _unpack_4bit(packed, shape, INT4_TYPES[fields["data_type"]])
        return fields


def matmul_nbits(A: Tensor, B: Tensor, scales: Tensor, zero_points: Tensor | None = None, g_idx: Tensor | None = None,
                 bias: Tensor | None = None, *, K: int, N: int, block_size: int, bits: int = 4,
                 accuracy_level: int = 0) -> Tensor:
    """com.microsoft::MatMulNBits: Y = A @ ((code - zero_point) * scale)^T + bias, codes packed low nibble first.
    https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md#com.microsoft.MatMulNBits"""
    if bits != 4 or g_idx is not None:
        raise NotImplementedError(f"MatMulNBits with bits={bits}{' and g_idx' if g_idx is not None else ''} "
                                  f"(edgegen implements bits=4 without g_idx)")
    k_blocks = -(-K // block_size)
    codes = _unpack_4bit(B.flatten(), (N, k_blocks, block_size), signed=False)
    if zero_points is None:
        zp: Tensor | int = 8
    elif zero_points.dtype == dtypes.uint8:  # packed like the codes, one nibble per block, rows padded to a byte
        zp = _unpack_4bit(zero_points.flatten(), (N, -(-k_blocks // 2) * 2), signed=False)[:, :k_blocks]
        zp = zp.unsqueeze(-1).cast(A.dtype)
    else:
        zp = zero_points.reshape(N, k_blocks, 1)
    w = ((codes.cast(A.dtype) - zp) * scales.reshape(N, k_blocks, 1)).reshape(N, k_blocks * block_size)[:, :K]
    y = A @ w.T
    return y + bias if bias is not None else y


EDGEGEN_OPS = {"MatMulNBits": {OpSetId(Domain.MICROSOFT_CONTRIB_OPS, 1): matmul_nbits}}


class OnnxModel:
    """One loaded ONNX graph, its input specs, and a compiled (jitted) runner per input-shape signature."""

    def __init__(self, path: Path, runner: OnnxRunner, node_names: list[str], jit: bool = True,
                 device: str | None = None) -> None:
        self.path, self.runner, self.jit = path, runner, jit
        self.device = device or Device.DEFAULT
        self.inputs = {n: InputSpec(n, tuple(s.shape), s.dtype) for n, s in runner.graph_inputs.items()}
        self.outputs = tuple(runner.graph_outputs)
        self._node_names = node_names
        self._compiled: dict[tuple, tuple[Any, dict]] = {}  # a TinyJit (a function in 0.14's types) or None

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None, jit: bool = True) -> OnnxModel:
        """Parse, check and place on `device` (tinygrad's default if None); errors are OnnxModelError."""
        p = Path(path)
        if not p.is_file():
            raise OnnxModelError(f"ONNX file {str(p)!r} does not exist")
        if p.stat().st_size == 0:
            raise OnnxModelError(f"{str(p)!r} is empty, not an ONNX file")
        name = resolve_device(device)  # checks it opens: ArtifactError if not
        with TINYGRAD_LOCK, Context(DEV=name):
            return cls._load(p, name, jit)

    @classmethod
    def _load(cls, p: Path, device: str, jit: bool) -> OnnxModel:
        # tinygrad's OnnxRunner makes its tensors on the default device, so load and run() scope the default to
        # this model's device (under the tinygrad lock) instead of changing it for the process.
        try:
            model = _Parser(p, load_external_data=True).parse()
        except OnnxModelError:
            raise
        except Exception as e:  # noqa: BLE001 - the parser raises whatever the bytes provoke (ValueError, EOFError ...)
            raise OnnxModelError(f"{str(p)!r} is not an ONNX file (protobuf parse failed: "
                                 f"{type(e).__name__}: {e})") from None
        if not model.get("graph") or not model["graph"]["node"]:
            raise OnnxModelError(f"{str(p)!r} is not an ONNX model (no graph nodes)")
        opsets = {o.get("domain", "") or "": o.get("version", 1) for o in model["opset_import"]}
        opset = opsets.get("", opsets.get("ai.onnx", 0))
        if opset < MIN_OPSET:
            raise OnnxModelError(f"{str(p)!r} uses ONNX opset {opset}, older than {MIN_OPSET}, the oldest edgegen "
                                 f"runs: re-export it with opset {MIN_OPSET} or newer")
        runner = OnnxRunner.__new__(OnnxRunner)
        runner._init_from_graph(model["graph"])
        runner.onnx_ops = {**onnx_ops, **EDGEGEN_OPS}  # type: ignore[dict-item]  # typed as FunctionType; any callable
        names = [n.get("name") or f"#{i}" for i, n in enumerate(model["graph"]["node"])]
        for name, node in zip(names, runner.graph_nodes):
            try:
                runner._select_op(node.op, node.opset_id)
            except NotImplementedError:
                raise _unsupported(name, node.opset_id.domain.value, node.op, node.opset_id.version) from None
        # One copy of every weight on the device now, not a read of the file per call.
        for v in runner.graph_values.values():
            if isinstance(v, Tensor):
                v.realize()
        return cls(p, runner, names, jit, device)

    def check_inputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The feeds as arrays of the graph's types; OnnxModelError for a missing, unknown or misshapen input."""
        unknown = sorted(set(feeds) - set(self.inputs))
        if unknown:
            raise OnnxModelError(f"unknown input {unknown[0]!r}: the model's inputs are {', '.join(self.inputs)}")
        dims: dict[str, tuple[int, str]] = {}
        out = {}
        for name, spec in self.inputs.items():
            if name not in feeds:
                raise OnnxModelError(f"input {name!r} ({spec.describe()}) was not given")
            a = np.asarray(feeds[name])
            want = spec.np_dtype
            if a.dtype != want:
                if a.dtype.kind != want.kind:  # int32 ids for int64 are fine, floats for ids are not
                    raise OnnxModelError(f"input {name!r} is {a.dtype}, expected {spec.describe()}")
                a = a.astype(want)
            if a.ndim != len(spec.shape):
                raise OnnxModelError(f"input {name!r} has shape {list(a.shape)}, expected {spec.describe()}")
            for d, got in zip(spec.shape, a.shape):
                if isinstance(d, int) and d > 0 and d != got:
                    raise OnnxModelError(f"input {name!r} has shape {list(a.shape)}, expected {spec.describe()}")
                if isinstance(d, str):
                    seen = dims.setdefault(d, (got, name))
                    if seen[0] != got:
                        raise OnnxModelError(f"dimension {d!r} is {seen[0]} in input {seen[1]!r} but {got} in "
                                             f"input {name!r}")
            if a.size == 0:
                raise OnnxModelError(f"input {name!r} is empty (shape {list(a.shape)})")
            out[name] = np.ascontiguousarray(a)
        return out

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs as numpy arrays, by name. The first two calls with a new shape trace and capture kernels."""
        arrays = self.check_inputs(feeds)
        key = tuple((n, a.shape, a.dtype.str) for n, a in sorted(arrays.items()))
        if key not in self._compiled:
            self._compiled[key] = (TinyJit(self._forward) if self.jit else None, {})
        jit, consts = self._compiled[key]
        # Shape-derived constants are cached by name inside the runner: give each shape signature its own cache.
        self.runner._python_const_cache = consts
        self.runner.variable_dims = {}
        with TINYGRAD_LOCK, Context(DEV=self.device):
            tensors = {n: Tensor(a, device=self.device).realize() for n, a in arrays.items()}
            try:
                out = jit(**tensors) if jit is not None else self._forward(**tensors)
            except NotImplementedError as e:
                raise OnnxModelError(f"{self.path.name}: {e}") from None
            return {n: out[n].numpy() for n in self.outputs}

    def _forward(self, **tensors: Tensor) -> dict[str, Tensor]:
        return {n: t.realize() for n, t in self.runner(tensors).items()}
