/* dpmpi optim/optimizer: the update of `dpmpi train`, whichever rule the job names (train.optimizer: sgd,
 * adamw), behind one interface. The optimizer receives only the privatized gradient: the noisy sum of
 * clipped per-example gradients and the scale 1/(q N) (dpm_update_scale), exactly what DP-SGD's update
 * receives, so any rule here is post-processing of the Gaussian mechanism. Its state (SGD's momentum,
 * AdamW's two moments) is float buffers in the layout of the parameter slab it was created for: each
 * pipeline stage holds the state of its own parameters, and checkpoints store it per layer in global shapes.
 *
 *   dpm_optimizer *o = dpm_optimizer_create(&cfg, dpm_model_num_params(stage_model));
 *   for (t = ...) dpm_optimizer_step(o, params, grads, dpm_update_scale(q, N), dpm_lr_at(&cfg, epoch, E));
 *   checkpoint: dpm_optimizer_state(o, k, &group) for k < dpm_optimizer_num_state(o), dpm_optimizer_steps(o)
 *   dpm_optimizer_free(o);
 * The rules themselves: dpmpi/optim/sgd.h, dpmpi/optim/adamw.h.
 */
#ifndef DPMPI_OPTIM_OPTIMIZER_H
#define DPMPI_OPTIM_OPTIMIZER_H

#include <stddef.h>
#include <stdint.h>

#include "dpmpi/io/config.h"

#define DPM_OPTIMIZER_MAX_STATE 2

typedef struct dpm_optimizer dpm_optimizer;

/* The optimizer cfg->optimizer names with the job's hyperparameters, for n parameters, state zero and no
 * update applied. Never NULL. */
dpm_optimizer *dpm_optimizer_create(const dpm_config *cfg, size_t n);
void dpm_optimizer_free(dpm_optimizer *o);
dpm_optimizer_kind dpm_optimizer_get_kind(const dpm_optimizer *o);

/* One update of params (n) from grad (n) times scale, at learning rate lr. */
void dpm_optimizer_step(dpm_optimizer *o, float *params, const float *grad, double scale, double lr);

/* State buffers: how many (SGD 1, AdamW 2); buffer k (n floats, the parameters' layout), and in *group (if
 * not NULL) the checkpoint group it is stored under ("/optimizer" for SGD's momentum, as checkpoints always
 * had it; "/optimizer/exp_avg" and "/optimizer/exp_avg_sq" for AdamW's moments). */
int dpm_optimizer_num_state(const dpm_optimizer *o);
float *dpm_optimizer_state(dpm_optimizer *o, int k, const char **group);

/* Updates applied so far (AdamW's bias correction depends on it); set on resume from a checkpoint. */
int64_t dpm_optimizer_steps(const dpm_optimizer *o);
void dpm_optimizer_set_steps(dpm_optimizer *o, int64_t steps);

/* "adamw (beta1 0.9, beta2 0.999, eps 1e-08, decoupled weight decay 0)", "sgd (momentum 0.9, weight decay 0)". */
void dpm_optimizer_describe(const dpm_optimizer *o, char *buf, size_t len);

#endif
