"""Choose per-tensor types so that the file fits a size budget while losing the least quality.

The loss of storing a tensor as a type is its measured squared relative error (each matrix counts once, so a
large tensor pays for its bytes). Start every matrix at the cheapest type, then repeatedly take the upgrade with the
largest loss reduction per extra byte that still fits (greedy multiple-choice knapsack).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import GGMLQuantizationType

from edgegen.quantize.blocks import WEIGHT_TYPES, Q, fits_blocks, packed_nbytes
from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.recipes import is_weight_matrix

MB = 1_000_000


def weight_options(tensors: dict[str, np.ndarray]) -> dict[str, list[GGMLQuantizationType]]:
    """The types each matrix may take, cheapest first (vectors are not listed: they stay F32)."""
    return {n: [t for t in WEIGHT_TYPES if fits_blocks(w.shape, t)] or [Q.F16]
            for n, w in tensors.items() if is_weight_matrix(n, w)}


def check_budget(tensors: dict[str, np.ndarray], budget_bytes: int, overhead_bytes: int) -> int:
    """The smallest possible file size; QuantizeError if even that exceeds the budget."""
    options = weight_options(tensors)
    total = overhead_bytes + sum(packed_nbytes(w.shape, options[n][0] if n in options else Q.F32)
                                 for n, w in tensors.items())
    if total > budget_bytes:
        raise QuantizeError(
            f"budget {budget_bytes / MB:.2f} MB is too small: even at 4 bits the file needs {total / MB:.2f} MB"
        )
    return total


def choose_types_for_budget(
    tensors: dict[str, np.ndarray],
    budget_bytes: int,
    overhead_bytes: int,
    error_of: Callable[[str, GGMLQuantizationType], float],
) -> dict[str, GGMLQuantizationType]:
    """Types for every tensor so that tensor bytes + overhead_bytes <= budget_bytes, least total loss first."""
    options = weight_options(tensors)
    types = {n: options[n][0] if n in options else Q.F32 for n in tensors}
    total = check_budget(tensors, budget_bytes, overhead_bytes)
    loss = {n: {t: error_of(n, t) ** 2 for t in opts} for n, opts in options.items()}
    while True:
        best: tuple[float, str, GGMLQuantizationType, int] | None = None
        for name, opts in options.items():
            cur = types[name]
            cur_bytes = packed_nbytes(tensors[name].shape, cur)
            for t in opts:
                extra = packed_nbytes(tensors[name].shape, t) - cur_bytes
                gain = loss[name][cur] - loss[name][t]
                if extra <= 0 or gain <= 0 or total + extra > budget_bytes:
                    continue
                if best is None or gain / extra > best[0]:
                    best = (gain / extra, name, t, extra)
        if best is None:
            return types
        _, name, t, extra = best
        types[name] = t
        total += extra
