/* The sequence linear (Hugging Face Conv1D, y = x W + b with W [C, OC]) of GPT-2's attention and MLP:
 * forward, input gradient, per-example squared norms of dW and db by the Gram ("ghost") form or
 * explicitly (the caller picks by dpm_seq_linear_ghost_cheaper), and the coefficient-weighted gradient sum
 * as one GEMM (also for the LM head's transposed wte). See seq.h for the contracts. */
#include "nn/seq.h"

#include <cblas.h>
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

void dpm_seq_linear_sqnorms_ghost(double *sqw, double *sqb, const float *inp, const float *dout, double *scratch,
                                  int B, int T, int C, int OC) {
  /* double copies: products of float entries are exact, and no finite float32 input overflows */
  double *AA = scratch, *GG = AA + (size_t)T * T, *Ad = GG + (size_t)T * T, *Gd = Ad + (size_t)T * C;
  for (int b = 0; b < B; b++) {
    const float *A = inp + (size_t)b * T * C, *G = dout + (size_t)b * T * OC;
    for (size_t k = 0; k < (size_t)T * C; k++) Ad[k] = A[k];
    for (size_t k = 0; k < (size_t)T * OC; k++) Gd[k] = G[k];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, T, C, 1.0, Ad, C, 0.0, AA, T);
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, T, OC, 1.0, Gd, OC, 0.0, GG, T);
    /* the full symmetric sum = diagonal + 2 * strict upper triangle */
    double diag = 0, off = 0;
    for (int s = 0; s < T; s++) {
      const double *aa = AA + (size_t)s * T, *gg = GG + (size_t)s * T;
      diag += aa[s] * gg[s];
      for (int t = s + 1; t < T; t++) off += aa[t] * gg[t];
    }
    const double v = diag + 2.0 * off;
    sqw[b] = v < 0 ? 0 : v; /* rounding may leave a tiny negative; Inf and NaN stay (coefficient 0) */
    if (sqb) sqb[b] = bias_sqnorm(G, T, OC);
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

void dpm_seq_linear_sqnorms_explicit(double *sqw, double *sqb, const float *inp, const float *dout,
                                     float *scratch, int B, int T, int C, int OC) {
  for (int b = 0; b < B; b++)
    dpm_seq_linear_grads_explicit(scratch, sqw + b, sqb ? sqb + b : NULL, inp + (size_t)b * T * C,
                                  dout + (size_t)b * T * OC, 0, 1, T, C, OC);
}

int dpm_seq_linear_ghost_cheaper(int T, int C, int OC, int keep) {
  const double t = T, in = C, out = OC;
  return keep ? t * t * (in + out) < 2.0 * in * out : t * (in + out) < in * out;
}

/* dw += sum_b cw_b (A_b^T G_b) (trans = 0, dw [C, OC]) or its transpose (trans = 1, dw [OC, C]) */
static void accumulate_w(float *dw, int trans, const float *A, const float *G, const float *cw, float *scratch,
                         float *row, int B, int T, int C, int OC) {
  const size_t TO = (size_t)T * OC, TC = (size_t)T * C;
  const float *Gs = G;
  int careful = 0;
  if (cw) {
    for (int b = 0; b < B; b++) careful |= dpm_nn_scale_row(scratch + b * TO, G + b * TO, cw[b], TO);
    Gs = scratch;
  }
  const int n = careful ? B : 1, rows = careful ? T : B * T;
  for (int b = 0; b < n; b++) {
    const float *Ab = A + b * TC, *Gb = Gs + b * TO;
    if (careful) {
      const float c = cw[b];
      if (c == 0.0f) continue; /* its norm was not finite: its rows must not enter a GEMM */
      if (c < 1.0f && dpm_nn_needs_rescale(scratch + b * TO, TO))
        Ab = dpm_nn_rescale_rows(scratch + b * TO, G + b * TO, c, TO, Ab, TC, row);
    }
    if (trans)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, rows, 1.0f, Gb, OC, Ab, C, 1.0f, dw, C);
    else
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, OC, rows, 1.0f, Ab, C, Gb, OC, 1.0f, dw, OC);
  }
}

void dpm_seq_linear_accumulate(float *dw, float *db, const float *inp, const float *dout, const float *cw,
                               const float *cb, float *scratch, float *row, int B, int T, int C, int OC) {
  if (dw) accumulate_w(dw, 0, inp, dout, cw, scratch, row, B, T, C, OC);
  if (!db) return;
  if (!cb) {
    dpm_nn_colsum_add(db, dout, (size_t)B * T, OC);
    return;
  }
  for (int b = 0; b < B; b++) {
    const float c = cb[b];
    if (c == 0.0f) continue;
    for (int t = 0; t < T; t++) {
      const float *g = dout + ((size_t)b * T + t) * OC;
      for (int o = 0; o < OC; o++) db[o] += c * g[o];
    }
  }
}

void dpm_seq_linear_accumulate_t(float *dw, const float *inp, const float *dout, const float *cw, float *scratch,
                                 float *row, int B, int T, int C, int OC) {
  accumulate_w(dw, 1, inp, dout, cw, scratch, row, B, T, C, OC);
}
