/* A plain replay driver for the libFuzzer harnesses of tests/fuzz, for compilers without libFuzzer (gcc, the
 * normal CI build): every file named on the command line, or found directly in a directory named there, is
 * fed once to the harness's LLVMFuzzerTestOneInput. A harness that aborts or crashes fails the ctest.
 * Exits 1 when no input was found (an empty corpus would test nothing). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <mpi.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "replay: cannot open %s\n", path);
    exit(1);
  }
  size_t cap = 4096, n = 0;
  uint8_t *buf = malloc(cap);
  if (!buf) abort();
  for (size_t r; (r = fread(buf + n, 1, cap - n, f)) > 0;) {
    n += r;
    if (n == cap) {
      cap *= 2;
      buf = realloc(buf, cap);
      if (!buf) abort();
    }
  }
  fclose(f);
  /* an exact-size copy, so an overrun by the harness reads past the allocation as under libFuzzer */
  uint8_t *exact = malloc(n ? n : 1);
  if (!exact) abort();
  memcpy(exact, buf, n);
  free(buf);
  LLVMFuzzerTestOneInput(exact, n);
  free(exact);
  return 1;
}

int main(int argc, char **argv) {
  LLVMFuzzerInitialize(&argc, &argv);
  int count = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) != 0) {
      fprintf(stderr, "replay: no such file or directory %s\n", argv[i]);
      return 1;
    }
    if (!S_ISDIR(st.st_mode)) {
      count += replay_file(argv[i]);
      continue;
    }
    DIR *d = opendir(argv[i]);
    if (!d) return 1;
    for (struct dirent *e; (e = readdir(d));) {
      if (e->d_name[0] == '.') continue;
      char path[4096];
      snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
      if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) count += replay_file(path);
    }
    closedir(d);
  }
  printf("replayed %d inputs\n", count);
  MPI_Finalize();
  return count > 0 ? 0 : 1;
}
