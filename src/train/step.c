/* One logical DP-SGD step on a process grid: see dpmpi/train/step.h.
 *
 * Noise: a stage's parameters are split into D contiguous slices and data-parallel rank r draws slice r,
 * so every parameter receives exactly one draw N(0, sigma^2 C^2) per step (invariant I2), the same
 * draws a single root would add (they are addressed by (key, t, global parameter index)), in 1/D of
 * the time.
 *
 * Pipeline schedule (1F1B): stage s of S runs min(S-s-1, M) warm-up forwards, then alternates one
 * forward and one backward, then drains the backwards; micro-batch k lives in context k mod (S-s), so
 * a stage holds at most S-s micro-batches' activations. Sends are non-blocking (a context waits for its
 * previous sends before it is reused), receives blocking: no cycle of waits can form. */
#include "dpmpi/train/step.h"

#include <math.h>
#include <string.h>

#include "dpmpi/core/common.h"
#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/train/augment.h"

#define ALLREDUCE_BUCKET_FLOATS (1 << 20) /* 4 MiB buckets: the sweet spot of MPI_Allreduce here */
#define TAG_ACT 11
#define TAG_GRAD 12
#define TAG_MOVE_X 13
#define TAG_MOVE_Y 14

/* The thresholds of the whole model (one per group, stage or model), every rank all of them; the noise
 * multipliers of gradient and counts. */
static void init_thresholds(dpm_step *s, int group_offset, int G) {
  if (dpm_clip_per_group(s->clipping)) {
    s->n_thr = s->total_groups, s->thr_first = group_offset, s->thr_local = G;
  } else if (s->clipping == DPM_CLIP_PER_DEVICE) {
    s->n_thr = s->stages, s->thr_first = s->stage, s->thr_local = 1;
  } else {
    s->n_thr = 1, s->thr_first = 0, s->thr_local = s->stage == 0;
  }
  s->thr = dpm_malloc(sizeof(double) * (size_t)(s->n_thr ? s->n_thr : 1));
  s->counts_released = dpm_malloc(sizeof(double) * (size_t)(s->n_thr ? s->n_thr : 1));
  s->cnt = dpm_malloc(sizeof(double) * (size_t)(s->thr_local ? s->thr_local : 1));
  for (int k = 0; k < s->n_thr; k++) s->thr[k] = s->threshold, s->counts_released[k] = 0;
  if (s->clipping == DPM_CLIP_PER_DEVICE && s->stages > 1) /* C_s differs by stage with the parameter split */
    DPM_MPI_CHECK(MPI_Allgather(&s->threshold, 1, MPI_DOUBLE, s->thr, 1, MPI_DOUBLE, s->pipe));
  s->grad_sigma = s->sigma, s->count_sigma = 0;
  if (s->adaptive) {
    DPM_ASSERT(!dpm_clip_automatic(s->clipping) && s->count_fraction > 0 && s->count_fraction < 1);
    if (s->sigma > 0) {
      s->grad_sigma = dpm_adaptive_grad_sigma(s->sigma, s->count_fraction);
      s->count_sigma = dpm_adaptive_count_sigma(s->sigma, s->count_fraction, s->n_thr);
    }
  }
}

void dpm_step_init(dpm_step *s) {
  dpm_model *m = s->model;
  DPM_ASSERT(s->physical_batch >= 1 && s->physical_batch <= dpm_model_max_batch(m));
  MPI_Comm_rank(s->comm, &s->rank);
  MPI_Comm_size(s->comm, &s->size);
  MPI_Comm_rank(s->pipe, &s->stage);
  MPI_Comm_size(s->pipe, &s->stages);
  const size_t PB = (size_t)s->physical_batch, P = dpm_model_num_params(m);
  const int G = dpm_model_num_groups(m);
  /* global layout of the parameters: stage s's slab follows the slabs of stages < s */
  unsigned long long mine[2] = {P, (unsigned long long)G}, before[2] = {0, 0}, total[2];
  DPM_MPI_CHECK(MPI_Exscan(mine, before, 2, MPI_UNSIGNED_LONG_LONG, MPI_SUM, s->pipe));
  DPM_MPI_CHECK(MPI_Allreduce(mine, total, 2, MPI_UNSIGNED_LONG_LONG, MPI_SUM, s->pipe));
  s->param_offset = s->stage ? (size_t)before[0] : 0;
  s->total_params = (size_t)total[0];
  s->total_groups = (int)total[1];
  s->time_allreduce = s->time_wait = 0;
  /* fine-tuning: noise, thresholds and the allreduce count trainable parameters and groups only */
  const int partial = s->trainable && !dpm_trainable_all(s->trainable);
  int tg = 0;
  for (int g = 0; g < G; g++) tg += dpm_model_group_trainable(m, g);
  unsigned long long tmine[3] = {partial ? s->trainable->total : P, (unsigned long long)tg, 0}, tbefore[3] = {0, 0, 0},
                     ttotal[3];
  tmine[2] = tmine[0] > 0;
  DPM_MPI_CHECK(MPI_Exscan(tmine, tbefore, 3, MPI_UNSIGNED_LONG_LONG, MPI_SUM, s->pipe));
  DPM_MPI_CHECK(MPI_Allreduce(tmine, ttotal, 3, MPI_UNSIGNED_LONG_LONG, MPI_SUM, s->pipe));
  s->train_params = (size_t)tmine[0];
  s->train_offset = s->stage ? (size_t)tbefore[0] : 0;
  s->total_train = (size_t)ttotal[0];
  s->gpack = partial ? dpm_malloc_aligned(sizeof(float) * (s->train_params ? s->train_params : 1)) : NULL;
  /* a stage (or group) with nothing to train gets no share of C: the thresholds' squares still sum to C^2 */
  if (s->trainable)
    s->threshold = dpm_clip_threshold(s->clipping, s->clip, ttotal[1] ? (int)ttotal[1] : 1,
                                      ttotal[2] ? (int)ttotal[2] : 1, s->train_params, s->total_train, s->device_split);
  else
    s->threshold = dpm_clip_threshold(s->clipping, s->clip, s->total_groups, s->stages, P, s->total_params,
                                      s->device_split);
  init_thresholds(s, s->stage ? (int)before[1] : 0, G);
  if (s->stage > 0) dpm_model_set_input_grad(m, 1);
  s->nctx = s->stages - s->stage;
  s->ctx = dpm_malloc(sizeof *s->ctx * (size_t)s->nctx);
  s->ctx[0] = m;
  for (int c = 1; c < s->nctx; c++) s->ctx[c] = dpm_model_clone_shared(m);
  s->req = dpm_malloc(sizeof *s->req * 2 * (size_t)s->nctx);
  for (int k = 0; k < 2 * s->nctx; k++) s->req[k] = MPI_REQUEST_NULL;
  const dpm_dataset *d = s->data;
  const size_t shard = (size_t)(d->end - d->begin);
  s->sel = dpm_malloc(sizeof(int64_t) * (shard + 1));
  s->two_pass = s->dp && dpm_clip_whole_model(s->clipping) && s->stages > 1;
  s->norms = s->two_pass ? dpm_malloc(sizeof(double) * (shard + 1)) : NULL;
  s->xb = dpm_malloc_aligned(sizeof(float) * PB * dpm_model_input_size(m));
  s->doutb = dpm_malloc_aligned(sizeof(float) * PB * dpm_model_output_size(m));
  s->label_n = (size_t)dpm_model_label_size(m);
  s->yb = dpm_malloc(sizeof(int32_t) * PB * s->label_n);
  s->counts = dpm_malloc(sizeof(int) * (size_t)s->size);
  s->gx = s->sendx = NULL;
  s->gy = s->sendy = NULL;
  s->guest_cap = s->send_cap = 0;
  s->xreq = NULL;
  s->xreq_cap = 0;
  s->sq = dpm_malloc(sizeof(double) * (size_t)(G ? G : 1) * PB);
  s->coef = dpm_malloc(sizeof(float) * (size_t)(G ? G : 1) * PB);
  s->gbak = NULL;
  if (s->aug_k > 1) {
    DPM_ASSERT(s->stages == 1 && s->keep_shards && s->aug_k <= s->physical_batch && s->label_n == 1);
    s->gbak = dpm_malloc_aligned(sizeof(float) * (P ? P : 1));
  }
}

void dpm_step_free(dpm_step *s) {
  for (int c = 1; c < s->nctx; c++) dpm_model_free(s->ctx[c]);
  dpm_free(s->ctx);
  dpm_free(s->req);
  dpm_free(s->sel);
  dpm_free(s->norms);
  dpm_free(s->gbak);
  dpm_free(s->xb);
  dpm_free(s->doutb);
  dpm_free(s->yb);
  dpm_free(s->sq);
  dpm_free(s->coef);
  dpm_free(s->thr);
  dpm_free(s->counts_released);
  dpm_free(s->cnt);
  dpm_free(s->counts);
  dpm_free(s->gx);
  dpm_free(s->gy);
  dpm_free(s->sendx);
  dpm_free(s->sendy);
  dpm_free(s->xreq);
  dpm_free(s->gpack);
}

/* ---- one micro-batch ------------------------------------------------------------------------------ */

/* The passes of a step: two_pass runs PASS_NORMS first; every step and evaluation runs PASS_ACCUMULATE. */
typedef enum {
  PASS_NORMS,      /* the per-example squared norms of this stage only: no clipping, no sum, no counts */
  PASS_ACCUMULATE  /* the counts (loss, correct, clipped) and, in training, the clipped sum */
} walk_pass;

typedef struct {
  const dpm_dataset *d;
  const int64_t *rows;  /* global indices of the micro-batches' examples, NULL: contiguous from d->begin */
  int64_t n;            /* examples: rows[0 .. nkeep) of d, then n - nkeep guests from gx, gy */
  int64_t nkeep;
  const float *gx;
  const int32_t *gy;
  int64_t M;            /* micro-batches: ceil(n / physical batch), of sizes differing by at most one */
  walk_pass pass;
  int train;            /* 0: evaluation (forward only) */
  uint64_t t;           /* the step (augmentation views) */
} walk;

/* Micro-batch k covers examples [n k / M, n (k+1) / M) of the walk: equal sizes rather than full ones
 * and a small remainder (a remainder of a few rows runs the GEMMs at a fraction of their speed). */
static int64_t mb_off(const walk *w, int64_t k) { return w->n * k / w->M; }
static int mb_size(const walk *w, int64_t k) { return (int)(mb_off(w, k + 1) - mb_off(w, k)); }

static int64_t mb_row(const walk *w, int64_t j) { return (w->rows ? w->rows[j] : w->d->begin + j) - w->d->begin; }

/* Input (in_n floats) and label of example j of the walk. */
static const float *ex_x(const walk *w, int64_t j, size_t in_n) {
  return j < w->nkeep ? w->d->x + (size_t)mb_row(w, j) * in_n : w->gx + (size_t)(j - w->nkeep) * in_n;
}
/* Labels of example j (n: 1 class, or T sequence targets). */
static const int32_t *ex_y(const walk *w, int64_t j, size_t n) {
  return j < w->nkeep ? w->d->y + (size_t)mb_row(w, j) * n : w->gy + (size_t)(j - w->nkeep) * n;
}

static void forward_mb(dpm_step *s, const walk *w, int64_t k) {
  const int c = (int)(k % s->nctx), B = mb_size(w, k);
  dpm_model *m = s->ctx[c];
  const int64_t off = mb_off(w, k);
  const size_t in_n = dpm_model_input_size(m);
  DPM_MPI_CHECK(MPI_Waitall(2, s->req + 2 * c, MPI_STATUSES_IGNORE));
  if (s->stage == 0) {
    for (int i = 0; i < B; i++)
      memcpy(s->xb + (size_t)i * in_n, ex_x(w, off + i, in_n), sizeof(float) * in_n);
  } else {
    DPM_MPI_CHECK(MPI_Recv(s->xb, (int)((size_t)B * in_n), MPI_FLOAT, s->stage - 1, TAG_ACT, s->pipe,
                           MPI_STATUS_IGNORE));
  }
  if (s->stage == s->stages - 1) {
    for (int i = 0; i < B; i++) memcpy(s->yb + (size_t)i * s->label_n, ex_y(w, off + i, s->label_n), sizeof(int32_t) * s->label_n);
    int correct = 0;
    double loss = dpm_model_forward(m, s->xb, s->yb, B, &correct), tl, nt;
    dpm_model_token_stats(m, &tl, &nt);
    if (w->pass == PASS_ACCUMULATE) s->acc.loss += loss, s->acc.correct += correct, s->acc.token_loss += tl, s->acc.tokens += nt;
  } else {
    dpm_model_forward(m, s->xb, NULL, B, NULL);
    DPM_MPI_CHECK(MPI_Isend(dpm_model_output(m), (int)((size_t)B * dpm_model_output_size(m)), MPI_FLOAT,
                            s->stage + 1, TAG_ACT, s->pipe, &s->req[2 * c]));
  }
}

static void backward_mb(dpm_step *s, const walk *w, int64_t k) {
  const int c = (int)(k % s->nctx), B = mb_size(w, k), G = dpm_model_num_groups(s->model);
  dpm_model *m = s->ctx[c];
  const int64_t off = mb_off(w, k);
  /* DP: norms in both passes of flat clipping on a pipeline too (pass 1 uses the whole-model norms for
     the coefficients, but ghost conv layers keep their own for the clipped sum's safeguards) */
  double *sq = s->dp ? s->sq : NULL;
  if (s->stage == s->stages - 1) {
    dpm_model_backward(m, sq);
  } else {
    DPM_MPI_CHECK(MPI_Recv(s->doutb, (int)((size_t)B * dpm_model_output_size(m)), MPI_FLOAT, s->stage + 1, TAG_GRAD,
                           s->pipe, MPI_STATUS_IGNORE));
    dpm_model_backward_output(m, s->doutb, sq);
  }
  if (s->stage > 0)
    DPM_MPI_CHECK(MPI_Isend(dpm_model_input_grad(m), (int)((size_t)B * dpm_model_input_size(m)), MPI_FLOAT,
                            s->stage - 1, TAG_GRAD, s->pipe, &s->req[2 * c + 1]));
  if (!s->dp) {
    dpm_model_accumulate(m, NULL);
    return;
  }
  if (w->pass == PASS_NORMS) { /* this stage's part of each example's squared norm */
    for (int i = 0; i < B; i++) {
      double t = 0;
      for (int g = 0; g < G; g++) t += s->sq[(size_t)g * B + i];
      s->norms[off + i] = t;
    }
    return;
  }
  if (s->two_pass) { /* coefficients from the whole-model norms */
    for (int i = 0; i < B; i++) s->sq[i] = s->norms[off + i];
    dpm_clip_coefs_thr(s->sq, 1, B, s->clipping, s->thr, s->auto_gamma, s->coef);
    for (int g = 1; g < G; g++) memcpy(s->coef + (size_t)g * B, s->coef, sizeof(float) * (size_t)B);
  } else {
    dpm_clip_coefs_thr(s->sq, G, B, s->clipping, s->thr + s->thr_first, s->auto_gamma, s->coef);
  }
  for (int k2 = 0; k2 < G * B; k2++) s->acc.clipped += s->coef[k2] < 1.0f;
  /* adaptive: each threshold's centred count of unclipped examples (coefficient 1: norm within the threshold);
     one threshold per example or stage reads group 0's coefficient, the same for every group */
  if (s->adaptive)
    for (int k2 = 0; k2 < s->thr_local; k2++)
      for (int i = 0; i < B; i++) /* a stage without parameters (G = 0) has norm 0: within its threshold */
        s->cnt[k2] += G == 0 && !s->two_pass ? 0.5 : s->coef[(size_t)k2 * B + i] >= 1.0f ? 0.5 : -0.5;
  dpm_model_accumulate(m, s->coef);
}

/* Augmentation multiplicity (one stage, keep_shards): example j's K views run as one micro-batch whose plain
 * gradient sum lands in the grads slab (the clipped sum of the examples before waits in gbak); the mean over
 * the views is the example's gradient, clipped once (dpm_clip_coefs_thr on its exact squared norms) and added
 * to the sum. An example whose coefficient is 0 (non-finite norm) adds nothing. */
static void walk_views(dpm_step *s, const walk *w) {
  dpm_model *m = s->model;
  const dpm_dataset *d = w->d;
  const int K = s->aug_k, G = dpm_model_num_groups(m);
  const size_t in_n = dpm_model_input_size(m), P = dpm_model_num_params(m);
  float *grads = dpm_model_grads(m);
  const float inv = 1.0f / (float)K;
  for (int64_t j = 0; j < w->n; j++) {
    const int64_t gi = w->rows ? w->rows[j] : d->begin + j;
    const float *x = ex_x(w, j, in_n);
    for (int v = 0; v < K; v++) {
      dpm_augment_view(s->xb + (size_t)v * in_n, x, d->C, d->H, d->W, s->aug_pad, s->aug_flip, s->aug_fill,
                       &s->sample_key, w->t, (uint64_t)gi * (uint64_t)K + (uint64_t)v);
      s->yb[v] = *ex_y(w, j, 1);
    }
    memcpy(s->gbak, grads, sizeof(float) * P);
    dpm_model_zero_grads(m);
    int correct = 0;
    double tl, nt, loss = dpm_model_forward(m, s->xb, s->yb, K, &correct);
    dpm_model_token_stats(m, &tl, &nt);
    s->acc.loss += loss / K, s->acc.correct += (double)correct / K, s->acc.token_loss += tl / K, s->acc.tokens += nt / K;
    dpm_model_backward(m, NULL);
    dpm_model_accumulate(m, NULL); /* grads = the sum of the K views' gradients */
    for (size_t k = 0; k < P; k++) grads[k] *= inv; /* their mean: the example's gradient */
    if (!s->dp) {
      for (size_t k = 0; k < P; k++) grads[k] += s->gbak[k];
      continue;
    }
    for (int g = 0; g < G; g++) {
      const float *gg = grads + dpm_model_group_offset(m, g);
      double t2 = 0;
      for (size_t k = 0, n = dpm_model_group_size(m, g); k < n; k++) t2 += (double)gg[k] * gg[k];
      s->sq[g] = t2;
    }
    dpm_clip_coefs_thr(s->sq, G, 1, s->clipping, s->thr + s->thr_first, s->auto_gamma, s->coef); /* fixed thresholds */
    for (int g = 0; g < G; g++) {
      const size_t off = dpm_model_group_offset(m, g), n = dpm_model_group_size(m, g);
      const float c = s->coef[g];
      s->acc.clipped += c < 1.0f;
      for (size_t k = off; k < off + n; k++) grads[k] = c == 0.0f ? s->gbak[k] : s->gbak[k] + c * grads[k];
    }
  }
}

/* All micro-batches of w through the pipeline, 1F1B. */
static void run_pipeline(dpm_step *s, walk *w) {
  if (w->train && s->aug_k > 1) {
    walk_views(s, w);
    return;
  }
  const int64_t M = w->M = (w->n + s->physical_batch - 1) / s->physical_batch;
  if (!w->train) {
    for (int64_t k = 0; k < M; k++) forward_mb(s, w, k);
  } else {
    int64_t warm = s->stages - s->stage - 1, f = 0, b = 0;
    if (warm > M) warm = M;
    while (f < warm) forward_mb(s, w, f++);
    while (b < M) {
      if (f < M) forward_mb(s, w, f++);
      backward_mb(s, w, b++);
    }
  }
  DPM_MPI_CHECK(MPI_Waitall(2 * s->nctx, s->req, MPI_STATUSES_IGNORE));
}

/* Adaptive thresholds, after the gradient's release: this stage's counts get their noise once over the
 * data-parallel group and are summed over it (doubles: exact, the same on every grid), every stage learns
 * every count (one allreduce over the pipeline of the slots each stage filled), and every rank moves every
 * threshold the same way. */
static void release_counts(dpm_step *s, uint64_t t) {
  const int K = s->n_thr;
  if (s->count_sigma > 0)
    dpm_add_count_noise_slice(&s->noise_key, t, s->count_sigma, s->rank, s->size, (size_t)s->thr_first,
                              (size_t)s->thr_local, s->cnt);
  if (s->size > 1 && s->thr_local > 0)
    DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, s->cnt, s->thr_local, MPI_DOUBLE, MPI_SUM, s->comm));
  for (int k = 0; k < K; k++) s->counts_released[k] = 0;
  for (int k = 0; k < s->thr_local; k++) s->counts_released[s->thr_first + k] = s->cnt[k];
  if (s->stages > 1) DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, s->counts_released, K, MPI_DOUBLE, MPI_SUM, s->pipe));
  dpm_adaptive_update(s->thr, K, s->counts_released, s->q * (double)s->data->n_total, s->target_quantile,
                      s->adaptive_lr);
}

/* Sum doubles over the whole grid (the stage's data-parallel group, then the pipeline). */
static void grid_sum(dpm_step *s, double *v, int n) {
  if (s->size > 1) DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, s->comm));
  if (s->stages > 1) DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, s->pipe));
}

/* *out = a summed over the whole grid: (loss, examples, correct, token_loss, tokens) and with clipped (1) the
 * clipped count, reduced as doubles. */
static void grid_sum_stats(dpm_step *s, dpm_step_stats a, int clipped, dpm_step_stats *out) {
  double v[6] = {a.loss, a.examples, a.correct, a.token_loss, a.tokens, a.clipped};
  grid_sum(s, v, clipped ? 6 : 5);
  *out = (dpm_step_stats){.loss = v[0], .examples = v[1], .correct = v[2], .token_loss = v[3], .tokens = v[4],
                          .clipped = clipped ? v[5] : 0};
}

/* Rebalance this step's sample over the replicas (see dpmpi/train/step.h): every rank of every stage agrees
 * on the counts and computes the same plan; donors keep their first `target` sampled examples and send
 * the rest in order to the receivers, in rank order on both sides. The first stage moves inputs and
 * labels, the last stage labels (both, when it is one stage); the stages between only learn the count. */
static void rebalance(dpm_step *s) {
  const int D = s->size, me = s->rank;
  s->nkeep = s->nwalk = s->nsel;
  if (D == 1 || s->keep_shards) return;
  int mine = (int)s->nsel;
  DPM_MPI_CHECK(MPI_Allgather(&mine, 1, MPI_INT, s->counts, 1, MPI_INT, s->comm));
  int64_t T = 0;
  for (int r = 0; r < D; r++) T += s->counts[r];
#define TARGET(r) (T * ((r) + 1) / D - T * (r) / D)
  const int64_t target = TARGET(me);
  s->nkeep = s->nsel < target ? s->nsel : target;
  s->nwalk = target;
  const int has_x = s->stage == 0, has_y = s->stage == s->stages - 1;
  if (!has_x && !has_y) return;
  const size_t in_n = has_x ? dpm_model_input_size(s->model) : 0;
  const int64_t guests = s->nwalk - s->nkeep, excess = s->nsel - s->nkeep;
  if (guests > s->guest_cap) {
    s->guest_cap = guests + guests / 2 + 16;
    dpm_free(s->gx);
    dpm_free(s->gy);
    s->gx = has_x ? dpm_malloc(sizeof(float) * (size_t)s->guest_cap * in_n) : NULL;
    s->gy = dpm_malloc(sizeof(int32_t) * (size_t)s->guest_cap * s->label_n);
  }
  if (excess > 0) {
    if (excess > s->send_cap) {
      s->send_cap = excess + excess / 2 + 16;
      dpm_free(s->sendx);
      dpm_free(s->sendy);
      s->sendx = has_x ? dpm_malloc(sizeof(float) * (size_t)s->send_cap * in_n) : NULL;
      s->sendy = dpm_malloc(sizeof(int32_t) * (size_t)s->send_cap * s->label_n);
    }
    for (int64_t k = 0; k < excess; k++) {
      const int64_t row = s->sel[s->nkeep + k] - s->data->begin;
      if (has_x) memcpy(s->sendx + (size_t)k * in_n, s->data->x + (size_t)row * in_n, sizeof(float) * in_n);
      memcpy(s->sendy + (size_t)k * s->label_n, s->data->y + (size_t)row * s->label_n, sizeof(int32_t) * s->label_n);
    }
  }
  /* the plan: donor i and receiver j, each pair at most once; post my sends and receives */
  int nreq = 0;
  int64_t i_done = 0, j_done = 0; /* examples already moved out of donor i / into receiver j */
  for (int i = 0, j = 0;;) {
    while (i < D && s->counts[i] - TARGET(i) - i_done <= 0) i++, i_done = 0;
    while (j < D && TARGET(j) - s->counts[j] - j_done <= 0) j++, j_done = 0;
    if (i >= D || j >= D) break;
    int64_t amt = s->counts[i] - TARGET(i) - i_done, need = TARGET(j) - s->counts[j] - j_done;
    if (need < amt) amt = need;
    if (me == i || me == j) {
      if (s->xreq_cap < nreq + 2) {
        s->xreq_cap = 2 * (nreq + 2);
        s->xreq = dpm_realloc(s->xreq, sizeof(MPI_Request) * (size_t)s->xreq_cap);
      }
      const int peer = me == i ? j : i;
      if (me == i) {
        if (has_x)
          DPM_MPI_CHECK(MPI_Isend(s->sendx + (size_t)i_done * in_n, (int)((size_t)amt * in_n), MPI_FLOAT, peer,
                                  TAG_MOVE_X, s->comm, &s->xreq[nreq++]));
        DPM_MPI_CHECK(MPI_Isend(s->sendy + (size_t)i_done * s->label_n, (int)((size_t)amt * s->label_n), MPI_INT32_T, peer,
                                TAG_MOVE_Y, s->comm, &s->xreq[nreq++]));
      } else {
        if (has_x)
          DPM_MPI_CHECK(MPI_Irecv(s->gx + (size_t)j_done * in_n, (int)((size_t)amt * in_n), MPI_FLOAT, peer,
                                  TAG_MOVE_X, s->comm, &s->xreq[nreq++]));
        DPM_MPI_CHECK(MPI_Irecv(s->gy + (size_t)j_done * s->label_n, (int)((size_t)amt * s->label_n), MPI_INT32_T, peer,
                                TAG_MOVE_Y, s->comm, &s->xreq[nreq++]));
      }
    }
    i_done += amt;
    j_done += amt;
  }
#undef TARGET
  if (nreq) DPM_MPI_CHECK(MPI_Waitall(nreq, s->xreq, MPI_STATUSES_IGNORE));
}

void dpm_step_run(dpm_step *s, uint64_t t, dpm_step_stats *stats) {
  dpm_model *m = s->model;
  const dpm_dataset *d = s->data;
  const size_t P = dpm_model_num_params(m);
  const int64_t nsel = dpm_sample_shard(&s->sample_key, t, s->q, d->begin, d->end, s->sel);
  s->nsel = nsel;
  rebalance(s);
  s->acc = (dpm_step_stats){0};
  dpm_model_zero_grads(m);
  for (int k = 0; k < s->thr_local; k++) s->cnt[k] = 0;
  walk w = {.d = d, .rows = s->sel, .n = s->nwalk, .nkeep = s->nkeep, .gx = s->gx, .gy = s->gy,
            .pass = PASS_ACCUMULATE, .train = 1, .t = t};
  if (s->two_pass) {
    w.pass = PASS_NORMS;
    run_pipeline(s, &w);
    DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, s->norms, (int)s->nwalk, MPI_DOUBLE, MPI_SUM, s->pipe));
    w.pass = PASS_ACCUMULATE;
  }
  run_pipeline(s, &w);
  float *grads = dpm_model_grads(m), *sum = grads;
  size_t n = P, first = s->param_offset;
  if (s->gpack) { /* fine-tuning: only the trainable entries are released */
    dpm_trainable_pack(s->trainable, s->gpack, grads);
    sum = s->gpack, n = s->train_params, first = s->train_offset;
  }
  if (s->dp && s->sigma > 0 && n > 0) { /* std sigma C; adaptive: sigma_g sqrt(sum C_k^2), this step's sensitivity */
    double sens = s->clip;
    if (s->adaptive) {
      double c2 = 0;
      for (int k = 0; k < s->n_thr; k++) c2 += s->thr[k] * s->thr[k];
      sens = sqrt(c2);
    }
    dpm_add_noise_slice(&s->noise_key, t, s->grad_sigma * sens, s->rank, s->size, first, n, sum);
  }
  double t0 = dpm_time();
  if (s->measure_wait && s->size > 1) { /* benchmarks: split waiting for the slowest rank from the transfer */
    DPM_MPI_CHECK(MPI_Barrier(s->comm));
    double t1 = dpm_time();
    s->time_wait += t1 - t0;
    t0 = t1;
  }
  if (s->size > 1) {
    for (size_t off = 0; off < n; off += ALLREDUCE_BUCKET_FLOATS) {
      size_t len = n - off < ALLREDUCE_BUCKET_FLOATS ? n - off : ALLREDUCE_BUCKET_FLOATS;
      DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sum + off, (int)len, MPI_FLOAT, MPI_SUM, s->comm));
    }
  }
  s->time_allreduce += dpm_time() - t0;
  if (s->gpack) dpm_trainable_unpack(s->trainable, grads, s->gpack);
  if (s->dp && s->adaptive) release_counts(s, t);
  s->acc.examples = s->stage == 0 ? (double)s->nwalk : 0;
  grid_sum_stats(s, s->acc, 1, stats);
}

void dpm_step_eval(dpm_step *s, const dpm_dataset *d, dpm_step_stats *sums) {
  s->acc = (dpm_step_stats){0};
  walk w = {.d = d, .rows = NULL, .n = d->end - d->begin, .nkeep = d->end - d->begin, .pass = PASS_ACCUMULATE,
            .train = 0};
  run_pipeline(s, &w);
  s->acc.examples = s->stage == 0 ? (double)w.n : 0;
  grid_sum_stats(s, s->acc, 0, sums); /* clipped is 0 here: not reduced */
}
