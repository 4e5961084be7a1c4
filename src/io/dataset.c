/* dpmpi dataset: the HDF5 dataset file (layout in dpmpi/io/data.h and docs/formats.md). Owns reading a
 * split's header (probe), the collective parallel load of each rank's contiguous shard with MPI-IO
 * hyperslab reads (labelled x/y and token rows), the label counts and the data digest; the conversions
 * into this layout are convert_idx.c, convert_csv.c, convert_text.c and convert_npy.c (shared writer:
 * convert.c).
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

#include "io/convert.h"


void dpm_io_close_id(hid_t *id, herr_t (*closer)(hid_t)) {
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
  dpm_io_close_id(&s, H5Sclose);
  dpm_io_close_id(&t, H5Tclose);
  dpm_io_close_id(&a, H5Aclose);
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

/* Integer attribute `name` of the root in [lo, hi] (read as a number, checked to be whole). */
static int read_int_attr(hid_t root, const char *path, const char *name, double lo, double hi, int *out,
                         char *err) {
  double v;
  if (read_num_attr(root, path, "/", name, &v, err)) return -1;
  if (!(v >= lo && v <= hi) || v != floor(v))
    return dpm_err(err, "%s: /: attribute %s is %g; expected an integer in [%.0f, %.0f]", path, name, v, lo, hi);
  *out = (int)v;
  return 0;
}

/* Token files' root attributes: vocab (required), pad_id (required), eot_id and tokenizer (optional). */
static int read_token_attrs(hid_t root, const char *path, dpm_dataset *hdr, char *err) {
  if (read_int_attr(root, path, "vocab", 1, INT32_MAX, &hdr->vocab, err)) return -1;
  if (read_int_attr(root, path, "pad_id", INT32_MIN, INT32_MAX, &hdr->pad_id, err)) return -1;
  hdr->eot_id = -1;
  if (H5Aexists(root, "eot_id") > 0) {
    if (read_int_attr(root, path, "eot_id", -1, INT32_MAX, &hdr->eot_id, err)) return -1;
    if (hdr->eot_id >= hdr->vocab)
      return dpm_err(err, "%s: /: attribute eot_id is %d; expected -1 or an id below vocab = %d", path, hdr->eot_id,
                     hdr->vocab);
  }
  if (read_str_attr(root, path, "tokenizer", hdr->tokenizer, sizeof hdr->tokenizer, err) < 0) return -1;
  return 0;
}

/* The root group's attributes: format and format_version (checked if present), kind, and num_classes
 * (labelled) or the token attributes. */
static int read_root_attrs(hid_t file, const char *path, dpm_dataset *hdr, char *err) {
  hid_t root = H5Gopen2(file, "/", H5P_DEFAULT);
  if (root < 0) return dpm_err(err, "%s: cannot open the root group", path);
  int rc = -1;
  char fmt[64], kind[64];
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
  r = read_str_attr(root, path, "kind", kind, sizeof kind, err);
  if (r < 0) goto done;
  if (r == 0 && strcmp(kind, DPM_KIND_TOKENS) == 0) {
    hdr->kind = DPM_DATA_TOKENS;
    rc = read_token_attrs(root, path, hdr, err);
    goto done;
  }
  if (r == 0 && strcmp(kind, DPM_KIND_LABELLED) != 0) {
    dpm_err(err, "%s: attribute 'kind' is '%s', expected '%s' or '%s'", path, kind, DPM_KIND_LABELLED,
            DPM_KIND_TOKENS);
    goto done;
  }
  hdr->kind = DPM_DATA_LABELLED;
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

/* tokens: an integer N x (T+1) matrix, T >= 1, of a type that int32 holds exactly (int8/16/32,
 * uint8/16); fills n_total and T. */
static int read_tokens_shape(hid_t d, const char *path, const char *name, dpm_dataset *hdr, char *err) {
  hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
  int rc = -1;
  const size_t size = H5Tget_size(t);
  if (H5Tget_class(t) != H5T_INTEGER || size > 4 || (size == 4 && H5Tget_sign(t) == H5T_SGN_NONE)) {
    dpm_err(err, "%s: %s must hold int32 token ids", path, name);
    goto done;
  }
  hsize_t dims[H5S_MAX_RANK];
  int rank = H5Sget_simple_extent_ndims(sp);
  if (rank != 2) {
    dpm_err(err, "%s: %s has %d dimensions; expected N x (T+1) token ids", path, name, rank);
    goto done;
  }
  H5Sget_simple_extent_dims(sp, dims, NULL);
  if (dims[1] < 2 || dims[1] > (hsize_t)DPM_MAX_CONTEXT + 1) {
    dpm_err(err, "%s: %s has rows of %llu ids; expected T + 1 with 1 <= T <= %d", path, name,
            (unsigned long long)dims[1], DPM_MAX_CONTEXT);
    goto done;
  }
  hdr->n_total = (int64_t)dims[0];
  hdr->T = (int)dims[1] - 1;
  rc = 0;
done:
  dpm_io_close_id(&sp, H5Sclose);
  dpm_io_close_id(&t, H5Tclose);
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
  dpm_io_close_id(&xs, H5Sclose);
  dpm_io_close_id(&xt, H5Tclose);
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
  dpm_io_close_id(&ys, H5Sclose);
  dpm_io_close_id(&yt, H5Tclose);
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
  char xname[128], yname[128], gname[128], tname[128];
  if (!group || !group[0] || strlen(group) > 64 || strchr(group, '/'))
    return dpm_err(err, "%s: invalid split name '%s'", path, group ? group : "");
  snprintf(gname, sizeof gname, "/%s", group);
  snprintf(xname, sizeof xname, "/%s/x", group);
  snprintf(yname, sizeof yname, "/%s/y", group);
  snprintf(tname, sizeof tname, "/%s/tokens", group);
  memset(hdr, 0, sizeof *hdr);
  if (read_root_attrs(file, path, hdr, err)) return -1;
  if (!link_exists(file, gname)) return dpm_err(err, "%s: split %s is missing", path, gname);
  hid_t x = -1, y = -1;
  int rc = -1;
  if (hdr->kind == DPM_DATA_TOKENS) {
    if (!link_exists(file, tname) || (x = H5Dopen2(file, tname, H5P_DEFAULT)) < 0) {
      dpm_err(err, "%s: dataset %s is missing (the file's kind is tokens)", path, tname);
    } else {
      hdr->checksums = dpm_h5_is_checked(x);
      rc = read_tokens_shape(x, path, tname, hdr, err);
    }
  } else if (!link_exists(file, xname) || (x = H5Dopen2(file, xname, H5P_DEFAULT)) < 0) {
    dpm_err(err, "%s: dataset %s is missing", path, xname);
  } else if (!link_exists(file, yname) || (y = H5Dopen2(file, yname, H5P_DEFAULT)) < 0) {
    dpm_err(err, "%s: dataset %s is missing", path, yname);
  } else {
    hdr->checksums = dpm_h5_is_checked(x) && dpm_h5_is_checked(y);
    if (!read_x_shape(x, path, xname, hdr, err) && !check_y(y, path, xname, yname, hdr->n_total, err))
      rc = read_normalization(x, path, xname, hdr, err);
  }
  dpm_io_close_id(&x, H5Dclose);
  dpm_io_close_id(&y, H5Dclose);
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
hid_t dpm_io_select_rows(hid_t space, hsize_t row0, hsize_t rows) {
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
  dpm_free(d->tok);
  d->x = NULL;
  d->y = NULL;
  d->tok = NULL;
}

/* Read rows [row0, row0 + rows) of dataset d into buf (memory type mtype) with transfer list dxpl;
 * rows == 0 selects nothing but still takes part in a collective read. */
static herr_t read_rows(hid_t d, hid_t mtype, hsize_t row0, hsize_t rows, hid_t dxpl, void *buf) {
  hid_t fs = H5Dget_space(d), ms = dpm_io_select_rows(fs, row0, rows);
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

/* Every id of the rows just read (rows of T + 1, file rows row0..) is in [0, vocab) or pad_id, and every
 * row has a target that is not padding. */
static int check_tokens(const dpm_dataset *d, const int32_t *tok, int64_t rows, int64_t row0, const char *path,
                        const char *name, char *err) {
  const int L = d->T + 1;
  for (int64_t i = 0; i < rows; i++) {
    const int32_t *row = tok + (size_t)i * (size_t)L;
    int no_target, j = dpm_token_row_check(row, L, d->vocab, d->pad_id, &no_target);
    if (j >= 0) {
      if (d->pad_id == -1)
        return dpm_err(err, "%s: %s: token id %d at row %lld, column %d is outside [0, %d) (vocab = %d, no pad id)",
                       path, name, row[j], (long long)(row0 + i), j, d->vocab, d->vocab);
      return dpm_err(err, "%s: %s: token id %d at row %lld, column %d is outside [0, %d) (vocab = %d) and is not "
                     "the pad id %d", path, name, row[j], (long long)(row0 + i), j, d->vocab, d->vocab, d->pad_id);
    }
    if (no_target)
      return dpm_err(err, "%s: %s: row %lld has no target other than the pad id %d (it would add nothing to the "
                     "loss)", path, name, (long long)(row0 + i), d->pad_id);
  }
  return 0;
}

/* Collective: rows [out->begin, out->end) of /group/tokens into out->tok, in row chunks of at most
 * DPM_IO_CHUNK_BYTES; every rank makes the same number of collective reads. */
static int read_token_shard(MPI_Comm comm, hid_t f, const char *path, const char *group, dpm_dataset *out,
                            char *err) {
  char name[128];
  snprintf(name, sizeof name, "/%s/tokens", group);
  const int64_t n = out->end - out->begin, L = (int64_t)out->T + 1;
  out->tok = dpm_malloc_aligned((size_t)(n > 0 ? n : 1) * (size_t)L * sizeof(int32_t));
  int64_t chunk_rows = (int64_t)(DPM_IO_CHUNK_BYTES / ((size_t)L * sizeof(int32_t)));
  if (chunk_rows < 1) chunk_rows = 1;
  long long my_chunks = (n + chunk_rows - 1) / chunk_rows, n_chunks = 0;
  DPM_MPI_CHECK(MPI_Allreduce(&my_chunks, &n_chunks, 1, MPI_LONG_LONG, MPI_MAX, comm));
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT), dxpl = H5Pcreate(H5P_DATASET_XFER);
  H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE);
  int rc = 0;
  for (long long c = 0; c < n_chunks; c++) {
    int64_t r0 = c * chunk_rows, rows = 0;
    if (r0 < n) rows = n - r0 < chunk_rows ? n - r0 : chunk_rows;
    int32_t *dst = out->tok + (size_t)(rows ? r0 : 0) * (size_t)L;
    if (read_rows(d, H5T_NATIVE_INT32, (hsize_t)(out->begin + r0), (hsize_t)rows, dxpl, dst) < 0 && !rc)
      rc = dpm_err(err, "%s: reading rows [%lld, %lld) of %s failed (damaged or truncated file?)", path,
                   (long long)(out->begin + r0), (long long)(out->begin + r0 + rows), name);
    if (!rc && rows > 0) rc = check_tokens(out, dst, rows, out->begin + r0, path, name, err);
  }
  H5Pclose(dxpl);
  H5Dclose(d);
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
  rc = out->kind == DPM_DATA_TOKENS ? read_token_shard(comm, f, path, group, out, err)
                                    : read_shard(comm, f, path, group, out, err);
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
  if (!rc && hdr.kind == DPM_DATA_TOKENS) rc = dpm_err(err, "%s: /%s holds token data, which has no labels", path, group);
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

/* ---- digest (resume checks the data; dpmpi/io/data.h) ----------------------------------------------- */

static uint64_t digest_mix(uint64_t z) { /* splitmix64's finalizer */
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* Token rows: per row, four FNV-1a lanes over the ids, mixed with the global row index. */
static uint64_t digest_tokens(const dpm_dataset *d, int64_t n) {
  const size_t L = (size_t)d->T + 1;
  uint64_t sum = 0;
  for (int64_t r = 0; r < n; r++) {
    const int32_t *t = d->tok + (size_t)r * L;
    uint64_t h[4] = {5, 6, 7, 8};
    size_t j = 0;
    for (; j + 4 <= L; j += 4)
      for (int l = 0; l < 4; l++) h[l] = (h[l] ^ (uint32_t)t[j + l]) * 0x100000001b3ULL;
    for (; j < L; j++) h[0] = (h[0] ^ (uint32_t)t[j]) * 0x100000001b3ULL;
    uint64_t row = digest_mix((uint64_t)(d->begin + r) ^ digest_mix((uint64_t)L + 0x7f4a7c159e3779b9ULL));
    for (int l = 0; l < 4; l++) row = digest_mix(row ^ h[l]);
    sum += row;
  }
  return sum;
}

uint64_t dpm_dataset_digest(const dpm_dataset *d, int64_t n) {
  if (d->kind == DPM_DATA_TOKENS) return digest_tokens(d, n);
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
