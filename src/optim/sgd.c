/* SGD with momentum and the learning-rate schedule: see dpmpi/optim/sgd.h. Post-processing of the noisy
 * gradient: nothing here touches private data. Also the sgd row of the optimizer table (optim/ops.h). */
#include "dpmpi/optim/sgd.h"

#include <math.h>
#include <stdio.h>

#include "optim/ops.h"

void dpm_sgd_init(dpm_sgd *o, size_t n, double momentum, double weight_decay) {
  o->n = n;
  o->velocity = dpm_calloc(n, sizeof(float));
  o->momentum = momentum;
  o->weight_decay = weight_decay;
}

void dpm_sgd_free(dpm_sgd *o) {
  dpm_free(o->velocity);
  o->velocity = NULL;
}

void dpm_sgd_step(dpm_sgd *o, float *params, const float *grad, double scale, double lr) {
  const float mu = (float)o->momentum, wd = (float)o->weight_decay, s = (float)scale, eta = (float)lr;
  float *v = o->velocity;
  for (size_t k = 0; k < o->n; k++) {
    float g = s * grad[k] + wd * params[k];
    v[k] = mu * v[k] + g;
    params[k] -= eta * v[k];
  }
}

double dpm_lr_at(const dpm_config *cfg, double e, double total_epochs) {
  double lr = cfg->lr;
  if (cfg->warmup_epochs > 0 && e < cfg->warmup_epochs) return lr * (e + 1e-12) / cfg->warmup_epochs;
  switch (cfg->lr_schedule) {
    case DPM_SCHED_CONSTANT: break;
    case DPM_SCHED_COSINE: {
      double span = total_epochs - cfg->warmup_epochs, x = span > 0 ? (e - cfg->warmup_epochs) / span : 0;
      if (x > 1) x = 1;
      lr *= 0.5 * (1 + cos(M_PI * x));
      break;
    }
    case DPM_SCHED_STEP: lr *= pow(cfg->lr_step_gamma, floor(e / cfg->lr_step_every)); break;
  }
  return lr;
}

/* ---- the sgd row of the optimizer table: dpm_sgd and the count of updates applied ---- */

typedef struct {
  dpm_sgd sgd;
  int64_t t;
} sgd_impl;

static void *create(const dpm_config *cfg, size_t n) {
  sgd_impl *o = dpm_malloc(sizeof *o);
  dpm_sgd_init(&o->sgd, n, cfg->momentum, cfg->weight_decay);
  o->t = 0;
  return o;
}
static void destroy(void *impl) {
  dpm_sgd_free(&((sgd_impl *)impl)->sgd);
  dpm_free(impl);
}
static void step(void *impl, float *params, const float *grad, double scale, double lr) {
  sgd_impl *o = impl;
  dpm_sgd_step(&o->sgd, params, grad, scale, lr);
  o->t++;
}
static float *state(void *impl, int k) {
  (void)k;
  return ((sgd_impl *)impl)->sgd.velocity;
}
static int64_t *counter(void *impl) { return &((sgd_impl *)impl)->t; }
static void describe(const void *impl, char *buf, size_t len) {
  const dpm_sgd *o = &((const sgd_impl *)impl)->sgd;
  snprintf(buf, len, "momentum %g, weight decay %g", o->momentum, o->weight_decay);
}

const dpm_optimizer_ops dpm_optimizer_ops_sgd = {
    .n_state = 1, .state_groups = {"/optimizer"}, /* the momentum buffer, where checkpoints always had it */
    .create = create, .destroy = destroy, .step = step, .state = state, .counter = counter, .describe = describe};
