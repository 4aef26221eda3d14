"""Train the diffusion models with PyTorch (the `export` extra): the same networks as models/unet.py and
models/autoencoder.py, over the same parameter names and stored shapes, written to the same GGUF checkpoints.

Why a second implementation: on this 2-core CPU PyTorch's convolution backward runs several times faster than
tinygrad's generated kernels (docs/MEASUREMENTS.md, "diffusion training"), and the pixel U-Net needs tens of epochs
to draw digits a classifier cannot tell from real ones; the 3000 tinygrad steps of the first U-Net were two. The
runtime stays tinygrad: a test runs both forwards on the same weights and requires the same output
(tests/diffusion/test_diffusion_torch.py), so the trainer cannot drift from the model it trains.

Three models, each its own command (cli/train_diffusion.py):
- `unet`: the pixel U-Net on [-1, 1] digits (epsilon prediction, cosine schedule, classifier-free guidance dropout,
  EMA weights);
- `autoencoder`: the TAESD-style autoencoder (L1 + MSE reconstruction, a little latent noise so that the decoder
  tolerates what a sampler hands it), latents normalised and the normalisation folded into its convolutions;
- `latent-unet`: a U-Net on the frozen autoencoder's latents; its file carries the autoencoder too, so one file
  is one latent model (`edgegen diffuse --model FILE`).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgegen.models.autoencoder import (
    AUTOENCODER_PREFIX,
    LATENT_MARKER_KEY,
    AutoencoderConfig,
    decoder_layers,
    encoder_layers,
)
from edgegen.models.autoencoder import parameter_shapes as autoencoder_shapes
from edgegen.models.unet import UNET_ARCH, UNetConfig, cosine_alpha_bars, parameter_shapes
from edgegen.quantize.mnist import TrainingError, load_mnist

log = logging.getLogger("edgegen.quantize.training")

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - the trainer is optional
    torch = None  # type: ignore[assignment]


def require_torch() -> None:
    if torch is None:
        raise TrainingError("training with --trainer torch needs PyTorch: pip install 'edgegen[export]'")


# ---------------------------------------------------------------------------------------------------- the networks
def _conv(p: dict, name: str, x, k: int, stride: int = 1):
    w = p[f"{name}.weight"]
    return F.conv2d(x, w.reshape(w.shape[0], -1, k, k), p.get(f"{name}.bias"), stride=stride, padding=k // 2)


def _linear(p: dict, name: str, x):
    return F.linear(x, p[f"{name}.weight"], p.get(f"{name}.bias"))


def _norm(p: dict, name: str, x, groups: int):
    return F.group_norm(x, groups, p[f"{name}.weight"], p[f"{name}.bias"], eps=1e-5)


def _up(x):
    return F.interpolate(x, scale_factor=2, mode="nearest")


def unet_forward(cfg: UNetConfig, p: dict, x, t, y):
    """models.unet.UNet.__call__ in torch (the same operations in the same order)."""
    c0, c1, c2 = cfg.channels
    half = cfg.time_freqs // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000.0) / half))
    args = t.float().reshape(-1, 1) * freqs.reshape(1, half)
    h = F.silu(_linear(p, "time.fc1", torch.cat([args.sin(), args.cos()], 1)))
    emb = F.silu(_linear(p, "time.fc2", h) + p["class_emb"][y])

    def res(name: str, x, cin: int, cout: int):
        h = _conv(p, f"{name}.conv1", F.silu(_norm(p, f"{name}.norm1", x, cfg.groups)), 3)
        h = h + _linear(p, f"{name}.emb", emb).reshape(-1, cout, 1, 1)
        h = _conv(p, f"{name}.conv2", F.silu(_norm(p, f"{name}.norm2", h, cfg.groups)), 3)
        return (x if cin == cout else _conv(p, f"{name}.skip", x, 1)) + h

    h0 = res("down0", _conv(p, "conv_in", x, 3), c0, c0)
    h1 = res("down1", _conv(p, "down0.down", h0, 3, stride=2), c1, c1)
    h = res("mid.res1", _conv(p, "down1.down", h1, 3, stride=2), c2, c2)
    b, c, hh, ww = h.shape
    a = _norm(p, "mid.attn.norm", h, cfg.groups).reshape(b, c, hh * ww).transpose(1, 2)
    qkv = _linear(p, "mid.attn.qkv", a).reshape(b, hh * ww, 3, cfg.heads, c // cfg.heads)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, hh * ww, c)
    h = h + _linear(p, "mid.attn.out", a).transpose(1, 2).reshape(b, c, hh, ww)
    h = _conv(p, "up1.merge", torch.cat([_up(h), h1], 1), 1)
    h = res("up1", h, c1, c1)
    h = _conv(p, "up0.merge", torch.cat([_up(h), h0], 1), 1)
    h = res("up0", h, c0, c0)
    return _conv(p, "conv_out", F.silu(_norm(p, "out.norm", h, cfg.groups)), 3)


def encode(cfg: AutoencoderConfig, p: dict, x):
    """models.autoencoder.Autoencoder.encode in torch."""
    h = F.pad(x, (cfg.pad,) * 4, value=-1.0)
    layers = encoder_layers(cfg)
    for i, (name, _, _, stride) in enumerate(layers):
        h = _conv(p, name, h, 3, stride)
        if i + 1 < len(layers):
            h = F.relu(h)
    return h


def decode(cfg: AutoencoderConfig, p: dict, z):
    """models.autoencoder.Autoencoder.decode in torch."""
    h = z
    layers = decoder_layers(cfg)
    for i, (name, _, _, up) in enumerate(layers):
        h = _conv(p, name, _up(h) if up else h, 3)
        if i + 1 < len(layers):
            h = F.relu(h)
    return h[:, :, cfg.pad:cfg.pad + cfg.image_size, cfg.pad:cfg.pad + cfg.image_size]


# ---------------------------------------------------------------------------------------------------- training
def _parameters(init: dict[str, np.ndarray]) -> dict:
    return {n: torch.nn.Parameter(torch.from_numpy(a.copy())) for n, a in init.items()}


def _lr(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to 5% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    q = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * q)))


def _loop(params: dict, loss_fn: Callable, steps: int, lr: float, ema_decay: float | None, label: str,
          save: Callable[[dict, int, float, float], None], save_every: int) -> tuple[dict, float, float]:
    """AdamW steps of loss_fn(step); returns (weights to keep: EMA or raw, final loss, seconds)."""
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
    ema = {n: p.detach().clone() for n, p in params.items()} if ema_decay else None
    start, losses = time.perf_counter(), []
    for i in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr(i, steps, lr, warmup=min(500, steps // 20 + 1))
        loss = loss_fn(i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        opt.step()
        if ema is not None and ema_decay is not None:
            d = min(ema_decay, (1 + i) / (10 + i))  # EMA warmup: early weights are averaged over fewer steps
            with torch.no_grad():
                for n, p in params.items():
                    ema[n].mul_(d).add_(p.detach(), alpha=1 - d)
        losses.append(loss.item())
        if (i + 1) % 200 == 0 or i < 2:
            el = time.perf_counter() - start
            log.info("%s step %d/%d loss %.4f (mean of last 200: %.4f) %.0f s, %.3f s/step", label, i + 1, steps,
                     losses[-1], float(np.mean(losses[-200:])), el, el / (i + 1))
        if save_every and (i + 1) % save_every == 0:
            keep = ema if ema is not None else params
            save({n: t.detach().numpy().copy() for n, t in keep.items()}, i + 1, float(np.mean(losses[-200:])),
                 time.perf_counter() - start)
    keep = ema if ema is not None else params
    weights = {n: t.detach().numpy().copy() for n, t in keep.items()}
    return weights, float(np.mean(losses[-200:])), time.perf_counter() - start


class _Batches:
    """Random minibatches of training digits in [-1, 1] (an epoch-wise permutation)."""

    def __init__(self, rng: np.random.Generator, batch: int):
        images, self.labels = load_mnist("train")
        self.images = images.reshape(-1, 1, 28, 28) * 2.0 - 1.0
        self.rng, self.batch = rng, batch
        self.order, self.pos = rng.permutation(len(self.images)), 0

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        if self.pos + self.batch > len(self.order):
            self.order, self.pos = self.rng.permutation(len(self.images)), 0
        idx = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return self.images[idx], self.labels[idx]


def _diffusion_loss(cfg: UNetConfig, params: dict, batches: _Batches, rng: np.random.Generator, p_uncond: float
                    ) -> Callable:
    alpha_bars = cosine_alpha_bars(cfg.timesteps)

    def loss(_: int):
        x, labels = batches.next()
        x0 = torch.from_numpy(x)
        b = len(x0)
        t = rng.integers(0, cfg.timesteps, b)
        y = np.where(rng.random(b) < p_uncond, cfg.null_class, labels)
        ab = torch.from_numpy(alpha_bars[t].astype(np.float32).reshape(b, 1, 1, 1))
        noise = torch.from_numpy(rng.standard_normal(x0.shape, dtype=np.float32))
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        return (unet_forward(cfg, params, xt, torch.from_numpy(t), torch.from_numpy(y)) - noise).square().mean()

    return loss


def _unet_init(cfg: UNetConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from edgegen.quantize.training import init_parameters

    # each residual branch and the output start at zero: every block starts as the identity
    return init_parameters(parameter_shapes(cfg), rng, zero=("conv2.weight", "conv_out.weight", "attn.out.weight"))


def train_unet(cfg: UNetConfig, steps: int, batch: int, lr: float, seed: int, out: Path, provenance: dict,
               ema_decay: float = 0.9995, p_uncond: float = 0.1, save_every: int = 1000,
               sampling: dict | None = None) -> dict[str, float]:
    """The pixel U-Net (epsilon prediction, MSE) on [-1, 1] digits; writes the EMA weights to `out`, with
    `sampling` (models.unet.sampling_keys) as the file's own sampling defaults."""
    from edgegen.quantize.training import write_checkpoint

    require_torch()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = _parameters(_unet_init(cfg, rng))
    batches = _Batches(rng, batch)

    def save(weights: dict, done: int, loss: float, seconds: float) -> None:
        prov = dict(provenance, trainer="torch", steps=done, seed=seed, batch=batch, final_loss=loss,
                    train_seconds=seconds)
        write_checkpoint(out, UNET_ARCH, asdict(cfg), weights, prov, extra=sampling or {})

    weights, final, seconds = _loop(params, _diffusion_loss(cfg, params, batches, rng, p_uncond),
                                    steps, lr, ema_decay, "unet", save, save_every)
    save(weights, steps, final, seconds)
    return {"final_loss": final, "train_seconds": seconds}


def train_autoencoder(cfg: AutoencoderConfig, steps: int, batch: int, lr: float, seed: int, out: Path,
                      provenance: dict, latent_noise: float = 0.1) -> dict[str, float]:
    """The autoencoder (L1 + MSE on pixels); latents normalised per channel, folded into the convolutions."""
    from edgegen.quantize.training import init_parameters, write_checkpoint

    require_torch()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = _parameters(init_parameters(autoencoder_shapes(cfg), rng))
    batches = _Batches(rng, batch)

    def loss_fn(_: int):
        x = torch.from_numpy(batches.next()[0])
        z = encode(cfg, params, x)
        # Latents are kept near unit scale (a weak L2 pull) and decoded with a little noise: a sampler hands the
        # decoder latents that are close to, not exactly, what the encoder makes.
        noisy = z + latent_noise * z.detach().std() * torch.randn_like(z)
        r = decode(cfg, params, noisy)
        return (r - x).abs().mean() + (r - x).square().mean() + 1e-4 * z.square().mean()

    def save(weights: dict, done: int, loss: float, seconds: float) -> None:
        folded = fold_latent_normalisation(cfg, weights)
        prov = dict(provenance, trainer="torch", steps=done, seed=seed, batch=batch, final_loss=loss,
                    train_seconds=seconds, reconstruction_mae=reconstruction_error(cfg, folded))
        write_checkpoint(out, AUTOENCODER_ARCH, asdict(cfg), folded, prov)

    weights, final, seconds = _loop(params, loss_fn, steps, lr, None, "autoencoder", save, 0)
    save(weights, steps, final, seconds)
    return {"final_loss": final, "train_seconds": seconds}


AUTOENCODER_ARCH = "edgegen-autoencoder"  # an autoencoder checkpoint on its own (the input of latent-unet)


def _latents(cfg: AutoencoderConfig, weights: dict[str, np.ndarray], images: np.ndarray) -> np.ndarray:
    p = {n: torch.from_numpy(a) for n, a in weights.items()}
    with torch.no_grad():
        return np.concatenate([encode(cfg, p, torch.from_numpy(images[i:i + 1000])).numpy()
                               for i in range(0, len(images), 1000)])


def fold_latent_normalisation(cfg: AutoencoderConfig, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weights whose encoder makes zero-mean unit-variance latents per channel (over the training digits) and whose
    decoder undoes it: z' = (z - m) / s folded into encoder.conv5, z = s z' + m into decoder.conv0."""
    images, _ = load_mnist("train")
    z = _latents(cfg, weights, images[:10000].reshape(-1, 1, 28, 28) * 2.0 - 1.0)
    m, s = z.mean(axis=(0, 2, 3)), z.std(axis=(0, 2, 3)) + 1e-6
    w = {n: a.copy() for n, a in weights.items()}
    w["encoder.conv5.weight"] /= s[:, None]
    w["encoder.conv5.bias"] = (w["encoder.conv5.bias"] - m) / s
    dw = w["decoder.conv0.weight"].reshape(-1, cfg.latent_channels, 9)  # (out, latent channel, 3x3)
    # the decoder's zero padding stays zero, so the mean shift is exact only away from the border: the
    # network was trained with the same padding, and the residual is a small bias at the edge (no digit there)
    w["decoder.conv0.bias"] = w["decoder.conv0.bias"] + (dw * m[None, :, None]).sum(axis=(1, 2))
    w["decoder.conv0.weight"] = (dw * s[None, :, None]).reshape(dw.shape[0], -1)
    return w


def reconstruction_error(cfg: AutoencoderConfig, weights: dict[str, np.ndarray]) -> float:
    """Mean absolute pixel error in [0, 1] units of encode -> decode over the 10k validation digits."""
    images, _ = load_mnist("valid")
    x = images.reshape(-1, 1, 28, 28) * 2.0 - 1.0
    z = _latents(cfg, weights, x)
    p = {n: torch.from_numpy(a) for n, a in weights.items()}
    with torch.no_grad():
        r = np.concatenate([decode(cfg, p, torch.from_numpy(z[i:i + 1000])).numpy() for i in range(0, len(z), 1000)])
    return float(np.abs(np.clip(r, -1, 1) - x).mean() / 2)


def train_latent_unet(cfg: UNetConfig, autoencoder: Path, steps: int, batch: int, lr: float, seed: int, out: Path,
                      provenance: dict, ema_decay: float = 0.9995, p_uncond: float = 0.1,
                      sampling: dict | None = None) -> dict[str, float]:
    """A U-Net on the frozen autoencoder's latents; `out` holds both networks (one file, one latent model)."""
    from edgegen.quantize.training import write_checkpoint

    require_torch()
    ae_cfg, ae_weights = read_autoencoder(autoencoder)
    if (cfg.in_channels, cfg.image_size) != (ae_cfg.latent_channels, ae_cfg.latent_size):
        raise TrainingError(f"a latent U-Net takes ({ae_cfg.latent_channels}, {ae_cfg.latent_size}) latents")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = _parameters(_unet_init(cfg, rng))
    batches = _Batches(rng, batch)
    log.info("encoding the training digits")
    batches.images = _latents(ae_cfg, ae_weights, batches.images)  # the same rows, encoded once up front

    def save(weights: dict, done: int, loss: float, seconds: float) -> None:
        prov = dict(provenance, trainer="torch", steps=done, seed=seed, batch=batch, final_loss=loss,
                    train_seconds=seconds)
        tensors = dict(weights, **ae_weights)
        write_checkpoint(out, UNET_ARCH, asdict(cfg), tensors, prov,
                         extra={f"{AUTOENCODER_PREFIX}.{k}": v for k, v in asdict(ae_cfg).items()}
                         | (sampling or {}))

    weights, final, seconds = _loop(params, _diffusion_loss(cfg, params, batches, rng, p_uncond),
                                    steps, lr, ema_decay, "latent-unet", save, 1000)
    save(weights, steps, final, seconds)
    return {"final_loss": final, "train_seconds": seconds}



def read_autoencoder(path: Path) -> tuple[AutoencoderConfig, dict[str, np.ndarray]]:
    from edgegen.quantize.training import read_checkpoint
    from edgegen.runtime.artifact import open_gguf
    from edgegen.runtime.artifact.config import config_from_file

    weights = read_checkpoint(path, AUTOENCODER_ARCH)
    return config_from_file(open_gguf(path), AutoencoderConfig, AUTOENCODER_ARCH), weights


# ---------------------------------------------------------------------------------------------------- peers
def torch_networks(path: Path) -> tuple[Callable, Callable | None]:
    """The float networks of a U-Net file (fp32 checkpoint or quantized: dequantized) as torch functions:
    eps(x, t, y) and, for a latent model, decode(z); what benchmarks/bench_diffusion.py runs PyTorch and exports to
    onnxruntime with."""
    from edgegen.runtime.artifact import open_gguf
    from edgegen.runtime.artifact.config import config_from_file
    from edgegen.runtime.artifact.reader import dequantize_tensor

    require_torch()
    mf = open_gguf(path)
    cfg = config_from_file(mf, UNetConfig, UNET_ARCH)
    ae = (config_from_file(mf, AutoencoderConfig, AUTOENCODER_PREFIX)
          if mf.get(LATENT_MARKER_KEY) is not None else None)
    p = {n: torch.from_numpy(dequantize_tensor(info)) for n, info in mf.tensors.items()}
    return ((lambda x, t, y: unet_forward(cfg, p, x, t, y)),
            None if ae is None else (lambda z: decode(ae, p, z)))


def export_onnx(path: Path, out_dir: Path, opset: int = 17) -> dict[str, Path]:
    """The U-Net (inputs x, t, y; output eps; batch dynamic) and, for a latent model, the decoder (z -> image) as
    ONNX files, float32, through PyTorch's TorchScript exporter."""
    eps, dec = torch_networks(path)

    class Wrap(torch.nn.Module):
        def __init__(self, fn: Callable):
            super().__init__()
            self.fn = fn

        def forward(self, *args):
            return self.fn(*args)

    from edgegen.runtime.artifact import open_gguf
    from edgegen.runtime.artifact.config import config_from_file

    out_dir.mkdir(parents=True, exist_ok=True)

    cfg = config_from_file(open_gguf(path), UNetConfig, UNET_ARCH)
    x = torch.zeros(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    t, y = torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)
    files = {"unet": out_dir / "unet.onnx"}
    with torch.no_grad():
        torch.onnx.export(Wrap(eps), (x, t, y), str(files["unet"]), dynamo=False, opset_version=opset,
                          input_names=["x", "t", "y"], output_names=["eps"],
                          dynamic_axes={"x": {0: "batch"}, "t": {0: "batch"}, "y": {0: "batch"}, "eps": {0: "batch"}})
        if dec is not None:
            files["decoder"] = out_dir / "decoder.onnx"
            torch.onnx.export(Wrap(dec), (x,), str(files["decoder"]), dynamo=False, opset_version=opset,
                              input_names=["z"], output_names=["image"],
                              dynamic_axes={"z": {0: "batch"}, "image": {0: "batch"}})
    return files

