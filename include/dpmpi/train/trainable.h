/* dpmpi train/trainable: which tensors a run trains (train.trainable, LoRA's frozen base), and the packed
 * vector of a stage's trainable parameters that noise, the allreduce and the optimizer work on.
 *
 *   uint32_t *masks = ...;                       // one per layer of the whole model
 *   dpm_trainable_match(cfg.trainable, info, n_layers, masks, err);   // bit t: tensor t of layer i frozen
 *   for (i = first; i < last; i++) dpm_model_set_frozen(stage, i - first, masks[i]);
 *   dpm_trainable tr;
 *   dpm_trainable_init(&tr, info, first, last, masks);                // this stage's slab: its trainable runs
 *   dpm_trainable_pack(&tr, packed, dpm_model_params(stage));         // packed[0 .. tr.total)
 *   dpm_trainable_unpack(&tr, dpm_model_params(stage), packed);       // frozen entries untouched
 *   dpm_trainable_free(&tr);
 *
 * Frozen parameters get no clipping norm, no noise, no optimizer state, take no part in the allreduce and stay
 * bitwise unchanged; the noise dimension is the number of trainable parameters (docs/design.md, "Fine-tuning").
 */
#ifndef DPMPI_TRAIN_TRAINABLE_H
#define DPMPI_TRAIN_TRAINABLE_H

#include <stddef.h>
#include <stdint.h>

#include "dpmpi/core/common.h"
#include "dpmpi/nn/model.h"

typedef struct {
  int n;          /* runs of consecutive trainable parameters in the stage's slab */
  size_t *off, *len;
  size_t total;   /* trainable parameters of the stage */
  size_t slab;    /* parameters of the stage's slab */
} dpm_trainable;

/* Mark frozen tensors: patterns is a comma- or space-separated list of tensor-name globs (fnmatch, '*' also
 * crosses dots: "h.*.attn.*"), NULL or "" meaning every tensor; extra (may be NULL) more patterns added to it
 * (LoRA: "*.lora_*"). masks[i] (n_layers) receives bit t set for tensor t of layer i that no pattern matches.
 * A pattern matching no tensor is an error (-1, err names it). */
int dpm_trainable_match(const char *patterns, const char *extra, const dpm_layer_info *info, int n_layers,
                        uint32_t *masks, char err[DPM_ERRLEN]);
/* This stage's runs (layers [first, last) of info, masks as above). */
void dpm_trainable_init(dpm_trainable *t, const dpm_layer_info *info, int first, int last, const uint32_t *masks);
void dpm_trainable_free(dpm_trainable *t);
/* 1 if every parameter of the slab trains (packing is then the identity). */
int dpm_trainable_all(const dpm_trainable *t);
/* dst (t->total) = the trainable entries of slab, in slab order. */
void dpm_trainable_pack(const dpm_trainable *t, float *dst, const float *slab);
/* The trainable entries of slab = src (t->total); the frozen ones are not written. */
void dpm_trainable_unpack(const dpm_trainable *t, float *slab, const float *src);

#endif
