/* dpmpi step: one logical DP-SGD step on a process grid (dpmpi/parallel/grid.h), up to the noisy gradient sum.
 *
 *   sample (Poisson, each replica its shard; every stage of a replica draws the same sample) ->
 *   micro-batches through the pipeline (1F1B: stage s keeps at most S - s micro-batches in flight;
 *   activations forward and their gradients backward with MPI point-to-point) -> exact per-example
 *   norms, clipping coefficients, weighted accumulation -> Gaussian noise, one draw per parameter per
 *   step, by exactly one rank of the stage's data-parallel group -> bucketed sum-allreduce over it.
 *
 * Clipping: per-layer and per-device are local to a stage. Flat clipping on S > 1 stages needs each
 * example's whole-model norm before any stage can accumulate: the step runs the pipeline twice (norms,
 * one allreduce of the sample's squared norms over the pipeline, then the clipped accumulation), about
 * twice the compute; per-device clipping avoids it (He et al. 2022).
 *
 * Rebalancing: Poisson sampling gives each replica a batch of random size (standard deviation
 * sqrt(q N / D)), and every step would wait for the largest of D. Unless keep_shards is set, the
 * replicas agree on the counts (one allgather), and those above the mean send their last sampled
 * examples' inputs and labels to those below (a deterministic plan every rank computes), so every
 * replica computes floor or ceil of the mean. The sampled set, the clipped sum and the noise are
 * unchanged: only which rank computes an example moves.
 *
 * After dpm_step_run the model's grads slab holds, on every rank of the stage, this stage's slice of
 *   sum over sampled examples of clip(grad_i) + N(0, sigma^2 C^2 I)
 * (the plain sum when privacy is off), identical to the same slice of a 1 x 1 run. The caller divides by
 * the expected batch size and updates. This is the code path of `dpmpi train`, the privacy-invariant
 * tests (I1, I2) and the benchmarks.
 */
#ifndef DPMPI_STEP_H
#define DPMPI_STEP_H

#include "dpmpi/parallel/comm.h"

#include "dpmpi/io/config.h"
#include "dpmpi/io/data.h"
#include "dpmpi/nn/model.h"
#include "dpmpi/core/rng.h"

/* What a step or an evaluation counted, summed over the grid. The dataset's y holds label_n labels per
 * example (T next-token targets for a model ending with lm_head). */
typedef struct {
  double loss;      /* sum of the examples' losses */
  double examples;  /* examples computed */
  double correct;   /* correct predictions */
  double clipped;   /* (example, parameter group) pairs whose clipping coefficient was < 1, at most examples x
                       groups; 0 in an evaluation and without DP */
  double token_loss; /* the sum over unmasked targets of -log p (sequence loss; class labels: = loss) */
  double tokens;     /* unmasked targets (class labels: = examples) */
} dpm_step_stats;

typedef struct {
  /* set by the caller */
  MPI_Comm comm;           /* data-parallel communicator: the ranks holding this stage in every replica */
  MPI_Comm pipe;           /* pipeline communicator of this replica, rank = stage (MPI_COMM_SELF: one stage) */
  dpm_model *model;        /* this stage's layers; the last stage's end with the loss (n_classes > 0) */
  const dpm_dataset *data; /* this replica's shard [begin, end) of n_total: x used on the first stage, y on the last */
  double q;                /* Poisson sampling rate */
  int dp;                  /* 1: clip and add noise; 0: plain sums (baseline) */
  double clip, sigma;      /* total clipping norm C and noise multiplier */
  dpm_clipping clipping;
  dpm_device_split device_split; /* per-device thresholds */
  int physical_batch;      /* micro-batch size, <= dpm_model_max_batch(model) */
  dpm_key sample_key, noise_key;
  int measure_wait;        /* benchmarks: a barrier before the allreduce, its time in time_wait */
  int keep_shards;         /* 1: every replica computes exactly its own sample; 0 (default): the
                              sampled examples are rebalanced over the replicas (see below) */
  int aug_k;               /* augmentation multiplicity K (0, 1: off). K > 1 needs one pipeline stage, keep_shards
                              and K <= physical_batch: each example's K views (dpmpi/train/augment.h, randomness
                              under sample_key) run as one micro-batch, the mean of their gradients is clipped
                              once and added (De et al. 2022), so the sensitivity stays C */
  int aug_pad, aug_flip;   /* the views' crop padding and horizontal flips (1: allowed) */
  float aug_fill;          /* the value of padded pixels */
  /* set by dpm_step_init */
  int two_pass;            /* 1: flat clipping with DP on S > 1 stages: a pass for the per-example norms, then the
                              clipped accumulation (see above) */
  int rank, size;          /* in comm */
  int stage, stages;       /* in pipe */
  size_t param_offset;     /* global index of this stage's first parameter */
  size_t total_params;     /* of the whole model */
  int total_groups;        /* parameter groups of the whole model */
  double threshold;        /* the clipping threshold this stage applies (dpm_clip_threshold) */
  double time_allreduce;   /* seconds in the gradient allreduce, summed over steps (benchmarks); with
                              measure_wait, the transfer alone ... */
  double time_wait;        /* ... and here the wait for the slowest rank of comm */
  /* owned */
  int nctx;
  dpm_model **ctx;         /* micro-batches in flight: ctx[0] = model, the others share its parameters */
  MPI_Request *req;        /* per context: activation send, gradient send */
  int64_t *sel, nsel;      /* the last step's sample of this replica's shard (global indices) */
  int64_t nwalk, nkeep;    /* examples this rank computed: sel[0 .. nkeep) and nwalk - nkeep guests */
  int64_t guest_cap, send_cap;
  float *gx;               /* guests: inputs (first stage) and labels (last stage) of examples */
  int32_t *gy;             /* sampled on other replicas' shards, received for this step */
  int *counts;             /* per replica: sampled, then computed, examples (rebalancing) */
  float *sendx;            /* rebalancing: packed inputs and labels to send */
  int32_t *sendy;
  MPI_Request *xreq;
  int xreq_cap;
  double *norms;           /* two_pass: per sampled example squared norm (NULL otherwise) */
  float *gbak;             /* aug_k > 1: the clipped sum while an example's views are summed in the grads slab */
  float *xb, *doutb, *coef; /* xb: the micro-batch input (gathered rows, or received activations) */
  double *sq;              /* per-example squared norms of the micro-batch, G x B */
  int32_t *yb;             /* the micro-batch's labels, label_n each */
  size_t label_n;          /* labels per example: 1, or T targets (dpm_model_label_size) */
  dpm_step_stats acc;      /* this rank's counts of the step or evaluation under way */
} dpm_step;

/* Allocate buffers and contexts; collective over comm and pipe. */
void dpm_step_init(dpm_step *s);
void dpm_step_free(dpm_step *s);

/* Run logical step t; *stats receives its counts summed over the grid. Collective over comm and pipe. */
void dpm_step_run(dpm_step *s, uint64_t t, dpm_step_stats *stats);

/* Forward the rows [d->begin, d->end) of d (this replica's shard of an evaluation split) through the
 * pipeline; *sums receives the loss, examples and correct predictions summed over the grid (clipped = 0).
 * Collective over comm and pipe. */
void dpm_step_eval(dpm_step *s, const dpm_dataset *d, dpm_step_stats *sums);

#endif
