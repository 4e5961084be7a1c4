/* dpmpi privacy/analyze_gauss: the Gaussian release of DP-PCA (docs/pca.md). Each rank clips its rows
 * and forms their second-moment matrix; after the sum over ranks (src/parallel/pca.c) the root adds the
 * symmetric noise once. The release has L2 sensitivity clip^2 under add/remove of one row, and the
 * ledger records it as one Gaussian event of noise multiplier sigma. No MPI, no files. */
#ifndef DPMPI_PRIVACY_ANALYZE_GAUSS_H
#define DPMPI_PRIVACY_ANALYZE_GAUSS_H

#include <stdint.h>

#include "dpmpi/core/common.h"
#include "dpmpi/core/rng.h"

/* Local, no MPI: G += sum over the n rows x_i of x (n x d, row-major float) of c_i^2 x_i x_i^T with
 * c_i = min(1, clip / ||x_i||) (clip = 0: c_i = 1), in double precision. G is d x d row-major; only its
 * upper triangle (j >= i) is updated. */
void dpm_pca_gram(const float *x, int64_t n, int d, double clip, double *G);

/* Local: add the Analyze-Gauss noise to the upper triangle of the d x d row-major matrix A: entry (i, j),
 * j >= i, gets std * z_p with z_p the standard normal number p of the stream (key, 0, DPM_STREAM_PCA),
 * p = i d - i (i - 1) / 2 + (j - i) its index in the packed upper triangle. Then mirrors the upper
 * triangle into the lower one (A becomes exactly symmetric). The draws depend only on the key, never on
 * the grid. */
void dpm_pca_add_noise(double *A, int d, double std, const dpm_key *key);

#endif
