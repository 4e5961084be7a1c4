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
 * the expected batch size and updates. Gradient noise std: sigma C, or with adaptive thresholds
 * grad_sigma sqrt(sum_k C_k^2) (the current thresholds' total sensitivity), and the thresholds then move
 * (see dpmpi/privacy/dpsgd.h). This is the code path of `dpmpi train`, the privacy-invariant
 * (the plain sum when privacy is off), identical to the same slice of a 1 x 1 run; with a trainable set
 * (fine-tuning) the same for the trainable entries, packed in gpack and also unpacked into the slab, whose frozen
 * entries stay 0 (no noise: the released function is the trainable parameters' noisy sum). The caller divides by
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
#include "dpmpi/train/trainable.h"

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
  double auto_gamma;       /* automatic clipping modes: g / (||g|| + auto_gamma), > 0 */
  /* adaptive thresholds (dpmpi/privacy/dpsgd.h, docs/accountant.md): sigma above is then the effective noise
     multiplier of gradient and counts together (the ledger's) */
  int adaptive;            /* 1: every threshold follows target_quantile of its norms */
  double target_quantile;  /* gamma in (0, 1) */
  double adaptive_lr;      /* eta: C <- C exp(-eta (b - gamma)) */
  double count_fraction;   /* f in (0, 1): the counts' share of the precision sigma^-2 */
  const dpm_trainable *trainable; /* the stage's trainable runs (frozen tensors set on the model too), NULL:
                              every parameter trains. Frozen parameters get no noise and no allreduce: the
                              noisy sum is packed (gpack), noise addressed by the global trainable index */
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
  size_t train_params;     /* trainable parameters of this stage (= its slab without a trainable set) ... */
  size_t train_offset;     /* ... the global trainable index of its first one ... */
  size_t total_train;      /* ... and of the whole model: the noise dimension */
  float *gpack;            /* with a partial trainable set: this stage's noisy sum packed (train_params), else NULL */
  int total_groups;        /* parameter groups of the whole model */
  double threshold;        /* the clipping threshold this stage starts with (dpm_clip_threshold) */
  int n_thr;               /* thresholds of the whole model: 1 (flat modes), stages (per-device), groups (per-layer) */
  double *thr;             /* their current values, the same on every rank (adaptive: updated after every step) */
  int thr_first, thr_local;/* this stage's thresholds thr[thr_first .. + thr_local) (flat: stage 0 holds the one) */
  double grad_sigma;       /* the gradient's noise multiplier: sigma, or adaptive sigma / sqrt(1 - f) */
  double count_sigma;      /* adaptive: the counts' noise std sigma_b (0 otherwise) */
  double *counts_released; /* adaptive: the last step's noisy centred counts b_k, all n_thr (the same everywhere) */
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
  double *cnt;             /* adaptive: this stage's centred counts of the step under way, thr_local */
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
