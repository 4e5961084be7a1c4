/* dpmpi privacy/budget: what a run may spend. Given the events already in the ledger (DP-PCA, earlier
 * segments) and a run of `steps` Poisson-subsampled Gaussian steps at rate q:
 *   - a given noise multiplier (sigma_given > 0): sigma = sigma_given; with a budget epsilon > 0,
 *     *steps_out = the most of the steps that keep the whole ledger within epsilon at delta (training stops
 *     before the budget would be exceeded, never after); an error if even one step exceeds it;
 *   - no noise multiplier (sigma_given = 0): sigma is calibrated so that the whole ledger after the steps
 *     spends at most epsilon (the certified bound for the tight accountant).
 * Returns 0, or -1 with err (a user error: the caller names the job file). No MPI, no files. */
#ifndef DPMPI_PRIVACY_BUDGET_H
#define DPMPI_PRIVACY_BUDGET_H

#include <stdint.h>

#include "dpmpi/privacy/accountant.h"

int dpm_budget_plan(const dpm_ledger *prior, double q, int64_t steps, double sigma_given, double epsilon, double delta,
                    dpm_accountant_kind kind, double *sigma, int64_t *steps_out, char err[DPM_ERRLEN]);

#endif
