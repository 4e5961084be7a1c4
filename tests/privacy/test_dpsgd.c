/* Privacy-critical step pieces against independent references: Poisson sampling (same batch whatever
 * the sharding, rate q, independence across steps), clipping coefficients (brute-force norms after
 * scaling), automatic clipping (brute-force normalization), noise (one draw per parameter, split-invariant),
 * adaptive thresholds (the noise split's effective multiplier, count noise variance and split invariance over
 * many draws, convergence to the target quantile on synthetic norms), SGD with momentum (hand-written
 * recursion). */
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

/* Automatic clipping (Bu et al. 2022): every example's clipped gradient is thr g / (||g|| + gamma) within float32,
 * below thr in norm however large or small g is; flat over the whole example, per-layer per group. */
static void test_automatic(void) {
  enum { G = 3, B = 40, P = 7 };
  float grad[G][B][P], coef[G * B];
  double sq[G * B];
  dpm_key key = dpm_key_from_seed(12, 0);
  for (int g = 0; g < G; g++)
    for (int i = 0; i < B; i++) {
      double scale = i % 5 == 0 ? 1e-4 : i % 5 == 1 ? 1e3 : (double)(i + 1) / 8;
      for (int p = 0; p < P; p++) grad[g][i][p] = (float)(scale * dpm_gauss_at(&key, (uint64_t)g, 9, (uint64_t)(i * P + p)));
    }
  for (int g = 0; g < G; g++)
    for (int i = 0; i < B; i++) {
      double s = 0;
      for (int p = 0; p < P; p++) s += (double)grad[g][i][p] * grad[g][i][p];
      sq[g * B + i] = s;
    }
  const double C = 1.5, gamma = 0.01;
  for (int per_layer = 0; per_layer < 2; per_layer++) {
    const dpm_clipping mode = per_layer ? DPM_CLIP_AUTOMATIC_PER_LAYER : DPM_CLIP_AUTOMATIC;
    double thr[G];
    for (int g = 0; g < G; g++) thr[g] = dpm_clip_threshold(mode, C, G, 1, 0, 0, DPM_SPLIT_EVEN);
    CHECK_CLOSE(thr[0], per_layer ? C / sqrt((double)G) : C, 1e-15, 0, "automatic threshold");
    dpm_clip_coefs_thr(sq, G, B, mode, thr, gamma, coef);
    for (int i = 0; i < B; i++) {
      double whole = 0, total = 0;
      for (int g = 0; g < G; g++) whole += sq[g * B + i];
      for (int g = 0; g < G; g++) {
        const double norm = sqrt(per_layer ? sq[g * B + i] : whole), want = thr[0] / (norm + gamma);
        CHECK_CLOSE(coef[g * B + i], want, 1e-6, 0, "automatic coefficient thr / (||g|| + gamma)");
        CHECK((double)coef[g * B + i] <= want, "coefficient rounded up");
        double s = 0;
        for (int p = 0; p < P; p++) {
          const double v = (double)(coef[g * B + i] * grad[g][i][p]); /* as float32 forms it */
          s += v * v;
        }
        total += s;
        if (per_layer) CHECK(sqrt(s) < thr[0], "automatic per-layer: group %d example %d norm %.17g >= %g", g, i, sqrt(s), thr[0]);
      }
      CHECK(sqrt(total) < C, "automatic %s: example %d total norm %.17g >= C", per_layer ? "per-layer" : "flat", i, sqrt(total));
    }
  }
  double bad[2] = {NAN, INFINITY}, thr1 = 1.0;
  float c2[2];
  dpm_clip_coefs_thr(bad, 1, 2, DPM_CLIP_AUTOMATIC, &thr1, gamma, c2);
  CHECK(c2[0] == 0.0f && c2[1] == 0.0f, "a non-finite norm gives coefficient 0 in automatic clipping");
}

/* Adaptive thresholds' accounting: the noise split gives back the effective multiplier (computed here from the
 * sensitivities directly), and spends the fraction f of the precision on the counts. */
static void test_adaptive_split(void) {
  const double sig[3] = {0.6, 1.1, 4.0}, fr[3] = {0.01, 0.1, 0.5};
  const int Ks[3] = {1, 4, 97};
  for (int a = 0; a < 3; a++)
    for (int b = 0; b < 3; b++)
      for (int c = 0; c < 3; c++) {
        const double s = dpm_adaptive_grad_sigma(sig[a], fr[b]), sb = dpm_adaptive_count_sigma(sig[a], fr[b], Ks[c]);
        /* the stacked release (grad / (s C), counts / sb) has sensitivity sqrt(1/s^2 + K (1/2)^2 / sb^2) */
        const double sens = sqrt(1.0 / (s * s) + Ks[c] * 0.25 / (sb * sb));
        CHECK_CLOSE(1.0 / sens, sig[a], 1e-12, 0, "effective noise multiplier of gradient and counts");
        CHECK_CLOSE(dpm_adaptive_effective_sigma(s, sb, Ks[c]), sig[a], 1e-12, 0, "dpm_adaptive_effective_sigma");
        CHECK_CLOSE(Ks[c] * 0.25 / (sb * sb) * sig[a] * sig[a], fr[b], 1e-12, 0, "the counts' share of the precision");
      }
}

/* The count noise: one float32 draw N(0, std^2) per count and step, the same whatever the data-parallel split;
 * over many draws mean 0 and variance std^2 (chi-square bounds), uncorrelated with the gradient stream. */
static void test_count_noise(void) {
  dpm_key key = dpm_key_from_seed(21, DPM_STREAM_NOISE);
  enum { Kc = 5, T = 4000 };
  const double std = 3.7;
  double sum[Kc] = {0}, sum2[Kc] = {0}, cross = 0;
  for (uint64_t t = 0; t < T; t++) {
    double whole[Kc] = {0}, split[Kc];
    dpm_add_count_noise_slice(&key, t, std, 0, 1, 10, Kc, whole);
    for (int R = 2; R <= 4; R++) {
      for (int k = 0; k < Kc; k++) split[k] = 0.5 * (double)k; /* a half-integer count below */
      for (int r = 0; r < R; r++) dpm_add_count_noise_slice(&key, t, std, r, R, 10, Kc, split);
      for (int k = 0; k < Kc; k++) CHECK(split[k] - 0.5 * k == whole[k], "step %d: %d ranks' count noise differs", (int)t, R);
    }
    for (int k = 0; k < Kc; k++) {
      CHECK(whole[k] == (double)(float)(std * dpm_gauss_at(&key, t, DPM_STREAM_COUNT, 10 + (uint64_t)k)), "count noise is draw j");
      sum[k] += whole[k], sum2[k] += whole[k] * whole[k];
    }
    cross += whole[0] * std * dpm_gauss_at(&key, t, DPM_STREAM_NOISE, 10); /* the gradient noise of parameter 10 */
  }
  for (int k = 0; k < Kc; k++) {
    const double mean = sum[k] / T, var = sum2[k] / T;
    CHECK(fabs(mean) < 5 * std / sqrt((double)T), "count %d noise mean %g", k, mean);
    /* var / std^2 ~ chi2_T / T: standard deviation sqrt(2 / T) */
    CHECK(fabs(var / (std * std) - 1) < 5 * sqrt(2.0 / T), "count %d noise variance %g, expected %g", k, var, std * std);
  }
  CHECK(fabs(cross / T) / (std * std) < 5 / sqrt((double)T), "count noise correlates with the gradient noise: %g", cross / T);
}

/* Thresholds converge to the target quantile of synthetic norms: K groups of lognormal norms at different
 * scales, Poisson sampling at rate q, noisy centred counts, the geometric update; after enough steps the
 * fraction of all examples within each threshold is the target (within the noise's wobble). */
static void test_adaptive_convergence(void) {
  enum { Nn = 4000, Kq = 3 };
  static double norm[Kq][Nn];
  static int64_t idx[Nn];
  dpm_key nk = dpm_key_from_seed(31, 0), sk = dpm_key_from_seed(32, DPM_STREAM_SAMPLE), ck = dpm_key_from_seed(33, 1);
  const double scale[Kq] = {0.01, 1.0, 30.0};
  for (int k = 0; k < Kq; k++)
    for (int i = 0; i < Nn; i++) norm[k][i] = scale[k] * exp(0.7 * dpm_gauss_at(&nk, (uint64_t)k, 3, (uint64_t)i));
  const double q = 0.05, qN = q * Nn, targets[2] = {0.5, 0.9};
  for (int ti = 0; ti < 2; ti++) {
    const double target = targets[ti];
    double thr[Kq] = {1.0, 1.0, 1.0}, b[Kq];
    const double sigma_b = dpm_adaptive_count_sigma(1.0, 0.01, Kq); /* 1% of a sigma = 1 budget: about 8.7 */
    for (uint64_t t = 0; t < 600; t++) {
      const int64_t n = dpm_sample_shard(&sk, t, q, 0, Nn, idx);
      for (int k = 0; k < Kq; k++) {
        b[k] = 0;
        for (int64_t a = 0; a < n; a++) b[k] += norm[k][idx[a]] <= thr[k] ? 0.5 : -0.5;
      }
      dpm_add_count_noise_slice(&ck, t, sigma_b, 0, 1, 0, Kq, b);
      dpm_adaptive_update(thr, Kq, b, qN, target, 0.2);
    }
    for (int k = 0; k < Kq; k++) {
      int within = 0;
      for (int i = 0; i < Nn; i++) within += norm[k][i] <= thr[k];
      CHECK(fabs((double)within / Nn - target) < 0.05, "target %g, group %d (scale %g): threshold %g leaves %g unclipped",
            target, k, scale[k], thr[k], (double)within / Nn);
    }
  }
  /* the update itself: b = (gamma - 1/2) qN (exactly the target fraction) leaves C unchanged; above it C shrinks */
  double c1[2] = {2.0, 2.0}, bb[2] = {(0.7 - 0.5) * 100, (0.9 - 0.5) * 100};
  dpm_adaptive_update(c1, 2, bb, 100, 0.7, 0.3);
  CHECK_CLOSE(c1[0], 2.0, 1e-15, 0, "at the target fraction the threshold stays");
  CHECK_CLOSE(c1[1], 2.0 * exp(-0.3 * 0.2), 1e-15, 0, "C exp(-eta (b - gamma))");
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
  test_automatic();
  test_adaptive_split();
  test_count_noise();
  test_adaptive_convergence();
  test_noise();
  test_noise_slices();
  test_sgd();
  test_schedule();
  return dpm_test_finish();
}
