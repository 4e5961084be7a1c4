/* Poisson sampling, clipping thresholds and coefficients, and Gaussian noise: see dpmpi/privacy/dpsgd.h. */
#include "dpmpi/privacy/dpsgd.h"

#include <math.h>
#include <string.h>

#include "dpmpi/core/common.h"

int64_t dpm_sample_shard(const dpm_key *key, uint64_t step, double q, int64_t begin, int64_t end, int64_t *idx) {
  int64_t n = 0;
  if (q >= 1.0) {
    for (int64_t i = begin; i < end; i++) idx[n++] = i;
    return n;
  }
  /* floor(q * 2^64): the realized rate is q rounded down by < 2^-64, never above the accounted q */
  const uint64_t threshold = (uint64_t)ldexp(q, 64);
  /* example i decides by word i of the stream (key, step, SAMPLE), in chunks of the vectorized key stream */
  uint64_t r[1024];
  for (int64_t i = begin; i < end; i += 1024) {
    const size_t len = (size_t)(end - i < 1024 ? end - i : 1024);
    dpm_rng_words(key, step, DPM_STREAM_SAMPLE, (uint64_t)i, len, r);
    for (size_t e = 0; e < len; e++)
      if (r[e] < threshold) idx[n++] = i + (int64_t)e;
  }
  return n;
}

double dpm_clip_threshold(dpm_clipping mode, double clip, int groups, int stages, size_t stage_params,
                          size_t params, dpm_device_split split) {
  switch (mode) {
    case DPM_CLIP_FLAT: case DPM_CLIP_AUTOMATIC: return clip;
    case DPM_CLIP_PER_LAYER: case DPM_CLIP_AUTOMATIC_PER_LAYER: return clip / sqrt((double)groups);
    case DPM_CLIP_PER_DEVICE:
      if (split == DPM_SPLIT_EVEN || params == 0) return clip / sqrt((double)stages);
      return clip * sqrt((double)stage_params / (double)params);
    case DPM_CLIP_COUNT: break;
  }
  return clip;
}

/* The coefficient min(1, threshold (1 - CLIP_MARGIN) / norm), rounded down to float, so that the
 * clipped gradient as float32 forms it (each entry c g_k rounded once or twice, relative 2^-24 each)
 * still has norm below the threshold. A norm that is not finite (Inf or NaN: the example's activations
 * overflowed) gives 0: the example contributes nothing to the group. */
#define CLIP_MARGIN 0x1p-21
static float clip_coef(double sqnorm, double threshold) {
  if (!isfinite(sqnorm)) return 0.0f;
  /* the margin applies below the threshold too: a gradient of norm just under it, added unscaled, would
     come out of float32 up to 2^-23 above it */
  const double c = threshold * (1.0 - CLIP_MARGIN) / sqrt(sqnorm);
  if (c >= 1.0) return 1.0f;
  float f = (float)c;
  if ((double)f > c) f = nextafterf(f, 0.0f);
  return f;
}

/* Automatic clipping's coefficient threshold (1 - CLIP_MARGIN) / (||g|| + gamma), rounded down: the
 * normalized gradient's norm thr ||g|| / (||g|| + gamma) (1 - margin) stays below thr in float32 too. */
static float auto_coef(double sqnorm, double threshold, double gamma) {
  if (!isfinite(sqnorm)) return 0.0f;
  const double c = threshold * (1.0 - CLIP_MARGIN) / (sqrt(sqnorm) + gamma);
  float f = (float)c;
  if ((double)f > c) f = nextafterf(f, 0.0f);
  return f;
}

/* coef for G groups x B examples; group g's threshold is thr[g * stride] (stride 0: one for all). */
static void coefs(const double *sqnorms, int G, int B, dpm_clipping mode, const double *thr, int stride, double gamma,
                  float *coef) {
  const int automatic = dpm_clip_automatic(mode);
  if (!dpm_clip_per_group(mode)) {
    for (int i = 0; i < B; i++) {
      double s = 0;
      for (int g = 0; g < G; g++) s += sqnorms[(size_t)g * B + i];
      float c = automatic ? auto_coef(s, thr[0], gamma) : clip_coef(s, thr[0]);
      for (int g = 0; g < G; g++) coef[(size_t)g * B + i] = c;
    }
  } else {
    for (int g = 0; g < G; g++) {
      const double t = thr[(size_t)g * (size_t)stride];
      for (size_t k = (size_t)g * B; k < (size_t)(g + 1) * B; k++)
        coef[k] = automatic ? auto_coef(sqnorms[k], t, gamma) : clip_coef(sqnorms[k], t);
    }
  }
}

void dpm_clip_coefs(const double *sqnorms, int G, int B, dpm_clipping mode, double clip, float *coef) {
  DPM_ASSERT(!dpm_clip_automatic(mode));
  coefs(sqnorms, G, B, mode, &clip, 0, 0.0, coef);
}

void dpm_clip_coefs_thr(const double *sqnorms, int G, int B, dpm_clipping mode, const double *thr, double gamma,
                        float *coef) {
  DPM_ASSERT(!dpm_clip_automatic(mode) || gamma > 0);
  coefs(sqnorms, G, B, mode, thr, 1, gamma, coef);
}

void dpm_add_noise(const dpm_key *key, uint64_t step, double std, uint64_t j0, size_t n, float *grad) {
  dpm_gauss_add(key, step, DPM_STREAM_NOISE, j0, n, std, grad);
}

void dpm_add_noise_slice(const dpm_key *key, uint64_t step, double std, int rank, int ranks, size_t offset, size_t P,
                         float *grad) {
  DPM_ASSERT(ranks >= 1 && rank >= 0 && rank < ranks);
  const size_t lo = P * (size_t)rank / (size_t)ranks, hi = P * (size_t)(rank + 1) / (size_t)ranks;
  dpm_add_noise(key, step, std, offset + lo, hi - lo, grad + lo);
}

double dpm_adaptive_grad_sigma(double sigma_eff, double f) {
  DPM_ASSERT(sigma_eff > 0 && f > 0 && f < 1);
  return sigma_eff / sqrt(1.0 - f);
}

double dpm_adaptive_count_sigma(double sigma_eff, double f, int K) {
  DPM_ASSERT(sigma_eff > 0 && f > 0 && f < 1 && K >= 1);
  return sqrt((double)K) * sigma_eff / (2.0 * sqrt(f));
}

double dpm_adaptive_effective_sigma(double sigma, double sigma_b, int K) {
  DPM_ASSERT(sigma > 0 && sigma_b > 0 && K >= 1);
  return 1.0 / sqrt(1.0 / (sigma * sigma) + (double)K / (4.0 * sigma_b * sigma_b));
}

void dpm_add_count_noise_slice(const dpm_key *key, uint64_t step, double std, int rank, int ranks, size_t j0, size_t K,
                               double *counts) {
  DPM_ASSERT(ranks >= 1 && rank >= 0 && rank < ranks);
  const size_t lo = K * (size_t)rank / (size_t)ranks, hi = K * (size_t)(rank + 1) / (size_t)ranks;
  for (size_t k = lo; k < hi; k++) counts[k] += (double)(float)(std * dpm_gauss_at(key, step, DPM_STREAM_COUNT, j0 + k));
}

void dpm_adaptive_update(double *thr, int K, const double *b, double expected, double target_quantile, double eta) {
  DPM_ASSERT(expected > 0);
  for (int k = 0; k < K; k++) thr[k] *= exp(-eta * (b[k] / expected + 0.5 - target_quantile));
}

double dpm_update_scale(double q, int64_t n) {
  DPM_ASSERT(q > 0 && n > 0);
  return 1.0 / (q * (double)n);
}
