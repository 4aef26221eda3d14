"""Fixtures for the diffusion tests: a tiny random U-Net written as a real GGUF file, and its w8 / w4 variants."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from diffusion_helpers import TINY, TINY_AE, TINY_LATENT

from edgegen.models.autoencoder import AUTOENCODER_PREFIX
from edgegen.models.autoencoder import parameter_shapes as autoencoder_shapes
from edgegen.models.unet import UNET_ARCH, UNetConfig, parameter_shapes


def random_unet(cfg: UNetConfig, seed: int, shapes: dict | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in (shapes or parameter_shapes(cfg)).items():
        if len(shape) == 2 and name != "class_emb":
            out[name] = rng.normal(0, 1 / np.sqrt(shape[1]), shape).astype(np.float32)
        elif ".norm" in name and name.endswith(".weight"):
            out[name] = (1 + 0.1 * rng.normal(size=shape)).astype(np.float32)
        else:
            out[name] = (0.1 * rng.normal(size=shape)).astype(np.float32)
    return out


@pytest.fixture(scope="session")
def tiny_unet_files(tmp_path_factory) -> dict[str, Path]:
    """{'f32': path, 'w8': path, 'w4': path}: the f32 checkpoint and its quantized artifacts."""
    from edgegen.quantize.pipeline import quantize_model
    from edgegen.quantize.source import load_source
    from edgegen.quantize.training import write_checkpoint
    from edgegen.quantize.writer import write_artifact

    d = tmp_path_factory.mktemp("unet")
    paths = {"f32": d / "tiny-unet-f32.gguf"}
    write_checkpoint(paths["f32"], UNET_ARCH, asdict(TINY), random_unet(TINY, seed=1), {"command": "tests"})
    source = load_source(paths["f32"])
    for recipe in ("w8", "w4"):
        paths[recipe] = d / f"tiny-unet-{recipe}.gguf"
        write_artifact(paths[recipe], source, quantize_model(source, recipe))
    return paths


@pytest.fixture(scope="session")
def tiny_latent_files(tmp_path_factory) -> dict[str, Path]:
    """A latent model (a tiny U-Net over a tiny random autoencoder's latents, one file) and its w8 / w4 variants."""
    from edgegen.quantize.pipeline import quantize_model
    from edgegen.quantize.source import load_source
    from edgegen.quantize.training import write_checkpoint
    from edgegen.quantize.writer import write_artifact

    d = tmp_path_factory.mktemp("latent")
    paths = {"f32": d / "tiny-latent-f32.gguf"}
    tensors = random_unet(TINY_LATENT, seed=2) | random_unet(TINY_LATENT, 3, autoencoder_shapes(TINY_AE))
    write_checkpoint(paths["f32"], UNET_ARCH, asdict(TINY_LATENT), tensors, {"command": "tests"},
                     extra={f"{AUTOENCODER_PREFIX}.{k}": v for k, v in asdict(TINY_AE).items()})
    source = load_source(paths["f32"])
    for recipe in ("w8", "w4"):
        paths[recipe] = d / f"tiny-latent-{recipe}.gguf"
        write_artifact(paths[recipe], source, quantize_model(source, recipe))
    return paths
