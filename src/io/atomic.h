/* dpmpi atomic file replacement (internal to io), the one way every io writer puts a finished file in
 * place: checkpoints (ckpt.c, rank 0 after the collective write), exports (ckpt.c) and dataset
 * conversions (data.c).
 *
 *   char *tmp = dpm_atomic_tmp_name(path);      // "PATH.tmp"
 *   ... create tmp, write it, close it ...     // on a failure: unlink(tmp)
 *   int stage = dpm_atomic_commit(tmp, path);  // fsync tmp, rename over path, fsync the directory
 *   if (stage) ... report with errno ...       // tmp is already unlinked
 *
 * Until the rename, path holds the previous file or nothing; after a crash at any point path is either
 * the old file or the whole new one (tmp may be left behind). */
#ifndef DPMPI_IO_ATOMIC_H
#define DPMPI_IO_ATOMIC_H

#include <stddef.h>

/* What dpm_atomic_commit could not do (errno says why). */
enum { DPM_ATOMIC_OK = 0, DPM_ATOMIC_FSYNC = 1, DPM_ATOMIC_RENAME = 2 };

/* "PATH.tmp", dpm_malloc'd. */
char *dpm_atomic_tmp_name(const char *path);

/* fsync the closed file tmp, rename it over path, fsync path's directory (a failure of that last fsync
 * is ignored: some file systems cannot sync a directory, and the file itself is durable). Returns
 * DPM_ATOMIC_OK, or DPM_ATOMIC_FSYNC / DPM_ATOMIC_RENAME with errno set, after unlinking tmp. */
int dpm_atomic_commit(const char *tmp, const char *path);

/* fsync a file (dir = 0) or a directory (dir = 1) by name: 0, or -1 with errno set. */
int dpm_fsync_path(const char *path, int dir);

/* The directory part of path: "a/b" -> "a", "/b" -> "/", "b" -> ".". */
void dpm_path_dirname(const char *path, char *out, size_t len);

#endif
