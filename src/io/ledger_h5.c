/* The privacy ledger's HDF5 form (dataset "privacy_ledger", a checksummed compound table {kind, q, sigma,
 * count}): see dpmpi/io/ledger_h5.h. The accountant (privacy/) knows nothing of files. */
#include "dpmpi/io/ledger_h5.h"

#include "io/h5util.h"

#include <math.h>


typedef struct {
  int32_t kind;
  double q, sigma;
  int64_t count;
} ledger_row;

#define LEDGER_DSET "privacy_ledger"

static hid_t row_mem_type(void) {
  hid_t t = H5Tcreate(H5T_COMPOUND, sizeof(ledger_row));
  H5Tinsert(t, "kind", HOFFSET(ledger_row, kind), H5T_NATIVE_INT32);
  H5Tinsert(t, "q", HOFFSET(ledger_row, q), H5T_NATIVE_DOUBLE);
  H5Tinsert(t, "sigma", HOFFSET(ledger_row, sigma), H5T_NATIVE_DOUBLE);
  H5Tinsert(t, "count", HOFFSET(ledger_row, count), H5T_NATIVE_INT64);
  return t;
}

int dpm_ledger_write_hdf5(const dpm_ledger *L, hid_t group, char err[DPM_ERRLEN]) {
  int rc = -1;
  hid_t ft = -1, mt = -1, space = -1, dset = -1;
  ledger_row *rows = dpm_malloc(sizeof(ledger_row) * (size_t)(dpm_ledger_size(L) ? dpm_ledger_size(L) : 1));
  const int n = dpm_ledger_size(L);
  for (int i = 0; i < n; i++) {
    int kind;
    dpm_ledger_event(L, i, &kind, &rows[i].q, &rows[i].sigma, &rows[i].count);
    rows[i].kind = kind;
  }
  H5E_BEGIN_TRY {
    if (H5Lexists(group, LEDGER_DSET, H5P_DEFAULT) > 0) H5Ldelete(group, LEDGER_DSET, H5P_DEFAULT);
    ft = H5Tcreate(H5T_COMPOUND, 28);
    H5Tinsert(ft, "kind", 0, H5T_STD_I32LE);
    H5Tinsert(ft, "q", 4, H5T_IEEE_F64LE);
    H5Tinsert(ft, "sigma", 12, H5T_IEEE_F64LE);
    H5Tinsert(ft, "count", 20, H5T_STD_I64LE);
    mt = row_mem_type();
    hsize_t dims[1] = {(hsize_t)n};
    space = H5Screate_simple(1, dims, NULL);
    /* chunked with the Fletcher32 checksum: a damaged ledger fails to read instead of reading wrong */
    hsize_t maxdims[1] = {H5S_UNLIMITED}, chunk[1] = {n > 0 ? (hsize_t)n : 1};
    H5Sclose(space);
    space = H5Screate_simple(1, dims, maxdims);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 1, chunk);
    H5Pset_fletcher32(dcpl);
    dset = space >= 0 ? H5Dcreate2(group, LEDGER_DSET, ft, space, H5P_DEFAULT, dcpl, H5P_DEFAULT) : -1;
    H5Pclose(dcpl);
    if (dset < 0) {
      dpm_err(err, "cannot create dataset '%s' for the privacy ledger", LEDGER_DSET);
    } else if (n > 0 && H5Dwrite(dset, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, rows) < 0) {
      dpm_err(err, "cannot write the privacy ledger");
    } else {
      int32_t fmt = 1;
      if (dpm_h5_put_attr(dset, "format", H5T_STD_I32LE, H5T_NATIVE_INT32, &fmt))
        dpm_err(err, "cannot write the ledger format attribute");
      else rc = 0;
    }
  } H5E_END_TRY;
  if (dset >= 0) H5Dclose(dset);
  if (space >= 0) H5Sclose(space);
  if (mt >= 0) H5Tclose(mt);
  if (ft >= 0) H5Tclose(ft);
  dpm_free(rows);
  return rc;
}

int dpm_ledger_read_hdf5(dpm_ledger **out, hid_t group, char err[DPM_ERRLEN]) {
  int rc = -1;
  hid_t dset = -1, space = -1, mt = -1;
  ledger_row *rows = NULL;
  *out = NULL;
  H5E_BEGIN_TRY {
    dset = H5Dopen2(group, LEDGER_DSET, H5P_DEFAULT);
    if (dset < 0) {
      dpm_err(err, "no dataset '%s' (the privacy ledger) in the group", LEDGER_DSET);
    } else {
      space = H5Dget_space(dset);
      hsize_t dims[1] = {0};
      if (space < 0 || H5Sget_simple_extent_ndims(space) != 1 || H5Sget_simple_extent_dims(space, dims, NULL) < 0) {
        dpm_err(err, "'%s' is not a one-dimensional table", LEDGER_DSET);
      } else {
        rows = dpm_malloc(sizeof(ledger_row) * (size_t)(dims[0] ? dims[0] : 1));
        mt = row_mem_type();
        if (dims[0] > 0 && H5Dread(dset, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, rows) < 0) {
          dpm_err(err, "cannot read '%s' as {kind, q, sigma, count} rows", LEDGER_DSET);
        } else {
          dpm_ledger *L = dpm_ledger_create();
          rc = 0;
          for (hsize_t i = 0; i < dims[0]; i++) {
            ledger_row *r = &rows[i];
            int bad = (r->kind != 0 && r->kind != 1) || !(r->q > 0 && r->q <= 1) || !(r->sigma > 0) ||
                      !isfinite(r->sigma) || r->count < 0 || (r->kind == 1 && r->q != 1.0);
            if (bad) {
              rc = dpm_err(err, "privacy ledger row %llu is invalid (kind %d, q %g, sigma %g, count %lld)",
                           (unsigned long long)i, (int)r->kind, r->q, r->sigma, (long long)r->count);
              break;
            }
            /* push without merging: the file is what ran */
            dpm_ledger_append(L, r->kind, r->q, r->sigma, r->count);
          }
          if (rc) dpm_ledger_free(L);
          else *out = L;
        }
      }
    }
  } H5E_END_TRY;
  if (mt >= 0) H5Tclose(mt);
  if (space >= 0) H5Sclose(space);
  if (dset >= 0) H5Dclose(dset);
  dpm_free(rows);
  return rc;
}

