"""The PyTorch trainer's networks are the runtime's networks: same weights, same outputs; and its commands run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_helpers import edgegen

from edgegen.quantize.torch_diffusion import torch_networks
from edgegen.runtime.diffusion import DiffusionParams, ImageGenerator


@pytest.mark.parametrize("model", ["pixel", "latent"])
def test_torch_networks_match_the_runtime(tiny_unet_files, tiny_latent_files, model):
    path = (tiny_unet_files if model == "pixel" else tiny_latent_files)["f32"]
    gen = ImageGenerator.load(path, jit_cache=False)
    eps, decode = torch_networks(path)
    rng = np.random.default_rng(0)
    c, s = gen.cfg.in_channels, gen.cfg.image_size
    x = rng.standard_normal((3, c, s, s)).astype(np.float32)
    t, y = np.array([0, 37, 99]), np.array([4, gen.cfg.null_class, 9])
    with torch.no_grad():
        ref = eps(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(gen.eps(x, t, y), ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    if model == "latent":
        assert decode is not None
        with torch.no_grad():
            pixels = np.clip(decode(torch.from_numpy(x)).numpy(), -1, 1)
        np.testing.assert_allclose(gen.decode(x), pixels, atol=1e-4)


@pytest.mark.slow
def test_torch_training_commands_write_runnable_models(tmp_path):
    """A few steps of each torch-trained model on the real MNIST digits: files the runtime loads and samples from."""
    ae, latent, pixel = tmp_path / "ae.gguf", tmp_path / "latent.gguf", tmp_path / "pixel.gguf"
    for args in (["--what", "autoencoder", "-o", str(ae)],
                 ["--what", "latent-unet", "--autoencoder", str(ae), "--channels", "32,32,32", "-o", str(latent)],
                 ["--what", "unet", "--trainer", "torch", "--channels", "32,32,32", "-o", str(pixel)]):
        proc = edgegen("train-diffusion", "--steps", "3", "--batch", "8", *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
    for path in (latent, pixel):
        gen = ImageGenerator.load(path, jit_cache=False)
        assert gen.latent == (path == latent)
        images = gen.sample([1, 2], DiffusionParams(steps=2))
        assert images.shape == (2, 28, 28) and np.isfinite(images).all()
