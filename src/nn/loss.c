/* Softmax cross-entropy, the loss after the last layer (not a layer kind). */
#include "nn/layers.h"

#include <math.h>
#include <string.h>

double dpm_softmax_xent_forward(float *probs, const float *logits, const int32_t *y, int B, int O,
                                int *n_correct) {
  double loss = 0;
  int correct = 0;
  for (int i = 0; i < B; i++) {
    const float *z = logits + (size_t)i * O;
    float *p = probs + (size_t)i * O;
    int arg = 0;
    float mx = z[0];
    for (int o = 1; o < O; o++)
      if (z[o] > mx) {
        mx = z[o];
        arg = o;
      }
    double s = 0;
    for (int o = 0; o < O; o++) {
      p[o] = expf(z[o] - mx);
      s += p[o];
    }
    const float inv = (float)(1.0 / s);
    for (int o = 0; o < O; o++) p[o] *= inv;
    if (y) {
      loss += (double)mx + log(s) - (double)z[y[i]];
      correct += arg == y[i];
    }
  }
  if (n_correct) *n_correct = correct;
  return loss;
}

void dpm_softmax_xent_backward(float *dlogits, const float *probs, const int32_t *y, int B, int O) {
  memcpy(dlogits, probs, (size_t)B * O * sizeof(float));
  for (int i = 0; i < B; i++) dlogits[(size_t)i * O + y[i]] -= 1.0f;
}

