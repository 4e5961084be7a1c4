/* Checkpoints: see dpmpi/io/ckpt.h; the layout is in docs/formats.md.
 *
 * Write: (1) collective over comm with parallel HDF5 (MPI-IO): every rank creates the same datasets, one
 * per layer weight and bias in its global shape, chunked with the Fletcher32 checksum, and the writer of
 * each stage writes its layers in collective H5Dwrite calls (the others select nothing); (2) rank 0
 * alone reopens the file and adds the metadata attributes and the ledger, closes, fsyncs the file,
 * renames it over the final name and fsyncs the directory. Until the rename the final name holds the
 * previous checkpoint or nothing. HDF5's own metadata is checksummed too (file format 1.10 objects). */
#include "dpmpi/io/ckpt.h"
#include "dpmpi/core/rng.h"
#include "dpmpi/io/config.h" /* dpm_clipping_name */
#include "dpmpi/io/ledger_h5.h"

#include "io/atomic.h"
#include "io/h5util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CKPT_FORMAT_NAME "dpmpi-checkpoint"

/* ---- attributes ------------------------------------------------------------------------------- */

/* seeded_steps: int64 [n, 2] of [begin, end) step ranges; written only when n > 0 */
static int put_ranges(hid_t obj, const char *name, const int64_t *r, int n) {
  const hsize_t dims[2] = {(hsize_t)n, 2};
  return dpm_h5_put_array_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, 2, dims, r);
}

/* Read ranges written by put_ranges (absent: n = 0); -1 if damaged or not increasing disjoint ranges
 * within [0, step]. */
static int get_ranges(hid_t obj, const char *name, int64_t step, int64_t **r, int *n) {
  *r = NULL, *n = 0;
  if (H5Aexists(obj, name) <= 0) return 0;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT), sp = a >= 0 ? H5Aget_space(a) : -1;
  hsize_t dims[2] = {0, 0};
  int rc = sp >= 0 && H5Sget_simple_extent_ndims(sp) == 2 && H5Sget_simple_extent_dims(sp, dims, NULL) == 2 &&
           dims[1] == 2 && dims[0] >= 1 && dims[0] < (1u << 20) ? 0 : -1;
  if (!rc) {
    *r = dpm_malloc(sizeof(int64_t) * 2 * (size_t)dims[0]);
    *n = (int)dims[0];
    rc = H5Aread(a, H5T_NATIVE_INT64, *r) >= 0 ? 0 : -1;
    for (int i = 0; !rc && i < *n; i++)
      if ((*r)[2 * i] < (i ? (*r)[2 * i - 1] : 0) || (*r)[2 * i + 1] <= (*r)[2 * i] || (*r)[2 * i + 1] > step) rc = -1;
  }
  if (sp >= 0) H5Sclose(sp);
  if (a >= 0) H5Aclose(a);
  if (rc) dpm_free(*r), *r = NULL, *n = 0;
  return rc;
}

/* clip_thresholds: float64 [n], every value finite and > 0 (absent: n = 0, not adaptive); -1 if damaged. */
static int get_thresholds(hid_t obj, double **v, int *n) {
  *v = NULL, *n = 0;
  if (H5Aexists(obj, "clip_thresholds") <= 0) return 0;
  hid_t a = H5Aopen(obj, "clip_thresholds", H5P_DEFAULT), sp = a >= 0 ? H5Aget_space(a) : -1;
  hsize_t dims[1] = {0};
  int rc = sp >= 0 && H5Sget_simple_extent_ndims(sp) == 1 && H5Sget_simple_extent_dims(sp, dims, NULL) == 1 &&
           dims[0] >= 1 && dims[0] < (1u << 20) ? 0 : -1;
  if (!rc) {
    *v = dpm_malloc(sizeof(double) * (size_t)dims[0]);
    *n = (int)dims[0];
    rc = H5Aread(a, H5T_NATIVE_DOUBLE, *v) >= 0 ? 0 : -1;
    for (int i = 0; !rc && i < *n; i++)
      if (!(isfinite((*v)[i]) && (*v)[i] > 0)) rc = -1;
  }
  if (sp >= 0) H5Sclose(sp);
  if (a >= 0) H5Aclose(a);
  if (rc) dpm_free(*v), *v = NULL, *n = 0;
  return rc;
}

/* ---- layers ----------------------------------------------------------------------------------- */

/* The datasets of layer i, one per tensor of its dpm_layer_info ("weight" and "bias", groupnorm gamma and beta,
 * the GPT kinds' Hugging Face names) in group base/layer_III. */
static void layer_group(char *buf, size_t len, const char *base, int i) { snprintf(buf, len, "%s/layer_%03d", base, i + 1); }

/* Create (write = 1) or open the datasets of every layer with parameters under base, and write or read
 * this rank's ones collectively. slab: the stage's slab (NULL: only take part). */
static int layers_io(hid_t file, const char *base, const dpm_ckpt_model *m, float *slab, int write, char *err) {
  const int skip_frozen = strcmp(base, "/model") != 0 && m->frozen; /* optimizer state: trainable tensors only */
  hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
  H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE);
  int rc = 0;
  size_t off = 0; /* offset of layer i in the stage's slab */
  for (int i = 0; i < m->n_layers && rc == 0; i++) {
    const dpm_layer_info *in = &m->info[i];
    if (in->params == 0) continue;
    const int mine = i >= m->first && i < m->last;
    char grp[64];
    layer_group(grp, sizeof grp, base, i);
    hid_t g = write ? H5Gcreate2(file, grp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : H5Gopen2(file, grp, H5P_DEFAULT);
    if (g < 0) {
      rc = dpm_err(err, "%s: missing", grp);
      break;
    }
    for (int part = 0; part < in->n_tensors && rc == 0; part++) {
      if (skip_frozen && ((m->frozen[i] >> part) & 1u)) continue;
      const dpm_tensor_info *ti = &in->tensors[part]; /* the kind's names: weight/bias, gamma/beta, HF names */
      size_t count = ti->size;
      int r = ti->rank;
      hsize_t dims[4];
      for (int k = 0; k < r; k++) dims[k] = (hsize_t)ti->dims[k];
      const char *name = ti->name;
      hid_t d;
      if (write) {
        hid_t sp = H5Screate_simple(r, dims, NULL), dcpl = dpm_h5_checked_dcpl(r, dims, sizeof(float));
        d = H5Dcreate2(g, name, H5T_IEEE_F32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        H5Pclose(dcpl);
        H5Sclose(sp);
      } else {
        d = H5Dopen2(g, name, H5P_DEFAULT);
      }
      if (d < 0) {
        rc = dpm_err(err, "%s/%s: cannot %s", grp, name, write ? "create" : "open");
        break;
      }
      hid_t fs = H5Dget_space(d);
      hssize_t have = H5Sget_simple_extent_npoints(fs);
      if (have != (hssize_t)count) {
        rc = dpm_err(err, "%s/%s holds %lld values, the model has %zu", grp, name, (long long)have, count);
      } else {
        /* memory space of the dataset's shape: HDF5 then maps whole chunks, not element by element */
        hid_t ms = H5Screate_simple(r, dims, NULL);
        const int act = mine && slab && (write ? m->writer : 1);
        if (!act) H5Sselect_none(fs), H5Sselect_none(ms);
        float *p = act ? slab + off + ti->off : NULL;
        herr_t st = write ? H5Dwrite(d, H5T_NATIVE_FLOAT, ms, fs, dxpl, p) : H5Dread(d, H5T_NATIVE_FLOAT, ms, fs, dxpl, p);
        if (st < 0)
          rc = dpm_err(err, "%s/%s: cannot %s%s", grp, name, write ? "write" : "read",
                       write ? "" : " (damaged: checksum mismatch or truncated file)");
        H5Sclose(ms);
      }
      H5Sclose(fs);
      H5Dclose(d);
    }
    H5Gclose(g);
    if (mine) off += in->params;
  }
  H5Pclose(dxpl);
  return rc;
}

/* ---- write ------------------------------------------------------------------------------------ */

/* ---- DP-PCA projection (/pca: dataset projection d x k float32, attributes noise_multiplier, clip) ---- */

static int write_pca(hid_t f, const dpm_ckpt_meta *meta) {
  hsize_t dims[2] = {(hsize_t)meta->pca_dim, (hsize_t)meta->pca_components};
  hid_t g = H5Gcreate2(f, "pca", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (g < 0) return -1;
  hid_t sp = H5Screate_simple(2, dims, NULL), dcpl = dpm_h5_checked_dcpl(2, dims, sizeof(float));
  hid_t d = H5Dcreate2(g, "projection", H5T_IEEE_F32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  int rc = d >= 0 && H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, meta->pca_projection) >= 0 ? 0 : -1;
  rc |= dpm_h5_put_attr(g, "noise_multiplier", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->pca_sigma) |
        dpm_h5_put_attr(g, "clip", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->pca_clip);
  if (d >= 0) H5Dclose(d);
  H5Pclose(dcpl);
  H5Sclose(sp);
  H5Gclose(g);
  return rc;
}

/* Read /pca if present (pca_components stays 0 if not); -1 if it is damaged or inconsistent. */
static int read_pca(hid_t f, dpm_ckpt_meta *meta) {
  if (H5Lexists(f, "pca", H5P_DEFAULT) <= 0) return 0;
  hid_t g = H5Gopen2(f, "pca", H5P_DEFAULT), d = g >= 0 ? H5Dopen2(g, "projection", H5P_DEFAULT) : -1;
  hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
  hsize_t dims[2] = {0, 0};
  int rc = sp >= 0 && H5Sget_simple_extent_ndims(sp) == 2 && H5Sget_simple_extent_dims(sp, dims, NULL) == 2 ? 0 : -1;
  if (!rc && (dims[0] < 1 || dims[1] < 1 || dims[1] > dims[0] || dims[0] * dims[1] >= ((hsize_t)1 << 31))) rc = -1;
  if (!rc) {
    meta->pca_dim = (int)dims[0];
    meta->pca_components = (int)dims[1];
    meta->pca_projection = dpm_malloc(sizeof(float) * (size_t)(dims[0] * dims[1]));
    rc = H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, meta->pca_projection) >= 0 ? 0 : -1;
    for (size_t i = 0; !rc && i < (size_t)(dims[0] * dims[1]); i++)
      if (!isfinite(meta->pca_projection[i])) rc = -1;
  }
  if (!rc) rc = dpm_h5_get_attr(g, "noise_multiplier", H5T_NATIVE_DOUBLE, &meta->pca_sigma) |
                dpm_h5_get_attr(g, "clip", H5T_NATIVE_DOUBLE, &meta->pca_clip);
  if (!rc && !(meta->pca_sigma >= 0 && meta->pca_clip >= 0)) rc = -1;
  if (sp >= 0) H5Sclose(sp);
  if (d >= 0) H5Dclose(d);
  if (g >= 0) H5Gclose(g);
  return rc;
}

static int write_meta(hid_t f, const dpm_ckpt_meta *meta, const dpm_ledger *ledger, char *err) {
  int32_t fmt = DPM_CKPT_FORMAT;
  int rc = dpm_h5_put_str(f, "format", CKPT_FORMAT_NAME) |
           dpm_h5_put_attr(f, "format_version", H5T_STD_I32LE, H5T_NATIVE_INT32, &fmt) |
           dpm_h5_put_str(f, "library_version", DPM_VERSION) |
           dpm_h5_put_attr(f, "step", H5T_STD_I64LE, H5T_NATIVE_INT64, &meta->step) |
           dpm_h5_put_attr(f, "steps_total", H5T_STD_I64LE, H5T_NATIVE_INT64, &meta->steps_total) |
           dpm_h5_put_attr(f, "n_train", H5T_STD_I64LE, H5T_NATIVE_INT64, &meta->n_train) |
           dpm_h5_put_attr(f, "sampling_rate", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->q) |
           dpm_h5_put_attr(f, "noise_multiplier", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->sigma) |
           dpm_h5_put_attr(f, "clip", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->clip) |
           dpm_h5_put_attr(f, "delta", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->delta) |
           dpm_h5_put_attr(f, "private", H5T_STD_I32LE, H5T_NATIVE_INT, &meta->privacy) |
           dpm_h5_put_attr(f, "clipping", H5T_STD_I32LE, H5T_NATIVE_INT, &meta->clipping) |
           dpm_h5_put_attr(f, "accountant", H5T_STD_I32LE, H5T_NATIVE_INT, &meta->accountant) |
           dpm_h5_put_attr(f, "grid_replicas", H5T_STD_I32LE, H5T_NATIVE_INT, &meta->replicas) |
           dpm_h5_put_attr(f, "grid_stages", H5T_STD_I32LE, H5T_NATIVE_INT, &meta->stages) |
           dpm_h5_put_attr(f, "reproducible", H5T_STD_I32LE, H5T_NATIVE_INT, &meta->reproducible) |
           dpm_h5_put_str(f, "job", meta->job ? meta->job : "") |
           dpm_h5_put_str(f, "layers", meta->layers ? meta->layers : "") |
           (meta->init_from ? dpm_h5_put_str(f, "init_from", meta->init_from) : 0) |
           dpm_h5_put_attr(f, "epsilon_budget", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->epsilon) |
           dpm_h5_put_attr(f, "data_digest", H5T_STD_U64LE, H5T_NATIVE_UINT64, &meta->data_digest) |
           dpm_h5_put_str(f, "run_id", meta->run_id) |
           dpm_h5_put_attr(f, "steps_abandoned", H5T_STD_I64LE, H5T_NATIVE_INT64, &meta->steps_abandoned);
  DPM_ASSERT(meta->reproducible == (meta->n_seeded > 0));
  if (meta->reproducible) rc |= dpm_h5_put_attr(f, "seed", H5T_STD_U64LE, H5T_NATIVE_UINT64, &meta->seed) |
                                put_ranges(f, "seeded_steps", meta->seeded_steps, meta->n_seeded);
  const int32_t stream = DPM_RNG_STREAM_VERSION;
  rc |= dpm_h5_put_attr(f, "stats_printed", H5T_STD_I32LE, H5T_NATIVE_INT, &meta->stats_printed) |
        dpm_h5_put_attr(f, "rng_stream", H5T_STD_I32LE, H5T_NATIVE_INT32, &stream);
  rc |= dpm_h5_put_str(f, "optimizer", dpm_optimizer_name(meta->optimizer));
  if (meta->adaptive) {
    const hsize_t dims[1] = {(hsize_t)meta->n_thresholds};
    rc |= dpm_h5_put_array_attr(f, "clip_thresholds", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, dims, meta->thresholds) |
          dpm_h5_put_attr(f, "adaptive_target_quantile", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->target_quantile) |
          dpm_h5_put_attr(f, "adaptive_lr", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->adaptive_lr) |
          dpm_h5_put_attr(f, "count_noise_fraction", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->count_noise_fraction);
  }
  if (dpm_clip_automatic(meta->clipping))
    rc |= dpm_h5_put_attr(f, "auto_gamma", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->auto_gamma);
  hid_t og = H5Gopen2(f, "optimizer", H5P_DEFAULT);
  rc |= og < 0 || dpm_h5_put_attr(og, "step", H5T_STD_I64LE, H5T_NATIVE_INT64, &meta->optimizer_steps);
  if (og >= 0) H5Gclose(og);
  if (rc) return dpm_err(err, "cannot write the checkpoint's attributes");
  if (meta->pca_components > 0 && write_pca(f, meta)) return dpm_err(err, "cannot write the PCA projection /pca");
  hid_t g = H5Gcreate2(f, "privacy", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (g < 0) return dpm_err(err, "cannot create group /privacy");
  rc = dpm_ledger_write_hdf5(ledger, g, err);
  H5Gclose(g);
  return rc;
}

int dpm_ckpt_write(MPI_Comm comm, const char *path, const dpm_ckpt_model *m, const dpm_ledger *ledger,
                   const dpm_ckpt_meta *meta, char err[DPM_ERRLEN]) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  char *tmp = dpm_atomic_tmp_name(path);
  int rc = 0;
  H5E_BEGIN_TRY {
    hid_t fapl = dpm_h5_fapl(&comm, 0);
    hid_t f = dpm_h5_create(tmp, fapl);
    H5Pclose(fapl);
    if (f < 0) {
      rc = dpm_err(err, "%s: cannot create the checkpoint file (does the directory exist and is it writable?)", tmp);
    } else {
      hid_t g1 = H5Gcreate2(f, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      hid_t g2 = H5Gcreate2(f, "optimizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      if (g1 < 0 || g2 < 0) rc = dpm_err(err, "%s: cannot create groups", tmp);
      if (g1 >= 0) H5Gclose(g1);
      if (g2 >= 0) H5Gclose(g2);
      if (!rc) rc = layers_io(f, "/model", m, m->params, 1, err);
      DPM_ASSERT(m->n_state >= 0 && m->n_state <= DPM_CKPT_MAX_STATE);
      for (int k = 0; k < m->n_state && !rc; k++) { /* the optimizer's buffers: /optimizer or a group in it */
        if (strcmp(m->state_group[k], "/optimizer")) {
          hid_t g = H5Gcreate2(f, m->state_group[k], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
          if (g < 0) rc = dpm_err(err, "%s: cannot create group %s", tmp, m->state_group[k]);
          else H5Gclose(g);
        }
        if (!rc) rc = layers_io(f, m->state_group[k], m, m->state[k], 1, err);
      }
      if (H5Fclose(f) < 0 && !rc) rc = dpm_err(err, "%s: cannot close (disk full?)", tmp);
    }
  } H5E_END_TRY;
  /* the same outcome everywhere (a failure is the same on every rank for metadata; data errors may not be) */
  const int bad = dpm_comm_first_failed(comm, rc) >= 0;
  if (bad && !rc) rc = dpm_err(err, "%s: another rank failed to write its part", tmp);
  if (!bad && rank == 0) {
    H5E_BEGIN_TRY {
      hid_t fapl = dpm_h5_fapl(NULL, 0);
      hid_t f = H5Fopen(tmp, H5F_ACC_RDWR, fapl);
      H5Pclose(fapl);
      if (f < 0) rc = dpm_err(err, "%s: cannot reopen", tmp);
      else {
        rc = write_meta(f, meta, ledger, err);
        if (H5Fclose(f) < 0 && !rc) rc = dpm_err(err, "%s: cannot close (disk full?)", tmp);
      }
    } H5E_END_TRY;
    const int stage = rc ? DPM_ATOMIC_OK : dpm_atomic_commit(tmp, path);
    if (stage == DPM_ATOMIC_FSYNC) rc = dpm_err(err, "%s: fsync failed: %s", tmp, strerror(errno));
    if (stage == DPM_ATOMIC_RENAME) rc = dpm_err(err, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
  }
  if (rc && rank == 0) unlink(tmp);
  int r0 = rank == 0 ? rc : 0;
  MPI_Bcast(&r0, 1, MPI_INT, 0, comm);
  if (r0 && !rc) rc = -1;
  MPI_Bcast(err, DPM_ERRLEN, MPI_CHAR, 0, comm);
  if (!rc && r0 == 0) err[0] = '\0';
  dpm_free(tmp);
  return rc ? -1 : 0;
}

/* ---- read ------------------------------------------------------------------------------------- */

static int read_meta_serial(const char *path, dpm_ckpt_meta *meta, char *err) {
  memset(meta, 0, sizeof *meta);
  FILE *fp = fopen(path, "rb");
  if (!fp) return dpm_err(err, "%s: cannot open: %s", path, strerror(errno));
  fclose(fp);
  int rc = 0;
  H5E_BEGIN_TRY {
    hid_t fapl = dpm_h5_fapl(NULL, 0);
    hid_t f = H5Fis_hdf5(path) > 0 ? H5Fopen(path, H5F_ACC_RDONLY, fapl) : -1;
    H5Pclose(fapl);
    if (f < 0) {
      rc = dpm_err(err, "%s: not a readable HDF5 file (truncated or damaged?)", path);
    } else {
      char *fmt = dpm_h5_get_str(f, "format");
      if (!fmt || strcmp(fmt, CKPT_FORMAT_NAME)) {
        rc = dpm_err(err, "%s: not a dpmpi checkpoint (attribute format is %s)", path, fmt ? fmt : "missing");
      } else if (dpm_h5_get_attr(f, "format_version", H5T_NATIVE_INT, &meta->format) ||
                 meta->format != DPM_CKPT_FORMAT) {
        rc = dpm_err(err, "%s: checkpoint format version %d, this dpmpi reads version %d%s", path, meta->format,
                     DPM_CKPT_FORMAT, meta->format == 1 ? " (version 1 has no run journal, budget, data digest or "
                     "seeded-step record; finish that run with the dpmpi that wrote it)" : "");
      } else {
        char *ver = dpm_h5_get_str(f, "library_version");
        snprintf(meta->version, sizeof meta->version, "%s", ver ? ver : "?");
        dpm_free(ver);
        int miss = dpm_h5_get_attr(f, "step", H5T_NATIVE_INT64, &meta->step) |
                   dpm_h5_get_attr(f, "steps_total", H5T_NATIVE_INT64, &meta->steps_total) |
                   dpm_h5_get_attr(f, "n_train", H5T_NATIVE_INT64, &meta->n_train) |
                   dpm_h5_get_attr(f, "sampling_rate", H5T_NATIVE_DOUBLE, &meta->q) |
                   dpm_h5_get_attr(f, "noise_multiplier", H5T_NATIVE_DOUBLE, &meta->sigma) |
                   dpm_h5_get_attr(f, "clip", H5T_NATIVE_DOUBLE, &meta->clip) |
                   dpm_h5_get_attr(f, "delta", H5T_NATIVE_DOUBLE, &meta->delta) |
                   dpm_h5_get_attr(f, "private", H5T_NATIVE_INT, &meta->privacy) |
                   dpm_h5_get_attr(f, "clipping", H5T_NATIVE_INT, &meta->clipping) |
                   dpm_h5_get_attr(f, "accountant", H5T_NATIVE_INT, &meta->accountant) |
                   dpm_h5_get_attr(f, "grid_replicas", H5T_NATIVE_INT, &meta->replicas) |
                   dpm_h5_get_attr(f, "grid_stages", H5T_NATIVE_INT, &meta->stages) |
                   dpm_h5_get_attr(f, "reproducible", H5T_NATIVE_INT, &meta->reproducible) |
                   dpm_h5_get_attr(f, "epsilon_budget", H5T_NATIVE_DOUBLE, &meta->epsilon) |
                   dpm_h5_get_attr(f, "data_digest", H5T_NATIVE_UINT64, &meta->data_digest) |
                   dpm_h5_get_attr(f, "steps_abandoned", H5T_NATIVE_INT64, &meta->steps_abandoned);
        if (meta->reproducible) miss |= dpm_h5_get_attr(f, "seed", H5T_NATIVE_UINT64, &meta->seed) |
                                        get_ranges(f, "seeded_steps", meta->step, &meta->seeded_steps, &meta->n_seeded);
        if (meta->reproducible != (meta->n_seeded > 0)) miss = 1;
        if ((unsigned)meta->clipping >= DPM_CLIP_COUNT || (unsigned)meta->accountant > DPM_ACCT_TIGHT) miss = 1;
        char *id = dpm_h5_get_str(f, "run_id");
        if (!id || strlen(id) != 16 || strspn(id, "0123456789abcdef") != 16) miss = 1;
        else snprintf(meta->run_id, sizeof meta->run_id, "%s", id);
        dpm_free(id);
        meta->rng_stream = 1; /* a checkpoint without the attribute: written before stream version 2 */
        if (H5Aexists(f, "rng_stream") > 0) miss |= dpm_h5_get_attr(f, "rng_stream", H5T_NATIVE_INT, &meta->rng_stream);
        meta->stats_printed = 1; /* a checkpoint without the attribute: its run printed them */
        if (H5Aexists(f, "stats_printed") > 0)
          miss |= dpm_h5_get_attr(f, "stats_printed", H5T_NATIVE_INT, &meta->stats_printed);
        meta->optimizer = DPM_OPT_SGD; /* a checkpoint without the attribute: SGD, the only optimizer then */
        if (H5Aexists(f, "optimizer") > 0) {
          char *opt = dpm_h5_get_str(f, "optimizer");
          if (dpm_optimizer_parse(opt, &meta->optimizer)) miss = 1; /* unknown: damaged, never another rule */
          dpm_free(opt);
        }
        if (get_thresholds(f, &meta->thresholds, &meta->n_thresholds)) miss = 1;
        meta->adaptive = meta->n_thresholds > 0;
        if (meta->adaptive)
          miss |= dpm_h5_get_attr(f, "adaptive_target_quantile", H5T_NATIVE_DOUBLE, &meta->target_quantile) |
                  dpm_h5_get_attr(f, "adaptive_lr", H5T_NATIVE_DOUBLE, &meta->adaptive_lr) |
                  dpm_h5_get_attr(f, "count_noise_fraction", H5T_NATIVE_DOUBLE, &meta->count_noise_fraction);
        if (H5Aexists(f, "auto_gamma") > 0) miss |= dpm_h5_get_attr(f, "auto_gamma", H5T_NATIVE_DOUBLE, &meta->auto_gamma);
        meta->optimizer_steps = meta->step; /* without the attribute: one update per step */
        hid_t og = H5Lexists(f, "optimizer", H5P_DEFAULT) > 0 ? H5Gopen2(f, "optimizer", H5P_DEFAULT) : -1;
        if (og >= 0 && H5Aexists(og, "step") > 0)
          miss |= dpm_h5_get_attr(og, "step", H5T_NATIVE_INT64, &meta->optimizer_steps);
        if (og >= 0) H5Gclose(og);
        if (meta->optimizer_steps < 0 || meta->optimizer_steps > meta->step) miss = 1;
        meta->job = dpm_h5_get_str(f, "job");
        meta->layers = dpm_h5_get_str(f, "layers");
        meta->init_from = H5Aexists(f, "init_from") > 0 ? dpm_h5_get_str(f, "init_from") : NULL;
        if (miss || !meta->job || !meta->layers || meta->step < 0 || meta->steps_total < meta->step ||
            !(meta->epsilon >= 0) || meta->steps_abandoned < 0)
          rc = dpm_err(err, "%s: checkpoint attributes are missing or damaged", path);
        else if (read_pca(f, meta))
          rc = dpm_err(err, "%s: /pca (the PCA projection) is damaged", path);
      }
      dpm_free(fmt);
      H5Fclose(f);
    }
  } H5E_END_TRY;
  if (rc) dpm_ckpt_meta_free(meta);
  return rc;
}

int dpm_ckpt_read_meta(MPI_Comm comm, const char *path, dpm_ckpt_meta *meta, char err[DPM_ERRLEN]) {
  int rc = read_meta_serial(path, meta, err) ? -1 : 0;
  const int bad = dpm_comm_first_failed(comm, rc) >= 0;
  if (bad && !rc) {
    dpm_ckpt_meta_free(meta);
    rc = dpm_err(err, "%s: unreadable on another rank (not on a shared file system?)", path);
  }
  return rc;
}

void dpm_ckpt_meta_free(dpm_ckpt_meta *meta) {
  dpm_free(meta->job);
  dpm_free(meta->layers);
  dpm_free(meta->init_from);
  dpm_free(meta->pca_projection);
  dpm_free(meta->seeded_steps);
  dpm_free(meta->thresholds);
  meta->thresholds = NULL;
  meta->n_thresholds = 0;
  meta->job = meta->layers = meta->init_from = NULL;
  meta->pca_projection = NULL;
  meta->seeded_steps = NULL;
  meta->n_seeded = 0;
}

int dpm_ckpt_read_ledger(const char *path, dpm_ledger **ledger, char err[DPM_ERRLEN]) {
  int rc = 0;
  *ledger = NULL;
  H5E_BEGIN_TRY {
    hid_t fapl = dpm_h5_fapl(NULL, 0);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    hid_t g = f >= 0 ? H5Gopen2(f, "privacy", H5P_DEFAULT) : -1;
    if (g < 0) rc = dpm_err(err, "%s: no /privacy group", path);
    else if (dpm_ledger_read_hdf5(ledger, g, err)) rc = -1;
    if (g >= 0) H5Gclose(g);
    if (f >= 0) H5Fclose(f);
  } H5E_END_TRY;
  return rc;
}

/* The accountant attribute: an int (dpm_accountant_kind) in checkpoints, a name in exports. -1 if unreadable. */
static int get_accountant(hid_t f, int is_export) {
  int kind = -1;
  if (!is_export) return dpm_h5_get_attr(f, "accountant", H5T_NATIVE_INT, &kind) || kind < 0 || kind > 1 ? -1 : kind;
  char *name = dpm_h5_get_str(f, "accountant");
  dpm_accountant_kind k;
  if (name && dpm_accountant_parse(name, &k) == 0) kind = (int)k;
  dpm_free(name);
  return kind;
}

int dpm_ckpt_read_privacy(const char *path, dpm_ledger **ledger, dpm_ckpt_privacy *info, char err[DPM_ERRLEN]) {
  int rc = 0;
  *ledger = NULL;
  memset(info, 0, sizeof *info);
  info->epsilon = NAN;
  info->stats_printed = 1; /* files without the attribute were written by runs that always printed them */
  H5E_BEGIN_TRY {
    hid_t fapl = dpm_h5_fapl(NULL, 0);
    hid_t f = H5Fis_hdf5(path) > 0 ? H5Fopen(path, H5F_ACC_RDONLY, fapl) : -1;
    H5Pclose(fapl);
    char *fmt = f >= 0 ? dpm_h5_get_str(f, "format") : NULL;
    if (fmt) info->is_export = !strcmp(fmt, "dpmpi-model");
    if (f < 0)
      rc = dpm_err(err, "%s: not a readable HDF5 file", path);
    else if (!fmt || (strcmp(fmt, CKPT_FORMAT_NAME) && !info->is_export))
      rc = dpm_err(err, "%s: not a dpmpi checkpoint or released model (attribute format is %s)", path,
                   fmt ? fmt : "missing");
    else if (dpm_h5_get_attr(f, "private", H5T_NATIVE_INT, &info->privacy))
      rc = dpm_err(err, "%s: attribute 'private' is missing or damaged", path);
    else if (!info->privacy)
      rc = dpm_err(err, "%s: written by a non-private run (private = 0): there is no privacy guarantee to compute", path);
    else if (dpm_h5_get_attr(f, "delta", H5T_NATIVE_DOUBLE, &info->delta) || !(info->delta > 0 && info->delta < 1))
      rc = dpm_err(err, "%s: attribute 'delta' is missing or damaged", path);
    else if ((info->accountant = get_accountant(f, info->is_export)) < 0)
      rc = dpm_err(err, "%s: attribute 'accountant' is missing or damaged", path);
    else if (info->is_export && dpm_h5_get_attr(f, "epsilon", H5T_NATIVE_DOUBLE, &info->epsilon))
      rc = dpm_err(err, "%s: attribute 'epsilon' is missing or damaged", path);
    else if (H5Aexists(f, "stats_printed") > 0 &&
             dpm_h5_get_attr(f, "stats_printed", H5T_NATIVE_INT, &info->stats_printed))
      rc = dpm_err(err, "%s: attribute 'stats_printed' is damaged", path);
    else if (H5Lexists(f, "privacy", H5P_DEFAULT) <= 0 || H5Lexists(f, "privacy/privacy_ledger", H5P_DEFAULT) <= 0)
      rc = dpm_err(err, "%s: no privacy ledger /privacy/privacy_ledger (%s)", path,
                   info->is_export ? "an export written before exports carried the ledger: export the checkpoint again"
                                   : "damaged checkpoint");
    if (!rc) {
      hid_t g = H5Gopen2(f, "privacy", H5P_DEFAULT);
      char inner[DPM_ERRLEN];
      if (g < 0) rc = dpm_err(err, "%s: cannot open /privacy", path);
      else if (dpm_ledger_read_hdf5(ledger, g, inner)) rc = dpm_err(err, "%s: /privacy: %s", path, inner);
      if (g >= 0) H5Gclose(g);
    }
    dpm_free(fmt);
    if (f >= 0) H5Fclose(f);
  } H5E_END_TRY;
  return rc;
}

int dpm_ckpt_read(MPI_Comm comm, const char *path, const dpm_ckpt_model *m, dpm_ledger **ledger,
                  char err[DPM_ERRLEN]) {
  int rc = 0;
  *ledger = NULL;
  H5E_BEGIN_TRY {
    hid_t fapl = dpm_h5_fapl(&comm, 0);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (f < 0) {
      rc = dpm_err(err, "%s: cannot open for reading", path);
    } else {
      rc = layers_io(f, "/model", m, m->params, 0, err);
      for (int k = 0; k < m->n_state && !rc; k++) rc = layers_io(f, m->state_group[k], m, m->state[k], 0, err);
      if (rc) { /* the dataset's message, with the file it is in */
        char inner[DPM_ERRLEN];
        snprintf(inner, sizeof inner, "%s", err);
        dpm_err(err, "%s: %s", path, inner);
      }
      H5Fclose(f);
    }
  } H5E_END_TRY;
  if (!rc) rc = dpm_ckpt_read_ledger(path, ledger, err);
  const int bad = dpm_comm_first_failed(comm, rc) >= 0;
  if (bad && !rc) rc = dpm_err(err, "%s: another rank could not read its part", path);
  if (rc) {
    dpm_ledger_free(*ledger);
    *ledger = NULL;
    /* name the problem seen by the lowest failing rank: dpm_exit_if_error does that for the caller */
    return -1;
  }
  return 0;
}

int dpm_ckpt_same_model(const char *a, const char *b, char err[DPM_ERRLEN]) {
  dpm_layer_spec *sa = NULL, *sb = NULL;
  int na = 0, nb = 0, rc = 0;
  char inner[DPM_ERRLEN];
  if (dpm_model_parse(a, &sa, &na, inner)) return dpm_err(err, "the checkpoint's layers do not parse: %s", inner);
  if (dpm_model_parse(b, &sb, &nb, inner)) {
    dpm_free(sa);
    return dpm_err(err, "the job's layers do not parse: %s", inner);
  }
  if (na != nb) {
    rc = dpm_err(err, "the checkpoint's model has %d layers, the job's %d", na, nb);
  } else {
    for (int i = 0; i < na && !rc; i++)
      if (memcmp(&sa[i], &sb[i], sizeof sa[i]))
        rc = dpm_err(err, "layer %d differs between the checkpoint's model and the job's", i + 1);
  }
  dpm_free(sa);
  dpm_free(sb);
  return rc;
}

void dpm_ckpt_name(const char *dir, int64_t step, char *out, size_t len) {
  snprintf(out, len, "%s/ckpt-%08lld.h5", dir, (long long)step);
}

static int cmp_desc(const void *a, const void *b) { return -strcmp(*(char *const *)a, *(char *const *)b); }

int dpm_ckpt_list(const char *path, char ***paths, char err[DPM_ERRLEN]) {
  *paths = NULL;
  DIR *d = opendir(path);
  if (!d) {
    if (errno != ENOTDIR) return dpm_err(err, "%s: no such checkpoint file or directory: %s", path, strerror(errno));
    FILE *fp = fopen(path, "rb");
    if (!fp) return dpm_err(err, "%s: cannot open: %s", path, strerror(errno));
    fclose(fp);
    *paths = dpm_malloc(sizeof(char *));
    (*paths)[0] = dpm_strdup(path);
    return 1;
  }
  int n = 0, cap = 8;
  char **out = dpm_malloc(sizeof(char *) * (size_t)cap);
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t l = strlen(e->d_name);
    long long step;
    char tail[8];
    if (l < 9 || strncmp(e->d_name, "ckpt-", 5) || strcmp(e->d_name + l - 3, ".h5")) continue;
    if (sscanf(e->d_name, "ckpt-%lld%7s", &step, tail) != 2 || strcmp(tail, ".h5")) continue;
    if (n == cap) out = dpm_realloc(out, sizeof(char *) * (size_t)(cap *= 2));
    size_t len = strlen(path) + l + 2;
    out[n] = dpm_malloc(len);
    snprintf(out[n++], len, "%s/%s", path, e->d_name);
  }
  closedir(d);
  qsort(out, (size_t)n, sizeof(char *), cmp_desc); /* zero-padded steps: newest first */
  *paths = out;
  return n;
}

int dpm_ckpt_export(const char *ckpt, const char *out, const dpm_ckpt_meta *meta, const dpm_ledger *ledger,
                    double epsilon, char err[DPM_ERRLEN]) {
  char *tmp = dpm_atomic_tmp_name(out);
  int rc = 0;
  H5E_BEGIN_TRY {
    hid_t fapl = dpm_h5_fapl(NULL, 0);
    hid_t src = H5Fopen(ckpt, H5F_ACC_RDONLY, fapl);
    hid_t dst = src >= 0 ? dpm_h5_create(tmp, fapl) : -1;
    H5Pclose(fapl);
    if (src < 0) rc = dpm_err(err, "%s: cannot open", ckpt);
    else if (dst < 0) rc = dpm_err(err, "%s: cannot create", tmp);
    else if (H5Ocopy(src, H5Lexists(src, "ema", H5P_DEFAULT) > 0 ? "ema" : "model", dst, "model", H5P_DEFAULT,
                     H5P_DEFAULT) < 0) /* train.ema_decay: the released model is the parameters' moving average */
      rc = dpm_err(err, "%s: cannot copy /model", ckpt);
    else if (H5Lexists(src, "pca", H5P_DEFAULT) > 0 && H5Ocopy(src, "pca", dst, "pca", H5P_DEFAULT, H5P_DEFAULT) < 0)
      rc = dpm_err(err, "%s: cannot copy /pca (the model's input projection)", ckpt);
    if (!rc) { /* the whole ledger the exported epsilon is computed from (journal steps included) */
      hid_t g = H5Gcreate2(dst, "privacy", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      if (g < 0) rc = dpm_err(err, "%s: cannot create /privacy", tmp);
      else {
        rc = dpm_ledger_write_hdf5(ledger, g, err);
        H5Gclose(g);
      }
    }
    if (!rc) {
      int32_t fmt = 1, ema = H5Lexists(src, "ema", H5P_DEFAULT) > 0;
      const char *acct = dpm_accountant_name(meta->accountant);
      const char *cn = dpm_clipping_name(meta->clipping);
      int r = dpm_h5_put_str(dst, "format", "dpmpi-model") |
              dpm_h5_put_attr(dst, "format_version", H5T_STD_I32LE, H5T_NATIVE_INT32, &fmt) |
              dpm_h5_put_str(dst, "library_version", DPM_VERSION) | dpm_h5_put_str(dst, "layers", meta->layers) |
              (meta->init_from ? dpm_h5_put_str(dst, "init_from", meta->init_from) : 0) |
              dpm_h5_put_attr(dst, "private", H5T_STD_I32LE, H5T_NATIVE_INT, &meta->privacy) |
              dpm_h5_put_attr(dst, "ema", H5T_STD_I32LE, H5T_NATIVE_INT32, &ema) |
              dpm_h5_put_attr(dst, "steps", H5T_STD_I64LE, H5T_NATIVE_INT64, &meta->step) |
              dpm_h5_put_attr(dst, "n_train", H5T_STD_I64LE, H5T_NATIVE_INT64, &meta->n_train) |
              dpm_h5_put_attr(dst, "reproducible", H5T_STD_I32LE, H5T_NATIVE_INT, &meta->reproducible) |
              dpm_h5_put_attr(dst, "stats_printed", H5T_STD_I32LE, H5T_NATIVE_INT, &meta->stats_printed);
      if (meta->n_seeded > 0) r |= put_ranges(dst, "seeded_steps", meta->seeded_steps, meta->n_seeded);
      if (meta->privacy)
        r |= dpm_h5_put_attr(dst, "epsilon", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &epsilon) |
             dpm_h5_put_attr(dst, "delta", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->delta) |
             dpm_h5_put_str(dst, "accountant", acct) |
             dpm_h5_put_attr(dst, "sampling_rate", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->q) |
             dpm_h5_put_attr(dst, "noise_multiplier", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->sigma) |
             dpm_h5_put_str(dst, "clipping", cn) |
             dpm_h5_put_attr(dst, "clip", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->clip);
      if (r) rc = dpm_err(err, "%s: cannot write the privacy metadata", tmp);
    }
    if (dst >= 0 && H5Fclose(dst) < 0 && !rc) rc = dpm_err(err, "%s: cannot close", tmp);
    if (src >= 0) H5Fclose(src);
  } H5E_END_TRY;
  if (!rc && dpm_atomic_commit(tmp, out)) rc = dpm_err(err, "%s: cannot write: %s", out, strerror(errno));
  else if (rc) unlink(tmp);
  dpm_free(tmp);
  return rc;
}

/* ---- the run journal ---------------------------------------------------------------------------- */

void dpm_ckpt_dirname(const char *path, char *out, size_t len) { dpm_path_dirname(path, out, len); }

int64_t dpm_journal_ledger_steps(const dpm_ledger *L) {
  int64_t n = 0;
  for (int i = 0; i < dpm_ledger_size(L); i++) {
    int kind;
    int64_t count;
    dpm_ledger_event(L, i, &kind, NULL, NULL, &count);
    if (kind == 0) n += count;
  }
  return n;
}

void dpm_journal_name(const char *dir, const char *run_id, char *out, size_t len) {
  snprintf(out, len, "%s/journal-%s", dir, run_id);
}

int dpm_journal_read(const char *dir, const char *run_id, dpm_journal *j, char err[DPM_ERRLEN]) {
  memset(j, 0, sizeof *j);
  char path[4096], line[256];
  dpm_journal_name(dir, run_id, path, sizeof path);
  FILE *fp = fopen(path, "r");
  if (!fp) return errno == ENOENT ? 0 : dpm_err(err, "%s: cannot read the run journal: %s", path, strerror(errno));
  j->found = 1;
  int rc = 0, ln = 0;
  while (!rc && fgets(line, sizeof line, fp)) {
    ln++;
    size_t len = strlen(line);
    if (len == 0 || line[len - 1] != '\n') {
      if (!feof(fp)) rc = dpm_err(err, "%s:%d: line too long (damaged journal)", path, ln);
      break; /* the last line, cut by a crash before its fsync: its steps never started */
    }
    if (line[0] == '#') continue;
    /* WORD and 2 or 3 non-negative integers, nothing else */
    char word[16] = "", *tok[5], *save = NULL, copy[256];
    long long v[3] = {-1, -1, -1};
    int n = 0, bad = 0;
    snprintf(copy, sizeof copy, "%.*s", (int)len - 1, line);
    for (char *t = strtok_r(copy, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
      if (n < 5) tok[n] = t;
      n++;
    }
    if (n >= 3 && n <= 4 && strlen(tok[0]) < sizeof word) {
      snprintf(word, sizeof word, "%s", tok[0]);
      for (int k = 1; k < n; k++) {
        char *end;
        errno = 0;
        v[k - 1] = strtoll(tok[k], &end, 10);
        if (*end || end == tok[k] || errno || v[k - 1] < 0) bad = 1;
      }
    } else {
      bad = 1;
    }
    long long a = v[0], b = v[1], c = v[2];
    int64_t total = -1;
    if (bad) n = 0;
    if (n == 3 && (!strcmp(word, "start") || !strcmp(word, "ckpt") || !strcmp(word, "end"))) total = b;
    else if (n == 4 && (!strcmp(word, "run") || !strcmp(word, "branch"))) total = !strcmp(word, "run") ? c : b;
    if (total < 0 || a < 0 || (n == 4 && c < 0))
      rc = dpm_err(err, "%s:%d: damaged journal line '%.*s'", path, ln, (int)len - 1, line);
    else if (!strcmp(word, "ckpt")) /* within an announced block: it lowers nothing */
      j->has_ckpt = 1, j->ckpt_step = a, j->ckpt_total = b, j->total = total > j->total ? total : j->total;
    else
      j->total = total; /* run: announced; end: what ran; start, branch: the ledger of a new segment */
  }
  if (!rc && ferror(fp)) rc = dpm_err(err, "%s: read error", path);
  fclose(fp);
  return rc;
}

int dpm_journal_append(const char *dir, const char *run_id, const char *line, char err[DPM_ERRLEN]) {
  char path[4096];
  dpm_journal_name(dir, run_id, path, sizeof path);
  int fresh = access(path, F_OK) != 0;
  int fd = open(path, O_RDWR | O_APPEND | O_CREAT, 0666);
  if (fd < 0) return dpm_err(err, "%s: cannot open the run journal for appending: %s", path, strerror(errno));
  /* a last line cut by a crash (no newline) was never synced as a whole: drop it before appending */
  off_t size = lseek(fd, 0, SEEK_END), keep = size;
  char c = '\n';
  while (keep > 0 && pread(fd, &c, 1, keep - 1) == 1 && c != '\n') keep--;
  if (keep < size && ftruncate(fd, keep)) {
    dpm_err(err, "%s: cannot drop the cut last line of the run journal: %s", path, strerror(errno));
    close(fd);
    return -1;
  }
  char buf[320];
  int len = snprintf(buf, sizeof buf, "%s\n", line);
  int rc = write(fd, buf, (size_t)len) == len && fsync(fd) == 0 ? 0 : -1;
  if (rc) dpm_err(err, "%s: cannot append to the run journal: %s", path, strerror(errno));
  close(fd);
  if (!rc && fresh) dpm_fsync_path(dir, 1); /* the new file's directory entry */
  return rc;
}

int dpm_journal_add_extra(const char *ckpt, const dpm_ckpt_meta *meta, dpm_ledger *ledger, int64_t *extra,
                          char err[DPM_ERRLEN]) {
  char dir[4096];
  dpm_journal j;
  *extra = 0;
  dpm_ckpt_dirname(ckpt, dir, sizeof dir);
  if (dpm_journal_read(dir, meta->run_id, &j, err)) return -1;
  const int64_t have = dpm_journal_ledger_steps(ledger);
  *extra = meta->privacy && j.total > have ? j.total - have : 0;
  if (*extra > 0) dpm_ledger_add_sgm(ledger, meta->q, meta->sigma, *extra);
  return 0;
}
