/* The optimizer interface: see dpmpi/optim/optimizer.h. Dispatch through the kinds' rows (optim/ops.h); no
 * kind appears here but in the table. */
#include "dpmpi/optim/optimizer.h"

#include <stdio.h>

#include "dpmpi/core/common.h"
#include "optim/ops.h"

static const dpm_optimizer_ops *const OPS[] = {[DPM_OPT_SGD] = &dpm_optimizer_ops_sgd,
                                               [DPM_OPT_ADAMW] = &dpm_optimizer_ops_adamw};
_Static_assert(sizeof OPS / sizeof OPS[0] == DPM_OPT_COUNT, "every optimizer kind needs its row in OPS");

struct dpm_optimizer {
  dpm_optimizer_kind kind;
  const dpm_optimizer_ops *ops;
  void *impl;
};

dpm_optimizer *dpm_optimizer_create(const dpm_config *cfg, size_t n) {
  DPM_ASSERT((unsigned)cfg->optimizer < DPM_OPT_COUNT);
  dpm_optimizer *o = dpm_malloc(sizeof *o);
  o->kind = cfg->optimizer;
  o->ops = OPS[o->kind];
  DPM_ASSERT(o->ops->n_state >= 1 && o->ops->n_state <= DPM_OPTIMIZER_MAX_STATE);
  o->impl = o->ops->create(cfg, n);
  return o;
}

void dpm_optimizer_free(dpm_optimizer *o) {
  if (!o) return;
  o->ops->destroy(o->impl);
  dpm_free(o);
}

dpm_optimizer_kind dpm_optimizer_get_kind(const dpm_optimizer *o) { return o->kind; }

void dpm_optimizer_step(dpm_optimizer *o, float *params, const float *grad, double scale, double lr) {
  o->ops->step(o->impl, params, grad, scale, lr);
}

int dpm_optimizer_num_state(const dpm_optimizer *o) { return o->ops->n_state; }

float *dpm_optimizer_state(dpm_optimizer *o, int k, const char **group) {
  DPM_ASSERT(k >= 0 && k < o->ops->n_state);
  if (group) *group = o->ops->state_groups[k];
  return o->ops->state(o->impl, k);
}

int64_t dpm_optimizer_steps(const dpm_optimizer *o) { return *o->ops->counter(o->impl); }

void dpm_optimizer_set_steps(dpm_optimizer *o, int64_t steps) {
  DPM_ASSERT(steps >= 0);
  *o->ops->counter(o->impl) = steps;
}

void dpm_optimizer_describe(const dpm_optimizer *o, char *buf, size_t len) {
  char args[160];
  o->ops->describe(o->impl, args, sizeof args);
  snprintf(buf, len, "%s (%s)", dpm_optimizer_name(o->kind), args);
}
