/* Where the time of one DP-SGD step goes, against the non-private step: the phases of dpm_step_run +
 * the SGD update (src/train/step.c), re-run here one by one through the public API and timed apart, for the
 * MLP 784-512-10, the tanh CNN and (--models wide) the MLP 784-4096-2048-10, at the same expected batch:
 *   sample      Poisson sampling of this rank's shard (dpm_sample_shard)
 *   gather      copying the sampled rows into the micro-batch buffer
 *   forward     dpm_model_forward
 *   backward    dpm_model_backward: input gradients (conv: also the output-gradient transpose); DP: with
 *               the exact per-example norms (ghost for dense, ghost or explicit for conv), so DP - np of
 *               this phase is the norms' cost
 *   clip        DP only: dpm_clip_coefs + counting the clipped examples
 *   accumulate  dpm_model_accumulate (DP: weighted by the coefficients, one GEMM per layer)
 *   noise       DP only: dpm_add_noise on this rank's slice of the parameters (1/R of them)
 *   wait        R > 1: MPI_Barrier before the allreduce (waiting for the rank with the larger sample)
 *   allreduce   R > 1: the bucketed sum-allreduce of the gradient (4 MiB buckets, as src/train/step.c)
 *   update      dpm_sgd_step
 * Micro-batches as in src/train/step.c: ceil(n / physical batch) of equal sizes; the physical batch defaults
 * to bench_step's (B + 4 sqrt(B) + 8: one micro-batch per step), so that both programs measure the same
 * step. Then, for reference, the real step (dpm_step_run + dpm_sgd_step) of the same configuration: the
 * phases should add up to it.
 * Repeats alternate non-private and DP; medians over repeats of the per-step mean of each phase, and
 * (printed) the median over repeats of the paired difference DP - np of adjacent repeats, which see the
 * same Poisson batches and nearly the same machine (the machine is shared: prefer the paired figures).
 * Usage: [mpirun -np R] bench_breakdown [--csv FILE] [--batch B=256] [--physical PB] [--repeats R=7]
 *        [--steps S=20] [--models mlp,cnn (default), wide] [--cpu-time]
 * --cpu-time: every phase and step in this thread's CPU time instead of wall time (for a machine shared
 * with other jobs; 1 rank: waits of R > 1 are then not counted); the noise generator alone stays wall time.
 * CSV (appended, header if the file is new): one row per model and variant (nonprivate, dp):
 *   model,batch,ranks,variant,params,<the phases above, ms per step>,total,step,noise_ns_per_draw,
 *   memory_floor_ns_per_param,dense_norms_kernel_ms,nonprivate_total
 * total = the sum of the phases, step = the real step (ms); noise_ns_per_draw = the noise phase per
 * parameter drawn on this rank (0 for nonprivate); memory_floor_ns_per_param = a pass adding a constant to
 * the gradient (the memory traffic the noise cannot avoid); dense_norms_kernel_ms = dpm_dense_sqnorms alone on the dense layers' shapes;
 * nonprivate_total = the non-private variant's total (in both rows, to plot the phases relative to it).
 * Data: N = 60000 synthetic 28x28 examples (the cost does not depend on the pixel values). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpmpi/optim/sgd.h"
#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/train/step.h"

#include "benchutil.h"
#include "nn/layers.h"

#define N_EXAMPLES 60000
#define PIXELS 784
#define MAX_REPEATS 64
#define BUCKET_FLOATS (1 << 20) /* the step's allreduce bucket (src/train/step.c) */

enum { PH_SAMPLE, PH_GATHER, PH_FORWARD, PH_BACKWARD, PH_CLIP, PH_ACCUMULATE, PH_NOISE, PH_WAIT,
       PH_ALLREDUCE, PH_UPDATE, NPH };
static const char *PHASE[NPH] = {"sample", "gather", "forward", "backward", "clip", "accumulate",
                                 "noise", "wait", "allreduce", "update"};

#define MLP BENCH_MLP
#define WIDE_MLP BENCH_WIDE_MLP
#define TANH_CNN BENCH_TANH_CNN

/* One model with its buffers, stepped phase by phase. */
typedef struct {
  dpm_model *m;
  dpm_sgd opt;
  int dp, pb, G, nlayers;
  int64_t *sel;
  float *xb, *coef;
  double *sq;
  int32_t *yb;
  uint64_t t;
} setup;

static dpm_model *build(const char *layers, int max_batch, int *nlayers) {
  char err[DPM_ERRLEN];
  dpm_layer_spec *specs;
  int n;
  if (dpm_model_parse(layers, &specs, &n, err)) dpm_fatal("%s", err);
  dpm_model *m = dpm_model_create(specs, n, 1, 28, 28, 10, max_batch, err);
  if (!m) dpm_fatal("%s", err);
  dpm_free(specs);
  dpm_key ik = dpm_key_from_seed(3, DPM_STREAM_INIT);
  dpm_model_init_params(m, &ik);
  if (nlayers) *nlayers = n;
  return m;
}

static void setup_init(setup *s, const char *layers, int dp, int pb, const dpm_dataset *d) {
  memset(s, 0, sizeof *s);
  s->m = build(layers, pb, &s->nlayers);
  s->dp = dp, s->pb = pb, s->G = dpm_model_num_groups(s->m);
  dpm_sgd_init(&s->opt, dpm_model_num_params(s->m), 0.9, 0);
  s->sel = dpm_malloc(sizeof(int64_t) * (size_t)(d->end - d->begin + 1));
  s->xb = dpm_malloc_aligned(sizeof(float) * (size_t)pb * PIXELS);
  s->yb = dpm_malloc(sizeof(int32_t) * (size_t)pb);
  s->sq = dpm_malloc(sizeof(double) * (size_t)s->G * pb);
  s->coef = dpm_malloc(sizeof(float) * (size_t)s->G * pb);
}

static void setup_free(setup *s) {
  dpm_sgd_free(&s->opt);
  dpm_model_free(s->m);
  dpm_free(s->sel), dpm_free(s->xb), dpm_free(s->yb), dpm_free(s->sq), dpm_free(s->coef);
}

/* One logical step of src/train/step.c's dpm_step_run (D x 1 grid, one stage) + the update, each phase's seconds
 * added to ph[]. Returns the examples sampled. */
static int64_t phased_step(setup *s, const dpm_dataset *d, double q, MPI_Comm comm, double ph[NPH]) {
  const dpm_key sk = dpm_key_from_seed(4, 0), nk = dpm_key_from_seed(4, 1);
  int rank, size;
  MPI_Comm_rank(comm, &rank), MPI_Comm_size(comm, &size);
  dpm_model *m = s->m;
  const size_t P = dpm_model_num_params(m);
  double t0 = bench_now(), t1;
  const int64_t n = dpm_sample_shard(&sk, s->t, q, d->begin, d->end, s->sel);
  dpm_model_zero_grads(m);
  t1 = bench_now(), ph[PH_SAMPLE] += t1 - t0, t0 = t1;
  const int64_t M = (n + s->pb - 1) / s->pb;
  double clipped = 0;
  for (int64_t k = 0; k < M; k++) {
    const int64_t off = n * k / M;
    const int B = (int)(n * (k + 1) / M - off);
    for (int i = 0; i < B; i++) {
      const int64_t row = s->sel[off + i] - d->begin;
      memcpy(s->xb + (size_t)i * PIXELS, d->x + (size_t)row * PIXELS, sizeof(float) * PIXELS);
      s->yb[i] = d->y[row];
    }
    t1 = bench_now(), ph[PH_GATHER] += t1 - t0, t0 = t1;
    int correct;
    dpm_model_forward(m, s->xb, s->yb, B, &correct);
    t1 = bench_now(), ph[PH_FORWARD] += t1 - t0, t0 = t1;
    dpm_model_backward(m, s->dp ? s->sq : NULL); /* DP: with the exact per-example norms */
    t1 = bench_now(), ph[PH_BACKWARD] += t1 - t0, t0 = t1;
    if (!s->dp) {
      dpm_model_accumulate(m, NULL);
      t1 = bench_now(), ph[PH_ACCUMULATE] += t1 - t0, t0 = t1;
      continue;
    }
    dpm_clip_coefs(s->sq, s->G, B, DPM_CLIP_FLAT, 1.0, s->coef);
    for (int k2 = 0; k2 < s->G * B; k2++) clipped += s->coef[k2] < 1.0f;
    t1 = bench_now(), ph[PH_CLIP] += t1 - t0, t0 = t1;
    dpm_model_accumulate(m, s->coef);
    t1 = bench_now(), ph[PH_ACCUMULATE] += t1 - t0, t0 = t1;
  }
  float *grads = dpm_model_grads(m);
  if (s->dp) {
    size_t lo = P * (size_t)rank / (size_t)size, hi = P * (size_t)(rank + 1) / (size_t)size;
    dpm_add_noise(&nk, s->t, 1.0, lo, hi - lo, grads + lo);
    t1 = bench_now(), ph[PH_NOISE] += t1 - t0, t0 = t1;
  }
  if (size > 1) {
    DPM_MPI_CHECK(MPI_Barrier(comm));
    t1 = bench_now(), ph[PH_WAIT] += t1 - t0, t0 = t1;
    for (size_t off = 0; off < P; off += BUCKET_FLOATS) {
      size_t len = P - off < BUCKET_FLOATS ? P - off : BUCKET_FLOATS;
      DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, grads + off, (int)len, MPI_FLOAT, MPI_SUM, comm));
    }
    t1 = bench_now(), ph[PH_ALLREDUCE] += t1 - t0, t0 = t1;
  }
  dpm_sgd_step(&s->opt, dpm_model_params(m), grads, 1.0 / 256, 0.01);
  t1 = bench_now(), ph[PH_UPDATE] += t1 - t0;
  (void)clipped;
  s->t++;
  return n;
}

/* The dense layers' norm kernel alone (dpm_dense_sqnorms on buffers of each dense layer's shapes, B
 * examples): seconds per call summed over the model's dense layers, median of `repeats`. */
static double dense_norms_seconds(const dpm_model *m, int nlayers, int B, int repeats) {
  double t[MAX_REPEATS], total = 0;
  for (int i = 0; i < nlayers; i++) {
    dpm_layer_info info;
    dpm_model_layer_info(m, i, &info);
    if (info.wrank != 2) continue; /* dense: weights [out, in] */
    const int O = info.wdims[0], C = info.wdims[1];
    float *a = dpm_malloc_aligned(sizeof(float) * (size_t)B * C), *g = dpm_malloc_aligned(sizeof(float) * (size_t)B * O);
    double *sq = dpm_malloc(sizeof(double) * (size_t)B);
    for (size_t k = 0; k < (size_t)B * C; k++) a[k] = (float)dpm_u01(k * 0x9E3779B97F4A7C15ULL);
    for (size_t k = 0; k < (size_t)B * O; k++) g[k] = (float)dpm_u01(k * 0xBB67AE8584CAA73BULL);
    for (int r = 0; r < repeats; r++) {
      double t0 = bench_now();
      for (int k = 0; k < 20; k++) dpm_dense_sqnorms(sq, a, g, 1, B, C, O);
      t[r] = (bench_now() - t0) / 20;
    }
    total += bench_median(t, repeats);
    dpm_free(a), dpm_free(g), dpm_free(sq);
  }
  return total;
}

/* The noise generator alone, per implementation (core/rng.h: scalar, AVX2, AVX-512; each only if the CPU has
 * it, else 0): seconds per draw of dpm_add_noise on n parameters (draw + add), and the memory-speed floor:
 * the same read-modify-write pass over the buffer adding a constant. Medians of `repeats`. */
static void noise_parts(size_t n, int repeats, double gauss[DPM_RNG_IMPLS], double *floor_) {
  double tg[MAX_REPEATS], tf[MAX_REPEATS];
  float *buf = dpm_calloc(n, sizeof(float));
  const dpm_key key = dpm_key_from_seed(4, 1);
  const dpm_rng_impl in_use = dpm_rng_impl_current();
  for (int impl = 0; impl < DPM_RNG_IMPLS; impl++) {
    gauss[impl] = 0;
    if (dpm_rng_impl_select((dpm_rng_impl)impl)) continue;
    for (int r = 0; r < repeats; r++) {
      double t0 = dpm_time();
      dpm_add_noise(&key, (uint64_t)r, 1.0, 0, n, buf);
      tg[r] = (dpm_time() - t0) / (double)n;
    }
    gauss[impl] = bench_median(tg, repeats);
  }
  dpm_rng_impl_select(in_use);
  for (int r = 0; r < repeats; r++) {
    double t0 = dpm_time();
    for (size_t k = 0; k < n; k++) buf[k] += 0.5f;
    __asm__ volatile("" : : "r"(buf) : "memory");
    tf[r] = (dpm_time() - t0) / (double)n;
  }
  *floor_ = bench_median(tf, repeats);
  dpm_free(buf);
}

/* The real step of the same configuration, for reference: seconds per step (max over ranks). */
typedef struct {
  dpm_model *m;
  dpm_step st;
  dpm_sgd opt;
  uint64_t t;
} real;

static void real_init(real *r, const char *layers, int dp, int pb, double q, const dpm_dataset *d, MPI_Comm comm) {
  r->m = build(layers, pb, NULL);
  r->st = (dpm_step){.comm = comm, .pipe = MPI_COMM_SELF, .model = r->m, .data = d, .q = q, .dp = dp, .clip = 1.0,
                     .sigma = 1.0, .clipping = DPM_CLIP_FLAT, .physical_batch = pb,
                     .sample_key = dpm_key_from_seed(4, 0), .noise_key = dpm_key_from_seed(4, 1)};
  dpm_step_init(&r->st);
  dpm_sgd_init(&r->opt, dpm_model_num_params(r->m), 0.9, 0);
  r->t = 0;
}

static double real_repeat(real *r, int steps, MPI_Comm comm) {
  dpm_step_stats stats;
  DPM_MPI_CHECK(MPI_Barrier(comm));
  double t0 = bench_now();
  for (int k = 0; k < steps; k++, r->t++) {
    dpm_step_run(&r->st, r->t, &stats);
    dpm_sgd_step(&r->opt, dpm_model_params(r->m), dpm_model_grads(r->m), 1.0 / 256, 0.01);
  }
  double dt = (bench_now() - t0) / steps;
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, comm));
  return dt;
}

static void real_free(real *r) {
  dpm_sgd_free(&r->opt);
  dpm_step_free(&r->st);
  dpm_model_free(r->m);
}

static void usage(void) {
  fprintf(stderr, "usage: [mpirun -np R] bench_breakdown [--csv FILE] [--batch B=256] [--physical PB] "
                  "[--repeats R=7 (1..%d)] [--steps S=20] [--models mlp,cnn,wide] [--cpu-time]\n", MAX_REPEATS);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int batch = 256, repeats = 7, steps = 20, pb = 0, cpu_time = 0;
  const char *csv = NULL, *models = "mlp,cnn";
  static const struct option opts[] = {{"csv", required_argument, 0, 'c'}, {"batch", required_argument, 0, 'b'},
                                       {"repeats", required_argument, 0, 'r'}, {"steps", required_argument, 0, 's'},
                                       {"models", required_argument, 0, 'm'}, {"physical", required_argument, 0, 'p'},
                                       {"cpu-time", no_argument, 0, 't'}, {0, 0, 0, 0}};
  for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
    switch (o) {
      case 'c': csv = optarg; break;
      case 'b': batch = atoi(optarg); break;
      case 'r': repeats = atoi(optarg); break;
      case 's': steps = atoi(optarg); break;
      case 'm': models = optarg; break;
      case 'p': pb = atoi(optarg); break;
      case 't': bench_use_cpu_time(cpu_time = 1); break;
      default: if (rank == 0) usage(); MPI_Finalize(); return 2;
    }
  }
  if (pb == 0) pb = batch + (int)(4 * sqrt((double)batch)) + 8; /* as bench_step */
  if (batch < 1 || pb < 1 || repeats < 1 || repeats > MAX_REPEATS || steps < 1 || optind != argc) {
    if (rank == 0) usage();
    MPI_Finalize();
    return 2;
  }
  const int64_t N = N_EXAMPLES, b = N * rank / size, e = N * (rank + 1) / size;
  dpm_dataset d = {.n_total = N, .begin = b, .end = e, .C = 1, .H = 28, .W = 28, .num_classes = 10};
  d.x = dpm_malloc_aligned(sizeof(float) * (size_t)(e - b) * PIXELS);
  d.y = dpm_malloc(sizeof(int32_t) * (size_t)(e - b));
  bench_fill(d.x, d.y, b, e);
  /* the step's configuration: expected batch per rank `batch`, physical batch pb */
  const double q = (double)batch * size / (double)N;
  FILE *out = NULL;
  if (rank == 0 && csv) {
    out = fopen(csv, "a");
    if (!out) dpm_fatal("cannot open %s for appending", csv);
    if (ftell(out) == 0) {
      fprintf(out, "model,batch,ranks,variant,params");
      for (int p = 0; p < NPH; p++) fprintf(out, ",%s", PHASE[p]);
      fprintf(out, ",total,step,noise_ns_per_draw,memory_floor_ns_per_param,dense_norms_kernel_ms,nonprivate_total\n");
    }
  }
  if (rank == 0)
    printf("bench_breakdown: %d rank(s), expected batch %d per rank, physical batch %d, median of %d repeats x %d "
           "steps (ms per step, %s)\n", size, batch, pb, repeats, steps,
           cpu_time ? "CPU time" : "wall time");
  const char *names[] = {"mlp", "cnn", "wide"}, *long_names[] = {"mlp 784-512-10", "tanh cnn", "mlp 784-4096-2048-10"},
             *layers[] = {MLP, TANH_CNN, WIDE_MLP};
  for (int mi = 0; mi < 3; mi++) {
    if (!strstr(models, names[mi])) continue;
    setup s[2];
    real r[2];
    for (int dp = 0; dp < 2; dp++) {
      setup_init(&s[dp], layers[mi], dp, pb, &d);
      real_init(&r[dp], layers[mi], dp, pb, q, &d, MPI_COMM_WORLD);
    }
    static double ph[2][NPH][MAX_REPEATS], stepr[2][MAX_REPEATS];
    for (int k = -1; k < repeats; k++) { /* k = -1: warm-up round */
      for (int dp = 0; dp < 2; dp++) {
        double acc[NPH] = {0};
        DPM_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
        for (int j = 0; j < steps; j++) phased_step(&s[dp], &d, q, MPI_COMM_WORLD, acc);
        DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, acc, NPH, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
        double st = real_repeat(&r[dp], steps, MPI_COMM_WORLD);
        if (k < 0) continue;
        for (int p = 0; p < NPH; p++) ph[dp][p][k] = acc[p] / steps;
        stepr[dp][k] = st;
      }
    }
    if (rank == 0) {
      const size_t P = dpm_model_num_params(s[0].m);
      printf("== %s (%zu parameters)\n  %-11s %12s %10s %10s %10s\n", long_names[mi], P, "phase", "non-private", "DP",
             "DP - np", "paired");
      double med[2][NPH], tot[2] = {0, 0};
      for (int p = 0; p < NPH; p++) {
        for (int dp = 0; dp < 2; dp++) med[dp][p] = 1e3 * bench_median(ph[dp][p], repeats), tot[dp] += med[dp][p];
        if (size == 1 && (p == PH_WAIT || p == PH_ALLREDUCE)) continue;
        double diff[MAX_REPEATS];
        for (int k = 0; k < repeats; k++) diff[k] = 1e3 * (ph[1][p][k] - ph[0][p][k]);
        printf("  %-11s %12.3f %10.3f %+10.3f %+10.3f\n", PHASE[p], med[0][p], med[1][p], med[1][p] - med[0][p],
               bench_median(diff, repeats));
      }
      double s0 = 1e3 * bench_median(stepr[0], repeats), s1 = 1e3 * bench_median(stepr[1], repeats);
      double rs[MAX_REPEATS], rt[MAX_REPEATS];
      for (int k = 0; k < repeats; k++) {
        double t0 = 0, t1 = 0;
        for (int p = 0; p < NPH; p++) t0 += ph[0][p][k], t1 += ph[1][p][k];
        rs[k] = t1 / t0, rt[k] = stepr[1][k] / stepr[0][k];
      }
      printf("  %-11s %12.3f %10.3f %+10.3f  (ratio %.3f, paired %.3f)\n", "sum", tot[0], tot[1], tot[1] - tot[0],
             tot[1] / tot[0], bench_median(rs, repeats));
      printf("  %-11s %12.3f %10.3f %+10.3f  (ratio %.3f, paired %.3f; dpm_step_run + dpm_sgd_step)\n", "real step",
             s0, s1, s1 - s0, s1 / s0, bench_median(rt, repeats));
      double ng[DPM_RNG_IMPLS], floor_;
      noise_parts(P, repeats, ng, &floor_);
      const double ns_draw = 1e6 * med[1][PH_NOISE] / (double)(P / (size_t)size),
                   kernel = 1e3 * dense_norms_seconds(s[0].m, s[0].nlayers, batch, repeats);
      printf("  noise in the step: %.2f ns per draw (%zu draws on this rank, %s); dpm_add_noise alone per draw + add:",
             ns_draw, P / (size_t)size, dpm_rng_impl_name(dpm_rng_impl_current()));
      for (int i = DPM_RNG_IMPLS - 1; i >= 0; i--)
        if (ng[i] > 0) printf(" %s %.3f ns", dpm_rng_impl_name((dpm_rng_impl)i), 1e9 * ng[i]);
      printf("; memory floor (read + write of the gradient) %.3f ns\n", 1e9 * floor_);
      printf("  dense layers' norm kernel alone (dpm_dense_sqnorms, batch %d): %.3f ms per micro-batch\n", batch,
             kernel);
      for (int dp = 0; out && dp < 2; dp++) {
        fprintf(out, "%s,%d,%d,%s,%zu", names[mi], batch, size, dp ? "dp" : "nonprivate", P);
        for (int p = 0; p < NPH; p++) fprintf(out, ",%.4f", med[dp][p]);
        fprintf(out, ",%.4f,%.4f,%.3f,%.3f,%.4f,%.4f\n", tot[dp], dp ? s1 : s0, dp ? ns_draw : 0, 1e9 * floor_, kernel,
                tot[0]);
      }
    }
    for (int dp = 0; dp < 2; dp++) setup_free(&s[dp]), real_free(&r[dp]);
  }
  if (out) fclose(out);
  dpm_free(d.x);
  dpm_free(d.y);
  MPI_Finalize();
  return 0;
}
