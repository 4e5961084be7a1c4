/* The dense layer: out = inp W^T + b. Kernels (norms ||a_i||^2 ||g_i||^2 without per-example gradients,
 * the clipped sum as one weighted GEMM) and its ops table. */
#include "nn/layer.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

void dpm_dense_forward(float *out, const float *inp, const float *w, const float *b, int B, int C, int O) {
  if (b) {
    for (int i = 0; i < B; i++) memcpy(out + (size_t)i * O, b, (size_t)O * sizeof(float));
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, O, C, 1.0f, inp, C, w, C, b ? 1.0f : 0.0f, out, O);
}

void dpm_dense_backward_input(float *dinp, const float *dout, const float *w, int B, int C, int O) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, C, O, 1.0f, dout, O, w, C, 0.0f, dinp, C);
}

void dpm_dense_sqnorms(double *sq, const float *inp, const float *dout, int has_bias, int B, int C, int O) {
  for (int i = 0; i < B; i++) {
    double a2 = dpm_nn_sumsq(inp + (size_t)i * C, (size_t)C), g2 = dpm_nn_sumsq(dout + (size_t)i * O, (size_t)O);
    sq[i] = (a2 + (has_bias ? 1.0 : 0.0)) * g2; /* Inf * 0 is NaN: not finite, coefficient 0 */
  }
}

void dpm_dense_accumulate(float *dw, float *db, const float *inp, const float *dout, const float *coef,
                          float *scratch, float *row, int B, int C, int O) {
  const float *G = dout;
  int careful = 0;
  if (coef) {
    for (int i = 0; i < B; i++) careful |= dpm_nn_scale_row(scratch + (size_t)i * O, dout + (size_t)i * O, coef[i], (size_t)O);
    G = scratch;
  }
  if (!careful) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, C, B, 1.0f, G, O, inp, C, 1.0f, dw, C);
    if (db) dpm_nn_colsum_add(db, G, (size_t)B, O);
    return;
  }
  /* a micro-batch with an extreme example: one rank-1 update per example, excluded ones skipped */
  for (int i = 0; i < B; i++) {
    const float c = coef[i], *g = dout + (size_t)i * O, *a = inp + (size_t)i * C;
    float *s = scratch + (size_t)i * O;
    if (c == 0.0f) continue;
    if (c < 1.0f && dpm_nn_needs_rescale(s, (size_t)O)) a = dpm_nn_rescale_rows(s, g, c, (size_t)O, a, (size_t)C, row);
    cblas_sger(CblasRowMajor, O, C, 1.0f, s, 1, a, 1, dw, C);
    if (db) dpm_nn_colsum_add(db, s, 1, O);
  }
}


/* ---- ops ---------------------------------------------------------------------------------------- */

static int dense_shape(layer *l, int max_batch, int num, char *err) {
  (void)max_batch;
  if (l->s.out < 1) return dpm_err(err, "layer %d (dense): missing out=", num);
  l->OC = l->s.out, l->OH = 1, l->OW = 1;
  l->wsize = (size_t)l->s.out * l->in_n;
  l->bsize = l->s.bias ? (size_t)l->s.out : 0;
  return 0;
}

static void dense_plan(layer *l, dpm_plan *p) {
  if (p->B * l->s.out > p->scratch) p->scratch = p->B * l->s.out;
  if (l->in_n > p->row) p->row = l->in_n;
}

static void dense_init(const layer *l, float *params, const dpm_key *key, int layer_num) {
  dpm_init_uniform(l, params, key, layer_num, l->in_n);
}

static void dense_forward(dpm_model *m, layer *l, const float *in, int B) {
  const float *w = m->params + l->poff, *b = l->bsize ? w + l->wsize : NULL;
  dpm_dense_forward(l->out, in, w, b, B, (int)l->in_n, l->s.out);
}

static void dense_backward(dpm_model *m, layer *l, const float *in, float *dx, double *sq, int B) {
  if (sq) dpm_dense_sqnorms(sq, in, l->dout, l->s.bias, B, (int)l->in_n, l->s.out);
  if (dx) dpm_dense_backward_input(dx, l->dout, m->params + l->poff, B, (int)l->in_n, l->s.out);
}

static void dense_accumulate(dpm_model *m, layer *l, const float *in, float *dw, float *db, const float *coef, int B) {
  dpm_dense_accumulate(dw, db, in, l->dout, coef, m->scratch, m->row, B, (int)l->in_n, l->s.out);
}

static void dense_describe(const layer *l, char *buf, size_t len) {
  snprintf(buf, len, " out=%d%s", l->s.out, l->s.bias ? "" : " bias=0");
}

static void dense_info(const layer *l, dpm_layer_info *info) {
  info->wrank = 2, info->wdims[0] = l->s.out, info->wdims[1] = (int)l->in_n;
  info->names[0] = "weight", info->names[1] = "bias";
  info->cost = 3.0 * (double)l->wsize;
}

static dpm_norm_method dense_norm_method(const layer *l) {
  (void)l;
  return DPM_NORM_GHOST;
}

const dpm_layer_ops dpm_ops_dense = {
    .name = "dense", .keys = "out bias", .required = 1, .shape = dense_shape, .plan = dense_plan,
    .init = dense_init, .forward = dense_forward, .backward = dense_backward, .accumulate = dense_accumulate,
    .describe = dense_describe, .info = dense_info, .norm_method = dense_norm_method};
