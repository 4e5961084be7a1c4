/* dpmpi canaries (include/dpmpi/io/canaries.h): the pattern check, drawing distinct secrets, and the canary
 * file in JSON (libcjson) with every field checked on reading. */
#include "dpmpi/io/canaries.h"

#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/atomic.h"

#define CANARY_FORMAT "dpmpi-canaries"
#define CANARY_VERSION 1
#define MAX_CANARIES 100000
#define MAX_REPEATS 1000000

int dpm_canaries_parse_pattern(const char *p, int *prefix_len, int *digits, char err[DPM_ERRLEN]) {
  const size_t n = strlen(p);
  if (n > DPM_CANARY_MAX_PATTERN)
    return dpm_err(err, "canary pattern of %zu bytes: expected at most %d", n, DPM_CANARY_MAX_PATTERN);
  int first = -1, runs = 0, d = 0;
  for (size_t i = 0; i < n; i++) {
    if (p[i] < 0x20 || p[i] > 0x7E)
      return dpm_err(err, "canary pattern '%s': byte %zu (0x%02X) is not printable ASCII", p, i + 1, (unsigned char)p[i]);
    if (p[i] == '#') {
      if (i == 0 || p[i - 1] != '#') runs++, first = (int)i;
      d++;
    }
  }
  if (runs != 1)
    return dpm_err(err, "canary pattern '%s': expected one run of '#' (the secret's digits), found %d", p, runs);
  if (d > DPM_CANARY_MAX_DIGITS)
    return dpm_err(err, "canary pattern '%s': %d digits, expected at most %d", p, d, DPM_CANARY_MAX_DIGITS);
  *prefix_len = first, *digits = d;
  return 0;
}

int dpm_canaries_text(const dpm_canaries *c, int i, char *buf) {
  const int n = (int)strlen(c->pattern);
  memcpy(buf, c->pattern, (size_t)n + 1);
  memcpy(buf + c->prefix_len, c->c[i].secret, (size_t)c->digits);
  return n;
}

void dpm_canaries_free(dpm_canaries *c) {
  dpm_free(c->c);
  c->c = NULL;
  c->n = 0;
}

static int find_secret(const dpm_canaries *c, int upto, const char *s) {
  for (int i = 0; i < upto; i++)
    if (!strcmp(c->c[i].secret, s)) return i;
  return -1;
}

int dpm_canaries_make(dpm_canaries *c, const char *pattern, const int *repeats, int n_repeats, int per_repeat,
                      const dpm_key *key, int seeded, char err[DPM_ERRLEN]) {
  memset(c, 0, sizeof *c);
  if (dpm_canaries_parse_pattern(pattern, &c->prefix_len, &c->digits, err)) return -1;
  const long long n = (long long)n_repeats * per_repeat;
  double space = 1;
  for (int k = 0; k < c->digits; k++) space *= 10;
  if (n < 1 || n > MAX_CANARIES) return dpm_err(err, "%lld canaries: expected 1 to %d", n, MAX_CANARIES);
  if ((double)n > space / 2)
    return dpm_err(err, "%lld canaries of %d digits: expected at most half of the %.0f candidates", n, c->digits, space);
  snprintf(c->pattern, sizeof c->pattern, "%s", pattern);
  c->n = (int)n;
  c->seeded = seeded;
  c->c = dpm_malloc(sizeof *c->c * (size_t)n);
  /* digit k of canary i: the first word below 10 * floor(2^64 / 10) of stream (key, i, CANARY), mod 10;
   * a secret equal to an earlier one is drawn again from the following words */
  const uint64_t limit = UINT64_MAX - UINT64_MAX % 10; /* words >= limit are rejected */
  for (int i = 0; i < c->n; i++) {
    uint64_t w = 0;
    do {
      for (int k = 0; k < c->digits; k++) {
        uint64_t word;
        do dpm_rng_words(key, (uint64_t)i, DPM_STREAM_CANARY, w++, 1, &word);
        while (word >= limit);
        c->c[i].secret[k] = (char)('0' + word % 10);
      }
      c->c[i].secret[c->digits] = 0;
    } while (find_secret(c, i, c->c[i].secret) >= 0);
    c->c[i].repeats = repeats[i / per_repeat];
  }
  return 0;
}

int dpm_canaries_write(const dpm_canaries *c, const char *path, char err[DPM_ERRLEN]) {
  cJSON *root = cJSON_CreateObject(), *arr = cJSON_CreateArray();
  cJSON_AddStringToObject(root, "format", CANARY_FORMAT);
  cJSON_AddNumberToObject(root, "format_version", CANARY_VERSION);
  cJSON_AddStringToObject(root, "pattern", c->pattern);
  cJSON_AddNumberToObject(root, "digits", c->digits);
  cJSON_AddStringToObject(root, "key", c->seeded ? "seed" : "secure");
  char text[DPM_CANARY_MAX_PATTERN + 1];
  for (int i = 0; i < c->n; i++) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "secret", c->c[i].secret);
    cJSON_AddNumberToObject(o, "repeats", c->c[i].repeats);
    dpm_canaries_text(c, i, text);
    cJSON_AddStringToObject(o, "text", text);
    cJSON_AddItemToArray(arr, o);
  }
  cJSON_AddItemToObject(root, "canaries", arr);
  char *s = cJSON_Print(root);
  cJSON_Delete(root);
  char *tmp = dpm_atomic_tmp_name(path);
  int rc = 0;
  FILE *f = fopen(tmp, "w");
  if (!f) {
    rc = dpm_err(err, "%s: cannot create: %s", tmp, strerror(errno));
  } else {
    const int bad = fputs(s, f) < 0 || fputc('\n', f) < 0;
    if (fclose(f) || bad) {
      unlink(tmp);
      rc = dpm_err(err, "%s: write failed (disk full?)", tmp);
    } else if (dpm_atomic_commit(tmp, path)) {
      rc = dpm_err(err, "%s: cannot put in place: %s", path, strerror(errno));
    }
  }
  cJSON_free(s);
  dpm_free(tmp);
  return rc;
}

/* An integer field of o in [lo, hi]. */
static int get_int(const cJSON *o, const char *key, long lo, long hi, int *out, const char *path, const char *where,
                   char *err) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsNumber(j) || !(j->valuedouble >= lo && j->valuedouble <= hi) || j->valuedouble != (double)(long)j->valuedouble)
    return dpm_err(err, "%s: %s'%s': expected an integer in [%ld, %ld]", path, where, key, lo, hi);
  *out = (int)j->valuedouble;
  return 0;
}

static const char *get_string(const cJSON *o, const char *key) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsString(j) ? j->valuestring : NULL;
}

int dpm_canaries_read(dpm_canaries *c, const char *path, char err[DPM_ERRLEN]) {
  memset(c, 0, sizeof *c);
  FILE *f = fopen(path, "rb");
  if (!f) return dpm_err(err, "%s: cannot open: %s", path, strerror(errno));
  size_t cap = 1 << 16, n = 0;
  char *buf = dpm_malloc(cap);
  for (size_t got; (got = fread(buf + n, 1, cap - n - 1, f)) > 0;)
    if ((n += got) == cap - 1) buf = dpm_realloc(buf, cap *= 2);
  fclose(f);
  buf[n] = 0;
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(buf, n, &end, 0);
  int rc = -1;
  const char *s;
  if (!root || !cJSON_IsObject(root)) {
    dpm_err(err, "%s: not a canary file (expected a JSON object from dpmpi audit canaries)", path);
    goto done;
  }
  if (!(s = get_string(root, "format")) || strcmp(s, CANARY_FORMAT)) {
    dpm_err(err, "%s: 'format' is %s, expected \"%s\"", path, s ? s : "missing", CANARY_FORMAT);
    goto done;
  }
  int version, digits;
  if (get_int(root, "format_version", CANARY_VERSION, CANARY_VERSION, &version, path, "", err)) goto done;
  if (!(s = get_string(root, "pattern"))) {
    dpm_err(err, "%s: 'pattern': expected a string", path);
    goto done;
  }
  char inner[DPM_ERRLEN];
  if (dpm_canaries_parse_pattern(s, &c->prefix_len, &c->digits, inner)) {
    dpm_err(err, "%s: %s", path, inner);
    goto done;
  }
  snprintf(c->pattern, sizeof c->pattern, "%s", s);
  if (get_int(root, "digits", c->digits, c->digits, &digits, path, "", err)) goto done;
  if (!(s = get_string(root, "key")) || (strcmp(s, "seed") && strcmp(s, "secure"))) {
    dpm_err(err, "%s: 'key': expected \"seed\" or \"secure\"", path);
    goto done;
  }
  c->seeded = !strcmp(s, "seed");
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "canaries");
  const int m = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : 0;
  if (m < 1 || m > MAX_CANARIES) {
    dpm_err(err, "%s: 'canaries': expected an array of 1 to %d canaries", path, MAX_CANARIES);
    goto done;
  }
  c->c = dpm_malloc(sizeof *c->c * (size_t)m);
  c->n = 0;
  char where[64], text[DPM_CANARY_MAX_PATTERN + 1];
  for (const cJSON *o = arr->child; o; o = o->next) {
    const int i = c->n;
    snprintf(where, sizeof where, "canary %d: ", i + 1);
    s = get_string(o, "secret");
    int ok = s && (int)strlen(s) == c->digits;
    for (int k = 0; ok && k < c->digits; k++) ok = s[k] >= '0' && s[k] <= '9';
    if (!ok) {
      dpm_err(err, "%s: %s'secret': expected %d decimal digits", path, where, c->digits);
      goto done;
    }
    memcpy(c->c[i].secret, s, (size_t)c->digits + 1);
    if (find_secret(c, i, s) >= 0) {
      dpm_err(err, "%s: %s'secret' %s is canary %d's too: secrets must be distinct", path, where, s,
              find_secret(c, i, s) + 1);
      goto done;
    }
    if (get_int(o, "repeats", 0, MAX_REPEATS, &c->c[i].repeats, path, where, err)) goto done;
    c->n++;
    dpm_canaries_text(c, i, text);
    if (!(s = get_string(o, "text")) || strcmp(s, text)) {
      dpm_err(err, "%s: %s'text' is %s%s%s, expected \"%s\" (the pattern with the secret)", path, where,
              s ? "\"" : "", s ? s : "missing", s ? "\"" : "", text);
      goto done;
    }
  }
  rc = 0;
done:
  if (rc) dpm_canaries_free(c);
  cJSON_Delete(root);
  dpm_free(buf);
  return rc;
}
