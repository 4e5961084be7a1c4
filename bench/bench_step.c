/* DP-SGD step against the non-private step on the same code path (dpm_step_run + SGD update: sampling,
 * micro-batches, per-example norms and clipping, noise, allreduce), at the same expected batch, for the
 * MLP 784-512-10, the tanh CNN of Papernot et al. and a wide MLP 784-4096-2048-10 (11.6M parameters).
 * Repeats alternate the two variants (so drifts of the machine hit both alike) after warm-up steps;
 * prints median step times, examples/s and the DP/non-private ratio measured in the same run.
 *
 * GEMM efficiency (dense models): the step's achieved GFLOP/s against single-core cblas_sgemm measured in
 * the same run. Counted flops per step: the dense layers' GEMMs, 2 n C O each for the forward, the weight
 * gradient and (every layer but the first, which needs no input gradient) the input gradient, n = the
 * examples of the step (the realized Poisson batch); biases, activations, loss, sampling, update are not
 * counted. The DP step runs the same GEMMs (its weight-gradient GEMM is weighted by the clipping
 * coefficients) and the same count is used: its extra work (norms, clipping, noise) only lowers its rate.
 * sgemm references: the same GEMM calls on the step's shapes (same transposes, batch = the expected
 * batch) and a square 2048 x 2048 x 2048 product, each timed once in every repeat, right after the two
 * variants' steps (medians over the repeats), so that the step and its references see the same machine.
 *
 * Usage: [mpirun -np R] bench_step [options] [BATCH=256] [REPEATS=7] [STEPS=10]
 *   --models LIST      comma-separated of mlp, cnn, wide (default mlp,cnn,wide)
 *   --physical PB      physical (micro-)batch; default BATCH + 4 sqrt(BATCH) + 8, so that a step is one
 *                      micro-batch (the Poisson batch exceeds it with probability < 1e-4)
 *   --csv FILE         append a row per model: model,params,ranks,batch,physical_batch,repeats,steps,
 *                      nonprivate_ms,dp_ms,ratio,ratio_paired,nonprivate_ex_s,dp_ex_s (ratio = dp_ms /
 *                      nonprivate_ms, the medians' ratio; ratio_paired = median over repeats of the ratio of
 *                      the two variants' adjacent repeats, which step through the same Poisson batches)
 *   --without-noise    also run a third variant: DP-SGD with sigma = 0 (sampling, norms, clipping, the
 *                      weighted sums: everything of the DP step but the noise), and print its ratio to the
 *                      non-private step (median and paired), i.e. the DP overhead apart from the noise
 *   --cpu-time         time in this thread's CPU time instead of wall time (a machine shared with other
 *                      jobs; meaningful for 1 rank with single-threaded BLAS)
 *   --gemm-csv FILE    append a row per dense model: model,params,batch,gflop_per_step,nonprivate_gflops,
 *                      dp_gflops,sgemm_shapes_gflops,sgemm_2048_gflops,nonprivate_eff_shapes,dp_eff_shapes,
 *                      nonprivate_eff_2048,dp_eff_2048
 * STEPS is the most steps per repeat: a model whose step takes longer than 25 ms runs fewer (at least one,
 * about 0.25 s per repeat). CSV files get a header row when new. Run with OPENBLAS_NUM_THREADS=1.
 * Data: N = 60000 synthetic 28x28 examples (the cost does not depend on the pixel values). */
#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpmpi/optim/sgd.h"
#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/train/step.h"

#include "benchutil.h"

#define N_EXAMPLES 60000
#define PIXELS 784
#define MAX_REPEATS 64
#define REPEAT_SECONDS 0.25 /* target length of one repeat */

typedef struct {
  const char *key, *name, *layers;
} model_def;

static const model_def MODELS[] = {
    {"mlp", "mlp 784-512-10", BENCH_MLP},
    {"cnn", "tanh cnn", BENCH_TANH_CNN},
    {"wide", "mlp 784-4096-2048-10", BENCH_WIDE_MLP},
};
#define NMODELS (int)(sizeof MODELS / sizeof MODELS[0])

/* A model's dense layers as (C in, O out) pairs, in order; returns how many (0 if it has other layers
 * with parameters, i.e. the GEMM count below does not apply). */
static int dense_shapes(const dpm_model *m, int nlayers, int C[], int O[], int cap) {
  int nd = 0;
  for (int i = 0; i < nlayers; i++) {
    dpm_layer_info info;
    dpm_model_layer_info(m, i, &info);
    if (info.params == 0) continue;
    if (info.wrank != 2 || nd == cap) return 0;
    O[nd] = info.wdims[0], C[nd] = info.wdims[1], nd++;
  }
  return nd;
}

/* GEMM flops of one step over n examples (see the top of the file). */
static double step_flops(const int C[], const int O[], int nd, double n) {
  double f = 0;
  for (int l = 0; l < nd; l++) f += 2.0 * n * C[l] * O[l] * (l == 0 ? 2 : 3);
  return f;
}

/* The single-core cblas_sgemm references: the step's GEMM calls (batch B, the transposes of src/nn/dense.c)
 * and a square 2048 product, timed once per repeat of the step so that both see the same machine. */
typedef struct {
  const int *C, *O;
  int nd, B;
  float *w, *dw, *x, *y, *dx; /* step shapes */
  float *a, *b, *c;           /* 2048 x 2048 */
} gemm_ref;

#define SQ 2048

static double ref_shapes_seconds(gemm_ref *g) {
  double t0 = bench_now();
  for (int l = 0; l < g->nd; l++) {
    const int B = g->B, C = g->C[l], O = g->O[l];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, O, C, 1.0f, g->x, C, g->w, C, 0.0f, g->y, O);
    if (l > 0) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, C, O, 1.0f, g->y, O, g->w, C, 0.0f, g->dx, C);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, C, B, 1.0f, g->y, O, g->x, C, 1.0f, g->dw, C);
  }
  return bench_now() - t0;
}

static double ref_square_seconds(gemm_ref *g) {
  double t0 = bench_now();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, SQ, SQ, SQ, 1.0f, g->a, SQ, g->b, SQ, 0.0f, g->c, SQ);
  return bench_now() - t0;
}

static void ref_init(gemm_ref *g, const int C[], const int O[], int nd, int B) {
  size_t maxw = 0, maxa = 0, nn = (size_t)SQ * SQ;
  for (int l = 0; l < nd; l++) {
    size_t w = (size_t)C[l] * O[l], a = (size_t)B * (C[l] > O[l] ? C[l] : O[l]);
    maxw = w > maxw ? w : maxw, maxa = a > maxa ? a : maxa;
  }
  *g = (gemm_ref){.C = C, .O = O, .nd = nd, .B = B};
  g->w = dpm_malloc_aligned(sizeof(float) * maxw), g->dw = dpm_malloc_aligned(sizeof(float) * maxw);
  g->x = dpm_malloc_aligned(sizeof(float) * maxa), g->y = dpm_malloc_aligned(sizeof(float) * maxa);
  g->dx = dpm_malloc_aligned(sizeof(float) * maxa);
  g->a = dpm_malloc_aligned(sizeof(float) * nn), g->b = dpm_malloc_aligned(sizeof(float) * nn);
  g->c = dpm_malloc_aligned(sizeof(float) * nn);
  for (size_t k = 0; k < maxw; k++) g->w[k] = (float)(dpm_u01(k * 0x9E3779B97F4A7C15ULL) - 0.5), g->dw[k] = 0;
  for (size_t k = 0; k < maxa; k++) g->x[k] = (float)(dpm_u01(k * 0xBB67AE8584CAA73BULL) - 0.5), g->y[k] = g->x[k];
  for (size_t k = 0; k < nn; k++) g->a[k] = (float)(dpm_u01(k * 0x9E3779B97F4A7C15ULL) - 0.5), g->b[k] = g->a[nn - 1 - k];
  ref_shapes_seconds(g), ref_square_seconds(g); /* warm-up */
}

static void ref_free(gemm_ref *g) {
  dpm_free(g->w), dpm_free(g->dw), dpm_free(g->x), dpm_free(g->y), dpm_free(g->dx);
  dpm_free(g->a), dpm_free(g->b), dpm_free(g->c);
}

/* One variant (non-private or DP) of one model: its own model, step and optimizer. */
typedef struct {
  dpm_model *m;
  dpm_step st;
  dpm_sgd opt;
  uint64_t t;
  int nlayers;
} variant;

static void variant_init(variant *v, const char *layers, int dp, double sigma, const dpm_dataset *d, double q, int pb) {
  char err[DPM_ERRLEN];
  dpm_layer_spec *specs;
  if (dpm_model_parse(layers, &specs, &v->nlayers, err)) dpm_fatal("%s", err);
  v->m = dpm_model_create(specs, v->nlayers, 1, 28, 28, 10, pb, err);
  if (!v->m) dpm_fatal("%s", err);
  dpm_free(specs);
  dpm_key ik = dpm_key_from_seed(3, DPM_STREAM_INIT);
  dpm_model_init_params(v->m, &ik);
  v->st = (dpm_step){.comm = MPI_COMM_WORLD, .model = v->m, .data = d, .q = q, .dp = dp, .clip = 1.0, .sigma = sigma,
                     .clipping = DPM_CLIP_FLAT, .pipe = MPI_COMM_SELF, .physical_batch = pb,
                     .sample_key = dpm_key_from_seed(4, 0), .noise_key = dpm_key_from_seed(4, 1)};
  dpm_step_init(&v->st);
  dpm_sgd_init(&v->opt, dpm_model_num_params(v->m), 0.9, 0);
  v->t = 0;
}

static void variant_free(variant *v) {
  dpm_sgd_free(&v->opt);
  dpm_step_free(&v->st);
  dpm_model_free(v->m);
}

/* `steps` steps; returns seconds per step (max over ranks), *examples receives examples per step. */
static double variant_run(variant *v, int steps, double *examples) {
  dpm_step_stats stats;
  double ex = 0;
  DPM_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
  double t0 = bench_now();
  for (int k = 0; k < steps; k++, v->t++) {
    dpm_step_run(&v->st, v->t, &stats);
    dpm_sgd_step(&v->opt, dpm_model_params(v->m), dpm_model_grads(v->m), 1e-3, 0.01);
    ex += stats.examples;
  }
  double dt = (bench_now() - t0) / steps;
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
  if (examples) *examples = ex / steps;
  return dt;
}

static void usage(void) {
  fprintf(stderr, "usage: [mpirun -np R] bench_step [--models mlp,cnn,wide] [--physical PB] [--without-noise] "
                  "[--cpu-time] [--csv FILE] [--gemm-csv FILE] [BATCH=256] [REPEATS=7 (1..%d)] [STEPS=10]\n", MAX_REPEATS);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const char *models = "mlp,cnn,wide", *csv = NULL, *gemm_csv = NULL;
  int pb = 0, nv = 2, cpu_time = 0; /* variants: non-private, DP, (--without-noise) DP with sigma = 0 */
  static const struct option opts[] = {{"models", required_argument, 0, 'm'}, {"physical", required_argument, 0, 'p'},
                                       {"csv", required_argument, 0, 'c'}, {"gemm-csv", required_argument, 0, 'g'},
                                       {"without-noise", no_argument, 0, 'n'}, {"cpu-time", no_argument, 0, 't'},
                                       {0, 0, 0, 0}};
  for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
    switch (o) {
      case 'm': models = optarg; break;
      case 'p': pb = atoi(optarg); break;
      case 'c': csv = optarg; break;
      case 'g': gemm_csv = optarg; break;
      case 'n': nv = 3; break;
      case 't': bench_use_cpu_time(cpu_time = 1); break;
      default: if (rank == 0) usage(); MPI_Finalize(); return 2;
    }
  }
  int batch = optind < argc ? atoi(argv[optind]) : 256, repeats = optind + 1 < argc ? atoi(argv[optind + 1]) : 7,
      per = optind + 2 < argc ? atoi(argv[optind + 2]) : 10;
  if (pb == 0) pb = batch + (int)(4 * sqrt((double)batch)) + 8;
  if (batch < 1 || pb < 1 || repeats < 1 || repeats > MAX_REPEATS || per < 1 || optind + 3 < argc) {
    if (rank == 0) usage();
    MPI_Finalize();
    return 2;
  }
  const int64_t N = N_EXAMPLES, b = N * rank / size, e = N * (rank + 1) / size;
  dpm_dataset d = {.n_total = N, .begin = b, .end = e, .C = 1, .H = 28, .W = 28, .num_classes = 10};
  d.x = dpm_malloc_aligned(sizeof(float) * (size_t)(e - b) * PIXELS);
  d.y = dpm_malloc(sizeof(int32_t) * (size_t)(e - b));
  bench_fill(d.x, d.y, b, e);
  const double q = (double)batch * size / (double)N;
  FILE *fs = NULL, *fg = NULL;
  if (rank == 0 && csv)
    fs = bench_csv_open(csv, "model,params,ranks,batch,physical_batch,repeats,steps,nonprivate_ms,dp_ms,ratio,"
                       "ratio_paired,nonprivate_ex_s,dp_ex_s");
  if (rank == 0 && gemm_csv)
    fg = bench_csv_open(gemm_csv, "model,params,batch,gflop_per_step,nonprivate_gflops,dp_gflops,sgemm_shapes_gflops,"
                            "sgemm_2048_gflops,nonprivate_eff_shapes,dp_eff_shapes,nonprivate_eff_2048,dp_eff_2048");
  if (rank == 0)
    printf("bench_step: %d rank(s), expected batch %d per rank (q = %.5f, N = %lld), physical batch %d, median of "
           "%d repeats (np and DP alternating), %s\n", size, batch, q, (long long)N, pb, repeats,
           cpu_time ? "CPU time" : "wall time");
  for (int mi = 0; mi < NMODELS; mi++) {
    if (!strstr(models, MODELS[mi].key)) continue;
    variant v[3];
    for (int k = 0; k < nv; k++) variant_init(&v[k], MODELS[mi].layers, k > 0, k == 1 ? 1.0 : 0.0, &d, q, pb);
    /* warm-up: up to 3 steps of each, fewer for slow models; the first sets the steps per repeat */
    double first = variant_run(&v[0], 1, NULL);
    int steps = (int)(REPEAT_SECONDS / first + 0.5);
    steps = steps < 1 ? 1 : steps > per ? per : steps;
    DPM_MPI_CHECK(MPI_Bcast(&steps, 1, MPI_INT, 0, MPI_COMM_WORLD));
    const int warm = first < 0.1 ? 3 : 1;
    if (warm > 1) variant_run(&v[0], warm - 1, NULL);
    for (int k = 1; k < nv; k++) variant_run(&v[k], warm, NULL);
    /* dense models: the sgemm references, timed in every repeat next to the steps (every rank, all busy) */
    int C[8], O[8];
    const int nd = dense_shapes(v[0].m, v[0].nlayers, C, O, 8), B = batch < pb ? batch : pb;
    gemm_ref ref;
    if (nd > 0) ref_init(&ref, C, O, nd, B);
    double t[3][MAX_REPEATS], x[3][MAX_REPEATS], ts[MAX_REPEATS], tq[MAX_REPEATS];
    for (int r = 0; r < repeats; r++) {
      for (int k = 0; k < nv; k++) t[k][r] = variant_run(&v[k], steps, &x[k][r]);
      if (nd > 0) ts[r] = ref_shapes_seconds(&ref), tq[r] = ref_square_seconds(&ref);
    }
    double med[2], exs[2], ex[2], pr[MAX_REPEATS];
    for (int r = 0; r < repeats; r++) pr[r] = t[1][r] / t[0][r];
    const double paired = bench_median(pr, repeats);
    for (int dp = 0; dp < 2; dp++) {
      med[dp] = bench_median(t[dp], repeats);
      double xs[MAX_REPEATS];
      for (int r = 0; r < repeats; r++) xs[r] = x[dp][r] / t[dp][r]; /* x: examples per step, all ranks */
      exs[dp] = bench_median(xs, repeats);
      ex[dp] = 0;
      for (int r = 0; r < repeats; r++) ex[dp] += x[dp][r] / repeats;
    }
    const size_t P = dpm_model_num_params(v[0].m);
    if (rank == 0) {
      for (int dp = 0; dp < 2; dp++)
        printf("  %-21s %-12s %9.3f ms/step  %9.0f examples/s  (%zu parameters, %d steps/repeat)\n", MODELS[mi].name,
               dp ? "dp-sgd" : "non-private", 1e3 * med[dp], exs[dp], P, steps);
      printf("  %-21s dp / non-private step time: %.3f, paired %.3f (goal <= 1.10)\n", MODELS[mi].name,
             med[1] / med[0], paired);
      if (nv == 3) { /* the DP step without its noise: the overhead apart from the noise */
        double p2[MAX_REPEATS];
        for (int r = 0; r < repeats; r++) p2[r] = t[2][r] / t[0][r];
        printf("  %-21s dp without noise (sigma = 0) %9.3f ms/step; / non-private: %.3f, paired %.3f\n",
               MODELS[mi].name, 1e3 * bench_median(t[2], repeats), bench_median(t[2], repeats) / med[0],
               bench_median(p2, repeats));
      }
      if (fs)
        fprintf(fs, "%s,%zu,%d,%d,%d,%d,%d,%.4f,%.4f,%.4f,%.4f,%.1f,%.1f\n", MODELS[mi].key, P, size, batch, pb,
                repeats, steps, 1e3 * med[0], 1e3 * med[1], med[1] / med[0], paired, exs[0], exs[1]);
    }
    if (nd > 0) { /* GEMM efficiency; rank 0 reports */
      const double shapes = step_flops(C, O, nd, B) / bench_median(ts, repeats) * 1e-9,
                   sq2048 = 2.0 * SQ * SQ * SQ / bench_median(tq, repeats) * 1e-9;
      /* one rank's flops: its share of the examples */
      const double f = step_flops(C, O, nd, ex[0] / size), g0 = f / med[0] * 1e-9,
                   g1 = step_flops(C, O, nd, ex[1] / size) / med[1] * 1e-9;
      if (rank == 0) {
        printf("  %-21s GEMM flops counted per step %.2f GFLOP (forward + weight grad + input grad, mean realized "
               "batch %.1f per rank); step rate: non-private %.1f GFLOP/s, dp %.1f GFLOP/s\n", "", f * 1e-9,
               ex[0] / size, g0, g1);
        printf("  %-21s single-core sgemm: step's shapes (batch %d) %.1f GFLOP/s, square 2048 %.1f GFLOP/s; "
               "efficiency np %.0f%% / dp %.0f%% of the shapes' rate, np %.0f%% / dp %.0f%% of square 2048 "
               "(goal >= 60%%)\n", "", B, shapes, sq2048, 100 * g0 / shapes, 100 * g1 / shapes, 100 * g0 / sq2048,
               100 * g1 / sq2048);
        if (fg)
          fprintf(fg, "%s,%zu,%d,%.4f,%.2f,%.2f,%.2f,%.2f,%.4f,%.4f,%.4f,%.4f\n", MODELS[mi].key, P, batch, f * 1e-9,
                  g0, g1, shapes, sq2048, g0 / shapes, g1 / shapes, g0 / sq2048, g1 / sq2048);
      }
      ref_free(&ref);
    }
    for (int k = 0; k < nv; k++) variant_free(&v[k]);
  }
  if (fs) fclose(fs);
  if (fg) fclose(fg);
  dpm_free(d.x);
  dpm_free(d.y);
  MPI_Finalize();
  return 0;
}
