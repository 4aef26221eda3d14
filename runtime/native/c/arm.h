/* aarch64 block dots: NEON, with the dot-product extension (sdot) where the target has it (Cortex-A76 in the
 * Raspberry Pi 5, A78AE in Jetson Orin), else vmull_s8 + vpadalq_s16. Same integer sums as common.h's portable
 * dots: quants are at most 8 bits signed (or 0..63 as unsigned), so each int8 x int8 product fits int16 (the largest
 * is Q8_0's 128 * 127) and vpadalq widens pairs of them into int32 before anything can overflow. Per-block integer
 * sums go to float with one multiply by the scale product; only the order of the float additions differs from the
 * portable dots (float32x4 accumulators, summed at the end). tests/native checks this file under qemu-aarch64. */
#if defined(__aarch64__) && defined(__ARM_NEON) && !defined(EG_PORTABLE)
#include <arm_neon.h>
#if defined(__ARM_FEATURE_DOTPROD)
#define EG_ISA_NAME "neon-dotprod"
#else
#define EG_ISA_NAME "neon"
#endif

/* acc + the dot of 16 signed bytes, spread over the four int32 lanes (which lane holds what differs between the
 * two paths; only lane totals are used). */
EG_INLINE int32x4_t eg_dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
  return vdotq_s32(acc, a, b);
#else
  acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
  return vpadalq_s16(acc, vmull_high_s8(a, b));
#endif
}

/* The dot of 32 bytes (a0, a1) with an activation block's 32 quants. */
EG_INLINE int32x4_t eg_dot32(int8x16_t a0, int8x16_t a1, const int8_t* q) {
  return eg_dot16(eg_dot16(vdupq_n_s32(0), a0, vld1q_s8(q)), a1, vld1q_s8(q + 16));
}

/* {sum(a), sum(b), sum(c), sum(d)}: four accumulators reduced at once. */
EG_INLINE int32x4_t eg_sum4(int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
  return vpaddq_s32(vpaddq_s32(a, b), vpaddq_s32(c, d));
}

/* The scales of four consecutive activation blocks, {x[0].d, ..., x[3].d}, times f. */
EG_INLINE float32x4_t eg_xd4(const eg_q8x* x, float f) {
  float32x4_t v = vdupq_n_f32(x[0].d);
  v = vsetq_lane_f32(x[1].d, v, 1); v = vsetq_lane_f32(x[2].d, v, 2); v = vsetq_lane_f32(x[3].d, v, 3);
  return vmulq_n_f32(v, f);
}

EG_INLINE int32x4_t eg_i32x4(int a, int b, int c, int d) {
  int32x4_t v = vdupq_n_s32(a);
  v = vsetq_lane_s32(b, v, 1); v = vsetq_lane_s32(c, v, 2); return vsetq_lane_s32(d, v, 3);
}

/* 16 bytes of nibbles -> weights 0..15 (low nibbles) and 16..31 (high nibbles), as the 32-blocks order them. */
EG_INLINE void eg_nibbles(const uint8_t* qs, uint8x16_t* lo, uint8x16_t* hi) {
  uint8x16_t b = vld1q_u8(qs);
  *lo = vandq_u8(b, vdupq_n_u8(0x0f)); *hi = vshrq_n_u8(b, 4);
}

/* Q5_0/Q5_1's fifth bits: bit j of qh (little endian) -> 0x10 in byte j, for weights 0..15 and 16..31. */
EG_INLINE void eg_fifth_bits(const uint8_t* qh, uint8x16_t* lo, uint8x16_t* hi) {
  const uint8x16_t bit = vreinterpretq_u8_u64(vdupq_n_u64(0x8040201008040201ULL)), v10 = vdupq_n_u8(0x10);
  *lo = vandq_u8(vtstq_u8(vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1])), bit), v10);
  *hi = vandq_u8(vtstq_u8(vcombine_u8(vdup_n_u8(qh[2]), vdup_n_u8(qh[3])), bit), v10);
}

#define EG_S8(v) vreinterpretq_s8_u8(v)

#define EG_HAVE_Q8_0
EG_INLINE float eg_dot_q8_0(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q8_0* w = (const eg_block_q8_0*)vw; float32x4_t acc = vdupq_n_f32(0.0f);
  for (int b = 0; b < nb; b++) {
    int32x4_t p = eg_dot32(vld1q_s8(w[b].qs), vld1q_s8(w[b].qs + 16), x[b].qs);
    acc = vaddq_f32(acc, vmulq_n_f32(vcvtq_f32_s32(p), EG_F16(w[b].d) * x[b].d));
  }
  return vaddvq_f32(acc);
}

/* Q4_0 / Q5_0: the offset (8 or 16) is subtracted from the quants, so each block is one signed dot. */
#define EG_HAVE_Q4_0
EG_INLINE float eg_dot_q4_0(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q4_0* w = (const eg_block_q4_0*)vw; float32x4_t acc = vdupq_n_f32(0.0f);
  const int8x16_t off = vdupq_n_s8(8);
  for (int b = 0; b < nb; b++) {
    uint8x16_t lo, hi; eg_nibbles(w[b].qs, &lo, &hi);
    int32x4_t p = eg_dot32(vsubq_s8(EG_S8(lo), off), vsubq_s8(EG_S8(hi), off), x[b].qs);
    acc = vaddq_f32(acc, vmulq_n_f32(vcvtq_f32_s32(p), EG_F16(w[b].d) * x[b].d));
  }
  return vaddvq_f32(acc);
}

#define EG_HAVE_Q4_1
EG_INLINE float eg_dot_q4_1(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q4_1* w = (const eg_block_q4_1*)vw; float32x4_t acc = vdupq_n_f32(0.0f); float mins = 0.0f;
  for (int b = 0; b < nb; b++) {
    uint8x16_t lo, hi; eg_nibbles(w[b].qs, &lo, &hi);
    int32x4_t p = eg_dot32(EG_S8(lo), EG_S8(hi), x[b].qs);
    acc = vaddq_f32(acc, vmulq_n_f32(vcvtq_f32_s32(p), EG_F16(w[b].d) * x[b].d));
    mins += EG_F16(w[b].m) * x[b].s;
  }
  return vaddvq_f32(acc) + mins;
}

#define EG_HAVE_Q5_0
EG_INLINE float eg_dot_q5_0(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q5_0* w = (const eg_block_q5_0*)vw; float32x4_t acc = vdupq_n_f32(0.0f);
  const int8x16_t off = vdupq_n_s8(16);
  for (int b = 0; b < nb; b++) {
    uint8x16_t lo, hi, h0, h1; eg_nibbles(w[b].qs, &lo, &hi); eg_fifth_bits(w[b].qh, &h0, &h1);
    int32x4_t p = eg_dot32(vsubq_s8(EG_S8(vorrq_u8(lo, h0)), off), vsubq_s8(EG_S8(vorrq_u8(hi, h1)), off), x[b].qs);
    acc = vaddq_f32(acc, vmulq_n_f32(vcvtq_f32_s32(p), EG_F16(w[b].d) * x[b].d));
  }
  return vaddvq_f32(acc);
}

#define EG_HAVE_Q5_1
EG_INLINE float eg_dot_q5_1(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q5_1* w = (const eg_block_q5_1*)vw; float32x4_t acc = vdupq_n_f32(0.0f); float mins = 0.0f;
  for (int b = 0; b < nb; b++) {
    uint8x16_t lo, hi, h0, h1; eg_nibbles(w[b].qs, &lo, &hi); eg_fifth_bits(w[b].qh, &h0, &h1);
    int32x4_t p = eg_dot32(EG_S8(vorrq_u8(lo, h0)), EG_S8(vorrq_u8(hi, h1)), x[b].qs);
    acc = vaddq_f32(acc, vmulq_n_f32(vcvtq_f32_s32(p), EG_F16(w[b].d) * x[b].d));
    mins += EG_F16(w[b].m) * x[b].s;
  }
  return vaddvq_f32(acc) + mins;
}

/* Q4_K / Q5_K: chunk c of 32 bytes holds sub-block 2c (low nibbles) and 2c+1 (high nibbles), one activation block
 * each; the eight sub-block sums are reduced four at a time and scaled as int32 vectors. qh: Q5_K's fifth bits (bit
 * 2c / 2c+1 of byte l), or 0 for Q4_K. */
EG_INLINE void eg_dot_q45_K(const uint8_t* scales, const uint8_t* qs, const uint8_t* qh, float d, float dmin,
                            const eg_q8x* xb, float32x4_t* acc) {
  int sc[8], m[8];
  for (int j = 0; j < 8; j++) eg_scale_min_k4(j, scales, &sc[j], &m[j]);
  const uint8x16_t m4 = vdupq_n_u8(0x0f), one = vdupq_n_u8(1), two = vdupq_n_u8(2);
  uint8x16_t h0 = qh ? vld1q_u8(qh) : vdupq_n_u8(0), h1 = qh ? vld1q_u8(qh + 16) : vdupq_n_u8(0);
  int32x4_t s[8];
  for (int c = 0; c < 4; c++) {
    uint8x16_t b0 = vld1q_u8(qs + 32 * c), b1 = vld1q_u8(qs + 32 * c + 16);
    uint8x16_t l0 = vandq_u8(b0, m4), l1 = vandq_u8(b1, m4), u0 = vshrq_n_u8(b0, 4), u1 = vshrq_n_u8(b1, 4);
    if (qh) {  /* this chunk's bits are bits 0 and 1 of h after the shift below */
      l0 = vorrq_u8(l0, vshlq_n_u8(vandq_u8(h0, one), 4)); l1 = vorrq_u8(l1, vshlq_n_u8(vandq_u8(h1, one), 4));
      u0 = vorrq_u8(u0, vshlq_n_u8(vandq_u8(h0, two), 3)); u1 = vorrq_u8(u1, vshlq_n_u8(vandq_u8(h1, two), 3));
      h0 = vshrq_n_u8(h0, 2); h1 = vshrq_n_u8(h1, 2);
    }
    s[2 * c] = eg_dot32(EG_S8(l0), EG_S8(l1), xb[2 * c].qs);
    s[2 * c + 1] = eg_dot32(EG_S8(u0), EG_S8(u1), xb[2 * c + 1].qs);
  }
  for (int g = 0; g < 2; g++) {
    const eg_q8x* x4 = xb + 4 * g; const int* sc4 = sc + 4 * g; const int* m4g = m + 4 * g;
    int32x4_t isum = vmulq_s32(eg_sum4(s[4 * g], s[4 * g + 1], s[4 * g + 2], s[4 * g + 3]),
                               eg_i32x4(sc4[0], sc4[1], sc4[2], sc4[3]));
    int32x4_t imin = eg_i32x4(m4g[0] * (x4[0].bs[0] + x4[0].bs[1]), m4g[1] * (x4[1].bs[0] + x4[1].bs[1]),
                              m4g[2] * (x4[2].bs[0] + x4[2].bs[1]), m4g[3] * (x4[3].bs[0] + x4[3].bs[1]));
    *acc = vaddq_f32(*acc, vmulq_f32(vcvtq_f32_s32(isum), eg_xd4(x4, d)));
    *acc = vsubq_f32(*acc, vmulq_f32(vcvtq_f32_s32(imin), eg_xd4(x4, dmin)));
  }
}

#define EG_HAVE_Q4_K
EG_INLINE float eg_dot_q4_K(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q4_K* w = (const eg_block_q4_K*)vw; float32x4_t acc = vdupq_n_f32(0.0f);
  for (int b = 0; b < nb; b++) eg_dot_q45_K(w[b].scales, w[b].qs, 0, EG_F16(w[b].d), EG_F16(w[b].dmin), x + 8 * b, &acc);
  return vaddvq_f32(acc);
}

#define EG_HAVE_Q5_K
EG_INLINE float eg_dot_q5_K(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q5_K* w = (const eg_block_q5_K*)vw; float32x4_t acc = vdupq_n_f32(0.0f);
  for (int b = 0; b < nb; b++)
    eg_dot_q45_K(w[b].scales, w[b].qs, w[b].qh, EG_F16(w[b].d), EG_F16(w[b].dmin), x + 8 * b, &acc);
  return vaddvq_f32(acc);
}

/* Four activation blocks whose 16-weight halves have scales sc[0..7] (block k: sc[2k], sc[2k+1]): t[2k], t[2k+1] are
 * the halves' dots; returns {block sums} as int32 (sc[2k] * t[2k] + sc[2k+1] * t[2k+1]). */
EG_INLINE int32x4_t eg_scaled16(const int32x4_t* t, int32x4_t sc_lo, int32x4_t sc_hi) {
  return vpaddq_s32(vmulq_s32(eg_sum4(t[0], t[1], t[2], t[3]), sc_lo), vmulq_s32(eg_sum4(t[4], t[5], t[6], t[7]), sc_hi));
}

/* Q6_K: in half h, activation block 4h+k takes quants from ql (+32 for odd k; high nibbles for k >= 2) and bits
 * 2k..2k+1 of qh, minus 32, so each 16-half is one signed dot. */
#define EG_HAVE_Q6_K
EG_INLINE float eg_dot_q6_K(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q6_K* w = (const eg_block_q6_K*)vw; float32x4_t acc = vdupq_n_f32(0.0f);
  const uint8x16_t m4 = vdupq_n_u8(0x0f), m3 = vdupq_n_u8(3); const int8x16_t off = vdupq_n_s8(32);
  for (int b = 0; b < nb; b++) {
    float d = EG_F16(w[b].d);
    for (int h = 0; h < 2; h++) {
      const uint8_t* ql = w[b].ql + 64 * h; const uint8_t* qh = w[b].qh + 32 * h; const eg_q8x* x4 = x + 8 * b + 4 * h;
      int32x4_t t[8];
      for (int half = 0; half < 2; half++) {  /* weights 16 * half .. 16 * half + 15 of each block */
        uint8x16_t a = vld1q_u8(ql + 16 * half), c = vld1q_u8(ql + 32 + 16 * half), hb = vld1q_u8(qh + 16 * half);
        uint8x16_t q[4];
        q[0] = vorrq_u8(vandq_u8(a, m4), vshlq_n_u8(vandq_u8(hb, m3), 4));
        q[1] = vorrq_u8(vandq_u8(c, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 2), m3), 4));
        q[2] = vorrq_u8(vshrq_n_u8(a, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 4), m3), 4));
        q[3] = vorrq_u8(vshrq_n_u8(c, 4), vshlq_n_u8(vshrq_n_u8(hb, 6), 4));
        for (int k = 0; k < 4; k++)
          t[2 * k + half] = eg_dot16(vdupq_n_s32(0), vsubq_s8(EG_S8(q[k]), off), vld1q_s8(x4[k].qs + 16 * half));
      }
      int16x8_t sc = vmovl_s8(vld1_s8(w[b].scales + 8 * h));
      int32x4_t isum = eg_scaled16(t, vmovl_s16(vget_low_s16(sc)), vmovl_high_s16(sc));
      acc = vaddq_f32(acc, vmulq_f32(vcvtq_f32_s32(isum), eg_xd4(x4, d)));
    }
  }
  return vaddvq_f32(acc);
}

/* Q3_K: in half n, activation block 4n+j takes bits 2j..2j+1 of qs + 32n, minus 4 where bit 4n+j of hmask is clear;
 * 16 sub-blocks of 16 with the 6-bit signed scales of eg_q3_scales. */
#define EG_HAVE_Q3_K
EG_INLINE float eg_dot_q3_K(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q3_K* w = (const eg_block_q3_K*)vw; float32x4_t acc = vdupq_n_f32(0.0f);
  const uint8x16_t m3 = vdupq_n_u8(3), four = vdupq_n_u8(4);
  for (int b = 0; b < nb; b++) {
    float d = EG_F16(w[b].d); int sc[16]; eg_q3_scales(w[b].scales, sc);
    uint8x16_t hm0 = vld1q_u8(w[b].hmask), hm1 = vld1q_u8(w[b].hmask + 16);
    for (int n = 0; n < 2; n++) {
      const eg_q8x* x4 = x + 8 * b + 4 * n;
      uint8x16_t q0 = vld1q_u8(w[b].qs + 32 * n), q1 = vld1q_u8(w[b].qs + 32 * n + 16);
      int32x4_t t[8];
      for (int j = 0; j < 4; j++) {
        uint8x16_t m = vdupq_n_u8((uint8_t)(1u << (4 * n + j)));
        int8x16_t v0 = vsubq_s8(EG_S8(vandq_u8(q0, m3)), EG_S8(vbicq_u8(four, vtstq_u8(hm0, m))));
        int8x16_t v1 = vsubq_s8(EG_S8(vandq_u8(q1, m3)), EG_S8(vbicq_u8(four, vtstq_u8(hm1, m))));
        t[2 * j] = eg_dot16(vdupq_n_s32(0), v0, vld1q_s8(x4[j].qs));
        t[2 * j + 1] = eg_dot16(vdupq_n_s32(0), v1, vld1q_s8(x4[j].qs + 16));
        q0 = vshrq_n_u8(q0, 2); q1 = vshrq_n_u8(q1, 2);
      }
      int32x4_t isum = eg_scaled16(t, vld1q_s32(sc + 8 * n), vld1q_s32(sc + 8 * n + 4));
      acc = vaddq_f32(acc, vmulq_f32(vcvtq_f32_s32(isum), eg_xd4(x4, d)));
    }
  }
  return vaddvq_f32(acc);
}

/* Q2_K: as Q3_K's layout with 2-bit quants and no high bit; scales byte: low nibble scale, high nibble minimum. The
 * minimums multiply the activation half sums bs, as int16 x int16 products widened to int32. */
#define EG_HAVE_Q2_K
EG_INLINE float eg_dot_q2_K(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q2_K* w = (const eg_block_q2_K*)vw; float32x4_t acc = vdupq_n_f32(0.0f);
  const uint8x16_t m3 = vdupq_n_u8(3);
  for (int b = 0; b < nb; b++) {
    float d = EG_F16(w[b].d), dmin = EG_F16(w[b].dmin);
    for (int n = 0; n < 2; n++) {
      const eg_q8x* x4 = x + 8 * b + 4 * n;
      uint8x16_t q0 = vld1q_u8(w[b].qs + 32 * n), q1 = vld1q_u8(w[b].qs + 32 * n + 16);
      int32x4_t t[8];
      for (int j = 0; j < 4; j++) {
        t[2 * j] = eg_dot16(vdupq_n_s32(0), EG_S8(vandq_u8(q0, m3)), vld1q_s8(x4[j].qs));
        t[2 * j + 1] = eg_dot16(vdupq_n_s32(0), EG_S8(vandq_u8(q1, m3)), vld1q_s8(x4[j].qs + 16));
        q0 = vshrq_n_u8(q0, 2); q1 = vshrq_n_u8(q1, 2);
      }
      uint8x8_t sb = vld1_u8(w[b].scales + 8 * n);
      int16x8_t scv = vreinterpretq_s16_u16(vmovl_u8(vand_u8(sb, vdup_n_u8(0x0f))));
      int16x8_t mnv = vreinterpretq_s16_u16(vmovl_u8(vshr_n_u8(sb, 4)));
      int32x4_t isum = eg_scaled16(t, vmovl_s16(vget_low_s16(scv)), vmovl_high_s16(scv));
      int16_t hs[8];  /* the activation half sums, in sub-block order */
      for (int j = 0; j < 4; j++) { hs[2 * j] = x4[j].bs[0]; hs[2 * j + 1] = x4[j].bs[1]; }
      int16x8_t bs = vld1q_s16(hs);
      int32x4_t imin = vpaddq_s32(vmull_s16(vget_low_s16(mnv), vget_low_s16(bs)), vmull_high_s16(mnv, bs));
      acc = vaddq_f32(acc, vmulq_f32(vcvtq_f32_s32(isum), eg_xd4(x4, d)));
      acc = vsubq_f32(acc, vmulq_f32(vcvtq_f32_s32(imin), eg_xd4(x4, dmin)));
    }
  }
  return vaddvq_f32(acc);
}
#endif
