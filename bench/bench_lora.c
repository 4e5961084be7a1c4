/* DP LoRA fine-tuning step against the non-private LoRA step and against DP full fine-tuning, on one rank, for
 * the ~1M-parameter byte-level GPT of issue 16 (L 4, C 128, T 128, 4 heads, tied head): tokens/s of one step =
 * forward + backward (with exact per-example norms for DP) + clipped (DP) or plain sum + Gaussian noise on the
 * trainable parameters (DP) + AdamW on the trainable parameters (packed, as dpmpi train does), on the layer
 * kinds of src/nn (block.c's adapters). Variants alternate within each repeat (drifts hit all alike); medians.
 *   lora-dp   base frozen, adapters rank r on c_attn, attn.c_proj, c_fc, mlp.c_proj
 *   lora-np   the same, non-private (no norms, no clipping, no noise)
 *   full-dp   every tensor trains, DP
 *   full-np   every tensor trains, non-private (for reference)
 * Usage: OPENBLAS_NUM_THREADS=1 bench_lora [B=16] [REPEATS=7] [RANK=8] [L=4 C=128 T=128 H=4]
 * Times are this thread's CPU time (bench_use_cpu_time: the step's compute on a shared machine; one rank,
 * single-threaded BLAS).
 * Prints the median step time, tokens/s and the ratios DP LoRA / non-private LoRA and DP LoRA / DP full. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "benchutil.h"
#include "dpmpi/nn/model.h"
#include "dpmpi/optim/adamw.h"
#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/train/trainable.h"

enum { LORA_DP, LORA_NP, FULL_DP, FULL_NP, NV };
static const char *const NAMES[NV] = {"lora-dp", "lora-np", "full-dp", "full-np"};

typedef struct {
  dpm_model *m;
  dpm_trainable tr;
  dpm_adamw opt;
  float *pp, *gp; /* packed parameters and gradient (LoRA) */
  double *sq;
  float *coef;
  int dp, lora;
} variant;

static void setup(variant *v, int lora, int dp, int L, int C, int T, int H, int B, int r) {
  char text[2048], err[DPM_ERRLEN];
  int n = snprintf(text, sizeof text, "embed vocab=257 context=%d width=%d", T, C);
  for (int l = 0; l < L; l++)
    n += lora ? snprintf(text + n, sizeof text - (size_t)n, "; block heads=%d lora=%d lora_alpha=%d", H, r, 2 * r)
              : snprintf(text + n, sizeof text - (size_t)n, "; block heads=%d", H);
  snprintf(text + n, sizeof text - (size_t)n, "; lm_head tied=1");
  dpm_layer_spec *specs;
  int nl;
  if (dpm_model_parse(text, &specs, &nl, err) || !(v->m = dpm_model_create(specs, nl, 1, 1, T, 257, B, err))) {
    fprintf(stderr, "bench_lora: %s\n", err);
    exit(2);
  }
  dpm_key key = dpm_key_from_seed(1, DPM_STREAM_INIT);
  dpm_model_init_params(v->m, &key);
  dpm_layer_info *info = malloc(sizeof *info * (size_t)nl);
  uint32_t *masks = calloc((size_t)nl, sizeof *masks);
  for (int i = 0; i < nl; i++) dpm_model_layer_info(v->m, i, &info[i]);
  if (lora) {
    if (dpm_trainable_match(NULL, "*.lora_*", info, nl, masks, err)) fprintf(stderr, "bench_lora: %s\n", err), exit(2);
    for (int i = 0; i < nl; i++) dpm_model_set_frozen(v->m, i, masks[i]);
  }
  dpm_trainable_init(&v->tr, info, 0, nl, masks);
  dpm_adamw_init(&v->opt, v->tr.total, 0.9, 0.999, 1e-8, 0.01);
  v->pp = malloc(sizeof(float) * v->tr.total);
  v->gp = malloc(sizeof(float) * v->tr.total);
  const int G = dpm_model_num_groups(v->m);
  v->sq = malloc(sizeof(double) * (size_t)G * B);
  v->coef = malloc(sizeof(float) * (size_t)G * B);
  v->dp = dp, v->lora = lora;
  free(info), free(masks), dpm_free(specs);
}

static double step(variant *v, const float *x, const int32_t *y, int B, uint64_t t) {
  const double t0 = bench_now();
  dpm_model *m = v->m;
  const int G = dpm_model_num_groups(m);
  dpm_model_zero_grads(m);
  dpm_model_forward(m, x, y, B, NULL);
  dpm_model_backward(m, v->dp ? v->sq : NULL);
  if (v->dp) dpm_clip_coefs(v->sq, G, B, DPM_CLIP_FLAT, 1.0, v->coef);
  dpm_model_accumulate(m, v->dp ? v->coef : NULL);
  float *params = dpm_model_params(m), *grads = dpm_model_grads(m);
  float *p = v->lora ? v->pp : params, *g = v->lora ? v->gp : grads;
  if (v->lora) dpm_trainable_pack(&v->tr, v->gp, grads), dpm_trainable_pack(&v->tr, v->pp, params);
  if (v->dp) {
    const dpm_key nk = dpm_key_from_seed(2, DPM_STREAM_NOISE);
    dpm_add_noise_slice(&nk, t, 1.0, 0, 1, 0, v->tr.total, g);
  }
  dpm_adamw_step(&v->opt, p, g, 1.0 / B, 1e-4);
  if (v->lora) dpm_trainable_unpack(&v->tr, params, v->pp);
  return bench_now() - t0;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  bench_use_cpu_time(1);
  const int B = argc > 1 ? atoi(argv[1]) : 16, reps = argc > 2 ? atoi(argv[2]) : 7, r = argc > 3 ? atoi(argv[3]) : 8;
  const int L = argc > 4 ? atoi(argv[4]) : 4, C = argc > 5 ? atoi(argv[5]) : 128, T = argc > 6 ? atoi(argv[6]) : 128,
            H = argc > 7 ? atoi(argv[7]) : 4;
  variant v[NV];
  setup(&v[LORA_DP], 1, 1, L, C, T, H, B, r);
  setup(&v[LORA_NP], 1, 0, L, C, T, H, B, r);
  setup(&v[FULL_DP], 0, 1, L, C, T, H, B, r);
  setup(&v[FULL_NP], 0, 0, L, C, T, H, B, r);
  float *x = malloc(sizeof(float) * (size_t)B * T);
  int32_t *y = malloc(sizeof(int32_t) * (size_t)B * T);
  for (int k = 0; k < B * T; k++) x[k] = (float)((k * 7919) % 256), y[k] = (int32_t)((k * 104729 + 13) % 256);
  double *tm[NV];
  for (int k = 0; k < NV; k++) tm[k] = malloc(sizeof(double) * (size_t)reps);
  for (int k = 0; k < NV; k++) step(&v[k], x, y, B, 0); /* warm-up */
  for (int rep = 0; rep < reps; rep++)
    for (int k = 0; k < NV; k++) tm[k][rep] = step(&v[k], x, y, B, (uint64_t)rep + 1);
  printf("bench_lora: GPT L %d C %d T %d H %d (tied, byte vocabulary), B %d (%d tokens/step), LoRA rank %d on 4 "
         "linears per block, %d repeats, 1 rank\n", L, C, T, H, B, B * T, r, reps);
  double med[NV];
  for (int k = 0; k < NV; k++) {
    med[k] = bench_median(tm[k], reps);
    printf("%-8s trainable %8zu of %8zu  step %8.2f ms  %9.0f tokens/s\n", NAMES[k], v[k].tr.total,
           dpm_model_num_params(v[k].m), 1e3 * med[k], B * T / med[k]);
  }
  printf("ratios (tokens/s): DP LoRA / non-private LoRA %.3f, DP LoRA / DP full %.3f, DP full / non-private full "
         "%.3f\n", med[LORA_NP] / med[LORA_DP], med[FULL_DP] / med[LORA_DP], med[FULL_NP] / med[FULL_DP]);
  MPI_Finalize();
  return 0;
}
