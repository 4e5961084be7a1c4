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
#include "dpmpi/nn/model.h"

#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/layers.h"

#define GN_EPS 1e-5f
/* Per-model cap on memory for kept explicit per-example gradients (AUTO picks ghost beyond it). */
#define EXPLICIT_MAX_BYTES ((size_t)256 << 20)

typedef struct {
  dpm_layer_spec s;
  int C, H, W;     /* input shape */
  int OC, OH, OW;  /* output shape */
  size_t in_n, out_n;
  int group;       /* parameter group, -1 if none */
  size_t poff, wsize, bsize;
  float *out, *dout; /* B x out_n (aliases of the previous layer's for flatten) */
  int T, CK;         /* conv */
  float *P, *G;      /* conv: patches (B*T x CK), output grads (B*T x O) */
  float *E;          /* per-example gradient rows (conv explicit, groupnorm) */
  int E_owned;       /* E allocated outside the arena (forced explicit) */
  int explicit_;     /* conv: explicit per-example gradients when norms are asked for */
  int E_ready;       /* E holds this micro-batch's per-example gradients */
  double *gsq;       /* conv ghost: this micro-batch's squared norms (B) and ill-conditioning flags (B), */
  unsigned char *ill; /* kept for the clipped sum (dpm_conv_accumulate caps such examples) */
  int gsq_ready;
  float *xhat, *rstd; /* groupnorm */
  int32_t *argmax;    /* maxpool */
} layer;

struct dpm_model {
  int n;
  layer *L;
  int C, H, W, n_classes, max_batch;
  size_t in_n;
  float *params, *grads;
  size_t nparams;
  int ngroups, *group_layer, first_param;
  void *arena;
  float *x, *dx, *probs, *scratch;
  double *ghost;     /* conv ghost norms: Gram matrices and the example's rows in double */
  float *row;        /* clipped sums of extreme examples: one example's rescaled rows */
  int32_t *y;
  int B, have_labels, backward_done, input_grad;
  int layer0;        /* global number of the first layer (pipeline stages): initialization and describe */
  int has_loss;      /* 0: a pipeline stage before the last: no loss, the output gradient comes from outside */
  int params_owned;  /* 0: params and grads are another model's (dpm_model_clone_shared) */
};

/* ---- parsing ---------------------------------------------------------------------------------- */

static const char *kind_name(dpm_layer_kind k) {
  static const char *names[] = {"dense", "conv", "maxpool", "avgpool", "relu", "tanh", "groupnorm", "flatten"};
  return names[k];
}

/* Keys each kind accepts, in order; the first `required` of them are mandatory. */
static const char *kind_keys(dpm_layer_kind k, int *required) {
  switch (k) {
    case DPM_LAYER_DENSE: *required = 1; return "out bias";
    case DPM_LAYER_CONV2D: *required = 2; return "out kernel stride pad bias";
    case DPM_LAYER_MAXPOOL:
    case DPM_LAYER_AVGPOOL: *required = 1; return "kernel stride";
    case DPM_LAYER_GROUPNORM: *required = 1; return "groups";
    default: *required = 0; return "";
  }
}

static const char *const all_keys[] = {"out", "kernel", "stride", "pad", "groups", "bias"};

static int key_index(const char *key) {
  for (int k = 0; k < 6; k++)
    if (!strcmp(key, all_keys[k])) return k;
  return -1;
}

static int *spec_field(dpm_layer_spec *s, int k) {
  int *fields[] = {&s->out, &s->kernel, &s->stride, &s->pad, &s->groups, &s->bias};
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
  static const dpm_layer_kind kinds[] = {DPM_LAYER_DENSE, DPM_LAYER_CONV2D, DPM_LAYER_MAXPOOL,
                                         DPM_LAYER_AVGPOOL, DPM_LAYER_RELU, DPM_LAYER_TANH,
                                         DPM_LAYER_GROUPNORM, DPM_LAYER_FLATTEN};
  int k = -1;
  for (int j = 0; j < 8; j++)
    if (!strcmp(words[0], kind_name(kinds[j]))) k = j;
  if (k < 0)
    return dpm_err(err, "layer %d: unknown layer '%s' (expected dense, conv, maxpool, avgpool, relu, tanh, "
                   "groupnorm or flatten)", num, words[0]);
  memset(s, 0, sizeof *s);
  s->kind = kinds[k];
  s->stride = -1;
  s->bias = 1;
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
    int is_pad = !strcmp(key, "pad"), is_bias = !strcmp(key, "bias");
    int ok = *val && end && *end == '\0' && v <= (1L << 24) &&
             (is_bias ? (v == 0 || v == 1) : is_pad ? v >= 0 : v >= 1);
    if (!ok)
      return dpm_err(err, "layer %d (%s): bad value '%s' for %s (expected %s)", num, name, val, key,
                     is_bias ? "0 or 1" : is_pad ? "an integer >= 0" : "a positive integer");
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
  if (s->stride < 0) s->stride = (s->kind == DPM_LAYER_CONV2D) ? 1 : s->kernel;
  return 0;
}

int dpm_model_parse(const char *text, dpm_layer_spec **specs, int *n, char err[DPM_ERRLEN]) {
  *specs = NULL;
  *n = 0;
  if (!text) return dpm_err(err, "no layers given");
  char *buf = dpm_strdup(text);
  /* comments: '#' to end of line */
  for (char *c = buf; *c; c++)
    if (*c == '#')
      while (*c && *c != '\n') *c++ = ' ';
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
  if (rc) {
    dpm_free(out);
    return -1;
  }
  *specs = out;
  *n = count;
  return 0;
}

/* ---- create ----------------------------------------------------------------------------------- */

static void *carve(char *base, size_t *cur, size_t bytes) {
  size_t off = *cur;
  *cur += (bytes + 63) / 64 * 64;
  return base ? base + off : NULL;
}

static int conv_pick_explicit(const layer *l, int max_batch) {
  /* multiply-adds per example: ghost = Gram norms + weighted GEMM for the sum; explicit = per-example
   * GEMM + writing and re-reading the rows (memory traffic, weighted) */
  double T = l->T, CK = l->CK, O = l->s.out;
  /* the Gram products run in double (dpm_conv_sqnorms_ghost): twice the cost of float */
  double ghost = 2 * T * T * (CK + O + 1) + T * O * CK;
  double expl = T * O * CK + 8.0 * (O * CK + O);
  size_t bytes = (size_t)max_batch * (l->wsize + l->bsize) * sizeof(float);
  return expl <= ghost && bytes <= EXPLICIT_MAX_BYTES;
}

/* Place every buffer (base NULL: only measure). Returns the arena size in bytes. */
static size_t layout(dpm_model *m, char *base) {
  size_t cur = 0, scratch = 0, ghost = 0, row = 0;
  const size_t B = (size_t)m->max_batch, F = sizeof(float);
  m->x = carve(base, &cur, B * m->in_n * F);
  m->dx = carve(base, &cur, B * m->in_n * F);
  m->y = carve(base, &cur, B * sizeof(int32_t));
  for (int i = 0; i < m->n; i++) {
    layer *l = &m->L[i];
    float *prev_out = i ? m->L[i - 1].out : m->x, *prev_dout = i ? m->L[i - 1].dout : m->dx;
    if (l->s.kind == DPM_LAYER_FLATTEN) {
      l->out = prev_out;
      l->dout = prev_dout;
      continue;
    }
    l->out = carve(base, &cur, B * l->out_n * F);
    l->dout = carve(base, &cur, B * l->out_n * F);
    switch (l->s.kind) {
      case DPM_LAYER_DENSE:
        if (B * l->s.out > scratch) scratch = B * l->s.out;
        if (l->in_n > row) row = l->in_n;
        break;
      case DPM_LAYER_CONV2D: {
        size_t bt = B * l->T;
        l->P = carve(base, &cur, bt * l->CK * F);
        l->G = carve(base, &cur, bt * l->s.out * F);
        if (bt * l->s.out > scratch) scratch = bt * l->s.out;
        if (bt * l->CK > scratch) scratch = bt * l->CK;
        const size_t gh = (size_t)l->T * (2 * (size_t)l->T + (size_t)l->CK + (size_t)l->s.out);
        if (gh > ghost) ghost = gh;
        const size_t rw = (size_t)l->T * l->CK + (size_t)l->s.out * ((size_t)l->CK + 1);
        if (rw > row) row = rw;
        l->gsq = carve(base, &cur, B * sizeof(double));
        l->ill = carve(base, &cur, B);
        if (l->explicit_ && !l->E_owned) l->E = carve(base, &cur, B * (l->wsize + l->bsize) * F);
        break;
      }
      case DPM_LAYER_GROUPNORM:
        l->E = carve(base, &cur, B * 2 * l->C * F);
        l->xhat = carve(base, &cur, B * l->out_n * F);
        l->rstd = carve(base, &cur, B * l->s.groups * F);
        break;
      case DPM_LAYER_MAXPOOL:
        l->argmax = carve(base, &cur, B * l->out_n * sizeof(int32_t));
        break;
      default:
        break;
    }
  }
  const layer *last = &m->L[m->n - 1];
  m->probs = carve(base, &cur, (m->has_loss ? B * last->out_n : 0) * F);
  m->scratch = carve(base, &cur, scratch * F);
  m->ghost = carve(base, &cur, ghost * sizeof(double));
  m->row = carve(base, &cur, row * F);
  return cur;
}

dpm_model *dpm_model_create(const dpm_layer_spec *specs, int n, int C, int H, int W, int n_classes,
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
    const char *name = kind_name(l->s.kind);
    const dpm_layer_spec *s = &l->s;
    switch (s->kind) {
      case DPM_LAYER_DENSE:
        if (s->out < 1) goto bad_out;
        l->OC = s->out, l->OH = 1, l->OW = 1;
        l->wsize = (size_t)s->out * l->in_n;
        l->bsize = s->bias ? (size_t)s->out : 0;
        break;
      case DPM_LAYER_CONV2D:
      case DPM_LAYER_MAXPOOL:
      case DPM_LAYER_AVGPOOL: {
        int pad = s->kind == DPM_LAYER_CONV2D ? s->pad : 0;
        if (s->kind == DPM_LAYER_CONV2D && s->out < 1) goto bad_out;
        if (s->kernel < 1 || s->stride < 1 || pad < 0) {
          dpm_err(err, "layer %d (%s): kernel and stride must be positive and pad >= 0", i + 1, name);
          goto fail;
        }
        if (s->kind != DPM_LAYER_CONV2D && s->pad != 0) {
          dpm_err(err, "layer %d (%s): padding is not supported for pooling", i + 1, name);
          goto fail;
        }
        if (h + 2 * pad < s->kernel || w + 2 * pad < s->kernel) {
          dpm_err(err, "layer %d (%s): kernel %d is larger than its %dx%d input (pad %d)", i + 1, name, s->kernel,
                  h, w, pad);
          goto fail;
        }
        l->OH = (h + 2 * pad - s->kernel) / s->stride + 1;
        l->OW = (w + 2 * pad - s->kernel) / s->stride + 1;
        l->OC = s->kind == DPM_LAYER_CONV2D ? s->out : c;
        if (s->kind == DPM_LAYER_CONV2D) {
          l->T = l->OH * l->OW;
          l->CK = c * s->kernel * s->kernel;
          l->wsize = (size_t)s->out * l->CK;
          l->bsize = s->bias ? (size_t)s->out : 0;
          if ((double)max_batch * l->T * ((double)l->CK + s->out) > (double)INT_MAX) {
            dpm_err(err, "layer %d (conv): batch %d x %d positions x %d patch values is too large", i + 1,
                    max_batch, l->T, l->CK);
            goto fail;
          }
        }
        break;
      }
      case DPM_LAYER_GROUPNORM:
        if (s->groups < 1 || c % s->groups != 0) {
          dpm_err(err, "layer %d (groupnorm): groups=%d does not divide its %d channels", i + 1, s->groups, c);
          goto fail;
        }
        l->OC = c, l->OH = h, l->OW = w;
        l->wsize = (size_t)c, l->bsize = (size_t)c;
        break;
      case DPM_LAYER_FLATTEN:
        l->OC = c * h * w, l->OH = 1, l->OW = 1;
        break;
      default:
        l->OC = c, l->OH = h, l->OW = w;
        break;
    }
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
    continue;
  bad_out:
    dpm_err(err, "layer %d (%s): missing out=", i + 1, name);
    goto fail;
  }
  if (m->has_loss && m->L[n - 1].out_n != (size_t)n_classes) {
    dpm_err(err, "layer %d (%s): outputs %zu values but the data has %d classes", n,
            kind_name(m->L[n - 1].s.kind), m->L[n - 1].out_n, n_classes);
    goto fail;
  }
  /* explicit conv gradients when cheaper and the kept rows fit the memory cap */
  size_t explicit_bytes = 0;
  for (int i = 0; i < n; i++) {
    layer *l = &m->L[i];
    if (l->s.kind != DPM_LAYER_CONV2D || !conv_pick_explicit(l, max_batch)) continue;
    size_t bytes = (size_t)max_batch * (l->wsize + l->bsize) * sizeof(float);
    if (explicit_bytes + bytes > EXPLICIT_MAX_BYTES) continue;
    explicit_bytes += bytes;
    l->explicit_ = 1;
  }
  m->nparams = np;
  m->params = dpm_malloc_aligned(np * sizeof(float));
  m->grads = dpm_malloc_aligned(np * sizeof(float));
  memset(m->params, 0, np * sizeof(float));
  memset(m->grads, 0, np * sizeof(float));
  m->arena = dpm_malloc_aligned(layout(m, NULL));
  layout(m, m->arena);
  return m;
fail:
  dpm_free(m->group_layer);
  dpm_free(m->L);
  dpm_free(m);
  return NULL;
}

void dpm_model_free(dpm_model *m) {
  if (!m) return;
  for (int i = 0; i < m->n; i++)
    if (m->L[i].E_owned) dpm_free(m->L[i].E);
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
    switch (s->kind) {
      case DPM_LAYER_DENSE: snprintf(args, sizeof args, " out=%d%s", s->out, s->bias ? "" : " bias=0"); break;
      case DPM_LAYER_CONV2D:
        snprintf(args, sizeof args, " out=%d kernel=%d stride=%d pad=%d%s [%s norms]", s->out, s->kernel, s->stride,
                 s->pad, s->bias ? "" : " bias=0", l->explicit_ ? "explicit" : "ghost");
        break;
      case DPM_LAYER_MAXPOOL:
      case DPM_LAYER_AVGPOOL: snprintf(args, sizeof args, " kernel=%d stride=%d", s->kernel, s->stride); break;
      case DPM_LAYER_GROUPNORM: snprintf(args, sizeof args, " groups=%d", s->groups); break;
      default: break;
    }
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
  if (l->s.kind != DPM_LAYER_CONV2D) return;
  int want = method == DPM_NORM_EXPLICIT ? 1 : method == DPM_NORM_GHOST ? 0 : conv_pick_explicit(l, m->max_batch);
  if (want && !l->E) {
    l->E = dpm_malloc_aligned((size_t)m->max_batch * (l->wsize + l->bsize) * sizeof(float));
    l->E_owned = 1;
  }
  l->explicit_ = want;
  l->E_ready = 0;
}

dpm_norm_method dpm_model_norm_method(const dpm_model *m, int g) {
  DPM_ASSERT(g >= 0 && g < m->ngroups);
  const layer *l = &m->L[m->group_layer[g]];
  if (l->s.kind == DPM_LAYER_CONV2D) return l->explicit_ ? DPM_NORM_EXPLICIT : DPM_NORM_GHOST;
  return l->s.kind == DPM_LAYER_GROUPNORM ? DPM_NORM_EXPLICIT : DPM_NORM_GHOST;
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
  for (int g = 0; g < owner->ngroups; g++) {
    const layer *l = &owner->L[owner->group_layer[g]];
    if (l->s.kind == DPM_LAYER_CONV2D && l->explicit_ != m->L[owner->group_layer[g]].explicit_)
      dpm_model_set_norm_method(m, g, l->explicit_ ? DPM_NORM_EXPLICIT : DPM_NORM_GHOST);
  }
  m->layer0 = owner->layer0;
  m->input_grad = owner->input_grad;
  dpm_free(m->params);
  dpm_free(m->grads);
  m->params = owner->params;
  m->grads = owner->grads;
  m->params_owned = 0;
  return m;
}

void dpm_model_set_first_layer(dpm_model *m, int layer0) { m->layer0 = layer0; }
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
  if (l->s.kind == DPM_LAYER_DENSE) {
    info->wrank = 2, info->wdims[0] = l->s.out, info->wdims[1] = (int)l->in_n;
  } else if (l->s.kind == DPM_LAYER_CONV2D) {
    info->wrank = 4, info->wdims[0] = l->s.out, info->wdims[1] = l->C, info->wdims[2] = info->wdims[3] = l->s.kernel;
  } else if (l->s.kind == DPM_LAYER_GROUPNORM) {
    info->wrank = 1, info->wdims[0] = l->C;
  }
  /* multiply-adds per example of forward + backward + the clipped sum (the training step's work) */
  switch (l->s.kind) {
    case DPM_LAYER_DENSE: info->cost = 3.0 * (double)l->wsize; break;
    case DPM_LAYER_CONV2D: info->cost = 3.0 * (double)l->T * l->CK * l->s.out; break;
    case DPM_LAYER_FLATTEN: info->cost = 0; break;
    default: info->cost = 4.0 * (double)(l->in_n > l->out_n ? l->in_n : l->out_n); break;
  }
}
const float *dpm_model_input_grad(const dpm_model *m) { return m->dx; }

/* ---- init ------------------------------------------------------------------------------------- */

static void fill_uniform(float *p, size_t n, size_t j0, float bound, const dpm_key *key, int layer_num) {
  uint64_t out[4];
  uint64_t block = UINT64_MAX;
  for (size_t k = 0; k < n; k++) {
    uint64_t j = j0 + k;
    if (j / 4 != block) {
      block = j / 4;
      uint64_t ctr[4] = {block, (uint64_t)layer_num, DPM_STREAM_INIT, 0};
      dpm_philox(key, ctr, out);
    }
    p[k] = (float)((2.0 * dpm_u01(out[j % 4]) - 1.0) * bound);
  }
}

void dpm_model_init_params(dpm_model *m, const dpm_key *key) {
  for (int i = 0; i < m->n; i++) {
    layer *l = &m->L[i];
    float *p = m->params + l->poff;
    if (l->s.kind == DPM_LAYER_DENSE || l->s.kind == DPM_LAYER_CONV2D) {
      size_t fan_in = l->s.kind == DPM_LAYER_DENSE ? l->in_n : (size_t)l->CK;
      float bound = (float)(1.0 / sqrt((double)fan_in));
      fill_uniform(p, l->wsize, 0, bound, key, m->layer0 + i);
      fill_uniform(p + l->wsize, l->bsize, l->wsize, bound, key, m->layer0 + i);
    } else if (l->s.kind == DPM_LAYER_GROUPNORM) {
      for (size_t k = 0; k < l->wsize; k++) p[k] = 1.0f;
      memset(p + l->wsize, 0, l->bsize * sizeof(float));
    }
  }
}

/* ---- forward / backward / accumulate ---------------------------------------------------------- */

double dpm_model_forward(dpm_model *m, const float *x, const int32_t *y, int B, int *n_correct) {
  DPM_ASSERT(B >= 1 && B <= m->max_batch);
  m->B = B;
  m->backward_done = 0;
  memcpy(m->x, x, (size_t)B * m->in_n * sizeof(float));
  for (int i = 0; i < m->n; i++) {
    layer *l = &m->L[i];
    const dpm_layer_spec *s = &l->s;
    const float *in = i ? m->L[i - 1].out : m->x;
    const float *w = m->params + l->poff, *b = l->bsize ? w + l->wsize : NULL;
    l->E_ready = 0;
    l->gsq_ready = 0;
    switch (s->kind) {
      case DPM_LAYER_DENSE: dpm_dense_forward(l->out, in, w, b, B, (int)l->in_n, s->out); break;
      case DPM_LAYER_CONV2D:
        dpm_conv_forward(l->out, l->P, m->scratch, in, w, b, B, l->C, l->H, l->W, s->out, s->kernel, s->stride,
                         s->pad, l->OH, l->OW);
        break;
      case DPM_LAYER_MAXPOOL:
        dpm_maxpool_forward(l->out, l->argmax, in, B, l->C, l->H, l->W, s->kernel, s->stride, l->OH, l->OW);
        break;
      case DPM_LAYER_AVGPOOL:
        dpm_avgpool_forward(l->out, in, B, l->C, l->H, l->W, s->kernel, s->stride, l->OH, l->OW);
        break;
      case DPM_LAYER_RELU: dpm_relu_forward(l->out, in, (size_t)B * l->out_n); break;
      case DPM_LAYER_TANH: dpm_tanh_forward(l->out, in, (size_t)B * l->out_n); break;
      case DPM_LAYER_GROUPNORM:
        dpm_groupnorm_forward(l->out, l->xhat, l->rstd, in, w, w + l->wsize, B, l->C, l->H * l->W, s->groups, GN_EPS);
        break;
      case DPM_LAYER_FLATTEN: break;
    }
  }
  const float *logits = m->L[m->n - 1].out;
  m->have_labels = y != NULL;
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
  return dpm_softmax_xent_forward(m->probs, logits, m->y, B, m->n_classes, n_correct);
}

static void backward_layers(dpm_model *m, double *sqnorms);

void dpm_model_backward(dpm_model *m, double *sqnorms) {
  DPM_ASSERT(m->has_loss && m->have_labels);
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
    const dpm_layer_spec *s = &l->s;
    const float *in = i ? m->L[i - 1].out : m->x;
    const float *w = m->params + l->poff;
    /* the input gradient is needed if some earlier layer has parameters, or the caller asked */
    const int need_dx = m->input_grad || (m->first_param >= 0 && m->first_param < i);
    float *dx = need_dx ? (i ? m->L[i - 1].dout : m->dx) : NULL;
    double *sq = (sqnorms && l->group >= 0) ? sqnorms + (size_t)l->group * B : NULL;
    const size_t n = (size_t)B * l->out_n;
    switch (s->kind) {
      case DPM_LAYER_DENSE:
        if (sq) dpm_dense_sqnorms(sq, in, l->dout, s->bias, B, (int)l->in_n, s->out);
        if (dx) dpm_dense_backward_input(dx, l->dout, w, B, (int)l->in_n, s->out);
        break;
      case DPM_LAYER_CONV2D:
        dpm_conv_backward(dx, l->G, m->scratch, l->dout, w, B, l->C, l->H, l->W, s->out, s->kernel, s->stride,
                          s->pad, l->OH, l->OW);
        if (sq && l->explicit_) {
          dpm_conv_grads_explicit(l->E, sq, l->P, l->G, s->bias, B, l->T, l->CK, s->out);
          l->E_ready = 1;
        } else if (sq) {
          dpm_conv_sqnorms_ghost(sq, l->ill, l->P, l->G, s->bias, m->ghost, B, l->T, l->CK, s->out);
          memcpy(l->gsq, sq, (size_t)B * sizeof(double));
          l->gsq_ready = 1;
        }
        break;
      case DPM_LAYER_MAXPOOL:
        if (dx) dpm_maxpool_backward(dx, l->dout, l->argmax, B, l->C, l->H, l->W, l->OH, l->OW);
        break;
      case DPM_LAYER_AVGPOOL:
        if (dx) dpm_avgpool_backward(dx, l->dout, B, l->C, l->H, l->W, s->kernel, s->stride, l->OH, l->OW);
        break;
      case DPM_LAYER_RELU:
        if (dx) dpm_relu_backward(dx, l->dout, l->out, n);
        break;
      case DPM_LAYER_TANH:
        if (dx) dpm_tanh_backward(dx, l->dout, l->out, n);
        break;
      case DPM_LAYER_GROUPNORM:
        dpm_groupnorm_backward(dx, l->E, l->dout, l->xhat, l->rstd, w, B, l->C, l->H * l->W, s->groups);
        if (sq) dpm_rows_sqnorm(sq, l->E, B, (size_t)2 * l->C);
        break;
      case DPM_LAYER_FLATTEN: break; /* dout aliases the previous layer's */
    }
  }
  m->backward_done = 1;
}

void dpm_model_accumulate(dpm_model *m, const float *coef) {
  DPM_ASSERT(m->backward_done);
  const int B = m->B;
  for (int g = 0; g < m->ngroups; g++) {
    const int i = m->group_layer[g];
    layer *l = &m->L[i];
    const dpm_layer_spec *s = &l->s;
    const float *c = coef ? coef + (size_t)g * B : NULL;
    float *dw = m->grads + l->poff, *db = l->bsize ? dw + l->wsize : NULL;
    switch (s->kind) {
      case DPM_LAYER_DENSE:
        dpm_dense_accumulate(dw, db, i ? m->L[i - 1].out : m->x, l->dout, c, m->scratch, m->row, B, (int)l->in_n,
                             s->out);
        break;
      case DPM_LAYER_CONV2D:
        if (l->E_ready)
          dpm_rows_accumulate(dw, l->E, c, B, l->wsize + l->bsize);
        else
          dpm_conv_accumulate(dw, db, l->P, l->G, c, l->gsq_ready ? l->gsq : NULL, l->gsq_ready ? l->ill : NULL,
                              m->scratch, m->row, B, l->T, l->CK, s->out);
        break;
      case DPM_LAYER_GROUPNORM: dpm_rows_accumulate(dw, l->E, c, B, l->wsize + l->bsize); break;
      default: DPM_ASSERT(0);
    }
  }
}
