"""`edgegen quantize model.onnx --recipe w8|w4 -o out.onnx`: the ONNX branch of `edgegen quantize`."""
from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from edgegen.quantize.errors import QuantizeError


def run(args: argparse.Namespace) -> int:
    from edgegen.quantize.onnx_quant import format_onnx_summary, get_onnx_recipe, quantize_onnx_file
    from edgegen.quantize.writer import check_writable

    recipe = get_onnx_recipe(args.recipe)
    for flag, value in (("--calibrate", args.calibrate), ("--budget-mb", args.budget_mb)):
        if value is not None:
            raise QuantizeError(f"{flag} applies to GGUF outputs, not to ONNX models")
    out = Path(args.output)
    if out.suffix.lower() != ".onnx" or out.is_dir():
        raise QuantizeError(f"output path {args.output!r} must be an .onnx file path (ONNX in, ONNX out)")
    if out.resolve() == Path(args.source).resolve():
        raise QuantizeError(f"output path {args.output!r} is the input file: choose another name")
    check_writable(out)

    def track(items: list, desc: str) -> Iterable:
        if args.no_progress:
            return items
        from tqdm import tqdm

        return tqdm(items, desc=desc, leave=False)

    result = quantize_onnx_file(args.source, recipe, out, track=track)
    print(f"wrote {out}: recipe {recipe.name} (ONNX opset 21, DequantizeLinear), {len(result.weights)} weights")
    print(format_onnx_summary(result, Path(args.source).stat().st_size, out.stat().st_size))
    return 0
