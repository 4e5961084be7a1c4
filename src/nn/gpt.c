/* The GPT-2 model (dpmpi/nn/gpt.h): configuration, the parameter slab under the Hugging Face names, one
 * arena holding every activation and every kept gradient, forward, backward with per-tensor per-example
 * squared norms, and the coefficient-weighted gradient sum. Reads top to bottom like llm.c's train_gpt2.c:
 * tensors, arena, forward, backward, accumulate. The kernels are in seq_*.c (src/nn/seq.h).
 *
 * Clipped sum: backward keeps each linear's output gradient, the LayerNorms' per-example rows and, where
 * the budget allows, the explicit per-example weight gradients, so dpm_gpt_accumulate works from what is kept
 * (GEMMs, or GEMVs over kept gradients), never a second backward; memory is about twice the activations of a
 * non-private step plus the kept gradients (docs/design.md, "Transformers"). Examples whose float32 sum over
 * positions could exceed their clipped norm (ill-conditioned, rescaled) are formed alone and capped.
 */
#include "nn/gpt_internal.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nn/layers.h"
#include "nn/seq.h"

/* a block's tensors, in Hugging Face order */
enum { LN1_W, LN1_B, ATTN_W, ATTN_B, APROJ_W, APROJ_B, LN2_W, LN2_B, FC_W, FC_B, MPROJ_W, MPROJ_B, PER_BLOCK };
enum { WTE = 0, WPE = 1, FIRST_BLOCK = 2 };

typedef struct {
  char name[48];
  int rank, dims[2];
  size_t off, size;
} tensor;

/* one block's activations (forward) and kept gradients (backward), each [B, T, width] */
typedef struct {
  float *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *res2, *ln2, *ln2_mean, *ln2_rstd, *fch, *fchg, *res3;
  float *dqkv, *dattn, *dfch, *dmlp;       /* output gradients of c_attn, attn.c_proj, c_fc, mlp.c_proj */
  float *e_ln1w, *e_ln1b, *e_ln2w, *e_ln2b; /* per-example LayerNorm gradients [B, C] */
} block_acts;

/* The sequence linears, 4 per block (c_attn, attn.c_proj, c_fc, mlp.c_proj) then the LM head, and how
 * each one's per-example norms are formed (dpm_gpt_set_norm_method). */
enum { L_ATTN, L_APROJ, L_FC, L_MPROJ, LIN_PER_BLOCK };
typedef struct {
  int kw, kb;        /* weight and bias tensors (kb -1: none) */
  int C, OC, trans;  /* in, out; trans: the weight is stored [OC, C] (the head's wte) */
  int explicit_;     /* 0: ghost norms */
  float *E;          /* explicit and kept: [max_batch, C*OC] per-example gradients (NULL: not kept) */
  double *gsq;       /* this micro-batch's weight norms [max_batch] and ill-conditioning flags, kept for */
  unsigned char *ill; /* the clipped sum's cap (seq.h, dpm_seq_linear_accumulate) */
} linear;

struct dpm_gpt {
  dpm_gpt_config cfg;
  int max_batch, n_tensors, head; /* head: the LM head's tensor (WTE when tied) */
  tensor *t;
  float *params, *grads;
  size_t nparams;
  linear *lin;       /* LIN_PER_BLOCK * L + 1 */
  int n_lin, norms_ready; /* the kept gradients, norms and flags are this backward's */
  void *arena;
  float *x0, *lnf, *lnf_mean, *lnf_rstd, *logits, *probs; /* probs: dlogits after backward */
  float *e_lnfw, *e_lnfb;
  block_acts *blk;
  float *dres;          /* the residual stream's gradient; after backward: d loss / d x0 */
  float *tmp;           /* [B, T, 4C] */
  float *fscratch, *row;
  double *dscratch, *sq_emb, *sq_head, *cross, *sq_wte; /* sq_wte, wte_ill: kept for the clipped sum */
  unsigned char *wte_ill;
  float *cwte;          /* wte's coefficients with its ill-conditioned examples set to 0 */
  int32_t *tok, *tgt;
  int B, T, pad_id, have_targets, backward_done;
  int force_wte_alone; /* tests: gpt_internal.h */
};

/* ---- tensors -------------------------------------------------------------------------------------- */

static void add_tensor(dpm_gpt *g, const char *name, int d0, int d1) {
  tensor *t = &g->t[g->n_tensors++];
  snprintf(t->name, sizeof t->name, "%s", name);
  t->rank = d1 ? 2 : 1;
  t->dims[0] = d0, t->dims[1] = d1 ? d1 : 1;
  t->off = g->nparams;
  t->size = (size_t)d0 * (d1 ? d1 : 1);
  g->nparams += t->size;
}

static void build_tensors(dpm_gpt *g) {
  const int V = g->cfg.V, T = g->cfg.T, C = g->cfg.C, L = g->cfg.L;
  g->t = dpm_calloc((size_t)FIRST_BLOCK + (size_t)PER_BLOCK * L + 3, sizeof(tensor));
  add_tensor(g, "wte.weight", V, C);
  add_tensor(g, "wpe.weight", T, C);
  static const struct { const char *name; int in, out; } blk[PER_BLOCK] = {
      {"ln_1.weight", 1, 0},       {"ln_1.bias", 1, 0},         {"attn.c_attn.weight", 1, 3},
      {"attn.c_attn.bias", 3, 0},  {"attn.c_proj.weight", 1, 1}, {"attn.c_proj.bias", 1, 0},
      {"ln_2.weight", 1, 0},       {"ln_2.bias", 1, 0},         {"mlp.c_fc.weight", 1, 4},
      {"mlp.c_fc.bias", 4, 0},     {"mlp.c_proj.weight", 4, 1}, {"mlp.c_proj.bias", 1, 0}};
  for (int l = 0; l < L; l++)
    for (int k = 0; k < PER_BLOCK; k++) {
      char name[48];
      snprintf(name, sizeof name, "h.%d.%s", l, blk[k].name);
      add_tensor(g, name, blk[k].in * C, blk[k].out * C);
    }
  add_tensor(g, "ln_f.weight", C, 0);
  add_tensor(g, "ln_f.bias", C, 0);
  g->head = WTE;
  if (!g->cfg.tied) {
    g->head = g->n_tensors;
    add_tensor(g, "lm_head.weight", V, C);
  }
}

static int bt(int l, int k) { return FIRST_BLOCK + PER_BLOCK * l + k; }
static float *P(dpm_gpt *g, int k) { return g->params + g->t[k].off; }
static float *D(dpm_gpt *g, int k) { return g->grads + g->t[k].off; }

static void build_linears(dpm_gpt *g) {
  const int C = g->cfg.C, L = g->cfg.L;
  g->n_lin = LIN_PER_BLOCK * L + 1;
  g->lin = dpm_calloc((size_t)g->n_lin, sizeof(linear));
  for (int l = 0; l < L; l++) {
    linear *k = g->lin + LIN_PER_BLOCK * l;
    k[L_ATTN] = (linear){bt(l, ATTN_W), bt(l, ATTN_B), C, 3 * C, 0, 0, NULL, NULL, NULL};
    k[L_APROJ] = (linear){bt(l, APROJ_W), bt(l, APROJ_B), C, C, 0, 0, NULL, NULL, NULL};
    k[L_FC] = (linear){bt(l, FC_W), bt(l, FC_B), C, 4 * C, 0, 0, NULL, NULL, NULL};
    k[L_MPROJ] = (linear){bt(l, MPROJ_W), bt(l, MPROJ_B), 4 * C, C, 0, 0, NULL, NULL, NULL};
  }
  g->lin[g->n_lin - 1] = (linear){g->head, -1, C, g->cfg.V, 1, 0, NULL, NULL, NULL};
  for (int j = 0; j < g->n_lin; j++) {
    g->lin[j].gsq = dpm_calloc((size_t)g->max_batch, sizeof(double));
    g->lin[j].ill = dpm_calloc((size_t)g->max_batch, 1);
  }
}

/* ---- arena: measured with base NULL, then carved ---------------------------------------------------- */

typedef struct {
  char *base;
  size_t cur;
} arena;

static void *take(arena *a, size_t bytes) {
  const size_t off = a->cur;
  a->cur += (bytes + 63) & ~(size_t)63;
  return a->base ? a->base + off : NULL;
}
#define TAKE_F(a, n) ((float *)take((a), (n) * sizeof(float)))
#define TAKE_D(a, n) ((double *)take((a), (n) * sizeof(double)))

static size_t max3(size_t a, size_t b, size_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

static size_t layout(dpm_gpt *g, char *base) {
  arena a = {base, 0};
  const size_t B = (size_t)g->max_batch, T = (size_t)g->cfg.T, C = (size_t)g->cfg.C, V = (size_t)g->cfg.V,
               H = (size_t)g->cfg.H, BT = B * T, BTC = BT * C;
  g->x0 = TAKE_F(&a, BTC);
  for (int l = 0; l < g->cfg.L; l++) {
    block_acts *k = &g->blk[l];
    k->ln1 = TAKE_F(&a, BTC), k->ln1_mean = TAKE_F(&a, BT), k->ln1_rstd = TAKE_F(&a, BT);
    k->qkv = TAKE_F(&a, 3 * BTC), k->att = TAKE_F(&a, B * H * T * T), k->atty = TAKE_F(&a, BTC);
    k->res2 = TAKE_F(&a, BTC), k->ln2 = TAKE_F(&a, BTC), k->ln2_mean = TAKE_F(&a, BT), k->ln2_rstd = TAKE_F(&a, BT);
    k->fch = TAKE_F(&a, 4 * BTC), k->fchg = TAKE_F(&a, 4 * BTC), k->res3 = TAKE_F(&a, BTC);
    k->dqkv = TAKE_F(&a, 3 * BTC), k->dattn = TAKE_F(&a, BTC), k->dfch = TAKE_F(&a, 4 * BTC), k->dmlp = TAKE_F(&a, BTC);
    k->e_ln1w = TAKE_F(&a, B * C), k->e_ln1b = TAKE_F(&a, B * C), k->e_ln2w = TAKE_F(&a, B * C), k->e_ln2b = TAKE_F(&a, B * C);
  }
  g->lnf = TAKE_F(&a, BTC), g->lnf_mean = TAKE_F(&a, BT), g->lnf_rstd = TAKE_F(&a, BT);
  g->logits = TAKE_F(&a, BT * V), g->probs = TAKE_F(&a, BT * V);
  g->e_lnfw = TAKE_F(&a, B * C), g->e_lnfb = TAKE_F(&a, B * C);
  g->dres = TAKE_F(&a, BTC), g->tmp = TAKE_F(&a, 4 * BTC);
  /* floats: an explicit per-example weight gradient (largest C x 4C or C x V), attention's T x T, the
     coefficient-scaled output gradients of the widest linear (B T max(4C, V)) */
  g->fscratch = TAKE_F(&a, max3(4 * C * C, C * V, max3(T * T, BT * 4 * C, BT * V)));
  g->row = TAKE_F(&a, T * 4 * C + (4 * C * C > C * V ? 4 * C * C : C * V)); /* rescaled rows, one example's gradient */
  /* doubles: ghost Grams 2 T^2 + T (in + out) for the widest linear (5C: c_fc, mlp.c_proj; C + V: head), the
     tied cross term's T^2 + 2 T C, the token-equality sums' C */
  g->dscratch = TAKE_D(&a, max3(2 * T * T + T * (5 * C > C + V ? 5 * C : C + V), T * T + 2 * T * C, C));
  g->sq_emb = TAKE_D(&a, B), g->sq_head = TAKE_D(&a, B), g->cross = TAKE_D(&a, B), g->sq_wte = TAKE_D(&a, B);
  g->wte_ill = (unsigned char *)take(&a, B), g->cwte = TAKE_F(&a, B);
  g->tok = (int32_t *)take(&a, BT * sizeof(int32_t)), g->tgt = (int32_t *)take(&a, BT * sizeof(int32_t));
  return a.cur;
}

dpm_gpt *dpm_gpt_create(const dpm_gpt_config *cfg, int max_batch, char err[DPM_ERRLEN]) {
  const struct { const char *name; int v; } pos[] = {{"V (vocabulary)", cfg->V}, {"T (context)", cfg->T},
                                                       {"C (width)", cfg->C},     {"H (heads)", cfg->H},
                                                       {"L (blocks)", cfg->L},    {"max_batch", max_batch}};
  for (size_t k = 0; k < sizeof pos / sizeof pos[0]; k++)
    if (pos[k].v < 1) {
      dpm_err(err, "gpt: %s must be a positive integer, got %d", pos[k].name, pos[k].v);
      return NULL;
    }
  if (cfg->C % cfg->H) {
    dpm_err(err, "gpt: C (width) %d must be a multiple of H (heads) %d", cfg->C, cfg->H);
    return NULL;
  }
  const double BT = (double)max_batch * cfg->T, widest = fmax(4.0 * cfg->C, cfg->V);
  if (BT * widest > INT_MAX || (double)max_batch * cfg->H * cfg->T * cfg->T > INT_MAX ||
      (double)cfg->V * cfg->C > INT_MAX) {
    dpm_err(err, "gpt: batch %d x context %d x width %.0f is too large (32-bit BLAS sizes)", max_batch, cfg->T, widest);
    return NULL;
  }
  dpm_gpt *g = dpm_calloc(1, sizeof *g);
  g->cfg = *cfg;
  g->cfg.tied = cfg->tied ? 1 : 0;
  g->max_batch = max_batch;
  build_tensors(g);
  g->params = dpm_malloc_aligned(g->nparams * sizeof(float));
  g->grads = dpm_malloc_aligned(g->nparams * sizeof(float));
  memset(g->params, 0, g->nparams * sizeof(float));
  memset(g->grads, 0, g->nparams * sizeof(float));
  g->blk = dpm_calloc((size_t)cfg->L, sizeof(block_acts));
  g->arena = dpm_malloc_aligned(layout(g, NULL));
  layout(g, g->arena);
  build_linears(g);
  dpm_gpt_set_norm_method(g, DPM_NORM_AUTO, DPM_GPT_KEEP_BYTES);
  return g;
}

void dpm_gpt_free(dpm_gpt *g) {
  if (!g) return;
  for (int j = 0; j < g->n_lin; j++) dpm_free(g->lin[j].E), dpm_free(g->lin[j].gsq), dpm_free(g->lin[j].ill);
  dpm_free(g->lin);
  dpm_free(g->arena);
  dpm_free(g->blk);
  dpm_free(g->params);
  dpm_free(g->grads);
  dpm_free(g->t);
  dpm_free(g);
}

const dpm_gpt_config *dpm_gpt_get_config(const dpm_gpt *g) { return &g->cfg; }
size_t dpm_gpt_num_params(const dpm_gpt *g) { return g->nparams; }
float *dpm_gpt_params(dpm_gpt *g) { return g->params; }
float *dpm_gpt_grads(dpm_gpt *g) { return g->grads; }
int dpm_gpt_num_tensors(const dpm_gpt *g) { return g->n_tensors; }
const char *dpm_gpt_tensor_name(const dpm_gpt *g, int k) { return g->t[k].name; }
size_t dpm_gpt_tensor_offset(const dpm_gpt *g, int k) { return g->t[k].off; }
size_t dpm_gpt_tensor_size(const dpm_gpt *g, int k) { return g->t[k].size; }
void dpm_gpt_force_wte_alone(dpm_gpt *g, int on) { g->force_wte_alone = on; }
void dpm_gpt_zero_grads(dpm_gpt *g) { memset(g->grads, 0, g->nparams * sizeof(float)); }
void dpm_gpt_set_norm_method(dpm_gpt *g, dpm_norm_method method, size_t keep_bytes) {
  const int T = g->cfg.T;
  size_t budget = keep_bytes;
  for (int j = 0; j < g->n_lin; j++) {
    linear *k = &g->lin[j];
    const size_t bytes = (size_t)g->max_batch * k->C * k->OC * sizeof(float);
    const int fits = bytes <= budget;
    int keep = 0;
    if (method == DPM_NORM_GHOST) {
      k->explicit_ = 0;
    } else if (method == DPM_NORM_EXPLICIT) {
      k->explicit_ = 1, keep = fits;
    } else if (fits && !dpm_seq_linear_ghost_cheaper(T, k->C, k->OC, 1)) {
      k->explicit_ = 1, keep = 1;
    } else {
      k->explicit_ = !dpm_seq_linear_ghost_cheaper(T, k->C, k->OC, 0);
    }
    dpm_free(k->E);
    k->E = NULL;
    if (keep) {
      k->E = dpm_malloc_aligned(bytes);
      budget -= bytes;
    }
  }
  g->norms_ready = 0;
}

int dpm_gpt_tensor_shape(const dpm_gpt *g, int k, int dims[2]) {
  dims[0] = g->t[k].dims[0], dims[1] = g->t[k].dims[1];
  return g->t[k].rank;
}

int dpm_gpt_tensor_find(const dpm_gpt *g, const char *name) {
  for (int k = 0; k < g->n_tensors; k++)
    if (!strcmp(g->t[k].name, name)) return k;
  return -1;
}

void dpm_gpt_init_params(dpm_gpt *g, const dpm_key *key) {
  const double std = 0.02, proj = 0.02 / sqrt(2.0 * g->cfg.L);
  memset(g->params, 0, g->nparams * sizeof(float));
  for (int k = 0; k < g->n_tensors; k++) {
    const tensor *t = &g->t[k];
    const char *leaf = strrchr(t->name, '.') + 1, *ln = strstr(t->name, "ln_");
    float *p = g->params + t->off;
    if (ln && !strcmp(leaf, "weight")) {
      for (size_t j = 0; j < t->size; j++) p[j] = 1.0f;
    } else if (t->rank == 2) {
      const int residual = strstr(t->name, "c_proj.weight") != NULL;
      dpm_gauss_add(key, (uint64_t)k, DPM_STREAM_INIT, 0, t->size, residual ? proj : std, p);
    } /* biases and LayerNorm biases stay 0 */
  }
}

/* ---- forward ---------------------------------------------------------------------------------------- */

static void add_into(float *y, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) y[k] += x[k];
}

double dpm_gpt_forward(dpm_gpt *g, const int32_t *tok, const int32_t *tgt, int B, int T, int pad_id, double *loss) {
  const int V = g->cfg.V, C = g->cfg.C, H = g->cfg.H;
  const size_t BT = (size_t)B * T, BTC = BT * C;
  DPM_ASSERT(B >= 1 && B <= g->max_batch && T >= 1 && T <= g->cfg.T);
  for (size_t r = 0; r < BT; r++) {
    DPM_ASSERT(tok[r] >= 0 && tok[r] < V);
    DPM_ASSERT(!tgt || tgt[r] == pad_id || (tgt[r] >= 0 && tgt[r] < V));
  }
  memcpy(g->tok, tok, BT * sizeof(int32_t));
  if (tgt) memcpy(g->tgt, tgt, BT * sizeof(int32_t));
  g->B = B, g->T = T, g->pad_id = pad_id, g->have_targets = tgt != NULL, g->backward_done = 0;

  dpm_embed_forward(g->x0, tok, P(g, WTE), P(g, WPE), B, T, C);
  const float *x = g->x0; /* the residual stream entering block l */
  for (int l = 0; l < g->cfg.L; l++) {
    block_acts *k = &g->blk[l];
    dpm_layernorm_forward(k->ln1, k->ln1_mean, k->ln1_rstd, x, P(g, bt(l, LN1_W)), P(g, bt(l, LN1_B)), B, T, C);
    dpm_seq_linear_forward(k->qkv, k->ln1, P(g, bt(l, ATTN_W)), P(g, bt(l, ATTN_B)), B, T, C, 3 * C);
    dpm_attention_forward(k->atty, k->att, k->qkv, B, T, C, H);
    dpm_seq_linear_forward(k->res2, k->atty, P(g, bt(l, APROJ_W)), P(g, bt(l, APROJ_B)), B, T, C, C);
    add_into(k->res2, x, BTC);
    dpm_layernorm_forward(k->ln2, k->ln2_mean, k->ln2_rstd, k->res2, P(g, bt(l, LN2_W)), P(g, bt(l, LN2_B)), B, T, C);
    dpm_seq_linear_forward(k->fch, k->ln2, P(g, bt(l, FC_W)), P(g, bt(l, FC_B)), B, T, C, 4 * C);
    dpm_gelu_forward(k->fchg, k->fch, 4 * BTC);
    dpm_seq_linear_forward(k->res3, k->fchg, P(g, bt(l, MPROJ_W)), P(g, bt(l, MPROJ_B)), B, T, 4 * C, C);
    add_into(k->res3, k->res2, BTC);
    x = k->res3;
  }
  const int lnf = bt(g->cfg.L, 0);
  dpm_layernorm_forward(g->lnf, g->lnf_mean, g->lnf_rstd, x, P(g, lnf), P(g, lnf + 1), B, T, C);
  dpm_lm_head_forward(g->logits, g->lnf, P(g, g->head), B, T, C, V);
  if (!tgt) {
    if (loss) memset(loss, 0, (size_t)B * sizeof(double));
    return 0;
  }
  /* probabilities in their own buffer (backward turns them into dlogits in place): logits stay readable */
  return dpm_seq_xent_forward(g->probs, loss, g->logits, tgt, pad_id, B, T, V);
}

const float *dpm_gpt_logits(const dpm_gpt *g) { return g->logits; }

/* ---- backward: per-tensor per-example squared norms ----------------------------------------------------- */

/* linear j's input A and output gradient G, [B*T, C] and [B*T, OC] (G valid once backward has passed it) */
static void linear_io(const dpm_gpt *g, int j, const float **A, const float **G) {
  if (j == g->n_lin - 1) {
    *A = g->lnf, *G = g->probs; /* dlogits after backward */
    return;
  }
  const block_acts *k = &g->blk[j / LIN_PER_BLOCK];
  switch (j % LIN_PER_BLOCK) {
    case L_ATTN: *A = k->ln1, *G = k->dqkv; break;
    case L_APROJ: *A = k->atty, *G = k->dattn; break;
    case L_FC: *A = k->ln2, *G = k->dfch; break;
    default: *A = k->fchg, *G = k->dmlp; break;
  }
}

/* squared norms of linear j's weight (sqw) and bias (sqb, may be NULL) gradients: ghost, explicit and kept
   for the clipped sum, or explicit in scratch */
static void linear_norms(dpm_gpt *g, int j, double *sqw, double *sqb) {
  linear *k = &g->lin[j];
  const float *A, *G;
  linear_io(g, j, &A, &G);
  memset(k->ill, 0, (size_t)g->B);
  if (!k->explicit_)
    dpm_seq_linear_sqnorms_ghost(k->gsq, sqb, k->ill, A, G, g->dscratch, g->B, g->T, k->C, k->OC);
  else if (k->E)
    dpm_seq_linear_grads_explicit(k->E, k->gsq, sqb, A, G, k->trans, g->B, g->T, k->C, k->OC);
  else
    dpm_seq_linear_sqnorms_explicit(k->gsq, sqb, k->ill, A, G, g->fscratch, g->B, g->T, k->C, k->OC);
  memcpy(sqw, k->gsq, (size_t)g->B * sizeof(double));
}

void dpm_gpt_backward(dpm_gpt *g, double *sq) {
  DPM_ASSERT(g->have_targets);
  const int B = g->B, T = g->T, C = g->cfg.C, V = g->cfg.V, H = g->cfg.H, L = g->cfg.L, lnf = bt(L, 0);
  const size_t BTC = (size_t)B * T * C;
#define SQ(k) (sq ? sq + (size_t)(k) * B : NULL)
  float *dlogits = g->probs, *tmp = g->tmp, *dres = g->dres;

  /* loss, LM head, final LayerNorm */
  dpm_seq_xent_backward(dlogits, g->probs, g->tgt, g->pad_id, B, T, V);
  dpm_lm_head_backward(tmp, dlogits, P(g, g->head), B, T, C, V);
  if (sq) linear_norms(g, g->n_lin - 1, g->sq_head, NULL);
  memset(dres, 0, BTC * sizeof(float));
  const float *xL = L ? g->blk[L - 1].res3 : g->x0;
  dpm_layernorm_backward(dres, g->e_lnfw, g->e_lnfb, tmp, xL, g->lnf_mean, g->lnf_rstd, P(g, lnf), B, T, C);
  if (sq) dpm_rows_sqnorm(SQ(lnf), g->e_lnfw, B, C), dpm_rows_sqnorm(SQ(lnf + 1), g->e_lnfb, B, C);

  /* blocks, last to first; dres is the gradient of the residual stream */
  for (int l = L - 1; l >= 0; l--) {
    block_acts *k = &g->blk[l];
    const float *x = l ? g->blk[l - 1].res3 : g->x0;
    /* MLP: res3 = res2 + c_proj(gelu(c_fc(ln_2(res2)))) */
    memcpy(k->dmlp, dres, BTC * sizeof(float));
    dpm_seq_linear_backward(tmp, k->dmlp, P(g, bt(l, MPROJ_W)), B, T, 4 * C, C);
    if (sq) linear_norms(g, LIN_PER_BLOCK * l + L_MPROJ, SQ(bt(l, MPROJ_W)), SQ(bt(l, MPROJ_B)));
    dpm_gelu_backward(k->dfch, k->fch, tmp, 4 * BTC);
    dpm_seq_linear_backward(tmp, k->dfch, P(g, bt(l, FC_W)), B, T, C, 4 * C);
    if (sq) linear_norms(g, LIN_PER_BLOCK * l + L_FC, SQ(bt(l, FC_W)), SQ(bt(l, FC_B)));
    dpm_layernorm_backward(dres, k->e_ln2w, k->e_ln2b, tmp, k->res2, k->ln2_mean, k->ln2_rstd, P(g, bt(l, LN2_W)),
                           B, T, C);
    if (sq) dpm_rows_sqnorm(SQ(bt(l, LN2_W)), k->e_ln2w, B, C), dpm_rows_sqnorm(SQ(bt(l, LN2_B)), k->e_ln2b, B, C);
    /* attention: res2 = x + c_proj(attention(c_attn(ln_1(x)))) */
    memcpy(k->dattn, dres, BTC * sizeof(float));
    dpm_seq_linear_backward(tmp, k->dattn, P(g, bt(l, APROJ_W)), B, T, C, C);
    if (sq) linear_norms(g, LIN_PER_BLOCK * l + L_APROJ, SQ(bt(l, APROJ_W)), SQ(bt(l, APROJ_B)));
    dpm_attention_backward(k->dqkv, tmp, k->qkv, k->att, g->fscratch, B, T, C, H);
    dpm_seq_linear_backward(tmp, k->dqkv, P(g, bt(l, ATTN_W)), B, T, C, 3 * C);
    if (sq) linear_norms(g, LIN_PER_BLOCK * l + L_ATTN, SQ(bt(l, ATTN_W)), SQ(bt(l, ATTN_B)));
    dpm_layernorm_backward(dres, k->e_ln1w, k->e_ln1b, tmp, x, k->ln1_mean, k->ln1_rstd, P(g, bt(l, LN1_W)), B, T,
                           C);
    if (sq) dpm_rows_sqnorm(SQ(bt(l, LN1_W)), k->e_ln1w, B, C), dpm_rows_sqnorm(SQ(bt(l, LN1_B)), k->e_ln1b, B, C);
  }

  /* embeddings; dres is now d loss / d x0. The tied wte's gradient is the sum of its two uses E_b + H_b:
     ||E_b||^2 + ||H_b||^2 + 2 <E_b, H_b> */
  if (sq) {
    dpm_embed_sqnorms(g->sq_emb, SQ(WPE), g->tok, dres, g->dscratch, B, T, C);
    double *sw = sq + (size_t)WTE * B;
    if (g->cfg.tied) {
      const float *Hk = g->lin[g->n_lin - 1].E;
      if (Hk)
        dpm_tied_cross_kept(g->cross, g->tok, dres, Hk, B, T, C, V);
      else
        dpm_tied_cross(g->cross, g->tok, dres, g->lnf, dlogits, g->dscratch, B, T, C, V);
      for (int b = 0; b < B; b++) {
        const double v = g->sq_emb[b] + g->sq_head[b] + 2.0 * g->cross[b];
        sw[b] = v < 0 ? 0 : v; /* rounding of a ~0 norm; NaN stays NaN */
      }
    } else {
      memcpy(sw, g->sq_emb, (size_t)B * sizeof(double));
      memcpy(sq + (size_t)g->head * B, g->sq_head, (size_t)B * sizeof(double));
    }
    memcpy(g->sq_wte, sw, (size_t)B * sizeof(double));
    dpm_wte_ill(g->wte_ill, sw, dres, g->cfg.tied ? g->lnf : NULL, g->cfg.tied ? dlogits : NULL, B, T, C, V);
  }
#undef SQ
  g->backward_done = 1;
  g->norms_ready = sq != NULL;
}

/* ---- the coefficient-weighted gradient sum -------------------------------------------------------------- */

void dpm_gpt_accumulate(dpm_gpt *g, const float *coef) {
  DPM_ASSERT(g->backward_done);
  const int B = g->B, T = g->T, C = g->cfg.C, L = g->cfg.L, lnf = bt(L, 0);
#define CO(k) (coef ? coef + (size_t)(k) * B : NULL)
  /* wte's examples whose terms cancel are formed alone and capped after the batch (dpm_wte_accumulate_alone) */
  const float *cwte = CO(WTE);
  int alone = 0;
  if (coef && g->norms_ready) {
    for (int b = 0; b < B; b++) {
      const int ill = (g->wte_ill[b] || g->force_wte_alone) && cwte[b] != 0.0f;
      g->cwte[b] = ill ? 0.0f : cwte[b];
      alone |= ill;
    }
    if (alone) cwte = g->cwte;
  }
  dpm_embed_accumulate(D(g, WTE), D(g, WPE), g->tok, g->dres, cwte, CO(WPE), B, T, C);
  /* the linears and the head: from the kept per-example gradients (explicit norms of the same floats), or
     one GEMM with the coefficients folded into the output gradients */
  for (int j = 0; j < g->n_lin; j++) {
    const linear *k = &g->lin[j];
    const float *A, *G;
    linear_io(g, j, &A, &G);
    float *dw = D(g, k->kw), *db = k->kb >= 0 ? D(g, k->kb) : NULL;
    const float *cw = k->kw == WTE ? cwte : CO(k->kw), *cb = k->kb >= 0 ? CO(k->kb) : NULL;
    const double *gsq = g->norms_ready ? k->gsq : NULL;
    const unsigned char *ill = g->norms_ready ? k->ill : NULL;
    if (k->E && g->norms_ready) {
      dpm_rows_accumulate(dw, k->E, cw, B, (size_t)k->C * k->OC);
      if (db) dpm_seq_linear_accumulate(NULL, db, A, G, NULL, cb, NULL, NULL, NULL, NULL, B, T, k->C, k->OC);
    } else if (k->trans) {
      dpm_seq_linear_accumulate_t(dw, A, G, cw, gsq, ill, g->fscratch, g->row, B, T, k->C, k->OC);
    } else {
      dpm_seq_linear_accumulate(dw, db, A, G, cw, cb, gsq, ill, g->fscratch, g->row, B, T, k->C, k->OC);
    }
  }
  for (int b = 0; alone && b < B; b++) {
    if (!(g->wte_ill[b] || g->force_wte_alone) || coef[(size_t)WTE * B + b] == 0.0f) continue;
    const size_t r = (size_t)b * T;
    const float *Hk = g->lin[g->n_lin - 1].E;
    const int tied = g->cfg.tied;
    dpm_wte_accumulate_alone(D(g, WTE), g->fscratch, g->tok + r, g->dres + r * C, tied ? g->lnf + r * C : NULL,
                             tied ? g->probs + r * g->cfg.V : NULL, tied && Hk ? Hk + (size_t)b * g->cfg.V * C : NULL,
                             coef[(size_t)WTE * B + b], g->sq_wte[b], T, C, g->cfg.V);
  }
  /* LayerNorms: their per-example rows */
  for (int l = 0; l <= L; l++) {
    const int kw = l < L ? bt(l, LN1_W) : lnf;
    const float *rows[4] = {l < L ? g->blk[l].e_ln1w : g->e_lnfw, l < L ? g->blk[l].e_ln1b : g->e_lnfb,
                            l < L ? g->blk[l].e_ln2w : NULL, l < L ? g->blk[l].e_ln2b : NULL};
    const int ks[4] = {kw, kw + 1, l < L ? bt(l, LN2_W) : -1, l < L ? bt(l, LN2_B) : -1};
    for (int r = 0; r < 4; r++)
      if (rows[r]) dpm_rows_accumulate(D(g, ks[r]), rows[r], CO(ks[r]), B, (size_t)C);
  }
#undef CO
}

/* linear j whose weight is tensor k, or -1 */
static int linear_of(const dpm_gpt *g, int k) {
  for (int j = 0; j < g->n_lin; j++)
    if (g->lin[j].kw == k) return j;
  return -1;
}

dpm_norm_method dpm_gpt_norm_method(const dpm_gpt *g, int k) {
  DPM_ASSERT(k >= 0 && k < g->n_tensors);
  const int j = linear_of(g, k);
  if (j >= 0) return g->lin[j].explicit_ ? DPM_NORM_EXPLICIT : DPM_NORM_GHOST;
  return k == WTE ? DPM_NORM_GHOST : DPM_NORM_EXPLICIT; /* untied wte: token equality; the rest: formed */
}

int dpm_gpt_norm_kept(const dpm_gpt *g, int k) {
  const int j = linear_of(g, k);
  return j >= 0 && g->lin[j].E != NULL;
}
