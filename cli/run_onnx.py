"""`edgegen run-onnx MODEL.onnx --input name=file.npy ...`: run an ONNX model with tinygrad and show its outputs."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from edgegen.cli.flags import add_device_argument
from edgegen.runtime.errors import OnnxModelError
from edgegen.runtime.onnx_inputs import parse_pairs, read_inputs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an ONNX file (float, or quantized by `edgegen quantize m.onnx --recipe w8|w4`)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input's values from a .npy file (repeat for each input)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=DxD...",
                   help="run with zeros of this shape for an input not given with --input (e.g. input_ids=1x16)")
    add_device_argument(p)
    p.add_argument("-o", "--output", metavar="OUT.npz", help="save every output to this .npz file")
    p.add_argument("--repeat", type=int, default=1, help="run this many times and print the median latency")


def run(args: argparse.Namespace) -> int:
    from edgegen.runtime.onnx_run import OnnxModel  # imports tinygrad: only once arguments parsed

    if args.repeat < 1:
        raise OnnxModelError(f"--repeat={args.repeat} is out of range: expected an integer >= 1")
    inputs, shapes = parse_pairs(args.input, "--input"), parse_pairs(args.shape, "--shape")
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
        values = ", ".join(f"{v:.6g}" for v in flat) + (", ..." if a.size > 6 else "")
        print(f"{name}: {a.dtype} {list(a.shape)} [{values}]")
    if args.output:
        np.savez(args.output, **outputs)  # type: ignore[arg-type]  # the keys are array names, not savez's options
        print(f"wrote {args.output}")
    stats = {"runs": len(times), "first_ms": round(times[0] * 1e3, 2),
             "median_ms": round(float(np.median(times)) * 1e3, 2)}
    print(json.dumps(stats), file=sys.stderr)
    return 0
