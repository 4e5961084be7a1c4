/* dpmpi safetensors (include/dpmpi/io/safetensors.h): reading a Hugging Face safetensors file into float32
 * tensors with every consistency check of the format (header length, JSON, dtypes, shapes, offsets that tile
 * the data section, unique names, finite values), and writing named float32 tensors as one. JSON parsing is
 * libcjson's; this file checks what cJSON does not (exact integers, duplicate keys, the header's structure).
 * Every error is one line: "FILE: tensor 'NAME': what is wrong (what was expected)". */
#include "dpmpi/io/safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/atomic.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c reads and writes little-endian data in place: a little-endian host is required"
#endif

/* Largest integer a JSON number may hold here: cJSON parses numbers as double, exact up to 2^53. */
#define ST_MAX_INT 9007199254740992.0

float dpm_st_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13); /* Inf, NaN (payload kept) */
  } else if (exp == 0) {
    float v = ldexpf((float)man, -24); /* zero and subnormals: man * 2^-24, exact in float */
    return sign ? -v : v;
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13); /* rebias 15 -> 127 */
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

float dpm_st_bf16_to_f32(uint16_t b) {
  uint32_t bits = (uint32_t)b << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

/* --- reading --------------------------------------------------------------------------------------- */

typedef enum { ST_F32, ST_F16, ST_BF16, ST_F64 } st_dtype;
static const struct {
  const char *name;
  int size;
} DTYPES[] = {{"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F64", 8}};
/* The safetensors dtypes dpmpi does not convert (named in the error, so "unknown" and "unsupported" differ). */
static const char *OTHER_DTYPES[] = {"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64",
                                     "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", NULL};

typedef struct {
  const char *name; /* in the cJSON tree */
  st_dtype dtype;
  int rank;
  int64_t shape[DPM_ST_MAXDIM];
  uint64_t numel, begin, end;
} st_entry;

/* A JSON number that is an exact non-negative integer below 2^53 into *v; 0, or -1. */
static int json_uint(const cJSON *j, uint64_t *v) {
  if (!cJSON_IsNumber(j)) return -1;
  double d = j->valuedouble;
  if (!(d >= 0 && d <= ST_MAX_INT) || d != floor(d)) return -1;
  *v = (uint64_t)d;
  return 0;
}

static int cmp_entry_name(const void *a, const void *b) {
  return strcmp(((const st_entry *)a)->name, ((const st_entry *)b)->name);
}
static int cmp_entry_begin(const void *a, const void *b) {
  const st_entry *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

static void shape_str(const st_entry *e, char *out, size_t len) {
  size_t k = (size_t)snprintf(out, len, "[");
  for (int i = 0; i < e->rank && k < len; i++) k += (size_t)snprintf(out + k, len - k, "%s%lld", i ? ", " : "", (long long)e->shape[i]);
  if (k < len) snprintf(out + k, len - k, "]");
}

/* One tensor's entry {"dtype", "shape", "data_offsets"} into *e; 0, or -1 with err. */
static int parse_entry(const char *path, const cJSON *j, st_entry *e, char *err) {
  e->name = j->string;
  if (!cJSON_IsObject(j))
    return dpm_err(err, "%s: tensor '%s': header entry is not an object (expected {\"dtype\", \"shape\", \"data_offsets\"})",
                   path, e->name);
  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(j, "dtype"), *sh = cJSON_GetObjectItemCaseSensitive(j, "shape"),
              *off = cJSON_GetObjectItemCaseSensitive(j, "data_offsets");
  if (!cJSON_IsString(dt)) return dpm_err(err, "%s: tensor '%s': missing or non-string \"dtype\"", path, e->name);
  int found = -1;
  for (int i = 0; i < (int)(sizeof DTYPES / sizeof DTYPES[0]); i++)
    if (!strcmp(dt->valuestring, DTYPES[i].name)) found = i;
  if (found < 0) {
    for (int i = 0; OTHER_DTYPES[i]; i++)
      if (!strcmp(dt->valuestring, OTHER_DTYPES[i]))
        return dpm_err(err, "%s: tensor '%s': dtype %s is not supported (expected F32, F16, BF16 or F64)", path,
                       e->name, dt->valuestring);
    return dpm_err(err, "%s: tensor '%s': unknown dtype \"%.40s\" (expected F32, F16, BF16 or F64)", path, e->name,
                   dt->valuestring);
  }
  e->dtype = (st_dtype)found;
  if (!cJSON_IsArray(sh)) return dpm_err(err, "%s: tensor '%s': missing or non-array \"shape\"", path, e->name);
  int rank = cJSON_GetArraySize(sh);
  if (rank > DPM_ST_MAXDIM)
    return dpm_err(err, "%s: tensor '%s': shape has %d dimensions (at most %d)", path, e->name, rank, DPM_ST_MAXDIM);
  e->rank = rank;
  e->numel = 1;
  int i = 0;
  for (const cJSON *d = sh->child; d; d = d->next, i++) {
    uint64_t v;
    if (json_uint(d, &v))
      return dpm_err(err, "%s: tensor '%s': shape entry %d is not a non-negative integer", path, e->name, i);
    e->shape[i] = (int64_t)v;
    if (__builtin_mul_overflow(e->numel, v, &e->numel) || e->numel > ((uint64_t)1 << 60))
      return dpm_err(err, "%s: tensor '%s': shape has too many elements", path, e->name);
  }
  if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || json_uint(off->child, &e->begin) ||
      json_uint(off->child->next, &e->end))
    return dpm_err(err, "%s: tensor '%s': \"data_offsets\" must be [begin, end], two non-negative integers", path,
                   e->name);
  if (e->end < e->begin)
    return dpm_err(err, "%s: tensor '%s': data_offsets [%llu, %llu] out of order (end before begin)", path, e->name,
                   (unsigned long long)e->begin, (unsigned long long)e->end);
  uint64_t want = e->numel * (uint64_t)DTYPES[e->dtype].size;
  if (e->end - e->begin != want) {
    char s[160];
    shape_str(e, s, sizeof s);
    return dpm_err(err, "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes, but shape %s of %s needs %llu",
                   path, e->name, (unsigned long long)e->begin, (unsigned long long)e->end,
                   (unsigned long long)(e->end - e->begin), s, DTYPES[e->dtype].name, (unsigned long long)want);
  }
  return 0;
}

/* Convert one tensor's raw bytes into out (float32), checking every value. 0, or -1 with err. */
static int convert(const char *path, const st_entry *e, const unsigned char *raw, float *out, char *err) {
  for (uint64_t i = 0; i < e->numel; i++) {
    float v;
    if (e->dtype == ST_F32) {
      memcpy(&v, raw + 4 * i, 4);
    } else if (e->dtype == ST_F16 || e->dtype == ST_BF16) {
      uint16_t h;
      memcpy(&h, raw + 2 * i, 2);
      v = e->dtype == ST_F16 ? dpm_st_f16_to_f32(h) : dpm_st_bf16_to_f32(h);
    } else {
      double d;
      memcpy(&d, raw + 8 * i, 8);
      if (isfinite(d) && fabs(d) > FLT_MAX)
        return dpm_err(err, "%s: tensor '%s': element %llu = %g is outside the float32 range (|x| <= %g)", path,
                       e->name, (unsigned long long)i, d, (double)FLT_MAX);
      v = (float)d;
    }
    if (!isfinite(v))
      return dpm_err(err, "%s: tensor '%s': element %llu is %s (weights must be finite)", path, e->name,
                     (unsigned long long)i, isnan(v) ? "NaN" : "infinite");
    out[i] = v;
  }
  return 0;
}

void dpm_st_free(dpm_st_file *f) {
  for (int i = 0; i < f->n; i++) {
    dpm_free(f->t[i].name);
    dpm_free(f->t[i].data);
  }
  dpm_free(f->t);
  dpm_free(f->format);
  memset(f, 0, sizeof *f);
}

/* The checks and the conversion, on an open file of `size` bytes. */
static int read_open(const char *path, FILE *fp, uint64_t size, dpm_st_file *f, char *err) {
  unsigned char len8[8];
  if (size < 8 || fread(len8, 1, 8, fp) != 8)
    return dpm_err(err, "%s: truncated: %llu bytes, not even the 8-byte header length of a safetensors file", path,
                   (unsigned long long)size);
  uint64_t hlen;
  memcpy(&hlen, len8, 8);
  if (hlen > DPM_ST_MAX_HEADER)
    return dpm_err(err, "%s: header length %llu is absurd (at most %llu bytes): not a safetensors file?", path,
                   (unsigned long long)hlen, (unsigned long long)DPM_ST_MAX_HEADER);
  if (hlen > size - 8)
    return dpm_err(err, "%s: header length %llu is beyond the file (%llu bytes after the length): truncated?", path,
                   (unsigned long long)hlen, (unsigned long long)(size - 8));
  if (hlen < 2) return dpm_err(err, "%s: header length %llu is too small for a JSON object", path, (unsigned long long)hlen);
  char *hdr = dpm_malloc(hlen + 1);
  int rc = -1;
  cJSON *root = NULL;
  st_entry *e = NULL;
  unsigned char *raw = NULL;
  if (fread(hdr, 1, hlen, fp) != hlen) {
    dpm_err(err, "%s: read error in the header: %s", path, strerror(errno));
    goto done;
  }
  hdr[hlen] = 0;
  if (memchr(hdr, 0, hlen)) {
    dpm_err(err, "%s: invalid JSON header: a NUL byte at offset %zu", path, (size_t)((char *)memchr(hdr, 0, hlen) - hdr));
    goto done;
  }
  const char *end = NULL;
  root = cJSON_ParseWithLengthOpts(hdr, hlen, &end, 0);
  if (!root) {
    size_t at = end ? (size_t)(end - hdr) : 0;
    dpm_err(err, "%s: invalid JSON header (near byte %zu of %llu: \"%.24s\")", path, at, (unsigned long long)hlen,
            end ? end : "");
    goto done;
  }
  for (const char *p = end; p < hdr + hlen; p++)
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
      dpm_err(err, "%s: invalid JSON header: text after the object at byte %zu", path, (size_t)(p - hdr));
      goto done;
    }
  if (!cJSON_IsObject(root)) {
    dpm_err(err, "%s: invalid header: the JSON is not an object {name: {dtype, shape, data_offsets}}", path);
    goto done;
  }
  int n = 0;
  for (const cJSON *c = root->child; c; c = c->next) n++;
  e = dpm_calloc((size_t)n + 1, sizeof *e);
  int nt = 0, nmeta = 0;
  const cJSON *meta = NULL;
  for (const cJSON *c = root->child; c; c = c->next) {
    if (!strcmp(c->string, "__metadata__")) {
      if (nmeta++) {
        dpm_err(err, "%s: duplicate \"__metadata__\" in the header", path);
        goto done;
      }
      meta = c;
      continue;
    }
    if (!c->string[0]) {
      dpm_err(err, "%s: a tensor with an empty name in the header", path);
      goto done;
    }
    if (parse_entry(path, c, &e[nt], err)) goto done;
    nt++;
  }
  if (meta) {
    if (!cJSON_IsObject(meta)) {
      dpm_err(err, "%s: \"__metadata__\" is not an object of strings", path);
      goto done;
    }
    for (const cJSON *c = meta->child; c; c = c->next)
      if (!cJSON_IsString(c)) {
        dpm_err(err, "%s: \"__metadata__\" entry '%s' is not a string", path, c->string);
        goto done;
      }
  }
  qsort(e, (size_t)nt, sizeof *e, cmp_entry_name);
  for (int i = 1; i < nt; i++)
    if (!strcmp(e[i].name, e[i - 1].name)) {
      dpm_err(err, "%s: tensor '%s': duplicate name in the header", path, e[i].name);
      goto done;
    }
  qsort(e, (size_t)nt, sizeof *e, cmp_entry_begin);
  uint64_t data = size - 8 - hlen, at = 0;
  for (int i = 0; i < nt; i++) {
    if (e[i].begin < at) {
      dpm_err(err, "%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s' (which ends at %llu)", path, e[i].name,
              (unsigned long long)e[i].begin, (unsigned long long)e[i].end, e[i - 1].name, (unsigned long long)at);
      goto done;
    }
    if (e[i].begin > at) {
      dpm_err(err, "%s: tensor '%s': data_offsets begin at %llu, leaving a gap after byte %llu (tensors must tile the data)",
              path, e[i].name, (unsigned long long)e[i].begin, (unsigned long long)at);
      goto done;
    }
    if (e[i].end > data) {
      dpm_err(err, "%s: tensor '%s': data_offsets [%llu, %llu] reach beyond the data section (%llu bytes): truncated?",
              path, e[i].name, (unsigned long long)e[i].begin, (unsigned long long)e[i].end, (unsigned long long)data);
      goto done;
    }
    at = e[i].end;
  }
  if (at != data) {
    dpm_err(err, "%s: %llu bytes after the last tensor's data (the data section has %llu, the tensors cover %llu)", path,
            (unsigned long long)(data - at), (unsigned long long)data, (unsigned long long)at);
    goto done;
  }
  f->t = dpm_calloc((size_t)nt + 1, sizeof *f->t);
  uint64_t maxbytes = 0;
  for (int i = 0; i < nt; i++)
    if (e[i].end - e[i].begin > maxbytes) maxbytes = e[i].end - e[i].begin;
  raw = dpm_malloc(maxbytes + 1);
  for (int i = 0; i < nt; i++) {
    dpm_st_tensor *t = &f->t[i];
    t->name = dpm_strdup(e[i].name);
    t->rank = e[i].rank;
    memcpy(t->shape, e[i].shape, sizeof t->shape);
    t->numel = (int64_t)e[i].numel;
    snprintf(t->dtype, sizeof t->dtype, "%s", DTYPES[e[i].dtype].name);
    t->data = dpm_malloc(e[i].numel * sizeof(float) + 1);
    f->n = i + 1;
    uint64_t bytes = e[i].end - e[i].begin;
    if (fseeko(fp, (off_t)(8 + hlen + e[i].begin), SEEK_SET) || fread(raw, 1, bytes, fp) != bytes) {
      dpm_err(err, "%s: tensor '%s': read error: %s", path, e[i].name, ferror(fp) ? strerror(errno) : "unexpected end of file");
      goto done;
    }
    if (convert(path, &e[i], raw, t->data, err)) goto done;
  }
  f->n = nt;
  const cJSON *fmt = meta ? cJSON_GetObjectItemCaseSensitive(meta, "format") : NULL;
  if (fmt) f->format = dpm_strdup(fmt->valuestring);
  rc = 0;
done:
  if (rc) dpm_st_free(f);
  dpm_free(raw);
  dpm_free(e);
  cJSON_Delete(root);
  dpm_free(hdr);
  return rc;
}

int dpm_st_read(const char *path, dpm_st_file *f, char err[DPM_ERRLEN]) {
  memset(f, 0, sizeof *f);
  FILE *fp = fopen(path, "rb");
  if (!fp) return dpm_err(err, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fileno(fp), &st) || !S_ISREG(st.st_mode)) {
    fclose(fp);
    return dpm_err(err, "%s: not a regular file", path);
  }
  int rc = read_open(path, fp, (uint64_t)st.st_size, f, err);
  fclose(fp);
  return rc;
}

const dpm_st_tensor *dpm_st_find(const dpm_st_file *f, const char *name) {
  for (int i = 0; i < f->n; i++)
    if (!strcmp(f->t[i].name, name)) return &f->t[i];
  return NULL;
}

/* --- writing --------------------------------------------------------------------------------------- */

typedef struct {
  char *s;
  size_t len, cap;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    b->cap = 2 * (b->len + n + 1) + 256;
    b->s = dpm_realloc(b->s, b->cap);
  }
  memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = 0;
}
static void sb_puts(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }
static void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf *b, const char *fmt, ...) {
  char tmp[128];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  DPM_ASSERT(n >= 0 && (size_t)n < sizeof tmp);
  sb_put(b, tmp, (size_t)n);
}
/* A JSON string literal: quotes, backslashes and control characters escaped; other bytes (UTF-8) as they are. */
static void sb_json_str(strbuf *b, const char *s) {
  sb_put(b, "\"", 1);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      char esc[2] = {'\\', (char)c};
      sb_put(b, esc, 2);
    } else if (c < 0x20) {
      sb_printf(b, "\\u%04x", c);
    } else {
      sb_put(b, (const char *)&c, 1);
    }
  }
  sb_put(b, "\"", 1);
}

static int cmp_str_ptr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int dpm_st_write(const char *path, int n, const dpm_st_tensor *t, char err[DPM_ERRLEN]) {
  const char **names = dpm_malloc(((size_t)n + 1) * sizeof *names);
  uint64_t *bytes = dpm_malloc(((size_t)n + 1) * sizeof *bytes);
  for (int i = 0; i < n; i++) {
    if (!t[i].name || !t[i].name[0] || !strcmp(t[i].name, "__metadata__") || t[i].rank < 0 || t[i].rank > DPM_ST_MAXDIM) {
      dpm_free(names);
      dpm_free(bytes);
      return dpm_err(err, "%s: tensor %d ('%s'): empty or reserved name, or rank %d not in [0, %d]", path, i,
                     t[i].name ? t[i].name : "", t[i].rank, DPM_ST_MAXDIM);
    }
    names[i] = t[i].name;
    bytes[i] = 4;
    for (int d = 0; d < t[i].rank; d++) {
      DPM_ASSERT(t[i].shape[d] >= 0);
      bytes[i] *= (uint64_t)t[i].shape[d];
    }
  }
  qsort(names, (size_t)n, sizeof *names, cmp_str_ptr);
  for (int i = 1; i < n; i++)
    if (!strcmp(names[i], names[i - 1])) {
      dpm_err(err, "%s: tensor '%s': two tensors of this name", path, names[i]);
      dpm_free(names);
      dpm_free(bytes);
      return -1;
    }
  dpm_free(names);

  strbuf h = {0};
  sb_puts(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
  uint64_t at = 0;
  for (int i = 0; i < n; i++) {
    sb_put(&h, ",", 1);
    sb_json_str(&h, t[i].name);
    sb_puts(&h, ":{\"dtype\":\"F32\",\"shape\":[");
    for (int d = 0; d < t[i].rank; d++) sb_printf(&h, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
    sb_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)at, (unsigned long long)(at + bytes[i]));
    at += bytes[i];
  }
  sb_put(&h, "}", 1);
  while ((8 + h.len) % 8) sb_put(&h, " ", 1);

  char *tmp = dpm_atomic_tmp_name(path);
  int rc = -1;
  FILE *fp = fopen(tmp, "wb");
  if (!fp) {
    dpm_err(err, "%s: cannot create: %s", tmp, strerror(errno));
    goto done;
  }
  uint64_t hlen = h.len;
  int ok = fwrite(&hlen, 8, 1, fp) == 1 && fwrite(h.s, 1, h.len, fp) == h.len;
  for (int i = 0; ok && i < n; i++)
    ok = bytes[i] == 0 || fwrite(t[i].data, 1, bytes[i], fp) == bytes[i];
  if (fclose(fp) || !ok) {
    dpm_err(err, "%s: write error: %s", tmp, strerror(errno));
    unlink(tmp);
    goto done;
  }
  if (dpm_atomic_commit(tmp, path)) {
    dpm_err(err, "%s: cannot put the file in place: %s", path, strerror(errno));
    goto done;
  }
  rc = 0;
done:
  dpm_free(tmp);
  dpm_free(h.s);
  dpm_free(bytes);
  return rc;
}
