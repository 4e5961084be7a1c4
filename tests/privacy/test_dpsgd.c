/* Privacy-critical step pieces against independent references: Poisson sampling (same batch whatever
 * the sharding, rate q, independence across steps), clipping coefficients (brute-force norms after
 * scaling), noise (one draw per parameter, split-invariant), SGD with momentum (hand-written recursion). */
#include <stdlib.h>
#include <string.h>

#include "dpmpi/optim/sgd.h"
#include "dpmpi/privacy/dpsgd.h"
#include "testing.h"

static void test_sampling(void) {
  dpm_key key = dpm_key_from_seed(3, DPM_STREAM_SAMPLE);
  const int64_t N = 10007;
  const double q = 0.05;
  int64_t *whole = malloc(sizeof(int64_t) * N), *part = malloc(sizeof(int64_t) * N);
  for (uint64_t t = 0; t < 5; t++) {
    int64_t n = dpm_sample_shard(&key, t, q, 0, N, whole);
    /* the union of shards of 1..5 uneven ranks is the same batch */
    for (int ranks = 2; ranks <= 5; ranks++) {
      int64_t m = 0;
      for (int r = 0; r < ranks; r++) {
        int64_t b = N * r / ranks + (r == 1 ? 3 : 0), e = N * (r + 1) / ranks + (r == 0 ? 3 : 0);
        m += dpm_sample_shard(&key, t, q, b, e, part + m);
      }
      CHECK(m == n && memcmp(part, whole, sizeof(int64_t) * (size_t)n) == 0, "step %llu: %d shards give another batch",
            (unsigned long long)t, ranks);
    }
    for (int64_t k = 1; k < n; k++) CHECK(whole[k] > whole[k - 1], "indices not increasing");
  }
  /* rate: 200 steps x N decisions, 6-sigma bound */
  double total = 0;
  for (uint64_t t = 0; t < 200; t++) total += (double)dpm_sample_shard(&key, t, q, 0, N, whole);
  double n_dec = 200.0 * N, sd = sqrt(n_dec * q * (1 - q));
  CHECK(fabs(total - n_dec * q) < 6 * sd, "sampled %g, expected %g", total, n_dec * q);
  /* independence across steps: overlap of two steps' batches ~ q^2 N */
  int64_t na = dpm_sample_shard(&key, 1000, q, 0, N, whole), nb = dpm_sample_shard(&key, 1001, q, 0, N, part), both = 0;
  for (int64_t a = 0, b = 0; a < na && b < nb;) {
    if (whole[a] == part[b]) both++, a++, b++;
    else if (whole[a] < part[b]) a++;
    else b++;
  }
  CHECK(fabs((double)both - q * q * N) < 6 * sqrt(q * q * N) + 1, "overlap %lld", (long long)both);
  CHECK(dpm_sample_shard(&key, 0, 1.0, 5, 15, whole) == 10, "q = 1 takes everything");
  free(whole);
  free(part);
}

static void test_clipping(void) {
  /* random per-group gradients; the coefficients must bring each example within C and leave small ones alone */
  enum { G = 3, B = 40, P = 7 };
  float grad[G][B][P], coef[G * B];
  double sq[G * B];
  dpm_key key = dpm_key_from_seed(11, 0);
  for (int g = 0; g < G; g++)
    for (int i = 0; i < B; i++) {
      double scale = i % 4 == 0 ? 0.01 : (double)(i + 1) / 4; /* mix of tiny and large gradients */
      for (int p = 0; p < P; p++) grad[g][i][p] = (float)(scale * dpm_gauss_at(&key, (uint64_t)g, 9, (uint64_t)(i * P + p)));
    }
  for (int g = 0; g < G; g++)
    for (int i = 0; i < B; i++) {
      double s = 0;
      for (int p = 0; p < P; p++) s += (double)grad[g][i][p] * grad[g][i][p];
      sq[g * B + i] = s;
    }
  const double C = 1.5;
  for (int mode = 0; mode < 2; mode++) {
    dpm_clip_coefs(sq, G, B, (dpm_clipping)mode, dpm_clip_threshold((dpm_clipping)mode, C, G, 1, 0, 0, DPM_SPLIT_EVEN),
                   coef);
    for (int i = 0; i < B; i++) {
      double total = 0, unclipped = 0;
      for (int g = 0; g < G; g++) {
        double s = 0;
        for (int p = 0; p < P; p++) {
          double v = (double)coef[g * B + i] * grad[g][i][p];
          s += v * v;
        }
        total += s;
        unclipped += sq[g * B + i];
        if (mode == DPM_CLIP_PER_LAYER) {
          double cg = C / sqrt((double)G);
          CHECK(sqrt(s) <= cg * (1 + 1e-6), "per-layer group %d example %d norm %g > %g", g, i, sqrt(s), cg);
          if (sq[g * B + i] > cg * cg) CHECK_CLOSE(sqrt(s), cg, 1e-5, 0, "clipped group norm equals C_g");
          else CHECK(coef[g * B + i] == 1.0f, "small group gradient was scaled");
        }
      }
      CHECK(sqrt(total) <= C * (1 + 1e-6), "mode %d example %d total norm %g > C", mode, i, sqrt(total));
      if (mode == DPM_CLIP_FLAT) {
        if (unclipped > C * C) CHECK_CLOSE(sqrt(total), C, 1e-5, 0, "flat: clipped norm equals C");
        else CHECK(coef[i] == 1.0f, "flat: small gradient was scaled");
        for (int g = 1; g < G; g++) CHECK(coef[g * B + i] == coef[i], "flat: one coefficient per example");
      }
    }
  }
  CHECK_CLOSE(dpm_clip_threshold(DPM_CLIP_PER_LAYER, 2.0, 4, 1, 0, 0, DPM_SPLIT_EVEN), 1.0, 1e-12, 0,
              "per-layer threshold C/sqrt(G)");
  /* per-device: the stage thresholds' squares sum to C^2, for both splits */
  const size_t Ps[3] = {10, 1000, 77};
  for (int split = 0; split < 2; split++) {
    double sum2 = 0;
    for (int st = 0; st < 3; st++) {
      double c = dpm_clip_threshold(DPM_CLIP_PER_DEVICE, 2.0, 9, 3, Ps[st], 1087, (dpm_device_split)split);
      sum2 += c * c;
      if (split == DPM_SPLIT_EVEN) CHECK_CLOSE(c, 2.0 / sqrt(3.0), 1e-12, 0, "per-device even threshold");
      else CHECK_CLOSE(c, 2.0 * sqrt((double)Ps[st] / 1087.0), 1e-12, 0, "per-device threshold by parameters");
    }
    CHECK_CLOSE(sqrt(sum2), 2.0, 1e-12, 0, "per-device thresholds: sqrt(sum C_s^2) = C");
  }
  /* per-device on one stage is flat clipping */
  float coef2[G * B];
  dpm_clip_coefs(sq, G, B, DPM_CLIP_FLAT, C, coef);
  dpm_clip_coefs(sq, G, B, DPM_CLIP_PER_DEVICE, dpm_clip_threshold(DPM_CLIP_PER_DEVICE, C, G, 1, 5, 5, DPM_SPLIT_EVEN),
                 coef2);
  CHECK(memcmp(coef, coef2, sizeof coef) == 0, "per-device on one stage equals flat");
}

static void test_noise(void) {
  dpm_key key = dpm_key_from_seed(5, DPM_STREAM_NOISE);
  const size_t P = 1000;
  float a[1000] = {0}, b[1000] = {0};
  dpm_add_noise(&key, 17, 0.5, 0, P, a);
  /* four slices, as four ranks would draw them */
  for (int r = 0; r < 4; r++) {
    size_t lo = P * r / 4, hi = P * (r + 1) / 4;
    dpm_add_noise(&key, 17, 0.5, lo, hi - lo, b + lo);
  }
  CHECK(memcmp(a, b, sizeof a) == 0, "sliced noise differs from whole noise");
  for (size_t j = 0; j < P; j += 97)
    CHECK(a[j] == (float)(0.5 * dpm_gauss_at(&key, 17, DPM_STREAM_NOISE, j)), "noise %zu is not draw j of step t", j);
}

/* Noise once over a data-parallel group: the slices of R ranks together are exactly the whole draw, each
 * parameter once (a slice drawn twice, or missed, would show as a difference). */
static void test_noise_slices(void) {
  dpm_key key = dpm_key_from_seed(9, DPM_STREAM_NOISE);
  enum { P = 1003 };
  static float whole[P], sliced[P];
  memset(whole, 0, sizeof whole);
  dpm_add_noise(&key, 5, 0.7, 4000, P, whole);
  for (int R = 1; R <= 7; R++) {
    memset(sliced, 0, sizeof sliced);
    for (int r = 0; r < R; r++) dpm_add_noise_slice(&key, 5, 0.7, r, R, 4000, P, sliced);
    CHECK(memcmp(whole, sliced, sizeof whole) == 0, "%d ranks' noise slices differ from one draw of the whole", R);
  }
  CHECK_CLOSE(dpm_update_scale(0.004, 60000), 1.0 / 240.0, 1e-15, 0, "update scale 1 / (q N)");
}

static void test_sgd(void) {
  enum { n = 5 };
  float p[n] = {1, -2, 3, 0.5f, 0}, g[n] = {0.1f, 0.2f, -0.3f, 0, 1};
  double ref_p[n], ref_v[n] = {0};
  for (int k = 0; k < n; k++) ref_p[k] = p[k];
  dpm_sgd o;
  dpm_sgd_init(&o, n, 0.9, 0.01);
  for (int it = 0; it < 3; it++) {
    dpm_sgd_step(&o, p, g, 0.5, 0.1);
    for (int k = 0; k < n; k++) {
      double gk = 0.5 * g[k] + 0.01 * ref_p[k];
      ref_v[k] = 0.9 * ref_v[k] + gk;
      ref_p[k] -= 0.1 * ref_v[k];
    }
  }
  for (int k = 0; k < n; k++) CHECK_CLOSE(p[k], ref_p[k], 1e-6, 1e-7, "sgd parameter");
  dpm_sgd_free(&o);
}

static void test_schedule(void) {
  dpm_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.lr = 2.0;
  cfg.lr_schedule = DPM_SCHED_COSINE;
  CHECK_CLOSE(dpm_lr_at(&cfg, 0, 10), 2.0, 1e-12, 0, "cosine start");
  CHECK_CLOSE(dpm_lr_at(&cfg, 5, 10), 1.0, 1e-12, 0, "cosine middle");
  CHECK_CLOSE(dpm_lr_at(&cfg, 10, 10), 0.0, 0, 1e-12, "cosine end");
  cfg.lr_schedule = DPM_SCHED_STEP;
  cfg.lr_step_gamma = 0.5;
  cfg.lr_step_every = 3;
  CHECK_CLOSE(dpm_lr_at(&cfg, 7, 10), 0.5, 1e-12, 0, "step schedule");
  cfg.warmup_epochs = 2;
  CHECK_CLOSE(dpm_lr_at(&cfg, 1, 10), 1.0, 1e-9, 0, "warm-up");
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  test_sampling();
  test_clipping();
  test_noise();
  test_noise_slices();
  test_sgd();
  test_schedule();
  return dpm_test_finish();
}
