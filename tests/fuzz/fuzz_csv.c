/* CSV converter reader: the input is the training and the test file (label column "label"). */
#include "fuzz_util.h"
#include "dpmpi/io/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = fz_file("in.csv", data, size);
  char err[DPM_ERRLEN];
  dpm_convert_csv(p, p, "label", fz_out(), err);
  unlink(fz_out());
  return 0;
}
