/* LoRA adapters and frozen tensors in the GPT block kind (src/nn/block.c) against dpm_gpt (src/nn/gpt.c, the
 * oracle of test_gpt_layers.c) run on the merged weights W' = W + s A B (s = alpha / r), as independent references:
 *  - the adapted model's logits and losses are the merged GPT's;
 *  - brute force per example: example b alone through the merged GPT gives dL_b/dW'; the adapters' per-example
 *    gradients are dA = s dW' B^T and dB = s A^T dW' (chain rule), whose squared norms (in double) must equal the
 *    model's per-group norms with the base frozen, ghost and explicit, every subset of the 4 linears adapted;
 *  - the clipped sum with random per-example coefficients equals sum_b c_b (dA_b, dB_b) tensor by tensor, and the
 *    frozen tensors' gradients stay exactly 0;
 *  - partial freezing of the base (train.trainable): the norm of a group = the oracle's per-tensor norms over its
 *    trainable tensors only. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dpmpi/nn/gpt.h"
#include "dpmpi/nn/model.h"
#include "testing.h"

static uint64_t rs = 0x2545F4914F6CDD1DULL;
static double urand(void) {
  uint64_t z = (rs += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}

static const char *const LIN[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};

/* the model's tensor named name: offset in the slab, shape, group; -1 if none */
static long find(dpm_model *m, int nl, const char *name, int dims[2], int *group) {
  int grp = 0;
  for (int i = 0; i < nl; i++) {
    dpm_layer_info info;
    dpm_model_layer_info(m, i, &info);
    if (info.params == 0) continue;
    for (int t = 0; t < info.n_tensors; t++)
      if (!strcmp(info.tensors[t].name, name)) {
        if (dims) dims[0] = info.tensors[t].dims[0], dims[1] = info.tensors[t].dims[1];
        if (group) *group = grp;
        return (long)(dpm_model_group_offset(m, grp) + info.tensors[t].off);
      }
    grp++;
  }
  return -1;
}

/* out [I, O] (+)= a [I, K] b [K, O] in double (ta: a given as [K, I]; tb: b given as [O, K]) */
static void matmul(double *out, const float *a, const float *b, int I, int K, int O, int ta, int tb) {
  for (int i = 0; i < I; i++)
    for (int o = 0; o < O; o++) {
      double s = 0;
      for (int k = 0; k < K; k++) s += (double)(ta ? a[k * I + i] : a[i * K + k]) * (tb ? b[o * K + k] : b[k * O + o]);
      out[i * O + o] = s;
    }
}

/* targets: mask of adapted linears; freeze: 0 LoRA with the base frozen, 1 no LoRA and a partial freeze */
static void run_case(int targets, int explicit_, int freeze) {
  const int V = 11, T = 5, C = 8, H = 2, L = 2, B = 3, r = 3, alpha = 5;
  const float s = (float)alpha / (float)r;
  char err[DPM_ERRLEN] = "", text[512];
  dpm_gpt_config cfg = {.V = V, .T = T, .C = C, .H = H, .L = L, .tied = 0};
  dpm_gpt *g = dpm_gpt_create(&cfg, B, err), *g1 = dpm_gpt_create(&cfg, 1, err);
  CHECK(g && g1, "gpt create: %s", err);
  dpm_key key = dpm_key_from_seed(11, DPM_STREAM_INIT);
  dpm_gpt_init_params(g, &key);
  float *gp = dpm_gpt_params(g);
  for (size_t k = 0; k < dpm_gpt_num_params(g); k++) gp[k] += (float)(0.1 * (urand() - 0.5));
  int n = snprintf(text, sizeof text, "embed vocab=%d context=%d width=%d", V, T, C);
  for (int l = 0; l < L; l++)
    n += freeze ? snprintf(text + n, sizeof text - (size_t)n, "; block heads=%d", H)
                : snprintf(text + n, sizeof text - (size_t)n, "; block heads=%d lora=%d lora_alpha=%d lora_targets=%d", H,
                           r, alpha, targets);
  snprintf(text + n, sizeof text - (size_t)n, "; lm_head tied=0");
  dpm_layer_spec *specs;
  int nl;
  CHECK(dpm_model_parse(text, &specs, &nl, err) == 0, "parse: %s", err);
  dpm_model *m = dpm_model_create(specs, nl, 1, 1, T, V, B, err);
  CHECK(m, "create: %s", err);
  if (!m || !g || !g1) return;
  for (int gi = 0; gi < dpm_model_num_groups(m); gi++)
    dpm_model_set_norm_method(m, gi, explicit_ ? DPM_NORM_EXPLICIT : DPM_NORM_GHOST);
  dpm_model_init_params(m, &key);
  float *p = dpm_model_params(m);
  /* base tensors: the oracle's; adapters: random (B too, so that A's gradient is not 0) */
  size_t base = 0;
  for (int k = 0; k < dpm_gpt_num_tensors(g); k++) {
    long at = find(m, nl, dpm_gpt_tensor_name(g, k), NULL, NULL);
    CHECK(at >= 0, "tensor %s in the model", dpm_gpt_tensor_name(g, k));
    memcpy(p + at, gp + dpm_gpt_tensor_offset(g, k), dpm_gpt_tensor_size(g, k) * sizeof(float));
    base += dpm_gpt_tensor_size(g, k);
  }
  size_t lora_n = 0;
  for (int i = 0; i < nl; i++) {
    dpm_layer_info info;
    dpm_model_layer_info(m, i, &info);
    uint32_t mask = 0;
    for (int t = 0; t < info.n_tensors; t++) {
      const char *nm = info.tensors[t].name;
      if (strstr(nm, ".lora_")) {
        float *q = p + dpm_model_group_offset(m, i) + info.tensors[t].off;
        for (size_t e = 0; e < info.tensors[t].size; e++) q[e] = (float)(0.6 * (urand() - 0.5));
        lora_n += info.tensors[t].size;
      } else if (!freeze || !(strstr(nm, "h.1.") || strstr(nm, "ln_f.") || strstr(nm, "c_fc.bias"))) {
        mask |= 1u << t; /* LoRA: the base frozen; freeze = 1: all but h.1.*, ln_f.*, *c_fc.bias */
      }
    }
    CHECK(dpm_model_set_frozen(m, i, mask) == 0, "set_frozen layer %d", i);
  }
  int per_block = 0;
  for (int j = 0; j < 4; j++)
    if ((targets >> j) & 1) per_block += r * C * ((j == 2 ? 1 : j == 3 ? 4 : 1) + (j == 0 ? 3 : j == 2 ? 4 : 1));
  if (!freeze) CHECK(lora_n == (size_t)L * per_block, "adapter parameters %zu, expected %d", lora_n, L * per_block);
  CHECK(dpm_model_num_params(m) == base + lora_n, "params %zu = base %zu + adapters %zu", dpm_model_num_params(m), base, lora_n);
  /* the oracle's weights merged: W' = W + s A B */
  for (int l = 0; l < L && !freeze; l++)
    for (int j = 0; j < 4; j++) {
      if (!((targets >> j) & 1)) continue;
      char nw[64], na[64], nb[64];
      snprintf(nw, sizeof nw, "h.%d.%s.weight", l, LIN[j]);
      snprintf(na, sizeof na, "h.%d.%s.lora_A.weight", l, LIN[j]);
      snprintf(nb, sizeof nb, "h.%d.%s.lora_B.weight", l, LIN[j]);
      int da[2] = {0, 0}, db[2] = {0, 0};
      const long oa = find(m, nl, na, da, NULL), ob = find(m, nl, nb, db, NULL);
      CHECK(oa >= 0 && ob >= 0 && da[1] == r && db[0] == r, "%s %s shapes", na, nb);
      const int k = dpm_gpt_tensor_find(g, nw), I = da[0], O = db[1];
      double *ab = malloc(sizeof(double) * (size_t)I * O);
      matmul(ab, p + oa, p + ob, I, r, O, 0, 0);
      float *w = gp + dpm_gpt_tensor_offset(g, k);
      for (int e = 0; e < I * O; e++) w[e] = (float)(w[e] + s * ab[e]);
      free(ab);
    }
  memcpy(dpm_gpt_params(g1), gp, dpm_gpt_num_params(g) * sizeof(float));
  int32_t tok[64], tgt[64];
  float x[64];
  for (int e = 0; e < B * T; e++) tok[e] = (int32_t)(urand() * V), tgt[e] = (int32_t)(urand() * V), x[e] = (float)tok[e];
  double gl[8];
  const double l_gpt = dpm_gpt_forward(g, tok, tgt, B, T, -1, gl), l_m = dpm_model_forward(m, x, tgt, B, NULL);
  CHECK_CLOSE(l_m, l_gpt, 1e-5, 1e-9, "loss of the adapted model = the merged GPT's");
  const int G = dpm_model_num_groups(m), NT = dpm_gpt_num_tensors(g);
  double *sq = calloc((size_t)G * B, sizeof(double)), *sqg = calloc((size_t)NT * B, sizeof(double));
  double *want = calloc((size_t)G * B, sizeof(double));
  dpm_model_backward(m, sq);
  dpm_gpt_backward(g, sqg);
  /* reference per-example gradients of the trainable tensors: ref[b][param] (slab layout) */
  const size_t P = dpm_model_num_params(m);
  float *ref = calloc((size_t)B * P, sizeof(float));
  for (int b = 0; b < B; b++) {
    dpm_gpt_forward(g1, tok + b * T, tgt + b * T, 1, T, -1, NULL);
    dpm_gpt_backward(g1, NULL);
    dpm_gpt_zero_grads(g1);
    dpm_gpt_accumulate(g1, NULL);
    const float *dg = dpm_gpt_grads(g1);
    float *rb = ref + (size_t)b * P;
    for (int k = 0; k < NT && freeze; k++) { /* partial freeze: the trainable base tensors' own gradients */
      int grp = 0;
      const char *nm = dpm_gpt_tensor_name(g, k);
      if (!(strstr(nm, "h.1.") || strstr(nm, "ln_f.") || strstr(nm, "c_fc.bias"))) continue;
      const long at = find(m, nl, nm, NULL, &grp);
      memcpy(rb + at, dg + dpm_gpt_tensor_offset(g1, k), dpm_gpt_tensor_size(g, k) * sizeof(float));
      want[(size_t)grp * B + b] += sqg[(size_t)k * B + b];
    }
    for (int l = 0; l < L && !freeze; l++)
      for (int j = 0; j < 4; j++) {
        if (!((targets >> j) & 1)) continue;
        char nw[64], na[64], nb[64];
        snprintf(nw, sizeof nw, "h.%d.%s.weight", l, LIN[j]);
        snprintf(na, sizeof na, "h.%d.%s.lora_A.weight", l, LIN[j]);
        snprintf(nb, sizeof nb, "h.%d.%s.lora_B.weight", l, LIN[j]);
        int da[2] = {0, 0}, db[2] = {0, 0}, grp = 0;
        const long oa = find(m, nl, na, da, &grp), ob = find(m, nl, nb, db, NULL);
        const int I = da[0], O = db[1];
        const float *dW = dg + dpm_gpt_tensor_offset(g1, dpm_gpt_tensor_find(g1, nw));
        double *dA = malloc(sizeof(double) * (size_t)I * r), *dB = malloc(sizeof(double) * (size_t)r * O);
        matmul(dA, dW, p + ob, I, O, r, 0, 1);  /* dA = s dW' B^T  [I, r] */
        matmul(dB, p + oa, dW, r, I, O, 1, 0);  /* dB = s A^T dW'  [r, O] */
        for (int e = 0; e < I * r; e++) rb[oa + e] = (float)(s * dA[e]), want[(size_t)grp * B + b] += (s * dA[e]) * (s * dA[e]);
        for (int e = 0; e < r * O; e++) rb[ob + e] = (float)(s * dB[e]), want[(size_t)grp * B + b] += (s * dB[e]) * (s * dB[e]);
        free(dA), free(dB);
      }
  }
  for (int gi = 0; gi < G; gi++)
    for (int b = 0; b < B; b++) {
      const double got = sq[(size_t)gi * B + b], w = want[(size_t)gi * B + b];
      CHECK(fabs(got - w) <= 1e-4 * fabs(w) + 1e-12, "targets %d %s freeze %d: group %d example %d squared norm %.9g, "
            "brute force %.9g", targets, explicit_ ? "explicit" : "ghost", freeze, gi, b, got, w);
    }
  /* clipped sum: random coefficients (example 1 gets 0) */
  float *coef = malloc(sizeof(float) * (size_t)G * B);
  for (int gi = 0; gi < G; gi++)
    for (int b = 0; b < B; b++) coef[(size_t)gi * B + b] = b == 1 ? 0.0f : (float)(0.2 + 0.8 * urand());
  dpm_model_zero_grads(m);
  dpm_model_accumulate(m, coef);
  const float *dm = dpm_model_grads(m);
  double worst = 0, scale = 0;
  size_t nonzero_frozen = 0;
  for (int i = 0, grp = 0; i < nl; i++) {
    dpm_layer_info info;
    dpm_model_layer_info(m, i, &info);
    if (info.params == 0) continue;
    const uint32_t mask = dpm_model_frozen(m, i);
    for (int t = 0; t < info.n_tensors; t++) {
      const size_t off = dpm_model_group_offset(m, grp) + info.tensors[t].off;
      for (size_t e = 0; e < info.tensors[t].size; e++) {
        if ((mask >> t) & 1u) {
          nonzero_frozen += dm[off + e] != 0.0f;
          continue;
        }
        double w = 0;
        for (int b = 0; b < B; b++) w += (double)coef[(size_t)grp * B + b] * ref[(size_t)b * P + off + e];
        worst = fmax(worst, fabs(dm[off + e] - w)), scale = fmax(scale, fabs(w));
      }
    }
    grp++;
  }
  CHECK(scale > 0 && worst <= 1e-4 * scale, "targets %d freeze %d: clipped sum max diff %g (scale %g)", targets, freeze,
        worst, scale);
  CHECK(nonzero_frozen == 0, "frozen tensors' gradients stay 0 (%zu non-zero)", nonzero_frozen);
  free(coef), free(ref), free(sq), free(sqg), free(want);
  dpm_free(specs);
  dpm_model_free(m);
  dpm_gpt_free(g), dpm_gpt_free(g1);
}

static void test_errors(void) {
  char err[DPM_ERRLEN];
  dpm_layer_spec *s;
  int n;
  const char *bad[][2] = {{"embed vocab=10 context=4 width=8; block heads=2 lora=9; lm_head", "exceeds the width"},
                          {"embed vocab=10 context=4 width=8; block heads=2 lora=2 lora_targets=16; lm_head", "1..15"},
                          {"embed vocab=10 context=4 width=8; block heads=2 lora_alpha=4; lm_head", "need lora=r"}};
  for (int k = 0; k < 3; k++) {
    CHECK(dpm_model_parse(bad[k][0], &s, &n, err) == 0, "parse: %s", err);
    dpm_model *m = dpm_model_create(s, n, 1, 1, 4, 10, 2, err);
    CHECK(!m && strstr(err, bad[k][1]), "'%s' refused with '%s': %s", bad[k][0], bad[k][1], m ? "accepted" : err);
    dpm_model_free(m);
    dpm_free(s);
  }
  /* a dense layer freezes only whole */
  CHECK(dpm_model_parse("dense out=3", &s, &n, err) == 0, "%s", err);
  dpm_model *m = dpm_model_create(s, n, 1, 1, 4, 3, 2, err);
  CHECK(m && dpm_model_set_frozen(m, 0, 1u) != 0 && dpm_model_set_frozen(m, 0, 3u) == 0, "dense: whole or nothing");
  dpm_model_free(m);
  dpm_free(s);
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  for (int e = 0; e < 2; e++) {
    run_case(15, e, 0);
    run_case(1, e, 0);
    run_case(10, e, 0);
    run_case(0, e, 1);
  }
  test_errors();
  return dpm_test_finish();
}
