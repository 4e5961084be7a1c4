/* Dataset conversion, shared part: the converters' settings (verbosity, the normalization IDX files get,
 * whether exact pixel statistics are printed), the writer of a dataset file under a temporary name,
 * renamed into place when complete (io/atomic.h), and the token files' attributes, row writer and id
 * check. See io/convert.h. */
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

static int verbose = 0;
int dpm_convert_verbose(void) { return verbose; }

void dpm_data_set_verbose(int on) { verbose = on; }

/* Pixel normalization written by IDX conversion: fixed (data-independent) unless from_data is set. */
static double norm_mean = 0.5, norm_std = 0.5;
static int norm_from_data = 0;
void dpm_data_set_normalization(double mean, double std, int from_data) {
  norm_mean = mean;
  norm_std = std;
  norm_from_data = from_data;
}
void dpm_convert_normalization(double *mean, double *std, int *from_data) {
  *mean = norm_mean, *std = norm_std, *from_data = norm_from_data;
}
static int print_stats = 0;
int dpm_convert_print_stats(void) { return print_stats; }
void dpm_data_set_print_stats(int on) { print_stats = on; }

void dpm_convert_progress(const char *fmt, ...) {
  if (!verbose) return;
  va_list ap;
  va_start(ap, fmt);
  fputs("dpmpi: ", stdout);
  vfprintf(stdout, fmt, ap);
  fputc('\n', stdout);
  fflush(stdout);
  va_end(ap);
}


/* ---------------------------------------------------------------------------------------------------
 * Writing: a dataset file under a temporary name, renamed into place when complete
 * ------------------------------------------------------------------------------------------------- */


int dpm_out_open(dpm_out_file *o, const char *out, char *err) {
  size_t n = strlen(out) + 48;
  o->out = out;
  o->tmp = dpm_malloc(n);
  snprintf(o->tmp, n, "%s.tmp.%ld", out, (long)getpid());
  hid_t fapl = dpm_h5_fapl(NULL, 1);
  errno = 0;
  o->file = dpm_h5_create(o->tmp, fapl);
  H5Pclose(fapl);
  if (o->file < 0) {
    int e = errno;
    dpm_err(err, "%s: cannot create %s (%s)", out, o->tmp, e ? strerror(e) : "HDF5 error");
    dpm_free(o->tmp);
    o->tmp = NULL;
    return -1;
  }
  return 0;
}

void dpm_out_abort(dpm_out_file *o) {
  if (o->file >= 0) H5Fclose(o->file);
  o->file = -1;
  if (o->tmp) unlink(o->tmp);
  dpm_free(o->tmp);
  o->tmp = NULL;
}

int dpm_out_commit(dpm_out_file *o, char *err) {
  herr_t e = H5Fclose(o->file);
  o->file = -1;
  if (e < 0) {
    dpm_err(err, "%s: writing %s failed (disk full?)", o->out, o->tmp);
    dpm_out_abort(o);
    return -1;
  }
  const int stage = dpm_atomic_commit(o->tmp, o->out);
  if (stage) {
    if (stage == DPM_ATOMIC_FSYNC) dpm_err(err, "%s: fsync of %s failed: %s", o->out, o->tmp, strerror(errno));
    else dpm_err(err, "%s: cannot rename %s into place: %s", o->out, o->tmp, strerror(errno));
    dpm_out_abort(o);
    return -1;
  }
  dpm_free(o->tmp);
  o->tmp = NULL;
  return 0;
}

int dpm_write_root_attrs(hid_t file, int num_classes, const char *source) {
  hid_t root = H5Gopen2(file, "/", H5P_DEFAULT);
  int version = DPM_DATASET_VERSION_LABELLED;
  int rc = dpm_h5_put_attr(root, "num_classes", H5T_NATIVE_INT, H5T_NATIVE_INT, &num_classes) |
           dpm_h5_put_str(root, "format", DPM_DATASET_FORMAT) |
           dpm_h5_put_attr(root, "format_version", H5T_NATIVE_INT, H5T_NATIVE_INT, &version) |
           dpm_h5_put_str(root, "source", source);
  H5Gclose(root);
  return rc;
}

/* Create `name` (e.g. "/train/x") with element type `type` (file type) and dims, chunked by rows with a
 * Fletcher32 checksum per chunk (h5util.h). Intermediate groups are created as needed. */
hid_t dpm_create_dset(hid_t file, const char *name, hid_t type, int rank, const hsize_t *dims) {
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE), dcpl = dpm_h5_checked_dcpl(rank, dims, H5Tget_size(type));
  H5Pset_create_intermediate_group(lcpl, 1);
  hid_t s = H5Screate_simple(rank, dims, NULL);
  hid_t d = H5Dcreate2(file, name, type, s, lcpl, dcpl, H5P_DEFAULT);
  H5Sclose(s);
  H5Pclose(dcpl);
  H5Pclose(lcpl);
  return d;
}

/* Write rows [row0, row0 + rows) of dataset d from buf (memory type mtype). */
int dpm_write_rows(hid_t d, hid_t mtype, hsize_t row0, hsize_t rows, const void *buf) {
  if (rows == 0) return 0;
  hid_t fs = H5Dget_space(d), ms = dpm_io_select_rows(fs, row0, rows);
  herr_t e = H5Dwrite(d, mtype, ms, fs, H5P_DEFAULT, buf);
  H5Sclose(ms);
  H5Sclose(fs);
  return e < 0 ? -1 : 0;
}

int dpm_write_labels(hid_t file, const char *name, const int32_t *y, int64_t n) {
  hsize_t dims[1] = {(hsize_t)n};
  hid_t d = dpm_create_dset(file, name, H5T_STD_I32LE, 1, dims);
  if (d < 0) return -1;
  int rc = dpm_write_rows(d, H5T_NATIVE_INT32, 0, (hsize_t)n, y);
  H5Dclose(d);
  return rc;
}


/* ---------------------------------------------------------------------------------------------------
 * Token files (kind = "tokens"): root attributes, the row writer, the id check
 * ------------------------------------------------------------------------------------------------- */

int dpm_write_token_attrs(hid_t file, int vocab, int pad_id, int eot_id, const char *tokenizer,
                          const char *source) {
  hid_t root = H5Gopen2(file, "/", H5P_DEFAULT);
  int version = DPM_DATASET_VERSION_TOKENS;
  int rc = dpm_h5_put_str(root, "format", DPM_DATASET_FORMAT) |
           dpm_h5_put_attr(root, "format_version", H5T_NATIVE_INT, H5T_NATIVE_INT, &version) |
           dpm_h5_put_str(root, "kind", DPM_KIND_TOKENS) |
           dpm_h5_put_attr(root, "vocab", H5T_STD_I32LE, H5T_NATIVE_INT, &vocab) |
           dpm_h5_put_attr(root, "pad_id", H5T_STD_I32LE, H5T_NATIVE_INT, &pad_id) |
           dpm_h5_put_attr(root, "eot_id", H5T_STD_I32LE, H5T_NATIVE_INT, &eot_id) |
           dpm_h5_put_str(root, "tokenizer", tokenizer) | dpm_h5_put_str(root, "source", source);
  H5Gclose(root);
  return rc;
}

int dpm_token_writer_open(dpm_token_writer *w, hid_t file, const char *split, int64_t n, int row_len) {
  char name[64];
  snprintf(name, sizeof name, "/%s/tokens", split);
  hsize_t dims[2] = {(hsize_t)n, (hsize_t)row_len};
  memset(w, 0, sizeof *w);
  w->n = n, w->row_len = row_len;
  w->buf_rows = n > 0 ? (int64_t)dpm_h5_chunk_rows(2, dims, 4) : 1;
  if (w->buf_rows > n && n > 0) w->buf_rows = n;
  w->buf = dpm_malloc((size_t)w->buf_rows * (size_t)row_len * sizeof(int32_t));
  w->d = dpm_create_dset(file, name, H5T_STD_I32LE, 2, dims);
  if (w->d < 0) w->failed = 1;
  return w->d < 0 ? -1 : 0;
}

static void token_writer_flush(dpm_token_writer *w) {
  if (w->used == 0) return;
  if (!w->failed && dpm_write_rows(w->d, H5T_NATIVE_INT32, (hsize_t)(w->next - w->used), (hsize_t)w->used, w->buf))
    w->failed = 1;
  w->used = 0;
}

void dpm_token_writer_put(dpm_token_writer *w, const int32_t *row) {
  if (w->next >= w->n) { /* more rows than declared: the input changed; close reports it */
    w->failed = 1;
    w->next++;
    return;
  }
  memcpy(w->buf + (size_t)w->used * (size_t)w->row_len, row, (size_t)w->row_len * sizeof(int32_t));
  w->used++, w->next++;
  if (w->used == w->buf_rows) token_writer_flush(w);
}

int dpm_token_writer_close(dpm_token_writer *w) {
  token_writer_flush(w);
  if (w->d >= 0) H5Dclose(w->d);
  w->d = -1;
  dpm_free(w->buf);
  w->buf = NULL;
  return w->failed || w->next != w->n ? -1 : 0;
}

int dpm_token_row_check(const int32_t *row, int row_len, int vocab, int pad_id, int *no_target) {
  int bad = -1, real = 0;
  for (int j = 0; j < row_len; j++) {
    if (bad < 0 && !dpm_token_ok(row[j], vocab, pad_id)) bad = j;
    if (j > 0 && row[j] != pad_id) real = 1;
  }
  *no_target = !real;
  return bad;
}
