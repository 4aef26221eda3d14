/* Float helpers of the attention kernel: exp (no libm in a kernel), and over one head of the float16 KV cache: the dot
 * product with a float32 query, scaled add and scale (keys and values widened to float32 as they are read). */

/* expf (expf.h): clamped, reduced, the polynomial, scaled by 2^n. */
EG_INLINE float eg_expf(float x) {
  if (x < EG_EXP_LO) return 0.0f;
  if (x > EG_EXP_HI) x = EG_EXP_HI;
  float fn = x * EG_EXP_LOG2E;
  int n = (int)(fn + (fn >= 0.0f ? 0.5f : -0.5f));
  float r = EG_EXP_REDUCE(x, (float)n), p;
  EG_EXP_POLY(p, r, 1.0f);
  union { uint32_t u; float f; } s;
  s.u = (uint32_t)(n + 127) << 23;
  return p * s.f;
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && !defined(EG_PORTABLE)
EG_INLINE __m256 eg_load8h(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
EG_INLINE float eg_dotf_h(const float* a, const uint16_t* b, int n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), eg_load8h(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), eg_load8h(b + i + 8), s1);
  }
  float s = eg_hsum8(_mm256_add_ps(s0, s1));
  for (; i < n; i++) s += a[i] * EG_F16(b[i]);
  return s;
}
EG_INLINE void eg_axpyf_h(float* y, float a, const uint16_t* x, int n) {
  __m256 va = _mm256_set1_ps(a);
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, eg_load8h(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += a * EG_F16(x[i]);
}
EG_INLINE void eg_scalef_h(float* y, float a, const uint16_t* x, int n) {
  __m256 va = _mm256_set1_ps(a);
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(va, eg_load8h(x + i)));
  for (; i < n; i++) y[i] = a * EG_F16(x[i]);
}
#elif defined(__aarch64__) && defined(__ARM_NEON) && !defined(EG_PORTABLE)
#include <arm_neon.h>
EG_INLINE float32x4_t eg_load4h(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
EG_INLINE float eg_dotf_h(const float* a, const uint16_t* b, int n) {
  float32x4_t s0 = vdupq_n_f32(0.0f), s1 = vdupq_n_f32(0.0f);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 = vfmaq_f32(s0, vld1q_f32(a + i), eg_load4h(b + i));
    s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), eg_load4h(b + i + 4));
  }
  float s = vaddvq_f32(vaddq_f32(s0, s1));
  for (; i < n; i++) s += a[i] * EG_F16(b[i]);
  return s;
}
EG_INLINE void eg_axpyf_h(float* y, float a, const uint16_t* x, int n) {
  int i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), eg_load4h(x + i), a));
  for (; i < n; i++) y[i] += a * EG_F16(x[i]);
}
EG_INLINE void eg_scalef_h(float* y, float a, const uint16_t* x, int n) {
  int i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vmulq_n_f32(eg_load4h(x + i), a));
  for (; i < n; i++) y[i] = a * EG_F16(x[i]);
}
#else
EG_INLINE float eg_dotf_h(const float* a, const uint16_t* b, int n) {
  float s = 0.0f; for (int i = 0; i < n; i++) s += a[i] * EG_F16(b[i]); return s;
}
EG_INLINE void eg_axpyf_h(float* y, float a, const uint16_t* x, int n) { for (int i = 0; i < n; i++) y[i] += a * EG_F16(x[i]); }
EG_INLINE void eg_scalef_h(float* y, float a, const uint16_t* x, int n) { for (int i = 0; i < n; i++) y[i] = a * EG_F16(x[i]); }
#endif
