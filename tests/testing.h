/* Minimal test harness shared by tests/<module>/test_*.c: checks that count failures, a closing
 * "N passed, N failed" line on rank 0, and a non-zero exit if any check failed on any rank. */
#ifndef DPM_TESTING_H
#define DPM_TESTING_H

#include <math.h>
#include "dpmpi/parallel/comm.h"
#include <stdint.h>
#include <stdio.h>

extern int dpm_test_passed, dpm_test_failed;

void dpm_test_init(int *argc, char ***argv);
/* Opens ../shared/refs/NAME (directory from $DPM_SHARED_DIR); a missing file is a failed check and NULL. */
FILE *dpm_test_open_ref(const char *name);
/* The neighbouring dataset without example k (add/remove adjacency): x2, y2 receive the n - 1 other rows
 * of x (n x d) and y, in order. */
void dpm_test_drop_example(const float *x, const int32_t *y, int n, int d, int k, float *x2, int32_t *y2);
/* Collects the counts over MPI_COMM_WORLD, prints the closing line, finalizes MPI, returns exit status. */
int dpm_test_finish(void);

#define CHECK(cond, ...)                                                        \
  do {                                                                          \
    if (cond) {                                                                 \
      dpm_test_passed++;                                                        \
    } else {                                                                    \
      dpm_test_failed++;                                                        \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);           \
      fprintf(stderr, __VA_ARGS__);                                             \
      fprintf(stderr, "\n");                                                    \
    }                                                                           \
  } while (0)

/* |a - b| <= atol + rtol * |b| */
#define CHECK_CLOSE(a, b, rtol, atol, what)                                     \
  do {                                                                          \
    double ca_ = (double)(a), cb_ = (double)(b);                                \
    CHECK(fabs(ca_ - cb_) <= (atol) + (rtol) * fabs(cb_), "%s: got %.10g, expected %.10g", (what), ca_, cb_); \
  } while (0)

#endif
