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

#include "dpmpi/parallel/comm.h"
#include <stdint.h>

#include "dpmpi/core/common.h"

typedef struct {
  int64_t n_total;     /* examples in the whole split */
  int64_t begin, end;  /* this rank's shard [begin, end) */
  int C, H, W;         /* example shape (NCHW); dense data: C = d, H = W = 1 */
  int num_classes;
  int images;          /* 1: x stored as uint8 N x H x W x C, normalized with mean/std; 0: float32 N x d */
  float mean, std;     /* normalization of uint8 images (0 and 1 for float32 data, used as stored) */
  int checksums;       /* 1: x and y carry Fletcher32 chunk checksums (damage fails the read); 0: none */
  float *x;            /* (end - begin) x C*H*W, normalized (64-byte aligned) */
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

/* Serial (one process): count the labels of split `group`: counts[k] for k in [0, num_classes), where
 * counts has room for the num_classes that dpm_dataset_probe reports. Fails on a label out of range. */
int dpm_dataset_label_counts(const char *path, const char *group, int64_t *counts, char err[DPM_ERRLEN]);

/* Conversion (serial, one process). Output is written to a temporary name next to `out` and renamed
 * only when complete, so `out` is either the previous file or the whole new one.
 * IDX files may be gzipped (detected by magic). Returns 0 or -1. */
int dpm_convert_idx(const char *train_images, const char *train_labels, const char *test_images,
                    const char *test_labels, const char *out, char err[DPM_ERRLEN]);
/* CSV: header line with column names; all columns numeric; label_column names the integer label column
 * (labels must be 0..K-1); the other columns become float32 features. */
int dpm_convert_csv(const char *train_csv, const char *test_csv, const char *label_column, const char *out,
                    char err[DPM_ERRLEN]);

/* Conversion progress lines ("dpmpi: ...") on stdout, keeping stderr for the one error line: 1 on, 0 off
 * (the default). */
void dpm_data_set_verbose(int on);
/* Normalization stored by IDX conversion: value = (pixel / 255 - mean) / std. Default mean 0.5, std 0.5,
 * independent of the data (so it costs no privacy). from_data = 1 stores the training pixels' own mean
 * and std instead, which the DP guarantee does not cover. */
void dpm_data_set_normalization(double mean, double std, int from_data);
/* IDX conversion's progress line shows the training pixels' exact mean and std (1) or not (0, the default):
 * they are statistics of the private data computed without noise. With from_data they are stored in the
 * file anyway and are always shown. */
void dpm_data_set_print_stats(int on);


/* Digest of the first n rows of a loaded shard (its rows begin, begin + 1, ... of the split): the sum
 * mod 2^64 of one 64-bit hash per row of (global row index, label, the row's normalized float32 values).
 * A sum over rows, so the digests of the shards of any partition add up (MPI_SUM of uint64) to the digest
 * of the whole split: the same on every grid. Not cryptographic: it tells a changed dataset from the one a
 * checkpoint was trained on, it does not resist forgery. About 1 ns per value. */
uint64_t dpm_dataset_digest(const dpm_dataset *d, int64_t n);

#endif
