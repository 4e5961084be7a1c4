/* The GPT block layer kind (`block heads=H`): one pre-LayerNorm transformer block of GPT-2 over [T, C]
 * activations, x -> r = x + c_proj(attention(c_attn(ln_1(x)))) -> r + c_proj(gelu(c_fc(ln_2(r)))), its 12
 * tensors under the Hugging Face names h.{l}.* (l = the block's number in the whole model), and its ops
 * table. The block is one clipping group: its per-example squared norm is the sum of its tensors' (the four
 * sequence linears by the ghost or the explicit form, chosen per linear by cost; the LayerNorms from their
 * C-sized per-example rows).
 * Kept explicit gradients: at create, when the model's memory cap for kept per-example gradients allows
 * (src/nn/model.c, explicit_bytes), the linears for which explicit-and-kept is cheaper than ghost
 * (dpm_seq_linear_ghost_cheaper with keep = 1) keep every example's dW_b in the arena, and the clipped sum
 * is a weighted sum of those rows instead of a second GEMM (as dpm_gpt's AUTO). Forcing a method
 * (dpm_model_set_norm_method) drops the keeping: ghost, or explicit formed for the norm only. The kernels are nn/seq.h's, the same as dpm_gpt's (nn/gpt.c, the oracle of
 * tests/nn/test_gpt_layers.c).
 *
 * LoRA (`block heads=H lora=r [lora_alpha=A lora_targets=M]`, Hu et al. 2021): linear j of the targets gets
 * y = x W + b + s (x A_j) B_j with s = A / r, A_j [in, r] and B_j [r, out] (the Conv1D orientation, named
 * h.{l}.<linear>.lora_A.weight / lora_B.weight), after the 12 tensors. Each adapter is a pair of width-r sequence
 * linears: B_j's per-example gradient is us^T G (us = s x A_j, kept from the forward), A_j's is x^T dv (dv = s G
 * B_j^T), so their exact per-example norms and clipped sums are seq_linear.c's ghost / explicit kernels; they
 * belong to the block's clipping group. Frozen tensors (l->frozen, the frozen base of LoRA) add no norm and no
 * sum; their input gradients still flow.
 */
#include "nn/layer.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nn/seq.h"

/* tensors in Hugging Face order, offsets within the block's parameters */
enum { LN1_W, LN1_B, ATTN_W, ATTN_B, APROJ_W, APROJ_B, LN2_W, LN2_B, FC_W, FC_B, MPROJ_W, MPROJ_B, PER_BLOCK };
enum { L_ATTN, L_APROJ, L_FC, L_MPROJ, N_LIN };
static const struct { const char *name; int in, out; } TENSORS[PER_BLOCK] = {
    {"ln_1.weight", 1, 0},      {"ln_1.bias", 1, 0},          {"attn.c_attn.weight", 1, 3},
    {"attn.c_attn.bias", 3, 0}, {"attn.c_proj.weight", 1, 1}, {"attn.c_proj.bias", 1, 0},
    {"ln_2.weight", 1, 0},      {"ln_2.bias", 1, 0},          {"mlp.c_fc.weight", 1, 4},
    {"mlp.c_fc.bias", 4, 0},    {"mlp.c_proj.weight", 4, 1},  {"mlp.c_proj.bias", 1, 0}};
/* the linears: weight tensor, input and output widths in units of C */
static const struct { int w, in, out; } LIN[N_LIN] = {{ATTN_W, 1, 3}, {APROJ_W, 1, 1}, {FC_W, 1, 4}, {MPROJ_W, 4, 1}};
static const char *const LIN_NAME[N_LIN] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
enum { LORA_A, LORA_B };

typedef struct {
  float *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *res2, *ln2, *ln2_mean, *ln2_rstd, *fch, *fchg;
  float *dqkv, *dattn, *dfch, *dxs;         /* output gradients of c_attn, attn.c_proj, c_fc; dxs: dx if unasked */
  float *e_ln1w, *e_ln1b, *e_ln2w, *e_ln2b; /* per-example LayerNorm gradients [B, C] */
  double *gsq[N_LIN], *sqb;                 /* the linears' weight norms (kept for the clipped sum's cap), bias */
  unsigned char *ill[N_LIN];
  int explicit_[N_LIN];                     /* 1: explicit norms (formed in scratch, or kept), 0: ghost */
  float *E[N_LIN];                          /* kept explicit gradients [B, in*out] (NULL: not kept) */
  int keep[N_LIN];                          /* 1: this linear's norms form E, its clipped sum adds E's rows */
  int norms_ready;
  /* LoRA, per adapted linear j: us = s x A_j and dv = s G B_j^T [B, T, r]; A_j's and B_j's norms and flags */
  float *us[N_LIN], *dv[N_LIN];
  double *lgsq[N_LIN][2];
  unsigned char *lill[N_LIN][2];
  int lexplicit[N_LIN][2];
} block_state;

static size_t toff(int C, int k) { /* offset of tensor k in the block */
  size_t off = 0;
  for (int j = 0; j < k; j++) off += (size_t)TENSORS[j].in * C * (TENSORS[j].out ? (size_t)TENSORS[j].out * C : 1);
  return off;
}

/* LoRA: linear j is adapted */
static int adapted(const layer *l, int j) {
  const int m = l->s.lora_targets ? l->s.lora_targets : (1 << N_LIN) - 1;
  return l->s.lora > 0 && ((m >> j) & 1);
}
static float lora_scale(const layer *l) { return l->s.lora_alpha ? (float)l->s.lora_alpha / (float)l->s.lora : 1.0f; }
/* tensor index of linear j's adapter matrix which (LORA_A, LORA_B) in the layer's info, or -1 */
static int lora_tensor(const layer *l, int j, int which) {
  if (!adapted(l, j)) return -1;
  int t = PER_BLOCK;
  for (int i = 0; i < j; i++) t += 2 * adapted(l, i);
  return t + which;
}
/* offset of that matrix in the block's parameters (A_j [in, r], then B_j [r, out]) */
static size_t lora_off(const layer *l, int j, int which) {
  const size_t C = (size_t)l->W, r = (size_t)l->s.lora;
  size_t off = toff(l->W, PER_BLOCK);
  for (int i = 0; i < j; i++)
    if (adapted(l, i)) off += r * C * (size_t)(LIN[i].in + LIN[i].out);
  return off + (which == LORA_B ? r * C * (size_t)LIN[j].in : 0);
}

static int block_shape(layer *l, int max_batch, int num, char *err) {
  (void)max_batch;
  const int C = l->W, H = l->s.heads;
  if (l->H != 1 || l->C < 1)
    return dpm_err(err, "layer %d (block): needs [T, width] activations from embed or block, got %dx%dx%d", num, l->C,
                   l->H, l->W);
  if (C % H)
    return dpm_err(err, "layer %d (block): width %d is not a multiple of heads=%d", num, C, H);
  if (l->s.lora > C)
    return dpm_err(err, "layer %d (block): lora=%d exceeds the width %d (a rank-%d adapter)", num, l->s.lora, C, l->s.lora);
  if (l->s.lora_targets > (1 << N_LIN) - 1)
    return dpm_err(err, "layer %d (block): lora_targets=%d is not a mask of the 4 linears (1..15)", num, l->s.lora_targets);
  if ((l->s.lora_alpha || l->s.lora_targets) && !l->s.lora)
    return dpm_err(err, "layer %d (block): lora_alpha and lora_targets need lora=r", num);
  l->OC = l->C, l->OH = 1, l->OW = C;
  l->wsize = lora_off(l, N_LIN - 1, LORA_A), l->bsize = 0;
  if (adapted(l, N_LIN - 1)) l->wsize += (size_t)l->s.lora * C * (LIN[N_LIN - 1].in + LIN[N_LIN - 1].out);
  return 0;
}

static void block_plan(layer *l, dpm_plan *p) {
  block_state tmp, *k = dpm_plan_carve(p, sizeof *k);
  if (!k) k = &tmp;
  memset(k, 0, sizeof *k);
  const size_t B = p->B, T = (size_t)l->C, C = (size_t)l->W, H = (size_t)l->s.heads, BT = B * T, BTC = BT * C;
#define F(n) dpm_plan_carve(p, (n) * sizeof(float))
  k->ln1 = F(BTC), k->ln1_mean = F(BT), k->ln1_rstd = F(BT), k->qkv = F(3 * BTC), k->att = F(B * H * T * T);
  k->atty = F(BTC), k->res2 = F(BTC), k->ln2 = F(BTC), k->ln2_mean = F(BT), k->ln2_rstd = F(BT);
  k->fch = F(4 * BTC), k->fchg = F(4 * BTC), k->dqkv = F(3 * BTC), k->dattn = F(BTC), k->dfch = F(4 * BTC);
  k->dxs = F(BTC), k->e_ln1w = F(B * C), k->e_ln1b = F(B * C), k->e_ln2w = F(B * C), k->e_ln2b = F(B * C);
#undef F
  for (int j = 0; j < N_LIN; j++) {
    const int in = LIN[j].in * (int)C, out = LIN[j].out * (int)C;
    k->gsq[j] = dpm_plan_carve(p, B * sizeof(double));
    k->ill[j] = dpm_plan_carve(p, B);
    k->keep[j] = l->explicit_ && !dpm_seq_linear_ghost_cheaper((int)T, in, out, 1);
    k->E[j] = k->keep[j] ? dpm_plan_carve(p, B * (size_t)in * (size_t)out * sizeof(float)) : NULL;
    k->explicit_[j] = k->keep[j] || !dpm_seq_linear_ghost_cheaper((int)T, in, out, 0);
  }
  k->sqb = dpm_plan_carve(p, B * sizeof(double));
  for (int j = 0; j < N_LIN; j++) {
    if (!adapted(l, j)) continue;
    const int r = l->s.lora, io[2][2] = {{LIN[j].in * (int)C, r}, {r, LIN[j].out * (int)C}};
    k->us[j] = dpm_plan_carve(p, BT * (size_t)r * sizeof(float));
    k->dv[j] = dpm_plan_carve(p, BT * (size_t)r * sizeof(float));
    for (int w = 0; w < 2; w++) {
      k->lgsq[j][w] = dpm_plan_carve(p, B * sizeof(double));
      k->lill[j][w] = dpm_plan_carve(p, B);
      k->lexplicit[j][w] = !dpm_seq_linear_ghost_cheaper((int)T, io[w][0], io[w][1], 0);
    }
  }
  /* scratch floats: tmp [B, T, 4C], then an explicit gradient (4C^2), attention's T^2 or the clipped sum's
     scaled output gradients (B T 4C); doubles: ghost Grams of the widest linear; rows: one example's */
  size_t fs = 4 * C * C > T * T ? 4 * C * C : T * T;
  if (BT * 4 * C > fs) fs = BT * 4 * C;
  if (4 * BTC + fs > p->scratch) p->scratch = 4 * BTC + fs;
  if (2 * T * T + T * 5 * C > p->ghost) p->ghost = 2 * T * T + T * 5 * C;
  if (T * 4 * C + 4 * C * C > p->row) p->row = T * 4 * C + 4 * C * C;
  if (p->base) l->ks = k;
}

static void block_init(const layer *l, float *p, const dpm_key *key, int layer_num) {
  const int C = l->W, nb = l->s.blocks > 0 ? l->s.blocks : 1;
  const double std = 0.02, proj = 0.02 / sqrt(2.0 * nb);
  memset(p, 0, l->wsize * sizeof(float));
  /* LoRA: A_j uniform in +-1/sqrt(in) (Kaiming-uniform with a = sqrt(5), as Hu et al.'s loralib and PEFT),
     B_j zero: the adapted model starts as the base */
  for (int j = 0; j < N_LIN; j++) {
    if (!adapted(l, j)) continue;
    const size_t n = (size_t)LIN[j].in * C * (size_t)l->s.lora;
    const double bound = 1.0 / sqrt((double)LIN[j].in * C);
    float *a = p + lora_off(l, j, LORA_A);
    uint64_t w[256];
    for (size_t k0 = 0; k0 < n; k0 += 256) {
      const size_t m = n - k0 < 256 ? n - k0 : 256;
      dpm_rng_words(key, (uint64_t)layer_num * 16 + PER_BLOCK + (uint64_t)j, DPM_STREAM_INIT, k0, m, w);
      for (size_t k = 0; k < m; k++) a[k0 + k] = (float)((2.0 * dpm_u01(w[k]) - 1.0) * bound);
    }
  }
  for (int t = 0; t < PER_BLOCK; t++) {
    float *q = p + toff(C, t);
    const size_t n = toff(C, t + 1) - toff(C, t);
    if (t == LN1_W || t == LN2_W) {
      for (size_t j = 0; j < n; j++) q[j] = 1.0f;
    } else if (TENSORS[t].out) { /* weights; biases stay 0 */
      dpm_gauss_add(key, (uint64_t)layer_num * 16 + (uint64_t)t, DPM_STREAM_INIT, 0, n,
                    t == APROJ_W || t == MPROJ_W ? proj : std, q);
    }
  }
}

static void add_into(float *y, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) y[k] += x[k];
}

static void lin_io(const layer *l, const float *x, int j, const float **A, const float **G);

/* LoRA of linear j: y [B T, out] += us B_j with us = s x A_j kept (x [B T, in]) */
static void lora_forward(dpm_model *m, layer *l, int j, float *y, const float *x, int B) {
  if (!adapted(l, j)) return;
  block_state *k = l->ks;
  const int BT = B * l->C, in = LIN[j].in * l->W, out = LIN[j].out * l->W, r = l->s.lora;
  const float *w = m->params + l->poff;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, BT, r, in, lora_scale(l), x, in, w + lora_off(l, j, LORA_A),
              r, 0.0f, k->us[j], r);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, BT, out, r, 1.0f, k->us[j], r, w + lora_off(l, j, LORA_B),
              out, 1.0f, y, out);
}

/* LoRA backward of linear j from its output gradient G [B T, out]: dv = s G B_j^T, dx [B T, in] += dv A_j^T */
static void lora_backward(dpm_model *m, layer *l, int j, float *dx, const float *G, int B) {
  if (!adapted(l, j)) return;
  block_state *k = l->ks;
  const int BT = B * l->C, in = LIN[j].in * l->W, out = LIN[j].out * l->W, r = l->s.lora;
  const float *w = m->params + l->poff;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, BT, r, out, lora_scale(l), G, out, w + lora_off(l, j, LORA_B),
              out, 0.0f, k->dv[j], r);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, BT, in, r, 1.0f, k->dv[j], r, w + lora_off(l, j, LORA_A), r,
              1.0f, dx, in);
}

/* the input (X, width in_w) and output gradient (G, width out_w) of adapter matrix `which` of linear j as a
   sequence linear: A_j: (x, dv), B_j: (us, G) */
static void lora_io(const layer *l, const float *x, int j, int which, const float **X, const float **G, int *in_w,
                    int *out_w) {
  const block_state *k = l->ks;
  const float *A, *Gl;
  lin_io(l, x, j, &A, &Gl);
  const int r = l->s.lora;
  if (which == LORA_A) *X = A, *G = k->dv[j], *in_w = LIN[j].in * l->W, *out_w = r;
  else *X = k->us[j], *G = Gl, *in_w = r, *out_w = LIN[j].out * l->W;
}

static void block_forward(dpm_model *m, layer *l, const float *x, int B) {
  block_state *k = l->ks;
  const int T = l->C, C = l->W, H = l->s.heads;
  const size_t BTC = (size_t)B * T * C;
  const float *w = m->params + l->poff;
#define W(t) (w + toff(C, (t)))
  dpm_layernorm_forward(k->ln1, k->ln1_mean, k->ln1_rstd, x, W(LN1_W), W(LN1_B), B, T, C);
  dpm_seq_linear_forward(k->qkv, k->ln1, W(ATTN_W), W(ATTN_B), B, T, C, 3 * C);
  lora_forward(m, l, L_ATTN, k->qkv, k->ln1, B);
  dpm_attention_forward(k->atty, k->att, k->qkv, B, T, C, H);
  dpm_seq_linear_forward(k->res2, k->atty, W(APROJ_W), W(APROJ_B), B, T, C, C);
  lora_forward(m, l, L_APROJ, k->res2, k->atty, B);
  add_into(k->res2, x, BTC);
  dpm_layernorm_forward(k->ln2, k->ln2_mean, k->ln2_rstd, k->res2, W(LN2_W), W(LN2_B), B, T, C);
  dpm_seq_linear_forward(k->fch, k->ln2, W(FC_W), W(FC_B), B, T, C, 4 * C);
  lora_forward(m, l, L_FC, k->fch, k->ln2, B);
  dpm_gelu_forward(k->fchg, k->fch, 4 * BTC);
  dpm_seq_linear_forward(l->out, k->fchg, W(MPROJ_W), W(MPROJ_B), B, T, 4 * C, C);
  lora_forward(m, l, L_MPROJ, l->out, k->fchg, B);
  add_into(l->out, k->res2, BTC);
  k->norms_ready = 0;
}

/* linear j's input A and output gradient G */
static void lin_io(const layer *l, const float *x, int j, const float **A, const float **G) {
  (void)x;
  const block_state *k = l->ks;
  switch (j) {
    case L_ATTN: *A = k->ln1, *G = k->dqkv; break;
    case L_APROJ: *A = k->atty, *G = k->dattn; break;
    case L_FC: *A = k->ln2, *G = k->dfch; break;
    default: *A = k->fchg, *G = l->dout; break;
  }
}

/* sq[b] += the squared norms of linear j's weight and bias gradients */
/* sq[b] += the squared norms of linear j's adapter matrices (those not frozen) */
static void lora_norms(dpm_model *m, layer *l, const float *x, int j, double *sq, int B) {
  if (!adapted(l, j)) return;
  block_state *k = l->ks;
  const int T = l->C, C = l->W;
  for (int w = 0; w < 2; w++) {
    if (dpm_layer_frozen(l, lora_tensor(l, j, w))) continue;
    const float *X, *G;
    int in_w, out_w;
    lora_io(l, x, j, w, &X, &G, &in_w, &out_w);
    memset(k->lill[j][w], 0, (size_t)B);
    if (k->lexplicit[j][w])
      dpm_seq_linear_sqnorms_explicit(k->lgsq[j][w], NULL, k->lill[j][w], X, G, m->scratch + (size_t)B * T * 4 * C, B,
                                      T, in_w, out_w);
    else
      dpm_seq_linear_sqnorms_ghost(k->lgsq[j][w], NULL, k->lill[j][w], X, G, m->ghost, B, T, in_w, out_w);
    for (int b = 0; b < B; b++) sq[b] += k->lgsq[j][w][b];
  }
}

static void lin_norms(dpm_model *m, layer *l, const float *x, int j, double *sq, int B) {
  block_state *k = l->ks;
  lora_norms(m, l, x, j, sq, B);
  const int T = l->C, C = l->W, IC = LIN[j].in * C, OC = LIN[j].out * C;
  const int fw = dpm_layer_frozen(l, LIN[j].w), fb = dpm_layer_frozen(l, LIN[j].w + 1);
  if (fw && fb) return; /* a frozen linear's gradient is not released */
  const float *A, *G;
  lin_io(l, x, j, &A, &G);
  memset(k->ill[j], 0, (size_t)B);
  if (k->keep[j] && !fw) /* the norm is that of the float rows the clipped sum adds: no cap, no flags */
    dpm_seq_linear_grads_explicit(k->E[j], k->gsq[j], k->sqb, A, G, 0, B, T, IC, OC);
  else if (k->explicit_[j])
    dpm_seq_linear_sqnorms_explicit(k->gsq[j], k->sqb, k->ill[j], A, G, m->scratch + (size_t)B * T * 4 * C, B, T, IC, OC);
  else
    dpm_seq_linear_sqnorms_ghost(k->gsq[j], k->sqb, k->ill[j], A, G, m->ghost, B, T, IC, OC);
  for (int b = 0; b < B; b++) sq[b] += (fw ? 0.0 : k->gsq[j][b]) + (fb ? 0.0 : k->sqb[b]);
}

static void add_rows_sq(const layer *l, int t, double *sq, const float *E, int B, int C, double *tmp) {
  if (dpm_layer_frozen(l, t)) return;
  dpm_rows_sqnorm(tmp, E, B, (size_t)C);
  for (int b = 0; b < B; b++) sq[b] += tmp[b];
}

static void block_backward(dpm_model *m, layer *l, const float *x, float *dx, double *sq, int B) {
  block_state *k = l->ks;
  const int T = l->C, C = l->W, H = l->s.heads;
  const size_t BTC = (size_t)B * T * C;
  const float *w = m->params + l->poff;
  float *tmp = m->scratch, *dres = dx ? dx : k->dxs;
  if (sq) memset(sq, 0, (size_t)B * sizeof(double));
  /* MLP: out = res2 + c_proj(gelu(c_fc(ln_2(res2)))); dout is c_proj's output gradient */
  dpm_seq_linear_backward(tmp, l->dout, W(MPROJ_W), B, T, 4 * C, C);
  lora_backward(m, l, L_MPROJ, tmp, l->dout, B);
  if (sq) lin_norms(m, l, x, L_MPROJ, sq, B);
  dpm_gelu_backward(k->dfch, k->fch, tmp, 4 * BTC);
  dpm_seq_linear_backward(tmp, k->dfch, W(FC_W), B, T, C, 4 * C);
  lora_backward(m, l, L_FC, tmp, k->dfch, B);
  if (sq) lin_norms(m, l, x, L_FC, sq, B);
  memcpy(k->dattn, l->dout, BTC * sizeof(float)); /* d loss / d res2, = attn.c_proj's output gradient */
  dpm_layernorm_backward(k->dattn, k->e_ln2w, k->e_ln2b, tmp, k->res2, k->ln2_mean, k->ln2_rstd, W(LN2_W), B, T, C);
  if (sq) add_rows_sq(l, LN2_W, sq, k->e_ln2w, B, C, k->sqb), add_rows_sq(l, LN2_B, sq, k->e_ln2b, B, C, k->sqb);
  /* attention: res2 = x + c_proj(attention(c_attn(ln_1(x)))) */
  dpm_seq_linear_backward(tmp, k->dattn, W(APROJ_W), B, T, C, C);
  lora_backward(m, l, L_APROJ, tmp, k->dattn, B);
  if (sq) lin_norms(m, l, x, L_APROJ, sq, B);
  dpm_attention_backward(k->dqkv, tmp, k->qkv, k->att, m->scratch + (size_t)B * T * 4 * C, B, T, C, H);
  dpm_seq_linear_backward(tmp, k->dqkv, W(ATTN_W), B, T, C, 3 * C);
  lora_backward(m, l, L_ATTN, tmp, k->dqkv, B);
  if (sq) lin_norms(m, l, x, L_ATTN, sq, B);
  memcpy(dres, k->dattn, BTC * sizeof(float));
  dpm_layernorm_backward(dres, k->e_ln1w, k->e_ln1b, tmp, x, k->ln1_mean, k->ln1_rstd, W(LN1_W), B, T, C);
  if (sq) add_rows_sq(l, LN1_W, sq, k->e_ln1w, B, C, k->sqb), add_rows_sq(l, LN1_B, sq, k->e_ln1b, B, C, k->sqb);
  k->norms_ready = sq != NULL;
}

/* the block's gradient with one coefficient per example (the block is one group) */
static void block_accumulate(dpm_model *m, layer *l, const float *x, float *dw, float *db, const float *coef, int B) {
  (void)db;
  block_state *k = l->ks;
  const int T = l->C, C = l->W;
  for (int j = 0; j < N_LIN; j++) {
    for (int w = 0; w < 2 && adapted(l, j); w++) {
      if (dpm_layer_frozen(l, lora_tensor(l, j, w))) continue;
      const float *X, *G;
      int in_w, out_w;
      lora_io(l, x, j, w, &X, &G, &in_w, &out_w);
      const int ready = coef && k->norms_ready;
      dpm_seq_linear_accumulate(dw + lora_off(l, j, w), NULL, X, G, coef, NULL, ready ? k->lgsq[j][w] : NULL,
                                ready ? k->lill[j][w] : NULL, m->scratch, m->row, B, T, in_w, out_w);
    }
    const float *A, *G;
    lin_io(l, x, j, &A, &G);
    const int ready = coef && k->norms_ready;
    const int fw = dpm_layer_frozen(l, LIN[j].w), fb = dpm_layer_frozen(l, LIN[j].w + 1);
    if (fw && fb) continue;
    if (ready && k->keep[j] && !fw) { /* the weight from the kept rows, the bias by its own sum */
      dpm_rows_accumulate(dw + toff(C, LIN[j].w), k->E[j], coef, B, (size_t)LIN[j].in * C * LIN[j].out * C);
      if (!fb)
        dpm_seq_linear_accumulate(NULL, dw + toff(C, LIN[j].w + 1), A, G, coef, coef, NULL, NULL, m->scratch, m->row,
                                  B, T, LIN[j].in * C, LIN[j].out * C);
      continue;
    }
    dpm_seq_linear_accumulate(fw ? NULL : dw + toff(C, LIN[j].w), fb ? NULL : dw + toff(C, LIN[j].w + 1), A, G, coef, coef,
                              ready ? k->gsq[j] : NULL, ready ? k->ill[j] : NULL, m->scratch, m->row, B, T,
                              LIN[j].in * C, LIN[j].out * C);
  }
  const float *rows[4] = {k->e_ln1w, k->e_ln1b, k->e_ln2w, k->e_ln2b};
  const int ts[4] = {LN1_W, LN1_B, LN2_W, LN2_B};
  for (int r = 0; r < 4; r++)
    if (!dpm_layer_frozen(l, ts[r])) dpm_rows_accumulate(dw + toff(C, ts[r]), rows[r], coef, B, (size_t)C);
}
#undef W

/* " heads=H [lora=r lora_alpha=A lora_targets=M] [norms c_attn/attn.c_proj/c_fc/mlp.c_proj: M/M/M/M]", M = kept
   (explicit, kept for the clipped sum), explicit (formed for the norm only) or ghost */
static void block_describe(const layer *l, char *buf, size_t len) {
  const block_state *k = l->ks;
  size_t n = (size_t)snprintf(buf, len, " heads=%d", l->s.heads);
  if (l->s.lora && n < len)
    n += (size_t)snprintf(buf + n, len - n, " lora=%d lora_alpha=%d lora_targets=%d", l->s.lora,
                          l->s.lora_alpha ? l->s.lora_alpha : l->s.lora,
                          l->s.lora_targets ? l->s.lora_targets : (1 << N_LIN) - 1);
  if (n < len) n += (size_t)snprintf(buf + n, len - n, " [norms c_attn/attn.c_proj/c_fc/mlp.c_proj:");
  for (int j = 0; j < N_LIN && n < len; j++)
    n += (size_t)snprintf(buf + n, len - n, "%s%s", j ? "/" : " ", k->keep[j] ? "kept" : k->explicit_[j] ? "explicit" : "ghost");
  if (n < len) snprintf(buf + n, len - n, "]");
}

static void block_info(const layer *l, dpm_layer_info *info) {
  const int C = l->W, T = l->C, h = l->global - 1; /* blocks follow the embed layer: h.0 is layer 2 */
  info->n_tensors = PER_BLOCK;
  for (int t = 0; t < PER_BLOCK; t++) {
    dpm_tensor_info *ti = &info->tensors[t];
    snprintf(ti->name, sizeof ti->name, "h.%d.%s", h, TENSORS[t].name);
    ti->off = toff(C, t), ti->size = toff(C, t + 1) - ti->off;
    ti->rank = TENSORS[t].out ? 2 : 1;
    ti->dims[0] = TENSORS[t].in * C, ti->dims[1] = TENSORS[t].out * C;
  }
  for (int j = 0; j < N_LIN; j++) {
    for (int w = 0; w < 2 && adapted(l, j); w++) {
      dpm_tensor_info *ti = &info->tensors[info->n_tensors++];
      snprintf(ti->name, sizeof ti->name, "h.%d.%s.lora_%c.weight", h, LIN_NAME[j], w == LORA_A ? 'A' : 'B');
      ti->off = lora_off(l, j, w), ti->rank = 2;
      ti->dims[0] = w == LORA_A ? LIN[j].in * C : l->s.lora, ti->dims[1] = w == LORA_A ? l->s.lora : LIN[j].out * C;
      ti->size = (size_t)ti->dims[0] * ti->dims[1];
    }
  }
  /* multiply-adds per example: the linears' forward, input and weight gradients (3 x T 12 C^2), attention's
     scores and weighted sums forward and backward (~6 T^2 C), the norms' Grams or explicit GEMMs (~T 12 C^2) */
  info->cost = 4.0 * T * 12.0 * C * C + 6.0 * (double)T * T * C;
}

static void block_set_norm(layer *l, int explicit_, int max_batch) {
  (void)max_batch;
  block_state *k = l->ks;
  for (int j = 0; j < N_LIN; j++) k->explicit_[j] = k->lexplicit[j][0] = k->lexplicit[j][1] = explicit_, k->keep[j] = 0;
  k->norms_ready = 0;
}
/* The bytes of the kept gradients of the linears for which explicit-and-kept is the cheaper (0: none). */
static size_t block_explicit_bytes(const layer *l, int max_batch) {
  const int T = l->C, C = l->W;
  size_t floats = 0;
  for (int j = 0; j < N_LIN; j++)
    if (!dpm_seq_linear_ghost_cheaper(T, LIN[j].in * C, LIN[j].out * C, 1))
      floats += (size_t)LIN[j].in * C * (size_t)LIN[j].out * C;
  return floats * (size_t)max_batch * sizeof(float);
}
static dpm_norm_method block_norm_method(const layer *l) {
  const block_state *k = l->ks;
  return k->explicit_[L_FC] ? DPM_NORM_EXPLICIT : DPM_NORM_GHOST;
}

const dpm_layer_ops dpm_ops_block = {
    .name = "block", .keys = "heads lora lora_alpha lora_targets", .required = 1, .freezes_tensors = 1, .shape = block_shape, .plan = block_plan, .init = block_init,
    .forward = block_forward, .backward = block_backward, .accumulate = block_accumulate,
    .describe = block_describe, .info = block_info, .explicit_bytes = block_explicit_bytes,
    .set_norm = block_set_norm, .norm_method = block_norm_method};
