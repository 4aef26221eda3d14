"""`edgegen eval MODEL --text FILE [--reference MODEL]`: perplexity, KL and top-1 agreement in edgegen's runtime."""
from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from typing import TypeVar

from quantize.cli import read_text
from quantize.errors import QuantizeError

T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="GGUF model file to evaluate")
    parser.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text to measure perplexity on")
    parser.add_argument("--reference", metavar="MODEL", help="GGUF model to compare next-token distributions with")
    parser.add_argument("--max-tokens", type=int, metavar="N", help="use only the first N tokens of the text")
    parser.add_argument("--window", type=int, default=256, help="tokens per forward pass (default 256)")
    parser.add_argument("--stride", type=int, default=128, help="tokens between window starts (default 128)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    text = read_text(args.text, "text file")
    if args.max_tokens is not None and args.max_tokens < 2:
        raise QuantizeError(f"--max-tokens must be at least 2, got {args.max_tokens}")
    from quantize.evaluate import evaluate
    from runtime.engine import TextGenerator

    model = TextGenerator.load(args.model)
    reference = TextGenerator.load(args.reference) if args.reference else None
    if args.window > model.config.max_context:
        raise QuantizeError(f"--window {args.window} is longer than the model's context ({model.config.max_context})")
    ids = model.tokenizer.encode(text)
    if reference is not None and reference.tokenizer.encode(text) != ids:
        raise QuantizeError("model and reference tokenize the text differently; KL needs the same vocabulary")
    if args.max_tokens is not None:
        ids = ids[: args.max_tokens]

    def track(it: Iterable[T], desc: str, total: int) -> Iterable[T]:
        if args.no_progress:
            return it
        from tqdm import tqdm

        return tqdm(it, desc=desc, total=total, unit="window")

    result = evaluate(model, ids, reference, window=args.window, stride=args.stride, track=track)
    if args.json:
        print(json.dumps({"model": args.model, "reference": args.reference, **result.as_dict()}, indent=2))
        return 0
    print(f"{args.model}: perplexity {result.perplexity:.4f} over {result.tokens_scored} tokens "
          f"(window {result.window}, stride {result.stride})")
    if result.mean_kl is not None:
        print(f"vs {args.reference}: mean KL {result.mean_kl:.5f} nats/token, top-1 agreement "
              f"{100 * result.top1_agreement:.2f}%")
    return 0
