/* Analyze-Gauss (Dwork, Talwar, Thakurta, Zhang 2014), the privacy-critical half of DP-PCA: the clipped
 * second-moment matrix of a shard's rows and the symmetric Gaussian noise added once to the sum. See
 * dpmpi/privacy/analyze_gauss.h; the reduction and the eigensolver are in src/parallel/pca.c. */
#include "dpmpi/privacy/analyze_gauss.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <string.h>

#define GRAM_ROWS 256 /* rows converted to double per dsyrk call */

void dpm_pca_gram(const float *x, int64_t n, int d, double clip, double *G) {
  if (n <= 0 || d <= 0) return;
  double *buf = dpm_malloc_aligned(sizeof(double) * GRAM_ROWS * (size_t)d);
  /* The computed squared norm s has relative error <= d u; shrinking the coefficient by (d + 4) u more
   * keeps the clipped row's true norm <= clip, so the sensitivity bound holds exactly. */
  const double shrink = 1.0 - (double)(d + 4) * DBL_EPSILON;
  for (int64_t r0 = 0; r0 < n; r0 += GRAM_ROWS) {
    const int rows = (int)(n - r0 < GRAM_ROWS ? n - r0 : GRAM_ROWS);
    for (int r = 0; r < rows; r++) {
      const float *xr = x + (size_t)(r0 + r) * (size_t)d;
      double *br = buf + (size_t)r * (size_t)d, s = 0;
      for (int j = 0; j < d; j++) s += (double)xr[j] * (double)xr[j];
      double c = clip > 0 && s > clip * clip ? clip / sqrt(s) * shrink : 1.0;
      for (int j = 0; j < d; j++) br[j] = c * (double)xr[j];
    }
    /* upper triangle of G += buf^T buf (buf: rows x d, row-major) */
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, rows, 1.0, buf, d, 1.0, G, d);
  }
  dpm_free(buf);
}

static size_t packed_size(int d) { return (size_t)d * (size_t)(d + 1) / 2; }

void dpm_pca_add_noise(double *A, int d, double std, const dpm_key *key) {
  const size_t P = packed_size(d);
  size_t p = 0;
  for (int i = 0; i < d; i++)
    for (int j = i; j < d; j++, p++) A[(size_t)i * d + j] += std * dpm_gauss_at(key, 0, DPM_STREAM_PCA, p);
  DPM_ASSERT(p == P);
  for (int i = 0; i < d; i++)
    for (int j = i + 1; j < d; j++) A[(size_t)j * d + i] = A[(size_t)i * d + j];
}

