/* The Gaussian stream's kernel for AVX2 with AES-NI and FMA: per group of 16 draws, 8 AES-128 counter blocks
 * (one 128-bit block per instruction, interleaved), then two halves of 4 Box-Muller pairs by core/noise.h's
 * sequence of operations (the log's tables by gathers). Also finishes the AVX-512 kernel's last < 32 draws;
 * a partial last group goes to the portable code. The numbers are exactly the portable kernel's. */
#include "core/noise.h"
#include "dpmpi/core/common.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define TARGET __attribute__((target("avx2,aes,fma")))
#define B(x) _mm256_set1_pd(x)
#define BI(x) _mm256_set1_epi64x((long long)(x))

/* 4 pairs (U, A), pair indices p0 .. p0+3: out_c[0..4) += float(scale r cos), out_s[0..4) += float(scale r sin) */
TARGET static inline void pairs4(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t p0, __m256i U,
                                 __m256i A, __m256d vscale, float *out_c, float *out_s, double *dz_c, double *dz_s) {
  const dpm_noise_consts *c = &dpm_noise_c;
  const __m256d two52 = B(0x1.0p52);
  const __m256i magic = BI(0x4330000000000000ULL), one = BI(0x3FF0000000000000ULL);
  const __m256i e = _mm256_and_si256(U, BI(0xFFF));
  const __m256d ed = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(e, magic)), two52);
  const __m256i Ki = _mm256_sub_epi64(BI(1035), _mm256_srli_epi64(_mm256_castpd_si256(ed), 52));
  __m256d K = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(Ki, magic)), two52);
  const int rare = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(e, _mm256_setzero_si256())));
  if (__builtin_expect(rare != 0, 0)) {
    double k[4];
    _mm256_storeu_pd(k, K);
    for (int l = 0; l < 4; l++)
      if (rare >> l & 1) k[l] = dpm_noise_K_extra(sk, step, tag, p0 + (uint64_t)l);
    K = _mm256_loadu_pd(k);
  }
  const __m256d y = _mm256_castsi256_pd(_mm256_or_si256(_mm256_srli_epi64(U, 12), one));
  const __m256i k = _mm256_srli_epi64(U, 60);
  const __m256d ck = _mm256_i64gather_pd(c->c, k, 8), lh0 = _mm256_i64gather_pd(c->log_hi, k, 8),
                ll0 = _mm256_i64gather_pd(c->log_lo, k, 8);
  /* u1 in [31/32, 1): ln(1 + (y/2 - 1)) directly */
  const __m256d near1 = _mm256_and_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(k, BI(15))), _mm256_cmp_pd(K, B(1.0), _CMP_EQ_OQ));
  const __m256d r = _mm256_blendv_pd(_mm256_fmadd_pd(y, ck, B(-1.0)), _mm256_sub_pd(_mm256_mul_pd(y, B(0.5)), B(1.0)), near1);
  const __m256d Kr = _mm256_andnot_pd(near1, K), lh = _mm256_andnot_pd(near1, lh0), ll = _mm256_andnot_pd(near1, ll0);
  const __m256d r2 = _mm256_mul_pd(r, r), r4 = _mm256_mul_pd(r2, r2), r8 = _mm256_mul_pd(r4, r4);
  const __m256d q0 = _mm256_fmadd_pd(B(c->log1p[1]), r, B(c->log1p[0])), q1 = _mm256_fmadd_pd(B(c->log1p[3]), r, B(c->log1p[2])),
            q2 = _mm256_fmadd_pd(B(c->log1p[5]), r, B(c->log1p[4])), q3 = _mm256_fmadd_pd(B(c->log1p[7]), r, B(c->log1p[6])),
            q4 = _mm256_fmadd_pd(B(c->log1p[9]), r, B(c->log1p[8]));
  const __m256d p = _mm256_fmadd_pd(q4, r8, _mm256_fmadd_pd(_mm256_fmadd_pd(q3, r2, q2), r4, _mm256_fmadd_pd(q1, r2, q0)));
  const __m256d l1p = _mm256_fmadd_pd(r2, p, r);
  const __m256d a = _mm256_fnmadd_pd(Kr, B(c->ln2_hi), lh), b = _mm256_fnmadd_pd(Kr, B(c->ln2_lo), ll);
  const __m256d lnu = _mm256_add_pd(a, _mm256_add_pd(b, l1p));
  const __m256d rad = _mm256_sqrt_pd(_mm256_max_pd(_mm256_mul_pd(B(-2.0), lnu), _mm256_setzero_pd()));
  const __m256d t1 = _mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi64(A, 9), BI(0xFFFFFFFFFFFFFULL)), one));
  const __m256i o = _mm256_srli_epi64(A, 61);
  const __m256d odd = _mm256_castsi256_pd(_mm256_slli_epi64(o, 63)); /* sign bit = bit 0 of o: blendv's selector */
  const __m256d t = _mm256_blendv_pd(_mm256_sub_pd(t1, B(1.0)), _mm256_sub_pd(B(2.0), t1), odd);
  const __m256d phi = _mm256_mul_pd(t, B(c->pi4)), p2 = _mm256_mul_pd(phi, phi);
  const __m256d p4 = _mm256_mul_pd(p2, p2), p8 = _mm256_mul_pd(p4, p4);
  const __m256d s = _mm256_fmadd_pd(_mm256_fmadd_pd(B(c->sin[6]), p4, _mm256_fmadd_pd(B(c->sin[5]), p2, B(c->sin[4]))), p8,
                    _mm256_fmadd_pd(_mm256_fmadd_pd(B(c->sin[3]), p2, B(c->sin[2])), p4, _mm256_fmadd_pd(B(c->sin[1]), p2, B(c->sin[0]))));
  const __m256d co = _mm256_fmadd_pd(_mm256_fmadd_pd(_mm256_fmadd_pd(B(c->cos[7]), p2, B(c->cos[6])), p4, _mm256_fmadd_pd(B(c->cos[5]), p2, B(c->cos[4]))), p8,
                     _mm256_fmadd_pd(_mm256_fmadd_pd(B(c->cos[3]), p2, B(c->cos[2])), p4, _mm256_fmadd_pd(B(c->cos[1]), p2, B(c->cos[0]))));
  const __m256d S = _mm256_fmadd_pd(phi, _mm256_mul_pd(p2, s), phi), C = _mm256_fmadd_pd(p2, co, B(1.0));
  const __m256d swap = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_xor_si256(o, _mm256_srli_epi64(o, 1)), 63));
  const __m256d cs = _mm256_blendv_pd(C, S, swap), sn = _mm256_blendv_pd(S, C, swap);
  const __m256i neg_c = _mm256_slli_epi64(_mm256_xor_si256(_mm256_srli_epi64(o, 1), _mm256_srli_epi64(o, 2)), 63),
                neg_s = _mm256_slli_epi64(_mm256_srli_epi64(o, 2), 63);
  const __m256d zc = _mm256_mul_pd(rad, _mm256_castsi256_pd(_mm256_xor_si256(_mm256_castpd_si256(cs), neg_c)));
  const __m256d zs = _mm256_mul_pd(rad, _mm256_castsi256_pd(_mm256_xor_si256(_mm256_castpd_si256(sn), neg_s)));
  if (dz_c) { /* the draws themselves (tests) */
    _mm256_storeu_pd(dz_c, zc), _mm256_storeu_pd(dz_s, zs);
    return;
  }
  _mm_storeu_ps(out_c, _mm_add_ps(_mm_loadu_ps(out_c), _mm256_cvtpd_ps(_mm256_mul_pd(zc, vscale))));
  _mm_storeu_ps(out_s, _mm_add_ps(_mm_loadu_ps(out_s), _mm256_cvtpd_ps(_mm256_mul_pd(zs, vscale))));
}

/* AES-128 of the 8 counter blocks b0 .. b0 + 7 (one block per instruction, interleaved) */
TARGET static inline void aes_ctr8(__m128i c[8], uint64_t b0, long long hi, const __m128i rk[11]) {
  for (int q = 0; q < 8; q++) c[q] = _mm_xor_si128(_mm_set_epi64x(hi, (long long)(b0 + (uint64_t)q)), rk[0]);
  for (int r = 1; r < 10; r++)
    for (int q = 0; q < 8; q++) c[q] = _mm_aesenc_si128(c[q], rk[r]);
  for (int q = 0; q < 8; q++) c[q] = _mm_aesenclast_si128(c[q], rk[10]);
}

/* The kernel; dz != NULL: write the draws (doubles) to dz instead of adding to out (n a multiple of 16). */
TARGET static inline void gauss_avx2(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n,
                                     double scale, float *out, double *dz) {
  __m128i rk[11];
  for (int r = 0; r < 11; r++) rk[r] = _mm_loadu_si128((const __m128i *)(sk->ks.rk + 16 * r));
  const long long hi = (long long)dpm_stream_hi(step, tag, 0);
  const __m256d vscale = _mm256_set1_pd(scale);
  uint64_t g = j0 / 16;
  size_t k = 0;
  for (; n - k >= 16; k += 16, g++) {
    __m128i c[8];
    aes_ctr8(c, 8 * g, hi, rk);
    /* W[0..7] radius words (blocks 0-3), W[8..15] angle words (blocks 4-7) */
    pairs4(sk, step, tag, 8 * g, _mm256_set_m128i(c[1], c[0]), _mm256_set_m128i(c[5], c[4]), vscale, out + k,
           out + k + 8, dz ? dz + k : NULL, dz ? dz + k + 8 : NULL);
    pairs4(sk, step, tag, 8 * g + 4, _mm256_set_m128i(c[3], c[2]), _mm256_set_m128i(c[7], c[6]), vscale, out + k + 4,
           out + k + 12, dz ? dz + k + 4 : NULL, dz ? dz + k + 12 : NULL);
  }
  if (k < n) dpm_gauss_add_scalar(sk, step, tag, j0 + k, n - k, scale, out + k);
}

TARGET void dpm_gauss_add_avx2(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n,
                               double scale, float *out) {
  gauss_avx2(sk, step, tag, j0, n, scale, out, NULL);
}

TARGET void dpm_gauss_draws_avx2(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n,
                                 double *z) {
  DPM_ASSERT(n % 16 == 0);
  gauss_avx2(sk, step, tag, j0, n, 1.0, NULL, z);
}

TARGET void dpm_words_avx2(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t b0, size_t nblocks,
                           uint64_t *out) {
  __m128i rk[11];
  for (int r = 0; r < 11; r++) rk[r] = _mm_loadu_si128((const __m128i *)(sk->ks.rk + 16 * r));
  const long long hi = (long long)dpm_stream_hi(step, tag, 0);
  size_t k = 0;
  for (; nblocks - k >= 8; k += 8) {
    __m128i c[8];
    aes_ctr8(c, b0 + k, hi, rk);
    for (int q = 0; q < 8; q++) _mm_storeu_si128((__m128i *)(out + 2 * (k + (size_t)q)), c[q]);
  }
  if (k < nblocks) dpm_words_scalar(sk, step, tag, b0 + k, nblocks - k, out + 2 * k);
}

#else
void dpm_gauss_draws_avx2(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n, double *z) {
  dpm_gauss_draws_scalar(sk, step, tag, j0, n, z);
}
void dpm_words_avx2(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t b0, size_t nblocks,
                    uint64_t *out) {
  dpm_words_scalar(sk, step, tag, b0, nblocks, out);
}
void dpm_gauss_add_avx2(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n, double scale,
                        float *out) {
  dpm_gauss_add_scalar(sk, step, tag, j0, n, scale, out);
}
#endif
