"""C source of the hand-written kernels: the headers in c/ plus one generated entry point per shape.

tinygrad's CPU device compiles one C string per kernel; its loader takes the start of the image as the entry point and
relocates only PC-relative references (docs/KERNELS.md), so a kernel's source is every header, whose helpers are all
static inline, followed by the entry point. Shapes are constants in the source: each (type, rows, columns) gets its own
kernel, which lets the compiler unroll and keeps the argument list to buffers and `core_id`.
"""
from __future__ import annotations

import functools
import math
import struct
from importlib import resources

from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from edgegen.runtime.native.layout import GROUP, X8_HEADERS

HEADERS = ("common.h", "x86.h", "arm.h", "dispatch.h", "expf.h", "attention.h", "x8.h")
ACT_BLOCK = 32  # activations are quantized in blocks of 32 (eg_q8x)
ACT_BLOCK_BYTES = 44  # sizeof(eg_q8x): float d, s, int16 bs[2], int8 qs[32]

# The packed types with a hand-written dot (the C name of each); weights stay as the GGUF file stores them.
KERNEL_TYPES: dict[T, str] = {
    T.Q8_0: "q8_0", T.Q4_0: "q4_0", T.Q4_1: "q4_1", T.Q5_0: "q5_0", T.Q5_1: "q5_1",
    T.Q2_K: "q2_K", T.Q3_K: "q3_K", T.Q4_K: "q4_K", T.Q5_K: "q5_K", T.Q6_K: "q6_K",
}


@functools.cache
def headers() -> str:
    """The kernel headers, concatenated in dependency order."""
    folder = resources.files("edgegen.runtime.native") / "c"
    return "\n".join((folder / h).read_text() for h in HEADERS)


def c_float(value: float, what: str) -> str:
    """`value` as a C float literal that any finite float32 compiles to exactly: the float32 it rounds to, written in
    hexadecimal (C99 "0x1.4f8b58p-17f"), as a decimal to-float conversion would also round it. NaN, infinities and
    values beyond float32 are refused here, before any source is built, naming `what`: a file's epsilon of NaN
    would otherwise become the token `nanf` and a clang error."""
    try:
        f32 = struct.unpack("<f", struct.pack("<f", float(value)))[0]
    except OverflowError:  # finite as a double, beyond float32
        f32 = math.inf
    if not math.isfinite(f32):
        raise ValueError(f"{what} is {value!r}, expected a finite float32")
    return f32.hex() + "f"


def c_float_tag(value: float) -> str:
    """A kernel-name fragment for a float constant: its float32 bits, so two epsilons never share a name."""
    return struct.pack(">f", float(value)).hex()


def _prelude(defines: tuple[str, ...]) -> str:
    return "".join(f"#define {d} 1\n" for d in defines) + headers()


# What a quantize kernel computes from its input before quantizing each row (`pre`):
#   ""          the row as it is: x (rows, k)
#   "rms"       RMSNorm then the norm's weight: x * (1 / sqrt(mean(x^2) + eps)) * w, as ggml's rms_norm (the sum of
#               squares in double) followed by ggml_mul; inputs x (rows, k), w (k)
#   "silu"      SwiGLU of a gate+up row (rows, 2k): silu(gate) * up, silu(g) = g / (1 + exp(-g)) (ggml_vec_swiglu_f32)
#   "gelu_tanh" GeGLU with tanh GELU: 0.5 g (1 + tanh(sqrt(2/pi) g (1 + 0.044715 g^2))) * up (ggml_gelu)
# Folding the norm or the gate into the quantization saves the kernels that wrote the float row and read it back.
PRE_OPS = ("", "rms", "silu", "gelu_tanh")
# per row: the C that prepares the row operation (pointers, the norm's scale); per block: the loop that writes the 32
# values to quantize into t
_GATE_ROW = "    const float* g = x + (long)r * {k2}; const float* u = g + {k};\n"
_PRE_ROW = {
    "": "",
    "rms": """    const float* xr = x + (long)r * {k};
    double ss = 0.0;  /* ggml_compute_forward_rms_norm_f32 sums the squares in ggml_float */
    for (int i = 0; i < {k}; i++) ss += (double)(xr[i] * xr[i]);
    float mean = (float)(ss / {k}), scale = 1.0f / __builtin_sqrtf(mean + {eps});
""",
    "silu": _GATE_ROW,
    "gelu_tanh": _GATE_ROW,
}
_PRE_BLOCK = {
    "": "",
    "rms": "      float t[{b}];\n"
           "      for (int i = 0; i < {b}; i++) t[i] = (xr[{b} * b + i] * scale) * w[{b} * b + i];\n",
    "silu": "      float t[{b}];\n      for (int i = 0; i < {b}; i++) {{ float v = g[{b} * b + i]; "
            "t[i] = v / (1.0f + eg_expf(-v)) * u[{b} * b + i]; }}\n",
    "gelu_tanh": "      float t[{b}];\n      for (int i = 0; i < {b}; i++) {{ float v = g[{b} * b + i], "
                 "z = 0.7978845608f * v * (1.0f + 0.044715f * v * v); "
                 "t[i] = 0.5f * v * (1.0f + (1.0f - 2.0f / (eg_expf(2.0f * z) + 1.0f))) * u[{b} * b + i]; }}\n",
}


def quantize_kernel(rows: int, k: int, parts: int, defines: tuple[str, ...] = (), pre: str = "",
                    eps: float = 0.0) -> tuple[str, str]:
    """(name, source) of the kernel that quantizes `rows` activation rows of `k` floats into eg_q8x blocks, after the
    row operation `pre` (PRE_OPS; eps: the RMSNorm epsilon); rows are split over `parts` core_id partitions."""
    if k % ACT_BLOCK:
        raise ValueError(f"activation width {k} is not a multiple of {ACT_BLOCK}")
    if pre not in PRE_OPS:
        raise ValueError(f"unknown row operation {pre!r} (one of {', '.join(repr(p) for p in PRE_OPS)})")
    eps_c = c_float(eps, "the RMSNorm epsilon") if pre == "rms" else ""
    tag = f"{pre}_" if pre != "rms" else f"rms{c_float_tag(eps)}_"
    name = f"eg_quant_{tag if pre else ''}{rows}_{k}_{parts}" + "".join(f"_{d.lower()}" for d in defines)
    nb = k // ACT_BLOCK
    row = _PRE_ROW[pre].format(k=k, k2=2 * k, eps=eps_c)
    block = _PRE_BLOCK[pre].format(b=ACT_BLOCK)
    args = "const float* restrict x, const float* restrict w" if pre == "rms" else "const float* restrict x"
    src_block = "t" if pre else f"x + (long)r * {k} + {ACT_BLOCK} * b"
    body = f"""
void {name}(uint8_t* restrict out, {args}, int core_id) {{
  int r0 = (int)((long)core_id * {rows} / {parts}), r1 = (int)((long)(core_id + 1) * {rows} / {parts});
  eg_q8x* y = (eg_q8x*)out;
  for (int r = r0; r < r1; r++) {{
{row}    for (int b = 0; b < {nb}; b++) {{
{block}      eg_quantize_block({src_block}, y + (long)r * {nb} + b);
    }}
  }}
}}
"""
    return name, _prelude(defines) + body


def matmul_kernel(ggml_type: T, rows: int, n: int, k: int, parts: int,
                  defines: tuple[str, ...] = (), layout: str = "rows") -> tuple[str, str]:
    """(name, source) of y[rows, n] = x[rows, k] . W[n, k]^T with W as GGUF blocks of `ggml_type` and x as quantized
    activation blocks; output rows of W are split over `parts` core_id partitions. Each weight row (or group of 8
    interleaved rows, layout "x8": runtime.native.layout) is read once and dotted with every activation row while it
    is in L1 (prefill), so rows > 1 reads the weights once, not per row."""
    if ggml_type not in KERNEL_TYPES:
        raise ValueError(f"no hand-written kernel for {ggml_type.name}")
    if layout not in ("rows", "x8"):
        raise ValueError(f"unknown weight layout {layout!r} (rows or x8)")
    block, size = GGML_QUANT_SIZES[ggml_type]
    if k % block or k % ACT_BLOCK:
        raise ValueError(f"input width {k} is not a multiple of the {ggml_type.name} block size {block}")
    c = KERNEL_TYPES[ggml_type]
    wb, nb = k // block, k // ACT_BLOCK
    if layout == "x8":
        if ggml_type not in X8_HEADERS or n % GROUP:
            raise ValueError(f"no x8 layout for {n} rows of {ggml_type.name}")
        return _matmul_x8(c, rows, n, nb, wb * size * GROUP, parts, defines)
    name = f"eg_mm_{c}_{rows}_{n}_{k}_{parts}" + "".join(f"_{d.lower()}" for d in defines)
    body = f"""
void {name}(float* restrict y, const uint8_t* restrict xq, const uint8_t* restrict w, int core_id) {{
  int n0 = (int)((long)core_id * {n} / {parts}), n1 = (int)((long)(core_id + 1) * {n} / {parts});
  const eg_q8x* x = (const eg_q8x*)xq;
  for (int r = n0; r < n1; r++) {{
    const uint8_t* wr = w + (long)r * {wb * size};
    int m = 0;
#ifdef EG_HAVE_DOT4_{c.upper()}
    for (; m + 4 <= {rows}; m += 4) eg_dot4_{c}(wr, x + (long)m * {nb}, {nb}, {wb}, y + (long)m * {n} + r, {n});
#endif
    for (; m < {rows}; m++) y[(long)m * {n} + r] = eg_dot_{c}(wr, x + (long)m * {nb}, {wb});
  }}
}}
"""
    return name, _prelude(defines) + body


def _matmul_x8(c: str, rows: int, n: int, nb: int, group_bytes: int, parts: int,
               defines: tuple[str, ...]) -> tuple[str, str]:
    """The x8 matmul: groups of 8 output rows split over the partitions; each group's blocks (a few KB) stay in L1
    while every activation row is dotted with them, 4 rows per unpacked block where the type has eg_dot8x4."""
    groups = n // GROUP
    name = f"eg_mm_{c}x8_{rows}_{n}_{nb * ACT_BLOCK}_{parts}" + "".join(f"_{d.lower()}" for d in defines)
    body = f"""
void {name}(float* restrict y, const uint8_t* restrict xq, const uint8_t* restrict w, int core_id) {{
  int g0 = (int)((long)core_id * {groups} / {parts}), g1 = (int)((long)(core_id + 1) * {groups} / {parts});
  const eg_q8x* x = (const eg_q8x*)xq;
  for (int g = g0; g < g1; g++) {{
    const uint8_t* wg = w + (long)g * {group_bytes};
    int m = 0;
#ifdef EG_HAVE_DOT8X4_{c.upper()}
    for (; m + 4 <= {rows}; m += 4)
      eg_dot8x4_{c}(wg, x + (long)m * {nb}, {nb}, {nb}, y + (long)m * {n} + {GROUP} * g, {n});
#endif
    for (; m < {rows}; m++) eg_dot8_{c}(wg, x + (long)m * {nb}, {nb}, y + (long)m * {n} + {GROUP} * g);
  }}
}}
"""
    return name, _prelude(defines) + body


def attention_kernel(t: int, heads: int, kv_heads: int, head_dim: int, context: int, window: int, scale: float,
                     start: int | None, parts: int, defines: tuple[str, ...] = ()) -> tuple[str, str]:
    """(name, source) of causal attention for `t` queries at positions start..start+t-1 over the KV cache
    (2, kv_heads, context, head_dim): scores, softmax (max-subtracted) and the weighted sum of values, per
    (query, head) task; tasks are split over `parts` partitions. Keys and values are float16 (llama.cpp's default KV
    type) and the rounding is llama.cpp's CPU path without flash attention (llama-cpp-python's default): the query
    rounded to f16 before its dot with the keys, the softmax normalized (sum in double, times its reciprocal) and
    each probability rounded to f16 before it weights a value; products and sums are float32. `start` None: the
    position is the `start_pos` argument (decode, and prefill after a reused prefix). window > 0: a query at p sees
    keys p-window+1 .. p (sliding-window layers). Query head h reads KV head h // (heads / kv_heads), as
    grouped-query attention does."""
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} KV heads")
    group = heads // kv_heads
    tag = "v" if start is None else str(start)
    name = f"eg_attn_{t}_{heads}_{kv_heads}_{head_dim}_{context}_{window}_{tag}_{parts}" + \
        "".join(f"_{d.lower()}" for d in defines)
    pos_arg = ", int start_pos" if start is None else ""
    start_expr = "start_pos" if start is None else str(start)
    body = f"""
void {name}(float* restrict out, const float* restrict q, const uint16_t* restrict kv{pos_arg}, int core_id) {{
  const int tasks = {t * heads};
  int k0 = (int)((long)core_id * tasks / {parts}), k1 = (int)((long)(core_id + 1) * tasks / {parts});
  float sc[{context}], qh[{head_dim}];
  for (int task = k0; task < k1; task++) {{
    int tq = task / {heads}, h = task % {heads}, g = h / {group};
    int pos = {start_expr} + tq, lo = {window} > 0 && pos - {window} + 1 > 0 ? pos - {window} + 1 : 0;
    const float* qv = q + (long)task * {head_dim};
    for (int i = 0; i < {head_dim}; i++) qh[i] = EG_ROUND_F16(qv[i]);  /* ggml converts q to K's f16 */
    const uint16_t* K = kv + (long)g * {context * head_dim};
    const uint16_t* V = kv + (long)({kv_heads} + g) * {context * head_dim};
    float m = -3.0e38f;
    for (int j = lo; j <= pos; j++) {{
      float s = eg_dotf_h(qh, K + (long)j * {head_dim}, {head_dim}) * {c_float(scale, 'the attention scale')};
      sc[j] = s; if (s > m) m = s;
    }}
    double l = 0.0;  /* ggml_vec_soft_max_f32 sums in ggml_float (double) */
    for (int j = lo; j <= pos; j++) {{ float e = eg_expf(sc[j] - m); sc[j] = e; l += (double)e; }}
    float inv = (float)(1.0 / l);
    float* o = out + (long)task * {head_dim};
    for (int j = lo; j <= pos; j++) {{
      float p = EG_ROUND_F16(sc[j] * inv);  /* normalized, then f16 as ggml's V . softmax converts it */
      const uint16_t* v = V + (long)j * {head_dim};
      if (j == lo) eg_scalef_h(o, p, v, {head_dim});  /* not zero-and-add: clang emits memset for a zeroing loop */
      else eg_axpyf_h(o, p, v, {head_dim});
    }}
  }}
}}
"""
    return name, _prelude(defines) + body
