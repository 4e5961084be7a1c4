/* Max and average pooling (no padding): kernels and their ops tables. */
#include "nn/layer.h"

#include <stdio.h>
#include <string.h>

void dpm_maxpool_forward(float *out, int32_t *argmax, const float *x, int B, int C, int H, int W, int K, int S,
                         int OH, int OW) {
  for (int i = 0; i < B; i++) {
    const float *xi = x + (size_t)i * C * H * W;
    for (int c = 0; c < C; c++) {
      const size_t ob = ((size_t)i * C + c) * OH * OW;
      for (int oh = 0; oh < OH; oh++) {
        for (int ow = 0; ow < OW; ow++) {
          /* strict > keeps the first maximum in (kh, kw) order; locals keep the selects branch-free */
          int best = (c * H + oh * S) * W + ow * S;
          float bv = xi[best];
          for (int kh = 0; kh < K; kh++) {
            const int base = (c * H + oh * S + kh) * W + ow * S;
            for (int kw = 0; kw < K; kw++) {
              const float v = xi[base + kw];
              best = v > bv ? base + kw : best;
              bv = v > bv ? v : bv;
            }
          }
          out[ob + (size_t)oh * OW + ow] = bv;
          argmax[ob + (size_t)oh * OW + ow] = best;
        }
      }
    }
  }
}

void dpm_maxpool_backward(float *dx, const float *dout, const int32_t *argmax, int B, int C, int H, int W,
                          int OH, int OW) {
  const size_t in = (size_t)C * H * W, on = (size_t)C * OH * OW;
  memset(dx, 0, (size_t)B * in * sizeof(float));
  for (int i = 0; i < B; i++) {
    float *dxi = dx + (size_t)i * in;
    const float *di = dout + (size_t)i * on;
    const int32_t *ai = argmax + (size_t)i * on;
    for (size_t k = 0; k < on; k++) dxi[ai[k]] += di[k];
  }
}

void dpm_avgpool_forward(float *out, const float *x, int B, int C, int H, int W, int K, int S, int OH, int OW) {
  const float inv = 1.0f / (float)(K * K);
  for (size_t ic = 0; ic < (size_t)B * C; ic++) {
    const float *xc = x + ic * H * W;
    float *oc = out + ic * OH * OW;
    for (int oh = 0; oh < OH; oh++)
      for (int ow = 0; ow < OW; ow++) {
        float s = 0;
        for (int kh = 0; kh < K; kh++)
          for (int kw = 0; kw < K; kw++) s += xc[(size_t)(oh * S + kh) * W + ow * S + kw];
        oc[(size_t)oh * OW + ow] = s * inv;
      }
  }
}

void dpm_avgpool_backward(float *dx, const float *dout, int B, int C, int H, int W, int K, int S, int OH,
                          int OW) {
  const float inv = 1.0f / (float)(K * K);
  memset(dx, 0, (size_t)B * C * H * W * sizeof(float));
  for (size_t ic = 0; ic < (size_t)B * C; ic++) {
    float *dxc = dx + ic * H * W;
    const float *dc = dout + ic * OH * OW;
    for (int oh = 0; oh < OH; oh++)
      for (int ow = 0; ow < OW; ow++) {
        const float g = dc[(size_t)oh * OW + ow] * inv;
        for (int kh = 0; kh < K; kh++)
          for (int kw = 0; kw < K; kw++) dxc[(size_t)(oh * S + kh) * W + ow * S + kw] += g;
      }
  }
}


/* ---- ops ---------------------------------------------------------------------------------------- */

int dpm_window_shape(layer *l, int pad, int num, char *err); /* conv.c */

static int pool_shape(layer *l, int max_batch, int num, char *err) {
  (void)max_batch;
  if (l->s.pad != 0) return dpm_err(err, "layer %d (%s): padding is not supported for pooling", num, l->ops->name);
  if (dpm_window_shape(l, 0, num, err)) return -1;
  l->OC = l->C;
  return 0;
}

static void maxpool_plan(layer *l, dpm_plan *p) { l->argmax = dpm_plan_carve(p, p->B * l->out_n * sizeof(int32_t)); }

static void maxpool_forward(dpm_model *m, layer *l, const float *in, int B) {
  (void)m;
  dpm_maxpool_forward(l->out, l->argmax, in, B, l->C, l->H, l->W, l->s.kernel, l->s.stride, l->OH, l->OW);
}

static void maxpool_backward(dpm_model *m, layer *l, const float *in, float *dx, double *sq, int B) {
  (void)m, (void)in, (void)sq;
  if (dx) dpm_maxpool_backward(dx, l->dout, l->argmax, B, l->C, l->H, l->W, l->OH, l->OW);
}

static void avgpool_forward(dpm_model *m, layer *l, const float *in, int B) {
  (void)m;
  dpm_avgpool_forward(l->out, in, B, l->C, l->H, l->W, l->s.kernel, l->s.stride, l->OH, l->OW);
}

static void avgpool_backward(dpm_model *m, layer *l, const float *in, float *dx, double *sq, int B) {
  (void)m, (void)in, (void)sq;
  if (dx) dpm_avgpool_backward(dx, l->dout, B, l->C, l->H, l->W, l->s.kernel, l->s.stride, l->OH, l->OW);
}

static void pool_describe(const layer *l, char *buf, size_t len) {
  snprintf(buf, len, " kernel=%d stride=%d", l->s.kernel, l->s.stride);
}

const dpm_layer_ops dpm_ops_maxpool = {
    .name = "maxpool", .keys = "kernel stride", .required = 1, .stride_is_kernel = 1, .shape = pool_shape,
    .plan = maxpool_plan, .forward = maxpool_forward, .backward = maxpool_backward, .describe = pool_describe,
    .info = dpm_info_elementwise};

const dpm_layer_ops dpm_ops_avgpool = {
    .name = "avgpool", .keys = "kernel stride", .required = 1, .stride_is_kernel = 1, .shape = pool_shape,
    .plan = dpm_plan_none, .forward = avgpool_forward, .backward = avgpool_backward, .describe = pool_describe,
    .info = dpm_info_elementwise};
