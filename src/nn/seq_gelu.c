/* GELU with the tanh approximation (GPT-2's "gelu_new"): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))),
 * forward and backward. See seq.h. */
#include "nn/seq.h"

#include <math.h>

#define GELU_K 0.7978845608028654f /* sqrt(2 / pi) */

void dpm_gelu_forward(float *out, const float *inp, size_t n) {
  for (size_t k = 0; k < n; k++) {
    const float x = inp[k];
    out[k] = 0.5f * x * (1.0f + tanhf(GELU_K * (x + 0.044715f * x * x * x)));
  }
}

void dpm_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
  for (size_t k = 0; k < n; k++) {
    const float x = inp[k], u = GELU_K * (x + 0.044715f * x * x * x), th = tanhf(u);
    const float sech2 = 1.0f - th * th;
    const float d = 0.5f * (1.0f + th) + 0.5f * x * sech2 * GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
    dinp[k] = d * dout[k];
  }
}
