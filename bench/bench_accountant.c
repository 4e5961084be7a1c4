/* Time per accountant query (median of repeats): RDP epsilon for a new (q, sigma) (the RDP vector is
 * recomputed each time), the ledger's per-step check, calibration, and the tight accountant.
 * Goals: RDP < 1 ms for 10^4 steps; tight < 50 ms for 10^4 steps at q = 0.004, sigma = 1.
 * Usage: bench_accountant                 the table above
 *        bench_accountant --csv FILE [--quick]
 *            query time against the number of steps T = 10 .. 10^6 (half decades: 10, 32, 100, 316, ...) at
 *            q = 0.004, sigma = 1, delta = 1e-5, for
 *            rdp (dpm_rdp_epsilon, a new sigma each query so nothing is cached), ledger (dpm_ledger_epsilon
 *            on a ledger of T steps, RDP: the cached per-step check of a training loop) and tight
 *            (dpm_pld_epsilon); writes FILE (header accountant,q,sigma,steps,epsilon,median_ms,repeats).
 *            --quick: T up to 10^5 and fewer repeats. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpmpi/privacy/accountant.h"

#include "benchutil.h"

/* Median seconds of one query of accountant `which` (0 rdp, 1 ledger, 2 tight) for T steps, over `reps`
 * repeats; *eps receives the epsilon (tight: the certified upper bound). Returns -1 on an accountant error. */
static int query_time(int which, double q, double sigma, long long T, double delta, int reps, double *sec,
                      double *eps) {
  char err[DPM_ERRLEN];
  double t[64];
  dpm_ledger *L = NULL;
  if (which == 1) {
    L = dpm_ledger_create();
    dpm_ledger_add_sgm(L, q, sigma, T);
  }
  for (int r = 0; r < reps; r++) {
    double t0 = dpm_time();
    if (which == 0) {
      *eps = dpm_rdp_epsilon(q, sigma + 1e-9 * (r + 1), T, delta, NULL); /* new sigma: nothing cached */
    } else if (which == 1) {
      dpm_ledger_epsilon(L, delta, DPM_ACCT_RDP, eps, err);
    } else {
      dpm_pld_event ev = {q, sigma, T};
      dpm_pld_result res;
      if (dpm_pld_epsilon(&ev, 1, delta, &res, err)) {
        fprintf(stderr, "bench_accountant: %s\n", err);
        return -1;
      }
      *eps = res.epsilon_upper;
    }
    t[r] = dpm_time() - t0;
  }
  dpm_ledger_free(L);
  *sec = bench_median(t, reps);
  return 0;
}

/* Query time against T, written to path (see the top of the file), one accountant after the other. */
static int sweep(const char *path, int quick) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "bench_accountant: cannot write %s\n", path);
    return 2;
  }
  fprintf(f, "accountant,q,sigma,steps,epsilon,median_ms,repeats\n");
  const char *names[] = {"rdp", "ledger", "tight"};
  const double q = 0.004, sigma = 1.0, delta = 1e-5;
  const long long Tmax = quick ? 100000 : 1000000;
  for (int which = 0; which < 3; which++) {
    const int reps = which < 2 ? (quick ? 7 : 21) : (quick ? 3 : 7);
    for (int h = 2;; h++) {
      const long long T = llround(pow(10, h / 2.0));
      if (T > Tmax) break;
      double sec, eps;
      if (query_time(which, q, sigma, T, delta, reps, &sec, &eps)) {
        fclose(f);
        return 1;
      }
      fprintf(f, "%s,%g,%g,%lld,%.6f,%.5f,%d\n", names[which], q, sigma, T, eps, 1e3 * sec, reps);
      printf("%-7s T %-8lld eps %9.4f  median %8.4f ms\n", names[which], T, eps, 1e3 * sec);
    }
  }
  fclose(f);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "--csv") == 0 && (argc == 3 || (argc == 4 && strcmp(argv[3], "--quick") == 0)))
    return sweep(argv[2], argc == 4);
  if (argc != 1) {
    fprintf(stderr, "usage: bench_accountant [--csv FILE [--quick]]\n");
    return 2;
  }
  enum { R = 21 };
  double t[R], e = 0;
  char err[DPM_ERRLEN];
  /* RDP, new sigma each time so nothing is cached */
  for (int r = 0; r < R; r++) {
    double t0 = dpm_time();
    e = dpm_rdp_epsilon(0.004, 1.0 + 1e-9 * r, 10000, 1e-5, NULL);
    t[r] = dpm_time() - t0;
  }
  printf("rdp        q 0.004 sigma 1   T 1e4  eps %.4f  median %.3f ms\n", e, 1e3 * bench_median(t, R));
  for (int r = 0; r < R; r++) {
    double t0 = dpm_time();
    e = dpm_rdp_epsilon(0.5, 0.3 + 1e-9 * r, 10000, 1e-5, NULL);
    t[r] = dpm_time() - t0;
  }
  printf("rdp        q 0.5   sigma 0.3 T 1e4  eps %.1f  median %.3f ms\n", e, 1e3 * bench_median(t, R));
  /* ledger per-step check */
  dpm_ledger *L = dpm_ledger_create();
  for (int r = 0; r < R; r++) {
    double t0 = dpm_time();
    for (int k = 0; k < 1000; k++) {
      dpm_ledger_add_sgm(L, 0.004, 1.0, 1);
      dpm_ledger_epsilon(L, 1e-5, DPM_ACCT_RDP, &e, err);
    }
    t[r] = (dpm_time() - t0) / 1000;
  }
  printf("ledger     add 1 step + epsilon (RDP)        median %.2f us\n", 1e6 * bench_median(t, R));
  dpm_ledger_free(L);
  /* calibration */
  double s = 0;
  for (int r = 0; r < 5; r++) {
    double t0 = dpm_time();
    dpm_calibrate_sigma(1.0, 1e-5, 0.004266666666666667, 3515, DPM_ACCT_RDP, &s, err);
    t[r] = dpm_time() - t0;
  }
  printf("calibrate  rdp target 1, T 3515  sigma %.4f  median %.1f ms\n", s, 1e3 * bench_median(t, 5));
  /* tight */
  struct { double q, s; long long T; } c[] = {{0.004, 1.0, 10000}, {256.0 / 60000, 1.1, 14062}, {0.01, 4, 10000},
                                              {1e-4, 5, 1000000}, {0.5, 0.5, 10000}};
  for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
    dpm_pld_event ev = {c[i].q, c[i].s, c[i].T};
    dpm_pld_result res;
    for (int r = 0; r < 5; r++) {
      double t0 = dpm_time();
      dpm_pld_epsilon(&ev, 1, 1e-5, &res, err);
      t[r] = dpm_time() - t0;
    }
    printf("tight      q %-7.4g sigma %-4g T %-7lld eps %.4f (estimate %.4f, error %.2g)  median %.1f ms\n", c[i].q,
           c[i].s, c[i].T, res.epsilon_upper, res.epsilon_estimate, res.error, 1e3 * bench_median(t, 5));
  }
  return 0;
}
