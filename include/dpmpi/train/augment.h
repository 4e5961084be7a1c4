/* dpmpi augment: the random views of augmentation multiplicity (De et al. 2022; train.aug_multiplicity).
 *
 * A view of an image is a random crop of it zero-padded by `pad` pixels on every side (the crop's offset
 * uniform in [-pad, pad] in each direction) and, with flip, a horizontal mirror with probability 1/2. The
 * randomness of view v of example i at step t comes from the stream (key, t, i * K + v) under the tag
 * DPM_STREAM_AUG (dpmpi/core/rng.h): the same on every grid, independent of the sampling and noise streams
 * even under the same key. Augmentation is data-independent, so it costs no privacy; the step averages the
 * K views' gradients of an example BEFORE clipping (src/train/step.c), so each example still contributes
 * at most C. Pure function, no MPI. */
#ifndef DPMPI_AUGMENT_H
#define DPMPI_AUGMENT_H

#include <stdint.h>

#include "dpmpi/core/rng.h"

/* out (C x H x W) = the view `index` (= i * K + v) at step t of x (C x H x W); fill is the value padded
 * pixels take (a zero pixel after the dataset's normalization). */
void dpm_augment_view(float *out, const float *x, int C, int H, int W, int pad, int flip, float fill,
                      const dpm_key *key, uint64_t t, uint64_t index);

#endif
