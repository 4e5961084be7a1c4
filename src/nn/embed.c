/* The GPT embedding layer kind (`embed vocab=V context=T width=C`): token ids (the model's input, [T] floats
 * per example, exact integers) -> [T, C] = wte[tok] + wpe[t], tensors wte.weight [V, C] and wpe.weight
 * [context, C], one clipping group. Per-example norms: wte's embedding use by token equality, wpe's from its
 * rows; with a tied lm_head (the model's last layer, on the same stage) wte's gradient is the sum of both
 * uses, so its squared norm adds the head's ||H_b||^2 (lm_head.c) and the cross term 2 <E_b, H_b>, and its
 * clipped sum adds the head's use with this group's coefficients. Examples whose wte terms cancel badly are
 * formed alone and capped (nn/seq.h, dpm_wte_ill), as in dpm_gpt.
 */
#include "nn/layer.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nn/lm_head.h"
#include "nn/seq.h"

typedef struct {
  int32_t *tok;                   /* [B, T] */
  double *sq_wte, *sq_wpe, *cross; /* [B]: wte's whole squared norm, wpe's, the tied cross term */
  unsigned char *ill;             /* wte's ill-conditioning flags */
  float *cwte;                    /* wte's coefficients with the ill-conditioned examples set to 0 */
  int norms_ready;
} embed_state;

static int embed_shape(layer *l, int max_batch, int num, char *err) {
  (void)max_batch;
  const dpm_layer_spec *s = &l->s;
  if (l->C != 1 || l->H != 1)
    return dpm_err(err, "layer %d (embed): takes token ids (input 1x1xT), got %dx%dx%d", num, l->C, l->H, l->W);
  if (l->W > s->context)
    return dpm_err(err, "layer %d (embed): sequences of %d tokens exceed context=%d", num, l->W, s->context);
  l->OC = l->W, l->OH = 1, l->OW = s->width;
  l->wsize = ((size_t)s->vocab + (size_t)s->context) * s->width, l->bsize = 0;
  return 0;
}

static void embed_plan(layer *l, dpm_plan *p) {
  embed_state tmp, *k = dpm_plan_carve(p, sizeof *k);
  if (!k) k = &tmp;
  const size_t B = p->B, T = (size_t)l->W, C = (size_t)l->s.width, V = (size_t)l->s.vocab;
  k->tok = dpm_plan_carve(p, B * T * sizeof(int32_t));
  k->sq_wte = dpm_plan_carve(p, B * sizeof(double)), k->sq_wpe = dpm_plan_carve(p, B * sizeof(double));
  k->cross = dpm_plan_carve(p, B * sizeof(double));
  k->ill = dpm_plan_carve(p, B), k->cwte = dpm_plan_carve(p, B * sizeof(float));
  k->norms_ready = 0;
  /* doubles: the cross term's T^2 + 2 T C, the token sums' C; floats: one example's wte gradient V C, or the
     tied head's clipped sum's B T V; rows: T C + C V */
  if (T * T + 2 * T * C > p->ghost) p->ghost = T * T + 2 * T * C;
  const size_t fs = V * C > B * T * V ? V * C : B * T * V;
  if (fs > p->scratch) p->scratch = fs;
  if (T * C + C * V > p->row) p->row = T * C + C * V;
  if (p->base) l->ks = k;
}

static void embed_init(const layer *l, float *p, const dpm_key *key, int layer_num) {
  memset(p, 0, l->wsize * sizeof(float));
  const size_t nte = (size_t)l->s.vocab * l->s.width;
  dpm_gauss_add(key, (uint64_t)layer_num * 16, DPM_STREAM_INIT, 0, nte, 0.02, p);
  dpm_gauss_add(key, (uint64_t)layer_num * 16 + 1, DPM_STREAM_INIT, 0, l->wsize - nte, 0.02, p + nte);
}

static void embed_forward(dpm_model *m, layer *l, const float *x, int B) {
  embed_state *k = l->ks;
  const int T = l->W, C = l->s.width, V = l->s.vocab;
  for (size_t r = 0; r < (size_t)B * T; r++) {
    const float v = x[r];
    if (!(v >= 0 && v < V && v == floorf(v)))
      dpm_fatal("token %g of example %zu position %zu is not an id in [0, %d)", (double)v, r / T, r % T, V);
    k->tok[r] = (int32_t)v;
  }
  const float *wte = m->params + l->poff;
  dpm_embed_forward(l->out, k->tok, wte, wte + (size_t)V * C, B, T, C);
  k->norms_ready = 0;
}

/* the tied lm_head of the same model, or NULL */
static const layer *tied_head(const dpm_model *m) {
  const layer *h = &m->L[m->n - 1];
  return h->ops == &dpm_ops_lm_head && h->s.tied ? h : NULL;
}

static void embed_backward(dpm_model *m, layer *l, const float *x, float *dx, double *sq, int B) {
  (void)x;
  embed_state *k = l->ks;
  const int T = l->W, C = l->s.width, V = l->s.vocab;
  if (dx) memset(dx, 0, (size_t)B * T * sizeof(float)); /* token ids have no gradient */
  k->norms_ready = sq != NULL;
  if (!sq) return;
  const float *g = l->dout;
  const int fte = dpm_layer_frozen(l, 0), fpe = dpm_layer_frozen(l, 1);
  if (fte) { /* frozen wte: not released, its norm (and the tied head's part of it) not needed */
    if (!fpe) dpm_embed_sqnorms(NULL, k->sq_wpe, k->tok, g, m->ghost, B, T, C);
    for (int b = 0; b < B; b++) sq[b] = fpe ? 0.0 : k->sq_wpe[b];
    return;
  }
  dpm_embed_sqnorms(k->sq_wte, k->sq_wpe, k->tok, g, m->ghost, B, T, C);
  const layer *hl = tied_head(m);
  const lm_head_state *h = hl ? hl->ks : NULL;
  if (h) {
    dpm_tied_cross(k->cross, k->tok, g, h->lnf, hl->dout, m->ghost, B, T, C, V);
    for (int b = 0; b < B; b++) {
      const double v = k->sq_wte[b] + h->gsq[b] + 2.0 * k->cross[b];
      k->sq_wte[b] = v < 0 ? 0 : v; /* rounding of a ~0 norm; NaN stays NaN */
    }
  }
  dpm_wte_ill(k->ill, k->sq_wte, g, h ? h->lnf : NULL, h ? hl->dout : NULL, B, T, C, V);
  for (int b = 0; b < B; b++) sq[b] = k->sq_wte[b] + (fpe ? 0.0 : k->sq_wpe[b]);
}

static void embed_accumulate(dpm_model *m, layer *l, const float *x, float *dw, float *db, const float *coef, int B) {
  (void)x, (void)db;
  embed_state *k = l->ks;
  const int T = l->W, C = l->s.width, V = l->s.vocab;
  float *dwte = dw, *dwpe = dpm_layer_frozen(l, 1) ? NULL : dw + (size_t)V * C;
  if (dpm_layer_frozen(l, 0)) { /* wte frozen: neither use of it is summed */
    dpm_embed_accumulate(NULL, dwpe, k->tok, l->dout, NULL, coef, B, T, C);
    return;
  }
  const layer *hl = tied_head(m);
  const lm_head_state *h = hl ? hl->ks : NULL;
  /* wte's examples whose terms cancel are formed alone and capped after the batch */
  const float *cwte = coef;
  int alone = 0;
  if (coef && k->norms_ready) {
    for (int b = 0; b < B; b++) {
      const int ill = k->ill[b] && coef[b] != 0.0f;
      k->cwte[b] = ill ? 0.0f : coef[b];
      alone |= ill;
    }
    if (alone) cwte = k->cwte;
  }
  dpm_embed_accumulate(dwte, dwpe, k->tok, l->dout, cwte, coef, B, T, C);
  if (h) {
    const int ready = coef && h->norms_ready;
    dpm_seq_linear_accumulate_t(dwte, h->lnf, hl->dout, cwte, ready ? h->gsq : NULL, ready ? h->ill : NULL,
                                m->scratch, m->row, B, T, C, V);
  }
  for (int b = 0; alone && b < B; b++) {
    if (!k->ill[b] || coef[b] == 0.0f) continue;
    const size_t r = (size_t)b * T;
    dpm_wte_accumulate_alone(dwte, m->scratch, k->tok + r, l->dout + r * C, h ? h->lnf + r * C : NULL,
                             h ? hl->dout + r * V : NULL, NULL, coef[b], k->sq_wte[b], T, C, V);
  }
}

static void embed_describe(const layer *l, char *buf, size_t len) {
  snprintf(buf, len, " vocab=%d context=%d width=%d", l->s.vocab, l->s.context, l->s.width);
}

static void embed_info(const layer *l, dpm_layer_info *info) {
  const int V = l->s.vocab, C = l->s.width;
  info->n_tensors = 2;
  info->tensors[0] = (dpm_tensor_info){.name = "wte.weight", .off = 0, .size = (size_t)V * C, .rank = 2, .dims = {V, C}};
  info->tensors[1] = (dpm_tensor_info){.name = "wpe.weight", .off = (size_t)V * C, .size = (size_t)l->s.context * C,
                                       .rank = 2, .dims = {l->s.context, C}};
  info->cost = 6.0 * l->W * (double)C + (double)l->W * l->W * C; /* gathers, scatters, token equality */
}

static dpm_norm_method embed_norm_method(const layer *l) {
  (void)l;
  return DPM_NORM_GHOST; /* token equality: nothing per example formed */
}

const dpm_layer_ops dpm_ops_embed = {
    .name = "embed", .keys = "vocab context width", .required = 3, .freezes_tensors = 1, .shape = embed_shape, .plan = embed_plan,
    .init = embed_init, .forward = embed_forward, .backward = embed_backward, .accumulate = embed_accumulate,
    .describe = embed_describe, .info = embed_info, .norm_method = embed_norm_method};
