/* dpmpi HDF5 helpers (internal), shared by the dataset files (data.c) and checkpoints (ckpt.c). */
#ifndef DPMPI_H5UTIL_H
#define DPMPI_H5UTIL_H

#include <hdf5.h>
#include "dpmpi/parallel/comm.h"
#include <stddef.h>

/* HDF5 prints its whole error stack on every failed call unless told not to; callers report errors. */
void dpm_h5_quiet(void);

/* File access list: MPI-IO over *comm with collective metadata (comm NULL: serial), file format 1.10
 * objects (checksummed object headers and superblock); lock: use file locks where the file system has
 * them (0: none, for files one job both writes and reopens). */
hid_t dpm_h5_fapl(MPI_Comm *comm, int lock);

/* Create (truncate) path with fapl. Up to 64 attributes per object stay in its object header, which the
 * 1.10 format checksums (beyond 8, HDF5 would move them to a heap whose blocks carry no checksum, and a
 * damaged attribute would read silently). Each attribute must then be below 64 KiB. */
hid_t dpm_h5_create(const char *path, hid_t fapl);

/* Creation list for a dataset of `rank` dims (row-major, dims[0] = rows) of elem_bytes-sized elements:
 * chunks of whole rows, at most ~4 MiB, each with a Fletcher32 checksum that HDF5 verifies on every
 * read; space allocated at creation (required for parallel writes of filtered data). A dataset with no
 * rows gets the default (contiguous) layout: there is nothing to check. */
hid_t dpm_h5_checked_dcpl(int rank, const hsize_t *dims, size_t elem_bytes);

/* Rows per chunk that dpm_h5_checked_dcpl chooses (>= 1): writers that stream rows write whole chunks. */
hsize_t dpm_h5_chunk_rows(int rank, const hsize_t *dims, size_t elem_bytes);

/* Scalar numeric attribute: put creates `name` of file type ftype from *v of memory type mtype; get reads
 * it as mtype into *v. Both return 0, or -1 (get: also if the attribute is absent). */
int dpm_h5_put_attr(hid_t obj, const char *name, hid_t ftype, hid_t mtype, const void *v);
int dpm_h5_get_attr(hid_t obj, const char *name, hid_t mtype, void *v);
/* The same for an array attribute of `rank` dims (row-major; rank 0: scalar, dims unused). */
int dpm_h5_put_array_attr(hid_t obj, const char *name, hid_t ftype, hid_t mtype, int rank, const hsize_t *dims,
                          const void *v);

/* Scalar string attribute: written as a variable-length UTF-8 string (h5py reads it as str); read in
 * either form (fixed or variable length). get returns a dpm_malloc'd string, NULL if the attribute is
 * absent or not a string. put returns 0 or -1. */
int dpm_h5_put_str(hid_t obj, const char *name, const char *value);
char *dpm_h5_get_str(hid_t obj, const char *name);

/* 1 if dataset d carries the Fletcher32 filter, 0 if not. */
int dpm_h5_is_checked(hid_t d);

#endif
