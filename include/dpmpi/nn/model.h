/* dpmpi model: a sequence of layers described by text, its parameters in one slab, forward and
 * backward over a micro-batch, exact per-example gradient norms, and clipped gradient sums.
 *
 * Usage (one DP-SGD micro-batch):
 *   dpm_layer_spec *specs; int n;
 *   dpm_model_parse("conv out=16 kernel=8 stride=2 pad=3; tanh; flatten; dense out=10", &specs, &n, err);
 *   dpm_model *m = dpm_model_create(specs, n, C, H, W, n_classes, max_batch, err);
 *   dpm_model_init_params(m, &key);
 *   double loss_sum = dpm_model_forward(m, x, y, B, &correct);   // x: B x (C*H*W), NCHW
 *   dpm_model_backward(m, sqnorms);                               // sqnorms[g*B + i]
 *   ... compute clip coefficients coef[g*B + i] from sqnorms ...
 *   dpm_model_accumulate(m, coef);                                // grads += sum_i coef_gi * grad_gi
 *
 * Conventions: images are NCHW per example; a dense layer flattens whatever it receives. The loss is
 * softmax cross-entropy summed over examples: example i's gradient is the gradient of its own loss,
 * never divided by B. Parameters of group g (one group per layer with parameters: weight then bias) are
 * the contiguous range [group_offset(g), group_offset(g) + group_size(g)) of the params and grads slabs.
 * Kernels are pure functions of their arguments (no MPI, no globals).
 */
#ifndef DPMPI_MODEL_H
#define DPMPI_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "dpmpi/core/common.h"
#include "dpmpi/core/rng.h"

typedef enum {
  DPM_LAYER_DENSE,
  DPM_LAYER_CONV2D,
  DPM_LAYER_MAXPOOL,
  DPM_LAYER_AVGPOOL,
  DPM_LAYER_RELU,
  DPM_LAYER_TANH,
  DPM_LAYER_GROUPNORM,
  DPM_LAYER_FLATTEN,
  DPM_LAYER_EMBED,   /* GPT token + position embedding (wte, wpe): token ids in, [T, width] out */
  DPM_LAYER_BLOCK,   /* GPT pre-LayerNorm transformer block (ln_1, attn, ln_2, mlp: 12 tensors) */
  DPM_LAYER_LM_HEAD, /* GPT final LayerNorm and LM head (tied to the embed's wte, or its own weight) */
  DPM_LAYER_SCATTER, /* wavelet scattering transform (no parameters; first layer only) */
  DPM_LAYER_COUNT /* the number of kinds: src/nn/model.c's ops table has one row each */
} dpm_layer_kind;

typedef struct {
  dpm_layer_kind kind;
  int out;                  /* dense: output features; conv: output channels */
  int kernel, stride, pad;  /* conv, maxpool, avgpool (pool stride defaults to kernel) */
  int groups;               /* groupnorm: number of channel groups */
  int bias;                 /* dense, conv: 1 = with bias (default) */
  int vocab, context, width; /* embed: vocabulary, context (wpe rows), width; lm_head: vocab (untied) */
  int heads;                /* block: attention heads (width % heads == 0) */
  int tied;                 /* lm_head: 1 = logits h wte^T with the embed's wte (default), 0 = own weight */
  int blocks;               /* block: blocks in the whole list (set by dpm_model_parse; the residual
                               projections' initialization scale 0.02 / sqrt(2 blocks)) */
  int lora;                 /* block: LoRA rank r (0: none; r <= width) on the linears of lora_targets */
  int lora_alpha;           /* block: LoRA scale alpha / r (0: alpha = r, scale 1) */
  int lora_targets;         /* block: bit j adapts linear j: 1 attn.c_attn, 2 attn.c_proj, 4 mlp.c_fc, 8 mlp.c_proj
                               (0: all four) */
  int scat_j, scat_l;       /* scatter: scales J and orientations L (0: the defaults 2 and 8) */
  int ws;                   /* conv: 1 = weight standardization (each output channel's weights to mean 0, std 1) */
} dpm_layer_spec;

typedef struct dpm_model dpm_model;

/* The name of a layer kind in layer lists ("dense", "conv", ...). */
const char *dpm_layer_kind_name(dpm_layer_kind kind);

/* Parse a layer list: layers separated by ';' or newlines, each "NAME key=value ...". Names: dense
 * (out), conv (out, kernel, stride=1, pad=0, bias=1, ws=0), maxpool and avgpool (kernel, stride=kernel),
 * relu, tanh, groupnorm (groups), flatten, scatter (J=2, L=8; first layer only); GPT kinds: embed (vocab, context, width), block (heads),
 * lm_head (tied=1, vocab for tied=0); a block takes LoRA adapters with lora=r [lora_alpha=A lora_targets=M]. A GPT layer list is `embed; block ...; lm_head`: its input is
 * C = H = 1, W = T token ids stored as floats (exact below 2^24), its labels T next-token targets per
 * example (dpm_model_label_size). On success *specs is allocated (dpm_free) and 0 returned;
 * on error returns -1 with a message naming the layer number, the word and what was expected. */
int dpm_model_parse(const char *text, dpm_layer_spec **specs, int *n, char err[DPM_ERRLEN]);

/* Build a model for inputs C x H x W whose last layer outputs n_classes logits, for micro-batches of
 * at most max_batch examples. n_classes = 0 builds a pipeline stage without a loss: forward (y NULL)
 * leaves its activations in dpm_model_output and backward starts from dpm_model_backward_output. Returns NULL with err set when shapes do not fit (kernel larger than the
 * input, last layer's size != n_classes, groups not dividing channels, ...). */
dpm_model *dpm_model_create(const dpm_layer_spec *specs, int n, int C, int H, int W, int n_classes,
                            int max_batch, char err[DPM_ERRLEN]);
void dpm_model_free(dpm_model *m);

/* What dpm_model_create would allocate, without allocating it: *params parameters (the slab; the gradient
 * slab is as large) and *arena_bytes of activations, kept per-example rows and scratch for max_batch.
 * Returns 0, or -1 with err set as dpm_model_create would. For a check before a model that may not fit. */
int dpm_model_estimate(const dpm_layer_spec *specs, int n, int C, int H, int W, int n_classes, int max_batch,
                       size_t *params, size_t *arena_bytes, char err[DPM_ERRLEN]);

/* A one-line-per-layer summary with output shapes and parameter counts, into buf. */
void dpm_model_describe(const dpm_model *m, char *buf, size_t len);

size_t dpm_model_num_params(const dpm_model *m);
float *dpm_model_params(dpm_model *m);
float *dpm_model_grads(dpm_model *m);
/* Clipping groups: one per layer with parameters, in layer order. */
int dpm_model_num_groups(const dpm_model *m);
size_t dpm_model_group_offset(const dpm_model *m, int g);
size_t dpm_model_group_size(const dpm_model *m, int g);
int dpm_model_max_batch(const dpm_model *m);

/* PyTorch-style default initialization (uniform +-1/sqrt(fan_in) for weights and biases; GroupNorm
 * gamma 1, beta 0), deterministic in key. */
void dpm_model_init_params(dpm_model *m, const dpm_key *key);

/* Forward B <= max_batch examples. y may be NULL (no loss: returns 0). Returns the summed loss;
 * n_correct (may be NULL) receives the number of argmax hits. Keeps what backward needs. */
double dpm_model_forward(dpm_model *m, const float *x, const int32_t *y, int B, int *n_correct);

/* Backward through the micro-batch last forwarded with labels. If sqnorms is not NULL it receives,
 * for every group g and example i, sqnorms[g*B + i] = ||d loss_i / d params_g||^2, exactly (ghost norms
 * or explicit, whichever is cheaper), accumulated in double: finite for every finite input whose
 * activations stay finite, Inf or NaN otherwise (dpm_clip_coefs then gives coefficient 0). Does not
 * change the grads slab. */
void dpm_model_backward(dpm_model *m, double *sqnorms);

/* grads += sum_i coef[g*B + i] * (d loss_i / d params_g) for every group g, as one weighted GEMM per
 * layer. coef == NULL means coefficient 1 for all (the non-private sum). An example with coefficient 0
 * adds nothing to its group, even when its activations hold Inf or NaN; one whose clipped gradient
 * would underflow in float32 is formed with power-of-two rescaling. Call once per backward. */
void dpm_model_accumulate(dpm_model *m, const float *coef);

/* Zero the grads slab. */
void dpm_model_zero_grads(dpm_model *m);

/* Pipeline stages (models built with n_classes = 0). The output of the last forward: B x
 * dpm_model_output_size values, valid until the next forward. */
size_t dpm_model_output_size(const dpm_model *m);
size_t dpm_model_input_size(const dpm_model *m);
/* A stage holding layers [layer0, ...) of the whole model numbers its layers from layer0, so that
 * initialization (keyed by the global layer number) and describe match the whole model's. */
void dpm_model_set_first_layer(dpm_model *m, int layer0);
const float *dpm_model_output(const dpm_model *m);
/* Backward from dout = d loss / d output (B x output_size, B of the last forward); otherwise as
 * dpm_model_backward. */
void dpm_model_backward_output(dpm_model *m, const float *dout, double *sqnorms);

/* A second model of the same layers, shapes and settings whose params and grads are owner's: several
 * micro-batches in flight on one pipeline stage, each in its own activation buffers. owner must
 * outlive it. */
dpm_model *dpm_model_clone_shared(dpm_model *owner);

/* One parameter tensor of a layer: its name in checkpoints (Hugging Face GPT-2 names for the GPT kinds,
 * with global block numbers: "h.3.attn.c_attn.weight"; "weight"/"bias"/"gamma"/"beta" for the others),
 * its offset within the layer's parameters and its shape. */
#define DPM_LAYER_MAX_TENSORS 20 /* a block: 12, and two per LoRA adapter */
typedef struct {
  char name[48];
  size_t off, size;
  int rank, dims[4];
} dpm_tensor_info;

/* Layer i's output shape, parameter count and cost (multiply-adds per example of one training step:
 * forward, backward and clipped sum), for balancing pipeline stages. */
typedef struct {
  int C, H, W;
  size_t params;             /* weights + biases */
  size_t weights, biases;    /* the first `weights` of the layer's parameters, then the biases (or beta) */
  int wrank, wdims[4];       /* the weights' shape: dense [out, in], conv [out, C, k, k], groupnorm gamma [C] */
  const char *names[2];      /* the two tensors' names ("weight", "bias"; groupnorm "gamma", "beta"); NULL
                                for a layer without parameters or a GPT kind (see tensors) */
  int n_tensors;             /* the layer's parameter tensors in slab order (0: none); for the kinds with */
  dpm_tensor_info tensors[DPM_LAYER_MAX_TENSORS]; /* names[2] they are the weight, then the bias */
  double cost;
} dpm_layer_info;
void dpm_model_layer_info(const dpm_model *m, int i, dpm_layer_info *info);

/* How a group's per-example norms are computed. AUTO (the default) picks, per conv layer, the cheaper
 * of the ghost form (Gram matrices, no per-example gradient) and explicit per-example gradients (kept
 * for accumulate, which then needs no second GEMM), by a flop-and-memory cost model. Dense layers are
 * always ghost (||a_i||^2 ||g_i||^2), groupnorm always explicit. Forcing is meant for tests and
 * benchmarks; it may allocate (call it outside the training loop). */
typedef enum { DPM_NORM_AUTO = 0, DPM_NORM_GHOST = 1, DPM_NORM_EXPLICIT = 2 } dpm_norm_method;
/* Set group g's method (ignored for dense and groupnorm layers). */
void dpm_model_set_norm_method(dpm_model *m, int g, dpm_norm_method method);
/* The method group g uses now (GHOST or EXPLICIT, never AUTO). */
dpm_norm_method dpm_model_norm_method(const dpm_model *m, int g);

/* Labels per example: 1 (a class, softmax cross-entropy) or T (next-token targets of a model ending with
 * lm_head: masked sequence cross-entropy, loss_i = mean over example i's targets != pad_id). */
int dpm_model_label_size(const dpm_model *m);
/* The masked target id of the sequence loss (default -1: none). */
void dpm_model_set_pad_id(dpm_model *m, int pad_id);
/* Of the last forward with labels: the sum over its unmasked targets of -log p (token_loss) and their
 * count (tokens); for class labels the summed loss and B. Token-weighted perplexity = exp(sum token_loss /
 * sum tokens). */
void dpm_model_token_stats(const dpm_model *m, double *token_loss, double *tokens);

/* Input gradient (for pipeline stages and tests): when on, backward also computes d loss / d x, which
 * dpm_model_input_grad returns (B x C*H*W, valid until the next forward). Off by default. */
void dpm_model_set_input_grad(dpm_model *m, int on);
const float *dpm_model_input_grad(const dpm_model *m);

/* Frozen tensors (fine-tuning: train.trainable, LoRA's frozen base). Bit t of mask freezes tensor t of layer
 * i's dpm_layer_info: backward leaves it out of the group's per-example squared norm, accumulate adds nothing to
 * its gradient (which stays 0), and the caller never updates it. The GPT kinds freeze any subset of their
 * tensors; other kinds all of them or none (-1 otherwise). Layers before the first trainable one get no
 * backward unless the input gradient is asked for. */
int dpm_model_set_frozen(dpm_model *m, int i, uint32_t mask);
uint32_t dpm_model_frozen(const dpm_model *m, int i);
/* 1 if group g's layer has a trainable tensor (per-layer clipping gives thresholds only to these groups). */
int dpm_model_group_trainable(const dpm_model *m, int g);

#endif
