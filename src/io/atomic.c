/* Atomic file replacement: see atomic.h. */
#include "io/atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "dpmpi/core/common.h"

char *dpm_atomic_tmp_name(const char *path) {
  size_t len = strlen(path) + 5;
  char *tmp = dpm_malloc(len);
  snprintf(tmp, len, "%s.tmp", path);
  return tmp;
}

int dpm_fsync_path(const char *path, int dir) {
  int fd = open(path, dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  int e = errno;
  close(fd);
  errno = e;
  return rc;
}

void dpm_path_dirname(const char *path, char *out, size_t len) {
  snprintf(out, len, "%s", path);
  char *slash = strrchr(out, '/');
  if (slash == out) out[1] = '\0';
  else if (slash) *slash = '\0';
  else snprintf(out, len, ".");
}

int dpm_atomic_commit(const char *tmp, const char *path) {
  int stage = DPM_ATOMIC_OK;
  if (dpm_fsync_path(tmp, 0)) stage = DPM_ATOMIC_FSYNC;
  else if (rename(tmp, path)) stage = DPM_ATOMIC_RENAME;
  if (stage) {
    int e = errno;
    unlink(tmp);
    errno = e;
    return stage;
  }
  char *dir = dpm_malloc(strlen(path) + 2);
  dpm_path_dirname(path, dir, strlen(path) + 2);
  dpm_fsync_path(dir, 1);
  dpm_free(dir);
  return DPM_ATOMIC_OK;
}
