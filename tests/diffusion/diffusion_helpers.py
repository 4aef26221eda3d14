"""The tiny U-Net configuration the diffusion tests share."""
from __future__ import annotations

from edgegen.models.unet import UNetConfig

# Every kernel row (in * 9) a whole number of 32-blocks, so w8 / w4 really pack them.
TINY = UNetConfig(channels=(32, 32, 32), emb_dim=32, time_freqs=32, groups=8, heads=2, timesteps=100)
