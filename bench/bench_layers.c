/* Benchmark of one training micro-batch (forward + backward + accumulate) for the two reference models
 * (MLP 784-512-10 and the tanh CNN on 1x28x28), non-private (no norms, coef NULL) versus DP (per-example
 * norms, per-layer clip coefficients, weighted accumulate). Prints median times over repeats, the DP /
 * non-private ratio and examples per second. Run single-threaded: OPENBLAS_NUM_THREADS=1.
 * Usage: bench_layers [batch=256] [repeats=11] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpmpi/nn/model.h"

#include "benchutil.h"

/* One step; dp selects norms + clipping coefficients (per-layer clip at 1.0). */
static void step(dpm_model *m, const float *x, const int32_t *y, int B, int dp, double *sq, float *coef) {
  dpm_model_forward(m, x, y, B, NULL);
  if (!dp) {
    dpm_model_backward(m, NULL);
    dpm_model_accumulate(m, NULL);
    return;
  }
  dpm_model_backward(m, sq);
  const int G = dpm_model_num_groups(m);
  for (int k = 0; k < G * B; k++) coef[k] = sq[k] > 1.0 ? (float)(1.0 / sqrt(sq[k])) : 1.0f;
  dpm_model_accumulate(m, coef);
}

static void bench(const char *name, const char *text, int B, int reps) {
  char err[DPM_ERRLEN];
  dpm_layer_spec *specs;
  int n;
  if (dpm_model_parse(text, &specs, &n, err)) {
    fprintf(stderr, "%s\n", err);
    exit(1);
  }
  dpm_model *m = dpm_model_create(specs, n, 1, 28, 28, 10, B, err);
  if (!m) {
    fprintf(stderr, "%s\n", err);
    exit(1);
  }
  dpm_key key = dpm_key_from_seed(1, 0);
  dpm_model_init_params(m, &key);
  float *x = malloc(sizeof(float) * (size_t)B * 784);
  int32_t *y = malloc(sizeof(int32_t) * (size_t)B);
  srand(7);
  for (size_t k = 0; k < (size_t)B * 784; k++) x[k] = (float)rand() / RAND_MAX;
  for (int i = 0; i < B; i++) y[i] = rand() % 10;
  const int G = dpm_model_num_groups(m);
  double *sq = malloc(sizeof(double) * (size_t)G * B);
  float *coef = malloc(sizeof(float) * (size_t)G * B);
  double *t[2];
  for (int dp = 0; dp < 2; dp++) t[dp] = malloc(sizeof(double) * (size_t)reps);
  for (int w = 0; w < 2; w++) {
    step(m, x, y, B, 0, sq, coef);
    step(m, x, y, B, 1, sq, coef);
  }
  /* interleave the two variants so drifts in clock speed hit both alike */
  for (int r = 0; r < reps; r++)
    for (int dp = 0; dp < 2; dp++) {
      double t0 = dpm_time();
      step(m, x, y, B, dp, sq, coef);
      t[dp][r] = dpm_time() - t0;
    }
  double t_np = bench_median(t[0], reps), t_dp = bench_median(t[1], reps);
  char desc[2048];
  dpm_model_describe(m, desc, sizeof desc);
  printf("== %s (batch %d, %d repeats, %zu params)\n%s", name, B, reps, dpm_model_num_params(m), desc);
  printf("  non-private: %8.3f ms  %9.0f examples/s\n", 1e3 * t_np, B / t_np);
  printf("  DP         : %8.3f ms  %9.0f examples/s\n", 1e3 * t_dp, B / t_dp);
  printf("  ratio DP / non-private: %.3f\n", t_dp / t_np);
  for (int dp = 0; dp < 2; dp++) free(t[dp]);
  free(sq);
  free(coef);
  free(x);
  free(y);
  dpm_model_free(m);
  dpm_free(specs);
}

int main(int argc, char **argv) {
  int B = argc > 1 ? atoi(argv[1]) : 256, reps = argc > 2 ? atoi(argv[2]) : 11;
  if (B < 1 || reps < 1) return 2;
  bench("MLP 784-512-10", BENCH_MLP, B, reps);
  bench("tanh CNN", BENCH_TANH_CNN, B, reps);
  return 0;
}
