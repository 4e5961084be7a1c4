/* Shared by the bench/ programs: medians, the bench models, the synthetic data, CSV files, an idle
 * barrier. Linked into every bench program (bench/CMakeLists.txt). */
#ifndef DPMPI_BENCHUTIL_H
#define DPMPI_BENCHUTIL_H

#include "dpmpi/parallel/comm.h"
#include <stdint.h>
#include <stdio.h>

/* The bench models (28x28x1 inputs, 10 classes). */
#define BENCH_MLP "flatten; dense out=512; relu; dense out=10"
#define BENCH_WIDE_MLP "flatten; dense out=4096; relu; dense out=2048; relu; dense out=10"
#define BENCH_TANH_CNN                                                                                         \
  "conv out=16 kernel=8 stride=2 pad=3; tanh; maxpool kernel=2 stride=1; conv out=32 kernel=4 stride=2; tanh; " \
  "maxpool kernel=2 stride=1; flatten; dense out=32; tanh; dense out=10"

/* The clock of bench_now: 0 wall time (dpm_time, the default), 1 this thread's CPU time (immune to
 * other jobs taking the core; with one rank and single-threaded BLAS it is the step's compute time). */
void bench_use_cpu_time(int on);
double bench_now(void); /* seconds */

/* Median of v[0..n) (v is not reordered). */
double bench_median(const double *v, int n);

/* Synthetic examples: x[(i - b) * 784 + k] uniform in [-0.5, 0.5) and y = i mod 10, for the global rows
 * i in [b, e) (the cost of a step does not depend on the values). */
void bench_fill(float *x, int32_t *y, int64_t b, int64_t e);

/* Open a CSV for appending; writes the header when the file is new or empty. */
FILE *bench_csv_open(const char *path, const char *header);

/* Wait for every rank of comm without spinning a core (so a one-rank baseline can run meanwhile). */
void bench_idle_barrier(MPI_Comm comm);

#endif
