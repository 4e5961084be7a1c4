/* dpmpi nn/layer (internal): what a layer kind implements, and the model internals the kinds share.
 *
 * A layer kind is one file of src/nn/ (dense.c, conv.c, pool.c, activation.c, groupnorm.c, flatten.c, and
 * scatter.c, the GPT kinds embed.c, block.c, lm_head.c over the sequence kernels of nn/seq.h)
 * holding its kernels and one dpm_layer_ops table; model.c dispatches through the table and knows no
 * kind. Adding a kind: a new file, its enum value in dpmpi/nn/model.h and its row in model.c's table
 * (a static assertion fails until the table has as many rows as the enum has kinds).
 */
#ifndef DPMPI_NN_LAYER_H
#define DPMPI_NN_LAYER_H

#include <stddef.h>
#include <stdint.h>

#include "dpmpi/nn/model.h"
#include "nn/layers.h"

typedef struct layer layer;

/* Arena planning: every kind's plan() runs twice, first measuring (base NULL), then carving the same
 * offsets out of one allocation; the scratch sizes are the largest any layer asks for. */
typedef struct {
  char *base;
  size_t cur;
  size_t B;                     /* max batch */
  size_t scratch, ghost, row;   /* floats, doubles, floats */
} dpm_plan;
void *dpm_plan_carve(dpm_plan *p, size_t bytes);

typedef struct {
  const char *name;          /* in layer lists, e.g. "dense" */
  const char *keys;          /* keys it accepts, the first `required` of them mandatory */
  int required;
  int stride_is_kernel;      /* the stride defaults to the kernel (pooling) rather than 1 */
  int aliases_input;         /* out and dout are the previous layer's (flatten): no buffers, no work */
  int seq_loss;              /* the kind ends a model with the masked sequence cross-entropy (lm_head) */
  int freezes_tensors;       /* the kind honours l->frozen tensor by tensor (the GPT kinds); others are frozen
                                whole or not at all (model.c then skips their norms and sums) */
  /* shapes from l->C, H, W and the spec: OC, OH, OW, wsize, bsize (and kind fields); -1 with err on a
     spec that does not fit (num: the layer's number for messages) */
  int (*shape)(layer *l, int max_batch, int num, char *err);
  void (*plan)(layer *l, dpm_plan *p);                               /* kept buffers, scratch needs */
  void (*init)(const layer *l, float *params, const dpm_key *key, int layer_num);   /* may be NULL */
  void (*forward)(dpm_model *m, layer *l, const float *in, int B);
  /* dx (NULL: not needed) = d loss / d in; sq (NULL: not asked, or no parameters) the per-example squared
     norms of the layer's parameter gradient */
  void (*backward)(dpm_model *m, layer *l, const float *in, float *dx, double *sq, int B);
  /* dw, db += the layer's gradient summed with coefficients coef (NULL: all ones) */
  void (*accumulate)(dpm_model *m, layer *l, const float *in, float *dw, float *db, const float *coef, int B);
  void (*describe)(const layer *l, char *buf, size_t len);          /* " out=10" etc. */
  void (*info)(const layer *l, dpm_layer_info *info);               /* parameter names and shapes, cost */
  /* conv only (NULL otherwise): bytes of kept per-example gradients if explicit norms are cheaper than
     ghost ones (0 if not), and switching the method */
  size_t (*explicit_bytes)(const layer *l, int max_batch);
  void (*set_norm)(layer *l, int explicit_, int max_batch);
  dpm_norm_method (*norm_method)(const layer *l);
  void (*release)(layer *l);   /* frees what plan() allocated outside the arena (scatter's FFTW plans); may be NULL */
} dpm_layer_ops;

struct layer {
  const dpm_layer_ops *ops;
  dpm_layer_spec s;
  int C, H, W;     /* input shape */
  int OC, OH, OW;  /* output shape */
  size_t in_n, out_n;
  int group;       /* parameter group, -1 if none */
  size_t poff, wsize, bsize;
  float *out, *dout; /* B x out_n (aliases of the previous layer's for flatten) */
  int T, CK;         /* conv */
  float *P, *G;      /* conv: patches (B*T x CK), output grads (B*T x O) */
  float *E;          /* per-example gradient rows (conv explicit, groupnorm) */
  int E_owned;       /* E allocated outside the arena (forced explicit) */
  int explicit_;     /* conv: explicit per-example gradients when norms are asked for */
  int E_ready;       /* E holds this micro-batch's per-example gradients */
  double *gsq;       /* conv ghost: this micro-batch's squared norms (B) and ill-conditioning flags (B), */
  unsigned char *ill; /* kept for the clipped sum (dpm_conv_accumulate caps such examples) */
  int gsq_ready;
  float *xhat, *rstd; /* groupnorm */
  float *what, *wrstd, *wacc; /* conv ws=1: standardized weights (O x CK), 1/std per output channel (O), the
                                 summed gradient w.r.t. the standardized weights (O x CK) */
  int32_t *argmax;    /* maxpool */
  int global;         /* the layer's number in the whole model (0-based): GPT tensor names */
  void *ks;           /* GPT kinds: their buffers (embed.c, block.c, lm_head.c), carved in the arena */
  uint32_t frozen;    /* bit t: tensor t of the layer's info is frozen (no norm, no sum, never updated) */
};
/* tensor t of l is frozen */
static inline int dpm_layer_frozen(const layer *l, int t) { return (int)((l->frozen >> t) & 1u); }

struct dpm_model {
  int n;
  layer *L;
  int C, H, W, n_classes, max_batch;
  size_t in_n;
  float *params, *grads;
  size_t nparams;
  int ngroups, *group_layer, first_param;
  int first_train;   /* the first layer with a trainable tensor (-1: none): earlier layers need no input gradient */
  void *arena;
  float *x, *dx, *probs, *scratch;
  double *ghost;     /* conv ghost norms: Gram matrices and the example's rows in double */
  float *row;        /* clipped sums of extreme examples: one example's rescaled rows */
  int32_t *y;         /* B x label_n */
  int label_n;        /* labels per example: 1 (class) or T (sequence targets) */
  int pad_id;         /* sequence loss: masked target id (-1: none) */
  double *exloss;     /* sequence loss: each example's mean loss of the last forward */
  double tok_loss, ntok; /* the last forward's token-summed loss and unmasked targets */
  int B, have_labels, backward_done, input_grad;
  int layer0;        /* global number of the first layer (pipeline stages): initialization and describe */
  int has_loss;      /* 0: a pipeline stage before the last: no loss, the output gradient comes from outside */
  int params_owned;  /* 0: params and grads are another model's (dpm_model_clone_shared) */
};

extern const dpm_layer_ops dpm_ops_dense, dpm_ops_conv, dpm_ops_maxpool, dpm_ops_avgpool, dpm_ops_relu,
    dpm_ops_tanh, dpm_ops_groupnorm, dpm_ops_flatten, dpm_ops_embed, dpm_ops_block, dpm_ops_lm_head, dpm_ops_scatter;

/* Shared pieces of the kinds (model.c). */
/* PyTorch's default: weights and biases uniform +-1/sqrt(fan_in), deterministic in (key, layer_num). */
void dpm_init_uniform(const layer *l, float *params, const dpm_key *key, int layer_num, size_t fan_in);
/* Kinds without parameters: shape = input shape. */
int dpm_shape_same(layer *l, int max_batch, int num, char *err);
/* Layers without parameters or buffers. */
void dpm_plan_none(layer *l, dpm_plan *p);
void dpm_describe_none(const layer *l, char *buf, size_t len);
/* Elementwise cost: 4 operations per value in or out. */
void dpm_info_elementwise(const layer *l, dpm_layer_info *info);

#endif
