"""Timestep-aware GPTQ for diffusion U-Nets: 4-bit weights rounded against the inputs each layer sees while sampling.

Round-to-nearest 4-bit weights cost the shipped U-Nets 26-37% of Frechet distance (docs/MEASUREMENTS.md). Two
published ideas, combined:
- Q-Diffusion (Li et al., 2023, arXiv:2302.04304, section 4.2): a U-Net's activations change with the timestep, so
  calibration inputs are drawn from every step of the float model's own sampling trajectory, uniformly, not from
  one timestep (and no training data is needed: the model generates its calibration set). Its shortcut-splitting
  for the concatenated skips comes for free here: the merge convolutions' blocks of 32 input channels never span the
  upsampled path and the skip (channels are multiples of 32).
- GPTQ (Frantar et al., 2023, arXiv:2210.17323, algorithm 1) with groups of 32: each weight column is rounded in turn
  and its rounding error, weighted by the inverse of the inputs' second moment H = E[x x^T], moved onto the columns
  not yet rounded; a block's scale (and minimum) is set from the updated weights when the block is reached, so the
  result is a standard Q4_0 / Q4_1 block that llama.cpp's and our kernels read unchanged.

The float model samples `LABELS_PER_CLASS` digits per class with the file's guidance (conditional and null rows, as
the runtime does) over `STEPS` DDIM steps; at every step each quantized layer's inputs (a convolution's im2col
patches, in the stored (in, kh, kw) column order) are sampled `ROWS_PER_CALL` rows at a time into H. A latent
model's decoder is calibrated on the trajectory's final latents and its encoder on the decoded digits. For each
matrix the rounding with the smaller H-weighted output error, GPTQ's or plain round-to-nearest, is kept and both
errors are reported.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from edgegen.models.autoencoder import AUTOENCODER_PREFIX, LATENT_MARKER_KEY, Autoencoder, AutoencoderConfig
from edgegen.models.unet import (
    DEFAULT_GUIDANCE,
    GUIDANCE_KEY,
    LATENT_CLIP,
    UNET_ARCH,
    FloatWeights,
    UNet,
    UNetConfig,
    cosine_alpha_bars,
    ddim_step,
    ddim_timesteps,
)
from edgegen.quantize.blocks import Q, QuantizedTensor, quantize_tensor, relative_error
from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.source import ModelSource

log = logging.getLogger(__name__)

METHOD = "gptq-timestep"
LABELS_PER_CLASS = 2  # 20 digits: 40 U-Net rows a step with guidance
# DDIM over 20 evenly spaced timesteps, whatever the file's own sampler: the trajectory spans the schedule as the
# shipped files' samplers do (DDIM 20, DDPM 30); measured w4 results with it: docs/MEASUREMENTS.md.
STEPS = 20
ROWS_PER_CALL = 1024  # input rows kept per layer per step; 20 steps give 20k rows for at most 1152 columns
DAMP = 0.01  # GPTQ's dampening: 1% of H's mean diagonal added to it, so its inverse exists
SEED = 0
GPTQ_TYPES = (Q.Q4_0, Q.Q4_1)
_BLOCK = 32
CALIBRATION_DEVICE = "CPU"  # tinygrad device of the float forward (offline: the build machine's CPU)


# ------------------------------------------------------------------------------------------------ the statistics
def patches(x: np.ndarray, k: int, stride: int, padding: int, rows: np.ndarray | None = None) -> np.ndarray:
    """im2col of x (B, C, H, W): (rows, C*k*k) in the stored kernel's (in, kh, kw) order; `rows` picks flat output
    positions (b, i, j) in C order, all by default."""
    b, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    ho, wo = win.shape[2], win.shape[3]
    idx = np.arange(b * ho * wo) if rows is None else rows
    bi, rest = np.divmod(idx, ho * wo)
    ii, jj = np.divmod(rest, wo)
    return win[bi, :, ii, jj].reshape(len(idx), c * k * k)


class InputStatistics(FloatWeights):
    """The float model's weights, noting the input of each named matrix it applies (`seen`, in call order) so that
    a forward can return them; `add` accumulates H = sum x x^T from those inputs."""

    def __init__(self, tensors: dict[str, Any], targets: Iterable[str], rng: np.random.Generator):
        super().__init__(tensors)
        self.targets = set(targets)
        self.rng = rng
        self.seen: list[tuple[str, Any, tuple[int, int, int] | None]] = []  # (weight name, input, conv k/stride/pad)
        self.h: dict[str, np.ndarray] = {}
        self.rows: dict[str, int] = {}

    def conv(self, name: str, x: Any, k: int, stride: int = 1, padding: int = 0) -> Any:
        if f"{name}.weight" in self.targets:
            self.seen.append((f"{name}.weight", x, (k, stride, padding)))
        return super().conv(name, x, k, stride, padding)

    def linear(self, name: str, x: Any) -> Any:
        if f"{name}.weight" in self.targets:
            self.seen.append((f"{name}.weight", x, None))
        return super().linear(name, x)

    def add(self, name: str, a: np.ndarray, conv: tuple[int, int, int] | None) -> None:
        """Sample up to ROWS_PER_CALL input rows of one call (a: the matrix's input as computed) into H."""
        if conv is None:
            a = a.reshape(-1, a.shape[-1])
            total = len(a)
        else:
            k, stride, padding = conv
            ho = (a.shape[2] + 2 * padding - k) // stride + 1
            wo = (a.shape[3] + 2 * padding - k) // stride + 1
            total = a.shape[0] * ho * wo
        pick = None if total <= ROWS_PER_CALL else np.sort(self.rng.choice(total, ROWS_PER_CALL, replace=False))
        x = (a if pick is None else a[pick]) if conv is None else patches(a, *conv, rows=pick)
        x = x.astype(np.float64)
        self.h[name] = self.h.get(name, 0.0) + x.T @ x
        self.rows[name] = self.rows.get(name, 0) + len(x)


def collect(source: ModelSource, targets: Iterable[str], track: Callable = lambda it, d, n: it
            ) -> tuple[dict[str, np.ndarray], dict[str, int], int]:
    """H and its row count per target matrix, from the float model's own sampling trajectory, and the number of
    digits that trajectory drew."""
    from tinygrad import Tensor, TinyJit

    from edgegen.runtime.artifact import open_gguf
    from edgegen.runtime.artifact.config import config_from_file
    from edgegen.runtime.tinygrad_seam.devices import named_default_device, set_default_device

    if not named_default_device():
        # Else tinygrad finds a default inside the first constant by opening every backend (PoCL's too) and writes
        # DEV=<it> into os.environ, where the rest of the process and its children would then run.
        set_default_device(CALIBRATION_DEVICE)
    mf = open_gguf(source.path)
    cfg: UNetConfig = config_from_file(mf, UNetConfig, UNET_ARCH)
    latent = mf.get(LATENT_MARKER_KEY) is not None
    g = mf.get(GUIDANCE_KEY)
    guidance = DEFAULT_GUIDANCE if g is None else float(g)
    dev = CALIBRATION_DEVICE
    tensors = {n: Tensor(np.ascontiguousarray(a, dtype=np.float32), device=dev) for n, a in source.tensors.items()}
    rng = np.random.default_rng(SEED)
    stats = InputStatistics(tensors, targets, rng)
    unet = UNet(cfg, stats)
    meta: list[tuple[str, tuple[int, int, int] | None]] = []

    def forward(x: Tensor, t: Tensor, y: Tensor) -> list[Tensor]:  # eps, then each target's input
        stats.seen.clear()
        eps = unet(x, t, y)
        meta[:] = [(name, conv) for name, _, conv in stats.seen]
        return [t.contiguous().realize() for t in [eps] + [a for _, a, _ in stats.seen]]

    # Captured once and replayed: scheduling the forward eagerly at every step took 5 s a step (tinygrad's
    # scheduler), four fifths of the calibration's time.
    jit = TinyJit(forward)
    labels = np.repeat(np.arange(cfg.num_classes), LABELS_PER_CLASS)
    n = len(labels)
    x = rng.standard_normal((n, cfg.in_channels, cfg.image_size, cfg.image_size), dtype=np.float32)
    ab_all = cosine_alpha_bars(cfg.timesteps)
    ts = ddim_timesteps(cfg.timesteps, STEPS)
    ys = Tensor(np.concatenate([labels, np.full(n, cfg.null_class)]), device=dev).realize()
    for i, t in enumerate(track(ts, "calibration: sampling", len(ts))):
        outs = [o.numpy() for o in jit(Tensor(np.concatenate([x, x]), device=dev).realize(),
                                       Tensor(np.full(2 * n, t), device=dev).realize(), ys)]
        for (name, conv), a in zip(meta, outs[1:], strict=True):
            stats.add(name, a, conv)
        both = outs[0]
        eps = both[n:] + guidance * (both[:n] - both[n:])
        ab_prev = ab_all[ts[i + 1]] if i + 1 < len(ts) else 1.0
        x, _ = ddim_step(x, eps, ab_all[t], ab_prev, LATENT_CLIP if latent else 1.0)
        x = x.astype(np.float32)
    if latent:
        ae_cfg: AutoencoderConfig = config_from_file(mf, AutoencoderConfig, AUTOENCODER_PREFIX)
        ae = Autoencoder(ae_cfg, stats)
        stats.seen.clear()
        images = ae.decode(Tensor(x, device=dev)).clip(-1, 1)
        ae.encode(images).realize()  # the encoder (img2img, not sampling) on the decoded samples
        for name, a, conv in stats.seen:
            stats.add(name, a.numpy(), conv)
    return stats.h, stats.rows, n


# ------------------------------------------------------------------------------------------------------ GPTQ
def _block_params(w: np.ndarray, qtype: GGMLQuantizationType) -> tuple[np.ndarray, np.ndarray]:
    """(d, m) per row of a (rows, 32) block as ggml's reference quantizer picks them, rounded to float16 as stored;
    the value of code q is d * q + m (Q4_0: m = -8 d)."""
    if qtype == Q.Q4_0:
        imax = np.abs(w).argmax(axis=1)
        d = (w[np.arange(len(w)), imax] / -8).astype(np.float16).astype(np.float64)
        return d, -8 * d
    lo, hi = w.min(axis=1), w.max(axis=1)
    d = ((hi - lo) / 15).astype(np.float16).astype(np.float64)
    return d, lo.astype(np.float16).astype(np.float64)


def _codes(w: np.ndarray, d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Nearest codes 0..15 of w (rows, ...) for per-row d, m."""
    d, m = (v.reshape(v.shape + (1,) * (w.ndim - 1)) for v in (d, m))
    safe = np.where(d == 0, 1.0, d)
    return np.where(d == 0, 0, np.clip(np.round((w - m) / safe), 0, 15)).astype(np.uint8)


def gptq(w: np.ndarray, h: np.ndarray, qtype: GGMLQuantizationType) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ rounding of w (out, in) against input second moment h (in, in) in blocks of 32 along rows: returns the
    codes (out, in) in 0..15 and per-block d, m (out, in/32)."""
    if qtype not in GPTQ_TYPES:
        raise QuantizeError(f"GPTQ packs Q4_0 and Q4_1, not {qtype.name}")
    out, cols = w.shape
    wk = w.astype(np.float64).copy()
    hh = h.astype(np.float64).copy()
    dead = np.diag(hh) == 0
    hh[dead, dead] = 1.0
    wk[:, dead] = 0.0  # a column whose input is always 0 contributes nothing: any code does
    hh[np.diag_indices(cols)] += DAMP * float(np.mean(np.diag(hh)))
    hinv = np.linalg.cholesky(np.linalg.inv(hh)).T  # upper Cholesky factor of H^-1, as in the paper
    codes = np.zeros((out, cols), np.uint8)
    d = np.zeros((out, cols // _BLOCK))
    m = np.zeros_like(d)
    for g in range(0, cols, _BLOCK):
        d[:, g // _BLOCK], m[:, g // _BLOCK] = dg, mg = _block_params(wk[:, g:g + _BLOCK], qtype)
        for i in range(g, g + _BLOCK):
            q = _codes(wk[:, i], dg, mg)
            codes[:, i] = q
            err = (wk[:, i] - (dg * q + mg)) / hinv[i, i]
            wk[:, i + 1:] -= np.outer(err, hinv[i, i + 1:])
    return codes, d, m


def pack(codes: np.ndarray, d: np.ndarray, m: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """ggml blocks (uint8, (out, bytes per row)) of codes and float16 d (and m for Q4_1): element j of a block in
    the low nibble of byte j, element j + 16 in its high nibble."""
    out, cols = codes.shape
    c = codes.reshape(out, cols // _BLOCK, _BLOCK)
    qs = (c[..., :16] | (c[..., 16:] << 4)).astype(np.uint8)
    parts = [d.astype(np.float16)[..., None].view(np.uint8)]
    if qtype == Q.Q4_1:
        parts.append(m.astype(np.float16)[..., None].view(np.uint8))
    blocks = np.concatenate(parts + [qs], axis=-1)
    assert blocks.shape[-1] == GGML_QUANT_SIZES[qtype][1]
    return np.ascontiguousarray(blocks.reshape(out, -1))


def output_error(w: np.ndarray, approx: np.ndarray, h: np.ndarray) -> float:
    """sum over inputs of ||(W - approx) x||^2, relative to sum ||W x||^2 (trace forms over H)."""
    e = (w - approx).astype(np.float64)
    w64 = w.astype(np.float64)
    den = float(np.einsum("ij,jk,ik->", w64, h, w64))
    return float(np.einsum("ij,jk,ik->", e, h, e)) / den if den > 0 else 0.0


@dataclass
class LayerResult:
    name: str
    rtn_error: float  # H-weighted relative output error of round-to-nearest
    gptq_error: float
    kept: str  # "gptq" or "rtn"


def calibrate_unet(source: ModelSource, types: dict[str, GGMLQuantizationType],
                   track: Callable = lambda it, d, n: it) -> tuple[dict[str, QuantizedTensor], dict[str, Any]]:
    """Packed 4-bit tensors for the U-Net file's 4-bit matrices, and a report of what calibration changed."""
    targets = [n for n, t in types.items() if t in GPTQ_TYPES]
    h, rows, samples = collect(source, targets, track)
    missing = [n for n in targets if n not in h]
    if missing:  # every stored matrix is applied by the forward: a miss means a name the forward does not use
        raise QuantizeError(f"calibration saw no inputs for {', '.join(missing)}")
    packed: dict[str, QuantizedTensor] = {}
    layers: list[LayerResult] = []
    for name in track(targets, "calibration: rounding", len(targets)):
        w, qtype = source.tensors[name], types[name]
        rtn = quantize_tensor(w, qtype)
        rtn_deq = dequantize(rtn.data, qtype).reshape(w.shape)
        codes, d, m = gptq(w, h[name], qtype)
        data = pack(codes, d, m, qtype)
        deq = dequantize(data, qtype).reshape(w.shape)
        e_rtn, e_gptq = output_error(w, rtn_deq, h[name]), output_error(w, deq, h[name])
        keep = e_gptq < e_rtn
        packed[name] = QuantizedTensor(qtype, data, tuple(w.shape), relative_error(w, deq)) if keep else rtn
        layers.append(LayerResult(name, e_rtn, e_gptq, "gptq" if keep else "rtn"))
    report = {
        "method": METHOD, "samples": samples, "steps": STEPS,
        "rows_per_layer": int(min(rows.values())), "error_before": float(np.mean([r.rtn_error for r in layers])),
        "error_after": float(np.mean([min(r.rtn_error, r.gptq_error) for r in layers])),
        "layers": [vars(r) for r in layers],
    }
    log.info("timestep-aware calibration: mean output error %.4g -> %.4g", report["error_before"],
             report["error_after"])
    return packed, report
