/* One logical DP-SGD step over a data-parallel communicator: see dpmpi/step.h.
 * Noise: the parameters are split into `size` contiguous slices and rank r draws slice r, so every
 * parameter receives exactly one draw N(0, sigma^2 C^2) per step (invariant I2), the same draws a single
 * root would add (they are addressed by (key, t, global index)), in 1/size of the time. */
#include "dpmpi/step.h"

#include <string.h>

#include "dpmpi/common.h"
#include "dpmpi/dpsgd.h"

#define ALLREDUCE_BUCKET_FLOATS (1 << 20) /* 4 MiB buckets: the sweet spot of MPI_Allreduce here */

void dpm_step_init(dpm_step *s) {
  DPM_ASSERT(s->physical_batch >= 1 && s->physical_batch <= dpm_model_max_batch(s->model));
  MPI_Comm_rank(s->comm, &s->rank);
  MPI_Comm_size(s->comm, &s->size);
  const dpm_dataset *d = s->data;
  size_t D = (size_t)d->C * d->H * d->W, PB = (size_t)s->physical_batch, G = (size_t)dpm_model_num_groups(s->model);
  s->sel = dpm_malloc(sizeof(int64_t) * (size_t)(d->end - d->begin + 1));
  s->xb = dpm_malloc_aligned(sizeof(float) * PB * D);
  s->yb = dpm_malloc(sizeof(int32_t) * PB);
  s->sq = dpm_malloc(sizeof(float) * (G ? G : 1) * PB);
  s->coef = dpm_malloc(sizeof(float) * (G ? G : 1) * PB);
}

void dpm_step_free(dpm_step *s) {
  dpm_free(s->sel);
  dpm_free(s->xb);
  dpm_free(s->yb);
  dpm_free(s->sq);
  dpm_free(s->coef);
}

void dpm_step_run(dpm_step *s, uint64_t t, double stats[4]) {
  dpm_model *m = s->model;
  const dpm_dataset *d = s->data;
  const int PB = s->physical_batch, G = dpm_model_num_groups(m);
  const int64_t D = (int64_t)d->C * d->H * d->W;
  const size_t P = dpm_model_num_params(m);
  int64_t nsel = dpm_sample_shard(&s->sample_key, t, s->q, d->begin, d->end, s->sel);
  stats[0] = 0, stats[1] = (double)nsel, stats[2] = 0, stats[3] = 0;
  dpm_model_zero_grads(m);
  for (int64_t off = 0; off < nsel; off += PB) {
    int B = (int)(nsel - off < PB ? nsel - off : PB), correct = 0;
    for (int i = 0; i < B; i++) {
      int64_t row = s->sel[off + i] - d->begin;
      memcpy(s->xb + (size_t)i * D, d->x + row * D, sizeof(float) * (size_t)D);
      s->yb[i] = d->y[row];
    }
    stats[0] += dpm_model_forward(m, s->xb, s->yb, B, &correct);
    stats[2] += correct;
    if (s->dp) {
      dpm_model_backward(m, s->sq);
      dpm_clip_coefs(s->sq, G, B, s->clipping, s->clip, s->coef);
      for (int k = 0; k < G * B; k++) stats[3] += s->coef[k] < 1.0f;
      dpm_model_accumulate(m, s->coef);
    } else {
      dpm_model_backward(m, NULL);
      dpm_model_accumulate(m, NULL);
    }
  }
  float *grads = dpm_model_grads(m);
  if (s->dp && s->sigma > 0) {
    size_t lo = P * (size_t)s->rank / (size_t)s->size, hi = P * (size_t)(s->rank + 1) / (size_t)s->size;
    dpm_add_noise(&s->noise_key, t, s->sigma * s->clip, lo, hi - lo, grads + lo);
  }
  if (s->size > 1) {
    for (size_t off = 0; off < P; off += ALLREDUCE_BUCKET_FLOATS) {
      size_t len = P - off < ALLREDUCE_BUCKET_FLOATS ? P - off : ALLREDUCE_BUCKET_FLOATS;
      DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, grads + off, (int)len, MPI_FLOAT, MPI_SUM, s->comm));
    }
    DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, stats, 4, MPI_DOUBLE, MPI_SUM, s->comm));
  }
}
