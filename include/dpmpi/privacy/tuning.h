/* Private hyper-parameter selection (Papernot and Steinke 2022, "Hyperparameter Tuning with Renyi
 * Differential Privacy", Theorem 2): run a training job K times, K drawn from the truncated negative
 * binomial D(eta, gamma), each run with hyper-parameters drawn at random from a fixed candidate set, and
 * release only the best run. If one run is (lambda, eps(lambda))-RDP at every order, the selection is
 * (lambda, eps'(lambda))-RDP with
 *   eps'(lambda) = eps(lambda) + min over lambda_hat >= 1 of [(1 + eta)(1 - 1/lambda_hat) eps(lambda_hat)
 *                  + (1 + eta) log(1/gamma) / lambda_hat] + log(E[K]) / (lambda - 1).
 * The minimum over lambda_hat is taken over the given orders and lambda_hat = 1 (any lambda_hat gives a
 * valid bound; at 1 the first term vanishes). D(eta, gamma), eta > -1, gamma in (0, 1), on k = 1, 2, ...:
 *   P(K = k) = (1 - gamma)^k / (gamma^-eta - 1) * prod_{l < k} (l + eta) / (l + 1)   (eta != 0),
 *   P(K = k) = (1 - gamma)^k / (k log(1/gamma))                                      (eta = 0, logarithmic);
 * eta = 1 is the geometric law, E[K] = 1/gamma. Pure computation (no MPI). */
#ifndef DPMPI_PRIVACY_TUNING_H
#define DPMPI_PRIVACY_TUNING_H

#include <stdint.h>

/* E[K] under D(eta, gamma): eta (1 - gamma) / (gamma (1 - gamma^eta)), or (1/gamma - 1) / log(1/gamma). */
double dpm_tuning_mean(double eta, double gamma);

/* The gamma in (0, 1) with dpm_tuning_mean(eta, gamma) = mean (mean > 1; bisection to full precision). */
double dpm_tuning_gamma_for_mean(double eta, double mean);

/* P(K = k) for k >= 1 (computed in log space). */
double dpm_tuning_pmf(double eta, double gamma, int64_t k);

/* One draw of K from D(eta, gamma) by inversion of u in (0, 1) (the caller's uniform: a secret random
 * source, never a public seed, or the selection is not private). */
int64_t dpm_tuning_draw(double eta, double gamma, double u);

/* tuned[i] = eps'(orders[i]) from rdp[i] = eps(orders[i]) (one run's RDP, all orders > 1). */
void dpm_tuning_rdp(const double *orders, const double *rdp, int n, double eta, double gamma, double *tuned);

/* Epsilon at delta of the selection over runs of `steps` DP-SGD steps (q, sigma), default orders, Balle
 * et al.'s conversion; *best_order gets the minimizing order. NaN for invalid arguments. */
double dpm_tuning_epsilon(double q, double sigma, int64_t steps, double delta, double eta, double gamma,
                          double *best_order);

/* The smallest noise multiplier whose tuning epsilon is <= target (bisection to a relative 1e-10);
 * returns 0 and sets *sigma, or -1 when no sigma up to 1e6 reaches it (target below the tuning's floor:
 * log(E[K]) and log(1/gamma) terms do not shrink with the noise). */
int dpm_tuning_calibrate_sigma(double target, double delta, double q, int64_t steps, double eta, double gamma,
                               double *sigma);

#endif
