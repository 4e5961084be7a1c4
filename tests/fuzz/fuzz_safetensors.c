/* safetensors reader (dpmpi model import): header JSON, dtypes, shapes and data offsets. */
#include "fuzz_util.h"
#include "dpmpi/io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = fz_file("in.safetensors", data, size);
  dpm_st_file f;
  char err[DPM_ERRLEN];
  if (dpm_st_read(p, &f, err) == 0) {
    for (int i = 0; i < f.n; i++)
      if (dpm_st_find(&f, f.t[i].name) == NULL) abort();
    dpm_st_free(&f);
  }
  return 0;
}
