/* The counter-based streams of dpmpi/core/rng.h: keys (splitmix64 seeds, getrandom), AES-128 blocks of the
 * counter (index, step, tag, sub) through a per-thread cache of key schedules, the portable kernel of normals
 * (groups of 16 Box-Muller draws) and the single draws, and the choice of kernel at run time (noise_avx2.c,
 * noise_avx512.c). The stream's definition is in core/noise.h. */
#include "dpmpi/core/rng.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core/noise.h"
#include "dpmpi/core/common.h"

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

/* ---- implementations ---------------------------------------------------------------------------- */

static const char *IMPL_NAME[DPM_RNG_IMPLS] = {"scalar", "avx2", "avx512"};
static const dpm_gauss_kernel KERNEL[DPM_RNG_IMPLS] = {dpm_gauss_add_scalar, dpm_gauss_add_avx2, dpm_gauss_add_avx512};
static const dpm_words_kernel WORDS[DPM_RNG_IMPLS] = {dpm_words_scalar, dpm_words_avx2, dpm_words_avx512};
static dpm_rng_impl current = DPM_RNG_SCALAR;
static pthread_once_t impl_once = PTHREAD_ONCE_INIT;

const char *dpm_rng_impl_name(dpm_rng_impl impl) { return impl < DPM_RNG_IMPLS ? IMPL_NAME[impl] : "?"; }

#if defined(__x86_64__)
#include <cpuid.h>
/* VAES: CPUID leaf 7, ECX bit 9 (read directly: clang 14's __builtin_cpu_supports does not know "vaes") */
static int has_vaes(void) {
  unsigned a, b, c, d;
  return __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((c >> 9) & 1);
}
#endif

int dpm_rng_impl_available(dpm_rng_impl impl) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  switch (impl) {
    case DPM_RNG_SCALAR: return 1;
    case DPM_RNG_AVX2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("aes") && __builtin_cpu_supports("fma");
    case DPM_RNG_AVX512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
             __builtin_cpu_supports("avx512dq") && has_vaes() && __builtin_cpu_supports("aes") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default: return 0;
  }
#else
  return impl == DPM_RNG_SCALAR;
#endif
}

static void impl_init(void) {
  current = DPM_RNG_SCALAR;
  for (int i = DPM_RNG_IMPLS - 1; i > 0; i--)
    if (dpm_rng_impl_available((dpm_rng_impl)i)) {
      current = (dpm_rng_impl)i;
      break;
    }
  const char *env = getenv("DPMPI_RNG");
  if (env && *env) {
    for (int i = 0; i < DPM_RNG_IMPLS; i++)
      if (strcmp(env, IMPL_NAME[i]) == 0) {
        if (!dpm_rng_impl_available((dpm_rng_impl)i))
          dpm_fatal("DPMPI_RNG=%s: this CPU cannot run it (it lacks the instructions)", env);
        current = (dpm_rng_impl)i;
        return;
      }
    dpm_fatal("DPMPI_RNG=%s: expected scalar, avx2 or avx512", env);
  }
}

dpm_rng_impl dpm_rng_impl_current(void) {
  pthread_once(&impl_once, impl_init);
  return current;
}

int dpm_rng_impl_select(dpm_rng_impl impl) {
  pthread_once(&impl_once, impl_init);
  if (impl >= DPM_RNG_IMPLS || !dpm_rng_impl_available(impl)) return -1;
  current = impl;
  return 0;
}

/* ---- blocks --------------------------------------------------------------------------------------- */

static void put_le64(uint8_t *p, uint64_t v) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(p, &v, 8);
#else
  for (int b = 0; b < 8; b++) p[b] = (uint8_t)(v >> (8 * b));
#endif
}
static uint64_t get_le64(const uint8_t *p) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
#else
  uint64_t v = 0;
  for (int b = 7; b >= 0; b--) v = v << 8 | p[b];
  return v;
#endif
}

void dpm_stream_block(const dpm_stream_key *sk, uint64_t index, uint64_t step, unsigned tag, unsigned sub,
                      uint64_t out[2]) {
  uint8_t in[16], ct[16];
  put_le64(in, index);
  put_le64(in + 8, dpm_stream_hi(step, tag, sub));
#if defined(__x86_64__)
  if (sk->ni)
    dpm_aes128_encrypt_ni(&sk->ks, in, ct);
  else
#endif
    dpm_aes128_encrypt_portable(&sk->ks, in, ct);
  out[0] = get_le64(ct), out[1] = get_le64(ct + 8);
}

void dpm_words_scalar(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t b0, size_t nblocks, uint64_t *out) {
  for (size_t k = 0; k < nblocks; k++) dpm_stream_block(sk, b0 + k, step, tag, 0, out + 2 * k);
}

/* Key schedules of the last few keys this thread used (a step alternates the sampling and the noise key),
 * for the implementation in use. */
#define KEY_CACHE 4
static __thread struct {
  dpm_key key;
  dpm_stream_key sk;
  int valid;
} key_cache[KEY_CACHE];
static __thread int key_cache_next;

static const dpm_stream_key *stream_key(const dpm_key *key, uint64_t step, unsigned tag) {
  if (step >> 40 || tag > 255) dpm_fatal("internal error: random stream step %llu or tag %u out of range",
                                         (unsigned long long)step, tag);
  const int ni = dpm_rng_impl_current() != DPM_RNG_SCALAR;
  for (int c = 0; c < KEY_CACHE; c++)
    if (key_cache[c].valid && key_cache[c].sk.ni == ni && key_cache[c].key.k[0] == key->k[0] &&
        key_cache[c].key.k[1] == key->k[1])
      return &key_cache[c].sk;
  const int c = key_cache_next;
  key_cache_next = (c + 1) % KEY_CACHE;
  uint8_t bytes[16];
  put_le64(bytes, key->k[0]);
  put_le64(bytes + 8, key->k[1]);
  dpm_aes128_expand(bytes, &key_cache[c].sk.ks);
  key_cache[c].sk.ni = ni;
  key_cache[c].key = *key;
  key_cache[c].valid = 1;
  return &key_cache[c].sk;
}

void dpm_rng_block(const dpm_key *key, uint64_t index, uint64_t step, unsigned tag, uint64_t out[2]) {
  dpm_stream_block(stream_key(key, step, tag), index, step, tag, 0, out);
}

void dpm_rng_words(const dpm_key *key, uint64_t step, unsigned tag, uint64_t w0, size_t n, uint64_t *out) {
  if (n == 0) return;
  const dpm_stream_key *sk = stream_key(key, step, tag);
  uint64_t w[2];
  if (w0 % 2) { /* the odd head: word 1 of its block */
    dpm_stream_block(sk, w0 / 2, step, tag, 0, w);
    *out++ = w[1], w0++, n--;
  }
  if (n / 2) WORDS[dpm_rng_impl_current()](sk, step, tag, w0 / 2, n / 2, out);
  if (n % 2) {
    dpm_stream_block(sk, (w0 + n) / 2, step, tag, 0, w);
    out[n - 1] = w[0];
  }
}

int dpm_bernoulli_at(const dpm_key *key, uint64_t step, unsigned tag, uint64_t i, double q) {
  if (q >= 1.0) return 1;
  if (q <= 0.0) return 0;
  uint64_t r[2];
  dpm_rng_block(key, i / 2, step, tag, r);
  /* threshold = floor(q * 2^64), exact for q in (0,1) as a double */
  return r[i % 2] < (uint64_t)ldexp(q, 64);
}

/* ---- normals (the definition is in core/noise.h) -------------------------------------------------- */

double dpm_noise_K_extra(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t pair_index) {
  double K = 13;
  for (unsigned sub = 1; sub < 1u << 16; sub++) {
    uint64_t w[2];
    dpm_stream_block(sk, pair_index, step, tag, sub, w);
    for (int i = 0; i < 2; i++) {
      if (w[i]) return K + __builtin_clzll(w[i]);
      K += 64;
    }
  }
  dpm_fatal("internal error: the radius of normal pair %llu found no set bit in 2^23 words",
            (unsigned long long)pair_index);
}

/* With FMA hardware, fma() is one instruction instead of a library routine; both round once, so the clones
 * give the same bits (the file is compiled with -ffp-contract=off: no other multiply-add is fused). */
#if defined(__x86_64__)
__attribute__((target_clones("fma", "default")))
#endif
void dpm_noise_group(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t g, double z[16]) {
  uint64_t W[16];
  for (int q = 0; q < 8; q++) dpm_stream_block(sk, 8 * g + (uint64_t)q, step, tag, 0, W + 2 * q);
  for (int l = 0; l < 8; l++) {
    const uint64_t U = W[l];
    const double K = U & 0xFFF ? dpm_noise_K(U) : dpm_noise_K_extra(sk, step, tag, 8 * g + (uint64_t)l);
    dpm_noise_pair(U, K, W[8 + l], z + l, z + 8 + l);
  }
}

void dpm_gauss_add_scalar(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n, double scale,
                          float *out) {
  DPM_ASSERT(j0 % 16 == 0);
  for (size_t k = 0; k < n; k += 16) {
    double z[16];
    dpm_noise_group(sk, step, tag, (j0 + k) / 16, z);
    const size_t m = n - k < 16 ? n - k : 16;
    for (size_t i = 0; i < m; i++) out[k + i] += (float)(scale * z[i]);
  }
}

void dpm_gauss_draws_scalar(const dpm_stream_key *sk, uint64_t step, unsigned tag, uint64_t j0, size_t n, double *z) {
  DPM_ASSERT(j0 % 16 == 0 && n % 16 == 0);
  for (size_t k = 0; k < n; k += 16) dpm_noise_group(sk, step, tag, (j0 + k) / 16, z + k);
}

#if defined(__x86_64__)
__attribute__((target_clones("fma", "default")))
#endif
double dpm_gauss_at(const dpm_key *key, uint64_t step, unsigned tag, uint64_t j) {
  const dpm_stream_key *sk = stream_key(key, step, tag);
  const uint64_t g = j / 16, l = j % 8;
  uint64_t u[2], a[2];
  dpm_stream_block(sk, 8 * g + l / 2, step, tag, 0, u);     /* W[l] */
  dpm_stream_block(sk, 8 * g + 4 + l / 2, step, tag, 0, a); /* W[8 + l] */
  const uint64_t U = u[l % 2];
  const double K = U & 0xFFF ? dpm_noise_K(U) : dpm_noise_K_extra(sk, step, tag, 8 * g + l);
  double zc, zs;
  dpm_noise_pair(U, K, a[l % 2], &zc, &zs);
  return j % 16 < 8 ? zc : zs;
}

void dpm_gauss_add(const dpm_key *key, uint64_t step, unsigned tag, uint64_t j0, size_t n, double scale,
                   float *out) {
  if (n == 0) return;
  const dpm_stream_key *sk = stream_key(key, step, tag);
  if (j0 % 16) { /* the head, up to the first whole group */
    double z[16];
    dpm_noise_group(sk, step, tag, j0 / 16, z);
    size_t k = 0;
    for (size_t i = j0 % 16; i < 16 && k < n; i++, k++) out[k] += (float)(scale * z[i]);
    j0 += k, out += k, n -= k;
  }
  if (n) KERNEL[dpm_rng_impl_current()](sk, step, tag, j0, n, scale, out);
}
