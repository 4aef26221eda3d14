/* Interleaved 8-row layouts ("x8") of Q4_0, Q4_1 and Q8_0, and their block dots: 8 weight rows against one
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
 *   Q8_0x8: d[8] then qs[256]                                       272 B
 * qs holds 8-byte chunks: chunk c of row P[4h + j] at qs[(h * C + c) * 32 + 8 * j], half h = 0, 1, C = 2 chunks of a
 * 16-byte nibble block or 4 of a 32-byte Q8_0 block, P = {0, 1, 4, 5, 2, 3, 6, 7}: one 32-byte load then holds
 * chunk c of 4 rows, and _mm256_hadd_epi32 of the two halves' sums gives rows 0..7 in order.
 * The integer sums are the row layout's exactly; only the order of float additions differs. */

/* ---- portable: the reference structure (and the build on CPUs without AVX2) ----------------------------------- */

/* Integer sum of row r's nibble block (chunks laid out as above) against 32 activations. */
EG_INLINE int eg_x8_isum_nibbles(const uint8_t* qs, int r, const int8_t* q) {
  int h = (r & 2) ? 1 : 0, j = (r & 1) | ((r & 4) >> 1), s = 0;
  for (int c = 0; c < 2; c++) {
    const uint8_t* p = qs + (h * 2 + c) * 32 + 8 * j;
    for (int i = 0; i < 8; i++) s += (p[i] & 0xf) * q[8 * c + i] + (p[i] >> 4) * q[16 + 8 * c + i];
  }
  return s;
}

EG_INLINE void eg_dot8_q4_0_portable(const uint8_t* w, const eg_q8x* x, int nb, float* y) {
  for (int r = 0; r < 8; r++) {
    float acc = 0.0f;
    for (int b = 0; b < nb; b++) {
      const uint8_t* blk = w + (long)b * 144;
      int s = eg_x8_isum_nibbles(blk + 16, r, x[b].qs) - 8 * (x[b].bs[0] + x[b].bs[1]);
      acc += EG_F16(((const uint16_t*)blk)[r]) * x[b].d * (float)s;
    }
    y[r] = acc;
  }
}

EG_INLINE void eg_dot8_q4_1_portable(const uint8_t* w, const eg_q8x* x, int nb, float* y) {
  for (int r = 0; r < 8; r++) {
    float acc = 0.0f;
    for (int b = 0; b < nb; b++) {
      const uint8_t* blk = w + (long)b * 160;
      int s = eg_x8_isum_nibbles(blk + 32, r, x[b].qs);
      acc += EG_F16(((const uint16_t*)blk)[r]) * x[b].d * (float)s + EG_F16(((const uint16_t*)blk)[8 + r]) * x[b].s;
    }
    y[r] = acc;
  }
}

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
#define EG_HAVE_DOT8

EG_INLINE __m256i eg_bcast8(const int8_t* p) { return _mm256_set1_epi64x(*(const long long*)p); }

/* Row sums (rows 0..7 in int32 lanes) of a nibble block against activation block xq: per half, 4 maddubs whose int16
 * lanes hold at most 4 * 2 * 15 * 127 = 15240 (no saturation), one madd to int32. */
EG_INLINE __m256i eg_x8_isum_nib(const uint8_t* qs, const int8_t* xq) {
  const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  __m256i xl0 = eg_bcast8(xq), xl1 = eg_bcast8(xq + 8), xh0 = eg_bcast8(xq + 16), xh1 = eg_bcast8(xq + 24);
  __m256i w0 = eg_load32(qs), w1 = eg_load32(qs + 32), w2 = eg_load32(qs + 64), w3 = eg_load32(qs + 96);
  __m256i s0 = _mm256_add_epi16(
      _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(w0, m4), xl0),
                       _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w0, 4), m4), xh0)),
      _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(w1, m4), xl1),
                       _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w1, 4), m4), xh1)));
  __m256i s1 = _mm256_add_epi16(
      _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(w2, m4), xl0),
                       _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w2, 4), m4), xh0)),
      _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(w3, m4), xl1),
                       _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w3, 4), m4), xh1)));
  return _mm256_hadd_epi32(_mm256_madd_epi16(s0, ones), _mm256_madd_epi16(s1, ones));
}

EG_INLINE __m256 eg_x8_scales(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }

/* Two accumulators (even and odd blocks) so consecutive blocks' multiply-adds do not wait on each other. */
EG_INLINE void eg_dot8_q4_0(const uint8_t* w, const eg_q8x* x, int nb, float* y) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  for (int b = 0; b < nb; b++) {
    const uint8_t* blk = w + (long)b * 144;
    __m256i s = _mm256_sub_epi32(eg_x8_isum_nib(blk + 16, x[b].qs), _mm256_set1_epi32(8 * (x[b].bs[0] + x[b].bs[1])));
    __m256 t = _mm256_mul_ps(eg_x8_scales(blk), _mm256_set1_ps(x[b].d));
    if (b & 1) a1 = _mm256_fmadd_ps(t, _mm256_cvtepi32_ps(s), a1);
    else a0 = _mm256_fmadd_ps(t, _mm256_cvtepi32_ps(s), a0);
  }
  _mm256_storeu_ps(y, _mm256_add_ps(a0, a1));
}

EG_INLINE void eg_dot8_q4_1(const uint8_t* w, const eg_q8x* x, int nb, float* y) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), am = _mm256_setzero_ps();
  for (int b = 0; b < nb; b++) {
    const uint8_t* blk = w + (long)b * 160;
    __m256i s = eg_x8_isum_nib(blk + 32, x[b].qs);
    __m256 t = _mm256_mul_ps(eg_x8_scales(blk), _mm256_set1_ps(x[b].d));
    if (b & 1) a1 = _mm256_fmadd_ps(t, _mm256_cvtepi32_ps(s), a1);
    else a0 = _mm256_fmadd_ps(t, _mm256_cvtepi32_ps(s), a0);
    am = _mm256_fmadd_ps(eg_x8_scales(blk + 16), _mm256_set1_ps(x[b].s), am);
  }
  _mm256_storeu_ps(y, _mm256_add_ps(_mm256_add_ps(a0, a1), am));
}

/* Q8_0: the sign trick per 4-row chunk (|w| unsigned, x with w's sign); pair sums up to 2 * 128 * 127 fit int16, so
 * each maddubs goes to int32 before the next is added. */
EG_INLINE void eg_dot8_q8_0(const uint8_t* w, const eg_q8x* x, int nb, float* y) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  for (int b = 0; b < nb; b++) {
    const uint8_t* blk = w + (long)b * 272;
    __m256i s[2];
    for (int h = 0; h < 2; h++) {
      __m256i acc = _mm256_setzero_si256();
      for (int c = 0; c < 4; c++) {
        __m256i wq = eg_load32(blk + 16 + (h * 4 + c) * 32), xb = eg_bcast8(x[b].qs + 8 * c);
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xb, wq)), ones));
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
#define eg_dot8_q8_0 eg_dot8_q8_0_portable
#endif
