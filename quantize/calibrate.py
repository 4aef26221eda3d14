"""Activation-aware weight scaling (AWQ, Lin et al. 2023, arXiv:2306.00978, section 3.2) folded into the model.

For a linear layer y = x W^T whose input channel j is large on real text, quantization error in column j costs
more. Scaling column j of W up by s_j (and the input down by s_j) leaves the float model unchanged but gives that
column finer quantization steps. s = mean|x|^alpha (normalized), alpha searched on a grid per layer group; alpha = 0
(no scaling) is in the grid, so a group's calibration-set output error never gets worse.

Where the 1/s goes, so that the file keeps standard block types and the runtime needs nothing new:
- q/k/v share the attention RMSNorm's output: divide attn_norm.weight by s.
- gate/up share the FFN RMSNorm's output: divide ffn_norm.weight by s.
- o's input is the attention output, linear in v per kv head: divide v's rows by s (one s per kv channel, shared
  by the query heads of a group).
- down's input is silu(gate x) * (up x), linear in up's output: divide up's rows by s.
Row scaling (v, up) barely changes their own quantization (a block lies within a row and its scale follows the
row), and their error is counted in the group's objective anyway.

Every decoder family folds the same way (the forward is quantize.llama_numpy's, the runtime's computation):
- Fused tensors (Phi-3): q/k/v are one `attn_qkv` scaled by columns, and v's rows are its last kv rows; gate/up are
  one `ffn_up` (gate rows first), and up's rows are its second half.
- A bias on a row-scaled matrix (Qwen 2's `attn_v.bias`) is divided by the same s, so v stays v / s exactly.
- Q/K norms (Qwen 3, Gemma 3) act on q/k's outputs, post norms (Gemma 3) on o's and down's outputs: column scaling
  leaves those outputs unchanged, so nothing is folded into them. GELU-tanh (Gemma 3) like SiLU only touches the
  gate: down's input is still linear in up.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType

from edgegen.quantize.blocks import Q, dequantized
from edgegen.quantize.evaluate import log_softmax
from edgegen.quantize.llama_numpy import LlamaHParams, config_from_source, forward
from edgegen.quantize.source import ModelSource

log = logging.getLogger(__name__)

ALPHA_GRID = tuple(round(0.1 * i, 1) for i in range(11))  # 0.0 .. 1.0, the grid of the AWQ paper's search
SEQ_LEN = 256  # calibration text is cut into sequences of this many tokens
MAX_TOKENS = 512  # forward and search cost grow linearly; AWQ reports little gain past a few hundred tokens
MAX_ROWS = 512  # activation rows sampled per layer for the search objective


@dataclass
class Member:
    """A matrix in a search group: its input activations and where the group's scale acts on it."""

    name: str
    acts: np.ndarray  # (N, in) float inputs the float model gave this matrix
    by_columns: bool  # True: W[:, j] *= s_j (scaled matrix); False: W[j, :] /= s_j (the matrix feeding it)
    rows: slice | None = None  # by rows: the rows s acts on (v's rows of a fused attn_qkv); None: all rows


def output_error(w_eff: np.ndarray, acts_eff: np.ndarray, row: np.ndarray, qtype: GGMLQuantizationType) -> float:
    """Squared output error of quantizing w_eff on inputs acts_eff, in the unscaled model's units.

    w_eff = W * col / row[:, None] and acts_eff = acts / col: the float product is unchanged but for the rows,
    whose outputs are 1/row of the original (multiplied back here).
    """
    diff = w_eff - dequantized(w_eff, qtype)
    return float(np.sum(((acts_eff @ diff.T) * row[None, :]) ** 2))


def _scales(acts: np.ndarray, alpha: float) -> np.ndarray:
    """AWQ's s = mean|x|^alpha over tokens, normalized so that max*min = 1 (keeps the weights' range centred)."""
    s = np.maximum(np.mean(np.abs(acts), axis=0), 1e-5) ** alpha
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)


class _Scaling:
    """Cumulative column and row scales per matrix; effective weight = W * col / row[:, None]."""

    def __init__(self, weights: dict[str, np.ndarray], types: dict[str, GGMLQuantizationType]):
        self.weights, self.types = weights, types
        self.col: dict[str, np.ndarray] = {}
        self.row: dict[str, np.ndarray] = {}

    def scales(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        out_f, in_f = self.weights[name].shape
        return self.col.get(name, np.ones(in_f, np.float32)), self.row.get(name, np.ones(out_f, np.float32))

    def error(self, m: Member, extra_col: np.ndarray | None = None, extra_row: np.ndarray | None = None) -> float:
        col, row = self.scales(m.name)
        col = col if extra_col is None else col * extra_col
        row = row if extra_row is None else row * extra_row
        w_eff = self.weights[m.name] * col[None, :] / row[:, None]
        return output_error(w_eff, m.acts / col[None, :], row, self.types[m.name])

    def row_scale(self, m: Member, s: np.ndarray) -> np.ndarray:
        """s over all of m's rows: ones outside m.rows."""
        if m.rows is None:
            return s
        full = np.ones(self.weights[m.name].shape[0], np.float32)
        full[m.rows] = s
        return full

    def group_error(self, members: list[Member], s: np.ndarray | None, expand: Callable[[np.ndarray], np.ndarray]
                    ) -> float:
        if s is None:
            return sum(self.error(m) for m in members)
        return sum(self.error(m, extra_col=expand(s)) if m.by_columns else self.error(m, extra_row=self.row_scale(m, s))
                   for m in members)

    def apply(self, members: list[Member], s: np.ndarray, expand: Callable[[np.ndarray], np.ndarray]) -> None:
        for m in members:
            col, row = self.scales(m.name)
            if m.by_columns:
                self.col[m.name] = col * expand(s)
            else:
                self.row[m.name] = row * self.row_scale(m, s)

    def scaled(self, name: str) -> np.ndarray:
        col, row = self.scales(name)
        return (self.weights[name] * col[None, :] / row[:, None]).astype(np.float32)


def mean_kl(reference: list[np.ndarray], tensors: dict[str, np.ndarray], types: dict[str, GGMLQuantizationType],
            hp: LlamaHParams, seqs: list[list[int]]) -> float:
    """Mean KL(reference || model) per token of the model with `tensors` stored as `types`, on `seqs`."""
    quantized = {n: dequantized(w, types[n]) for n, w in tensors.items()}
    total, count = 0.0, 0
    for ref, seq in zip(reference, seqs):
        p, q = log_softmax(ref), log_softmax(forward(quantized, hp, seq))  # type: ignore[arg-type]  # with_head=True
        total += float(np.sum(np.exp(p) * (p - q)))
        count += len(seq)
    return total / count


def _identity(s: np.ndarray) -> np.ndarray:
    return s


def _quantized(types: dict[str, GGMLQuantizationType], names: list[str]) -> bool:
    return any(types[n] not in (Q.F32, Q.F16) for n in names)


Plan = list[tuple[str, list[Member], np.ndarray, Callable[[np.ndarray], np.ndarray], str]]


def _layer_plan(p: str, hp: LlamaHParams, tensors: dict[str, np.ndarray], a: np.ndarray, o_in: np.ndarray,
                f: np.ndarray, h: np.ndarray) -> Plan:
    """One layer's search groups, in order: (name, members, activations for the statistic, expand, folded into).

    a: attention input (normed), o_in: attention output (o's input), f: FFN input (normed), h: act(gate) * up.
    """
    group = hp.n_heads // hp.n_kv_heads
    nq, nkv = hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim

    def expand_heads(s: np.ndarray) -> np.ndarray:  # (KV*D,) -> (H*D,): query heads share their kv head's s
        return np.tile(s.reshape(hp.n_kv_heads, 1, hp.head_dim), (1, group, 1)).reshape(-1)

    if p + "attn_qkv.weight" in tensors:  # Phi-3: one matrix, V's rows last
        qkv = [Member(p + "attn_qkv.weight", a, True)]
        v_rows = Member(p + "attn_qkv.weight", a, False, slice(nq + nkv, nq + 2 * nkv))
    else:
        qkv = [Member(p + x, a, True) for x in ("attn_q.weight", "attn_k.weight", "attn_v.weight")]
        v_rows = Member(p + "attn_v.weight", a, False)
    if p + "ffn_gate.weight" in tensors:
        gate_up = [Member(p + x, f, True) for x in ("ffn_gate.weight", "ffn_up.weight")]
        up_rows = Member(p + "ffn_up.weight", f, False)
    else:  # Phi-3: gate and up rows in one ffn_up, gate first
        gate_up = [Member(p + "ffn_up.weight", f, True)]
        up_rows = Member(p + "ffn_up.weight", f, False, slice(hp.hidden_dim, 2 * hp.hidden_dim))
    # o's statistic per kv channel: mean |input| over the query heads that share it.
    o_stat = np.abs(o_in).reshape(-1, hp.n_kv_heads, group, hp.head_dim).mean(axis=2).reshape(len(o_in), -1)
    return [
        ("attn_qkv", qkv, a, _identity, p + "attn_norm.weight"),
        ("attn_output", [Member(p + "attn_output.weight", o_in, True), v_rows], o_stat, expand_heads,
         v_rows.name + " rows"),
        ("ffn_gate_up", gate_up, f, _identity, p + "ffn_norm.weight"),
        ("ffn_down", [Member(p + "ffn_down.weight", h, True), up_rows], h, _identity, up_rows.name + " rows"),
    ]


def calibrate(
    source: ModelSource,
    tokens: list[int],
    types: dict[str, GGMLQuantizationType],
    track: Callable[[Iterable[Any], str, int], Iterable[Any]] = lambda it, desc, total: it,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Scaled float tensors (same names) and a report of what changed and the calibration-set error."""
    hp = config_from_source(source)
    tokens = tokens[:MAX_TOKENS]
    seqs = [tokens[i:i + SEQ_LEN] for i in range(0, len(tokens), SEQ_LEN)]
    acts: list[dict[str, list[np.ndarray]]] = [{} for _ in range(hp.n_layers)]

    def keep(layer: int, inputs: dict[str, np.ndarray]) -> None:
        for k, v in inputs.items():
            acts[layer].setdefault(k, []).append(v)

    float_logits: list[np.ndarray] = [forward(source.tensors, hp, seq, hook=keep)  # type: ignore[misc]  # with_head
                    for seq in track(seqs, "calibration forward", len(seqs))]
    rng = np.random.default_rng(0)
    scaling = _Scaling(source.tensors, types)
    tensors = dict(source.tensors)
    groups: list[dict[str, Any]] = []
    before_total = after_total = 0.0
    for i in track(range(hp.n_layers), "calibration search", hp.n_layers):
        layer = {k: np.concatenate(v) for k, v in acts[i].items()}
        acts[i] = {}
        n = next(iter(layer.values())).shape[0]
        rows = np.sort(rng.choice(n, size=min(n, MAX_ROWS), replace=False))
        plan = _layer_plan(f"blk.{i}.", hp, tensors,
                           *(layer[k][rows] for k in ("attn_in", "attn_out", "ffn_in", "ffn_act")))
        layer_members = {m.name: m for _, members, *_ in plan for m in members}
        before_total += sum(scaling.error(m) for m in layer_members.values())
        for gname, members, stat, expand, folded in plan:
            if not _quantized(types, [m.name for m in members if m.by_columns]):
                continue
            base = scaling.group_error(members, None, expand)
            best_alpha, best_err, best_s = 0.0, base, None
            for alpha in ALPHA_GRID[1:]:
                s = _scales(stat, alpha)
                err = scaling.group_error(members, s, expand)
                if err < best_err:
                    best_alpha, best_err, best_s = alpha, err, s
            if best_s is not None:
                scaling.apply(members, best_s, expand)
                if folded.endswith("norm.weight"):
                    tensors[folded] = (tensors[folded] / best_s).astype(np.float32)
            groups.append({"group": f"blk.{i}.{gname}", "alpha": best_alpha, "error_before": base,
                           "error_after": best_err, "folded_into": folded})
        after_total += sum(scaling.error(m) for m in layer_members.values())
        for name in layer_members:
            tensors[name] = scaling.scaled(name)
            bias = name.removesuffix("weight") + "bias"
            if bias in tensors and name in scaling.row:  # y / s needs b / s too (Qwen 2's attn_v.bias)
                tensors[bias] = (source.tensors[bias] / scaling.row[name]).astype(np.float32)
    # The search lowers each layer's own output error; check that the whole model agrees on the same text, and
    # keep the unscaled weights if it does not.
    kl_before = mean_kl(float_logits, source.tensors, types, hp, seqs)
    kl_after = mean_kl(float_logits, tensors, types, hp, seqs)
    reverted = kl_after > kl_before
    report = {
        "method": "awq-scale-search", "tokens": len(tokens), "alpha_grid": list(ALPHA_GRID),
        "error_before": before_total, "error_after": after_total, "kl_before": kl_before, "kl_after": kl_after,
        "reverted": reverted, "groups": groups,
    }
    if reverted:
        log.warning("calibration made the model's KL on the calibration text worse (%.5g > %.5g): not applied",
                    kl_after, kl_before)
        return dict(source.tensors), report
    log.info("calibration: error %.5g -> %.5g", before_total, after_total)
    return tensors, report
