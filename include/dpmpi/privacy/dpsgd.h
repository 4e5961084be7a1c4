/* dpmpi privacy/dpsgd: the privacy-critical pieces of one DP-SGD step, each small and separately tested:
 * Poisson sampling of a rank's shard, per-example clipping thresholds and coefficients, and Gaussian
 * noise addressed by global parameter index. No MPI, no HDF5 (the build enforces it): the step
 * (src/train/step.c) decides which rank calls what.
 */
#ifndef DPMPI_DPSGD_H
#define DPMPI_DPSGD_H

#include <stddef.h>
#include <stdint.h>

#include "dpmpi/core/rng.h"

/* Clipping modes (privacy.clipping) and the per-device threshold split (privacy.device_split). The automatic
 * modes (Bu et al. 2022) normalize instead of clipping: c = C_g / (||g|| + gamma), flat or per layer. The
 * values are stored in checkpoints: new modes go at the end. */
typedef enum {
  DPM_CLIP_FLAT,
  DPM_CLIP_PER_LAYER,
  DPM_CLIP_PER_DEVICE,
  DPM_CLIP_AUTOMATIC,           /* flat: g / (||g|| + gamma) over the whole model, scaled by C */
  DPM_CLIP_AUTOMATIC_PER_LAYER, /* each group g_k / (||g_k|| + gamma), scaled by C / sqrt(groups) */
  DPM_CLIP_COUNT
} dpm_clipping;
typedef enum { DPM_SPLIT_EVEN, DPM_SPLIT_PARAMS } dpm_device_split;

/* 1: one threshold per parameter group (per-layer, automatic per-layer); 0: one per example (flat modes) or per
 * stage (per-device). */
static inline int dpm_clip_per_group(dpm_clipping m) { return m == DPM_CLIP_PER_LAYER || m == DPM_CLIP_AUTOMATIC_PER_LAYER; }
/* 1: the whole model's norm decides (flat, automatic): S > 1 pipeline stages exchange per-example norms. */
static inline int dpm_clip_whole_model(dpm_clipping m) { return m == DPM_CLIP_FLAT || m == DPM_CLIP_AUTOMATIC; }
static inline int dpm_clip_automatic(dpm_clipping m) { return m == DPM_CLIP_AUTOMATIC || m == DPM_CLIP_AUTOMATIC_PER_LAYER; }

/* Poisson sampling: example i (global index) joins step t with probability q, independently, decided by
 * the sampling stream (key, t, i) — the same decision on every grid. Writes the global indices in
 * [begin, end) that joined, in increasing order, to idx (capacity end - begin); returns their count. */
int64_t dpm_sample_shard(const dpm_key *key, uint64_t step, double q, int64_t begin, int64_t end, int64_t *idx);

/* Clipping coefficients for a micro-batch of B examples and G parameter groups, from the exact squared
 * per-example norms sqnorms[g*B + i], with `clip` the threshold from dpm_clip_threshold:
 *   flat, per-device: c_gi = min(1, clip / ||g_i||) with ||g_i||^2 = sum_g sqnorms[g*B + i] (the G groups
 *                     given: the whole model, or this stage's piece), the same for every g;
 *   per-layer:        c_gi = min(1, clip / ||g_gi||).
 * The threshold is applied shrunk by a relative 2^-21 (c = min(1, clip (1 - 2^-21) / ||g||), rounded
 * down), so that c * norm stays below clip even after float32 forms c * g (a rounding of <= 2^-24 per
 * entry, at most twice); a squared
 * norm that is Inf or NaN gives c = 0 (the example adds nothing to those groups). coef has G*B entries. */
void dpm_clip_coefs(const double *sqnorms, int G, int B, dpm_clipping mode, double clip, float *coef);

/* dpm_clip_coefs with a threshold per group and the automatic modes: thr[g] is group g's threshold for the
 * per-group modes, thr[0] the example's (or stage's) for the others; gamma > 0 the automatic modes' stability
 * constant. Automatic: c_gi = thr (1 - 2^-21) / (||g|| + gamma) (rounded down; > 1 for small gradients: every
 * example is normalized), so ||c g|| < thr whatever the gradient, with ||g|| the whole model's (automatic) or
 * the group's (automatic per-layer). A non-finite squared norm gives 0, as for clipping. */
void dpm_clip_coefs_thr(const double *sqnorms, int G, int B, dpm_clipping mode, const double *thr, double gamma,
                        float *coef);

/* The threshold dpm_clip_coefs applies, so that every example's whole-model clipped gradient has L2
 * norm <= clip (the total sensitivity C):
 *   flat, automatic: C;  per-layer, automatic per-layer: C / sqrt(groups) (groups of the whole model);
 *   per-device: C / sqrt(stages) (even) or C * sqrt(stage_params / params) (by parameter count), so that
 *   the squares of the S stage thresholds sum to C^2. */
double dpm_clip_threshold(dpm_clipping mode, double clip, int groups, int stages, size_t stage_params,
                          size_t params, dpm_device_split split);

/* grad[k] += std * z_{j0+k} for k < n, z the noise stream (key, step, j): one N(0, std^2) draw per global
 * parameter index and step, whichever rank and partition computes it. */
void dpm_add_noise(const dpm_key *key, uint64_t step, double std, uint64_t j0, size_t n, float *grad);

/* Noise once (invariant I2) over a data-parallel group of `ranks`: the stage's P parameters (global
 * indices offset .. offset + P) are split into `ranks` contiguous slices and rank r adds the draws of
 * slice r, [P r / ranks, P (r+1) / ranks), to grad (the stage's P local sums); over the group every
 * parameter gets exactly one draw, the one a single rank would add. */
void dpm_add_noise_slice(const dpm_key *key, uint64_t step, double std, int rank, int ranks, size_t offset, size_t P,
                         float *grad);

/* ---- Adaptive thresholds (Andrew et al. 2021; per group as He et al. 2022): docs/accountant.md ----------------
 * Each of K thresholds C_k (one per group for per-layer clipping, per stage for per-device, one for flat) follows
 * a target quantile gamma of its per-example norms. A step releases, next to the noisy gradient sum, the noisy
 * centred counts  b_k = sum_i (1[||g_ik|| <= C_k] - 1/2) + N(0, sigma_b^2)  (every example changes every b_k
 * by exactly 1/2: the count vector's sensitivity is sqrt(K)/2), and then (post-processing)
 *   C_k <- C_k exp(-eta (b_k / (q N) + 1/2 - gamma)),
 * q N the expected batch size, never the realized one. Gradient (noise sigma times its sensitivity) and counts
 * together are one Gaussian mechanism with the noise multiplier
 *   sigma_eff = (sigma^-2 + K / (2 sigma_b)^2)^-1/2,
 * the ledger's. A fraction f of its precision sigma_eff^-2 (its zCDP rho = 1 / (2 sigma_eff^2)) goes to the
 * counts: sigma = sigma_eff / sqrt(1 - f), sigma_b = sqrt(K) sigma_eff / (2 sqrt(f)). */

/* The gradient's noise multiplier sigma and the counts' noise std sigma_b for a release of effective noise
 * multiplier sigma_eff with a fraction f in (0, 1) of it spent on K counts. */
double dpm_adaptive_grad_sigma(double sigma_eff, double f);
double dpm_adaptive_count_sigma(double sigma_eff, double f, int K);
/* The effective noise multiplier of the combined release (gradient noise multiplier sigma, K counts with
 * noise std sigma_b, count sensitivity sqrt(K)/2): (sigma^-2 + K / (4 sigma_b^2))^-1/2. */
double dpm_adaptive_effective_sigma(double sigma, double sigma_b, int K);

/* counts[k] += std * z_{j0+k}, rounded to float32, for k in [lo, hi), the data-parallel rank's slice
 * [K r / ranks, K (r+1) / ranks) of the K counts at global indices j0 .. j0 + K, z the count stream
 * (key, step, DPM_STREAM_COUNT, j): over the group every count gets exactly one draw, the one a single rank
 * would add. A float32 draw added to a half-integer count below 2^24 is exact in double: the sum over the
 * group's ranks is the same number on every grid. */
void dpm_add_count_noise_slice(const dpm_key *key, uint64_t step, double std, int rank, int ranks, size_t j0, size_t K,
                               double *counts);

/* One adaptive update of the K thresholds thr from the noisy centred counts b (see above); expected = q N. */
void dpm_adaptive_update(double *thr, int K, const double *b, double expected, double target_quantile, double eta);

/* The DP update's normalization (invariant I5): 1 / (q n), the expected batch size of Poisson sampling
 * at rate q over n examples, never the realized one (which would depend on the data). */
double dpm_update_scale(double q, int64_t n);

#endif
