/* Tests of weight-standardized convolutions (conv ws=1, src/nn/conv.c):
 *  - the forward equals a plain conv whose weights are the standardized ones, computed here in double;
 *  - each example's gradient w.r.t. the raw weights and bias (one example per run) against central finite
 *    differences of its loss: the gradient goes through the standardization's Jacobian;
 *  - per-example squared norms of a batch against those brute-force gradients (and they differ from the
 *    norms of the gradient w.r.t. the standardized weights, which a plain conv would give);
 *  - the clipped sum with random coefficients and the plain sum against sum_i c_i grad_i;
 *  - forcing ghost norms keeps explicit ones (ws has no ghost form); parse errors. */
#include <stdlib.h>
#include <string.h>

#include "dpmpi/nn/model.h"
#include "testing.h"

static uint64_t rng_state = 0x243F6A8885A308D3ULL;
static double urand(void) { /* splitmix64, uniform [0, 1) */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}

enum { B = 4, C = 2, H = 6, W = 6, K = 3, O = 3, NC = 4, CK = C * K * K };
static const char *LAYERS = "conv out=3 kernel=3 stride=1 pad=1 ws=1; tanh; flatten; dense out=4";
static const char *PLAIN = "conv out=3 kernel=3 stride=1 pad=1; tanh; flatten; dense out=4";

static dpm_model *build(const char *text, int max_batch) {
  char err[DPM_ERRLEN];
  dpm_layer_spec *s;
  int n;
  if (dpm_model_parse(text, &s, &n, err)) dpm_fatal("parse: %s", err);
  dpm_model *m = dpm_model_create(s, n, C, H, W, NC, max_batch, err);
  if (!m) dpm_fatal("create: %s", err);
  dpm_free(s);
  return m;
}

/* example i's gradient (all parameters) from a run of that example alone */
static void example_grad(dpm_model *m, const float *x, const int32_t *y, int i, float *g) {
  dpm_model_zero_grads(m);
  dpm_model_forward(m, x + (size_t)i * C * H * W, y + i, 1, NULL);
  dpm_model_backward(m, NULL);
  dpm_model_accumulate(m, NULL);
  memcpy(g, dpm_model_grads(m), dpm_model_num_params(m) * sizeof(float));
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  float x[B * C * H * W];
  int32_t y[B] = {0, 3, 1, 2};
  for (int k = 0; k < B * C * H * W; k++) x[k] = (float)(urand() * 2 - 1);
  dpm_model *m = build(LAYERS, B), *p = build(PLAIN, B);
  const dpm_key key = {{7, 11}};
  dpm_model_init_params(m, &key);
  const size_t np = dpm_model_num_params(m), ng = dpm_model_group_size(m, 0);
  CHECK(np == dpm_model_num_params(p) && ng == (size_t)O * CK + O, "parameter counts");
  float *w = dpm_model_params(m);
  /* give the rows different means and scales so the standardization is not near the identity */
  for (int o = 0; o < O; o++)
    for (int k = 0; k < CK; k++) w[o * CK + k] = w[o * CK + k] * (float)(1 + o) + 0.1f * (float)o;

  /* forward = plain conv with what = (w - mean) / sqrt(var + 1e-5), computed here */
  float *wp = dpm_model_params(p);
  memcpy(wp, w, np * sizeof(float));
  for (int o = 0; o < O; o++) {
    double mean = 0, var = 0;
    for (int k = 0; k < CK; k++) mean += w[o * CK + k];
    mean /= CK;
    for (int k = 0; k < CK; k++) var += (w[o * CK + k] - mean) * (w[o * CK + k] - mean);
    var /= CK;
    for (int k = 0; k < CK; k++) wp[o * CK + k] = (float)((w[o * CK + k] - mean) / sqrt(var + 1e-5));
  }
  double lm = dpm_model_forward(m, x, y, B, NULL), lp = dpm_model_forward(p, x, y, B, NULL);
  CHECK_CLOSE(lm, lp, 1e-5, 0, "ws forward loss = plain conv with standardized weights");

  /* brute-force per-example gradients, checked against finite differences of each example's loss */
  float *g = malloc(sizeof *g * B * np);
  for (int i = 0; i < B; i++) example_grad(m, x, y, i, g + (size_t)i * np);
  double worst = 0;
  for (int i = 0; i < B; i++)
    for (size_t k = 0; k < ng; k++) {
      const float save = w[k], h = 2e-3f;
      w[k] = save + h;
      const double up = dpm_model_forward(m, x + (size_t)i * C * H * W, y + i, 1, NULL);
      w[k] = save - h;
      const double dn = dpm_model_forward(m, x + (size_t)i * C * H * W, y + i, 1, NULL);
      w[k] = save;
      const double fd = (up - dn) / (2.0 * h), an = g[(size_t)i * np + k];
      worst = fmax(worst, fabs(fd - an) / (2e-4 + 1e-2 * fabs(fd)));
    }
  CHECK(worst <= 1, "per-example gradients w.r.t. the raw conv weights = finite differences (worst %g of the tolerance)", worst);
  /* the standardized weights' row sums are 0 and so is each row sum of the raw gradient (mean shifts do not
     change what): a property of the Jacobian, not of the finite differences */
  double rowsum = 0;
  for (int i = 0; i < B; i++)
    for (int o = 0; o < O; o++) {
      double s = 0;
      for (int k = 0; k < CK; k++) s += g[(size_t)i * np + o * CK + k];
      rowsum = fmax(rowsum, fabs(s));
    }
  CHECK(rowsum < 1e-5, "each output channel's gradient sums to 0 (largest %g)", rowsum);

  /* per-example norms of a batch */
  dpm_model_zero_grads(m);
  dpm_model_forward(m, x, y, B, NULL);
  double sq[2 * B], sqp[2 * B];
  dpm_model_backward(m, sq);
  for (int i = 0; i < B; i++) {
    double want = 0, wd = 0;
    for (size_t k = 0; k < ng; k++) want += (double)g[(size_t)i * np + k] * g[(size_t)i * np + k];
    for (size_t k = ng; k < np; k++) wd += (double)g[(size_t)i * np + k] * g[(size_t)i * np + k];
    CHECK_CLOSE(sq[i], want, 1e-4, 1e-12, "conv ws per-example squared norm");
    CHECK_CLOSE(sq[B + i], wd, 1e-4, 1e-12, "dense per-example squared norm after a ws conv");
  }
  dpm_model_forward(p, x, y, B, NULL);
  dpm_model_backward(p, sqp);
  double diff = 0;
  for (int i = 0; i < B; i++) diff = fmax(diff, fabs(sq[i] / sqp[i] - 1));
  CHECK(diff > 0.05, "the norms differ from the plain conv's on the standardized weights (largest relative gap %g)", diff);

  /* clipped sum with random coefficients (one per group and example) */
  float coef[2 * B];
  for (int k = 0; k < 2 * B; k++) coef[k] = (float)urand();
  coef[1] = 0;
  dpm_model_accumulate(m, coef);
  const float *got = dpm_model_grads(m);
  double err_c = 0;
  for (size_t k = 0; k < np; k++) {
    double want = 0;
    const int grp = k < ng ? 0 : 1;
    for (int i = 0; i < B; i++) want += (double)coef[grp * B + i] * g[(size_t)i * np + k];
    err_c = fmax(err_c, fabs(got[k] - want) / (1e-6 + 1e-4 * fabs(want)));
  }
  CHECK(err_c <= 1, "clipped sum = sum_i c_i grad_i (worst %g of the tolerance)", err_c);

  /* the plain (non-private) sum */
  dpm_model_zero_grads(m);
  dpm_model_forward(m, x, y, B, NULL);
  dpm_model_backward(m, NULL);
  dpm_model_accumulate(m, NULL);
  double err_s = 0;
  for (size_t k = 0; k < np; k++) {
    double want = 0;
    for (int i = 0; i < B; i++) want += g[(size_t)i * np + k];
    err_s = fmax(err_s, fabs(got[k] - want) / (1e-6 + 1e-4 * fabs(want)));
  }
  CHECK(err_s <= 1, "plain sum = sum_i grad_i (worst %g of the tolerance)", err_s);

  /* ghost cannot be forced; describe names ws */
  dpm_model_set_norm_method(m, 0, DPM_NORM_GHOST);
  CHECK(dpm_model_norm_method(m, 0) == DPM_NORM_EXPLICIT, "ws keeps explicit norms");
  char desc[512];
  dpm_model_describe(m, desc, sizeof desc);
  CHECK(strstr(desc, "ws=1 [explicit norms]") != NULL, "describe: %s", desc);
  char err[DPM_ERRLEN];
  dpm_layer_spec *s;
  int n;
  CHECK(dpm_model_parse("conv out=2 kernel=3 ws=2; flatten; dense out=2", &s, &n, err) != 0 && strstr(err, "0 or 1"),
        "ws=2 refused: %s", err);
  CHECK(dpm_model_parse("dense out=2 ws=1", &s, &n, err) != 0 && strstr(err, "ws"), "ws on dense refused: %s", err);
  free(g);
  dpm_model_free(m);
  dpm_model_free(p);
  return dpm_test_finish();
}
