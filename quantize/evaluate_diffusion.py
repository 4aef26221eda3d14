"""What quantization cost a diffusion U-Net, scored by the shipped MNIST classifier.

- prompt accuracy: the share of generated digits the classifier reads as the prompted digit (does "7" give a 7?);
- mean confidence: the classifier's mean probability for the prompted digit;
- Frechet distance between the classifier's penultimate features of generated and of held-out real test digits
  (FID's formula, Heusel et al. 2017, with an MNIST classifier in place of Inception). It has a noise floor: two
  disjoint sets of real digits are also some distance apart, reported as `real_vs_real_fd`.

Every variant is sampled from the same seed, so the same starting noise: differences between fp32, w8 and w4
come from the weights, not from sampling luck.

Numpy only, like quantize/evaluate.py: the caller samples the images with the runtime and hands over any classifier
with `run(images) -> (probabilities, features)`; `quantize` never imports the runtime.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

from edgegen.quantize.errors import QuantizeError


class DigitClassifier(Protocol):
    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...  # (N, 10) probabilities, (N, F) features


def digit_labels(per_digit: int) -> np.ndarray:
    """The prompted digit of every image to sample: `per_digit` of each of 0..9, in order."""
    return np.repeat(np.arange(10), per_digit)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) for feature sets a (N, F) and b (M, F).

    Tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), a symmetric
    PSD matrix, so numpy's eigh suffices (no scipy dependency for one matrix square root).
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)


@dataclass
class DiffusionQuality:
    images: int
    prompt_accuracy: float
    mean_confidence: float
    frechet_distance: float
    per_digit_accuracy: list[float]
    real_accuracy: float  # the classifier on real held-out digits: the ceiling
    real_vs_real_fd: float  # the Frechet distance's floor for this many images
    steps: int
    sampler: str
    guidance: float
    seed: int

    def as_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def score_digits(images: np.ndarray, labels: np.ndarray, classifier: DigitClassifier, real_images: np.ndarray,
                 real_labels: np.ndarray, steps: int, sampler: str, guidance: float, seed: int) -> DiffusionQuality:
    """Score generated `images` (N, 28, 28) in [-1, 1], prompted with `labels`, against held-out real digits
    (`real_images` in [0, 1] as MNIST stores them, at least 2N); steps..seed are recorded with the scores."""
    n = len(labels)
    if len(real_images) < 2 * n:
        raise QuantizeError(f"{len(real_images)} real digits given, expected at least {2 * n} (twice the images)")
    probs, feats = classifier.run(images)
    # held-out real digits: the first half is the reference set, the second half measures the floor
    real_probs, real_feats = classifier.run(real_images[: 2 * n] * 2.0 - 1.0)
    correct = probs.argmax(1) == labels
    return DiffusionQuality(
        images=n,
        prompt_accuracy=float(correct.mean()),
        mean_confidence=float(probs[np.arange(n), labels].mean()),
        frechet_distance=frechet_distance(feats, real_feats[:n]),
        per_digit_accuracy=[round(float(correct[labels == d].mean()), 4) for d in range(10)],
        real_accuracy=float((real_probs.argmax(1) == real_labels[: 2 * n]).mean()),
        real_vs_real_fd=frechet_distance(real_feats[n:], real_feats[:n]),
        steps=steps, sampler=sampler, guidance=guidance, seed=seed,
    )
