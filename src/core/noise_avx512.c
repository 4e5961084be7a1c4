/* The Gaussian stream's kernel for AVX-512 with VAES: per iteration four groups of 16 draws, i.e. 32 AES-128
 * counter blocks in eight 512-bit registers (interleaved to hide the AES latency); per group one register of
 * 8 radius words and one of 8 angle words become 8 Box-Muller pairs by core/noise.h's sequence of operations
 * (the log's 16-entry tables in registers, vpermt2pd: no gathers, no branches), rounded to float32 and added to
 * out. The rare radius words that need extra exponent bits (2^-12 per pair) take K from the shared scalar code.
 * The numbers are exactly the portable kernel's (tests/core/test_rng.c compares them). */
#include "core/noise.h"
#include "dpmpi/core/common.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512cd,avx512dq,vaes,aes,fma")))

typedef struct {
  __m512d c0, c1, h0, h1, l0, l1; /* the log's tables, 8 + 8 entries each */
  __m512i sign_c, sign_s;         /* the sign bits of cos and sin by octant */
} tables;

#define B(x) _mm512_set1_pd(x)
#define BI(x) _mm512_set1_epi64((long long)(x))

/* out[0..8) += float(scale * r cos), out[8..16) += float(scale * r sin) for the 8 pairs (U, A) of group g */
TARGET static inline void pairs8(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t g, __m512i U,
                                 __m512i A, const tables *T, __m512d vscale, float *out, double *dz) {
  const dpm_noise_consts *c = &dpm_noise_c;
  const __m512i one = BI(0x3FF0000000000000ULL);
  /* K = 12 - floor(log2 e) = lzcnt(e) - 51 for 0 < e < 2^12 */
  const __m512i e = _mm512_and_si512(U, BI(0xFFF));
  __m512d K = _mm512_cvtepi64_pd(_mm512_sub_epi64(_mm512_lzcnt_epi64(e), BI(51)));
  const __mmask8 rare = _mm512_cmpeq_epi64_mask(e, _mm512_setzero_si512());
  if (__builtin_expect(rare != 0, 0)) {
    double k[8];
    _mm512_storeu_pd(k, K);
    for (int l = 0; l < 8; l++)
      if (rare >> l & 1) k[l] = dpm_noise_K_extra(sk, step, tag, 8 * g + (uint64_t)l);
    K = _mm512_loadu_pd(k);
  }
  /* ln u1 */
  const __m512d y = _mm512_castsi512_pd(_mm512_or_si512(_mm512_srli_epi64(U, 12), one));
  const __m512i k = _mm512_srli_epi64(U, 60);
  const __m512d ck = _mm512_permutex2var_pd(T->c0, k, T->c1), lh0 = _mm512_permutex2var_pd(T->h0, k, T->h1),
                ll0 = _mm512_permutex2var_pd(T->l0, k, T->l1);
  /* u1 in [31/32, 1): ln(1 + (y/2 - 1)) directly */
  const __mmask8 near1 = _mm512_cmpeq_epi64_mask(k, BI(15)) & _mm512_cmp_pd_mask(K, B(1.0), _CMP_EQ_OQ);
  const __m512d r = _mm512_fmadd_pd(_mm512_mask_mul_pd(y, near1, y, B(0.5)), _mm512_mask_mov_pd(ck, near1, B(1.0)),
                                    B(-1.0)); /* near 1: y/2 * 1 - 1, exact */
  const __m512d Kr = _mm512_maskz_mov_pd((__mmask8)~near1, K), lh = _mm512_maskz_mov_pd((__mmask8)~near1, lh0),
                ll = _mm512_maskz_mov_pd((__mmask8)~near1, ll0);
  const __m512d r2 = _mm512_mul_pd(r, r), r4 = _mm512_mul_pd(r2, r2), r8 = _mm512_mul_pd(r4, r4);
  const __m512d q0 = _mm512_fmadd_pd(B(c->log1p[1]), r, B(c->log1p[0])), q1 = _mm512_fmadd_pd(B(c->log1p[3]), r, B(c->log1p[2])),
            q2 = _mm512_fmadd_pd(B(c->log1p[5]), r, B(c->log1p[4])), q3 = _mm512_fmadd_pd(B(c->log1p[7]), r, B(c->log1p[6])),
            q4 = _mm512_fmadd_pd(B(c->log1p[9]), r, B(c->log1p[8]));
  const __m512d p = _mm512_fmadd_pd(q4, r8, _mm512_fmadd_pd(_mm512_fmadd_pd(q3, r2, q2), r4, _mm512_fmadd_pd(q1, r2, q0)));
  const __m512d l1p = _mm512_fmadd_pd(r2, p, r);
  const __m512d a = _mm512_fnmadd_pd(Kr, B(c->ln2_hi), lh), b = _mm512_fnmadd_pd(Kr, B(c->ln2_lo), ll);
  const __m512d lnu = _mm512_add_pd(a, _mm512_add_pd(b, l1p));
  const __m512d rad = _mm512_sqrt_pd(_mm512_max_pd(_mm512_mul_pd(B(-2.0), lnu), _mm512_setzero_pd()));
  /* the angle */
  const __m512d t1 = _mm512_castsi512_pd(_mm512_or_si512(_mm512_and_si512(_mm512_srli_epi64(A, 9), BI(0xFFFFFFFFFFFFFULL)), one));
  const __m512i o = _mm512_srli_epi64(A, 61);
  const __mmask8 odd = _mm512_test_epi64_mask(o, BI(1));
  const __m512d t = _mm512_mask_blend_pd(odd, _mm512_sub_pd(t1, B(1.0)), _mm512_sub_pd(B(2.0), t1));
  const __m512d phi = _mm512_mul_pd(t, B(c->pi4)), p2 = _mm512_mul_pd(phi, phi);
  const __m512d p4 = _mm512_mul_pd(p2, p2), p8 = _mm512_mul_pd(p4, p4);
  const __m512d s = _mm512_fmadd_pd(_mm512_fmadd_pd(B(c->sin[6]), p4, _mm512_fmadd_pd(B(c->sin[5]), p2, B(c->sin[4]))), p8,
                    _mm512_fmadd_pd(_mm512_fmadd_pd(B(c->sin[3]), p2, B(c->sin[2])), p4, _mm512_fmadd_pd(B(c->sin[1]), p2, B(c->sin[0]))));
  const __m512d co = _mm512_fmadd_pd(_mm512_fmadd_pd(_mm512_fmadd_pd(B(c->cos[7]), p2, B(c->cos[6])), p4, _mm512_fmadd_pd(B(c->cos[5]), p2, B(c->cos[4]))), p8,
                     _mm512_fmadd_pd(_mm512_fmadd_pd(B(c->cos[3]), p2, B(c->cos[2])), p4, _mm512_fmadd_pd(B(c->cos[1]), p2, B(c->cos[0]))));
  const __m512d S = _mm512_fmadd_pd(phi, _mm512_mul_pd(p2, s), phi), C = _mm512_fmadd_pd(p2, co, B(1.0));
  /* by octant o: swap = (o ^ o >> 1) & 1 (octants 1, 2, 5, 6), cos negative in 2-5, sin negative in 4-7 */
  const __mmask8 swap = _mm512_test_epi64_mask(_mm512_srlv_epi64(BI(0x66), o), BI(1));
  const __m512d cs = _mm512_mask_blend_pd(swap, C, S), sn = _mm512_mask_blend_pd(swap, S, C);
  const __m512i neg_c = _mm512_permutexvar_epi64(o, T->sign_c), neg_s = _mm512_permutexvar_epi64(o, T->sign_s);
  const __m512d zc = _mm512_mul_pd(rad, _mm512_castsi512_pd(_mm512_xor_si512(_mm512_castpd_si512(cs), neg_c)));
  const __m512d zs = _mm512_mul_pd(rad, _mm512_castsi512_pd(_mm512_xor_si512(_mm512_castpd_si512(sn), neg_s)));
  if (dz) { /* the draws themselves (tests) */
    _mm512_storeu_pd(dz, zc), _mm512_storeu_pd(dz + 8, zs);
    return;
  }
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), _mm512_cvtpd_ps(_mm512_mul_pd(zc, vscale))));
  _mm256_storeu_ps(out + 8, _mm256_add_ps(_mm256_loadu_ps(out + 8), _mm512_cvtpd_ps(_mm512_mul_pd(zs, vscale))));
}

/* AES-128 of 8 registers of counter blocks (32 blocks: ctr, ctr + 4, ...); ctr advances by 32 blocks */
TARGET static inline void aes_ctr8(__m512i c[8], __m512i *ctr, const __m512i rk[11]) {
  const __m512i four = _mm512_set_epi64(0, 4, 0, 4, 0, 4, 0, 4);
  for (int q = 0; q < 8; q++) c[q] = _mm512_xor_si512(*ctr, rk[0]), *ctr = _mm512_add_epi64(*ctr, four);
  for (int r = 1; r < 10; r++)
    for (int q = 0; q < 8; q++) c[q] = _mm512_aesenc_epi128(c[q], rk[r]);
  for (int q = 0; q < 8; q++) c[q] = _mm512_aesenclast_epi128(c[q], rk[10]);
}

/* The round keys broadcast to the four 128-bit lanes, and the counter register of blocks b0 .. b0 + 3. */
TARGET static inline __m512i aes_setup(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t b0,
                                       __m512i rk[11]) {
  for (int r = 0; r < 11; r++) rk[r] = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(sk->ks.rk + 16 * r)));
  const long long hi = (long long)dpm_stream_hi(step, tag, 0);
  return _mm512_set_epi64(hi, (long long)(b0 + 3), hi, (long long)(b0 + 2), hi, (long long)(b0 + 1), hi, (long long)b0);
}

/* The kernel; dz != NULL: write the draws (doubles) to dz instead of adding to out (n a multiple of 64). */
TARGET static inline void gauss_avx512(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n,
                                       double scale, float *out, double *dz) {
  const dpm_noise_consts *c = &dpm_noise_c;
  const long long neg = (long long)0x8000000000000000ULL;
  const tables T = {_mm512_loadu_pd(c->c), _mm512_loadu_pd(c->c + 8), _mm512_loadu_pd(c->log_hi),
                    _mm512_loadu_pd(c->log_hi + 8), _mm512_loadu_pd(c->log_lo), _mm512_loadu_pd(c->log_lo + 8),
                    _mm512_set_epi64(0, 0, neg, neg, neg, neg, 0, 0), _mm512_set_epi64(neg, neg, neg, neg, 0, 0, 0, 0)};
  __m512i rk[11];
  uint64_t g = j0 / 16;
  __m512i ctr = aes_setup(sk, step, tag, 8 * g, rk);
  const __m512d vscale = _mm512_set1_pd(scale);
  size_t k = 0;
  /* four groups (64 draws, 32 blocks) per iteration: enough independent work to hide the latencies */
  for (; n - k >= 64; k += 64, g += 4) {
    __m512i c[8];
    aes_ctr8(c, &ctr, rk);
    for (int q = 0; q < 4; q++)
      pairs8(sk, step, tag, g + (uint64_t)q, c[2 * q], c[2 * q + 1], &T, vscale, out + k + 16 * (size_t)q,
             dz ? dz + k + 16 * (size_t)q : NULL);
  }
  if (k < n) dpm_gauss_add_avx2(sk, step, tag, j0 + k, n - k, scale, out + k); /* the last < 64 draws */
}

TARGET void dpm_gauss_add_avx512(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n,
                                 double scale, float *out) {
  gauss_avx512(sk, step, tag, j0, n, scale, out, NULL);
}

TARGET void dpm_gauss_draws_avx512(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n,
                                   double *z) {
  DPM_ASSERT(n % 64 == 0);
  gauss_avx512(sk, step, tag, j0, n, 1.0, NULL, z);
}

TARGET void dpm_words_avx512(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t b0, size_t nblocks,
                             uint64_t *out) {
  __m512i rk[11];
  __m512i ctr = aes_setup(sk, step, tag, b0, rk);
  size_t k = 0;
  for (; nblocks - k >= 32; k += 32) {
    __m512i c[8];
    aes_ctr8(c, &ctr, rk);
    for (int q = 0; q < 8; q++) _mm512_storeu_si512(out + 2 * k + 8 * (size_t)q, c[q]);
  }
  if (k < nblocks) dpm_words_avx2(sk, step, tag, b0 + k, nblocks - k, out + 2 * k);
}

#else
void dpm_gauss_draws_avx512(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n, double *z) {
  dpm_gauss_draws_scalar(sk, step, tag, j0, n, z);
}
void dpm_words_avx512(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t b0, size_t nblocks,
                      uint64_t *out) {
  dpm_words_scalar(sk, step, tag, b0, nblocks, out);
}
void dpm_gauss_add_avx512(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n, double scale,
                          float *out) {
  dpm_gauss_add_scalar(sk, step, tag, j0, n, scale, out);
}
#endif
