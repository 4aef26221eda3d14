"""Digit images from the tiny class-conditional U-Net: prompts, weights, the DDIM/DDPM sampler, PNGs, the classifier.

    gen = ImageGenerator.load()                                      # DEFAULT_UNET, shipped with edgegen.models
    images = gen.generate("seven", DiffusionParams(steps=20, n=4))   # (4, 28, 28) uint8
    Path("sevens.png").write_bytes(encode_png(grid(images), scale=4))
"""
from edgegen.runtime.diffusion.classifier import Classifier
from edgegen.runtime.diffusion.png import encode_png, grid, save_png, to_uint8
from edgegen.runtime.diffusion.prompt import DIGIT_WORDS, parse_prompt
from edgegen.runtime.diffusion.sampler import (
    BATCH_BUCKETS,
    DEFAULT_GUIDANCE,
    MAX_IMAGES,
    MAX_STEPS,
    SAMPLERS,
    DiffusionParams,
    ImageGenerator,
)
from edgegen.runtime.diffusion.weights import (
    DEFAULT_CLASSIFIER,
    DEFAULT_UNET,
    LATENT_UNET,
    SHIPPED_MODELS,
    WEIGHTS_DIR,
    PackedConvWeights,
    config_from_file,
    model_path,
)

__all__ = [
    "BATCH_BUCKETS", "DEFAULT_CLASSIFIER", "DEFAULT_GUIDANCE", "DEFAULT_UNET", "DIGIT_WORDS", "LATENT_UNET",
    "MAX_IMAGES", "MAX_STEPS", "SAMPLERS", "SHIPPED_MODELS", "WEIGHTS_DIR", "Classifier", "DiffusionParams",
    "ImageGenerator", "PackedConvWeights", "config_from_file", "encode_png", "grid", "model_path", "parse_prompt",
    "save_png", "to_uint8",
]
