/* dpmpi core/noise (internal): the definition of the Gaussian stream, shared by rng.c (portable kernel),
 * noise_avx2.c, noise_avx512.c (vector kernels), aes.c and the tests (test_rng.c, test_noise_tables.c).
 *
 * Blocks. The 128-bit counter block (index, step, tag, sub) is the 16 bytes of two little-endian 64-bit
 * words, index and step | sub << 40 | tag << 56, encrypted with AES-128 under the key's 16 bytes (k[0] then
 * k[1], little endian); the result is read as two little-endian words.
 *
 * Normals (stream version 2: Box-Muller on exact uniforms). Draws come in groups of 16: group g (draws 16g ..
 * 16g + 15) reads the 16 words W[0..15] of blocks 8g .. 8g + 7 (sub 0; block 8g + q gives W[2q], W[2q + 1]).
 * Pair l = 0..7 takes U = W[l] (radius) and A = W[8 + l] (angle):
 *   radius: m = U >> 12 (52 bits), e = U & 0xFFF; the uniform u1 = (1 + m 2^-52) 2^-K in [2^-K, 2^-K+1) with
 *     P(K = k) = 2^-k: K = 12 - floor(log2 e) if e != 0, else 12 + 1 + the leading zero bits of the words of
 *     blocks (8g + l, step, tag, 1), (.., 2), ... (probability 2^-12 per pair). So u1 is uniform on (0, 1)
 *     with 52 significant bits at every scale down to 2^-(2^16 * 128): the radius r = sqrt(-2 ln u1) has its
 *     exact law far beyond any tail that matters (docs/design.md "Noise in floating point").
 *   angle: octant o = A >> 61, t = ((A >> 9) mod 2^52) 2^-52 in [0, 1), theta = (o + t) pi / 4;
 *   draw 16g + l = r cos theta, draw 16g + 8 + l = r sin theta.
 * ln, sin and cos are evaluated by the fixed sequence of IEEE operations below (dpm_noise_pair), which every
 * kernel repeats operation for operation (FMA where it says fma), so all kernels give the same bits. */
#ifndef DPMPI_CORE_NOISE_H
#define DPMPI_CORE_NOISE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "dpmpi/core/rng.h"

/* AES-128 round keys: 11 x 16 bytes, FIPS-197 byte order. */
typedef struct {
  _Alignas(16) uint8_t rk[176];
} dpm_aes128;
void dpm_aes128_expand(const uint8_t key[16], dpm_aes128 *ks);
void dpm_aes128_encrypt_portable(const dpm_aes128 *ks, const uint8_t in[16], uint8_t out[16]);
void dpm_aes128_encrypt_ni(const dpm_aes128 *ks, const uint8_t in[16], uint8_t out[16]); /* needs AES-NI */

/* A key ready to encrypt blocks, with the AES implementation in use (AES-NI or portable). */
typedef struct {
  dpm_aes128 ks;
  int ni; /* 1: AES-NI */
} dpm_stream_key;
void dpm_stream_block(const dpm_stream_key *sk, uint64_t index, uint64_t step, unsigned tag, unsigned sub,
                      uint64_t out[2]);

/* The second word of the counter block: step | sub << 40 | tag << 56 (step < 2^40, checked by rng.c). */
static inline uint64_t dpm_stream_hi(uint64_t step, unsigned tag, unsigned sub) {
  return step | (uint64_t)sub << 40 | (uint64_t)tag << 56;
}

/* Constants (noise_tables.c, written by test_noise_tables --emit from long-double values): the log's
 * reduction table c[k] ~ 1 / (1 + (k + 1/2) / 16) and -ln c[k] = log_hi[k] + log_lo[k]; ln 2 = ln2_hi +
 * ln2_lo (ln2_hi with 32 significant bits, so K ln2_hi is exact); pi/4; Taylor coefficients. */
typedef struct {
  double c[16], log_hi[16], log_lo[16];
  double ln2_hi, ln2_lo, pi4;
  double log1p[10]; /* ln(1 + r) = r + r^2 sum_i log1p[i] r^i, |r| <= 1/31 */
  double sin[7];    /* sin(p) = p + p^3 sum_i sin[i] p^2i, p in [0, pi/4] */
  double cos[8];    /* cos(p) = 1 + p^2 sum_i cos[i] p^2i (all three evaluated by Estrin's scheme, dpm_noise_pair) */
} dpm_noise_consts;
extern const dpm_noise_consts dpm_noise_c;

/* K of a pair whose radius word has e = U & 0xFFF == 0 (the rare case): from the extra blocks. */
double dpm_noise_K_extra(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t pair_index);

/* The pair (r cos theta, r sin theta) from the radius word U with exponent K (a small integer as double) and
 * the angle word A: the reference sequence of operations. */
static inline void dpm_noise_pair(uint64_t U, double K, uint64_t A, double *zc, double *zs) {
  const dpm_noise_consts *c = &dpm_noise_c;
  /* ln(1 + m 2^-52) = -ln c[k] + ln(1 + r), r = y c[k] - 1 */
  union { uint64_t u; double d; } y = {.u = (U >> 12) | 0x3FF0000000000000ULL};
  const int k = (int)(U >> 60);
  /* u1 in [31/32, 1) (K = 1, k = 15): ln u1 = ln(1 + (y/2 - 1)) directly, exact argument, no cancellation */
  const int near1 = K == 1.0 && k == 15;
  const double r = near1 ? y.d * 0.5 - 1.0 : fma(y.d, c->c[k], -1.0);
  const double Kr = near1 ? 0.0 : K, lh = near1 ? 0.0 : c->log_hi[k], ll = near1 ? 0.0 : c->log_lo[k];
  /* ln(1 + r) = r + r^2 P(r), P of degree 9 by Estrin's scheme (short dependency chains for the vectors) */
  const double r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
  const double q0 = fma(c->log1p[1], r, c->log1p[0]), q1 = fma(c->log1p[3], r, c->log1p[2]),
               q2 = fma(c->log1p[5], r, c->log1p[4]), q3 = fma(c->log1p[7], r, c->log1p[6]),
               q4 = fma(c->log1p[9], r, c->log1p[8]);
  const double p = fma(q4, r8, fma(fma(q3, r2, q2), r4, fma(q1, r2, q0)));
  const double l1p = fma(r2, p, r);
  const double a = fma(-Kr, c->ln2_hi, lh), b = fma(-Kr, c->ln2_lo, ll);
  const double lnu = a + (b + l1p);
  const double rad2 = -2.0 * lnu, rad = sqrt(rad2 > 0 ? rad2 : 0.0);
  /* the angle: phi = t pi/4 (even octants) or (1 - t) pi/4 (odd) */
  union { uint64_t u; double d; } t1 = {.u = ((A >> 9) & 0xFFFFFFFFFFFFFULL) | 0x3FF0000000000000ULL};
  const int o = (int)(A >> 61);
  const double t = o & 1 ? 2.0 - t1.d : t1.d - 1.0; /* exact: 1 - t, t */
  const double phi = t * c->pi4, p2 = phi * phi;
  /* the polynomials in p2 by Estrin's scheme */
  const double p4 = p2 * p2, p8 = p4 * p4;
  const double s = fma(fma(c->sin[6], p4, fma(c->sin[5], p2, c->sin[4])), p8,
                       fma(fma(c->sin[3], p2, c->sin[2]), p4, fma(c->sin[1], p2, c->sin[0])));
  const double co = fma(fma(fma(c->cos[7], p2, c->cos[6]), p4, fma(c->cos[5], p2, c->cos[4])), p8,
                        fma(fma(c->cos[3], p2, c->cos[2]), p4, fma(c->cos[1], p2, c->cos[0])));
  const double S = fma(phi, p2 * s, phi), C = fma(p2, co, 1.0);
  const int swap = (o ^ (o >> 1)) & 1, neg_c = ((o >> 1) ^ (o >> 2)) & 1, neg_s = (o >> 2) & 1;
  const double cs = swap ? S : C, sn = swap ? C : S;
  *zc = rad * (neg_c ? -cs : cs);
  *zs = rad * (neg_s ? -sn : sn);
}

/* K from e = U & 0xFFF != 0: 12 - floor(log2 e), as a double. */
static inline double dpm_noise_K(uint64_t U) { return (double)(12 - (63 - __builtin_clzll(U & 0xFFF))); }

/* out[k] += (float)(scale * z_{j0 + k}) for k < n, j0 a multiple of 16; the kernels. */
typedef void (*dpm_gauss_kernel)(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n,
                                 double scale, float *out);
void dpm_gauss_add_scalar(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n, double scale,
                          float *out);
void dpm_gauss_add_avx2(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n, double scale,
                        float *out);
void dpm_gauss_add_avx512(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n,
                          double scale, float *out);
/* z[0..n) = the draws j0 .. j0 + n - 1 themselves (doubles; tests compare the kernels bit for bit with
 * them), j0 a multiple of 16 and n of 64. */
void dpm_gauss_draws_scalar(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n, double *z);
void dpm_gauss_draws_avx2(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n, double *z);
void dpm_gauss_draws_avx512(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n, double *z);

/* out[0 .. 2 nblocks) = the words of blocks b0 .. b0 + nblocks - 1 (sub 0): counter-mode key stream. */
typedef void (*dpm_words_kernel)(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t b0, size_t nblocks,
                                 uint64_t *out);
void dpm_words_scalar(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t b0, size_t nblocks, uint64_t *out);
void dpm_words_avx2(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t b0, size_t nblocks, uint64_t *out);
void dpm_words_avx512(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t b0, size_t nblocks,
                      uint64_t *out);
/* The 16 normals of group g, portable. */
void dpm_noise_group(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t g, double z[16]);

#endif
