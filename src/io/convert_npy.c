/* `dpmpi data convert --from tokens`: NumPy .npy token arrays into token rows (kind = "tokens",
 * tokenizer "external"; layout in dpmpi/io/data.h). Owns the .npy reader: the magic and version (1.0,
 * 2.0, 3.0), the header dictionary (descr, fortran_order, shape; a small parser of the Python literal
 * NumPy writes), the accepted dtypes (<i4, <i8, <u2, also spelled = on this little-endian host), the
 * file's length against the header, and the ids of every row. Rows are streamed in blocks: memory holds
 * one block, never the array.
 */
#include "dpmpi/io/data.h"

#include "io/convert.h"
#include "io/h5util.h"

#include <ctype.h>
#include <errno.h>
#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Largest header accepted (NumPy itself refuses headers above 10000 bytes unless told otherwise). */
#define NPY_MAX_HEADER (1 << 20)

typedef enum { NPY_I4, NPY_I8, NPY_U2 } npy_dtype;

typedef struct {
  const char *path;
  FILE *fp;
  int major, minor;
  npy_dtype dtype;
  char descr[32];
  size_t itemsize;
  int64_t n, L;        /* shape (N, T + 1) */
  long data_offset;
} npy_file;

/* ---- the header dictionary, e.g. {'descr': '<i4', 'fortran_order': False, 'shape': (3, 5), } ------ */

typedef struct {
  const char *s, *end, *path;
  char *err;
} npy_parser;

static void skip_ws(npy_parser *p) {
  while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r')) p->s++;
}

static int bad_header(npy_parser *p, const char *what) {
  return dpm_err(p->err, "%s: bad .npy header: %s", p->path, what);
}

/* A quoted Python string (no escapes: none occur in a header) into buf. */
static int parse_str(npy_parser *p, char *buf, size_t cap) {
  skip_ws(p);
  if (p->s >= p->end || (*p->s != '\'' && *p->s != '"')) return bad_header(p, "expected a quoted string");
  const char q = *p->s++;
  const char *e = memchr(p->s, q, (size_t)(p->end - p->s));
  if (!e) return bad_header(p, "unterminated string");
  if ((size_t)(e - p->s) >= cap) return bad_header(p, "string too long");
  memcpy(buf, p->s, (size_t)(e - p->s));
  buf[e - p->s] = '\0';
  p->s = e + 1;
  return 0;
}

static int parse_bool(npy_parser *p, int *v) {
  skip_ws(p);
  if (p->end - p->s >= 4 && memcmp(p->s, "True", 4) == 0) return p->s += 4, *v = 1, 0;
  if (p->end - p->s >= 5 && memcmp(p->s, "False", 5) == 0) return p->s += 5, *v = 0, 0;
  return bad_header(p, "fortran_order must be True or False");
}

/* A tuple of non-negative integers, e.g. (3, 5) or (7,) or (); at most 8 entries. */
static int parse_shape(npy_parser *p, int64_t *dims, int *ndim) {
  skip_ws(p);
  if (p->s >= p->end || *p->s != '(') return bad_header(p, "shape must be a tuple");
  p->s++;
  *ndim = 0;
  for (;;) {
    skip_ws(p);
    if (p->s < p->end && *p->s == ')') return p->s++, 0;
    if (p->s >= p->end || !isdigit((unsigned char)*p->s)) return bad_header(p, "shape must hold integers");
    if (*ndim == 8) return bad_header(p, "shape has more than 8 dimensions");
    int64_t v = 0;
    while (p->s < p->end && isdigit((unsigned char)*p->s)) {
      if (v > (INT64_MAX - 9) / 10) return bad_header(p, "shape entry too large");
      v = v * 10 + (*p->s++ - '0');
    }
    if (p->s < p->end && *p->s == 'L') p->s++; /* Python 2's long suffix */
    dims[(*ndim)++] = v;
    skip_ws(p);
    if (p->s < p->end && *p->s == ',') p->s++;
    else if (p->s < p->end && *p->s == ')') continue;
    else return bad_header(p, "shape: expected ',' or ')'");
  }
}

/* descr into f->dtype: the accepted dtypes, and a clear word for the common wrong ones. */
static int set_dtype(npy_file *f, char *err) {
  static const struct {
    const char *name;
    npy_dtype t;
    size_t size;
  } ok[] = {{"<i4", NPY_I4, 4}, {"=i4", NPY_I4, 4}, {"<i8", NPY_I8, 8}, {"=i8", NPY_I8, 8},
            {"<u2", NPY_U2, 2}, {"=u2", NPY_U2, 2}};
  for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++)
    if (strcmp(f->descr, ok[k].name) == 0) return f->dtype = ok[k].t, f->itemsize = ok[k].size, 0;
  const char *why = f->descr[0] == '>' ? " (big-endian: use arr.astype('<i4'))"
                    : strchr(f->descr, 'O') ? " (an object array: ragged rows? pad them to one length)"
                    : strchr(f->descr, 'f') ? " (floating point: token ids must be integers)"
                                            : "";
  return dpm_err(err, "%s: dtype '%s' is not supported%s; expected <i4 (int32), <i8 (int64) or <u2 (uint16)",
                 f->path, f->descr, why);
}

static int parse_header(npy_file *f, const char *h, size_t len, char *err) {
  npy_parser p = {.s = h, .end = h + len, .path = f->path, .err = err};
  int have_descr = 0, have_order = 0, have_shape = 0, fortran = 0, ndim = 0;
  int64_t dims[8];
  skip_ws(&p);
  if (p.s >= p.end || *p.s != '{') return bad_header(&p, "expected a dictionary '{...}'");
  p.s++;
  for (;;) {
    skip_ws(&p);
    if (p.s < p.end && *p.s == '}') {
      p.s++;
      break;
    }
    char key[32];
    if (parse_str(&p, key, sizeof key)) return -1;
    skip_ws(&p);
    if (p.s >= p.end || *p.s != ':') return bad_header(&p, "expected ':' after a key");
    p.s++;
    skip_ws(&p);
    if (strcmp(key, "descr") == 0) {
      if (p.s < p.end && *p.s == '[')
        return dpm_err(err, "%s: a structured dtype is not supported; expected <i4, <i8 or <u2", f->path);
      if (parse_str(&p, f->descr, sizeof f->descr)) return -1;
      have_descr = 1;
    } else if (strcmp(key, "fortran_order") == 0) {
      if (parse_bool(&p, &fortran)) return -1;
      have_order = 1;
    } else if (strcmp(key, "shape") == 0) {
      if (parse_shape(&p, dims, &ndim)) return -1;
      have_shape = 1;
    } else {
      return dpm_err(err, "%s: bad .npy header: unexpected key '%s'", f->path, key);
    }
    skip_ws(&p);
    if (p.s < p.end && *p.s == ',') p.s++;
    else if (!(p.s < p.end && *p.s == '}')) return bad_header(&p, "expected ',' or '}'");
  }
  skip_ws(&p);
  if (p.s != p.end) return bad_header(&p, "text after the dictionary");
  if (!have_descr || !have_order || !have_shape)
    return dpm_err(err, "%s: bad .npy header: missing key '%s'", f->path,
                   !have_descr ? "descr" : !have_order ? "fortran_order" : "shape");
  if (set_dtype(f, err)) return -1;
  if (fortran)
    return dpm_err(err, "%s: fortran_order is True; expected a C-order array (save np.ascontiguousarray(a))",
                   f->path);
  if (ndim != 2) {
    char s[160] = "";
    size_t u = 0;
    for (int k = 0; k < ndim && u < sizeof s - 24; k++)
      u += (size_t)snprintf(s + u, sizeof s - u, "%s%lld", k ? ", " : "", (long long)dims[k]);
    return dpm_err(err, "%s: array has shape (%s%s); expected 2-D N x (T+1), one example per row", f->path, s,
                   ndim == 1 ? "," : "");
  }
  f->n = dims[0], f->L = dims[1];
  if (f->n == 0) return dpm_err(err, "%s: empty array (0 rows); expected at least one example", f->path);
  if (f->L < 2 || f->L > (int64_t)DPM_MAX_CONTEXT + 1)
    return dpm_err(err, "%s: rows of %lld ids; expected T + 1 with 1 <= T <= %d (inputs row[:-1], targets "
                   "row[1:])", f->path, (long long)f->L, DPM_MAX_CONTEXT);
  return 0;
}

/* Open path, read and check the magic, version and header, and the file's length against the shape. */
static int npy_open(npy_file *f, const char *path, char *err) {
  memset(f, 0, sizeof *f);
  f->path = path;
  f->fp = fopen(path, "rb");
  if (!f->fp) return dpm_err(err, "%s: cannot open: %s", path, strerror(errno));
  unsigned char pre[12];
  size_t got = fread(pre, 1, 10, f->fp);
  if (got < 10 || memcmp(pre, "\x93NUMPY", 6) != 0)
    return dpm_err(err, "%s: not a NumPy .npy file (no \\x93NUMPY magic)", path);
  f->major = pre[6], f->minor = pre[7];
  if (f->major < 1 || f->major > 3 || f->minor != 0)
    return dpm_err(err, "%s: .npy format version %d.%d is not supported; expected 1.0, 2.0 or 3.0", path, f->major,
                   f->minor);
  size_t hlen, hstart;
  if (f->major == 1) {
    hlen = (size_t)pre[8] | (size_t)pre[9] << 8, hstart = 10;
  } else {
    if (fread(pre + 10, 1, 2, f->fp) != 2) return dpm_err(err, "%s: truncated .npy header", path);
    hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24, hstart = 12;
  }
  if (hlen == 0 || hlen > NPY_MAX_HEADER)
    return dpm_err(err, "%s: bad .npy header: length %zu (expected 1 to %d bytes)", path, hlen, NPY_MAX_HEADER);
  char *h = dpm_malloc(hlen);
  got = fread(h, 1, hlen, f->fp);
  int rc = got < hlen ? dpm_err(err, "%s: truncated .npy header (%zu of %zu bytes)", path, got, hlen)
                      : parse_header(f, h, hlen, err);
  dpm_free(h);
  if (rc) return -1;
  f->data_offset = (long)(hstart + hlen);
  struct stat st;
  if (fstat(fileno(f->fp), &st) != 0) return dpm_err(err, "%s: cannot stat: %s", path, strerror(errno));
  const uint64_t have = (uint64_t)st.st_size - (uint64_t)f->data_offset;
  if ((uint64_t)f->n > UINT64_MAX / (uint64_t)f->L / f->itemsize)
    return dpm_err(err, "%s: shape (%lld, %lld) is too large", path, (long long)f->n, (long long)f->L);
  const uint64_t need = (uint64_t)f->n * (uint64_t)f->L * f->itemsize;
  if (have < need)
    return dpm_err(err, "%s: truncated: the header says %lld x %lld %s (%llu bytes of data) but the file holds %llu",
                   path, (long long)f->n, (long long)f->L, f->descr, (unsigned long long)need,
                   (unsigned long long)have);
  if (have > need)
    return dpm_err(err, "%s: %llu bytes after the %lld x %lld %s array (expected the file to end there)", path,
                   (unsigned long long)(have - need), (long long)f->n, (long long)f->L, f->descr);
  return 0;
}

/* Stream the rows of f into the token writer w (NULL: only check), checking every id. */
static int npy_rows(npy_file *f, dpm_token_writer *w, int vocab, int pad_id, char *err) {
  if (fseek(f->fp, f->data_offset, SEEK_SET) != 0) return dpm_err(err, "%s: cannot seek: %s", f->path, strerror(errno));
  const size_t L = (size_t)f->L;
  int64_t block = (int64_t)((size_t)(1 << 22) / (L * f->itemsize));
  if (block < 1) block = 1;
  unsigned char *raw = dpm_malloc((size_t)block * L * f->itemsize);
  int32_t *row = dpm_malloc(L * sizeof(int32_t));
  int rc = 0;
  for (int64_t r0 = 0; r0 < f->n && !rc; r0 += block) {
    const int64_t rows = f->n - r0 < block ? f->n - r0 : block;
    if (fread(raw, f->itemsize * L, (size_t)rows, f->fp) != (size_t)rows) {
      rc = dpm_err(err, "%s: read error at row %lld", f->path, (long long)r0);
      break;
    }
    for (int64_t i = 0; i < rows && !rc; i++) {
      const unsigned char *b = raw + (size_t)i * L * f->itemsize;
      int real = 0;
      for (size_t c = 0; c < L; c++) {
        const unsigned char *e = b + c * f->itemsize;
        int64_t v;
        if (f->dtype == NPY_U2) v = (int64_t)(e[0] | e[1] << 8);
        else if (f->dtype == NPY_I4) v = (int32_t)((uint32_t)e[0] | (uint32_t)e[1] << 8 | (uint32_t)e[2] << 16 | (uint32_t)e[3] << 24);
        else {
          uint64_t u = 0;
          for (int k = 7; k >= 0; k--) u = u << 8 | e[k];
          v = (int64_t)u;
        }
        if (!dpm_token_ok(v, vocab, pad_id)) {
          if (pad_id == -1)
            rc = dpm_err(err, "%s: row %lld, column %zu: token id %lld is outside [0, %d) (--vocab %d, no --pad-id)",
                         f->path, (long long)(r0 + i), c, (long long)v, vocab, vocab);
          else
            rc = dpm_err(err, "%s: row %lld, column %zu: token id %lld is outside [0, %d) (--vocab %d) and is not "
                         "the pad id %d", f->path, (long long)(r0 + i), c, (long long)v, vocab, vocab, pad_id);
          break;
        }
        row[c] = (int32_t)v;
        if (c > 0 && v != pad_id) real = 1;
      }
      if (!rc && !real)
        rc = dpm_err(err, "%s: row %lld has no target other than the pad id %d (it would add nothing to the loss)",
                     f->path, (long long)(r0 + i), pad_id);
      if (!rc && w) dpm_token_writer_put(w, row);
    }
  }
  dpm_free(raw);
  dpm_free(row);
  return rc;
}

int dpm_convert_npy(const char *train_npy, const char *test_npy, int vocab, int pad_id, const char *out,
                    char err[DPM_ERRLEN]) {
  dpm_h5_quiet();
  if (vocab < 1) return dpm_err(err, "--vocab %d: expected an id count >= 1", vocab);
  if (strcmp(train_npy, test_npy) == 0) return dpm_err(err, "%s is both the training and the test file", train_npy);
  npy_file f[2] = {{.fp = NULL}, {.fp = NULL}};
  const char *path[2] = {train_npy, test_npy}, *split[2] = {"train", "test"};
  dpm_out_file o = {.file = -1};
  dpm_token_writer w[2] = {{.d = -1}, {.d = -1}};
  int rc = -1;
  for (int s = 0; s < 2; s++) {
    if (npy_open(&f[s], path[s], err)) goto done;
    dpm_convert_progress("%s: %lld rows of %lld ids (%s, .npy %d.0)", path[s], (long long)f[s].n, (long long)f[s].L,
                         f[s].descr, f[s].major);
  }
  if (f[0].L != f[1].L) {
    dpm_err(err, "%s has rows of %lld ids but %s has %lld; both splits need the same T + 1", test_npy,
            (long long)f[1].L, train_npy, (long long)f[0].L);
    goto done;
  }
  /* every id is checked before the output file exists, then written */
  for (int s = 0; s < 2; s++)
    if (npy_rows(&f[s], NULL, vocab, pad_id, err)) goto done;
  if (dpm_out_open(&o, out, err)) goto done;
  for (int s = 0; s < 2; s++) {
    if (dpm_token_writer_open(&w[s], o.file, split[s], f[s].n, (int)f[s].L)) {
      dpm_err(err, "%s: cannot create /%s/tokens", out, split[s]);
      goto done;
    }
    if (npy_rows(&f[s], &w[s], vocab, pad_id, err)) goto done;
    if (dpm_token_writer_close(&w[s])) {
      dpm_err(err, "%s: writing /%s/tokens failed (disk full?)", out, split[s]);
      goto done;
    }
  }
  if (dpm_write_token_attrs(o.file, vocab, pad_id, -1, "external", "npy")) {
    dpm_err(err, "%s: writing root attributes failed", out);
    goto done;
  }
  rc = dpm_out_commit(&o, err);
  if (!rc)
    dpm_convert_progress("wrote %s: %lld training and %lld test rows of T + 1 = %lld ids (vocab %d, pad id %d)", out,
                         (long long)f[0].n, (long long)f[1].n, (long long)f[0].L, vocab, pad_id);
done:
  for (int s = 0; s < 2; s++) {
    if (w[s].buf) dpm_token_writer_close(&w[s]);
    if (f[s].fp) fclose(f[s].fp);
  }
  if (rc && o.tmp) dpm_out_abort(&o);
  return rc;
}
