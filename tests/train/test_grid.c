/* DP-SGD on process grids D x S (replicas x pipeline stages), every grid the world size allows (1x1;
 * 2x1, 1x2; 3x1, 1x3; 4x1, 2x2, 1x4), each against runs in the same process:
 * - grid invariance: 50 steps sample exactly the batches of a 1x1 run and end with parameters within
 *   1e-5 relative of it (flat and per-layer clipping; per-device against 1xS, whose pieces are the same);
 *   balanced and explicit layer splits; the same grid twice is bitwise identical; the sampled examples
 *   are rebalanced so that every replica computes floor or ceil of the mean (and some do move);
 * - clipping: one step's clipped sum (q = 1, no noise) equals a brute-force 1-rank reference that takes
 *   each example's gradient alone and clips it by the mode's rule (flat, per-layer, per-device pieces;
 *   automatic and automatic per-layer: normalized, C g / (||g|| + gamma));
 * - I1 sensitivity: removing one example moves the pre-noise sum by at most C over the whole model, and
 *   by C (1e-5) for an example whose gradient is large, for every mode, on 1x1 and every grid;
 * - I2 noise once: with every gradient exactly zero (zero inputs, no biases) and examples sampled, the
 *   averaged noisy gradient has variance sigma^2 C^2 / (qN)^2 per coordinate, and the draws are the 1x1
 *   draws; it would fail if every rank or every micro-batch added noise;
 * - grid errors: a shape that does not divide the world, more stages than layers, bad explicit splits. */
// ctest: np=1,2,3,4
// ctest: timeout=300
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "dpmpi/optim/sgd.h"
#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/parallel/grid.h"
#include "dpmpi/train/step.h"
#include "testing.h"

enum { N = 37, C_IN = 1, H_IN = 6, W_IN = 6, D_IN = C_IN * H_IN * W_IN, K = 3, N_LAYERS = 7, MAX_LAYERS = 16 };
static const char *LAYERS =
    "conv out=2 kernel=3 stride=1 pad=1; tanh; maxpool kernel=2; flatten; dense out=5; relu; dense out=3";
static const char *LAYERS_NOBIAS =
    "conv out=2 kernel=3 stride=1 pad=1 bias=0; tanh; maxpool kernel=2; flatten; dense out=5 bias=0; relu; "
    "dense out=3 bias=0";
#define AUTO_GAMMA 0.01
static float X[N * D_IN];
static int32_t Y[N];
static int rank, size;

typedef struct {
  int D, S;
  const char *split; /* grid.stage_layers, NULL = balanced */
} gridspec;

typedef struct {
  const char *layers;
  dpm_clipping mode;
  int steps;         /* 0: one step, return the (noisy) gradient sum instead of parameters */
  double q, sigma, clip;
  int pb;
  const float *x;
  const int32_t *y;
  int64_t n;
  int update;        /* 1: SGD after each step; 0: parameters stay at their initial values */
  /* called after every step with the whole model's gradient sum (gathered) */
  void (*each)(const float *grad, size_t P, int t, void *ctx);
  void *ctx;
  uint64_t t0;       /* the first step's index (its Poisson sample) */
  dpm_norm_method norm; /* conv layers' norm method (AUTO: the model's choice) */
} job;

static void make_data(void) {
  dpm_key key = dpm_key_from_seed(77, 0);
  for (int k = 0; k < N * D_IN; k++) X[k] = (float)dpm_gauss_at(&key, 0, 1, (uint64_t)k);
  for (int i = 0; i < N; i++) Y[i] = i % K;
  for (int k = 0; k < D_IN; k++) X[5 * D_IN + k] *= 50; /* example 5: a huge gradient in every layer */
}

static dpm_model *full_model(const char *layers, dpm_layer_spec **specs, int *n) {
  char err[DPM_ERRLEN];
  if (dpm_model_parse(layers, specs, n, err)) dpm_fatal("%s", err);
  dpm_model *m = dpm_model_create(*specs, *n, C_IN, H_IN, W_IN, K, 1, err);
  if (!m) dpm_fatal("%s", err);
  return m;
}

static uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static long long examples_moved; /* guests received by this rank over all runs (rebalancing) */
static size_t gathered_offset; /* this rank's stage's offset in the last gathered vector */

/* The whole vector from the stages' slices (every replica holds the same), on every rank. */
static float *gather(const dpm_grid *grid, const float *mine_v, size_t Ps, size_t P) {
  int S = grid->stages, mine = (int)Ps;
  int *counts = malloc(sizeof(int) * (size_t)S), *displs = malloc(sizeof(int) * (size_t)S);
  DPM_MPI_CHECK(MPI_Allgather(&mine, 1, MPI_INT, counts, 1, MPI_INT, grid->pipe));
  for (int s = 0, o = 0; s < S; o += counts[s++]) displs[s] = o;
  float *out = malloc(sizeof(float) * P);
  DPM_MPI_CHECK(MPI_Allgatherv(mine_v, mine, MPI_FLOAT, out, counts, displs, MPI_FLOAT, grid->pipe));
  gathered_offset = (size_t)displs[grid->stage];
  free(counts);
  free(displs);
  return out;
}

/* Run job j on grid g over comm; returns on every rank of comm the whole model's parameters after
 * j.steps steps (or, for steps = 0, one step's gradient sum), and *hash: a digest of every step's
 * sampled global indices (order-free, over all replicas). */
static float *run(MPI_Comm comm, gridspec g, const job *j, size_t *P_out, uint64_t *hash) {
  char err[DPM_ERRLEN];
  dpm_grid grid;
  if (dpm_grid_create(comm, g.D, g.S, &grid, err)) dpm_fatal("%s", err);
  dpm_layer_spec *specs;
  int n, first[MAX_LAYERS + 1];
  dpm_model *full = full_model(j->layers, &specs, &n);
  if (dpm_grid_split_layers(full, n, g.S, g.split, first, err)) dpm_fatal("%s", err);
  dpm_model *m = dpm_grid_stage_model(full, specs, first, grid.stage, g.S, C_IN, H_IN, W_IN, K, j->pb, err);
  if (!m) dpm_fatal("%s", err);
  if (j->norm != DPM_NORM_AUTO)
    for (int gr = 0; gr < dpm_model_num_groups(m); gr++) dpm_model_set_norm_method(m, gr, j->norm);
  const size_t P = dpm_model_num_params(full);
  dpm_model_free(full);
  dpm_free(specs);
  dpm_key ik = dpm_key_from_seed(1, DPM_STREAM_INIT);
  dpm_model_init_params(m, &ik);
  int64_t b = j->n * grid.replica / g.D, e = j->n * (grid.replica + 1) / g.D;
  dpm_dataset d = {.n_total = j->n, .begin = b, .end = e, .C = C_IN, .H = H_IN, .W = W_IN, .num_classes = K,
                   .x = (float *)j->x + b * D_IN, .y = (int32_t *)j->y + b};
  dpm_step st = {.comm = grid.dp, .pipe = grid.pipe, .model = m, .data = &d, .q = j->q, .dp = 1, .clip = j->clip,
                 .sigma = j->sigma, .clipping = j->mode, .device_split = DPM_SPLIT_PARAMS, .physical_batch = j->pb,
                 .sample_key = dpm_key_from_seed(2, DPM_STREAM_SAMPLE), .noise_key = dpm_key_from_seed(2, DPM_STREAM_NOISE),
                 .auto_gamma = AUTO_GAMMA};
  dpm_step_init(&st);
  CHECK(st.nctx == g.S - grid.stage, "stage %d of %d keeps %d micro-batches in flight, expected %d (1F1B)", grid.stage,
        g.S, st.nctx, g.S - grid.stage);
  const size_t Ps = dpm_model_num_params(m);
  dpm_sgd opt;
  dpm_sgd_init(&opt, Ps, 0.9, 0);
  dpm_step_stats stats;
  uint64_t h = 0;
  int steps = j->steps ? j->steps : 1;
  for (uint64_t t = j->t0; t < j->t0 + (uint64_t)steps; t++) {
    dpm_step_run(&st, t, &stats);
    /* rebalancing: every replica computes floor or ceil of the mean sample; count what moved */
    long long T = st.nsel;
    DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &T, 1, MPI_LONG_LONG, MPI_SUM, grid.dp));
    const long long want = T * (st.rank + 1) / g.D - T * st.rank / g.D;
    CHECK(st.nwalk == want && st.nkeep <= st.nsel && st.nkeep <= st.nwalk, "%dx%d step %d: replica %d computed %lld "
          "examples (kept %lld of its %lld), expected %lld of %lld", g.D, g.S, (int)t, st.rank, (long long)st.nwalk,
          (long long)st.nkeep, (long long)st.nsel, want, T);
    examples_moved += st.nwalk - st.nkeep;
    uint64_t hs = 0;
    if (grid.stage == 0)
      for (int64_t i = 0; i < st.nsel; i++) hs += mix((uint64_t)st.sel[i] * 1000003u + (uint64_t)t);
    DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &hs, 1, MPI_UINT64_T, MPI_SUM, grid.dp));
    DPM_MPI_CHECK(MPI_Bcast(&hs, 1, MPI_UINT64_T, 0, grid.pipe));
    h = mix(h + hs);
    if (j->each) {
      float *gr = gather(&grid, dpm_model_grads(m), Ps, P);
      j->each(gr, P, (int)(t - j->t0), j->ctx);
      free(gr);
    }
    if (j->steps && j->update)
      dpm_sgd_step(&opt, dpm_model_params(m), dpm_model_grads(m), 1.0 / (j->q * (double)j->n), 0.5);
  }
  float *out = gather(&grid, j->steps ? dpm_model_params(m) : dpm_model_grads(m), Ps, P);
  CHECK(st.param_offset == gathered_offset && st.total_params == P, "stage %d's global parameter offset", grid.stage);
  dpm_sgd_free(&opt);
  dpm_step_free(&st);
  dpm_model_free(m);
  dpm_grid_free(&grid);
  *P_out = P;
  if (hash) *hash = h;
  return out;
}

static double rel_diff(const float *a, const float *b, size_t P) {
  double d = 0, n = 0;
  for (size_t k = 0; k < P; k++) d += ((double)a[k] - b[k]) * ((double)a[k] - b[k]), n += (double)a[k] * a[k];
  return sqrt(d / (n > 0 ? n : 1));
}

/* The grids of this world size: every D x S = size with S <= layers; explicit splits for S > 1 too. */
static int world_grids(gridspec *out) {
  static const char *explicit_split[] = {NULL, NULL, "1,6", "1,3,3", "1,2,2,2"};
  int n = 0;
  for (int S = 1; S <= size && S <= 4; S++) {
    if (size % S) continue;
    out[n++] = (gridspec){size / S, S, NULL};
    if (S > 1) out[n++] = (gridspec){size / S, S, explicit_split[S]};
  }
  return n;
}

/* world_grids and 1x1 (the reference grid, run on every rank alone) */
static int world_grids_and_1x1(gridspec *out) {
  int n = world_grids(out);
  out[n++] = (gridspec){1, 1, NULL};
  return n;
}

static const char *mode_name(dpm_clipping m) { return dpm_clipping_name(m); }

static void test_grid_invariance(void) {
  gridspec grids[8];
  int ng = world_grids(grids);
  for (int mode = 0; mode < 3; mode++) {
    job j = {LAYERS, (dpm_clipping)mode, 50, 0.3, 1.1, 0.5, 3, X, Y, N, 1, NULL, NULL, 0, DPM_NORM_AUTO};
    for (int gi = 0; gi < ng; gi++) {
      gridspec g = grids[gi];
      size_t P;
      uint64_t h_ref, h_got, h_again;
      /* reference: 1x1 for flat and per-layer; for per-device 1xS (the same pieces), on groups of S ranks */
      float *ref;
      if (mode == DPM_CLIP_PER_DEVICE) {
        MPI_Comm sub;
        MPI_Comm_split(MPI_COMM_WORLD, rank / g.S, rank, &sub);
        ref = run(sub, (gridspec){1, g.S, g.split}, &j, &P, &h_ref);
        MPI_Comm_free(&sub);
      } else {
        ref = run(MPI_COMM_SELF, (gridspec){1, 1, NULL}, &j, &P, &h_ref);
      }
      float *got = run(MPI_COMM_WORLD, g, &j, &P, &h_got);
      CHECK(h_got == h_ref, "%dx%d %s: the sampled batches differ from the reference run's", g.D, g.S, mode_name(mode));
      double rd = rel_diff(ref, got, P);
      CHECK(rd <= 1e-5, "%dx%d split %s, %s clipping: parameters after 50 steps differ from the reference by %g relative",
            g.D, g.S, g.split ? g.split : "balanced", mode_name(mode), rd);
      long long moved = examples_moved;
      float *again = run(MPI_COMM_WORLD, g, &j, &P, &h_again);
      moved = examples_moved - moved;
      DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &moved, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD));
      CHECK(g.D == 1 || moved > 0, "%dx%d: no sampled example was moved between replicas in 50 steps", g.D, g.S);
      CHECK(memcmp(got, again, sizeof(float) * P) == 0 && h_again == h_got, "%dx%d %s: the same grid twice is not bitwise "
            "identical", g.D, g.S, mode_name(mode));
      free(ref);
      free(got);
      free(again);
    }
  }
}

/* The global parameter range [lo[s], hi[s]) of each stage s of the split first (S stages) of model m. */
static void stage_ranges(const dpm_model *m, int S, const int *first, size_t *lo, size_t *hi) {
  size_t off = 0;
  for (int s = 0; s < S; s++) {
    lo[s] = off;
    for (int i = first[s]; i < first[s + 1]; i++) {
      dpm_layer_info info;
      dpm_model_layer_info(m, i, &info);
      off += info.params;
    }
    hi[s] = off;
  }
}

/* Brute force on one rank: sum over examples of clip(grad_i), each gradient computed alone, clipped by
 * the rule of `mode` with the pieces of the split `first` (S stages). */
static double *brute_clipped_sum(const job *j, int S, const int *first) {
  dpm_layer_spec *specs;
  int n;
  dpm_model *m = full_model(j->layers, &specs, &n);
  dpm_free(specs);
  dpm_key ik = dpm_key_from_seed(1, DPM_STREAM_INIT);
  dpm_model_init_params(m, &ik);
  const size_t P = dpm_model_num_params(m);
  const int G = dpm_model_num_groups(m);
  size_t lo[8], hi[8];
  stage_ranges(m, S, first, lo, hi);
  double *sum = calloc(P, sizeof(double));
  float *scale = malloc(sizeof(float) * P);
  /* the step's Poisson sample of the whole dataset, drawn independently of the grid code */
  int64_t *sel = malloc(sizeof(int64_t) * (size_t)j->n);
  const dpm_key sk = dpm_key_from_seed(2, DPM_STREAM_SAMPLE);
  const int64_t nsel = dpm_sample_shard(&sk, j->t0, j->q, 0, j->n, sel);
  for (int64_t a = 0; a < nsel; a++) {
    const int64_t i = sel[a];
    dpm_model_zero_grads(m);
    dpm_model_forward(m, j->x + i * D_IN, j->y + i, 1, NULL);
    dpm_model_backward(m, NULL);
    dpm_model_accumulate(m, NULL);
    const float *g = dpm_model_grads(m);
    if (j->mode == DPM_CLIP_FLAT) {
      double s2 = 0;
      for (size_t k = 0; k < P; k++) s2 += (double)g[k] * g[k];
      for (size_t k = 0; k < P; k++) scale[k] = (float)fmin(1.0, j->clip / sqrt(s2));
    } else if (j->mode == DPM_CLIP_PER_LAYER) {
      for (int gr = 0; gr < G; gr++) {
        size_t a = dpm_model_group_offset(m, gr), b = a + dpm_model_group_size(m, gr);
        double s2 = 0;
        for (size_t k = a; k < b; k++) s2 += (double)g[k] * g[k];
        for (size_t k = a; k < b; k++) scale[k] = (float)fmin(1.0, j->clip / sqrt((double)G) / sqrt(s2));
      }
    } else if (j->mode == DPM_CLIP_AUTOMATIC) { /* Bu et al.: C g / (||g|| + gamma), whatever ||g|| */
      double s2 = 0;
      for (size_t k = 0; k < P; k++) s2 += (double)g[k] * g[k];
      for (size_t k = 0; k < P; k++) scale[k] = (float)(j->clip / (sqrt(s2) + AUTO_GAMMA));
    } else if (j->mode == DPM_CLIP_AUTOMATIC_PER_LAYER) {
      for (int gr = 0; gr < G; gr++) {
        size_t a = dpm_model_group_offset(m, gr), b = a + dpm_model_group_size(m, gr);
        double s2 = 0;
        for (size_t k = a; k < b; k++) s2 += (double)g[k] * g[k];
        for (size_t k = a; k < b; k++) scale[k] = (float)(j->clip / sqrt((double)G) / (sqrt(s2) + AUTO_GAMMA));
      }
    } else {
      for (int s = 0; s < S; s++) {
        double s2 = 0, cs = dpm_clip_threshold(DPM_CLIP_PER_DEVICE, j->clip, G, S, hi[s] - lo[s], P, DPM_SPLIT_PARAMS);
        for (size_t k = lo[s]; k < hi[s]; k++) s2 += (double)g[k] * g[k];
        for (size_t k = lo[s]; k < hi[s]; k++) scale[k] = (float)fmin(1.0, cs / sqrt(s2));
      }
    }
    for (size_t k = 0; k < P; k++) sum[k] += (double)scale[k] * g[k];
  }
  free(scale);
  free(sel);
  dpm_model_free(m);
  return sum;
}

static void test_clipping_against_brute_force(void) {
  gridspec grids[8];
  int ng = world_grids_and_1x1(grids);
  /* q = 1 (every example) and q = 0.6 at step 3 (a Poisson sample, rebalanced over the replicas) */
  for (int qi = 0; qi < 2; qi++)
  for (int mode = 0; mode < DPM_CLIP_COUNT; mode++)
    for (int gi = 0; gi < ng; gi++) {
      gridspec g = grids[gi];
      if (g.S > 1 && g.D * g.S != size) continue;
      MPI_Comm comm = g.D * g.S == 1 ? MPI_COMM_SELF : MPI_COMM_WORLD;
      job j = {LAYERS, (dpm_clipping)mode, 0, qi ? 0.6 : 1.0, 0.0, mode == DPM_CLIP_FLAT ? 0.5 : 0.05, 4, X, Y, N, 0, NULL,
               NULL, qi ? 3 : 0, DPM_NORM_AUTO};
      size_t P;
      float *got = run(comm, g, &j, &P, NULL);
      dpm_layer_spec *specs;
      int n, first[MAX_LAYERS + 1];
      char err[DPM_ERRLEN];
      dpm_model *full = full_model(LAYERS, &specs, &n);
      if (dpm_grid_split_layers(full, n, g.S, g.split, first, err)) dpm_fatal("%s", err);
      dpm_model_free(full);
      dpm_free(specs);
      double *ref = brute_clipped_sum(&j, g.S, first), d = 0, nn = 0;
      for (size_t k = 0; k < P; k++) d += (ref[k] - got[k]) * (ref[k] - got[k]), nn += ref[k] * ref[k];
      CHECK(sqrt(d / nn) <= 1e-5, "%dx%d %s clipping, q = %g: the clipped sum differs from brute force by %g relative", g.D,
            g.S, mode_name(mode), j.q, sqrt(d / nn));
      free(ref);
      free(got);
    }
}

static void test_sensitivity(void) {
  static float X2[N * D_IN];
  static int32_t Y2[N];
  const int ks[] = {5, 0, 20};
  gridspec grids[8];
  int ng = world_grids_and_1x1(grids);
  for (int mode = 0; mode < 3; mode++)
    for (int gi = 0; gi < ng; gi++) {
      gridspec g = grids[gi];
      MPI_Comm comm = g.D * g.S == 1 ? MPI_COMM_SELF : MPI_COMM_WORLD;
      /* flat: example 5's whole gradient is far above C; per-layer and per-device: C (1e-6) so small that every
         piece of every example is clipped (tanh saturates example 5's first layer) */
      double C = mode == DPM_CLIP_FLAT ? 0.5 : 1e-6;
      job j = {LAYERS, (dpm_clipping)mode, 0, 1.0, 0.0, C, 4, X, Y, N, 0, NULL, NULL, 0, DPM_NORM_AUTO};
      size_t P;
      float *full = run(comm, g, &j, &P, NULL);
      for (int a = 0; a < 3; a++) {
        int k = ks[a];
        dpm_test_drop_example(X, Y, N, D_IN, k, X2, Y2);
        job j2 = j;
        j2.x = X2, j2.y = Y2, j2.n = N - 1;
        float *less = run(comm, g, &j2, &P, NULL);
        double d2 = 0;
        for (size_t q = 0; q < P; q++) d2 += ((double)full[q] - less[q]) * ((double)full[q] - less[q]);
        CHECK(sqrt(d2) <= C * (1 + 1e-5), "%dx%d %s: removing example %d moved the sum by %g > C = %g", g.D, g.S,
              mode_name(mode), k, sqrt(d2), C);
        if (k == 5)
          CHECK(fabs(sqrt(d2) / C - 1) <= 1e-5, "%dx%d %s: the large-gradient example moved the sum by %g, not C = %g",
                g.D, g.S, mode_name(mode), sqrt(d2), C);
        free(less);
      }
      free(full);
    }
}

/* The first step >= 0 whose Poisson sample at rate q (the runs' sampling key) contains example k. */
static uint64_t step_sampling(int64_t k, double q) {
  const dpm_key sk = dpm_key_from_seed(2, DPM_STREAM_SAMPLE);
  int64_t one;
  for (uint64_t t = 0;; t++)
    if (dpm_sample_shard(&sk, t, q, k, k + 1, &one) == 1) return t;
}

/* I1 at q < 1: the removed example is the last one, so every other example keeps its global index and
 * its sampling decision; the shards of N and N - 1 examples differ, and rebalancing moves examples. */
static void test_sensitivity_sampled(void) {
  static float XE[N * D_IN];
  static int32_t YE[N];
  memcpy(XE, X, sizeof XE);
  memcpy(YE, Y, sizeof YE);
  /* the large-gradient example 5 goes last */
  memcpy(XE + (size_t)(N - 1) * D_IN, X + 5 * D_IN, sizeof(float) * D_IN);
  memcpy(XE + 5 * D_IN, X + (size_t)(N - 1) * D_IN, sizeof(float) * D_IN);
  YE[N - 1] = Y[5], YE[5] = Y[N - 1];
  const double q = 0.6;
  const uint64_t t = step_sampling(N - 1, q);
  gridspec grids[8];
  int ng = world_grids_and_1x1(grids);
  for (int mode = 0; mode < 3; mode++)
    for (int gi = 0; gi < ng; gi++) {
      gridspec g = grids[gi];
      MPI_Comm comm = g.D * g.S == 1 ? MPI_COMM_SELF : MPI_COMM_WORLD;
      double C = mode == DPM_CLIP_FLAT ? 0.5 : 1e-6;
      job j = {LAYERS, (dpm_clipping)mode, 0, q, 0.0, C, 4, XE, YE, N, 0, NULL, NULL, t, DPM_NORM_AUTO};
      size_t P;
      float *full = run(comm, g, &j, &P, NULL);
      j.n = N - 1;
      float *less = run(comm, g, &j, &P, NULL);
      double d2 = 0;
      for (size_t k = 0; k < P; k++) d2 += ((double)full[k] - less[k]) * ((double)full[k] - less[k]);
      CHECK(fabs(sqrt(d2) / C - 1) <= 1e-5, "%dx%d %s, q = %g step %d: removing the large-gradient example moved the "
            "sum by %g, not C = %g", g.D, g.S, mode_name(mode), q, (int)t, sqrt(d2), C);
      free(full);
      free(less);
    }
}

/* Adversarial examples: one example whose features are finite float32 values at the extremes (or
 * subnormal) must still move the pre-noise sum by at most C (and each group or stage by at most its
 * threshold), and neither sum may hold Inf or NaN; on every grid, every clipping mode, every layer
 * kind, both conv norm methods, at q < 1 with the sample rebalanced. */
static const char *ADV_CNN =
    "conv out=4 kernel=3 stride=1 pad=1; groupnorm groups=2; tanh; avgpool kernel=2; conv out=3 kernel=2; relu; "
    "maxpool kernel=2; flatten; dense out=6; relu; dense out=3";
static const char *ADV_MLP = "dense out=8; relu; dense out=8; tanh; dense out=3";

enum { ADV_VALUES = 13 };
static void adversarial_example(int v, float *x) {
  for (int k = 0; k < D_IN; k++) {
    const float alt = k % 2 ? -1.0f : 1.0f, gauss = X[k];
    switch (v) {
      case 0: x[k] = 1e19f; break;
      case 1: x[k] = 3e19f; break;
      case 2: x[k] = -3e19f; break;
      case 3: x[k] = 3e19f * alt; break;          /* mixed signs */
      case 4: x[k] = 1e30f * gauss; break;
      case 5: x[k] = FLT_MAX; break;
      case 6: x[k] = -FLT_MAX * alt; break;
      case 7: x[k] = 1e-40f * alt; break;         /* subnormal */
      case 8: x[k] = k == 7 ? FLT_MAX : gauss; break; /* one extreme pixel */
      case 9: x[k] = k % 3 ? FLT_MIN * 0.5f : 1e19f * gauss; break;
      case 10: x[k] = k == 7 ? 1e25f : gauss; break;  /* one large pixel: the positions' terms cancel */
      case 11: x[k] = k == 7 ? 1e12f : gauss; break;
      case 12: x[k] = k == 7 ? 3e19f : gauss; break;
    }
  }
}

/* Norms of the pieces of the difference a - b: per group (per-layer) or per stage (per-device). */
static void piece_norms(const char *layers, dpm_clipping mode, int S, const float *a, const float *b, double *out,
                        size_t *sizes, int *npieces) {
  dpm_layer_spec *specs;
  int n, first[MAX_LAYERS + 1];
  char err[DPM_ERRLEN];
  dpm_model *m = full_model(layers, &specs, &n);
  if (dpm_grid_split_layers(m, n, S, NULL, first, err)) dpm_fatal("%s", err);
  size_t lo[MAX_LAYERS], hi[MAX_LAYERS];
  int np = 0;
  if (mode == DPM_CLIP_PER_LAYER) {
    for (int g = 0; g < dpm_model_num_groups(m); g++, np++)
      lo[np] = dpm_model_group_offset(m, g), hi[np] = lo[np] + dpm_model_group_size(m, g);
  } else {
    stage_ranges(m, S, first, lo, hi);
    np = S;
  }
  for (int p = 0; p < np; p++) {
    double d2 = 0;
    for (size_t k = lo[p]; k < hi[p]; k++) d2 += ((double)a[k] - b[k]) * ((double)a[k] - b[k]);
    out[p] = sqrt(d2);
    sizes[p] = hi[p] - lo[p];
  }
  *npieces = np;
  dpm_model_free(m);
  dpm_free(specs);
}

static void test_adversarial_examples(void) {
  static float XA[N * D_IN];
  memcpy(XA, X, sizeof XA);
  const double q = 0.6;
  const uint64_t t = step_sampling(N - 1, q);
  struct { const char *layers; dpm_norm_method norm; } models[] = {
      {ADV_CNN, DPM_NORM_AUTO}, {ADV_CNN, DPM_NORM_GHOST}, {ADV_CNN, DPM_NORM_EXPLICIT}, {ADV_MLP, DPM_NORM_AUTO}};
  gridspec grids[8];
  int ng = world_grids_and_1x1(grids);
  double worst = 0; /* largest move / threshold over everything */
  int finite_moves = 0;
  for (int mi = 0; mi < 4; mi++)
    for (int mode = 0; mode < 3; mode++)
      for (int gi = 0; gi < ng; gi++) {
        gridspec g = grids[gi];
        if (g.split) continue; /* balanced splits only: the explicit ones are for LAYERS */
        MPI_Comm comm = g.D * g.S == 1 ? MPI_COMM_SELF : MPI_COMM_WORLD;
        const double C = mode == DPM_CLIP_FLAT ? 0.5 : 0.05;
        job j = {models[mi].layers, (dpm_clipping)mode, 0, q, 0.0, C, 4, XA, Y, N - 1, 0, NULL, NULL, t, models[mi].norm};
        size_t P;
        float *less = run(comm, g, &j, &P, NULL);
        for (int v = 0; v < ADV_VALUES; v++) {
          adversarial_example(v, XA + (size_t)(N - 1) * D_IN);
          j.n = N;
          float *full = run(comm, g, &j, &P, NULL);
          int finite = 1;
          double d2 = 0;
          for (size_t k = 0; k < P; k++) {
            finite &= isfinite(full[k]) && isfinite(less[k]);
            d2 += ((double)full[k] - less[k]) * ((double)full[k] - less[k]);
          }
          const double move = sqrt(d2);
          CHECK(finite, "%s %s %dx%d value %d: the pre-noise sum holds Inf or NaN", mi < 3 ? "cnn" : "mlp",
                mode_name(mode), g.D, g.S, v);
          CHECK(move <= C * (1 + 1e-6), "%s (norms %d) %s %dx%d value %d: the extreme example moved the sum by %.9g > "
                "C = %g", mi < 3 ? "cnn" : "mlp", models[mi].norm, mode_name(mode), g.D, g.S, v, move, C);
          worst = fmax(worst, move / C);
          finite_moves += v == 0 && move > 0.5 * C;
          double pieces[MAX_LAYERS];
          size_t sizes[MAX_LAYERS];
          int np = 0;
          if (mode != DPM_CLIP_FLAT) piece_norms(models[mi].layers, (dpm_clipping)mode, g.S, full, less, pieces, sizes, &np);
          for (int p = 0; p < np; p++) {
            const double cp = mode == DPM_CLIP_PER_LAYER
                                  ? C / sqrt((double)np)
                                  : dpm_clip_threshold(DPM_CLIP_PER_DEVICE, C, 0, g.S, sizes[p], P, DPM_SPLIT_PARAMS);
            CHECK(pieces[p] <= cp * (1 + 1e-6), "%s %s %dx%d value %d: piece %d moved by %.9g > its threshold %g",
                  mi < 3 ? "cnn" : "mlp", mode_name(mode), g.D, g.S, v, p, pieces[p], cp);
          }
          free(full);
        }
        free(less);
      }
  CHECK(finite_moves > 0, "adversarial test too weak: no value-0 example moved the sum by more than C / 2");
  if (rank == 0) printf("adversarial examples: largest move %.9f C\n", worst);
}

typedef struct {
  float *ref;       /* steps x P: the 1x1 run's noisy sums */
  int record;       /* 1: store into ref; 0: compare with ref and accumulate */
  double scale, sum2;
  double *total;    /* P: the averaged noisy gradients summed over the steps */
  int identical;
} noise_ctx;

static void noise_each(const float *g, size_t P, int t, void *vc) {
  noise_ctx *c = vc;
  if (c->record) {
    memcpy(c->ref + (size_t)t * P, g, sizeof(float) * P);
    return;
  }
  c->identical &= memcmp(c->ref + (size_t)t * P, g, sizeof(float) * P) == 0;
  for (size_t k = 0; k < P; k++) {
    double v = g[k] * c->scale; /* the averaged noisy gradient: sum / (qN) */
    c->sum2 += v * v;
    c->total[k] += v;
  }
}

static void test_noise_once(void) {
  /* zero inputs and no biases: every activation and every parameter gradient is exactly 0, yet about
     qN = 11 examples per step pass through micro-batches of 3 on every stage */
  static float Z[N * D_IN];
  const double sigma = 1.3, C = 0.5, q = 0.3;
  const int steps = 200;
  gridspec grids[8];
  int ng = world_grids_and_1x1(grids);
  for (int mode = 0; mode < 3; mode += 2) /* flat (two pipeline passes on S > 1) and per-device */
    for (int gi = 0; gi < ng; gi++) {
      gridspec g = grids[gi];
      MPI_Comm comm = g.D * g.S == 1 ? MPI_COMM_SELF : MPI_COMM_WORLD;
      job j = {LAYERS_NOBIAS, (dpm_clipping)mode, steps, q, sigma, C, 3, Z, Y, N, 0, noise_each, NULL, 0, DPM_NORM_AUTO};
      size_t P;
      dpm_layer_spec *specs;
      int n;
      dpm_model *full = full_model(LAYERS_NOBIAS, &specs, &n);
      P = dpm_model_num_params(full);
      dpm_model_free(full);
      dpm_free(specs);
      noise_ctx c = {.ref = malloc(sizeof(float) * (size_t)steps * P), .record = 1, .scale = 1.0 / (q * N),
                     .total = calloc(P, sizeof(double)), .identical = 1};
      j.ctx = &c;
      free(run(MPI_COMM_SELF, (gridspec){1, 1, NULL}, &j, &P, NULL));
      c.record = 0;
      free(run(comm, g, &j, &P, NULL));
      double M = (double)steps * (double)P, var = c.sum2 / M, expect = sigma * sigma * C * C * c.scale * c.scale;
      /* the sample variance of M independent normals has relative sd sqrt(2/M); 6 sd: false failure < 2e-9
         per check. Noise added by every rank or every micro-batch multiplies the variance by >= 2. */
      CHECK(fabs(var / expect - 1) < 6 * sqrt(2 / M), "%dx%d %s: variance of the averaged noisy gradient %g, expected "
            "sigma^2 C^2 / (qN)^2 = %g (M = %g)", g.D, g.S, mode_name(mode), var, expect, M);
      CHECK(c.identical, "%dx%d %s: the noise differs from the 1x1 draws", g.D, g.S, mode_name(mode));
      /* fresh draws every step: the sum over T steps has variance T sigma^2 C^2 / (qN)^2 per coordinate
         (P samples: relative sd sqrt(2/P), 6 sd); one step's noise reused would give T^2 */
      double tot2 = 0;
      for (size_t k = 0; k < P; k++) tot2 += c.total[k] * c.total[k];
      const double tvar = tot2 / (double)P / steps;
      CHECK(fabs(tvar / expect - 1) < 6 * sqrt(2.0 / (double)P), "%dx%d %s: the noise of different steps is not "
            "independent: variance of the %d-step sum / steps = %g, expected %g", g.D, g.S, mode_name(mode), steps, tvar,
            expect);
      free(c.total);
      free(c.ref);
    }
}

static void test_grid_errors(void) {
  char err[DPM_ERRLEN];
  dpm_grid g;
  if (size > 1) {
    CHECK(dpm_grid_create(MPI_COMM_WORLD, size + 1, 1, &g, err) != 0 && strstr(err, "ranks"), "a grid larger than the world "
          "is rejected: %s", err);
    CHECK(dpm_grid_create(MPI_COMM_WORLD, 0, size + 1, &g, err) != 0 && strstr(err, "do not divide"),
          "stages that do not divide the world are rejected: %s", err);
  }
  CHECK(dpm_grid_create(MPI_COMM_WORLD, 0, 0, &g, err) == 0 && g.replicas == size && g.stages == 1,
        "default grid: all ranks replicas");
  dpm_grid_free(&g);
  dpm_layer_spec *specs;
  int n, first[16];
  dpm_model *full = full_model(LAYERS, &specs, &n);
  CHECK(dpm_grid_split_layers(full, n, 8, NULL, first, err) != 0 && strstr(err, "only 7 layers"),
        "more stages than layers is rejected: %s", err);
  CHECK(dpm_grid_split_layers(full, n, 2, "3,3", first, err) != 0 && strstr(err, "sum to 6"), "counts not summing to the "
        "layers: %s", err);
  CHECK(dpm_grid_split_layers(full, n, 2, "7", first, err) != 0, "too few counts: %s", err);
  CHECK(dpm_grid_split_layers(full, n, 2, "2,x", first, err) != 0, "a bad count: %s", err);
  CHECK(dpm_grid_split_layers(full, n, 2, "2,5", first, err) == 0 && first[0] == 0 && first[1] == 2 && first[2] == 7,
        "explicit split 2,5");
  /* balanced: no stage is empty and the split minimizes the largest stage (brute force over cuts) */
  double cost[N_LAYERS];
  for (int i = 0; i < n; i++) {
    dpm_layer_info info;
    dpm_model_layer_info(full, i, &info);
    cost[i] = info.cost;
  }
  for (int S = 1; S <= 3; S++) {
    CHECK(dpm_grid_split_layers(full, n, S, NULL, first, err) == 0, "balanced split into %d", S);
    double worst = 0, best = 1e300;
    for (int s = 0; s < S; s++) {
      double c = 0;
      CHECK(first[s + 1] > first[s], "stage %d of %d is empty", s, S);
      for (int i = first[s]; i < first[s + 1]; i++) c += cost[i];
      worst = fmax(worst, c);
    }
    /* brute force over all cut positions (S <= 3) */
    for (int a = 1; a < n; a++)
      for (int b = a + 1; b <= n; b++) {
        int cuts[4] = {0, S >= 2 ? a : n, S >= 3 ? b : n, n};
        if (S < 3 && b != a + 1) continue;
        double w = 0;
        for (int s = 0; s < S; s++) {
          double c = 0;
          for (int i = cuts[s]; i < cuts[s + 1]; i++) c += cost[i];
          w = fmax(w, c);
        }
        best = fmin(best, w);
      }
    CHECK(worst <= best * (1 + 1e-12), "balanced split into %d: largest stage %g, best possible %g", S, worst, best);
  }
  dpm_model_free(full);
  dpm_free(specs);
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  make_data();
  test_grid_errors();
  test_grid_invariance();
  test_clipping_against_brute_force();
  test_sensitivity();
  test_sensitivity_sampled();
  test_adversarial_examples();
  test_noise_once();
  return dpm_test_finish();
}
