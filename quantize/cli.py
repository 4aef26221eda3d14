"""`edgegen quantize SOURCE --recipe NAME -o OUT.gguf`: a thin front end over quantize.pipeline and quantize.writer."""
from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from quantize.errors import QuantizeError
from quantize.recipes import RECIPES, get_recipe

T = TypeVar("T")
MB = 1_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source",
                        help="a GGUF file, a Hugging Face folder (config.json, *.safetensors, tokenizer.json), "
                             "'default' for the shipped SmolLM2-135M-Instruct, or an ONNX file (*.onnx: writes ONNX)")
    parser.add_argument("--recipe", required=True, metavar="NAME",
                        help="; ".join(f"{r.name}: {r.description}" for r in RECIPES.values()))
    parser.add_argument("-o", "--output", required=True, metavar="OUT.gguf", help="file to write")
    parser.add_argument("--calibrate", metavar="TEXTFILE",
                        help="AWQ-style activation-aware scales measured on this text (llama architecture)")
    parser.add_argument("--budget-mb", type=float, metavar="N",
                        help="choose per-tensor types so that the file fits N MB (10^6 bytes); overrides the "
                             "recipe's type choice")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def read_text(path: str, what: str) -> str:
    """The file's text, or a QuantizeError naming `what` it is for a missing, unreadable or empty file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QuantizeError(f"{what} {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise QuantizeError(f"{what} {path!r} is not readable UTF-8 text ({e})") from None
    if not text.strip():
        raise QuantizeError(f"{what} {path!r} is empty (expected text to run the model on)")
    return text


def run(args: argparse.Namespace) -> int:
    from quantize.pipeline import quantize_model
    from quantize.source import load_source
    from quantize.summary import format_assignment, format_calibration, format_summary
    from quantize.writer import check_writable, write_artifact

    if args.source.lower().endswith(".onnx"):  # ONNX in, standard quantized ONNX out
        from quantize import cli_onnx

        return cli_onnx.run(args)
    # Check every cheap thing before minutes of work.
    recipe = get_recipe(args.recipe)
    check_writable(args.output)
    text = read_text(args.calibrate, "calibration file") if args.calibrate else None
    budget = None
    if args.budget_mb is not None:
        if args.budget_mb <= 0:
            raise QuantizeError(f"--budget-mb must be positive, got {args.budget_mb}")
        budget = int(args.budget_mb * MB)

    def track(it: Iterable[T], desc: str, total: int) -> Iterable[T]:
        if args.no_progress:
            return it
        from tqdm import tqdm

        return tqdm(it, desc=desc, total=total, leave=False)

    source = load_source(args.source)
    result = quantize_model(source, recipe, calibration_text=text, budget_bytes=budget, track=track)
    size = write_artifact(args.output, source, result, progress=not args.no_progress)
    print(f"wrote {args.output}: recipe {recipe.name}, {len(result.tensors)} tensors")
    if result.calibration is not None:
        print(format_calibration(result.calibration))
    if budget is not None:
        print(f"budget {budget / MB:.2f} MB: tensor types chosen")
        print(format_assignment(result))
    print(format_summary(source, result, size))
    if budget is not None and size > budget:
        raise QuantizeError(f"file is {size / MB:.2f} MB, over the {budget / MB:.2f} MB budget (metadata larger than "
                            f"estimated)")
    return 0
