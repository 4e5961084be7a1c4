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
    case DPM_CLIP_FLAT: return clip;
    case DPM_CLIP_PER_LAYER: return clip / sqrt((double)groups);
    case DPM_CLIP_PER_DEVICE:
      if (split == DPM_SPLIT_EVEN || params == 0) return clip / sqrt((double)stages);
      return clip * sqrt((double)stage_params / (double)params);
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

void dpm_clip_coefs(const double *sqnorms, int G, int B, dpm_clipping mode, double clip, float *coef) {
  if (mode != DPM_CLIP_PER_LAYER) {
    for (int i = 0; i < B; i++) {
      double s = 0;
      for (int g = 0; g < G; g++) s += sqnorms[(size_t)g * B + i];
      float c = clip_coef(s, clip);
      for (int g = 0; g < G; g++) coef[(size_t)g * B + i] = c;
    }
  } else {
    for (size_t k = 0; k < (size_t)G * B; k++) coef[k] = clip_coef(sqnorms[k], clip);
  }
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

double dpm_update_scale(double q, int64_t n) {
  DPM_ASSERT(q > 0 && n > 0);
  return 1.0 / (q * (double)n);
}
