"""Class-conditional image generation with the tiny U-Net: DDPM and DDIM sampling with classifier-free guidance.

The U-Net file is the same GGUF container as the text models (architecture `edgegen-unet`); its matrices stay
packed (Q8_0 / Q4_0 / Q4_1 blocks, or float) on the device (runtime.diffusion.weights).

The sampler follows DDIM (Song et al., 2021, eq. 12) over an evenly spaced subsequence of the training timesteps:
eta = 0 is DDIM (deterministic given the starting noise), eta = 1 is DDPM's ancestral sampling on the respaced
schedule (Nichol & Dhariwal, 2021, section 4). Guidance (Ho & Salimans, 2022): eps = eps_null + w (eps_c - eps_null),
computed as one batch of 2B images. The update runs in numpy on the host (a few kB per step), the noise comes from a
numpy generator: a seed gives the same image on every backend.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tinygrad import Tensor, TinyJit

from edgegen.models.unet import UNET_ARCH, UNet, UNetConfig, cosine_alpha_bars
from edgegen.runtime.artifact.reader import ModelFile, open_model
from edgegen.runtime.diffusion.png import to_uint8
from edgegen.runtime.diffusion.prompt import parse_prompt
from edgegen.runtime.diffusion.weights import DEFAULT_UNET, PackedConvWeights, config_from_file
from edgegen.runtime.errors import GenerationError
from edgegen.runtime.tinygrad_seam import TINYGRAD_LOCK

SAMPLERS = ("ddim", "ddpm")
MAX_STEPS = 1000
MAX_IMAGES = 1024

# Classifier-free guidance weight for the shipped U-Net: higher w reads more clearly as the prompted digit (prompt
# accuracy) at some cost in variety (Frechet distance); 5 keeps a margin over the 90% prompt-accuracy target (the
# figures per weight: docs/MEASUREMENTS.md).
DEFAULT_GUIDANCE = 5.0


@dataclass(frozen=True)
class DiffusionParams:
    """How to sample. guidance 1.0 is plain conditional sampling; 0.0 ignores the prompt."""

    steps: int = 20
    sampler: str = "ddim"
    guidance: float = DEFAULT_GUIDANCE
    seed: int = 0
    n: int = 1

    def validate(self, timesteps: int = MAX_STEPS) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= timesteps:
            raise GenerationError(f"steps must be an integer from 1 to {timesteps} (got {self.steps!r})")
        if self.sampler not in SAMPLERS:
            raise GenerationError(f"sampler must be one of {', '.join(SAMPLERS)} (got {self.sampler!r})")
        if not isinstance(self.guidance, (int, float)) or not 0.0 <= float(self.guidance) <= 20.0:
            raise GenerationError(f"guidance must be a number from 0 to 20 (got {self.guidance!r})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise GenerationError(f"seed must be a non-negative integer (got {self.seed!r})")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or not 1 <= self.n <= MAX_IMAGES:
            raise GenerationError(f"n must be an integer from 1 to {MAX_IMAGES} (got {self.n!r})")


class ImageGenerator:
    """Loads a U-Net file once and samples batches of digits from it.

    >>> gen = ImageGenerator.load("models/weights/unet-mnist.gguf")
    >>> images = gen.generate("seven", DiffusionParams(steps=20, n=4))   # (4, 28, 28) uint8
    """

    def __init__(self, mf: ModelFile, device: str | None = None):
        self.file = mf
        self.cfg: UNetConfig = config_from_file(mf, UNetConfig, UNET_ARCH)
        self.weights = PackedConvWeights(mf, device)
        self.model = UNet(self.cfg, self.weights)
        self.device = device
        self.alpha_bars = cosine_alpha_bars(self.cfg.timesteps)
        self._jits: dict[int, Any] = {}  # batch size -> TinyJit

    @classmethod
    def load(cls, path: str | Path = DEFAULT_UNET, device: str | None = None) -> ImageGenerator:
        from edgegen.runtime.backend import resolve_device

        mf = open_model(path, architectures=(UNET_ARCH,))
        dev = resolve_device(device)
        with TINYGRAD_LOCK:
            return cls(mf, dev)

    def eps(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The U-Net's noise prediction for a batch, through a TinyJit graph per batch size."""
        b = x.shape[0]
        with TINYGRAD_LOCK:  # one step at a time, never across the sampler's yields
            if b not in self._jits:
                self._jits[b] = TinyJit(lambda xt, tt, yt: self.model(xt, tt, yt).realize())
            out = self._jits[b](Tensor(x.astype(np.float32), device=self.device),
                                Tensor(t.astype(np.int32), device=self.device),
                                Tensor(y.astype(np.int32), device=self.device))
            return out.numpy()

    def timesteps(self, steps: int) -> np.ndarray:
        """`steps` training timesteps from the noisiest down to 0, evenly spaced."""
        return np.unique(np.linspace(0, self.cfg.timesteps - 1, steps).round().astype(np.int64))[::-1]

    def sample_iter(self, labels: list[int] | np.ndarray, params: DiffusionParams,
                    batch: int | None = None) -> Iterator[tuple[int, int, np.ndarray | None]]:
        """Yields (step, total, None) after each denoising step and finally (total, total, images in [-1, 1])."""
        params.validate(self.cfg.timesteps)
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or labels.size == 0 or labels.min() < 0 or labels.max() >= self.cfg.num_classes:
            raise GenerationError(f"labels must be class ids 0..{self.cfg.num_classes - 1}")
        rng = np.random.default_rng(params.seed)
        c, s = self.cfg.in_channels, self.cfg.image_size
        x = rng.standard_normal((len(labels), c, s, s), dtype=np.float32)
        ts = self.timesteps(params.steps)
        guided = float(params.guidance) != 1.0
        eta = 1.0 if params.sampler == "ddpm" else 0.0
        batch = batch or len(labels)
        for i, t in enumerate(ts):
            ab = self.alpha_bars[t]
            ab_prev = self.alpha_bars[ts[i + 1]] if i + 1 < len(ts) else 1.0
            eps = np.concatenate([self._guided_eps(x[j:j + batch], t, labels[j:j + batch], params.guidance, guided)
                                  for j in range(0, len(labels), batch)])
            x0 = np.clip((x - np.sqrt(1 - ab) * eps) / np.sqrt(ab), -1.0, 1.0)
            eps = (x - np.sqrt(ab) * x0) / np.sqrt(1 - ab)  # consistent with the clipped x0
            sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
            x = np.sqrt(ab_prev) * x0 + np.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
            x = x.astype(np.float32)
            yield i + 1, len(ts), None
        yield len(ts), len(ts), x

    def _guided_eps(self, x: np.ndarray, t: int, y: np.ndarray, w: float, guided: bool) -> np.ndarray:
        b = len(x)
        if not guided:
            return self.eps(x, np.full(b, t), y)
        both = self.eps(np.concatenate([x, x]), np.full(2 * b, t), np.concatenate([y, np.full(b, self.cfg.null_class)]))
        cond, null = both[:b], both[b:]
        return null + w * (cond - null)

    def sample(self, labels: list[int] | np.ndarray, params: DiffusionParams, batch: int | None = None,
               on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Images (N, 28, 28) float in [-1, 1] for class ids `labels`."""
        for step, total, images in self.sample_iter(labels, params, batch):
            if images is not None:
                return images[:, 0]
            if on_step is not None:
                on_step(step, total)
        raise AssertionError("sampler ended without images")

    def generate(self, prompt: str, params: DiffusionParams,
                 on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
        """`params.n` images of the digit the prompt names, as (n, 28, 28) uint8."""
        digit = parse_prompt(prompt)  # sample() validates the params
        return to_uint8(self.sample([digit] * params.n, params, on_step=on_step))
