/* Time per accountant query (median of repeats): RDP epsilon for a new (q, sigma) (the RDP vector is
 * recomputed each time), the ledger's per-step check, calibration, and the tight accountant.
 * Goals: RDP < 1 ms for 10^4 steps; tight < 50 ms for 10^4 steps at q = 0.004, sigma = 1. */
#include <stdio.h>
#include <stdlib.h>

#include "dpmpi/accountant.h"

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *t, int n) {
  qsort(t, (size_t)n, sizeof(double), cmp);
  return t[n / 2];
}

int main(void) {
  enum { R = 21 };
  double t[R], e = 0;
  char err[DPM_ERRLEN];
  /* RDP, new sigma each time so nothing is cached */
  for (int r = 0; r < R; r++) {
    double t0 = dpm_time();
    e = dpm_rdp_epsilon(0.004, 1.0 + 1e-9 * r, 10000, 1e-5, NULL);
    t[r] = dpm_time() - t0;
  }
  printf("rdp        q 0.004 sigma 1   T 1e4  eps %.4f  median %.3f ms\n", e, 1e3 * median(t, R));
  for (int r = 0; r < R; r++) {
    double t0 = dpm_time();
    e = dpm_rdp_epsilon(0.5, 0.3 + 1e-9 * r, 10000, 1e-5, NULL);
    t[r] = dpm_time() - t0;
  }
  printf("rdp        q 0.5   sigma 0.3 T 1e4  eps %.1f  median %.3f ms\n", e, 1e3 * median(t, R));
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
  printf("ledger     add 1 step + epsilon (RDP)        median %.2f us\n", 1e6 * median(t, R));
  dpm_ledger_free(L);
  /* calibration */
  double s = 0;
  for (int r = 0; r < 5; r++) {
    double t0 = dpm_time();
    dpm_calibrate_sigma(1.0, 1e-5, 0.004266666666666667, 3515, DPM_ACCT_RDP, &s, err);
    t[r] = dpm_time() - t0;
  }
  printf("calibrate  rdp target 1, T 3515  sigma %.4f  median %.1f ms\n", s, 1e3 * median(t, 5));
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
    printf("tight      q %-7.4g sigma %-4g T %-7lld eps %.4f (upper %.4f, error %.2g)  median %.1f ms\n", c[i].q,
           c[i].s, c[i].T, res.epsilon, res.epsilon_upper, res.error, 1e3 * median(t, 5));
  }
  return 0;
}
