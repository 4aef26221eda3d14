/* edgegen hand-written CPU kernels: block layouts, activation quantization and portable block dot products.
 *
 * Compiled by tinygrad's CPU compiler (clang -O2 -ffreestanding -nostdlib -march=native) as one translation unit:
 * runtime/native/source.py concatenates common.h, x86.h, arm.h, dispatch.h and the generated entry point. Rules of
 * that loader (docs/KERNELS.md): the entry point is the start of the image, so every helper here is static inline
 * and fully inlined; no external calls (no libm, no memcpy/memset: never zero-initialize or copy a large local).
 *
 * Arithmetic (tests/native/reference.py is the numpy model of it), llama.cpp's Q8_0/Q8_1 activations as its AVX2 and
 * NEON code forms them (quantize_row_q8_0/q8_1), so the two runtimes compute the same sums:
 *   per block of 32 floats: amax = max|x|, id = amax ? 127 / amax : 0, q = x*id rounded to nearest, ties to even;
 *   d = amax / 127 rounded to f16 (llama.cpp stores it as ggml_half), s = (amax / 127) * sum(q) rounded to f16
 *   (Q8_1's s), bs[h] = sum of q over half h. Each step is a separate float32 operation: contraction into FMA is
 *   off below, so the result is bit-exact across ISAs.
 *   weight block dot: integer sums of quant*q per (sub-)block, exact in int32, then one float multiply-add by the
 *   product of the scales; Q4_1/Q5_1 add m * s; offsets (Q4_0's 8, ...) and K-quant minimums use the integer bs.
 */
#pragma STDC FP_CONTRACT OFF
#include <stdint.h>

#define EG_INLINE static inline __attribute__((always_inline))
#define EG_QK 32

/* ggml-common.h's blocks, byte for byte (the GGUF bytes are used in place). */
typedef struct { uint16_t d; int8_t qs[32]; } eg_block_q8_0;                                    /*  34 B / 32 */
typedef struct { uint16_t d; uint8_t qs[16]; } eg_block_q4_0;                                   /*  18 B / 32 */
typedef struct { uint16_t d, m; uint8_t qs[16]; } eg_block_q4_1;                                /*  20 B / 32 */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } eg_block_q5_0;                    /*  22 B / 32 */
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } eg_block_q5_1;                 /*  24 B / 32 */
typedef struct { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; } eg_block_q2_K;         /*  84 B / 256 */
typedef struct { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; } eg_block_q3_K; /* 110 B */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } eg_block_q4_K;        /* 144 B / 256 */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } eg_block_q5_K; /* 176 B */
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } eg_block_q6_K; /* 210 B / 256 */

/* One quantized activation block: 32 int8, the f16-rounded scale d and d * sum (as floats), and the sums of each half
 * (for offsets and the K-quants' 16-weight minimums). */
typedef struct { float d, s; int16_t bs[2]; int8_t qs[32]; } eg_q8x;                            /*  44 B / 32 */
/* The block sizes live here, checked by the compiler: gguf-py's GGML_QUANT_SIZES and source.ACT_BLOCK_BYTES must agree
 * (tests/native checks the Python side against these). */
_Static_assert(sizeof(eg_block_q8_0) == 34, "Q8_0 block");
_Static_assert(sizeof(eg_block_q4_0) == 18, "Q4_0 block");
_Static_assert(sizeof(eg_block_q4_1) == 20, "Q4_1 block");
_Static_assert(sizeof(eg_block_q5_0) == 22, "Q5_0 block");
_Static_assert(sizeof(eg_block_q5_1) == 24, "Q5_1 block");
_Static_assert(sizeof(eg_block_q2_K) == 84, "Q2_K block");
_Static_assert(sizeof(eg_block_q3_K) == 110, "Q3_K block");
_Static_assert(sizeof(eg_block_q4_K) == 144, "Q4_K block");
_Static_assert(sizeof(eg_block_q5_K) == 176, "Q5_K block");
_Static_assert(sizeof(eg_block_q6_K) == 210, "Q6_K block");
_Static_assert(sizeof(eg_q8x) == 44, "activation block");

EG_INLINE float eg_f16_portable(uint16_t h) {
  /* IEEE half -> float by bits (no F16C/__fp16 needed); handles zero, subnormals, inf and nan. */
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
  if (exp == 0) {
    if (man == 0) { bits = sign; }
    else { exp = 113; while (!(man & 0x400u)) { man <<= 1; exp--; } bits = sign | (exp << 23) | ((man & 0x3ffu) << 13); }
  } else if (exp == 31) { bits = sign | 0x7f800000u | (man << 13); }
  else { bits = sign | ((exp + 112) << 23) | (man << 13); }
  union { uint32_t u; float f; } v; v.u = bits; return v.f;
}


#if defined(EG_PORTABLE)
#define EG_F16(h) eg_f16_portable(h)
#elif defined(__F16C__)
#include <immintrin.h>
#define EG_F16(h) _cvtsh_ss(h)
#elif defined(__aarch64__)
EG_INLINE float eg_f16_hw(uint16_t h) { union { uint16_t u; __fp16 f; } v; v.u = h; return (float)v.f; }
#define EG_F16(h) eg_f16_hw(h)
#else
#define EG_F16(h) eg_f16_portable(h)
#endif

/* float -> nearest f16 value (ties to even) and back, as GGML_FP32_TO_FP16 rounds; by bits where there is no F16C or
 * __fp16: normal, subnormal and overflowing values (activation scales are far from f16's limits, but stay exact). */
EG_INLINE float eg_round_f16_portable(float f) {
  union { float f; uint32_t u; } v; v.f = f;
  uint32_t sign = v.u & 0x80000000u, a = v.u & 0x7fffffffu;
  if (a >= 0x7f800000u) return f;                                     /* inf, nan */
  if (a >= 0x477ff000u) { v.u = sign | 0x7f800000u; return v.f; }     /* rounds past 65504: inf */
  if (a < 0x38800000u) {                                              /* below 2^-14: a multiple of 2^-24 */
    float m = (v.f < 0.0f ? -v.f : v.f) * 16777216.0f;                /* exact: a power-of-two scale */
    m = (m + 12582912.0f) - 12582912.0f;                              /* nearest integer, ties to even */
    v.f = m / 16777216.0f; v.u |= sign; return v.f;
  }
  uint32_t keep = a >> 13, rest = a & 0x1fffu;                        /* 10 mantissa bits kept of 23 */
  if (rest > 0x1000u || (rest == 0x1000u && (keep & 1u))) keep++;
  v.u = sign | (keep << 13); return v.f;
}

#if defined(EG_PORTABLE)
#define EG_ROUND_F16(f) eg_round_f16_portable(f)
#elif defined(__F16C__)
#define EG_ROUND_F16(f) _cvtsh_ss(_cvtss_sh((f), _MM_FROUND_TO_NEAREST_INT))
#elif defined(__aarch64__)
EG_INLINE float eg_round_f16_hw(float f) { __fp16 h = (__fp16)f; return (float)h; }
#define EG_ROUND_F16(f) eg_round_f16_hw(f)
#else
#define EG_ROUND_F16(f) eg_round_f16_portable(f)
#endif

EG_INLINE void eg_quantize_block_portable(const float* x, eg_q8x* y) {
  float amax = 0.0f;
  for (int i = 0; i < EG_QK; i++) { float a = x[i] < 0.0f ? -x[i] : x[i]; if (a > amax) amax = a; }
  float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
  if (!(id <= 3.4028235e38f)) id = 0.0f; /* amax below ~3.7e-37: 127/amax overflows; the block quantizes to zeros */
  int s0 = 0, s1 = 0;
  for (int i = 0; i < EG_QK; i++) {
    float v = x[i] * id;
    int q = (int)((v + 12582912.0f) - 12582912.0f); /* |v| <= 127: adding 1.5 * 2^23 rounds to nearest, ties to even */
    y->qs[i] = (int8_t)q;
    if (i < 16) s0 += q; else s1 += q;
  }
  y->d = EG_ROUND_F16(d); y->s = EG_ROUND_F16(d * (float)(s0 + s1));
  y->bs[0] = (int16_t)s0; y->bs[1] = (int16_t)s1;
}

/* ---- portable block dots: the reference structure every ISA variant reproduces --------------------------------- */

EG_INLINE float eg_dot_q8_0_portable(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q8_0* w = (const eg_block_q8_0*)vw; float acc = 0.0f;
  for (int b = 0; b < nb; b++) {
    int s = 0; for (int i = 0; i < 32; i++) s += w[b].qs[i] * x[b].qs[i];
    acc += EG_F16(w[b].d) * x[b].d * (float)s;
  }
  return acc;
}

/* Q4_0/Q4_1: byte j holds weight j (low nibble) and weight j + 16 (high nibble). */
EG_INLINE int eg_isum_nibbles(const uint8_t* qs, const int8_t* q) {
  int s = 0; for (int j = 0; j < 16; j++) s += (qs[j] & 0xf) * q[j] + (qs[j] >> 4) * q[j + 16];
  return s;
}

EG_INLINE float eg_dot_q4_0_portable(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q4_0* w = (const eg_block_q4_0*)vw; float acc = 0.0f;
  for (int b = 0; b < nb; b++) {
    int s = eg_isum_nibbles(w[b].qs, x[b].qs) - 8 * (x[b].bs[0] + x[b].bs[1]);
    acc += EG_F16(w[b].d) * x[b].d * (float)s;
  }
  return acc;
}

EG_INLINE float eg_dot_q4_1_portable(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q4_1* w = (const eg_block_q4_1*)vw; float acc = 0.0f;
  for (int b = 0; b < nb; b++) {
    int s = eg_isum_nibbles(w[b].qs, x[b].qs);
    acc += EG_F16(w[b].d) * x[b].d * (float)s + EG_F16(w[b].m) * x[b].s;
  }
  return acc;
}

/* Q5_0/Q5_1: the fifth bit of weight j is bit j of qh (little-endian uint32). */
EG_INLINE int eg_isum_q5(const uint8_t* qh, const uint8_t* qs, const int8_t* q) {
  uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
  int s = 0;
  for (int j = 0; j < 16; j++) {
    s += ((qs[j] & 0xf) | (((h >> j) & 1u) << 4)) * q[j] + ((qs[j] >> 4) | (((h >> (j + 16)) & 1u) << 4)) * q[j + 16];
  }
  return s;
}

EG_INLINE float eg_dot_q5_0_portable(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q5_0* w = (const eg_block_q5_0*)vw; float acc = 0.0f;
  for (int b = 0; b < nb; b++) {
    int s = eg_isum_q5(w[b].qh, w[b].qs, x[b].qs) - 16 * (x[b].bs[0] + x[b].bs[1]);
    acc += EG_F16(w[b].d) * x[b].d * (float)s;
  }
  return acc;
}

EG_INLINE float eg_dot_q5_1_portable(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q5_1* w = (const eg_block_q5_1*)vw; float acc = 0.0f;
  for (int b = 0; b < nb; b++) {
    int s = eg_isum_q5(w[b].qh, w[b].qs, x[b].qs);
    acc += EG_F16(w[b].d) * x[b].d * (float)s + EG_F16(w[b].m) * x[b].s;
  }
  return acc;
}

/* K-quants: `nb` counts super-blocks of 256 (8 activation blocks each). */

/* Q4_K/Q5_K's 6-bit scale and minimum of sub-block j (ggml's get_scale_min_k4). */
EG_INLINE void eg_scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) { *sc = q[j] & 63; *m = q[j + 4] & 63; }
  else { *sc = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4); *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
}

EG_INLINE float eg_dot_q4_K_portable(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q4_K* w = (const eg_block_q4_K*)vw; float acc = 0.0f;
  for (int b = 0; b < nb; b++) {
    const eg_q8x* xb = x + 8 * b; float d = EG_F16(w[b].d), dmin = EG_F16(w[b].dmin);
    for (int c = 0; c < 4; c++) {  /* 64 weights: sub-block 2c in the low nibbles, 2c+1 in the high nibbles */
      const uint8_t* qs = w[b].qs + 32 * c;
      int lo = 0, hi = 0, sc0, m0, sc1, m1;
      for (int l = 0; l < 32; l++) { lo += (qs[l] & 0xf) * xb[2 * c].qs[l]; hi += (qs[l] >> 4) * xb[2 * c + 1].qs[l]; }
      eg_scale_min_k4(2 * c, w[b].scales, &sc0, &m0); eg_scale_min_k4(2 * c + 1, w[b].scales, &sc1, &m1);
      acc += d * xb[2 * c].d * (float)(sc0 * lo) + d * xb[2 * c + 1].d * (float)(sc1 * hi);
      acc -= dmin * xb[2 * c].d * (float)(m0 * (xb[2 * c].bs[0] + xb[2 * c].bs[1]))
           + dmin * xb[2 * c + 1].d * (float)(m1 * (xb[2 * c + 1].bs[0] + xb[2 * c + 1].bs[1]));
    }
  }
  return acc;
}

EG_INLINE float eg_dot_q5_K_portable(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q5_K* w = (const eg_block_q5_K*)vw; float acc = 0.0f;
  for (int b = 0; b < nb; b++) {
    const eg_q8x* xb = x + 8 * b; float d = EG_F16(w[b].d), dmin = EG_F16(w[b].dmin);
    for (int c = 0; c < 4; c++) {  /* as Q4_K, with the fifth bits of sub-blocks 2c / 2c+1 in bits 2c / 2c+1 of qh */
      const uint8_t* qs = w[b].qs + 32 * c;
      int lo = 0, hi = 0, sc0, m0, sc1, m1;
      for (int l = 0; l < 32; l++) {
        lo += ((qs[l] & 0xf) | (((w[b].qh[l] >> (2 * c)) & 1) << 4)) * xb[2 * c].qs[l];
        hi += ((qs[l] >> 4) | (((w[b].qh[l] >> (2 * c + 1)) & 1) << 4)) * xb[2 * c + 1].qs[l];
      }
      eg_scale_min_k4(2 * c, w[b].scales, &sc0, &m0); eg_scale_min_k4(2 * c + 1, w[b].scales, &sc1, &m1);
      acc += d * xb[2 * c].d * (float)(sc0 * lo) + d * xb[2 * c + 1].d * (float)(sc1 * hi);
      acc -= dmin * xb[2 * c].d * (float)(m0 * (xb[2 * c].bs[0] + xb[2 * c].bs[1]))
           + dmin * xb[2 * c + 1].d * (float)(m1 * (xb[2 * c + 1].bs[0] + xb[2 * c + 1].bs[1]));
    }
  }
  return acc;
}

/* Q6_K: two halves of 128; in half h, activation block 4h+k holds 32 weights whose 16-halves have scales
 * sc[8h+2k] and sc[8h+2k+1]; quants are 6 bits (4 from ql, 2 from qh) minus 32 (ggml's dequantize_row_q6_K). */
EG_INLINE int eg_q6(const uint8_t* ql, const uint8_t* qh, int k, int l) {
  int lo = k & 1 ? ql[l + 32] : ql[l];
  return ((k < 2 ? lo & 0xf : lo >> 4) | (((qh[l] >> (2 * k)) & 3) << 4));
}

EG_INLINE float eg_dot_q6_K_portable(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q6_K* w = (const eg_block_q6_K*)vw; float acc = 0.0f;
  for (int b = 0; b < nb; b++) {
    float d = EG_F16(w[b].d);
    for (int h = 0; h < 2; h++) {
      const uint8_t* ql = w[b].ql + 64 * h; const uint8_t* qh = w[b].qh + 32 * h; const int8_t* sc = w[b].scales + 8 * h;
      for (int k = 0; k < 4; k++) {
        const eg_q8x* xk = x + 8 * b + 4 * h + k;
        int s0 = 0, s1 = 0;
        for (int l = 0; l < 16; l++) s0 += eg_q6(ql, qh, k, l) * xk->qs[l];
        for (int l = 16; l < 32; l++) s1 += eg_q6(ql, qh, k, l) * xk->qs[l];
        int s = sc[2 * k] * (s0 - 32 * xk->bs[0]) + sc[2 * k + 1] * (s1 - 32 * xk->bs[1]);
        acc += d * xk->d * (float)s;
      }
    }
  }
  return acc;
}

/* Q3_K: 16 sub-blocks of 16 with 6-bit signed scales (minus 32); quants are 2 bits from qs plus a high bit from
 * hmask, minus 4 where the high bit is clear (ggml's dequantize_row_q3_K). */
EG_INLINE void eg_q3_scales(const uint8_t* s, int* out) {
  uint32_t a0 = (uint32_t)s[0] | (uint32_t)s[1] << 8 | (uint32_t)s[2] << 16 | (uint32_t)s[3] << 24;
  uint32_t a1 = (uint32_t)s[4] | (uint32_t)s[5] << 8 | (uint32_t)s[6] << 16 | (uint32_t)s[7] << 24;
  uint32_t tmp = (uint32_t)s[8] | (uint32_t)s[9] << 8 | (uint32_t)s[10] << 16 | (uint32_t)s[11] << 24;
  const uint32_t k1 = 0x03030303u, k2 = 0x0f0f0f0fu;
  uint32_t aux[4];
  aux[2] = ((a0 >> 4) & k2) | (((tmp >> 4) & k1) << 4);
  aux[3] = ((a1 >> 4) & k2) | (((tmp >> 6) & k1) << 4);
  aux[0] = (a0 & k2) | (((tmp >> 0) & k1) << 4);
  aux[1] = (a1 & k2) | (((tmp >> 2) & k1) << 4);
  for (int i = 0; i < 16; i++) out[i] = (int)((aux[i / 4] >> (8 * (i % 4))) & 0xff) - 32;
}

EG_INLINE float eg_dot_q3_K_portable(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q3_K* w = (const eg_block_q3_K*)vw; float acc = 0.0f;
  for (int b = 0; b < nb; b++) {
    float d = EG_F16(w[b].d); int sc[16]; eg_q3_scales(w[b].scales, sc);
    int is = 0; uint8_t m = 1;
    for (int n = 0; n < 2; n++) {  /* halves of 128: qs + 32n, shifts 0, 2, 4, 6 -> activation blocks 4n + j */
      const uint8_t* q = w[b].qs + 32 * n;
      for (int j = 0; j < 4; j++, m <<= 1) {
        const eg_q8x* xk = x + 8 * b + 4 * n + j;
        int s[2] = {0, 0};
        for (int l = 0; l < 32; l++) {
          int v = ((q[l] >> (2 * j)) & 3) - ((w[b].hmask[l] & m) ? 0 : 4);
          s[l >> 4] += v * xk->qs[l];
        }
        acc += d * xk->d * (float)(sc[is] * s[0] + sc[is + 1] * s[1]);
        is += 2;
      }
    }
  }
  return acc;
}

/* Q2_K: 16 sub-blocks of 16, each with a 4-bit scale and a 4-bit minimum (ggml's dequantize_row_q2_K). */
EG_INLINE float eg_dot_q2_K_portable(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q2_K* w = (const eg_block_q2_K*)vw; float acc = 0.0f;
  for (int b = 0; b < nb; b++) {
    float d = EG_F16(w[b].d), dmin = EG_F16(w[b].dmin); int is = 0;
    for (int n = 0; n < 2; n++) {
      const uint8_t* q = w[b].qs + 32 * n;
      for (int j = 0; j < 4; j++) {
        const eg_q8x* xk = x + 8 * b + 4 * n + j;
        int s0 = 0, s1 = 0;
        for (int l = 0; l < 16; l++) s0 += ((q[l] >> (2 * j)) & 3) * xk->qs[l];
        for (int l = 16; l < 32; l++) s1 += ((q[l] >> (2 * j)) & 3) * xk->qs[l];
        uint8_t a = w[b].scales[is], c = w[b].scales[is + 1];
        acc += d * xk->d * (float)((a & 0xf) * s0 + (c & 0xf) * s1);
        acc -= dmin * xk->d * (float)((a >> 4) * xk->bs[0] + (c >> 4) * xk->bs[1]);
        is += 2;
      }
    }
  }
  return acc;
}
