/* Philox4x64-10 counter-based generator, secret keys from getrandom, Gaussian and Bernoulli draws
 * addressed by (key, step, stream, index): see dpmpi/core/rng.h. */
#include "dpmpi/core/rng.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sys/random.h>

#include "dpmpi/core/common.h"

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
  /* fully unrolled: the rounds then overlap with the neighbouring blocks' (2x faster here) */
#pragma GCC unroll 10
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

/* Gaussian draws: the ziggurat method with 128 layers (Marsaglia and Tsang 2000, in Doornik's 2005
 * ZIGNOR form, which takes the layer index and the uniform from independent bits). It is exact given
 * exact uniforms and about 5x faster than Box-Muller here, which matters because every parameter gets
 * a fresh draw every step. Draw number e (0..3) of counter block b first uses word e of
 * philox(b, step, tag, 0): its top 53 bits are the uniform, its low 7 bits the layer. The rare draws
 * that fall outside the rectangle core (about 1.3%) take further uniforms from
 * philox(b, step, tag, (e + 1) << 32 | k), k = 0, 1, ..., so every draw is still a pure function of
 * (key, step, tag, index). */
#define ZIG_C 128
#define ZIG_R 3.442619855899
#define ZIG_V 9.91256303526217e-3

static double zig_x[ZIG_C + 1], zig_ratio[ZIG_C];
static pthread_once_t zig_once = PTHREAD_ONCE_INIT;

static void zig_init(void) {
  double f = exp(-0.5 * ZIG_R * ZIG_R);
  zig_x[0] = ZIG_V / f;
  zig_x[1] = ZIG_R;
  zig_x[ZIG_C] = 0;
  for (int i = 2; i < ZIG_C; i++) {
    zig_x[i] = sqrt(-2 * log(ZIG_V / zig_x[i - 1] + f));
    f = exp(-0.5 * zig_x[i] * zig_x[i]);
  }
  for (int i = 0; i < ZIG_C; i++) zig_ratio[i] = zig_x[i + 1] / zig_x[i];
}

/* A source of further uniforms for draw e of block ctr[0]. */
typedef struct {
  const dpm_key *key;
  uint64_t ctr[4], words[4];
  int used;
} zig_extra;

static double extra_u01_open0(zig_extra *z) {
  if (z->used == 4) {
    dpm_philox(z->key, z->ctr, z->words);
    z->ctr[3]++;
    z->used = 0;
  }
  return dpm_u01_open0(z->words[z->used++]);
}

/* One standard normal from the 64-bit word w, with extra uniforms from z when w alone cannot decide. */
static double zig_draw(uint64_t w, zig_extra *z) {
  for (;;) {
    double u = 2.0 * dpm_u01(w) - 1.0; /* top 53 bits */
    int i = (int)(w & (ZIG_C - 1));    /* low 7 bits */
    if (fabs(u) < zig_ratio[i]) return u * zig_x[i];
    if (i == 0) { /* the tail beyond R (Marsaglia 1964) */
      double a, b;
      do {
        a = log(extra_u01_open0(z)) / ZIG_R;
        b = log(extra_u01_open0(z));
      } while (-2 * b < a * a);
      return u < 0 ? a - ZIG_R : ZIG_R - a;
    }
    double x = u * zig_x[i];
    double f0 = exp(-0.5 * (zig_x[i] * zig_x[i] - x * x)), f1 = exp(-0.5 * (zig_x[i + 1] * zig_x[i + 1] - x * x));
    if (f1 + extra_u01_open0(z) * (f0 - f1) < 1.0) return x;
    /* rejected: a fresh word for the next try */
    if (z->used == 4) {
      dpm_philox(z->key, z->ctr, z->words);
      z->ctr[3]++;
      z->used = 0;
    }
    w = z->words[z->used++];
  }
}

/* The rare draws outside the rectangle core (about 1.3%), kept out of line so the common path stays short. */
static __attribute__((noinline)) double gauss_slow(const dpm_key *key, const uint64_t ctr[4], int e, uint64_t w) {
  zig_extra z = {key, {ctr[0], ctr[1], ctr[2], ((uint64_t)(e + 1) << 32)}, {0, 0, 0, 0}, 4};
  return zig_draw(w, &z);
}

static inline double gauss_from_word(const dpm_key *key, const uint64_t ctr[4], int e, uint64_t w) {
  int i = (int)(w & (ZIG_C - 1));
  double u = 2.0 * dpm_u01(w) - 1.0;
  if (__builtin_expect(fabs(u) < zig_ratio[i], 1)) return u * zig_x[i];
  return gauss_slow(key, ctr, e, w);
}

void dpm_gauss4(const dpm_key *key, const uint64_t ctr[4], double out[4]) {
  pthread_once(&zig_once, zig_init);
  uint64_t r[4];
  dpm_philox(key, ctr, r);
  for (int e = 0; e < 4; e++) out[e] = gauss_from_word(key, ctr, e, r[e]);
}

double dpm_gauss_at(const dpm_key *key, uint64_t step, uint64_t tag, uint64_t j) {
  uint64_t ctr[4] = {j / 4, step, tag, 0};
  double z[4];
  dpm_gauss4(key, ctr, z);
  return z[j % 4];
}

void dpm_gauss_add(const dpm_key *key, uint64_t step, uint64_t tag, uint64_t j0, size_t n, double scale,
                   float *out) {
  pthread_once(&zig_once, zig_init);
  size_t k = 0;
  /* head: up to the first block boundary */
  while (k < n && (j0 + k) % 4 != 0) {
    out[k] += (float)(scale * dpm_gauss_at(key, step, tag, j0 + k));
    k++;
  }
  /* body: whole blocks */
  for (; n - k >= 4; k += 4) {
    uint64_t ctr[4] = {(j0 + k) / 4, step, tag, 0}, r[4];
    dpm_philox(key, ctr, r);
    for (int e = 0; e < 4; e++) out[k + e] += (float)(scale * gauss_from_word(key, ctr, e, r[e]));
  }
  /* tail */
  for (; k < n; k++) out[k] += (float)(scale * dpm_gauss_at(key, step, tag, j0 + k));
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
