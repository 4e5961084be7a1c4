/* Text converter reader (UTF-8 validation, document separators, windows): the first byte picks the
 * separator mode and context length. */
#include "fuzz_util.h"
#include "dpmpi/io/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const char *p = fz_file("in.txt", data + 1, size - 1);
  const char *files[1] = {p};
  dpm_text_opts o = {.train = files, .n_train = 1, .test = NULL, .n_test = 0, .test_fraction = 0.5,
                     .separator = data[0] & 1 ? "---" : NULL, .context = 1 + (data[0] >> 4),
                     .per_document = (data[0] >> 1) & 1};
  dpm_text_counts c[2];
  char err[DPM_ERRLEN];
  dpm_convert_text(&o, fz_out(), c, err);
  unlink(fz_out());
  return 0;
}
