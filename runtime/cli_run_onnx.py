"""`edgegen run-onnx MODEL.onnx --input name=file.npy ...`: run an ONNX model with tinygrad and show its outputs."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from edgegen.runtime.errors import OnnxModelError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an ONNX file (float, or quantized by `edgegen quantize m.onnx --recipe w8|w4`)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input's values from a .npy file (repeat for each input)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=DxD...",
                   help="run with zeros of this shape for an input not given with --input (e.g. input_ids=1x16)")
    p.add_argument("--device", default=None, help="tinygrad device: CPU, CL, CUDA, NV, METAL (default: tinygrad's choice)")
    p.add_argument("-o", "--output", metavar="OUT.npz", help="save every output to this .npz file")
    p.add_argument("--repeat", type=int, default=1, help="run this many times and print the median latency")


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            raise OnnxModelError(f"{flag} {v!r} is not NAME=VALUE")
        if name in out:
            raise OnnxModelError(f"{flag} {name!r} is given twice")
        out[name] = rest
    return out


def read_inputs(model, inputs: dict[str, str], shapes: dict[str, str]) -> dict[str, np.ndarray]:
    """Arrays for every model input, from .npy files or zeros of a given shape; OnnxModelError names what is
    missing, including the dynamic dimensions that must be given."""
    feeds: dict[str, np.ndarray] = {}
    for name, path in inputs.items():
        if name not in model.inputs:
            raise OnnxModelError(f"unknown input {name!r}: the model's inputs are {', '.join(model.inputs)}")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise OnnxModelError(f"input file {path!r} for {name!r} does not exist") from None
        except (OSError, ValueError) as e:
            raise OnnxModelError(f"input file {path!r} for {name!r} is not a .npy array ({e})") from None
    for name, spec in model.inputs.items():
        if name in feeds:
            continue
        if name in shapes:
            try:
                dims = tuple(int(d) for d in shapes[name].lower().split("x"))
            except ValueError:
                dims = ()
            if not dims or min(dims) < 1:
                raise OnnxModelError(f"--shape {name}={shapes[name]} is not positive dimensions like 1x16")
            feeds[name] = np.zeros(dims, dtype=spec.np_dtype)
        elif spec.dynamic_dims:
            raise OnnxModelError(f"input {name!r} ({spec.describe()}) has dynamic dimensions "
                                 f"{', '.join(map(str, spec.dynamic_dims))} and was not given: pass "
                                 f"--input {name}=FILE.npy or --shape {name}=DIMS")
        else:
            feeds[name] = np.zeros([int(d) for d in spec.shape], dtype=spec.np_dtype)
    unknown = sorted(set(shapes) - set(model.inputs))
    if unknown:
        raise OnnxModelError(f"unknown input {unknown[0]!r} in --shape: the model's inputs are {', '.join(model.inputs)}")
    return feeds


def run(args: argparse.Namespace) -> int:
    from edgegen.runtime.onnx_run import OnnxModel  # imports tinygrad: only once arguments parsed

    if args.repeat < 1:
        raise OnnxModelError(f"--repeat={args.repeat} is out of range: expected an integer >= 1")
    inputs, shapes = _pairs(args.input, "--input"), _pairs(args.shape, "--shape")
    if args.output and Path(args.output).suffix != ".npz":
        raise OnnxModelError(f"--output {args.output!r} must end in .npz")
    model = OnnxModel.load(args.model, device=args.device)
    feeds = read_inputs(model, inputs, shapes)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        outputs = model.run(feeds)
        times.append(time.perf_counter() - t0)
    for name, a in outputs.items():
        flat = a.reshape(-1)[:6]
        print(f"{name}: {a.dtype} {list(a.shape)} [{', '.join(f'{v:.6g}' for v in flat)}{', ...' if a.size > 6 else ''}]")
    if args.output:
        np.savez(args.output, **outputs)
        print(f"wrote {args.output}")
    stats = {"runs": len(times), "first_ms": round(times[0] * 1e3, 2), "median_ms": round(float(np.median(times)) * 1e3, 2)}
    print(json.dumps(stats), file=sys.stderr)
    return 0
