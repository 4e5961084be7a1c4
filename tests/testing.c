/* Test harness implementation: see testing.h. */
#include "testing.h"

#include <stdlib.h>

int dpm_test_passed = 0, dpm_test_failed = 0;

void dpm_test_init(int *argc, char ***argv) { MPI_Init(argc, argv); }

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
