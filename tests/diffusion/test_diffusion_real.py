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
