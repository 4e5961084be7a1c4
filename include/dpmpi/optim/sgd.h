/* dpmpi optim/sgd: the update applied to the noisy, normalized gradient (post-processing: it never sees
 * private data), and the learning-rate schedule of a job. */
#ifndef DPMPI_OPTIM_SGD_H
#define DPMPI_OPTIM_SGD_H

#include <stddef.h>

#include "dpmpi/io/config.h"

/* SGD with heavy-ball momentum (PyTorch convention): g = scale*grad + wd*p; v = mu*v + g; p -= lr*v. */
typedef struct {
  size_t n;
  float *velocity;
  double momentum, weight_decay;
} dpm_sgd;
void dpm_sgd_init(dpm_sgd *o, size_t n, double momentum, double weight_decay);
void dpm_sgd_free(dpm_sgd *o);
void dpm_sgd_step(dpm_sgd *o, float *params, const float *grad, double scale, double lr);

/* Learning rate at fractional epoch e of a run of total_epochs (schedule, warm-up). */
double dpm_lr_at(const dpm_config *cfg, double e, double total_epochs);

#endif
