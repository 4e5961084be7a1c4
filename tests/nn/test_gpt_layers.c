/* Tests of the GPT layer kinds (src/nn/embed.c, block.c, lm_head.c) against dpm_gpt (src/nn/gpt.c, itself
 * checked against ../shared/refs/gpt by test_gpt.c) as the oracle, on the same parameters copied tensor by
 * tensor through the layers' Hugging Face names:
 *  - logits, per-example losses (masked targets, a pad id), token-weighted loss;
 *  - per-group per-example squared norms = the sums of dpm_gpt's per-tensor norms over each layer's tensors
 *    (the tied wte, with its cross term, in the embed group), norms ghost and explicit;
 *  - clipped sums with random per-(group, example) coefficients and the plain sum, tensor by tensor;
 *  - a two-stage split (embed + block | block + untied lm_head) through output / backward_output gives the
 *    whole model's norms and sums; tied with the embed on another stage is refused with one message;
 *  - the layer list's errors and tensor names. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dpmpi/nn/gpt.h"
#include "dpmpi/nn/model.h"
#include "testing.h"

static uint64_t rs = 0x9E3779B97F4A7C15ULL;
static double urand(void) {
  uint64_t z = (rs += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}

typedef struct {
  int n_layers, ngroups;
  int tensor_group[128]; /* dpm_gpt tensor -> model group */
  size_t tensor_at[128]; /* dpm_gpt tensor -> offset in the model's slab (or SIZE_MAX: not in this model) */
} mapping;

/* the model's layer tensors, found in g by name; layers [l0, l1) of the whole model (a stage) */
static void map_tensors(dpm_model *m, int nl, int l0, const dpm_gpt *g, mapping *mp) {
  for (int k = 0; k < 128; k++) mp->tensor_group[k] = -1, mp->tensor_at[k] = SIZE_MAX;
  int grp = 0;
  for (int i = 0; i < nl; i++) {
    dpm_layer_info info;
    dpm_model_layer_info(m, i, &info);
    if (info.params == 0) continue;
    const size_t off = dpm_model_group_offset(m, grp);
    for (int t = 0; t < info.n_tensors; t++) {
      const int k = dpm_gpt_tensor_find(g, info.tensors[t].name);
      CHECK(k >= 0, "layer %d tensor %s is a GPT-2 tensor", l0 + i, info.tensors[t].name);
      if (k < 0) continue;
      CHECK(dpm_gpt_tensor_size(g, k) == info.tensors[t].size, "%s: size", info.tensors[t].name);
      mp->tensor_group[k] = grp, mp->tensor_at[k] = off + info.tensors[t].off;
    }
    grp++;
  }
  mp->ngroups = grp;
}

static double maxabs_diff(const float *a, const float *b, size_t n, double *scale) {
  double d = 0, s = 0;
  for (size_t k = 0; k < n; k++) d = fmax(d, fabs((double)a[k] - b[k])), s = fmax(s, fabs((double)b[k]));
  *scale = s;
  return d;
}

static void run_case(int tied, int V, int T, int C, int H, int L, int B, int explicit_) {
  char err[DPM_ERRLEN] = "", text[512];
  dpm_gpt_config cfg = {.V = V, .T = T + 1, .C = C, .H = H, .L = L, .tied = tied};
  dpm_gpt *g = dpm_gpt_create(&cfg, B, err);
  CHECK(g, "gpt create: %s", err);
  dpm_key key = dpm_key_from_seed(7 + tied, DPM_STREAM_INIT);
  dpm_gpt_init_params(g, &key);
  float *gp = dpm_gpt_params(g);
  for (size_t k = 0; k < dpm_gpt_num_params(g); k++) gp[k] += (float)(0.05 * (urand() - 0.5)); /* LN, biases too */
  dpm_gpt_set_norm_method(g, DPM_NORM_GHOST, 0);
  int n = snprintf(text, sizeof text, "embed vocab=%d context=%d width=%d", V, T + 1, C);
  for (int l = 0; l < L; l++) n += snprintf(text + n, sizeof text - (size_t)n, "; block heads=%d", H);
  snprintf(text + n, sizeof text - (size_t)n, "; lm_head tied=%d", tied);
  dpm_layer_spec *specs;
  int nl;
  CHECK(dpm_model_parse(text, &specs, &nl, err) == 0, "parse: %s", err);
  dpm_model *m = dpm_model_create(specs, nl, 1, 1, T, V, B, err);
  CHECK(m, "create: %s", err);
  if (!m || !g) return;
  CHECK(dpm_model_num_params(m) == dpm_gpt_num_params(g), "params: %zu (the gpt has %zu)",
        dpm_model_num_params(m), dpm_gpt_num_params(g));
  /* explicit_: 0 forced ghost, 1 forced explicit (formed for the norm only), 2 the default: the blocks keep
     their explicit gradients where that is the cheaper (at T = 5, C = 8 every linear), the clipped sum adds them */
  if (explicit_ < 2)
    for (int gi = 0; gi < dpm_model_num_groups(m); gi++) dpm_model_set_norm_method(m, gi, explicit_ ? DPM_NORM_EXPLICIT : DPM_NORM_GHOST);
  mapping mp;
  map_tensors(m, nl, 0, g, &mp);
  CHECK(mp.ngroups == L + 2, "groups: %d", mp.ngroups);
  float *p = dpm_model_params(m);
  for (int k = 0; k < dpm_gpt_num_tensors(g); k++) {
    CHECK(mp.tensor_at[k] != SIZE_MAX, "tensor %s placed", dpm_gpt_tensor_name(g, k));
    const size_t len = dpm_gpt_tensor_size(g, k); /* context T + 1 in both: sequences shorter than it */
    memcpy(p + mp.tensor_at[k], gp + dpm_gpt_tensor_offset(g, k), len * sizeof(float));
  }
  dpm_model_set_pad_id(m, V - 1);
  CHECK(dpm_model_label_size(m) == T, "labels per example %d", dpm_model_label_size(m));
  int32_t *tok = malloc(sizeof(int32_t) * (size_t)B * T), *tgt = malloc(sizeof(int32_t) * (size_t)B * T);
  float *x = malloc(sizeof(float) * (size_t)B * T);
  for (int r = 0; r < B * T; r++) {
    tok[r] = (int32_t)(urand() * 4) % (V - 1); /* few distinct tokens: repeats exercise token equality */
    tgt[r] = urand() < 0.25 ? V - 1 : (int32_t)(urand() * (V - 1));
    x[r] = (float)tok[r];
  }
  tgt[1] = V - 1, tgt[T - 1] = 3; /* example 0: a masked and an unmasked target at least */
  double gl[64], l_gpt = dpm_gpt_forward(g, tok, tgt, B, T, V - 1, gl);
  int correct = -1;
  double l_m = dpm_model_forward(m, x, tgt, B, &correct);
  CHECK_CLOSE(l_m, l_gpt, 1e-6, 1e-9, "summed per-example mean loss");
  double sc, d = maxabs_diff(dpm_model_output(m), dpm_gpt_logits(g), (size_t)B * T * V, &sc);
  CHECK(d <= 1e-6 * sc, "logits: max diff %g (scale %g)", d, sc);
  double tl, nt, ntok = 0, tls = 0;
  dpm_model_token_stats(m, &tl, &nt);
  for (int b = 0; b < B; b++) {
    int nb = 0;
    for (int t = 0; t < T; t++) nb += tgt[b * T + t] != V - 1;
    ntok += nb, tls += gl[b] * nb;
  }
  CHECK(nt == ntok, "unmasked targets %g, expected %g", nt, ntok);
  CHECK_CLOSE(tl, tls, 1e-6, 1e-9, "token-summed loss");
  CHECK(correct >= 0 && correct <= ntok, "correct %d of %g", correct, ntok);

  const int NT = dpm_gpt_num_tensors(g), G = mp.ngroups;
  double *sqg = calloc((size_t)NT * B, sizeof(double)), *sqm = calloc((size_t)G * B, sizeof(double));
  dpm_gpt_backward(g, sqg);
  dpm_model_backward(m, sqm);
  for (int gi = 0; gi < G; gi++)
    for (int b = 0; b < B; b++) {
      double want = 0;
      for (int k = 0; k < NT; k++)
        if (mp.tensor_group[k] == gi) want += sqg[(size_t)k * B + b];
      CHECK_CLOSE(sqm[(size_t)gi * B + b], want, 1e-5, 1e-12, "group norm");
    }
  /* clipped sums with random per-(group, example) coefficients, then the plain sum */
  float *cm = malloc(sizeof(float) * (size_t)G * B), *cg = malloc(sizeof(float) * (size_t)NT * B);
  for (int pass = 0; pass < 2; pass++) {
    for (int gi = 0; gi < G; gi++)
      for (int b = 0; b < B; b++) cm[(size_t)gi * B + b] = b == 1 ? 0.0f : (float)(0.1 + 0.9 * urand());
    for (int k = 0; k < NT; k++)
      for (int b = 0; b < B; b++) cg[(size_t)k * B + b] = cm[(size_t)mp.tensor_group[k] * B + b];
    dpm_model_zero_grads(m), dpm_gpt_zero_grads(g);
    dpm_model_accumulate(m, pass ? NULL : cm);
    dpm_gpt_accumulate(g, pass ? NULL : cg);
    const float *dm = dpm_model_grads(m), *dg = dpm_gpt_grads(g);
    for (int k = 0; k < NT; k++) {
      const size_t len = dpm_gpt_tensor_size(g, k);
      d = maxabs_diff(dm + mp.tensor_at[k], dg + dpm_gpt_tensor_offset(g, k), len, &sc);
      CHECK(d <= 1e-5 * sc + 1e-12, "%s sum of %s: max diff %g (scale %g)", pass ? "plain" : "clipped",
            dpm_gpt_tensor_name(g, k), d, sc);
    }
  }

  /* two stages, untied only: embed + first block | the rest */
  if (!tied && L >= 2) {
    dpm_model *s0 = dpm_model_create(specs, 2, 1, 1, T, 0, B, err);
    CHECK(s0, "stage 0: %s", err);
    dpm_model *s1 = dpm_model_create(specs + 2, nl - 2, T, 1, C, V, B, err);
    CHECK(s1, "stage 1: %s", err);
    dpm_model_set_first_layer(s1, 2);
    dpm_model_set_input_grad(s1, 1);
    dpm_model_set_pad_id(s1, V - 1);
    for (int gi = 0; gi < dpm_model_num_groups(s0) && explicit_ < 2; gi++) dpm_model_set_norm_method(s0, gi, explicit_ ? DPM_NORM_EXPLICIT : DPM_NORM_GHOST);
    for (int gi = 0; gi < dpm_model_num_groups(s1) && explicit_ < 2; gi++) dpm_model_set_norm_method(s1, gi, explicit_ ? DPM_NORM_EXPLICIT : DPM_NORM_GHOST);
    const size_t P0 = dpm_model_num_params(s0);
    memcpy(dpm_model_params(s0), p, P0 * sizeof(float));
    memcpy(dpm_model_params(s1), p + P0, dpm_model_num_params(s1) * sizeof(float));
    dpm_layer_info info;
    dpm_model_layer_info(s1, 0, &info);
    char want[48];
    snprintf(want, sizeof want, "h.1.%s", "ln_1.weight");
    CHECK(!strcmp(info.tensors[0].name, want), "stage 1's first tensor %s, expected %s (global numbering)",
          info.tensors[0].name, want);
    dpm_model_forward(s0, x, NULL, B, NULL);
    double l1 = dpm_model_forward(s1, dpm_model_output(s0), tgt, B, NULL);
    CHECK_CLOSE(l1, l_m, 1e-6, 1e-9, "two stages: loss");
    double *sq0 = calloc((size_t)G * B, sizeof(double));
    dpm_model_backward(s1, sq0 + (size_t)2 * B);
    dpm_model_backward_output(s0, dpm_model_input_grad(s1), sq0);
    for (size_t k = 0; k < (size_t)G * B; k++) CHECK_CLOSE(sq0[k], sqm[k], 1e-5, 1e-12, "two stages: group norm");
    dpm_model_zero_grads(s0), dpm_model_zero_grads(s1), dpm_model_zero_grads(m);
    dpm_model_accumulate(s0, cm), dpm_model_accumulate(s1, cm + (size_t)2 * B);
    dpm_model_accumulate(m, cm); /* m's backward (with norms) is still this micro-batch's */
    d = maxabs_diff(dpm_model_grads(s0), dpm_model_grads(m), P0, &sc);
    CHECK(d <= 1e-5 * sc, "two stages: stage 0 clipped sum, max diff %g (scale %g)", d, sc);
    d = maxabs_diff(dpm_model_grads(s1), dpm_model_grads(m) + P0, dpm_model_num_params(s1), &sc);
    CHECK(d <= 1e-5 * sc, "two stages: stage 1 clipped sum, max diff %g (scale %g)", d, sc);
    free(sq0);
    dpm_model_free(s0), dpm_model_free(s1);
  }
  if (tied && L >= 1) {
    dpm_model *s1 = dpm_model_create(specs + 1, nl - 1, T, 1, C, V, B, err);
    CHECK(!s1 && strstr(err, "tied=1") && strstr(err, "pipeline"), "tied head without the embed refused: %s", err);
    dpm_model_free(s1);
  }
  free(cm), free(cg), free(sqg), free(sqm), free(tok), free(tgt), free(x), free(specs);
  dpm_model_free(m);
  dpm_gpt_free(g);
}

static void test_errors(void) {
  dpm_layer_spec *s;
  int n;
  char err[DPM_ERRLEN];
  const char *bad[][2] = {{"block heads=2; lm_head", "needs an embed"},
                          {"embed vocab=10 context=4 width=8; block heads=2", "ends with lm_head"},
                          {"embed vocab=10 context=4 width=8; dense out=3; lm_head", "embed, block and lm_head"},
                          {"embed vocab=10 context=4 width=8; lm_head vocab=11 tied=0", "differs"},
                          {"embed vocab=10 width=8; lm_head", "missing context"},
                          {"embed vocab=10 context=4 width=8; lm_head tied=2", "0 or 1"}};
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    int rc = dpm_model_parse(bad[k][0], &s, &n, err);
    CHECK(rc != 0 && strstr(err, bad[k][1]), "'%s' refused with '%s': %s", bad[k][0], bad[k][1], rc ? err : "accepted");
  }
  CHECK(dpm_model_parse("embed vocab=10 context=4 width=6; block heads=4; lm_head", &s, &n, err) == 0, "%s", err);
  dpm_model *m = dpm_model_create(s, n, 1, 1, 4, 10, 2, err);
  CHECK(!m && strstr(err, "multiple of heads"), "width %% heads: %s", err);
  m = dpm_model_create(s, n, 1, 1, 5, 10, 2, err);
  CHECK(!m && strstr(err, "context=4"), "T > context: %s", err);
  free(s);
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  for (int e = 0; e < 3; e++) {
    run_case(1, 13, 5, 8, 2, 2, 3, e);
    run_case(0, 13, 5, 8, 2, 2, 3, e);
  }
  run_case(1, 7, 1, 4, 1, 1, 1, 0); /* T = 1, B = 1 */
  run_case(1, 7, 1, 4, 1, 1, 1, 2);
  test_errors();
  return dpm_test_finish();
}
