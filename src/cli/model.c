/* `dpmpi model import|export|info`: Hugging Face GPT-2 checkpoints in and out of dpmpi.
 *   dpmpi model import --from safetensors --config config.json IN.safetensors --out INIT.h5
 *   dpmpi model export INIT.h5|CKPT.h5 --to safetensors OUT.safetensors [--adapters-only]  (+ config.json or
 *   adapter_config.json next to OUT)
 *   dpmpi model info INIT.h5
 * Every rank parses the arguments, rank 0 does the work (serial file I/O), and every rank returns the same
 * status: 0, or 2 after one "dpmpi: error: ..." line (dpm_exit_if_error). The checks live in io/safetensors.c
 * and io/hf_gpt2.c; this file only wires them to the command line. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/commands.h"
#include "dpmpi/core/common.h"
#include "dpmpi/io/hf_gpt2.h"
#include "dpmpi/io/safetensors.h"
#include "dpmpi/parallel/comm.h"
#include "io/atomic.h"

static const char *USAGE =
    "usage: dpmpi model import --from safetensors --config CONFIG.json IN.safetensors --out INIT.h5\n"
    "       dpmpi model export INIT.h5|CKPT.h5 --to safetensors OUT.safetensors [--adapters-only]\n"
    "       dpmpi model info INIT.h5\n"
    "\n"
    "import  reads a Hugging Face GPT-2 checkpoint (safetensors: F32, F16, BF16 or F64, converted to float32;\n"
    "        names with or without 'transformer.'; the attn.bias / attn.masked_bias buffers ignored; a tied or\n"
    "        untied lm_head.weight) and its config.json, checks every tensor's shape against the config, and\n"
    "        writes the initial-weights file INIT.h5 (docs/formats.md, \"Initial weights\").\n"
    "export  writes the weights of INIT.h5, or of a GPT's training checkpoint or released model (dpmpi export),\n"
    "        as OUT.safetensors (F32, Hugging Face names) and config.json in\n"
    "        OUT's directory (replaced if present), loadable with transformers' GPT2LMHeadModel. A LoRA checkpoint\n"
    "        exports merged (W + (alpha/r) A B under the Hugging Face names); with --adapters-only its adapters\n"
    "        alone (h.L.<linear>.lora_A.weight [r, in], lora_B.weight [out, r]) and adapter_config.json (r,\n"
    "        lora_alpha, scale, target_modules).\n"
    "info    prints the config and the tensors of INIT.h5.\n";

/* Parsed command line: the subcommand's options and positional arguments. */
typedef struct {
  const char *from, *to, *config, *out;
  const char *pos[2];
  int npos;
  int adapters_only; /* export --adapters-only: a LoRA checkpoint's adapters, not the merged model */
} model_args;

static int parse(int argc, char **argv, model_args *a, char *err) {
  static const struct option opts[] = {{"from", required_argument, NULL, 'f'},
                                       {"to", required_argument, NULL, 't'},
                                       {"config", required_argument, NULL, 'c'},
                                       {"out", required_argument, NULL, 'o'},
                                       {"adapters-only", no_argument, NULL, 'a'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  memset(a, 0, sizeof *a);
  optind = 0;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
    switch (c) {
      case 'f': a->from = optarg; break;
      case 't': a->to = optarg; break;
      case 'c': a->config = optarg; break;
      case 'o': a->out = optarg; break;
      case 'a': a->adapters_only = 1; break;
      case 'h': return 1;
      case ':': return dpm_err(err, "model %s: option '%s' needs a value (see dpmpi model --help)", argv[0], argv[optind - 1]);
      default: return dpm_err(err, "model %s: unknown option '%s' (see dpmpi model --help)", argv[0], argv[optind - 1]);
    }
  }
  for (int i = optind; i < argc; i++) {
    if (a->npos == 2) return dpm_err(err, "model %s: unexpected argument '%s' (see dpmpi model --help)", argv[0], argv[i]);
    a->pos[a->npos++] = argv[i];
  }
  return 0;
}

static int import_work(const model_args *a, char *err) {
  if (!a->from || strcmp(a->from, "safetensors"))
    return dpm_err(err, "model import: --from %s, expected --from safetensors", a->from ? a->from : "missing");
  if (!a->config) return dpm_err(err, "model import: --config CONFIG.json is required (the checkpoint's config.json)");
  if (!a->out) return dpm_err(err, "model import: --out INIT.h5 is required");
  if (a->npos != 1) return dpm_err(err, "model import: expected one input file IN.safetensors, got %d", a->npos);
  dpm_hf_gpt2_config cfg;
  if (dpm_hf_gpt2_read_config(a->config, &cfg, err)) return -1;
  dpm_st_file f;
  if (dpm_st_read(a->pos[0], &f, err)) return -1;
  const int n = dpm_hf_gpt2_num_tensors(&cfg);
  const dpm_st_tensor **t = dpm_malloc((size_t)n * sizeof *t);
  int rc = dpm_hf_gpt2_match(&cfg, a->config, &f, a->pos[0], t, err);
  if (!rc) rc = dpm_init_write(a->out, &cfg, n, t, a->pos[0], err);
  if (!rc) {
    int64_t params = 0;
    for (int k = 0; k < n; k++) params += t[k]->numel;
    printf("imported %s -> %s: GPT-2 with %lld blocks, %lld heads, width %lld, context %lld, vocabulary %lld, %s head; "
           "%d tensors, %lld parameters (from %s)\n", a->pos[0], a->out, (long long)cfg.n_layer, (long long)cfg.n_head,
           (long long)cfg.n_embd, (long long)cfg.n_positions, (long long)cfg.vocab_size,
           cfg.tie_word_embeddings ? "tied" : "untied", n, (long long)params, t[0]->dtype);
  }
  dpm_free(t);
  dpm_st_free(&f);
  return rc;
}

static int export_work(const model_args *a, char *err) {
  if (!a->to || strcmp(a->to, "safetensors"))
    return dpm_err(err, "model export: --to %s, expected --to safetensors", a->to ? a->to : "missing");
  if (a->npos != 2) return dpm_err(err, "model export: expected INIT.h5 and OUT.safetensors, got %d file(s)", a->npos);
  if (access(a->pos[0], R_OK)) return dpm_err(err, "%s: cannot open: %s", a->pos[0], strerror(errno));
  dpm_hf_gpt2_config cfg;
  int n;
  dpm_st_tensor *t;
  char *from = NULL;
  const int init = dpm_init_is(a->pos[0]); /* else a training checkpoint or released model of a GPT */
  if (a->adapters_only) { /* LoRA: the adapters alone, PEFT's orientation, alpha/r in adapter_config.json */
    if (init) return dpm_err(err, "model export --adapters-only: %s is an initial-weights file (no adapters)", a->pos[0]);
    dpm_hf_lora lo;
    if (dpm_hf_gpt2_read_adapters(a->pos[0], &cfg, &n, &t, &lo, err)) return -1;
    int rc = dpm_hf_gpt2_export_adapters(a->pos[1], n, t, &lo, a->pos[0], err);
    if (!rc) {
      char dir[4096];
      dpm_path_dirname(a->pos[1], dir, sizeof dir);
      printf("exported the LoRA adapters of %s -> %s (%d tensors, rank %d, alpha %d, scale %g) and "
             "%s/adapter_config.json\n", a->pos[0], a->pos[1], n, lo.rank, lo.alpha, (double)lo.alpha / lo.rank, dir);
    }
    dpm_init_tensors_free(n, t);
    return rc;
  }
  if (init ? dpm_init_read(a->pos[0], &cfg, &n, &t, err) : dpm_hf_gpt2_read_ckpt(a->pos[0], &cfg, &n, &t, &from, err))
    return -1;
  int rc = dpm_hf_gpt2_export(a->pos[1], &cfg, n, t, err);
  if (!rc) {
    char dir[4096];
    dpm_path_dirname(a->pos[1], dir, sizeof dir);
    printf("exported %s -> %s (%d tensors, F32) and %s/config.json%s%s\n", a->pos[0], a->pos[1], n, dir,
           from ? "; fine-tuned from " : "", from ? from : "");
  }
  dpm_free(from);
  dpm_init_tensors_free(n, t);
  return rc;
}

static int info_work(const model_args *a, char *err) {
  if (a->npos != 1) return dpm_err(err, "model info: expected one file INIT.h5, got %d", a->npos);
  dpm_hf_gpt2_config cfg;
  int n;
  dpm_st_tensor *t;
  if (dpm_init_read(a->pos[0], &cfg, &n, &t, err)) return -1;
  int64_t params = 0;
  for (int k = 0; k < n; k++) params += t[k].numel;
  printf("%s: dpmpi initial weights, GPT-2 (Hugging Face names)\n", a->pos[0]);
  printf("config: vocab_size %lld, n_positions %lld, n_embd %lld, n_head %lld, n_layer %lld, layer_norm_epsilon %g, "
         "tie_word_embeddings %s, activation_function gelu_new\n", (long long)cfg.vocab_size, (long long)cfg.n_positions,
         (long long)cfg.n_embd, (long long)cfg.n_head, (long long)cfg.n_layer, cfg.layer_norm_epsilon,
         cfg.tie_word_embeddings ? "true" : "false");
  printf("tensors: %d, parameters: %lld (float32)\n", n, (long long)params);
  for (int k = 0; k < n; k++) {
    if (t[k].rank == 2) printf("  %-28s [%lld, %lld]\n", t[k].name, (long long)t[k].shape[0], (long long)t[k].shape[1]);
    else printf("  %-28s [%lld]\n", t[k].name, (long long)t[k].shape[0]);
  }
  dpm_init_tensors_free(n, t);
  return 0;
}

/* The subcommand's whole work on rank 0: 0, or -1 with err. */
static int run(int argc, char **argv, char *err) {
  model_args a;
  int h = parse(argc - 1, argv + 1, &a, err);
  if (h < 0) return -1;
  if (h == 1) {
    fputs(USAGE, stdout);
    return 0;
  }
  if (!strcmp(argv[1], "import")) return import_work(&a, err);
  if (!strcmp(argv[1], "export")) return export_work(&a, err);
  return info_work(&a, err);
}

int dpm_cmd_model(int argc, char **argv) {
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  char err[DPM_ERRLEN] = "";
  int failed = 0;
  if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help"))) {
    if (rank == 0) fputs(USAGE, stdout);
  } else if (argc < 2 || (strcmp(argv[1], "import") && strcmp(argv[1], "export") && strcmp(argv[1], "info"))) {
    failed = 1;
    dpm_err(err, "model: expected 'model import|export|info ...' (see dpmpi model --help)");
  } else if (rank == 0) {
    failed = run(argc, argv, err) != 0;
  }
  fflush(stdout);
  dpm_exit_if_error(MPI_COMM_WORLD, failed, err);
  return 0;
}
