/* dpmpi rng: counter-based random streams (AES-128 in counter mode) and the secret key.
 *
 * Every random decision in dpmpi is a pure function of (key, step, stream tag, index): the draw for
 * example i at step t, or for global parameter j at step t, does not depend on which rank computes it or
 * in what order. That is what makes the logical batch and the noise identical on every process grid.
 *
 * The generator is AES-128 (FIPS-197) of the 128-bit counter block (index, step, tag, sub), as in
 * counter mode (NIST SP 800-38A; the core of SP 800-90A's CTR_DRBG): under a secret key from getrandom,
 * the words are computationally indistinguishable from independent uniform ones, so nobody who sees the
 * released model or noisy gradients can predict the noise or the sample. Gaussians come from the
 * ziggurat (256 layers, exact rejection sampling with 52-bit uniforms; docs/design.md "Noise in floating
 * point"), vectorized for AVX-512 (VAES) and AVX2 (AES-NI) and portable C; the implementation is chosen
 * at run time from the CPU and all of them give the same numbers bit for bit.
 *
 * Stream version DPM_RNG_STREAM_VERSION names this definition of the numbers; checkpoints record it, and a
 * run never resumes on another version (version 1 was Philox4x64-10 with a 128-layer ziggurat).
 *
 * Typical use:
 *   dpm_key key = dpm_key_secure();                                    (or dpm_key_from_seed(seed, purpose))
 *   dpm_gauss_add(&key, step, DPM_STREAM_NOISE, j0, n, sigma * C, grad); grad[k] += sigma C z_{j0+k}
 */
#ifndef DPMPI_RNG_H
#define DPMPI_RNG_H

#include <stddef.h>
#include <stdint.h>

#define DPM_RNG_STREAM_VERSION 2

typedef struct {
  uint64_t k[2]; /* the AES-128 key: the 16 little-endian bytes of k[0], then k[1] */
} dpm_key;

/* Stream tags (< 256): distinct tags give independent streams under the same key. */
enum {
  DPM_STREAM_NOISE = 1,   /* Gaussian noise, index = global parameter index */
  DPM_STREAM_SAMPLE = 2,  /* Poisson sampling, index = global example index */
  DPM_STREAM_INIT = 3,    /* parameter initialization, step = layer number */
  DPM_STREAM_SHUFFLE = 4, /* data order, tests */
  DPM_STREAM_PCA = 5,     /* DP-PCA noise */
  DPM_STREAM_GENERATE = 6, /* text generation (dpmpi generate): step = token position */
  DPM_STREAM_COUNT = 7,    /* adaptive clipping's count noise (noise key), index = global threshold index */
  DPM_STREAM_CANARY = 8,   /* canary secrets (dpmpi audit canaries): step = canary number */
  DPM_STREAM_AUDIT = 9,    /* sampled exposure candidates (dpmpi audit exposure): step = sample number */
  DPM_STREAM_AUG = 10      /* augmentation views (dpmpi/train/augment.h), under the sampling key: index = example * K + view */
};

/* A key from a user seed (reproducible) — the seed is spread with splitmix64. */
dpm_key dpm_key_from_seed(uint64_t seed, uint64_t purpose);

/* A key from the operating system's CSPRNG (getrandom). Never stored anywhere by dpmpi. */
dpm_key dpm_key_secure(void);

/* The two 64-bit words of block `index` of stream (key, step, tag): AES-128 of the block whose 16 bytes are
 * index and step | tag << 56 (little endian). step < 2^40 (larger is an internal error). */
void dpm_rng_block(const dpm_key *key, uint64_t index, uint64_t step, unsigned tag, uint64_t out[2]);

/* Words w0 .. w0 + n - 1 of stream (key, step, tag): word w is word w % 2 of block w / 2 (the counter-mode
 * key stream), vectorized like the normals. */
void dpm_rng_words(const dpm_key *key, uint64_t step, unsigned tag, uint64_t w0, size_t n, uint64_t *out);

/* Uniform double in [0, 1) from 53 high bits; in (0, 1] with dpm_u01_open0. */
static inline double dpm_u01(uint64_t x) { return (double)(x >> 11) * 0x1.0p-53; }
static inline double dpm_u01_open0(uint64_t x) { return ((double)(x >> 11) + 1.0) * 0x1.0p-53; }

/* Standard normal number j of the stream (key, step, tag). */
double dpm_gauss_at(const dpm_key *key, uint64_t step, unsigned tag, uint64_t j);

/* out[k] += (float)(scale * z_{j0+k}) for k in [0, n), z_j = dpm_gauss_at(key, step, tag, j): the same
 * values whatever j0, n and the implementation. About 0.3-0.6 ns per draw with AVX-512 (bench_breakdown). */
void dpm_gauss_add(const dpm_key *key, uint64_t step, unsigned tag, uint64_t j0, size_t n, double scale,
                   float *out);

/* Bernoulli(q) decision for index i at step t on stream tag (word i % 2 of block i / 2 below the threshold
 * floor(q 2^64), as dpm_sample_shard decides): 1 with probability floor(q 2^64) / 2^64 (q
 * rounded down by less than 2^-64, never above q); q >= 1 always 1, q <= 0 never. */
int dpm_bernoulli_at(const dpm_key *key, uint64_t step, unsigned tag, uint64_t i, double q);

/* The implementations of the streams. All give the same numbers; the default is the fastest the CPU has
 * (environment DPMPI_RNG=scalar|avx2|avx512 overrides it, e.g. to compare). */
typedef enum { DPM_RNG_SCALAR, DPM_RNG_AVX2, DPM_RNG_AVX512, DPM_RNG_IMPLS } dpm_rng_impl;
const char *dpm_rng_impl_name(dpm_rng_impl impl);                         /* "scalar", "avx2", "avx512" */
int dpm_rng_impl_available(dpm_rng_impl impl);                            /* 1 if this CPU can run it */
dpm_rng_impl dpm_rng_impl_current(void);
/* Select impl for this process (tests, benchmarks); -1 if the CPU cannot run it (nothing changes). Not
 * thread-safe against concurrent draws. */
int dpm_rng_impl_select(dpm_rng_impl impl);

#endif
