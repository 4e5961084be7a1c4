/* Philox4x64-10 against Random123's known-answer vectors; Gaussian and Bernoulli streams: moments,
 * rates, and independence from how a range is split (the property grid invariance rests on). */
#include <stdlib.h>
#include <string.h>

#include "dpmpi/core/rng.h"
#include "testing.h"

static void test_known_answers(void) {
  /* Random123 kat_vectors, philox4x64 with 10 rounds */
  struct { uint64_t ctr[4], key[2], out[4]; } kat[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x16554d9eca36314cULL, 0xdb20fe9d672d0fdcULL, 0xd7e772cee186176bULL, 0x7e68b68aec7ba23bULL}},
      {{~0ULL, ~0ULL, ~0ULL, ~0ULL}, {~0ULL, ~0ULL},
       {0x87b092c3013fe90bULL, 0x438c3c67be8d0224ULL, 0x9cc7d7c69cd777b6ULL, 0xa09caebf594f0ba0ULL}},
      {{0x243f6a8885a308d3ULL, 0x13198a2e03707344ULL, 0xa4093822299f31d0ULL, 0x082efa98ec4e6c89ULL},
       {0x452821e638d01377ULL, 0xbe5466cf34e90c6cULL},
       {0xa528f45403e61d95ULL, 0x38c72dbd566e9788ULL, 0xa5a1610e72fd18b5ULL, 0x57bd43b5e52b7fe6ULL}},
  };
  for (size_t v = 0; v < sizeof kat / sizeof kat[0]; v++) {
    dpm_key key = {{kat[v].key[0], kat[v].key[1]}};
    uint64_t out[4];
    dpm_philox(&key, kat[v].ctr, out);
    for (int w = 0; w < 4; w++)
      CHECK(out[w] == kat[v].out[w], "vector %zu word %d: %016llx", v, w, (unsigned long long)out[w]);
  }
}

static void test_gaussian_moments(void) {
  dpm_key key = dpm_key_from_seed(42, 1);
  const size_t n = 1 << 20;
  float *z = calloc(n, sizeof(float));
  dpm_gauss_add(&key, 7, DPM_STREAM_NOISE, 0, n, 1.0, z);
  double m1 = 0, m2 = 0, m4 = 0;
  size_t tail = 0;
  for (size_t k = 0; k < n; k++) {
    m1 += z[k];
    m2 += (double)z[k] * z[k];
    m4 += (double)z[k] * z[k] * z[k] * z[k];
    tail += fabs(z[k]) > 3.0;
  }
  m1 /= n; m2 /= n; m4 /= n;
  /* 6-sigma bounds (false failure < 1e-8 each): sd(mean)=1/sqrt(n), sd(m2)=sqrt(2/n), sd(m4)=sqrt(96/n) */
  CHECK(fabs(m1) < 6 / sqrt(n), "mean %g", m1);
  CHECK(fabs(m2 - 1) < 6 * sqrt(2.0 / n), "variance %g", m2);
  CHECK(fabs(m4 - 3) < 6 * sqrt(96.0 / n), "fourth moment %g", m4);
  double p3 = 0.0026997960632601866, sd = sqrt(p3 * (1 - p3) / n);
  CHECK(fabs((double)tail / n - p3) < 6 * sd, "P(|z|>3) = %g", (double)tail / n);
  free(z);
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
}

static void test_keys(void) {
  dpm_key a = dpm_key_secure(), b = dpm_key_secure();
  CHECK(memcmp(&a, &b, sizeof a) != 0, "two secure keys are equal");
  dpm_key s1 = dpm_key_from_seed(5, 1), s2 = dpm_key_from_seed(5, 1), s3 = dpm_key_from_seed(5, 2);
  CHECK(memcmp(&s1, &s2, sizeof s1) == 0, "seeded keys not reproducible");
  CHECK(memcmp(&s1, &s3, sizeof s1) != 0, "purposes share a key");
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  test_known_answers();
  test_gaussian_moments();
  test_split_invariance();
  test_bernoulli_rate();
  test_keys();
  return dpm_test_finish();
}
