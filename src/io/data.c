/* dpmpi data: the HDF5 dataset file (layout in dpmpi/io/data.h and docs/formats.md). Owns reading a
 * split's header (probe), the collective parallel load of each rank's contiguous shard with MPI-IO
 * hyperslab reads, and the serial conversion of IDX (gzipped or plain) and CSV files into that layout.
 * Every user-facing failure is one line naming the file, the dataset path or line:column, and what is
 * wrong; HDF5's own error-stack printing is switched off so it never reaches the user.
 */
#include "dpmpi/io/data.h"

#include "io/atomic.h"
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

#define DPM_DATASET_FORMAT "dpmpi-dataset"
#define DPM_DATASET_VERSION 1
/* Bytes of file data per collective read (and per conversion write): bounds peak memory and keeps
 * every MPI-IO request far below the 2 GiB limit of a single call. */
#define DPM_IO_CHUNK_BYTES ((size_t)64 << 20)

static int verbose = 0;

void dpm_data_set_verbose(int on) { verbose = on; }

/* Pixel normalization written by IDX conversion: fixed (data-independent) unless from_data is set. */
static double norm_mean = 0.5, norm_std = 0.5;
static int norm_from_data = 0;
void dpm_data_set_normalization(double mean, double std, int from_data) {
  norm_mean = mean;
  norm_std = std;
  norm_from_data = from_data;
}
static int print_stats = 0;
void dpm_data_set_print_stats(int on) { print_stats = on; }

static void progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void progress(const char *fmt, ...) {
  if (!verbose) return;
  va_list ap;
  va_start(ap, fmt);
  fputs("dpmpi: ", stdout);
  vfprintf(stdout, fmt, ap);
  fputc('\n', stdout);
  fflush(stdout);
  va_end(ap);
}

static void close_id(hid_t *id, herr_t (*closer)(hid_t)) {
  if (*id >= 0) closer(*id);
  *id = -1;
}

/* ---------------------------------------------------------------------------------------------------
 * Reading: header checks shared by probe, load and label counts
 * ------------------------------------------------------------------------------------------------- */

/* A clean message for a path that is missing, unreadable or not HDF5, before HDF5 sees it. */
static int check_hdf5_path(const char *path, char *err) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return dpm_err(err, "%s: cannot open: %s", path, strerror(errno));
  fclose(fp);
  if (H5Fis_hdf5(path) <= 0) return dpm_err(err, "%s: not an HDF5 file", path);
  return 0;
}

/* Read scalar numeric attribute `name` of object `obj` as double; -1 with err if missing or not a number. */
static int read_num_attr(hid_t obj, const char *path, const char *where, const char *name, double *v,
                         char *err) {
  htri_t ex = H5Aexists(obj, name);
  if (ex <= 0) return dpm_err(err, "%s: %s: attribute '%s' is missing", path, where, name);
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT), t = -1, s = -1;
  int rc = -1;
  if (a < 0) {
    dpm_err(err, "%s: %s: cannot open attribute '%s'", path, where, name);
    goto done;
  }
  t = H5Aget_type(a);
  s = H5Aget_space(a);
  H5T_class_t cls = H5Tget_class(t);
  if ((cls != H5T_INTEGER && cls != H5T_FLOAT) || H5Sget_simple_extent_npoints(s) != 1) {
    dpm_err(err, "%s: %s: attribute '%s' must be a single number", path, where, name);
    goto done;
  }
  if (H5Aread(a, H5T_NATIVE_DOUBLE, v) < 0) {
    dpm_err(err, "%s: %s: cannot read attribute '%s'", path, where, name);
    goto done;
  }
  rc = 0;
done:
  close_id(&s, H5Sclose);
  close_id(&t, H5Tclose);
  close_id(&a, H5Aclose);
  return rc;
}

/* Read string attribute `name` (fixed or variable length) into buf; 1 if absent, 0 if read, -1 on error. */
static int read_str_attr(hid_t obj, const char *path, const char *name, char *buf, size_t cap, char *err) {
  if (H5Aexists(obj, name) <= 0) return 1;
  char *v = dpm_h5_get_str(obj, name);
  if (!v) return dpm_err(err, "%s: attribute '%s' must be a string", path, name);
  snprintf(buf, cap, "%s", v);
  dpm_free(v);
  return 0;
}

/* Check that link `name` (absolute, e.g. "/train/x") exists, walking one component at a time. */
static int link_exists(hid_t file, const char *name) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s", name);
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || *p == '\0') {
      char c = *p;
      *p = '\0';
      if (H5Lexists(file, buf, H5P_DEFAULT) <= 0) return 0;
      if (c == '\0') return 1;
      *p = c;
    }
  }
}

/* The root group's attributes: format and format_version (checked if present) and num_classes. */
static int read_root_attrs(hid_t file, const char *path, dpm_dataset *hdr, char *err) {
  hid_t root = H5Gopen2(file, "/", H5P_DEFAULT);
  if (root < 0) return dpm_err(err, "%s: cannot open the root group", path);
  int rc = -1;
  char fmt[64];
  int r = read_str_attr(root, path, "format", fmt, sizeof fmt, err);
  if (r < 0) goto done;
  if (r == 0 && strcmp(fmt, DPM_DATASET_FORMAT) != 0) {
    dpm_err(err, "%s: attribute 'format' is '%s', expected '%s'", path, fmt, DPM_DATASET_FORMAT);
    goto done;
  }
  double v;
  if (H5Aexists(root, "format_version") > 0) {
    if (read_num_attr(root, path, "/", "format_version", &v, err)) goto done;
    if (v > DPM_DATASET_VERSION) {
      dpm_err(err, "%s: format_version %g is newer than this dpmpi reads (%d)", path, v, DPM_DATASET_VERSION);
      goto done;
    }
  }
  if (read_num_attr(root, path, "/", "num_classes", &v, err)) goto done;
  if (!(v >= 1 && v <= INT_MAX) || v != floor(v)) {
    dpm_err(err, "%s: /: attribute num_classes is %g; expected an integer >= 1", path, v);
    goto done;
  }
  hdr->num_classes = (int)v;
  rc = 0;
done:
  H5Gclose(root);
  return rc;
}

/* x's element type and shape: uint8 N x H x W [x C] images or float32 N x d features; fills hdr's
 * images, C, H, W and n_total. */
static int read_x_shape(hid_t x, const char *path, const char *xname, dpm_dataset *hdr, char *err) {
  hid_t xt = H5Dget_type(x), xs = H5Dget_space(x);
  int rc = -1;
  H5T_class_t xc = H5Tget_class(xt);
  size_t xsize = H5Tget_size(xt);
  int xrank = H5Sget_simple_extent_ndims(xs);
  hsize_t xd[H5S_MAX_RANK];
  if (xrank < 1 || xrank > 4) {
    dpm_err(err, "%s: %s has %d dimensions; expected N x d (float32) or N x H x W x C (uint8)", path, xname,
            xrank);
    goto done;
  }
  H5Sget_simple_extent_dims(xs, xd, NULL);
  if (xc == H5T_INTEGER && xsize == 1 && H5Tget_sign(xt) == H5T_SGN_NONE) {
    if (xrank != 4 && xrank != 3) {
      dpm_err(err, "%s: %s is uint8 with %d dimensions; expected N x H x W x C", path, xname, xrank);
      goto done;
    }
    hdr->images = 1;
    hdr->H = (int)(xd[1] <= INT_MAX ? xd[1] : 0);
    hdr->W = (int)(xd[2] <= INT_MAX ? xd[2] : 0);
    hdr->C = xrank == 4 ? (int)(xd[3] <= INT_MAX ? xd[3] : 0) : 1;
  } else if (xc == H5T_FLOAT && xsize == 4) {
    if (xrank != 2) {
      dpm_err(err, "%s: %s is float32 with %d dimensions; expected N x d", path, xname, xrank);
      goto done;
    }
    hdr->images = 0;
    hdr->C = (int)(xd[1] <= INT_MAX ? xd[1] : 0);
    hdr->H = hdr->W = 1;
  } else {
    dpm_err(err, "%s: %s has an unsupported element type (%s, %zu bytes); expected uint8 images or float32 "
            "features", path, xname, xc == H5T_INTEGER ? "integer" : xc == H5T_FLOAT ? "float" : "non-numeric",
            xsize);
    goto done;
  }
  if (hdr->C <= 0 || hdr->H <= 0 || hdr->W <= 0 ||
      (int64_t)hdr->C * hdr->H * hdr->W > INT_MAX) {
    dpm_err(err, "%s: %s has an empty or too large example shape", path, xname);
    goto done;
  }
  hdr->n_total = (int64_t)xd[0];
  rc = 0;
done:
  close_id(&xs, H5Sclose);
  close_id(&xt, H5Tclose);
  return rc;
}

/* y: integer labels, a vector of one label per row of x (n_total). */
static int check_y(hid_t y, const char *path, const char *xname, const char *yname, int64_t n_total, char *err) {
  hid_t yt = H5Dget_type(y), ys = H5Dget_space(y);
  int rc = -1;
  if (H5Tget_class(yt) != H5T_INTEGER) {
    dpm_err(err, "%s: %s must hold integer labels", path, yname);
    goto done;
  }
  int yrank = H5Sget_simple_extent_ndims(ys);
  hsize_t yd[H5S_MAX_RANK];
  if (yrank != 1) {
    dpm_err(err, "%s: %s has %d dimensions; expected a vector of N labels", path, yname, yrank);
    goto done;
  }
  H5Sget_simple_extent_dims(ys, yd, NULL);
  if (yd[0] != (hsize_t)n_total) {
    dpm_err(err, "%s: %s has %llu examples but %s has %llu labels", path, xname, (unsigned long long)n_total,
            yname, (unsigned long long)yd[0]);
    goto done;
  }
  rc = 0;
done:
  close_id(&ys, H5Sclose);
  close_id(&yt, H5Tclose);
  return rc;
}

/* Images: x's mean and std attributes (finite, std > 0); features are not normalized (0, 1). */
static int read_normalization(hid_t x, const char *path, const char *xname, dpm_dataset *hdr, char *err) {
  if (!hdr->images) {
    hdr->mean = 0.0f;
    hdr->std = 1.0f;
    return 0;
  }
  double mean, std;
  if (read_num_attr(x, path, xname, "mean", &mean, err)) return -1;
  if (read_num_attr(x, path, xname, "std", &std, err)) return -1;
  if (!isfinite(mean) || !isfinite(std) || !(std > 0))
    return dpm_err(err, "%s: %s: normalization mean %g, std %g; expected finite values and std > 0", path, xname,
                   mean, std);
  hdr->mean = (float)mean;
  hdr->std = (float)std;
  return 0;
}

/* Validate the file's root attributes and split `group`, fill hdr (no data). The file is open. */
static int read_header(hid_t file, const char *path, const char *group, dpm_dataset *hdr, char *err) {
  char xname[128], yname[128], gname[128];
  if (!group || !group[0] || strlen(group) > 64 || strchr(group, '/'))
    return dpm_err(err, "%s: invalid split name '%s'", path, group ? group : "");
  snprintf(gname, sizeof gname, "/%s", group);
  snprintf(xname, sizeof xname, "/%s/x", group);
  snprintf(yname, sizeof yname, "/%s/y", group);
  memset(hdr, 0, sizeof *hdr);
  if (read_root_attrs(file, path, hdr, err)) return -1;
  if (!link_exists(file, gname)) return dpm_err(err, "%s: split %s is missing", path, gname);
  hid_t x = -1, y = -1;
  int rc = -1;
  if (!link_exists(file, xname) || (x = H5Dopen2(file, xname, H5P_DEFAULT)) < 0) {
    dpm_err(err, "%s: dataset %s is missing", path, xname);
  } else if (!link_exists(file, yname) || (y = H5Dopen2(file, yname, H5P_DEFAULT)) < 0) {
    dpm_err(err, "%s: dataset %s is missing", path, yname);
  } else {
    hdr->checksums = dpm_h5_is_checked(x) && dpm_h5_is_checked(y);
    if (!read_x_shape(x, path, xname, hdr, err) && !check_y(y, path, xname, yname, hdr->n_total, err))
      rc = read_normalization(x, path, xname, hdr, err);
  }
  close_id(&x, H5Dclose);
  close_id(&y, H5Dclose);
  return rc;
}

static hid_t open_serial(const char *path, char *err) {
  if (check_hdf5_path(path, err)) return -1;
  hid_t fapl = dpm_h5_fapl(NULL, 1);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  if (f < 0) dpm_err(err, "%s: cannot open as HDF5 (damaged or truncated file?)", path);
  return f;
}

int dpm_dataset_probe(const char *path, const char *group, dpm_dataset *hdr, char err[DPM_ERRLEN]) {
  dpm_h5_quiet();
  memset(hdr, 0, sizeof *hdr);
  hid_t f = open_serial(path, err);
  if (f < 0) return -1;
  int rc = read_header(f, path, group, hdr, err);
  H5Fclose(f);
  return rc;
}

/* Row window of a 1..4-dimensional dataset: rows [row0, row0 + rows) of `space`, all other dimensions
 * whole; rows == 0 selects nothing (a rank with an empty shard still joins collective reads). Returns a
 * matching memory space of the same shape as the selection: with a chunked dataset, a memory space of
 * another shape makes HDF5 map every element to its chunk one by one (4x slower reads). */
static hid_t select_rows(hid_t space, hsize_t row0, hsize_t rows) {
  hsize_t dims[H5S_MAX_RANK], start[H5S_MAX_RANK] = {0}, count[H5S_MAX_RANK];
  int rank = H5Sget_simple_extent_ndims(space);
  H5Sget_simple_extent_dims(space, dims, NULL);
  for (int k = 0; k < rank; k++) count[k] = k == 0 ? (rows ? rows : 1) : dims[k];
  start[0] = row0;
  hid_t mem = H5Screate_simple(rank, count, NULL);
  if (rows == 0) {
    H5Sselect_none(space);
    H5Sselect_none(mem);
  } else {
    H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
  }
  return mem;
}

static int check_labels(const int32_t *y, int64_t n, int64_t row0, int K, const char *path, const char *yname,
                        char *err) {
  for (int64_t i = 0; i < n; i++)
    if (y[i] < 0 || y[i] >= K)
      return dpm_err(err, "%s: %s: label %d at row %lld is outside [0, %d) (num_classes = %d)", path, yname, y[i],
                     (long long)(row0 + i), K, K);
  return 0;
}

/* Every rank learns whether any rank failed; all get the message of the lowest failing rank. */
static int agree(MPI_Comm comm, int rc, char *err) {
  const int first = dpm_comm_first_failed(comm, rc);
  if (first < 0) return 0;
  DPM_MPI_CHECK(MPI_Bcast(err, DPM_ERRLEN, MPI_CHAR, first, comm));
  return -1;
}

void dpm_dataset_free(dpm_dataset *d) {
  if (!d) return;
  dpm_free(d->x);
  dpm_free(d->y);
  d->x = NULL;
  d->y = NULL;
}

/* Read rows [row0, row0 + rows) of dataset d into buf (memory type mtype) with transfer list dxpl;
 * rows == 0 selects nothing but still takes part in a collective read. */
static herr_t read_rows(hid_t d, hid_t mtype, hsize_t row0, hsize_t rows, hid_t dxpl, void *buf) {
  hid_t fs = H5Dget_space(d), ms = select_rows(fs, row0, rows);
  herr_t e = H5Dread(d, mtype, ms, fs, dxpl, buf);
  H5Sclose(ms);
  H5Sclose(fs);
  return e;
}

/* uint8 N x H x W x C -> float N x C x H x W, each byte value mapped through lut (its normalization). */
static void unpack_images(const uint8_t *src, int64_t N, int C, int H, int W, const float *lut, float *dst) {
  const size_t chw = (size_t)C * (size_t)H * (size_t)W;
  for (int64_t i = 0; i < N; i++) {
    const uint8_t *s = src + (size_t)i * chw;
    float *d = dst + (size_t)i * chw;
    for (int h = 0; h < H; h++)
      for (int w = 0; w < W; w++)
        for (int ch = 0; ch < C; ch++) d[((size_t)ch * H + h) * W + w] = lut[s[((size_t)h * W + w) * C + ch]];
  }
}

/* Every value of the N x F features x (file rows row0..) is finite. */
static int check_finite(const float *x, int64_t N, int64_t F, int64_t row0, const char *path, const char *xname,
                        char *err) {
  for (int64_t i = 0; i < N; i++)
    for (int64_t j = 0; j < F; j++)
      if (!isfinite(x[i * F + j]))
        return dpm_err(err, "%s: %s: value %g at row %lld, column %lld is not finite", path, xname,
                       (double)x[i * F + j], (long long)(row0 + i), (long long)j);
  return 0;
}

/* Collective: every rank checks that it can see the file (cheap), rank 0 reads its signature, then all
 * open it with MPI-IO. -1 on every rank (err: the lowest failing rank's message) if any rank failed. */
static hid_t open_collective(MPI_Comm comm, const char *path, char *err) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  int rc = access(path, R_OK) != 0 ? dpm_err(err, "%s: cannot open: %s", path, strerror(errno)) : 0;
  if (agree(comm, rc, err)) return -1;
  if (agree(comm, rank == 0 ? check_hdf5_path(path, err) : 0, err)) return -1;
  hid_t fapl = dpm_h5_fapl(&comm, 1);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  rc = f < 0 ? dpm_err(err, "%s: cannot open as HDF5 (damaged or truncated file?)", path) : 0;
  if (agree(comm, rc, err)) {
    if (f >= 0) H5Fclose(f);
    return -1;
  }
  return f;
}

/* A shard's collective read: the split's datasets, and the staging buffer and lookup table of images. */
typedef struct {
  const char *path;
  char xname[128], yname[128];
  hid_t xd, yd, dxpl;
  int64_t chunk_rows;
  float lut[256];
  uint8_t *raw;
} shard_reader;

/* Collective reads of rows [r0, r0 + rows) of the shard (rows may be 0: an empty read): x into xdst
 * (images: into the staging buffer), y in place. 0, or the dataset whose read failed first: 1 x, 2 y. */
static int read_chunk(const shard_reader *r, dpm_dataset *out, int64_t r0, int64_t rows, float *xdst) {
  const hsize_t f0 = (hsize_t)(out->begin + r0);
  herr_t e = out->images ? read_rows(r->xd, H5T_NATIVE_UINT8, f0, (hsize_t)rows, r->dxpl, r->raw)
                         : read_rows(r->xd, H5T_NATIVE_FLOAT, f0, (hsize_t)rows, r->dxpl, xdst);
  herr_t e2 = read_rows(r->yd, H5T_NATIVE_INT32, f0, (hsize_t)rows, r->dxpl, out->y + (rows ? r0 : 0));
  return e < 0 ? 1 : e2 < 0 ? 2 : 0;
}

/* The rows just read (rows > 0): images unpacked and normalized into xdst, features checked finite,
 * labels checked to be classes. */
static int finish_chunk(const shard_reader *r, dpm_dataset *out, int64_t r0, int64_t rows, float *xdst,
                        char *err) {
  const int64_t row0 = out->begin + r0;
  if (out->images) unpack_images(r->raw, rows, out->C, out->H, out->W, r->lut, xdst);
  else if (check_finite(xdst, rows, (int64_t)out->C * out->H * out->W, row0, r->path, r->xname, err)) return -1;
  return check_labels(out->y + r0, rows, row0, out->num_classes, r->path, r->yname, err);
}

/* Collective: rows [out->begin, out->end) of split `group` into out->x (float N x C x H x W, images
 * normalized) and out->y, in row chunks of at most DPM_IO_CHUNK_BYTES; every rank makes the same number
 * of collective reads. */
static int read_shard(MPI_Comm comm, hid_t f, const char *path, const char *group, dpm_dataset *out, char *err) {
  shard_reader r = {.path = path};
  snprintf(r.xname, sizeof r.xname, "/%s/x", group);
  snprintf(r.yname, sizeof r.yname, "/%s/y", group);
  const int64_t n = out->end - out->begin, chw = (int64_t)out->C * out->H * out->W;
  const size_t row_bytes = (size_t)chw * (out->images ? 1 : 4);
  out->x = dpm_malloc_aligned((size_t)(n > 0 ? n : 1) * (size_t)chw * sizeof(float));
  out->y = dpm_malloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
  r.chunk_rows = (int64_t)(DPM_IO_CHUNK_BYTES / row_bytes);
  if (r.chunk_rows < 1) r.chunk_rows = 1;
  long long my_chunks = (n + r.chunk_rows - 1) / r.chunk_rows, n_chunks = 0;
  DPM_MPI_CHECK(MPI_Allreduce(&my_chunks, &n_chunks, 1, MPI_LONG_LONG, MPI_MAX, comm));
  if (out->images) {
    for (int v = 0; v < 256; v++) r.lut[v] = (float)(((double)v / 255.0 - out->mean) / out->std);
    r.raw = dpm_malloc((size_t)(n < r.chunk_rows ? (n > 0 ? n : 1) : r.chunk_rows) * row_bytes);
  }
  r.xd = H5Dopen2(f, r.xname, H5P_DEFAULT);
  r.yd = H5Dopen2(f, r.yname, H5P_DEFAULT);
  r.dxpl = H5Pcreate(H5P_DATASET_XFER);
  H5Pset_dxpl_mpio(r.dxpl, H5FD_MPIO_COLLECTIVE);
  int rc = 0;
  for (long long c = 0; c < n_chunks; c++) {
    int64_t r0 = c * r.chunk_rows, rows = 0;
    if (r0 < n) rows = n - r0 < r.chunk_rows ? n - r0 : r.chunk_rows;
    float *xdst = out->x + (size_t)(rows ? r0 : 0) * (size_t)chw;
    const int bad = read_chunk(&r, out, r0, rows, xdst);
    if (bad && !rc)
      rc = dpm_err(err, "%s: reading rows [%lld, %lld) of %s failed (damaged or truncated file?)", path,
                   (long long)(out->begin + r0), (long long)(out->begin + r0 + rows), bad == 1 ? r.xname : r.yname);
    if (!rc && rows > 0) rc = finish_chunk(&r, out, r0, rows, xdst, err); /* after an error: only the reads */
  }
  H5Pclose(r.dxpl);
  H5Dclose(r.xd);
  H5Dclose(r.yd);
  dpm_free(r.raw);
  return rc;
}

int dpm_dataset_load(MPI_Comm comm, const char *path, const char *group, int64_t begin, int64_t end,
                     dpm_dataset *out, char err[DPM_ERRLEN]) {
  dpm_h5_quiet();
  memset(out, 0, sizeof *out);
  err[0] = '\0';
  hid_t f = open_collective(comm, path, err);
  if (f < 0) return -1;
  int rc = read_header(f, path, group, out, err);
  if (rc == 0 && !(0 <= begin && begin <= end && end <= out->n_total))
    rc = dpm_err(err, "%s: shard [%lld, %lld) is outside split /%s of %lld examples", path, (long long)begin,
                 (long long)end, group, (long long)out->n_total);
  if (agree(comm, rc, err)) {
    H5Fclose(f);
    memset(out, 0, sizeof *out);
    return -1;
  }
  out->begin = begin;
  out->end = end;
  rc = read_shard(comm, f, path, group, out, err);
  H5Fclose(f);
  if (agree(comm, rc, err)) {
    dpm_dataset_free(out);
    memset(out, 0, sizeof *out);
    return -1;
  }
  return 0;
}

int dpm_dataset_label_counts(const char *path, const char *group, int64_t *counts, char err[DPM_ERRLEN]) {
  dpm_h5_quiet();
  dpm_dataset hdr;
  hid_t f = open_serial(path, err);
  if (f < 0) return -1;
  int rc = read_header(f, path, group, &hdr, err);
  if (rc) {
    H5Fclose(f);
    return -1;
  }
  char yname[128];
  snprintf(yname, sizeof yname, "/%s/y", group);
  memset(counts, 0, (size_t)hdr.num_classes * sizeof *counts);
  const int64_t chunk = 1 << 20;
  int32_t *buf = dpm_malloc((size_t)chunk * sizeof *buf);
  hid_t yd = H5Dopen2(f, yname, H5P_DEFAULT);
  for (int64_t r0 = 0; r0 < hdr.n_total && !rc; r0 += chunk) {
    int64_t rows = hdr.n_total - r0 < chunk ? hdr.n_total - r0 : chunk;
    if (read_rows(yd, H5T_NATIVE_INT32, (hsize_t)r0, (hsize_t)rows, H5P_DEFAULT, buf) < 0)
      rc = dpm_err(err, "%s: reading %s failed (damaged or truncated file?)", path, yname);
    if (!rc) rc = check_labels(buf, rows, r0, hdr.num_classes, path, yname, err);
    for (int64_t i = 0; i < rows && !rc; i++) counts[buf[i]]++;
  }
  dpm_free(buf);
  H5Dclose(yd);
  H5Fclose(f);
  return rc;
}

/* ---------------------------------------------------------------------------------------------------
 * Writing: a dataset file under a temporary name, renamed into place when complete
 * ------------------------------------------------------------------------------------------------- */

typedef struct {
  hid_t file;
  const char *out;
  char *tmp;
} out_file;

static int out_open(out_file *o, const char *out, char *err) {
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

static void out_abort(out_file *o) {
  if (o->file >= 0) H5Fclose(o->file);
  o->file = -1;
  if (o->tmp) unlink(o->tmp);
  dpm_free(o->tmp);
  o->tmp = NULL;
}

static int out_commit(out_file *o, char *err) {
  herr_t e = H5Fclose(o->file);
  o->file = -1;
  if (e < 0) {
    dpm_err(err, "%s: writing %s failed (disk full?)", o->out, o->tmp);
    out_abort(o);
    return -1;
  }
  const int stage = dpm_atomic_commit(o->tmp, o->out);
  if (stage) {
    if (stage == DPM_ATOMIC_FSYNC) dpm_err(err, "%s: fsync of %s failed: %s", o->out, o->tmp, strerror(errno));
    else dpm_err(err, "%s: cannot rename %s into place: %s", o->out, o->tmp, strerror(errno));
    out_abort(o);
    return -1;
  }
  dpm_free(o->tmp);
  o->tmp = NULL;
  return 0;
}

static int write_root_attrs(hid_t file, int num_classes, const char *source) {
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
static hid_t create_dset(hid_t file, const char *name, hid_t type, int rank, const hsize_t *dims) {
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
static int write_rows(hid_t d, hid_t mtype, hsize_t row0, hsize_t rows, const void *buf) {
  if (rows == 0) return 0;
  hid_t fs = H5Dget_space(d), ms = select_rows(fs, row0, rows);
  herr_t e = H5Dwrite(d, mtype, ms, fs, H5P_DEFAULT, buf);
  H5Sclose(ms);
  H5Sclose(fs);
  return e < 0 ? -1 : 0;
}

static int write_labels(hid_t file, const char *name, const int32_t *y, int64_t n) {
  hsize_t dims[1] = {(hsize_t)n};
  hid_t d = create_dset(file, name, H5T_STD_I32LE, 1, dims);
  if (d < 0) return -1;
  int rc = write_rows(d, H5T_NATIVE_INT32, 0, (hsize_t)n, y);
  H5Dclose(d);
  return rc;
}

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
  hid_t d = create_dset(file, name, H5T_STD_U8LE, 4, dims);
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
    if (write_rows(d, H5T_NATIVE_UINT8, r0, rows, buf)) rc = dpm_err(err, "writing %s failed (disk full?)", name);
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
    progress("%s: %u images of %ux%u from %s%s", split[s], fi[s].dims[0], fi[s].dims[1], fi[s].dims[2], ipath[s],
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
    if (write_labels(file, name, y[s], (int64_t)fl[s].items))
      return dpm_err(err, "%s: writing %s failed (disk full?)", out, name);
  }
  return 0;
}

/* The x attributes mean and std: the fixed normalization, or the training pixels' own (from_data). */
static int idx_write_normalization(hid_t file, double mean, double std, const char *out, char *err) {
  static const char *split[2] = {"train", "test"};
  for (int s = 0; s < 2; s++) {
    char name[32];
    snprintf(name, sizeof name, "/%s/x", split[s]);
    hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    float fm = (float)(norm_from_data ? mean : norm_mean), fs = (float)(norm_from_data ? std : norm_std);
    int e = dpm_h5_put_attr(d, "mean", H5T_NATIVE_FLOAT, H5T_NATIVE_FLOAT, &fm) |
            dpm_h5_put_attr(d, "std", H5T_NATIVE_FLOAT, H5T_NATIVE_FLOAT, &fs);
    H5Dclose(d);
    if (e) return dpm_err(err, "%s: writing attributes of %s failed", out, name);
  }
  return 0;
}

static void idx_report(int K, double mean, double std) {
  if (norm_from_data)
    progress("%d classes, pixel mean %.6f std %.6f of the training pixels / 255 (NOT covered by the DP guarantee: "
             "computed from the private data without noise)", K, mean, std);
  else if (print_stats)
    progress("%d classes, fixed normalization mean %g std %g (data-independent); the training pixels have mean %.6f "
             "std %.6f (/ 255; exact statistics of the private data, NOT covered by the DP guarantee)", K, norm_mean,
             norm_std, mean, std);
  else
    progress("%d classes, fixed normalization mean %g std %g (data-independent)", K, norm_mean, norm_std);
}

int dpm_convert_idx(const char *train_images, const char *train_labels, const char *test_images,
                    const char *test_labels, const char *out, char err[DPM_ERRLEN]) {
  dpm_h5_quiet();
  idx_file fi[2] = {{0}}, fl[2] = {{0}};
  const char *ipath[2] = {train_images, test_images}, *lpath[2] = {train_labels, test_labels};
  int32_t *y[2] = {NULL, NULL};
  out_file o = {.file = -1};
  int rc = -1, K = 0;
  double mean = 0, std = 1;
  if (idx_open_all(fi, fl, ipath, lpath, err) || idx_classes(fl, y, lpath, &K, err)) goto done;
  if (out_open(&o, out, err)) goto done;
  if (idx_write_splits(o.file, fi, fl, y, ipath, out, &mean, &std, err)) goto done;
  if (idx_write_normalization(o.file, mean, std, out, err)) goto done;
  if (write_root_attrs(o.file, K, "idx")) {
    dpm_err(err, "%s: writing root attributes failed", out);
    goto done;
  }
  idx_report(K, mean, std);
  rc = out_commit(&o, err);
  if (!rc) progress("wrote %s", out);
done:
  if (rc && o.tmp) out_abort(&o);
  for (int s = 0; s < 2; s++) {
    idx_close(&fi[s]);
    idx_close(&fl[s]);
    dpm_free(y[s]);
  }
  return rc;
}

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
    if (verbose && t->n % 1000000 == 0) progress("%s: %lld rows", path, (long long)t->n);
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
  out_file o = {.file = -1};
  int64_t *counts = NULL;

  int32_t max_label = INT32_MAX - 1;
  for (int s = 0; s < 2; s++) {
    progress("reading %s", path[s]);
    if (csv_read(path[s], label_column, &names, &ncols, &label_col, max_label, &t[s], err)) goto done;
    progress("%s: %lld rows, %d features", split[s], (long long)t[s].n, t[s].d);
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

  if (out_open(&o, out, err)) goto done;
  for (int s = 0; s < 2; s++) {
    char name[32];
    hsize_t dims[2] = {(hsize_t)t[s].n, (hsize_t)t[s].d};
    snprintf(name, sizeof name, "/%s/x", split[s]);
    hid_t d = create_dset(o.file, name, H5T_IEEE_F32LE, 2, dims);
    int e = d < 0 ? -1 : write_rows(d, H5T_NATIVE_FLOAT, 0, dims[0], t[s].x);
    if (d >= 0) H5Dclose(d);
    snprintf(name, sizeof name, "/%s/y", split[s]);
    if (e || write_labels(o.file, name, t[s].y, t[s].n)) {
      dpm_err(err, "%s: writing %s failed (disk full?)", out, name);
      goto done;
    }
  }
  if (write_root_attrs(o.file, K, "csv")) {
    dpm_err(err, "%s: writing root attributes failed", out);
    goto done;
  }
  rc = out_commit(&o, err);
  if (!rc) progress("wrote %s (%d classes)", out, K);
done:
  if (rc && o.tmp) out_abort(&o);
  for (int s = 0; s < 2; s++) {
    dpm_free(t[s].x);
    dpm_free(t[s].y);
  }
  for (int k = 0; names && k < ncols; k++) dpm_free(names[k]);
  dpm_free(names);
  dpm_free(counts);
  return rc;
}

/* ---- digest (resume checks the data; dpmpi/io/data.h) ----------------------------------------------- */

static uint64_t digest_mix(uint64_t z) { /* splitmix64's finalizer */
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t dpm_dataset_digest(const dpm_dataset *d, int64_t n) {
  const size_t F = (size_t)d->C * (size_t)d->H * (size_t)d->W;
  uint64_t sum = 0;
  for (int64_t r = 0; r < n; r++) {
    const float *x = d->x + (size_t)r * F;
    uint64_t h[4] = {1, 2, 3, 4}; /* four FNV-1a lanes over the 32-bit words: independent multiplies */
    size_t j = 0;
    for (; j + 4 <= F; j += 4)
      for (int l = 0; l < 4; l++) {
        uint32_t w;
        memcpy(&w, x + j + l, 4);
        h[l] = (h[l] ^ w) * 0x100000001b3ULL;
      }
    for (; j < F; j++) {
      uint32_t w;
      memcpy(&w, x + j, 4);
      h[0] = (h[0] ^ w) * 0x100000001b3ULL;
    }
    uint64_t row = digest_mix((uint64_t)(d->begin + r) ^ digest_mix((uint64_t)(uint32_t)d->y[r] + 0x9e3779b97f4a7c15ULL));
    for (int l = 0; l < 4; l++) row = digest_mix(row ^ h[l]);
    sum += row;
  }
  return sum;
}
