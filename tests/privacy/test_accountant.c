/* Tests of the RDP accountant, conversions, calibration and ledger against ../shared/refs (mpmath and
 * Opacus figures, published numbers) and properties (monotonicity, order independence, HDF5 round trip). */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpmpi/io/ledger_h5.h"
#include "dpmpi/privacy/accountant.h"
#include "testing.h"

/* Orders used by the reference (TF Privacy / Opacus): 1.1..10.9 and 12..63. */
static int ref_orders(double *o) {
  int n = 0;
  for (int i = 11; i <= 109; i++) o[n++] = i / 10.0;
  for (int a = 12; a <= 63; a++) o[n++] = a;
  return n;
}

static void test_rdp_orders(void) {
  FILE *f = dpm_test_open_ref("rdp_orders.csv");
  if (!f) return;
  char line[512];
  double worst = 0, worst_series = 0;
  int rows = 0;
  if (!fgets(line, sizeof line, f)) return;
  while (fgets(line, sizeof line, f)) {
    double q, s, a, r;
    if (sscanf(line, "%lf,%lf,%lf,%lf", &q, &s, &a, &r) != 4) continue;
    double v = dpm_rdp_subsampled_gaussian(q, s, a);
    double v1;
    dpm_rdp_vector(q, s, &a, 1, &v1);
    CHECK_CLOSE(v, r, 1e-6, 0, "rdp_orders.csv row");
    CHECK(v == v1, "vector and scalar RDP differ at q %g sigma %g order %g", q, s, a);
    worst = fmax(worst, fabs(v - r) / r);
    if (a != floor(a) && q < 1) { /* second implementation: the MTZ series */
      double vs = dpm_rdp_log_a_series(q, s, a) / (a - 1);
      CHECK_CLOSE(vs, r, 1e-6, 0, "MTZ series vs rdp_orders.csv");
      worst_series = fmax(worst_series, fabs(vs - r) / r);
    }
    rows++;
  }
  fclose(f);
  CHECK(rows == 269, "rdp_orders.csv: %d rows", rows);
  printf("rdp_orders.csv: %d rows, worst relative error %.2e (quadrature), %.2e (MTZ series)\n", rows, worst,
         worst_series);
}

static void test_eps_table(void) {
  FILE *f = dpm_test_open_ref("accountant_eps.csv");
  if (!f) return;
  char line[512];
  double o[200];
  int no = ref_orders(o), rows = 0;
  double worst_same = 0, worst_above = 0, worst_below_tight = 0;
  if (!fgets(line, sizeof line, f)) return;
  while (fgets(line, sizeof line, f)) {
    double q, s, d, erdp, etight, eq1 = NAN;
    long long T;
    int k = sscanf(line, "%lf,%lf,%lld,%lf,%lf,%lf,%lf", &q, &s, &T, &d, &erdp, &etight, &eq1);
    if (k < 6) continue;
    rows++;
    double same = dpm_rdp_epsilon_orders(q, s, T, d, o, no, 0, NULL);
    CHECK_CLOSE(same, erdp, 1e-6, 0, "RDP with reference orders");
    worst_same = fmax(worst_same, fabs(same - erdp) / erdp);
    double bo, def = dpm_rdp_epsilon(q, s, T, d, &bo);
    CHECK(def <= erdp * (1 + 1e-6), "default orders above reference: %g > %g (q %g s %g T %lld)", def, erdp, q, s, T);
    CHECK(def >= etight * 0.99, "default orders below tight: %g < %g (q %g s %g T %lld)", def, etight, q, s, T);
    worst_above = fmax(worst_above, (def - erdp) / erdp);
    worst_below_tight = fmax(worst_below_tight, (etight - def) / etight);
    if (k == 7) CHECK(def >= eq1 * (1 - 1e-9), "RDP below the exact Gaussian epsilon: %g < %g", def, eq1);
  }
  fclose(f);
  CHECK(rows == 77, "accountant_eps.csv: %d rows", rows);
  printf("accountant_eps.csv: %d rows; reference orders worst rel err %.2e; default orders max (def-ref)/ref "
         "%.2e, max (tight-def)/tight %.2e\n", rows, worst_same, worst_above, worst_below_tight);
}

static void test_published(void) {
  double o[200];
  int no = ref_orders(o);
  /* classic conversion, TF Privacy orders */
  double q = 256.0 / 60000;
  struct { double q, s; long long T; double eps; } classic[] = {
      {0.01, 4.0, 10000, 1.26},  {q, 1.1, 14062, 3.01},        {q, 1.3, (long long)(15 * 60000 / 256), 1.19},
      {q, 0.7, (long long)(45 * 60000 / 256), 7.10}, {0.004, 1.3, 3750, 1.16}};
  for (size_t i = 0; i < sizeof classic / sizeof classic[0]; i++) {
    double e = dpm_rdp_epsilon_orders(classic[i].q, classic[i].s, classic[i].T, 1e-5, o, no, 1, NULL);
    CHECK(fabs(e - classic[i].eps) <= 0.005 + 1e-9, "published (classic) %g: got %.4f", classic[i].eps, e);
  }
  double e1 = dpm_rdp_epsilon_orders(q, 1.1, 14062, 1e-5, o, no, 0, NULL);
  double e2 = dpm_rdp_epsilon_orders(0.01, 4.0, 10000, 1e-5, o, no, 0, NULL);
  CHECK(fabs(e1 - 2.5966) <= 5e-5, "Balle conversion 2.5966: got %.5f", e1);
  CHECK(fabs(e2 - 1.0355) <= 5e-5, "Balle conversion 1.0355: got %.5f", e2);
}

static void test_sigma_table(void) {
  FILE *f = dpm_test_open_ref("accountant_sigma.csv");
  if (!f) return;
  char line[512], err[DPM_ERRLEN];
  int rows = 0;
  double worst = 0;
  if (!fgets(line, sizeof line, f)) return;
  while (fgets(line, sizeof line, f)) {
    double te, d, N, b, ep, q, srdp, stight;
    long long T;
    if (sscanf(line, "%lf,%lf,%lf,%lf,%lf,%lf,%lld,%lf,%lf", &te, &d, &N, &b, &ep, &q, &T, &srdp, &stight) != 9)
      continue;
    rows++;
    double s;
    int rc = dpm_calibrate_sigma(te, d, q, T, DPM_ACCT_RDP, &s, err);
    CHECK(rc == 0, "calibrate: %s", err);
    if (rc) continue;
    CHECK_CLOSE(s, srdp, 0.01, 0, "sigma_rdp");
    worst = fmax(worst, fabs(s - srdp) / srdp);
    double e = dpm_rdp_epsilon(q, s, T, d, NULL);
    CHECK(e <= te && e >= te - 0.01, "calibrated eps %g for target %g", e, te);
    CHECK(s <= srdp * (1 + 1e-9), "sigma %g above the reference's bisection %g", s, srdp);
  }
  fclose(f);
  printf("accountant_sigma.csv: %d rows (RDP), worst relative sigma difference %.2e\n", rows, worst);
}

static void test_calibration_grid(void) {
  char err[DPM_ERRLEN];
  double qs[] = {1e-4, 0.004, 0.05, 1.0}, es[] = {0.1, 1, 8, 50};
  long long Ts[] = {1, 1000, 100000};
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++)
      for (int k = 0; k < 3; k++) {
        double s;
        if (dpm_calibrate_sigma(es[j], 1e-5, qs[i], Ts[k], DPM_ACCT_RDP, &s, err)) continue; /* unreachable */
        double e = dpm_rdp_epsilon(qs[i], s, Ts[k], 1e-5, NULL);
        CHECK(e <= es[j] && e >= es[j] - 0.01, "calibrate q %g T %lld target %g: sigma %g eps %g", qs[i], Ts[k], es[j], s, e);
        int64_t steps;
        CHECK(dpm_calibrate_steps(es[j], 1e-5, qs[i], s, DPM_ACCT_RDP, &steps, err) == 0, "%s", err);
        CHECK(steps >= Ts[k], "max steps %lld < %lld", (long long)steps, Ts[k]);
        if (steps < ((int64_t)1 << 40)) {
          CHECK(dpm_rdp_epsilon(qs[i], s, steps, 1e-5, NULL) <= es[j], "eps(max steps) above target");
          CHECK(dpm_rdp_epsilon(qs[i], s, steps + 1, 1e-5, NULL) > es[j], "max steps + 1 still fits");
        }
      }
  double s;
  CHECK(dpm_calibrate_sigma(0.001, 1e-5, 0.01, 100, DPM_ACCT_RDP, &s, err) == -1, "0.001 should be unreachable");
  CHECK(strstr(err, "unreachable") != NULL, "message: %s", err);
  CHECK(dpm_calibrate_sigma(1, 1e-5, 0, 100, DPM_ACCT_RDP, &s, err) == -1, "q = 0 accepted");
  CHECK(dpm_calibrate_sigma(1, 1.5, 0.1, 100, DPM_ACCT_RDP, &s, err) == -1, "delta 1.5 accepted");
}

static void test_properties(void) {
  double qs[] = {1e-4, 1e-3, 0.01, 0.1, 0.5, 1}, ss[] = {0.3, 0.5, 0.8, 1, 2, 5, 20};
  long long Ts[] = {1, 10, 1000, 100000, 1000000};
  double ds[] = {1e-10, 1e-6, 1e-3};
  int fails = 0;
  for (int d = 0; d < 3; d++)
    for (int t = 0; t < 5; t++)
      for (int i = 0; i < 6; i++)
        for (int j = 0; j < 7; j++) {
          double e = dpm_rdp_epsilon(qs[i], ss[j], Ts[t], ds[d], NULL);
          if (!(e >= 0 && isfinite(e))) fails++, fprintf(stderr, "bad eps %g\n", e);
          if (t > 0 && dpm_rdp_epsilon(qs[i], ss[j], Ts[t - 1], ds[d], NULL) > e) fails++;
          if (i > 0 && dpm_rdp_epsilon(qs[i - 1], ss[j], Ts[t], ds[d], NULL) > e) fails++;
          if (j > 0 && dpm_rdp_epsilon(qs[i], ss[j - 1], Ts[t], ds[d], NULL) < e) fails++;
          if (d > 0 && dpm_rdp_epsilon(qs[i], ss[j], Ts[t], ds[d - 1], NULL) < e) fails++;
        }
  CHECK(fails == 0, "%d monotonicity violations (steps, q up; sigma, delta down)", fails);
  /* extremes: no overflow, finite, the Gaussian exactly at q = 1 */
  double r = dpm_rdp_subsampled_gaussian(0.5, 0.3, 1024);
  CHECK(isfinite(r) && r > 0 && r <= 1024 / (2 * 0.09), "sigma 0.3 order 1024: %g", r);
  r = dpm_rdp_subsampled_gaussian(0.5, 0.3, 1023.5);
  CHECK(isfinite(r) && r > 0 && r <= 1024 / (2 * 0.09), "sigma 0.3 order 1023.5: %g", r);
  CHECK_CLOSE(dpm_rdp_subsampled_gaussian(1, 0.7, 3.3), 3.3 / (2 * 0.49), 1e-15, 0, "Gaussian RDP");
  /* a vanishing sigma at q < 1 (tests take one step at sigma 1e-9): fractional orders +Inf (quadrature too
     fine to build), integer orders still exact and finite or +Inf, epsilon >= the q = 1 Gaussian's... never a crash */
  CHECK(dpm_rdp_subsampled_gaussian(0.25, 1e-9, 2.5) == INFINITY, "sigma 1e-9, order 2.5: %g",
        dpm_rdp_subsampled_gaussian(0.25, 1e-9, 2.5));
  const double tiny_orders[3] = {1.5, 2, 10.5};
  double tiny[3];
  dpm_rdp_vector(0.25, 1e-6, tiny_orders, 3, tiny);
  CHECK(tiny[0] == INFINITY && tiny[2] == INFINITY && tiny[1] > 1e9, "sigma 1e-6 vector: %g %g %g", tiny[0], tiny[1], tiny[2]);
  CHECK(dpm_rdp_epsilon(0.25, 1e-9, 1, 1e-5, NULL) > 1e6, "sigma 1e-9 epsilon: %g", dpm_rdp_epsilon(0.25, 1e-9, 1, 1e-5, NULL));
  /* fractional orders are continuous with integer ones (quadrature vs binomial sum) */
  for (int i = 0; i < 5; i++)
    for (int j = 0; j < 7; j++) {
      double a = 4 + 1e-9;
      double r4 = dpm_rdp_subsampled_gaussian(qs[i], ss[j], 4), ra = dpm_rdp_subsampled_gaussian(qs[i], ss[j], a);
      CHECK_CLOSE(ra, r4, 1e-6, 0, "order 4 + 1e-9 vs 4");
      double a2 = 40 + 1e-9;
      r4 = dpm_rdp_subsampled_gaussian(qs[i], ss[j], 40);
      ra = dpm_rdp_subsampled_gaussian(qs[i], ss[j], a2);
      CHECK_CLOSE(ra, r4, 1e-6, 0, "order 40 + 1e-9 vs 40");
    }
}

static void test_ledger(void) {
  char err[DPM_ERRLEN];
  double e1, e2, e3;
  dpm_ledger *L = dpm_ledger_create();
  CHECK(dpm_ledger_epsilon(L, 1e-5, DPM_ACCT_RDP, &e1, err) == 0 && e1 == 0, "empty ledger eps %g", e1);
  for (int t = 0; t < 1000; t++) dpm_ledger_add_sgm(L, 0.01, 1.1, 1);
  CHECK(dpm_ledger_size(L) == 1, "merge: %d events", dpm_ledger_size(L));
  dpm_ledger_epsilon(L, 1e-5, DPM_ACCT_RDP, &e1, err);
  CHECK_CLOSE(e1, dpm_rdp_epsilon(0.01, 1.1, 1000, 1e-5, NULL), 1e-12, 0, "ledger = one segment");
  CHECK(dpm_ledger_epsilon(L, 0, DPM_ACCT_RDP, &e1, err) == -1, "delta 0 accepted");

  /* heterogeneous: order of events does not matter; Gaussian release = q = 1 segment */
  dpm_ledger *A = dpm_ledger_create(), *B = dpm_ledger_create(), *C = dpm_ledger_create();
  dpm_ledger_add_sgm(A, 0.01, 1.0, 500);
  dpm_ledger_add_gaussian(A, 5.0, 2);
  dpm_ledger_add_sgm(A, 0.02, 2.0, 300);
  dpm_ledger_add_sgm(B, 0.02, 2.0, 300);
  dpm_ledger_add_sgm(B, 0.01, 1.0, 200);
  dpm_ledger_add_gaussian(B, 5.0, 2);
  dpm_ledger_add_sgm(B, 0.01, 1.0, 300);
  dpm_ledger_add_sgm(C, 0.01, 1.0, 500);
  dpm_ledger_add_sgm(C, 1.0, 5.0, 2);
  dpm_ledger_add_sgm(C, 0.02, 2.0, 300);
  dpm_ledger_epsilon(A, 1e-5, DPM_ACCT_RDP, &e1, err);
  dpm_ledger_epsilon(B, 1e-5, DPM_ACCT_RDP, &e2, err);
  dpm_ledger_epsilon(C, 1e-5, DPM_ACCT_RDP, &e3, err);
  CHECK_CLOSE(e1, e2, 1e-12, 0, "composition order independence");
  CHECK_CLOSE(e1, e3, 1e-12, 0, "Gaussian release vs q = 1 segment");
  CHECK(e1 > dpm_rdp_epsilon(0.01, 1.0, 500, 1e-5, NULL), "composition adds");

  /* max steps from a non-empty ledger */
  int64_t more;
  CHECK(dpm_ledger_max_steps(A, 0.01, 1.0, 3.0, 1e-5, DPM_ACCT_RDP, &more, err) == 0, "%s", err);
  dpm_ledger_add_sgm(A, 0.01, 1.0, more);
  dpm_ledger_epsilon(A, 1e-5, DPM_ACCT_RDP, &e1, err);
  CHECK(e1 <= 3.0, "ledger + max steps: %g", e1);
  dpm_ledger_add_sgm(A, 0.01, 1.0, 1);
  dpm_ledger_epsilon(A, 1e-5, DPM_ACCT_RDP, &e2, err);
  CHECK(e2 > 3.0, "ledger + max steps + 1: %g", e2);

  /* HDF5 round trip */
  char path[] = "/tmp/dpm_test_ledger_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0, "mkstemp");
  hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hid_t grp = H5Gcreate2(file, "accountant", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(dpm_ledger_write_hdf5(B, grp, err) == 0, "write: %s", err);
  CHECK(dpm_ledger_write_hdf5(B, grp, err) == 0, "overwrite: %s", err);
  dpm_ledger *E = dpm_ledger_create();
  hid_t g2 = H5Gcreate2(file, "empty", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(dpm_ledger_write_hdf5(E, g2, err) == 0, "write empty: %s", err);
  H5Gclose(g2);
  H5Gclose(grp);
  H5Fclose(file);
  file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  grp = H5Gopen2(file, "accountant", H5P_DEFAULT);
  dpm_ledger *R = NULL;
  CHECK(dpm_ledger_read_hdf5(&R, grp, err) == 0, "read: %s", err);
  if (R) {
    CHECK(dpm_ledger_size(R) == dpm_ledger_size(B), "sizes %d %d", dpm_ledger_size(R), dpm_ledger_size(B));
    for (int i = 0; i < dpm_ledger_size(B) && i < dpm_ledger_size(R); i++) {
      int k1, k2;
      double q1, q2, s1, s2;
      int64_t c1, c2;
      dpm_ledger_event(B, i, &k1, &q1, &s1, &c1);
      dpm_ledger_event(R, i, &k2, &q2, &s2, &c2);
      CHECK(k1 == k2 && q1 == q2 && s1 == s2 && c1 == c2, "row %d differs", i);
    }
    dpm_ledger_epsilon(R, 1e-5, DPM_ACCT_RDP, &e3, err);
    double eb;
    dpm_ledger_epsilon(B, 1e-5, DPM_ACCT_RDP, &eb, err);
    CHECK(e3 == eb, "eps after round trip %g vs %g", e3, eb);
    dpm_ledger_free(R);
  }
  H5Gclose(grp);
  grp = H5Gopen2(file, "empty", H5P_DEFAULT);
  CHECK(dpm_ledger_read_hdf5(&R, grp, err) == 0 && dpm_ledger_size(R) == 0, "empty round trip: %s", err);
  dpm_ledger_free(R);
  H5Gclose(grp);
  CHECK(dpm_ledger_read_hdf5(&R, file, err) == -1 && R == NULL, "missing ledger accepted");
  H5Fclose(file);
  remove(path);

  /* per-step cost of the training loop's budget check */
  dpm_ledger *P = dpm_ledger_create();
  dpm_ledger_add_gaussian(P, 10.0, 1);
  double t0 = dpm_time();
  for (int t = 0; t < 10000; t++) {
    dpm_ledger_add_sgm(P, 0.004, 1.0, 1);
    dpm_ledger_epsilon(P, 1e-5, DPM_ACCT_RDP, &e1, err);
  }
  double per = (dpm_time() - t0) / 10000;
  printf("ledger add + epsilon per step: %.2f us\n", per * 1e6);
  CHECK(per < 1e-4, "per-step ledger epsilon %g s", per);
  dpm_ledger_free(P);
  dpm_ledger_free(A);
  dpm_ledger_free(B);
  dpm_ledger_free(C);
  dpm_ledger_free(E);
  dpm_ledger_free(L);
}

/* Absurd arguments (issue 18): no crash, no absurd allocation, and an answer that is still an upper bound.
 * Reference: for an integer order a, A >= q^a exp(a(a-1)/(2 sigma^2)) (the k = a term of the binomial sum),
 * so RDP(a) >= (a log q + a(a-1)/(2 sigma^2)) / (a-1). Before the fix the integer orders' sum dropped its
 * largest term at |log A| > 2^58 (RDP 0, epsilon 0.0035 at sigma 1e-9) and the fractional orders' quadrature
 * asked for 2^64 bytes. */
static void test_extremes(void) {
  const double q = 0.01;
  for (int i = 0; i < 3; i++) {
    const double s = (double[]){1e-9, 1e-6, 1e-3}[i];
    for (int a = 2; a <= 1024; a *= 4) {
      double r = dpm_rdp_subsampled_gaussian(q, s, a), lb = (a * log(q) + a * (a - 1.0) / (2 * s * s)) / (a - 1.0);
      CHECK(r >= lb * (1 - 1e-12), "RDP(q %g, sigma %g, order %d) = %g below its lower bound %g", q, s, a, r, lb);
    }
    /* the default orders (fractional ones included: their quadrature would need ~1/sigma^2 nodes) */
    double order, e = dpm_rdp_epsilon(q, s, 1000000000, 1e-5, &order);
    CHECK(e > 1e12, "sigma %g, 1e9 steps: epsilon %g (order %g) must be enormous", s, e, order);
  }
  /* a huge sigma: RDP 0 at every order (no NaN), epsilon the conversion's own minimum */
  CHECK(dpm_rdp_subsampled_gaussian(q, 1e300, 2) == 0, "RDP at sigma 1e300: %g", dpm_rdp_subsampled_gaussian(q, 1e300, 2));
  double e_big = dpm_rdp_epsilon(q, 1e300, 1000, 1e-5, NULL), e_10 = dpm_rdp_epsilon(q, 1e10, 1000, 1e-5, NULL);
  CHECK(fabs(e_big - e_10) < 1e-6 && e_big < 0.004, "sigma 1e300: epsilon %g, sigma 1e10: %g", e_big, e_10);
  /* steps up to 2^63 - 1 */
  double e_max = dpm_rdp_epsilon(q, 1.0, INT64_MAX, 1e-5, NULL);
  CHECK(isfinite(e_max) && e_max > dpm_rdp_epsilon(q, 1.0, (int64_t)1 << 40, 1e-5, NULL), "2^63-1 steps: %g", e_max);
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  test_rdp_orders();
  test_eps_table();
  test_published();
  test_sigma_table();
  test_calibration_grid();
  test_properties();
  test_ledger();
  test_extremes();
  return dpm_test_finish();
}
