/* The block dot each type uses: the ISA header's where it defines one (EG_HAVE_<type>), else the portable one. */
#ifndef EG_ISA_NAME
#define EG_ISA_NAME "portable"
#endif
#ifndef EG_HAVE_Q8_0
#define eg_dot_q8_0 eg_dot_q8_0_portable
#endif
#ifndef EG_HAVE_Q4_0
#define eg_dot_q4_0 eg_dot_q4_0_portable
#endif
#ifndef EG_HAVE_Q4_1
#define eg_dot_q4_1 eg_dot_q4_1_portable
#endif
#ifndef EG_HAVE_Q5_0
#define eg_dot_q5_0 eg_dot_q5_0_portable
#endif
#ifndef EG_HAVE_Q5_1
#define eg_dot_q5_1 eg_dot_q5_1_portable
#endif
#ifndef EG_HAVE_Q2_K
#define eg_dot_q2_K eg_dot_q2_K_portable
#endif
#ifndef EG_HAVE_Q3_K
#define eg_dot_q3_K eg_dot_q3_K_portable
#endif
#ifndef EG_HAVE_Q4_K
#define eg_dot_q4_K eg_dot_q4_K_portable
#endif
#ifndef EG_HAVE_Q5_K
#define eg_dot_q5_K eg_dot_q5_K_portable
#endif
#ifndef EG_HAVE_Q6_K
#define eg_dot_q6_K eg_dot_q6_K_portable
#endif
#ifndef EG_HAVE_QUANTIZE
#define eg_quantize_block eg_quantize_block_portable
#endif
