/* Allocation wrappers, error reporting (internal and user) and timing: see dpmpi/common.h. */
#include "dpmpi/common.h"

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

static int mpi_running(void) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

int dpm_world_rank(void) {
  int rank = 0;
  if (mpi_running()) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

void dpm_fatal_at(const char *file, int line, const char *fmt, ...) {
  char msg[DPM_ERRLEN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "dpmpi: internal error at %s:%d (rank %d): %s\n", file, line, dpm_world_rank(), msg);
  fflush(stderr);
  if (mpi_running()) MPI_Abort(MPI_COMM_WORLD, DPM_EXIT_INTERNAL);
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

void dpm_exit_if_error(MPI_Comm comm, int failed, const char *err) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  int mine = failed ? rank : size, first = size;
  DPM_MPI_CHECK(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm));
  if (first == size) return;
  if (rank == first) {
    fprintf(stderr, "dpmpi: error: %s\n", err && err[0] ? err : "unknown error");
    fflush(stderr);
  }
  fflush(stdout);
  MPI_Finalize();
  exit(DPM_EXIT_USAGE);
}

void dpm_die(const char *fmt, ...) {
  char msg[DPM_ERRLEN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "dpmpi: error: %s\n", msg);
  fflush(stderr);
  fflush(stdout);
  if (mpi_running()) {
    int size = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, DPM_EXIT_USAGE);
    MPI_Finalize();
  }
  exit(DPM_EXIT_USAGE);
}

double dpm_time(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
