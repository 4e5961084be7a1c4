/* Tokens/s of the DP step of a byte-level GPT against the non-private step, through the training path of
 * `dpmpi train` (a dpm_model of the GPT layer kinds embed; block ...; lm_head, stepped by dpm_step_run of
 * src/train/step.c: Poisson sampling, micro-batches, per-example norms and flat clipping, noise, allreduce;
 * then the SGD update), for the two sizes of issue 15:
 *   small  L 4, C 128, T 128, H 4 (0.84M parameters), expected batch 16 per replica (2048 tokens)
 *   large  L 6, C 384, T 256, H 6 (10.8M parameters), expected batch 4 per replica (1024 tokens)
 * on the grid of the world size: D x 1 (data parallel, tied head) or, with --stages 2, D/2 x 2 (a pipeline
 * split between blocks; the head untied, which a pipeline needs, and flat clipping in two passes).
 * Repeats alternate the two variants (so drifts of the machine hit both alike) after a warm-up step of
 * each; printed: median step times, tokens/s (targets of the realized batches), the DP / non-private ratio
 * of the medians and the paired ratio (median over repeats of the ratio of adjacent repeats, which step
 * through the same Poisson batches).
 * Then, on one rank (--stages 1, rank 0's model), where the time of one micro-batch goes, each phase timed
 * apart through the public API (as bench_breakdown does for the MLP/CNN): forward; backward without and
 * with the per-example norms (their difference is the norms' cost: "norms' share" = that / the DP
 * micro-batch); clipping coefficients; accumulate (DP: weighted by the coefficients); noise on all P. The
 * norm method of each layer is printed: the embedding by token equality, each block's four sequence
 * linears (c_attn, attn.c_proj, c_fc, mlp.c_proj) ghost, explicit, or explicit and kept for the clipped sum
 * (src/nn/block.c: chosen by cost, kept while the model's memory cap allows), the LM head's. --methods also times the DP micro-batch with every norm forced ghost and forced explicit
 * (formed for the norm only, not kept).
 *
 * Usage: [mpirun -np R] bench_gpt_step [--models small,large] [--batch B] [--repeats R=5] [--steps S=2]
 *        [--physical PB] [--stages 1|2] [--methods] [--csv FILE] [--cpu-time]
 *   --batch B     expected examples per replica of both models (default: 16 small, 4 large)
 *   --physical PB micro-batch size (default B + 4 sqrt(B) + 8: one micro-batch per step, as bench_step; a
 *                 smaller one lets more blocks keep their explicit gradients within the model's memory cap)
 *   --csv FILE  append a row per model: model,params,L,C,T,ranks,stages,batch,repeats,steps,nonprivate_ms,
 *               dp_ms,ratio,ratio_paired,nonprivate_tok_s,dp_tok_s,norms_share (norms_share: empty unless
 *               measured, i.e. one stage)
 * Run with OPENBLAS_NUM_THREADS=1. Data: N = 4096 synthetic rows of T + 1 byte ids (the cost does not depend
 * on the values). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpmpi/optim/sgd.h"
#include "dpmpi/parallel/grid.h"
#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/train/step.h"

#include "benchutil.h"

#define N_ROWS 4096
#define VOCAB 257
#define MAX_REPEATS 64

typedef struct {
  const char *key;
  int L, C, T, H, batch;
} gpt_def;

static const gpt_def MODELS[] = {{"small", 4, 128, 128, 4, 16}, {"large", 6, 384, 256, 6, 4}};
#define NMODELS (int)(sizeof MODELS / sizeof MODELS[0])

static char *layer_text(const gpt_def *g, int tied) {
  size_t cap = 128 + (size_t)g->L * 24;
  char *s = dpm_malloc(cap);
  size_t n = (size_t)snprintf(s, cap, "embed vocab=%d context=%d width=%d", VOCAB, g->T, g->C);
  for (int l = 0; l < g->L; l++) n += (size_t)snprintf(s + n, cap - n, "; block heads=%d", g->H);
  snprintf(s + n, cap - n, tied ? "; lm_head tied=1" : "; lm_head tied=0 vocab=%d", VOCAB);
  return s;
}

/* This rank's stage of the GPT (the whole model when stages = 1), initialized as dpmpi train does. */
static dpm_model *build_stage(const gpt_def *g, int stages, int stage, int max_batch) {
  char err[DPM_ERRLEN], *text = layer_text(g, stages == 1);
  dpm_layer_spec *specs;
  int n, first[3];
  if (dpm_model_parse(text, &specs, &n, err)) dpm_fatal("%s", err);
  dpm_model *full = dpm_model_create(specs, n, 1, 1, g->T, VOCAB, 1, err);
  if (!full) dpm_fatal("%s", err);
  if (dpm_grid_split_layers(full, n, stages, NULL, first, err)) dpm_fatal("%s", err);
  dpm_model *m = dpm_grid_stage_model(full, specs, first, stage, stages, 1, 1, g->T, VOCAB, max_batch, err);
  if (!m) dpm_fatal("stage %d: %s", stage, err);
  dpm_key ik = dpm_key_from_seed(3, DPM_STREAM_INIT);
  dpm_model_init_params(m, &ik);
  dpm_model_set_pad_id(m, 255);
  dpm_model_free(full);
  dpm_free(specs), dpm_free(text);
  return m;
}

/* One variant (non-private or DP) of one model: its own stage model, step and optimizer. */
typedef struct {
  dpm_model *m;
  dpm_step st;
  dpm_sgd opt;
  uint64_t t;
  double batch;
} variant;

static void variant_init(variant *v, const gpt_def *g, const dpm_grid *grid, int dp, const dpm_dataset *d, double q,
                         int pb, double batch) {
  v->m = build_stage(g, grid->stages, grid->stage, pb);
  v->st = (dpm_step){.comm = grid->dp, .pipe = grid->pipe, .model = v->m, .data = d, .q = q, .dp = dp, .clip = 1.0,
                     .sigma = 1.0, .clipping = DPM_CLIP_FLAT, .physical_batch = pb,
                     .sample_key = dpm_key_from_seed(4, 0), .noise_key = dpm_key_from_seed(4, 1)};
  dpm_step_init(&v->st);
  dpm_sgd_init(&v->opt, dpm_model_num_params(v->m), 0.9, 0);
  v->t = 0, v->batch = batch;
}

static void variant_free(variant *v) {
  dpm_sgd_free(&v->opt);
  dpm_step_free(&v->st);
  dpm_model_free(v->m);
}

/* `steps` steps; returns seconds per step (max over ranks); *examples receives examples per step (the
 * whole grid's). */
static double variant_run(variant *v, int steps, double *examples) {
  dpm_step_stats stats;
  double ex = 0;
  DPM_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
  double t0 = bench_now();
  for (int k = 0; k < steps; k++, v->t++) {
    dpm_step_run(&v->st, v->t, &stats);
    dpm_sgd_step(&v->opt, dpm_model_params(v->m), dpm_model_grads(v->m), 1e-3 / v->batch, 0);
    ex += stats.examples;
  }
  double dt = (bench_now() - t0) / steps;
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
  if (examples) *examples = ex / steps;
  return dt;
}

/* The phases of one micro-batch of B examples on a whole (one-stage) model, each a median of `repeats`. */
enum { PH_FWD, PH_BWD_NP, PH_ACC_NP, PH_BWD_DP, PH_CLIP, PH_ACC_DP, PH_NOISE, NPH };
static const char *PHASE[NPH] = {"forward", "backward (np)", "accumulate (np)", "backward + norms (dp)", "clip",
                                 "accumulate clipped (dp)", "noise (all P)"};

static void phases(dpm_model *m, const dpm_dataset *d, int B, int repeats, double med[NPH]) {
  const int G = dpm_model_num_groups(m), T = d->W;
  double *sq = dpm_malloc(sizeof(double) * (size_t)G * B), t[NPH][MAX_REPEATS];
  float *coef = dpm_malloc(sizeof(float) * (size_t)G * B);
  const size_t P = dpm_model_num_params(m);
  const dpm_key nk = dpm_key_from_seed(4, 1);
  for (int r = -1; r < repeats; r++) { /* r = -1: warm-up */
    double ph[NPH], t0 = bench_now(), t1;
    dpm_model_zero_grads(m);
    dpm_model_forward(m, d->x, d->y, B, NULL);
    t1 = bench_now(), ph[PH_FWD] = t1 - t0, t0 = t1;
    dpm_model_backward(m, NULL);
    t1 = bench_now(), ph[PH_BWD_NP] = t1 - t0, t0 = t1;
    dpm_model_accumulate(m, NULL);
    t1 = bench_now(), ph[PH_ACC_NP] = t1 - t0;
    dpm_model_forward(m, d->x, d->y, B, NULL);
    t0 = bench_now();
    dpm_model_backward(m, sq);
    t1 = bench_now(), ph[PH_BWD_DP] = t1 - t0, t0 = t1;
    dpm_clip_coefs(sq, G, B, DPM_CLIP_FLAT, 1.0, coef);
    t1 = bench_now(), ph[PH_CLIP] = t1 - t0, t0 = t1;
    dpm_model_accumulate(m, coef);
    t1 = bench_now(), ph[PH_ACC_DP] = t1 - t0, t0 = t1;
    dpm_add_noise(&nk, (uint64_t)(r + 1), 1.0, 0, P, dpm_model_grads(m));
    t1 = bench_now(), ph[PH_NOISE] = t1 - t0;
    if (r >= 0)
      for (int k = 0; k < NPH; k++) t[k][r] = ph[k];
  }
  for (int k = 0; k < NPH; k++) med[k] = bench_median(t[k], repeats);
  (void)T;
  dpm_free(sq), dpm_free(coef);
}

/* The DP micro-batch (forward, backward with norms, clip, accumulate) alone, median seconds of `repeats`. */
static double dp_microbatch(dpm_model *m, const dpm_dataset *d, int B, int repeats) {
  const int G = dpm_model_num_groups(m);
  double *sq = dpm_malloc(sizeof(double) * (size_t)G * B), t[MAX_REPEATS];
  float *coef = dpm_malloc(sizeof(float) * (size_t)G * B);
  for (int r = -1; r < repeats; r++) {
    double t0 = bench_now();
    dpm_model_forward(m, d->x, d->y, B, NULL);
    dpm_model_backward(m, sq);
    dpm_clip_coefs(sq, G, B, DPM_CLIP_FLAT, 1.0, coef);
    dpm_model_accumulate(m, coef);
    if (r >= 0) t[r] = bench_now() - t0;
  }
  dpm_free(sq), dpm_free(coef);
  return bench_median(t, repeats);
}

/* The norm method of every layer with parameters, from the model's description (the block's lines say per
 * linear: kept = explicit per-example gradients kept for the clipped sum, explicit = formed for the norm
 * only, ghost = Gram matrices); the embedding's norms are by token equality. Consecutive equal lines once. */
static void print_methods(dpm_model *m) {
  char buf[8192], prev[256] = "";
  dpm_model_describe(m, buf, sizeof buf);
  printf("  norm methods: embed wte+wpe by token equality; lm_head %s\n",
         dpm_model_norm_method(m, dpm_model_num_groups(m) - 1) == DPM_NORM_GHOST ? "ghost" : "explicit");
  for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
    const char *b = strstr(line, ": block "), *e = b ? strstr(b, " -> ") : NULL;
    if (!b || !e) continue;
    char what[256];
    snprintf(what, sizeof what, "%.*s", (int)(e - b - 2), b + 2);
    if (strcmp(what, prev)) printf("    %.*s: %s\n", (int)(b - line), line, what);
    snprintf(prev, sizeof prev, "%s", what);
  }
}

static void usage(void) {
  fprintf(stderr, "usage: [mpirun -np R] bench_gpt_step [--models small,large] [--batch B] [--repeats R=5 (1..%d)] "
                  "[--steps S=2] [--physical PB] [--stages 1|2] [--methods] [--csv FILE] [--cpu-time]\n", MAX_REPEATS);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const char *models = "small,large", *csv = NULL;
  int batch_opt = 0, pb_opt = 0, repeats = 5, steps = 2, stages = 1, methods = 0, cpu_time = 0;
  static const struct option opts[] = {{"models", required_argument, 0, 'm'}, {"batch", required_argument, 0, 'b'},
                                       {"repeats", required_argument, 0, 'r'}, {"steps", required_argument, 0, 's'}, {"physical", required_argument, 0, 'p'},
                                       {"stages", required_argument, 0, 'S'}, {"methods", no_argument, 0, 'M'},
                                       {"csv", required_argument, 0, 'c'}, {"cpu-time", no_argument, 0, 't'},
                                       {0, 0, 0, 0}};
  for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
    switch (o) {
      case 'm': models = optarg; break;
      case 'b': batch_opt = atoi(optarg); break;
      case 'r': repeats = atoi(optarg); break;
      case 's': steps = atoi(optarg); break;
      case 'p': pb_opt = atoi(optarg); break;
      case 'S': stages = atoi(optarg); break;
      case 'M': methods = 1; break;
      case 'c': csv = optarg; break;
      case 't': bench_use_cpu_time(cpu_time = 1); break;
      default: if (rank == 0) usage(); MPI_Finalize(); return 2;
    }
  }
  if (optind < argc || repeats < 1 || repeats > MAX_REPEATS || steps < 1 || batch_opt < 0 || pb_opt < 0 || stages < 1 ||
      stages > 2 || size % stages) {
    if (rank == 0) usage();
    MPI_Finalize();
    return 2;
  }
  char err[DPM_ERRLEN];
  dpm_grid grid;
  if (dpm_grid_create(MPI_COMM_WORLD, size / stages, stages, &grid, err)) dpm_fatal("%s", err);
  FILE *fs = NULL;
  if (rank == 0 && csv)
    fs = bench_csv_open(csv, "model,params,L,C,T,ranks,stages,batch,repeats,steps,nonprivate_ms,dp_ms,ratio,"
                             "ratio_paired,nonprivate_tok_s,dp_tok_s,norms_share");
  if (rank == 0)
    printf("bench_gpt_step: %d rank(s) = %d replica(s) x %d stage(s), N = %d rows, flat clipping C = 1, sigma = 1, "
           "SGD; median of %d repeats x %d steps (np and DP alternating), %s\n", size, grid.replicas, stages, N_ROWS,
           repeats, steps, cpu_time ? "CPU time" : "wall time");
  for (int mi = 0; mi < NMODELS; mi++) {
    const gpt_def *g = &MODELS[mi];
    if (!strstr(models, g->key)) continue;
    const int batch = batch_opt ? batch_opt : g->batch, pb = pb_opt ? pb_opt : batch + (int)(4 * sqrt((double)batch)) + 8, T = g->T;
    /* this replica's shard of N synthetic rows: ids as floats (inputs), next ids (targets) */
    const int64_t N = N_ROWS, b = N * grid.replica / grid.replicas, e = N * (grid.replica + 1) / grid.replicas;
    const int64_t nd = e - b > pb ? e - b : pb;
    dpm_dataset d = {.n_total = N, .begin = b, .end = e, .C = 1, .H = 1, .W = T, .num_classes = VOCAB};
    d.x = dpm_malloc_aligned(sizeof(float) * (size_t)nd * T);
    d.y = dpm_malloc(sizeof(int32_t) * (size_t)nd * T);
    for (int64_t i = 0; i < nd; i++)
      for (int t = 0; t < T; t++) {
        const uint64_t h = (uint64_t)(b + i) * 1000003u + (uint64_t)t;
        d.x[i * T + t] = (float)(h * 7919 % 256), d.y[i * T + t] = (int32_t)((h * 104729 + 13) % 256);
      }
    const double q = (double)batch * grid.replicas / (double)N;
    variant v[2];
    for (int k = 0; k < 2; k++) variant_init(&v[k], g, &grid, k, &d, q, pb, batch);
    for (int k = 0; k < 2; k++) variant_run(&v[k], 1, NULL); /* warm-up */
    double t[2][MAX_REPEATS], x[2][MAX_REPEATS], pr[MAX_REPEATS];
    for (int r = 0; r < repeats; r++) {
      for (int k = 0; k < 2; k++) t[k][r] = variant_run(&v[k], steps, &x[k][r]);
      pr[r] = t[1][r] / t[0][r];
    }
    double med[2], tok[2];
    for (int k = 0; k < 2; k++) {
      double xs[MAX_REPEATS];
      med[k] = bench_median(t[k], repeats);
      for (int r = 0; r < repeats; r++) xs[r] = x[k][r] * T / t[k][r];
      tok[k] = bench_median(xs, repeats);
    }
    unsigned long long Pw = (unsigned long long)dpm_model_num_params(v[0].m); /* the whole model's: sum of the stages' */
    DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &Pw, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, grid.pipe));
    const size_t P = (size_t)Pw;
    const double paired = bench_median(pr, repeats);
    if (rank == 0) {
      printf("gpt %s: L %d, C %d, T %d, H %d, %s head, %zu parameters, expected batch %d per replica (%d tokens), "
             "physical %d\n", g->key, g->L, g->C, g->T, g->H, stages == 1 ? "tied" : "untied", P, batch, batch * T, pb);
      for (int k = 0; k < 2; k++)
        printf("  %-12s %9.1f ms/step  %8.0f tokens/s\n", k ? "dp-sgd" : "non-private", 1e3 * med[k], tok[k]);
      printf("  dp / non-private step time: %.3f, paired %.3f (goal <= 1.15)\n", med[1] / med[0], paired);
    }
    double norms_share = -1;
    if (stages == 1) {
      if (rank == 0) print_methods(v[1].m);
      double ph[NPH];
      const int mb = batch < pb ? batch : pb; /* the micro-batch timed: the expected batch, at most PB */
      phases(v[1].m, &d, mb, repeats, ph);
      const double np_mb = ph[PH_FWD] + ph[PH_BWD_NP] + ph[PH_ACC_NP],
                   dp_mb = ph[PH_FWD] + ph[PH_BWD_DP] + ph[PH_CLIP] + ph[PH_ACC_DP] + ph[PH_NOISE];
      norms_share = (ph[PH_BWD_DP] - ph[PH_BWD_NP]) / dp_mb;
      if (rank == 0) {
        printf("  one micro-batch of %d examples on rank 0 (median of %d):", mb, repeats);
        for (int k = 0; k < NPH; k++) printf(" %s %.1f ms%s", PHASE[k], 1e3 * ph[k], k < NPH - 1 ? "," : "\n");
        printf("  micro-batch np %.1f ms, dp %.1f ms (%.3f); norms (backward with - without) %.1f ms = %.1f%% of the "
               "dp micro-batch; clipped accumulate - plain %.1f ms, noise %.1f ms\n", 1e3 * np_mb, 1e3 * dp_mb,
               dp_mb / np_mb, 1e3 * (ph[PH_BWD_DP] - ph[PH_BWD_NP]), 100 * norms_share,
               1e3 * (ph[PH_ACC_DP] - ph[PH_ACC_NP]), 1e3 * ph[PH_NOISE]);
      }
      if (methods) { /* every norm forced ghost, then forced explicit, against the default (cost model) */
        const int G = dpm_model_num_groups(v[1].m);
        double tm[3];
        tm[0] = dp_microbatch(v[1].m, &d, mb, repeats);
        for (int mth = 1; mth <= 2; mth++) {
          for (int gi = 0; gi < G; gi++) dpm_model_set_norm_method(v[1].m, gi, mth == 1 ? DPM_NORM_GHOST : DPM_NORM_EXPLICIT);
          tm[mth] = dp_microbatch(v[1].m, &d, mb, repeats);
        }
        if (rank == 0)
          printf("  dp micro-batch (forward, backward + norms, clip, accumulate): default %.1f ms, all ghost %.1f ms, "
                 "all explicit (not kept) %.1f ms\n", 1e3 * tm[0], 1e3 * tm[1], 1e3 * tm[2]);
      }
    }
    if (fs) {
      fprintf(fs, "%s,%zu,%d,%d,%d,%d,%d,%d,%d,%d,%.3f,%.3f,%.4f,%.4f,%.1f,%.1f,", g->key, P, g->L, g->C, g->T, size,
              stages, batch, repeats, steps, 1e3 * med[0], 1e3 * med[1], med[1] / med[0], paired, tok[0], tok[1]);
      if (norms_share >= 0) fprintf(fs, "%.4f", norms_share);
      fprintf(fs, "\n");
    }
    for (int k = 0; k < 2; k++) variant_free(&v[k]);
    dpm_free(d.x), dpm_free(d.y);
  }
  if (fs) fclose(fs);
  dpm_grid_free(&grid);
  MPI_Finalize();
  return 0;
}
