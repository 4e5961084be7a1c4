/* The process grid against its own baselines, each measured in the same run (DP-SGD, flat clipping unless
 * said otherwise, C = 1, sigma = 1, dpm_step_run + SGD update, as in bench_step.c):
 *  1. allreduce: on a D x 1 grid (D = world size, all ranks replicas), the step's gradient allreduce
 *     (dpm_step.time_allreduce: the bucketed MPI_Allreduce of the gradient, 4 MiB buckets, per step)
 *     against a bare MPI_Allreduce(MPI_IN_PLACE) of the same P floats on the same communicator, after an
 *     MPI_Barrier, as one call and in the step's 1<<20-float buckets, for the MLP 784-512-10 and a wide
 *     MLP 784-4096-4096-10. The step runs with measure_wait: a barrier before the allreduce takes the
 *     wait for the slower rank (the Poisson sample sizes of the shards differ) out of time_allreduce and
 *     into time_wait, printed apart. "max" is the largest rank's time_allreduce / K (goal figure);
 *     "last-in" sums, step by step, the smallest rank's time.
 *  2. weak scaling: the same expected batch per rank (256); R ranks as R replicas against 1 rank
 *     (rank 0 alone on MPI_COMM_SELF while the others sleep in a non-blocking barrier); efficiency =
 *     examples/s at R / (R x examples/s at 1), for the MLP and the tanh CNN. Also R independent 1-rank
 *     jobs run at once (every rank on MPI_COMM_SELF): R ranks against their total separates what the
 *     machine loses when all its cores are busy (shared caches, memory, a VM's cores) from what the
 *     grid costs (allreduce, waiting for the rank with the larger Poisson sample). At R ranks each rank
 *     draws 1/R of the noise, so the efficiency can exceed 1 when noise is a large part of the step.
 *  3. pipeline: the tanh CNN (expected batch 512 per replica, physical batch 128: 4 micro-batches) on a
 *     (R/2) x 2 grid with flat clipping (two pipeline passes: norms, then clipped accumulation) against
 *     per-device clipping (one pass), and against 1 x 1 (rank 0 alone, flat) of the same batch.
 * Repeats of the parts are interleaved (baseline, then the measured run) after one uncounted warm-up round;
 * medians printed.
 * Usage: mpirun -np 2 bench_grid [REPEATS=7] [STEPS=10]
 * Data: N = 60000 synthetic 28x28 examples on every rank; a shard is a view of rows [begin, end). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dpmpi/optim/sgd.h"
#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/parallel/grid.h"
#include "dpmpi/train/step.h"

#include "benchutil.h"

#define N_EXAMPLES 60000
#define PIXELS 784
#define MAX_REPEATS 64
#define BUCKET_FLOATS (1 << 20) /* the step's allreduce bucket (src/train/step.c) */

#define MLP BENCH_MLP
static const char *WIDE_MLP = "flatten; dense out=4096; relu; dense out=4096; relu; dense out=10";
#define TANH_CNN BENCH_TANH_CNN

/* Rows [b, e) of the whole synthetic set as a replica's shard (x and y indexed from b). */
static dpm_dataset shard_of(const dpm_dataset *all, int64_t b, int64_t e) {
  dpm_dataset d = *all;
  d.begin = b, d.end = e;
  d.x = all->x + (size_t)b * PIXELS;
  d.y = all->y + b;
  return d;
}

/* This rank's pipeline stage of `layers`, as build_model in src/train/train.c: the whole model (max_batch 1)
 * for shapes, the balanced split, the stage's layers with the loss on the last stage only. first
 * (S + 1 entries, may be NULL) receives the split. */
static dpm_model *build_stage(const char *layers, int S, int stage, int max_batch, int *first_out) {
  char err[DPM_ERRLEN];
  dpm_layer_spec *specs;
  int n, first[16];
  DPM_ASSERT(S < 16);
  if (dpm_model_parse(layers, &specs, &n, err)) dpm_fatal("%s", err);
  dpm_model *full = dpm_model_create(specs, n, 1, 28, 28, 10, 1, err);
  if (!full) dpm_fatal("%s", err);
  if (dpm_grid_split_layers(full, n, S, NULL, first, err)) dpm_fatal("%s", err);
  int C = 1, H = 28, W = 28;
  if (first[stage] > 0) {
    dpm_layer_info info;
    dpm_model_layer_info(full, first[stage] - 1, &info);
    C = info.C, H = info.H, W = info.W;
  }
  dpm_model *m = dpm_model_create(specs + first[stage], first[stage + 1] - first[stage], C, H, W,
                                  stage == S - 1 ? 10 : 0, max_batch, err);
  if (!m) dpm_fatal("stage %d: %s", stage, err);
  dpm_model_set_first_layer(m, first[stage]);
  dpm_key ik = dpm_key_from_seed(3, DPM_STREAM_INIT);
  dpm_model_init_params(m, &ik);
  if (first_out) memcpy(first_out, first, sizeof(int) * (size_t)(S + 1));
  dpm_model_free(full);
  dpm_free(specs);
  return m;
}

/* One training setup: a stage model, its dpm_step over (dp, pipe), the SGD update; `all` is every rank
 * taking part (for the barrier before a repeat and the max over ranks). */
typedef struct {
  dpm_model *m;
  dpm_dataset data;
  dpm_step st;
  dpm_sgd opt;
  MPI_Comm all;
  uint64_t t;
  double expected; /* expected examples per replica and step */
  double *ar_step;  /* per step of a repeat: this rank's allreduce seconds */
} runner;

static void runner_init(runner *r, const char *layers, MPI_Comm all, MPI_Comm dp, MPI_Comm pipe,
                        const dpm_dataset *set, double batch, dpm_clipping clipping, int physical_batch, int steps) {
  int replica, replicas, stage, stages;
  MPI_Comm_rank(dp, &replica), MPI_Comm_size(dp, &replicas);
  MPI_Comm_rank(pipe, &stage), MPI_Comm_size(pipe, &stages);
  memset(r, 0, sizeof *r);
  r->all = all;
  r->expected = batch;
  r->m = build_stage(layers, stages, stage, physical_batch, NULL);
  const int64_t N = set->n_total;
  r->data = shard_of(set, N * replica / replicas, N * (replica + 1) / replicas);
  r->st = (dpm_step){.comm = dp, .pipe = pipe, .model = r->m, .data = &r->data,
                     .q = batch * replicas / (double)N, .dp = 1, .clip = 1.0, .sigma = 1.0, .clipping = clipping,
                     .device_split = DPM_SPLIT_EVEN, .physical_batch = physical_batch,
                     .sample_key = dpm_key_from_seed(4, 0), .noise_key = dpm_key_from_seed(4, 1)};
  dpm_step_init(&r->st);
  dpm_sgd_init(&r->opt, dpm_model_num_params(r->m), 0.9, 0);
  r->ar_step = dpm_malloc(sizeof(double) * (size_t)steps);
  dpm_step_stats stats;
  for (int w = 0; w < 3; w++, r->t++) {
    dpm_step_run(&r->st, r->t, &stats);
    dpm_sgd_step(&r->opt, dpm_model_params(r->m), dpm_model_grads(r->m), 1.0 / batch, 0.01);
  }
}

static void runner_free(runner *r) {
  dpm_free(r->ar_step);
  dpm_sgd_free(&r->opt);
  dpm_step_free(&r->st);
  dpm_model_free(r->m);
}

/* One repeat of `steps` steps; collective over r->all. out: {seconds per step (max over ranks), examples
 * per second, allreduce seconds per step: max over ranks of time_allreduce, last-in (per-step min),
 * seconds per step waiting for the slowest rank (max over ranks; with measure_wait only)}. */
static void runner_repeat(runner *r, int steps, double out[5]) {
  dpm_step_stats stats;
  double examples = 0;
  r->st.time_allreduce = 0;
  r->st.time_wait = 0;
  DPM_MPI_CHECK(MPI_Barrier(r->all));
  double t0 = dpm_time();
  for (int k = 0; k < steps; k++, r->t++) {
    double before = r->st.time_allreduce;
    dpm_step_run(&r->st, r->t, &stats);
    r->ar_step[k] = r->st.time_allreduce - before;
    dpm_sgd_step(&r->opt, dpm_model_params(r->m), dpm_model_grads(r->m), 1.0 / r->expected, 0.01);
    examples += stats.examples;
  }
  double dt = dpm_time() - t0, ar = r->st.time_allreduce / steps, last_in = 0, wait = r->st.time_wait / steps;
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &wait, 1, MPI_DOUBLE, MPI_MAX, r->all));
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, r->all));
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &ar, 1, MPI_DOUBLE, MPI_MAX, r->all));
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, r->ar_step, steps, MPI_DOUBLE, MPI_MIN, r->all));
  for (int k = 0; k < steps; k++) last_in += r->ar_step[k];
  out[0] = dt / steps, out[1] = examples / dt, out[2] = ar, out[3] = last_in / steps, out[4] = wait;
}

/* Seconds per bare sum-allreduce of P floats in buckets of `bucket` floats (max over ranks, mean of
 * `calls`), each call after a refill of buf (as the step writes its grads) and an MPI_Barrier. */
static double bare_allreduce(float *buf, size_t P, size_t bucket, int calls, MPI_Comm comm) {
  double total = 0;
  for (int k = 0; k < calls; k++) {
    for (size_t i = 0; i < P; i++) buf[i] = 1e-3f;
    DPM_MPI_CHECK(MPI_Barrier(comm));
    double t0 = dpm_time();
    for (size_t off = 0; off < P; off += bucket) {
      size_t len = P - off < bucket ? P - off : bucket;
      DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)len, MPI_FLOAT, MPI_SUM, comm));
    }
    total += dpm_time() - t0;
  }
  total /= calls;
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_DOUBLE, MPI_MAX, comm));
  return total;
}

/* 1. The step's allreduce against the bare collective, on a D x 1 grid. */
static void part_allreduce(const dpm_dataset *set, const dpm_grid *g, int repeats, int steps) {
  const char *names[] = {"mlp 784-512-10", "mlp 784-4096-4096-10"};
  const char *layers[] = {MLP, WIDE_MLP};
  const int batch[] = {256, 16};
  if (g->rank == 0)
    printf("1. step allreduce vs bare MPI_Allreduce, %d x 1 grid (the step times a barrier before its allreduce "
           "apart, measure_wait: max = slowest rank's transfer time; last-in = per-step fastest rank)\n",
           g->replicas);
  if (g->size < 2) {
    if (g->rank == 0) printf("  skipped: needs >= 2 ranks\n");
    return;
  }
  for (int mi = 0; mi < 2; mi++) {
    runner r;
    runner_init(&r, layers[mi], g->world, g->dp, g->pipe, set, batch[mi], DPM_CLIP_FLAT, batch[mi], steps);
    r.st.measure_wait = 1; /* a barrier before the allreduce: time_allreduce is then the transfer alone */
    const size_t P = dpm_model_num_params(r.m);
    float *buf = dpm_malloc_aligned(sizeof(float) * P);
    double step_t[MAX_REPEATS], ar_max[MAX_REPEATS], ar_last[MAX_REPEATS], one[MAX_REPEATS], bucketed[MAX_REPEATS],
        waits[MAX_REPEATS];
    for (int k = -1; k < repeats; k++) { /* k = -1: warm-up round, not counted */
      double out[5], b1, bb;
      runner_repeat(&r, steps, out);
      b1 = bare_allreduce(buf, P, P, steps, r.st.comm);
      bb = bare_allreduce(buf, P, BUCKET_FLOATS, steps, r.st.comm);
      if (k >= 0)
        step_t[k] = out[0], ar_max[k] = out[2], ar_last[k] = out[3], one[k] = b1, bucketed[k] = bb, waits[k] = out[4];
    }
    double s = bench_median(step_t, repeats), am = bench_median(ar_max, repeats), al = bench_median(ar_last, repeats),
           b1 = bench_median(one, repeats), bb = bench_median(bucketed, repeats), wt = bench_median(waits, repeats);
    if (g->rank == 0) {
      printf("  %-22s %zu params (%.1f MiB), batch %d/rank: step %.3f ms, waiting for the slowest rank %.3f ms, "
             "allreduce in step (transfer): max %.3f ms, last-in %.3f ms\n", names[mi], P, P * 4.0 / (1 << 20),
             batch[mi], 1e3 * s, 1e3 * wt, 1e3 * am, 1e3 * al);
      printf("  %-22s bare: one call %.3f ms, 4 MiB buckets %.3f ms; step/bare (one call): max %.3f, last-in %.3f; "
             "step/bare (buckets): max %.3f, last-in %.3f (goal <= 1.10)\n", "", 1e3 * b1, 1e3 * bb, am / b1,
             al / b1, am / bb, al / bb);
    }
    dpm_free(buf);
    runner_free(&r);
  }
}

/* 2. Weak scaling from 1 rank to R replicas at 256 expected examples per rank. */
static void part_weak(const dpm_dataset *set, const dpm_grid *g, int repeats, int steps) {
  const char *names[] = {"mlp 784-512-10", "tanh cnn"};
  const char *layers[] = {MLP, TANH_CNN};
  const int batch = 256;
  if (g->rank == 0)
    printf("2. weak scaling, %d examples/rank expected, 1 rank (MPI_COMM_SELF) vs %d x 1 grid\n", batch, g->size);
  if (g->size < 2) {
    if (g->rank == 0) printf("  skipped: needs >= 2 ranks\n");
    return;
  }
  for (int mi = 0; mi < 2; mi++) {
    runner solo, each, wide, kept;
    if (g->rank == 0) runner_init(&solo, layers[mi], MPI_COMM_SELF, MPI_COMM_SELF, MPI_COMM_SELF, set, batch,
                                  DPM_CLIP_FLAT, batch, steps);
    runner_init(&each, layers[mi], MPI_COMM_SELF, MPI_COMM_SELF, MPI_COMM_SELF, set, batch, DPM_CLIP_FLAT, batch,
                steps);
    runner_init(&wide, layers[mi], g->world, g->dp, g->pipe, set, batch, DPM_CLIP_FLAT, batch, steps);
    runner_init(&kept, layers[mi], g->world, g->dp, g->pipe, set, batch, DPM_CLIP_FLAT, batch, steps);
    kept.st.keep_shards = 1; /* every replica computes its own Poisson sample: waits for the largest */
    double t1[MAX_REPEATS], x1[MAX_REPEATS], xc[MAX_REPEATS], tR[MAX_REPEATS], xR[MAX_REPEATS], am[MAX_REPEATS],
        al[MAX_REPEATS], xK[MAX_REPEATS], out[5];
    for (int k = -1; k < repeats; k++) { /* k = -1: warm-up round, not counted */
      if (g->rank == 0) runner_repeat(&solo, steps, out);
      if (g->rank == 0 && k >= 0) t1[k] = out[0], x1[k] = out[1];
      bench_idle_barrier(g->world);
      DPM_MPI_CHECK(MPI_Barrier(g->world)); /* R independent 1-rank jobs at once */
      runner_repeat(&each, steps, out);
      DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &out[1], 1, MPI_DOUBLE, MPI_SUM, g->world));
      if (k >= 0) xc[k] = out[1];
      runner_repeat(&wide, steps, out);
      if (k >= 0) tR[k] = out[0], xR[k] = out[1], am[k] = out[2], al[k] = out[3];
      runner_repeat(&kept, steps, out);
      if (k >= 0) xK[k] = out[1];
    }
    if (g->rank == 0) {
      double e1 = bench_median(x1, repeats), ec = bench_median(xc, repeats), eR = bench_median(xR, repeats);
      printf("  %-15s 1 rank: %7.3f ms/step %8.0f ex/s; %d ranks: %7.3f ms/step %8.0f ex/s; efficiency %.3f "
             "(goal >= 0.90)\n", names[mi], 1e3 * bench_median(t1, repeats), e1, g->size, 1e3 * bench_median(tR, repeats), eR,
             eR / (g->size * e1));
      printf("  %-15s %d ranks: allreduce in step max %.3f ms (incl. waiting for the slowest rank), last-in %.3f ms\n",
             "", g->size, 1e3 * bench_median(am, repeats), 1e3 * bench_median(al, repeats));
      printf("  %-15s %d independent 1-rank jobs at once (machine contention, no communication): %8.0f ex/s in total; "
             "%d ranks against them: %.3f\n", "", g->size, ec, g->size, eR / ec);
      printf("  %-15s without rebalancing the sample (keep_shards): %8.0f ex/s, efficiency %.3f; rebalanced / kept "
             "%.3f\n", "", bench_median(xK, repeats), bench_median(xK, repeats) / (g->size * e1), eR / bench_median(xK, repeats));
      runner_free(&solo);
    }
    runner_free(&each);
    runner_free(&wide);
    runner_free(&kept);
  }
}

/* 3. Flat against per-device clipping on a 2-stage pipeline, and 1 x 1 for reference. */
static void part_pipeline(const dpm_dataset *set, int repeats, int steps) {
  const int batch = 512, pb = 128;
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (rank == 0)
    printf("3. tanh cnn pipeline, %d examples/replica expected, physical batch %d: flat vs per-device clipping\n",
           batch, pb);
  if (size % 2) {
    if (rank == 0) printf("  skipped: needs an even number of ranks (>= 2)\n");
    return;
  }
  dpm_grid g;
  char err[DPM_ERRLEN];
  if (dpm_grid_create(MPI_COMM_WORLD, size / 2, 2, &g, err)) dpm_fatal("%s", err);
  int first[3];
  dpm_model *probe = build_stage(TANH_CNN, 2, 0, 1, first);
  dpm_model_free(probe);
  runner solo, flat, dev;
  if (rank == 0) runner_init(&solo, TANH_CNN, MPI_COMM_SELF, MPI_COMM_SELF, MPI_COMM_SELF, set, batch, DPM_CLIP_FLAT,
                             pb, steps);
  runner_init(&flat, TANH_CNN, g.world, g.dp, g.pipe, set, batch, DPM_CLIP_FLAT, pb, steps);
  runner_init(&dev, TANH_CNN, g.world, g.dp, g.pipe, set, batch, DPM_CLIP_PER_DEVICE, pb, steps);
  double t1[MAX_REPEATS], tf[MAX_REPEATS], td[MAX_REPEATS], x1[MAX_REPEATS], xf[MAX_REPEATS], xd[MAX_REPEATS], out[5];
  for (int k = -1; k < repeats; k++) { /* k = -1: warm-up round, not counted */
    if (rank == 0) runner_repeat(&solo, steps, out);
    if (rank == 0 && k >= 0) t1[k] = out[0], x1[k] = out[1];
    bench_idle_barrier(g.world);
    runner_repeat(&flat, steps, out);
    if (k >= 0) tf[k] = out[0], xf[k] = out[1];
    runner_repeat(&dev, steps, out);
    if (k >= 0) td[k] = out[0], xd[k] = out[1];
  }
  if (rank == 0) {
    double a = bench_median(t1, repeats), f = bench_median(tf, repeats), d = bench_median(td, repeats);
    printf("  stages: layers 1-%d | %d-%d (balanced split)\n", first[1], first[1] + 1, first[2]);
    printf("  1 x 1 flat        %7.3f ms/step %8.0f ex/s\n", 1e3 * a, bench_median(x1, repeats));
    printf("  %d x 2 flat        %7.3f ms/step %8.0f ex/s\n", g.replicas, 1e3 * f, bench_median(xf, repeats));
    printf("  %d x 2 per-device  %7.3f ms/step %8.0f ex/s\n", g.replicas, 1e3 * d, bench_median(xd, repeats));
    printf("  per-device / flat step time on the pipeline: %.3f; pipeline speedup t(1x1) / t(%dx2 per-device): "
           "%.3f, t(1x1) / t(%dx2 flat): %.3f\n", d / f, g.replicas, a / d, g.replicas, a / f);
    runner_free(&solo);
  }
  runner_free(&flat);
  runner_free(&dev);
  dpm_grid_free(&g);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int repeats = argc > 1 ? atoi(argv[1]) : 7, steps = argc > 2 ? atoi(argv[2]) : 10;
  if (repeats < 1 || repeats > MAX_REPEATS || steps < 1) {
    if (rank == 0) fprintf(stderr, "usage: mpirun -np 2 bench_grid [REPEATS=7 (1..%d)] [STEPS=10]\n", MAX_REPEATS);
    MPI_Finalize();
    return 2;
  }
  const int64_t N = N_EXAMPLES;
  dpm_dataset set = {.n_total = N, .begin = 0, .end = N, .C = 1, .H = 28, .W = 28, .num_classes = 10};
  set.x = dpm_malloc_aligned(sizeof(float) * (size_t)N * PIXELS);
  set.y = dpm_malloc(sizeof(int32_t) * (size_t)N);
  bench_fill(set.x, set.y, 0, N);
  if (rank == 0)
    printf("bench_grid: %d rank(s), N = %lld, DP-SGD (C = 1, sigma = 1), median of %d repeats x %d steps\n", size,
           (long long)N, repeats, steps);
  dpm_grid g;
  char err[DPM_ERRLEN];
  if (dpm_grid_create(MPI_COMM_WORLD, size, 1, &g, err)) dpm_fatal("%s", err);
  part_allreduce(&set, &g, repeats, steps);
  part_weak(&set, &g, repeats, steps);
  dpm_grid_free(&g);
  part_pipeline(&set, repeats, steps);
  dpm_free(set.x);
  dpm_free(set.y);
  MPI_Finalize();
  return 0;
}
