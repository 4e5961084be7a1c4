/* dpmpi config: the job file (INI, parsed with libinih) plus --section.key=value overrides, validated
 * into a dpm_config. Every key is in one table (src/io/config.c) with its type, default and documentation;
 * `dpmpi train --help-keys` prints it and docs/jobfile.md mirrors it. Unknown keys, bad values and
 * impossible combinations are rejected with the file, the key and what was expected.
 */
#ifndef DPMPI_CONFIG_H
#define DPMPI_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "dpmpi/core/common.h"
#include "dpmpi/privacy/accountant.h"
#include "dpmpi/privacy/dpsgd.h"

/* Largest job text (file plus overrides) accepted: checkpoints keep it in a checksummed HDF5 attribute,
 * which must stay below 64 KiB. */
#define DPM_JOB_MAX_BYTES 32768

typedef enum { DPM_SCHED_CONSTANT, DPM_SCHED_COSINE, DPM_SCHED_STEP } dpm_schedule;

/* train.optimizer: the update rule applied to the privatized gradient (dpmpi/optim/optimizer.h) */
typedef enum { DPM_OPT_SGD, DPM_OPT_ADAMW, DPM_OPT_COUNT } dpm_optimizer_kind;

typedef struct {
  /* [data] */
  char *data_train, *data_test;
  /* [model] */
  char *model_layers;
  /* [train] */
  double epochs;              /* 0 = not given */
  int64_t steps;              /* 0 = not given */
  int64_t batch_size;         /* expected logical batch q*N */
  int64_t physical_batch_size;
  double lr, momentum, weight_decay;
  double ema_decay;           /* EMA of the parameters for evaluation and export (0: off) */
  int64_t aug_multiplicity;   /* K views per example, gradients averaged before clipping (1: off) */
  int64_t aug_pad;            /* the views' crop padding */
  int aug_flip;               /* 1: the views may be mirrored horizontally */
  dpm_optimizer_kind optimizer;
  double adam_beta1, adam_beta2, adam_eps; /* train.optimizer = adamw */
  char *trainable;            /* tensor-name patterns that train (NULL: every tensor) */
  int64_t lora_rank;          /* LoRA rank r (0: off) */
  int64_t lora_alpha;         /* LoRA scale numerator: the scale is alpha / r */
  char *lora_targets;         /* the block linears with adapters (NULL: all four) */
  dpm_schedule lr_schedule;
  double lr_step_gamma;       /* step schedule: multiply by gamma ... */
  double lr_step_every;       /* ... every this many epochs */
  double warmup_epochs;
  double eval_every_epochs;   /* evaluation period in epochs */
  /* [privacy] */
  int privacy_enabled;
  char privacy_ignored[128];  /* privacy.enabled = false: the privacy keys the job set, now ignored ("" if none) */
  double epsilon;             /* 0 = not given */
  double delta;
  double noise_multiplier;    /* 0 = not given */
  double clip;
  dpm_clipping clipping;
  dpm_device_split device_split; /* per-device thresholds */
  double auto_gamma;          /* automatic clipping modes */
  int adaptive;               /* adaptive thresholds (dpmpi/privacy/dpsgd.h) */
  double target_quantile, adaptive_lr, count_noise_fraction;
  dpm_accountant_kind accountant;
  int rebudget;               /* --resume: accept an epsilon or delta other than the checkpoint's */
  /* [pca] (dpmpi/parallel/pca.h, docs/pca.md) */
  int64_t pca_components;     /* k; 0 = no PCA */
  double pca_noise_multiplier;/* 0 = not given */
  double pca_epsilon;         /* 0 = not given */
  double pca_clip;            /* 0 = not given */
  /* [grid] */
  int64_t grid_replicas, grid_stages; /* 0 = not given */
  char *grid_stage_layers;    /* NULL = balanced by cost */
  /* [checkpoint] */
  char *ckpt_dir;             /* NULL = no checkpoints */
  int64_t ckpt_every, ckpt_keep;
  /* [run] */
  int has_seed;
  uint64_t seed;
  /* [output] */
  char *metrics;              /* JSON-lines path, may be NULL */
  int64_t log_every;          /* progress line every this many steps (0 = about 20 per epoch) */
  int private_stats;          /* 1: progress lines show noiseless private-batch statistics (not covered by DP) */
  /* provenance */
  char *path;                 /* the job file */
  char *text;                 /* job file text followed by the overrides, for checkpoints */
} dpm_config;

/* Parse path and then the overrides (each "--section.key=value"). Returns 0 or -1 with err naming the
 * file (or "command line"), the key and what was expected. */
int dpm_config_load(const char *path, int n_overrides, char **overrides, dpm_config *cfg, char err[DPM_ERRLEN]);
void dpm_config_free(dpm_config *cfg);

/* Print every key with its type, default and meaning. */
void dpm_config_print_keys(FILE *out);

const char *dpm_clipping_name(dpm_clipping c);

/* "sgd" or "adamw" (train.optimizer's values). */
const char *dpm_optimizer_name(dpm_optimizer_kind k);
/* The kind named `name` (exactly as dpm_optimizer_name spells it): 0, or -1 for an unknown name. */
int dpm_optimizer_parse(const char *name, dpm_optimizer_kind *k);

#endif
