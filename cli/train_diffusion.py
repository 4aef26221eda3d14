"""`edgegen train-diffusion`: train the MNIST diffusion U-Net or its evaluation classifier on this CPU.

    edgegen train-diffusion --what unet --steps 3000 --seed 0 -o models/weights/unet-mnist.gguf
    edgegen train-diffusion --what classifier --steps 1200 --seed 0 -o models/weights/mnist-classifier.gguf
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import shlex
import sys
from pathlib import Path

DEFAULT_LR = 2e-3  # peak learning rate of both models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--what", choices=("unet", "classifier"), default="unet", help="which model to train")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3 U-Net, 2e-3 CNN)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--channels", default="32,32,64", help="U-Net channels at 28/14/7 px (default 32,32,64)")
    parser.add_argument("--init", default=None, metavar="FILE",
                        help="U-Net: continue from this checkpoint's weights (fresh optimizer and schedule)")
    parser.add_argument("-o", "--output", required=True, help="checkpoint to write (.gguf)")


def _show_training_log(logger: logging.Logger) -> None:
    """Progress lines on stderr even when the CLI's logging is at WARNING (minutes pass between them)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def run(args: argparse.Namespace) -> int:
    from edgegen.models.classifier import ClassifierConfig
    from edgegen.models.unet import UNetConfig
    from edgegen.quantize.mnist import TrainingError

    if args.steps < 1 or args.batch < 1:
        raise TrainingError(f"--steps and --batch must be positive (got {args.steps}, {args.batch})")
    channels: tuple[int, ...] = ()
    init = Path(args.init) if args.init else None
    if args.what == "unet":
        parts = args.channels.split(",")
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise TrainingError(f"--channels must be three integers like 32,32,64 (got {args.channels!r})")
        channels = tuple(int(p) for p in parts)
        if init is not None and not init.is_file():
            raise TrainingError(f"--init {args.init}: no such file")
    from edgegen.quantize import training  # imports tinygrad: only once arguments are checked

    _show_training_log(training.log)
    out = Path(args.output)
    prov = {"command": "edgegen train-diffusion " + shlex.join(sys.argv[2:] if len(sys.argv) > 2 else [])}
    if args.what == "classifier":
        res = training.train_classifier(ClassifierConfig(), args.steps, args.batch, args.lr or DEFAULT_LR, args.seed,
                                        out, prov)
    else:
        if init is not None:
            prov["init_sha256"] = hashlib.sha256(init.read_bytes()).hexdigest()
        config = UNetConfig(channels=channels)  # type: ignore[arg-type]  # three integers: checked above
        res = training.train_unet(config, args.steps, args.batch, args.lr or DEFAULT_LR, args.seed, out,
                                  provenance=prov, init_from=init)
    print(f"wrote {out}: " + ", ".join(f"{k} {v:.4g}" for k, v in res.items()))
    return 0
