/* dpmpi optim/ops (internal): what an optimizer kind implements. A kind is one file of src/optim/ (sgd.c,
 * adamw.c) holding its update and one dpm_optimizer_ops row; optimizer.c dispatches through the table and
 * knows no kind. Adding a kind: a new file, its value in dpm_optimizer_kind (dpmpi/io/config.h, with its
 * name in train.optimizer's choices and dpm_optimizer_name) and its row in optimizer.c's table (a static
 * assertion fails until every kind has one). */
#ifndef DPMPI_OPTIM_OPS_H
#define DPMPI_OPTIM_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "dpmpi/io/config.h"
#include "dpmpi/optim/optimizer.h"

typedef struct {
  int n_state;                                   /* state buffers, each n floats in the parameters' layout */
  const char *state_groups[DPM_OPTIMIZER_MAX_STATE]; /* where checkpoints store buffer k (docs/formats.md) */
  void *(*create)(const dpm_config *cfg, size_t n);  /* zero state, the job's hyperparameters */
  void (*destroy)(void *impl);
  void (*step)(void *impl, float *params, const float *grad, double scale, double lr); /* counts the update */
  float *(*state)(void *impl, int k);
  int64_t *(*counter)(void *impl);               /* updates applied (AdamW: the bias correction's t) */
  void (*describe)(const void *impl, char *buf, size_t len); /* hyperparameters, for the header */
} dpm_optimizer_ops;

extern const dpm_optimizer_ops dpm_optimizer_ops_sgd, dpm_optimizer_ops_adamw;

#endif
