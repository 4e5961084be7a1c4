/* Adaptive clipping thresholds (privacy.adaptive; dpmpi/privacy/dpsgd.h, docs/accountant.md) through dpm_step on
 * every grid the world size allows (1x1; 2x1, 1x2; 3x1, 1x3; 4x1, 2x2, 1x4), against references computed here:
 * - counts: one step at q = 1 (and at q = 0.6, normalized by q N = 22.2, not the realized batch) without noise
 *   releases, per threshold, sum_i (1[||g_ik|| <= C_k] - 1/2) with the
 *   norms of each example's gradient computed alone (flat: the whole model; per-layer: each group; per-device:
 *   each stage's piece), and the thresholds then move by exp(-eta (b / qN + 1/2 - gamma)); removing one example
 *   changes every count by exactly 1/2 (sensitivity sqrt(K)/2);
 * - noise: with nothing sampled the released counts are pure noise of variance sigma_b^2 and the gradient of
 *   variance (sigma_g sqrt(sum C_k^2))^2 per coordinate, sigma_g = sigma / sqrt(1 - f), sigma_b =
 *   sqrt(K) sigma / (2 sqrt f), the same draws as 1x1 (a count noised on every rank would show D times the
 *   variance);
 * - grid invariance: 30 noisy steps with SGD end with the 1x1 run's thresholds (1e-9 relative) and parameters
 *   (1e-5), per-device against 1xS. */
// ctest: np=1,2,3,4
// ctest: timeout=300
#include <stdlib.h>
#include <string.h>

#include "dpmpi/optim/sgd.h"
#include "dpmpi/parallel/grid.h"
#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/train/step.h"
#include "testing.h"

enum { N = 37, C_IN = 1, H_IN = 6, W_IN = 6, D_IN = C_IN * H_IN * W_IN, K = 3, MAX_LAYERS = 16, MAX_THR = 16 };
static const char *LAYERS =
    "conv out=2 kernel=3 stride=1 pad=1; tanh; maxpool kernel=2; flatten; dense out=5; relu; dense out=3";
static float X[N * D_IN];
static int32_t Y[N];
static int rank, size;

typedef struct {
  int D, S;
} gridspec;

typedef struct {
  dpm_clipping mode;
  int steps;            /* SGD after each (0: one step, no update) */
  double q, sigma, clip, fraction, eta;
  const float *x;
  const int32_t *y;
  int64_t n;
  const double *thr0;   /* initial thresholds (NULL: the step's, from clip) */
} job;

typedef struct {
  float *params;        /* the whole model's, gathered */
  size_t P;
  int n_thr;
  double thr[MAX_THR];  /* after the last step */
  double thr_before[MAX_THR];
  double counts[MAX_THR]; /* the last step's released counts */
  double grad_sigma, count_sigma;
  double *count_hist;   /* every step's counts (steps x n_thr), and ... */
  float *grad_hist;     /* ... every step's gathered gradient (steps x P), if asked */
} result;

static void make_data(void) {
  dpm_key key = dpm_key_from_seed(77, 0);
  for (int k = 0; k < N * D_IN; k++) X[k] = (float)dpm_gauss_at(&key, 0, 1, (uint64_t)k);
  for (int i = 0; i < N; i++) Y[i] = i % K;
  for (int k = 0; k < D_IN; k++) X[5 * D_IN + k] *= 50;
}

static dpm_model *full_model(dpm_layer_spec **specs, int *n) {
  char err[DPM_ERRLEN];
  if (dpm_model_parse(LAYERS, specs, n, err)) dpm_fatal("%s", err);
  dpm_model *m = dpm_model_create(*specs, *n, C_IN, H_IN, W_IN, K, 1, err);
  if (!m) dpm_fatal("%s", err);
  return m;
}

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

/* Job j on grid g over comm (balanced split); with hist, every step's counts and gradients are kept. */
static result run(MPI_Comm comm, gridspec g, const job *j, int hist) {
  char err[DPM_ERRLEN];
  dpm_grid grid;
  if (dpm_grid_create(comm, g.D, g.S, &grid, err)) dpm_fatal("%s", err);
  dpm_layer_spec *specs;
  int n, first[MAX_LAYERS + 1];
  dpm_model *full = full_model(&specs, &n);
  if (dpm_grid_split_layers(full, n, g.S, NULL, first, err)) dpm_fatal("%s", err);
  dpm_model *m = dpm_grid_stage_model(full, specs, first, grid.stage, g.S, C_IN, H_IN, W_IN, K, 4, err);
  if (!m) dpm_fatal("%s", err);
  result r = {.P = dpm_model_num_params(full)};
  dpm_model_free(full);
  dpm_free(specs);
  dpm_key ik = dpm_key_from_seed(1, DPM_STREAM_INIT);
  dpm_model_init_params(m, &ik);
  int64_t b = j->n * grid.replica / g.D, e = j->n * (grid.replica + 1) / g.D;
  dpm_dataset d = {.n_total = j->n, .begin = b, .end = e, .C = C_IN, .H = H_IN, .W = W_IN, .num_classes = K,
                   .x = (float *)j->x + b * D_IN, .y = (int32_t *)j->y + b};
  dpm_step st = {.comm = grid.dp, .pipe = grid.pipe, .model = m, .data = &d, .q = j->q, .dp = 1, .clip = j->clip,
                 .sigma = j->sigma, .clipping = j->mode, .device_split = DPM_SPLIT_PARAMS, .physical_batch = 4,
                 .sample_key = dpm_key_from_seed(2, DPM_STREAM_SAMPLE), .noise_key = dpm_key_from_seed(2, DPM_STREAM_NOISE),
                 .adaptive = 1, .target_quantile = 0.5, .adaptive_lr = j->eta, .count_fraction = j->fraction};
  dpm_step_init(&st);
  DPM_ASSERT(st.n_thr <= MAX_THR);
  r.n_thr = st.n_thr, r.grad_sigma = st.grad_sigma, r.count_sigma = st.count_sigma;
  if (j->thr0) memcpy(st.thr, j->thr0, sizeof(double) * (size_t)st.n_thr);
  const size_t Ps = dpm_model_num_params(m);
  dpm_sgd opt;
  dpm_sgd_init(&opt, Ps, 0.9, 0);
  dpm_step_stats stats;
  const int steps = j->steps ? j->steps : 1;
  if (hist) {
    r.count_hist = malloc(sizeof(double) * (size_t)steps * (size_t)st.n_thr);
    r.grad_hist = malloc(sizeof(float) * (size_t)steps * r.P);
  }
  for (int t = 0; t < steps; t++) {
    memcpy(r.thr_before, st.thr, sizeof(double) * (size_t)st.n_thr);
    dpm_step_run(&st, (uint64_t)t, &stats);
    if (hist) {
      memcpy(r.count_hist + (size_t)t * st.n_thr, st.counts_released, sizeof(double) * (size_t)st.n_thr);
      float *gr = gather(&grid, dpm_model_grads(m), Ps, r.P);
      memcpy(r.grad_hist + (size_t)t * r.P, gr, sizeof(float) * r.P);
      free(gr);
    }
    if (j->steps) dpm_sgd_step(&opt, dpm_model_params(m), dpm_model_grads(m), 1.0 / (j->q * (double)j->n), 0.5);
  }
  memcpy(r.thr, st.thr, sizeof(double) * (size_t)st.n_thr);
  memcpy(r.counts, st.counts_released, sizeof(double) * (size_t)st.n_thr);
  r.params = gather(&grid, dpm_model_params(m), Ps, r.P);
  dpm_sgd_free(&opt);
  dpm_step_free(&st);
  dpm_model_free(m);
  dpm_grid_free(&grid);
  return r;
}

static void result_free(result *r) {
  free(r->params);
  free(r->count_hist);
  free(r->grad_hist);
}

static int world_grids(gridspec *out) {
  int n = 0;
  for (int S = 1; S <= size && S <= 4; S++)
    if (size % S == 0) out[n++] = (gridspec){size / S, S};
  return n;
}

/* The parameter ranges of the thresholds of `mode` on S stages: [lo[k], hi[k]) for threshold k (groups are
 * contiguous in the slab). Returns their number. */
static int threshold_ranges(dpm_clipping mode, int S, size_t *lo, size_t *hi) {
  dpm_layer_spec *specs;
  int n, first[MAX_LAYERS + 1];
  char err[DPM_ERRLEN];
  dpm_model *m = full_model(&specs, &n);
  dpm_free(specs);
  const size_t P = dpm_model_num_params(m);
  int nk = 0;
  if (mode == DPM_CLIP_FLAT) {
    lo[0] = 0, hi[0] = P, nk = 1;
  } else if (mode == DPM_CLIP_PER_LAYER) {
    for (int g = 0; g < dpm_model_num_groups(m); g++, nk++)
      lo[g] = dpm_model_group_offset(m, g), hi[g] = lo[g] + dpm_model_group_size(m, g);
  } else {
    if (dpm_grid_split_layers(m, n, S, NULL, first, err)) dpm_fatal("%s", err);
    size_t off = 0;
    for (int s = 0; s < S; s++, nk++) {
      lo[s] = off;
      for (int i = first[s]; i < first[s + 1]; i++) {
        dpm_layer_info info;
        dpm_model_layer_info(m, i, &info);
        off += info.params;
      }
      hi[s] = off;
    }
  }
  dpm_model_free(m);
  return nk;
}

/* norms[k * n + i]: example i's gradient norm on threshold k's range, each gradient computed alone. */
static void brute_norms(const float *x, const int32_t *y, int64_t n, int nk, const size_t *lo, const size_t *hi,
                        double *norms) {
  dpm_layer_spec *specs;
  int nl;
  dpm_model *m = full_model(&specs, &nl);
  dpm_free(specs);
  dpm_key ik = dpm_key_from_seed(1, DPM_STREAM_INIT);
  dpm_model_init_params(m, &ik);
  for (int64_t i = 0; i < n; i++) {
    dpm_model_zero_grads(m);
    dpm_model_forward(m, x + i * D_IN, y + i, 1, NULL);
    dpm_model_backward(m, NULL);
    dpm_model_accumulate(m, NULL);
    const float *g = dpm_model_grads(m);
    for (int k = 0; k < nk; k++) {
      double s2 = 0;
      for (size_t p = lo[k]; p < hi[k]; p++) s2 += (double)g[p] * g[p];
      norms[(size_t)k * n + i] = sqrt(s2);
    }
  }
  dpm_model_free(m);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void test_counts(void) {
  gridspec grids[4];
  const int ng = world_grids(grids);
  static float X2[N * D_IN];
  static int32_t Y2[N];
  static double norms[MAX_THR * N], sorted[N];
  size_t lo[MAX_THR], hi[MAX_THR];
  for (int mode = 0; mode < 3; mode++)
    for (int gi = 0; gi < ng; gi++) {
      const gridspec g = grids[gi];
      const int nk = threshold_ranges((dpm_clipping)mode, g.S, lo, hi);
      brute_norms(X, Y, N, nk, lo, hi, norms);
      /* each threshold halfway (geometrically) between two of its norms near the median: no ties */
      double thr0[MAX_THR];
      for (int k = 0; k < nk; k++) {
        memcpy(sorted, norms + (size_t)k * N, sizeof sorted);
        qsort(sorted, N, sizeof(double), cmp_double);
        int a = N / 2 + k % 3 - 1;
        while (a + 1 < N && !(sorted[a + 1] > sorted[a] * (1 + 1e-4))) a++;
        thr0[k] = sqrt(sorted[a] * sorted[a + 1]);
      }
      /* q = 0.6: step 0's Poisson sample (drawn here from the sampling stream), normalized by q N = 22.2 */
      static int64_t sel[N];
      const dpm_key sk = dpm_key_from_seed(2, DPM_STREAM_SAMPLE);
      const int64_t nsel = dpm_sample_shard(&sk, 0, 0.6, 0, N, sel);
      job js = {(dpm_clipping)mode, 0, 0.6, 0.0, 1.0, 0.2, 0.3, X, Y, N, thr0};
      result rs = run(MPI_COMM_WORLD, g, &js, 0);
      for (int k = 0; k < nk && k < rs.n_thr; k++) {
        double want = 0;
        for (int64_t a = 0; a < nsel; a++) want += norms[(size_t)k * N + sel[a]] <= thr0[k] ? 0.5 : -0.5;
        CHECK(rs.counts[k] == want, "%dx%d %s q = 0.6 threshold %d: centred count %g, brute force %g", g.D, g.S,
              dpm_clipping_name(mode), k, rs.counts[k], want);
        CHECK_CLOSE(rs.thr[k], thr0[k] * exp(-0.3 * (want / (0.6 * N) + 0.5 - 0.5)), 1e-14, 0,
                    "threshold update normalized by the expected batch q N");
      }
      result_free(&rs);
      job j = {(dpm_clipping)mode, 0, 1.0, 0.0, 1.0, 0.2, 0.3, X, Y, N, thr0};
      result r = run(MPI_COMM_WORLD, g, &j, 0);
      CHECK(r.n_thr == nk, "%dx%d %s: %d thresholds, expected %d", g.D, g.S, dpm_clipping_name(mode), r.n_thr, nk);
      for (int k = 0; k < nk && k < r.n_thr; k++) {
        double want = 0;
        for (int i = 0; i < N; i++) want += norms[(size_t)k * N + i] <= thr0[k] ? 0.5 : -0.5;
        CHECK(r.counts[k] == want, "%dx%d %s threshold %d: centred count %g, brute force %g", g.D, g.S,
              dpm_clipping_name(mode), k, r.counts[k], want);
        CHECK_CLOSE(r.thr[k], thr0[k] * exp(-0.3 * (want / (1.0 * N) + 0.5 - 0.5)), 1e-14, 0, "threshold update");
      }
      /* neighbouring datasets: every count moves by exactly 1/2, the vector by sqrt(K)/2 */
      const int drop[3] = {5, 0, 20};
      for (int di = 0; di < 3; di++) {
        dpm_test_drop_example(X, Y, N, D_IN, drop[di], X2, Y2);
        job j2 = j;
        j2.x = X2, j2.y = Y2, j2.n = N - 1;
        result r2 = run(MPI_COMM_WORLD, g, &j2, 0);
        double d2 = 0;
        for (int k = 0; k < nk; k++) {
          const double dk = r.counts[k] - r2.counts[k];
          CHECK(fabs(dk) == 0.5, "%dx%d %s: dropping example %d moves count %d by %g, not 1/2", g.D, g.S,
                dpm_clipping_name(mode), drop[di], k, dk);
          d2 += dk * dk;
        }
        CHECK_CLOSE(sqrt(d2), sqrt((double)nk) / 2, 1e-15, 0, "count sensitivity sqrt(K)/2");
        result_free(&r2);
      }
      result_free(&r);
    }
}

static void test_noise(void) {
  gridspec grids[4];
  const int ng = world_grids(grids);
  enum { T = 300 };
  for (int mode = 0; mode < 3; mode++) {
    /* nothing sampled (q tiny), thresholds (almost) still: the releases are pure noise */
    job j = {(dpm_clipping)mode, T, 1e-12, 1.3, 0.8, 0.25, 1e-22, X, Y, N, NULL};
    result ref = run(MPI_COMM_SELF, (gridspec){1, 1}, &j, 1);
    for (int gi = 0; gi < ng; gi++) {
      const gridspec g = grids[gi];
      if (mode == DPM_CLIP_PER_DEVICE && g.S > 1) continue; /* its thresholds are per stage: 1x1 has one */
      result r = run(MPI_COMM_WORLD, g, &j, 1);
      const int nk = r.n_thr;
      const double sb = sqrt((double)nk) * 1.3 / (2 * sqrt(0.25)), sg = 1.3 / sqrt(0.75);
      CHECK_CLOSE(r.count_sigma, sb, 1e-14, 0, "count noise std sqrt(K) sigma / (2 sqrt f)");
      CHECK_CLOSE(r.grad_sigma, sg, 1e-14, 0, "gradient noise multiplier sigma / sqrt(1 - f)");
      double s2 = 0, c2 = 0;
      for (int k = 0; k < T * nk; k++) s2 += r.count_hist[k] * r.count_hist[k];
      const double var = s2 / (T * nk);
      CHECK(fabs(var / (sb * sb) - 1) < 5 * sqrt(2.0 / (T * nk)), "%dx%d %s: count noise variance %g, expected %g",
            g.D, g.S, dpm_clipping_name(mode), var, sb * sb);
      for (int k = 0; k < nk; k++) c2 += r.thr_before[k] * r.thr_before[k];
      const double gstd = sg * sqrt(c2);
      double v = 0;
      const size_t M = (size_t)T * r.P;
      for (size_t k = 0; k < M; k++) v += (double)r.grad_hist[k] * r.grad_hist[k];
      v /= (double)M;
      CHECK(fabs(v / (gstd * gstd) - 1) < 5 * sqrt(2.0 / (double)M), "%dx%d %s: gradient noise variance %g, expected %g",
            g.D, g.S, dpm_clipping_name(mode), v, gstd * gstd);
      CHECK(memcmp(r.count_hist, ref.count_hist, sizeof(double) * (size_t)T * nk) == 0, "%dx%d %s: the count noise "
            "is not the 1x1 draws", g.D, g.S, dpm_clipping_name(mode));
      result_free(&r);
    }
    result_free(&ref);
  }
}

static void test_grid_invariance(void) {
  gridspec grids[4];
  const int ng = world_grids(grids);
  for (int mode = 0; mode < 3; mode++) {
    job j = {(dpm_clipping)mode, 30, 0.3, 1.1, 0.5, 0.05, 0.2, X, Y, N, NULL};
    for (int gi = 0; gi < ng; gi++) {
      const gridspec g = grids[gi];
      result ref;
      if (mode == DPM_CLIP_PER_DEVICE) {
        MPI_Comm sub;
        MPI_Comm_split(MPI_COMM_WORLD, rank / g.S, rank, &sub);
        ref = run(sub, (gridspec){1, g.S}, &j, 0);
        MPI_Comm_free(&sub);
      } else {
        ref = run(MPI_COMM_SELF, (gridspec){1, 1}, &j, 0);
      }
      result r = run(MPI_COMM_WORLD, g, &j, 0);
      double worst = 0, moved = 0;
      for (int k = 0; k < r.n_thr; k++) {
        worst = fmax(worst, fabs(r.thr[k] - ref.thr[k]) / ref.thr[k]);
        moved = fmax(moved, fabs(log(r.thr[k] / (mode == DPM_CLIP_PER_LAYER ? 0.5 / sqrt(3.0) : r.thr[k]))));
      }
      CHECK(r.n_thr == ref.n_thr && worst <= 1e-9, "%dx%d %s: thresholds after 30 steps differ from the reference by %g "
            "relative", g.D, g.S, dpm_clipping_name(mode), worst);
      if (mode == DPM_CLIP_PER_LAYER) CHECK(moved > 0.05, "per-layer thresholds did not move (%g)", moved);
      double d = 0, nn = 0;
      for (size_t k = 0; k < r.P; k++)
        d += ((double)r.params[k] - ref.params[k]) * ((double)r.params[k] - ref.params[k]), nn += (double)ref.params[k] * ref.params[k];
      CHECK(sqrt(d / nn) <= 1e-5, "%dx%d %s adaptive: parameters differ from the reference by %g relative", g.D, g.S,
            dpm_clipping_name(mode), sqrt(d / nn));
      result_free(&r);
      result_free(&ref);
    }
  }
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  make_data();
  test_counts();
  test_noise();
  test_grid_invariance();
  return dpm_test_finish();
}
