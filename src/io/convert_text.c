/* `dpmpi data convert --from text`: UTF-8 text files into byte-level token rows (kind = "tokens",
 * tokenizer "bytes"; layout in dpmpi/io/data.h, privacy unit in docs/formats.md). Owns the UTF-8 check
 * (file:line:column of the first invalid byte), splitting files into documents (one per file, or at a
 * separator line), the split of documents into train and test (by file, or by a hash of the document),
 * and cutting each document into windows of T + 1 ids. Two passes over the files: the first validates
 * and counts the rows of each split, the second writes them through io/convert.c's token writer, so
 * memory holds one file and one chunk of rows, never the corpus. Canaries (dpmpi/io/canaries.h) are
 * training documents added after the files'.
 */
#include "dpmpi/io/data.h"

#include "io/convert.h"
#include "io/h5util.h"

#include <errno.h>
#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- input: a whole file, checked to be UTF-8 ------------------------------------------------------ */

/* Read `path` whole into *buf (dpm_malloc'd, *len bytes). */
static int read_whole(const char *path, unsigned char **buf, size_t *len, char *err) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return dpm_err(err, "%s: cannot open: %s", path, strerror(errno));
  size_t cap = 1 << 16, n = 0;
  unsigned char *b = dpm_malloc(cap);
  for (;;) {
    if (n == cap) b = dpm_realloc(b, cap *= 2);
    size_t got = fread(b + n, 1, cap - n, fp);
    n += got;
    if (got == 0) break;
  }
  int bad = ferror(fp);
  fclose(fp);
  if (bad) {
    dpm_free(b);
    return dpm_err(err, "%s: read error", path);
  }
  *buf = b, *len = n;
  return 0;
}

/* Length of the well-formed UTF-8 sequence at s (n bytes left), 0 if it is not one (Unicode 15,
 * table 3-7: no overlong forms, no surrogates, nothing above U+10FFFF). */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  const unsigned char c = s[0];
  if (c < 0x80) return 1;
  unsigned char lo = 0x80, hi = 0xBF;
  size_t len;
  if (c >= 0xC2 && c <= 0xDF) len = 2;
  else if (c >= 0xE0 && c <= 0xEF) len = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
  else if (c >= 0xF0 && c <= 0xF4) len = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
  else return 0;
  if (n < len || s[1] < lo || s[1] > hi) return 0;
  for (size_t k = 2; k < len; k++)
    if (s[k] < 0x80 || s[k] > 0xBF) return 0;
  return len;
}

/* Every byte of buf is part of a well-formed UTF-8 sequence; else file:line:column (1-based, in bytes). */
static int check_utf8(const char *path, const unsigned char *buf, size_t len, char *err) {
  long line = 1;
  size_t line_start = 0;
  for (size_t i = 0; i < len;) {
    size_t k = utf8_seq(buf + i, len - i);
    if (!k)
      return dpm_err(err, "%s:%ld:%zu: invalid UTF-8 (byte 0x%02X); text files must be UTF-8", path, line,
                     i - line_start + 1, buf[i]);
    if (buf[i] == '\n') line++, line_start = i + 1;
    i += k;
  }
  return 0;
}

/* A document's place in [0, 1): FNV-1a over its bytes, splitmix64's finalizer, the top 53 bits. */
static double doc_position(const unsigned char *b, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
  h ^= (uint64_t)n;
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return (double)(h >> 11) * 0x1p-53;
}

/* ---- documents into windows -------------------------------------------------------------------- */

typedef struct {
  const dpm_text_opts *o;
  int writing;             /* 0: the counting pass, 1: the writing pass */
  dpm_text_counts c[2];    /* of this pass */
  dpm_token_writer w[2];
  int32_t *row;            /* T + 1 */
} text_job;

/* Document b[0..n) into split s (0 train, 1 test, -1: by its hash): the sequence EOT b1 .. bn EOT cut
 * into windows row = seq[kT .. kT + T], padded past the end. */
static void add_document(text_job *j, int s, const unsigned char *b, size_t n) {
  if (s < 0) s = doc_position(b, n) < j->o->test_fraction;
  dpm_text_counts *c = &j->c[s];
  if (n == 0) {
    c->empty++;
    return;
  }
  const int64_t T = j->o->context, targets = (int64_t)n + 1;
  int64_t K = (targets + T - 1) / T;
  if (j->o->per_document && K > 1) {
    c->truncated++;
    c->dropped += targets - T;
    K = 1;
  }
  c->documents++;
  if (K > c->max_windows) c->max_windows = K;
  for (int64_t k = 0; k < K; k++) {
    int64_t real = targets - k * T < T ? targets - k * T : T;
    c->windows++;
    c->targets += real;
    if (real < T) c->padded++, c->pad_tokens += T - real;
    if (!j->writing) continue;
    for (int64_t t = 0; t <= T; t++) {
      const int64_t p = k * T + t; /* position in EOT b1 .. bn EOT */
      j->row[t] = p == 0 || p == (int64_t)n + 1 ? DPM_BYTES_EOT : p <= (int64_t)n ? b[p - 1] : DPM_BYTES_PAD;
    }
    dpm_token_writer_put(&j->w[s], j->row);
  }
}

/* One line's content equals the separator (without its "\n" or "\r\n"). */
static int is_separator(const unsigned char *line, size_t len, const char *sep) {
  if (len && line[len - 1] == '\n') len--;
  if (len && line[len - 1] == '\r') len--;
  return len == strlen(sep) && memcmp(line, sep, len) == 0;
}

/* File `path` (split s: 0, 1, or -1 by document hash): validated, then its documents added. */
static int add_file(text_job *j, const char *path, int s, char *err) {
  unsigned char *buf = NULL;
  size_t len = 0;
  if (read_whole(path, &buf, &len, err)) return -1;
  if (check_utf8(path, buf, len, err)) {
    dpm_free(buf);
    return -1;
  }
  const char *sep = j->o->separator;
  if (!sep) {
    add_document(j, s, buf, len);
  } else {
    size_t doc = 0;
    for (size_t i = 0; i < len;) {
      const unsigned char *nl = memchr(buf + i, '\n', len - i);
      size_t end = nl ? (size_t)(nl - buf) + 1 : len;
      if (is_separator(buf + i, end - i, sep)) {
        add_document(j, s, buf + doc, i - doc);
        doc = end;
      }
      i = end;
    }
    add_document(j, s, buf + doc, len - doc);
  }
  dpm_free(buf);
  return 0;
}

/* One pass over every file. */
static int text_pass(text_job *j, char *err) {
  const dpm_text_opts *o = j->o;
  memset(j->c, 0, sizeof j->c);
  const int nfiles = o->n_train + o->n_test;
  for (int f = 0; f < nfiles; f++) {
    const int test = f >= o->n_train;
    const char *path = test ? o->test[f - o->n_train] : o->train[f];
    if (!j->writing && (nfiles <= 16 || (f + 1) % 256 == 0 || f + 1 == nfiles))
      dpm_convert_progress("reading %s (file %d of %d)", path, f + 1, nfiles);
    if (add_file(j, path, o->n_test > 0 ? test : -1, err)) return -1;
  }
  /* canaries: training documents whatever the split rule, each repetition its own document (and window) */
  char text[DPM_CANARY_MAX_PATTERN + 1];
  for (int i = 0; o->canaries && i < o->canaries->n; i++) {
    const int n = dpm_canaries_text(o->canaries, i, text);
    for (int r = 0; r < o->canaries->c[i].repeats; r++) {
      add_document(j, 0, (const unsigned char *)text, (size_t)n);
      j->c[0].canaries++;
    }
  }
  return 0;
}

static int check_opts(const dpm_text_opts *o, char *err) {
  if (o->n_train < 1) return dpm_err(err, "text conversion needs at least one training file");
  if (o->context < 1 || o->context > DPM_MAX_CONTEXT)
    return dpm_err(err, "--context %d: expected 1 <= T <= %d", o->context, DPM_MAX_CONTEXT);
  if (o->n_test == 0 && !(o->test_fraction > 0 && o->test_fraction < 1))
    return dpm_err(err, "--test-fraction %g: expected a fraction in (0, 1), or test files", o->test_fraction);
  for (int a = 0; a < o->n_train; a++)
    for (int b = 0; b < o->n_test; b++)
      if (strcmp(o->train[a], o->test[b]) == 0)
        return dpm_err(err, "%s is both a training and a test file", o->train[a]);
  if (o->canaries && (int)strlen(o->canaries->pattern) + 1 > o->context)
    return dpm_err(err, "--canaries: a canary of %d bytes needs --context >= %d (its text and end-of-text in one "
                   "window)", (int)strlen(o->canaries->pattern), (int)strlen(o->canaries->pattern) + 1);
  return 0;
}

static void report(const dpm_text_opts *o, const dpm_text_counts *c, const char *split) {
  dpm_convert_progress("%s: %lld documents (%lld empty skipped), %lld windows of %d tokens, %lld target tokens, "
                       "%lld windows padded (%lld pad tokens, masked), %lld truncated (%lld tokens dropped), "
                       "at most %lld windows per document", split, (long long)c->documents, (long long)c->empty,
                       (long long)c->windows, o->context + 1, (long long)c->targets, (long long)c->padded,
                       (long long)c->pad_tokens, (long long)c->truncated, (long long)c->dropped,
                       (long long)c->max_windows);
}

int dpm_convert_text(const dpm_text_opts *o, const char *out, dpm_text_counts counts[2], char err[DPM_ERRLEN]) {
  dpm_h5_quiet();
  if (check_opts(o, err)) return -1;
  text_job j = {.o = o};
  dpm_out_file of = {.file = -1};
  static const char *split[2] = {"train", "test"};
  int rc = -1;
  if (text_pass(&j, err)) goto done;
  dpm_text_counts first[2];
  memcpy(first, j.c, sizeof first);
  for (int s = 0; s < 2; s++)
    if (first[s].windows == 0) {
      if (s == 1 && o->n_test == 0)
        dpm_err(err, "no document of the %lld went to the test split at --test-fraction %g: raise it or give "
                "--test FILES", (long long)first[0].documents, o->test_fraction);
      else
        dpm_err(err, "%s: no %s documents (all files empty?)", s ? o->test[0] : o->train[0], split[s]);
      goto done;
    }
  if (o->per_document && (first[0].truncated || first[1].truncated))
    dpm_convert_progress("--per-document: %lld training and %lld test documents truncated to their first %d "
                         "targets", (long long)first[0].truncated, (long long)first[1].truncated, o->context);
  if (dpm_out_open(&of, out, err)) goto done;
  j.writing = 1;
  j.row = dpm_malloc(((size_t)o->context + 1) * sizeof(int32_t));
  for (int s = 0; s < 2; s++) j.w[s].d = -1;
  for (int s = 0; s < 2; s++)
    if (dpm_token_writer_open(&j.w[s], of.file, split[s], first[s].windows, o->context + 1)) {
      dpm_err(err, "%s: cannot create /%s/tokens", out, split[s]);
      goto done;
    }
  if (text_pass(&j, err)) goto done;
  if (memcmp(first, j.c, sizeof first) != 0) {
    dpm_err(err, "the text files changed while being converted (%lld windows, then %lld)",
            (long long)(first[0].windows + first[1].windows), (long long)(j.c[0].windows + j.c[1].windows));
    goto done;
  }
  for (int s = 0; s < 2; s++)
    if (dpm_token_writer_close(&j.w[s])) {
      dpm_err(err, "%s: writing /%s/tokens failed (disk full?)", out, split[s]);
      goto done;
    }
  if (dpm_write_token_attrs(of.file, DPM_BYTES_VOCAB, DPM_BYTES_PAD, DPM_BYTES_EOT, DPM_TOKENIZER_BYTES, "text")) {
    dpm_err(err, "%s: writing root attributes failed", out);
    goto done;
  }
  rc = dpm_out_commit(&of, err);
  if (!rc) {
    for (int s = 0; s < 2; s++) report(o, &j.c[s], split[s]);
    if (j.c[0].canaries)
      dpm_convert_progress("train: %lld of its documents are canaries (one window each, docs/formats.md)",
                           (long long)j.c[0].canaries);
    dpm_convert_progress("wrote %s (byte tokens: vocab %d, end-of-text %d, pad %d)", out, DPM_BYTES_VOCAB,
                         DPM_BYTES_EOT, DPM_BYTES_PAD);
    if (counts) memcpy(counts, j.c, sizeof j.c);
  }
done:
  for (int s = 0; s < 2; s++)
    if (j.w[s].buf) dpm_token_writer_close(&j.w[s]);
  if (rc && of.tmp) dpm_out_abort(&of);
  dpm_free(j.row);
  return rc;
}
