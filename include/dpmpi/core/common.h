/* dpmpi core: allocation, errors and timing shared by every module. No MPI, no HDF5: the kernels (nn/)
 * and the privacy core (privacy/) build on this alone.
 *
 * Two kinds of failure, handled differently:
 *  - internal invariants: DPM_ASSERT / dpm_fatal print file and line and abort the whole job (with
 *    dpmpi/parallel/comm.h linked, which installs its abort handler: MPI_Abort), so no rank hangs;
 *  - user errors (bad job file, bad data file, impossible epsilon): library functions fill an error
 *    buffer of DPM_ERRLEN bytes and return -1; the command then calls dpm_exit_if_error()
 *    (dpmpi/parallel/comm.h), which is collective: every rank learns that some rank failed, the lowest
 *    failing rank prints its one-line message, and every rank exits with status 2.
 * All allocation goes through dpm_malloc/dpm_calloc/dpm_realloc, which never return NULL.
 */
#ifndef DPMPI_COMMON_H
#define DPMPI_COMMON_H

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

/* Format a user error into err (DPM_ERRLEN bytes); returns -1 so callers can `return dpm_err(...)`. */
int dpm_err(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Wall-clock seconds from a monotonic clock. */
double dpm_time(void);

/* How dpm_fatal ends the job and which rank it names: by default the process exits with
 * DPM_EXIT_INTERNAL and the rank is 0; dpmpi/parallel/comm.h installs MPI_Abort and the world rank. */
typedef struct {
  int (*rank)(void);
  void (*abort)(int status);
} dpm_abort_handler;
void dpm_set_abort_handler(const dpm_abort_handler *h);

#endif
