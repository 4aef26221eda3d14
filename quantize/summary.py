"""Human-readable tables of what a quantization did (the CLI prints them; the numbers come from the report)."""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgegen.quantize.pipeline import QuantizedModel
    from edgegen.quantize.source import ModelSource

MB = 1_000_000


def format_summary(source: ModelSource, result: QuantizedModel, file_bytes: int) -> str:
    """Tensor count and bytes per type, size before/after, and the worst per-tensor error."""
    count: dict[str, int] = defaultdict(int)
    nbytes: dict[str, int] = defaultdict(int)
    for q in result.tensors.values():
        count[q.qtype.name] += 1
        nbytes[q.qtype.name] += q.nbytes
    lines = [f"{'type':<6} {'tensors':>8} {'MB':>9}"]
    lines += [f"{t:<6} {count[t]:>8} {nbytes[t] / MB:>9.2f}" for t in sorted(count, key=lambda t: -nbytes[t])]
    source_file = source.path.stat().st_size if source.path.is_file() else None
    worst_name, worst_err = result.worst_tensor()
    lines.append(f"size before: {source.size_bytes / MB:.2f} MB as float32"
                 + (f", {source_file / MB:.2f} MB source file" if source_file else ""))
    lines.append(f"size after:  {file_bytes / MB:.2f} MB file ({result.nbytes / MB:.2f} MB tensors)")
    lines.append(f"worst per-tensor error: {worst_name} {worst_err:.4f} (relative; mean {result.mean_error():.4f})")
    if result.promoted:
        promoted_to = result.recipe.outlier_type.name if result.recipe.outlier_type else "?"
        lines.append(f"error outliers promoted to {promoted_to}: " + ", ".join(result.promoted))
    return "\n".join(lines)


def format_assignment(result: QuantizedModel) -> str:
    """Which tensor got which type, one line per type (for --budget-mb)."""
    by_type: dict[str, list[str]] = defaultdict(list)
    for name, q in result.tensors.items():
        if len(q.shape) >= 2:
            by_type[q.qtype.name].append(name)
    return "\n".join(f"{t} ({len(names)}): {', '.join(names)}" for t, names in sorted(by_type.items()))


def format_calibration(calibration: dict) -> str:
    """What calibration changed: per folded group, the chosen alpha and the error before/after (a U-Net's:
    per matrix, its output error rounded to nearest and by GPTQ)."""
    if "layers" in calibration:
        layers = calibration["layers"]
        lines = [f"calibration: {calibration['method']}, {calibration['samples']} samples over {calibration['steps']} "
                 f"steps, {calibration['rows_per_layer']}+ input rows per matrix; mean output error "
                 f"{calibration['error_before']:.4g} -> {calibration['error_after']:.4g}, GPTQ kept for "
                 f"{sum(r['kept'] == 'gptq' for r in layers)} of {len(layers)} matrices:"]
        lines += [f"  {r['name']:<28} {r['rtn_error']:.4g} -> {min(r['rtn_error'], r['gptq_error']):.4g}"
                  for r in layers]
        return "\n".join(lines)
    head = (f"calibration: {calibration['tokens']} tokens, {calibration['method']}; "
            f"layer output error {calibration['error_before']:.5g} -> {calibration['error_after']:.5g}, "
            f"model KL vs float {calibration['kl_before']:.5g} -> {calibration['kl_after']:.5g}")
    lines = [head]
    if calibration["reverted"]:
        lines.append("calibration made the model's KL worse on that text: scales NOT applied")
        return "\n".join(lines)
    changed = [g for g in calibration["groups"] if g["alpha"] > 0]
    lines.append(f"scaled {len(changed)} of {len(calibration['groups'])} layer groups:")
    for g in changed:
        lines.append(f"  {g['group']:<28} alpha {g['alpha']:.2f}  error {g['error_before']:.4g} -> "
                      f"{g['error_after']:.4g}  folded into {g['folded_into']}")
    return "\n".join(lines)
