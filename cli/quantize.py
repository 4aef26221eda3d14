"""`edgegen quantize SOURCE --recipe NAME -o OUT.gguf`: a thin front end over quantize.job (GGUF out) and
quantize.onnx_quant (ONNX in, ONNX out)."""
from __future__ import annotations

import argparse
from pathlib import Path

from edgegen.cli.flags import add_no_progress_flag
from edgegen.cli.progress import tracker
from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.job import (
    MB,
    check_onnx_output,
    check_output,
    check_source,
    probe_writable,
    quantize_file,
    read_text,
    require_extra,
    resolve_source,
)
from edgegen.quantize.recipes import RECIPES, get_recipe
from edgegen.runtime.artifact.constants import TEXT_ARCHITECTURES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source",
                        help="a GGUF file, a Hugging Face folder (config.json, *.safetensors, tokenizer.json), "
                             "'default' for the shipped SmolLM2-135M-Instruct, or an ONNX file (*.onnx: writes ONNX)")
    parser.add_argument("--recipe", required=True, metavar="NAME",
                        help="; ".join(f"{r.name}: {r.description}" for r in RECIPES.values()))
    parser.add_argument("-o", "--output", required=True, metavar="OUT.gguf", help="file to write")
    parser.add_argument("--calibrate", metavar="TEXTFILE",
                        help="AWQ-style activation-aware scales measured on this text (decoder families: "
                             f"{', '.join(TEXT_ARCHITECTURES)})")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="diffusion U-Nets: round 4-bit weights to nearest instead of GPTQ against the model's own "
                             "sampling trajectory (the default, timestep-aware)")
    parser.add_argument("--budget-mb", type=float, metavar="N",
                        help="choose per-tensor types so that the file fits N MB (10^6 bytes); overrides the "
                             "recipe's type choice")
    add_no_progress_flag(parser)


def run(args: argparse.Namespace) -> int:
    if args.source.lower().endswith(".onnx"):  # ONNX in, standard quantized ONNX out
        return run_onnx(args)
    from edgegen.quantize.summary import format_assignment, format_calibration, format_summary

    # Check every cheap thing before minutes of work.
    recipe = get_recipe(args.recipe)
    source_path = resolve_source(args.source)
    check_output(args.output, source_path)
    check_source(source_path)
    text = read_text(args.calibrate, "calibration file") if args.calibrate else None
    budget = None
    if args.budget_mb is not None:
        if args.budget_mb <= 0:
            raise QuantizeError(f"--budget-mb must be positive, got {args.budget_mb}")
        budget = int(args.budget_mb * MB)

    done = quantize_file(source_path, recipe, args.output, calibration_text=text, budget_bytes=budget,
                         track=tracker(not args.no_progress), progress=not args.no_progress,
                         diffusion_calibration=not args.no_calibrate)
    result, size = done.result, done.size_bytes
    print(f"wrote {args.output}: recipe {recipe.name}, {len(result.tensors)} tensors")
    if result.calibration is not None:
        print(format_calibration(result.calibration))
    if budget is not None:
        print(f"budget {budget / MB:.2f} MB: tensor types chosen")
        print(format_assignment(result))
    print(format_summary(done.source, result, size))
    if budget is not None and size > budget:
        raise QuantizeError(f"file is {size / MB:.2f} MB, over the {budget / MB:.2f} MB budget (metadata larger than "
                            f"estimated)")
    return 0


def run_onnx(args: argparse.Namespace) -> int:
    """The ONNX branch: opset 21 QuantizeLinear/DequantizeLinear weights, written as a standard ONNX file."""
    require_extra("quantizing an ONNX model", "onnx", "onnx", "ml_dtypes")
    probe_writable(Path(args.output))  # check_onnx_output checks the rest of the output path
    from edgegen.quantize.onnx_quant import format_onnx_summary, get_onnx_recipe, quantize_onnx_file

    recipe = get_onnx_recipe(args.recipe)
    for flag, value in (("--calibrate", args.calibrate), ("--budget-mb", args.budget_mb)):
        if value is not None:
            raise QuantizeError(f"{flag} applies to GGUF outputs, not to ONNX models")
    out = check_onnx_output(args.output, args.source)
    result = quantize_onnx_file(args.source, recipe, out, track=tracker(not args.no_progress))
    print(f"wrote {out}: recipe {recipe.name} (ONNX opset 21, DequantizeLinear), {len(result.weights)} weights")
    print(format_onnx_summary(result, Path(args.source).stat().st_size, out.stat().st_size))
    return 0
