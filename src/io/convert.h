/* dpmpi io/convert (internal): what the dataset reader (dataset.c), the writer (convert.c) and the
 * converters (convert_idx.c, convert_csv.c, convert_text.c, convert_npy.c) share. */
#ifndef DPMPI_IO_CONVERT_H
#define DPMPI_IO_CONVERT_H

#include <hdf5.h>
#include <stdint.h>

#define DPM_DATASET_FORMAT "dpmpi-dataset"
/* The newest format_version this dpmpi reads; labelled files are still written as version 1 (an older
 * dpmpi reads them), token files as version 2 (an older dpmpi refuses them as too new). */
#define DPM_DATASET_VERSION 2
#define DPM_DATASET_VERSION_LABELLED 1
#define DPM_DATASET_VERSION_TOKENS 2
#define DPM_KIND_TOKENS "tokens"
#define DPM_KIND_LABELLED "labelled"
/* Largest context T a token file may have (a row of T + 1 int32 ids). */
#define DPM_MAX_CONTEXT (1 << 24)
/* Bytes of file data per collective read (and per conversion write): bounds peak memory and keeps
 * every MPI-IO request far below the 2 GiB limit of a single call. */
#define DPM_IO_CHUNK_BYTES ((size_t)64 << 20)

/* Reader helpers used by the writer. */
hid_t dpm_io_select_rows(hid_t space, hsize_t row0, hsize_t rows);
void dpm_io_close_id(hid_t *id, herr_t (*closer)(hid_t));

/* The converters' settings (dpm_data_set_verbose, dpm_data_set_normalization, dpm_data_set_print_stats). */
int dpm_convert_verbose(void);
int dpm_convert_print_stats(void);
void dpm_convert_normalization(double *mean, double *std, int *from_data);
/* "dpmpi: ..." on stdout when verbose. */
void dpm_convert_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Writing a dataset file: OUT.tmp.PID, committed (fsync, rename, directory fsync) or removed. */
typedef struct {
  hid_t file;
  const char *out;
  char *tmp;
} dpm_out_file;
int dpm_out_open(dpm_out_file *o, const char *out, char *err);
void dpm_out_abort(dpm_out_file *o);
int dpm_out_commit(dpm_out_file *o, char *err);
int dpm_write_root_attrs(hid_t file, int num_classes, const char *source);
hid_t dpm_create_dset(hid_t file, const char *name, hid_t type, int rank, const hsize_t *dims);
int dpm_write_rows(hid_t d, hid_t mtype, hsize_t row0, hsize_t rows, const void *buf);
int dpm_write_labels(hid_t file, const char *name, const int32_t *y, int64_t n);

/* Token files: the root attributes (format, format_version 2, kind "tokens", vocab, pad_id, eot_id,
 * tokenizer, source); 0 or -1. */
int dpm_write_token_attrs(hid_t file, int vocab, int pad_id, int eot_id, const char *tokenizer,
                          const char *source);

/* A token split being written: /SPLIT/tokens int32 n x (T + 1), filled row by row through a buffer of
 * whole chunks (dpm_h5_chunk_rows). dpm_token_writer_open: 0 or -1 (HDF5 failure); put copies one row;
 * close flushes and closes (0, or -1 if any write failed). */
typedef struct {
  hid_t d;
  int64_t n, next;     /* rows declared, rows given */
  int row_len;         /* T + 1 */
  int64_t buf_rows, used;
  int32_t *buf;
  int failed;
} dpm_token_writer;
int dpm_token_writer_open(dpm_token_writer *w, hid_t file, const char *split, int64_t n, int row_len);
void dpm_token_writer_put(dpm_token_writer *w, const int32_t *row);
int dpm_token_writer_close(dpm_token_writer *w);

/* Token id v is valid: in [0, vocab), or the pad id (pad_id != -1). */
static inline int dpm_token_ok(int64_t v, int vocab, int pad_id) {
  return (v >= 0 && v < vocab) || (pad_id != -1 && v == pad_id);
}
/* Column of the first invalid id of row (row_len ids), -1 if all are valid; *no_target: 1 if every
 * target (columns 1..row_len-1) is pad_id (the row would contribute no token to the loss). */
int dpm_token_row_check(const int32_t *row, int row_len, int vocab, int pad_id, int *no_target);

#endif
