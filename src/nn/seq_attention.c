/* The causal multi-head self-attention core of GPT-2: softmax(q k^T / sqrt(C/H)) v per head with the causal
 * mask, and its backward to dq|dk|dv. No parameters of its own: its inputs and output are the c_attn and
 * c_proj sequence linears, whose norms carry the attention's contribution. Four GEMMs per (example, head)
 * (the masked upper triangle is computed and discarded: simpler than a blocked causal GEMM, 2x on the
 * T^2 part). See seq.h. */
#include "nn/seq.h"

#include <cblas.h>
#include <math.h>

void dpm_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int H) {
  const int hs = C / H, C3 = 3 * C;
  const float scale = (float)(1.0 / sqrt((double)hs));
  for (int b = 0; b < B; b++) {
    for (int h = 0; h < H; h++) {
      const float *q = qkv + (size_t)b * T * C3 + (size_t)h * hs, *k = q + C, *v = q + 2 * C;
      float *P = att + ((size_t)b * H + h) * T * T;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, C3, k, C3, 0.0f, P, T);
      for (int t = 0; t < T; t++) {
        float *p = P + (size_t)t * T, mx = p[0];
        for (int s = 1; s <= t; s++) mx = p[s] > mx ? p[s] : mx;
        double sum = 0;
        for (int s = 0; s <= t; s++) {
          p[s] = expf(p[s] - mx);
          sum += p[s];
        }
        const float inv = (float)(1.0 / sum);
        for (int s = 0; s <= t; s++) p[s] *= inv;
        for (int s = t + 1; s < T; s++) p[s] = 0.0f;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, P, T, v, C3, 0.0f,
                  out + (size_t)b * T * C + (size_t)h * hs, C);
    }
  }
}

void dpm_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *att, float *scratch,
                            int B, int T, int C, int H) {
  const int hs = C / H, C3 = 3 * C;
  const float scale = (float)(1.0 / sqrt((double)hs));
  float *dS = scratch;
  for (int b = 0; b < B; b++) {
    for (int h = 0; h < H; h++) {
      const size_t o3 = (size_t)b * T * C3 + (size_t)h * hs;
      const float *q = qkv + o3, *k = q + C, *v = q + 2 * C, *d = dout + (size_t)b * T * C + (size_t)h * hs;
      const float *P = att + ((size_t)b * H + h) * T * T;
      float *dq = dqkv + o3, *dk = dq + C, *dv = dq + 2 * C;
      /* dP = dout v^T (into dS), dv = P^T dout */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, d, C, v, C3, 0.0f, dS, T);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, P, T, d, C, 0.0f, dv, C3);
      /* softmax backward: dS = P (dP - rowsum(P dP)), times the scale of the scores */
      for (int t = 0; t < T; t++) {
        const float *p = P + (size_t)t * T;
        float *ds = dS + (size_t)t * T;
        double dot = 0;
        for (int s = 0; s <= t; s++) dot += (double)p[s] * ds[s];
        for (int s = 0; s <= t; s++) ds[s] = p[s] * (ds[s] - (float)dot) * scale;
        for (int s = t + 1; s < T; s++) ds[s] = 0.0f;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, dS, T, k, C3, 0.0f, dq, C3);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, dS, T, q, C3, 0.0f, dk, C3);
    }
  }
}
