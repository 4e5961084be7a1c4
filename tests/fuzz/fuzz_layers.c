/* Layer-spec parser, then the model's shape and layout pass on a small input (and the model itself when it
 * is small). The first byte picks the input shape. */
#include "fuzz_util.h"
#include "dpmpi/nn/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  static const int shapes[4][4] = {{1, 28, 28, 10}, {3, 8, 8, 4}, {1, 1, 16, 0}, {1, 1, 6, 4}};
  const int *sh = shapes[data[0] & 3];
  char *text = fz_string(data + 1, size - 1);
  dpm_layer_spec *specs = NULL;
  int n = 0;
  char err[DPM_ERRLEN];
  if (dpm_model_parse(text, &specs, &n, err) == 0) {
    size_t np = 0, arena = 0;
    if (dpm_model_estimate(specs, n, sh[0], sh[1], sh[2], sh[3], 4, &np, &arena, err) == 0 &&
        8 * np + arena < ((size_t)32 << 20)) {
      dpm_model *m = dpm_model_create(specs, n, sh[0], sh[1], sh[2], sh[3], 4, err);
      if (!m) abort(); /* the estimate accepted what create refuses */
      if (dpm_model_num_params(m) != np) abort();
      dpm_model_free(m);
    }
    dpm_free(specs);
  }
  dpm_free(text);
  return 0;
}
