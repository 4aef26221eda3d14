"""Quantize a ModelSource by a recipe (optionally calibrated, optionally under a size budget)."""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from gguf import GGMLQuantizationType

from edgegen.quantize.blocks import Q, QuantizedTensor, quantize_tensor
from edgegen.quantize.budget import check_budget, choose_types_for_budget, weight_options
from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.recipes import Recipe, assign_types, get_recipe
from edgegen.quantize.source import ModelSource
from edgegen.quantize.writer import estimate_overhead_bytes
from edgegen.runtime.artifact.constants import UNET_ARCHITECTURE

log = logging.getLogger(__name__)
T = TypeVar("T")
# track(iterable, description, total) -> iterable: the CLI passes a progress bar, library callers nothing.
Track = Callable[[Iterable[T], str, int], Iterable[T]]


def no_track(it: Iterable[T], desc: str, total: int) -> Iterable[T]:
    return it


class Packer:
    """Packs tensors on demand and remembers each (name, type), so recipes and budgets can compare errors cheaply."""

    def __init__(self, tensors: dict[str, np.ndarray]):
        self.tensors = tensors
        self._cache: dict[tuple[str, GGMLQuantizationType], QuantizedTensor] = {}

    def pack(self, name: str, qtype: GGMLQuantizationType) -> QuantizedTensor:
        key = (name, qtype)
        if key not in self._cache:
            self._cache[key] = quantize_tensor(self.tensors[name], qtype)
        return self._cache[key]

    def error(self, name: str, qtype: GGMLQuantizationType) -> float:
        return self.pack(name, qtype).rel_error

    def put(self, name: str, packed: QuantizedTensor) -> None:
        """Use `packed` (rounded by calibration) for `name` at its type instead of round-to-nearest."""
        self._cache[(name, packed.qtype)] = packed


@dataclass
class QuantizedModel:
    """The packed tensors (in the source's order) and what was decided and measured on the way."""

    recipe: Recipe
    tensors: dict[str, QuantizedTensor]
    source_float_bytes: int
    promoted: list[str] = field(default_factory=list)  # error outliers given the recipe's outlier type
    budget_bytes: int | None = None
    calibration: dict[str, Any] | None = None  # what calibration changed (see quantize.calibrate)

    @property
    def nbytes(self) -> int:
        return sum(q.nbytes for q in self.tensors.values())

    def type_counts(self) -> dict[str, int]:
        return dict(Counter(q.qtype.name for q in self.tensors.values()))

    def matrix_errors(self) -> dict[str, float]:
        return {n: q.rel_error for n, q in self.tensors.items() if len(q.shape) >= 2}

    def worst_tensor(self) -> tuple[str, float]:
        errs = self.matrix_errors()
        if not errs:
            return "", 0.0
        name = max(errs, key=lambda n: errs[n])
        return name, errs[name]

    def mean_error(self) -> float:
        errs = list(self.matrix_errors().values())
        return float(np.mean(errs)) if errs else 0.0

    def recipe_params(self) -> dict[str, Any]:
        params: dict[str, Any] = dict(self.recipe.params())
        if self.budget_bytes is not None:
            params["budget_bytes"] = self.budget_bytes
        if self.calibration is not None:
            keys = ("method", "samples", "steps", "rows_per_layer") if "layers" in self.calibration else \
                ("method", "tokens", "alpha_grid")
            params["calibration"] = {k: self.calibration[k] for k in keys}
        return params

    def report(self) -> dict[str, Any]:
        """The quality report stored in the file and printed by the CLI.

        Compact on purpose, since it is part of the artifact: per-tensor types are already in the GGUF tensor
        infos, and calibration is summarized by its alpha per layer group (the full table is printed by the CLI).
        """
        worst_name, worst_err = self.worst_tensor()
        report: dict[str, Any] = {
            "rel_errors": {n: _sig(e) for n, e in self.matrix_errors().items()},
            "type_counts": self.type_counts(),
            "size_bytes_before_f32": self.source_float_bytes,
            "size_bytes_after": self.nbytes,
            "worst_tensor": worst_name,
            "worst_rel_error": _sig(worst_err),
            "mean_rel_error": _sig(self.mean_error()),
            "promoted_outliers": self.promoted,
        }
        if self.calibration is not None and "layers" in self.calibration:  # a U-Net's rounding (calibrate_unet)
            c = self.calibration
            report["calibration"] = {k: (_sig(v) if isinstance(v, float) else v) for k, v in c.items()
                                     if k != "layers"} | {
                "layer_errors": {r["name"]: [_sig(r["rtn_error"]), _sig(r["gptq_error"])] for r in c["layers"]}}
        elif self.calibration is not None:
            c = self.calibration
            alphas: dict[str, list[float]] = {}
            for g in c["groups"]:  # "blk.3.attn_qkv" -> alphas["attn_qkv"][3]
                alphas.setdefault(g["group"].split(".", 2)[2], []).append(g["alpha"])
            report["calibration"] = {k: (_sig(v) if isinstance(v, float) else v) for k, v in c.items()
                                     if k not in ("groups", "alpha_grid")} | {"alpha_per_layer": alphas}
        return report


def _sig(x: float) -> float:
    """Six significant digits: enough for a report, half the characters of a full float."""
    return float(f"{x:.6g}")


def quantize_model(
    source: ModelSource,
    recipe: str | Recipe,
    calibration_text: str | None = None,
    budget_bytes: int | None = None,
    track: Track = no_track,
    diffusion_calibration: bool = True,
) -> QuantizedModel:
    """Decide each tensor's type, optionally calibrate (AWQ-style scales on text; a U-Net's 4-bit weights are
    rounded against its own sampling trajectory unless `diffusion_calibration` is False), and pack every tensor."""
    rec = get_recipe(recipe) if isinstance(recipe, str) else recipe
    tensors = dict(source.tensors)
    packer = Packer(tensors)
    if budget_bytes is not None:
        overhead = estimate_overhead_bytes(source)
        check_budget(tensors, budget_bytes, overhead)  # fail before minutes of measuring
        options = weight_options(tensors)
        for name in track(list(options), "measuring each type's error", len(options)):
            for qtype in options[name]:
                packer.pack(name, qtype)
        types = choose_types_for_budget(tensors, budget_bytes, overhead, packer.error)
        promoted: list[str] = []
    else:
        types, promoted = assign_types(rec, tensors, packer.error, source.architecture)
    calibration = None
    unet = source.architecture == UNET_ARCHITECTURE
    if calibration_text is not None and unet:
        raise QuantizeError("a diffusion U-Net calibrates on its own samples, not on text: leave out the calibration "
                            "text (library: diffusion_calibration=False turns it off)")
    if diffusion_calibration and unet and any(t in (Q.Q4_0, Q.Q4_1) for t in types.values()):
        from edgegen.quantize.calibrate_unet import calibrate_unet  # imports tinygrad: U-Nets only

        rounded, calibration = calibrate_unet(source, types, track)
        for name, rounded_tensor in rounded.items():
            packer.put(name, rounded_tensor)
    if calibration_text is not None:
        from edgegen.quantize.calibrate import calibrate
        from edgegen.quantize.tokenizer import encode

        tokens = encode(source, calibration_text)
        if not tokens:
            raise QuantizeError("calibration text produced no tokens")
        tensors, calibration = calibrate(source, tokens, types, track=track)
        packer = Packer(tensors)  # the weights changed: measure them again
    packed = {n: packer.pack(n, types[n]) for n in track(list(tensors), "packing", len(tensors))}
    return QuantizedModel(
        rec, packed, source.size_bytes, promoted=promoted, budget_bytes=budget_bytes, calibration=calibration
    )
