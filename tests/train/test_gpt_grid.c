/* Privacy invariant I1 (sensitivity) for the GPT layer kinds (embed; block; block; lm_head) through the
 * training step (dpm_step: sampling, rebalancing, pipeline, norms, clipping, allreduce) on every process
 * grid D x S of the world size (1x1; 2x1, 1x2; 3x1, 1x3; 4x1, 2x2, 1x4: the pipeline splits between the
 * blocks; the head is untied on S > 1 stages, tied and untied on one stage), flat, per-layer and
 * per-device clipping, token data with a pad id:
 * - removing one example moves the pre-noise sum by <= C (1 + 1e-6); removing the large-gradient example
 *   (every target but one masked) moves it by C within 1e-5, at a C for which every parameter group of
 *   that example is clipped: the test measures that example's per-group norms and CHECKs this
 *   precondition, for q = 1 and for a Poisson sample at q < 1 (the last example removed, rebalanced);
 *   two C per mode: half its smallest group norm, and 0.9 of the largest C at which it is clipped in every
 *   piece (where the test CHECKs that other examples are not);
 * - adversarial token rows (all one token, all pad but one target, the whole context one repeated pair,
 *   the largest id everywhere) as the last example at q < 1, both norm methods: the sum moves by <= C and
 *   each group (per-layer) or stage (per-device) by <= its threshold, and stays finite;
 * - per-device clipping at equal stages: 5 noisy DP-SGD steps on D x S end within 1e-5 relative of 1 x S
 *   (and flat, per-layer of 1 x 1). */
// ctest: np=1,2,3,4
// ctest: timeout=300
#include <stdlib.h>
#include <string.h>

#include "dpmpi/optim/sgd.h"
#include "dpmpi/parallel/grid.h"
#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/train/step.h"
#include "testing.h"

enum { N = 13, V = 17, T = 6, PAD = V - 1, MAX_LAYERS = 8, BIG = 5 };
static const char *TIED = "embed vocab=17 context=6 width=8; block heads=2; block heads=2; lm_head tied=1";
static const char *UNTIED = "embed vocab=17 context=6 width=8; block heads=2; block heads=2; lm_head tied=0 vocab=17";
static float X[N * T];   /* inputs: token ids as floats (the model's view of token rows) */
static int32_t Y[N * T]; /* next-token targets, PAD masked */
static int rank, size;

typedef struct {
  int D, S;
} gridspec;

typedef struct {
  const char *layers;
  dpm_clipping mode;
  int steps; /* 0: one step, return its pre-noise (sigma 0) or noisy sum; > 0: SGD, return parameters */
  double q, sigma, clip;
  const float *x;
  const int32_t *y;
  int64_t n;
  uint64_t t0;
  dpm_norm_method norm;
} job;

static uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* Random rows over ids [0, V - 1) (PAD never an input of these); example BIG has one unmasked target. */
static void make_data(void) {
  for (int k = 0; k < N * T; k++) {
    const int32_t a = (int32_t)(mix(1000 + (uint64_t)k) % (V - 1)), b = (int32_t)(mix(5000 + (uint64_t)k) % (V - 1));
    X[k] = (float)a, Y[k] = b;
  }
  for (int t = 0; t < T; t++) Y[BIG * T + t] = t == 2 ? 3 : PAD;
}

static dpm_model *full_model(const char *layers, dpm_layer_spec **specs, int *n) {
  char err[DPM_ERRLEN];
  if (dpm_model_parse(layers, specs, n, err)) dpm_fatal("%s", err);
  dpm_model *m = dpm_model_create(*specs, *n, 1, 1, T, V, 1, err);
  if (!m) dpm_fatal("%s", err);
  dpm_model_set_pad_id(m, PAD);
  return m;
}

/* The whole vector from the stages' slices, on every rank. */
static float *gather(const dpm_grid *grid, const float *mine_v, size_t Ps, size_t P) {
  int S = grid->stages, mine = (int)Ps;
  int *counts = malloc(sizeof(int) * (size_t)S), *displs = malloc(sizeof(int) * (size_t)S);
  DPM_MPI_CHECK(MPI_Allgather(&mine, 1, MPI_INT, counts, 1, MPI_INT, grid->pipe));
  for (int s = 0, o = 0; s < S; o += counts[s++]) displs[s] = o;
  float *out = malloc(sizeof(float) * P);
  DPM_MPI_CHECK(MPI_Allgatherv(mine_v, mine, MPI_FLOAT, out, counts, displs, MPI_FLOAT, grid->pipe));
  free(counts);
  free(displs);
  return out;
}

/* Run job j on grid g over comm (physical batches of 2, balanced split); returns the whole model's gradient
 * sum of one step (steps = 0) or its parameters after j->steps SGD steps, on every rank of comm. */
static float *run(MPI_Comm comm, gridspec g, const job *j, size_t *P_out) {
  char err[DPM_ERRLEN];
  dpm_grid grid;
  if (dpm_grid_create(comm, g.D, g.S, &grid, err)) dpm_fatal("%s", err);
  dpm_layer_spec *specs;
  int n, first[MAX_LAYERS + 1];
  dpm_model *full = full_model(j->layers, &specs, &n);
  if (dpm_grid_split_layers(full, n, g.S, NULL, first, err)) dpm_fatal("%s", err);
  dpm_model *m = dpm_grid_stage_model(full, specs, first, grid.stage, g.S, 1, 1, T, V, 2, err);
  if (!m) dpm_fatal("%s", err);
  dpm_model_set_pad_id(m, PAD);
  if (j->norm != DPM_NORM_AUTO)
    for (int gr = 0; gr < dpm_model_num_groups(m); gr++) dpm_model_set_norm_method(m, gr, j->norm);
  const size_t P = dpm_model_num_params(full);
  dpm_model_free(full);
  dpm_free(specs);
  dpm_key ik = dpm_key_from_seed(1, DPM_STREAM_INIT);
  dpm_model_init_params(m, &ik);
  int64_t b = j->n * grid.replica / g.D, e = j->n * (grid.replica + 1) / g.D;
  dpm_dataset d = {.n_total = j->n, .begin = b, .end = e, .C = 1, .H = 1, .W = T, .num_classes = V,
                   .x = (float *)j->x + b * T, .y = (int32_t *)j->y + b * T};
  dpm_step st = {.comm = grid.dp, .pipe = grid.pipe, .model = m, .data = &d, .q = j->q, .dp = 1, .clip = j->clip,
                 .sigma = j->sigma, .clipping = j->mode, .device_split = DPM_SPLIT_PARAMS, .physical_batch = 2,
                 .sample_key = dpm_key_from_seed(2, DPM_STREAM_SAMPLE), .noise_key = dpm_key_from_seed(2, DPM_STREAM_NOISE)};
  dpm_step_init(&st);
  const size_t Ps = dpm_model_num_params(m);
  dpm_sgd opt;
  dpm_sgd_init(&opt, Ps, 0.9, 0);
  dpm_step_stats stats;
  const int steps = j->steps ? j->steps : 1;
  for (uint64_t t = j->t0; t < j->t0 + (uint64_t)steps; t++) {
    dpm_step_run(&st, t, &stats);
    if (j->steps) dpm_sgd_step(&opt, dpm_model_params(m), dpm_model_grads(m), dpm_update_scale(j->q, j->n), 0.5);
  }
  float *out = gather(&grid, j->steps ? dpm_model_params(m) : dpm_model_grads(m), Ps, P);
  CHECK(st.total_params == P, "%dx%d: the step counts %zu parameters, the model has %zu", g.D, g.S, st.total_params, P);
  dpm_sgd_free(&opt);
  dpm_step_free(&st);
  dpm_model_free(m);
  dpm_grid_free(&grid);
  *P_out = P;
  return out;
}

static double dist(const float *a, const float *b, size_t P) {
  double d2 = 0;
  for (size_t k = 0; k < P; k++) d2 += ((double)a[k] - b[k]) * ((double)a[k] - b[k]);
  return sqrt(d2);
}

/* every D x S = size with S <= 4 (the four layers), then 1x1 */
static int grids_and_1x1(gridspec *out) {
  int n = 0;
  for (int S = 1; S <= size && S <= 4; S++)
    if (size % S == 0) out[n++] = (gridspec){size / S, S};
  if (size > 1) out[n++] = (gridspec){1, 1};
  return n;
}

/* The parameter pieces of `mode` on S stages (balanced split) of the model `layers`: per group (per-layer),
 * per stage (per-device) or the whole model (flat): lo/hi global ranges and their thresholds at total C. */
static int pieces(const char *layers, dpm_clipping mode, int S, double C, size_t *lo, size_t *hi, double *thr) {
  dpm_layer_spec *specs;
  int n, first[MAX_LAYERS + 1], np = 0;
  char err[DPM_ERRLEN];
  dpm_model *m = full_model(layers, &specs, &n);
  if (dpm_grid_split_layers(m, n, S, NULL, first, err)) dpm_fatal("%s", err);
  const size_t P = dpm_model_num_params(m);
  const int G = dpm_model_num_groups(m);
  if (mode == DPM_CLIP_FLAT) {
    lo[0] = 0, hi[0] = P, thr[0] = C, np = 1;
  } else if (mode == DPM_CLIP_PER_LAYER) {
    for (int g = 0; g < G; g++, np++) {
      lo[np] = dpm_model_group_offset(m, g), hi[np] = lo[np] + dpm_model_group_size(m, g);
      thr[np] = C / sqrt((double)G);
    }
  } else {
    size_t off = 0;
    for (int s = 0; s < S; s++, np++) {
      lo[np] = off;
      for (int i = first[s]; i < first[s + 1]; i++) {
        dpm_layer_info info;
        dpm_model_layer_info(m, i, &info);
        off += info.params;
      }
      hi[np] = off;
      thr[np] = dpm_clip_threshold(DPM_CLIP_PER_DEVICE, C, G, S, hi[np] - lo[np], P, DPM_SPLIT_PARAMS);
    }
  }
  dpm_model_free(m);
  dpm_free(specs);
  return np;
}

/* Example i's gradient alone (1 x 1, the runs' initialization), into g (P values, double norms from it). */
static float *example_grad(const char *layers, const float *x, const int32_t *y, size_t *P) {
  dpm_layer_spec *specs;
  int n;
  dpm_model *m = full_model(layers, &specs, &n);
  dpm_free(specs);
  dpm_key ik = dpm_key_from_seed(1, DPM_STREAM_INIT);
  dpm_model_init_params(m, &ik);
  dpm_model_zero_grads(m);
  dpm_model_forward(m, x, y, 1, NULL);
  dpm_model_backward(m, NULL);
  dpm_model_accumulate(m, NULL);
  *P = dpm_model_num_params(m);
  float *g = malloc(sizeof(float) * *P);
  memcpy(g, dpm_model_grads(m), sizeof(float) * *P);
  dpm_model_free(m);
  return g;
}

/* The smallest norm over the groups of example k's own gradient (computed by brute force from the
 * gradient, not from the model's norms). */
static double min_group_norm(const char *layers, const float *x, const int32_t *y) {
  size_t P, lo[MAX_LAYERS * 2], hi[MAX_LAYERS * 2];
  double thr[MAX_LAYERS * 2], best = INFINITY;
  float *g = example_grad(layers, x, y, &P);
  const int np = pieces(layers, DPM_CLIP_PER_LAYER, 1, 1, lo, hi, thr);
  for (int p = 0; p < np; p++) {
    double s2 = 0;
    for (size_t k = lo[p]; k < hi[p]; k++) s2 += (double)g[k] * g[k];
    best = fmin(best, sqrt(s2));
  }
  free(g);
  return best;
}

/* min over the pieces p of `mode` on S stages of example (x, y)'s ||g_p|| / (p's threshold at C = 1): the
 * example is clipped in every piece exactly when C is below it (thresholds are linear in C). */
static double clip_margin(const char *layers, dpm_clipping mode, int S, const float *x, const int32_t *y) {
  size_t P, lo[MAX_LAYERS * 2], hi[MAX_LAYERS * 2];
  double thr[MAX_LAYERS * 2], best = INFINITY;
  float *g = example_grad(layers, x, y, &P);
  const int np = pieces(layers, mode, S, 1, lo, hi, thr);
  for (int p = 0; p < np; p++) {
    double s2 = 0;
    for (size_t k = lo[p]; k < hi[p]; k++) s2 += (double)g[k] * g[k];
    best = fmin(best, sqrt(s2) / thr[p]);
  }
  free(g);
  return best;
}

/* CHECK that every piece of `mode` of example (x, y)'s gradient is above its threshold: it is clipped. */
static void check_all_clipped(const char *layers, dpm_clipping mode, int S, double C, const float *x, const int32_t *y,
                              const char *what) {
  size_t P, lo[MAX_LAYERS * 2], hi[MAX_LAYERS * 2];
  double thr[MAX_LAYERS * 2];
  float *g = example_grad(layers, x, y, &P);
  const int np = pieces(layers, mode, S, C, lo, hi, thr);
  for (int p = 0; p < np; p++) {
    double s2 = 0;
    for (size_t k = lo[p]; k < hi[p]; k++) s2 += (double)g[k] * g[k];
    CHECK(sqrt(s2) > thr[p] * (1 + 1e-3), "%s %s on %d stages: precondition: piece %d of the large-gradient example has "
          "norm %g, not above its threshold %g", what, dpm_clipping_name(mode), S, p, sqrt(s2), thr[p]);
  }
  free(g);
}

static void drop_row(const float *x, const int32_t *y, int n, int k, float *x2, int32_t *y2) {
  memcpy(x2, x, sizeof(float) * (size_t)k * T);
  memcpy(x2 + (size_t)k * T, x + (size_t)(k + 1) * T, sizeof(float) * (size_t)(n - k - 1) * T);
  memcpy(y2, y, sizeof(int32_t) * (size_t)k * T);
  memcpy(y2 + (size_t)k * T, y + (size_t)(k + 1) * T, sizeof(int32_t) * (size_t)(n - k - 1) * T);
}

/* q = 1: remove examples BIG, 0 and 9 in turn. */
static void test_sensitivity(void) {
  static float X2[N * T];
  static int32_t Y2[N * T];
  const int ks[] = {BIG, 0, 9};
  gridspec grids[8];
  const int ng = grids_and_1x1(grids);
  for (int tied = 0; tied < 2; tied++) {
    const char *layers = tied ? TIED : UNTIED;
    for (int mode = 0; mode < 3; mode++)
      for (int gi = 0; gi < ng; gi++)
      for (int ci = 0; ci < 2; ci++) {
        const gridspec g = grids[gi];
        if (tied && g.S > 1) continue;
        /* ci = 0: C below BIG's smallest group norm (per-device pieces and the whole gradient are larger
           still; each threshold is <= C): nearly every example is clipped in every piece; ci = 1: 0.9 of the
           largest C at which BIG is clipped in every piece of this mode, where other examples are not */
        const double margin = clip_margin(layers, (dpm_clipping)mode, g.S, X + BIG * T, Y + BIG * T);
        const double C = ci ? 0.9 * margin : 0.5 * min_group_norm(layers, X + BIG * T, Y + BIG * T);
        if (ci) {
          int partly = 0; /* examples with a piece below its threshold */
          for (int i = 0; i < N; i++) partly += clip_margin(layers, (dpm_clipping)mode, g.S, X + i * T, Y + i * T) <= C;
          CHECK(partly > 0, "%s %dx%d %s: test too weak at C = %g: every example is clipped in every piece",
                tied ? "tied" : "untied", g.D, g.S, dpm_clipping_name(mode), C);
          if (rank == 0 && g.D * g.S == size)
            printf("%s %dx%d %s C = %.6g: %d of %d examples not clipped in every piece\n", tied ? "tied" : "untied",
                   g.D, g.S, dpm_clipping_name(mode), C, partly, N);
        }
        check_all_clipped(layers, (dpm_clipping)mode, g.S, C, X + BIG * T, Y + BIG * T, tied ? "tied" : "untied");
        MPI_Comm comm = g.D * g.S == 1 ? MPI_COMM_SELF : MPI_COMM_WORLD;
        job j = {layers, (dpm_clipping)mode, 0, 1.0, 0.0, C, X, Y, N, 0, DPM_NORM_AUTO};
        size_t P;
        float *full = run(comm, g, &j, &P);
        for (int a = 0; a < 3; a++) {
          drop_row(X, Y, N, ks[a], X2, Y2);
          job j2 = j;
          j2.x = X2, j2.y = Y2, j2.n = N - 1;
          float *less = run(comm, g, &j2, &P);
          const double move = dist(full, less, P);
          CHECK(move <= C * (1 + 1e-6), "%s %dx%d %s: removing example %d moved the sum by %.9g > C = %.9g",
                tied ? "tied" : "untied", g.D, g.S, dpm_clipping_name(mode), ks[a], move, C);
          if (ks[a] == BIG)
            CHECK(fabs(move / C - 1) <= 1e-5, "%s %dx%d %s: the large-gradient example moved the sum by %.9g, not C = %g",
                  tied ? "tied" : "untied", g.D, g.S, dpm_clipping_name(mode), move, C);
          free(less);
        }
        free(full);
      }
  }
}

/* The first step whose Poisson sample at rate q (the runs' sampling key) contains example k. */
static uint64_t step_sampling(int64_t k, double q) {
  const dpm_key sk = dpm_key_from_seed(2, DPM_STREAM_SAMPLE);
  int64_t one;
  for (uint64_t t = 0;; t++)
    if (dpm_sample_shard(&sk, t, q, k, k + 1, &one) == 1) return t;
}

/* Adversarial rows as the last example (index N - 1) at q = 0.6; row 0 is the large-gradient example,
 * for which the move is exactly C. */
enum { ADV_ROWS = 6 };
static void adversarial_row(int v, float *x, int32_t *y) {
  for (int t = 0; t < T; t++) {
    int32_t a, b;
    switch (v) {
      case 0: a = (int32_t)X[BIG * T + t], b = Y[BIG * T + t]; break; /* all pad but one target */
      case 1: a = 4, b = 4; break;                                     /* one token everywhere */
      case 2: a = 7, b = t == T - 1 ? 7 : PAD; break;                  /* one token, only the last target */
      case 3: a = t % 2 ? 2 : 9, b = t % 2 ? 9 : 2; break;             /* the whole context one repeated pair */
      case 4: a = V - 1, b = V - 2; break;                             /* the largest ids (PAD as input) */
      default: a = 0, b = t == 0 ? 0 : PAD; break;                     /* id 0, only the first target */
    }
    x[t] = (float)a, y[t] = b;
  }
}

static void test_adversarial_rows(void) {
  static float XA[N * T];
  static int32_t YA[N * T];
  memcpy(XA, X, sizeof XA);
  memcpy(YA, Y, sizeof YA);
  const double q = 0.6;
  const uint64_t t0 = step_sampling(N - 1, q);
  gridspec grids[8];
  const int ng = grids_and_1x1(grids);
  double worst = 0;
  for (int tied = 0; tied < 2; tied++) {
    const char *layers = tied ? TIED : UNTIED;
    const double C = 0.5 * min_group_norm(layers, X + BIG * T, Y + BIG * T);
    for (int nm = 0; nm < 2; nm++) {
      const dpm_norm_method norm = nm ? DPM_NORM_EXPLICIT : DPM_NORM_GHOST;
      for (int mode = 0; mode < 3; mode++)
        for (int gi = 0; gi < ng; gi++) {
          const gridspec g = grids[gi];
          if (tied && g.S > 1) continue;
          MPI_Comm comm = g.D * g.S == 1 ? MPI_COMM_SELF : MPI_COMM_WORLD;
          job j = {layers, (dpm_clipping)mode, 0, q, 0.0, C, XA, YA, N - 1, t0, norm};
          size_t P, lo[MAX_LAYERS * 2], hi[MAX_LAYERS * 2];
          double thr[MAX_LAYERS * 2];
          const int np = pieces(layers, (dpm_clipping)mode, g.S, C, lo, hi, thr);
          float *less = run(comm, g, &j, &P);
          for (int v = 0; v < ADV_ROWS; v++) {
            adversarial_row(v, XA + (size_t)(N - 1) * T, YA + (size_t)(N - 1) * T);
            if (v == 0) check_all_clipped(layers, (dpm_clipping)mode, g.S, C, XA + (N - 1) * T, YA + (N - 1) * T, "adv");
            j.n = N;
            float *full = run(comm, g, &j, &P);
            int finite = 1;
            for (size_t k = 0; k < P; k++) finite &= isfinite(full[k]) && isfinite(less[k]);
            const double move = dist(full, less, P);
            CHECK(finite, "%s %s %dx%d row %d: the pre-noise sum holds Inf or NaN", tied ? "tied" : "untied",
                  dpm_clipping_name(mode), g.D, g.S, v);
            CHECK(move <= C * (1 + 1e-6), "%s (norms %d) %s %dx%d row %d: moved the sum by %.9g > C = %g",
                  tied ? "tied" : "untied", norm, dpm_clipping_name(mode), g.D, g.S, v, move, C);
            CHECK(move > 0, "%s %s %dx%d row %d: the example was not in the step's sample", tied ? "tied" : "untied",
                  dpm_clipping_name(mode), g.D, g.S, v);
            if (v == 0)
              CHECK(fabs(move / C - 1) <= 1e-5, "%s (norms %d) %s %dx%d q = %g: the large-gradient example moved the sum "
                    "by %.9g, not C = %g", tied ? "tied" : "untied", norm, dpm_clipping_name(mode), g.D, g.S, q, move, C);
            worst = fmax(worst, move / C);
            for (int p = 0; p < np && mode != DPM_CLIP_FLAT; p++) {
              const double mp = dist(full + lo[p], less + lo[p], hi[p] - lo[p]);
              CHECK(mp <= thr[p] * (1 + 1e-6), "%s %s %dx%d row %d: piece %d moved by %.9g > its threshold %g",
                    tied ? "tied" : "untied", dpm_clipping_name(mode), g.D, g.S, v, p, mp, thr[p]);
            }
            free(full);
          }
          free(less);
        }
    }
  }
  if (rank == 0) printf("adversarial rows: largest move %.9f C\n", worst);
}

/* 5 noisy DP-SGD steps at q = 0.5: per-device D x S against 1 x S (on groups of S ranks), flat and
 * per-layer against 1 x 1, within 1e-5 relative. */
static void test_grid_invariance(void) {
  gridspec grids[8];
  const int ng = grids_and_1x1(grids);
  for (int mode = 0; mode < 3; mode++)
    for (int gi = 0; gi < ng; gi++) {
      const gridspec g = grids[gi];
      if (g.D * g.S == 1) continue;
      const char *layers = g.S > 1 ? UNTIED : TIED;
      job j = {layers, (dpm_clipping)mode, 5, 0.5, 1.1, 0.05, X, Y, N, 0, DPM_NORM_AUTO};
      size_t P;
      float *ref;
      if (mode == DPM_CLIP_PER_DEVICE) {
        MPI_Comm sub;
        MPI_Comm_split(MPI_COMM_WORLD, rank / g.S, rank, &sub);
        ref = run(sub, (gridspec){1, g.S}, &j, &P);
        MPI_Comm_free(&sub);
      } else {
        ref = run(MPI_COMM_SELF, (gridspec){1, 1}, &j, &P);
      }
      float *got = run(MPI_COMM_WORLD, g, &j, &P);
      double n2 = 0;
      for (size_t k = 0; k < P; k++) n2 += (double)ref[k] * ref[k];
      const double rd = dist(ref, got, P) / sqrt(n2);
      CHECK(rd <= 1e-5, "%dx%d %s: parameters after 5 steps differ from %s by %g relative", g.D, g.S,
            dpm_clipping_name(mode), mode == DPM_CLIP_PER_DEVICE ? "1 x S" : "1 x 1", rd);
      free(ref);
      free(got);
    }
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  make_data();
  test_sensitivity();
  test_adversarial_rows();
  test_grid_invariance();
  return dpm_test_finish();
}
