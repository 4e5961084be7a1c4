/* Tests of the layer kernels (src/nn/{dense,conv,pool,activation,groupnorm,rows,loss}.c) and of the per-layer privacy computations:
 *  - every kernel's input and parameter gradients against central finite differences of a loss
 *    (a fixed random linear functional of the layer output, summed in double; softmax cross-entropy
 *    for the loss layer), conv over several (kernel, stride, pad) combos;
 *  - per-example squared gradient norms of dense, conv (ghost and explicit forced) and groupnorm
 *    layers against brute force (each example run alone with B = 1, its gradient's norm in double);
 *  - clipped sums with random coefficients against brute-force sum_i c_i grad_i;
 *  - the row helpers of the clipped sums (max |entry|, scaling with its rescale flag) and the explicit conv
 *    rows' bias sums against plain loops, bit for bit. */
#include <stdlib.h>
#include <string.h>

#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/nn/model.h"
#include "nn/layers.h"
#include "testing.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static double urand(void) { /* splitmix64, uniform [0, 1) */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}
static void fill(float *v, size_t n, double lo, double hi) {
  for (size_t k = 0; k < n; k++) v[k] = (float)(lo + (hi - lo) * urand());
}
static double dot(const float *a, const float *b, size_t n) {
  double s = 0;
  for (size_t k = 0; k < n; k++) s += (double)a[k] * b[k];
  return s;
}

/* ---- finite differences on a generic layer ----------------------------------------------------- */

/* A layer under test: forward(ctx) fills ctx->out from ctx->x and ctx->p. */
typedef struct {
  int kind; /* dpm_layer_kind */
  int B, C, H, W, O, K, S, pad, OH, OW, G;
  float *x, *p, *out, *R; /* input, parameters (weights then bias), output, loss weights */
  size_t nx, np, nout;
  float *P, *Y, *xhat, *rstd; /* kept buffers */
  int32_t *argmax;
} lctx;

static void lforward(lctx *c) {
  const int B = c->B;
  switch (c->kind) {
    case DPM_LAYER_DENSE: dpm_dense_forward(c->out, c->x, c->p, c->p + (size_t)c->O * c->C, B, c->C, c->O); break;
    case DPM_LAYER_CONV2D:
      dpm_conv_forward(c->out, c->P, c->Y, c->x, c->p, c->p + (size_t)c->O * c->C * c->K * c->K, B, c->C, c->H,
                       c->W, c->O, c->K, c->S, c->pad, c->OH, c->OW);
      break;
    case DPM_LAYER_MAXPOOL:
      dpm_maxpool_forward(c->out, c->argmax, c->x, B, c->C, c->H, c->W, c->K, c->S, c->OH, c->OW);
      break;
    case DPM_LAYER_AVGPOOL: dpm_avgpool_forward(c->out, c->x, B, c->C, c->H, c->W, c->K, c->S, c->OH, c->OW); break;
    case DPM_LAYER_RELU: dpm_relu_forward(c->out, c->x, c->nx); break;
    case DPM_LAYER_TANH: dpm_tanh_forward(c->out, c->x, c->nx); break;
    case DPM_LAYER_GROUPNORM:
      dpm_groupnorm_forward(c->out, c->xhat, c->rstd, c->x, c->p, c->p + c->C, B, c->C, c->H * c->W, c->G, 1e-5f);
      break;
  }
}

static double lloss(lctx *c) {
  lforward(c);
  return dot(c->out, c->R, c->nout);
}

/* Analytic gradients: dx (nx) and dp (np) of loss = <R, out>. */
static void lbackward(lctx *c, float *dx, float *dp) {
  const int B = c->B;
  lforward(c);
  memset(dp, 0, c->np * sizeof(float));
  switch (c->kind) {
    case DPM_LAYER_DENSE: {
      dpm_dense_backward_input(dx, c->R, c->p, B, c->C, c->O);
      dpm_dense_accumulate(dp, dp + (size_t)c->O * c->C, c->x, c->R, NULL, NULL, NULL, B, c->C, c->O);
      break;
    }
    case DPM_LAYER_CONV2D: {
      const int T = c->OH * c->OW, CK = c->C * c->K * c->K;
      float *G = malloc(sizeof(float) * (size_t)B * T * c->O), *dP = malloc(sizeof(float) * (size_t)B * T * CK);
      dpm_conv_backward(dx, G, dP, c->R, c->p, B, c->C, c->H, c->W, c->O, c->K, c->S, c->pad, c->OH, c->OW);
      dpm_conv_accumulate(dp, dp + (size_t)c->O * CK, c->P, G, NULL, NULL, NULL, NULL, NULL, B, T, CK, c->O);
      free(G);
      free(dP);
      break;
    }
    case DPM_LAYER_MAXPOOL: dpm_maxpool_backward(dx, c->R, c->argmax, B, c->C, c->H, c->W, c->OH, c->OW); break;
    case DPM_LAYER_AVGPOOL: dpm_avgpool_backward(dx, c->R, B, c->C, c->H, c->W, c->K, c->S, c->OH, c->OW); break;
    case DPM_LAYER_RELU: dpm_relu_backward(dx, c->R, c->out, c->nx); break;
    case DPM_LAYER_TANH: dpm_tanh_backward(dx, c->R, c->out, c->nx); break;
    case DPM_LAYER_GROUPNORM: {
      float *E = malloc(sizeof(float) * (size_t)B * 2 * c->C);
      dpm_groupnorm_backward(dx, E, c->R, c->xhat, c->rstd, c->p, B, c->C, c->H * c->W, c->G);
      dpm_rows_accumulate(dp, E, NULL, B, (size_t)2 * c->C);
      free(E);
      break;
    }
  }
}

/* Compare analytic gradients with central differences of step h on every input and parameter. */
static void check_fd(lctx *c, const char *what, double h, double rtol) {
  float *dx = calloc(c->nx, sizeof(float)), *dp = calloc(c->np + 1, sizeof(float));
  lbackward(c, dx, dp);
  double scale = 0;
  for (size_t k = 0; k < c->nx; k++) scale = fmax(scale, fabs(dx[k]));
  for (size_t k = 0; k < c->np; k++) scale = fmax(scale, fabs(dp[k]));
  int bad = 0;
  double worst = 0;
  for (int which = 0; which < 2; which++) {
    float *v = which ? c->p : c->x;
    const float *g = which ? dp : dx;
    size_t n = which ? c->np : c->nx;
    for (size_t k = 0; k < n; k++) {
      const float v0 = v[k];
      v[k] = (float)(v0 + h);
      double hp = (double)v[k] - v0, lp = lloss(c);
      v[k] = (float)(v0 - h);
      double hm = v0 - (double)v[k], lm = lloss(c);
      v[k] = v0;
      double fd = (lp - lm) / (hp + hm), err = fabs(fd - g[k]);
      worst = fmax(worst, err / (1e-3 * scale + fabs(fd)));
      if (err > rtol * (fabs(fd) + 0.05 * scale)) {
        if (bad++ < 3)
          fprintf(stderr, "  %s: %s[%zu] analytic %.8g, finite difference %.8g\n", what, which ? "param" : "input",
                  k, g[k], fd);
      }
    }
  }
  CHECK(bad == 0, "%s: %d gradient entries off (worst relative error %.3g)", what, bad, worst);
  CHECK(scale > 1e-3, "%s: gradients are all ~0 (scale %g), the test would be vacuous", what, scale);
  free(dx);
  free(dp);
}

static lctx make(int kind, int B, int C, int H, int W, int O, int K, int S, int pad, int G) {
  lctx c = {.kind = kind, .B = B, .C = C, .H = H, .W = W, .O = O, .K = K, .S = S, .pad = pad, .G = G};
  c.nx = (size_t)B * C * H * W;
  int OC = C, OH = H, OW = W;
  switch (kind) {
    case DPM_LAYER_DENSE: OC = O, OH = OW = 1, c.np = (size_t)O * C + O; c.nx = (size_t)B * C; break;
    case DPM_LAYER_CONV2D:
    case DPM_LAYER_MAXPOOL:
    case DPM_LAYER_AVGPOOL:
      OH = (H + 2 * pad - K) / S + 1, OW = (W + 2 * pad - K) / S + 1;
      if (kind == DPM_LAYER_CONV2D) OC = O, c.np = (size_t)O * C * K * K + O;
      break;
    case DPM_LAYER_GROUPNORM: c.np = (size_t)2 * C; break;
  }
  c.OH = OH, c.OW = OW;
  c.nout = (size_t)B * OC * OH * OW;
  c.x = malloc(sizeof(float) * c.nx);
  c.p = malloc(sizeof(float) * (c.np + 1));
  c.out = malloc(sizeof(float) * c.nout);
  c.R = malloc(sizeof(float) * c.nout);
  size_t T = (size_t)OH * OW;
  c.P = malloc(sizeof(float) * ((size_t)B * T * C * K * K + 1));
  c.Y = malloc(sizeof(float) * ((size_t)B * T * O + 1));
  c.xhat = malloc(sizeof(float) * c.nx);
  c.rstd = malloc(sizeof(float) * ((size_t)B * (G > 0 ? G : 1)));
  c.argmax = malloc(sizeof(int32_t) * c.nout);
  fill(c.x, c.nx, -1, 1);
  fill(c.p, c.np, -0.5, 0.5);
  fill(c.R, c.nout, -1, 1);
  return c;
}

static void drop(lctx *c) {
  free(c->x), free(c->p), free(c->out), free(c->R), free(c->P), free(c->Y), free(c->xhat), free(c->rstd);
  free(c->argmax);
}

static void test_dense_fd(void) {
  lctx c = make(DPM_LAYER_DENSE, 3, 7, 1, 1, 5, 0, 0, 0, 0);
  check_fd(&c, "dense", 1e-2, 2e-3);
  drop(&c);
}

static void test_conv_fd(void) {
  /* C, H, W, O, K, S, pad */
  const int combos[][7] = {{2, 5, 5, 3, 3, 1, 1}, {1, 9, 7, 2, 4, 2, 3}, {3, 6, 8, 2, 2, 2, 0},
                           {2, 7, 6, 3, 5, 3, 2}, {1, 4, 11, 2, 1, 1, 0}, {2, 8, 5, 2, 3, 2, 1}};
  for (size_t k = 0; k < sizeof combos / sizeof combos[0]; k++) {
    const int *q = combos[k];
    lctx c = make(DPM_LAYER_CONV2D, 2, q[0], q[1], q[2], q[3], q[4], q[5], q[6], 0);
    char what[96];
    snprintf(what, sizeof what, "conv C=%d H=%d W=%d O=%d K=%d S=%d pad=%d", q[0], q[1], q[2], q[3], q[4], q[5], q[6]);
    check_fd(&c, what, 1e-2, 2e-3);
    drop(&c);
  }
}

/* Inputs on a grid of distinct values (spacing 0.05) so that a step of 1e-2 never changes an argmax. */
static void distinct_inputs(float *x, size_t n) {
  for (size_t k = 0; k < n; k++) x[k] = (float)(0.05 * (double)k - 0.025 * (double)n);
  for (size_t k = n - 1; k > 0; k--) {
    size_t j = (size_t)(urand() * (double)(k + 1));
    float t = x[k];
    x[k] = x[j], x[j] = t;
  }
}

static void test_pool_fd(void) {
  const int combos[][3] = {{2, 1, 0}, {2, 2, 0}, {3, 2, 0}, {3, 1, 0}};
  for (size_t k = 0; k < 4; k++) {
    for (int kind = DPM_LAYER_MAXPOOL; kind <= DPM_LAYER_AVGPOOL; kind++) {
      lctx c = make(kind, 2, 2, 7, 6, 0, combos[k][0], combos[k][1], 0, 0);
      distinct_inputs(c.x, c.nx);
      char what[64];
      snprintf(what, sizeof what, "%s K=%d S=%d", kind == DPM_LAYER_MAXPOOL ? "maxpool" : "avgpool", combos[k][0],
               combos[k][1]);
      check_fd(&c, what, 1e-2, 2e-3);
      drop(&c);
    }
  }
  /* maxpool routes to the argmax: with overlapping windows an input can receive several gradients */
  lctx c = make(DPM_LAYER_MAXPOOL, 1, 1, 3, 3, 0, 2, 1, 0, 0);
  for (int k = 0; k < 9; k++) c.x[k] = (float)k;
  for (int k = 0; k < 4; k++) c.R[k] = 1;
  float dx[9];
  lforward(&c);
  dpm_maxpool_backward(dx, c.R, c.argmax, 1, 1, 3, 3, 2, 2);
  CHECK(c.out[0] == 4 && c.out[3] == 8 && dx[8] == 1 && dx[4] == 1 && dx[0] == 0, "maxpool argmax routing");
  drop(&c);
}

static void test_elementwise_fd(void) {
  lctx c = make(DPM_LAYER_RELU, 3, 2, 3, 3, 0, 0, 0, 0, 0);
  for (size_t k = 0; k < c.nx; k++) c.x[k] = (float)((k % 2 ? 1 : -1) * (0.05 + urand())); /* away from 0 */
  check_fd(&c, "relu", 1e-2, 2e-3);
  drop(&c);
  c = make(DPM_LAYER_TANH, 3, 2, 3, 3, 0, 0, 0, 0, 0);
  fill(c.x, c.nx, -2, 2);
  check_fd(&c, "tanh", 1e-2, 2e-3);
  drop(&c);
}

static void test_groupnorm_fd(void) {
  const int combos[][4] = {{4, 2, 3, 2}, {6, 3, 2, 2}, {3, 1, 2, 3}, {4, 4, 1, 3}}; /* C, G, H, W */
  for (size_t k = 0; k < 4; k++) {
    lctx c = make(DPM_LAYER_GROUPNORM, 3, combos[k][0], combos[k][2], combos[k][3], 0, 0, 0, 0, combos[k][1]);
    fill(c.p, (size_t)c.C, 0.5, 1.5); /* gamma */
    char what[64];
    snprintf(what, sizeof what, "groupnorm C=%d G=%d HW=%dx%d", combos[k][0], combos[k][1], combos[k][2], combos[k][3]);
    check_fd(&c, what, 1e-3, 5e-3);
    drop(&c);
  }
  /* output of a group has mean beta and (biased) variance gamma^2 var/(var+eps) */
  lctx c = make(DPM_LAYER_GROUPNORM, 1, 2, 4, 4, 0, 0, 0, 0, 1);
  c.p[0] = c.p[1] = 1, c.p[2] = c.p[3] = 0;
  lforward(&c);
  double s = 0, s2 = 0;
  for (int k = 0; k < 32; k++) s += c.out[k], s2 += (double)c.out[k] * c.out[k];
  CHECK_CLOSE(s / 32, 0, 0, 1e-6, "groupnorm mean");
  CHECK_CLOSE(s2 / 32, 1, 1e-3, 0, "groupnorm variance");
  drop(&c);
}

static void test_softmax_xent(void) {
  const int B = 4, O = 5;
  float z[20], p[20], dz[20];
  int32_t y[4] = {0, 3, 4, 1};
  fill(z, 20, -3, 3);
  z[5 + 3] = 10; /* example 1 surely correct */
  int correct = -1;
  double loss = dpm_softmax_xent_forward(p, z, y, B, O, &correct);
  dpm_softmax_xent_backward(dz, p, y, B, O);
  double ref = 0;
  int ref_correct = 0;
  for (int i = 0; i < B; i++) {
    double s = 0;
    int arg = 0;
    for (int o = 0; o < O; o++) s += exp((double)z[i * O + o]), arg = z[i * O + o] > z[i * O + arg] ? o : arg;
    ref += log(s) - z[i * O + y[i]];
    ref_correct += arg == y[i];
    for (int o = 0; o < O; o++)
      CHECK_CLOSE(dz[i * O + o], exp((double)z[i * O + o]) / s - (o == y[i]), 1e-5, 1e-7, "dlogits");
  }
  CHECK_CLOSE(loss, ref, 1e-6, 0, "summed cross-entropy");
  CHECK(correct == ref_correct, "n_correct %d, expected %d", correct, ref_correct);
  /* stability: huge logits give finite loss and probabilities */
  float zb[2] = {1000.0f, -1000.0f}, pb[2];
  int32_t yb = 1;
  double lb = dpm_softmax_xent_forward(pb, zb, &yb, 1, 2, NULL);
  CHECK_CLOSE(lb, 2000.0, 1e-9, 0, "stable loss for logits +-1000");
  CHECK(pb[0] == 1.0f && pb[1] == 0.0f, "stable probabilities");
}

/* ---- per-example norms and clipped sums through the model -------------------------------------- */

static dpm_model *build(const char *text, int C, int H, int W, int K, int maxb) {
  char err[DPM_ERRLEN];
  dpm_layer_spec *specs;
  int n;
  if (dpm_model_parse(text, &specs, &n, err)) {
    fprintf(stderr, "parse: %s\n", err);
    return NULL;
  }
  dpm_model *m = dpm_model_create(specs, n, C, H, W, K, maxb, err);
  if (!m) fprintf(stderr, "create: %s\n", err);
  dpm_free(specs);
  return m;
}

/* Brute force: per-example gradients (B x P), each example alone with B = 1. */
static double *per_example_grads(dpm_model *m, const float *x, const int32_t *y, int B, size_t d) {
  const size_t P = dpm_model_num_params(m);
  double *g = malloc(sizeof(double) * (size_t)B * P);
  float *saved = malloc(sizeof(float) * P);
  memcpy(saved, dpm_model_grads(m), sizeof(float) * P);
  for (int i = 0; i < B; i++) {
    dpm_model_zero_grads(m);
    dpm_model_forward(m, x + (size_t)i * d, y + i, 1, NULL);
    dpm_model_backward(m, NULL);
    dpm_model_accumulate(m, NULL);
    for (size_t k = 0; k < P; k++) g[(size_t)i * P + k] = dpm_model_grads(m)[k];
  }
  memcpy(dpm_model_grads(m), saved, sizeof(float) * P);
  free(saved);
  return g;
}

/* Check sqnorms and accumulate(coef) of model m on (x, y) against brute force, for every pairing of
 * norms-on/off and coef-on/off. */
static void check_norms_and_sums(dpm_model *m, const float *x, const int32_t *y, int B, size_t d, const char *what) {
  const size_t P = dpm_model_num_params(m);
  const int G = dpm_model_num_groups(m);
  double *pe = per_example_grads(m, x, y, B, d);
  double *sq = malloc(sizeof(double) * (size_t)G * B);
  float *coef = malloc(sizeof(float) * (size_t)G * B);
  for (int k = 0; k < G * B; k++) coef[k] = (float)urand();
  dpm_model_forward(m, x, y, B, NULL);
  dpm_model_backward(m, sq);
  int bad = 0;
  for (int g = 0; g < G; g++) {
    size_t off = dpm_model_group_offset(m, g), n = dpm_model_group_size(m, g);
    for (int i = 0; i < B; i++) {
      double ref = 0;
      for (size_t k = 0; k < n; k++) ref += pe[(size_t)i * P + off + k] * pe[(size_t)i * P + off + k];
      if (!(fabs(sq[g * B + i] - ref) <= 2e-5 * ref + 1e-12)) {
        if (bad++ < 4)
          fprintf(stderr, "  %s: group %d (%s) example %d: sqnorm %.9g, brute force %.9g\n", what, g,
                  dpm_model_norm_method(m, g) == DPM_NORM_EXPLICIT ? "explicit" : "ghost", i, sq[g * B + i], ref);
      }
      CHECK(ref > 1e-8, "%s: brute-force norm of group %d example %d is ~0: vacuous test", what, g, i);
    }
  }
  CHECK(bad == 0, "%s: %d per-example squared norms differ from brute force", what, bad);
  /* clipped sums: with norms computed (explicit rows kept) and without (weighted GEMM) */
  for (int with_norms = 1; with_norms >= 0; with_norms--) {
    for (int with_coef = 1; with_coef >= 0; with_coef--) {
      dpm_model_zero_grads(m);
      dpm_model_forward(m, x, y, B, NULL);
      dpm_model_backward(m, with_norms ? sq : NULL);
      dpm_model_accumulate(m, with_coef ? coef : NULL);
      dpm_model_accumulate(m, with_coef ? coef : NULL); /* accumulates: twice the sum */
      int badsum = 0;
      for (int g = 0; g < G; g++) {
        size_t off = dpm_model_group_offset(m, g), n = dpm_model_group_size(m, g);
        double mx = 0;
        for (size_t k = 0; k < n; k++)
          for (int i = 0; i < B; i++) mx = fmax(mx, fabs(pe[(size_t)i * P + off + k]));
        for (size_t k = 0; k < n; k++) {
          double ref = 0;
          for (int i = 0; i < B; i++) ref += 2.0 * (with_coef ? coef[g * B + i] : 1.0) * pe[(size_t)i * P + off + k];
          if (!(fabs(dpm_model_grads(m)[off + k] - ref) <= 1e-5 * fabs(ref) + 2e-6 * mx)) badsum++;
        }
      }
      CHECK(badsum == 0, "%s: clipped sum (norms %d, coef %d): %d entries differ from brute force", what,
            with_norms, with_coef, badsum);
    }
  }
  free(pe);
  free(sq);
  free(coef);
}

static void random_batch(float *x, int32_t *y, int B, size_t d, int K) {
  fill(x, (size_t)B * d, -1, 1);
  for (int i = 0; i < B; i++) y[i] = (int32_t)(urand() * K);
}

static void test_norms(void) {
  const int B = 5;
  float x[5 * 2 * 9 * 8];
  int32_t y[5];
  dpm_key key = dpm_key_from_seed(42, 0);
  {
    dpm_model *m = build("dense out=6; tanh; dense out=8 bias=0; relu; dense out=4", 2, 3, 2, 4, 8);
    random_batch(x, y, B, 12, 4);
    dpm_model_init_params(m, &key);
    check_norms_and_sums(m, x, y, B, 12, "dense MLP");
    dpm_model_free(m);
  }
  const char *convnet =
      "conv out=3 kernel=3 stride=2 pad=1; relu; conv out=4 kernel=2 bias=0; tanh; maxpool kernel=2 stride=1;"
      "conv out=2 kernel=1; flatten; dense out=3";
  for (int method = DPM_NORM_GHOST; method <= DPM_NORM_EXPLICIT; method++) {
    dpm_model *m = build(convnet, 2, 9, 8, 3, 8);
    random_batch(x, y, B, 144, 3);
    dpm_model_init_params(m, &key);
    for (int g = 0; g < 3; g++) dpm_model_set_norm_method(m, g, (dpm_norm_method)method);
    for (int g = 0; g < 3; g++) CHECK(dpm_model_norm_method(m, g) == (dpm_norm_method)method, "forced method");
    check_norms_and_sums(m, x, y, B, 144, method == DPM_NORM_GHOST ? "conv ghost" : "conv explicit");
    dpm_model_free(m);
  }
  {
    dpm_model *m = build("conv out=4 kernel=3 pad=2 stride=2; groupnorm groups=2; tanh; avgpool kernel=2;"
                         "groupnorm groups=4; flatten; dense out=3", 2, 7, 6, 3, 8);
    random_batch(x, y, B, 84, 3);
    dpm_model_init_params(m, &key);
    /* non-trivial gamma/beta */
    for (int g = 1; g <= 2; g++) fill(dpm_model_params(m) + dpm_model_group_offset(m, g), dpm_model_group_size(m, g), 0.5, 1.5);
    check_norms_and_sums(m, x, y, B, 84, "groupnorm");
    dpm_model_free(m);
  }
}

/* Extreme values in the kernels: norms stay finite and correct where float would overflow; a clipped
 * conv gradient whose positions cancel (p_1 = p_2, g_2 = -(1 - eps) g_1) keeps its norm <= C although
 * the float32 sum over positions is off by far more than the clipping margin. */
static void test_extreme_kernels(void) {
  enum { C = 784, O = 10 };
  static float a[C], g[O];
  for (int k = 0; k < C; k++) a[k] = k % 2 ? 3e19f : -3e19f;
  for (int o = 0; o < O; o++) g[o] = (float)(0.1 * (o + 1));
  double sq;
  dpm_dense_sqnorms(&sq, a, g, 1, 1, C, O);
  const double want = ((double)C * 9e38 + 1) * dot(g, g, O);
  CHECK(isfinite(sq) && fabs(sq / want - 1) < 1e-6, "dense norm of a 3e19 example: %g, expected %g", sq, want);
  /* Inf activations with a zero output gradient: NaN, never a small finite norm */
  a[3] = INFINITY;
  static float g0[O];
  dpm_dense_sqnorms(&sq, a, g0, 1, 1, C, O);
  CHECK(!isfinite(sq), "dense norm with an Inf activation and zero gradient is not finite: %g", sq);
  a[3] = 3e19f;

  /* conv ghost: T = 2 positions, patches of CK = 3, O = 2 outputs, no bias */
  enum { T = 2, CK = 3, OC = 2 };
  float P[T * CK] = {1e19f, -2e19f, 3e19f, 1e19f, -2e19f, 3e19f};
  const float eps = 0x1p-20f;
  float G[T * OC] = {0.7f, -1.3f, 0, 0};
  for (int o = 0; o < OC; o++) G[OC + o] = -(1.0f - eps) * G[o];
  double gsq, scratch[2 * T * T + T * (CK + OC)];
  unsigned char ill;
  dpm_conv_sqnorms_ghost(&gsq, &ill, P, G, 0, scratch, 1, T, CK, OC);
  /* exact: grad = (g_1 + g_2) p^T, g_1 + g_2 exact in float (Sterbenz) */
  double gs2 = 0, p2 = 0;
  for (int o = 0; o < OC; o++) gs2 += ((double)G[o] + G[OC + o]) * ((double)G[o] + G[OC + o]);
  for (int k = 0; k < CK; k++) p2 += (double)P[k] * P[k];
  /* the Gram form cancels by eps^2 = 2^-40: double keeps about 2^-53 / eps^2 = 2^-13 of relative accuracy
     (float would keep none); the cap below does not depend on it */
  CHECK(isfinite(gsq) && fabs(gsq / (gs2 * p2) - 1) < 8 * 0x1p-53 / ((double)eps * eps),
        "ghost norm of cancelling positions: %g, expected %g", gsq, gs2 * p2);
  CHECK(ill == 1, "cancelling positions are flagged ill-conditioned");
  const double Cclip = 0.5;
  float coef;
  dpm_clip_coefs(&gsq, 1, 1, DPM_CLIP_FLAT, Cclip, &coef);
  float dw[OC * CK] = {0}, sc[T * OC], row[T * CK + OC * (CK + 1)];
  dpm_conv_accumulate(dw, NULL, P, G, &coef, &gsq, &ill, sc, row, 1, T, CK, OC);
  double n2 = 0;
  for (int k = 0; k < OC * CK; k++) n2 += (double)dw[k] * dw[k];
  CHECK(sqrt(n2) <= Cclip && sqrt(n2) >= 0.99 * Cclip, "clipped conv gradient of cancelling positions has norm %.9g, "
        "threshold %g", sqrt(n2), Cclip);
}

/* dpm_nn_maxabs and dpm_nn_scale_row against plain loops (bit for bit): lengths 0..41 (the 8-lane bodies
 * and their tails), NaN entries (ignored by the maximum), rows whose scaled maximum lies on either side of
 * the rescale threshold 2^-90, c = 0, 1 and in between; and the explicit conv rows' bias sums (row sums
 * of dout) against the column sums of the transposed rows that the clipped sum's GEMM path forms. */
static void test_row_helpers(void) {
  float g[41], s[41];
  int bad_max = 0, bad_scale = 0, bad_flag = 0, rescaled = 0, plain = 0;
  for (int n = 0; n <= 41; n++)
    for (int trial = 0; trial < 40; trial++) {
      const double mag = trial < 20 ? 0x1p-80 : 1.0; /* with c ~ 2^-12..1: scaled maxima around 2^-90 */
      for (int k = 0; k < n; k++) g[k] = (float)(mag * (2 * urand() - 1));
      if (n > 0 && trial % 5 == 4) g[(int)(urand() * n)] = NAN;
      const float c = trial % 10 == 0 ? 0.0f : trial % 10 == 1 ? 1.0f : (float)ldexp(urand(), -(int)(urand() * 12));
      float want_max = 0;
      for (int k = 0; k < n; k++)
        if (fabsf(g[k]) > want_max) want_max = fabsf(g[k]);
      bad_max += dpm_nn_maxabs(g, (size_t)n) != want_max;
      const int flag = dpm_nn_scale_row(s, g, c, (size_t)n);
      float m = 0;
      for (int k = 0; k < n; k++) {
        const float want = c == 1.0f ? g[k] : c * g[k];
        bad_scale += memcmp(&s[k], &want, sizeof want) != 0;
        if (fabsf(want) > m) m = fabsf(want);
      }
      const int want_flag = c == 1.0f ? 0 : c == 0.0f || (m > 0 && m < 0x1p-90f);
      bad_flag += flag != want_flag;
      rescaled += c != 0.0f && want_flag, plain += c != 0.0f && c != 1.0f && !want_flag;
    }
  CHECK(bad_max == 0, "dpm_nn_maxabs differs from a plain loop in %d rows", bad_max);
  CHECK(bad_scale == 0, "dpm_nn_scale_row: %d entries differ from c g", bad_scale);
  CHECK(bad_flag == 0, "dpm_nn_scale_row: the careful-path flag differs from a plain loop in %d rows", bad_flag);
  CHECK(rescaled > 20 && plain > 20, "row helper test too weak: %d rows near underflow, %d ordinary ones", rescaled, plain);

  /* explicit conv rows: bias entries = column sums of G_i = dout_i^T, as dpm_nn_colsum_add forms them */
  enum { B = 3, T = 7, CK = 5, O = 6 };
  float P[B * T * CK], dout[B * O * T], E[B * (O * CK + O)], Gi[T * O], cs[O];
  fill(P, B * T * CK, -1, 1);
  fill(dout, B * O * T, -1, 1);
  double sq[B];
  dpm_conv_grads_explicit(E, sq, P, dout, 1, B, T, CK, O);
  int bad_bias = 0, bad_w = 0;
  for (int i = 0; i < B; i++) {
    for (int t = 0; t < T; t++)
      for (int o = 0; o < O; o++) Gi[t * O + o] = dout[(i * O + o) * T + t];
    memset(cs, 0, sizeof cs);
    dpm_nn_colsum_add(cs, Gi, T, O);
    const float *Ei = E + i * (O * CK + O);
    bad_bias += memcmp(cs, Ei + O * CK, sizeof cs) != 0;
    double n2 = 0;
    for (int o = 0; o < O; o++)
      for (int k = 0; k < CK; k++) {
        double w = 0;
        for (int t = 0; t < T; t++) w += (double)Gi[t * O + o] * P[(i * T + t) * CK + k];
        bad_w += fabs(Ei[o * CK + k] - w) > 1e-5;
        n2 += (double)Ei[o * CK + k] * Ei[o * CK + k];
      }
    for (int o = 0; o < O; o++) n2 += (double)Ei[O * CK + o] * Ei[O * CK + o];
    bad_w += fabs(sq[i] - n2) > 1e-9 * n2;
  }
  CHECK(bad_bias == 0, "explicit conv rows: %d examples' bias sums differ from the column sums of G_i", bad_bias);
  CHECK(bad_w == 0, "explicit conv rows: %d weight entries or norms differ from dout_i P_i", bad_w);
}

/* Model-level finite differences of the summed cross-entropy on parameters and input. */
static void test_model_fd(void) {
  const int B = 3;
  dpm_model *m = build("conv out=3 kernel=3 stride=2 pad=1; groupnorm groups=3; tanh; avgpool kernel=2 stride=1;"
                       "conv out=2 kernel=2; maxpool kernel=2 stride=1; flatten; dense out=4; tanh; dense out=3",
                       2, 9, 8, 3, B);
  float x[3 * 144];
  int32_t y[3];
  random_batch(x, y, B, 144, 3);
  dpm_key key = dpm_key_from_seed(5, 0);
  dpm_model_init_params(m, &key);
  float *p = dpm_model_params(m);
  const size_t P = dpm_model_num_params(m);
  fill(p + dpm_model_group_offset(m, 1), dpm_model_group_size(m, 1), 0.5, 1.5);
  dpm_model_set_input_grad(m, 1);
  dpm_model_zero_grads(m);
  dpm_model_forward(m, x, y, B, NULL);
  dpm_model_backward(m, NULL);
  dpm_model_accumulate(m, NULL);
  float dx[3 * 144];
  memcpy(dx, dpm_model_input_grad(m), sizeof dx);
  const float *g = dpm_model_grads(m);
  const double h = 2e-3;
  int bad = 0;
  for (size_t k = 0; k < P + 144 * B; k++) {
    float *v = k < P ? &p[k] : &x[k - P];
    const float v0 = *v;
    *v = (float)(v0 + h);
    double hp = (double)*v - v0, lp = dpm_model_forward(m, x, y, B, NULL);
    *v = (float)(v0 - h);
    double hm = v0 - (double)*v, lm = dpm_model_forward(m, x, y, B, NULL);
    *v = v0;
    double fd = (lp - lm) / (hp + hm), an = k < P ? g[k] : dx[k - P];
    if (fabs(fd - an) > 1e-2 * fabs(fd) + 2e-3) {
      if (bad++ < 4) fprintf(stderr, "  model fd: %s %zu: analytic %.7g, fd %.7g\n", k < P ? "param" : "input", k < P ? k : k - P, an, fd);
    }
  }
  CHECK(bad == 0, "model gradients vs finite differences: %d entries off", bad);
  dpm_model_free(m);
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  test_dense_fd();
  test_conv_fd();
  test_pool_fd();
  test_elementwise_fd();
  test_groupnorm_fd();
  test_softmax_xent();
  test_norms();
  test_extreme_kernels();
  test_row_helpers();
  test_model_fd();
  return dpm_test_finish();
}
