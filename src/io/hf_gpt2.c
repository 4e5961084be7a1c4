/* dpmpi Hugging Face GPT-2 (include/dpmpi/io/hf_gpt2.h): config.json in and out (libcjson), the canonical
 * tensor list a config implies, matching a safetensors file's tensors against it (prefixes, buffers, the tied
 * LM head, every shape), the initial-weights file INIT.h5 (serial HDF5, rank 0), and the export of a named
 * tensor list back to safetensors + config.json. */
#include "dpmpi/io/hf_gpt2.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/atomic.h"
#include "dpmpi/nn/model.h"
#include "io/h5util.h"

#define INIT_FORMAT "dpmpi-init"
#define INIT_FORMAT_VERSION 1
#define LN_EPS 1e-5
/* Largest size accepted for V, T, C, H, L: what 32-bit BLAS indices and int shapes allow. */
#define HF_MAX_DIM 2147483647.0

/* --- config.json -------------------------------------------------------------------------------------- */

int dpm_hf_gpt2_check_config(const dpm_hf_gpt2_config *c, const char *where, char err[DPM_ERRLEN]) {
  const struct {
    const char *key;
    int64_t v;
  } sizes[] = {{"vocab_size", c->vocab_size}, {"n_positions", c->n_positions}, {"n_embd", c->n_embd},
               {"n_head", c->n_head}, {"n_layer", c->n_layer}};
  for (int i = 0; i < 5; i++)
    if (sizes[i].v < 1 || sizes[i].v > HF_MAX_DIM)
      return dpm_err(err, "%s: %s = %lld, expected a positive integer below 2^31", where, sizes[i].key,
                     (long long)sizes[i].v);
  if (c->n_embd % c->n_head)
    return dpm_err(err, "%s: n_embd = %lld is not a multiple of n_head = %lld", where, (long long)c->n_embd,
                   (long long)c->n_head);
  const double C = (double)c->n_embd, big = (double)c->vocab_size > (double)c->n_positions ? (double)c->vocab_size
                                                                                          : (double)c->n_positions;
  if (big * C > HF_MAX_DIM || 4 * C * C > HF_MAX_DIM) /* every tensor's elements must fit an int */
    return dpm_err(err, "%s: n_embd = %lld with vocab_size = %lld, n_positions = %lld: tensors beyond 2^31 elements",
                   where, (long long)c->n_embd, (long long)c->vocab_size, (long long)c->n_positions);
  if (!(fabs(c->layer_norm_epsilon - LN_EPS) <= 1e-12 * LN_EPS))
    return dpm_err(err, "%s: layer_norm_epsilon = %g, expected 1e-05 (the LayerNorm dpmpi implements)", where,
                   c->layer_norm_epsilon);
  if (c->tie_word_embeddings != 0 && c->tie_word_embeddings != 1)
    return dpm_err(err, "%s: tie_word_embeddings must be true or false", where);
  return 0;
}

static int get_size(const char *path, const cJSON *root, const char *key, int64_t *v, int required, char *err) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
  if (!j) return required ? dpm_err(err, "%s: missing key \"%s\" (a positive integer)", path, key) : 1;
  double d = cJSON_IsNumber(j) ? j->valuedouble : -1;
  if (!(d >= 1 && d <= HF_MAX_DIM) || d != floor(d))
    return dpm_err(err, "%s: \"%s\" must be a positive integer below 2^31", path, key);
  *v = (int64_t)d;
  return 0;
}

/* A key that may be absent; present it must be the boolean want. */
static int want_bool(const char *path, const cJSON *root, const char *key, int want, char *err) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
  if (!j) return 0;
  if (!cJSON_IsBool(j) || cJSON_IsTrue(j) != want)
    return dpm_err(err, "%s: \"%s\" must be %s (the GPT-2 dpmpi implements)", path, key, want ? "true" : "false");
  return 0;
}

int dpm_hf_gpt2_read_config(const char *path, dpm_hf_gpt2_config *c, char err[DPM_ERRLEN]) {
  memset(c, 0, sizeof *c);
  FILE *fp = fopen(path, "rb");
  if (!fp) return dpm_err(err, "%s: cannot open: %s", path, strerror(errno));
  char *text = NULL;
  size_t len = 0, cap = 0, got;
  do {
    if (len + 65536 > cap) text = dpm_realloc(text, cap = 2 * cap + 65536);
    got = fread(text + len, 1, cap - len - 1, fp);
    len += got;
  } while (got > 0 && len < ((size_t)16 << 20));
  fclose(fp);
  text[len] = 0;
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
  int rc = -1;
  if (!root) {
    dpm_err(err, "%s: invalid JSON (near byte %zu)", path, end ? (size_t)(end - text) : (size_t)0);
    goto done;
  }
  for (const char *p = end; p < text + len; p++)
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
      dpm_err(err, "%s: invalid JSON: text after the object at byte %zu", path, (size_t)(p - text));
      goto done;
    }
  if (!cJSON_IsObject(root)) {
    dpm_err(err, "%s: not a JSON object (a Hugging Face config.json)", path);
    goto done;
  }
  const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
  if (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "gpt2"))) {
    dpm_err(err, "%s: model_type is %s, expected \"gpt2\"", path, cJSON_IsString(mt) ? mt->valuestring : "not a string");
    goto done;
  }
  if (get_size(path, root, "vocab_size", &c->vocab_size, 1, err) || get_size(path, root, "n_embd", &c->n_embd, 1, err) ||
      get_size(path, root, "n_head", &c->n_head, 1, err) || get_size(path, root, "n_layer", &c->n_layer, 1, err))
    goto done;
  int64_t npos = 0, nctx = 0;
  int has_pos = get_size(path, root, "n_positions", &npos, 0, err), has_ctx;
  if (has_pos < 0) goto done;
  has_ctx = get_size(path, root, "n_ctx", &nctx, 0, err);
  if (has_ctx < 0) goto done;
  if (has_pos == 1 && has_ctx == 1) {
    dpm_err(err, "%s: missing key \"n_positions\" (or \"n_ctx\"): the context length", path);
    goto done;
  }
  if (has_pos == 0 && has_ctx == 0 && npos != nctx) {
    dpm_err(err, "%s: n_positions = %lld and n_ctx = %lld differ (expected one context length)", path,
            (long long)npos, (long long)nctx);
    goto done;
  }
  c->n_positions = has_pos == 0 ? npos : nctx;
  const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
  if (eps && !cJSON_IsNumber(eps)) {
    dpm_err(err, "%s: \"layer_norm_epsilon\" must be a number (1e-05)", path);
    goto done;
  }
  c->layer_norm_epsilon = eps ? eps->valuedouble : LN_EPS;
  const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
  if (tie && !cJSON_IsBool(tie)) {
    dpm_err(err, "%s: \"tie_word_embeddings\" must be true or false", path);
    goto done;
  }
  c->tie_word_embeddings = tie ? cJSON_IsTrue(tie) : 1;
  const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
  if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "gelu_new"))) {
    dpm_err(err, "%s: activation_function is %s, expected \"gelu_new\" (GELU, tanh approximation)", path,
            cJSON_IsString(act) ? act->valuestring : "not a string");
    goto done;
  }
  const cJSON *inner = cJSON_GetObjectItemCaseSensitive(root, "n_inner");
  if (inner && !cJSON_IsNull(inner) && !(cJSON_IsNumber(inner) && inner->valuedouble == 4.0 * (double)c->n_embd)) {
    dpm_err(err, "%s: n_inner must be null or 4 n_embd = %lld (the MLP width dpmpi implements)", path,
            (long long)(4 * c->n_embd));
    goto done;
  }
  if (want_bool(path, root, "scale_attn_weights", 1, err) ||
      want_bool(path, root, "scale_attn_by_inverse_layer_idx", 0, err) ||
      want_bool(path, root, "add_cross_attention", 0, err) || dpm_hf_gpt2_check_config(c, path, err))
    goto done;
  rc = 0;
done:
  cJSON_Delete(root);
  dpm_free(text);
  return rc;
}

static int write_json(const char *path, cJSON *root, char *err);

int dpm_hf_gpt2_write_config(const char *path, const dpm_hf_gpt2_config *c, char err[DPM_ERRLEN]) {
  cJSON *root = cJSON_CreateObject(), *arch = cJSON_AddArrayToObject(root, "architectures");
  cJSON_AddItemToArray(arch, cJSON_CreateString("GPT2LMHeadModel"));
  cJSON_AddStringToObject(root, "model_type", "gpt2");
  cJSON_AddNumberToObject(root, "vocab_size", (double)c->vocab_size);
  cJSON_AddNumberToObject(root, "n_positions", (double)c->n_positions);
  cJSON_AddNumberToObject(root, "n_ctx", (double)c->n_positions);
  cJSON_AddNumberToObject(root, "n_embd", (double)c->n_embd);
  cJSON_AddNumberToObject(root, "n_head", (double)c->n_head);
  cJSON_AddNumberToObject(root, "n_layer", (double)c->n_layer);
  cJSON_AddNumberToObject(root, "layer_norm_epsilon", c->layer_norm_epsilon);
  cJSON_AddStringToObject(root, "activation_function", "gelu_new");
  cJSON_AddBoolToObject(root, "tie_word_embeddings", c->tie_word_embeddings);
  return write_json(path, root, err);
}

/* root (deleted) as the JSON file path, under PATH.tmp renamed into place */
static int write_json(const char *path, cJSON *root, char *err) {
  char *text = cJSON_Print(root);
  cJSON_Delete(root);
  char *tmp = dpm_atomic_tmp_name(path);
  int rc = -1;
  FILE *fp = fopen(tmp, "wb");
  if (!fp) {
    dpm_err(err, "%s: cannot create: %s", tmp, strerror(errno));
  } else {
    int ok = fputs(text, fp) >= 0 && fputc('\n', fp) != EOF;
    if (fclose(fp) || !ok) {
      dpm_err(err, "%s: write error: %s", tmp, strerror(errno));
      unlink(tmp);
    } else if (dpm_atomic_commit(tmp, path)) {
      dpm_err(err, "%s: cannot put the file in place: %s", path, strerror(errno));
    } else {
      rc = 0;
    }
  }
  cJSON_free(text);
  dpm_free(tmp);
  return rc;
}

/* --- the canonical tensor list ------------------------------------------------------------------------ */

/* The 16 tensors of a block, in order: name suffix, shape in units of C (0: absent dimension). */
static const struct {
  const char *suffix;
  int d0, d1; /* multiples of C; d1 = 0 for a vector */
} BLOCK[] = {{"ln_1.weight", 1, 0},        {"ln_1.bias", 1, 0},       {"attn.c_attn.weight", 1, 3},
             {"attn.c_attn.bias", 3, 0},   {"attn.c_proj.weight", 1, 1}, {"attn.c_proj.bias", 1, 0},
             {"ln_2.weight", 1, 0},        {"ln_2.bias", 1, 0},       {"mlp.c_fc.weight", 1, 4},
             {"mlp.c_fc.bias", 4, 0},      {"mlp.c_proj.weight", 4, 1}, {"mlp.c_proj.bias", 1, 0}};
#define BLOCK_N ((int)(sizeof BLOCK / sizeof BLOCK[0]))

int dpm_hf_gpt2_num_tensors(const dpm_hf_gpt2_config *c) {
  return 2 + BLOCK_N * (int)c->n_layer + 2 + !c->tie_word_embeddings;
}

int dpm_hf_gpt2_tensor(const dpm_hf_gpt2_config *c, int k, char *name, size_t len, int64_t shape[2]) {
  const int64_t C = c->n_embd, nb = BLOCK_N * c->n_layer;
  DPM_ASSERT(k >= 0 && k < dpm_hf_gpt2_num_tensors(c));
  if (k < 2) {
    snprintf(name, len, "%s", k == 0 ? "wte.weight" : "wpe.weight");
    shape[0] = k == 0 ? c->vocab_size : c->n_positions, shape[1] = C;
    return 2;
  }
  k -= 2;
  if (k < nb) {
    int j = k % BLOCK_N;
    snprintf(name, len, "h.%d.%s", k / BLOCK_N, BLOCK[j].suffix);
    shape[0] = BLOCK[j].d0 * C, shape[1] = BLOCK[j].d1 * C;
    return BLOCK[j].d1 ? 2 : 1;
  }
  k -= (int)nb;
  if (k < 2) {
    snprintf(name, len, "%s", k == 0 ? "ln_f.weight" : "ln_f.bias");
    shape[0] = C, shape[1] = 0;
    return 1;
  }
  snprintf(name, len, "lm_head.weight");
  shape[0] = c->vocab_size, shape[1] = C;
  return 2;
}

static void fmt_shape(int rank, const int64_t *shape, char *out, size_t len) {
  size_t k = (size_t)snprintf(out, len, "[");
  for (int i = 0; i < rank && k < len; i++) k += (size_t)snprintf(out + k, len - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (k < len) snprintf(out + k, len - k, "]");
}

/* 1 if name is the attention buffer h.l.attn.bias or h.l.attn.masked_bias of a block l < L. */
static int is_buffer(const char *name, int64_t L) {
  int l, n = -1;
  char canon[64];
  if (sscanf(name, "h.%d.attn.%n", &l, &n) != 1 || n < 0 || l < 0 || l >= L) return 0;
  if (strcmp(name + n, "bias") && strcmp(name + n, "masked_bias")) return 0;
  snprintf(canon, sizeof canon, "h.%d.attn.%s", l, name + n);
  return !strcmp(canon, name); /* no "h.01." */
}

int dpm_hf_gpt2_match(const dpm_hf_gpt2_config *c, const char *cfg_path, const dpm_st_file *f, const char *st_path,
                      const dpm_st_tensor **out, char err[DPM_ERRLEN]) {
  const int n = dpm_hf_gpt2_num_tensors(c);
  for (int k = 0; k < n; k++) out[k] = NULL;
  const dpm_st_tensor *lm_head = NULL;
  char name[128];
  int64_t shape[2];
  for (int i = 0; i < f->n; i++) {
    const dpm_st_tensor *t = &f->t[i];
    const char *base = strncmp(t->name, "transformer.", 12) ? t->name : t->name + 12;
    if (is_buffer(base, c->n_layer)) continue;
    int k = -1;
    for (int j = 0; j < n && k < 0; j++) {
      dpm_hf_gpt2_tensor(c, j, name, sizeof name, shape);
      if (!strcmp(name, base)) k = j;
    }
    if (k < 0 && !strcmp(base, "lm_head.weight") && c->tie_word_embeddings) {
      if (lm_head) return dpm_err(err, "%s: tensor '%s': lm_head.weight appears twice", st_path, t->name);
      lm_head = t;
      continue;
    }
    if (k < 0)
      return dpm_err(err, "%s: tensor '%s': not a tensor of the GPT-2 that %s describes (%lld blocks; extra or renamed?)",
                     st_path, t->name, cfg_path, (long long)c->n_layer);
    if (out[k]) return dpm_err(err, "%s: tensor '%s': given twice (as '%s' and '%s')", st_path, base, out[k]->name, t->name);
    int rank = dpm_hf_gpt2_tensor(c, k, name, sizeof name, shape);
    if (t->rank != rank || t->shape[0] != shape[0] || (rank == 2 && t->shape[1] != shape[1])) {
      char got[160], want[64];
      fmt_shape(t->rank, t->shape, got, sizeof got);
      fmt_shape(rank, shape, want, sizeof want);
      return dpm_err(err, "%s: tensor '%s': shape %s, expected %s from %s (vocab_size %lld, n_positions %lld, n_embd %lld)",
                     st_path, t->name, got, want, cfg_path, (long long)c->vocab_size, (long long)c->n_positions,
                     (long long)c->n_embd);
    }
    out[k] = t;
  }
  for (int k = 0; k < n; k++)
    if (!out[k]) {
      int rank = dpm_hf_gpt2_tensor(c, k, name, sizeof name, shape);
      char want[64];
      fmt_shape(rank, shape, want, sizeof want);
      if (!strcmp(name, "lm_head.weight"))
        return dpm_err(err, "%s: missing tensor 'lm_head.weight' %s: %s says tie_word_embeddings false (untied head)",
                       st_path, want, cfg_path);
      return dpm_err(err, "%s: missing tensor '%s' %s (the GPT-2 of %s)", st_path, name, want, cfg_path);
    }
  if (lm_head) {
    const dpm_st_tensor *wte = out[0];
    if (lm_head->rank != 2 || lm_head->shape[0] != wte->shape[0] || lm_head->shape[1] != wte->shape[1] ||
        memcmp(lm_head->data, wte->data, (size_t)wte->numel * sizeof(float)))
      return dpm_err(err, "%s: tensor '%s' differs from wte.weight, but %s says tie_word_embeddings true (set it to "
                          "false for an untied head)", st_path, lm_head->name, cfg_path);
  }
  return 0;
}

/* --- INIT.h5 ------------------------------------------------------------------------------------------ */

static const char *CFG_KEYS[] = {"vocab_size", "n_positions", "n_embd", "n_head", "n_layer"};

static int64_t *cfg_field(dpm_hf_gpt2_config *c, int i) {
  int64_t *f[] = {&c->vocab_size, &c->n_positions, &c->n_embd, &c->n_head, &c->n_layer};
  return f[i];
}

int dpm_init_write(const char *path, const dpm_hf_gpt2_config *cfg, int n, const dpm_st_tensor *const *t,
                   const char *source, char err[DPM_ERRLEN]) {
  DPM_ASSERT(n == dpm_hf_gpt2_num_tensors(cfg));
  dpm_hf_gpt2_config c = *cfg;
  char *tmp = dpm_atomic_tmp_name(path);
  int rc = 0;
  H5E_BEGIN_TRY {
    hid_t fapl = dpm_h5_fapl(NULL, 1);
    hid_t f = dpm_h5_create(tmp, fapl);
    H5Pclose(fapl);
    if (f < 0) {
      rc = dpm_err(err, "%s: cannot create", tmp);
    } else {
      const int32_t version = INIT_FORMAT_VERSION, tie = c.tie_word_embeddings;
      int bad = dpm_h5_put_str(f, "format", INIT_FORMAT) ||
                dpm_h5_put_attr(f, "format_version", H5T_STD_I32LE, H5T_NATIVE_INT32, &version) ||
                dpm_h5_put_str(f, "model_type", "gpt2") || dpm_h5_put_str(f, "source", source) ||
                dpm_h5_put_str(f, "activation_function", "gelu_new") ||
                dpm_h5_put_attr(f, "layer_norm_epsilon", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &c.layer_norm_epsilon) ||
                dpm_h5_put_attr(f, "tie_word_embeddings", H5T_STD_I32LE, H5T_NATIVE_INT32, &tie);
      for (int i = 0; i < 5; i++)
        bad = bad || dpm_h5_put_attr(f, CFG_KEYS[i], H5T_STD_I64LE, H5T_NATIVE_INT64, cfg_field(&c, i));
      hid_t g = bad ? -1 : H5Gcreate2(f, "weights", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      for (int k = 0; g >= 0 && k < n && !bad; k++) {
        char name[128];
        int64_t shape[2];
        int rank = dpm_hf_gpt2_tensor(&c, k, name, sizeof name, shape);
        DPM_ASSERT(!strcmp(t[k]->name + (strncmp(t[k]->name, "transformer.", 12) ? 0 : 12), name) && t[k]->rank == rank);
        hsize_t dims[2] = {(hsize_t)shape[0], (hsize_t)shape[1]};
        hid_t sp = H5Screate_simple(rank, dims, NULL), dcpl = dpm_h5_checked_dcpl(rank, dims, sizeof(float));
        hid_t d = H5Dcreate2(g, name, H5T_IEEE_F32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        bad = d < 0 || H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t[k]->data) < 0;
        if (d >= 0) H5Dclose(d);
        H5Pclose(dcpl);
        H5Sclose(sp);
      }
      if (g >= 0) H5Gclose(g);
      if (bad || g < 0) rc = dpm_err(err, "%s: cannot write the weights (disk full?)", tmp);
      if (H5Fclose(f) < 0 && !rc) rc = dpm_err(err, "%s: cannot close (disk full?)", tmp);
    }
  } H5E_END_TRY;
  if (rc) unlink(tmp);
  else if (dpm_atomic_commit(tmp, path)) rc = dpm_err(err, "%s: cannot put the file in place: %s", path, strerror(errno));
  dpm_free(tmp);
  return rc;
}

int dpm_init_is(const char *path) {
  int is = 0;
  H5E_BEGIN_TRY {
    if (H5Fis_hdf5(path) > 0) {
      hid_t fapl = dpm_h5_fapl(NULL, 0);
      hid_t f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
      H5Pclose(fapl);
      if (f >= 0) {
        char *fmt = dpm_h5_get_str(f, "format");
        is = fmt && !strcmp(fmt, INIT_FORMAT);
        dpm_free(fmt);
        H5Fclose(f);
      }
    }
  } H5E_END_TRY;
  return is;
}

void dpm_init_tensors_free(int n, dpm_st_tensor *t) {
  for (int k = 0; t && k < n; k++) {
    dpm_free(t[k].name);
    dpm_free(t[k].data);
  }
  dpm_free(t);
}

/* Where tensor k lives: /weights/<name> in an initial-weights file (ckpt = 0); in a checkpoint or released model
 * (ckpt = 1) /model/layer_III/<name>, layer 1 the embed, 2 .. L + 1 the blocks, L + 2 the LM head. */
static void tensor_path(const dpm_hf_gpt2_config *c, int k, const char *name, int ckpt, char *out, size_t len) {
  if (!ckpt) {
    snprintf(out, len, "/weights/%s", name);
    return;
  }
  const int nb = BLOCK_N * (int)c->n_layer, layer = k < 2 ? 1 : k - 2 < nb ? 2 + (k - 2) / BLOCK_N : (int)c->n_layer + 2;
  snprintf(out, len, "/model/layer_%03d/%s", layer, name);
}

static int read_tensors(const char *path, hid_t f, const dpm_hf_gpt2_config *c, int n, dpm_st_tensor *t, int ckpt,
                        char *err) {
  const char *top = ckpt ? "model" : "weights";
  if (H5Lexists(f, top, H5P_DEFAULT) <= 0)
    return dpm_err(err, "%s: no /%s group (not %s)", path, top, ckpt ? "a dpmpi checkpoint" : "an initial-weights file");
  int rc = 0;
  for (int k = 0; k < n && !rc; k++) {
    char name[128], want[64], got[64], dset[192];
    int64_t shape[2];
    int rank = dpm_hf_gpt2_tensor(c, k, name, sizeof name, shape);
    tensor_path(c, k, name, ckpt, dset, sizeof dset);
    t[k].name = dpm_strdup(name);
    t[k].rank = rank;
    t[k].shape[0] = shape[0], t[k].shape[1] = rank == 2 ? shape[1] : 0;
    t[k].numel = shape[0] * (rank == 2 ? shape[1] : 1);
    snprintf(t[k].dtype, sizeof t[k].dtype, "F32");
    t[k].data = dpm_malloc((size_t)t[k].numel * sizeof(float) + 1);
    hid_t d = H5Dopen2(f, dset, H5P_DEFAULT);
    if (d < 0) {
      rc = dpm_err(err, "%s: missing dataset %s", path, dset);
      break;
    }
    hid_t sp = H5Dget_space(d);
    hsize_t dims[4] = {0};
    int r = H5Sget_simple_extent_ndims(sp);
    if (r >= 1 && r <= 4) H5Sget_simple_extent_dims(sp, dims, NULL);
    H5Sclose(sp);
    if (r != rank || (int64_t)dims[0] != shape[0] || (rank == 2 && (int64_t)dims[1] != shape[1])) {
      int64_t g64[4] = {(int64_t)dims[0], (int64_t)dims[1], (int64_t)dims[2], (int64_t)dims[3]};
      fmt_shape(r < 0 ? 0 : r > 4 ? 4 : r, g64, got, sizeof got);
      fmt_shape(rank, shape, want, sizeof want);
      rc = dpm_err(err, "%s: dataset %s has shape %s, expected %s from the file's config", path, dset, got, want);
    } else if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t[k].data) < 0) {
      rc = dpm_err(err, "%s: cannot read %s (checksum failed: damaged file?)", path, dset);
    } else {
      for (int64_t i = 0; i < t[k].numel && !rc; i++)
        if (!isfinite(t[k].data[i]))
          rc = dpm_err(err, "%s: %s element %lld is not finite", path, dset, (long long)i);
    }
    H5Dclose(d);
  }
  return rc;
}

int dpm_init_read(const char *path, dpm_hf_gpt2_config *c, int *n, dpm_st_tensor **t, char err[DPM_ERRLEN]) {
  memset(c, 0, sizeof *c);
  *n = 0, *t = NULL;
  int rc = 0;
  H5E_BEGIN_TRY {
    hid_t fapl = dpm_h5_fapl(NULL, 0);
    hid_t f = H5Fis_hdf5(path) > 0 ? H5Fopen(path, H5F_ACC_RDONLY, fapl) : -1;
    H5Pclose(fapl);
    if (f < 0) {
      rc = dpm_err(err, "%s: not a readable HDF5 file (missing, truncated or damaged?)", path);
    } else {
      char *fmt = dpm_h5_get_str(f, "format");
      int32_t version = 0, tie = -1;
      if (!fmt || strcmp(fmt, INIT_FORMAT)) {
        rc = dpm_err(err, "%s: not a dpmpi initial-weights file (attribute format is %s, expected %s)", path,
                     fmt ? fmt : "missing", INIT_FORMAT);
      } else if (dpm_h5_get_attr(f, "format_version", H5T_NATIVE_INT32, &version) || version != INIT_FORMAT_VERSION) {
        rc = dpm_err(err, "%s: format_version %d, expected %d", path, (int)version, INIT_FORMAT_VERSION);
      } else {
        for (int i = 0; i < 5 && !rc; i++)
          if (dpm_h5_get_attr(f, CFG_KEYS[i], H5T_NATIVE_INT64, cfg_field(c, i)))
            rc = dpm_err(err, "%s: missing attribute %s", path, CFG_KEYS[i]);
        if (!rc && (dpm_h5_get_attr(f, "layer_norm_epsilon", H5T_NATIVE_DOUBLE, &c->layer_norm_epsilon) ||
                    dpm_h5_get_attr(f, "tie_word_embeddings", H5T_NATIVE_INT32, &tie)))
          rc = dpm_err(err, "%s: missing attribute layer_norm_epsilon or tie_word_embeddings", path);
        c->tie_word_embeddings = tie;
        if (!rc) rc = dpm_hf_gpt2_check_config(c, path, err);
        if (!rc) {
          *n = dpm_hf_gpt2_num_tensors(c);
          *t = dpm_calloc((size_t)*n, sizeof **t);
          rc = read_tensors(path, f, c, *n, *t, 0, err);
        }
      }
      dpm_free(fmt);
      H5Fclose(f);
    }
  } H5E_END_TRY;
  if (rc) {
    dpm_init_tensors_free(*n, *t);
    *n = 0, *t = NULL;
  }
  return rc;
}

/* --- export ------------------------------------------------------------------------------------------- */

int dpm_hf_gpt2_export(const char *path, const dpm_hf_gpt2_config *cfg, int n, const dpm_st_tensor *t,
                       char err[DPM_ERRLEN]) {
  if (dpm_hf_gpt2_check_config(cfg, path, err)) return -1;
  const int nt = dpm_hf_gpt2_num_tensors(cfg);
  dpm_st_tensor *ordered = dpm_calloc((size_t)nt, sizeof *ordered);
  int rc = 0;
  if (n != nt) rc = dpm_err(err, "%s: %d tensors given, the GPT-2 of this config has %d", path, n, nt);
  for (int k = 0; k < nt && !rc; k++) {
    char name[128];
    int64_t shape[2];
    int rank = dpm_hf_gpt2_tensor(cfg, k, name, sizeof name, shape), found = -1;
    for (int i = 0; i < n && found < 0; i++)
      if (!strcmp(t[i].name, name)) found = i;
    if (found < 0) {
      rc = dpm_err(err, "%s: tensor '%s' missing from the model to export", path, name);
    } else if (t[found].rank != rank || t[found].shape[0] != shape[0] || (rank == 2 && t[found].shape[1] != shape[1])) {
      char got[160], want[64];
      fmt_shape(t[found].rank, t[found].shape, got, sizeof got);
      fmt_shape(rank, shape, want, sizeof want);
      rc = dpm_err(err, "%s: tensor '%s' has shape %s, expected %s", path, name, got, want);
    } else {
      ordered[k] = t[found];
    }
  }
  char dir[4096], cfg_path[4200];
  dpm_path_dirname(path, dir, sizeof dir);
  snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
  if (!rc) rc = dpm_st_write(path, nt, ordered, err);
  if (!rc) rc = dpm_hf_gpt2_write_config(cfg_path, cfg, err);
  dpm_free(ordered);
  return rc;
}

/* --- dpmpi checkpoints and released models of a GPT --------------------------------------------------- */

int dpm_hf_gpt2_config_of_layers(const char *layers, const char *where, dpm_hf_gpt2_config *c, char err[DPM_ERRLEN]) {
  memset(c, 0, sizeof *c);
  dpm_layer_spec *s = NULL;
  int n = 0, rc = 0;
  char inner[DPM_ERRLEN];
  if (!layers || dpm_model_parse(layers, &s, &n, inner))
    return dpm_err(err, "%s: layers '%s' do not parse: %s", where, layers ? layers : "", layers ? inner : "missing");
  if (n < 3 || s[0].kind != DPM_LAYER_EMBED || s[n - 1].kind != DPM_LAYER_LM_HEAD) {
    rc = dpm_err(err, "%s: not a GPT (layers '%s'; expected embed ...; block ...; lm_head)", where, layers);
  } else {
    for (int i = 1; i < n - 1 && !rc; i++)
      if (s[i].kind != DPM_LAYER_BLOCK || s[i].heads != s[1].heads)
        rc = dpm_err(err, "%s: layer %d is not 'block heads=%d' (layers '%s'): a Hugging Face GPT-2 has blocks of "
                          "one head count between embed and lm_head", where, i + 1, s[1].heads, layers);
    c->vocab_size = s[0].vocab, c->n_positions = s[0].context, c->n_embd = s[0].width;
    c->n_head = s[1].heads, c->n_layer = n - 2, c->layer_norm_epsilon = LN_EPS, c->tie_word_embeddings = s[n - 1].tied;
    if (!rc) rc = dpm_hf_gpt2_check_config(c, where, err);
  }
  dpm_free(s);
  return rc;
}

/* --- LoRA adapters of a checkpoint's blocks ------------------------------------------------------------- */

static const char *const LORA_LIN[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
static const int LORA_IN[4] = {1, 1, 1, 4}, LORA_OUT[4] = {3, 1, 4, 1};

/* dataset dset of f, numel floats into out (finite) */
static int read_floats(hid_t f, const char *path, const char *dset, size_t numel, float *out, char *err) {
  hid_t d = H5Dopen2(f, dset, H5P_DEFAULT);
  if (d < 0) return dpm_err(err, "%s: missing dataset %s", path, dset);
  hid_t sp = H5Dget_space(d);
  const hssize_t have = H5Sget_simple_extent_npoints(sp);
  H5Sclose(sp);
  int rc = 0;
  if (have != (hssize_t)numel) rc = dpm_err(err, "%s: dataset %s holds %lld values, expected %zu", path, dset, (long long)have, numel);
  else if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0)
    rc = dpm_err(err, "%s: cannot read %s (checksum failed: damaged file?)", path, dset);
  for (size_t i = 0; i < numel && !rc; i++)
    if (!isfinite(out[i])) rc = dpm_err(err, "%s: %s element %zu is not finite", path, dset, i);
  H5Dclose(d);
  return rc;
}

/* The adapters of every block of layers (a LoRA checkpoint; none: *na = 0): merged into the base tensors t (n, the
 * canonical order: W += (alpha/r) A B in the Conv1D orientation, A [in, r], B [r, out], in double), or (t NULL)
 * returned as *na tensors *at in PEFT's orientation (lora_A.weight [r, in], lora_B.weight [out, r]). */
static int lora_tensors(hid_t f, const char *path, const char *layers, dpm_st_tensor *t, int n, int *na,
                        dpm_st_tensor **at, dpm_hf_lora *lo, char *err) {
  dpm_layer_spec *s = NULL;
  int nl = 0, rc = 0, cap = 0;
  char inner[DPM_ERRLEN];
  if (na) *na = 0, *at = NULL;
  memset(lo, 0, sizeof *lo);
  if (dpm_model_parse(layers, &s, &nl, inner)) return dpm_err(err, "%s: layers do not parse: %s", path, inner);
  for (int i = 1; i < nl - 1; i++) cap += s[i].lora ? 8 : 0;
  if (na && cap) *at = dpm_calloc((size_t)cap, sizeof **at);
  const int C = nl > 0 ? s[0].width : 0;
  for (int i = 1; i < nl - 1 && !rc; i++) {
    const int r = s[i].lora, mask = s[i].lora_targets ? s[i].lora_targets : 15;
    if (!r) continue;
    const double scale = (s[i].lora_alpha ? s[i].lora_alpha : r) / (double)r;
    lo->rank = r, lo->alpha = s[i].lora_alpha ? s[i].lora_alpha : r, lo->targets = mask;
    for (int j = 0; j < 4 && !rc; j++) {
      if (!((mask >> j) & 1)) continue;
      const int I = LORA_IN[j] * C, O = LORA_OUT[j] * C;
      float *A = dpm_malloc(sizeof(float) * (size_t)I * r), *B = dpm_malloc(sizeof(float) * (size_t)r * O);
      char da[192], db[192], wname[96];
      snprintf(da, sizeof da, "/model/layer_%03d/h.%d.%s.lora_A.weight", i + 1, i - 1, LORA_LIN[j]);
      snprintf(db, sizeof db, "/model/layer_%03d/h.%d.%s.lora_B.weight", i + 1, i - 1, LORA_LIN[j]);
      snprintf(wname, sizeof wname, "h.%d.%s.weight", i - 1, LORA_LIN[j]);
      rc = read_floats(f, path, da, (size_t)I * r, A, err);
      if (!rc) rc = read_floats(f, path, db, (size_t)r * O, B, err);
      if (!rc && t) { /* merge */
        int k = 0;
        while (k < n && strcmp(t[k].name, wname)) k++;
        if (k == n) rc = dpm_err(err, "%s: no tensor %s to merge the adapter into", path, wname);
        for (int a = 0; a < I && !rc; a++)
          for (int o = 0; o < O; o++) {
            double acc = 0;
            for (int q = 0; q < r; q++) acc += (double)A[(size_t)a * r + q] * B[(size_t)q * O + o];
            float *w = &t[k].data[(size_t)a * O + o];
            *w = (float)((double)*w + scale * acc);
          }
      }
      if (!rc && na) { /* PEFT's orientation: A^T [r, I], B^T [O, r] */
        for (int w = 0; w < 2; w++) {
          dpm_st_tensor *x = &(*at)[(*na)++];
          char nm[96];
          snprintf(nm, sizeof nm, "h.%d.%s.lora_%c.weight", i - 1, LORA_LIN[j], w ? 'B' : 'A');
          x->name = dpm_strdup(nm);
          x->rank = 2;
          x->shape[0] = w ? O : r, x->shape[1] = w ? r : I;
          x->numel = (int64_t)r * (w ? O : I);
          snprintf(x->dtype, sizeof x->dtype, "F32");
          x->data = dpm_malloc(sizeof(float) * (size_t)x->numel + 1);
          for (int a = 0; a < (w ? r : I); a++)
            for (int b = 0; b < (w ? O : r); b++)
              x->data[(size_t)b * (w ? r : I) + a] = w ? B[(size_t)a * O + b] : A[(size_t)a * r + b];
        }
      }
      dpm_free(A);
      dpm_free(B);
    }
  }
  dpm_free(s);
  return rc;
}

static int read_ckpt(const char *path, dpm_hf_gpt2_config *c, int *n, dpm_st_tensor **t, char **init_from,
                     int adapters, dpm_hf_lora *lo, char *err);

int dpm_hf_gpt2_read_ckpt(const char *path, dpm_hf_gpt2_config *c, int *n, dpm_st_tensor **t, char **init_from,
                          char err[DPM_ERRLEN]) {
  dpm_hf_lora lo;
  return read_ckpt(path, c, n, t, init_from, 0, &lo, err);
}

int dpm_hf_gpt2_read_adapters(const char *path, dpm_hf_gpt2_config *c, int *n, dpm_st_tensor **t, dpm_hf_lora *lo,
                              char err[DPM_ERRLEN]) {
  return read_ckpt(path, c, n, t, NULL, 1, lo, err);
}

static int read_ckpt(const char *path, dpm_hf_gpt2_config *c, int *n, dpm_st_tensor **t, char **init_from,
                     int adapters, dpm_hf_lora *lo, char *err) {
  memset(c, 0, sizeof *c);
  *n = 0, *t = NULL;
  if (init_from) *init_from = NULL;
  int rc = 0;
  H5E_BEGIN_TRY {
    hid_t fapl = dpm_h5_fapl(NULL, 0);
    hid_t f = H5Fis_hdf5(path) > 0 ? H5Fopen(path, H5F_ACC_RDONLY, fapl) : -1;
    H5Pclose(fapl);
    if (f < 0) {
      rc = dpm_err(err, "%s: not a dpmpi initial-weights file, checkpoint or model (not a readable HDF5 file: missing, "
                          "truncated or damaged?)", path);
    } else {
      char *fmt = dpm_h5_get_str(f, "format"), *layers = NULL;
      if (!fmt || (strcmp(fmt, "dpmpi-checkpoint") && strcmp(fmt, "dpmpi-model")))
        rc = dpm_err(err, "%s: not a dpmpi initial-weights file, checkpoint or model (attribute format is %s)", path, fmt ? fmt : "missing");
      else if (!(layers = dpm_h5_get_str(f, "layers")))
        rc = dpm_err(err, "%s: no layers attribute (damaged?)", path);
      else
        rc = dpm_hf_gpt2_config_of_layers(layers, path, c, err);
      if (!rc && adapters) {
        rc = lora_tensors(f, path, layers, NULL, 0, n, t, lo, err);
        if (!rc && *n == 0) rc = dpm_err(err, "%s: has no LoRA adapters (its layers: %s)", path, layers);
      } else if (!rc) {
        *n = dpm_hf_gpt2_num_tensors(c);
        *t = dpm_calloc((size_t)*n, sizeof **t);
        rc = read_tensors(path, f, c, *n, *t, 1, err);
        if (!rc) rc = lora_tensors(f, path, layers, *t, *n, NULL, NULL, lo, err); /* merged into the base */
      }
      if (!rc && init_from && H5Aexists(f, "init_from") > 0) *init_from = dpm_h5_get_str(f, "init_from");
      dpm_free(layers);
      dpm_free(fmt);
      H5Fclose(f);
    }
  } H5E_END_TRY;
  if (rc) {
    dpm_init_tensors_free(*n, *t);
    *n = 0, *t = NULL;
  }
  return rc;
}

int dpm_hf_gpt2_export_adapters(const char *path, int n, const dpm_st_tensor *t, const dpm_hf_lora *lo,
                                const char *source, char err[DPM_ERRLEN]) {
  int rc = dpm_st_write(path, n, t, err);
  if (rc) return rc;
  char dir[4096], cfg_path[4200];
  dpm_path_dirname(path, dir, sizeof dir);
  snprintf(cfg_path, sizeof cfg_path, "%s/adapter_config.json", dir);
  cJSON *root = cJSON_CreateObject(), *tm = cJSON_AddArrayToObject(root, "target_modules");
  cJSON_AddStringToObject(root, "peft_type", "LORA");
  cJSON_AddNumberToObject(root, "r", lo->rank);
  cJSON_AddNumberToObject(root, "lora_alpha", lo->alpha);
  cJSON_AddNumberToObject(root, "scale", (double)lo->alpha / lo->rank);
  cJSON_AddBoolToObject(root, "fan_in_fan_out", 0); /* the file's lora_A [r, in], lora_B [out, r] */
  cJSON_AddStringToObject(root, "bias", "none");
  cJSON_AddStringToObject(root, "source", source ? source : ""); /* the dpmpi checkpoint */
  for (int j = 0; j < 4; j++)
    if ((lo->targets >> j) & 1) cJSON_AddItemToArray(tm, cJSON_CreateString(LORA_LIN[j]));
  return write_json(cfg_path, root, err);
}
