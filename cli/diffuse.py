"""`edgegen diffuse`: draw digits from a prompt with a diffusion U-Net and write them as a PNG."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edgegen.cli.flags import add_device_argument, add_kernel_arguments, add_no_progress_flag, kernel_options
from edgegen.cli.progress import step_bar
from edgegen.runtime.errors import GenerationError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="the digit to draw: 0-9 or a word such as 'seven'")
    p.add_argument("--model", default=None,
                   help="a shipped model's name (mnist: pixel space, the default; mnist-latent: a U-Net over a tiny "
                        "autoencoder's latents) or a U-Net GGUF file (a quantized one from edgegen quantize)")
    p.add_argument("-o", "--output", default=None, help="PNG to write (default: digit-<d>.png)")
    p.add_argument("--n", type=int, default=1, help="images to draw; more than one are tiled into a grid (default 1)")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: the model's own; 20 for a file that names none)")
    p.add_argument("--sampler", default=None,
                   help="ddim (deterministic) or ddpm (ancestral) (default: the model's own; ddim for a file that "
                        "names none)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance weight: 1 is plain conditional, higher follows the prompt harder "
                        "(default: the model's own, 1.5-2 for the shipped ones)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same image")
    p.add_argument("--scale", type=int, default=4, help="enlarge the PNG by this integer factor (default 4)")
    add_device_argument(p)
    add_kernel_arguments(p)
    p.add_argument("--stats", action="store_true", help="print timing as JSON on stderr at the end")
    add_no_progress_flag(p)


def run(args: argparse.Namespace) -> int:
    from edgegen.runtime.diffusion import (
        DiffusionParams,
        ImageGenerator,
        grid,
        model_path,
        parse_prompt,
        save_png,
    )

    digit = parse_prompt(args.prompt)  # fail on bad input before the model loads
    params = DiffusionParams(steps=args.steps, sampler=args.sampler, seed=args.seed, n=args.n,
                             guidance=args.guidance)
    params.validate()
    if not 1 <= args.scale <= 32:
        raise GenerationError(f"--scale must be an integer from 1 to 32 (got {args.scale})")
    out = Path(args.output or f"digit-{digit}.png")
    if out.suffix.lower() != ".png":
        raise GenerationError(f"--output must end in .png (got {str(out)!r})")
    if not out.parent.exists():
        raise GenerationError(f"--output directory {str(out.parent)!r} does not exist")
    t0 = time.perf_counter()
    gen = ImageGenerator.load(model_path(args.model), device=args.device, options=kernel_options(args))
    params = gen.resolve(params)
    assert params.steps is not None and params.guidance is not None
    t1 = time.perf_counter()
    # Only on a terminal: a bar redrawn into a pipe or a log file is noise there.
    with step_bar(params.steps, "denoising", enabled=sys.stderr.isatty() and not args.no_progress) as on_step:
        images = gen.generate(args.prompt, params, on_step=on_step)
    t2 = time.perf_counter()
    save_png(out, images[0] if params.n == 1 else grid(images), scale=args.scale)
    gen.save_graphs()  # for the next run: after the PNG is written
    print(f"wrote {out} ({params.n} image{'s' if params.n > 1 else ''} of a {digit}, {params.sampler}, "
          f"{params.steps} steps, guidance {params.guidance:g}, seed {params.seed})")
    if args.stats:
        from edgegen.device.measure import peak_rss_bytes

        print(json.dumps({"load_s": round(t1 - t0, 3), "sample_s": round(t2 - t1, 3), "images": params.n,
                          "steps": params.steps, "device": gen.device, "latent": gen.latent,
                          "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1)}), file=sys.stderr)
    return 0
