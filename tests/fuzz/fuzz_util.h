/* Shared by the libFuzzer harnesses of tests/fuzz (built with -DDPM_FUZZ=ON and CC=clang; docs/reliability.md):
 * MPI and HDF5 set up once, and the input bytes written to a per-process file for the readers that take a
 * path. Each harness defines LLVMFuzzerTestOneInput and includes this once. */
#ifndef DPM_FUZZ_UTIL_H
#define DPM_FUZZ_UTIL_H
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dpmpi/core/common.h"

void dpm_h5_quiet(void);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  setenv("OMPI_MCA_plm", "isolated", 0); /* a singleton: no daemon */
  MPI_Init(NULL, NULL);
  dpm_h5_quiet();
  return 0;
}

/* The input as a file /tmp/dpm_fuzz_PID_TAG (overwritten each run); returns its path. */
static inline const char *fz_file(const char *tag, const uint8_t *data, size_t size) {
  static char path[2][128];
  static int k = 0;
  k ^= 1;
  snprintf(path[k], sizeof path[k], "/tmp/dpm_fuzz_%d_%s", (int)getpid(), tag);
  FILE *f = fopen(path[k], "wb");
  if (!f) abort();
  if (size && fwrite(data, 1, size, f) != size) abort();
  fclose(f);
  return path[k];
}

/* A NUL-terminated copy of the input (dpm_free). */
static inline char *fz_string(const uint8_t *data, size_t size) {
  char *s = dpm_malloc(size + 1);
  memcpy(s, data, size);
  s[size] = '\0';
  return s;
}

/* The output path of a converter (removed after each run). */
static inline const char *fz_out(void) {
  static char path[128];
  snprintf(path, sizeof path, "/tmp/dpm_fuzz_%d_out.h5", (int)getpid());
  return path;
}
#endif
