"""The diffusion U-Net's hand-written CPU kernels besides the convolution (runtime.native.conv), run in the graph.

GroupNorm, then SiLU, written zero-padded for the convolution after it:

In the diffusion U-Net every 3x3 convolution but the strided ones reads silu(group_norm(x)). tinygrad 0.14 computes
that as five kernels (two reductions, the normalise-and-SiLU, a copy made contiguous, the zero padding), scalar and
mostly on one core: with the convolutions in runtime.native.conv they were about a third of a batch-16 U-Net call
(docs/MEASUREMENTS.md). Here one task per (image, group) reads its channels three times from L1 (the mean, then the
variance about it, then the output) and writes the padded rows runtime.native.conv reads, borders included.

Arithmetic, as the numpy model in tests/native/test_native_unet_kernels.py computes it: per group, mean and variance by
16-lane partial sums (lane l sums elements l, l+16, ...; a short tail is summed after the lanes), then
a = gamma[c] / sqrt(var + eps), y = x * a + (beta[c] - mean * a), out = y / (1 + exp(-y)) with the kernel's own exp
(Cephes' polynomial; no libm in a kernel). Each element's arithmetic depends on the shapes only, never on the
batch row or the partition, so a batch computes every image as it would alone.

The middle block's self-attention (`attention_kernel`): tinygrad's scaled_dot_product_attention over 49 tokens
was its slowest kernel after the convolutions (2.7 ms of a 20 ms batch-16 call). One task per (image, head) keeps
the scores of one query in registers and L1.
"""
from __future__ import annotations

import functools
from importlib import resources

from tinygrad import Tensor, dtypes

from edgegen.runtime.tinygrad_seam.kernels import c_kernel

LANES = 16

# exp of 16 floats: c/expf.h's reduction and polynomial, the scalar eg_expf's lane by lane (this kernel is a
# standalone source, not built with the matmul kernels' headers, so it takes expf.h alone). Selections are bit masks:
# clang's C vector extension has no vector `?:`.
VEXP_BODY = """
typedef float v16 __attribute__((vector_size(64)));
typedef int v16i __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
static inline float eg_hsum(v16 v) { float s = 0.0f; for (int l = 0; l < 16; l++) s += v[l]; return s; }
static inline v16 eg_sel(v16i m, v16 a, v16 b) { return (v16)(((v16i)a & m) | ((v16i)b & ~m)); }
static inline v16 eg_vexp(v16 x) {
  const v16 zero = (v16){}, hi = zero + EG_EXP_HI, lo = zero + EG_EXP_LO;
  v16i under = x < lo;
  x = eg_sel(x > hi, hi, x);
  v16 fn = x * EG_EXP_LOG2E;
  v16i n = __builtin_convertvector(fn + eg_sel(fn >= 0.0f, zero + 0.5f, zero - 0.5f), v16i);
  v16 nf = __builtin_convertvector(n, v16);
  v16 r = EG_EXP_REDUCE(x, nf), p;
  EG_EXP_POLY(p, r, zero + 1.0f);
  v16 s = (v16)((n + 127) << 23);
  return eg_sel(under, zero, p * s);
}
"""


@functools.cache
def vexp_source() -> str:
    """c/expf.h, then the vector exp and the helpers every U-Net kernel starts with."""
    return (resources.files("edgegen.runtime.native") / "c" / "expf.h").read_text() + VEXP_BODY


def group_norm_silu_kernel(batch: int, channels: int, h: int, w: int, groups: int, pad: int, eps: float,
                           parts: int) -> tuple[str, str]:
    """(name, source) of out (batch, channels, h + 2 pad, w + 2 pad) = silu(group_norm(x)) inside a zero border,
    for x (batch, channels, h, w), gamma and beta (channels,)."""
    if channels % groups:
        raise ValueError(f"{channels} channels do not split into {groups} groups")
    cpg, hw = channels // groups, h * w
    n = cpg * hw
    hp, wp = h + 2 * pad, w + 2 * pad
    tasks = batch * groups
    hw16 = -(-hw // LANES) * LANES
    name = f"eg_gnsilu_{batch}_{channels}_{h}_{w}_{groups}_{pad}_{parts}"
    src = vexp_source() + f"""
void {name}(float* restrict out, const float* restrict x, const float* restrict gamma, const float* restrict beta,
            int core_id) {{
  int t0 = (int)((long)core_id * {tasks} / {parts}), t1 = (int)((long)(core_id + 1) * {tasks} / {parts});
  float act[{hw16}];
  for (int task = t0; task < t1; task++) {{
    int b = task / {groups}, g = task % {groups};
    const float* xg = x + ((long)b * {channels} + (long)g * {cpg}) * {hw};
    v16 s = (v16){{}};
    int i = 0;
    for (; i + {LANES} <= {n}; i += {LANES}) s += *(const v16u*)(xg + i);
    float sum = eg_hsum(s);
    for (; i < {n}; i++) sum += xg[i];
    float mean = sum / {n}.0f;
    v16 s2 = (v16){{}};
    i = 0;
    for (; i + {LANES} <= {n}; i += {LANES}) {{ v16 d = *(const v16u*)(xg + i) - mean; s2 += d * d; }}
    float ss = eg_hsum(s2);
    for (; i < {n}; i++) {{ float d = xg[i] - mean; ss += d * d; }}
    float rstd = 1.0f / __builtin_sqrtf(ss / {n}.0f + {eps!r}f);
    for (int cc = 0; cc < {cpg}; cc++) {{
      int ch = g * {cpg} + cc;
      float a = gamma[ch] * rstd, c = beta[ch] - mean * a;
      const float* xc = xg + (long)cc * {hw};
      for (int j = 0; j < {hw16}; j += {LANES}) {{
        v16 v;
        if (j + {LANES} <= {hw}) v = *(const v16u*)(xc + j);
        else {{ v = (v16){{}}; for (int l = 0; j + l < {hw}; l++) v[l] = xc[j + l]; }}
        v16 y = v * a + c;
        *(v16u*)(act + j) = y / (1.0f + eg_vexp(-y));
      }}
      float* o = out + ((long)b * {channels} + ch) * {hp * wp};
      for (int r = 0; r < {pad * wp}; r++) {{ o[r] = 0.0f; o[{(hp - pad) * wp} + r] = 0.0f; }}
      for (int y = 0; y < {h}; y++) {{
        float* row = o + (long)(y + {pad}) * {wp};
        for (int q = 0; q < {pad}; q++) {{ row[q] = 0.0f; row[{wp - 1} - q] = 0.0f; }}
        for (int q = 0; q < {w}; q++) row[{pad} + q] = act[y * {w} + q];
      }}
    }}
  }}
}}
"""
    return name, src


def group_norm_silu_padded(x: Tensor, gamma: Tensor, beta: Tensor, groups: int, pad: int, eps: float,
                           parts: int) -> Tensor:
    """silu(group_norm(x)) of x (B, C, H, W), zero-padded by `pad` on each side: (B, C, H + 2 pad, W + 2 pad)."""
    b, c, h, w = (int(s) for s in x.shape)
    parts = max(1, min(parts, b * groups))
    name, src = group_norm_silu_kernel(b, c, h, w, groups, pad, eps, parts)
    out = Tensor.empty(b, c, h + 2 * pad, w + 2 * pad, device=x.device)
    inputs = tuple(t.cast(dtypes.float32).contiguous() for t in (x, gamma, beta))
    return c_kernel(name, src, out, inputs, parts)


def attention_kernel(batch: int, tokens: int, heads: int, head_dim: int, parts: int) -> tuple[str, str]:
    """(name, source) of the U-Net's self-attention, channel-major: out (batch, heads * head_dim, tokens) from qkv
    (batch, 3, heads, head_dim, tokens), softmax(q k^T / sqrt(head_dim)) v per (image, head), no mask. Scores in
    float32, the maximum subtracted, exponentials by the vector exp (vexp_source), the sums in key order."""
    c = heads * head_dim
    t16 = -(-tokens // LANES) * LANES
    tasks = batch * heads
    name = f"eg_uattn_{batch}_{tokens}_{heads}_{head_dim}_{parts}"
    src = vexp_source() + f"""
void {name}(float* restrict out, const float* restrict qkv, int core_id) {{
  int t0 = (int)((long)core_id * {tasks} / {parts}), t1 = (int)((long)(core_id + 1) * {tasks} / {parts});
  float sc[{t16}];
  const float scale = {1.0 / head_dim ** 0.5!r}f;
  for (int task = t0; task < t1; task++) {{
    int b = task / {heads}, h = task % {heads};
    const float* q = qkv + ((long)b * {3 * c} + h * {head_dim}) * {tokens};
    const float* k = q + {c * tokens};
    const float* v = k + {c * tokens};
    float* o = out + ((long)b * {c} + h * {head_dim}) * {tokens};
    for (int p = 0; p < {tokens}; p++) {{
      for (int j = 0; j < {tokens}; j++) sc[j] = 0.0f;
      for (int e = 0; e < {head_dim}; e++) {{  /* key rows are contiguous per channel: one pass per channel */
        float qe = q[e * {tokens} + p];
        const float* ke = k + e * {tokens};
        for (int j = 0; j < {tokens}; j++) sc[j] += qe * ke[j];
      }}
      float mx = -3.0e38f;
      for (int j = 0; j < {tokens}; j++) {{ sc[j] *= scale; mx = sc[j] > mx ? sc[j] : mx; }}
      for (int j = {tokens}; j < {t16}; j++) sc[j] = -3.0e38f;
      for (int j = 0; j < {t16}; j += {LANES}) *(v16u*)(sc + j) = eg_vexp(*(v16u*)(sc + j) - mx);
      float sum = 0.0f;
      for (int j = 0; j < {tokens}; j++) sum += sc[j];
      float inv = 1.0f / sum;
      for (int e = 0; e < {head_dim}; e++) {{  /* 16-lane partial sums over whole vectors of keys, then the tail */
        const float* ve = v + e * {tokens};
        v16 acc = (v16){{}};
        int j = 0;
        for (; j + {LANES} <= {tokens}; j += {LANES}) acc += *(const v16u*)(sc + j) * *(const v16u*)(ve + j);
        float a = eg_hsum(acc);
        for (; j < {tokens}; j++) a += sc[j] * ve[j];
        o[e * {tokens} + p] = a * inv;
      }}
    }}
  }}
}}
"""
    return name, src


def self_attention(qkv: Tensor, heads: int, parts: int) -> Tensor:
    """(B, C, T) attention output of qkv (B, 3 C, T), channels (3, heads, C / heads)."""
    b, c3, t = (int(s) for s in qkv.shape)
    head_dim = c3 // 3 // heads
    parts = max(1, min(parts, b * heads))
    name, src = attention_kernel(b, t, heads, head_dim, parts)
    out = Tensor.empty(b, c3 // 3, t, device=qkv.device)
    return c_kernel(name, src, out, (qkv.cast(dtypes.float32).contiguous(),), parts)
