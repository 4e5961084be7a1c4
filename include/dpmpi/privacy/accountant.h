/* dpmpi privacy/accountant: the privacy cost of DP-SGD, computed from a ledger of what ran. No MPI, no files.
 *
 * The mechanism is the Poisson-subsampled Gaussian with sensitivity 1 under add/remove-one adjacency:
 * every step, each example joins with probability q, and N(0, sigma^2) noise is added to the clipped sum
 * (sigma is the noise multiplier, noise std / clipping norm). Two accountants:
 *  - RDP (Mironov, Talwar, Zhang 2019): exact Renyi DP at integer orders, the MTZ series at fractional
 *    orders, over a default order set (1.1..10.9 by 0.1, 11..63, 72..1024), converted to (eps, delta)
 *    with Balle et al. 2020 Thm 21 (or the classic eps = RDP - log(delta)/(a-1), for old papers).
 *  - tight (DPM_ACCT_TIGHT): the privacy loss distribution discretized with the "connect the dots"
 *    pessimistic rule and self-composed by FFT (src/privacy/pld.c); returns a certified upper bound.
 * See docs/accountant.md for the method and error bounds.
 *
 * Typical use by a training loop:
 *     dpm_ledger *L = dpm_ledger_create();
 *     for (t = 0; t < T; t++) {
 *       ... one DP-SGD step ...
 *       dpm_ledger_add_sgm(L, q, sigma, 1);              // O(1) after the first step of a phase
 *       dpm_ledger_epsilon(L, 1e-5, DPM_ACCT_RDP, &eps, err);   // microseconds
 *     }
 *     dpm_ledger_write_hdf5(L, checkpoint_group, err);   // its file form: dpmpi/io/ledger_h5.h
 *     dpm_ledger_free(L);
 * Noise for a target:  dpm_calibrate_sigma(3.0, 1e-5, q, T, DPM_ACCT_RDP, &sigma, err).
 */
#ifndef DPMPI_ACCOUNTANT_H
#define DPMPI_ACCOUNTANT_H

#include <stdint.h>

#include "dpmpi/core/common.h"

typedef enum { DPM_ACCT_RDP, DPM_ACCT_TIGHT } dpm_accountant_kind;

/* "rdp" / "tight" <-> kind. dpm_accountant_parse returns -1 for an unknown name. */
const char *dpm_accountant_name(dpm_accountant_kind kind);
int dpm_accountant_parse(const char *name, dpm_accountant_kind *kind);

/* ---- RDP ------------------------------------------------------------------------------------- */

/* The default order set (sorted ascending, all > 1); returns its size. The array is static. */
int dpm_rdp_default_orders(const double **orders);

/* Renyi DP at `order` (> 1) of ONE step of the Poisson-subsampled Gaussian with sampling rate q in
 * (0, 1] and noise multiplier sigma > 0: log(A_order) / (order - 1), A = E_{N(0,s^2)}[(1-q+q L)^order].
 * Integer orders: exact binomial sum (of A - 1, so tiny values keep full relative precision).
 * Fractional orders: the same integral by a trapezoid rule that converges geometrically (analytic
 * integrand), checked against the Mironov-Talwar-Zhang series and 40-digit references to 1e-9. q = 1: the Gaussian, order / (2 sigma^2). Works in log space: no overflow for sigma >= 0.01
 * and orders up to 1e4. Returns +inf if the series does not converge (a safe value). */
double dpm_rdp_subsampled_gaussian(double q, double sigma, double order);

/* log(A) at a fractional order by the Mironov-Talwar-Zhang series (summed until the alternating remainder
 * is below 1e-12 of |A - 1|). An independent second implementation, used by the tests; it can be slow
 * (many terms) for large sigma and q >= 0.1, and returns +inf when it does not converge. */
double dpm_rdp_log_a_series(double q, double sigma, double order);

/* rdp[i] = dpm_rdp_subsampled_gaussian(q, sigma, orders[i]) for i < n. */
void dpm_rdp_vector(double q, double sigma, const double *orders, int n, double *rdp);

/* (eps, delta) from total RDP values rdp[i] at orders[i]: the minimum over orders of
 *   Balle et al. 2020 Thm 21:  rdp + log((a-1)/a) - (log(delta) + log(a)) / (a-1)   (classic = 0), or
 *   classic (Mironov 2017):    rdp - log(delta) / (a-1)                              (classic = 1),
 * clamped at 0. Orders whose rdp is +inf or NaN are skipped; returns +inf if none is finite.
 * *best_order (if non-NULL) receives the minimizing order (NaN if none). delta in (0, 1). */
double dpm_rdp_to_epsilon(const double *orders, const double *rdp, int n, double delta, int classic,
                          double *best_order);

/* Epsilon of `steps` steps of the subsampled Gaussian with the default orders and Balle's conversion.
 * Assumes valid arguments (q in (0,1], sigma > 0, steps >= 0, delta in (0,1)); returns NaN otherwise. */
double dpm_rdp_epsilon(double q, double sigma, int64_t steps, double delta, double *best_order);

/* Same with explicit orders (n of them) and conversion (classic = 0: Balle, 1: classic). */
double dpm_rdp_epsilon_orders(double q, double sigma, int64_t steps, double delta, const double *orders,
                              int n, int classic, double *best_order);

/* ---- tight accountant (src/privacy/pld.c) ------------------------------------------------------------ */

/* One event for the tight accountant: `count` steps of the subsampled Gaussian (q, sigma);
 * q = 1 is a plain Gaussian release with sigma = noise std / sensitivity. */
typedef struct {
  double q, sigma;
  int64_t count;
} dpm_pld_event;

/* epsilon_upper is THE epsilon (what training, budgets, calibration, exports and `dpmpi privacy` report);
 * epsilon_estimate is a secondary figure, never a guarantee: it can be below the true epsilon (on
 * ../shared/refs/exact_single_step.csv by up to 0.46%). */
typedef struct {
  double epsilon_upper;    /* certified upper bound (connect-the-dots PLD on the grid h, pessimistic tails) */
  double epsilon_estimate; /* Richardson extrapolation of the grids h and 2h: NOT an upper bound */
  double error;            /* stated discretization error: epsilon_upper(2h) - epsilon_upper(h) */
  double grid;             /* h, the loss-grid width used */
} dpm_pld_result;

/* Epsilon for `delta` of the composition of the n events, both adjacency directions (add and remove),
 * worse one reported. Returns 0, or -1 with a message in err for invalid events. epsilon may be +inf
 * only when delta is below the mass of infinite privacy loss, which cannot happen for these events. */
int dpm_pld_epsilon(const dpm_pld_event *events, int n, double delta, dpm_pld_result *res,
                    char err[DPM_ERRLEN]);

/* ---- ledger ---------------------------------------------------------------------------------- */

typedef struct dpm_ledger dpm_ledger; /* opaque: a list of events, oldest first, with cached RDP */

dpm_ledger *dpm_ledger_create(void);
void dpm_ledger_free(dpm_ledger *ledger); /* NULL is fine */

/* Record `steps` steps of the Poisson-subsampled Gaussian (q in (0,1], sigma > 0, steps >= 0; invalid
 * values are an internal error). Merges with the last event if it is a segment with the same q and
 * sigma (bitwise equal), so adding one step per training step costs O(1); a new (q, sigma) costs one
 * RDP vector (well under a millisecond). */
void dpm_ledger_add_sgm(dpm_ledger *ledger, double q, double sigma, int64_t steps);

/* Record `count` releases of a Gaussian mechanism with noise std / L2 sensitivity = sigma_over_sensitivity
 * (DP-PCA, adaptive clipping's count query). Never merged with subsampled segments. */
void dpm_ledger_add_gaussian(dpm_ledger *ledger, double sigma_over_sensitivity, int64_t count);

/* Number of events, and event i (kind 0 = subsampled Gaussian segment, 1 = Gaussian release). */
int dpm_ledger_size(const dpm_ledger *ledger);
void dpm_ledger_event(const dpm_ledger *ledger, int i, int *kind, double *q, double *sigma,
                      int64_t *count);

/* Epsilon of everything in the ledger at `delta` in (0, 1). An empty ledger gives 0. RDP: sums cached
 * per-event RDP vectors (cost O(events x orders), a few microseconds); tight: the certified upper bound
 * of dpm_pld_epsilon. *eps may be +inf (a valid, if useless, answer); the caller decides. Returns 0,
 * or -1 with a message in err (bad delta). */
int dpm_ledger_epsilon(const dpm_ledger *ledger, double delta, dpm_accountant_kind kind, double *eps,
                       char err[DPM_ERRLEN]);

/* The tight accountant's full result for everything in the ledger (bound, estimate, error, grid; all 0 for an
 * empty ledger): the same computation as dpm_ledger_epsilon(..., DPM_ACCT_TIGHT, ...), whose epsilon is
 * res->epsilon_upper. Returns 0, or -1 with a message in err (bad delta). */
int dpm_ledger_pld(const dpm_ledger *ledger, double delta, dpm_pld_result *res, char err[DPM_ERRLEN]);

/* The largest number of further steps of (q, sigma) that can be appended to the ledger with epsilon at
 * `delta` still <= target_eps (0 if not even one step fits; capped at 2^62). Returns 0 or -1 (bad input). */
int dpm_ledger_max_steps(const dpm_ledger *ledger, double q, double sigma, double target_eps, double delta,
                         dpm_accountant_kind kind, int64_t *steps, char err[DPM_ERRLEN]);

/* Append one event as it is, without merging it into the last row (for readers of a stored ledger):
 * kind 0 = subsampled Gaussian (q, sigma) x count steps, 1 = Gaussian release (q = 1). */
void dpm_ledger_append(dpm_ledger *ledger, int kind, double q, double sigma, int64_t count);

/* ---- calibration ----------------------------------------------------------------------------- */

/* The smallest sigma (to a relative tolerance of 1e-4, or epsilon tolerance 1e-3) for which `steps`
 * steps at rate q have epsilon <= target_eps at delta. Guarantees eps(sigma) <= target_eps and
 * eps(sigma) >= target_eps - 0.01. Searches sigma in [0.01, 1e4]; an unreachable target (eps above it
 * even at sigma = 1e4, or met already at sigma = 0.01) and invalid arguments return -1 with a message. */
int dpm_calibrate_sigma(double target_eps, double delta, double q, int64_t steps, dpm_accountant_kind kind,
                        double *sigma, char err[DPM_ERRLEN]);

/* The same calibration after earlier releases: the smallest sigma for which the events of `prior` (for
 * example a DP-PCA Gaussian release) followed by `steps` steps at rate q have epsilon <= target_eps at
 * delta (composed by the chosen accountant, not by adding epsilons). Same tolerances and guarantees as
 * dpm_calibrate_sigma, which is this with prior = NULL. A target the prior events alone already reach is
 * unreachable (-1 with a message). */
int dpm_calibrate_sigma_after(const dpm_ledger *prior, double target_eps, double delta, double q, int64_t steps,
                              dpm_accountant_kind kind, double *sigma, char err[DPM_ERRLEN]);

/* The largest number of steps of (q, sigma) with epsilon <= target_eps at delta (0 if none fits).
 * Returns 0 or -1 with a message for invalid arguments. */
int dpm_calibrate_steps(double target_eps, double delta, double q, double sigma, dpm_accountant_kind kind,
                        int64_t *steps, char err[DPM_ERRLEN]);

/* Checks the (q, sigma, delta, steps) ranges shared by the API and the CLI; 0 or -1 with a message. */
int dpm_accountant_check_args(double q, double sigma, double delta, int64_t steps, char err[DPM_ERRLEN]);

#endif
