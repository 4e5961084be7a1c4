/* LayerNorm over the channels of each position (eps 1e-5, biased variance, as GPT-2): forward, and a
 * backward that gives the input gradient and each example's gradients of gamma and beta explicitly (they
 * are C-sized, so per-example rows cost nothing next to the activations). See seq.h. */
#include "nn/seq.h"

#include <math.h>
#include <string.h>

#define LN_EPS 1e-5

void dpm_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b,
                           int B, int T, int C) {
  for (size_t r = 0; r < (size_t)B * T; r++) {
    const float *x = inp + r * C;
    float *y = out + r * C;
    double s = 0, s2 = 0;
    for (int c = 0; c < C; c++) s += x[c];
    const double m = s / C;
    for (int c = 0; c < C; c++) s2 += (x[c] - m) * (x[c] - m);
    const double rs = 1.0 / sqrt(s2 / C + LN_EPS);
    for (int c = 0; c < C; c++) y[c] = (float)((x[c] - m) * rs) * w[c] + b[c];
    mean[r] = (float)m;
    rstd[r] = (float)rs;
  }
}

void dpm_layernorm_backward(float *dinp, float *Ew, float *Eb, const float *dout, const float *inp,
                            const float *mean, const float *rstd, const float *w, int B, int T, int C) {
  for (int b = 0; b < B; b++) {
    float *ew = Ew ? Ew + (size_t)b * C : NULL, *eb = Eb ? Eb + (size_t)b * C : NULL;
    if (ew) memset(ew, 0, (size_t)C * sizeof(float));
    if (eb) memset(eb, 0, (size_t)C * sizeof(float));
    for (int t = 0; t < T; t++) {
      const size_t r = (size_t)b * T + t;
      const float *x = inp + r * C, *g = dout + r * C, m = mean[r], rs = rstd[r];
      float *dx = dinp + r * C;
      /* dxhat = w g; dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) */
      double m1 = 0, m2 = 0;
      for (int c = 0; c < C; c++) {
        const float xh = (x[c] - m) * rs, dxh = w[c] * g[c];
        m1 += dxh;
        m2 += (double)dxh * xh;
        if (ew) ew[c] += g[c] * xh;
        if (eb) eb[c] += g[c];
      }
      const float a = (float)(m1 / C), q = (float)(m2 / C);
      for (int c = 0; c < C; c++) {
        const float xh = (x[c] - m) * rs;
        dx[c] += rs * (w[c] * g[c] - a - xh * q);
      }
    }
  }
}
