/* dpmpi step: one logical DP-SGD step over a data-parallel communicator, up to the noisy gradient sum.
 *
 *   sample (Poisson, each rank its shard) -> micro-batches: forward, backward with exact per-example
 *   norms, clipping coefficients, weighted accumulation -> Gaussian noise, one draw per parameter, by
 *   exactly one rank -> bucketed sum-allreduce.
 *
 * After dpm_step_run the model's grads slab holds, on every rank, the same vector
 *   sum over sampled examples of clip(grad_i) + N(0, sigma^2 C^2 I)
 * (the plain sum when privacy is off). The caller divides by the expected batch size and updates.
 * This is the code path of `dpmpi train` and of the privacy-invariant tests (I1, I2).
 */
#ifndef DPMPI_STEP_H
#define DPMPI_STEP_H

#include <mpi.h>

#include "dpmpi/config.h"
#include "dpmpi/data.h"
#include "dpmpi/model.h"
#include "dpmpi/rng.h"

typedef struct {
  /* set by the caller */
  MPI_Comm comm;           /* data-parallel communicator: ranks holding replicas of the model */
  dpm_model *model;
  const dpm_dataset *data; /* this rank's shard [data->begin, data->end) of data->n_total examples */
  double q;                /* Poisson sampling rate */
  int dp;                  /* 1: clip and add noise; 0: plain sums (baseline) */
  double clip, sigma;      /* total clipping norm C and noise multiplier */
  dpm_clipping clipping;
  int physical_batch;      /* <= dpm_model_max_batch(model) */
  dpm_key sample_key, noise_key;
  /* owned, allocated by dpm_step_init */
  int rank, size;
  int64_t *sel;
  float *xb, *sq, *coef;
  int32_t *yb;
} dpm_step;

/* Allocate buffers; every field of the first block must be set. */
void dpm_step_init(dpm_step *s);
void dpm_step_free(dpm_step *s);

/* Run logical step t; stats (summed over ranks) receive {loss sum, examples, correct, clipped
 * examples x groups}. Collective over s->comm. */
void dpm_step_run(dpm_step *s, uint64_t t, double stats[4]);

#endif
