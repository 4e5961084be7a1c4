/* dpmpi GPT: a GPT-2-architecture language model (token and position embeddings, L pre-LayerNorm blocks of
 * causal multi-head self-attention and a GELU MLP, final LayerNorm, LM head tied to the token embedding or
 * not) whose backward gives every example's exact squared gradient norm of every parameter tensor without
 * per-example gradients where that is cheaper, and whose clipped sum takes one coefficient per (tensor,
 * example).
 *
 * Usage (one DP-SGD micro-batch):
 *   dpm_gpt_config cfg = {.V = 257, .T = 128, .C = 128, .H = 4, .L = 4, .tied = 1};
 *   dpm_gpt *g = dpm_gpt_create(&cfg, max_batch, err);
 *   dpm_gpt_init_params(g, &key);                 // or fill tensors by name: dpm_gpt_tensor_find
 *   double loss_sum = dpm_gpt_forward(g, tok, tgt, B, T, pad_id, loss);   // tok, tgt: B x T int32
 *   dpm_gpt_backward(g, sqnorms);                  // sqnorms[k*B + b], k < dpm_gpt_num_tensors(g)
 *   ... clipping coefficients coef[k*B + b] from sqnorms (flat clipping: the same for every k) ...
 *   dpm_gpt_accumulate(g, coef);                   // grads += sum_b coef[k*B + b] d loss_b / d tensor_k
 *
 * Parameters live in one slab under the Hugging Face GPT-2 names, shapes and order: wte.weight [V, C],
 * wpe.weight [T, C], then for each block l: h.l.ln_1.{weight, bias} [C], h.l.attn.c_attn.{weight [C, 3C],
 * bias [3C]}, h.l.attn.c_proj.{weight [C, C], bias [C]}, h.l.ln_2.*, h.l.mlp.c_fc.{weight [C, 4C], bias},
 * h.l.mlp.c_proj.{weight [4C, C], bias}; ln_f.{weight, bias}; untied models end with lm_head.weight [V, C].
 * Linear weights are HF Conv1D (y = x W + b, W [in, out]). The loss of example b is the mean cross-entropy
 * over its targets that are not pad_id; its gradient is that of its own loss (never divided by B).
 *
 * Norm methods (docs/design.md, "Transformers"): the sequence linears (and the LM head) by the Gram-matrix
 * ghost form, cost ~T^2 (in + out), or explicitly, ~T in out, per layer by cost (dpm_gpt_set_norm_method);
 * LayerNorm explicit (C-sized); wte's embedding use by token equality; the tied weight adds the cross term of
 * its two uses (~T^2 C, or T C from kept head gradients). The backward keeps every linear's output gradient
 * (and explicit per-example gradients where they are kept), so the clipped sum needs no second backward
 * pass. Kernels: src/nn/seq.h. Pure: no MPI, no globals.
 */
#ifndef DPMPI_NN_GPT_H
#define DPMPI_NN_GPT_H

#include <stddef.h>
#include <stdint.h>

#include "dpmpi/core/common.h"
#include "dpmpi/core/rng.h"
#include "dpmpi/nn/model.h"

typedef struct {
  int V;     /* vocabulary */
  int T;     /* context (wpe rows): the longest sequence */
  int C;     /* width */
  int H;     /* heads (C % H == 0) */
  int L;     /* blocks */
  int tied;  /* 1: logits = h wte^T; 0: a separate lm_head.weight [V, C] */
} dpm_gpt_config;

typedef struct dpm_gpt dpm_gpt;

/* Build a model for micro-batches of at most max_batch sequences of at most cfg->T tokens. Returns NULL with
 * err naming the field and what was expected when the configuration is not valid (non-positive sizes, C not
 * a multiple of H, sizes too large for 32-bit BLAS). Parameters are zero until initialized or filled. */
dpm_gpt *dpm_gpt_create(const dpm_gpt_config *cfg, int max_batch, char err[DPM_ERRLEN]);
void dpm_gpt_free(dpm_gpt *g);
const dpm_gpt_config *dpm_gpt_get_config(const dpm_gpt *g);

size_t dpm_gpt_num_params(const dpm_gpt *g);
float *dpm_gpt_params(dpm_gpt *g);
float *dpm_gpt_grads(dpm_gpt *g);
/* Parameter tensors, in the order above: name, shape (returns the rank, 1 or 2; dims[1] = 1 for rank 1),
 * offset and size in the slabs; dpm_gpt_tensor_find returns the index of a name or -1. */
int dpm_gpt_num_tensors(const dpm_gpt *g);
const char *dpm_gpt_tensor_name(const dpm_gpt *g, int k);
int dpm_gpt_tensor_shape(const dpm_gpt *g, int k, int dims[2]);
size_t dpm_gpt_tensor_offset(const dpm_gpt *g, int k);
size_t dpm_gpt_tensor_size(const dpm_gpt *g, int k);
int dpm_gpt_tensor_find(const dpm_gpt *g, const char *name);

/* GPT-2's initialization: weights and embeddings N(0, 0.02^2), the residual projections (attn.c_proj,
 * mlp.c_proj weights) N(0, (0.02 / sqrt(2L))^2), biases 0, LayerNorm weight 1 and bias 0; deterministic in
 * key (tensor k draws stream (key, k, DPM_STREAM_INIT)). */
void dpm_gpt_init_params(dpm_gpt *g, const dpm_key *key);

/* Forward B <= max_batch sequences of T <= cfg.T tokens: tok [B, T] in [0, V) (asserted). tgt [B, T] (NULL:
 * logits only, returns 0) holds the next tokens, pad_id (< 0: none) marking masked targets; loss (may be
 * NULL) receives each example's mean loss over its unmasked targets (0 if it has none). Returns sum_b
 * loss[b]. Keeps what backward needs. */
double dpm_gpt_forward(dpm_gpt *g, const int32_t *tok, const int32_t *tgt, int B, int T, int pad_id, double *loss);
/* logits [B, T, V] of the last forward, valid until the next forward. */
const float *dpm_gpt_logits(const dpm_gpt *g);

/* Backward through the last forward with targets. sqnorms (NULL: not asked) receives sqnorms[k*B + b] =
 * ||d loss_b / d tensor_k||^2 exactly, in double (the tied wte's is that of the sum of its two uses). Does
 * not change the grads slab. */
void dpm_gpt_backward(dpm_gpt *g, double *sqnorms);
/* grads += sum_b coef[k*B + b] d loss_b / d tensor_k for every tensor k (coef NULL: all ones, the
 * non-private sum), from what backward kept: one GEMM per linear. An example with coefficient 0 adds nothing
 * to that tensor whatever its activations hold; clipped rows that would underflow are rescaled. */
void dpm_gpt_accumulate(dpm_gpt *g, const float *coef);
void dpm_gpt_zero_grads(dpm_gpt *g);

/* Default memory for kept explicit per-example gradients (per model). */
#define DPM_GPT_KEEP_BYTES ((size_t)256 << 20)
/* How the sequence linears' (and the LM head's) norms are formed, decided per linear for T = cfg.T:
 * ghost (Gram matrices, nothing per example kept), explicit with the per-example gradients kept for the
 * clipped sum (which then needs no GEMM of its own: the cheapest whenever the memory is there), or explicit
 * formed only for the norm. AUTO (the default, keep_bytes = DPM_GPT_KEEP_BYTES) takes the cheapest
 * (dpm_seq_linear_ghost_cheaper) with kept gradients while keep_bytes lasts, in layer order; GHOST and
 * EXPLICIT force the method (EXPLICIT keeps while keep_bytes lasts). Allocates: call it outside the training
 * loop. For tests and benchmarks. */
void dpm_gpt_set_norm_method(dpm_gpt *g, dpm_norm_method method, size_t keep_bytes);
/* The method of tensor k's norm: GHOST or EXPLICIT for linear weights and the LM head (wte when tied),
 * EXPLICIT for LayerNorms, biases and wpe (their per-example gradients are formed), GHOST for an untied wte
 * (token equality). dpm_gpt_norm_kept: 1 if its explicit per-example gradients are kept. */
dpm_norm_method dpm_gpt_norm_method(const dpm_gpt *g, int k);
int dpm_gpt_norm_kept(const dpm_gpt *g, int k);

#endif
