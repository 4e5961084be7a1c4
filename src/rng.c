/* Philox4x64-10 counter-based generator, secret keys from getrandom, Gaussian and Bernoulli draws
 * addressed by (key, step, stream, index): see dpmpi/rng.h. */
#include "dpmpi/rng.h"

#include <errno.h>
#include <math.h>
#include <sys/random.h>

#include "dpmpi/common.h"

#define PHILOX_M0 0xD2E7470EE14C6C93ULL
#define PHILOX_M1 0xCA5A826395121157ULL
#define PHILOX_W0 0x9E3779B97F4A7C15ULL
#define PHILOX_W1 0xBB67AE8584CAA73BULL

static inline void mulhilo(uint64_t a, uint64_t b, uint64_t *hi, uint64_t *lo) {
  __uint128_t p = (__uint128_t)a * b;
  *hi = (uint64_t)(p >> 64);
  *lo = (uint64_t)p;
}

void dpm_philox(const dpm_key *key, const uint64_t ctr[4], uint64_t out[4]) {
  uint64_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
  uint64_t k0 = key->k[0], k1 = key->k[1];
  for (int round = 0; round < 10; round++) {
    uint64_t hi0, lo0, hi1, lo1;
    mulhilo(PHILOX_M0, c0, &hi0, &lo0);
    mulhilo(PHILOX_M1, c2, &hi1, &lo1);
    uint64_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += PHILOX_W0;
    k1 += PHILOX_W1;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

dpm_key dpm_key_from_seed(uint64_t seed, uint64_t purpose) {
  uint64_t s = seed ^ (purpose * 0xA0761D6478BD642FULL);
  dpm_key key;
  key.k[0] = splitmix64(&s);
  key.k[1] = splitmix64(&s);
  return key;
}

dpm_key dpm_key_secure(void) {
  dpm_key key;
  unsigned char *p = (unsigned char *)key.k;
  size_t got = 0;
  while (got < sizeof key.k) {
    ssize_t r = getrandom(p + got, sizeof key.k - got, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      dpm_fatal("getrandom failed: cannot draw a secret noise key");
    }
    got += (size_t)r;
  }
  return key;
}

void dpm_gauss4(const dpm_key *key, const uint64_t ctr[4], double out[4]) {
  uint64_t r[4];
  dpm_philox(key, ctr, r);
  for (int p = 0; p < 2; p++) {
    double u1 = dpm_u01_open0(r[2 * p]), u2 = dpm_u01(r[2 * p + 1]);
    double rad = sqrt(-2.0 * log(u1)), ang = 2.0 * M_PI * u2;
    out[2 * p] = rad * cos(ang);
    out[2 * p + 1] = rad * sin(ang);
  }
}

double dpm_gauss_at(const dpm_key *key, uint64_t step, uint64_t tag, uint64_t j) {
  uint64_t ctr[4] = {j / 4, step, tag, 0};
  double z[4];
  dpm_gauss4(key, ctr, z);
  return z[j % 4];
}

void dpm_gauss_add(const dpm_key *key, uint64_t step, uint64_t tag, uint64_t j0, size_t n, double scale,
                   float *out) {
  size_t k = 0;
  while (k < n) {
    uint64_t j = j0 + k, block = j / 4;
    uint64_t ctr[4] = {block, step, tag, 0};
    double z[4];
    dpm_gauss4(key, ctr, z);
    for (uint64_t e = j % 4; e < 4 && k < n; e++, k++) out[k] += (float)(scale * z[e]);
  }
}

int dpm_bernoulli_at(const dpm_key *key, uint64_t step, uint64_t tag, uint64_t i, double q) {
  if (q >= 1.0) return 1;
  if (q <= 0.0) return 0;
  uint64_t ctr[4] = {i, step, tag, 0}, r[4];
  dpm_philox(key, ctr, r);
  /* threshold = floor(q * 2^64), exact for q in (0,1) as a double */
  uint64_t threshold = (uint64_t)ldexp(q, 64);
  return r[0] < threshold;
}
