/* The GPT LM head layer kind (`lm_head tied=1`, or `lm_head tied=0` with its own lm_head.weight [V, C]):
 * the final LayerNorm ln_f over [T, C] activations, then logits [T, V] = ln_f(x) W^T with W the embed
 * layer's wte (tied; the embed layer must be on the same pipeline stage) or lm_head.weight; the model's
 * masked sequence cross-entropy follows (model.c). Its clipping group is ln_f (+ lm_head.weight untied):
 * the tied head's use of wte belongs to the embed layer's group, which adds its norm and cross term
 * (embed.c). The head's norm is ghost or explicit by cost, as a sequence linear.
 */
#include "nn/lm_head.h"

#include <stdio.h>
#include <string.h>

#include "nn/seq.h"

static int lm_head_shape(layer *l, int max_batch, int num, char *err) {
  (void)max_batch;
  const int C = l->W, V = l->s.vocab;
  if (l->H != 1 || l->C < 1)
    return dpm_err(err, "layer %d (lm_head): needs [T, width] activations from embed or block, got %dx%dx%d", num,
                   l->C, l->H, l->W);
  if (V < 2) return dpm_err(err, "layer %d (lm_head): needs vocab= (at least 2), or an embed layer before it", num);
  l->OC = l->C, l->OH = 1, l->OW = V;
  l->wsize = 2 * (size_t)C + (l->s.tied ? 0 : (size_t)V * C), l->bsize = 0;
  return 0;
}

static void lm_head_plan(layer *l, dpm_plan *p) {
  lm_head_state tmp, *k = dpm_plan_carve(p, sizeof *k);
  if (!k) k = &tmp;
  memset(k, 0, sizeof *k);
  const size_t B = p->B, T = (size_t)l->C, C = (size_t)l->W, V = (size_t)l->s.vocab, BT = B * T;
  k->lnf = dpm_plan_carve(p, BT * C * sizeof(float));
  k->mean = dpm_plan_carve(p, BT * sizeof(float)), k->rstd = dpm_plan_carve(p, BT * sizeof(float));
  k->ew = dpm_plan_carve(p, B * C * sizeof(float)), k->eb = dpm_plan_carve(p, B * C * sizeof(float));
  k->dxs = dpm_plan_carve(p, BT * C * sizeof(float));
  k->gsq = dpm_plan_carve(p, B * sizeof(double)), k->tmp = dpm_plan_carve(p, B * sizeof(double));
  k->ill = dpm_plan_carve(p, B);
  k->explicit_ = !dpm_seq_linear_ghost_cheaper((int)T, (int)C, (int)V, 0);
  /* scratch: dh [B, T, C], then the explicit gradient C V or the clipped sum's B T V; ghost Grams; rows */
  size_t fs = C * V > BT * V ? C * V : BT * V;
  if (BT * C + fs > p->scratch) p->scratch = BT * C + fs;
  if (2 * T * T + T * (C + V) > p->ghost) p->ghost = 2 * T * T + T * (C + V);
  if (T * C + C * V > p->row) p->row = T * C + C * V;
  if (p->base) l->ks = k;
}

static void lm_head_init(const layer *l, float *p, const dpm_key *key, int layer_num) {
  const int C = l->W;
  memset(p, 0, l->wsize * sizeof(float));
  for (int c = 0; c < C; c++) p[c] = 1.0f; /* ln_f.weight 1, bias 0 */
  if (!l->s.tied) dpm_gauss_add(key, (uint64_t)layer_num * 16 + 2, DPM_STREAM_INIT, 0, (size_t)l->s.vocab * C, 0.02, p + 2 * C);
}

const float *dpm_lm_head_weight(const dpm_model *m, const layer *l) {
  return l->s.tied ? m->params + m->L[0].poff : m->params + l->poff + 2 * (size_t)l->W;
}

static void lm_head_forward(dpm_model *m, layer *l, const float *x, int B) {
  lm_head_state *k = l->ks;
  const int T = l->C, C = l->W, V = l->s.vocab;
  const float *w = m->params + l->poff;
  dpm_layernorm_forward(k->lnf, k->mean, k->rstd, x, w, w + C, B, T, C);
  dpm_lm_head_forward(l->out, k->lnf, dpm_lm_head_weight(m, l), B, T, C, V);
  k->norms_ready = 0;
}

static void lm_head_backward(dpm_model *m, layer *l, const float *x, float *dx, double *sq, int B) {
  lm_head_state *k = l->ks;
  const int T = l->C, C = l->W, V = l->s.vocab;
  const size_t BTC = (size_t)B * T * C;
  const float *w = m->params + l->poff;
  float *dh = m->scratch, *dres = dx ? dx : k->dxs;
  dpm_lm_head_backward(dh, l->dout, dpm_lm_head_weight(m, l), B, T, C, V);
  const int fw = dpm_layer_frozen(l, 0), fb = dpm_layer_frozen(l, 1), fh = !l->s.tied && dpm_layer_frozen(l, 2);
  if (sq && !fh) { /* the head's norm: this group's (untied) or the embed's (tied: embed.c reads k->gsq) */
    memset(k->ill, 0, (size_t)B);
    if (k->explicit_)
      dpm_seq_linear_sqnorms_explicit(k->gsq, NULL, k->ill, k->lnf, l->dout, m->scratch + BTC, B, T, C, V);
    else
      dpm_seq_linear_sqnorms_ghost(k->gsq, NULL, k->ill, k->lnf, l->dout, m->ghost, B, T, C, V);
  }
  memset(dres, 0, BTC * sizeof(float));
  dpm_layernorm_backward(dres, k->ew, k->eb, dh, x, k->mean, k->rstd, w, B, T, C);
  if (sq) { /* frozen tensors are left out */
    memset(sq, 0, (size_t)B * sizeof(double));
    if (!fw) dpm_rows_sqnorm(sq, k->ew, B, (size_t)C);
    if (!fb) dpm_rows_sqnorm(k->tmp, k->eb, B, (size_t)C);
    for (int b = 0; b < B; b++) sq[b] += (fb ? 0.0 : k->tmp[b]) + (l->s.tied || fh ? 0.0 : k->gsq[b]);
  }
  k->norms_ready = sq != NULL && !fh;
}

static void lm_head_accumulate(dpm_model *m, layer *l, const float *x, float *dw, float *db, const float *coef, int B) {
  (void)x, (void)db;
  lm_head_state *k = l->ks;
  const int T = l->C, C = l->W, V = l->s.vocab;
  if (!dpm_layer_frozen(l, 0)) dpm_rows_accumulate(dw, k->ew, coef, B, (size_t)C);
  if (!dpm_layer_frozen(l, 1)) dpm_rows_accumulate(dw + C, k->eb, coef, B, (size_t)C);
  if (!l->s.tied && !dpm_layer_frozen(l, 2)) {
    const int ready = coef && k->norms_ready;
    dpm_seq_linear_accumulate_t(dw + 2 * C, k->lnf, l->dout, coef, ready ? k->gsq : NULL, ready ? k->ill : NULL,
                                m->scratch, m->row, B, T, C, V);
  } /* tied: the embed layer adds the head's use of wte with its own coefficients */
}

static void lm_head_describe(const layer *l, char *buf, size_t len) {
  snprintf(buf, len, " vocab=%d tied=%d", l->s.vocab, l->s.tied);
}

static void lm_head_info(const layer *l, dpm_layer_info *info) {
  const int C = l->W, T = l->C, V = l->s.vocab;
  static const char *const names[3] = {"ln_f.weight", "ln_f.bias", "lm_head.weight"};
  info->n_tensors = l->s.tied ? 2 : 3;
  for (int t = 0; t < info->n_tensors; t++) {
    dpm_tensor_info *ti = &info->tensors[t];
    snprintf(ti->name, sizeof ti->name, "%s", names[t]);
    ti->off = (size_t)t * C, ti->size = t < 2 ? (size_t)C : (size_t)V * C;
    ti->rank = t < 2 ? 1 : 2;
    ti->dims[0] = t < 2 ? C : V, ti->dims[1] = C;
  }
  info->cost = 4.0 * T * (double)C * V; /* logits, dh, the head's gradient and its norm */
}

static void lm_head_set_norm(layer *l, int explicit_, int max_batch) {
  (void)max_batch;
  ((lm_head_state *)l->ks)->explicit_ = explicit_;
}
static size_t lm_head_explicit_bytes(const layer *l, int max_batch) { (void)l, (void)max_batch; return 0; }
static dpm_norm_method lm_head_norm_method(const layer *l) {
  return ((const lm_head_state *)l->ks)->explicit_ ? DPM_NORM_EXPLICIT : DPM_NORM_GHOST;
}

const dpm_layer_ops dpm_ops_lm_head = {
    .name = "lm_head", .keys = "tied vocab", .required = 0, .seq_loss = 1, .freezes_tensors = 1, .shape = lm_head_shape,
    .plan = lm_head_plan, .init = lm_head_init, .forward = lm_head_forward, .backward = lm_head_backward,
    .accumulate = lm_head_accumulate, .describe = lm_head_describe, .info = lm_head_info,
    .explicit_bytes = lm_head_explicit_bytes, .set_norm = lm_head_set_norm, .norm_method = lm_head_norm_method};
