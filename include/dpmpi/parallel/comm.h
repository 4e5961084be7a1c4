/* dpmpi parallel/comm: what every MPI-using module shares: checked MPI calls, the collective user error
 * (lowest failing rank prints one line, every rank exits 2), and the abort handler that makes dpm_fatal
 * end the whole job with MPI_Abort. Linking this module installs the handler (a constructor), so an
 * internal error on one rank never leaves the others waiting. */
#ifndef DPMPI_PARALLEL_COMM_H
#define DPMPI_PARALLEL_COMM_H

#include <mpi.h>

#include "dpmpi/core/common.h"

#define DPM_MPI_CHECK(call)                                                   \
  do {                                                                        \
    int dpm_rc_ = (call);                                                     \
    if (dpm_rc_ != MPI_SUCCESS) dpm_fatal_at(__FILE__, __LINE__, "MPI call failed: %s", #call); \
  } while (0)

/* Collective over comm: the lowest rank whose `failed` is non-zero, or -1 on every rank if none failed.
 * The one agreement on a failure that the collective errors below (and io's readers and writers) use. */
int dpm_comm_first_failed(MPI_Comm comm, int failed);

/* Collective over comm. If any rank has failed (its `failed` is non-zero), the lowest such rank prints
 * "dpmpi: error: <err>" to stderr, and every rank finalizes MPI and exits with DPM_EXIT_USAGE.
 * Otherwise returns normally on every rank. */
void dpm_exit_if_error(MPI_Comm comm, int failed, const char *err);

/* Print a user error on this rank and abort the whole job with DPM_EXIT_USAGE. For errors that only
 * one rank can see and where a collective check is not possible. Never returns. */
void dpm_die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* Rank in MPI_COMM_WORLD (0 before MPI_Init). */
int dpm_world_rank(void);

/* Install the MPI abort handler (done at load time; callable again, e.g. by tests). */
void dpm_comm_install_abort(void);

#endif
