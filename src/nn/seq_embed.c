/* GPT-2's token embedding (wte [V, C]), learned position embedding (wpe [T, C]) and LM head (logits =
 * h wte^T, tied to the embedding), with per-example squared norms: the embedding's use of wte by the
 * token-equality trick (sum over t, s with tok_t == tok_s of g_t.g_s), wpe as a plain sum of squares, and
 * the cross term <E_b, H_b> of the tied weight's two uses without forming any V x C matrix (T^2 C per
 * example). The head's own norm ||H_b||^2 is the sequence linear's (seq_linear.c, inp = h, dout =
 * dlogits, no bias). See seq.h. */
#include "nn/seq.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "nn/layers.h"

void dpm_embed_forward(float *out, const int32_t *tok, const float *wte, const float *wpe, int B, int T, int C) {
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      const float *e = wte + (size_t)tok[(size_t)b * T + t] * C, *p = wpe + (size_t)t * C;
      float *o = out + ((size_t)b * T + t) * C;
      for (int c = 0; c < C; c++) o[c] = e[c] + p[c];
    }
}

void dpm_embed_sqnorms(double *sqe, double *sqp, const int32_t *tok, const float *dout, double *scratch, int B,
                       int T, int C) {
  double *acc = scratch;
  for (int b = 0; b < B; b++) {
    const int32_t *tk = tok + (size_t)b * T;
    const float *G = dout + (size_t)b * T * C;
    if (sqp) {
      double s = 0;
      for (size_t k = 0; k < (size_t)T * C; k++) s += (double)G[k] * G[k];
      sqp[b] = s;
    }
    if (!sqe) continue;
    /* sum_{t,s: tok_t == tok_s} g_t.g_s = sum over distinct tokens v of ||sum_{t: tok_t = v} g_t||^2: each
       distinct token is summed at its first position */
    double s = 0;
    for (int t = 0; t < T; t++) {
      int first = 1;
      for (int u = 0; u < t && first; u++) first = tk[u] != tk[t];
      if (!first) continue;
      for (int c = 0; c < C; c++) acc[c] = 0;
      for (int u = t; u < T; u++)
        if (tk[u] == tk[t])
          for (int c = 0; c < C; c++) acc[c] += G[(size_t)u * C + c];
      for (int c = 0; c < C; c++) s += acc[c] * acc[c];
    }
    sqe[b] = s;
  }
}

void dpm_embed_accumulate(float *dwte, float *dwpe, const int32_t *tok, const float *dout, const float *ce,
                          const float *cp, int B, int T, int C) {
  for (int b = 0; b < B; b++) {
    const float e = ce ? ce[b] : 1.0f, p = cp ? cp[b] : 1.0f;
    for (int t = 0; t < T; t++) {
      const float *g = dout + ((size_t)b * T + t) * C;
      if (dwte && e != 0.0f) {
        float *d = dwte + (size_t)tok[(size_t)b * T + t] * C;
        for (int c = 0; c < C; c++) d[c] += e * g[c];
      }
      if (dwpe && p != 0.0f) {
        float *d = dwpe + (size_t)t * C;
        for (int c = 0; c < C; c++) d[c] += p * g[c];
      }
    }
  }
}

void dpm_lm_head_forward(float *logits, const float *h, const float *wte, int B, int T, int C, int V) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B * T, V, C, 1.0f, h, C, wte, C, 0.0f, logits, V);
}

void dpm_lm_head_backward(float *dh, const float *dlogits, const float *wte, int B, int T, int C, int V) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B * T, C, V, 1.0f, dlogits, V, wte, C, 0.0f, dh, C);
}

void dpm_tied_cross(double *cross, const int32_t *tok, const float *demb, const float *h, const float *dlogits,
                    double *scratch, int B, int T, int C, int V) {
  double *M = scratch, *Gd = M + (size_t)T * T, *Hd = Gd + (size_t)T * C;
  for (int b = 0; b < B; b++) {
    const size_t o = (size_t)b * T * C;
    for (size_t k = 0; k < (size_t)T * C; k++) Gd[k] = demb[o + k], Hd[k] = h[o + k];
    /* M[t, s] = g_t . h_s */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, C, 1.0, Gd, C, Hd, C, 0.0, M, T);
    const int32_t *tk = tok + (size_t)b * T;
    const float *dl = dlogits + (size_t)b * T * V;
    double s = 0;
    for (int t = 0; t < T; t++)
      for (int u = 0; u < T; u++) s += (double)dl[(size_t)u * V + tk[t]] * M[(size_t)t * T + u];
    cross[b] = s;
  }
}

void dpm_tied_cross_kept(double *cross, const int32_t *tok, const float *demb, const float *Hk, int B, int T, int C,
                         int V) {
  for (int b = 0; b < B; b++) {
    const float *H = Hk + (size_t)b * V * C;
    double s = 0;
    for (int t = 0; t < T; t++) {
      const float *g = demb + ((size_t)b * T + t) * C, *h = H + (size_t)tok[(size_t)b * T + t] * C;
      for (int c = 0; c < C; c++) s += (double)g[c] * h[c];
    }
    cross[b] = s;
  }
}

void dpm_wte_ill(unsigned char *ill, const double *sq, const float *demb, const float *h, const float *dl, int B,
                 int T, int C, int V) {
  for (int b = 0; b < B; b++) {
    double S = 0;
    for (int t = 0; t < T; t++) {
      const size_t r = (size_t)b * T + t;
      S += sqrt(dpm_nn_sumsq(demb + r * C, (size_t)C));
      if (h) S += sqrt(dpm_nn_sumsq(dl + r * V, (size_t)V) * dpm_nn_sumsq(h + r * C, (size_t)C));
    }
    ill[b] = S * S > 64.0 * (double)T * sq[b];
  }
}

void dpm_wte_accumulate_alone(float *dwte, float *buf, const int32_t *tok, const float *demb, const float *h,
                              const float *dl, const float *Hk, float c, double sq, int T, int C, int V) {
  const size_t N = (size_t)V * C;
  if (!h)
    memset(buf, 0, N * sizeof(float));
  else if (Hk)
    for (size_t k = 0; k < N; k++) buf[k] = c * Hk[k];
  else
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, C, T, c, dl, V, h, C, 0.0f, buf, C);
  for (int t = 0; t < T; t++) {
    float *d = buf + (size_t)tok[t] * C;
    const float *g = demb + (size_t)t * C;
    for (int k = 0; k < C; k++) d[k] += c * g[k];
  }
  const double have = dpm_nn_sumsq(buf, N), cap = (double)c * c * sq;
  float f = 1.0f;
  if (!isfinite(have)) f = 0.0f;
  else if (have > cap) f = (float)(sqrt(cap / have) * (1.0 - 0x1p-21));
  if (f != 0.0f) cblas_saxpy((int)N, f, buf, 1, dwte, 1);
}
