/* IDX converter reader: the first byte k splits the rest into an images file and a labels file at k/256 of
 * its length (both splits use the same pair). */
#include "fuzz_util.h"
#include "dpmpi/io/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  size_t cut = (size - 1) * data[0] / 256;
  const char *img = fz_file("images.idx", data + 1, cut), *lab = fz_file("labels.idx", data + 1 + cut, size - 1 - cut);
  char err[DPM_ERRLEN];
  dpm_convert_idx(img, lab, img, lab, fz_out(), err);
  unlink(fz_out());
  return 0;
}
