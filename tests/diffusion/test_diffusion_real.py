"""End to end with the shipped, trained MNIST U-Net: a prompt gives the digit it names, as the classifier reads it."""
from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import edgegen
from PIL import Image

from edgegen.runtime.diffusion import DEFAULT_CLASSIFIER, DEFAULT_UNET, Classifier, DiffusionParams, ImageGenerator

STEPS = 10  # the shipped model draws legible digits in 10 DDIM steps; fewer kernels to wait for in CI


@pytest.mark.slow
def test_shipped_unet_draws_the_prompted_digits(tmp_path):
    assert DEFAULT_UNET.is_file() and DEFAULT_CLASSIFIER.is_file()
    gen, clf = ImageGenerator.load(DEFAULT_UNET), Classifier(DEFAULT_CLASSIFIER)
    labels = np.arange(10)
    images = gen.sample(labels, DiffusionParams(steps=STEPS, seed=0))
    probs, _ = clf.run(images)
    assert (probs.argmax(1) == labels).sum() >= 8, probs.argmax(1)

    # the CLI: ten sevens in one grid PNG (same batch size as above, so the same compiled kernels)
    out = tmp_path / "sevens.png"
    proc = edgegen("diffuse", "seven", "--n", "10", "--steps", str(STEPS), "--seed", "1", "--scale", "1",
                   "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    grid = np.asarray(Image.open(out))
    assert grid.shape == (3 * 30 + 2, 4 * 30 + 2)
    cells = np.stack([grid[2 + r * 30:2 + r * 30 + 28, 2 + c * 30:2 + c * 30 + 28]
                      for r in range(3) for c in range(4)][:10])
    read, _ = clf.run(cells.astype(np.float32) / 127.5 - 1.0)
    assert (read.argmax(1) == 7).sum() >= 8, read.argmax(1)


@pytest.mark.slow
def test_shipped_autoencoder_round_trips_real_digits():
    """The latent model's autoencoder: 500 held-out digits encoded to 4x8x8 latents and decoded within 0.03 mean
    absolute error (pixels in [0, 1]; the training run measured 0.0105 on the 10k validation digits)."""
    from edgegen.quantize.mnist import load_mnist
    from edgegen.runtime.diffusion import LATENT_UNET

    gen = ImageGenerator.load(LATENT_UNET, jit_cache=False)
    images, _ = load_mnist("test")
    x = images[:500].reshape(-1, 1, 28, 28) * 2.0 - 1.0
    z = gen.encode(x)
    assert z.shape == (500, 4, 8, 8)
    assert abs(float(z.mean())) < 0.2 and 0.7 < float(z.std()) < 1.3  # normalised latents, as the U-Net saw them
    error = float(np.abs(gen.decode(z) - x).mean() / 2)
    assert error < 0.03, error


@pytest.mark.slow
def test_shipped_latent_model_draws_the_prompted_digits(tmp_path):
    gen, clf = ImageGenerator.load("mnist-latent"), Classifier(DEFAULT_CLASSIFIER)
    assert gen.latent
    labels = np.arange(10)
    probs, _ = clf.run(gen.sample(labels, DiffusionParams(steps=STEPS, seed=0)))
    assert (probs.argmax(1) == labels).sum() >= 8, probs.argmax(1)


COLD_BOUND_S = 300  # a cold `diffuse --n 16` took 6 min 54 s before batch buckets; about a minute here now


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mnist", "mnist-latent"])
def test_cold_cache_grid_of_16_finishes_within_its_bound(tmp_path, model):
    """A fresh install: no compiled kernels (tinygrad's CACHEDB empty) and no graphs on disk, 16 images at once."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "CACHEDB": str(tmp_path / "cache.db"), "EDGEGEN_CACHE": str(tmp_path / "edgegen")}
    out = tmp_path / "grid.png"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgegen.cli", "diffuse", "3", "--n", "16", "--model", model,
                           "--no-progress", "--scale", "1", "-o", str(out)], capture_output=True, text=True, env=env,
                          timeout=COLD_BOUND_S, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and time.perf_counter() - t0 < COLD_BOUND_S
    grid = np.asarray(Image.open(out))
    cells = np.stack([grid[2 + r * 30:2 + r * 30 + 28, 2 + c * 30:2 + c * 30 + 28] for r in range(4) for c in range(4)])
    read, _ = Classifier(DEFAULT_CLASSIFIER).run(cells.astype(np.float32) / 127.5 - 1.0)
    assert (read.argmax(1) == 3).sum() >= 13, read.argmax(1)
