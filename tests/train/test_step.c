/* The DP-SGD step on 1, 2 and 3 ranks (uneven shards) against a 1-rank run of the same step on the whole
 * dataset in the same process: grid invariance of the trained parameters, sensitivity (invariant I1:
 * removing one example moves the pre-noise sum by at most C, and by exactly C for an example whose
 * gradient is large, for flat and per-layer clipping), and noise once (I2: with nothing sampled the sum
 * is pure noise of variance sigma^2 C^2 per coordinate, identical to the 1-rank draws). */
// ctest: np=1,2,3
#include <stdlib.h>
#include <string.h>

#include "dpmpi/optim/sgd.h"
#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/train/step.h"
#include "testing.h"

enum { N = 37, C_IN = 1, H_IN = 6, W_IN = 6, D_IN = C_IN * H_IN * W_IN, K = 3 };
static const char *LAYERS = "conv out=2 kernel=3 stride=1 pad=1; tanh; maxpool kernel=2; flatten; dense out=5; relu; dense out=3";
static float X[N * D_IN];
static int32_t Y[N];
static int rank, size;

static void make_data(void) {
  dpm_key key = dpm_key_from_seed(77, 0);
  for (int k = 0; k < N * D_IN; k++) X[k] = (float)dpm_gauss_at(&key, 0, 1, (uint64_t)k);
  for (int i = 0; i < N; i++) Y[i] = i % K;
  /* example 5 has a huge gradient in every layer */
  for (int k = 0; k < D_IN; k++) X[5 * D_IN + k] *= 50;
}

/* the shard [begin, end) of x/y (n rows) as a dataset view */
static dpm_dataset view(const float *x, const int32_t *y, int64_t n, int64_t begin, int64_t end) {
  dpm_dataset d = {.n_total = n, .begin = begin, .end = end, .C = C_IN, .H = H_IN, .W = W_IN, .num_classes = K,
                   .x = (float *)x + begin * D_IN, .y = (int32_t *)y + begin};
  return d;
}

static dpm_model *new_model(int max_batch) {
  dpm_layer_spec *specs;
  int n;
  char err[DPM_ERRLEN];
  if (dpm_model_parse(LAYERS, &specs, &n, err)) dpm_fatal("%s", err);
  dpm_model *m = dpm_model_create(specs, n, C_IN, H_IN, W_IN, K, max_batch, err);
  if (!m) dpm_fatal("%s", err);
  dpm_free(specs);
  dpm_key ik = dpm_key_from_seed(1, DPM_STREAM_INIT);
  dpm_model_init_params(m, &ik);
  return m;
}

/* Run `steps` steps of DP-SGD on comm (this rank's shard) and return the final parameters (malloc'd). */
static float *train(MPI_Comm comm, const float *x, const int32_t *y, int64_t n, int steps, double q, double sigma,
                    dpm_clipping mode, int pb, size_t *P) {
  int r, s;
  MPI_Comm_rank(comm, &r);
  MPI_Comm_size(comm, &s);
  dpm_dataset d = view(x, y, n, n * r / s, n * (r + 1) / s);
  dpm_model *m = new_model(pb);
  dpm_step st = {.comm = comm, .model = m, .data = &d, .q = q, .dp = 1, .clip = 0.5, .sigma = sigma,
                 .clipping = mode, .pipe = MPI_COMM_SELF, .physical_batch = pb, .sample_key = dpm_key_from_seed(2, DPM_STREAM_SAMPLE),
                 .noise_key = dpm_key_from_seed(2, DPM_STREAM_NOISE)};
  dpm_step_init(&st);
  dpm_sgd opt;
  *P = dpm_model_num_params(m);
  dpm_sgd_init(&opt, *P, 0.9, 0);
  dpm_step_stats stats;
  for (int t = 0; t < steps; t++) {
    dpm_step_run(&st, (uint64_t)t, &stats);
    dpm_sgd_step(&opt, dpm_model_params(m), dpm_model_grads(m), 1.0 / (q * (double)n), 0.5);
  }
  float *out = malloc(sizeof(float) * *P);
  memcpy(out, dpm_model_params(m), sizeof(float) * *P);
  dpm_sgd_free(&opt);
  dpm_step_free(&st);
  dpm_model_free(m);
  return out;
}

/* The pre-noise (sigma = 0) summed clipped gradient of one step with q = 1, on comm. */
static float *clipped_sum(MPI_Comm comm, const float *x, const int32_t *y, int64_t n, dpm_clipping mode, double clip,
                          size_t *P) {
  int r, s;
  MPI_Comm_rank(comm, &r);
  MPI_Comm_size(comm, &s);
  dpm_dataset d = view(x, y, n, n * r / s, n * (r + 1) / s);
  dpm_model *m = new_model(8);
  dpm_step st = {.comm = comm, .model = m, .data = &d, .q = 1.0, .dp = 1, .clip = clip, .sigma = 0,
                 .clipping = mode, .pipe = MPI_COMM_SELF, .physical_batch = 8, .sample_key = dpm_key_from_seed(3, 0),
                 .noise_key = dpm_key_from_seed(3, 1)};
  dpm_step_init(&st);
  dpm_step_stats stats;
  dpm_step_run(&st, 0, &stats);
  *P = dpm_model_num_params(m);
  float *out = malloc(sizeof(float) * *P);
  memcpy(out, dpm_model_grads(m), sizeof(float) * *P);
  dpm_step_free(&st);
  dpm_model_free(m);
  return out;
}

static void test_grid_invariance(void) {
  for (int mode = 0; mode < 2; mode++) {
    size_t P;
    float *ref = train(MPI_COMM_SELF, X, Y, N, 20, 0.3, 1.1, (dpm_clipping)mode, 64, &P);
    float *got = train(MPI_COMM_WORLD, X, Y, N, 20, 0.3, 1.1, (dpm_clipping)mode, 3, &P);
    double diff = 0, norm = 0;
    for (size_t j = 0; j < P; j++) diff += (double)(ref[j] - got[j]) * (ref[j] - got[j]), norm += (double)ref[j] * ref[j];
    CHECK(sqrt(diff) <= 1e-5 * sqrt(norm), "mode %d, %d ranks, micro-batches of 3: parameters differ from 1 rank by "
          "%g relative", mode, size, sqrt(diff / norm));
    float *again = train(MPI_COMM_WORLD, X, Y, N, 20, 0.3, 1.1, (dpm_clipping)mode, 3, &P);
    CHECK(memcmp(got, again, sizeof(float) * P) == 0, "the same grid twice is not bitwise identical");
    free(ref);
    free(got);
    free(again);
  }
}

static void test_sensitivity(void) {
  /* D' = D without example k (add/remove adjacency) */
  static float X2[N * D_IN];
  static int32_t Y2[N];
  int ks[] = {5, 0, 20};
  for (int mode = 0; mode < 2; mode++) {
    /* flat: example 5 has a large gradient; per-layer: C (1e-6) so small that every group of every example is
       clipped (example 5's first layer is saturated by tanh, so its group gradient is small) */
    double C = mode == DPM_CLIP_FLAT ? 0.5 : 1e-6;
    size_t P;
    float *full = clipped_sum(MPI_COMM_WORLD, X, Y, N, (dpm_clipping)mode, C, &P);
    for (int a = 0; a < 3; a++) {
      int k = ks[a];
      dpm_test_drop_example(X, Y, N, D_IN, k, X2, Y2);
      float *less = clipped_sum(MPI_COMM_WORLD, X2, Y2, N - 1, (dpm_clipping)mode, C, &P);
      double d2 = 0;
      for (size_t j = 0; j < P; j++) d2 += (double)(full[j] - less[j]) * (full[j] - less[j]);
      CHECK(sqrt(d2) <= C * (1 + 1e-5), "mode %d example %d: removing it moved the sum by %g > C = %g", mode, k,
            sqrt(d2), C);
      if (k == 5) CHECK_CLOSE(sqrt(d2), C, 1e-5, 0, "a large-gradient example moves the sum by exactly C");
      free(less);
    }
    free(full);
  }
}

static void test_noise_once(void) {
  /* q so small that no example is ever sampled: the summed gradient is the noise alone */
  const double sigma = 1.3, C = 0.5, q = 1e-15;
  int r = rank, s = size;
  dpm_dataset d = view(X, Y, N, N * r / s, N * (r + 1) / s), whole = view(X, Y, N, 0, N);
  dpm_model *m = new_model(8), *m1 = new_model(8);
  dpm_step st = {.comm = MPI_COMM_WORLD, .model = m, .data = &d, .q = q, .dp = 1, .clip = C, .sigma = sigma,
                 .clipping = DPM_CLIP_FLAT, .pipe = MPI_COMM_SELF, .physical_batch = 8, .sample_key = dpm_key_from_seed(4, 0),
                 .noise_key = dpm_key_from_seed(4, 1)};
  dpm_step st1 = st;
  st1.comm = MPI_COMM_SELF, st1.model = m1, st1.data = &whole;
  dpm_step_init(&st);
  dpm_step_init(&st1);
  size_t P = dpm_model_num_params(m);
  dpm_step_stats stats;
  double sum2 = 0;
  int steps = 200, identical = 1;
  for (int t = 0; t < steps; t++) {
    dpm_step_run(&st, (uint64_t)t, &stats);
    dpm_step_run(&st1, (uint64_t)t, &stats);
    const float *g = dpm_model_grads(m), *g1 = dpm_model_grads(m1);
    identical &= memcmp(g, g1, sizeof(float) * P) == 0;
    for (size_t j = 0; j < P; j++) sum2 += (double)g[j] * g[j];
  }
  double M = (double)steps * (double)P, var = sum2 / M, expect = sigma * sigma * C * C;
  /* the sample variance of M standard normals has relative sd sqrt(2/M); 6 sd: false failure < 2e-9.
     Two draws per parameter would double the variance, far outside the bound. */
  CHECK(fabs(var / expect - 1) < 6 * sqrt(2 / M), "%d ranks: noise variance %g, expected sigma^2 C^2 = %g (M = %g)",
        size, var, expect, M);
  CHECK(identical, "%d ranks: noise differs from the 1-rank draws", size);
  /* the averaged noisy gradient (divided by the expected batch qN) has variance sigma^2 C^2 / (qN)^2 by scaling */
  dpm_step_free(&st);
  dpm_step_free(&st1);
  dpm_model_free(m);
  dpm_model_free(m1);
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  make_data();
  test_grid_invariance();
  test_sensitivity();
  test_noise_once();
  return dpm_test_finish();
}
