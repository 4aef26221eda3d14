"""The tiny U-Net configuration the diffusion tests share."""
from __future__ import annotations

from edgegen.models.autoencoder import AutoencoderConfig
from edgegen.models.unet import UNetConfig

# Every kernel row (in * 9) a whole number of 32-blocks, so w8 / w4 really pack them.
TINY = UNetConfig(channels=(32, 32, 32), emb_dim=32, time_freqs=32, groups=8, heads=2, timesteps=100)

# A latent model: the U-Net takes the autoencoder's (4, 8, 8) latents.
TINY_AE = AutoencoderConfig(channels=(32, 32), latent_channels=4)
TINY_LATENT = UNetConfig(channels=(32, 32, 32), emb_dim=32, time_freqs=32, groups=8, heads=2, timesteps=100,
                         image_size=TINY_AE.latent_size, in_channels=TINY_AE.latent_channels)
