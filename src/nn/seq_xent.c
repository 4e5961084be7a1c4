/* Masked sequence cross-entropy: each example's loss is the mean over its non-masked targets (targets equal
 * to the pad id are masked), with the fused softmax backward. See seq.h. */
#include "nn/seq.h"

#include <math.h>

double dpm_seq_xent_forward(float *probs, double *loss, const float *logits, const int32_t *tgt, int pad_id, int B,
                            int T, int V) {
  double total = 0;
  for (int b = 0; b < B; b++) {
    double sum = 0;
    int n = 0;
    for (int t = 0; t < T; t++) {
      const size_t r = (size_t)b * T + t;
      const float *z = logits + r * V;
      float *p = probs + r * V, mx = z[0];
      for (int v = 1; v < V; v++) mx = z[v] > mx ? z[v] : mx;
      double s = 0;
      for (int v = 0; v < V; v++) {
        p[v] = expf(z[v] - mx);
        s += p[v];
      }
      const float inv = (float)(1.0 / s);
      for (int v = 0; v < V; v++) p[v] *= inv;
      if (tgt && tgt[r] != pad_id) {
        sum += (double)mx + log(s) - (double)z[tgt[r]];
        n++;
      }
    }
    const double l = n ? sum / n : 0.0;
    if (loss) loss[b] = l;
    total += l;
  }
  return total;
}

void dpm_seq_xent_backward(float *dlogits, const float *probs, const int32_t *tgt, int pad_id, int B, int T, int V) {
  for (int b = 0; b < B; b++) {
    int n = 0;
    for (int t = 0; t < T; t++) n += tgt[(size_t)b * T + t] != pad_id;
    const float inv = n ? 1.0f / (float)n : 0.0f;
    for (int t = 0; t < T; t++) {
      const size_t r = (size_t)b * T + t;
      const float *p = probs + r * V;
      float *d = dlogits + r * V;
      if (tgt[r] == pad_id) {
        for (int v = 0; v < V; v++) d[v] = 0.0f;
        continue;
      }
      const float pt = p[tgt[r]]; /* before d (which may be p) overwrites it */
      for (int v = 0; v < V; v++) d[v] = p[v] * inv;
      d[tgt[r]] = (pt - 1.0f) * inv;
    }
  }
}
