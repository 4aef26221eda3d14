"""One quantization job from user-given paths: every cheap check before minutes of work, then load, quantize, write.

`edgegen quantize` is a front end over this module; `quantize_file` is the whole GGUF -> GGUF job for any caller.
"""
from __future__ import annotations

import importlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgegen.quantize.errors import QuantizeError

if TYPE_CHECKING:  # the checks run before these (numpy-heavy) modules are needed
    from edgegen.quantize.pipeline import QuantizedModel, Track
    from edgegen.quantize.recipes import Recipe
    from edgegen.quantize.source import ModelSource

MB = 1_000_000


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
        from edgegen.runtime.artifact.reader import default_model_path

        return default_model_path()
    return Path(source)


def check_source(path: Path) -> None:
    """A GGUF source is parsed by the runtime's header reader first, so that a file that is not GGUF, or truncated,
    or of an architecture the runtime cannot run, is one line naming it; a folder needs the 'quantize' extra
    (safetensors)."""
    if path.is_dir():
        require_extra("reading a Hugging Face folder", "quantize", "safetensors")
    elif path.is_file():
        from edgegen.quantize.import_gguf import check_architecture
        from edgegen.runtime.artifact.reader import open_gguf
        from edgegen.runtime.artifact.validate import check_file

        mf = open_gguf(path)
        check_architecture(path, mf.architecture)
        check_file(mf)


def check_onnx_output(output: str, source: str) -> Path:
    """The ONNX branch's output path: an .onnx file path, not the source, in a folder that takes a new file."""
    from edgegen.quantize.writer import check_writable

    out = Path(output)
    if out.suffix.lower() != ".onnx" or out.is_dir():
        raise QuantizeError(f"output path {output!r} must be an .onnx file path (ONNX in, ONNX out)")
    if out.resolve() == Path(source).resolve():
        raise QuantizeError(f"output path {output!r} is the input file: choose another name")
    check_writable(out)
    return out


@dataclass(frozen=True)
class QuantizedFile:
    """What `quantize_file` wrote: the source it read, the quantized tensors, and the file's size."""

    source: ModelSource
    result: QuantizedModel
    size_bytes: int


def quantize_file(source_path: Path, recipe: Recipe, output: str | Path, calibration_text: str | None = None,
                  budget_bytes: int | None = None, track: Track | None = None, progress: bool = False,
                  diffusion_calibration: bool = True) -> QuantizedFile:
    """Load `source_path`, quantize it by `recipe` (calibrated, under a budget) and write the artifact `output`.

    Run the checks above first: this loads the whole model.
    """
    from edgegen.quantize import source as sources  # looked up at call time, so tests can stand in for the loader
    from edgegen.quantize.pipeline import no_track, quantize_model
    from edgegen.quantize.writer import write_artifact

    source = sources.load_source(source_path)
    result = quantize_model(source, recipe, calibration_text=calibration_text, budget_bytes=budget_bytes,
                            track=track or no_track, diffusion_calibration=diffusion_calibration)
    size = write_artifact(output, source, result, progress=progress)
    return QuantizedFile(source, result, size)
