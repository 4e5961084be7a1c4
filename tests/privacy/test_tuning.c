/* Private hyper-parameter selection (src/privacy/tuning.c, Papernot and Steinke 2022, Theorem 2) against
 * independent computations: the law D(eta, gamma) summed in long double from its definition (mass, mean,
 * the geometric case in closed form), inversion draws over a stratified grid of uniforms, and the tuned RDP
 * and epsilon of the Gaussian mechanism (q = 1: one run's RDP is T lambda / (2 sigma^2) exactly) recomputed
 * in long double, with the continuous optimum over lambda_hat as a lower bound. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "dpmpi/privacy/accountant.h"
#include "dpmpi/privacy/tuning.h"
#include "testing.h"

/* P(K = k) from the definition, the product written out in long double */
static long double pmf_ref(long double eta, long double gamma, int k) {
  long double p = powl(1 - gamma, k);
  if (eta == 0) return p / ((long double)k * logl(1 / gamma));
  p /= powl(gamma, -eta) - 1;
  for (int l = 0; l < k; l++) p *= (l + eta) / (l + 1);
  return p;
}

static void test_law(void) {
  const double etas[] = {-0.5, 0, 0.5, 1, 2}, gammas[] = {0.3, 0.05};
  for (int a = 0; a < 5; a++)
    for (int b = 0; b < 2; b++) {
      const double eta = etas[a], gamma = gammas[b];
      long double mass = 0, mean = 0, worst = 0;
      for (int k = 1; k < 4000; k++) {
        long double p = pmf_ref(eta, gamma, k);
        mass += p, mean += k * p;
        double got = dpm_tuning_pmf(eta, gamma, k);
        /* the log-space formula sums terms of size ~ lgamma(k + 1): its error is a few ulps of that */
        long double scale = 4 * 2.220446049250313e-16L * (lgammal(k + 1.0L) + k * fabsl(log1pl(-gamma)) + 10);
        if (p > 1e-300L) worst = fmaxl(worst, fabsl(got - p) / p / scale);
      }
      CHECK(fabsl(mass - 1) < 1e-12L, "eta %g gamma %g: the law's mass %.15Lg", eta, gamma, mass);
      CHECK(worst < 1, "eta %g gamma %g: pmf vs definition, worst error / its bound %Lg", eta, gamma, worst);
      CHECK_CLOSE(dpm_tuning_mean(eta, gamma), (double)mean, 1e-12, 0, "E[K] vs the summed definition");
      double g2 = dpm_tuning_gamma_for_mean(eta, (double)mean);
      CHECK_CLOSE(g2, gamma, 1e-12, 0, "gamma_for_mean inverts the mean");
      /* inversion: a stratified grid of N uniforms falls into k about N P(K = k) times (+-1) */
      const int N = 200000;
      int64_t cnt[64] = {0}, big = 0;
      for (int i = 0; i < N; i++) {
        int64_t k = dpm_tuning_draw(eta, gamma, (i + 0.5) / N);
        if (k < 64) cnt[k]++; else big++;
      }
      int bad = 0;
      long double tail = 1;
      for (int k = 1; k < 64; k++) {
        long double p = pmf_ref(eta, gamma, k);
        tail -= p;
        if (fabsl(cnt[k] - N * p) > 1.0L + 1e-6L * N) bad++;
      }
      CHECK(bad == 0 && fabsl(big - N * tail) <= 1.0L + 1e-6L * N,
            "eta %g gamma %g: inversion draws follow the law (%d bins off, tail %lld vs %.1Lf)", eta, gamma, bad,
            (long long)big, N * tail);
    }
  /* the geometric case in closed form: P(K = k) = gamma (1 - gamma)^(k - 1), E[K] = 1/gamma */
  for (int k = 1; k < 50; k++)
    CHECK_CLOSE(dpm_tuning_pmf(1, 0.1, k), 0.1 * pow(0.9, k - 1), 1e-13, 0, "geometric pmf");
  CHECK_CLOSE(dpm_tuning_mean(1, 0.1), 10.0, 1e-14, 0, "geometric mean 1/gamma");
  CHECK_CLOSE(dpm_tuning_gamma_for_mean(1, 25), 0.04, 1e-12, 0, "geometric: gamma = 1/mean");
}

/* Balle et al. 2020 Thm 21 in long double, over the same orders */
static long double eps_balle(const double *o, const long double *r, int n, long double delta) {
  long double best = INFINITY;
  for (int i = 0; i < n; i++) {
    long double a = o[i];
    long double e = r[i] + logl((a - 1) / a) - (logl(delta) + logl(a)) / (a - 1);
    if (e < best) best = e;
  }
  return best < 0 ? 0 : best;
}

static void test_gaussian(void) {
  const double *orders;
  int n = dpm_rdp_default_orders(&orders);
  const double sigmas[] = {2, 5, 20}, etas[] = {0, 1, 2}, means[] = {3, 10, 100};
  for (int s = 0; s < 3; s++)
    for (int e = 0; e < 3; e++)
      for (int m = 0; m < 3; m++) {
        const int64_t T = 50;
        const double sigma = sigmas[s], eta = etas[e], gamma = dpm_tuning_gamma_for_mean(eta, means[m]);
        const long double rho = (long double)T / (2.0L * sigma * sigma), c = 1.0L + eta, L = logl(1.0L / gamma);
        /* the lambda_hat term: min over {1} and the orders, and the continuous optimum below it */
        long double best = c * L;
        for (int j = 0; j < n; j++) {
          long double lh = orders[j], v = c * (1 - 1 / lh) * rho * lh + c * L / lh;
          if (v < best) best = v;
        }
        long double lstar = sqrtl(L / rho), cont = lstar >= 1 ? c * (2 * sqrtl(L * rho) - rho) : c * L;
        CHECK(best >= cont - 1e-12L && best <= cont * 1.05L + 1e-9L,
              "the discrete lambda_hat minimum %Lg is within 5%% above the continuous one %Lg", best, cont);
        long double *ref = malloc(sizeof(long double) * (size_t)n);
        double *rdp = malloc(sizeof(double) * (size_t)n), *tuned = malloc(sizeof(double) * (size_t)n);
        long double lmean = logl(means[m]);
        for (int i = 0; i < n; i++) {
          rdp[i] = (double)(rho * orders[i]);
          ref[i] = rho * orders[i] + best + lmean / (orders[i] - 1);
        }
        dpm_tuning_rdp(orders, rdp, n, eta, gamma, tuned);
        long double worst = 0;
        for (int i = 0; i < n; i++) worst = fmaxl(worst, fabsl(tuned[i] - ref[i]) / ref[i]);
        CHECK(worst < 1e-12L, "sigma %g eta %g mean %g: tuned RDP vs long double, worst relative %Lg", sigma, eta,
              means[m], worst);
        /* epsilon through the accountant (q = 1 is the Gaussian, RDP exact) */
        double got = dpm_tuning_epsilon(1.0, sigma, T, 1e-5, eta, gamma, NULL);
        long double want = eps_balle(orders, ref, n, 1e-5L);
        CHECK_CLOSE(got, (double)want, 1e-9, 0, "tuning epsilon of the Gaussian vs long double");
        double one = dpm_rdp_epsilon(1.0, sigma, T, 1e-5, NULL);
        CHECK(got > one, "the selection costs more than one run (%g vs %g)", got, one);
        free(ref), free(rdp), free(tuned);
      }
}

static void test_dpsgd(void) {
  /* more runs cost more; more noise costs less; calibration reaches its target */
  const double q = 256.0 / 60000, d = 1e-5;
  double e3 = dpm_tuning_epsilon(q, 1.0, 2000, d, 1, 1 / 3.0, NULL);
  double e10 = dpm_tuning_epsilon(q, 1.0, 2000, d, 1, 0.1, NULL);
  double e10s = dpm_tuning_epsilon(q, 1.5, 2000, d, 1, 0.1, NULL);
  CHECK(e3 < e10 && e10s < e10, "monotone: mean 3 %g < mean 10 %g; sigma 1.5 %g < sigma 1 %g", e3, e10, e10s, e10);
  double sigma = 0;
  CHECK(dpm_tuning_calibrate_sigma(3.0, d, q, 2000, 1, 0.1, &sigma) == 0, "calibration to epsilon 3 succeeds");
  double e = dpm_tuning_epsilon(q, sigma, 2000, d, 1, 0.1, NULL);
  CHECK(e <= 3.0 && e > 3.0 - 1e-6, "the calibrated sigma %g spends %.9g of 3", sigma, e);
  CHECK(dpm_tuning_calibrate_sigma(0.01, d, q, 2000, 1, 0.01, &sigma) != 0,
        "a target below the selection's floor cannot be calibrated");
  CHECK(isnan(dpm_tuning_epsilon(q, 1, 10, d, -1, 0.1, NULL)) && isnan(dpm_tuning_epsilon(q, 1, 10, d, 1, 1, NULL)),
        "invalid eta or gamma give NaN");
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  test_law();
  test_gaussian();
  test_dpsgd();
  return dpm_test_finish();
}
