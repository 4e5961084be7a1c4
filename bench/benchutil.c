/* See benchutil.h. */
#define _POSIX_C_SOURCE 200809L
#include "benchutil.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dpmpi/core/common.h"
#include "dpmpi/core/rng.h"

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static int use_cpu_time;

void bench_use_cpu_time(int on) { use_cpu_time = on; }

double bench_now(void) {
  if (!use_cpu_time) return dpm_time();
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double bench_median(const double *v, int n) {
  if (n < 1) return 0;
  double *s = dpm_malloc(sizeof(double) * (size_t)n);
  memcpy(s, v, sizeof(double) * (size_t)n);
  qsort(s, (size_t)n, sizeof(double), cmp_double);
  double m = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
  dpm_free(s);
  return m;
}

void bench_fill(float *x, int32_t *y, int64_t b, int64_t e) {
  for (int64_t i = b; i < e; i++) {
    y[i - b] = (int32_t)(i % 10);
    for (int k = 0; k < 784; k++)
      x[(i - b) * 784 + k] = (float)(dpm_u01((uint64_t)(i * 784 + k) * 0x9E3779B97F4A7C15ULL) - 0.5);
  }
}

FILE *bench_csv_open(const char *path, const char *header) {
  FILE *f = fopen(path, "a");
  if (!f) dpm_fatal("cannot open %s for appending", path);
  if (ftell(f) == 0) fprintf(f, "%s\n", header);
  return f;
}

void bench_idle_barrier(MPI_Comm comm) {
  MPI_Request req;
  int done = 0;
  struct timespec nap = {0, 200000};
  DPM_MPI_CHECK(MPI_Ibarrier(comm, &req));
  for (;;) {
    DPM_MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
    if (done) break;
    nanosleep(&nap, NULL);
  }
}
