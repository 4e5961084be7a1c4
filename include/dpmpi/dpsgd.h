/* dpmpi dpsgd: the privacy-critical pieces of one DP-SGD step, each small and separately tested:
 * Poisson sampling of a rank's shard, per-example clipping coefficients, Gaussian noise addressed by
 * global parameter index, and the SGD-with-momentum update. No MPI here: the training loop (train.c)
 * decides which rank calls what.
 */
#ifndef DPMPI_DPSGD_H
#define DPMPI_DPSGD_H

#include <stddef.h>
#include <stdint.h>

#include "dpmpi/config.h"
#include "dpmpi/rng.h"

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

/* The threshold dpm_clip_coefs applies, so that every example's whole-model clipped gradient has L2
 * norm <= clip (the total sensitivity C):
 *   flat: C;  per-layer: C / sqrt(groups) (groups of the whole model);
 *   per-device: C / sqrt(stages) (even) or C * sqrt(stage_params / params) (by parameter count), so that
 *   the squares of the S stage thresholds sum to C^2. */
double dpm_clip_threshold(dpm_clipping mode, double clip, int groups, int stages, size_t stage_params,
                          size_t params, dpm_device_split split);

/* grad[k] += std * z_{j0+k} for k < n, z the noise stream (key, step, j): one N(0, std^2) draw per global
 * parameter index and step, whichever rank and partition computes it. */
void dpm_add_noise(const dpm_key *key, uint64_t step, double std, uint64_t j0, size_t n, float *grad);

/* SGD with heavy-ball momentum (PyTorch convention): g = scale*grad + wd*p; v = mu*v + g; p -= lr*v. */
typedef struct {
  size_t n;
  float *velocity;
  double momentum, weight_decay;
} dpm_sgd;
void dpm_sgd_init(dpm_sgd *o, size_t n, double momentum, double weight_decay);
void dpm_sgd_free(dpm_sgd *o);
void dpm_sgd_step(dpm_sgd *o, float *params, const float *grad, double scale, double lr);

/* Learning rate at fractional epoch e of a run of total_epochs (schedule, warm-up). */
double dpm_lr_at(const dpm_config *cfg, double e, double total_epochs);

#endif
