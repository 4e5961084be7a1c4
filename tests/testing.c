/* Test harness implementation: see testing.h. */
#include "testing.h"

#include <stdlib.h>
#include <string.h>

int dpm_test_passed = 0, dpm_test_failed = 0;

/* dpm_fatal in any module aborts the whole job (MPI_Abort): no rank of a failing test waits forever */
void dpm_test_init(int *argc, char ***argv) {
  MPI_Init(argc, argv);
  dpm_comm_install_abort();
}

int dpm_test_finish(void) {
  int local[2] = {dpm_test_passed, dpm_test_failed}, total[2] = {0, 0}, rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Allreduce(local, total, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) printf("%d passed, %d failed\n", total[0], total[1]);
  fflush(stdout);
  MPI_Finalize();
  return total[1] == 0 && total[0] > 0 ? 0 : 1;
}

FILE *dpm_test_open_ref(const char *name) {
  const char *dir = getenv("DPM_SHARED_DIR");
  char path[1024];
  snprintf(path, sizeof path, "%s/refs/%s", dir ? dir : "/work/shared", name);
  FILE *f = fopen(path, "r");
  CHECK(f != NULL, "cannot open %s", path);
  return f;
}

void dpm_test_drop_example(const float *x, const int32_t *y, int n, int d, int k, float *x2, int32_t *y2) {
  memcpy(x2, x, sizeof(float) * (size_t)k * (size_t)d);
  memcpy(x2 + (size_t)k * d, x + (size_t)(k + 1) * d, sizeof(float) * (size_t)(n - k - 1) * (size_t)d);
  memcpy(y2, y, sizeof(int32_t) * (size_t)k);
  memcpy(y2 + k, y + k + 1, sizeof(int32_t) * (size_t)(n - k - 1));
}
