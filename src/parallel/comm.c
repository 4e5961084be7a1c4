/* Checked MPI calls, collective user errors and the MPI abort handler: see dpmpi/parallel/comm.h. */
#include "dpmpi/parallel/comm.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

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

static void mpi_abort(int status) {
  if (mpi_running()) MPI_Abort(MPI_COMM_WORLD, status);
}

void dpm_comm_install_abort(void) {
  const dpm_abort_handler h = {dpm_world_rank, mpi_abort};
  dpm_set_abort_handler(&h);
}

__attribute__((constructor)) static void install_at_load(void) { dpm_comm_install_abort(); }

int dpm_comm_first_failed(MPI_Comm comm, int failed) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  int mine = failed ? rank : size, first = size;
  DPM_MPI_CHECK(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm));
  return first == size ? -1 : first;
}

void dpm_exit_if_error(MPI_Comm comm, int failed, const char *err) {
  const int first = dpm_comm_first_failed(comm, failed);
  if (first < 0) return;
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
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

