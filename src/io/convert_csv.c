/* `dpmpi data convert --from csv`: CSV files (a header, then one example per line) into the dataset layout. */
#include "dpmpi/io/data.h"

#include "io/atomic.h"
#include "io/convert.h"
#include "io/h5util.h"

#include <errno.h>
#include <float.h>
#include <hdf5.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* ---------------------------------------------------------------------------------------------------
 * CSV: a header of column names, then one example per line, every field a number. Fields may be quoted
 * ("1.5"); quoted commas are not supported (numeric data has none). Blank lines are skipped.
 * ------------------------------------------------------------------------------------------------- */

typedef struct {
  const char *path;
  FILE *fp;
  char *line;
  size_t cap;
  long lineno;
  int nf, fcap;
  char **field;  /* pointers into line */
  int *col;      /* 1-based character column of each field */
} csv_reader;

/* Next non-blank line split into fields: 1, 0 at end of file, -1 on a read error. */
static int csv_next(csv_reader *r, char *err) {
  for (;;) {
    errno = 0;
    ssize_t len = getline(&r->line, &r->cap, r->fp);
    if (len < 0) {
      if (ferror(r->fp)) return dpm_err(err, "%s: read error: %s", r->path, strerror(errno));
      return 0;
    }
    r->lineno++;
    while (len > 0 && (r->line[len - 1] == '\n' || r->line[len - 1] == '\r')) r->line[--len] = '\0';
    if (r->lineno == 1 && len >= 3 && memcmp(r->line, "\xEF\xBB\xBF", 3) == 0) memmove(r->line, r->line + 3, (size_t)(len -= 3) + 1);
    int blank = 1;
    for (ssize_t k = 0; k < len && blank; k++)
      if (r->line[k] != ' ' && r->line[k] != '\t') blank = 0;
    if (blank) continue;
    r->nf = 0;
    char *p = r->line;
    for (;;) {
      if (r->nf == r->fcap) {
        r->fcap = r->fcap ? 2 * r->fcap : 64;
        r->field = dpm_realloc(r->field, (size_t)r->fcap * sizeof *r->field);
        r->col = dpm_realloc(r->col, (size_t)r->fcap * sizeof *r->col);
      }
      char *comma = strchr(p, ',');
      if (comma) *comma = '\0';
      /* Trim blanks and one pair of quotes. */
      while (*p == ' ' || *p == '\t') p++;
      r->col[r->nf] = (int)(p - r->line) + 1;
      char *e = p + strlen(p);
      while (e > p && (e[-1] == ' ' || e[-1] == '\t')) *--e = '\0';
      if (e - p >= 2 && *p == '"' && e[-1] == '"') {
        e[-1] = '\0';
        p++;
      }
      r->field[r->nf++] = p;
      if (!comma) break;
      p = comma + 1;
    }
    return 1;
  }
}

typedef struct {
  int64_t n, cap;
  int d;
  float *x;
  int32_t *y;
} csv_table;

/* The header line just read by r: the first file's defines the columns (names, ncols, label_col), a
 * later file's must repeat them. */
static int csv_header(const csv_reader *r, const char *label_column, char ***names, int *ncols, int *label_col,
                      char *err) {
  const char *path = r->path;
  if (*names) {
    if (r->nf != *ncols)
      return dpm_err(err, "%s:1: the header has %d columns but the training file's has %d", path, r->nf, *ncols);
    for (int k = 0; k < r->nf; k++)
      if (strcmp(r->field[k], (*names)[k]) != 0)
        return dpm_err(err, "%s:1:%d: column %d is '%s' but in the training file it is '%s'", path, r->col[k], k + 1,
                       r->field[k], (*names)[k]);
    return 0;
  }
  *ncols = r->nf;
  *names = dpm_calloc((size_t)r->nf, sizeof **names);
  *label_col = -1;
  for (int k = 0; k < r->nf; k++) {
    (*names)[k] = dpm_strdup(r->field[k]);
    if (strcmp(r->field[k], label_column) == 0) {
      if (*label_col >= 0)
        return dpm_err(err, "%s:1:%d: label column '%s' appears twice in the header", path, r->col[k], label_column);
      *label_col = k;
    }
  }
  if (*label_col < 0) return dpm_err(err, "%s:1: label column '%s' not found in the header", path, label_column);
  if (r->nf < 2)
    return dpm_err(err, "%s:1: the header has only the label column; expected at least one feature column", path);
  return 0;
}

/* The data line just read by r (as many fields as names): the label (an integer in 0..max_label) into
 * *label, the features (finite, within float32) into xrow. */
static int csv_row(const csv_reader *r, char **names, int label_col, int32_t max_label, float *xrow, int32_t *label,
                   char *err) {
  const char *path = r->path;
  for (int k = 0, j = 0; k < r->nf; k++) {
    const char *s = r->field[k];
    char *end;
    if (!*s) return dpm_err(err, "%s:%ld:%d: column '%s': empty value", path, r->lineno, r->col[k], names[k]);
    errno = 0;
    if (k == label_col) {
      long v = strtol(s, &end, 10);
      if (*end || errno)
        return dpm_err(err, "%s:%ld:%d: label column '%s': '%s' is not an integer", path, r->lineno, r->col[k],
                       names[k], s);
      if (v < 0 || v > max_label) {
        if (max_label == INT32_MAX - 1)
          return dpm_err(err, "%s:%ld:%d: label column '%s': label %ld is out of range (labels are 0..K-1)", path,
                         r->lineno, r->col[k], names[k], v);
        return dpm_err(err, "%s:%ld:%d: label column '%s': label %ld is not a class of the training file (0..%d)",
                       path, r->lineno, r->col[k], names[k], v, max_label);
      }
      *label = (int32_t)v;
    } else {
      double v = strtod(s, &end);
      if (*end)
        return dpm_err(err, "%s:%ld:%d: column '%s': '%s' is not a number", path, r->lineno, r->col[k], names[k], s);
      if (!isfinite(v))
        return dpm_err(err, "%s:%ld:%d: column '%s': value '%s' is not finite (NaN or Inf)", path, r->lineno,
                       r->col[k], names[k], s);
      if (fabs(v) > FLT_MAX)
        return dpm_err(err, "%s:%ld:%d: column '%s': value '%s' is outside the float32 range", path, r->lineno,
                       r->col[k], names[k], s);
      xrow[j++] = (float)v;
    }
  }
  return 0;
}

/* Parse one CSV file: header (compared to `names` if given, else stored there), then rows. */
static int csv_read(const char *path, const char *label_column, char ***names, int *ncols, int *label_col,
                    int32_t max_label, csv_table *t, char *err) {
  csv_reader r = {.path = path};
  int rc = -1;
  r.fp = fopen(path, "r");
  if (!r.fp) return dpm_err(err, "%s: cannot open: %s", path, strerror(errno));
  int got = csv_next(&r, err);
  if (got < 0) goto done;
  if (got == 0) {
    dpm_err(err, "%s: empty file (expected a header line of column names)", path);
    goto done;
  }
  if (csv_header(&r, label_column, names, ncols, label_col, err)) goto done;
  t->d = *ncols - 1;
  while ((got = csv_next(&r, err)) > 0) {
    if (r.nf != *ncols) {
      dpm_err(err, "%s:%ld: expected %d fields as in the header, found %d", path, r.lineno, *ncols, r.nf);
      goto done;
    }
    if (t->n == t->cap) {
      t->cap = t->cap ? 2 * t->cap : 1024;
      t->x = dpm_realloc(t->x, (size_t)t->cap * (size_t)t->d * sizeof(float));
      t->y = dpm_realloc(t->y, (size_t)t->cap * sizeof(int32_t));
    }
    if (csv_row(&r, *names, *label_col, max_label, t->x + (size_t)t->n * (size_t)t->d, &t->y[t->n], err)) goto done;
    t->n++;
    if (dpm_convert_verbose() && t->n % 1000000 == 0) dpm_convert_progress("%s: %lld rows", path, (long long)t->n);
  }
  if (got < 0) goto done;
  if (t->n == 0) {
    dpm_err(err, "%s: no data rows after the header", path);
    goto done;
  }
  rc = 0;
done:
  fclose(r.fp);
  free(r.line);
  dpm_free(r.field);
  dpm_free(r.col);
  return rc;
}

int dpm_convert_csv(const char *train_csv, const char *test_csv, const char *label_column, const char *out,
                    char err[DPM_ERRLEN]) {
  dpm_h5_quiet();
  csv_table t[2] = {{0}};
  char **names = NULL;
  int ncols = 0, label_col = -1, rc = -1;
  const char *path[2] = {train_csv, test_csv}, *split[2] = {"train", "test"};
  dpm_out_file o = {.file = -1};
  int64_t *counts = NULL;

  int32_t max_label = INT32_MAX - 1;
  for (int s = 0; s < 2; s++) {
    dpm_convert_progress("reading %s", path[s]);
    if (csv_read(path[s], label_column, &names, &ncols, &label_col, max_label, &t[s], err)) goto done;
    dpm_convert_progress("%s: %lld rows, %d features", split[s], (long long)t[s].n, t[s].d);
    if (s == 0) {
      max_label = 0;
      for (int64_t i = 0; i < t[0].n; i++)
        if (t[0].y[i] > max_label) max_label = t[0].y[i];
      /* Labels must be 0..K-1 with every class in the training data (this also catches 1-based labels).
       * With n rows at most n classes can be present, so only labels <= n need counting. */
      const int64_t ncheck = ((int64_t)max_label < t[0].n ? max_label : t[0].n) + 1;
      counts = dpm_calloc((size_t)ncheck, sizeof *counts);
      for (int64_t i = 0; i < t[0].n; i++)
        if (t[0].y[i] < ncheck) counts[t[0].y[i]]++;
      for (int64_t k = 0; k < ncheck; k++)
        if (counts[k] == 0) {
          dpm_err(err, "%s: no training row has label %lld; labels must be 0..K-1 with every class present (the "
                  "largest label is %d)", train_csv, (long long)k, max_label);
          goto done;
        }
    }
  }
  const int K = max_label + 1;

  if (dpm_out_open(&o, out, err)) goto done;
  for (int s = 0; s < 2; s++) {
    char name[32];
    hsize_t dims[2] = {(hsize_t)t[s].n, (hsize_t)t[s].d};
    snprintf(name, sizeof name, "/%s/x", split[s]);
    hid_t d = dpm_create_dset(o.file, name, H5T_IEEE_F32LE, 2, dims);
    int e = d < 0 ? -1 : dpm_write_rows(d, H5T_NATIVE_FLOAT, 0, dims[0], t[s].x);
    if (d >= 0) H5Dclose(d);
    snprintf(name, sizeof name, "/%s/y", split[s]);
    if (e || dpm_write_labels(o.file, name, t[s].y, t[s].n)) {
      dpm_err(err, "%s: writing %s failed (disk full?)", out, name);
      goto done;
    }
  }
  if (dpm_write_root_attrs(o.file, K, "csv")) {
    dpm_err(err, "%s: writing root attributes failed", out);
    goto done;
  }
  rc = dpm_out_commit(&o, err);
  if (!rc) dpm_convert_progress("wrote %s (%d classes)", out, K);
done:
  if (rc && o.tmp) dpm_out_abort(&o);
  for (int s = 0; s < 2; s++) {
    dpm_free(t[s].x);
    dpm_free(t[s].y);
  }
  for (int k = 0; names && k < ncols; k++) dpm_free(names[k]);
  dpm_free(names);
  dpm_free(counts);
  return rc;
}

