/* Tests of the GPT-2 kernels (src/nn/seq_*.c) and model (src/nn/gpt.c):
 *  - golden: ../shared/refs/gpt/reference.h5 (an independent float64 implementation with one backward per
 *    example): logits, per-example and mean loss, every tensor's per-example squared norm (the tied wte
 *    included), the total, the flat clipping coefficients at the file's clip, the clipped sum and the mean
 *    gradient, within 1e-4 relative, with the norm methods chosen by cost, all ghost and all explicit;
 *  - finite differences for every kernel (sequence linear, LayerNorm, GELU, attention, embeddings, LM head,
 *    masked cross-entropy) and for whole tied and untied models with masked targets;
 *  - per-example norms: sequence linear ghost vs explicit vs a brute-force double dW_b; token-equality and
 *    tied cross term vs a materialized V x C gradient; the model's norms (ghost and explicit) and clipped
 *    sums with random per-(tensor, example) coefficients vs each example run alone (T = 1, B = 1, masked
 *    targets, repeated tokens);
 *  - an example whose activations are Inf/NaN gets a non-finite norm and, with coefficient 0, adds nothing. */
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>

#include "dpmpi/nn/gpt.h"
#include "nn/gpt_internal.h"
#include "nn/seq.h"
#include "testing.h"

/* the norm methods under test: by cost with kept gradients, by cost without keeping any, a budget that keeps
 * only the first linear, all ghost, all explicit in scratch, all explicit kept */
typedef struct { const char *name; dpm_norm_method method; size_t keep; } mode;
static const mode MODES[] = {{"auto", DPM_NORM_AUTO, DPM_GPT_KEEP_BYTES}, {"auto-nokeep", DPM_NORM_AUTO, 0},
                             {"auto-partial", DPM_NORM_AUTO, 1}, {"ghost", DPM_NORM_GHOST, 0},
                             {"explicit", DPM_NORM_EXPLICIT, 0}, {"explicit-kept", DPM_NORM_EXPLICIT, (size_t)-1}};
enum { N_MODES = sizeof MODES / sizeof MODES[0] };
/* keep bytes of mode m for a model whose first linear is C x 3C at batch B ("partial": that one only) */
static size_t keep_bytes(int m, int B, int C) {
  return MODES[m].keep == 1 ? (size_t)B * C * 3 * C * sizeof(float) : MODES[m].keep;
}

static uint64_t rng_state = 0x2545F4914F6CDD1DULL;
static double urand(void) { /* splitmix64, uniform [0, 1) */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}
static void fill(float *v, size_t n, double lo, double hi) {
  for (size_t k = 0; k < n; k++) v[k] = (float)(lo + (hi - lo) * urand());
}
static float *fnew(size_t n) { return calloc(n ? n : 1, sizeof(float)); }
static double *dnew(size_t n) { return calloc(n ? n : 1, sizeof(double)); }
static double dotf(const float *a, const float *b, size_t n) {
  double s = 0;
  for (size_t k = 0; k < n; k++) s += (double)a[k] * b[k];
  return s;
}
static double rel(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-300); }

/* ---- finite differences on a function of float arrays ----------------------------------------------- */

/* A kernel under test: loss(ctx) in double from the arrays it holds; grad(ctx, g[]) fills the analytic
 * gradients of that loss with respect to each of the n_var arrays. */
typedef struct fd_case {
  int n_var;
  float *var[4];
  size_t len[4];
  double (*loss)(struct fd_case *);
  void (*grad)(struct fd_case *, float **g);
  void *ctx;
} fd_case;

/* central differences of step h on every entry of every variable against the analytic gradient */
static void check_fd(fd_case *c, const char *what, double h, double rtol) {
  float *g[4];
  for (int v = 0; v < c->n_var; v++) g[v] = fnew(c->len[v]);
  c->grad(c, g);
  double scale = 0;
  for (int v = 0; v < c->n_var; v++)
    for (size_t k = 0; k < c->len[v]; k++) scale = fmax(scale, fabs(g[v][k]));
  int bad = 0;
  for (int v = 0; v < c->n_var; v++)
    for (size_t k = 0; k < c->len[v]; k++) {
      float *x = c->var[v] + k;
      const float x0 = *x;
      *x = (float)(x0 + h);
      const double hp = (double)*x - x0, lp = c->loss(c);
      *x = (float)(x0 - h);
      const double hm = x0 - (double)*x, lm = c->loss(c);
      *x = x0;
      const double fd = (lp - lm) / (hp + hm);
      if (fabs(fd - g[v][k]) > rtol * (fabs(fd) + 0.05 * scale) && bad++ < 3)
        fprintf(stderr, "  %s: var %d [%zu] analytic %.8g, finite difference %.8g\n", what, v, k, g[v][k], fd);
    }
  CHECK(bad == 0, "%s: %d gradient entries off", what, bad);
  CHECK(scale > 1e-3, "%s: gradients all ~0 (scale %g): vacuous", what, scale);
  for (int v = 0; v < c->n_var; v++) free(g[v]);
}

/* sequence linear: loss = <R, x W + b> */
typedef struct { int B, T, C, OC; float *out, *R; } lin_ctx;
static double lin_loss(fd_case *c) {
  lin_ctx *k = c->ctx;
  dpm_seq_linear_forward(k->out, c->var[0], c->var[1], c->var[2], k->B, k->T, k->C, k->OC);
  return dotf(k->out, k->R, (size_t)k->B * k->T * k->OC);
}
static void lin_grad(fd_case *c, float **g) {
  lin_ctx *k = c->ctx;
  float *scratch = fnew((size_t)k->B * k->T * k->OC), *row = fnew((size_t)k->T * k->C);
  dpm_seq_linear_backward(g[0], k->R, c->var[1], k->B, k->T, k->C, k->OC);
  dpm_seq_linear_accumulate(g[1], g[2], c->var[0], k->R, NULL, NULL, NULL, NULL, scratch, row, k->B, k->T, k->C, k->OC);
  free(scratch), free(row);
}

/* LayerNorm: loss = <R, ln(x)> */
typedef struct { int B, T, C; float *out, *mean, *rstd, *R; } ln_ctx;
static double ln_loss(fd_case *c) {
  ln_ctx *k = c->ctx;
  dpm_layernorm_forward(k->out, k->mean, k->rstd, c->var[0], c->var[1], c->var[2], k->B, k->T, k->C);
  return dotf(k->out, k->R, (size_t)k->B * k->T * k->C);
}
static void ln_grad(fd_case *c, float **g) {
  ln_ctx *k = c->ctx;
  ln_loss(c);
  float *Ew = fnew((size_t)k->B * k->C), *Eb = fnew((size_t)k->B * k->C);
  dpm_layernorm_backward(g[0], Ew, Eb, k->R, c->var[0], k->mean, k->rstd, c->var[1], k->B, k->T, k->C);
  for (int b = 0; b < k->B; b++)
    for (int j = 0; j < k->C; j++) g[1][j] += Ew[(size_t)b * k->C + j], g[2][j] += Eb[(size_t)b * k->C + j];
  free(Ew), free(Eb);
}

/* GELU: loss = <R, gelu(x)> */
typedef struct { size_t n; float *out, *R; } gelu_ctx;
static double gelu_loss(fd_case *c) {
  gelu_ctx *k = c->ctx;
  dpm_gelu_forward(k->out, c->var[0], k->n);
  return dotf(k->out, k->R, k->n);
}
static void gelu_grad(fd_case *c, float **g) {
  gelu_ctx *k = c->ctx;
  dpm_gelu_backward(g[0], c->var[0], k->R, k->n);
}

/* attention: loss = <R, attention(qkv)> */
typedef struct { int B, T, C, H; float *out, *att, *R; } att_ctx;
static double att_loss(fd_case *c) {
  att_ctx *k = c->ctx;
  dpm_attention_forward(k->out, k->att, c->var[0], k->B, k->T, k->C, k->H);
  return dotf(k->out, k->R, (size_t)k->B * k->T * k->C);
}
static void att_grad(fd_case *c, float **g) {
  att_ctx *k = c->ctx;
  float *scratch = fnew((size_t)k->T * k->T);
  att_loss(c);
  dpm_attention_backward(g[0], k->R, c->var[0], k->att, scratch, k->B, k->T, k->C, k->H);
  free(scratch);
}

/* embedding then tied head: loss = <R1, embed(tok)> + <R2, h wte^T> (both uses of wte) */
typedef struct { int B, T, C, V; int32_t *tok; float *emb, *logits, *R1, *R2; } emb_ctx;
static double emb_loss(fd_case *c) {
  emb_ctx *k = c->ctx;
  const size_t BT = (size_t)k->B * k->T;
  dpm_embed_forward(k->emb, k->tok, c->var[0], c->var[1], k->B, k->T, k->C);
  dpm_lm_head_forward(k->logits, c->var[2], c->var[0], k->B, k->T, k->C, k->V);
  return dotf(k->emb, k->R1, BT * k->C) + dotf(k->logits, k->R2, BT * k->V);
}
static void emb_grad(fd_case *c, float **g) {
  emb_ctx *k = c->ctx;
  float *scratch = fnew((size_t)k->B * k->T * k->V), *row = fnew((size_t)k->T * k->C);
  dpm_embed_accumulate(g[0], g[1], k->tok, k->R1, NULL, NULL, k->B, k->T, k->C);
  dpm_seq_linear_accumulate_t(g[0], c->var[2], k->R2, NULL, NULL, NULL, scratch, row, k->B, k->T, k->C, k->V);
  dpm_lm_head_backward(g[2], k->R2, c->var[0], k->B, k->T, k->C, k->V);
  free(scratch), free(row);
}

/* masked cross-entropy: loss = sum_b w_b loss_b */
typedef struct { int B, T, V, pad; int32_t *tgt; float *probs; double *loss, *w; } xent_ctx;
static double xent_loss(fd_case *c) {
  xent_ctx *k = c->ctx;
  dpm_seq_xent_forward(k->probs, k->loss, c->var[0], k->tgt, k->pad, k->B, k->T, k->V);
  double s = 0;
  for (int b = 0; b < k->B; b++) s += k->w[b] * k->loss[b];
  return s;
}
static void xent_grad(fd_case *c, float **g) {
  xent_ctx *k = c->ctx;
  xent_loss(c);
  dpm_seq_xent_backward(g[0], k->probs, k->tgt, k->pad, k->B, k->T, k->V); /* not in place: probs kept */
  for (int b = 0; b < k->B; b++)
    for (size_t j = 0; j < (size_t)k->T * k->V; j++) g[0][(size_t)b * k->T * k->V + j] *= (float)k->w[b];
}

static void test_kernels_fd(void) {
  { /* sequence linear, several shapes (T = 1 included) */
    const int shapes[][4] = {{2, 3, 4, 5}, {1, 1, 3, 2}, {3, 2, 6, 3}};
    for (size_t s = 0; s < 3; s++) {
      lin_ctx k = {shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], NULL, NULL};
      const size_t BT = (size_t)k.B * k.T;
      fd_case c = {.n_var = 3, .loss = lin_loss, .grad = lin_grad, .ctx = &k};
      c.len[0] = BT * k.C, c.len[1] = (size_t)k.C * k.OC, c.len[2] = (size_t)k.OC;
      for (int v = 0; v < 3; v++) c.var[v] = fnew(c.len[v]), fill(c.var[v], c.len[v], -1, 1);
      k.out = fnew(BT * k.OC), k.R = fnew(BT * k.OC);
      fill(k.R, BT * k.OC, -1, 1);
      check_fd(&c, "seq_linear", 1e-2, 2e-3);
      for (int v = 0; v < 3; v++) free(c.var[v]);
      free(k.out), free(k.R);
    }
  }
  { /* LayerNorm */
    ln_ctx k = {2, 3, 7, NULL, NULL, NULL, NULL};
    const size_t n = (size_t)k.B * k.T * k.C;
    fd_case c = {.n_var = 3, .loss = ln_loss, .grad = ln_grad, .ctx = &k};
    c.len[0] = n, c.len[1] = c.len[2] = (size_t)k.C;
    for (int v = 0; v < 3; v++) c.var[v] = fnew(c.len[v]), fill(c.var[v], c.len[v], -1.5, 1.5);
    k.out = fnew(n), k.mean = fnew(n), k.rstd = fnew(n), k.R = fnew(n);
    fill(k.R, n, -1, 1);
    check_fd(&c, "layernorm", 1e-2, 5e-3);
    for (int v = 0; v < 3; v++) free(c.var[v]);
    free(k.out), free(k.mean), free(k.rstd), free(k.R);
  }
  { /* GELU over [-4, 4] */
    gelu_ctx k = {64, NULL, NULL};
    fd_case c = {.n_var = 1, .loss = gelu_loss, .grad = gelu_grad, .ctx = &k};
    c.len[0] = k.n, c.var[0] = fnew(k.n);
    fill(c.var[0], k.n, -4, 4);
    k.out = fnew(k.n), k.R = fnew(k.n);
    fill(k.R, k.n, -1, 1);
    check_fd(&c, "gelu", 1e-3, 2e-3);
    free(c.var[0]), free(k.out), free(k.R);
  }
  { /* attention: T = 1 and T = 5, 1 and 2 heads */
    const int shapes[][4] = {{2, 5, 8, 2}, {1, 1, 4, 1}, {1, 4, 6, 3}};
    for (size_t s = 0; s < 3; s++) {
      att_ctx k = {shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], NULL, NULL, NULL};
      const size_t BT = (size_t)k.B * k.T;
      fd_case c = {.n_var = 1, .loss = att_loss, .grad = att_grad, .ctx = &k};
      c.len[0] = BT * 3 * k.C, c.var[0] = fnew(c.len[0]);
      fill(c.var[0], c.len[0], -1.5, 1.5);
      k.out = fnew(BT * k.C), k.att = fnew((size_t)k.B * k.H * k.T * k.T), k.R = fnew(BT * k.C);
      fill(k.R, BT * k.C, -1, 1);
      check_fd(&c, "attention", 1e-2, 5e-3);
      free(c.var[0]), free(k.out), free(k.att), free(k.R);
    }
  }
  { /* embeddings and the tied head, repeated tokens */
    emb_ctx k = {2, 4, 3, 5, NULL, NULL, NULL, NULL, NULL};
    const int32_t tok[] = {1, 3, 1, 1, 4, 0, 4, 2};
    k.tok = (int32_t *)tok;
    const size_t BT = (size_t)k.B * k.T;
    fd_case c = {.n_var = 3, .loss = emb_loss, .grad = emb_grad, .ctx = &k};
    c.len[0] = (size_t)k.V * k.C, c.len[1] = (size_t)k.T * k.C, c.len[2] = BT * k.C;
    for (int v = 0; v < 3; v++) c.var[v] = fnew(c.len[v]), fill(c.var[v], c.len[v], -1, 1);
    k.emb = fnew(BT * k.C), k.logits = fnew(BT * k.V), k.R1 = fnew(BT * k.C), k.R2 = fnew(BT * k.V);
    fill(k.R1, BT * k.C, -1, 1), fill(k.R2, BT * k.V, -1, 1);
    check_fd(&c, "embedding + tied head", 1e-2, 2e-3);
    for (int v = 0; v < 3; v++) free(c.var[v]);
    free(k.emb), free(k.logits), free(k.R1), free(k.R2);
  }
  { /* masked cross-entropy: pad 2; example 2 fully masked */
    xent_ctx k = {3, 3, 5, 2, NULL, NULL, NULL, NULL};
    int32_t tgt[] = {0, 2, 4, 3, 1, 1, 2, 2, 2};
    double w[] = {0.7, -1.3, 2.0}, loss[3];
    k.tgt = tgt, k.w = w, k.loss = loss;
    fd_case c = {.n_var = 1, .loss = xent_loss, .grad = xent_grad, .ctx = &k};
    c.len[0] = (size_t)k.B * k.T * k.V, c.var[0] = fnew(c.len[0]);
    fill(c.var[0], c.len[0], -3, 3);
    k.probs = fnew(c.len[0]);
    check_fd(&c, "masked cross-entropy", 1e-2, 2e-3);
    xent_loss(&c);
    CHECK(loss[2] == 0.0, "an example without unmasked targets has loss %g, expected 0", loss[2]);
    /* the fused in-place backward equals the out-of-place one */
    float *g = fnew(c.len[0]);
    dpm_seq_xent_backward(g, k.probs, tgt, k.pad, k.B, k.T, k.V);
    dpm_seq_xent_backward(k.probs, k.probs, tgt, k.pad, k.B, k.T, k.V);
    CHECK(!memcmp(g, k.probs, c.len[0] * sizeof(float)), "in-place cross-entropy backward differs");
    free(g), free(c.var[0]), free(k.probs);
  }
}

/* ---- per-example norms of the kernels against brute force ------------------------------------------- */

static void test_kernel_norms(void) {
  /* sequence linear: ghost vs explicit vs dW_b = A_b^T G_b in double */
  const int shapes[][4] = {{3, 5, 4, 6}, {1, 1, 7, 3}, {2, 1, 3, 3}, {1, 8, 2, 9}, {4, 3, 16, 1}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    const int B = shapes[s][0], T = shapes[s][1], C = shapes[s][2], OC = shapes[s][3];
    float *A = fnew((size_t)B * T * C), *G = fnew((size_t)B * T * OC), *fs = fnew((size_t)C * OC);
    double *ds = dnew(2 * (size_t)T * T + (size_t)T * (C + OC)), *gw = dnew(B), *gb = dnew(B), *ew = dnew(B),
           *eb = dnew(B);
    fill(A, (size_t)B * T * C, -2, 2), fill(G, (size_t)B * T * OC, -1, 1);
    dpm_seq_linear_sqnorms_ghost(gw, gb, NULL, A, G, ds, B, T, C, OC);
    dpm_seq_linear_sqnorms_explicit(ew, eb, NULL, A, G, fs, B, T, C, OC);
    int bad = 0;
    for (int b = 0; b < B; b++) {
      double w = 0, bb = 0;
      for (int i = 0; i < C; i++)
        for (int o = 0; o < OC; o++) {
          double v = 0;
          for (int t = 0; t < T; t++)
            v += (double)A[((size_t)b * T + t) * C + i] * G[((size_t)b * T + t) * OC + o];
          w += v * v;
        }
      for (int o = 0; o < OC; o++) {
        double v = 0;
        for (int t = 0; t < T; t++) v += G[((size_t)b * T + t) * OC + o];
        bb += v * v;
      }
      bad += rel(gw[b], w) > 1e-12 || rel(gb[b], bb) > 1e-12 || rel(ew[b], w) > 1e-5 || rel(eb[b], bb) > 1e-12;
    }
    CHECK(bad == 0, "seq_linear norms B=%d T=%d C=%d OC=%d: %d examples off (ghost %.10g explicit %.10g)", B, T, C,
          OC, bad, gw[0], ew[0]);
    free(A), free(G), free(fs), free(ds), free(gw), free(gb), free(ew), free(eb);
  }

  /* token equality, wpe and the tied cross term against materialized V x C gradients */
  const int B = 3, T = 6, C = 4, V = 5;
  const int32_t tok[] = {1, 1, 1, 1, 1, 1, 0, 2, 4, 2, 0, 3, 4, 3, 2, 1, 0, 4}; /* all-equal, pairs, distinct */
  float *g = fnew((size_t)B * T * C), *h = fnew((size_t)B * T * C), *dl = fnew((size_t)B * T * V);
  fill(g, (size_t)B * T * C, -1, 1), fill(h, (size_t)B * T * C, -1, 1), fill(dl, (size_t)B * T * V, -1, 1);
  double *sqe = dnew(B), *sqp = dnew(B), *cross = dnew(B), *ds = dnew((size_t)T * T + 2 * (size_t)T * C + C);
  dpm_embed_sqnorms(sqe, sqp, tok, g, ds, B, T, C);
  dpm_tied_cross(cross, tok, g, h, dl, ds, B, T, C, V);
  int bad = 0;
  for (int b = 0; b < B; b++) {
    double E[5][4] = {{0}}, Hm[5][4] = {{0}}, e2 = 0, h2 = 0, eh = 0, p2 = 0;
    for (int t = 0; t < T; t++)
      for (int c = 0; c < C; c++) {
        const size_t r = (size_t)b * T + t;
        E[tok[r]][c] += g[r * C + c];
        p2 += (double)g[r * C + c] * g[r * C + c];
        for (int v = 0; v < V; v++) Hm[v][c] += (double)dl[r * V + v] * h[r * C + c];
      }
    for (int v = 0; v < V; v++)
      for (int c = 0; c < C; c++) e2 += E[v][c] * E[v][c], h2 += Hm[v][c] * Hm[v][c], eh += E[v][c] * Hm[v][c];
    bad += rel(sqe[b], e2) > 1e-12 || rel(sqp[b], p2) > 1e-12 || rel(cross[b], eh) > 1e-10;
    /* from the head's kept explicit gradients ([V, C] layout): the same norm and cross term */
    float *Hk = fnew((size_t)V * C);
    double hsq, ck;
    dpm_seq_linear_grads_explicit(Hk, &hsq, NULL, h + (size_t)b * T * C, dl + (size_t)b * T * V, 1, 1, T, C, V);
    dpm_tied_cross_kept(&ck, tok + (size_t)b * T, g + (size_t)b * T * C, Hk, 1, T, C, V);
    int layout = 1;
    for (int v = 0; v < V; v++)
      for (int c = 0; c < C; c++) layout &= fabs(Hk[v * C + c] - Hm[v][c]) <= 1e-5 * (1 + fabs(Hm[v][c]));
    bad += !layout || rel(hsq, h2) > 1e-5 || rel(ck, eh) > 1e-5;
    free(Hk);
    if (b == 0) CHECK(rel(sqe[0], p2) > 1e-3, "the all-equal example's token-equality norm equals sum ||g_t||^2");
  }
  CHECK(bad == 0, "embedding norms / tied cross term: %d examples off brute force", bad);
  free(g), free(h), free(dl), free(sqe), free(sqp), free(cross), free(ds);
}

/* An example whose two positions nearly cancel (a_2 = a_1, g_2 = -(1 + d) g_1): the float32 GEMM of its
 * clipped gradient errs by far more than the clipping margin, relative to the tiny true gradient. With the
 * ghost (and explicit) norms' ill-conditioning flags and norms, its contribution never exceeds c ||dW||;
 * without them it does (so the cap is what holds it). */
static void test_cancellation_cap(void) {
  const int T = 2, C = 5, OC = 4;
  float A[2 * 5], G[2 * 4], dw[5 * 4], scratch[2 * 4], row[2 * 5 + 5 * 4], fs[5 * 4];
  double ds[2 * 2 * 2 + 2 * 9], sqw, sqe;
  unsigned char ill, ille;
  const float c = 0.5f;
  int over_capped = 0, over_raw = 0, flagged = 0, trials = 200;
  for (int k = 0; k < trials; k++) {
    fill(A, C, -1, 1), fill(G, OC, -1, 1);
    const double d = 1e-6 * (1 + urand());
    for (int j = 0; j < C; j++) A[C + j] = A[j];
    for (int o = 0; o < OC; o++) G[OC + o] = (float)(-(1 + d) * G[o]);
    dpm_seq_linear_sqnorms_ghost(&sqw, NULL, &ill, A, G, ds, 1, T, C, OC);
    dpm_seq_linear_sqnorms_explicit(&sqe, NULL, &ille, A, G, fs, 1, T, C, OC);
    flagged += ill && ille;
    for (int pass = 0; pass < 2; pass++) {
      memset(dw, 0, sizeof dw);
      dpm_seq_linear_accumulate(dw, NULL, A, G, &c, NULL, pass ? NULL : &sqw, pass ? NULL : &ill, scratch, row, 1, T, C,
                                OC);
      const double have = sqrt(dotf(dw, dw, (size_t)C * OC)), cap = c * sqrt(sqw);
      if (have > cap * (1 - 0x1p-22)) pass ? over_raw++ : over_capped++;
    }
  }
  CHECK(flagged == trials, "only %d of %d cancelling examples flagged ill-conditioned", flagged, trials);
  CHECK(over_capped == 0, "%d of %d capped clipped gradients exceed c ||dW||", over_capped, trials);
  CHECK(over_raw > 0, "the uncapped float32 sums never exceed c ||dW||: the cap test is vacuous");
  /* a well-conditioned example is not flagged */
  fill(A, 2 * C, -1, 1), fill(G, 2 * OC, -1, 1);
  dpm_seq_linear_sqnorms_ghost(&sqw, NULL, &ill, A, G, ds, 1, T, C, OC);
  CHECK(!ill, "a random example is flagged ill-conditioned");
}

/* wte formed alone (dpm_wte_accumulate_alone) equals the batch path (scatter-add and the head's GEMM) when
 * nothing cancels, tied (head gradients kept or not) and untied; and a cancelling tied example (E_b close to
 * -H_b) is flagged and capped at c ||E_b + H_b||, which the batch path's float sum exceeds. */
static void test_wte_alone(void) {
  const int T = 5, C = 4, V = 6;
  const int32_t tok[] = {2, 0, 2, 5, 2};
  float g[5 * 4], h[5 * 4], dl[5 * 6], Hk[6 * 4], want[6 * 4], got[6 * 4], buf[6 * 4], scratch[5 * 6],
      row[5 * 4 + 6 * 4];
  double hsq;
  fill(g, (size_t)T * C, -1, 1), fill(h, (size_t)T * C, -1, 1), fill(dl, (size_t)T * V, -1, 1);
  dpm_seq_linear_grads_explicit(Hk, &hsq, NULL, h, dl, 1, 1, T, C, V);
  const float c = 0.3f;
  for (int mode = 0; mode < 3; mode++) { /* tied kept, tied GEMM, untied */
    memset(want, 0, sizeof want), memset(got, 0, sizeof got);
    dpm_embed_accumulate(want, NULL, tok, g, &c, NULL, 1, T, C);
    if (mode < 2) dpm_seq_linear_accumulate_t(want, h, dl, &c, NULL, NULL, scratch, row, 1, T, C, V);
    dpm_wte_accumulate_alone(got, buf, tok, g, mode < 2 ? h : NULL, mode < 2 ? dl : NULL, mode == 0 ? Hk : NULL, c,
                             1e30, T, C, V);
    double e = 0, sc = 0;
    for (int k = 0; k < V * C; k++) e = fmax(e, fabs(got[k] - want[k])), sc = fmax(sc, fabs(want[k]));
    CHECK(e <= 1e-6 * sc && sc > 0, "wte alone (mode %d) differs from the batch path by %g (scale %g)", mode, e, sc);
  }
  int flagged = 0, over_alone = 0, over_batch = 0;
  const int trials = 200;
  for (int k = 0; k < trials; k++) {
    const int32_t t1[] = {3};
    float g1[4], h1[4], dl1[6] = {0}, out[6 * 4];
    fill(g1, C, -1, 1);
    const double d = 1e-6 * (1 + urand());
    memcpy(h1, g1, sizeof h1);
    dl1[3] = (float)(-(1 + d)); /* H = dl^T h: row 3 = -(1 + d) g: E + H = -d g */
    double sq = 0;
    for (int j = 0; j < C; j++) {
      const double v = (double)g1[j] + (double)dl1[3] * h1[j];
      sq += v * v;
    }
    unsigned char ill;
    dpm_wte_ill(&ill, &sq, g1, h1, dl1, 1, 1, C, V);
    flagged += ill;
    for (int pass = 0; pass < 2; pass++) {
      memset(out, 0, sizeof out);
      if (pass) {
        dpm_embed_accumulate(out, NULL, t1, g1, &c, NULL, 1, 1, C);
        dpm_seq_linear_accumulate_t(out, h1, dl1, &c, NULL, NULL, scratch, row, 1, 1, C, V);
      } else {
        dpm_wte_accumulate_alone(out, buf, t1, g1, h1, dl1, NULL, c, sq, 1, C, V);
      }
      if (sqrt(dotf(out, out, (size_t)V * C)) > c * sqrt(sq) * (1 - 0x1p-22)) pass ? over_batch++ : over_alone++;
    }
  }
  CHECK(flagged == trials, "only %d of %d cancelling wte gradients flagged", flagged, trials);
  /* the head's own positions cancelling (dl_2 h_2^T = -(1 + d) dl_1 h_1^T, a tiny embedding gradient) */
  {
    const int32_t t2[] = {1, 4};
    float g2[2 * 4], h2[2 * 4], dl2[2 * 6];
    fill(g2, 2 * (size_t)C, -1e-7, 1e-7), fill(h2, C, -1, 1), fill(dl2, V, -1, 1);
    memcpy(h2 + C, h2, (size_t)C * sizeof(float));
    for (int v = 0; v < V; v++) dl2[V + v] = (float)(-(1 + 1e-6) * dl2[v]);
    float E2[6 * 4] = {0};
    for (int t = 0; t < 2; t++)
      for (int j = 0; j < C; j++) {
        E2[t2[t] * C + j] += g2[t * C + j];
        for (int v = 0; v < V; v++) E2[v * C + j] += dl2[t * V + v] * h2[t * C + j];
      }
    double sq2 = dotf(E2, E2, (size_t)V * C);
    unsigned char ill2;
    dpm_wte_ill(&ill2, &sq2, g2, h2, dl2, 1, 2, C, V);
    CHECK(ill2, "a wte gradient whose head positions cancel is not flagged");
  }
  CHECK(over_alone == 0, "%d of %d capped wte gradients exceed c ||E + H||", over_alone, trials);
  CHECK(over_batch > 0, "the batch path never exceeds c ||E + H||: the wte cap test is vacuous");
}

/* ---- the model ---------------------------------------------------------------------------------------- */

/* per-tensor per-example squared norms and gradients of each example alone (B = 1), by the accumulate of
 * a single example (no norm formula involved): sq[k*B + b], grad_b in G + b * nparams */
static void brute_force(dpm_gpt *g, const int32_t *tok, const int32_t *tgt, int B, int T, int pad, double *sq,
                        float *G) {
  const int K = dpm_gpt_num_tensors(g);
  const size_t np = dpm_gpt_num_params(g);
  for (int b = 0; b < B; b++) {
    dpm_gpt_forward(g, tok + (size_t)b * T, tgt + (size_t)b * T, 1, T, pad, NULL);
    dpm_gpt_backward(g, NULL);
    dpm_gpt_zero_grads(g);
    dpm_gpt_accumulate(g, NULL);
    memcpy(G + (size_t)b * np, dpm_gpt_grads(g), np * sizeof(float));
    for (int k = 0; k < K; k++) {
      const float *x = dpm_gpt_grads(g) + dpm_gpt_tensor_offset(g, k);
      sq[(size_t)k * B + b] = 0;
      for (size_t j = 0; j < dpm_gpt_tensor_size(g, k); j++) sq[(size_t)k * B + b] += (double)x[j] * x[j];
    }
  }
  dpm_gpt_zero_grads(g);
}

static void random_model(dpm_gpt *g, double s) {
  float *p = dpm_gpt_params(g);
  fill(p, dpm_gpt_num_params(g), -s, s);
  /* LayerNorm weights near 1 */
  for (int k = 0; k < dpm_gpt_num_tensors(g); k++)
    if (strstr(dpm_gpt_tensor_name(g, k), "ln_") && strstr(dpm_gpt_tensor_name(g, k), "weight"))
      fill(p + dpm_gpt_tensor_offset(g, k), dpm_gpt_tensor_size(g, k), 0.7, 1.3);
}

static void test_model_norms(int tied, int B, int T, int L) {
  char err[DPM_ERRLEN];
  const dpm_gpt_config cfg = {.V = 7, .T = T + 1, .C = 8, .H = 2, .L = L, .tied = tied};
  dpm_gpt *g = dpm_gpt_create(&cfg, B, err);
  CHECK(g != NULL, "create: %s", err);
  if (!g) return;
  random_model(g, 0.5);
  const int K = dpm_gpt_num_tensors(g), pad = 6;
  const size_t np = dpm_gpt_num_params(g), BT = (size_t)B * T;
  int32_t *tok = calloc(BT, sizeof(int32_t)), *tgt = calloc(BT, sizeof(int32_t));
  for (size_t r = 0; r < BT; r++) tok[r] = (int32_t)(urand() * 4), tgt[r] = (int32_t)(urand() * 7); /* repeats, pads */
  if (T > 1) tgt[0] = pad, tgt[1] = 0; /* at least one masked and one unmasked target */
  double *ref = dnew((size_t)K * B), *sq = dnew((size_t)K * B);
  float *Gb = fnew((size_t)B * np), *coef = fnew((size_t)K * B), *want = fnew(np);
  brute_force(g, tok, tgt, B, T, pad, ref, Gb);
  for (int m = 0; m < N_MODES + 1; m++) { /* the last: auto with every wte gradient formed alone */
    dpm_gpt_set_norm_method(g, MODES[m % N_MODES].method, keep_bytes(m % N_MODES, B, cfg.C));
    dpm_gpt_force_wte_alone(g, m == N_MODES);
    dpm_gpt_forward(g, tok, tgt, B, T, pad, NULL);
    dpm_gpt_backward(g, sq);
    int bad = 0;
    for (int k = 0; k < K; k++)
      for (int b = 0; b < B; b++) {
        const double r = ref[(size_t)k * B + b], v = sq[(size_t)k * B + b];
        if (fabs(v - r) > 1e-4 * r + 1e-12) {
          if (bad++ < 3)
            fprintf(stderr, "  %s example %d: %.10g, brute force %.10g\n", dpm_gpt_tensor_name(g, k), b, v, r);
        }
      }
    CHECK(bad == 0, "model norms (tied %d, B %d, T %d, L %d, %s) off brute force in %d places", tied, B, T, L,
          MODES[m % N_MODES].name, bad);
    /* clipped sum with random coefficients per (tensor, example), some 0 */
    for (size_t j = 0; j < (size_t)K * B; j++) coef[j] = urand() < 0.2 ? 0.0f : (float)urand();
    memset(want, 0, np * sizeof(float));
    for (int k = 0; k < K; k++)
      for (int b = 0; b < B; b++)
        for (size_t j = dpm_gpt_tensor_offset(g, k); j < dpm_gpt_tensor_offset(g, k) + dpm_gpt_tensor_size(g, k); j++)
          want[j] += coef[(size_t)k * B + b] * Gb[(size_t)b * np + j];
    dpm_gpt_zero_grads(g);
    dpm_gpt_accumulate(g, coef);
    double e2 = 0, w2 = 0;
    for (size_t j = 0; j < np; j++) {
      const double d = (double)dpm_gpt_grads(g)[j] - want[j];
      e2 += d * d, w2 += (double)want[j] * want[j];
    }
    CHECK(sqrt(e2) <= 1e-5 * sqrt(w2) && w2 > 0, "clipped sum (tied %d, B %d, T %d, %s): relative error %.3g", tied, B,
          T, m == N_MODES ? "wte alone" : MODES[m].name, sqrt(e2 / fmax(w2, 1e-300)));
  }
  dpm_gpt_free(g);
  free(tok), free(tgt), free(ref), free(sq), free(Gb), free(coef), free(want);
}

/* whole model: finite differences of sum_b w_b loss_b on a sample of parameters */
static void test_model_fd(int tied) {
  char err[DPM_ERRLEN];
  const int B = 2, T = 4;
  const dpm_gpt_config cfg = {.V = 6, .T = T, .C = 8, .H = 2, .L = 2, .tied = tied};
  dpm_gpt *g = dpm_gpt_create(&cfg, B, err);
  CHECK(g != NULL, "create: %s", err);
  if (!g) return;
  random_model(g, 0.6);
  const int32_t tok[] = {1, 2, 1, 5, 0, 3, 3, 4}, tgt[] = {2, 1, 5, 0, 3, 5, 4, 1}; /* pad 5 */
  const int pad = 5;
  const float w[] = {1.0f, -0.7f}; /* weights per example through the coefficients */
  const int K = dpm_gpt_num_tensors(g);
  float *coef = fnew((size_t)K * B);
  for (int k = 0; k < K; k++) coef[(size_t)k * B] = w[0], coef[(size_t)k * B + 1] = w[1];
  double loss[2];
  dpm_gpt_forward(g, tok, tgt, B, T, pad, loss);
  dpm_gpt_backward(g, NULL);
  dpm_gpt_zero_grads(g);
  dpm_gpt_accumulate(g, coef);
  const size_t np = dpm_gpt_num_params(g);
  float *grad = fnew(np), *p = dpm_gpt_params(g);
  memcpy(grad, dpm_gpt_grads(g), np * sizeof(float));
  double scale = 0;
  for (size_t j = 0; j < np; j++) scale = fmax(scale, fabs(grad[j]));
  int bad = 0, n = 0;
  for (size_t j = 0; j < np; j += 7, n++) {
    const float p0 = p[j];
    const double h = 3e-3;
    p[j] = (float)(p0 + h);
    const double hp = (double)p[j] - p0;
    dpm_gpt_forward(g, tok, tgt, B, T, pad, loss);
    const double lp = w[0] * loss[0] + w[1] * loss[1];
    p[j] = (float)(p0 - h);
    const double hm = p0 - (double)p[j];
    dpm_gpt_forward(g, tok, tgt, B, T, pad, loss);
    const double lm = w[0] * loss[0] + w[1] * loss[1];
    p[j] = p0;
    const double fd = (lp - lm) / (hp + hm);
    if (fabs(fd - grad[j]) > 2e-2 * (fabs(fd) + 0.05 * scale) && bad++ < 3)
      fprintf(stderr, "  model (tied %d) param %zu: analytic %.8g, finite difference %.8g\n", tied, j, grad[j], fd);
  }
  CHECK(bad == 0, "model finite differences (tied %d): %d of %d entries off", tied, bad, n);
  CHECK(scale > 1e-3, "model gradient ~0 (scale %g)", scale);
  dpm_gpt_free(g);
  free(coef), free(grad);
}

/* an example whose embedding is huge: its activations overflow, its norm is not finite, and with
 * coefficient 0 it adds nothing to the clipped sum */
static void test_extreme_example(void) {
  char err[DPM_ERRLEN];
  const int B = 3, T = 4;
  /* untied: a tied head would multiply every example's hidden state by the Inf row */
  const dpm_gpt_config cfg = {.V = 6, .T = T, .C = 8, .H = 2, .L = 1, .tied = 0};
  dpm_gpt *g = dpm_gpt_create(&cfg, B, err);
  if (!g) return;
  random_model(g, 0.5);
  float *wte = dpm_gpt_params(g) + dpm_gpt_tensor_offset(g, dpm_gpt_tensor_find(g, "wte.weight"));
  for (int c = 0; c < 8; c++) wte[5 * 8 + c] = (c & 1) ? INFINITY : 1.0f; /* token 5: Inf activations */
  const int32_t tok[] = {0, 1, 2, 3, 5, 5, 5, 5, 3, 2, 1, 0}, tgt[] = {1, 2, 3, 0, 1, 2, 3, 4, 2, 1, 0, 4};
  const int K = dpm_gpt_num_tensors(g);
  const size_t np = dpm_gpt_num_params(g);
  double *sq = dnew((size_t)K * B);
  float *coef = fnew((size_t)K * B), *want = fnew(np);
  dpm_gpt_forward(g, tok, tgt, B, T, -1, NULL);
  dpm_gpt_backward(g, sq);
  int finite_others = 1;
  for (int k = 0; k < K; k++) finite_others &= isfinite(sq[(size_t)k * B]) && isfinite(sq[(size_t)k * B + 2]);
  CHECK(finite_others, "the ordinary examples' norms are not finite");
  const int ka = dpm_gpt_tensor_find(g, "h.0.attn.c_attn.weight");
  CHECK(!isfinite(sq[(size_t)ka * B + 1]) && !isfinite(sq[1]), "the extreme example's norms are finite (%g, %g)",
        sq[(size_t)ka * B + 1], sq[1]);
  for (int k = 0; k < K; k++) coef[(size_t)k * B] = 0.5f, coef[(size_t)k * B + 1] = 0.0f, coef[(size_t)k * B + 2] = 0.25f;
  dpm_gpt_zero_grads(g);
  dpm_gpt_accumulate(g, coef);
  memcpy(want, dpm_gpt_grads(g), np * sizeof(float));
  int finite = 1;
  for (size_t j = 0; j < np; j++) finite &= isfinite(want[j]);
  CHECK(finite, "the clipped sum holds Inf/NaN although the extreme example has coefficient 0");
  /* the same as the two ordinary examples alone */
  const int32_t tok2[] = {0, 1, 2, 3, 3, 2, 1, 0}, tgt2[] = {1, 2, 3, 0, 2, 1, 0, 4};
  float *coef2 = fnew((size_t)K * 2);
  for (int k = 0; k < K; k++) coef2[(size_t)k * 2] = 0.5f, coef2[(size_t)k * 2 + 1] = 0.25f;
  dpm_gpt_forward(g, tok2, tgt2, 2, T, -1, NULL);
  dpm_gpt_backward(g, NULL);
  dpm_gpt_zero_grads(g);
  dpm_gpt_accumulate(g, coef2);
  double e = 0, s = 0;
  for (size_t j = 0; j < np; j++) e = fmax(e, fabs(want[j] - dpm_gpt_grads(g)[j])), s = fmax(s, fabs(want[j]));
  CHECK(e <= 1e-6 * s, "excluded example changed the clipped sum by %g (scale %g)", e, s);
  dpm_gpt_free(g);
  free(sq), free(coef), free(want), free(coef2);
}

/* ---- golden test against ../shared/refs/gpt/reference.h5 ------------------------------------------- */

static double *read_h5(hid_t f, const char *name, size_t expect) {
  if (H5Lexists(f, name, H5P_DEFAULT) <= 0) {
    CHECK(0, "reference.h5: no dataset %s", name);
    return NULL;
  }
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT), sp = H5Dget_space(d);
  const hssize_t n = H5Sget_simple_extent_npoints(sp);
  double *v = NULL;
  if ((size_t)n == expect) {
    v = dnew((size_t)n);
    H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
  } else {
    CHECK(0, "reference.h5: %s has %lld values, expected %zu", name, (long long)n, expect);
  }
  H5Sclose(sp), H5Dclose(d);
  return v;
}

static int64_t attr_i(hid_t f, const char *name) {
  int64_t v = -1;
  hid_t a = H5Aopen_by_name(f, "/config", name, H5P_DEFAULT, H5P_DEFAULT);
  H5Aread(a, H5T_NATIVE_INT64, &v);
  H5Aclose(a);
  return v;
}

/* max |a - b| relative to max |b| over a tensor */
static double tensor_err(const float *a, const double *b, size_t n) {
  double e = 0, s = 0;
  for (size_t j = 0; j < n; j++) e = fmax(e, fabs(a[j] - b[j])), s = fmax(s, fabs(b[j]));
  return e / fmax(s, 1e-300);
}

static void test_golden(void) {
  const char *dir = getenv("DPM_SHARED_DIR");
  char path[1024];
  snprintf(path, sizeof path, "%s/refs/gpt/reference.h5", dir ? dir : "/work/shared");
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  CHECK(f >= 0, "cannot open %s", path);
  if (f < 0) return;
  hid_t a = H5Aopen_by_name(f, "/config", "clip", H5P_DEFAULT, H5P_DEFAULT);
  double clip = 0;
  H5Aread(a, H5T_NATIVE_DOUBLE, &clip);
  H5Aclose(a);
  int tied = (int)attr_i(f, "tied_lm_head");
  const dpm_gpt_config cfg = {.V = (int)attr_i(f, "vocab"), .T = (int)attr_i(f, "ctx"), .C = (int)attr_i(f, "embd"),
                              .H = (int)attr_i(f, "heads"), .L = (int)attr_i(f, "layers"), .tied = tied};
  const int B = (int)attr_i(f, "batch"), T = cfg.T, V = cfg.V;
  CHECK(tied == 1 && B == 4 && T == 16, "reference config: tied %d, batch %d, ctx %d", tied, B, T);
  char err[DPM_ERRLEN];
  dpm_gpt *g = dpm_gpt_create(&cfg, B, err);
  CHECK(g != NULL, "create: %s", err);
  if (!g) return;
  const int K = dpm_gpt_num_tensors(g);
  char name[128];
  for (int k = 0; k < K; k++) {
    snprintf(name, sizeof name, "/weights/%s", dpm_gpt_tensor_name(g, k));
    double *w = read_h5(f, name, dpm_gpt_tensor_size(g, k));
    if (!w) continue;
    float *p = dpm_gpt_params(g) + dpm_gpt_tensor_offset(g, k);
    for (size_t j = 0; j < dpm_gpt_tensor_size(g, k); j++) p[j] = (float)w[j];
    free(w);
  }
  double *toks = read_h5(f, "/tokens", (size_t)B * (T + 1));
  int32_t *tok = calloc((size_t)B * T, sizeof(int32_t)), *tgt = calloc((size_t)B * T, sizeof(int32_t));
  for (int b = 0; toks && b < B; b++)
    for (int t = 0; t < T; t++)
      tok[b * T + t] = (int32_t)toks[b * (T + 1) + t], tgt[b * T + t] = (int32_t)toks[b * (T + 1) + t + 1];
  double *ref_logits = read_h5(f, "/logits", (size_t)B * T * V), *ref_lpe = read_h5(f, "/loss_per_example", B),
         *ref_loss = read_h5(f, "/loss", 1), *ref_total = read_h5(f, "/sqnorm_total", B),
         *ref_coef = read_h5(f, "/clip_coef", B);
  double *sq = dnew((size_t)K * B), lpe[4];
  float *coef = fnew((size_t)K * B);
  /* by cost without kept gradients the reference model mixes ghost and explicit linears; with them, all
     explicit and kept */
  int mixed_ghost = 0, mixed_explicit = 0, kept = 0, linears = 0;
  dpm_gpt_set_norm_method(g, DPM_NORM_AUTO, 0);
  for (int k = 0; k < K; k++) {
    const dpm_norm_method m = dpm_gpt_norm_method(g, k);
    const char *n = dpm_gpt_tensor_name(g, k);
    if (strstr(n, ".weight") && (strstr(n, "c_") || !strcmp(n, "wte.weight")))
      mixed_ghost += m == DPM_NORM_GHOST, mixed_explicit += m == DPM_NORM_EXPLICIT;
  }
  /* the cost model: ghost for short sequences of wide layers, explicit for long sequences of narrow ones */
  CHECK(dpm_seq_linear_ghost_cheaper(1, 64, 64, 0) && dpm_seq_linear_ghost_cheaper(16, 32, 96, 0) &&
            !dpm_seq_linear_ghost_cheaper(1024, 64, 64, 0) && !dpm_seq_linear_ghost_cheaper(256, 384, 384, 0) &&
            dpm_seq_linear_ghost_cheaper(4, 64, 64, 1) && !dpm_seq_linear_ghost_cheaper(16, 32, 96, 1),
        "ghost/explicit cost model picks the wrong method");
  CHECK(mixed_ghost > 0 && mixed_explicit > 0, "auto on the reference model: %d ghost, %d explicit linears (want both)",
        mixed_ghost, mixed_explicit);
  dpm_gpt_set_norm_method(g, DPM_NORM_AUTO, DPM_GPT_KEEP_BYTES);
  for (int k = 0; k < K; k++) {
    const char *n = dpm_gpt_tensor_name(g, k);
    if (strstr(n, ".weight") && (strstr(n, "c_") || !strcmp(n, "wte.weight")))
      linears++, kept += dpm_gpt_norm_kept(g, k) && dpm_gpt_norm_method(g, k) == DPM_NORM_EXPLICIT;
  }
  CHECK(kept == linears && linears == 9, "auto with memory: %d of %d linears explicit and kept", kept, linears);
  const char *mname[N_MODES];
  for (int m = 0; m < N_MODES && toks && ref_logits && ref_lpe && ref_loss && ref_total && ref_coef; m++) {
    mname[m] = MODES[m].name;
    dpm_gpt_set_norm_method(g, MODES[m].method, keep_bytes(m, B, cfg.C));
    const double loss_sum = dpm_gpt_forward(g, tok, tgt, B, T, -1, lpe);
    const double le = tensor_err(dpm_gpt_logits(g), ref_logits, (size_t)B * T * V);
    CHECK(le <= 1e-4, "[%s] logits: max error %.3g of the largest", mname[m], le);
    for (int b = 0; b < B; b++) CHECK(rel(lpe[b], ref_lpe[b]) <= 1e-4, "[%s] loss_per_example[%d] %.8g, reference %.8g", mname[m], b, lpe[b], ref_lpe[b]);
    CHECK(rel(loss_sum / B, ref_loss[0]) <= 1e-4, "[%s] loss %.8g, reference %.8g", mname[m], loss_sum / B, ref_loss[0]);
    dpm_gpt_backward(g, sq);
    double worst = 0, total[4] = {0};
    const char *worst_name = "";
    for (int k = 0; k < K; k++) {
      snprintf(name, sizeof name, "/sqnorm/%s", dpm_gpt_tensor_name(g, k));
      double *r = read_h5(f, name, B);
      if (!r) continue;
      for (int b = 0; b < B; b++) {
        const double e = rel(sq[(size_t)k * B + b], r[b]);
        if (e > worst) worst = e, worst_name = dpm_gpt_tensor_name(g, k);
        total[b] += sq[(size_t)k * B + b];
      }
      free(r);
    }
    printf("golden [%s]: logits %.2e, per-example sqnorms worst %.2e (%s)\n", mname[m], le, worst, worst_name);
    CHECK(worst <= 1e-4, "[%s] per-example squared norms: worst relative error %.3g (%s)", mname[m], worst, worst_name);
    for (int b = 0; b < B; b++) {
      CHECK(rel(total[b], ref_total[b]) <= 1e-4, "[%s] sqnorm_total[%d] %.8g, reference %.8g", mname[m], b, total[b], ref_total[b]);
      const double c = fmin(1.0, clip / sqrt(total[b]));
      CHECK(rel(c, ref_coef[b]) <= 1e-4, "[%s] clip_coef[%d] %.8g, reference %.8g", mname[m], b, c, ref_coef[b]);
      for (int k = 0; k < K; k++) coef[(size_t)k * B + b] = (float)ref_coef[b];
    }
    /* the flat-clipped sum at the file's coefficients, then the mean gradient */
    for (int pass = 0; pass < 2; pass++) {
      dpm_gpt_zero_grads(g);
      dpm_gpt_accumulate(g, pass ? NULL : coef);
      double gworst = 0;
      const char *gname = "";
      for (int k = 0; k < K; k++) {
        snprintf(name, sizeof name, "/%s/%s", pass ? "grad_mean" : "clipped_sum", dpm_gpt_tensor_name(g, k));
        const size_t n = dpm_gpt_tensor_size(g, k);
        double *r = read_h5(f, name, n);
        if (!r) continue;
        float *x = dpm_gpt_grads(g) + dpm_gpt_tensor_offset(g, k);
        if (pass)
          for (size_t j = 0; j < n; j++) x[j] /= (float)B;
        const double e = tensor_err(x, r, n);
        if (e > gworst) gworst = e, gname = dpm_gpt_tensor_name(g, k);
        free(r);
      }
      printf("golden [%s]: %s worst tensor %.2e (%s)\n", mname[m], pass ? "grad_mean" : "clipped_sum", gworst, gname);
      CHECK(gworst <= 1e-4, "[%s] %s: worst tensor error %.3g of its largest entry (%s)", mname[m],
            pass ? "grad_mean" : "clipped_sum", gworst, gname);
    }
  }
  free(toks), free(tok), free(tgt), free(ref_logits), free(ref_lpe), free(ref_loss), free(ref_total), free(ref_coef);
  free(sq), free(coef);
  dpm_gpt_free(g);
  H5Fclose(f);
}

static void test_config_errors(void) {
  char err[DPM_ERRLEN] = "";
  dpm_gpt_config cfg = {.V = 10, .T = 4, .C = 6, .H = 4, .L = 1, .tied = 1};
  CHECK(dpm_gpt_create(&cfg, 2, err) == NULL && strstr(err, "multiple of H"), "C %% H != 0 accepted: '%s'", err);
  cfg.H = 2, cfg.L = 0;
  CHECK(dpm_gpt_create(&cfg, 2, err) == NULL && strstr(err, "L (blocks)"), "L = 0 accepted: '%s'", err);
  cfg.L = 1;
  dpm_gpt *g = dpm_gpt_create(&cfg, 2, err);
  CHECK(g && dpm_gpt_num_tensors(g) == 2 + 12 + 2, "tensor count %d", g ? dpm_gpt_num_tensors(g) : -1);
  if (g) {
    const size_t want = 10 * 6 + 4 * 6 + (2 * 6 + 6 * 18 + 18 + 36 + 6 + 2 * 6 + 6 * 24 + 24 + 24 * 6 + 6) + 12;
    CHECK(dpm_gpt_num_params(g) == want, "parameters %zu, expected %zu", dpm_gpt_num_params(g), want);
    int dims[2];
    const int k = dpm_gpt_tensor_find(g, "h.0.mlp.c_proj.weight");
    CHECK(k >= 0 && dpm_gpt_tensor_shape(g, k, dims) == 2 && dims[0] == 24 && dims[1] == 6, "c_proj shape");
    dpm_key key = dpm_key_from_seed(7, 1);
    dpm_gpt_init_params(g, &key);
    const float *lnw = dpm_gpt_params(g) + dpm_gpt_tensor_offset(g, dpm_gpt_tensor_find(g, "ln_f.weight"));
    const float *wte = dpm_gpt_params(g);
    double s2 = 0;
    for (int j = 0; j < 60; j++) s2 += (double)wte[j] * wte[j];
    CHECK(lnw[0] == 1.0f && sqrt(s2 / 60) > 0.01 && sqrt(s2 / 60) < 0.03, "init: ln_f %g, wte std %g", lnw[0], sqrt(s2 / 60));
    dpm_gpt_free(g);
  }
  cfg.tied = 0;
  g = dpm_gpt_create(&cfg, 2, err);
  CHECK(g && dpm_gpt_tensor_find(g, "lm_head.weight") == dpm_gpt_num_tensors(g) - 1, "untied: no lm_head.weight last");
  dpm_gpt_free(g);
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  test_config_errors();
  test_kernels_fd();
  test_kernel_norms();
  test_cancellation_cap();
  test_wte_alone();
  test_model_norms(1, 3, 5, 2);
  test_model_norms(0, 3, 5, 2);
  test_model_norms(1, 1, 1, 1); /* B = 1, T = 1 */
  test_model_norms(0, 2, 1, 1);
  test_model_norms(1, 1, 6, 1);
  test_model_fd(1);
  test_model_fd(0);
  test_extreme_example();
  test_golden();
  return dpm_test_finish();
}
