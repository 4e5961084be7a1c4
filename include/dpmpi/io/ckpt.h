/* dpmpi ckpt: training checkpoints in HDF5 (layout in docs/formats.md), written collectively with
 * parallel HDF5 (each rank writes the layers of its pipeline stage; replica 0 of every stage writes)
 * under a temporary name, flushed, synced and renamed, so a crash at any instant leaves the previous
 * checkpoint intact. Every dataset carries the Fletcher32 checksum filter; a damaged file fails to
 * read with a message, never with wrong numbers. Parameters are stored per layer in their global
 * shapes, so a checkpoint written on one grid loads on any other.
 *
 * Secrets: no key is ever written. A seeded run records its seed (and says it was reproducible).
 */
#ifndef DPMPI_CKPT_H
#define DPMPI_CKPT_H

#include "dpmpi/parallel/comm.h"
#include <stdint.h>

#include "dpmpi/io/config.h" /* dpm_optimizer_kind */
#include "dpmpi/privacy/accountant.h"
#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/core/common.h"
#include "dpmpi/nn/model.h"

#define DPM_CKPT_FORMAT 2
#define DPM_CKPT_MAX_STATE 3 /* state buffers per parameter: the optimizer's (up to 2) and the EMA (/ema) */

typedef struct {
  int64_t step;          /* logical steps done */
  int64_t steps_total;   /* steps of the whole run */
  int64_t n_train;       /* training examples N */
  double q, sigma, clip, delta;
  int privacy;           /* 1: DP-SGD */
  dpm_clipping clipping;  /* read: checked to be a known mode */
  dpm_accountant_kind accountant; /* read: checked to be a known accountant */
  dpm_optimizer_kind optimizer;   /* train.optimizer; read: checked to be a known one, sgd when the attribute is
                                   * missing (written before AdamW existed: /optimizer holds SGD's momentum) */
  int64_t optimizer_steps; /* updates the optimizer applied (AdamW's bias correction); read: step when missing */
  int replicas, stages;  /* the grid that wrote it */
  int reproducible;      /* 1: seeded run (seed below); 0: secure keys, never stored */
  uint64_t seed;
  char *job;             /* job file text and overrides (read: allocated) */
  char *layers;          /* model.layers (read: allocated) */
  char *init_from;       /* the initial-weights file the run started from (dpmpi train --init), attribute
                            init_from; NULL: none (read: allocated, NULL when the attribute is absent) */
  /* DP-PCA preprocessing (dpmpi/parallel/pca.h), group /pca; pca_components = 0: none */
  int pca_components, pca_dim; /* k and d */
  double pca_sigma, pca_clip;  /* its noise multiplier (0: non-private PCA) and row clip (0: none) */
  float *pca_projection;       /* d x k row-major, the projection the run applies (read: allocated) */
  int format;            /* read: format_version */
  char version[32];      /* read: the library version that wrote it */
  int stats_printed;     /* 1: a segment of the run printed noiseless private-batch statistics (output.private_stats);
                          * read: 1 when the attribute is missing (older dpmpi always printed them) */
  /* format 2: what resume must hold to (docs/accountant.md, "What the ledger counts") */
  double epsilon;          /* privacy.epsilon: the budget of the whole ledger (0: none) */
  uint64_t data_digest;    /* dpm_dataset_digest of the training split */
  char run_id[24];         /* 16 hex digits, the same in every segment of a run; names DIR/journal-ID */
  int64_t steps_abandoned; /* subsampled steps in the ledger that this model did not use (abandoned
                              branches, steps lost in a crash) */
  int n_seeded;            /* seeded_steps: [begin, end) step ranges that ran seeded (reproducible = n_seeded > 0) */
  int64_t *seeded_steps;   /* 2 x n_seeded values (read: allocated) */
  /* adaptive thresholds (privacy.adaptive): attribute clip_thresholds (float64 [n_thresholds]), the thresholds the
     next step applies, with adaptive_target_quantile, adaptive_lr, count_noise_fraction; absent: not adaptive */
  int adaptive;
  int n_thresholds;
  double *thresholds;      /* read: allocated, every value finite and > 0 */
  double target_quantile, adaptive_lr, count_noise_fraction;
  double auto_gamma;       /* automatic clipping modes: attribute auto_gamma (read: 0 when absent) */
  int rng_stream;          /* the random streams' definition, DPM_RNG_STREAM_VERSION of the writer (dpmpi/core/rng.h);
                              read: 1 when the attribute is missing (dpmpi before version 2 drew with Philox4x64-10) */
} dpm_ckpt_meta;

/* This rank's view of the model for writing and reading. */
typedef struct {
  int n_layers;
  const dpm_layer_info *info; /* every layer of the whole model */
  int first, last;            /* this rank's stage holds layers [first, last) */
  int writer;                 /* 1: this rank writes its stage's layers (one rank per stage) */
  float *params;              /* the stage's parameter slab (layer order) */
  /* the stage's optimizer state: n_state buffers in the slab's layout, buffer k stored per layer under the
     group state_group[k] (dpm_optimizer_state gives both: "/optimizer" for SGD's momentum) */
  int n_state;
  float *state[DPM_CKPT_MAX_STATE];
  const uint32_t *frozen;     /* per layer of the whole model: frozen tensors (bit t: tensor t of info), which have
                                 no optimizer state in the file (NULL: none) */
  const char *state_group[DPM_CKPT_MAX_STATE];
} dpm_ckpt_model;

/* Collective over comm: write the checkpoint to `path` (via a temporary file in the same directory, then
 * rename). The ledger and meta must be the same on every rank. Returns 0, or -1 with err (same on
 * every rank); `path` is then untouched. */
int dpm_ckpt_write(MPI_Comm comm, const char *path, const dpm_ckpt_model *m, const dpm_ledger *ledger,
                   const dpm_ckpt_meta *meta, char err[DPM_ERRLEN]);

/* Collective: read the metadata of `path`. Returns 0 or -1 with err (missing, truncated, not a dpmpi
 * checkpoint, unsupported format, checksum mismatch). */
int dpm_ckpt_read_meta(MPI_Comm comm, const char *path, dpm_ckpt_meta *meta, char err[DPM_ERRLEN]);
void dpm_ckpt_meta_free(dpm_ckpt_meta *meta);

/* Collective: read this rank's layers (parameters and the m->n_state optimizer state buffers; a group
 * missing from the file is an error naming it) and the ledger (*ledger: new, dpm_ledger_free). The model
 * must have the checkpoint's layers (check with dpm_ckpt_same_model first). Returns 0 or -1 with err. */
int dpm_ckpt_read(MPI_Comm comm, const char *path, const dpm_ckpt_model *m, dpm_ledger **ledger,
                  char err[DPM_ERRLEN]);

/* Serial: the ledger of a checkpoint. */
int dpm_ckpt_read_ledger(const char *path, dpm_ledger **ledger, char err[DPM_ERRLEN]);

/* What a checkpoint or a released model (dpmpi export) says about its privacy: enough to recompute epsilon
 * from the file alone (`dpmpi privacy --ledger FILE`). */
typedef struct {
  int is_export;          /* 1: a released model ("dpmpi-model"), 0: a checkpoint */
  int privacy;            /* 1: DP-SGD run */
  double delta;           /* the run's delta (valid when privacy = 1) */
  int accountant;         /* dpm_accountant_kind the run reported with */
  double epsilon;         /* the epsilon the export records (NAN for a checkpoint: it records none) */
  int stats_printed;      /* 1: noiseless statistics of private batches were printed (see docs/accountant.md) */
} dpm_ckpt_privacy;

/* Serial: the ledger (/privacy/privacy_ledger: every event, the DP-PCA release included) and the privacy
 * attributes of a checkpoint or of a released model. Returns 0, or -1 with err naming the file: not HDF5, not a
 * dpmpi file, no ledger (an export written before exports carried it), or a non-private run (no guarantee). */
int dpm_ckpt_read_privacy(const char *path, dpm_ledger **ledger, dpm_ckpt_privacy *info, char err[DPM_ERRLEN]);

/* Serial: the released model OUT of checkpoint CKPT: /model (parameters), /pca (if any), the whole privacy
 * ledger /privacy/privacy_ledger (`ledger`: every event, the DP-PCA release included, and the steps the run
 * journal knows of beyond the checkpoint's own ledger, so epsilon can be recomputed from OUT alone) and the privacy metadata as root attributes (epsilon, delta, accountant, sampling_rate,
 * noise_multiplier, steps, clipping, clip, n_train, reproducible, stats_printed); no optimizer state, no seed,
 * no keys. Written under a temporary name and renamed. */
int dpm_ckpt_export(const char *ckpt, const char *out, const dpm_ckpt_meta *meta, const dpm_ledger *ledger,
                    double epsilon, char err[DPM_ERRLEN]);

/* 0 if the layer lists a and b (model.layers texts) describe the same model, else -1 with err naming
 * the first difference. */
int dpm_ckpt_same_model(const char *a, const char *b, char err[DPM_ERRLEN]);

/* Checkpoint files of a directory, newest first (by the step in the name ckpt-STEP.h5); *paths is
 * allocated (free each and the array with dpm_free). A file path gives itself. Returns the count, or
 * -1 with err when path does not exist. */
int dpm_ckpt_list(const char *path, char ***paths, char err[DPM_ERRLEN]);

/* The file name of the checkpoint of step `step` in dir: DIR/ckpt-00000123.h5 */
void dpm_ckpt_name(const char *dir, int64_t step, char *out, size_t len);

/* ---- the run journal: DIR/journal-RUNID (format in docs/formats.md) ----------------------------
 * One text line per event, appended and fsync'd by rank 0 alone: "start STEP TOTAL" and
 * "branch STEP TOTAL ABANDONED" when a segment begins, "run FROM TO TOTAL" before steps [FROM, TO) run,
 * "ckpt STEP TOTAL" after ckpt-STEP.h5 is written, "end STEP TOTAL" when a segment stops cleanly. TOTAL
 * is the number of subsampled steps in the ledger once the event is done (announced steps count as run),
 * so the last line's TOTAL is every step the run ever ran or was about to run, on every branch. */
typedef struct {
  int found;              /* 0: no journal file (nothing known beyond the checkpoints) */
  int64_t total;          /* TOTAL of the last line */
  int has_ckpt;           /* 1: a ckpt line exists */
  int64_t ckpt_step, ckpt_total; /* the last ckpt line: the run's newest checkpoint */
} dpm_journal;

/* The directory part of a checkpoint's path ("." for a bare file name). */
void dpm_ckpt_dirname(const char *path, char *out, size_t len);

/* Subsampled-Gaussian steps in a ledger: what the journal's TOTAL counts (DP-PCA's release is not a step). */
int64_t dpm_journal_ledger_steps(const dpm_ledger *ledger);

/* The journal's file name: DIR/journal-RUNID. */
void dpm_journal_name(const char *dir, const char *run_id, char *out, size_t len);

/* Serial: read the journal of run_id in dir into *j (j->found = 0 if there is none). A last line
 * without its newline was cut by a crash before its fsync and is ignored. Returns 0, or -1 with err
 * naming the file and line of a damaged line. */
int dpm_journal_read(const char *dir, const char *run_id, dpm_journal *j, char err[DPM_ERRLEN]);

/* Serial: append one line (without its newline) to the journal of run_id in dir and fsync it. Returns 0
 * or -1 with err. */
int dpm_journal_append(const char *dir, const char *run_id, const char *line, char err[DPM_ERRLEN]);

/* Serial: the steps the run journal next to checkpoint `ckpt` knows of beyond its ledger (docs/accountant.md,
 * "What the ledger counts") are added to `ledger` as (q, sigma) steps of meta's run; *extra = how many.
 * Returns 0, or -1 with err (a damaged journal). */
int dpm_journal_add_extra(const char *ckpt, const dpm_ckpt_meta *meta, dpm_ledger *ledger, int64_t *extra,
                          char err[DPM_ERRLEN]);


#endif
