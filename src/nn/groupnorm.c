/* Group normalization: kernels (its tiny per-example gradients are kept explicitly: [dgamma, dbeta]) and
 * its ops table. */
#include "nn/layer.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define GN_EPS 1e-5f

void dpm_groupnorm_forward(float *out, float *xhat, float *rstd, const float *x, const float *gamma,
                           const float *beta, int B, int C, int HW, int G, float eps) {
  const int Cg = C / G;
  const size_t n = (size_t)Cg * HW;
  for (int i = 0; i < B; i++) {
    for (int g = 0; g < G; g++) {
      const size_t off = ((size_t)i * C + (size_t)g * Cg) * HW;
      const float *xg = x + off;
      double s = 0, s2 = 0;
      for (size_t k = 0; k < n; k++) s += xg[k];
      const double mean = s / (double)n;
      for (size_t k = 0; k < n; k++) s2 += (xg[k] - mean) * (xg[k] - mean);
      const float r = (float)(1.0 / sqrt(s2 / (double)n + eps));
      rstd[(size_t)i * G + g] = r;
      for (int c = 0; c < Cg; c++) {
        const int ch = g * Cg + c;
        for (int k = 0; k < HW; k++) {
          const size_t j = (size_t)c * HW + k;
          const float xh = (float)(xg[j] - mean) * r;
          xhat[off + j] = xh;
          out[off + j] = gamma[ch] * xh + beta[ch];
        }
      }
    }
  }
}

void dpm_groupnorm_backward(float *dx, float *E, const float *dout, const float *xhat, const float *rstd,
                            const float *gamma, int B, int C, int HW, int G) {
  const int Cg = C / G;
  const size_t n = (size_t)Cg * HW;
  for (int i = 0; i < B; i++) {
    float *dgamma = E + (size_t)i * 2 * C, *dbeta = dgamma + C;
    for (int ch = 0; ch < C; ch++) {
      const size_t off = ((size_t)i * C + ch) * HW;
      float sg = 0, sb = 0;
      for (int k = 0; k < HW; k++) {
        sg += dout[off + k] * xhat[off + k];
        sb += dout[off + k];
      }
      dgamma[ch] = sg;
      dbeta[ch] = sb;
    }
    if (!dx) continue;
    for (int g = 0; g < G; g++) {
      const size_t off = ((size_t)i * C + (size_t)g * Cg) * HW;
      /* dxhat = dout * gamma; dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) */
      double m1 = 0, m2 = 0;
      for (int c = 0; c < Cg; c++) {
        const float gm = gamma[g * Cg + c];
        for (int k = 0; k < HW; k++) {
          const size_t j = off + (size_t)c * HW + k;
          const float dxh = dout[j] * gm;
          m1 += dxh;
          m2 += dxh * xhat[j];
        }
      }
      const float a = (float)(m1 / (double)n), b = (float)(m2 / (double)n), r = rstd[(size_t)i * G + g];
      for (int c = 0; c < Cg; c++) {
        const float gm = gamma[g * Cg + c];
        for (int k = 0; k < HW; k++) {
          const size_t j = off + (size_t)c * HW + k;
          dx[j] = r * (dout[j] * gm - a - xhat[j] * b);
        }
      }
    }
  }
}


/* ---- ops ---------------------------------------------------------------------------------------- */

static int groupnorm_shape(layer *l, int max_batch, int num, char *err) {
  (void)max_batch;
  if (l->s.groups < 1 || l->C % l->s.groups != 0)
    return dpm_err(err, "layer %d (groupnorm): groups=%d does not divide its %d channels", num, l->s.groups, l->C);
  l->OC = l->C, l->OH = l->H, l->OW = l->W;
  l->wsize = (size_t)l->C, l->bsize = (size_t)l->C;
  return 0;
}

static void groupnorm_plan(layer *l, dpm_plan *p) {
  l->E = dpm_plan_carve(p, p->B * 2 * l->C * sizeof(float));
  l->xhat = dpm_plan_carve(p, p->B * l->out_n * sizeof(float));
  l->rstd = dpm_plan_carve(p, p->B * l->s.groups * sizeof(float));
}

static void groupnorm_init(const layer *l, float *params, const dpm_key *key, int layer_num) {
  (void)key, (void)layer_num;
  for (size_t k = 0; k < l->wsize; k++) params[k] = 1.0f; /* gamma 1, beta 0 */
  memset(params + l->wsize, 0, l->bsize * sizeof(float));
}

static void groupnorm_forward(dpm_model *m, layer *l, const float *in, int B) {
  const float *w = m->params + l->poff;
  dpm_groupnorm_forward(l->out, l->xhat, l->rstd, in, w, w + l->wsize, B, l->C, l->H * l->W, l->s.groups, GN_EPS);
}

static void groupnorm_backward(dpm_model *m, layer *l, const float *in, float *dx, double *sq, int B) {
  (void)in;
  dpm_groupnorm_backward(dx, l->E, l->dout, l->xhat, l->rstd, m->params + l->poff, B, l->C, l->H * l->W, l->s.groups);
  if (sq) dpm_rows_sqnorm(sq, l->E, B, (size_t)2 * l->C);
}

static void groupnorm_accumulate(dpm_model *m, layer *l, const float *in, float *dw, float *db, const float *coef,
                                 int B) {
  (void)m, (void)in, (void)db;
  dpm_rows_accumulate(dw, l->E, coef, B, l->wsize + l->bsize);
}

static void groupnorm_describe(const layer *l, char *buf, size_t len) { snprintf(buf, len, " groups=%d", l->s.groups); }

static void groupnorm_info(const layer *l, dpm_layer_info *info) {
  dpm_info_elementwise(l, info);
  info->wrank = 1, info->wdims[0] = l->C;
  info->names[0] = "gamma", info->names[1] = "beta";
}

static dpm_norm_method groupnorm_norm_method(const layer *l) {
  (void)l;
  return DPM_NORM_EXPLICIT;
}

const dpm_layer_ops dpm_ops_groupnorm = {
    .name = "groupnorm", .keys = "groups", .required = 1, .shape = groupnorm_shape, .plan = groupnorm_plan,
    .init = groupnorm_init, .forward = groupnorm_forward, .backward = groupnorm_backward,
    .accumulate = groupnorm_accumulate, .describe = groupnorm_describe, .info = groupnorm_info,
    .norm_method = groupnorm_norm_method};
