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

/* Clipping modes (privacy.clipping) and the per-device threshold split (privacy.device_split). */
typedef enum { DPM_CLIP_FLAT, DPM_CLIP_PER_LAYER, DPM_CLIP_PER_DEVICE } dpm_clipping;
typedef enum { DPM_SPLIT_EVEN, DPM_SPLIT_PARAMS } dpm_device_split;

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

/* Noise once (invariant I2) over a data-parallel group of `ranks`: the stage's P parameters (global
 * indices offset .. offset + P) are split into `ranks` contiguous slices and rank r adds the draws of
 * slice r, [P r / ranks, P (r+1) / ranks), to grad (the stage's P local sums); over the group every
 * parameter gets exactly one draw, the one a single rank would add. */
void dpm_add_noise_slice(const dpm_key *key, uint64_t step, double std, int rank, int ranks, size_t offset, size_t P,
                         float *grad);

/* The DP update's normalization (invariant I5): 1 / (q n), the expected batch size of Poisson sampling
 * at rate q over n examples, never the realized one (which would depend on the data). */
double dpm_update_scale(double q, int64_t n);

#endif
