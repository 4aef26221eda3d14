"""Class-conditional image generation with the tiny U-Net: DDPM and DDIM sampling with classifier-free guidance.

The U-Net file is the same GGUF container as the text models (architecture `edgegen-unet`); its matrices stay
packed (Q8_0 / Q4_0 / Q4_1 blocks, or float) on the device (runtime.diffusion.weights).

The sampler follows DDIM (Song et al., 2021, eq. 12) over an evenly spaced subsequence of the training timesteps:
eta = 0 is DDIM (deterministic given the starting noise), eta = 1 is DDPM's ancestral sampling on the respaced
schedule (Nichol & Dhariwal, 2021, section 4). Guidance (Ho & Salimans, 2022): eps = eps_null + w (eps_c - eps_null),
computed as one batch of 2B images. The update runs in numpy on the host (a few kB per step), the noise comes from a
numpy generator: a seed gives the same image on every backend.

A latent model's file also carries its autoencoder (models.autoencoder, metadata `autoencoder.*`): the sampler then
denoises (latent_channels, 8, 8) latents and the decoder turns the final latent into pixels.

The U-Net runs at a few batch sizes only (`BATCH_BUCKETS`, the batch padded up to the next): a new batch size used
to mean minutes of tinygrad compiling. Each bucket's captured graph is kept on disk (runtime.jit_cache, one entry per
file and device) with the output of a fixed probe input, and a graph loaded in a new process is checked against that
probe before its first use: a fresh process replays instead of scheduling the U-Net again.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tinygrad import Tensor, TinyJit, dtypes

from edgegen.models.autoencoder import AUTOENCODER_PREFIX, LATENT_MARKER_KEY, Autoencoder, AutoencoderConfig
from edgegen.models.unet import (
    DEFAULT_GUIDANCE,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    GUIDANCE_KEY,
    LATENT_CLIP,
    SAMPLER_KEY,
    STEPS_KEY,
    UNET_ARCH,
    UNet,
    UNetConfig,
    cosine_alpha_bars,
    ddim_step,
    ddim_timesteps,
)
from edgegen.runtime import jit_cache as jit_cache_store
from edgegen.runtime.artifact.constants import MAX_GUIDANCE
from edgegen.runtime.artifact.reader import ModelFile, open_model
from edgegen.runtime.cpu_replay import CPUReplay
from edgegen.runtime.diffusion.png import to_uint8
from edgegen.runtime.diffusion.prompt import parse_prompt
from edgegen.runtime.diffusion.weights import DEFAULT_UNET, PackedConvWeights, config_from_file, model_path
from edgegen.runtime.errors import ArtifactError, GenerationError
from edgegen.runtime.native.options import KernelOptions
from edgegen.runtime.tinygrad_seam import (
    TINYGRAD_LOCK,
    capture_on_first_call,
    captured_graph,
    device_tensor,
    install_captured,
    write_buffer,
)

log = logging.getLogger(__name__)

SAMPLERS = ("ddim", "ddpm")
MAX_STEPS = 1000
MAX_IMAGES = 1024


# The U-Net's batch sizes (guidance doubles a batch): a batch runs padded to the next bucket, larger ones in chunks of
# the largest. Powers of two waste at most half a batch; no 32, whose cold compile took 155-307 s here against about
# 20 s for 16 (docs/MEASUREMENTS.md).
BATCH_BUCKETS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class DiffusionParams:
    """How to sample. guidance 1.0 is plain conditional sampling; 0.0 ignores the prompt. None for steps, sampler or
    guidance: the model's own (`ImageGenerator.resolve`: the file's `edgegen-unet.*` keys, else 20 DDIM steps and
    DEFAULT_GUIDANCE)."""

    steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None
    seed: int = 0
    n: int = 1

    def validate(self, timesteps: int = MAX_STEPS) -> None:
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or not 1 <= self.steps <= timesteps):
            raise GenerationError(f"steps must be an integer from 1 to {timesteps} (got {self.steps!r})")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise GenerationError(f"sampler must be one of {', '.join(SAMPLERS)} (got {self.sampler!r})")
        if self.guidance is not None and not valid_guidance(self.guidance):
            raise GenerationError(f"guidance must be a number from 0 to {MAX_GUIDANCE:g} (got {self.guidance!r})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise GenerationError(f"seed must be a non-negative integer (got {self.seed!r})")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or not 1 <= self.n <= MAX_IMAGES:
            raise GenerationError(f"n must be an integer from 1 to {MAX_IMAGES} (got {self.n!r})")


class ImageGenerator:
    """Loads a U-Net file once and samples batches of digits from it.

    >>> gen = ImageGenerator.load("models/weights/unet-mnist.gguf")
    >>> images = gen.generate("seven", DiffusionParams(steps=20, n=4))   # (4, 28, 28) uint8
    """

    def __init__(self, mf: ModelFile, device: str | None = None, jit_cache: bool = True,
                 options: KernelOptions | None = None):
        self.file = mf
        self.cfg: UNetConfig = config_from_file(mf, UNetConfig, UNET_ARCH)
        self.autoencoder_cfg: AutoencoderConfig | None = autoencoder_config(mf, self.cfg)
        self.plan = (options or KernelOptions()).plan(str(device))
        self.weights = PackedConvWeights(mf, device, self.plan.parts if self.plan.native else None)
        self.model = UNet(self.cfg, self.weights)
        self.autoencoder = None if self.autoencoder_cfg is None else Autoencoder(self.autoencoder_cfg, self.weights)
        self.device = device
        self.alpha_bars = cosine_alpha_bars(self.cfg.timesteps)
        # The file's own sampling defaults, checked by the same rules as a request's: the keys are
        # `edgegen-unet.<field>` and a DiffusionParams error starts with the field's name.
        g, sampler, steps = mf.get(GUIDANCE_KEY), mf.get(SAMPLER_KEY), mf.get(STEPS_KEY)
        try:
            DiffusionParams(steps=steps, sampler=sampler, guidance=g).validate(self.cfg.timesteps)
        except GenerationError as e:
            raise ArtifactError(f"{mf.path.name}: {UNET_ARCH}.{e}") from e
        self.default_guidance = DEFAULT_GUIDANCE if g is None else float(g)
        self.default_sampler: str = DEFAULT_SAMPLER if sampler is None else str(sampler)
        self.default_steps: int = DEFAULT_STEPS if steps is None else int(steps)
        self._buckets: dict[tuple[str, int], _BucketGraph] = {}
        self._unsaved = False
        self._cache_key = jit_cache_store.cache_key(mf.path, str(device), 0, f"diffusion-{self.plan.describe()}") \
            if jit_cache else None
        if self._cache_key is not None and (saved := jit_cache_store.load(self._cache_key)) is not None:
            self._install(saved)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_UNET, device: str | None = None, jit_cache: bool = True,
             options: KernelOptions | None = None) -> ImageGenerator:
        from edgegen.runtime.backend import resolve_device

        mf = open_model(model_path(path), architectures=(UNET_ARCH,))
        dev = resolve_device(device)
        with TINYGRAD_LOCK:
            return cls(mf, dev, jit_cache, options)

    @property
    def latent(self) -> bool:
        """Whether the U-Net denoises the autoencoder's latents (else pixels)."""
        return self.autoencoder is not None

    # ---- the U-Net and the decoder at bucketed batch sizes, graphs kept on disk ------------------------------------
    # A graph is keyed (kind, bucket): kind "eps" is the U-Net, "decode" a latent model's decoder.
    def _install(self, saved: dict) -> None:
        graphs, probes = saved.get("graphs"), saved.get("probes")
        if not isinstance(graphs, dict) or not isinstance(probes, dict):
            return
        forwards = self._forwards()
        for (kind, bucket), graph in graphs.items():
            if kind in forwards and bucket in BATCH_BUCKETS and isinstance(probes.get((kind, bucket)), np.ndarray):
                jit = TinyJit(forwards[kind])
                install_captured(jit, graph)
                self._buckets[(kind, bucket)] = _BucketGraph(jit, self._inputs(kind, bucket), probes[(kind, bucket)],
                                                             loaded=True)

    def _forwards(self) -> dict[str, Callable]:
        out: dict[str, Callable] = {"eps": self._forward}
        if self.autoencoder is not None:
            out["decode"] = self._decode_forward
        return out

    def _forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.model(x, t, y.cast(dtypes.int32)).realize()

    def _decode_forward(self, z: Tensor) -> Tensor:
        assert self.autoencoder is not None
        # contiguous: the decoder's output is a crop of its padded image, a view the direct CPU replay cannot return
        return self.autoencoder.decode(z).contiguous().realize()

    def graphs(self, kind: str = "eps") -> dict[int, str]:
        """Each batch bucket's graph of `kind` ("eps": the U-Net, "decode": the decoder): "loaded" (from disk, not
        yet checked) or "ready" (checked or captured)."""
        return {b: "loaded" if g.loaded else "ready" for (k, b), g in sorted(self._buckets.items()) if k == kind}

    def replay(self, bucket: int, kind: str = "eps") -> CPUReplay | None:
        """The (kind, bucket) graph's direct CPU replay, captured or checked first (None: TinyJit replays it)."""
        with TINYGRAD_LOCK:
            return self._graph(kind, bucket).replay

    @property
    def cache_key(self) -> str | None:
        """The JIT cache entry holding this model's graphs on this device (None: the cache is off)."""
        return self._cache_key

    def probe_input(self, bucket: int, kind: str = "eps") -> tuple[np.ndarray, ...]:
        """A fixed batch (seeded noise, spread timesteps, every class) whose output checks a loaded graph."""
        c, s = self.cfg.in_channels, self.cfg.image_size
        x = np.random.default_rng(bucket).standard_normal((bucket, c, s, s), dtype=np.float32)
        if kind == "decode":
            return (x,)
        t = np.linspace(0, self.cfg.timesteps - 1, bucket).round().astype(np.float32)
        y = (np.arange(bucket) % (self.cfg.num_classes + 1)).astype(np.float32)
        return x, t, y

    def _inputs(self, kind: str, bucket: int) -> tuple[Tensor, ...]:
        """The graph's persistent input buffers (float32), holding the probe input: a captured graph and its direct
        replay read these very buffers, rewritten in place for each batch."""
        return tuple(device_tensor(a, self.device) for a in self.probe_input(bucket, kind))

    def _graph(self, kind: str, bucket: int) -> _BucketGraph:
        """The (kind, bucket) graph, ready: a loaded one checked against its probe (or dropped and recaptured), a
        new one captured on its probe input, whose output is kept for the next process."""
        g = self._buckets.get((kind, bucket))
        if g is not None and g.loaded:
            g.loaded = False
            g.replay = self._replay(g.jit, g.inputs)
            if np.array_equal(g.run(), g.probe):
                return g
            log.warning("the cached %s graph for batch %d differs from its probe: recapturing it", kind, bucket)
            if self._cache_key is not None:
                jit_cache_store.remove(self._cache_key)
            g = None
        if g is None:
            inputs = self._inputs(kind, bucket)
            jit = capture_on_first_call(TinyJit(self._forwards()[kind]))
            out = jit(*inputs).numpy()
            g = self._buckets[(kind, bucket)] = _BucketGraph(jit, inputs, out, loaded=False)
            g.replay = self._replay(jit, inputs)
            if g.replay is not None and not np.array_equal(g.run(), out):
                log.warning("the direct CPU replay differs from TinyJit (%s, batch %d): using TinyJit", kind, bucket)
                g.replay = None
            self._unsaved = True
        return g

    def _replay(self, jit: Any, inputs: tuple[Tensor, ...]) -> CPUReplay | None:
        """The captured graph's kernels called directly on the native runner's threads (the CPU backend only)."""
        if not self.plan.native:
            return None
        return CPUReplay.build(jit, inputs, self.plan.threads)

    def _bucketed(self, kind: str, arrays: tuple[np.ndarray, ...]) -> np.ndarray:
        """The (kind) graph on a batch, run padded to the next batch bucket (chunks of the largest)."""
        n, m = len(arrays[0]), BATCH_BUCKETS[-1]
        if n > m:
            return np.concatenate([self._bucketed(kind, tuple(a[i:i + m] for a in arrays)) for i in range(0, n, m)])
        bucket = next(k for k in BATCH_BUCKETS if k >= n)
        if bucket > n:  # repeat the last row: every row is computed independently, so padding never changes others
            arrays = tuple(np.concatenate([a, np.repeat(a[-1:], bucket - n, axis=0)]) for a in arrays)
        with TINYGRAD_LOCK:  # one step at a time, never across the sampler's yields
            g = self._graph(kind, bucket)
            for buf, a in zip(g.inputs, arrays, strict=True):
                write_buffer(buf, a.astype(np.float32))
            return g.run()[:n]

    def eps(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The U-Net's noise prediction for a batch."""
        return self._bucketed("eps", (x, t, y))

    def save_graphs(self) -> None:
        """Keep the captured graphs on disk for the next process (after an answer is out, never while one waits)."""
        if self._cache_key is None or not self._unsaved:
            return
        with TINYGRAD_LOCK:
            kept = {k: g for k, g in self._buckets.items() if not g.loaded and captured_graph(g.jit) is not None}
            graphs = {k: captured_graph(g.jit) for k, g in kept.items()}
            probes = {k: g.probe for k, g in kept.items()}
            if jit_cache_store.save(self._cache_key, {"graphs": graphs, "probes": probes}) is not None:
                self._unsaved = False

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Pixels (N, 1, 28, 28) in [-1, 1] of final samples: a latent model's decoder, or the samples themselves."""
        if self.autoencoder is None:
            return latents
        return np.clip(self._bucketed("decode", (latents,)), -1.0, 1.0)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """A latent model's latents (N, C, 8, 8) of images (N, 1, 28, 28) in [-1, 1]."""
        if self.autoencoder is None:
            raise GenerationError(f"{self.file.path.name} is a pixel-space model: it has no autoencoder")
        with TINYGRAD_LOCK:
            return np.concatenate([self.autoencoder.encode(Tensor(images[i:i + 64].astype(np.float32),
                                                                  device=self.device)).numpy()
                                   for i in range(0, len(images), 64)])

    def timesteps(self, steps: int) -> np.ndarray:
        """`steps` training timesteps from the noisiest down to 0, evenly spaced."""
        return ddim_timesteps(self.cfg.timesteps, steps)

    def resolve(self, params: DiffusionParams) -> DiffusionParams:
        """`params` with the model's own steps, sampler and guidance where they are None, checked."""
        params.validate(self.cfg.timesteps)
        return replace(params, steps=self.default_steps if params.steps is None else params.steps,
                       sampler=params.sampler or self.default_sampler,
                       guidance=self.default_guidance if params.guidance is None else float(params.guidance))

    def sample_iter(self, labels: list[int] | np.ndarray, params: DiffusionParams,
                    batch: int | None = None) -> Iterator[tuple[int, int, np.ndarray | None]]:
        """Yields (step, total, None) after each denoising step and finally (total, total, images in [-1, 1])."""
        params = self.resolve(params)
        assert params.steps is not None and params.guidance is not None
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or labels.size == 0 or labels.min() < 0 or labels.max() >= self.cfg.num_classes:
            raise GenerationError(f"labels must be class ids 0..{self.cfg.num_classes - 1}")
        rng = np.random.default_rng(params.seed)
        c, s = self.cfg.in_channels, self.cfg.image_size
        x = rng.standard_normal((len(labels), c, s, s), dtype=np.float32)
        ts = self.timesteps(params.steps)
        guidance = params.guidance
        guided = guidance != 1.0
        eta = 1.0 if params.sampler == "ddpm" else 0.0
        batch = min(batch or len(labels), BATCH_BUCKETS[-1] // (2 if guided else 1))
        clip = LATENT_CLIP if self.latent else 1.0
        for i, t in enumerate(ts):
            ab = self.alpha_bars[t]
            ab_prev = self.alpha_bars[ts[i + 1]] if i + 1 < len(ts) else 1.0
            eps = np.concatenate([self._guided_eps(x[j:j + batch], t, labels[j:j + batch], guidance, guided)
                                  for j in range(0, len(labels), batch)])
            x, sigma = ddim_step(x, eps, ab, ab_prev, clip, eta)
            if sigma > 0:
                x = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
            x = x.astype(np.float32)
            yield i + 1, len(ts), None
        yield len(ts), len(ts), self.decode(x)

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


class _BucketGraph:
    """One captured graph (the U-Net or the decoder at one batch bucket): its TinyJit, persistent inputs, probe
    output and direct CPU replay."""

    def __init__(self, jit: Any, inputs: tuple[Tensor, ...], probe: np.ndarray, loaded: bool):
        self.jit, self.inputs, self.probe, self.loaded = jit, inputs, probe, loaded
        self.replay: CPUReplay | None = None

    def run(self) -> np.ndarray:
        """The graph on what the input buffers hold now."""
        if self.replay is not None:
            self.replay({})
            return self.replay.result().reshape(self.probe.shape)
        return self.jit(*self.inputs).numpy()


def autoencoder_config(mf: ModelFile, unet: UNetConfig) -> AutoencoderConfig | None:
    """A latent model's autoencoder configuration (`autoencoder.*` keys), None for a pixel model; ArtifactError when
    the U-Net's input is not the autoencoder's latent."""
    if mf.get(LATENT_MARKER_KEY) is None:
        return None
    cfg: AutoencoderConfig = config_from_file(mf, AutoencoderConfig, AUTOENCODER_PREFIX)
    if cfg.padded_size % 4 or cfg.padded_size < cfg.image_size:
        raise ArtifactError(f"{mf.path.name}: autoencoder padded_size {cfg.padded_size} must be a multiple of 4 and at "
                            f"least image_size {cfg.image_size}")
    if (unet.in_channels, unet.image_size) != (cfg.latent_channels, cfg.latent_size):
        raise ArtifactError(f"{mf.path.name}: the U-Net takes ({unet.in_channels}, {unet.image_size}) inputs but the "
                            f"autoencoder makes ({cfg.latent_channels}, {cfg.latent_size}) latents")
    return cfg


def valid_guidance(g: object) -> bool:
    """A guidance weight: a number (not a bool) from 0 to MAX_GUIDANCE; NaN is not."""
    return not isinstance(g, bool) and isinstance(g, (int, float)) and 0.0 <= float(g) <= MAX_GUIDANCE
