/* The random streams (dpmpi/core/rng.h, src/core/rng.c, aes.c, noise_*.c) against independent references:
 * AES-128 against the FIPS-197 and SP 800-38A vectors (portable and AES-NI) and against OpenSSL on stream
 * blocks; every implementation (scalar, AVX2, AVX-512) bit for bit the same numbers on ranges of every
 * alignment; the documented definition of a draw recomputed here from the blocks and the tables; the normals'
 * moments, tail frequencies and a 240-bin histogram over 10^9 draws; the radius's conditional law in the far tail
 * (Kolmogorov-Smirnov) and its exponent's geometric law; split invariance; Bernoulli rates; keys. */
// ctest: timeout=600
#include <stdlib.h>
#include <string.h>

#include "core/noise.h"
#include "dpmpi/core/rng.h"
#include "testing.h"

static void hex16(const char *s, uint8_t out[16]) {
  for (int b = 0; b < 16; b++) {
    unsigned v;
    sscanf(s + 2 * b, "%2x", &v);
    out[b] = (uint8_t)v;
  }
}

static void test_aes_vectors(void) {
  /* FIPS-197 Appendix C.1, then SP 800-38A F.1.1 (ECB-AES128) */
  const char *v[][3] = {
      {"000102030405060708090a0b0c0d0e0f", "00112233445566778899aabbccddeeff", "69c4e0d86a7b0430d8cdb78070b4c55a"},
      {"2b7e151628aed2a6abf7158809cf4f3c", "6bc1bee22e409f96e93d7e117393172a", "3ad77bb40d7a3660a89ecaf32466ef97"},
      {"2b7e151628aed2a6abf7158809cf4f3c", "ae2d8a571e03ac9c9eb76fac45af8e51", "f5d3d58503b9699de785895a96fdbaaf"},
      {"2b7e151628aed2a6abf7158809cf4f3c", "30c81c46a35ce411e5fbc1191a0a52ef", "43b1cd7f598ece23881b00e3ed030688"},
      {"2b7e151628aed2a6abf7158809cf4f3c", "f69f2445df4f9b17ad2b417be66c3710", "7b0c785e27e8ad3f8223207104725dd4"},
  };
  /* FIPS-197 A.1: the last round key of 2b7e1516... */
  uint8_t key[16], last[16];
  hex16(v[1][0], key);
  hex16("d014f9a8c9ee2589e13f0cc8b6630ca6", last);
  dpm_aes128 ks;
  dpm_aes128_expand(key, &ks);
  CHECK(memcmp(ks.rk + 160, last, 16) == 0, "AES-128 key expansion: last round key");
  for (size_t t = 0; t < sizeof v / sizeof v[0]; t++) {
    uint8_t in[16], want[16], got[16];
    hex16(v[t][0], key), hex16(v[t][1], in), hex16(v[t][2], want);
    dpm_aes128_expand(key, &ks);
    dpm_aes128_encrypt_portable(&ks, in, got);
    CHECK(memcmp(got, want, 16) == 0, "portable AES-128, vector %zu", t);
    if (dpm_rng_impl_available(DPM_RNG_AVX2)) {
      memset(got, 0, 16);
      dpm_aes128_encrypt_ni(&ks, in, got);
      CHECK(memcmp(got, want, 16) == 0, "AES-NI AES-128, vector %zu", t);
    }
  }
}

/* The stream's blocks against OpenSSL (an independent AES): 64 blocks of a seeded stream, with the
 * counter bytes built here from the documented layout. */
static void test_blocks_against_openssl(void) {
  const dpm_key key = dpm_key_from_seed(2026, 7);
  const uint64_t step = 123456789, idx0 = 0xFFFFFFFFFFFFFFF0ULL; /* crosses 2^64 - 1 -> 0 */
  const unsigned tag = DPM_STREAM_NOISE;
  char cmd[256], hex[33];
  for (int b = 0; b < 16; b++) sprintf(hex + 2 * b, "%02x", (unsigned)(key.k[b / 8] >> (8 * (b % 8)) & 255));
  char in_path[] = "/tmp/dpm_aes_XXXXXX";
  int fd = mkstemp(in_path);
  CHECK(fd >= 0, "mkstemp");
  if (fd < 0) return;
  FILE *f = fdopen(fd, "wb");
  for (uint64_t i = 0; i < 64; i++) {
    uint64_t words[2] = {idx0 + i, step | (uint64_t)tag << 56};
    for (int w = 0; w < 2; w++)
      for (int b = 0; b < 8; b++) fputc((int)(words[w] >> (8 * b) & 255), f);
  }
  fclose(f);
  snprintf(cmd, sizeof cmd, "openssl enc -aes-128-ecb -nopad -K %s -in %s 2>&1", hex, in_path);
  FILE *p = popen(cmd, "r");
  uint8_t ct[64 * 16];
  size_t got = p ? fread(ct, 1, sizeof ct, p) : 0;
  int rc = p ? pclose(p) : -1;
  remove(in_path);
  CHECK(rc == 0 && got == sizeof ct, "openssl enc failed (rc %d, %zu bytes): scripts/install-deps.sh installs openssl",
        rc, got);
  if (rc != 0 || got != sizeof ct) return;
  for (int impl = 0; impl < DPM_RNG_IMPLS; impl++) {
    if (dpm_rng_impl_select((dpm_rng_impl)impl)) continue;
    int same = 1;
    for (uint64_t i = 0; i < 64; i++) {
      uint64_t w[2], ref[2] = {0, 0};
      dpm_rng_block(&key, idx0 + i, step, tag, w);
      for (int b = 7; b >= 0; b--) ref[0] = ref[0] << 8 | ct[16 * i + b], ref[1] = ref[1] << 8 | ct[16 * i + 8 + b];
      same &= w[0] == ref[0] && w[1] == ref[1];
    }
    CHECK(same, "%s: stream blocks differ from OpenSSL's AES-128", dpm_rng_impl_name((dpm_rng_impl)impl));
  }
  dpm_rng_impl_select(DPM_RNG_SCALAR);
}

/* Draw j recomputed in long double from the definition in core/noise.h (groups of 16 draws, pair l of group g
 * from words W[l] and W[8 + l] of blocks 8g .. 8g + 7): the library's value agrees to a few ulps. */
static void test_documented_draw(void) {
  const dpm_key key = dpm_key_from_seed(11, 1);
  const long double pi = acosl(-1.0L);
  double worst = 0;
  int checked = 0;
  for (uint64_t j = 1000; j < 5000; j++) {
    const uint64_t g = j / 16, l = j % 8;
    uint64_t u[2], a[2];
    dpm_rng_block(&key, 8 * g + l / 2, 77, DPM_STREAM_NOISE, u);
    dpm_rng_block(&key, 8 * g + 4 + l / 2, 77, DPM_STREAM_NOISE, a);
    const uint64_t U = u[l % 2], A = a[l % 2], e = U & 0xFFF;
    if (e == 0) continue; /* extra exponent words: test_radius_tail */
    int hb = 11; /* the highest set bit of e, counted here bit by bit: K = 12 - hb */
    while (!(e >> hb & 1)) hb--;
    const int K = 12 - hb;
    const long double u1 = ldexpl(1.0L + (long double)(U >> 12) * 0x1.0p-52L, -K);
    const long double th = ((long double)(A >> 61) + (long double)((A >> 9) & 0xFFFFFFFFFFFFFULL) * 0x1.0p-52L) * pi / 4;
    const long double rad = sqrtl(-2 * logl(u1)), ref = j % 16 < 8 ? rad * cosl(th) : rad * sinl(th);
    const double got = dpm_gauss_at(&key, 77, DPM_STREAM_NOISE, j);
    worst = fmax(worst, (double)(fabsl((long double)got - ref) / (fmaxl(rad, 1) * 0x1.0p-53L)));
    checked++;
  }
  CHECK(worst < 8 && checked > 3900, "dpm_gauss_at differs from the documented definition by %.2f units of "
        "2^-53 max(r, 1) (%d checked)", worst, checked);
}

/* Every implementation gives the scalar one's numbers on ranges of every start and length. */
static void test_implementations_agree(void) {
  const dpm_key key = dpm_key_from_seed(5, 1);
  const size_t n = 100003;
  const uint64_t starts[] = {0, 1, 2, 7, 31, 32, 33, (1ULL << 33) + 1, (1ULL << 48) - 7};
  float *ref = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
  for (size_t s = 0; s < sizeof starts / sizeof starts[0]; s++) {
    for (size_t k = 0; k < n; k++) ref[k] = (float)k * 1e-3f;
    dpm_rng_impl_select(DPM_RNG_SCALAR);
    dpm_gauss_add(&key, 9 + s, DPM_STREAM_NOISE, starts[s], n, 1.7, ref);
    for (int impl = 1; impl < DPM_RNG_IMPLS; impl++) {
      if (dpm_rng_impl_select((dpm_rng_impl)impl)) continue;
      const size_t lens[] = {n, 1, 2, 3, 31, 32, 33, 63, 100};
      for (size_t L = 0; L < sizeof lens / sizeof lens[0]; L++) {
        for (size_t k = 0; k < lens[L]; k++) got[k] = (float)k * 1e-3f;
        dpm_gauss_add(&key, 9 + s, DPM_STREAM_NOISE, starts[s], lens[L], 1.7, got);
        CHECK(memcmp(got, ref, lens[L] * sizeof(float)) == 0, "%s differs from scalar: start %llu, length %zu",
              dpm_rng_impl_name((dpm_rng_impl)impl), (unsigned long long)starts[s], lens[L]);
      }
    }
  }
  dpm_rng_impl_select(DPM_RNG_SCALAR);
  free(ref), free(got);
}

static void select_best(void) {
  for (int i = DPM_RNG_IMPLS - 1; i >= 0; i--)
    if (dpm_rng_impl_select((dpm_rng_impl)i) == 0) return;
}

/* The draws themselves (doubles, before the float rounding that would hide a last-bit difference) of the vector
 * kernels against the portable code with the portable AES: 2^20 draws, including the rare pairs with extra
 * exponent words (about 128) and the u1 >= 31/32 path (1/32 of the pairs). */
static void test_draws_bitwise(void) {
  const dpm_key key = dpm_key_from_seed(12, 1);
  uint8_t bytes[16];
  memcpy(bytes, key.k, 16); /* little-endian host */
  dpm_stream_key portable = {.ni = 0}, ni = {.ni = 1};
  dpm_aes128_expand(bytes, &portable.ks);
  dpm_aes128_expand(bytes, &ni.ks);
  const size_t n = 1 << 20;
  const uint64_t j0 = 16 * 12345;
  double *ref = malloc(n * sizeof(double)), *got = malloc(n * sizeof(double));
  dpm_gauss_draws_scalar(&portable, 31, DPM_STREAM_NOISE, j0, n, ref);
  int rare = 0;
  for (size_t k = 0; k < n; k += 16) {
    uint64_t w[2];
    for (int q = 0; q < 4; q++) {
      dpm_stream_block(&portable, (j0 + k) / 2 + (uint64_t)q, 31, DPM_STREAM_NOISE, 0, w);
      rare += (w[0] & 0xFFF) == 0, rare += (w[1] & 0xFFF) == 0;
    }
  }
  CHECK(rare > 60, "only %d pairs took the extra-exponent path", rare);
  if (dpm_rng_impl_available(DPM_RNG_AVX2)) {
    dpm_gauss_draws_avx2(&ni, 31, DPM_STREAM_NOISE, j0, n, got);
    CHECK(memcmp(got, ref, n * sizeof(double)) == 0, "avx2 draws differ from the portable ones");
  }
  if (dpm_rng_impl_available(DPM_RNG_AVX512)) {
    dpm_gauss_draws_avx512(&ni, 31, DPM_STREAM_NOISE, j0, n, got);
    CHECK(memcmp(got, ref, n * sizeof(double)) == 0, "avx512 draws differ from the portable ones");
  }
  /* and the single draw */
  int same = 1;
  for (size_t k = 0; k < 4096; k++) same &= dpm_gauss_at(&key, 31, DPM_STREAM_NOISE, j0 + k) == ref[k];
  CHECK(same, "dpm_gauss_at differs from the group's draws");
  printf("draws bit for bit: %zu draws, %d rare pairs, kernels:%s%s portable\n", n, rare,
         dpm_rng_impl_available(DPM_RNG_AVX512) ? " avx512" : "", dpm_rng_impl_available(DPM_RNG_AVX2) ? " avx2" : "");
  free(ref), free(got);
}

/* The key stream (dpm_rng_words) of every implementation against single blocks, any start and length. */
static void test_words(void) {
  const dpm_key key = dpm_key_from_seed(6, 2);
  const size_t n = 2000;
  uint64_t *ref = malloc(n * sizeof(uint64_t)), *got = malloc((n + 1) * sizeof(uint64_t));
  for (size_t k = 0; k < n; k += 2) {
    uint64_t w[2];
    dpm_rng_block(&key, 500 + k / 2, 3, DPM_STREAM_SAMPLE, w);
    ref[k] = w[0], ref[k + 1] = w[1];
  }
  for (int impl = 0; impl < DPM_RNG_IMPLS; impl++) {
    if (dpm_rng_impl_select((dpm_rng_impl)impl)) continue;
    const size_t offs[] = {0, 1, 2, 3, 33}, lens[] = {1, 2, 3, 31, 32, 33, 63, 64, 1000, 1999};
    for (size_t o = 0; o < sizeof offs / sizeof offs[0]; o++)
      for (size_t L = 0; L < sizeof lens / sizeof lens[0]; L++) {
        const size_t len = lens[L] + offs[o] > n ? n - offs[o] : lens[L];
        got[len] = 0xABCDEF;
        dpm_rng_words(&key, 3, DPM_STREAM_SAMPLE, 1000 + offs[o], len, got);
        CHECK(memcmp(got, ref + offs[o], len * sizeof(uint64_t)) == 0 && got[len] == 0xABCDEF,
              "%s: key stream differs at offset %zu, length %zu", dpm_rng_impl_name((dpm_rng_impl)impl), offs[o], len);
      }
  }
  dpm_rng_impl_select(DPM_RNG_SCALAR);
  free(ref), free(got);
}

static double normal_tail2(double t) { return erfc(t / sqrt(2.0)); } /* P(|Z| > t) */

/* 10^9 draws with the fastest implementation: moments, P(|Z| > t), a 240-bin histogram on [-6, 6). */
static void test_billion(void) {
  select_best();
  const dpm_key key = dpm_key_from_seed(42, 1);
  const size_t chunk = 1 << 20, chunks = 954; /* 1.0003e9 draws */
  const double n = (double)chunk * chunks;
  enum { BINS = 240, TAILS = 7 };
  static int64_t hist[BINS + 2];
  int64_t tail[TAILS] = {0};
  double m1 = 0, m2 = 0, m3 = 0, m4 = 0, zmax = 0;
  float *z = malloc(chunk * sizeof(float));
  for (size_t c = 0; c < chunks; c++) {
    memset(z, 0, chunk * sizeof(float));
    dpm_gauss_add(&key, 3, DPM_STREAM_NOISE, (uint64_t)c * chunk, chunk, 1.0, z);
    double s1 = 0, s2 = 0, s3 = 0, s4 = 0;
    for (size_t k = 0; k < chunk; k++) {
      const double v = z[k], v2 = v * v;
      s1 += v, s2 += v2, s3 += v2 * v, s4 += v2 * v2;
      const double av = fabs(v);
      if (av > zmax) zmax = av;
      for (int t = 0; t < TAILS && av > t; t++) tail[t]++;
      const double pos = (v + 6.0) * 20.0;
      hist[pos < 0 ? BINS : pos >= BINS ? BINS + 1 : (int)pos]++;
    }
    m1 += s1, m2 += s2, m3 += s3, m4 += s4;
  }
  free(z);
  m1 /= n, m2 /= n, m3 /= n, m4 /= n;
  /* 6-sigma bounds: sd(mean) = 1/sqrt(n), sd(m2) = sqrt(2/n), sd(m3) = sqrt(15/n), sd(m4) = sqrt(96/n) */
  CHECK(fabs(m1) < 6 / sqrt(n), "mean %g", m1);
  CHECK(fabs(m2 - 1) < 6 * sqrt(2 / n), "variance %.9f", m2);
  CHECK(fabs(m3) < 6 * sqrt(15 / n), "third moment %g", m3);
  CHECK(fabs(m4 - 3) < 6 * sqrt(96 / n), "fourth moment %.9f", m4);
  for (int t = 1; t < TAILS; t++) {
    const double p = normal_tail2(t), sd = sqrt(n * p * (1 - p));
    /* 6 sd, and for the rare far tail (t = 6: 2 expected) a Poisson bound: P(X > 2 + 6 sd + 10) < 1e-8 */
    CHECK(fabs((double)tail[t] - n * p) < 6 * sd + (t >= 5 ? 10 : 0), "P(|z| > %d): %lld draws, expected %.1f", t,
          (long long)tail[t], n * p);
  }
  double chi2 = 0;
  for (int b = 0; b < BINS + 2; b++) {
    double p;
    if (b == BINS) p = 0.5 * erfc(6 / sqrt(2.0));
    else if (b == BINS + 1) p = 0.5 * erfc(6 / sqrt(2.0));
    else p = 0.5 * (erfc((-6 + b / 20.0) / sqrt(2.0)) - erfc((-6 + (b + 1) / 20.0) / sqrt(2.0)));
    chi2 += ((double)hist[b] - n * p) * ((double)hist[b] - n * p) / (n * p);
  }
  /* 241 degrees of freedom: mean 241, sd 22; 6 sd above the mean has false-failure odds below 1e-6 */
  CHECK(chi2 < 241 + 6 * 22, "histogram chi-square %.1f over 242 bins", chi2);
  printf("10^9 draws (%s): mean %.2e, var %.7f, m3 %.2e, m4 %.6f, max |z| %.3f, chi-square %.1f (241 dof), "
         "P(|z|>4) %lld / %.0f, P(|z|>5) %lld / %.1f, P(|z|>6) %lld / %.2f\n",
         dpm_rng_impl_name(dpm_rng_impl_current()), m1, m2, m3, m4, zmax, chi2, (long long)tail[4],
         n * normal_tail2(4), (long long)tail[5], n * normal_tail2(5), (long long)tail[6], n * normal_tail2(6));
  dpm_rng_impl_select(DPM_RNG_SCALAR);
}

/* The far tail, forced: radius words with no exponent bits (e = 0, probability 2^-12 per pair) take K from the
 * extra blocks. Given that, u1 = exp(-r^2 / 2) must be uniform on (0, 2^-12) (KS over 10^6 pairs, r from the
 * pair itself) and K - 12 geometric (P(K = 13 + i) = 2^-(i + 1)). */
static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void test_radius_tail(void) {
  const dpm_key key = dpm_key_from_seed(8, 1);
  dpm_stream_key sk = {.ni = dpm_rng_impl_available(DPM_RNG_AVX2)};
  uint8_t bytes[16];
  memcpy(bytes, key.k, 16); /* little-endian host */
  dpm_aes128_expand(bytes, &sk.ks);
  const size_t n = 1000000;
  double *v = malloc(n * sizeof(double));
  int64_t geo[8] = {0};
  for (size_t k = 0; k < n; k++) {
    uint64_t w[2];
    dpm_stream_block(&sk, k, 5, DPM_STREAM_NOISE, 0, w);
    const uint64_t U = w[0] & ~0xFFFULL, A = w[1];
    const double K = dpm_noise_K_extra(&sk, 5, DPM_STREAM_NOISE, k);
    if (K - 13 < 8) geo[(int)(K - 13)]++;
    double zc, zs;
    dpm_noise_pair(U, K, A, &zc, &zs);
    v[k] = exp(-0.5 * (zc * zc + zs * zs)) * 0x1.0p12; /* uniform on (0, 1) */
  }
  qsort(v, n, sizeof(double), cmp_double);
  double D = 0;
  for (size_t k = 0; k < n; k++) D = fmax(D, fmax(fabs(v[k] - (double)k / n), fabs((double)(k + 1) / n - v[k])));
  /* KS: P(sqrt(n) D > 2.6) < 3e-6 */
  CHECK(sqrt((double)n) * D < 2.6, "radius beyond u1 = 2^-12: KS statistic sqrt(n) D = %.3f", sqrt((double)n) * D);
  for (int i = 0; i < 8; i++) {
    const double p = ldexp(1, -(i + 1)), sd = sqrt(n * p * (1 - p));
    CHECK(fabs((double)geo[i] - n * p) < 6 * sd, "P(K = %d) = %g, expected %g", 13 + i, (double)geo[i] / n, p);
  }
  printf("radius tail (u1 < 2^-12, r > %.3f): KS sqrt(n) D = %.3f over %zu forced pairs; P(K = 13) = %.4f\n",
         sqrt(24 * log(2.0)), sqrt((double)n) * D, n, (double)geo[0] / n);
  free(v);
}

static void test_split_invariance(void) {
  dpm_key key = dpm_key_from_seed(1, 2);
  const size_t n = 1003;
  float *whole = calloc(n, sizeof(float)), *parts = calloc(n, sizeof(float));
  dpm_gauss_add(&key, 3, DPM_STREAM_NOISE, 100, n, 2.5, whole);
  size_t cuts[] = {0, 1, 2, 7, 400, 401, 999, n};
  for (size_t c = 0; c + 1 < sizeof cuts / sizeof cuts[0]; c++)
    dpm_gauss_add(&key, 3, DPM_STREAM_NOISE, 100 + cuts[c], cuts[c + 1] - cuts[c], 2.5, parts + cuts[c]);
  CHECK(memcmp(whole, parts, n * sizeof(float)) == 0, "split ranges give different noise");
  int same = 1;
  for (size_t k = 0; k < n; k++) same &= whole[k] == (float)(2.5 * dpm_gauss_at(&key, 3, DPM_STREAM_NOISE, 100 + k));
  CHECK(same, "dpm_gauss_at disagrees with dpm_gauss_add");
  float other[4] = {0};
  dpm_gauss_add(&key, 4, DPM_STREAM_NOISE, 100, 4, 2.5, other);
  CHECK(memcmp(other, whole, sizeof other) != 0, "different steps give the same noise");
  dpm_gauss_add(&key, 3, DPM_STREAM_PCA, 100, 4, 2.5, other);
  CHECK(memcmp(other, whole, sizeof other) != 0, "different tags give the same noise");
  free(whole);
  free(parts);
}

static void test_bernoulli_rate(void) {
  dpm_key key = dpm_key_from_seed(9, 3);
  const int n = 200000;
  double qs[] = {0.004, 0.1, 0.5};
  for (int a = 0; a < 3; a++) {
    int hits = 0;
    for (int i = 0; i < n; i++) hits += dpm_bernoulli_at(&key, 5, DPM_STREAM_SAMPLE, (uint64_t)i, qs[a]);
    double sd = sqrt(qs[a] * (1 - qs[a]) / n);
    CHECK(fabs((double)hits / n - qs[a]) < 6 * sd, "q=%g rate %g", qs[a], (double)hits / n);
  }
  CHECK(dpm_bernoulli_at(&key, 1, 2, 3, 1.0) == 1, "q = 1 must always sample");
  CHECK(dpm_bernoulli_at(&key, 1, 2, 3, 0.0) == 0, "q = 0 must never sample");
}

static void test_keys(void) {
  dpm_key a = dpm_key_secure(), b = dpm_key_secure();
  CHECK(memcmp(&a, &b, sizeof a) != 0, "two secure keys are equal");
  dpm_key s1 = dpm_key_from_seed(5, 1), s2 = dpm_key_from_seed(5, 1), s3 = dpm_key_from_seed(5, 2);
  CHECK(memcmp(&s1, &s2, sizeof s1) == 0, "seeded keys not reproducible");
  CHECK(memcmp(&s1, &s3, sizeof s1) != 0, "purposes share a key");
  /* the key schedule cache must never serve one key's stream for another */
  double z1 = dpm_gauss_at(&s1, 1, DPM_STREAM_NOISE, 0), z3 = dpm_gauss_at(&s3, 1, DPM_STREAM_NOISE, 0);
  for (int k = 0; k < 6; k++) {
    dpm_key other = dpm_key_from_seed(100 + (uint64_t)k, 1);
    (void)dpm_gauss_at(&other, 1, DPM_STREAM_NOISE, 0);
  }
  CHECK(z1 != z3 && dpm_gauss_at(&s1, 1, DPM_STREAM_NOISE, 0) == z1 && dpm_gauss_at(&s3, 1, DPM_STREAM_NOISE, 0) == z3,
        "key schedule cache mixes keys");
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  printf("random streams: %s (available:", dpm_rng_impl_name(dpm_rng_impl_current()));
  for (int i = 0; i < DPM_RNG_IMPLS; i++)
    if (dpm_rng_impl_available((dpm_rng_impl)i)) printf(" %s", dpm_rng_impl_name((dpm_rng_impl)i));
  printf(")\n");
  test_aes_vectors();
  test_blocks_against_openssl();
  test_documented_draw();
  test_implementations_agree();
  test_words();
  test_draws_bitwise();
  test_split_invariance();
  test_radius_tail();
  test_bernoulli_rate();
  test_keys();
  test_billion();
  return dpm_test_finish();
}
