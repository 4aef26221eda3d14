"""`edgegen eval MODEL`: what a model's quantization cost, measured in edgegen's runtime.

Text models (`--text FILE [--reference MODEL]`): perplexity, KL and top-1 agreement. Diffusion U-Nets: prompt
accuracy, confidence and Frechet distance of generated digits, scored by the shipped MNIST classifier. The scoring
is quantize's (numpy only); loading and sampling the models is the runtime's; this module joins the two.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np

from edgegen.cli.flags import (
    add_device_argument,
    add_json_flag,
    add_kernel_arguments,
    add_model_argument,
    add_no_progress_flag,
    kernel_options,
)
from edgegen.cli.progress import step_bar, tracker
from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.evaluate_diffusion import DiffusionQuality
from edgegen.quantize.job import read_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, "GGUF model file to evaluate (a text model or a diffusion U-Net)")
    add_device_argument(parser)
    add_kernel_arguments(parser)
    parser.add_argument("--text", metavar="FILE", help="UTF-8 text to measure perplexity on (text models)")
    parser.add_argument("--reference", metavar="MODEL", help="GGUF model to compare next-token distributions with")
    parser.add_argument("--max-tokens", type=int, metavar="N", help="use only the first N tokens of the text")
    parser.add_argument("--window", type=int, default=256,
                        help="tokens per forward pass (default 256); when the model's vocabulary adds BOS "
                             "(tokenizer.ggml.add_bos_token, e.g. Gemma) the text starts with BOS and every window's "
                             "first token is replaced by BOS, as llama.cpp's llama-perplexity does")
    parser.add_argument("--stride", type=int, default=128,
                        help="tokens between window starts (default 128); every token is scored once: the first "
                             "window's all, each later window's last STRIDE (the second half by default, "
                             "llama-perplexity's rule)")
    img = parser.add_argument_group("diffusion models")
    img.add_argument("--per-digit", type=int, default=100, help="images generated per digit (default 100)")
    img.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own)")
    img.add_argument("--sampler", default=None, help="ddim or ddpm (default: the model's own)")
    img.add_argument("--guidance", type=float, default=None,
                     help="classifier-free guidance weight (default: the model's own)")
    img.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    img.add_argument("--classifier", metavar="FILE", help="scoring classifier (default: the shipped one)")
    add_json_flag(parser)
    add_no_progress_flag(parser)


def run(args: argparse.Namespace) -> int:
    from edgegen.models.unet import UNET_ARCH
    from edgegen.runtime.artifact.reader import SUPPORTED_ARCHITECTURES, open_model
    from edgegen.runtime.diffusion.weights import SHIPPED_MODELS

    if args.model in SHIPPED_MODELS or \
            open_model(args.model, architectures=SUPPORTED_ARCHITECTURES).architecture == UNET_ARCH:
        return run_diffusion(args)
    if args.text is None:
        raise QuantizeError("--text FILE is required to evaluate a text model")
    text = read_text(args.text, "text file")
    if args.max_tokens is not None and args.max_tokens < 2:
        raise QuantizeError(f"--max-tokens must be at least 2, got {args.max_tokens}")
    from edgegen.quantize.evaluate import evaluate
    from edgegen.runtime.engine import TextGenerator

    model = TextGenerator.load(args.model, device=args.device, kernels=kernel_options(args))
    reference = TextGenerator.load(args.reference, device=args.device, kernels=kernel_options(args)) \
        if args.reference else None
    if args.window > model.config.max_context:
        raise QuantizeError(f"--window {args.window} is longer than the model's context ({model.config.max_context})")
    ids = model.tokenizer.encode(text)
    if reference is not None and reference.tokenizer.encode(text) != ids:
        raise QuantizeError("model and reference tokenize the text differently; KL needs the same vocabulary")
    if args.max_tokens is not None:
        ids = ids[: args.max_tokens]
    track = tracker(not args.no_progress, unit="window", leave=True)
    # encode() put the BOS in front when the vocabulary adds one; then every window starts with it (quantize.evaluate)
    tok = model.tokenizer
    bos = tok.bos_id if tok.add_bos and tok.bos_id is not None else None
    result = evaluate(model, ids, reference, window=args.window, stride=args.stride, track=track, bos_id=bos)
    if args.json:
        print(json.dumps({"model": args.model, "reference": args.reference, **result.as_dict()}, indent=2))
        return 0
    print(f"{args.model}: perplexity {result.perplexity:.4f} over {result.tokens_scored} tokens "
          f"(window {result.window}, stride {result.stride})")
    if result.mean_kl is not None and result.top1_agreement is not None:  # both come with a reference
        print(f"vs {args.reference}: mean KL {result.mean_kl:.5f} nats/token, top-1 agreement "
              f"{100 * result.top1_agreement:.2f}%")
    return 0


def evaluate_diffusion(generator, classifier, per_digit: int = 100, steps: int | None = None,
                       sampler: str | None = None, guidance: float | None = None, seed: int = 0, batch: int = 100,
                       on_step: Callable[[int, int], None] | None = None) -> tuple[DiffusionQuality, np.ndarray]:
    """Sample `per_digit` images of every digit with the runtime's ImageGenerator and score them on held-out MNIST
    test digits; returns the scores and the images (N, 28, 28) in [-1, 1]."""
    from edgegen.quantize.evaluate_diffusion import digit_labels, score_digits
    from edgegen.quantize.mnist import load_mnist
    from edgegen.runtime.diffusion import DiffusionParams

    labels = digit_labels(per_digit)
    params = generator.resolve(DiffusionParams(steps=steps, sampler=sampler, guidance=guidance, seed=seed,
                                               n=len(labels)))
    images = generator.sample(labels, params, batch=batch, on_step=on_step)
    real_images, real_labels = load_mnist("test")
    quality = score_digits(images, labels, classifier, real_images, real_labels, steps=params.steps,
                           sampler=params.sampler, guidance=params.guidance, seed=seed)
    return quality, images


def run_diffusion(args: argparse.Namespace) -> int:
    from edgegen.quantize.mnist import mnist_path
    from edgegen.runtime.diffusion import (
        DEFAULT_CLASSIFIER,
        Classifier,
        DiffusionParams,
        ImageGenerator,
        model_path,
    )

    if not 1 <= args.per_digit <= 500:
        raise QuantizeError(f"--per-digit must be from 1 to 500 (got {args.per_digit})")
    DiffusionParams(steps=args.steps, sampler=args.sampler, guidance=args.guidance, seed=args.seed).validate()
    mnist_path()  # the real test digits it scores against: a runtime-only install lacks them; say so before sampling
    gen = ImageGenerator.load(model_path(args.model), device=args.device)
    clf = Classifier(args.classifier or DEFAULT_CLASSIFIER, device=args.device)
    params = gen.resolve(DiffusionParams(steps=args.steps, sampler=args.sampler, guidance=args.guidance,
                                         seed=args.seed))
    assert params.steps is not None
    with step_bar(params.steps, "denoising", leave=True, enabled=not args.no_progress) as on_step:
        quality, _ = evaluate_diffusion(gen, clf, per_digit=args.per_digit, steps=params.steps, sampler=params.sampler,
                                        guidance=params.guidance, seed=args.seed, on_step=on_step)
    if args.json:
        print(json.dumps({"model": args.model, **quality.as_dict()}, indent=2))
        return 0
    q = quality
    print(f"{args.model}: prompt accuracy {100 * q.prompt_accuracy:.1f}% over {q.images} digits "
          f"(real digits: {100 * q.real_accuracy:.1f}%), mean confidence {q.mean_confidence:.3f}, "
          f"Frechet distance {q.frechet_distance:.3f} (real vs real: {q.real_vs_real_fd:.3f})")
    print("per digit: " + " ".join(f"{d}:{100 * a:.0f}%" for d, a in enumerate(q.per_digit_accuracy)))
    return 0
