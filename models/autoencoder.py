"""A tiny convolutional autoencoder (TAESD-style) whose latents the latent U-Net denoises, written once in tinygrad.

TAESD (madebyollin/taesd) is the latent decoder small runtimes use because it is only convolutions, ReLU and nearest
upsampling: no attention, no normalisation, nothing a board's runtime lacks. This one is sized for 28x28 digits:
the image is padded to 32x32 (background -1) and reduced 4x in each direction to a (latent_channels, 8, 8) latent,
3x fewer values than the pixels, in a grid the U-Net can halve twice (8 -> 4 -> 2).

    encoder: pad 32 -> conv c0 -> ReLU -> conv/2 c1 (16) -> ReLU -> conv c1 -> ReLU -> conv/2 c1 (8) -> ReLU
             -> conv c1 -> ReLU -> conv latent_channels
    decoder: conv c1 -> ReLU -> conv c1 -> ReLU -> up2 (16) -> conv c1 -> ReLU -> conv c0 -> ReLU -> up2 (32)
             -> conv c0 -> ReLU -> conv 1 -> crop 28

It is deterministic (an autoencoder, as TAESD is, not a sampling VAE). Training normalises the latents to zero mean
and unit variance per channel and folds that affine map into the encoder's last and the decoder's first convolution,
so the file holds no separate scale and the U-Net sees unit-variance latents like its pixel sibling sees [-1, 1]
pixels. Matrices are stored 2-D as (out, in * 9), like the U-Net's, so `edgegen quantize` packs them the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

from tinygrad import Tensor

from edgegen.models.unet import UNetWeights, upsample2

AUTOENCODER_PREFIX = "autoencoder"  # metadata keys `autoencoder.<field>` mark a latent model's file
LATENT_MARKER_KEY = f"{AUTOENCODER_PREFIX}.latent_channels"  # present in a latent model's file only


@dataclass(frozen=True)
class AutoencoderConfig:
    image_size: int = 28
    padded_size: int = 32
    in_channels: int = 1
    latent_channels: int = 4
    channels: tuple[int, int] = (32, 64)

    @property
    def latent_size(self) -> int:
        return self.padded_size // 4

    @property
    def pad(self) -> int:
        return (self.padded_size - self.image_size) // 2


def encoder_layers(cfg: AutoencoderConfig) -> list[tuple[str, int, int, int]]:
    """(name, in, out, stride) of each 3x3 convolution of the encoder, in order; ReLU between them."""
    c0, c1 = cfg.channels
    return [("encoder.conv0", cfg.in_channels, c0, 1), ("encoder.conv1", c0, c1, 2), ("encoder.conv2", c1, c1, 1),
            ("encoder.conv3", c1, c1, 2), ("encoder.conv4", c1, c1, 1), ("encoder.conv5", c1, cfg.latent_channels, 1)]


def decoder_layers(cfg: AutoencoderConfig) -> list[tuple[str, int, int, bool]]:
    """(name, in, out, upsample before it) of each 3x3 convolution of the decoder, in order; ReLU between them."""
    c0, c1 = cfg.channels
    return [("decoder.conv0", cfg.latent_channels, c1, False), ("decoder.conv1", c1, c1, False),
            ("decoder.conv2", c1, c1, True), ("decoder.conv3", c1, c0, False),
            ("decoder.conv4", c0, c0, True), ("decoder.conv5", c0, cfg.in_channels, False)]


def parameter_shapes(cfg: AutoencoderConfig) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for name, cin, cout, _ in encoder_layers(cfg) + decoder_layers(cfg):
        shapes[f"{name}.weight"] = (cout, cin * 9)
        shapes[f"{name}.bias"] = (cout,)
    return shapes


class Autoencoder:
    def __init__(self, cfg: AutoencoderConfig, weights: UNetWeights):
        self.cfg, self.w = cfg, weights

    def encode(self, x: Tensor) -> Tensor:
        """Latents (B, latent_channels, 8, 8) of images (B, 1, 28, 28) in [-1, 1]."""
        p = self.cfg.pad
        h = x.pad((p, p, p, p), value=-1.0)
        layers = encoder_layers(self.cfg)
        for i, (name, _, _, stride) in enumerate(layers):
            h = self.w.conv(name, h.contiguous(), 3, stride=stride, padding=1)
            if i + 1 < len(layers):
                h = h.relu()
        return h

    def decode(self, z: Tensor) -> Tensor:
        """Images (B, 1, 28, 28), about [-1, 1] (not clipped), of latents (B, latent_channels, 8, 8)."""
        h = z
        layers = decoder_layers(self.cfg)
        for i, (name, _, _, up) in enumerate(layers):
            if up:
                h = upsample2(h)
            h = self.w.conv(name, h.contiguous(), 3, padding=1)
            if i + 1 < len(layers):
                h = h.relu()
        p, s = self.cfg.pad, self.cfg.image_size
        return h[:, :, p:p + s, p:p + s]
