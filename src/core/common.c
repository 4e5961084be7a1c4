/* Allocation wrappers, error reporting (internal and user) and timing: see dpmpi/core/common.h. No MPI:
 * dpm_fatal ends the job through the abort handler (dpmpi/parallel/comm.h installs MPI_Abort). */
#include "dpmpi/core/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void oom(size_t n, const char *file, int line) {
  dpm_fatal_at(file, line, "out of memory allocating %zu bytes", n);
}

void *dpm_malloc_at(size_t n, const char *file, int line) {
  void *p = malloc(n ? n : 1);
  if (!p) oom(n, file, line);
  return p;
}

void *dpm_calloc_at(size_t count, size_t size, const char *file, int line) {
  void *p = calloc(count ? count : 1, size ? size : 1);
  if (!p) oom(count * size, file, line);
  return p;
}

void *dpm_realloc_at(void *p, size_t n, const char *file, int line) {
  void *q = realloc(p, n ? n : 1);
  if (!q) oom(n, file, line);
  return q;
}

void *dpm_malloc_aligned_at(size_t n, const char *file, int line) {
  void *p = NULL;
  size_t rounded = (n + 63) / 64 * 64;
  if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0) oom(n, file, line);
  return p;
}

void dpm_free(void *p) { free(p); }

char *dpm_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = dpm_malloc(n);
  memcpy(d, s, n);
  return d;
}

static dpm_abort_handler handler = {NULL, NULL};

void dpm_set_abort_handler(const dpm_abort_handler *h) { handler = *h; }

void dpm_fatal_at(const char *file, int line, const char *fmt, ...) {
  char msg[DPM_ERRLEN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "dpmpi: internal error at %s:%d (rank %d): %s\n", file, line, handler.rank ? handler.rank() : 0,
          msg);
  fflush(stderr);
  if (handler.abort) handler.abort(DPM_EXIT_INTERNAL);
  exit(DPM_EXIT_INTERNAL);
}

int dpm_err(char *err, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, DPM_ERRLEN, fmt, ap);
    va_end(ap);
  }
  return -1;
}

double dpm_time(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
