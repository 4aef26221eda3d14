"""A small class-conditional U-Net for 28x28 diffusion (DDPM / DDIM), written once in tinygrad.

Like the Llama, the model does no file I/O and knows nothing of quantization: it asks a `UNetWeights` source for
each convolution, linear layer and vector by name, so float training weights and packed int8/int4 weights run
through the same code. Every matrix is stored 2-D, (out, in * kh * kw) for convolutions, which is the row layout
the GGUF block types quantize along (blocks of 32 along the reduction axis).

Shape (channels c0, c1, c2 at 28, 14, 7 pixels):

  x -> conv_in -> res(c0) ------------------------------------------------ + -> res(c0) -> conv_out -> eps
                    | down (stride 2)                                       ^ up (nearest) + concat + 1x1
                    v                                                       |
                  res(c1) ---------------------------------------- + -> res(c1)
                    | down                                         ^ up + concat + 1x1
                    v                                              |
                  res(c2) -> attention(c2) ------------------------'

The timestep (sinusoidal, then a two-layer MLP) and the class (a learned table with one extra row, the null class
for classifier-free guidance) are summed into one embedding that every residual block adds after its first
convolution. Skips are concatenated then reduced by a 1x1 convolution before the block: at 28x28 a 3x3 over the
concatenation costs more than the whole block. Sized to train on a 2-core CPU: (32, 32, 64) with one residual block
in the middle (~93 MFLOP per image forward) costs about half of (32, 64, 128) with two (docs/MEASUREMENTS.md).
Channels are multiples of 32 so that every kernel row (in * 9) holds whole GGUF blocks of 32 and can be stored as
Q8_0 / Q4_x; with 24 or 48 channels they would fall back to F16.

`.contiguous()` before each convolution: tinygrad otherwise fuses GroupNorm/SiLU/upsample work into the conv and
recomputes it for every output position (docs/TINYGRAD.md, docs/MEASUREMENTS.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from tinygrad import Tensor, dtypes

UNET_ARCH = "edgegen-unet"  # general.architecture of U-Net files
GUIDANCE_KEY = f"{UNET_ARCH}.guidance"  # a file's own classifier-free guidance weight (float, 0-20)
SAMPLER_KEY = f"{UNET_ARCH}.sampler"  # a file's own sampler ("ddim" or "ddpm")
STEPS_KEY = f"{UNET_ARCH}.steps"  # a file's own number of denoising steps
DEFAULT_SAMPLER, DEFAULT_STEPS = "ddim", 20  # for a file that names neither


def sampling_keys(guidance: float | None = None, sampler: str | None = None, steps: int | None = None
                  ) -> dict[str, float | str | int]:
    """The metadata a U-Net file carries for its own sampling defaults (those given)."""
    keys: dict[str, float | str | int] = {}
    if guidance is not None:
        keys[GUIDANCE_KEY] = float(guidance)
    if sampler is not None:
        keys[SAMPLER_KEY] = sampler
    if steps is not None:
        keys[STEPS_KEY] = int(steps)
    return keys

# Classifier-free guidance weight: higher w reads more clearly as the prompted digit (prompt accuracy) at a cost in
# variety (Frechet distance). A file may carry its own (`edgegen-unet.guidance`, chosen by a sweep: the shipped
# models' figures per weight are in docs/MEASUREMENTS.md); this is the weight for a file that does not.
DEFAULT_GUIDANCE = 2.0
# A latent model's predicted clean latent is clipped to this many standard deviations (the pixel model's to [-1, 1]):
# the autoencoder's latents are normalised to unit variance per channel, and the training digits' latents lie
# within it (docs/MEASUREMENTS.md).
LATENT_CLIP = 5.0


class UNetWeights(Protocol):
    """Where the U-Net gets its parameters.

    `conv` applies the stored (out, in*k*k) kernel as a k x k convolution; `linear` computes x @ W.T (+ bias if
    the source has `<name>.bias`); `vector` returns a 1-D or 2-D float tensor (norm weights, the class table).
    """

    def conv(self, name: str, x: Tensor, k: int, stride: int = 1, padding: int = 0) -> Tensor: ...

    def linear(self, name: str, x: Tensor) -> Tensor: ...

    def vector(self, name: str) -> Tensor: ...

    def norm_silu_conv(self, norm: str, conv: str, x: Tensor, k: int, groups: int) -> Tensor:
        """conv(silu(group_norm(x))), same size (padding k // 2): `norm_silu_conv` below, or one fused kernel."""
        ...

    def attention(self, qkv: Tensor, heads: int) -> Tensor:
        """Self-attention (B, C, T) of projected tokens qkv (B, 3 C, T), channels (3, heads, C / heads), channel-major
        as a 1x1 convolution leaves them: `attention` below, or one kernel."""
        ...


GROUP_NORM_EPS = 1e-5


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = 28
    in_channels: int = 1
    channels: tuple[int, int, int] = (32, 32, 64)
    num_classes: int = 10  # the table has num_classes + 1 rows; the last is the null class
    time_freqs: int = 64  # sinusoidal features of the timestep
    emb_dim: int = 128
    groups: int = 8
    heads: int = 4
    timesteps: int = 1000

    @property
    def null_class(self) -> int:
        return self.num_classes


def parameter_shapes(cfg: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and stored shape; matrices are 2-D, convolutions flattened to (out, in*k*k)."""
    c0, c1, c2 = cfg.channels
    e = cfg.emb_dim
    shapes: dict[str, tuple[int, ...]] = {
        "time.fc1.weight": (e, cfg.time_freqs), "time.fc1.bias": (e,),
        "time.fc2.weight": (e, e), "time.fc2.bias": (e,),
        "class_emb": (cfg.num_classes + 1, e),
        "conv_in.weight": (c0, cfg.in_channels * 9), "conv_in.bias": (c0,),
    }

    def res(name: str, cin: int, cout: int) -> None:
        shapes.update({
            f"{name}.norm1.weight": (cin,), f"{name}.norm1.bias": (cin,),
            f"{name}.conv1.weight": (cout, cin * 9), f"{name}.conv1.bias": (cout,),
            f"{name}.emb.weight": (cout, e), f"{name}.emb.bias": (cout,),
            f"{name}.norm2.weight": (cout,), f"{name}.norm2.bias": (cout,),
            f"{name}.conv2.weight": (cout, cout * 9), f"{name}.conv2.bias": (cout,),
        })
        if cin != cout:
            shapes.update({f"{name}.skip.weight": (cout, cin), f"{name}.skip.bias": (cout,)})

    def conv(name: str, cin: int, cout: int, k: int) -> None:
        shapes.update({f"{name}.weight": (cout, cin * k * k), f"{name}.bias": (cout,)})

    res("down0", c0, c0)
    conv("down0.down", c0, c1, 3)
    res("down1", c1, c1)
    conv("down1.down", c1, c2, 3)
    res("mid.res1", c2, c2)
    shapes.update({
        "mid.attn.norm.weight": (c2,), "mid.attn.norm.bias": (c2,),
        "mid.attn.qkv.weight": (3 * c2, c2), "mid.attn.qkv.bias": (3 * c2,),
        "mid.attn.out.weight": (c2, c2), "mid.attn.out.bias": (c2,),
    })
    conv("up1.merge", c2 + c1, c1, 1)
    res("up1", c1, c1)
    conv("up0.merge", c1 + c0, c0, 1)
    res("up0", c0, c0)
    shapes.update({"out.norm.weight": (c0,), "out.norm.bias": (c0,)})
    conv("conv_out", c0, cfg.in_channels, 3)
    return shapes


def group_norm(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float = GROUP_NORM_EPS) -> Tensor:
    b, c, h, w = x.shape
    g = x.reshape(b, groups, -1)
    mean = g.mean(axis=-1, keepdim=True)
    var = (g - mean).square().mean(axis=-1, keepdim=True)
    g = (g - mean) * (var + eps).rsqrt()
    return g.reshape(b, c, h, w) * weight.reshape(1, c, 1, 1) + bias.reshape(1, c, 1, 1)


def norm_silu_conv(w: UNetWeights, norm: str, conv: str, x: Tensor, k: int, groups: int) -> Tensor:
    """conv(silu(group_norm(x))) from the source's vectors and convolution, in tinygrad's operations."""
    h = group_norm(x, w.vector(f"{norm}.weight"), w.vector(f"{norm}.bias"), groups).silu()
    return w.conv(conv, h.contiguous(), k, padding=k // 2)


def attention(qkv: Tensor, heads: int) -> Tensor:
    """softmax(q k^T / sqrt(d)) v per head, in tinygrad's operations: (B, C, T) of qkv (B, 3 C, T)."""
    b, c3, t = qkv.shape
    c = c3 // 3
    parts = qkv.reshape(b, 3, heads, c // heads, t)
    q, k, v = (parts[:, i].transpose(2, 3) for i in range(3))  # (B, heads, T, C/heads)
    return q.scaled_dot_product_attention(k, v).transpose(2, 3).reshape(b, c, t)


def device_arange(n: int, device: str | tuple[str, ...] | None) -> Tensor:
    """0., 1., .., n-1 computed on `device` inside the graph (Tensor.arange takes no device in tinygrad 0.14, and a
    tensor made from a numpy array is a host-to-device copy in every replay of a captured graph, which the direct
    CPU replay of runtime.cpu_replay refuses). Exact: small integers in float32."""
    return Tensor.ones(n, device=device, dtype=dtypes.float32).cumsum(0) - 1.0


def timestep_features(t: Tensor, n: int) -> Tensor:
    """Sinusoidal features of integer timesteps t (B,) -> (B, n), as in DDPM (Ho et al., 2020)."""
    half = n // 2
    freqs = (device_arange(half, t.device) * (-math.log(10000.0) / half)).exp()
    args = t.cast(dtypes.float32).reshape(-1, 1) * freqs.reshape(1, half)
    return args.sin().cat(args.cos(), dim=1)


def upsample2(x: Tensor) -> Tensor:
    """Nearest-neighbour 2x upsampling (B, C, H, W) -> (B, C, 2H, 2W)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h, 1, w, 1).expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)


class UNet:
    def __init__(self, cfg: UNetConfig, weights: UNetWeights):
        self.cfg, self.w = cfg, weights

    def _norm(self, name: str, x: Tensor) -> Tensor:
        return group_norm(x, self.w.vector(f"{name}.weight"), self.w.vector(f"{name}.bias"), self.cfg.groups)

    def _conv(self, name: str, x: Tensor, k: int, stride: int = 1) -> Tensor:
        return self.w.conv(name, x.contiguous(), k, stride=stride, padding=k // 2)

    def _res(self, name: str, x: Tensor, emb: Tensor, cin: int, cout: int) -> Tensor:
        g = self.cfg.groups
        h = self.w.norm_silu_conv(f"{name}.norm1", f"{name}.conv1", x, 3, g)
        h = h + self.w.linear(f"{name}.emb", emb).reshape(emb.shape[0], cout, 1, 1)
        h = self.w.norm_silu_conv(f"{name}.norm2", f"{name}.conv2", h, 3, g)
        skip = x if cin == cout else self._conv(f"{name}.skip", x, 1)
        return skip + h

    def _attention(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        heads = self.cfg.heads
        # The projections are 1x1 convolutions (the same stored (out, in) matrices as linear layers) so that the
        # tokens stay channel-major: no transposes, and the CPU's convolution kernel computes them.
        qkv = self._conv("mid.attn.qkv", self._norm("mid.attn.norm", x), 1)  # (B, 3C, H, W)
        a = self.w.attention(qkv.reshape(b, 3 * c, hh * ww), heads).reshape(b, c, hh, ww)
        return x + self._conv("mid.attn.out", a, 1)

    def embedding(self, t: Tensor, y: Tensor) -> Tensor:
        """Timestep + class embedding (B, emb_dim). t: int timesteps (B,); y: class ids (B,), null_class = none."""
        cfg = self.cfg
        h = self.w.linear("time.fc1", timestep_features(t, cfg.time_freqs)).silu()
        h = self.w.linear("time.fc2", h)
        classes = device_arange(cfg.num_classes + 1, y.device).reshape(1, -1)
        onehot = y.reshape(-1, 1) == classes
        return h + onehot.cast(dtypes.float32) @ self.w.vector("class_emb")

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """Predicted noise for images x (B, C, H, W) in [-1, 1] at timesteps t with classes y."""
        c0, c1, c2 = self.cfg.channels
        emb = self.embedding(t, y).silu().contiguous()
        h0 = self._res("down0", self._conv("conv_in", x, 3), emb, c0, c0)
        h1 = self._res("down1", self._conv("down0.down", h0, 3, stride=2), emb, c1, c1)
        h = self._res("mid.res1", self._conv("down1.down", h1, 3, stride=2), emb, c2, c2)
        h = self._attention(h)
        h = self._conv("up1.merge", upsample2(h).cat(h1, dim=1), 1)
        h = self._res("up1", h, emb, c1, c1)
        h = self._conv("up0.merge", upsample2(h).cat(h0, dim=1), 1)
        h = self._res("up0", h, emb, c0, c0)
        return self.w.norm_silu_conv("out.norm", "conv_out", h, 3, self.cfg.groups)


class FloatWeights:
    """A `UNetWeights` over float tensors by name (training, and the float reference)."""

    def __init__(self, tensors: dict[str, Tensor]):
        self.t = tensors

    def conv(self, name: str, x: Tensor, k: int, stride: int = 1, padding: int = 0) -> Tensor:
        w = self.t[f"{name}.weight"]
        w = w.reshape(w.shape[0], -1, k, k)
        return x.conv2d(w, self.t.get(f"{name}.bias"), stride=stride, padding=padding)

    def linear(self, name: str, x: Tensor) -> Tensor:
        y = x @ self.t[f"{name}.weight"].T
        bias = self.t.get(f"{name}.bias")
        return y if bias is None else y + bias

    def vector(self, name: str) -> Tensor:
        return self.t[name]

    def norm_silu_conv(self, norm: str, conv: str, x: Tensor, k: int, groups: int) -> Tensor:
        return norm_silu_conv(self, norm, conv, x, k, groups)

    def attention(self, qkv: Tensor, heads: int) -> Tensor:
        return attention(qkv, heads)


def cosine_alpha_bars(timesteps: int, s: float = 0.008) -> np.ndarray:
    """Cumulative signal fractions alpha_bar[t], t = 0..T-1, of the cosine schedule (Nichol & Dhariwal, 2021, eq. 17).

    Betas are clipped at 0.999 as in the paper, so the last step is not pure noise by a division by zero.
    """
    f = np.cos(((np.arange(timesteps + 1) / timesteps) + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    return np.cumprod(1 - betas)


def ddim_timesteps(timesteps: int, steps: int) -> np.ndarray:
    """`steps` training timesteps from the noisiest down to 0, evenly spaced."""
    return np.unique(np.linspace(0, timesteps - 1, steps).round().astype(np.int64))[::-1]


def ddim_step(x: np.ndarray, eps: np.ndarray, ab: float, ab_prev: float, clip: float, eta: float = 0.0
              ) -> tuple[np.ndarray, float]:
    """One DDIM update (Song et al., 2021, eq. 12) from alpha_bar `ab` to `ab_prev`, the predicted clean sample
    clipped to [-clip, clip]; returns the next sample before noise and the standard deviation of the noise to add
    (0 for eta = 0, DDIM; eta = 1 is DDPM's ancestral step on the respaced schedule)."""
    x0 = np.clip((x - np.sqrt(1 - ab) * eps) / np.sqrt(ab), -clip, clip)
    eps = (x - np.sqrt(ab) * x0) / np.sqrt(1 - ab)  # consistent with the clipped x0
    sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
    return np.sqrt(ab_prev) * x0 + np.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps, float(sigma)
