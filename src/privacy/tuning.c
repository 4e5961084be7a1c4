/* Private hyper-parameter selection: the Renyi DP bound of Papernot and Steinke 2022 (Theorem 2) for the
 * best of K runs, K truncated negative binomial (dpmpi/privacy/tuning.h). */
#include "dpmpi/privacy/tuning.h"

#include <math.h>
#include <stdlib.h>

#include "dpmpi/core/common.h"
#include "dpmpi/privacy/accountant.h"

double dpm_tuning_mean(double eta, double gamma) {
  if (!(eta > -1) || !(gamma > 0 && gamma < 1)) return NAN;
  if (eta == 0) return (1 / gamma - 1) / log(1 / gamma);
  return eta * (1 - gamma) / (gamma * -expm1(eta * log(gamma)));
}

double dpm_tuning_gamma_for_mean(double eta, double mean) {
  if (!(eta > -1) || !(mean > 1) || !isfinite(mean)) return NAN;
  double lo = 0, hi = 1; /* E[K] falls from inf (gamma -> 0) to 1 (gamma -> 1) */
  for (int it = 0; it < 200; it++) {
    double mid = 0.5 * (lo + hi);
    if (mid == lo || mid == hi) break;
    if (dpm_tuning_mean(eta, mid) > mean) lo = mid; else hi = mid;
  }
  return 0.5 * (lo + hi);
}

double dpm_tuning_pmf(double eta, double gamma, int64_t k) {
  if (k < 1 || !(eta > -1) || !(gamma > 0 && gamma < 1)) return 0;
  const double kk = (double)k;
  if (eta == 0) return exp(kk * log1p(-gamma) - log(kk) - log(log(1 / gamma)));
  /* prod_{l < k} (l + eta) / (l + 1) = Gamma(k + eta) / (Gamma(eta) k!), its sign that of eta, as is
     gamma^-eta - 1's: the ratio is positive */
  return exp(kk * log1p(-gamma) + lgamma(kk + eta) - lgamma(eta) - /* lgamma: log |Gamma| */
             lgamma(kk + 1) - log(fabs(expm1(-eta * log(gamma)))));
}

int64_t dpm_tuning_draw(double eta, double gamma, double u) {
  double cdf = 0;
  for (int64_t k = 1;; k++) { /* the pmf tested against the definition; past its underflow u is in the tail */
    double p = dpm_tuning_pmf(eta, gamma, k);
    cdf += p;
    if (u < cdf || (p == 0 && k > 1) || k >= ((int64_t)1 << 40)) return k;
  }
}

void dpm_tuning_rdp(const double *orders, const double *rdp, int n, double eta, double gamma, double *tuned) {
  const double lg = log(1 / gamma), c = 1 + eta;
  double best = c * lg; /* lambda_hat = 1 */
  for (int j = 0; j < n; j++)
    if (isfinite(rdp[j])) best = fmin(best, c * (1 - 1 / orders[j]) * rdp[j] + c * lg / orders[j]);
  const double lmean = log(dpm_tuning_mean(eta, gamma));
  for (int i = 0; i < n; i++) tuned[i] = rdp[i] + best + lmean / (orders[i] - 1);
}

double dpm_tuning_epsilon(double q, double sigma, int64_t steps, double delta, double eta, double gamma,
                          double *best_order) {
  if (!(q > 0 && q <= 1) || !(sigma > 0) || steps < 0 || !(delta > 0 && delta < 1) || !(eta > -1) ||
      !(gamma > 0 && gamma < 1))
    return NAN;
  const double *orders;
  int n = dpm_rdp_default_orders(&orders);
  double *rdp = dpm_malloc(sizeof(double) * (size_t)n), *tuned = dpm_malloc(sizeof(double) * (size_t)n);
  dpm_rdp_vector(q, sigma, orders, n, rdp);
  for (int i = 0; i < n; i++) rdp[i] *= (double)steps;
  dpm_tuning_rdp(orders, rdp, n, eta, gamma, tuned);
  double eps = dpm_rdp_to_epsilon(orders, tuned, n, delta, 0, best_order);
  dpm_free(rdp);
  dpm_free(tuned);
  return eps;
}

int dpm_tuning_calibrate_sigma(double target, double delta, double q, int64_t steps, double eta, double gamma,
                               double *sigma) {
  double hi = 1e6;
  if (!(dpm_tuning_epsilon(q, hi, steps, delta, eta, gamma, NULL) <= target)) return -1;
  double lo = 1e-3;
  while (dpm_tuning_epsilon(q, lo, steps, delta, eta, gamma, NULL) <= target && lo > 1e-12) hi = lo, lo /= 10;
  for (int it = 0; it < 200 && hi - lo > 1e-10 * hi; it++) { /* eps falls with sigma */
    double mid = sqrt(lo * hi);
    if (dpm_tuning_epsilon(q, mid, steps, delta, eta, gamma, NULL) <= target) hi = mid; else lo = mid;
  }
  *sigma = hi;
  return 0;
}
