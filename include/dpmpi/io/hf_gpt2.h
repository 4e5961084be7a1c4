/* dpmpi Hugging Face GPT-2: the config.json of a GPT-2 checkpoint, the tensors it implies (names, shapes,
 * order), and the dpmpi initial-weights file INIT.h5 (docs/formats.md, "Initial weights") that
 * `dpmpi model import` writes from a safetensors checkpoint and `dpmpi model export` turns back into one.
 *
 *   dpm_hf_gpt2_config cfg;
 *   dpm_hf_gpt2_read_config("config.json", &cfg, err);        // checks every key dpmpi depends on
 *   dpm_st_file f;  dpm_st_read("model.safetensors", &f, err);
 *   const dpm_st_tensor **t = dpm_malloc(dpm_hf_gpt2_num_tensors(&cfg) * sizeof *t);
 *   dpm_hf_gpt2_match(&cfg, "config.json", &f, "model.safetensors", t, err); // t[k]: tensor k, shape checked
 *   dpm_init_write("INIT.h5", &cfg, n, t, "model.safetensors", err);
 *   ...
 *   dpm_init_read("INIT.h5", &cfg, &n, &tensors, err);          // tensors in the canonical order
 *   dpm_hf_gpt2_export("out/model.safetensors", &cfg, n, tensors, err);   // + out/config.json
 *   dpm_hf_gpt2_read_ckpt("ck/ckpt-00000100.h5", &cfg, &n, &tensors, &init_from, err); // a trained GPT
 *
 * The canonical order is Hugging Face's (and src/nn/gpt.c's): wte.weight [V, C], wpe.weight [T, C], then
 * for each block l: h.l.ln_1.{weight, bias} [C], h.l.attn.c_attn.{weight [C, 3C], bias [3C]},
 * h.l.attn.c_proj.{weight [C, C], bias [C]}, h.l.ln_2.{weight, bias}, h.l.mlp.c_fc.{weight [C, 4C], bias [4C]},
 * h.l.mlp.c_proj.{weight [4C, C], bias [C]}; ln_f.{weight, bias}; an untied model ends with lm_head.weight
 * [V, C]. Rank 0 calls these (serial HDF5); no MPI.
 */
#ifndef DPMPI_IO_HF_GPT2_H
#define DPMPI_IO_HF_GPT2_H

#include <stddef.h>
#include <stdint.h>

#include "dpmpi/core/common.h"
#include "dpmpi/io/safetensors.h"

typedef struct {
  int64_t vocab_size;        /* V */
  int64_t n_positions;       /* T: the context, wpe's rows */
  int64_t n_embd;            /* C */
  int64_t n_head;            /* H, divides C */
  int64_t n_layer;           /* L */
  double layer_norm_epsilon; /* 1e-5 (the only value dpmpi's LayerNorm implements) */
  int tie_word_embeddings;   /* 1: logits = h wte^T (no lm_head.weight); 0: a separate lm_head.weight */
} dpm_hf_gpt2_config;

/* Read a Hugging Face GPT-2 config.json: vocab_size, n_positions (or n_ctx; both: equal), n_embd, n_head,
 * n_layer (required positive integers, n_embd a multiple of n_head), layer_norm_epsilon (default and only
 * accepted value 1e-5), tie_word_embeddings (default true), activation_function (default and only accepted
 * "gelu_new"); model_type, n_inner, scale_attn_weights, scale_attn_by_inverse_layer_idx and
 * add_cross_attention, when present, must describe the same model (gpt2, null or 4 n_embd, true, false,
 * false). Other keys are ignored. Returns 0, or -1 with err naming the file, the key and what was expected. */
int dpm_hf_gpt2_read_config(const char *path, dpm_hf_gpt2_config *cfg, char err[DPM_ERRLEN]);

/* Check cfg's values (what read_config checks, for a config from elsewhere); 0, or -1 with err naming where. */
int dpm_hf_gpt2_check_config(const dpm_hf_gpt2_config *cfg, const char *where, char err[DPM_ERRLEN]);

/* Write cfg as a Hugging Face config.json (GPT2LMHeadModel), under PATH.tmp renamed into place. */
int dpm_hf_gpt2_write_config(const char *path, const dpm_hf_gpt2_config *cfg, char err[DPM_ERRLEN]);

/* The number of tensors of the model (16 L + 4, plus 1 untied), and tensor k's canonical name and shape
 * (returns its rank, 1 or 2). */
int dpm_hf_gpt2_num_tensors(const dpm_hf_gpt2_config *cfg);
int dpm_hf_gpt2_tensor(const dpm_hf_gpt2_config *cfg, int k, char *name, size_t len, int64_t shape[2]);

/* Match the tensors of a safetensors file f (read from st_path) against cfg (from cfg_path): names with or
 * without the "transformer." prefix, the h.l.attn.bias and h.l.attn.masked_bias buffers ignored, a
 * lm_head.weight of a tied model accepted only if it equals wte.weight exactly. Every tensor's shape must be
 * the one cfg implies; a missing, unknown or duplicated tensor is an error. out[k] (num_tensors entries)
 * receives tensor k of the canonical order (pointers into f). Returns 0, or -1 with err naming file and tensor. */
int dpm_hf_gpt2_match(const dpm_hf_gpt2_config *cfg, const char *cfg_path, const dpm_st_file *f, const char *st_path,
                      const dpm_st_tensor **out, char err[DPM_ERRLEN]);

/* Write the initial-weights file path (docs/formats.md): cfg as attributes, tensor k as /weights/<name k>
 * (float32, its global shape, checksummed), source recorded as an attribute. t[k] must have the canonical
 * name and shape of tensor k (asserted). Under PATH.tmp, renamed into place. Returns 0, or -1 with err. */
int dpm_init_write(const char *path, const dpm_hf_gpt2_config *cfg, int n, const dpm_st_tensor *const *t,
                   const char *source, char err[DPM_ERRLEN]);

/* 1 if path is an HDF5 file whose format attribute is "dpmpi-init", else 0 (no error). */
int dpm_init_is(const char *path);

/* Read an initial-weights file: its config (checked) and *n tensors *t in the canonical order (each
 * dpm_malloc'd: free with dpm_init_tensors_free). Returns 0, or -1 with err naming the file and the
 * dataset (a missing or misshapen tensor, a failed checksum, a config that is not valid). */
int dpm_init_read(const char *path, dpm_hf_gpt2_config *cfg, int *n, dpm_st_tensor **t, char err[DPM_ERRLEN]);
void dpm_init_tensors_free(int n, dpm_st_tensor *t);

/* Export a GPT-2 given as n tensors (name, rank, shape, data; any order) to the safetensors file path, F32,
 * in the canonical order under the Hugging Face names (no prefix; no lm_head.weight when tied, as Hugging
 * Face writes tied models), and cfg as config.json in the same directory. The tensors must be exactly those
 * cfg implies, with their shapes. This is the one export path: INIT.h5 files (dpm_init_read) and trained
 * checkpoints or released models (dpm_hf_gpt2_read_ckpt). Returns 0, or -1 with err. */
int dpm_hf_gpt2_export(const char *path, const dpm_hf_gpt2_config *cfg, int n, const dpm_st_tensor *t,
                       char err[DPM_ERRLEN]);

/* The Hugging Face config of a dpmpi GPT layer list (a model.layers text): `embed vocab=V context=T width=C`,
 * L >= 1 `block heads=H` (one H for all), `lm_head tied=0|1`. Returns 0, or -1 with err (prefixed by where)
 * saying why the list is not a GPT-2 that Hugging Face can hold. */
int dpm_hf_gpt2_config_of_layers(const char *layers, const char *where, dpm_hf_gpt2_config *cfg,
                                 char err[DPM_ERRLEN]);

/* Serial: the GPT of a dpmpi training checkpoint or released model (`dpmpi export`) as Hugging Face tensors:
 * *cfg from its layers attribute, *n tensors *t in the canonical order read from /model/layer_III/<HF name>
 * (free with dpm_init_tensors_free), *init_from its init_from attribute (dpm_free; NULL when the run did not
 * start from initial weights; init_from may be NULL). Returns 0, or -1 with err naming the file: not a dpmpi
 * checkpoint or model, not a GPT, a missing or misshapen tensor, a failed checksum. */
int dpm_hf_gpt2_read_ckpt(const char *path, dpm_hf_gpt2_config *cfg, int *n, dpm_st_tensor **t, char **init_from,
                          char err[DPM_ERRLEN]);

/* LoRA adapters of a checkpoint (docs/formats.md, "LoRA adapters"): rank r, scale numerator alpha (the product
 * is scaled by alpha / r) and the mask of adapted linears (1 attn.c_attn, 2 attn.c_proj, 4 mlp.c_fc, 8 mlp.c_proj).
 * dpm_hf_gpt2_read_ckpt merges them into the base weights (W + (alpha/r) A B), so every export of a LoRA
 * checkpoint is the merged model. */
typedef struct {
  int rank, alpha, targets;
} dpm_hf_lora;
/* The adapters alone: *n tensors h.l.<linear>.lora_A.weight [r, in] and lora_B.weight [out, r] (PEFT's
 * orientation, y = x W + (alpha/r) x A^T B^T), *lo their parameters. A checkpoint without adapters is an error. */
int dpm_hf_gpt2_read_adapters(const char *path, dpm_hf_gpt2_config *cfg, int *n, dpm_st_tensor **t, dpm_hf_lora *lo,
                              char err[DPM_ERRLEN]);
/* Write them as the safetensors path and adapter_config.json next to it (peft_type LORA, r, lora_alpha, scale,
 * target_modules, source: the checkpoint they came from). */
int dpm_hf_gpt2_export_adapters(const char *path, int n, const dpm_st_tensor *t, const dpm_hf_lora *lo,
                                const char *source, char err[DPM_ERRLEN]);

#endif
