/* dpmpi safetensors: the Hugging Face safetensors file format, read into float32 and written as float32.
 *
 * A safetensors file is an 8-byte little-endian header length N, a JSON header of N bytes (an object
 * {name: {"dtype": D, "shape": [d0, ...], "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}},
 * possibly followed by spaces), then the data: every tensor's bytes, row-major, little-endian, at
 * [begin, end) of the data section. The reader accepts exactly what the reference implementation accepts:
 * the tensors must tile the data section (sorted by offset, no gap, no overlap, nothing after the last one),
 * each of product(shape) * size(dtype) bytes. Dtypes F32, F16 and BF16 are converted exactly to float32;
 * F64 is rounded to float32 and must be within its range; any other dtype is an error. Every value must be
 * finite (a model with a NaN or Inf weight is rejected, naming the tensor and the element).
 *
 *   dpm_st_file f;
 *   if (dpm_st_read("model.safetensors", &f, err)) ... report err ...;   // one line, names file + tensor
 *   const dpm_st_tensor *t = dpm_st_find(&f, "wte.weight");             // NULL if absent
 *   ... t->rank, t->shape[0..rank), t->numel, t->data (float32) ...
 *   dpm_st_free(&f);
 *
 *   dpm_st_tensor out[2] = {{.name = "a", .rank = 1, .shape = {3}, .data = a}, ...};
 *   dpm_st_write("out.safetensors", 2, out, err);                      // F32, {"format": "pt"}
 *
 * JSON comes from libcjson (Debian's libcjson-dev); what it leaves open is checked here: integers must be
 * exact (below 2^53), names unique, the header an object of objects. The reader is plain C with stdio: no
 * MPI, no HDF5. Hosts must be little-endian (checked at compile time).
 */
#ifndef DPMPI_IO_SAFETENSORS_H
#define DPMPI_IO_SAFETENSORS_H

#include <stdint.h>

#include "dpmpi/core/common.h"

/* Most dimensions a tensor may have (the reader rejects more). */
#define DPM_ST_MAXDIM 8
/* Largest header the reader accepts (the reference implementation's limit: 100 MB). */
#define DPM_ST_MAX_HEADER 100000000ull

typedef struct {
  char *name;                     /* the name in the file */
  int rank;                       /* number of dimensions, 0 (a scalar) to DPM_ST_MAXDIM */
  int64_t shape[DPM_ST_MAXDIM];   /* dims[0] is the slowest */
  int64_t numel;                  /* product of shape (1 for a scalar) */
  float *data;                    /* numel float32 values, row-major */
  char dtype[8];                  /* the dtype in the file: "F32", "F16", "BF16" or "F64" */
} dpm_st_tensor;

typedef struct {
  int n;               /* tensors, in the order of their data offsets */
  dpm_st_tensor *t;
  char *format;        /* __metadata__.format ("pt" from PyTorch), or NULL */
} dpm_st_file;

/* Read and check the whole file path into *f (float32). Returns 0, or -1 with err a single line naming the
 * file and (where there is one) the tensor and what was expected; *f is then empty (nothing to free). */
int dpm_st_read(const char *path, dpm_st_file *f, char err[DPM_ERRLEN]);
void dpm_st_free(dpm_st_file *f);

/* The tensor called name, or NULL. */
const dpm_st_tensor *dpm_st_find(const dpm_st_file *f, const char *name);

/* Write n tensors (name, rank, shape, data are used; numel and dtype are ignored) as F32 in this order, the
 * header padded with spaces so the data starts at a multiple of 8 bytes, "__metadata__": {"format": "pt"}
 * (what Hugging Face transformers requires). Written to PATH.tmp and renamed into place (io/atomic.h).
 * Names must be non-empty, unique and not "__metadata__", shapes non-negative. Returns 0, or -1 with err. */
int dpm_st_write(const char *path, int n, const dpm_st_tensor *t, char err[DPM_ERRLEN]);

/* Exact conversions of one IEEE half (F16) and one bfloat16 (BF16) bit pattern to float32. */
float dpm_st_f16_to_f32(uint16_t h);
float dpm_st_bf16_to_f32(uint16_t b);

#endif
