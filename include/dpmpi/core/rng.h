/* dpmpi rng: a counter-based generator (Philox4x64-10, Salmon et al. 2011) and the secret key.
 *
 * Every random decision in dpmpi is a pure function of (key, counter): the draw for example i at step t,
 * or for global parameter j at step t, does not depend on which rank computes it or in what order. That
 * is what makes the logical batch and the noise identical on every process grid.
 *
 * Counter layout used by dpmpi: {index, step, stream tag, 0}. Each Philox call returns four 64-bit
 * words, i.e. four uniforms or four Gaussians, so index is the block (e.g. parameter j / 4).
 */
#ifndef DPMPI_RNG_H
#define DPMPI_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  uint64_t k[2];
} dpm_key;

/* Stream tags: distinct tags give independent streams under the same key. */
enum {
  DPM_STREAM_NOISE = 1,   /* Gaussian noise, index = global parameter block */
  DPM_STREAM_SAMPLE = 2,  /* Poisson sampling, index = global example index */
  DPM_STREAM_INIT = 3,    /* parameter initialization, step = layer number */
  DPM_STREAM_SHUFFLE = 4, /* data order, tests */
  DPM_STREAM_PCA = 5      /* DP-PCA noise */
};

/* Philox4x64-10: out = f_key(ctr). */
void dpm_philox(const dpm_key *key, const uint64_t ctr[4], uint64_t out[4]);

/* A key from a user seed (reproducible) — the seed is spread with splitmix64. */
dpm_key dpm_key_from_seed(uint64_t seed, uint64_t purpose);

/* A key from the operating system's CSPRNG (getrandom). Never stored anywhere by dpmpi. */
dpm_key dpm_key_secure(void);

/* Uniform double in [0, 1) from 53 high bits; in (0, 1] with dpm_u01_open0. */
static inline double dpm_u01(uint64_t x) { return (double)(x >> 11) * 0x1.0p-53; }
static inline double dpm_u01_open0(uint64_t x) { return ((double)(x >> 11) + 1.0) * 0x1.0p-53; }

/* Four standard normal draws (ziggurat, one 64-bit word each, rare extra words) for counter ctr. */
void dpm_gauss4(const dpm_key *key, const uint64_t ctr[4], double out[4]);

/* Standard normal number j of the stream (key, step, tag): element j % 4 of block j / 4. */
double dpm_gauss_at(const dpm_key *key, uint64_t step, uint64_t tag, uint64_t j);

/* Fill out[0..n) with the normals j0 .. j0+n-1 of stream (key, step, tag), each multiplied by scale and
 * added to out (out[k] += scale * z_{j0+k}). Same values as dpm_gauss_at, whatever j0 and n. */
void dpm_gauss_add(const dpm_key *key, uint64_t step, uint64_t tag, uint64_t j0, size_t n, double scale,
                   float *out);

/* Bernoulli(q) decision for index i at step t on stream tag: 1 with probability exactly q (to 2^-64). */
int dpm_bernoulli_at(const dpm_key *key, uint64_t step, uint64_t tag, uint64_t i, double q);

#endif
