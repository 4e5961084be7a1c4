/* The random views of augmentation multiplicity: see dpmpi/train/augment.h. */
#include "dpmpi/train/augment.h"

void dpm_augment_view(float *out, const float *x, int C, int H, int W, int pad, int flip, float fill,
                      const dpm_key *key, uint64_t t, uint64_t index) {
  uint64_t r[2];
  dpm_rng_block(key, index, t, DPM_STREAM_AUG, r);
  const int span = 2 * pad + 1;
  /* offsets in [-pad, pad] (the modulo's bias is below 2^-50 for any pad that fits an image) */
  const int dy = (int)(r[0] % (uint64_t)span) - pad, dx = (int)(r[1] % (uint64_t)span) - pad;
  const int mirror = flip && ((r[0] >> 63) & 1);
  for (int c = 0; c < C; c++) {
    const float *xc = x + (size_t)c * H * W;
    float *oc = out + (size_t)c * H * W;
    for (int h = 0; h < H; h++) {
      const int sh = h + dy;
      for (int w = 0; w < W; w++) {
        const int sw = (mirror ? W - 1 - w : w) + dx;
        oc[(size_t)h * W + w] = sh >= 0 && sh < H && sw >= 0 && sw < W ? xc[(size_t)sh * W + sw] : fill;
      }
    }
  }
}
