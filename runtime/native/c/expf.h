/* expf without libm (none in a kernel): range reduction to [-ln2/2, ln2/2], a degree-6 polynomial (Cephes' expf
 * coefficients), then 2^n through the exponent bits; relative error about 2e-7 over the clamped range, and below
 * EG_EXP_LO the result is 0. One piece for the scalar eg_expf (attention.h) and the 16-lane eg_vexp of the U-Net's
 * kernels (runtime/native/unet_kernels.py): the expressions below are valid for a float and for a clang vector of
 * floats alike. */
#define EG_EXP_HI 88.7f
#define EG_EXP_LO -87.3f
#define EG_EXP_LOG2E 1.44269504088896341f
/* r = x - n ln2, ln2 split in two so that n * EG_EXP_LN2_HI is exact */
#define EG_EXP_REDUCE(x, nf) (((x) - (nf) * 0.693359375f) - (nf) * -2.12194440e-4f)
/* the polynomial of r: exp(r) for |r| <= ln2/2 */
#define EG_EXP_POLY(p, r, one)                                     \
  p = (one) * 1.9875691500e-4f;                                    \
  p = p * (r) + 1.3981999507e-3f;                                  \
  p = p * (r) + 8.3334519073e-3f;                                  \
  p = p * (r) + 4.1665795894e-2f;                                  \
  p = p * (r) + 1.6666665459e-1f;                                  \
  p = p * (r) + 5.0000001201e-1f;                                  \
  p = p * (r) * (r) + (r) + 1.0f
