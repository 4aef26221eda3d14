"""The MNIST evaluation classifier, run from its GGUF file: it scores generated digits (quantize/evaluate_diffusion)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tinygrad import Tensor

from edgegen.models.classifier import CLASSIFIER_ARCH, ClassifierConfig, MnistClassifier
from edgegen.runtime.artifact.reader import open_model
from edgegen.runtime.diffusion.weights import DEFAULT_CLASSIFIER, PackedConvWeights, config_from_file
from edgegen.runtime.tinygrad_seam import TINYGRAD_LOCK


class Classifier:
    """The MNIST evaluation classifier from its GGUF file: logits and penultimate features."""

    def __init__(self, path: str | Path = DEFAULT_CLASSIFIER, device: str | None = None):
        from edgegen.runtime.backend import resolve_device

        mf = open_model(path, architectures=(CLASSIFIER_ARCH,))
        self.device = resolve_device(device)
        self.cfg: ClassifierConfig = config_from_file(mf, ClassifierConfig, CLASSIFIER_ARCH)
        with TINYGRAD_LOCK:
            self.model = MnistClassifier(self.cfg, PackedConvWeights(mf, self.device))

    def run(self, images: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (N, 10), features (N, F)) of images (N, 28, 28) in [-1, 1]."""
        probs, feats = [], []
        for i in range(0, len(images), batch):
            with TINYGRAD_LOCK:
                x = Tensor(images[i:i + batch].reshape(-1, 1, 28, 28).astype(np.float32), device=self.device)
                f = self.model.features(x).realize()
                probs.append(self.model.w.linear("fc2", f).softmax(axis=1).numpy())
                feats.append(f.numpy())
        return np.concatenate(probs), np.concatenate(feats)
