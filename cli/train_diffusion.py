"""`edgegen train-diffusion`: train the MNIST diffusion models or the evaluation classifier on this CPU.

    edgegen train-diffusion --what unet --trainer torch --steps 12000 --batch 128 -o models/weights/unet-mnist.gguf
    edgegen train-diffusion --what autoencoder --steps 6000 --batch 128 -o autoencoder.gguf
    edgegen train-diffusion --what latent-unet --autoencoder autoencoder.gguf --channels 64,64,128 \
        --steps 12000 --batch 128 -o models/weights/latent-mnist.gguf
    edgegen train-diffusion --what classifier --steps 1200 --seed 0 -o models/weights/mnist-classifier.gguf

`--trainer torch` (the `export` extra) trains the same networks several times faster on a CPU; the autoencoder and
the latent U-Net train only with it. The runtime reads either trainer's file the same way.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import shlex
import sys
from pathlib import Path

DEFAULT_LR = 2e-3  # peak learning rate of both models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--what", choices=("unet", "autoencoder", "latent-unet", "classifier"), default="unet",
                        help="which model to train")
    parser.add_argument("--trainer", choices=("tinygrad", "torch"), default=None,
                        help="what computes the training steps (default: torch where it is installed, except for the "
                             "classifier; the autoencoder and the latent U-Net need it)")
    parser.add_argument("--autoencoder", default=None, metavar="FILE",
                        help="latent-unet: the trained autoencoder whose latents it denoises (carried into -o)")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3 U-Net, 2e-3 CNN)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--channels", default=None,
                        help="U-Net channels at its three resolutions (default 32,32,64; latent-unet 64,64,128)")
    parser.add_argument("--init", default=None, metavar="FILE",
                        help="U-Net: continue from this checkpoint's weights (fresh optimizer and schedule)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="torch U-Nets: record this guidance weight in the file as its default for sampling")
    parser.add_argument("--sampler", choices=("ddim", "ddpm"), default=None,
                        help="torch U-Nets: record this sampler in the file as its default")
    parser.add_argument("--sampling-steps", type=int, default=None,
                        help="torch U-Nets: record this many denoising steps in the file as its default")
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
    from edgegen.runtime.artifact.constants import MAX_GUIDANCE

    if args.steps < 1 or args.batch < 1:
        raise TrainingError(f"--steps and --batch must be positive (got {args.steps}, {args.batch})")
    if args.guidance is not None and not 0.0 <= args.guidance <= MAX_GUIDANCE:
        raise TrainingError(f"--guidance must be a number from 0 to {MAX_GUIDANCE:g} (got {args.guidance})")
    if args.sampling_steps is not None and not 1 <= args.sampling_steps <= 1000:
        raise TrainingError(f"--sampling-steps must be from 1 to 1000 (got {args.sampling_steps})")
    # --init continues a tinygrad run (its optimizer state is not carried over either way)
    trainer = args.trainer or ("torch" if args.what != "classifier" and not args.init and
                               importlib.util.find_spec("torch") else "tinygrad")
    if trainer == "tinygrad" and args.what in ("autoencoder", "latent-unet"):
        raise TrainingError(f"--what {args.what} trains only with --trainer torch")
    if trainer == "torch" and args.what == "classifier":
        raise TrainingError("--what classifier trains only with --trainer tinygrad")
    channels: tuple[int, ...] = ()
    init = Path(args.init) if args.init else None
    if args.what in ("unet", "latent-unet"):
        text = args.channels or ("64,64,128" if args.what == "latent-unet" else "32,32,64")
        parts = text.split(",")
        if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 and int(p) % 32 == 0 for p in parts):
            raise TrainingError(f"--channels must be three multiples of 32 like 32,32,64 (got {text!r})")
        channels = tuple(int(p) for p in parts)
        if init is not None and not init.is_file():
            raise TrainingError(f"--init {args.init}: no such file")
        if init is not None and trainer == "torch":
            raise TrainingError("--init continues a tinygrad run; the torch trainer starts fresh")
    if args.what == "latent-unet" and (not args.autoencoder or not Path(args.autoencoder).is_file()):
        raise TrainingError(f"--what latent-unet needs --autoencoder FILE (got {args.autoencoder!r})")
    from edgegen.quantize import training  # imports tinygrad: only once arguments are checked

    _show_training_log(training.log)
    out = Path(args.output)
    prov = {"command": "edgegen train-diffusion " + shlex.join(sys.argv[2:] if len(sys.argv) > 2 else [])}
    if trainer == "torch":
        res = _train_torch(args, channels, out, prov)
    elif args.what == "classifier":
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


def _train_torch(args: argparse.Namespace, channels: tuple[int, ...], out: Path, prov: dict) -> dict[str, float]:
    from edgegen.models.autoencoder import AutoencoderConfig
    from edgegen.models.unet import UNetConfig, sampling_keys
    from edgegen.quantize import torch_diffusion

    lr = args.lr or TORCH_LR[args.what]
    sampling = sampling_keys(args.guidance, args.sampler, args.sampling_steps)
    if args.what == "autoencoder":
        return torch_diffusion.train_autoencoder(AutoencoderConfig(), args.steps, args.batch, lr, args.seed, out, prov)
    if args.what == "unet":
        cfg = UNetConfig(channels=channels)  # type: ignore[arg-type]  # three integers: checked above
        return torch_diffusion.train_unet(cfg, args.steps, args.batch, lr, args.seed, out, prov, sampling=sampling)
    ae_path = Path(args.autoencoder)
    ae_cfg, _ = torch_diffusion.read_autoencoder(ae_path)
    prov["autoencoder_sha256"] = hashlib.sha256(ae_path.read_bytes()).hexdigest()
    cfg = UNetConfig(channels=channels, image_size=ae_cfg.latent_size,  # type: ignore[arg-type]
                     in_channels=ae_cfg.latent_channels)
    return torch_diffusion.train_latent_unet(cfg, ae_path, args.steps, args.batch, lr, args.seed, out, prov,
                                             sampling=sampling)


TORCH_LR = {"unet": 2e-3, "latent-unet": 1e-3, "autoencoder": 2e-3}  # peak AdamW learning rates
