/* DP-PCA (src/parallel/pca.c): the BLACS grid shape; the clipped X^T X reduced over the ranks against a brute-force
 * sum; row clipping; the sensitivity of the release (drop one row: upper triangle moves <= C^2); the
 * Analyze-Gauss noise (symmetric, entry variance sigma^2 C^4 by a statistical test, added once whatever
 * the rank count); ScaLAPACK's eigenvectors (pdsyevr and pdsyevd, several block sizes) against LAPACK's
 * dsyevd on the same noisy matrix; the fitted projection on 1 rank against 2, 3 and 4 ranks; projection;
 * the privacy parameters (calibration, the Gaussian release against the analytic Gaussian mechanism of
 * Balle & Wang 2018, calibration of training after the PCA release); the job-file keys and their errors.
 * Every rank runs every check (with its own view); rank 0 holds the reference results. */
// ctest: np=1,2,4
#include <float.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dpmpi/privacy/accountant.h"
#include "dpmpi/io/config.h"
#include "dpmpi/parallel/pca.h"
#include "dpmpi/core/rng.h"
#include "parallel/scalapack.h"
#include "testing.h"

static int rank_, size_;

/* Row i of a test dataset (d features): coordinate j is N(0, s_j^2) with s_j = 3 * 0.85^j (a spread
 * spectrum), every 7th row scaled by 10 so that clipping matters. Deterministic in (i, j). */
static void make_rows(float *x, int64_t i0, int64_t n, int d, uint64_t seed) {
  dpm_key key = dpm_key_from_seed(seed, 77);
  for (int64_t r = 0; r < n; r++) {
    int64_t i = i0 + r;
    double scale = i % 7 == 3 ? 10.0 : 1.0;
    for (int j = 0; j < d; j++)
      x[r * d + j] = (float)(scale * 3.0 * pow(0.85, j) * dpm_gauss_at(&key, (uint64_t)i, 0, (uint64_t)j));
  }
}

/* Brute force: upper triangle of sum_i c_i^2 x_i x_i^T in long double, c_i = min(1, C / ||x_i||). */
static void brute_gram(const float *x, int64_t n, int d, double C, long double *G) {
  memset(G, 0, sizeof(long double) * (size_t)d * d);
  for (int64_t i = 0; i < n; i++) {
    long double s = 0;
    for (int j = 0; j < d; j++) s += (long double)x[i * d + j] * x[i * d + j];
    long double c = C > 0 && s > (long double)C * C ? (long double)C / sqrtl(s) : 1.0L;
    for (int a = 0; a < d; a++)
      for (int b = a; b < d; b++) G[(size_t)a * d + b] += c * c * x[i * d + a] * x[i * d + b];
  }
}

static void shard(int64_t N, MPI_Comm comm, int64_t *b, int64_t *e) {
  int r, p;
  MPI_Comm_rank(comm, &r);
  MPI_Comm_size(comm, &p);
  *b = N * r / p;
  *e = N * (r + 1) / p;
}

static void test_grid_shape(void) {
  for (int s = 1; s <= 64; s++) {
    int pr, pc, best = 1;
    dpm_pca_grid_shape(s, &pr, &pc);
    for (int r = 1; r <= s; r++)
      if (s % r == 0 && r <= s / r) best = r;
    CHECK(pr * pc == s && pr == best && pr <= pc, "grid for %d: %dx%d, expected %dx%d", s, pr, pc, best, s / best);
  }
}

/* X^T X over the shards, reduced on rank 0, equals the brute-force sum over all rows (clipped and not);
 * also with ranks holding no rows. Tolerance: 1e-13 x (sum of the clipped squared norms), double
 * accumulation of at most N terms of that size against a long double reference. */
static void test_gram_reduce(void) {
  const int d = 37;
  const double C = 2.0;
  for (int t = 0; t < 3; t++) {
    const int64_t N = t == 2 ? 2 : 1000; /* N = 2: ranks 2 and 3 hold nothing */
    const double clip = t == 1 ? 0.0 : C;
    float *x = dpm_malloc(sizeof(float) * (size_t)N * d);
    make_rows(x, 0, N, d, 1);
    int64_t b, e;
    shard(N, MPI_COMM_WORLD, &b, &e);
    double *A = dpm_malloc(sizeof(double) * d * d);
    dpm_pca_params p = {.components = 1, .clip = clip, .sigma = 0};
    dpm_pca_stats st;
    dpm_pca_noisy_gram(MPI_COMM_WORLD, x + b * d, e - b, d, &p, NULL, rank_ == 0 ? A : NULL, &st);
    if (rank_ == 0) {
      long double *G = dpm_malloc(sizeof(long double) * d * d);
      brute_gram(x, N, d, clip, G);
      long double tr = 0;
      for (int a = 0; a < d; a++) tr += G[(size_t)a * d + a];
      double worst = 0;
      int sym = 1;
      for (int a = 0; a < d; a++)
        for (int c = a; c < d; c++) {
          double diff = fabs(A[(size_t)a * d + c] - (double)G[(size_t)a * d + c]);
          if (diff > worst) worst = diff;
          sym &= A[(size_t)a * d + c] == A[(size_t)c * d + a];
        }
      CHECK(worst <= 1e-13 * (double)tr, "gram (N %lld, clip %g): worst |A - brute| %g > 1e-13 x trace %g",
            (long long)N, clip, worst, (double)tr);
      CHECK(sym, "gram (N %lld): not exactly symmetric", (long long)N);
      if (clip > 0) CHECK((double)tr <= N * C * C * (1 + 1e-12), "trace %g above N C^2", (double)tr);
      dpm_free(G);
    }
    dpm_free(A);
    dpm_free(x);
  }
}

/* Clipping: a row above the norm is scaled to norm C (never above, direction kept); a row below is kept
 * exactly (products of floats are exact in double). */
static void test_clipping(void) {
  const int d = 11;
  const double C = 1.5;
  float x[11];
  double G[121];
  dpm_key key = dpm_key_from_seed(9, 1);
  int above = 0, exact_below = 1, dir_kept = 1;
  double worst_low = 0;
  for (int trial = 0; trial < 400; trial++) {
    double scale = pow(10.0, -1.5 + 3.5 * trial / 400.0); /* norms from ~0.1 C to ~300 C */
    double s = 0;
    for (int j = 0; j < d; j++) x[j] = (float)(scale * dpm_gauss_at(&key, (uint64_t)trial, 0, (uint64_t)j)), s += (double)x[j] * x[j];
    memset(G, 0, sizeof G);
    dpm_pca_gram(x, 1, d, C, G);
    double tr = 0;
    for (int j = 0; j < d; j++) tr += G[j * d + j];
    if (tr > C * C) above++;
    if (s <= C * C) {
      for (int a = 0; a < d; a++)
        for (int b = a; b < d; b++) exact_below &= G[a * d + b] == (double)x[a] * (double)x[b];
    } else {
      double low = 1 - tr / (C * C);
      if (low > worst_low) worst_low = low;
      /* direction: G = c^2 x x^T, so G_ab x_0^2 = G_00 x_a x_b */
      for (int a = 0; a < d; a++)
        for (int b = a; b < d; b++) {
          double lhs = G[a * d + b] * (double)x[0] * x[0], rhs = G[0] * (double)x[a] * x[b];
          if (fabs(lhs - rhs) > 1e-12 * fabs(G[0]) * s) dir_kept = 0;
        }
    }
  }
  CHECK(above == 0, "%d clipped rows have a squared norm above C^2", above);
  CHECK(worst_low < 1e-12, "clipped rows fall short of norm C by %g (relative squared norm)", worst_low);
  CHECK(exact_below, "rows below the clip norm were changed");
  CHECK(dir_kept, "clipping changed a row's direction");
}

/* Sensitivity: dropping any one row moves the upper triangle of the (noise-free) release by at most C^2 in
 * L2 norm, on any rank count (add/remove adjacency; the Gaussian mechanism's calibration rests on it). */
static void test_sensitivity(void) {
  const int d = 9, N = 60;
  const double C = 1.0;
  float *x = dpm_malloc(sizeof(float) * N * d), *x2 = dpm_malloc(sizeof(float) * N * d);
  int32_t *y = dpm_calloc(N, sizeof(int32_t)), *y2 = dpm_calloc(N, sizeof(int32_t));
  make_rows(x, 0, N, d, 5);
  double *A = dpm_malloc(sizeof(double) * d * d), *B = dpm_malloc(sizeof(double) * d * d), worst = 0;
  dpm_pca_params p = {.components = 1, .clip = C, .sigma = 0};
  int64_t b, e;
  shard(N, MPI_COMM_WORLD, &b, &e);
  dpm_pca_noisy_gram(MPI_COMM_WORLD, x + b * d, e - b, d, &p, NULL, A, NULL);
  for (int k = 0; k < N; k += 1) {
    dpm_test_drop_example(x, y, N, d, k, x2, y2);
    shard(N - 1, MPI_COMM_WORLD, &b, &e);
    dpm_pca_noisy_gram(MPI_COMM_WORLD, x2 + b * d, e - b, d, &p, NULL, B, NULL);
    double s = 0;
    for (int a = 0; a < d; a++)
      for (int c = a; c < d; c++) s += (A[a * d + c] - B[a * d + c]) * (A[a * d + c] - B[a * d + c]);
    if (sqrt(s) > worst) worst = sqrt(s);
  }
  if (rank_ == 0) {
    CHECK(worst <= C * C * (1 + 1e-9), "dropping a row moved the upper triangle by %.12g > C^2 = %g", worst, C * C);
    CHECK(worst >= 0.5 * C * C, "sensitivity test too weak: largest change %g", worst);
  }
  dpm_free(x), dpm_free(x2), dpm_free(y), dpm_free(y2), dpm_free(A), dpm_free(B);
}

/* The noise: exactly symmetric; upper-triangle entries N(0, s^2) with s = sigma C^2. With m = 20100
 * entries the sample variance over s^2 has standard deviation sqrt(2/(m-1)) = 0.00998 and the mean over
 * s/sqrt(m) is standard normal: each check allows 5 standard deviations (false-failure rate < 6e-7
 * each). Then: the noisy release on any rank count minus the noise-free one is that same noise matrix
 * (noise once, on the root, from the key alone). */
static void test_noise(void) {
  const int d = 200;
  const double sigma = 1.7, C = 1.3, s = sigma * C * C;
  dpm_key key = dpm_key_from_seed(2024, DPM_STREAM_PCA);
  double *Z = dpm_calloc((size_t)d * d, sizeof(double));
  dpm_pca_add_noise(Z, d, s, &key);
  int sym = 1;
  double sum = 0, sum2 = 0, dsum2 = 0;
  const double m = (double)d * (d + 1) / 2;
  for (int a = 0; a < d; a++)
    for (int b = a; b < d; b++) {
      double z = Z[(size_t)a * d + b];
      sym &= z == Z[(size_t)b * d + a];
      sum += z, sum2 += z * z;
      if (a == b) dsum2 += z * z;
    }
  double mean = sum / m, var = (sum2 - m * mean * mean) / (m - 1);
  CHECK(sym, "noise matrix not exactly symmetric");
  CHECK(fabs(var / (s * s) - 1) < 5 * sqrt(2 / (m - 1)), "noise variance %g, expected %g (5 sd = %g relative)", var,
        s * s, 5 * sqrt(2 / (m - 1)));
  CHECK(fabs(mean) < 5 * s / sqrt(m), "noise mean %g, 5 sd = %g", mean, 5 * s / sqrt(m));
  /* the diagonal too: 200 entries, 5 sd of the variance ratio = 0.50 (its mean is 0) */
  CHECK(fabs(dsum2 / d / (s * s) - 1) < 5 * sqrt(2.0 / d), "diagonal noise variance %g, expected %g", dsum2 / d, s * s);

  /* noise once, whatever the rank count: released - clean == Z (to the rounding of the sum) */
  const int dd = 24, N = 300;
  float *x = dpm_malloc(sizeof(float) * N * dd);
  make_rows(x, 0, N, dd, 3);
  int64_t b, e;
  shard(N, MPI_COMM_WORLD, &b, &e);
  double *A = dpm_malloc(sizeof(double) * dd * dd), *A0 = dpm_malloc(sizeof(double) * dd * dd);
  double *Zs = dpm_calloc((size_t)dd * dd, sizeof(double));
  dpm_pca_params p = {.components = 1, .clip = C, .sigma = sigma}, p0 = {.components = 1, .clip = C, .sigma = 0};
  dpm_pca_noisy_gram(MPI_COMM_WORLD, x + b * dd, e - b, dd, &p, rank_ == 0 ? &key : NULL, A, NULL);
  dpm_pca_noisy_gram(MPI_COMM_WORLD, x + b * dd, e - b, dd, &p0, NULL, A0, NULL);
  dpm_pca_add_noise(Zs, dd, s, &key);
  if (rank_ == 0) {
    double worst = 0, big = 0;
    for (int i = 0; i < dd * dd; i++) {
      worst = fmax(worst, fabs((A[i] - A0[i]) - Zs[i]));
      big = fmax(big, fabs(A0[i]));
    }
    CHECK(worst <= 1e-13 * big, "released - clean differs from one noise draw by %g (scale %g)", worst, big);
  }
  dpm_free(x), dpm_free(A), dpm_free(A0), dpm_free(Zs), dpm_free(Z);
}

/* ScaLAPACK (dpm_pca_eig on comm) against LAPACK dsyevd on rank 0, same matrix. Tolerances, with
 * ||A|| = max |eigenvalue| and u = 2.2e-16: eigenvalues within 1e-12 ||A||; residual ||A v - l v||_inf
 * <= 1e-12 ||A|| and orthonormality |V^T V - I| <= 1e-12 for every vector; each vector whose relative
 * gap g (to its neighbours, over ||A||) is >= 1e-6 equal to LAPACK's up to sign within 1e-13 / g (the
 * perturbation bound is about d u / g); the top-k subspace within 1e-13 / g_k (g_k the gap below it). */
static void compare_eig(MPI_Comm comm, const double *A, int d, int k, dpm_pca_solver solver, int block,
                        const char *what) {
  int r;
  MPI_Comm_rank(comm, &r);
  double *V = dpm_malloc(sizeof(double) * d * k), *ev = dpm_malloc(sizeof(double) * k);
  char err[DPM_ERRLEN] = "";
  dpm_pca_stats st;
  int rc = dpm_pca_eig(comm, r == 0 ? A : NULL, d, k, solver, block, V, ev, &st, err);
  CHECK(rc == 0, "%s: %s", what, err);
  if (r == 0 && rc == 0) {
    /* reference */
    double *R = dpm_malloc(sizeof(double) * d * d), *w = dpm_malloc(sizeof(double) * d);
    memcpy(R, A, sizeof(double) * d * d);
    int lwork = -1, liwork = -1, iwq, info;
    double wq;
    dsyevd_("V", "U", &d, R, &d, w, &wq, &lwork, &iwq, &liwork, &info, 1, 1);
    lwork = (int)wq + 1, liwork = iwq;
    double *work = dpm_malloc(sizeof(double) * lwork);
    int *iwork = dpm_malloc(sizeof(int) * liwork);
    dsyevd_("V", "U", &d, R, &d, w, work, &lwork, iwork, &liwork, &info, 1, 1);
    CHECK(info == 0, "dsyevd info %d", info);
    double norm = fmax(fabs(w[0]), fabs(w[d - 1]));
    double werr = 0, resid = 0, orth = 0, verr_scaled = 0, serr = 0;
    int sign_ok = 1, checked = 0;
    for (int c = 0; c < k; c++) {
      int j = d - 1 - c; /* LAPACK's ascending index of our column c */
      werr = fmax(werr, fabs(ev[c] - w[j]));
      if (c > 0) CHECK(ev[c] <= ev[c - 1], "%s: eigenvalues not descending", what);
      /* residual */
      for (int i = 0; i < d; i++) {
        double s = 0;
        for (int l = 0; l < d; l++) s += A[(size_t)i * d + l] * V[(size_t)l * k + c];
        resid = fmax(resid, fabs(s - ev[c] * V[(size_t)i * k + c]));
      }
      /* orthonormality */
      for (int c2 = 0; c2 <= c; c2++) {
        double s = 0;
        for (int i = 0; i < d; i++) s += V[(size_t)i * k + c] * V[(size_t)i * k + c2];
        orth = fmax(orth, fabs(s - (c == c2)));
      }
      /* sign convention: the largest-magnitude entry is positive */
      int arg = 0;
      for (int i = 1; i < d; i++)
        if (fabs(V[(size_t)i * k + c]) > fabs(V[(size_t)arg * k + c])) arg = i;
      sign_ok &= V[(size_t)arg * k + c] > 0;
      /* against LAPACK's vector, where the gap allows */
      double gap = INFINITY;
      if (j > 0) gap = fmin(gap, w[j] - w[j - 1]);
      if (j < d - 1) gap = fmin(gap, w[j + 1] - w[j]);
      gap /= norm;
      if (gap >= 1e-6) {
        double dp = 0, dm = 0;
        for (int i = 0; i < d; i++) {
          dp = fmax(dp, fabs(V[(size_t)i * k + c] - R[(size_t)j * d + i]));
          dm = fmax(dm, fabs(V[(size_t)i * k + c] + R[(size_t)j * d + i]));
        }
        verr_scaled = fmax(verr_scaled, fmin(dp, dm) * gap / 1e-13);
        checked++;
      }
    }
    if (k < d) { /* subspace of the top k */
      double gk = (w[d - k] - w[d - k - 1]) / norm;
      if (gk >= 1e-6) {
        for (int a = 0; a < d; a++)
          for (int b = 0; b < d; b++) {
            double p1 = 0, p2 = 0;
            for (int c = 0; c < k; c++) {
              p1 += V[(size_t)a * k + c] * V[(size_t)b * k + c];
              p2 += R[(size_t)(d - 1 - c) * d + a] * R[(size_t)(d - 1 - c) * d + b];
            }
            serr = fmax(serr, fabs(p1 - p2) * gk / 1e-13);
          }
        CHECK(serr <= 1, "%s: top-%d subspace differs from LAPACK's by %g x the tolerance", what, k, serr);
      }
    }
    CHECK(werr <= 1e-12 * norm, "%s: eigenvalues differ from dsyevd by %g (||A|| %g)", what, werr, norm);
    CHECK(resid <= 1e-12 * norm, "%s: residual %g (||A|| %g)", what, resid, norm);
    CHECK(orth <= 1e-12, "%s: orthonormality error %g", what, orth);
    CHECK(sign_ok, "%s: sign convention violated", what);
    CHECK(verr_scaled <= 1, "%s: eigenvectors differ from dsyevd's by %g x the tolerance 1e-13/gap (%d checked)",
          what, verr_scaled, checked);
    CHECK(checked >= (k + 1) / 2, "%s: only %d of %d vectors had a gap to check", what, checked, k);
    dpm_free(R), dpm_free(w), dpm_free(work), dpm_free(iwork);
  }
  dpm_free(V);
  dpm_free(ev);
}

static void test_eig(void) {
  const int dims[] = {1, 3, 37, 64, 100, 130};
  for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++) {
    const int d = dims[t], N = 4 * d + 50;
    float *x = dpm_malloc(sizeof(float) * N * d);
    make_rows(x, 0, N, d, 10 + t);
    int64_t b, e;
    shard(N, MPI_COMM_WORLD, &b, &e);
    double *A = dpm_malloc(sizeof(double) * d * d);
    dpm_key key = dpm_key_from_seed(7, DPM_STREAM_PCA);
    dpm_pca_params p = {.components = 1, .clip = 4.0, .sigma = 2.0};
    dpm_pca_noisy_gram(MPI_COMM_WORLD, x + b * d, e - b, d, &p, &key, A, NULL);
    const int ks[] = {1, d < 5 ? d : 5, d};
    const int blocks[] = {0, 1, 8, 32};
    for (int ik = 0; ik < 3; ik++)
      for (int solver = 0; solver < 2; solver++)
        for (int ib = 0; ib < 4; ib++) {
          if (ib > 0 && (ik != 1 || d < 37)) continue; /* explicit block sizes: one k, larger d */
          char what[96];
          snprintf(what, sizeof what, "d %d k %d %s block %d on %d ranks", d, ks[ik], solver ? "pdsyevd" : "pdsyevr",
                   blocks[ib], size_);
          compare_eig(MPI_COMM_WORLD, A, d, ks[ik], (dpm_pca_solver)solver, blocks[ib], what);
        }
    dpm_free(A);
    dpm_free(x);
  }
}

/* The whole fit on the first s ranks for every s = 1 .. size (grids 1x1, 1x2, 1x3, 2x2): the same
 * projection as on 1 rank (float V within 2e-6: the double results agree to ~1e-13 / gap, and the gap
 * of this spectrum is >= 1e-3; each float rounding adds < 6e-8). */
static void test_fit_ranks(void) {
  const int d = 50, k = 8, N = 3000;
  float *x = dpm_malloc(sizeof(float) * N * d);
  make_rows(x, 0, N, d, 42);
  float *V1 = dpm_malloc(sizeof(float) * d * k), *V = dpm_malloc(sizeof(float) * d * k);
  double ev1[8], ev[8];
  dpm_key key = dpm_key_from_seed(99, DPM_STREAM_PCA);
  for (int solver = 0; solver < 2; solver++)
    for (int s = 1; s <= size_; s++) {
      MPI_Comm comm;
      MPI_Comm_split(MPI_COMM_WORLD, rank_ < s ? 0 : MPI_UNDEFINED, rank_, &comm);
      if (comm != MPI_COMM_NULL) {
        int64_t b, e;
        shard(N, comm, &b, &e);
        dpm_pca_params p = {.components = k, .clip = 5.0, .sigma = 3.0, .solver = (dpm_pca_solver)solver};
        char err[DPM_ERRLEN] = "";
        dpm_pca_stats st;
        int rc = dpm_pca_fit(comm, x + b * d, e - b, d, &p, rank_ == 0 ? &key : NULL, s == 1 ? V1 : V, s == 1 ? ev1 : ev,
                             &st, err);
        CHECK(rc == 0, "fit on %d ranks: %s", s, err);
        int pr, pc;
        dpm_pca_grid_shape(s, &pr, &pc);
        CHECK(st.pr == pr && st.pc == pc, "fit on %d ranks used a %dx%d grid", s, st.pr, st.pc);
        if (rank_ == 0 && s > 1) {
          double worst = 0, wev = 0;
          for (int i = 0; i < d * k; i++) worst = fmax(worst, fabs(V[i] - V1[i]));
          for (int c = 0; c < k; c++) wev = fmax(wev, fabs(ev[c] - ev1[c]) / fabs(ev1[0]));
          CHECK(worst <= 2e-6, "%s fit on %d ranks differs from 1 rank by %g", solver ? "pdsyevd" : "pdsyevr", s, worst);
          CHECK(wev <= 1e-12, "eigenvalues on %d ranks differ from 1 rank by %g relative", s, wev);
        }
        /* every rank of comm holds the same V */
        float *mine = s == 1 ? V1 : V, *root = dpm_malloc(sizeof(float) * d * k);
        memcpy(root, mine, sizeof(float) * d * k);
        MPI_Bcast(root, d * k, MPI_FLOAT, 0, comm);
        CHECK(memcmp(root, mine, sizeof(float) * d * k) == 0, "rank %d's V differs from rank 0's", rank_);
        dpm_free(root);
        MPI_Comm_free(&comm);
      }
      MPI_Barrier(MPI_COMM_WORLD);
    }
  dpm_free(x), dpm_free(V1), dpm_free(V);
}

/* Projection (one sgemm) against a double loop; dataset shape after dpm_pca_apply. */
static void test_project(void) {
  const int d = 30, k = 7, n = 45;
  float *x = dpm_malloc(sizeof(float) * n * d), *V = dpm_malloc(sizeof(float) * d * k);
  float *out = dpm_malloc(sizeof(float) * n * k);
  make_rows(x, 0, n, d, 8);
  make_rows(V, 100, d, k, 9);
  dpm_pca_project(x, n, d, V, k, out);
  double worst = 0;
  for (int i = 0; i < n; i++)
    for (int c = 0; c < k; c++) {
      double s = 0, a = 0;
      for (int j = 0; j < d; j++) s += (double)x[i * d + j] * V[j * k + c], a += fabs((double)x[i * d + j] * V[j * k + c]);
      worst = fmax(worst, fabs(out[i * k + c] - s) / (a + 1e-30));
    }
  CHECK(worst <= 1e-5, "projection differs from the double loop by %g (relative to sum |x v|)", worst);
  dpm_dataset ds;
  memset(&ds, 0, sizeof ds);
  ds.C = 1, ds.H = 5, ds.W = 6, ds.images = 1, ds.mean = 0.5f, ds.std = 0.5f;
  ds.x = dpm_malloc(sizeof(float) * n * d);
  memcpy(ds.x, x, sizeof(float) * n * d);
  dpm_pca_apply(&ds, n, V, d, k);
  CHECK(ds.C == k && ds.H == 1 && ds.W == 1 && ds.images == 0, "dataset shape after apply: %dx%dx%d", ds.C, ds.H, ds.W);
  CHECK(memcmp(ds.x, out, sizeof(float) * n * k) == 0, "apply differs from project");
  dpm_free(ds.x);
  dpm_free(x), dpm_free(V), dpm_free(out);
}

/* ---- privacy parameters ---- */

static double Phi(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }
/* Balle & Wang 2018 (Thm 8): the Gaussian mechanism with sensitivity 1 and noise std s is (eps, delta)-DP
 * exactly for delta(eps) = Phi(1/(2s) - eps s) - e^eps Phi(-1/(2s) - eps s). */
static double analytic_delta(double eps, double s) {
  return Phi(1 / (2 * s) - eps * s) - exp(eps) * Phi(-1 / (2 * s) - eps * s);
}
static double analytic_eps(double s, double delta) {
  double lo = 0, hi = 1;
  while (analytic_delta(hi, s) > delta) hi *= 2;
  if (analytic_delta(0, s) <= delta) return 0;
  for (int i = 0; i < 200; i++) {
    double mid = 0.5 * (lo + hi);
    if (analytic_delta(mid, s) > delta) lo = mid;
    else hi = mid;
  }
  return hi;
}

/* One Gaussian release in the ledger: the tight accountant within [exact, exact (1 + 0.5%) + 0.002] of the
 * analytic Gaussian mechanism (its documented accuracy at q = 1 is 0.36%); RDP never below exact. */
static void test_gaussian_epsilon(void) {
  const double sigmas[] = {0.5, 0.8, 1.0, 2.0, 4.0, 8.0, 16.0}, deltas[] = {1e-5, 1e-3};
  char err[DPM_ERRLEN];
  for (int i = 0; i < 7; i++)
    for (int j = 0; j < 2; j++) {
      dpm_ledger *L = dpm_ledger_create();
      dpm_ledger_add_gaussian(L, sigmas[i], 1);
      double exact = analytic_eps(sigmas[i], deltas[j]), et = -1, er = -1;
      CHECK(dpm_ledger_epsilon(L, deltas[j], DPM_ACCT_TIGHT, &et, err) == 0, "%s", err);
      CHECK(dpm_ledger_epsilon(L, deltas[j], DPM_ACCT_RDP, &er, err) == 0, "%s", err);
      CHECK(et >= exact - 1e-9 && et <= exact * 1.005 + 0.002, "sigma %g delta %g: tight %.6f, analytic %.6f",
            sigmas[i], deltas[j], et, exact);
      CHECK(er >= exact - 1e-9, "sigma %g delta %g: rdp %.6f below the analytic %.6f", sigmas[i], deltas[j], er, exact);
      int kind;
      double q, s;
      int64_t cnt;
      dpm_ledger_event(L, 0, &kind, &q, &s, &cnt);
      CHECK(dpm_ledger_size(L) == 1 && kind == 1 && q == 1 && s == sigmas[i] && cnt == 1, "ledger row");
      dpm_ledger_free(L);
    }
}

/* dpm_pca_sigma: the given multiplier, or the calibrated one whose release is within [target - 0.01,
 * target] by the job's accountant, and whose exact (analytic) epsilon is never above the target. */
static void test_pca_sigma(void) {
  dpm_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.path = "job.ini";
  cfg.privacy_enabled = 1, cfg.delta = 1e-5, cfg.pca_components = 4, cfg.pca_clip = 1;
  char err[DPM_ERRLEN];
  double s = -1;
  cfg.pca_noise_multiplier = 2.5;
  CHECK(dpm_pca_sigma(&cfg, &s, err) == 0 && s == 2.5, "given multiplier: %g", s);
  cfg.pca_noise_multiplier = 0;
  const double targets[] = {0.25, 1.0, 3.0};
  for (int acct = 0; acct < 2; acct++)
    for (int t = 0; t < 3; t++) {
      cfg.accountant = acct, cfg.pca_epsilon = targets[t];
      CHECK(dpm_pca_sigma(&cfg, &s, err) == 0, "%s", err);
      dpm_ledger *L = dpm_ledger_create();
      dpm_ledger_add_gaussian(L, s, 1);
      double e;
      dpm_ledger_epsilon(L, cfg.delta, acct ? DPM_ACCT_TIGHT : DPM_ACCT_RDP, &e, err);
      CHECK(e <= targets[t] && e >= targets[t] - 0.01, "%s: sigma %g gives %g for target %g", acct ? "tight" : "rdp", s, e,
            targets[t]);
      double exact = analytic_eps(s, cfg.delta);
      CHECK(exact <= targets[t], "calibrated sigma %g: analytic epsilon %g above target %g", s, exact, targets[t]);
      if (acct) CHECK(exact >= targets[t] - 0.02, "tight calibration loose: analytic %g for target %g", exact, targets[t]);
      dpm_ledger_free(L);
    }
  cfg.privacy_enabled = 0;
  CHECK(dpm_pca_sigma(&cfg, &s, err) == 0 && s == 0, "non-private PCA has no noise");
}

/* Training calibrated after the PCA release: the composition meets the target (within 0.01 below), and
 * needs more noise than training alone. */
static void test_calibrate_after(void) {
  char err[DPM_ERRLEN];
  const double q = 0.01, delta = 1e-5, target = 3.0;
  const int64_t T = 2000;
  for (int acct = 0; acct < 2; acct++) {
    dpm_accountant_kind kind = acct ? DPM_ACCT_TIGHT : DPM_ACCT_RDP;
    dpm_ledger *L = dpm_ledger_create();
    dpm_ledger_add_gaussian(L, 4.0, 1);
    double s_after = 0, s_plain = 0, e;
    CHECK(dpm_calibrate_sigma_after(L, target, delta, q, T, kind, &s_after, err) == 0, "%s", err);
    CHECK(dpm_calibrate_sigma(target, delta, q, T, kind, &s_plain, err) == 0, "%s", err);
    CHECK(s_after > s_plain, "%s: sigma after the PCA release %g not above %g", acct ? "tight" : "rdp", s_after, s_plain);
    dpm_ledger_add_sgm(L, q, s_after, T);
    dpm_ledger_epsilon(L, delta, kind, &e, err);
    CHECK(e <= target && e >= target - 0.01, "%s: composed epsilon %g for target %g", acct ? "tight" : "rdp", e, target);
    dpm_ledger_free(L);
    /* a target the release alone exceeds is unreachable */
    dpm_ledger *L2 = dpm_ledger_create();
    dpm_ledger_add_gaussian(L2, 0.3, 1);
    CHECK(dpm_calibrate_sigma_after(L2, 2.0, delta, q, T, kind, &s_after, err) == -1, "over-spent prior accepted");
    dpm_ledger_free(L2);
  }
}

/* ---- job-file keys ---- */

static char path[256];
static const char *BASE =
    "[data]\ntrain = a.h5\n[model]\nlayers = dense out=10\n[train]\nepochs = 1\n[privacy]\nepsilon = 3\n";

static int load(const char *extra, int n_over, char **over, dpm_config *cfg, char *err) {
  FILE *f = fopen(path, "w");
  fprintf(f, "%s%s", BASE, extra);
  fclose(f);
  return dpm_config_load(path, n_over, over, cfg, err);
}

static void expect_error(const char *extra, const char *w1, const char *w2) {
  dpm_config cfg;
  char err[DPM_ERRLEN] = "";
  int rc = load(extra, 0, NULL, &cfg, err);
  CHECK(rc == -1, "accepted: %s", extra);
  CHECK(strstr(err, w1) && strstr(err, w2), "error '%s' lacks '%s' or '%s'", err, w1, w2);
  dpm_config_free(&cfg);
}

static void test_config(void) {
  snprintf(path, sizeof path, "/tmp/dpm_test_pca_%d_%d.ini", (int)getpid(), rank_);
  dpm_config cfg;
  char err[DPM_ERRLEN] = "";
  CHECK(load("", 0, NULL, &cfg, err) == 0 && cfg.pca_components == 0, "PCA off by default: %s", err);
  dpm_config_free(&cfg);
  CHECK(load("[pca]\ncomponents = 4\nepsilon = 1\nclip = 2\n", 0, NULL, &cfg, err) == 0, "valid PCA job: %s", err);
  CHECK(cfg.pca_components == 4 && cfg.pca_epsilon == 1 && cfg.pca_clip == 2 && cfg.pca_noise_multiplier == 0,
        "pca values");
  dpm_config_free(&cfg);
  char *over[] = {"--pca.noise_multiplier=3"};
  CHECK(load("[pca]\ncomponents = 4\nepsilon = 1\nclip = 2\n", 1, over, &cfg, err) == 0, "override: %s", err);
  CHECK(cfg.pca_noise_multiplier == 3 && cfg.pca_epsilon == 0, "--pca.noise_multiplier replaces pca.epsilon");
  dpm_config_free(&cfg);

  expect_error("[pca]\ncomponents = -1\n", "[pca] components = -1", ">= 0");
  expect_error("[pca]\ncomponents = x\n", "[pca] components = 'x'", "integer");
  expect_error("[pca]\ncomponents = 4\nclip = 1\n", "components = 4", "exactly one of [pca] noise_multiplier");
  expect_error("[pca]\ncomponents = 4\nclip = 1\nepsilon = 1\nnoise_multiplier = 2\n", "components = 4", "exactly one");
  expect_error("[pca]\ncomponents = 4\nepsilon = 1\n", "[pca] clip", "required");
  expect_error("[pca]\ncomponents = 4\nepsilon = 3\nclip = 1\n", "[pca] epsilon = 3", "below [privacy] epsilon = 3");
  expect_error("[pca]\ncomponents = 4\nclip = -1\n", "[pca] clip = '-1'", "positive");
  expect_error("[pca]\ncomponents = 4\nsigma = 1\n", "unknown key 'sigma'", "[pca]");
  /* non-private: the exact PCA, no noise parameters */
  FILE *f = fopen(path, "w");
  fprintf(f, "[data]\ntrain = a.h5\n[model]\nlayers = dense out=10\n[train]\nepochs = 1\n[privacy]\nenabled = false\n"
             "[pca]\ncomponents = 4\nepsilon = 1\n");
  fclose(f);
  CHECK(dpm_config_load(path, 0, NULL, &cfg, err) == 0 && cfg.pca_epsilon == 0 &&
        !strcmp(cfg.privacy_ignored, "pca.epsilon"), "non-private with pca.epsilon: ignored (issue 18): %s", err);
  dpm_config_free(&cfg);
  f = fopen(path, "w");
  fprintf(f, "[data]\ntrain = a.h5\n[model]\nlayers = dense out=10\n[train]\nepochs = 1\n[privacy]\nenabled = false\n"
             "[pca]\ncomponents = 4\n");
  fclose(f);
  CHECK(dpm_config_load(path, 0, NULL, &cfg, err) == 0, "non-private PCA rejected: %s", err);
  /* the data-dependent check */
  CHECK(dpm_pca_check(&cfg, 4, err) == 0, "components = d accepted");
  CHECK(dpm_pca_check(&cfg, 3, err) == -1 && strstr(err, "[pca] components = 4 exceeds the 3 features"),
        "components > d: '%s'", err);
  dpm_config_free(&cfg);
  unlink(path);
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  test_grid_shape();
  test_gram_reduce();
  test_clipping();
  test_sensitivity();
  test_noise();
  test_eig();
  test_fit_ranks();
  test_project();
  test_gaussian_epsilon();
  test_pca_sigma();
  test_calibrate_after();
  test_config();
  return dpm_test_finish();
}
