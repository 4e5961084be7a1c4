/* The sequence linear (Hugging Face Conv1D, y = x W + b with W [C, OC]) of GPT-2's attention and MLP:
 * forward, input gradient, per-example squared norms of dW and db by the Gram ("ghost") form or
 * explicitly (the caller picks by dpm_seq_linear_ghost_cheaper), and the coefficient-weighted gradient sum
 * as one GEMM (also for the LM head's transposed wte). See seq.h for the contracts. */
#include "nn/seq.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "nn/layers.h"

void dpm_seq_linear_forward(float *out, const float *inp, const float *w, const float *b, int B, int T, int C,
                            int OC) {
  const int BT = B * T;
  if (b)
    for (int r = 0; r < BT; r++) memcpy(out + (size_t)r * OC, b, (size_t)OC * sizeof(float));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, BT, OC, C, 1.0f, inp, C, w, OC, b ? 1.0f : 0.0f, out, OC);
}

void dpm_seq_linear_backward(float *dinp, const float *dout, const float *w, int B, int T, int C, int OC) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B * T, C, OC, 1.0f, dout, OC, w, OC, 0.0f, dinp, C);
}

/* ||sum_t g_t||^2 in double for example rows G (T x OC). */
static double bias_sqnorm(const float *G, int T, int OC) {
  double s = 0;
  for (int o = 0; o < OC; o++) {
    double col = 0;
    for (int t = 0; t < T; t++) col += G[(size_t)t * OC + o];
    s += col * col;
  }
  return s;
}

/* Positions' cancellation beyond which an example's clipped weight gradient is formed alone and capped
 * (accumulate_w): S^2 > KAPPA2 T ||dW_b||^2 with S = sum_t ||a_t|| ||g_t||, 8 times the sqrt(T) of
 * uncorrelated terms (as conv.c's ghost layers, docs/design.md "Clipping in floating point"). */
#define ILL_KAPPA2 64.0

static unsigned char ill_flag(double S, double sq, int T) { return S * S > ILL_KAPPA2 * (double)T * sq; }

void dpm_seq_linear_sqnorms_ghost(double *sqw, double *sqb, unsigned char *ill, const float *inp, const float *dout,
                                  double *scratch, int B, int T, int C, int OC) {
  /* double copies: products of float entries are exact, and no finite float32 input overflows */
  double *AA = scratch, *GG = AA + (size_t)T * T, *Ad = GG + (size_t)T * T, *Gd = Ad + (size_t)T * C;
  for (int b = 0; b < B; b++) {
    const float *A = inp + (size_t)b * T * C, *G = dout + (size_t)b * T * OC;
    for (size_t k = 0; k < (size_t)T * C; k++) Ad[k] = A[k];
    for (size_t k = 0; k < (size_t)T * OC; k++) Gd[k] = G[k];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, T, C, 1.0, Ad, C, 0.0, AA, T);
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, T, OC, 1.0, Gd, OC, 0.0, GG, T);
    /* the full symmetric sum = diagonal + 2 * strict upper triangle */
    double diag = 0, off = 0, S = 0;
    for (int s = 0; s < T; s++) {
      const double *aa = AA + (size_t)s * T, *gg = GG + (size_t)s * T;
      diag += aa[s] * gg[s];
      S += sqrt(aa[s] * gg[s]);
      for (int t = s + 1; t < T; t++) off += aa[t] * gg[t];
    }
    const double v = diag + 2.0 * off;
    sqw[b] = v < 0 ? 0 : v; /* rounding may leave a tiny negative; Inf and NaN stay (coefficient 0) */
    if (sqb) sqb[b] = bias_sqnorm(G, T, OC);
    if (ill) ill[b] = ill_flag(S, sqw[b], T);
  }
}

void dpm_seq_linear_grads_explicit(float *E, double *sqw, double *sqb, const float *inp, const float *dout,
                                   int trans, int B, int T, int C, int OC) {
  for (int b = 0; b < B; b++) {
    const float *A = inp + (size_t)b * T * C, *G = dout + (size_t)b * T * OC;
    float *Eb = E + (size_t)b * C * OC;
    if (trans)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, T, 1.0f, G, OC, A, C, 0.0f, Eb, C);
    else
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, OC, T, 1.0f, A, C, G, OC, 0.0f, Eb, OC);
    sqw[b] = dpm_nn_sumsq(Eb, (size_t)C * OC);
    if (sqb) sqb[b] = bias_sqnorm(G, T, OC);
  }
}

void dpm_seq_linear_sqnorms_explicit(double *sqw, double *sqb, unsigned char *ill, const float *inp,
                                     const float *dout, float *scratch, int B, int T, int C, int OC) {
  for (int b = 0; b < B; b++) {
    const float *A = inp + (size_t)b * T * C, *G = dout + (size_t)b * T * OC;
    dpm_seq_linear_grads_explicit(scratch, sqw + b, sqb ? sqb + b : NULL, A, G, 0, 1, T, C, OC);
    if (!ill) continue;
    double S = 0;
    for (int t = 0; t < T; t++)
      S += sqrt(dpm_nn_sumsq(A + (size_t)t * C, (size_t)C) * dpm_nn_sumsq(G + (size_t)t * OC, (size_t)OC));
    ill[b] = ill_flag(S, sqw[b], T);
  }
}

int dpm_seq_linear_ghost_cheaper(int T, int C, int OC, int keep) {
  const double t = T, in = C, out = OC;
  return keep ? t * t * (in + out) < 2.0 * in * out : t * (in + out) < in * out;
}

/* dw += sum_b cw_b (A_b^T G_b) (trans = 0, dw [C, OC]) or its transpose (trans = 1, dw [OC, C]). With the
   norms gsq and flags ill of this micro-batch (both may be NULL), an extreme (rescaled) or ill-conditioned
   example's clipped gradient is formed alone in row (an ill-conditioned one in double) and scaled down to
   cw_b sqrt(gsq_b) if the sum over its positions came out larger. */
static void accumulate_w(float *dw, int trans, const float *A, const float *G, const float *cw, const double *gsq,
                         const unsigned char *ill, float *scratch, float *row, int B, int T, int C, int OC) {
  const size_t TO = (size_t)T * OC, TC = (size_t)T * C, N = (size_t)C * OC;
  const float *Gs = G;
  int careful = 0;
  if (cw) {
    for (int b = 0; b < B; b++) {
      careful |= dpm_nn_scale_row(scratch + b * TO, G + b * TO, cw[b], TO);
      careful |= ill && ill[b] && cw[b] != 0.0f;
    }
    Gs = scratch;
  }
  if (!careful) {
    if (trans)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, B * T, 1.0f, Gs, OC, A, C, 1.0f, dw, C);
    else
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, OC, B * T, 1.0f, A, C, Gs, OC, 1.0f, dw, OC);
    return;
  }
  float *E = row + TC;
  for (int b = 0; b < B; b++) {
    const float c = cw[b], *Ab = A + b * TC, *s = scratch + b * TO;
    if (c == 0.0f) continue; /* its norm was not finite: its rows must not enter a GEMM */
    int alone = ill && ill[b], rescaled = 0;
    if (c < 1.0f && dpm_nn_needs_rescale(s, TO))
      Ab = dpm_nn_rescale_rows(scratch + b * TO, G + b * TO, c, TO, Ab, TC, row), alone = rescaled = 1;
    float *dst = alone && gsq ? E : dw;
    const float beta = alone && gsq ? 0.0f : 1.0f;
    if (dst == E && !rescaled && T >= 2) /* ill-conditioned: in double from the unscaled G (row as acc) */
      dpm_nn_outer_sum_exact(E, trans, G + b * TO, Ab, c, T, OC, C, (double *)row);
    else if (trans)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, T, 1.0f, s, OC, Ab, C, beta, dst, C);
    else
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, OC, T, 1.0f, Ab, C, s, OC, beta, dst, OC);
    if (dst == dw) continue;
    const double have = dpm_nn_sumsq(E, N), cap = (double)c * c * gsq[b];
    float f = 1.0f;
    if (!isfinite(have)) f = 0.0f;
    else if (have > cap) f = (float)(sqrt(cap / have) * (1.0 - 0x1p-21));
    if (f != 0.0f) cblas_saxpy((int)N, f, E, 1, dw, 1);
  }
}

void dpm_seq_linear_accumulate(float *dw, float *db, const float *inp, const float *dout, const float *cw,
                               const float *cb, const double *gsq, const unsigned char *ill, float *scratch,
                               float *row, int B, int T, int C, int OC) {
  if (dw) accumulate_w(dw, 0, inp, dout, cw, gsq, ill, scratch, row, B, T, C, OC);
  if (!db) return;
  if (!cb) {
    dpm_nn_colsum_add(db, dout, (size_t)B * T, OC);
    return;
  }
  /* each example's bias gradient summed over its positions in double, as bias_sqnorm does, then scaled
     once: the float entries round once, so its norm stays below cb_b ||db_b|| (1 + 2^-24) */
  for (int b = 0; b < B; b++) {
    const float c = cb[b], *G = dout + (size_t)b * T * OC;
    if (c == 0.0f) continue;
    for (int o = 0; o < OC; o++) {
      double col = 0;
      for (int t = 0; t < T; t++) col += G[(size_t)t * OC + o];
      db[o] += (float)(c * col);
    }
  }
}

void dpm_seq_linear_accumulate_t(float *dw, const float *inp, const float *dout, const float *cw, const double *gsq,
                                 const unsigned char *ill, float *scratch, float *row, int B, int T, int C, int OC) {
  accumulate_w(dw, 1, inp, dout, cw, gsq, ill, scratch, row, B, T, C, OC);
}
