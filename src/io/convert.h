/* dpmpi io/convert (internal): what the dataset reader (dataset.c), the writer (convert.c) and the
 * converters (convert_idx.c, convert_csv.c) share. */
#ifndef DPMPI_IO_CONVERT_H
#define DPMPI_IO_CONVERT_H

#include <hdf5.h>
#include <stdint.h>

#define DPM_DATASET_FORMAT "dpmpi-dataset"
#define DPM_DATASET_VERSION 1
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

#endif
