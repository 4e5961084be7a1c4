/* Trainable tensors and the packed trainable vector: see dpmpi/train/trainable.h. */
#include "dpmpi/train/trainable.h"

#include <fnmatch.h>
#include <stdio.h>
#include <string.h>

/* Call f(pattern) for each pattern of the list; stops at f's first non-zero. */
static int each_pattern(const char *list, int (*f)(const char *pat, void *ctx), void *ctx) {
  if (!list) return 0;
  char pat[256];
  for (const char *p = list; *p;) {
    while (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n') p++;
    size_t n = strcspn(p, ", \t\n");
    if (n == 0) break;
    snprintf(pat, sizeof pat, "%.*s", (int)n, p);
    int rc = f(pat, ctx);
    if (rc) return rc;
    p += n;
  }
  return 0;
}

typedef struct {
  const dpm_layer_info *info;
  int n_layers;
  uint32_t *keep; /* bit t: tensor t matched some pattern */
  const char *bad;
  char badbuf[256];
} match_ctx;

static int match_one(const char *pat, void *vc) {
  match_ctx *c = vc;
  int hits = 0;
  for (int i = 0; i < c->n_layers; i++)
    for (int t = 0; t < c->info[i].n_tensors; t++)
      if (!fnmatch(pat, c->info[i].tensors[t].name, 0)) c->keep[i] |= 1u << t, hits++;
  if (hits) return 0;
  snprintf(c->badbuf, sizeof c->badbuf, "%s", pat);
  c->bad = c->badbuf;
  return 1;
}

static int count_one(const char *pat, void *vc) {
  (void)pat;
  ++*(int *)vc;
  return 0;
}

int dpm_trainable_match(const char *patterns, const char *extra, const dpm_layer_info *info, int n_layers,
                        uint32_t *masks, char err[DPM_ERRLEN]) {
  int given = 0;
  each_pattern(patterns, count_one, &given);
  match_ctx c = {.info = info, .n_layers = n_layers, .keep = masks};
  for (int i = 0; i < n_layers; i++) {
    DPM_ASSERT(info[i].n_tensors <= 32);
    masks[i] = 0;
  }
  if (!given && !extra) return 0; /* everything trains */
  if (each_pattern(patterns, match_one, &c) || each_pattern(extra, match_one, &c)) {
    char names[200] = "";
    size_t used = 0;
    for (int i = 0; i < n_layers && used < sizeof names - 40; i++)
      for (int t = 0; t < info[i].n_tensors && used < sizeof names - 40; t++)
        used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", used ? ", " : "", info[i].tensors[t].name);
    return dpm_err(err, "pattern '%s' matches no tensor of the model (its tensors: %s, ...)", c.bad, names);
  }
  for (int i = 0; i < n_layers; i++) {
    const uint32_t all = info[i].n_tensors >= 32 ? 0xffffffffu : (1u << info[i].n_tensors) - 1u;
    masks[i] = all & ~masks[i];
  }
  return 0;
}

void dpm_trainable_init(dpm_trainable *t, const dpm_layer_info *info, int first, int last, const uint32_t *masks) {
  memset(t, 0, sizeof *t);
  size_t cap = 0, off = 0;
  for (int i = first; i < last; i++) cap += (size_t)info[i].n_tensors;
  t->off = dpm_malloc(sizeof(size_t) * (cap + 1));
  t->len = dpm_malloc(sizeof(size_t) * (cap + 1));
  for (int i = first; i < last; i++) {
    for (int k = 0; k < info[i].n_tensors; k++) {
      const dpm_tensor_info *ti = &info[i].tensors[k];
      if ((masks[i] >> k) & 1u) continue;
      const size_t o = off + ti->off;
      if (t->n && t->off[t->n - 1] + t->len[t->n - 1] == o) t->len[t->n - 1] += ti->size;
      else t->off[t->n] = o, t->len[t->n] = ti->size, t->n++;
      t->total += ti->size;
    }
    off += info[i].params;
  }
  t->slab = off;
}

void dpm_trainable_free(dpm_trainable *t) {
  dpm_free(t->off);
  dpm_free(t->len);
  memset(t, 0, sizeof *t);
}

int dpm_trainable_all(const dpm_trainable *t) { return t->total == t->slab; }

void dpm_trainable_pack(const dpm_trainable *t, float *dst, const float *slab) {
  for (int r = 0; r < t->n; r++) memcpy(dst, slab + t->off[r], t->len[r] * sizeof(float)), dst += t->len[r];
}

void dpm_trainable_unpack(const dpm_trainable *t, float *slab, const float *src) {
  for (int r = 0; r < t->n; r++) memcpy(slab + t->off[r], src, t->len[r] * sizeof(float)), src += t->len[r];
}
