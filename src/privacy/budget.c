/* Budget planning: the noise multiplier and the length of a run under an epsilon budget, after what the
 * ledger already holds. See dpmpi/privacy/budget.h. */
#include "dpmpi/privacy/budget.h"

#include <stdio.h>

int dpm_budget_plan(const dpm_ledger *prior, double q, int64_t steps, double sigma_given, double epsilon, double delta,
                    dpm_accountant_kind kind, double *sigma, int64_t *steps_out, char err[DPM_ERRLEN]) {
  char inner[DPM_ERRLEN];
  *steps_out = steps;
  if (sigma_given > 0) {
    *sigma = sigma_given;
    if (!(epsilon > 0)) return 0;
    int64_t allowed = 0;
    if (dpm_ledger_max_steps(prior, q, sigma_given, epsilon, delta, kind, &allowed, inner))
      dpm_fatal("accountant: %s", inner);
    if (allowed < 1)
      return dpm_err(err, "one step at noise_multiplier %g and sampling rate %g already exceeds epsilon %g", sigma_given,
                     q, epsilon);
    if (allowed < steps) *steps_out = allowed;
    return 0;
  }
  if (dpm_calibrate_sigma_after(prior, epsilon, delta, q, steps, kind, sigma, inner))
    return dpm_err(err, "cannot calibrate the noise to epsilon %g: %s", epsilon, inner);
  return 0;
}
