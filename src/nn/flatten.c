/* Flatten: C x H x W -> C*H*W x 1 x 1; its output and output gradient alias the previous layer's (the
 * layout is already contiguous per example), so it computes nothing. */
#include "nn/layer.h"

static int flatten_shape(layer *l, int max_batch, int num, char *err) {
  (void)max_batch, (void)num, (void)err;
  l->OC = l->C * l->H * l->W, l->OH = 1, l->OW = 1;
  return 0;
}

static void flatten_forward(dpm_model *m, layer *l, const float *in, int B) { (void)m, (void)l, (void)in, (void)B; }

static void flatten_backward(dpm_model *m, layer *l, const float *in, float *dx, double *sq, int B) {
  (void)m, (void)l, (void)in, (void)dx, (void)sq, (void)B; /* dout aliases the previous layer's */
}

static void flatten_info(const layer *l, dpm_layer_info *info) {
  (void)l;
  info->cost = 0;
}

const dpm_layer_ops dpm_ops_flatten = {
    .name = "flatten", .keys = "", .aliases_input = 1, .shape = flatten_shape, .plan = dpm_plan_none, .forward = flatten_forward,
    .backward = flatten_backward, .describe = dpm_describe_none, .info = flatten_info};
