/* .npy token-array reader (dpmpi data convert --from tokens): the input as the training and the test file. */
#include "fuzz_util.h"
#include "dpmpi/io/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *a = fz_file("train.npy", data, size), *b = fz_file("test.npy", data, size);
  char err[DPM_ERRLEN];
  dpm_convert_npy(a, b, 300, -1, fz_out(), err);
  unlink(fz_out());
  return 0;
}
