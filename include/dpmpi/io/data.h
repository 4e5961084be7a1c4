/* dpmpi data: datasets in HDF5 (layout in docs/formats.md), converted from IDX, CSV, UTF-8 text or NumPy
 * token arrays, and read by each rank as its own contiguous shard with parallel HDF5 hyperslabs.
 *
 * A dataset file holds one of two kinds of data, told apart by the root attribute `kind`.
 *
 * Labelled data (kind absent or "labelled"; format_version 1): groups /train and /test, each with
 *   x  N x d float32, or N x H x W x C uint8 (images, channels last as in the IDX and common files)
 *   y  N int32 labels in [0, num_classes)
 * Attributes on the root group: num_classes (int), format ("dpmpi-dataset"), format_version (int);
 * on each x: for uint8 images "mean" and "std" (float, of the training pixels scaled to [0,1]) used
 * to normalize: value = (pixel / 255 - mean) / std.
 * In memory every example is float32 NCHW (dense data: C = d, H = W = 1).
 *
 * Token data (kind = "tokens"; format_version 2): groups /train and /test, each with
 *   tokens  N x (T+1) int32 token ids; one row is one example: inputs row[0..T-1], targets row[1..T]
 * Root attributes: format ("dpmpi-dataset"), format_version (2), kind ("tokens"), vocab (int: ids are
 * 0..vocab-1), pad_id (int; -1 = no padding; a target equal to pad_id is masked out of the loss, and may
 * lie outside [0, vocab), e.g. -100), eot_id (int, end-of-text id; -1 = none), tokenizer (string:
 * "bytes" = ids 0..255 are the bytes of UTF-8 text, 256 = end-of-text, vocab 257, pad 255, a byte that
 * never occurs in UTF-8; "external" = ids from a tokenizer outside dpmpi), source ("text" or "npy").
 * Every id of a row is in [0, vocab) or equals pad_id, and every row has at least one target that is not
 * pad_id. The privacy unit is one row (docs/formats.md, "Token data and the privacy unit").
 *
 * Typical use on a training rank:
 *   dpm_dataset hdr, d;
 *   dpm_dataset_probe(path, "train", &hdr, err);              // kind, N, T, vocab, pad_id (any one rank)
 *   dpm_dataset_load(comm, path, "train", b, e, &d, err);     // rows [b, e): d.tok, (e - b) x (T + 1)
 */
#ifndef DPMPI_DATA_H
#define DPMPI_DATA_H

#include "dpmpi/parallel/comm.h"
#include <stdint.h>

#include "dpmpi/core/common.h"
#include "dpmpi/io/canaries.h"

/* What a dataset file holds; 0 (labelled) is what a zeroed dpm_dataset describes. */
typedef enum { DPM_DATA_LABELLED = 0, DPM_DATA_TOKENS = 1 } dpm_data_kind;

/* Tokenizer name of byte-level text conversion, its vocabulary, end-of-text and pad ids. */
#define DPM_TOKENIZER_BYTES "bytes"
#define DPM_BYTES_VOCAB 257
#define DPM_BYTES_EOT 256
#define DPM_BYTES_PAD 255

typedef struct {
  dpm_data_kind kind;  /* labelled: x, y and the shape fields below; tokens: tok, T, vocab, pad_id */
  int64_t n_total;     /* examples in the whole split */
  int64_t begin, end;  /* this rank's shard [begin, end) */
  int C, H, W;         /* example shape (NCHW); dense data: C = d, H = W = 1 */
  int num_classes;
  int images;          /* 1: x stored as uint8 N x H x W x C, normalized with mean/std; 0: float32 N x d */
  float mean, std;     /* normalization of uint8 images (0 and 1 for float32 data, used as stored) */
  int checksums;       /* 1: x and y carry Fletcher32 chunk checksums (damage fails the read); 0: none */
  float *x;            /* (end - begin) x C*H*W, normalized (64-byte aligned) */
  int32_t *y;          /* end - begin labels */
  /* token data (kind == DPM_DATA_TOKENS; then x and y are NULL, C, H, W, num_classes 0) */
  int T;               /* context: a row holds T + 1 ids (inputs row[:-1], targets row[1:]) */
  int vocab;           /* ids are 0..vocab-1 */
  int pad_id;          /* masked target id, -1 = none; may be outside [0, vocab) */
  int eot_id;          /* end-of-text id, -1 = none */
  char tokenizer[32];  /* "bytes", "external", or "" if the file does not say */
  int32_t *tok;        /* (end - begin) x (T + 1) ids (64-byte aligned) */
} dpm_dataset;

/* Read the header of split `group` ("train" or "test") of `path` (any rank, independent I/O): kind,
 * example count, and the shape and class count (labelled) or T, vocab, pad_id, eot_id and tokenizer
 * (tokens). Validates layout and types; x, y and tok stay NULL. Returns 0, or -1 with err naming the file,
 * dataset and problem. */
int dpm_dataset_probe(const char *path, const char *group, dpm_dataset *hdr, char err[DPM_ERRLEN]);

/* Collective over comm: every rank reads rows [begin, end) of split `group` with parallel HDF5
 * (MPI-IO, collective hyperslab reads). Labelled data: converts to normalized float NCHW and validates
 * its rows: labels in range, no NaN or Inf. Token data: int32 rows into tok, every id in [0, vocab) or
 * equal to pad_id and every row with a target that is not pad_id (the error names the file, split,
 * row and column). Ranks may pass empty shards. Returns 0, or -1 with err (per rank:
 * combine with dpm_exit_if_error). */
int dpm_dataset_load(MPI_Comm comm, const char *path, const char *group, int64_t begin, int64_t end,
                     dpm_dataset *out, char err[DPM_ERRLEN]);
void dpm_dataset_free(dpm_dataset *d);

/* Serial (one process): count the labels of split `group`: counts[k] for k in [0, num_classes), where
 * counts has room for the num_classes that dpm_dataset_probe reports. Fails on a label out of range, and
 * on token data (it has no labels). */
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

/* Text conversion (`dpmpi data convert --from text`): UTF-8 files into byte-level token rows.
 * Documents: each file is one document, or with `separator` a line equal to it (without its line end)
 * separates documents; empty documents are skipped. A document of n bytes becomes the sequence
 * EOT b1 .. bn EOT (n + 2 ids, EOT = 256), cut into windows of T + 1 ids with stride T, so its n + 1
 * targets are each in exactly one window; the last window is padded with DPM_BYTES_PAD (masked).
 * per_document: only the first window of each document (truncated documents are counted). Windows
 * never mix documents. Split by document: the test files' documents form the test split (n_test > 0),
 * or (n_test == 0) a document goes to the test split when a 64-bit hash of its bytes, read as a number
 * in [0, 1), is below test_fraction: deterministic, and a function of the document alone. */
typedef struct {
  const char *const *train; /* training files (all documents of them, or all documents with a fraction) */
  int n_train;
  const char *const *test;  /* test files, or NULL with n_test = 0 */
  int n_test;
  double test_fraction;     /* in (0, 1) when n_test == 0 */
  const char *separator;    /* NULL: one document per file */
  int context;              /* T >= 1: rows of T + 1 ids */
  int per_document;         /* 1: one window per document */
  const dpm_canaries *canaries; /* NULL, or canaries inserted into the training split after its documents:
                                   `repeats` documents of each (its text, one window: text + 1 <= T) */
} dpm_text_opts;

/* What text conversion produced in one split (the counts it prints). */
typedef struct {
  int64_t documents;        /* non-empty documents */
  int64_t empty;            /* empty documents skipped */
  int64_t windows;          /* rows written */
  int64_t targets;          /* target ids that are not padding (bytes and end-of-text) */
  int64_t padded;           /* windows with padding */
  int64_t pad_tokens;       /* padded positions */
  int64_t truncated;        /* per_document: documents longer than one window */
  int64_t dropped;          /* per_document: targets cut off by truncation */
  int64_t max_windows;      /* most windows of one document (its group size, docs/formats.md) */
  int64_t canaries;         /* canary documents inserted (training split; included in the counts above) */
} dpm_text_counts;

/* Convert text files (o) into `out`; counts (may be NULL) gets {train, test}. Fails with file:line:column
 * on invalid UTF-8, and on an empty split. Returns 0 or -1. */
int dpm_convert_text(const dpm_text_opts *o, const char *out, dpm_text_counts counts[2], char err[DPM_ERRLEN]);

/* Token arrays (`dpmpi data convert --from tokens`): NumPy .npy files (format 1.0, 2.0 or 3.0; dtype
 * <i4, <i8 or <u2, also spelled =; C order; 2-D N x (T+1), N >= 1, T + 1 >= 2, the same T + 1 in both)
 * into token rows. vocab >= 1; pad_id -1 (none) or the masked id. Every id must be in [0, vocab) or
 * equal pad_id, and every row needs a target that is not pad_id; the error names the file, row and
 * column. Returns 0 or -1. */
int dpm_convert_npy(const char *train_npy, const char *test_npy, int vocab, int pad_id, const char *out,
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
 * mod 2^64 of one 64-bit hash per row of (global row index, label, the row's normalized float32 values),
 * or for token data of (global row index, the row's T + 1 ids).
 * A sum over rows, so the digests of the shards of any partition add up (MPI_SUM of uint64) to the digest
 * of the whole split: the same on every grid. Not cryptographic: it tells a changed dataset from the one a
 * checkpoint was trained on, it does not resist forgery. About 1 ns per value. */
uint64_t dpm_dataset_digest(const dpm_dataset *d, int64_t n);

#endif
