/* dpmpi train (internal): the trainer, the state of one `dpmpi train` segment, shared by the command and
 * loop (train.c), the resume rules (resume.c) and the reports (report.c). */
#ifndef DPMPI_TRAIN_TRAINER_H
#define DPMPI_TRAIN_TRAINER_H

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dpmpi/optim/optimizer.h"
#include "dpmpi/optim/sgd.h"
#include "dpmpi/privacy/accountant.h"
#include "dpmpi/privacy/budget.h"
#include "dpmpi/io/ckpt.h"
#include "dpmpi/core/common.h"
#include "dpmpi/io/config.h"
#include "dpmpi/io/data.h"
#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/parallel/grid.h"
#include "dpmpi/nn/model.h"
#include "dpmpi/parallel/pca.h"
#include "dpmpi/core/rng.h"
#include "dpmpi/train/step.h"
#include "dpmpi/train/trainable.h"


/* SIGTERM / SIGUSR1: finish the step, checkpoint; train_loop and dpm_cmd_train return DPM_EXIT_SIGNALLED, the
 * exit status (src/cli/main.c finalizes MPI). */
#define DPM_EXIT_SIGNALLED 75

typedef struct {
  MPI_Comm comm;
  int rank, size;
  dpm_config cfg;
  dpm_grid grid;
  dpm_model *model;       /* this rank's stage */
  char *model_desc;       /* the whole model and its split, for the header */
  size_t total_params;
  dpm_step step;
  dpm_optimizer *opt;     /* train.optimizer, its state in this stage's slab layout */
  float *ema;             /* train.ema_decay > 0: the parameters' moving average (this stage's slab layout), else NULL */
  int n_layers, first, last;  /* this rank's stage: layers [first, last) of n_layers */
  dpm_layer_info *info;       /* every layer of the whole model */
  uint32_t *frozen;           /* per layer of the whole model: its frozen tensors (bit t: tensor t of info), NULL: none */
  int lora;                   /* 1: some block has LoRA adapters (train.lora_rank or lora= in the layers): base frozen */
  int has_trainable;          /* 1: train.trainable or LoRA: the step and the optimizer work on `trainable` */
  dpm_trainable trainable;    /* this stage's trainable runs */
  float *ppack;               /* the stage's trainable parameters packed (the optimizer's vector), or NULL */
  float *state_full[DPM_OPTIMIZER_MAX_STATE]; /* checkpoints: the packed optimizer state in the slab's layout */
  int64_t start;              /* first step to run (> 0 after --resume) */
  dpm_dataset train, test;
  int64_t N;
  double q, sigma, steps_per_epoch;
  int64_t steps;          /* steps the run will take (after the budget) */
  int64_t steps_was;      /* --resume: the run's length in the checkpoint (steps differs: extended or shortened) */
  int dp;
  int tokens;             /* 1: token data and a GPT (losses and perplexity per target token) */
  dpm_accountant_kind acct;
  dpm_ledger *ledger;
  dpm_key init_key, sample_key, noise_key;
  FILE *metrics;
  /* DP-PCA preprocessing (src/parallel/pca.c, docs/pca.md); pca_k = 0: none */
  int pca_d, pca_k;       /* example features d -> model inputs k */
  double pca_sigma;       /* its noise multiplier (0: non-private PCA) */
  float *pca_V;           /* d x k projection: computed, or read from the checkpoint on --resume */
  int pca_resumed;        /* 1: pca_V came from the checkpoint */
  dpm_pca_stats pca_st;
  char *init_from;        /* the initial-weights file the run started from (--init; kept on --resume), or NULL */
  int stats_printed;      /* 1: this or an earlier segment printed private-batch statistics (output.private_stats) */
  /* what resume must hold to (docs/accountant.md, "What the ledger counts") */
  char run_id[24];        /* the run's id (every segment), names the journal */
  const char *journal_dir;/* where this segment appends to the run journal (NULL: no journal) */
  int64_t announced;      /* the journal announces every step below this */
  int64_t ckpt_last;      /* step of the newest checkpoint written or resumed from by this segment, -1: none */
  int64_t abandoned;      /* ledger steps this model did not use (abandoned branches, lost in a crash) */
  int64_t *seeded;        /* [begin, end) ranges that ran seeded before this segment; room for n_seeded + 1 */
  int64_t *seeded_out;    /* the same plus this segment's, for a checkpoint */
  int n_seeded;
  int any_seeded;         /* 1: some step of this model's history ran seeded, or will */
  uint64_t seed_last;     /* run.seed of the last seeded segment */
  double *resume_thr;     /* --resume of an adaptive run: the checkpoint's thresholds (n_resume_thr), until the step
                             holds them */
  int n_resume_thr;
  uint64_t data_digest;   /* of the training split (dpm_dataset_digest), the same on every grid */
  double data_bytes;      /* what this rank's shards of both splits will hold in memory (the memory check) */
} trainer;

/* The loop's clocks, counters and periods. */
typedef struct {
  int64_t log_every, eval_every; /* a progress line, an evaluation every this many steps (and at the end) */
  double total_epochs;
  double t_start, t_train;       /* wall clock at the loop's start; seconds spent in training steps */
  double examples_total;         /* examples computed in this segment */
  dpm_step_stats win;            /* summed over the steps since the last progress line */
} loop_state;

/* train.c */
/* Append a line to the run journal (rank 0; collective errors). */
void trainer_journal(trainer *tr, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int trainer_seeded_ranges(trainer *tr, int64_t step);
void trainer_write_checkpoint(trainer *tr, int64_t step);

/* resume.c: the checkpoint to resume from and the rules it must meet (docs/accountant.md, "What the ledger
 * counts") */
void trainer_find_resume(trainer *tr, const char *path, dpm_ckpt_meta *meta, char *out, size_t len);
void trainer_check_resume(trainer *tr, const dpm_ckpt_meta *meta, const char *path);
void trainer_set_aside_branch(trainer *tr, const char *dir, int64_t step, int64_t total);
void trainer_resume_history(trainer *tr, const dpm_ckpt_meta *meta, const char *path, int branch_ok);

/* report.c: the header, progress, evaluation and closing lines, and epsilon so far */
void trainer_fmt_duration(double s, char *buf, size_t len);
double trainer_epsilon_now(trainer *tr);
double trainer_epsilon_after_run(trainer *tr);
void trainer_evaluate(trainer *tr, double *accuracy, double *loss);
/* Collective: the same of the EMA parameters (tr->ema must be set): swapped into the model, evaluated, swapped back. */
void trainer_evaluate_ema(trainer *tr, double *accuracy, double *loss);
void trainer_print_header(trainer *tr);
double trainer_report_eval(trainer *tr, int64_t step, double epoch, double ex_per_s); /* returns the test loss */
double trainer_expected_per_s(const trainer *tr, int64_t done, double t_train);
void trainer_report_progress(trainer *tr, loop_state *ls, int64_t done, double lr);
void trainer_report_stop(trainer *tr, int sig, int64_t done);
void trainer_report_done(trainer *tr, const loop_state *ls);

#endif
