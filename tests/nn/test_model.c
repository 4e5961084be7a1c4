/* Tests of the model (src/nn/model.c): parse errors name the layer and key; shape errors at create;
 * the reference CNN and MLP give per-example squared norms and clipped sums equal to brute force
 * (each example alone, B = 1) with the automatic and the forced norm methods; deterministic
 * initialization; a short SGD run on a separable problem reduces the loss. */
#include <stdlib.h>
#include <string.h>

#include "dpmpi/nn/model.h"
#include "testing.h"

#define CNN                                                                                              \
  "conv out=16 kernel=8 stride=2 pad=3; tanh; maxpool kernel=2 stride=1; conv out=32 kernel=4 stride=2; " \
  "tanh; maxpool kernel=2 stride=1; flatten; dense out=32; tanh; dense out=10"
#define MLP "flatten; dense out=512; relu; dense out=10"

static uint64_t rng_state = 12345;
static double urand(void) {
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}

/* Parse must fail with a message containing every one of the NULL-terminated words. */
static void parse_fails(const char *text, const char *w1, const char *w2, const char *w3) {
  char err[DPM_ERRLEN] = "";
  dpm_layer_spec *specs = (dpm_layer_spec *)1;
  int n = -7;
  int rc = dpm_model_parse(text, &specs, &n, err);
  CHECK(rc == -1, "parse of \"%s\" should fail", text);
  CHECK(specs == NULL, "no specs on failure for \"%s\"", text);
  const char *words[3] = {w1, w2, w3};
  for (int k = 0; k < 3; k++)
    if (words[k]) CHECK(strstr(err, words[k]) != NULL, "message for \"%s\" should name '%s': got \"%s\"", text, words[k], err);
}

static void test_parse(void) {
  char err[DPM_ERRLEN];
  dpm_layer_spec *s;
  int n;
  CHECK(dpm_model_parse(CNN, &s, &n, err) == 0, "parse CNN: %s", err);
  CHECK(n == 10, "CNN has 10 layers, got %d", n);
  CHECK(s[0].kind == DPM_LAYER_CONV2D && s[0].out == 16 && s[0].kernel == 8 && s[0].stride == 2 && s[0].pad == 3 &&
            s[0].bias == 1, "conv spec");
  CHECK(s[2].kind == DPM_LAYER_MAXPOOL && s[2].kernel == 2 && s[2].stride == 1, "maxpool spec");
  CHECK(s[3].pad == 0 && s[3].stride == 2, "second conv defaults");
  CHECK(s[9].kind == DPM_LAYER_DENSE && s[9].out == 10 && s[9].bias == 1, "dense spec");
  dpm_free(s);
  /* newlines, comments, blank segments, defaults */
  CHECK(dpm_model_parse("  conv out=4 kernel=3   # first\n\n avgpool kernel=3;;relu;groupnorm groups=2\n"
                        "dense out=5 bias=0;", &s, &n, err) == 0, "parse multi-line: %s", err);
  CHECK(n == 5, "5 layers, got %d", n);
  CHECK(s[0].stride == 1 && s[0].pad == 0, "conv stride defaults to 1");
  CHECK(s[1].kind == DPM_LAYER_AVGPOOL && s[1].stride == 3, "pool stride defaults to kernel");
  CHECK(s[3].kind == DPM_LAYER_GROUPNORM && s[3].groups == 2, "groupnorm spec");
  CHECK(s[4].bias == 0, "bias=0");
  dpm_free(s);

  parse_fails("dense out=10; densee out=3", "layer 2", "densee", NULL);
  parse_fails("conv out=4 kernel=3; relu; conv out=2 kernal=3", "layer 3", "kernal", NULL);
  parse_fails("relu size=3", "layer 1", "size", NULL);
  parse_fails("dense out=abc", "layer 1", "out", "abc");
  parse_fails("dense out=0", "layer 1", "out", NULL);
  parse_fails("dense out=5x", "layer 1", "out", NULL);
  parse_fails("dense out=", "layer 1", "out", NULL);
  parse_fails("conv out=3 kernel=2 pad=-1", "layer 1", "pad", NULL);
  parse_fails("conv out=3 kernel=2 bias=2", "layer 1", "bias", NULL);
  parse_fails("tanh; dense bias=1", "layer 2", "missing", "out");
  parse_fails("conv out=3", "layer 1", "missing", "kernel");
  parse_fails("flatten; groupnorm", "layer 2", "groups", NULL);
  parse_fails("maxpool kernel=2 pad=1", "layer 1", "pad", NULL);
  parse_fails("dense out=3 out=4", "layer 1", "out", "twice");
  parse_fails("dense 10", "layer 1", "10", NULL);
  parse_fails(" ; \n # nothing\n", "no layers", NULL, NULL);
}

static dpm_model *build(const char *text, int C, int H, int W, int K, int maxb, char *err) {
  dpm_layer_spec *specs;
  int n;
  if (dpm_model_parse(text, &specs, &n, err)) return NULL;
  dpm_model *m = dpm_model_create(specs, n, C, H, W, K, maxb, err);
  dpm_free(specs);
  return m;
}

static void create_fails(const char *text, int C, int H, int W, int K, const char *w1, const char *w2) {
  char err[DPM_ERRLEN] = "";
  dpm_model *m = build(text, C, H, W, K, 4, err);
  CHECK(m == NULL, "create \"%s\" should fail", text);
  if (m) dpm_model_free(m);
  if (w1) CHECK(strstr(err, w1) != NULL, "message for \"%s\" should name '%s': got \"%s\"", text, w1, err);
  if (w2) CHECK(strstr(err, w2) != NULL, "message for \"%s\" should name '%s': got \"%s\"", text, w2, err);
}

/* The kind enum, the name table and the ops table agree: every kind's name parses back to that kind
 * and builds (with its mandatory keys), and unknown names list every kind. */
static void test_kind_table(void) {
  static const char *keys[DPM_LAYER_COUNT] = {[DPM_LAYER_DENSE] = " out=2", [DPM_LAYER_CONV2D] = " out=2 kernel=2",
                                              [DPM_LAYER_MAXPOOL] = " kernel=2", [DPM_LAYER_AVGPOOL] = " kernel=2",
                                              [DPM_LAYER_GROUPNORM] = " groups=1", [DPM_LAYER_SCATTER] = " J=1 L=2"};
  char err[DPM_ERRLEN], text[128];
  for (int k = 0; k < DPM_LAYER_COUNT; k++) {
    const char *name = dpm_layer_kind_name((dpm_layer_kind)k);
    /* the GPT kinds live in a GPT list (embed; block; lm_head) over 4 token ids with vocabulary 3 */
    const int gpt = k == DPM_LAYER_EMBED || k == DPM_LAYER_BLOCK || k == DPM_LAYER_LM_HEAD;
    const int at = k == DPM_LAYER_BLOCK ? 1 : k == DPM_LAYER_LM_HEAD ? 2 : 0;
    if (gpt) snprintf(text, sizeof text, "embed vocab=3 context=4 width=4; block heads=2; lm_head");
    else snprintf(text, sizeof text, "%s%s; flatten; dense out=3", name, keys[k] ? keys[k] : "");
    dpm_layer_spec *s;
    int n;
    CHECK(dpm_model_parse(text, &s, &n, err) == 0 && n == 3 && s[at].kind == (dpm_layer_kind)k, "kind %d '%s' parses "
          "back to itself: %s", k, name, err);
    dpm_model *m = s ? (gpt ? dpm_model_create(s, n, 1, 1, 4, 3, 2, err) : dpm_model_create(s, n, 2, 4, 4, 3, 2, err)) : NULL;
    CHECK(m != NULL, "kind %d '%s' builds: %s", k, name, err);
    dpm_model_free(m);
    dpm_free(s);
    dpm_layer_spec *bad;
    CHECK(dpm_model_parse("nope", &bad, &n, err) != 0 && strstr(err, name), "the unknown-layer message lists '%s': %s",
          name, err);
  }
}

static void test_create(void) {
  char err[DPM_ERRLEN];
  create_fails("conv out=4 kernel=9; flatten; dense out=10", 1, 8, 8, 10, "layer 1", "kernel");
  create_fails("conv out=4 kernel=3; maxpool kernel=7; flatten; dense out=10", 1, 8, 8, 10, "layer 2", "kernel");
  create_fails("dense out=5", 1, 4, 4, 10, "layer 1", "10 classes");
  create_fails("conv out=6 kernel=3; groupnorm groups=4; flatten; dense out=3", 2, 5, 5, 3, "layer 2", "groups");
  create_fails("conv out=4 kernel=3 pad=1", 1, 3, 3, 10, "layer 1", "10 classes");
  /* a conv may be the last layer when it produces n_classes values: 10x1x1 logits */
  dpm_model *ok = build("conv out=10 kernel=2", 1, 2, 2, 10, 4, err);
  CHECK(ok != NULL, "conv to 10x1x1 logits is a valid model: %s", ok ? "" : err);
  dpm_model_free(ok);

  dpm_model *m = build(CNN, 1, 28, 28, 10, 16, err);
  CHECK(m != NULL, "create CNN: %s", m ? "" : err);
  if (!m) return;
  /* 16*1*64+16, 32*16*16+32, 32*512+32, 10*32+10 */
  CHECK(dpm_model_num_params(m) == 1040 + 8224 + 16416 + 330, "CNN params %zu", dpm_model_num_params(m));
  CHECK(dpm_model_num_groups(m) == 4, "4 groups");
  CHECK(dpm_model_group_offset(m, 1) == 1040 && dpm_model_group_size(m, 1) == 8224, "group 1 layout");
  CHECK(dpm_model_group_offset(m, 3) == 1040 + 8224 + 16416 && dpm_model_group_size(m, 3) == 330, "group 3 layout");
  CHECK(dpm_model_max_batch(m) == 16, "max batch");
  char desc[4096];
  dpm_model_describe(m, desc, sizeof desc);
  CHECK(strstr(desc, "16x14x14") && strstr(desc, "32x5x5") && strstr(desc, "32x4x4") && strstr(desc, "26010"),
        "describe shows shapes and totals:\n%s", desc);
  dpm_model_free(m);
}

static void test_init(void) {
  char err[DPM_ERRLEN];
  dpm_model *a = build(CNN, 1, 28, 28, 10, 4, err), *b = build(CNN, 1, 28, 28, 10, 4, err);
  dpm_key k1 = dpm_key_from_seed(1, 0), k2 = dpm_key_from_seed(2, 0);
  const size_t P = dpm_model_num_params(a);
  dpm_model_init_params(a, &k1);
  dpm_model_init_params(b, &k1);
  CHECK(memcmp(dpm_model_params(a), dpm_model_params(b), P * sizeof(float)) == 0, "same key, same parameters");
  dpm_model_init_params(b, &k2);
  size_t same = 0;
  for (size_t k = 0; k < P; k++) same += dpm_model_params(a)[k] == dpm_model_params(b)[k];
  CHECK(same < P / 100, "different key, different parameters (%zu equal)", same);
  /* bounds and spread: uniform +-1/sqrt(fan_in) per layer */
  const double fan[4] = {64, 256, 512, 32};
  for (int g = 0; g < 4; g++) {
    const float *p = dpm_model_params(a) + dpm_model_group_offset(a, g);
    size_t n = dpm_model_group_size(a, g);
    double bound = 1 / sqrt(fan[g]), mx = 0, s2 = 0;
    for (size_t k = 0; k < n; k++) mx = fmax(mx, fabs(p[k])), s2 += (double)p[k] * p[k];
    CHECK(mx <= bound && mx > 0.9 * bound, "group %d within +-1/sqrt(fan_in): max %g bound %g", g, mx, bound);
    CHECK_CLOSE(s2 / n, bound * bound / 3, 0.15, 0, "variance of uniform init");
  }
  /* the documented stream: weight j of layer l is 2 u - 1 scaled by 1/sqrt(fan_in), u from word j % 2 of
   * block j / 2 of stream (key, l, DPM_STREAM_INIT); biases continue the weights' index */
  const int layer_of_group[4] = {0, 3, 7, 9};
  for (int g = 0; g < 4; g++) {
    const float *p = dpm_model_params(a) + dpm_model_group_offset(a, g);
    const size_t n = dpm_model_group_size(a, g), picks[3] = {0, 5, n - 1};
    for (int q = 0; q < 3; q++) {
      uint64_t out[2];
      dpm_rng_block(&k1, picks[q] / 2, (uint64_t)layer_of_group[g], DPM_STREAM_INIT, out);
      double ref = (2 * dpm_u01(out[picks[q] % 2]) - 1) / sqrt(fan[g]);
      CHECK_CLOSE(p[picks[q]], ref, 1e-6, 0, "init value from the documented stream");
    }
  }
  dpm_model_free(a);
  dpm_model_free(b);
  a = build("conv out=4 kernel=3; groupnorm groups=2; flatten; dense out=3", 2, 5, 5, 3, 4, err);
  dpm_model_init_params(a, &k1);
  const float *gn = dpm_model_params(a) + dpm_model_group_offset(a, 1);
  CHECK(gn[0] == 1 && gn[3] == 1 && gn[4] == 0 && gn[7] == 0, "groupnorm gamma 1, beta 0");
  dpm_model_free(a);
}

/* Per-example norms and clipped sums of model m against brute force (B = 1 per example). */
static void check_against_brute_force(dpm_model *m, int B, size_t d, const char *what) {
  const size_t P = dpm_model_num_params(m);
  const int G = dpm_model_num_groups(m);
  float *x = malloc(sizeof(float) * (size_t)B * d);
  int32_t *y = malloc(sizeof(int32_t) * (size_t)B);
  for (size_t k = 0; k < (size_t)B * d; k++) x[k] = (float)urand();
  for (int i = 0; i < B; i++) y[i] = (int32_t)(urand() * 10);
  double *pe = malloc(sizeof(double) * (size_t)B * P);
  for (int i = 0; i < B; i++) {
    dpm_model_zero_grads(m);
    dpm_model_forward(m, x + (size_t)i * d, y + i, 1, NULL);
    dpm_model_backward(m, NULL);
    dpm_model_accumulate(m, NULL);
    for (size_t k = 0; k < P; k++) pe[(size_t)i * P + k] = dpm_model_grads(m)[k];
  }
  double *sq = malloc(sizeof(double) * (size_t)G * B);
  float *coef = malloc(sizeof(float) * (size_t)G * B);
  dpm_model_zero_grads(m);
  double loss = dpm_model_forward(m, x, y, B, NULL);
  CHECK(loss > 0 && isfinite(loss), "%s: loss %g", what, loss);
  dpm_model_backward(m, sq);
  for (int k = 0; k < G * B; k++) coef[k] = (float)fmin(1.0, 0.5 / sqrt(sq[k])) * (float)(0.5 + urand());
  dpm_model_accumulate(m, coef);
  int bad_norm = 0, bad_sum = 0;
  for (int g = 0; g < G; g++) {
    size_t off = dpm_model_group_offset(m, g), n = dpm_model_group_size(m, g);
    double mx = 0;
    for (int i = 0; i < B; i++) {
      double ref = 0;
      for (size_t k = 0; k < n; k++) {
        double v = pe[(size_t)i * P + off + k];
        ref += v * v;
        mx = fmax(mx, fabs(v));
      }
      if (!(fabs(sq[g * B + i] - ref) <= 3e-5 * ref)) {
        if (bad_norm++ < 4) fprintf(stderr, "  %s group %d example %d: %.9g vs %.9g\n", what, g, i, sq[g * B + i], ref);
      }
    }
    for (size_t k = 0; k < n; k++) {
      double ref = 0;
      for (int i = 0; i < B; i++) ref += coef[g * B + i] * pe[(size_t)i * P + off + k];
      if (!(fabs(dpm_model_grads(m)[off + k] - ref) <= 1e-5 * fabs(ref) + 1e-5 * mx)) bad_sum++;
    }
  }
  CHECK(bad_norm == 0, "%s: %d per-example squared norms differ from brute force", what, bad_norm);
  CHECK(bad_sum == 0, "%s: %d clipped-sum entries differ from brute force", what, bad_sum);
  free(x), free(y), free(pe), free(sq), free(coef);
}

static void test_reference_models(void) {
  char err[DPM_ERRLEN];
  dpm_key key = dpm_key_from_seed(3, 0);
  const int B = 6;
  dpm_model *m = build(MLP, 1, 28, 28, 10, 8, err);
  dpm_model_init_params(m, &key);
  check_against_brute_force(m, B, 784, "MLP");
  dpm_model_free(m);
  for (int method = DPM_NORM_AUTO; method <= DPM_NORM_EXPLICIT; method++) {
    m = build(CNN, 1, 28, 28, 10, 8, err);
    dpm_model_init_params(m, &key);
    for (int g = 0; g < 2; g++) dpm_model_set_norm_method(m, g, (dpm_norm_method)method);
    char what[64];
    snprintf(what, sizeof what, "CNN (%s norms)",
             method == DPM_NORM_AUTO ? "auto" : method == DPM_NORM_GHOST ? "ghost" : "explicit");
    check_against_brute_force(m, B, 784, what);
    dpm_model_free(m);
  }
}

/* Two Gaussian blobs in 2x4x4 images; plain SGD with the summed gradient / B. */
static void test_training(void) {
  char err[DPM_ERRLEN];
  const char *nets[2] = {"flatten; dense out=16; relu; dense out=2",
                         "conv out=4 kernel=3 pad=1; tanh; maxpool kernel=2; groupnorm groups=2; flatten; dense out=2"};
  for (int net = 0; net < 2; net++) {
    const int N = 64, d = 32;
    dpm_model *m = build(nets[net], 2, 4, 4, 2, N, err);
    CHECK(m != NULL, "training model: %s", m ? "" : err);
    if (!m) continue;
    dpm_key key = dpm_key_from_seed(9, 0);
    dpm_model_init_params(m, &key);
    float *x = malloc(sizeof(float) * N * d), mu[32];
    int32_t y[64];
    for (int k = 0; k < d; k++) mu[k] = (float)(urand() - 0.5);
    for (int i = 0; i < N; i++) {
      y[i] = i % 2;
      for (int k = 0; k < d; k++) x[i * d + k] = (y[i] ? mu[k] : -mu[k]) + (float)(0.3 * (urand() - 0.5));
    }
    const size_t P = dpm_model_num_params(m);
    double first = 0, last = 0;
    int correct = 0;
    for (int step = 0; step < 300; step++) {
      dpm_model_zero_grads(m);
      double loss = dpm_model_forward(m, x, y, N, &correct) / N;
      if (step == 0) first = loss;
      last = loss;
      dpm_model_backward(m, NULL);
      dpm_model_accumulate(m, NULL);
      for (size_t k = 0; k < P; k++) dpm_model_params(m)[k] -= 0.1f * dpm_model_grads(m)[k] / N;
    }
    CHECK(last < 0.1 * first && correct == N, "net %d: SGD loss %g -> %g, %d/%d correct", net, first, last, correct, N);
    free(x);
    dpm_model_free(m);
  }
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  test_parse();
  test_kind_table();
  test_create();
  test_init();
  test_reference_models();
  test_training();
  return dpm_test_finish();
}
