/* dpmpi optim/adamw: AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"), applied to
 * the noisy, normalized gradient: DP-Adam is this update on the privatized gradient, post-processing of the
 * Gaussian mechanism (it never sees private data, so it costs no privacy).
 *
 * One update, for every parameter k, with g = scale * grad[k] and t the update's number (1, 2, ...), as
 * PyTorch's torch.optim.AdamW (amsgrad off):
 *   p  -= lr * weight_decay * p                 (decoupled: the decay never enters m or v)
 *   m   = beta1 m + (1 - beta1) g
 *   v   = beta2 v + (1 - beta2) g^2
 *   p  -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * m and v are float arrays in the parameters' layout (a pipeline stage holds the state of its own slab);
 * t counts the updates applied and is part of the state (checkpoints store it).
 *
 *   dpm_adamw o;
 *   dpm_adamw_init(&o, n, 0.9, 0.999, 1e-8, 0.01);
 *   for (...) dpm_adamw_step(&o, params, grad_sum, 1.0 / (q * N), lr_at_this_step);
 *   dpm_adamw_free(&o);
 */
#ifndef DPMPI_OPTIM_ADAMW_H
#define DPMPI_OPTIM_ADAMW_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  size_t n;
  float *m, *v;          /* first and second moments, n each (zero at t = 0) */
  int64_t t;             /* updates applied so far (bias correction of the next one uses t + 1) */
  double beta1, beta2, eps, weight_decay;
} dpm_adamw;

/* n parameters; beta1, beta2 in [0, 1), eps > 0, weight_decay >= 0 (checked by the job's config; asserted). */
void dpm_adamw_init(dpm_adamw *o, size_t n, double beta1, double beta2, double eps, double weight_decay);
void dpm_adamw_free(dpm_adamw *o);
/* One update of params (n) from grad (n) times scale, at learning rate lr (the schedule's value for this
 * step); increments o->t. A zero gradient leaves m and v decaying and moves p by the decay and by what m
 * still holds. */
void dpm_adamw_step(dpm_adamw *o, float *params, const float *grad, double scale, double lr);

#endif
