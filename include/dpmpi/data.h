/* dpmpi data: datasets in HDF5 (layout in docs/formats.md), converted from IDX or CSV, and read by
 * each rank as its own contiguous shard with parallel HDF5 hyperslabs.
 *
 * File layout: groups /train and /test, each with
 *   x  N x d float32, or N x H x W x C uint8 (images, channels last as in the IDX and common files)
 *   y  N int32 labels in [0, num_classes)
 * Attributes on the root group: num_classes (int), format ("dpmpi-dataset"), format_version (int);
 * on each x: for uint8 images "mean" and "std" (float, of the training pixels scaled to [0,1]) used
 * to normalize: value = (pixel / 255 - mean) / std.
 * In memory every example is float32 NCHW (dense data: C = d, H = W = 1).
 */
#ifndef DPMPI_DATA_H
#define DPMPI_DATA_H

#include <mpi.h>
#include <stdint.h>

#include "dpmpi/common.h"

typedef struct {
  int64_t n_total;     /* examples in the whole split */
  int64_t begin, end;  /* this rank's shard [begin, end) */
  int C, H, W;         /* example shape (NCHW); dense data: C = d, H = W = 1 */
  int num_classes;
  float *x;            /* (end - begin) x C*H*W, normalized */
  int32_t *y;          /* end - begin labels */
} dpm_dataset;

/* Read the header of split `group` ("train" or "test") of `path` (any rank, independent I/O): example
 * count, shape, class count. Validates layout and types. Returns 0, or -1 with err naming the file,
 * dataset and problem. */
int dpm_dataset_probe(const char *path, const char *group, dpm_dataset *hdr, char err[DPM_ERRLEN]);

/* Collective over comm: every rank reads rows [begin, end) of split `group` with parallel HDF5
 * (MPI-IO, collective hyperslab reads), converts to normalized float NCHW and validates its rows:
 * labels in range, no NaN or Inf. Ranks may pass empty shards. Returns 0, or -1 with err (per rank:
 * combine with dpm_exit_if_error). */
int dpm_dataset_load(MPI_Comm comm, const char *path, const char *group, int64_t begin, int64_t end,
                     dpm_dataset *out, char err[DPM_ERRLEN]);
void dpm_dataset_free(dpm_dataset *d);

/* Conversion (serial, one process). IDX files may be gzipped (detected by magic). Returns 0 or -1. */
int dpm_convert_idx(const char *train_images, const char *train_labels, const char *test_images,
                    const char *test_labels, const char *out, char err[DPM_ERRLEN]);
/* CSV: header line with column names; all columns numeric; label_column names the integer label column
 * (labels must be 0..K-1); the other columns become float32 features. */
int dpm_convert_csv(const char *train_csv, const char *test_csv, const char *label_column, const char *out,
                    char err[DPM_ERRLEN]);

/* `dpmpi data ...` subcommand (convert, info). Returns the process exit status. */
int dpm_cmd_data(int argc, char **argv);

#endif
