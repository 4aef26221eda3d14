/* x86 block dots: AVX2 (maddubs + madd), or dpbusd where the CPU has AVX-VNNI / AVX-512 VNNI (picked at compile
 * time from -march=native, i.e. from the CPU the kernel is built on). Same integer sums as common.h's portable
 * dots: every product sum here stays below int16's range before madd, so maddubs never saturates (the largest is
 * Q8_0's 2 * 128 * 127 after the sign trick). Only the order of float additions differs. */
#if defined(__AVX2__) && defined(__FMA__) && !defined(EG_PORTABLE)
#include <immintrin.h>
#define EG_ISA_NAME "avx2"

/* The widest integer dot the CPU has: AVX-512 VNNI (on 256-bit registers, AVX-512VL) or AVX-VNNI's vpdpbusd, which
 * adds 4 unsigned x signed byte products into each int32 lane; EG_NO_VNNI builds the maddubs + madd path instead
 * (tests/native checks both against reference.py). */
#if (defined(__AVX512VNNI__) && defined(__AVX512VL__) || defined(__AVXVNNI__)) && !defined(EG_NO_VNNI)
#define EG_X86_VNNI 1
EG_INLINE __m256i eg_dpbusd(__m256i acc, __m256i a, __m256i b) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, a, b);
#else
  return _mm256_dpbusd_avx_epi32(acc, a, b);
#endif
}
#endif

/* sum over groups of 4 of unsigned a * signed b, in int32 lanes. */
EG_INLINE __m256i eg_mul_sum_us8(__m256i a, __m256i b) {
#if defined(EG_X86_VNNI)
  return eg_dpbusd(_mm256_setzero_si256(), a, b);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
#endif
}

EG_INLINE float eg_hsum8(__m256 x) {
  __m128 r = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
}

EG_INLINE __m256i eg_load32(const void* p) { return _mm256_loadu_si256((const __m256i*)p); }

/* 16 bytes of nibbles -> 32 bytes: weights 0..15 (low nibbles) then 16..31 (high nibbles), as the blocks order them */
EG_INLINE __m256i eg_nibbles32(const uint8_t* qs) {
  __m128i b = _mm_loadu_si128((const __m128i*)qs);
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0f));
}

/* bit j of qh (32 bits, little endian) -> byte j = 0x10 if set (Q5_0/Q5_1's fifth bit), as ggml's bytes_from_bits_32 */
EG_INLINE __m256i eg_fifth_bits(const uint8_t* qh) {
  uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
  const __m256i shuf = _mm256_setr_epi64x(0x0000000000000000LL, 0x0101010101010101LL, 0x0202020202020202LL,
                                          0x0303030303030303LL);
  __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h), shuf);
  v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfeLL));
  return _mm256_and_si256(_mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(0x10));
}

/* The 32-weight types, for R = 1 (decode) or 4 (prefill) activation rows xs blocks apart: each weight block is decoded
 * once for the R rows, and each row keeps two accumulators (even and odd blocks, so consecutive blocks'
 * multiply-adds do not wait on each other: docs/MEASUREMENTS.md) and a scalar for the minimum/offset terms.
 * The arithmetic of one row is the same whatever R: a prefill and a decode of one position give the same bits, so a
 * request's tokens do not depend on how its positions were batched (tests/native: batched rows equal rows alone). */
#define EG_ROWS(TYPE, PREP, MUL, MINS)                                                                         \
  EG_INLINE void eg_rows_##TYPE(const void* vw, const eg_q8x* x, int xs, int nb, float* y, int ystride,       \
                                const int R) {                                                                 \
    const eg_block_##TYPE* w = (const eg_block_##TYPE*)vw;                                                     \
    __m256 a0[4], a1[4]; float m[4];                                                                           \
    for (int r = 0; r < R; r++) { a0[r] = _mm256_setzero_ps(); a1[r] = _mm256_setzero_ps(); m[r] = 0.0f; }     \
    for (int b = 0; b < nb; b++) {                                                                             \
      PREP(b);                                                                                                 \
      for (int r = 0; r < R; r++) {                                                                            \
        const eg_q8x* xr = x + (long)r * xs + b;                                                               \
        __m256 sc = _mm256_set1_ps(d * xr->d), v = _mm256_cvtepi32_ps(MUL(q, xr));                             \
        if (b & 1) a1[r] = _mm256_fmadd_ps(sc, v, a1[r]); else a0[r] = _mm256_fmadd_ps(sc, v, a0[r]);          \
        MINS(xr, m[r]);                                                                                        \
      }                                                                                                        \
    }                                                                                                          \
    for (int r = 0; r < R; r++) y[(long)r * ystride] = eg_hsum8(_mm256_add_ps(a0[r], a1[r])) + m[r];          \
  }                                                                                                            \
  EG_INLINE float eg_dot_##TYPE(const void* vw, const eg_q8x* x, int nb) {                                     \
    float y; eg_rows_##TYPE(vw, x, 0, nb, &y, 0, 1); return y;                                                 \
  }                                                                                                            \
  EG_INLINE void eg_dot4_##TYPE(const void* vw, const eg_q8x* x, int xs, int nb, float* y, int ystride) {      \
    eg_rows_##TYPE(vw, x, xs, nb, y, ystride, 4);                                                              \
  }

#define EG_PREP_NIB(b) __m256i q = eg_nibbles32(w[b].qs); float d = EG_F16(w[b].d)
#define EG_PREP_Q5(b) __m256i q = _mm256_or_si256(eg_nibbles32(w[b].qs), eg_fifth_bits(w[b].qh)); float d = EG_F16(w[b].d)
/* Q8_0: the sign trick moves the weight's sign onto each activation: |w| once, sign(x, w) per row */
#define EG_PREP_Q8(b) __m256i wq = eg_load32(w[b].qs), q = _mm256_sign_epi8(wq, wq); float d = EG_F16(w[b].d)
#define EG_MUL(q, xr) eg_mul_sum_us8(q, eg_load32((xr)->qs))
#define EG_MUL_Q8(q, xr) eg_mul_sum_us8(q, _mm256_sign_epi8(eg_load32((xr)->qs), wq))
#define EG_MINS_M(xr, acc) acc += EG_F16(w[b].m) * (xr)->s
#define EG_MINS_OFF8(xr, acc) acc -= d * (xr)->d * (float)(8 * ((xr)->bs[0] + (xr)->bs[1]))
#define EG_MINS_OFF16(xr, acc) acc -= d * (xr)->d * (float)(16 * ((xr)->bs[0] + (xr)->bs[1]))
#define EG_MINS_NONE(xr, acc) (void)0
#define EG_HAVE_Q8_0
#define EG_HAVE_DOT4_Q8_0
EG_ROWS(q8_0, EG_PREP_Q8, EG_MUL_Q8, EG_MINS_NONE)
#define EG_HAVE_Q4_0
#define EG_HAVE_DOT4_Q4_0
EG_ROWS(q4_0, EG_PREP_NIB, EG_MUL, EG_MINS_OFF8)
#define EG_HAVE_Q4_1
#define EG_HAVE_DOT4_Q4_1
EG_ROWS(q4_1, EG_PREP_NIB, EG_MUL, EG_MINS_M)
#define EG_HAVE_Q5_0
#define EG_HAVE_DOT4_Q5_0
EG_ROWS(q5_0, EG_PREP_Q5, EG_MUL, EG_MINS_OFF16)
#define EG_HAVE_Q5_1
#define EG_HAVE_DOT4_Q5_1
EG_ROWS(q5_1, EG_PREP_Q5, EG_MUL, EG_MINS_M)

/* Chunk c of a Q4_K/Q5_K block's quants: lo = sub-block 2c (low nibbles), hi = 2c+1 (high), with Q5_K's fifth bits
 * (qh non-null; hb its 32 bytes: bit 2c and 2c+1 of each byte). */
EG_INLINE void eg_unpack_q45_K(const uint8_t* qs, const uint8_t* qh, __m256i hb, int c, __m256i* lo, __m256i* hi) {
  const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
  __m256i bytes = eg_load32(qs + 32 * c);
  *lo = _mm256_and_si256(bytes, m4); *hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), m4);
  if (qh) {
    *lo = _mm256_or_si256(*lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * c), one), 4));
    *hi = _mm256_or_si256(*hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * c + 1), one), 4));
  }
}

/* Q4_K / Q5_K: 4 chunks of 64 weights, each one 32-byte load holding sub-blocks 2c (low nibbles) and 2c+1 (high) */
EG_INLINE float eg_dot_q45_K(const uint8_t* scales, const uint8_t* qs, const uint8_t* qh, float d, float dmin,
                             const eg_q8x* xb, __m256* acc) {
  __m256i hb = qh ? eg_load32(qh) : _mm256_setzero_si256();
  float mins = 0.0f;
  for (int c = 0; c < 4; c++) {
    __m256i lo, hi;
    eg_unpack_q45_K(qs, qh, hb, c, &lo, &hi);
    int sc0, m0, sc1, m1;
    eg_scale_min_k4(2 * c, scales, &sc0, &m0); eg_scale_min_k4(2 * c + 1, scales, &sc1, &m1);
    const eg_q8x* x0 = xb + 2 * c; const eg_q8x* x1 = x0 + 1;
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * x0->d * (float)sc0), _mm256_cvtepi32_ps(eg_mul_sum_us8(lo, eg_load32(x0->qs))), *acc);
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * x1->d * (float)sc1), _mm256_cvtepi32_ps(eg_mul_sum_us8(hi, eg_load32(x1->qs))), *acc);
    mins += dmin * x0->d * (float)(m0 * (x0->bs[0] + x0->bs[1])) + dmin * x1->d * (float)(m1 * (x1->bs[0] + x1->bs[1]));
  }
  return mins;
}

#define EG_HAVE_Q4_K
EG_INLINE float eg_dot_q4_K(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q4_K* w = (const eg_block_q4_K*)vw; __m256 acc = _mm256_setzero_ps(); float mins = 0.0f;
  for (int b = 0; b < nb; b++)
    mins += eg_dot_q45_K(w[b].scales, w[b].qs, 0, EG_F16(w[b].d), EG_F16(w[b].dmin), x + 8 * b, &acc);
  return eg_hsum8(acc) - mins;
}

#define EG_HAVE_Q5_K
EG_INLINE float eg_dot_q5_K(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q5_K* w = (const eg_block_q5_K*)vw; __m256 acc = _mm256_setzero_ps(); float mins = 0.0f;
  for (int b = 0; b < nb; b++)
    mins += eg_dot_q45_K(w[b].scales, w[b].qs, w[b].qh, EG_F16(w[b].d), EG_F16(w[b].dmin), x + 8 * b, &acc);
  return eg_hsum8(acc) - mins;
}

/* Prefill: one Q4_K/Q5_K super-block decoded once (nibbles, fifth bits, 6-bit scales) for 4 activation rows r, whose
 * blocks are xs apart; the same sums per row as eg_dot_q45_K. */
EG_INLINE void eg_dot4_q45_K(const uint8_t* scales, const uint8_t* qs, const uint8_t* qh, float d, float dmin,
                             const eg_q8x* xb, int xs, __m256* acc, float* mins) {
  __m256i hb = qh ? eg_load32(qh) : _mm256_setzero_si256();
  float bm[4] = {0.0f, 0.0f, 0.0f, 0.0f};  /* the block's minimum terms first, then the total: as eg_dot_q45_K */
  for (int c = 0; c < 4; c++) {
    __m256i lo, hi;
    eg_unpack_q45_K(qs, qh, hb, c, &lo, &hi);
    int sc0, m0, sc1, m1;
    eg_scale_min_k4(2 * c, scales, &sc0, &m0); eg_scale_min_k4(2 * c + 1, scales, &sc1, &m1);
    for (int r = 0; r < 4; r++) {
      const eg_q8x* x0 = xb + (long)r * xs + 2 * c; const eg_q8x* x1 = x0 + 1;
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * x0->d * (float)sc0), _mm256_cvtepi32_ps(eg_mul_sum_us8(lo, eg_load32(x0->qs))), acc[r]);
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * x1->d * (float)sc1), _mm256_cvtepi32_ps(eg_mul_sum_us8(hi, eg_load32(x1->qs))), acc[r]);
      bm[r] += dmin * x0->d * (float)(m0 * (x0->bs[0] + x0->bs[1])) + dmin * x1->d * (float)(m1 * (x1->bs[0] + x1->bs[1]));
    }
  }
  for (int r = 0; r < 4; r++) mins[r] += bm[r];
}

#define EG_DOT4_K(TYPE, QH)                                                                                    \
  EG_INLINE void eg_dot4_##TYPE(const void* vw, const eg_q8x* x, int xs, int nb, float* y, int ystride) {      \
    const eg_block_##TYPE* w = (const eg_block_##TYPE*)vw;                                                     \
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};      \
    float mins[4] = {0.0f, 0.0f, 0.0f, 0.0f};                                                                  \
    for (int b = 0; b < nb; b++)                                                                               \
      eg_dot4_q45_K(w[b].scales, w[b].qs, QH, EG_F16(w[b].d), EG_F16(w[b].dmin), x + 8 * b, xs, acc, mins);    \
    for (int r = 0; r < 4; r++) y[r * ystride] = eg_hsum8(acc[r]) - mins[r];                                   \
  }
#define EG_HAVE_DOT4_Q4_K
EG_DOT4_K(q4_K, 0)
#define EG_HAVE_DOT4_Q5_K
EG_DOT4_K(q5_K, w[b].qh)

/* Q6_K: per activation block, maddubs gives 16 pair sums (lanes 0-7: weights 0-15, 8-15: weights 16-31); madd by
 * the two 16-weight scales sums them into int32; the -32 offset comes from the block's half sums. */
/* Half h (128 weights) of a Q6_K block: q[k] the 6-bit quants (0..63) of its activation block k. */
EG_INLINE void eg_unpack_q6_K(const eg_block_q6_K* w, int h, __m256i* q) {
  const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(3);
  __m256i l0 = eg_load32(w->ql + 64 * h), l1 = eg_load32(w->ql + 64 * h + 32), qh = eg_load32(w->qh + 32 * h);
  q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
  q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
  q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4));
  q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4));
}

/* One activation block xk against its 32 Q6_K quants q (two 16-weight scales sc): maddubs gives 16 pair sums, madd
 * by the scales sums them into int32; the -32 offset comes from the block's half sums. */
EG_INLINE void eg_q6_K_term(__m256i q, const int8_t* sc, float d, const eg_q8x* xk, __m256* acc, float* off) {
  __m256i p16 = _mm256_maddubs_epi16(q, eg_load32(xk->qs));
  __m256i s16 = _mm256_set_m128i(_mm_set1_epi16(sc[1]), _mm_set1_epi16(sc[0]));
  float s = d * xk->d;
  *acc = _mm256_fmadd_ps(_mm256_set1_ps(s), _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, s16)), *acc);
  *off += s * (float)(32 * (sc[0] * xk->bs[0] + sc[1] * xk->bs[1]));
}

#define EG_HAVE_Q6_K
EG_INLINE float eg_dot_q6_K(const void* vw, const eg_q8x* x, int nb) {
  const eg_block_q6_K* w = (const eg_block_q6_K*)vw; __m256 acc = _mm256_setzero_ps(); float off = 0.0f;
  for (int b = 0; b < nb; b++) {
    float d = EG_F16(w[b].d);
    for (int h = 0; h < 2; h++) {
      const int8_t* sc = w[b].scales + 8 * h;
      __m256i q[4];
      eg_unpack_q6_K(w + b, h, q);
      for (int k = 0; k < 4; k++) eg_q6_K_term(q[k], sc + 2 * k, d, x + 8 * b + 4 * h + k, &acc, &off);
    }
  }
  return eg_hsum8(acc) - off;
}

/* Prefill: one Q6_K super-block decoded once for 4 activation rows; the same sums per row as eg_dot_q6_K. */
#define EG_HAVE_DOT4_Q6_K
EG_INLINE void eg_dot4_q6_K(const void* vw, const eg_q8x* x, int xs, int nb, float* y, int ystride) {
  const eg_block_q6_K* w = (const eg_block_q6_K*)vw;
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  float off[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int b = 0; b < nb; b++) {
    float d = EG_F16(w[b].d);
    for (int h = 0; h < 2; h++) {
      const int8_t* sc = w[b].scales + 8 * h;
      __m256i q[4];
      eg_unpack_q6_K(w + b, h, q);
      for (int k = 0; k < 4; k++)
        for (int r = 0; r < 4; r++) eg_q6_K_term(q[k], sc + 2 * k, d, x + (long)r * xs + 8 * b + 4 * h + k, acc + r, off + r);
    }
  }
  for (int r = 0; r < 4; r++) y[r * ystride] = eg_hsum8(acc[r]) - off[r];
}
#endif
