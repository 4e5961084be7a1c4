/* dpmpi nn/lm_head (internal): what the embed layer kind reads of a tied LM head (lm_head.c) to form the
 * tied wte's per-example norm (the sum of its two uses) and its clipped sum (embed.c). */
#ifndef DPMPI_NN_LM_HEAD_H
#define DPMPI_NN_LM_HEAD_H

#include "nn/layer.h"

typedef struct {
  float *lnf, *mean, *rstd;  /* ln_f's output h [B, T, C] (the head's input) and its statistics */
  float *ew, *eb;            /* ln_f's per-example gradients [B, C] */
  float *dxs;                /* the input gradient when nobody asked for it */
  double *gsq, *tmp;         /* the head's per-example squared norms ||H_b||^2 (this backward's), scratch */
  unsigned char *ill;        /* the head's ill-conditioning flags (nn/seq.h) */
  int explicit_, norms_ready;
} lm_head_state;

/* The head's weight [V, C]: the embed layer's wte (tied, L[0]) or the layer's own lm_head.weight. */
const float *dpm_lm_head_weight(const dpm_model *m, const layer *l);

#endif
