/* GPT-2 DP step cost on one rank: tokens/s of forward + backward + clipped sum with per-tensor
 * per-example norms and flat clipping, against the non-private forward + backward + sum, for byte-level
 * models; the norm method of each linear and the norms' share of the DP step.
 * Usage: OPENBLAS_NUM_THREADS=1 bench_gpt [L C T H B reps [auto|nokeep|ghost|explicit]]   (default: both
 * issue-15 sizes, auto). "norms" is the backward with norms minus the backward without: with kept explicit
 * gradients it includes the per-example GEMMs that replace the clipped sum's GEMM. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "benchutil.h"
#include "dpmpi/nn/gpt.h"

static void run(int L, int C, int T, int H, int B, int reps, const char *method) {
  char err[DPM_ERRLEN];
  const dpm_gpt_config cfg = {.V = 257, .T = T, .C = C, .H = H, .L = L, .tied = 1};
  dpm_gpt *g = dpm_gpt_create(&cfg, B, err);
  if (!g) {
    fprintf(stderr, "bench_gpt: %s\n", err);
    exit(2);
  }
  dpm_key key = dpm_key_from_seed(1, 1);
  dpm_gpt_init_params(g, &key);
  if (!strcmp(method, "nokeep")) dpm_gpt_set_norm_method(g, DPM_NORM_AUTO, 0);
  if (!strcmp(method, "ghost")) dpm_gpt_set_norm_method(g, DPM_NORM_GHOST, 0);
  if (!strcmp(method, "explicit")) dpm_gpt_set_norm_method(g, DPM_NORM_EXPLICIT, (size_t)-1);
  const int K = dpm_gpt_num_tensors(g);
  int32_t *tok = malloc(sizeof(int32_t) * B * T), *tgt = malloc(sizeof(int32_t) * B * T);
  for (int r = 0; r < B * T; r++) tok[r] = (r * 7919) % 256, tgt[r] = (r * 104729 + 13) % 256;
  double *sq = malloc(sizeof(double) * K * B), *tn = malloc(sizeof(double) * (reps > 0 ? reps : 1)),
         *tdp = malloc(sizeof(double) * reps), *tnorm = malloc(sizeof(double) * reps);
  float *coef = malloc(sizeof(float) * K * B);
  for (int rep = 0; rep < reps + 1; rep++) {
    double t0 = dpm_time();
    dpm_gpt_forward(g, tok, tgt, B, T, -1, NULL);
    dpm_gpt_backward(g, NULL);
    dpm_gpt_accumulate(g, NULL);
    double t1 = dpm_time();
    dpm_gpt_forward(g, tok, tgt, B, T, -1, NULL);
    double t2 = dpm_time();
    dpm_gpt_backward(g, sq);
    double t3 = dpm_time();
    for (int b = 0; b < B; b++) {
      double s = 0;
      for (int k = 0; k < K; k++) s += sq[k * B + b];
      const float c = (float)(s > 1.0 ? 1.0 / sqrt(s) : 1.0);
      for (int k = 0; k < K; k++) coef[k * B + b] = c;
    }
    dpm_gpt_accumulate(g, coef);
    double t4 = dpm_time();
    dpm_gpt_forward(g, tok, tgt, B, T, -1, NULL);
    double t5 = dpm_time();
    dpm_gpt_backward(g, NULL);
    double t6 = dpm_time();
    if (rep == 0) continue; /* warm-up */
    tn[rep - 1] = t1 - t0, tdp[rep - 1] = t4 - t1;
    tnorm[rep - 1] = (t3 - t2) - (t6 - t5); /* backward with norms minus without */
  }
  const double mn = bench_median(tn, reps), md = bench_median(tdp, reps), mnorm = bench_median(tnorm, reps);
  printf("gpt [%s] L=%d C=%d T=%d H=%d V=257 B=%d params=%zu: non-private %.0f tokens/s, DP %.0f tokens/s, DP / "
         "non-private time %.3f, norms %.1f%% of the DP step\n",
         method, L, C, T, H, B, dpm_gpt_num_params(g), B * T / mn, B * T / md, md / mn, 100 * mnorm / md);
  printf("  norm methods at T=%d:", T);
  for (int k = 0; k < K; k++) {
    const char *n = dpm_gpt_tensor_name(g, k);
    if (strncmp(n, "h.0.", 4) && strcmp(n, "wte.weight")) continue;
    if (!strstr(n, "weight") || strstr(n, "ln_")) continue;
    printf(" %s=%s", n, dpm_gpt_norm_method(g, k) == DPM_NORM_GHOST ? "ghost" : dpm_gpt_norm_kept(g, k) ? "explicit-kept" : "explicit");
  }
  printf("\n");
  dpm_gpt_free(g);
  free(tok), free(tgt), free(sq), free(tn), free(tdp), free(tnorm), free(coef);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  if (argc >= 7) {
    run(atoi(argv[1]), atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]),
        argc > 7 ? argv[7] : "auto");
  } else {
    run(4, 128, 128, 4, 8, 5, "auto");
    run(6, 384, 256, 6, 2, 3, "auto");
  }
  MPI_Finalize();
  return 0;
}
