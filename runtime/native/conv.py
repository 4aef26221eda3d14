"""2-D convolution through a hand-written CPU kernel: float32, any k x k kernel, stride 1 or 2, run inside the graph.

tinygrad 0.14's CPU code for a convolution is scalar (every ALU op devectorized, docs/TINYGRAD.md) and runs on one
core; the diffusion U-Net's time is mostly its 3x3 convolutions (docs/MEASUREMENTS.md). This kernel is an implicit
GEMM, the scheme onnxruntime's and PyTorch's CPU convolutions also reduce to: the input is zero-padded once (by
tinygrad, so the kernel never tests a border), the kernel is stored transposed as (in * k * k, out rounded up to
16) so that 16 output channels are one vector, and each task computes a block of PIX output pixels x up to 64
channels in registers, one vector fused multiply-add per (pixel, 16 channels, tap). Accumulation per output is in
tap order (input channel, then row, then column of the kernel), starting from the bias: the numpy model in
tests/native/test_native_conv.py follows the same order.

Vectors are clang's generic vector extension (16 floats): AVX-512 here with -march=native, two AVX2 or four NEON
registers elsewhere, so one source serves every CPU. Tasks (image, pixel block) are split over `parts` core_id
partitions that runtime.native.runner runs on threads.
"""
from __future__ import annotations

from tinygrad import Tensor, dtypes

from edgegen.runtime.tinygrad_seam.kernels import c_kernel

LANES = 16  # floats per vector
PIX = 4  # output pixels per task: 4 x 4 vectors of accumulators (64 channels) stay in 16 registers
MAX_BLOCK = 4  # vectors of output channels per pass
FEW_OUT = 4  # up to this many output channels (conv_out, the decoder's last layer): 16 pixels of a row per vector


def conv_kernel(batch: int, cin: int, hp: int, wp: int, cout: int, ho: int, wo: int, k: int, stride: int,
                parts: int) -> tuple[str, str]:
    """(name, source) of out[b, o, y, x] = bias[o] + sum_{c, i, j} xp[b, c, y*stride + i, x*stride + j] *
    wt[(c*k + i)*k + j, o], for an input padded already to (batch, cin, hp, wp) and wt (cin*k*k, cout16)."""
    if stride not in (1, 2) or k < 1:
        raise ValueError(f"no conv kernel for k={k}, stride={stride}")
    if cout <= FEW_OUT and stride == 1 and wo >= LANES:
        return _few_outputs_kernel(batch, cin, hp, wp, cout, ho, wo, k, parts)
    cout16 = -(-cout // LANES) * LANES
    npix = ho * wo
    tasks = batch * (-(-npix // PIX))
    name = f"eg_conv_{batch}_{cin}_{hp}_{wp}_{cout}_{ho}_{wo}_{k}_{stride}_{parts}"
    src = f"""
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));  /* loads from buffers of unknown alignment */
void {name}(float* restrict out, const float* restrict xp, const float* restrict wt, const float* restrict bias,
            int core_id) {{
  const int NPB = {-(-npix // PIX)};
  int t0 = (int)((long)core_id * {tasks} / {parts}), t1 = (int)((long)(core_id + 1) * {tasks} / {parts});
  for (int task = t0; task < t1; task++) {{
    int b = task / NPB, p0 = (task % NPB) * {PIX};
    int np = {npix} - p0 < {PIX} ? {npix} - p0 : {PIX};
    long off[{PIX}];
    for (int p = 0; p < {PIX}; p++) {{
      int q = p0 + (p < np ? p : np - 1);  /* a short last block repeats its last pixel (never stored) */
      off[p] = (long)(q / {wo}) * {stride} * {wp} + (q % {wo}) * {stride};
    }}
    const float* xb = xp + (long)b * {cin * hp * wp};
    for (int c0 = 0; c0 < {cout16}; c0 += {MAX_BLOCK * LANES}) {{
      int nv = ({cout16} - c0) / {LANES} < {MAX_BLOCK} ? ({cout16} - c0) / {LANES} : {MAX_BLOCK};
      v16 acc[{PIX}][{MAX_BLOCK}];
      for (int v = 0; v < {MAX_BLOCK}; v++) {{
        v16 bv = *(const v16u*)(bias + c0 + (v < nv ? v : 0) * {LANES});
        for (int p = 0; p < {PIX}; p++) acc[p][v] = bv;
      }}
      for (int c = 0; c < {cin}; c++) {{
        const float* xc = xb + (long)c * {hp * wp};
        for (int i = 0; i < {k}; i++) {{
          for (int j = 0; j < {k}; j++) {{
            const float* w = wt + (long)((c * {k} + i) * {k} + j) * {cout16} + c0;
            long tap = (long)i * {wp} + j;
            if (nv == {MAX_BLOCK}) {{
              v16 w0 = *(const v16u*)(w), w1 = *(const v16u*)(w + 16), w2 = *(const v16u*)(w + 32),
                  w3 = *(const v16u*)(w + 48);
              for (int p = 0; p < {PIX}; p++) {{
                float xv = xc[off[p] + tap];
                acc[p][0] += xv * w0; acc[p][1] += xv * w1; acc[p][2] += xv * w2; acc[p][3] += xv * w3;
              }}
            }} else {{
              for (int v = 0; v < nv; v++) {{
                v16 wv = *(const v16u*)(w + v * {LANES});
                for (int p = 0; p < {PIX}; p++) acc[p][v] += xc[off[p] + tap] * wv;
              }}
            }}
          }}
        }}
      }}
      for (int p = 0; p < np; p++) {{
        float* o = out + (long)b * {cout * npix} + p0 + p;
        for (int v = 0; v < nv; v++) {{
          for (int l = 0; l < {LANES}; l++) {{
            int ch = c0 + v * {LANES} + l;
            if (ch < {cout}) o[(long)ch * {npix}] = acc[p][v][l];
          }}
        }}
      }}
    }}
  }}
}}
"""
    return name, src


def _few_outputs_kernel(batch: int, cin: int, hp: int, wp: int, cout: int, ho: int, wo: int, k: int, parts: int
                        ) -> tuple[str, str]:
    """The same sum for a layer with few output channels (a channel vector would be mostly empty): a vector is 16
    adjacent pixels of an output row, one multiply-add per (tap, channel). A row's last vector starts at wo - 16 and
    overlaps the one before it: the overlapping pixels are computed twice, identically, and no read leaves the row's
    padded input. Each output still adds its taps to the bias in (input channel, row, column) order."""
    chunks = -(-wo // LANES)
    tasks = batch * ho * chunks
    name = f"eg_conv_{batch}_{cin}_{hp}_{wp}_{cout}_{ho}_{wo}_{k}_1_{parts}"
    src = f"""
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
void {name}(float* restrict out, const float* restrict xp, const float* restrict wt, const float* restrict bias,
            int core_id) {{
  int t0 = (int)((long)core_id * {tasks} / {parts}), t1 = (int)((long)(core_id + 1) * {tasks} / {parts});
  for (int task = t0; task < t1; task++) {{
    int b = task / {ho * chunks}, y = (task / {chunks}) % {ho}, x0 = (task % {chunks}) * {LANES};
    if (x0 > {wo - LANES}) x0 = {wo - LANES};
    const float* xb = xp + (long)b * {cin * hp * wp} + (long)y * {wp} + x0;
    v16 acc[{cout}];
    for (int o = 0; o < {cout}; o++) acc[o] = (v16){{}} + bias[o];
    for (int c = 0; c < {cin}; c++) {{
      for (int i = 0; i < {k}; i++) {{
        for (int j = 0; j < {k}; j++) {{
          v16 xv = *(const v16u*)(xb + (long)c * {hp * wp} + i * {wp} + j);
          const float* w = wt + (long)((c * {k} + i) * {k} + j) * {-(-cout // LANES) * LANES};
          for (int o = 0; o < {cout}; o++) acc[o] += xv * w[o];
        }}
      }}
    }}
    for (int o = 0; o < {cout}; o++)
      *(v16u*)(out + ((long)b * {cout} + o) * {ho * wo} + (long)y * {wo} + x0) = acc[o];
  }}
}}
"""
    return name, src


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, k: int, stride: int, padding: int, parts: int,
           padded: bool = False) -> Tensor:
    """x (B, Cin, H, W) convolved with weight (Cout, Cin*k*k) (+ bias (Cout,)), as tinygrad's conv2d computes it.
    padded: x is already zero-padded by `padding` (runtime.native.unet_kernels writes its output so)."""
    b, cin, hp, wp = (int(s) for s in x.shape)
    if not padded:  # padded so that every tap of every output pixel is inside the buffer
        x = x.cast(dtypes.float32).pad((padding, padding, padding, padding))
        hp, wp = hp + 2 * padding, wp + 2 * padding
    xp = x.cast(dtypes.float32).contiguous()
    cout = int(weight.shape[0])
    cout16 = -(-cout // LANES) * LANES
    ho, wo = (hp - k) // stride + 1, (wp - k) // stride + 1
    wt = weight.cast(dtypes.float32).reshape(cout, cin * k * k).T.pad((None, (0, cout16 - cout))).contiguous()
    bv = (bias.cast(dtypes.float32) if bias is not None else Tensor.zeros(cout, device=x.device))
    bv = bv.pad(((0, cout16 - cout),)).contiguous()
    tasks = b * (-(-(ho * wo) // PIX))
    parts = max(1, min(parts, tasks // 4))
    name, src = conv_kernel(b, cin, hp, wp, cout, ho, wo, k, stride, parts)
    out = Tensor.empty(b, cout, ho, wo, device=x.device)
    return c_kernel(name, src, out, (xp, wt, bv), parts)
