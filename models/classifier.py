"""A small MNIST CNN used only to score generated digits (accuracy, confidence, Frechet distance on its features).

Three 3x3 convolutions with max-pooling (28 -> 14 -> 7 -> 3 px), then a 128-unit hidden layer whose activations
are the features the Frechet distance compares, then the 10 class logits. It takes the same `UNetWeights`-style
source as the U-Net, so it loads from the same GGUF container.
"""
from __future__ import annotations

from dataclasses import dataclass

from tinygrad import Tensor

from edgegen.models.unet import UNetWeights

CLASSIFIER_ARCH = "edgegen-mnist-classifier"


@dataclass(frozen=True)
class ClassifierConfig:
    channels: tuple[int, int, int] = (32, 64, 64)
    features: int = 128
    num_classes: int = 10


def parameter_shapes(cfg: ClassifierConfig) -> dict[str, tuple[int, ...]]:
    c1, c2, c3 = cfg.channels
    return {
        "conv1.weight": (c1, 9), "conv1.bias": (c1,),
        "conv2.weight": (c2, c1 * 9), "conv2.bias": (c2,),
        "conv3.weight": (c3, c2 * 9), "conv3.bias": (c3,),
        "fc1.weight": (cfg.features, c3 * 9), "fc1.bias": (cfg.features,),
        "fc2.weight": (cfg.num_classes, cfg.features), "fc2.bias": (cfg.num_classes,),
    }


class MnistClassifier:
    def __init__(self, cfg: ClassifierConfig, weights: UNetWeights):
        self.cfg, self.w = cfg, weights

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations (B, features) of images x (B, 1, 28, 28) in [-1, 1]."""
        for name in ("conv1", "conv2", "conv3"):
            # tinygrad types max_pool2d as taking a tuple and maybe returning indices: an int works, and no indices.
            x = self.w.conv(name, x.contiguous(), 3, padding=1).relu().max_pool2d(2)  # type: ignore[assignment,arg-type]
        return self.w.linear("fc1", x.flatten(1)).relu()

    def __call__(self, x: Tensor) -> Tensor:
        return self.w.linear("fc2", self.features(x))
