/* Job-file parser with overrides: bytes before the first NUL are the job file, the lines after it the
 * --section.key=value overrides. */
#include "fuzz_util.h"
#include "dpmpi/io/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *nul = memchr(data, 0, size);
  size_t jl = nul ? (size_t)(nul - data) : size;
  const char *path = fz_file("job.ini", data, jl);
  char *over = nul ? fz_string(nul + 1, size - jl - 1) : fz_string(data, 0);
  char *list[64];
  int n = 0;
  for (char *tok = strtok(over, "\n"); tok && n < 64; tok = strtok(NULL, "\n")) list[n++] = tok;
  dpm_config cfg;
  char err[DPM_ERRLEN];
  dpm_config_load(path, n, list, &cfg, err);
  dpm_config_free(&cfg);
  dpm_free(over);
  return 0;
}
