/* dpmpi io/ledger_h5: the privacy ledger in HDF5 (checkpoints and released models, group /privacy).
 * The ledger itself (dpmpi/privacy/accountant.h) is in memory only; this is its file form. */
#ifndef DPMPI_IO_LEDGER_H5_H
#define DPMPI_IO_LEDGER_H5_H

#include <hdf5.h>

#include "dpmpi/privacy/accountant.h"

/* Write the ledger into `group` (an open HDF5 group) as dataset "privacy_ledger": a compound table
 * {kind int32, q double, sigma double, count int64}, with attribute "format" = 1. Replaces an existing
 * dataset of that name. Serial HDF5 calls: call on one rank, or collectively with identical ledgers
 * if the file is opened with the MPI-IO driver (all metadata writes are then collective). */
int dpm_ledger_write_hdf5(const dpm_ledger *ledger, hid_t group, char err[DPM_ERRLEN]);

/* Read a ledger written by dpm_ledger_write_hdf5 from `group`; *ledger receives a new ledger (caller
 * frees). Validates every row (q in (0,1], sigma > 0, count >= 0). */
int dpm_ledger_read_hdf5(dpm_ledger **ledger, hid_t group, char err[DPM_ERRLEN]);

#endif
