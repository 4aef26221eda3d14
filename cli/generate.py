"""`edgegen generate`: stream a model's answer to a prompt on stdout."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgegen.cli.flags import add_device_argument, add_kernel_arguments, add_model_argument, kernel_options
from edgegen.runtime.errors import GenerationError
from edgegen.runtime.sampling import SamplingParams


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="the prompt text (a user message when --chat is on)")
    add_model_argument(p, "a GGUF file", option=True)
    add_device_argument(p)
    add_kernel_arguments(p)
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default 0)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold in (0, 1] (1: off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 is none; 1.1 discourages repeats")
    p.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same output")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens to generate at most (default 128)")
    p.add_argument("--stop", action="append", default=[], help="stop when this string is produced (repeatable)")
    p.add_argument("--json-schema", metavar="FILE", type=Path,
                   help="the answer is JSON that follows this JSON Schema (constrained decoding); a schema feature "
                        "that cannot be enforced is refused")
    p.add_argument("--context", type=int, default=1024, help="context length to allocate the KV cache for")
    chat = p.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=True,
                      help="wrap the prompt in the model's chat template (default)")
    chat.add_argument("--no-chat", dest="chat", action="store_false", help="use the prompt as raw text")
    p.add_argument("--stats", action="store_true", help="print timing statistics as JSON on stderr at the end")


def run(args: argparse.Namespace) -> int:
    from edgegen.runtime.engine import TextGenerator  # imports tinygrad: only once arguments parsed

    if args.context < 2:
        raise GenerationError(f"--context={args.context} is out of range: expected an integer >= 2")
    params = SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
        seed=args.seed, max_tokens=args.max_tokens, stop=tuple(args.stop), json_schema=_schema_text(args.json_schema),
    )  # checked when made: bad values fail before the model loads
    if not args.prompt.strip():
        raise GenerationError("the prompt is empty")
    status = _Status(sys.stderr.isatty())
    status.show("loading model ...")
    gen = TextGenerator.load(args.model, device=args.device, max_context=args.context, kernels=kernel_options(args))
    if not gen.graphs.from_disk:
        status.show("compiling kernels for this model and device (once; about a minute on a small CPU) ...")
    stream = gen.stream(args.prompt, params, chat=args.chat)
    for piece in stream:
        status.clear()
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats and stream.result is not None:
        print(json.dumps(stream.result.as_dict()), file=sys.stderr)
    return 0


def _schema_text(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise GenerationError(f"--json-schema {path}: cannot read it ({e})") from None


class _Status:
    """One transient status line on a terminal's stderr; silent when stderr is a pipe or a file."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.visible = enabled, False

    def show(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()
            self.visible = True

    def clear(self) -> None:
        if self.visible:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.visible = False
