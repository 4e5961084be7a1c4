/* dpmpi pca: differentially private PCA preprocessing (Abadi et al. 2016) on a BLACS process grid.
 *
 * The mechanism is "Analyze Gauss" (Dwork, Talwar, Thakurta, Zhang 2014):
 *   1. every rank clips each row of its data shard to L2 norm C (x -> x min(1, C / ||x||)) and forms the
 *      local second-moment matrix X^T X in double precision (dsyrk);
 *   2. the packed upper triangles are summed on the root of the communicator (MPI_Reduce);
 *   3. the root adds symmetric Gaussian noise once: every upper-triangle entry (diagonal included) gets an
 *      independent N(0, (sigma C^2)^2) draw from the counter-based stream (key, 0, DPM_STREAM_PCA), and
 *      the lower triangle mirrors it. Adding or removing one row x (||x|| <= C) changes the upper
 *      triangle by at most ||x x^T||_F = ||x||^2 <= C^2 in L2 norm, so this is the Gaussian mechanism with
 *      noise multiplier sigma: one ledger entry dpm_ledger_add_gaussian(L, sigma, 1);
 *   4. the noisy matrix is distributed block-cyclically (pdgemr2d) over a pr x pc BLACS grid built from the
 *      communicator (the most square factorization of its size) and ScaLAPACK (pdsyevr for the top k
 *      eigenpairs, or pdsyevd for all) returns the eigenvectors;
 *   5. the top k eigenvectors (eigenvalues descending, each signed so that its largest-magnitude entry is
 *      positive) form the d x k projection V, broadcast to every rank; each rank maps its rows x -> x V.
 * Everything after step 3 is post-processing of the noisy matrix and costs no further privacy.
 *
 * Typical use (dpmpi train does this before training):
 *     dpm_pca_params p = {.components = 60, .clip = 1.0, .sigma = 4.0};
 *     float *V = dpm_malloc(sizeof(float) * d * 60);
 *     dpm_pca_fit(comm, x, n_local, d, &p, &key, V, NULL, NULL, err);    // collective
 *     dpm_ledger_add_gaussian(ledger, p.sigma, 1);
 *     dpm_pca_apply(&shard, n_local, V, d, 60);                           // x (n x d) -> x V (n x 60)
 * The noise key is used on the root only; other ranks may pass NULL. See docs/pca.md.
 */
#ifndef DPMPI_PCA_H
#define DPMPI_PCA_H

#include "dpmpi/parallel/comm.h"
#include <stdint.h>

#include "dpmpi/privacy/accountant.h"
#include "dpmpi/core/common.h"
#include "dpmpi/io/config.h"
#include "dpmpi/io/data.h"
#include "dpmpi/core/rng.h"
#include "dpmpi/privacy/analyze_gauss.h"

/* ScaLAPACK eigensolver: pdsyevr computes only the k wanted eigenpairs (MRRR); pdsyevd all of them
 * (divide and conquer). Both give the same projection to rounding (tests/parallel/test_pca.c). */
typedef enum { DPM_PCA_SYEVR, DPM_PCA_SYEVD } dpm_pca_solver;

typedef struct {
  int components;        /* k, 1 <= k <= d */
  double clip;           /* row clipping norm C; 0 = no clipping (non-private PCA only) */
  double sigma;          /* noise multiplier (noise std / C^2); 0 = no noise (non-private PCA) */
  dpm_pca_solver solver; /* default (0): pdsyevr */
  int block;             /* block-cyclic block size; 0 = automatic (64, smaller for small d) */
} dpm_pca_params;

/* Seconds spent in each phase (the maximum over the ranks of comm) and the grid used. */
typedef struct {
  double t_cov, t_reduce, t_noise, t_eig, t_proj;
  int pr, pc, block;
} dpm_pca_stats;

/* The BLACS grid for `size` processes: pr x pc = size with pr <= pc and pr the largest divisor of size
 * not above sqrt(size) (1 x 1 for one process, 1 x p for a prime p). */
void dpm_pca_grid_shape(int size, int *pr, int *pc);

/* The clipped second-moment matrix and the Analyze-Gauss noise: dpmpi/privacy/analyze_gauss.h. */

/* Collective over comm: the noisy second-moment matrix on rank 0 of comm. Every rank passes its rows x
 * (n_local x d, n_local may be 0); rank 0 receives in A (d x d row-major, symmetric; other ranks may
 * pass NULL) sum_i c_i^2 x_i x_i^T + noise with std p->sigma * p->clip^2 (no noise if sigma is 0), the
 * noise drawn on rank 0 with *key. st (may be NULL) receives t_cov, t_reduce, t_noise. */
void dpm_pca_noisy_gram(MPI_Comm comm, const float *x, int64_t n_local, int d, const dpm_pca_params *p,
                        const dpm_key *key, double *A, dpm_pca_stats *st);

/* Collective over comm: the k eigenvectors of the largest eigenvalues of the symmetric d x d matrix A
 * held by rank 0 of comm (row-major; other ranks pass NULL), by ScaLAPACK on the BLACS grid of
 * dpm_pca_grid_shape(size of comm). Every rank receives V (d x k row-major, column j = eigenvector j,
 * eigenvalues descending, each column signed so that its entry of largest magnitude (the first such)
 * is positive) and, if evals is not NULL, the k eigenvalues (descending). Returns 0, or -1 with err when
 * ScaLAPACK reports a failure (the same on every rank). st (may be NULL) receives t_eig and the grid. */
int dpm_pca_eig(MPI_Comm comm, const double *A, int d, int k, dpm_pca_solver solver, int block, double *V,
                double *evals, dpm_pca_stats *st, char err[DPM_ERRLEN]);

/* Collective over comm: steps 1-5 above. V (d x k row-major float, every rank) receives the projection;
 * evals (may be NULL) the k noisy eigenvalues. Returns 0 or -1 with err (same on every rank). */
int dpm_pca_fit(MPI_Comm comm, const float *x, int64_t n_local, int d, const dpm_pca_params *p, const dpm_key *key,
                float *V, double *evals, dpm_pca_stats *st, char err[DPM_ERRLEN]);

/* Local: out (n x k) = x (n x d) V (d x k), row-major float (one sgemm). out must not alias x. */
void dpm_pca_project(const float *x, int64_t n, int d, const float *V, int k, float *out);

/* Local: replace the first `rows` rows of ds->x (C*H*W = d features each) by their projections x V and
 * make ds a dense k-feature dataset (C = k, H = W = 1, images = 0). rows may be 0 (no data held). */
void dpm_pca_apply(dpm_dataset *ds, int64_t rows, const float *V, int d, int k);

/* The noise multiplier of the PCA release for the job: pca.noise_multiplier, or the smallest sigma whose
 * single Gaussian release (q = 1, one step) has epsilon <= pca.epsilon at privacy.delta with the job's
 * accountant (dpm_calibrate_sigma). 0 for a non-private job (no noise). Returns 0 or -1 with err. */
int dpm_pca_sigma(const dpm_config *cfg, double *sigma, char err[DPM_ERRLEN]);

/* The data-dependent checks of the job's PCA keys: 1 <= pca.components <= d (the flattened example
 * size). Returns 0 or -1 with err naming the file and key. */
int dpm_pca_check(const dpm_config *cfg, int d, char err[DPM_ERRLEN]);

#endif
