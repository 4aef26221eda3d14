"""Named quantization recipes in one registry; a recipe decides each tensor's stored type.

A name says what the recipe does: `w8` is 8-bit weights (Q8_0), `w4` 4-bit symmetric (Q4_0), `w4a` 4-bit with a
per-block minimum (asymmetric, Q4_1), `w4-head8` 4-bit with the token embedding/output head at 8 bits, `w4-mix8`
that plus every tensor whose measured 4-bit error is an outlier. Every block type is
group-wise with 32 weights per block along a row. Vectors (norm weights, biases) always stay F32.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from gguf import GGMLQuantizationType

from edgegen.quantize.blocks import Q, bits_per_weight, fits_blocks
from edgegen.quantize.errors import QuantizeError
from edgegen.runtime.artifact.constants import UNET_ARCHITECTURE

# The token embedding doubles as the output head when the model ties them (SmolLM2 does): every logit goes through
# it, so the mixed recipe treats both names as sensitive.
HEAD_TENSORS = ("token_embd.weight", "output.weight")

# Tensors that 4-bit recipes store at Q8_0 whatever the recipe, by architecture. For the diffusion U-Net: the
# layers that touch pixels (conv_in, conv_out) and the conditioning (class table, timestep MLP), 1.4% of its
# weights. On the shipped model, keeping them at 8 bits (Q4_0 elsewhere) cuts the noise prediction's error vs fp32
# at least as much as storing every tensor as Q4_1 does (docs/MEASUREMENTS.md).
KEEP_8BIT: dict[str, tuple[str, ...]] = {
    UNET_ARCHITECTURE: ("conv_in.weight", "conv_out.weight", "class_emb", "time.fc1.weight", "time.fc2.weight"),
}

# Modified z-score above which a tensor's error is an outlier (Iglewicz & Hoaglin, 1993: |M| > 3.5).
OUTLIER_Z = 3.5


@dataclass(frozen=True)
class Recipe:
    """How to store each tensor. `weight_type` for matrices; the head and error outliers may get another type."""

    name: str
    description: str
    weight_type: GGMLQuantizationType
    head_type: GGMLQuantizationType | None = None
    outlier_type: GGMLQuantizationType | None = None
    outlier_z: float = OUTLIER_Z

    def params(self) -> dict[str, str | float]:
        """The recipe's parameters as plain values, for the file's metadata."""
        out: dict[str, str | float] = {}
        for k, v in asdict(self).items():
            if k in ("name", "description") or v is None:
                continue
            out[k] = v.name if isinstance(v, GGMLQuantizationType) else v
        if self.outlier_type is None:
            out.pop("outlier_z", None)
        return out


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("f16", "float16 weights", Q.F16),
        Recipe("w8", "8-bit weights, Q8_0 (block 32, one scale)", Q.Q8_0),
        Recipe("w4", "4-bit weights, Q4_0 (block 32, one scale)", Q.Q4_0),
        Recipe("w4a", "4-bit asymmetric weights, Q4_1 (block 32, scale and minimum)", Q.Q4_1),
        Recipe("w4-head8", "Q4_0 weights; token embedding/output head at Q8_0 (llama.cpp's Q4_0 layout when they are "
               "tied)", Q.Q4_0, head_type=Q.Q8_0),
        Recipe(
            "w4-mix8",
            "Q4_0 weights; token embedding/output head and tensors with outlier error at Q8_0",
            Q.Q4_0, head_type=Q.Q8_0, outlier_type=Q.Q8_0,
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`, or a QuantizeError listing the known ones."""
    if name not in RECIPES:
        raise QuantizeError(f"unknown recipe {name!r} (expected one of: {', '.join(RECIPES)})")
    return RECIPES[name]


def is_weight_matrix(name: str, w: np.ndarray) -> bool:
    """Matrices are quantized; vectors (norms, biases) and scalars stay F32."""
    return w.ndim >= 2


def storable_type(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> GGMLQuantizationType:
    """`qtype` if the rows hold whole blocks, else F16 (what llama.cpp's quantizer falls back to as well)."""
    return qtype if fits_blocks(shape, qtype) else Q.F16


def outliers(errors: dict[str, float], z: float) -> list[str]:
    """Names whose error's modified z-score (median and MAD based, robust to the outliers themselves) exceeds z."""
    if len(errors) < 3:
        return []
    v = np.array(list(errors.values()))
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    if mad == 0:
        return [n for n, e in errors.items() if e > med]
    return [n for n, e in errors.items() if 0.6745 * (e - med) / mad > z]


def assign_types(
    recipe: Recipe, tensors: dict[str, np.ndarray], error_of: Callable[[str, GGMLQuantizationType], float],
    architecture: str = "llama",
) -> tuple[dict[str, GGMLQuantizationType], list[str]]:
    """Each tensor's type under `recipe`, and the names promoted as error outliers.

    error_of(name, qtype) gives the measured relative error of storing that tensor as qtype (cached by the caller).
    """
    types: dict[str, GGMLQuantizationType] = {}
    keep8 = KEEP_8BIT.get(architecture, ()) if bits_per_weight(recipe.weight_type) < 8 else ()
    for name, w in tensors.items():
        if not is_weight_matrix(name, w):
            types[name] = Q.F32
        elif name in keep8:
            types[name] = storable_type(w.shape, Q.Q8_0)
        elif recipe.head_type is not None and name in HEAD_TENSORS:
            types[name] = storable_type(w.shape, recipe.head_type)
        else:
            types[name] = storable_type(w.shape, recipe.weight_type)
    promoted: list[str] = []
    if recipe.outlier_type is not None:
        body = {n: error_of(n, t) for n, t in types.items() if t == recipe.weight_type and n not in HEAD_TENSORS}
        for name in outliers(body, recipe.outlier_z):
            types[name] = storable_type(tensors[name].shape, recipe.outlier_type)
            promoted.append(name)
    return types, promoted
