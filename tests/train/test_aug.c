/* Augmentation multiplicity (De et al. 2022) in the DP-SGD step (src/train/step.c, dpmpi/train/augment.h), on 1
 * and 2 ranks:
 *  - the step's pre-noise sum (sigma = 0) equals a brute force in double: for every sampled example (the
 *    sampling stream, drawn here) the mean of its K views' gradients, each view run alone (batch 1), clipped
 *    once to C (flat: the whole model; per-layer: C / sqrt(L) per layer) and summed;
 *  - sensitivity (I1): with q = 1, dropping the last example (its views are the only ones that change) moves
 *    the sum by at most C, and by C (within 1e-4) for an example whose averaged gradient is far above C;
 *    each example's clipped contribution in the brute force has norm <= C;
 *  - the views: a crop by (dy, dx) of the padded image and flips only when allowed, checked against their
 *    definition; the same views on every call (the stream is keyed by step and example). */
// ctest: np=1,2
#include <stdlib.h>
#include <string.h>

#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/train/augment.h"
#include "dpmpi/train/step.h"
#include "testing.h"

enum { N = 21, C_IN = 1, H_IN = 6, W_IN = 6, D_IN = C_IN * H_IN * W_IN, NC = 3, KV = 3, PAD = 1 };
static const char *LAYERS = "conv out=2 kernel=3 stride=1 pad=1; tanh; flatten; dense out=3";
static float X[N * D_IN];
static int32_t Y[N];
static const float FILL = -1.0f;

static dpm_model *new_model(int max_batch) {
  dpm_layer_spec *specs;
  int n;
  char err[DPM_ERRLEN];
  if (dpm_model_parse(LAYERS, &specs, &n, err)) dpm_fatal("%s", err);
  dpm_model *m = dpm_model_create(specs, n, C_IN, H_IN, W_IN, NC, max_batch, err);
  if (!m) dpm_fatal("%s", err);
  dpm_free(specs);
  dpm_key ik = dpm_key_from_seed(1, DPM_STREAM_INIT);
  dpm_model_init_params(m, &ik);
  return m;
}

/* One step t on comm (each rank a contiguous shard of the n examples), sigma = 0: the pre-noise sum. */
static float *step_sum(MPI_Comm comm, int64_t n, double q, dpm_clipping mode, double clip, int flip, uint64_t t,
                       size_t *P) {
  int r, s;
  MPI_Comm_rank(comm, &r);
  MPI_Comm_size(comm, &s);
  const int64_t b = n * r / s, e = n * (r + 1) / s;
  dpm_dataset d = {.n_total = n, .begin = b, .end = e, .C = C_IN, .H = H_IN, .W = W_IN, .num_classes = NC,
                   .x = X + b * D_IN, .y = Y + b};
  dpm_model *m = new_model(4);
  dpm_step st = {.comm = comm, .model = m, .data = &d, .q = q, .dp = 1, .clip = clip, .sigma = 0, .clipping = mode,
                 .pipe = MPI_COMM_SELF, .physical_batch = 4, .sample_key = dpm_key_from_seed(5, DPM_STREAM_SAMPLE),
                 .noise_key = dpm_key_from_seed(5, DPM_STREAM_NOISE), .keep_shards = 1, .aug_k = KV,
                 .aug_pad = PAD, .aug_flip = flip, .aug_fill = FILL};
  dpm_step_init(&st);
  dpm_step_stats stats;
  dpm_step_run(&st, t, &stats);
  *P = dpm_model_num_params(m);
  float *out = malloc(sizeof(float) * *P);
  memcpy(out, dpm_model_grads(m), sizeof(float) * *P);
  CHECK(stats.examples >= 0, "stats");
  dpm_step_free(&st);
  dpm_model_free(m);
  return out;
}

/* The brute force: sum over the sampled examples of clip(mean over views of the view's gradient), in double. */
static double *brute_sum(int64_t n, double q, dpm_clipping mode, double clip, int flip, uint64_t t, double *max_contrib) {
  dpm_model *m = new_model(1);
  const size_t P = dpm_model_num_params(m);
  const int G = dpm_model_num_groups(m);
  const dpm_key sk = dpm_key_from_seed(5, DPM_STREAM_SAMPLE);
  int64_t *sel = malloc(sizeof(int64_t) * (size_t)n);
  const int64_t ns = dpm_sample_shard(&sk, t, q, 0, n, sel);
  double *sum = calloc(P, sizeof(double)), *mean = malloc(sizeof(double) * P);
  float view[D_IN];
  *max_contrib = 0;
  for (int64_t j = 0; j < ns; j++) {
    const int64_t i = sel[j];
    memset(mean, 0, sizeof(double) * P);
    for (int v = 0; v < KV; v++) {
      dpm_augment_view(view, X + i * D_IN, C_IN, H_IN, W_IN, PAD, flip, FILL, &sk, t, (uint64_t)i * KV + (uint64_t)v);
      dpm_model_zero_grads(m);
      dpm_model_forward(m, view, Y + i, 1, NULL);
      dpm_model_backward(m, NULL);
      dpm_model_accumulate(m, NULL);
      for (size_t k = 0; k < P; k++) mean[k] += dpm_model_grads(m)[k] / (double)KV;
    }
    double c_all = 1, contrib2 = 0;
    if (mode == DPM_CLIP_FLAT) {
      double n2 = 0;
      for (size_t k = 0; k < P; k++) n2 += mean[k] * mean[k];
      c_all = sqrt(n2) > clip ? clip / sqrt(n2) : 1;
    }
    for (int g = 0; g < G; g++) {
      const size_t off = dpm_model_group_offset(m, g), sz = dpm_model_group_size(m, g);
      double c = c_all;
      if (mode == DPM_CLIP_PER_LAYER) {
        double n2 = 0;
        for (size_t k = off; k < off + sz; k++) n2 += mean[k] * mean[k];
        const double cg = clip / sqrt((double)G);
        c = sqrt(n2) > cg ? cg / sqrt(n2) : 1;
      }
      for (size_t k = off; k < off + sz; k++) sum[k] += c * mean[k], contrib2 += c * mean[k] * c * mean[k];
    }
    if (sqrt(contrib2) > *max_contrib) *max_contrib = sqrt(contrib2);
  }
  free(sel), free(mean);
  dpm_model_free(m);
  return sum;
}

static void test_views(void) {
  float x[2 * 5 * 4], out[2 * 5 * 4], again[2 * 5 * 4];
  for (int k = 0; k < 40; k++) x[k] = (float)(k + 1);
  const dpm_key key = dpm_key_from_seed(9, DPM_STREAM_SAMPLE);
  int flips = 0, shifts[5] = {0};
  for (uint64_t idx = 0; idx < 200; idx++) {
    dpm_augment_view(out, x, 2, 5, 4, 2, 1, -7.0f, &key, 3, idx);
    dpm_augment_view(again, x, 2, 5, 4, 2, 1, -7.0f, &key, 3, idx);
    CHECK(!memcmp(out, again, sizeof out), "a view is a function of (key, step, index)");
    /* find the (dy, dx, mirror) the view is: exactly one of the 5 x 5 x 2 candidates matches */
    int found = 0;
    for (int dy = -2; dy <= 2; dy++)
      for (int dx = -2; dx <= 2; dx++)
        for (int mir = 0; mir < 2; mir++) {
          int same = 1;
          for (int c = 0; c < 2 && same; c++)
            for (int h = 0; h < 5 && same; h++)
              for (int w = 0; w < 4 && same; w++) {
                const int sh = h + dy, sw = (mir ? 3 - w : w) + dx;
                const float want = sh >= 0 && sh < 5 && sw >= 0 && sw < 4 ? x[c * 20 + sh * 4 + sw] : -7.0f;
                same = out[c * 20 + h * 4 + w] == want;
              }
          if (same && !found) found = 1, flips += mir, shifts[dy + 2]++;
        }
    CHECK(found, "view %llu is a padded crop, possibly mirrored", (unsigned long long)idx);
    dpm_augment_view(out, x, 2, 5, 4, 2, 0, -7.0f, &key, 3, idx);
    int unmirrored = 0;
    for (int dy = -2; dy <= 2; dy++)
      for (int dx = -2; dx <= 2; dx++) {
        int same = 1;
        for (int k = 0; k < 40 && same; k++) {
          const int c = k / 20, h = (k % 20) / 4, w = k % 4, sh = h + dy, sw = w + dx;
          same = out[k] == (sh >= 0 && sh < 5 && sw >= 0 && sw < 4 ? x[c * 20 + sh * 4 + sw] : -7.0f);
        }
        unmirrored |= same;
      }
    CHECK(unmirrored, "flip = 0: view %llu is not mirrored", (unsigned long long)idx);
  }
  /* 200 views: about half mirrored, every vertical offset used */
  CHECK(flips > 60 && flips < 140, "%d of 200 views mirrored", flips);
  for (int k = 0; k < 5; k++) CHECK(shifts[k] > 10, "offset %d used %d times", k - 2, shifts[k]);
}

static void test_step_brute(void) {
  for (int mode = 0; mode < 2; mode++) {
    size_t P;
    float *got = step_sum(MPI_COMM_WORLD, N, 0.6, (dpm_clipping)mode, 0.05, mode, 7, &P);
    double mc, *want = brute_sum(N, 0.6, (dpm_clipping)mode, 0.05, mode, 7, &mc);
    double err = 0, nrm = 0;
    for (size_t k = 0; k < P; k++) err += (got[k] - want[k]) * (got[k] - want[k]), nrm += want[k] * want[k];
    CHECK(nrm > 0 && sqrt(err) <= 1e-5 * sqrt(nrm), "mode %d: the step = sum_i clip(mean of %d views' gradients): relative "
          "error %g", mode, KV, sqrt(err / nrm));
    CHECK(mc <= 0.05 * (1 + 1e-12) && mc > 0.9 * 0.05, "mode %d: largest clipped contribution %g <= C = 0.05", mode, mc);
    free(got), free(want);
  }
}

static void test_sensitivity(void) {
  const float save[D_IN];
  memcpy((void *)save, X + (N - 1) * D_IN, sizeof save);
  for (int big = 0; big < 2; big++) {
    if (big)
      for (int k = 0; k < D_IN; k++) X[(N - 1) * D_IN + k] *= 40; /* a far larger gradient */
    for (int mode = 0; mode < 2; mode++) {
      size_t P;
      const double C = 0.05;
      float *a = step_sum(MPI_COMM_WORLD, N, 1.0, (dpm_clipping)mode, C, 1, 2, &P);
      float *b = step_sum(MPI_COMM_WORLD, N - 1, 1.0, (dpm_clipping)mode, C, 1, 2, &P);
      double d2 = 0;
      for (size_t k = 0; k < P; k++) d2 += ((double)a[k] - b[k]) * ((double)a[k] - b[k]);
      CHECK(sqrt(d2) <= C * (1 + 1e-5), "mode %d%s: removing an example moves the sum by %g > C = %g", mode,
            big ? " (large gradient)" : "", sqrt(d2), C);
      if (big) CHECK(sqrt(d2) >= C * (1 - 1e-4), "mode %d: the large example moves the sum by C: %g", mode, sqrt(d2));
      free(a), free(b);
    }
  }
  memcpy(X + (N - 1) * D_IN, save, sizeof save);
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  dpm_key key = dpm_key_from_seed(77, 0);
  for (int k = 0; k < N * D_IN; k++) X[k] = (float)dpm_gauss_at(&key, 0, 1, (uint64_t)k);
  for (int i = 0; i < N; i++) Y[i] = i % NC;
  test_views();
  test_step_brute();
  test_sensitivity();
  return dpm_test_finish();
}
