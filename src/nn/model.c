/* dpmpi model: parses a layer list, lays out parameters/gradients (one slab each) and every activation
 * and kept buffer (one arena, sized for max_batch at create), and drives the kernels of layers.c through
 * forward, backward (with exact per-example squared norms per parameter group) and the clipped
 * accumulation grads += sum_i c_gi grad_gi. See dpmpi/nn/model.h for the contract.
 *
 * Per-layer choices: dense norms are ghost (||a_i||^2 ||g_i||^2) and their clipped sum one GEMM
 * A^T diag(c) G; conv norms are ghost (Gram matrices) or explicit per-example gradients, picked by cost
 * at create; with explicit gradients the clipped sum is a GEMV over the kept rows (no second GEMM);
 * groupnorm keeps its tiny per-example gradients always. With sqnorms == NULL and coef == NULL only the
 * non-private work is done. */
#include "nn/layer.h"
#include "nn/seq.h"

#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Per-model cap on memory for kept explicit per-example gradients (AUTO picks ghost beyond it). */
#define EXPLICIT_MAX_BYTES ((size_t)256 << 20)

/* The kinds, in dpm_layer_kind order: one row per kind, one file per kind. */
static const dpm_layer_ops *const OPS[] = {
    [DPM_LAYER_DENSE] = &dpm_ops_dense,       [DPM_LAYER_CONV2D] = &dpm_ops_conv,  [DPM_LAYER_MAXPOOL] = &dpm_ops_maxpool,
    [DPM_LAYER_AVGPOOL] = &dpm_ops_avgpool,   [DPM_LAYER_RELU] = &dpm_ops_relu,    [DPM_LAYER_TANH] = &dpm_ops_tanh,
    [DPM_LAYER_GROUPNORM] = &dpm_ops_groupnorm, [DPM_LAYER_FLATTEN] = &dpm_ops_flatten,
    [DPM_LAYER_EMBED] = &dpm_ops_embed,       [DPM_LAYER_BLOCK] = &dpm_ops_block,  [DPM_LAYER_LM_HEAD] = &dpm_ops_lm_head,
    [DPM_LAYER_SCATTER] = &dpm_ops_scatter};
_Static_assert(sizeof OPS / sizeof OPS[0] == DPM_LAYER_COUNT, "every layer kind needs its row in OPS");

/* ---- parsing ---------------------------------------------------------------------------------- */

static const char *kind_name(dpm_layer_kind k) { return OPS[k]->name; }

const char *dpm_layer_kind_name(dpm_layer_kind kind) {
  DPM_ASSERT((int)kind >= 0 && kind < DPM_LAYER_COUNT && OPS[kind]);
  return kind_name(kind);
}

/* Keys each kind accepts, in order; the first `required` of them are mandatory. */
static const char *kind_keys(dpm_layer_kind k, int *required) {
  *required = OPS[k]->required;
  return OPS[k]->keys;
}

static const char *const all_keys[] = {"out", "kernel", "stride", "pad", "groups", "bias",
                                       "vocab", "context", "width", "heads", "tied",
                                       "lora", "lora_alpha", "lora_targets", "J", "L", "ws"};
#define N_KEYS ((int)(sizeof all_keys / sizeof all_keys[0]))

static int key_index(const char *key) {
  for (int k = 0; k < N_KEYS; k++)
    if (!strcmp(key, all_keys[k])) return k;
  return -1;
}

static int *spec_field(dpm_layer_spec *s, int k) {
  int *fields[] = {&s->out,   &s->kernel,  &s->stride, &s->pad,   &s->groups, &s->bias,
                   &s->vocab, &s->context, &s->width,  &s->heads, &s->tied,
                   &s->lora,  &s->lora_alpha, &s->lora_targets, &s->scat_j, &s->scat_l, &s->ws};
  _Static_assert(sizeof fields / sizeof fields[0] == N_KEYS, "one field per key");
  return fields[k];
}

static int key_allowed(const char *keys, const char *key) {
  size_t n = strlen(key);
  for (const char *p = keys; *p;) {
    const char *e = strchr(p, ' ');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len == n && !strncmp(p, key, n)) return 1;
    p += len + (e ? 1 : 0);
  }
  return 0;
}

/* Parse one layer's words (NUL-separated in a scratch copy). */
static int parse_layer(char **words, int nw, int num, dpm_layer_spec *s, char *err) {
  int k = -1;
  for (int j = 0; j < DPM_LAYER_COUNT; j++)
    if (!strcmp(words[0], kind_name((dpm_layer_kind)j))) k = j;
  if (k < 0) {
    char names[256] = "";
    for (int j = 0; j < DPM_LAYER_COUNT; j++)
      snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", j == 0 ? "" : j == DPM_LAYER_COUNT - 1 ? " or " : ", ",
               kind_name((dpm_layer_kind)j));
    return dpm_err(err, "layer %d: unknown layer '%s' (expected %s)", num, words[0], names);
  }
  memset(s, 0, sizeof *s);
  s->kind = (dpm_layer_kind)k;
  s->stride = -1;
  s->bias = 1;
  s->tied = 1;
  const char *name = kind_name(s->kind);
  int required;
  const char *keys = kind_keys(s->kind, &required);
  unsigned seen = 0;
  for (int w = 1; w < nw; w++) {
    char *eq = strchr(words[w], '=');
    if (!eq) return dpm_err(err, "layer %d (%s): expected key=value, got '%s'", num, name, words[w]);
    *eq = '\0';
    const char *key = words[w], *val = eq + 1;
    if (!key_allowed(keys, key)) {
      if (!keys[0]) return dpm_err(err, "layer %d (%s): unknown key '%s' (%s takes no keys)", num, name, key, name);
      return dpm_err(err, "layer %d (%s): unknown key '%s' (expected one of: %s)", num, name, key, keys);
    }
    const int ki = key_index(key);
    int *field = spec_field(s, ki);
    unsigned bit = 1u << ki;
    if (seen & bit) return dpm_err(err, "layer %d (%s): key '%s' given twice", num, name, key);
    seen |= bit;
    char *end = NULL;
    long v = strtol(val, &end, 10);
    int is_pad = !strcmp(key, "pad"), is_bias = !strcmp(key, "bias") || !strcmp(key, "tied") || !strcmp(key, "ws");
    int ok = *val && end && *end == '\0' && v <= (1L << 24) &&
             (is_bias ? (v == 0 || v == 1) : is_pad ? v >= 0 : v >= 1);
    if (!ok)
      return dpm_err(err, "layer %d (%s): bad value '%s' for %s (expected %s)", num, name, val, key,
                     is_bias ? "0 or 1" : is_pad ? "an integer in [0, 16777216]" : "an integer in [1, 16777216]");
    *field = (int)v;
  }
  /* mandatory keys are the first `required` words of keys */
  const char *p = keys;
  for (int r = 0; r < required; r++) {
    char key[16];
    size_t len = strcspn(p, " ");
    snprintf(key, sizeof key, "%.*s", (int)len, p);
    unsigned bit = 1u << key_index(key);
    if (!(seen & bit)) return dpm_err(err, "layer %d (%s): missing %s=", num, name, key);
    p += len + 1;
  }
  if (s->stride < 0) s->stride = OPS[s->kind]->stride_is_kernel ? s->kernel : 1;
  return 0;
}

int dpm_model_parse(const char *text, dpm_layer_spec **specs, int *n, char err[DPM_ERRLEN]) {
  *specs = NULL;
  *n = 0;
  if (!text) return dpm_err(err, "no layers given");
  char *buf = dpm_strdup(text);
  /* comments: '#' to end of line */
  for (char *c = buf; *c; c++) {
    if (*c == '#')
      while (*c && *c != '\n') *c++ = ' ';
    if (!*c) break; /* a comment at the very end: stop at the terminator (fuzz_layers found the overrun) */
  }
  int cap = 8, count = 0, rc = 0;
  dpm_layer_spec *out = dpm_malloc(sizeof *out * cap);
  char **words = dpm_malloc(sizeof *words * (strlen(buf) / 2 + 2));
  for (char *seg = buf; seg && rc == 0;) {
    char *next = seg + strcspn(seg, ";\n");
    char *after = *next ? next + 1 : NULL;
    *next = '\0';
    int nw = 0;
    for (char *c = seg; *c;) {
      while (*c && isspace((unsigned char)*c)) *c++ = '\0';
      if (!*c) break;
      words[nw++] = c;
      while (*c && !isspace((unsigned char)*c)) c++;
    }
    if (nw > 0) {
      if (count == cap) out = dpm_realloc(out, sizeof *out * (size_t)(cap *= 2));
      rc = parse_layer(words, nw, count + 1, &out[count], err);
      count++;
    }
    seg = after;
  }
  dpm_free(words);
  dpm_free(buf);
  if (rc == 0 && count == 0) rc = dpm_err(err, "no layers given (expected e.g. \"dense out=10\")");
  /* GPT lists: embed first, then blocks, then lm_head last; lm_head's vocabulary is the embed's */
  int blocks = 0, embed = -1;
  for (int i = 0; i < count && rc == 0; i++) {
    const dpm_layer_kind k = out[i].kind;
    blocks += k == DPM_LAYER_BLOCK;
    if (k == DPM_LAYER_EMBED && i != 0) rc = dpm_err(err, "layer %d (embed): must be the first layer", i + 1);
    if (k == DPM_LAYER_SCATTER && i != 0)
      rc = dpm_err(err, "layer %d (scatter): must be the first layer (the transform is fixed and has no backward)", i + 1);
    if (k == DPM_LAYER_EMBED) embed = i;
    if (k == DPM_LAYER_LM_HEAD && i != count - 1) rc = dpm_err(err, "layer %d (lm_head): must be the last layer", i + 1);
    if (k == DPM_LAYER_BLOCK && embed < 0) rc = dpm_err(err, "layer %d (block): needs an embed layer before it", i + 1);
    if (k == DPM_LAYER_LM_HEAD && embed < 0) rc = dpm_err(err, "layer %d (lm_head): needs an embed layer first", i + 1);
    if (k == DPM_LAYER_LM_HEAD && embed >= 0 && out[i].vocab == 0) out[i].vocab = out[embed].vocab;
    if (k == DPM_LAYER_LM_HEAD && embed >= 0 && out[i].vocab != out[embed].vocab)
      rc = dpm_err(err, "layer %d (lm_head): vocab=%d differs from the embed layer's vocab=%d", i + 1, out[i].vocab,
                   out[embed].vocab);
    if (embed >= 0 && rc == 0 && k != DPM_LAYER_EMBED && k != DPM_LAYER_BLOCK && k != DPM_LAYER_LM_HEAD)
      rc = dpm_err(err, "layer %d (%s): a GPT layer list holds embed, block and lm_head layers only", i + 1,
                   kind_name(k));
  }
  for (int i = 0; i < count; i++)
    if (out[i].kind == DPM_LAYER_BLOCK) out[i].blocks = blocks;
  if (rc == 0 && embed >= 0 && out[count - 1].kind != DPM_LAYER_LM_HEAD)
    rc = dpm_err(err, "layer %d: a GPT layer list ends with lm_head", count);
  if (rc) {
    dpm_free(out);
    return -1;
  }
  *specs = out;
  *n = count;
  return 0;
}

/* ---- create ----------------------------------------------------------------------------------- */

void *dpm_plan_carve(dpm_plan *p, size_t bytes) {
  size_t off = p->cur;
  p->cur += (bytes + 63) / 64 * 64;
  return p->base ? p->base + off : NULL;
}

/* Place every buffer (base NULL: only measure). Returns the arena size in bytes. */
static size_t layout(dpm_model *m, char *base) {
  dpm_plan p = {.base = base, .B = (size_t)m->max_batch};
  const size_t B = p.B, F = sizeof(float);
  m->x = dpm_plan_carve(&p, B * m->in_n * F);
  m->dx = dpm_plan_carve(&p, B * m->in_n * F);
  m->y = dpm_plan_carve(&p, B * (size_t)m->label_n * sizeof(int32_t));
  m->exloss = dpm_plan_carve(&p, B * sizeof(double));
  for (int i = 0; i < m->n; i++) {
    layer *l = &m->L[i];
    if (l->ops->aliases_input) {
      l->out = i ? m->L[i - 1].out : m->x;
      l->dout = i ? m->L[i - 1].dout : m->dx;
      continue;
    }
    l->out = dpm_plan_carve(&p, B * l->out_n * F);
    l->dout = dpm_plan_carve(&p, B * l->out_n * F);
    l->ops->plan(l, &p);
  }
  const layer *last = &m->L[m->n - 1];
  m->probs = dpm_plan_carve(&p, (m->has_loss ? B * last->out_n : 0) * F);
  m->scratch = dpm_plan_carve(&p, p.scratch * F);
  m->ghost = dpm_plan_carve(&p, p.ghost * sizeof(double));
  m->row = dpm_plan_carve(&p, p.row * F);
  return p.cur;
}

/* ---- shared pieces of the kinds (dpmpi/nn/layer.h) ------------------------------------------- */

int dpm_shape_same(layer *l, int max_batch, int num, char *err) {
  (void)max_batch, (void)num, (void)err;
  l->OC = l->C, l->OH = l->H, l->OW = l->W;
  return 0;
}

void dpm_plan_none(layer *l, dpm_plan *p) { (void)l, (void)p; }

void dpm_describe_none(const layer *l, char *buf, size_t len) {
  (void)l;
  if (len) buf[0] = '\0';
}

void dpm_info_elementwise(const layer *l, dpm_layer_info *info) {
  info->cost = 4.0 * (double)(l->in_n > l->out_n ? l->in_n : l->out_n);
}

/* The shapes, parameter layout and kept-buffer choices of a model, nothing big allocated (params, grads
 * and arena stay NULL); NULL with err set when the shapes do not fit. */
static dpm_model *model_plan(const dpm_layer_spec *specs, int n, int C, int H, int W, int n_classes,
                             int max_batch, char err[DPM_ERRLEN]) {
  if (n < 1) return dpm_err(err, "model has no layers"), NULL;
  if (C < 1 || H < 1 || W < 1) return dpm_err(err, "bad input shape %dx%dx%d", C, H, W), NULL;
  if (n_classes < 2 && n_classes != 0) return dpm_err(err, "need at least 2 classes, got %d", n_classes), NULL;
  if (max_batch < 1) return dpm_err(err, "max_batch must be positive, got %d", max_batch), NULL;
  dpm_model *m = dpm_calloc(1, sizeof *m);
  m->n = n;
  m->L = dpm_calloc((size_t)n, sizeof *m->L);
  m->C = C, m->H = H, m->W = W, m->n_classes = n_classes, m->max_batch = max_batch;
  m->has_loss = n_classes > 0;
  m->params_owned = 1;
  m->in_n = (size_t)C * H * W;
  m->label_n = 1;
  m->pad_id = -1;
  m->group_layer = dpm_malloc(sizeof(int) * (size_t)n);
  m->first_param = -1;
  int c = C, h = H, w = W;
  size_t np = 0;
  for (int i = 0; i < n; i++) {
    layer *l = &m->L[i];
    l->s = specs[i];
    l->C = c, l->H = h, l->W = w;
    l->in_n = (size_t)c * h * w;
    l->group = -1;
    l->global = i;
    l->ops = OPS[l->s.kind];
    const char *name = l->ops->name;
    if (l->ops->shape(l, max_batch, i + 1, err)) goto fail;
    l->out_n = (size_t)l->OC * l->OH * l->OW;
    if ((double)l->out_n * max_batch > (double)INT_MAX || (double)l->wsize > (double)INT_MAX) {
      dpm_err(err, "layer %d (%s): output or parameters too large", i + 1, name);
      goto fail;
    }
    if (l->wsize + l->bsize > 0) {
      l->group = m->ngroups;
      m->group_layer[m->ngroups++] = i;
      l->poff = np;
      np += l->wsize + l->bsize;
      if (m->first_param < 0) m->first_param = i;
    }
    c = l->OC, h = l->OH, w = l->OW;
  }
  if (m->has_loss && m->L[n - 1].ops->seq_loss) { /* lm_head: T x vocab logits, T targets per example */
    m->label_n = m->L[n - 1].OC;
    if (m->L[n - 1].OW != n_classes) {
      dpm_err(err, "layer %d (%s): vocabulary %d but the data has vocabulary %d", n, kind_name(m->L[n - 1].s.kind),
              m->L[n - 1].OW, n_classes);
      goto fail;
    }
  } else if (m->has_loss && m->L[n - 1].out_n != (size_t)n_classes) {
    dpm_err(err, "layer %d (%s): outputs %zu values but the data has %d classes", n,
            kind_name(m->L[n - 1].s.kind), m->L[n - 1].out_n, n_classes);
    goto fail;
  }
  const layer *lh = &m->L[n - 1];
  if (lh->ops->seq_loss && lh->s.tied && m->L[0].ops != &dpm_ops_embed) {
    dpm_err(err, "layer %d (lm_head): tied=1 uses the embed layer's wte, which is on another pipeline stage: "
            "use tied=0 (an lm_head.weight of its own) on a pipeline, or one stage", m->layer0 + n);
    goto fail;
  }
  /* explicit conv gradients when cheaper and the kept rows fit the memory cap */
  size_t explicit_bytes = 0;
  for (int i = 0; i < n; i++) {
    layer *l = &m->L[i];
    size_t bytes = l->ops->explicit_bytes ? l->ops->explicit_bytes(l, max_batch) : 0;
    if (bytes == 0 || explicit_bytes + bytes > EXPLICIT_MAX_BYTES) continue;
    explicit_bytes += bytes;
    l->explicit_ = 1; /* carved in the arena by the kind's plan */
  }
  m->nparams = np;
  m->first_train = m->first_param;
  return m;
fail:
  dpm_free(m->group_layer);
  dpm_free(m->L);
  dpm_free(m);
  return NULL;
}

static void model_free_plan(dpm_model *m) {
  dpm_free(m->group_layer);
  dpm_free(m->L);
  dpm_free(m);
}

int dpm_model_estimate(const dpm_layer_spec *specs, int n, int C, int H, int W, int n_classes, int max_batch,
                       size_t *params, size_t *arena_bytes, char err[DPM_ERRLEN]) {
  dpm_model *m = model_plan(specs, n, C, H, W, n_classes, max_batch, err);
  if (!m) return -1;
  *params = m->nparams;
  *arena_bytes = layout(m, NULL);
  model_free_plan(m);
  return 0;
}

dpm_model *dpm_model_create(const dpm_layer_spec *specs, int n, int C, int H, int W, int n_classes,
                            int max_batch, char err[DPM_ERRLEN]) {
  dpm_model *m = model_plan(specs, n, C, H, W, n_classes, max_batch, err);
  if (!m) return NULL;
  const size_t np = m->nparams;
  m->params = dpm_malloc_aligned(np * sizeof(float));
  m->grads = dpm_malloc_aligned(np * sizeof(float));
  memset(m->params, 0, np * sizeof(float));
  memset(m->grads, 0, np * sizeof(float));
  m->arena = dpm_malloc_aligned(layout(m, NULL));
  layout(m, m->arena);
  return m;
}

void dpm_model_free(dpm_model *m) {
  if (!m) return;
  for (int i = 0; i < m->n; i++) {
    if (m->L[i].E_owned) dpm_free(m->L[i].E);
    if (m->L[i].ops->release) m->L[i].ops->release(&m->L[i]);
  }
  dpm_free(m->arena);
  if (m->params_owned) {
    dpm_free(m->params);
    dpm_free(m->grads);
  }
  dpm_free(m->group_layer);
  dpm_free(m->L);
  dpm_free(m);
}

/* ---- accessors -------------------------------------------------------------------------------- */

void dpm_model_describe(const dpm_model *m, char *buf, size_t len) {
  size_t used = 0;
  if (len) buf[0] = '\0';
  for (int i = 0; i < m->n && used < len; i++) {
    const layer *l = &m->L[i];
    const dpm_layer_spec *s = &l->s;
    char args[96] = "";
    l->ops->describe(l, args, sizeof args);
    int k = snprintf(buf + used, len - used, "layer %d: %s%s -> %dx%dx%d, %zu params\n", m->layer0 + i + 1, kind_name(s->kind),
                     args, l->OC, l->OH, l->OW, l->wsize + l->bsize);
    if (k < 0) break;
    used += (size_t)k;
  }
  if (used < len)
    snprintf(buf + used, len - used, "total: %zu params in %d groups\n", m->nparams, m->ngroups);
}

size_t dpm_model_num_params(const dpm_model *m) { return m->nparams; }
float *dpm_model_params(dpm_model *m) { return m->params; }
float *dpm_model_grads(dpm_model *m) { return m->grads; }
int dpm_model_num_groups(const dpm_model *m) { return m->ngroups; }
int dpm_model_max_batch(const dpm_model *m) { return m->max_batch; }

size_t dpm_model_group_offset(const dpm_model *m, int g) {
  DPM_ASSERT(g >= 0 && g < m->ngroups);
  return m->L[m->group_layer[g]].poff;
}

size_t dpm_model_group_size(const dpm_model *m, int g) {
  DPM_ASSERT(g >= 0 && g < m->ngroups);
  const layer *l = &m->L[m->group_layer[g]];
  return l->wsize + l->bsize;
}

void dpm_model_zero_grads(dpm_model *m) { memset(m->grads, 0, m->nparams * sizeof(float)); }

void dpm_model_set_norm_method(dpm_model *m, int g, dpm_norm_method method) {
  DPM_ASSERT(g >= 0 && g < m->ngroups);
  layer *l = &m->L[m->group_layer[g]];
  if (!l->ops->set_norm) return; /* the kind has one method */
  size_t bytes = l->ops->explicit_bytes(l, m->max_batch);
  int want = method == DPM_NORM_EXPLICIT ? 1 : method == DPM_NORM_GHOST ? 0 : bytes > 0 && bytes <= EXPLICIT_MAX_BYTES;
  l->ops->set_norm(l, want, m->max_batch);
}

dpm_norm_method dpm_model_norm_method(const dpm_model *m, int g) {
  DPM_ASSERT(g >= 0 && g < m->ngroups);
  const layer *l = &m->L[m->group_layer[g]];
  return l->ops->norm_method(l);
}

void dpm_model_set_input_grad(dpm_model *m, int on) { m->input_grad = on; }

dpm_model *dpm_model_clone_shared(dpm_model *owner) {
  DPM_ASSERT(owner->params_owned);
  dpm_layer_spec *specs = dpm_malloc(sizeof *specs * (size_t)owner->n);
  for (int i = 0; i < owner->n; i++) specs[i] = owner->L[i].s;
  char err[DPM_ERRLEN];
  dpm_model *m = dpm_model_create(specs, owner->n, owner->C, owner->H, owner->W, owner->n_classes, owner->max_batch, err);
  if (!m) dpm_fatal("model clone: %s", err);
  dpm_free(specs);
  for (int g = 0; g < owner->ngroups; g++)
    if (dpm_model_norm_method(owner, g) != dpm_model_norm_method(m, g))
      dpm_model_set_norm_method(m, g, dpm_model_norm_method(owner, g));
  m->layer0 = owner->layer0;
  m->input_grad = owner->input_grad;
  dpm_free(m->params);
  dpm_free(m->grads);
  m->params = owner->params;
  m->grads = owner->grads;
  m->params_owned = 0;
  m->pad_id = owner->pad_id;
  for (int i = 0; i < owner->n; i++) m->L[i].frozen = owner->L[i].frozen;
  m->first_train = owner->first_train;
  return m;
}

void dpm_model_set_first_layer(dpm_model *m, int layer0) {
  m->layer0 = layer0;
  for (int i = 0; i < m->n; i++) m->L[i].global = layer0 + i;
}
int dpm_model_label_size(const dpm_model *m) { return m->label_n; }
void dpm_model_set_pad_id(dpm_model *m, int pad_id) { m->pad_id = pad_id; }
void dpm_model_token_stats(const dpm_model *m, double *token_loss, double *tokens) {
  *token_loss = m->tok_loss, *tokens = m->ntok;
}
size_t dpm_model_input_size(const dpm_model *m) { return m->in_n; }
size_t dpm_model_output_size(const dpm_model *m) { return m->L[m->n - 1].out_n; }
const float *dpm_model_output(const dpm_model *m) { return m->L[m->n - 1].out; }

void dpm_model_layer_info(const dpm_model *m, int i, dpm_layer_info *info) {
  DPM_ASSERT(i >= 0 && i < m->n);
  const layer *l = &m->L[i];
  info->C = l->OC, info->H = l->OH, info->W = l->OW;
  info->params = l->wsize + l->bsize;
  info->weights = l->wsize, info->biases = l->bsize;
  info->wrank = 0;
  info->names[0] = info->names[1] = NULL;
  info->cost = 0;
  info->n_tensors = 0;
  l->ops->info(l, info);
  if (info->n_tensors == 0 && info->params > 0) { /* the weight, then the bias, under the kind's names */
    for (int part = 0; part < 2; part++) {
      const size_t count = part ? l->bsize : l->wsize;
      if (count == 0) continue;
      dpm_tensor_info *t = &info->tensors[info->n_tensors++];
      snprintf(t->name, sizeof t->name, "%s", info->names[part]);
      t->off = part ? l->wsize : 0, t->size = count;
      t->rank = part || info->wrank == 0 ? 1 : info->wrank;
      if (t->rank == 1) t->dims[0] = (int)count;
      else memcpy(t->dims, info->wdims, sizeof t->dims);
    }
  }
}
const float *dpm_model_input_grad(const dpm_model *m) { return m->dx; }

/* ---- frozen tensors --------------------------------------------------------------------------- */

static uint32_t all_tensors(const dpm_model *m, int i) {
  dpm_layer_info info;
  dpm_model_layer_info(m, i, &info);
  return info.n_tensors >= 32 ? 0xffffffffu : (1u << info.n_tensors) - 1u;
}

static int all_frozen(const dpm_model *m, int i) {
  const layer *l = &m->L[i];
  return l->wsize + l->bsize == 0 || (l->frozen & all_tensors(m, i)) == all_tensors(m, i);
}

int dpm_model_set_frozen(dpm_model *m, int i, uint32_t mask) {
  DPM_ASSERT(i >= 0 && i < m->n);
  layer *l = &m->L[i];
  const uint32_t all = all_tensors(m, i);
  mask &= all;
  if (mask && mask != all && !l->ops->freezes_tensors) return -1;
  l->frozen = mask;
  m->first_train = -1;
  for (int k = 0; k < m->n && m->first_train < 0; k++)
    if (!all_frozen(m, k)) m->first_train = k;
  return 0;
}

uint32_t dpm_model_frozen(const dpm_model *m, int i) {
  DPM_ASSERT(i >= 0 && i < m->n);
  return m->L[i].frozen;
}

int dpm_model_group_trainable(const dpm_model *m, int g) {
  DPM_ASSERT(g >= 0 && g < m->ngroups);
  return !all_frozen(m, m->group_layer[g]);
}

/* ---- init ------------------------------------------------------------------------------------- */

static void fill_uniform(float *p, size_t n, size_t j0, float bound, const dpm_key *key, int layer_num) {
  uint64_t out[2];
  uint64_t block = UINT64_MAX;
  for (size_t k = 0; k < n; k++) {
    uint64_t j = j0 + k;
    if (j / 2 != block) {
      block = j / 2;
      dpm_rng_block(key, block, (uint64_t)layer_num, DPM_STREAM_INIT, out);
    }
    p[k] = (float)((2.0 * dpm_u01(out[j % 2]) - 1.0) * bound);
  }
}

void dpm_init_uniform(const layer *l, float *p, const dpm_key *key, int layer_num, size_t fan_in) {
  const float bound = (float)(1.0 / sqrt((double)fan_in));
  fill_uniform(p, l->wsize, 0, bound, key, layer_num);
  fill_uniform(p + l->wsize, l->bsize, l->wsize, bound, key, layer_num);
}

void dpm_model_init_params(dpm_model *m, const dpm_key *key) {
  for (int i = 0; i < m->n; i++) {
    const layer *l = &m->L[i];
    if (l->ops->init) l->ops->init(l, m->params + l->poff, key, m->layer0 + i);
  }
}

/* ---- forward / backward / accumulate ---------------------------------------------------------- */

/* The two losses: class cross-entropy (y [B], dpm_softmax_xent_*) and the masked sequence cross-entropy of a
 * model ending with lm_head (y [B, T] next-token targets, pad_id masked; loss_i the mean over example i's
 * unmasked targets, dpm_seq_xent_*). n_correct counts unmasked targets that are the argmax. */
static double seq_loss_forward(dpm_model *m, const float *logits, const int32_t *y, int B, int *n_correct) {
  const int T = m->label_n, V = m->n_classes;
  if (!y) {
    if (n_correct) *n_correct = 0;
    return 0.0;
  }
  int correct = 0;
  for (int i = 0; i < B; i++) {
    int n_i = 0;
    for (int t = 0; t < T; t++) {
      const size_t r = (size_t)i * T + t;
      const int32_t v = y[r];
      if (v == m->pad_id) { /* masked (pad_id -1: none, targets are >= 0) */
        m->y[r] = v;
        continue;
      }
      if (v < 0 || v >= V) dpm_fatal("target %d of example %d position %d is outside [0, %d)", v, i, t, V);
      m->y[r] = v;
      n_i++;
      const float *z = logits + r * V;
      int best = 0;
      for (int k = 1; k < V; k++)
        if (z[k] > z[best]) best = k;
      correct += best == v;
    }
    m->ntok += n_i;
  }
  const double sum = dpm_seq_xent_forward(m->probs, m->exloss, logits, m->y, m->pad_id, B, T, V);
  for (int i = 0; i < B; i++) {
    int n_i = 0;
    for (int t = 0; t < T; t++) n_i += m->y[(size_t)i * T + t] != m->pad_id;
    m->tok_loss += m->exloss[i] * n_i;
  }
  if (n_correct) *n_correct = correct;
  return sum;
}

double dpm_model_forward(dpm_model *m, const float *x, const int32_t *y, int B, int *n_correct) {
  DPM_ASSERT(B >= 1 && B <= m->max_batch);
  m->B = B;
  m->backward_done = 0;
  memcpy(m->x, x, (size_t)B * m->in_n * sizeof(float));
  for (int i = 0; i < m->n; i++) {
    layer *l = &m->L[i];
    l->E_ready = 0;
    l->gsq_ready = 0;
    l->ops->forward(m, l, i ? m->L[i - 1].out : m->x, B);
  }
  const float *logits = m->L[m->n - 1].out;
  m->have_labels = y != NULL;
  m->tok_loss = 0, m->ntok = 0;
  if (m->has_loss && m->label_n > 1) return seq_loss_forward(m, logits, y, B, n_correct);
  if (!m->has_loss) {
    DPM_ASSERT(y == NULL);
    if (n_correct) *n_correct = 0;
    return 0.0;
  }
  if (!y) {
    dpm_softmax_xent_forward(m->probs, logits, NULL, B, m->n_classes, NULL);
    if (n_correct) *n_correct = 0;
    return 0.0;
  }
  for (int i = 0; i < B; i++) {
    if (y[i] < 0 || y[i] >= m->n_classes) dpm_fatal("label %d of example %d is outside [0, %d)", y[i], i, m->n_classes);
    m->y[i] = y[i];
  }
  const double loss = dpm_softmax_xent_forward(m->probs, logits, m->y, B, m->n_classes, n_correct);
  m->tok_loss = loss, m->ntok = B;
  return loss;
}

static void backward_layers(dpm_model *m, double *sqnorms);

void dpm_model_backward(dpm_model *m, double *sqnorms) {
  DPM_ASSERT(m->has_loss && m->have_labels);
  if (m->label_n > 1)
    dpm_seq_xent_backward(m->L[m->n - 1].dout, m->probs, m->y, m->pad_id, m->B, m->label_n, m->n_classes);
  else
    dpm_softmax_xent_backward(m->L[m->n - 1].dout, m->probs, m->y, m->B, m->n_classes);
  backward_layers(m, sqnorms);
}

void dpm_model_backward_output(dpm_model *m, const float *dout, double *sqnorms) {
  DPM_ASSERT(!m->has_loss && m->B >= 1);
  memcpy(m->L[m->n - 1].dout, dout, (size_t)m->B * m->L[m->n - 1].out_n * sizeof(float));
  backward_layers(m, sqnorms);
}

static void backward_layers(dpm_model *m, double *sqnorms) {
  const int B = m->B;
  for (int i = m->n - 1; i >= 0; i--) {
    layer *l = &m->L[i];
    /* the input gradient is needed if some earlier layer has parameters, or the caller asked */
    const int need_dx = m->input_grad || (m->first_train >= 0 && m->first_train < i);
    float *dx = need_dx ? (i ? m->L[i - 1].dout : m->dx) : NULL;
    double *sq = (sqnorms && l->group >= 0) ? sqnorms + (size_t)l->group * B : NULL;
    const int frozen = l->group >= 0 && all_frozen(m, i);
    if (frozen && sq) memset(sq, 0, (size_t)B * sizeof(double)); /* a frozen layer's gradient is not released */
    if (frozen && !need_dx) continue; /* nothing before it trains and nobody asked for the input gradient */
    /* the GPT kinds see frozen tensors themselves (a tied lm_head's norm belongs to the embed's group) */
    l->ops->backward(m, l, i ? m->L[i - 1].out : m->x, dx, l->ops->freezes_tensors || !frozen ? sq : NULL, B);
  }
  m->backward_done = 1;
}

void dpm_model_accumulate(dpm_model *m, const float *coef) {
  DPM_ASSERT(m->backward_done);
  const int B = m->B;
  for (int g = 0; g < m->ngroups; g++) {
    const int i = m->group_layer[g];
    layer *l = &m->L[i];
    if (all_frozen(m, i)) continue; /* (a tied lm_head's use of wte is the embed layer's sum) */
    const float *c = coef ? coef + (size_t)g * B : NULL;
    float *dw = m->grads + l->poff, *db = l->bsize ? dw + l->wsize : NULL;
    l->ops->accumulate(m, l, i ? m->L[i - 1].out : m->x, dw, db, c, B);
  }
}
