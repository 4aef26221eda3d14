"""`edgegen quantize SOURCE --recipe NAME -o OUT.gguf`: a thin front end over quantize.pipeline and quantize.writer."""
from __future__ import annotations

import argparse
import importlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.recipes import RECIPES, get_recipe

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


def require_extra(feature: str, extra: str, *modules: str) -> None:
    """QuantizeError naming the pip extra to install when a module `feature` needs is missing (a lean install)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            raise QuantizeError(f"{feature} needs the {extra!r} extra: pip install 'edgegen[{extra}]'") from None


def probe_writable(out: Path) -> None:
    """Create and remove a file beside `out`: the one test that holds for root, read-only mounts and /proc alike
    (os.access says yes to root for a read-only folder, and to anyone for /proc)."""
    if not out.parent.is_dir() or out.is_dir():
        return  # writer.check_writable names these
    try:
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=out.parent)
    except OSError as e:
        raise QuantizeError(f"output path {str(out)!r} is not writable: cannot create a file in "
                            f"{str(out.parent)!r} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(name)


def check_output(output: str, source: Path) -> Path:
    """Every check of the output path before any work: not a folder, its folder exists and takes a new file, and it
    is not the source itself (which the atomic rename at the end would replace)."""
    from edgegen.quantize.writer import check_writable

    out = check_writable(output)
    if out.exists() and source.exists() and os.path.samefile(out, source):
        raise QuantizeError(f"output path {output!r} is the input file: choose another name")
    probe_writable(out)
    return out


def resolve_source(source: str) -> Path:
    """The source's path: 'default' is the shipped SmolLM2-135M-Instruct GGUF, as everywhere in edgegen."""
    if source == "default":
        from edgegen.runtime.model_file import default_model_path

        return default_model_path()
    return Path(source)


def check_source(path: Path) -> None:
    """A GGUF source is parsed by the runtime's header reader first, so that a file that is not GGUF, or truncated,
    is one line naming it; a folder needs the 'quantize' extra (safetensors)."""
    if path.is_dir():
        require_extra("reading a Hugging Face folder", "quantize", "safetensors")
    elif path.is_file():
        from edgegen.runtime.model_file import open_gguf

        open_gguf(path)


def run(args: argparse.Namespace) -> int:
    if args.source.lower().endswith(".onnx"):  # ONNX in, standard quantized ONNX out
        require_extra("quantizing an ONNX model", "onnx", "onnx", "ml_dtypes")
        probe_writable(Path(args.output))  # cli_onnx checks the rest of the output path
        from edgegen.quantize import cli_onnx

        return cli_onnx.run(args)
    from edgegen.quantize.pipeline import quantize_model
    from edgegen.quantize.source import load_source
    from edgegen.quantize.summary import format_assignment, format_calibration, format_summary
    from edgegen.quantize.writer import write_artifact

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

    def track(it: Iterable[T], desc: str, total: int) -> Iterable[T]:
        if args.no_progress:
            return it
        from tqdm import tqdm

        return tqdm(it, desc=desc, total=total, leave=False)

    source = load_source(source_path)
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
