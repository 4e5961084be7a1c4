/* Budget planning (src/privacy/budget.c) against the accountant: with a given noise multiplier the run is
 * cut to the most steps whose whole ledger (prior events included) stays within the budget, one step more
 * would exceed it, and a budget that one step exceeds is an error; without one, the calibrated noise
 * spends at most the budget and nearly all of it. */
#include <string.h>

#include "dpmpi/privacy/budget.h"
#include "testing.h"

static double eps_of(const dpm_ledger *prior, double q, double sigma, int64_t steps, dpm_accountant_kind kind) {
  dpm_ledger *L = dpm_ledger_create();
  for (int i = 0; prior && i < dpm_ledger_size(prior); i++) {
    int k;
    double eq, es;
    int64_t c;
    dpm_ledger_event(prior, i, &k, &eq, &es, &c);
    dpm_ledger_append(L, k, eq, es, c);
  }
  dpm_ledger_add_sgm(L, q, sigma, steps);
  double e;
  char err[DPM_ERRLEN];
  if (dpm_ledger_epsilon(L, 1e-5, kind, &e, err)) dpm_fatal("%s", err);
  dpm_ledger_free(L);
  return e;
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  char err[DPM_ERRLEN];
  dpm_ledger *prior = dpm_ledger_create();
  dpm_ledger_add_gaussian(prior, 20.0, 1); /* a DP-PCA release before training */
  for (int kind = 0; kind < 2; kind++) {
    const double q = 0.01, budget = 2.0;
    double sigma;
    int64_t steps;
    /* given sigma: 100000 steps would far exceed the budget */
    CHECK(dpm_budget_plan(prior, q, 100000, 1.0, budget, 1e-5, (dpm_accountant_kind)kind, &sigma, &steps, err) == 0,
          "plan: %s", err);
    CHECK(sigma == 1.0 && steps > 0 && steps < 100000, "kind %d: cut to %lld steps", kind, (long long)steps);
    double e = eps_of(prior, q, 1.0, steps, (dpm_accountant_kind)kind), e1 = eps_of(prior, q, 1.0, steps + 1, (dpm_accountant_kind)kind);
    CHECK(e <= budget && e1 > budget, "kind %d: %lld steps spend %g, one more %g, budget %g", kind, (long long)steps, e, e1,
          budget);
    /* a run that fits is not cut; no budget: never cut */
    CHECK(dpm_budget_plan(prior, q, 10, 1.0, budget, 1e-5, (dpm_accountant_kind)kind, &sigma, &steps, err) == 0 &&
          steps == 10, "a run within the budget keeps its 10 steps (%lld)", (long long)steps);
    CHECK(dpm_budget_plan(prior, q, 100000, 1.0, 0, 1e-5, (dpm_accountant_kind)kind, &sigma, &steps, err) == 0 &&
          steps == 100000, "no budget: no cut");
    /* one step already exceeds */
    CHECK(dpm_budget_plan(prior, 1.0, 10, 0.3, 0.5, 1e-5, (dpm_accountant_kind)kind, &sigma, &steps, err) != 0 &&
          strstr(err, "already exceeds epsilon 0.5"), "one step over the budget is an error: %s", err);
    /* calibration */
    CHECK(dpm_budget_plan(prior, q, 2000, 0, budget, 1e-5, (dpm_accountant_kind)kind, &sigma, &steps, err) == 0 &&
          steps == 2000, "calibrate: %s", err);
    e = eps_of(prior, q, sigma, 2000, (dpm_accountant_kind)kind);
    CHECK(e <= budget && e >= budget - 0.02, "kind %d: calibrated sigma %g spends %g of %g", kind, sigma, e, budget);
    CHECK(dpm_budget_plan(prior, q, 2000, 0, 1e-4, 1e-5, (dpm_accountant_kind)kind, &sigma, &steps, err) != 0 &&
          strstr(err, "cannot calibrate the noise to epsilon"), "an impossible budget: %s", err);
  }
  dpm_ledger_free(prior);
  return dpm_test_finish();
}
