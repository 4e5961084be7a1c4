/* HDF5 helpers shared by the dataset files and checkpoints: see h5util.h. */
#include "io/h5util.h"

#include <stdio.h>
#include <string.h>

#include "dpmpi/core/common.h"

#define CHUNK_BYTES ((size_t)4 << 20)

void dpm_h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

hid_t dpm_h5_fapl(MPI_Comm *comm, int lock) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_file_locking(fapl, lock ? 1 : 0, 1);
  H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110);
  if (comm) {
    H5Pset_fapl_mpio(fapl, *comm, MPI_INFO_NULL);
    H5Pset_all_coll_metadata_ops(fapl, 1);
    H5Pset_coll_metadata_write(fapl, 1);
  }
  return fapl;
}

hid_t dpm_h5_create(const char *path, hid_t fapl) {
  hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
  H5Pset_attr_phase_change(fcpl, 64, 48);
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, fcpl, fapl);
  H5Pclose(fcpl);
  return f;
}

hsize_t dpm_h5_chunk_rows(int rank, const hsize_t *dims, size_t elem_bytes) {
  size_t row = elem_bytes;
  for (int k = 1; k < rank; k++) row *= (size_t)dims[k];
  hsize_t most = (hsize_t)(CHUNK_BYTES / (row ? row : 1));
  if (most < 1) most = 1;
  if (dims[0] == 0) return 1;
  /* as many chunks as needed, all of about the same size (the last one is not mostly empty space) */
  hsize_t chunks = (dims[0] + most - 1) / most;
  return (dims[0] + chunks - 1) / chunks;
}

hid_t dpm_h5_checked_dcpl(int rank, const hsize_t *dims, size_t elem_bytes) {
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
  if (dims[0] == 0) return dcpl;
  hsize_t chunk[H5S_MAX_RANK];
  chunk[0] = dpm_h5_chunk_rows(rank, dims, elem_bytes);
  for (int k = 1; k < rank; k++) chunk[k] = dims[k];
  H5Pset_chunk(dcpl, rank, chunk);
  H5Pset_fletcher32(dcpl);
  H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
  return dcpl;
}

int dpm_h5_is_checked(hid_t d) {
  hid_t dcpl = H5Dget_create_plist(d);
  if (dcpl < 0) return 0;
  int n = H5Pget_nfilters(dcpl), found = 0;
  for (int i = 0; i < n; i++) {
    unsigned flags;
    size_t nelem = 0;
    if (H5Pget_filter2(dcpl, (unsigned)i, &flags, &nelem, NULL, 0, NULL, NULL) == H5Z_FILTER_FLETCHER32) found = 1;
  }
  H5Pclose(dcpl);
  return found;
}

int dpm_h5_put_attr(hid_t obj, const char *name, hid_t ftype, hid_t mtype, const void *v) {
  return dpm_h5_put_array_attr(obj, name, ftype, mtype, 0, NULL, v);
}

int dpm_h5_put_array_attr(hid_t obj, const char *name, hid_t ftype, hid_t mtype, int rank, const hsize_t *dims,
                          const void *v) {
  hid_t sp = rank > 0 ? H5Screate_simple(rank, dims, NULL) : H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(obj, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT);
  int rc = (a >= 0 && H5Awrite(a, mtype, v) >= 0) ? 0 : -1;
  if (a >= 0) H5Aclose(a);
  H5Sclose(sp);
  return rc;
}

int dpm_h5_get_attr(hid_t obj, const char *name, hid_t mtype, void *v) {
  if (H5Aexists(obj, name) <= 0) return -1;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  int rc = (a >= 0 && H5Aread(a, mtype, v) >= 0) ? 0 : -1;
  if (a >= 0) H5Aclose(a);
  return rc;
}

int dpm_h5_put_str(hid_t obj, const char *name, const char *value) {
  hid_t t = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR);
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
  int rc = (a >= 0 && H5Awrite(a, t, &value) >= 0) ? 0 : -1;
  if (a >= 0) H5Aclose(a);
  H5Sclose(sp);
  H5Tclose(t);
  return rc;
}

char *dpm_h5_get_str(hid_t obj, const char *name) {
  if (H5Aexists(obj, name) <= 0) return NULL;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT), t = a >= 0 ? H5Aget_type(a) : -1, mt = -1;
  char *out = NULL;
  if (t >= 0 && H5Tget_class(t) == H5T_STRING) {
    mt = H5Tcopy(H5T_C_S1);
    H5Tset_cset(mt, H5Tget_cset(t));
    if (H5Tis_variable_str(t) > 0) {
      char *s = NULL;
      H5Tset_size(mt, H5T_VARIABLE);
      if (H5Aread(a, mt, &s) >= 0 && s) out = dpm_strdup(s);
      if (s) H5free_memory(s);
    } else {
      size_t n = H5Tget_size(t);
      out = dpm_calloc(n + 1, 1);
      H5Tset_size(mt, n + 1);
      H5Tset_strpad(mt, H5T_STR_NULLTERM);
      if (H5Aread(a, mt, out) < 0) dpm_free(out), out = NULL;
    }
  }
  if (mt >= 0) H5Tclose(mt);
  if (t >= 0) H5Tclose(t);
  if (a >= 0) H5Aclose(a);
  return out;
}
