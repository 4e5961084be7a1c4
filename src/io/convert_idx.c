/* `dpmpi data convert --from idx`: IDX files (gzipped or plain) into the dataset layout. */
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
 * IDX (the MNIST family's format): big-endian header, magic 0x0000 <type> <ndim>, ndim uint32 sizes,
 * then the data. Read through zlib, which reads gzip and plain files alike.
 * ------------------------------------------------------------------------------------------------- */

typedef struct {
  gzFile gz;
  const char *path;
  int ndim;
  uint32_t dims[3];
  uint64_t items;  /* product of dims */
} idx_file;

/* Read exactly n bytes; -1 with err naming the file if the stream ends early or is damaged. */
static int idx_read(idx_file *f, void *buf, uint64_t n, const char *what, char *err) {
  uint64_t got = 0;
  while (got < n) {
    uint64_t want = n - got > (1u << 30) ? (1u << 30) : n - got;
    int r = gzread(f->gz, (char *)buf + got, (unsigned)want);
    if (r < 0) {
      int zerr;
      const char *msg = gzerror(f->gz, &zerr);
      return dpm_err(err, "%s: damaged file while reading %s: %s", f->path, what, msg);
    }
    if (r == 0) {
      int zerr;
      const char *msg = gzerror(f->gz, &zerr);
      return dpm_err(err, "%s: truncated: the file ends inside the %s%s%s", f->path, what,
                     zerr != Z_OK ? ": " : "", zerr != Z_OK ? msg : "");
    }
    got += (uint64_t)r;
  }
  return 0;
}

static void idx_close(idx_file *f) {
  if (f->gz) gzclose(f->gz);
  f->gz = NULL;
}

/* Open an IDX file of unsigned bytes with `ndim` dimensions and read its header. */
static int idx_open(idx_file *f, const char *path, int ndim, const char *kind, char *err) {
  memset(f, 0, sizeof *f);
  f->path = path;
  errno = 0;
  f->gz = gzopen(path, "rb");
  if (!f->gz) return dpm_err(err, "%s: cannot open: %s", path, errno ? strerror(errno) : "out of memory");
  gzbuffer(f->gz, 1 << 20);
  unsigned char m[4], d[12];
  if (idx_read(f, m, 4, "IDX header", err)) goto fail;
  uint32_t magic = (uint32_t)m[0] << 24 | (uint32_t)m[1] << 16 | (uint32_t)m[2] << 8 | m[3];
  uint32_t expect = 0x800u | (uint32_t)ndim;
  if (magic != expect) {
    dpm_err(err, "%s: bad IDX magic 0x%08x, expected 0x%08x for %s (unsigned bytes, %d dimensions)", path, magic,
            expect, kind, ndim);
    goto fail;
  }
  if (idx_read(f, d, (uint64_t)4 * ndim, "IDX header", err)) goto fail;
  f->ndim = ndim;
  f->items = 1;
  for (int k = 0; k < ndim; k++) {
    f->dims[k] = (uint32_t)d[4 * k] << 24 | (uint32_t)d[4 * k + 1] << 16 | (uint32_t)d[4 * k + 2] << 8 | d[4 * k + 3];
    if (f->dims[k] == 0 || f->dims[k] > INT_MAX) {
      dpm_err(err, "%s: IDX dimension %d is %u; expected 1..%d", path, k, f->dims[k], INT_MAX);
      goto fail;
    }
    f->items *= f->dims[k];
  }
  if (ndim == 3 && (uint64_t)f->dims[1] * f->dims[2] > INT_MAX) {
    dpm_err(err, "%s: images of %u x %u pixels are too large", path, f->dims[1], f->dims[2]);
    goto fail;
  }
  return 0;
fail:
  idx_close(f);
  return -1;
}

/* After the declared data, the file must end. */
static int idx_check_end(idx_file *f, char *err) {
  char c;
  int r = gzread(f->gz, &c, 1);
  if (r > 0) return dpm_err(err, "%s: unexpected data after the %llu items its header declares", f->path,
                            (unsigned long long)f->items);
  if (r < 0) {
    int zerr;
    return dpm_err(err, "%s: damaged file: %s", f->path, gzerror(f->gz, &zerr));
  }
  return 0;
}

/* Read labels (N unsigned bytes) into int32. */
static int idx_labels(idx_file *f, int32_t **y, char *err) {
  uint8_t *raw = dpm_malloc(f->items);
  int rc = idx_read(f, raw, f->items, "labels", err);
  if (!rc) rc = idx_check_end(f, err);
  *y = dpm_malloc(f->items * sizeof(int32_t));
  for (uint64_t i = 0; i < f->items && !rc; i++) (*y)[i] = raw[i];
  dpm_free(raw);
  return rc;
}

/* Stream images from f into `name` (N x H x W x 1 uint8) in row chunks; sum and sum of squares of pixels. */
static int idx_copy_images(idx_file *f, hid_t file, const char *name, uint64_t *sum, uint64_t *sumsq,
                           char *err) {
  const uint64_t N = f->dims[0], row = (uint64_t)f->dims[1] * f->dims[2];
  hsize_t dims[4] = {N, f->dims[1], f->dims[2], 1};
  hid_t d = dpm_create_dset(file, name, H5T_STD_U8LE, 4, dims);
  if (d < 0) return dpm_err(err, "cannot create dataset %s", name);
  /* Whole HDF5 chunks per write: a partly written checksummed chunk would be read back and rewritten. */
  const uint64_t per = dpm_h5_chunk_rows(4, dims, 1);
  uint64_t chunk = per * (DPM_IO_CHUNK_BYTES / (per * row) > 0 ? DPM_IO_CHUNK_BYTES / (per * row) : 1);
  if (chunk > N) chunk = N;
  if (chunk < 1) chunk = 1;
  uint8_t *buf = dpm_malloc(chunk * row);
  int rc = 0;
  uint64_t s = 0, s2 = 0;
  for (uint64_t r0 = 0; r0 < N && !rc; r0 += chunk) {
    uint64_t rows = N - r0 < chunk ? N - r0 : chunk;
    rc = idx_read(f, buf, rows * row, "image data", err);
    if (rc) break;
    for (uint64_t k = 0; k < rows * row; k++) {
      s += buf[k];
      s2 += (uint64_t)buf[k] * buf[k];
    }
    if (dpm_write_rows(d, H5T_NATIVE_UINT8, r0, rows, buf)) rc = dpm_err(err, "writing %s failed (disk full?)", name);
  }
  if (!rc) rc = idx_check_end(f, err);
  dpm_free(buf);
  H5Dclose(d);
  *sum = s;
  *sumsq = s2;
  return rc;
}

/* Open the four IDX files and check their headers: nothing is written unless they agree (counts of
 * images and labels per split, image size across splits). */
static int idx_open_all(idx_file fi[2], idx_file fl[2], const char *ipath[2], const char *lpath[2], char *err) {
  for (int s = 0; s < 2; s++) {
    if (idx_open(&fi[s], ipath[s], 3, "images", err) || idx_open(&fl[s], lpath[s], 1, "labels", err)) return -1;
    if (fi[s].dims[0] != fl[s].dims[0])
      return dpm_err(err, "%s has %u images but %s has %u labels (count mismatch)", ipath[s], fi[s].dims[0],
                     lpath[s], fl[s].dims[0]);
  }
  if (fi[0].dims[1] != fi[1].dims[1] || fi[0].dims[2] != fi[1].dims[2])
    return dpm_err(err, "%s has %ux%u images but %s has %ux%u (size mismatch)", ipath[0], fi[0].dims[1],
                   fi[0].dims[2], ipath[1], fi[1].dims[1], fi[1].dims[2]);
  return 0;
}

/* Read both label files into y[]; the classes are 0..K-1 with K - 1 the largest training label, every
 * class present in the training labels and no other label in the test labels. */
static int idx_classes(idx_file fl[2], int32_t *y[2], const char *lpath[2], int *K, char *err) {
  for (int s = 0; s < 2; s++)
    if (idx_labels(&fl[s], &y[s], err)) return -1;
  int max_label = 0;
  for (uint64_t i = 0; i < fl[0].items; i++)
    if (y[0][i] > max_label) max_label = y[0][i];
  *K = max_label + 1;
  for (uint64_t i = 0; i < fl[1].items; i++)
    if (y[1][i] >= *K)
      return dpm_err(err, "%s: label %d of item %llu is not a class of the training labels (0..%d)", lpath[1],
                     y[1][i], (unsigned long long)i, *K - 1);
  int64_t *counts = dpm_calloc((size_t)*K, sizeof *counts);
  for (uint64_t i = 0; i < fl[0].items; i++) counts[y[0][i]]++;
  int rc = 0;
  for (int k = 0; k < *K && !rc; k++)
    if (counts[k] == 0)
      rc = dpm_err(err, "%s: no training example has label %d; labels must be 0..K-1 with every class present (the "
                   "largest label is %d)", lpath[0], k, max_label);
  dpm_free(counts);
  return rc;
}

/* Write /train and /test: x streamed from the image files, y from the labels; the exact mean and std of
 * the training pixels / 255 (integer sums: independent of summation order). */
static int idx_write_splits(hid_t file, idx_file fi[2], const idx_file fl[2], int32_t *const y[2],
                            const char *ipath[2], const char *out, double *mean, double *std, char *err) {
  static const char *split[2] = {"train", "test"};
  for (int s = 0; s < 2; s++) {
    char name[32];
    snprintf(name, sizeof name, "/%s/x", split[s]);
    dpm_convert_progress("%s: %u images of %ux%u from %s%s", split[s], fi[s].dims[0], fi[s].dims[1], fi[s].dims[2], ipath[s],
             gzdirect(fi[s].gz) ? "" : " (gzip)");
    uint64_t sum = 0, sumsq = 0;
    if (idx_copy_images(&fi[s], file, name, &sum, &sumsq, err)) return -1;
    if (s == 0) {
      double cnt = (double)fi[0].items;
      *mean = (double)sum / 255.0 / cnt;
      double var = (double)sumsq / (255.0 * 255.0) / cnt - *mean * *mean;
      *std = sqrt(var > 0 ? var : 0);
      if (!(*std > 0)) return dpm_err(err, "%s: every training pixel has the same value; cannot normalize", ipath[0]);
    }
    snprintf(name, sizeof name, "/%s/y", split[s]);
    if (dpm_write_labels(file, name, y[s], (int64_t)fl[s].items))
      return dpm_err(err, "%s: writing %s failed (disk full?)", out, name);
  }
  return 0;
}

/* The x attributes mean and std: the fixed normalization, or the training pixels' own (from_data). */
static int idx_write_normalization(hid_t file, double mean, double std, const char *out, char *err) {
  static const char *split[2] = {"train", "test"};
  double nmean, nstd;
  int nfrom;
  dpm_convert_normalization(&nmean, &nstd, &nfrom);
  for (int s = 0; s < 2; s++) {
    char name[32];
    snprintf(name, sizeof name, "/%s/x", split[s]);
    hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    float fm = (float)(nfrom ? mean : nmean), fs = (float)(nfrom ? std : nstd);
    int e = dpm_h5_put_attr(d, "mean", H5T_NATIVE_FLOAT, H5T_NATIVE_FLOAT, &fm) |
            dpm_h5_put_attr(d, "std", H5T_NATIVE_FLOAT, H5T_NATIVE_FLOAT, &fs);
    H5Dclose(d);
    if (e) return dpm_err(err, "%s: writing attributes of %s failed", out, name);
  }
  return 0;
}

static void idx_report(int K, double mean, double std) {
  double nmean, nstd;
  int nfrom;
  dpm_convert_normalization(&nmean, &nstd, &nfrom);
  if (nfrom)
    dpm_convert_progress("%d classes, pixel mean %.6f std %.6f of the training pixels / 255 (NOT covered by the DP guarantee: "
             "computed from the private data without noise)", K, mean, std);
  else if (dpm_convert_print_stats())
    dpm_convert_progress("%d classes, fixed normalization mean %g std %g (data-independent); the training pixels have mean %.6f "
             "std %.6f (/ 255; exact statistics of the private data, NOT covered by the DP guarantee)", K, nmean,
             nstd, mean, std);
  else
    dpm_convert_progress("%d classes, fixed normalization mean %g std %g (data-independent)", K, nmean, nstd);
}

int dpm_convert_idx(const char *train_images, const char *train_labels, const char *test_images,
                    const char *test_labels, const char *out, char err[DPM_ERRLEN]) {
  dpm_h5_quiet();
  idx_file fi[2] = {{0}}, fl[2] = {{0}};
  const char *ipath[2] = {train_images, test_images}, *lpath[2] = {train_labels, test_labels};
  int32_t *y[2] = {NULL, NULL};
  dpm_out_file o = {.file = -1};
  int rc = -1, K = 0;
  double mean = 0, std = 1;
  if (idx_open_all(fi, fl, ipath, lpath, err) || idx_classes(fl, y, lpath, &K, err)) goto done;
  if (dpm_out_open(&o, out, err)) goto done;
  if (idx_write_splits(o.file, fi, fl, y, ipath, out, &mean, &std, err)) goto done;
  if (idx_write_normalization(o.file, mean, std, out, err)) goto done;
  if (dpm_write_root_attrs(o.file, K, "idx")) {
    dpm_err(err, "%s: writing root attributes failed", out);
    goto done;
  }
  idx_report(K, mean, std);
  rc = dpm_out_commit(&o, err);
  if (!rc) dpm_convert_progress("wrote %s", out);
done:
  if (rc && o.tmp) dpm_out_abort(&o);
  for (int s = 0; s < 2; s++) {
    idx_close(&fi[s]);
    idx_close(&fl[s]);
    dpm_free(y[s]);
  }
  return rc;
}

