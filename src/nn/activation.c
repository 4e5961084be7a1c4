/* Elementwise activations, ReLU and tanh: kernels (a fast tanh with ~2 ulp error) and their ops tables. */
#include "nn/layer.h"

#include <math.h>
#include <string.h>

void dpm_relu_forward(float *out, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) out[k] = x[k] > 0 ? x[k] : 0.0f;
}

void dpm_relu_backward(float *dx, const float *dout, const float *out, size_t n) {
  /* dout loaded unconditionally: the select then vectorizes (a conditional load compiles to a branch) */
  for (size_t k = 0; k < n; k++) {
    const float g = dout[k];
    dx[k] = out[k] > 0 ? g : 0.0f;
  }
}

/* exp(x) for x in [-88, 88]: Cephes expf (2^n by exponent bits, degree-6 polynomial on the reduced
 * argument), a few ulp, branch-free so that the loops calling it vectorize. */
static inline float exp_poly(float x) {
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union { int32_t i; float f; } scale = {.i = ((int32_t)n + 127) << 23};
  return p * scale.f;
}

/* tanh with ~2 ulp error, much faster than libm's tanhf: Cephes' odd polynomial for |x| < 0.625,
 * 1 - 2 / (exp(2|x|) + 1) beyond (|x| clamped at 20 where tanh is 1 in float). */
static inline float tanh_fast(float x) {
  const float ax = fabsf(x), x2 = x * x;
  float p = -5.70498872745e-3f;
  p = p * x2 + 2.06390887954e-2f;
  p = p * x2 - 5.37397155531e-2f;
  p = p * x2 + 1.33314422036e-1f;
  p = p * x2 - 3.33332819422e-1f;
  const float small = p * x2 * x + x;
  const float big = 1.0f - 2.0f / (exp_poly(2.0f * fminf(ax, 20.0f)) + 1.0f);
  return ax < 0.625f ? small : (x < 0 ? -big : big);
}

void dpm_tanh_forward(float *out, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) out[k] = tanh_fast(x[k]);
}

void dpm_tanh_backward(float *dx, const float *dout, const float *out, size_t n) {
  for (size_t k = 0; k < n; k++) dx[k] = dout[k] * (1.0f - out[k] * out[k]);
}


/* ---- ops ---------------------------------------------------------------------------------------- */

static void relu_forward(dpm_model *m, layer *l, const float *in, int B) {
  (void)m;
  dpm_relu_forward(l->out, in, (size_t)B * l->out_n);
}

static void relu_backward(dpm_model *m, layer *l, const float *in, float *dx, double *sq, int B) {
  (void)m, (void)in, (void)sq;
  if (dx) dpm_relu_backward(dx, l->dout, l->out, (size_t)B * l->out_n);
}

static void tanh_forward(dpm_model *m, layer *l, const float *in, int B) {
  (void)m;
  dpm_tanh_forward(l->out, in, (size_t)B * l->out_n);
}

static void tanh_backward(dpm_model *m, layer *l, const float *in, float *dx, double *sq, int B) {
  (void)m, (void)in, (void)sq;
  if (dx) dpm_tanh_backward(dx, l->dout, l->out, (size_t)B * l->out_n);
}

const dpm_layer_ops dpm_ops_relu = {
    .name = "relu", .keys = "", .shape = dpm_shape_same, .plan = dpm_plan_none, .forward = relu_forward,
    .backward = relu_backward, .describe = dpm_describe_none, .info = dpm_info_elementwise};

const dpm_layer_ops dpm_ops_tanh = {
    .name = "tanh", .keys = "", .shape = dpm_shape_same, .plan = dpm_plan_none, .forward = tanh_forward,
    .backward = tanh_backward, .describe = dpm_describe_none, .info = dpm_info_elementwise};
