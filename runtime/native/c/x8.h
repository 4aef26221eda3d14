/* Interleaved 8-row layouts ("x8") of Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0, and their block dots: 8 weight rows against one
 * activation block at a time, as llama.cpp's repacked Q4_0 (ggml-cpu/repack.cpp, block_q4_0x8) does on AVX2.
 *
 * Why: the row layout decodes one row's block, dots it and reduces it across a vector's lanes, ~14 instructions per
 * (row, block) on AVX2, so a decode matvec whose weights sit in cache is bound by instructions, not bytes. With 8
 * rows side by side one broadcast activation chunk meets 4 rows per register, the scales of 8 rows are converted in
 * one vcvtph2ps and the 8 row sums land in one register: about 5 instructions per (row, block).
 *
 * A group of 8 rows (rows 8g .. 8g+7) stores, per block b of 32 weights, contiguously (runtime/native/layout.py
 * writes it; the sizes equal the row layout's, 8 blocks each):
 *   Q4_0x8: d[8] (f16, row order) then qs[128]                      144 B
 *   Q4_1x8: d[8], m[8] then qs[128]                                 160 B
 *   Q5_0x8: d[8], qh[8][4] (slot order, below) then qs[128]         176 B
 *   Q5_1x8: d[8], m[8], qh[8][4] then qs[128]                       192 B
 *   Q8_0x8: d[8] then qs[256]                                       272 B
 * qs holds 8-byte chunks: chunk c of row P[4h + j] at qs[(h * C + c) * 32 + 8 * j], half h = 0, 1, C = 2 chunks of a
 * 16-byte nibble block or 4 of a 32-byte Q8_0 block, P = {0, 1, 4, 5, 2, 3, 6, 7}: one 32-byte load then holds
 * chunk c of 4 rows, and _mm256_hadd_epi32 of the two halves' sums gives rows 0..7 in order. Q5's qh (bit j: the
 * fifth bit of weight j) is kept whole per row, row P[s] at qh[4 * s], so one 16-byte load holds a half's 4 rows.
 * The integer sums are the row layout's exactly; only the order of float additions differs. */

/* ---- portable: the reference structure (and the build on CPUs without AVX2) ----------------------------------- */

/* Integer sum of row r's nibble block (chunks laid out as above) against 32 activations; Q5 (qh given): the fifth bit
 * of weight j is bit j of the row's 4 qh bytes. */
EG_INLINE int eg_x8_isum_portable(const uint8_t* qh, const uint8_t* qs, int r, const int8_t* q) {
  int h = (r & 2) ? 1 : 0, j = (r & 1) | ((r & 4) >> 1), s = 0;
  uint32_t hb = 0;
  if (qh) {
    const uint8_t* bits = qh + 4 * (4 * h + j);
    hb = (uint32_t)bits[0] | (uint32_t)bits[1] << 8 | (uint32_t)bits[2] << 16 | (uint32_t)bits[3] << 24;
  }
  for (int c = 0; c < 2; c++) {
    const uint8_t* p = qs + (h * 2 + c) * 32 + 8 * j;
    for (int i = 0; i < 8; i++) {
      int lo = 8 * c + i, hi = 16 + 8 * c + i;
      s += ((p[i] & 0xf) | (((hb >> lo) & 1u) << 4)) * q[lo] + ((p[i] >> 4) | (((hb >> hi) & 1u) << 4)) * q[hi];
    }
  }
  return s;
}

/* The nibble types row by row, as common.h's portable row dots (BYTES, QH, QS, M, OFF as EG_X8_DOTS below). */
#define EG_X8_PORTABLE(TYPE, BYTES, QH, QS, M, OFF)                                                              \
  EG_INLINE void eg_dot8_##TYPE##_portable(const uint8_t* w, const eg_q8x* x, int nb, float* y) {               \
    for (int r = 0; r < 8; r++) {                                                                               \
      float acc = 0.0f;                                                                                         \
      for (int b = 0; b < nb; b++) {                                                                            \
        const uint8_t* blk = w + (long)b * (BYTES);                                                             \
        int s = eg_x8_isum_portable((QH) >= 0 ? blk + ((QH) >= 0 ? (QH) : 0) : 0, blk + (QS), r, x[b].qs)       \
                - (OFF) * (x[b].bs[0] + x[b].bs[1]);                                                            \
        float t = EG_F16(((const uint16_t*)blk)[r]) * x[b].d * (float)s;                                        \
        acc += (M) >= 0 ? t + EG_F16(((const uint16_t*)(blk + ((M) >= 0 ? (M) : 0)))[r]) * x[b].s : t;          \
      }                                                                                                         \
      y[r] = acc;                                                                                               \
    }                                                                                                           \
  }
EG_X8_PORTABLE(q4_0, 144, -1, 16, -1, 8)
EG_X8_PORTABLE(q4_1, 160, -1, 32, 16, 0)
EG_X8_PORTABLE(q5_0, 176, 16, 48, -1, 16)
EG_X8_PORTABLE(q5_1, 192, 32, 64, 16, 0)

EG_INLINE void eg_dot8_q8_0_portable(const uint8_t* w, const eg_q8x* x, int nb, float* y) {
  for (int r = 0; r < 8; r++) {
    int h = (r & 2) ? 1 : 0, j = (r & 1) | ((r & 4) >> 1);
    float acc = 0.0f;
    for (int b = 0; b < nb; b++) {
      const uint8_t* blk = w + (long)b * 272;
      int s = 0;
      for (int c = 0; c < 4; c++) {
        const int8_t* p = (const int8_t*)(blk + 16 + (h * 4 + c) * 32 + 8 * j);
        for (int i = 0; i < 8; i++) s += p[i] * x[b].qs[8 * c + i];
      }
      acc += EG_F16(((const uint16_t*)blk)[r]) * x[b].d * (float)s;
    }
    y[r] = acc;
  }
}

/* ---- AVX2 ----------------------------------------------------------------------------------------------------- */
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && !defined(EG_PORTABLE)

EG_INLINE __m256i eg_bcast8(const int8_t* p) { return _mm256_set1_epi64x(*(const long long*)p); }

/* A nibble block's quants for the 8 rows, unpacked: v[2 * (2h + c)] the low nibbles (weights 8c..8c+7) and
 * v[2 * (2h + c) + 1] the high ones (weights 16+8c..) of half h's 4 rows, the fifth bits or'ed in for Q5 (qh given).
 * Q5's qh: each half's 4 rows broadcast to both 128-bit lanes; byte k of row j spread over the 8 bytes of 64-bit lane
 * j (the shuffle stays in its 128-bit lane, which holds the same 16 bytes) and tested bit by bit, as ggml's
 * bytes_from_bits_32. */
EG_INLINE __m256i eg_x8_fifth(__m256i hb, int k) {
  const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
  __m256i idx = _mm256_setr_epi64x(0x0101010101010101LL * k, 0x0101010101010101LL * (4 + k),
                                   0x0101010101010101LL * (8 + k), 0x0101010101010101LL * (12 + k));
  __m256i v = _mm256_and_si256(_mm256_shuffle_epi8(hb, idx), bit);
  return _mm256_and_si256(_mm256_cmpeq_epi8(v, bit), _mm256_set1_epi8(0x10));
}

EG_INLINE void eg_x8_unpack(const uint8_t* qh, const uint8_t* qs, __m256i* v) {
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  for (int h = 0; h < 2; h++) {
    __m256i hb = qh ? _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(qh + 16 * h))) : m4;
    for (int c = 0; c < 2; c++) {
      __m256i w = eg_load32(qs + (h * 2 + c) * 32);
      __m256i lo = _mm256_and_si256(w, m4), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
      if (qh) { lo = _mm256_or_si256(lo, eg_x8_fifth(hb, c)); hi = _mm256_or_si256(hi, eg_x8_fifth(hb, 2 + c)); }
      v[2 * (h * 2 + c)] = lo; v[2 * (h * 2 + c) + 1] = hi;
    }
  }
}

/* Row sums (rows 0..7 in int32 lanes) of unpacked quants against activation block xq: per half, 4 maddubs whose int16
 * lanes hold at most 4 * 2 * 31 * 127 = 31496 (no saturation), one madd to int32. */
EG_INLINE __m256i eg_x8_isum(const __m256i* v, const int8_t* xq) {
  __m256i xl0 = eg_bcast8(xq), xl1 = eg_bcast8(xq + 8), xh0 = eg_bcast8(xq + 16), xh1 = eg_bcast8(xq + 24);
#if defined(EG_X86_VNNI)
  /* dpbusd sums the same 4 byte products per int32 lane that maddubs + madd do: the same integers, half the uops;
   * two chains per half so consecutive dpbusd do not wait on each other */
  const __m256i z = _mm256_setzero_si256();
  __m256i s0 = _mm256_add_epi32(eg_dpbusd(eg_dpbusd(z, v[0], xl0), v[1], xh0), eg_dpbusd(eg_dpbusd(z, v[2], xl1), v[3], xh1));
  __m256i s1 = _mm256_add_epi32(eg_dpbusd(eg_dpbusd(z, v[4], xl0), v[5], xh0), eg_dpbusd(eg_dpbusd(z, v[6], xl1), v[7], xh1));
  return _mm256_hadd_epi32(s0, s1);
#else
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i s0 = _mm256_add_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(v[0], xl0), _mm256_maddubs_epi16(v[1], xh0)),
                                _mm256_add_epi16(_mm256_maddubs_epi16(v[2], xl1), _mm256_maddubs_epi16(v[3], xh1)));
  __m256i s1 = _mm256_add_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(v[4], xl0), _mm256_maddubs_epi16(v[5], xh0)),
                                _mm256_add_epi16(_mm256_maddubs_epi16(v[6], xl1), _mm256_maddubs_epi16(v[7], xh1)));
  return _mm256_hadd_epi32(_mm256_madd_epi16(s0, ones), _mm256_madd_epi16(s1, ones));
#endif
}

EG_INLINE __m256 eg_x8_scales(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }

/* The nibble types, one activation row (decode: eg_dot8_<type>) or 4 rows xs blocks apart sharing each unpacked
 * block (prefill: eg_dot8x4_<type>, y[r * ystride]). BYTES: the 8-row block; QH, QS: where its fifth bits (or -1)
 * and quants start; M: where the minimums start (or -1); OFF: the quant offset (8, 16, or 0 with a minimum).
 * Two accumulators in decode (even and odd blocks) so consecutive blocks' multiply-adds do not wait on each other. */
#define EG_X8_DOTS(TYPE, BYTES, QH, QS, M, OFF)                                                                  \
  /* acc += the block's scaled sums; accm += its minimum term (a separate accumulator in decode) */            \
  EG_INLINE void eg_x8_term_##TYPE(const uint8_t* blk, const __m256i* v, const eg_q8x* xb, __m256* acc,         \
                                   __m256* accm) {                                                             \
    __m256i s = eg_x8_isum(v, xb->qs);                                                                          \
    if (OFF) s = _mm256_sub_epi32(s, _mm256_set1_epi32((OFF) * (xb->bs[0] + xb->bs[1])));                       \
    *acc = _mm256_fmadd_ps(_mm256_mul_ps(eg_x8_scales(blk), _mm256_set1_ps(xb->d)), _mm256_cvtepi32_ps(s), *acc); \
    if ((M) >= 0) *accm = _mm256_fmadd_ps(eg_x8_scales(blk + ((M) >= 0 ? (M) : 0)), _mm256_set1_ps(xb->s), *accm); \
  }                                                                                                             \
  /* R = 1 (decode) or 4 (prefill) activation rows xs blocks apart, each unpacked block shared by the R rows; per     \
   * row two accumulators (even and odd blocks) and one for the minimum terms, in the same order whatever R, so a   \
   * row's sums do not depend on its batch (a prefill and a decode of one position agree bit for bit). */          \
  EG_INLINE void eg_dot8r_##TYPE(const uint8_t* w, const eg_q8x* x, int xs, int nb, float* y, int ystride,      \
                                 const int R) {                                                                \
    __m256 a0[4], a1[4], am[4];                                                                                 \
    for (int r = 0; r < R; r++) { a0[r] = _mm256_setzero_ps(); a1[r] = _mm256_setzero_ps(); am[r] = _mm256_setzero_ps(); } \
    for (int b = 0; b < nb; b++) {                                                                              \
      const uint8_t* blk = w + (long)b * (BYTES);                                                               \
      __m256i v[8];                                                                                             \
      eg_x8_unpack((QH) >= 0 ? blk + ((QH) >= 0 ? (QH) : 0) : 0, blk + (QS), v);                                \
      if (b & 1) { for (int r = 0; r < R; r++) eg_x8_term_##TYPE(blk, v, x + (long)r * xs + b, &a1[r], &am[r]); } \
      else { for (int r = 0; r < R; r++) eg_x8_term_##TYPE(blk, v, x + (long)r * xs + b, &a0[r], &am[r]); }     \
    }                                                                                                           \
    for (int r = 0; r < R; r++)                                                                                 \
      _mm256_storeu_ps(y + (long)r * ystride, _mm256_add_ps(_mm256_add_ps(a0[r], a1[r]), am[r]));               \
  }                                                                                                             \
  EG_INLINE void eg_dot8_##TYPE(const uint8_t* w, const eg_q8x* x, int nb, float* y) {                          \
    eg_dot8r_##TYPE(w, x, 0, nb, y, 0, 1);                                                                      \
  }                                                                                                             \
  EG_INLINE void eg_dot8x4_##TYPE(const uint8_t* w, const eg_q8x* x, int xs, int nb, float* y, int ystride) {  \
    eg_dot8r_##TYPE(w, x, xs, nb, y, ystride, 4);                                                               \
  }

#define EG_HAVE_DOT8X4_Q4_0
#define EG_HAVE_DOT8X4_Q4_1
#define EG_HAVE_DOT8X4_Q5_0
#define EG_HAVE_DOT8X4_Q5_1
EG_X8_DOTS(q4_0, 144, -1, 16, -1, 8)
EG_X8_DOTS(q4_1, 160, -1, 32, 16, 0)
EG_X8_DOTS(q5_0, 176, 16, 48, -1, 16)
EG_X8_DOTS(q5_1, 192, 32, 64, 16, 0)

/* Q8_0: the sign trick per 4-row chunk (|w| unsigned, x with w's sign); pair sums up to 2 * 128 * 127 fit int16, so
 * each maddubs goes to int32 before the next is added. */
EG_INLINE void eg_dot8_q8_0(const uint8_t* w, const eg_q8x* x, int nb, float* y) {
  #if !defined(EG_X86_VNNI)
  const __m256i ones = _mm256_set1_epi16(1);
#endif
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  for (int b = 0; b < nb; b++) {
    const uint8_t* blk = w + (long)b * 272;
    __m256i s[2];
    for (int h = 0; h < 2; h++) {
      __m256i acc = _mm256_setzero_si256();
      for (int c = 0; c < 4; c++) {
        __m256i wq = eg_load32(blk + 16 + (h * 4 + c) * 32), xb = eg_bcast8(x[b].qs + 8 * c);
#if defined(EG_X86_VNNI)
        acc = eg_dpbusd(acc, _mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xb, wq));
#else
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xb, wq)), ones));
#endif
      }
      s[h] = acc;
    }
    __m256 t = _mm256_mul_ps(eg_x8_scales(blk), _mm256_set1_ps(x[b].d));
    __m256 v = _mm256_cvtepi32_ps(_mm256_hadd_epi32(s[0], s[1]));
    if (b & 1) a1 = _mm256_fmadd_ps(t, v, a1);
    else a0 = _mm256_fmadd_ps(t, v, a0);
  }
  _mm256_storeu_ps(y, _mm256_add_ps(a0, a1));
}
#else
#define eg_dot8_q4_0 eg_dot8_q4_0_portable
#define eg_dot8_q4_1 eg_dot8_q4_1_portable
#define eg_dot8_q5_0 eg_dot8_q5_0_portable
#define eg_dot8_q5_1 eg_dot8_q5_1_portable
#define eg_dot8_q8_0 eg_dot8_q8_0_portable
#endif
