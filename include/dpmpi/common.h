/* dpmpi common: allocation, errors and timing shared by every module.
 *
 * Two kinds of failure, handled differently:
 *  - internal invariants: DPM_ASSERT / dpm_fatal print file and line and abort the whole job
 *    (MPI_Abort), so no rank hangs;
 *  - user errors (bad job file, bad data file, impossible epsilon): library functions fill an error
 *    buffer of DPM_ERRLEN bytes and return -1; the command then calls dpm_exit_if_error(), which is
 *    collective: every rank learns that some rank failed, the lowest failing rank prints its one-line
 *    message, and every rank exits with status 2.
 * All allocation goes through dpm_malloc/dpm_calloc/dpm_realloc, which never return NULL.
 */
#ifndef DPMPI_COMMON_H
#define DPMPI_COMMON_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#define DPM_ERRLEN 512

/* Exit status for user errors (bad input, bad configuration); internal errors abort with 3. */
#define DPM_EXIT_USAGE 2
#define DPM_EXIT_INTERNAL 3

void *dpm_malloc_at(size_t n, const char *file, int line);
void *dpm_calloc_at(size_t count, size_t size, const char *file, int line);
void *dpm_realloc_at(void *p, size_t n, const char *file, int line);
#define dpm_malloc(n) dpm_malloc_at((n), __FILE__, __LINE__)
#define dpm_calloc(c, s) dpm_calloc_at((c), (s), __FILE__, __LINE__)
#define dpm_realloc(p, n) dpm_realloc_at((p), (n), __FILE__, __LINE__)
/* 64-byte aligned allocation for kernels; free with dpm_free like everything else. */
void *dpm_malloc_aligned_at(size_t n, const char *file, int line);
#define dpm_malloc_aligned(n) dpm_malloc_aligned_at((n), __FILE__, __LINE__)
void dpm_free(void *p);
char *dpm_strdup(const char *s);

/* Print "dpmpi: internal error at FILE:LINE: ..." and abort every rank. Never returns. */
void dpm_fatal_at(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
#define dpm_fatal(...) dpm_fatal_at(__FILE__, __LINE__, __VA_ARGS__)
#define DPM_ASSERT(cond)                                                      \
  do {                                                                        \
    if (!(cond)) dpm_fatal_at(__FILE__, __LINE__, "assertion failed: %s", #cond); \
  } while (0)
#define DPM_MPI_CHECK(call)                                                   \
  do {                                                                        \
    int dpm_rc_ = (call);                                                     \
    if (dpm_rc_ != MPI_SUCCESS) dpm_fatal_at(__FILE__, __LINE__, "MPI call failed: %s", #call); \
  } while (0)

/* Format a user error into err (DPM_ERRLEN bytes); returns -1 so callers can `return dpm_err(...)`. */
int dpm_err(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Collective over comm. If any rank has failed (its `failed` is non-zero), the lowest such rank prints
 * "dpmpi: error: <err>" to stderr, and every rank finalizes MPI and exits with DPM_EXIT_USAGE.
 * Otherwise returns normally on every rank. */
void dpm_exit_if_error(MPI_Comm comm, int failed, const char *err);

/* Print a user error on this rank and abort the whole job with DPM_EXIT_USAGE. For errors that only
 * one rank can see and where a collective check is not possible. Never returns. */
void dpm_die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* Wall-clock seconds from a monotonic clock. */
double dpm_time(void);

/* Rank in MPI_COMM_WORLD (0 before MPI_Init). */
int dpm_world_rank(void);

#endif
