/* Dataset conversion, shared part: the converters' settings (verbosity, the normalization IDX files get,
 * whether exact pixel statistics are printed) and the writer of a dataset file under a temporary name,
 * renamed into place when complete (io/atomic.h). See io/convert.h. */
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
  int version = DPM_DATASET_VERSION;
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

