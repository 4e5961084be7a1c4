/* `dpmpi generate CKPT --prompt TEXT --tokens N [--temperature T] [--seed S]`: text from a byte-level GPT
 * checkpoint of `dpmpi train` (layers `embed vocab=257 ...; block ...; lm_head`, tokenizer "bytes": a byte is
 * its own id, DPM_BYTES_EOT = 256 ends a text). This file owns the command: the arguments, loading the
 * checkpoint's parameters into one whole model on rank 0, the decoding loop (greedy at T = 0, otherwise one
 * draw per token from softmax(logits / T) with a counter-based key: the seed's, or the operating system's
 * CSPRNG without --seed) and printing the text with invalid UTF-8 bytes escaped as \xNN. The model sees the
 * last `context` tokens (a longer prompt is cut, with a note); generation stops after N tokens or at the
 * end-of-text id. Rank 0 does the work, the other ranks wait; every rank returns the same status. The
 * text goes to stdout, notes to stderr. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "dpmpi/core/common.h"
#include "dpmpi/core/rng.h"
#include "dpmpi/io/ckpt.h"
#include "dpmpi/io/data.h"
#include "dpmpi/nn/model.h"
#include "dpmpi/parallel/comm.h"

static const char *USAGE =
    "usage: dpmpi generate CKPT --prompt TEXT --tokens N [--temperature T] [--seed S]\n"
    "Continues TEXT with at most N tokens of the byte-level GPT in checkpoint CKPT (a file, or a directory: its\n"
    "newest checkpoint): greedy (the most likely byte) at temperature 0 (the default), otherwise sampled from\n"
    "softmax(logits / T) with a key from --seed S (reproducible) or from the operating system (secure). Stops at\n"
    "the end-of-text id. Prints the prompt and its continuation; bytes that are not valid UTF-8 are printed as\n"
    "\\xNN. A prompt longer than the model's context is cut to its last context bytes. One rank does the work.\n";

/* The stream tag of generation's draws (step = the position of the drawn token); the key is the user's
 * seed under purpose GENERATE_PURPOSE, or a secure key, never one of training's keys. */
enum { GENERATE_TAG = DPM_STREAM_GENERATE, GENERATE_PURPOSE = DPM_STREAM_GENERATE };

typedef struct {
  const char *ckpt, *prompt;
  long long tokens;
  double temperature;
  int has_seed;
  unsigned long long seed;
} gen_args;

static int parse_number(const char *opt, const char *s, double *out, char *err) {
  char *end;
  errno = 0;
  *out = strtod(s, &end);
  if (errno || end == s || *end || !isfinite(*out))
    return dpm_err(err, "generate: %s '%s': expected a number", opt, s);
  return 0;
}

static int parse(int argc, char **argv, gen_args *a, char *err) {
  static const struct option opts[] = {{"prompt", required_argument, NULL, 'p'},
                                       {"tokens", required_argument, NULL, 'n'},
                                       {"temperature", required_argument, NULL, 't'},
                                       {"seed", required_argument, NULL, 's'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  memset(a, 0, sizeof *a);
  a->tokens = -1;
  optind = 0;
  opterr = 0;
  int c;
  double v;
  char *end;
  while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
    switch (c) {
      case 'p': a->prompt = optarg; break;
      case 'n':
        errno = 0;
        a->tokens = strtoll(optarg, &end, 10);
        if (errno || end == optarg || *end || a->tokens < 0)
          return dpm_err(err, "generate: --tokens '%s': expected an integer >= 0", optarg);
        break;
      case 't':
        if (parse_number("--temperature", optarg, &v, err)) return -1;
        if (v < 0) return dpm_err(err, "generate: --temperature %s: expected a number >= 0 (0: greedy)", optarg);
        a->temperature = v;
        break;
      case 's':
        errno = 0;
        a->seed = strtoull(optarg, &end, 10);
        if (errno || end == optarg || *end || optarg[0] == '-')
          return dpm_err(err, "generate: --seed '%s': expected an integer >= 0", optarg);
        a->has_seed = 1;
        break;
      case 'h': return 1;
      case ':': return dpm_err(err, "generate: option '%s' needs a value (see dpmpi generate --help)", argv[optind - 1]);
      default: return dpm_err(err, "generate: unknown option '%s' (see dpmpi generate --help)", argv[optind - 1]);
    }
  }
  if (optind != argc - 1)
    return dpm_err(err, "generate: expected one checkpoint CKPT, got %d arguments (see dpmpi generate --help)",
                   argc - optind);
  a->ckpt = argv[optind];
  if (!a->prompt) return dpm_err(err, "generate: --prompt TEXT is required (it may be empty: --prompt '')");
  if (a->tokens < 0) return dpm_err(err, "generate: --tokens N is required (the most tokens to generate)");
  return 0;
}

/* Copy the parameters of GPT `from` into `to`, the same layers but a context of at most from's: every tensor
 * whole but wpe.weight, whose first rows (positions 0 .. to's context - 1) are copied. */
static void copy_truncated(dpm_model *to, const dpm_model *from, int n) {
  const float *src = dpm_model_params((dpm_model *)from);
  float *dst = dpm_model_params(to);
  size_t off_s = 0, off_d = 0;
  for (int i = 0; i < n; i++) {
    dpm_layer_info a, b;
    dpm_model_layer_info(from, i, &a);
    dpm_model_layer_info(to, i, &b);
    DPM_ASSERT(a.n_tensors == b.n_tensors);
    for (int k = 0; k < a.n_tensors; k++) {
      DPM_ASSERT(b.tensors[k].size == a.tensors[k].size || !strcmp(a.tensors[k].name, "wpe.weight"));
      DPM_ASSERT(b.tensors[k].size <= a.tensors[k].size);
      memcpy(dst + off_d + b.tensors[k].off, src + off_s + a.tensors[k].off, sizeof(float) * b.tensors[k].size);
    }
    off_s += a.params, off_d += b.params;
  }
}

dpm_model *dpm_cli_load_byte_gpt(const char *cmd, const char *path, int context, int max_batch, int *T, char *found,
                                 size_t flen, char *err) {
  char **list = NULL;
  const int nc = dpm_ckpt_list(path, &list, err);
  if (nc < 0) return NULL;
  if (nc == 0) {
    dpm_free(list);
    dpm_err(err, "%s: no checkpoint files ckpt-STEP.h5", path);
    return NULL;
  }
  snprintf(found, flen, "%s", list[0]);
  for (int i = 0; i < nc; i++) dpm_free(list[i]);
  dpm_free(list);
  dpm_ckpt_meta meta;
  if (dpm_ckpt_read_meta(MPI_COMM_SELF, found, &meta, err)) return NULL;
  dpm_layer_spec *specs = NULL;
  int n = 0;
  dpm_model *m = NULL;
  char inner[DPM_ERRLEN];
  if (!meta.layers || dpm_model_parse(meta.layers, &specs, &n, inner)) {
    dpm_err(err, "%s: its model.layers cannot be read: %s", found, meta.layers ? inner : "missing");
  } else if (specs[0].kind != DPM_LAYER_EMBED || specs[n - 1].kind != DPM_LAYER_LM_HEAD) {
    dpm_err(err, "%s: not a GPT checkpoint (its model.layers '%s' do not go 'embed ...; block ...; lm_head'): "
                 "dpmpi %s needs a language model", found, meta.layers, cmd);
  } else if (specs[0].vocab != DPM_BYTES_VOCAB) {
    dpm_err(err, "%s: a GPT with vocab=%d, expected vocab=%d: dpmpi %s speaks the byte-level tokenizer "
                 "'%s' only (data convert --from text)", found, specs[0].vocab, DPM_BYTES_VOCAB, cmd,
            DPM_TOKENIZER_BYTES);
  } else if (context > specs[0].context) {
    dpm_err(err, "%s: the model's context is %d tokens, dpmpi %s needs %d", found, specs[0].context, cmd, context);
  } else if (!(m = dpm_model_create(specs, n, 1, 1, specs[0].context, specs[0].vocab, context ? 1 : max_batch, inner))) {
    dpm_err(err, "%s: model.layers: %s", found, inner);
  } else {
    dpm_layer_info *info = dpm_malloc(sizeof *info * (size_t)n);
    for (int i = 0; i < n; i++) dpm_model_layer_info(m, i, &info[i]);
    dpm_ckpt_model cm = {.n_layers = n, .info = info, .first = 0, .last = n, .writer = 1,
                         .params = dpm_model_params(m), .n_state = 0};
    dpm_ledger *L = NULL;
    if (dpm_ckpt_read(MPI_COMM_SELF, found, &cm, &L, err)) {
      dpm_model_free(m);
      m = NULL;
    }
    if (L) dpm_ledger_free(L);
    dpm_free(info);
    *T = specs[0].context;
    if (m && context) { /* the same model on the first `context` positions */
      specs[0].context = context;
      dpm_model *s = dpm_model_create(specs, n, 1, 1, context, specs[0].vocab, max_batch, inner);
      DPM_ASSERT(s);
      copy_truncated(s, m, n);
      dpm_model_free(m);
      m = s;
      *T = context;
    }
  }
  dpm_free(specs);
  dpm_ckpt_meta_free(&meta);
  return m;
}

/* The length of the valid UTF-8 sequence at s[0 .. n) (1-4 bytes), or 0 if s[0] does not start one:
 * no overlong forms, no surrogates, nothing above U+10FFFF. */
static int utf8_len(const unsigned char *s, size_t n) {
  if (s[0] < 0x80) return 1;
  int len;
  unsigned lo = 0x80, hi = 0xBF;
  if (s[0] >= 0xC2 && s[0] <= 0xDF) len = 2;
  else if (s[0] >= 0xE0 && s[0] <= 0xEF) len = 3, lo = s[0] == 0xE0 ? 0xA0 : 0x80, hi = s[0] == 0xED ? 0x9F : 0xBF;
  else if (s[0] >= 0xF0 && s[0] <= 0xF4) len = 4, lo = s[0] == 0xF0 ? 0x90 : 0x80, hi = s[0] == 0xF4 ? 0x8F : 0xBF;
  else return 0;
  if ((size_t)len > n) return 0;
  if (s[1] < lo || s[1] > hi) return 0;
  for (int k = 2; k < len; k++)
    if (s[k] < 0x80 || s[k] > 0xBF) return 0;
  return len;
}

/* Print s[0 .. n) with every byte outside a valid UTF-8 sequence as \xNN; returns how many were escaped. */
static size_t print_escaped(FILE *f, const unsigned char *s, size_t n) {
  size_t bad = 0;
  for (size_t i = 0; i < n;) {
    const int len = utf8_len(s + i, n - i);
    if (len) {
      fwrite(s + i, 1, (size_t)len, f);
      i += (size_t)len;
    } else {
      fprintf(f, "\\x%02X", s[i++]);
      bad++;
    }
  }
  return bad;
}

/* The next id after logits[V] (double softmax): argmax at temperature 0 (lowest id on ties), else the
 * inverse CDF of softmax(logits / temp) at uniform u in [0, 1). */
static int next_token(const float *logits, int V, double temp, double u, double *p) {
  int best = 0;
  for (int v = 1; v < V; v++)
    if (logits[v] > logits[best]) best = v;
  if (temp == 0) return best;
  double z = 0;
  for (int v = 0; v < V; v++) z += p[v] = exp(((double)logits[v] - logits[best]) / temp);
  double acc = 0, target = u * z;
  for (int v = 0; v < V; v++)
    if ((acc += p[v]) > target) return v;
  return best; /* rounding: u z at the very top */
}

static int generate_work(const gen_args *a, char *err) {
  char found[4096];
  int T = 0;
  dpm_model *m = dpm_cli_load_byte_gpt("generate", a->ckpt, 0, 1, &T, found, sizeof found, err);
  if (!m) return -1;
  const int V = DPM_BYTES_VOCAB;
  DPM_ASSERT(dpm_model_output_size(m) == (size_t)T * V);
  const size_t np = strlen(a->prompt);
  size_t cap = np + (size_t)a->tokens + 1, n = 0;
  int32_t *seq = dpm_malloc(sizeof(int32_t) * cap);
  unsigned char *text = dpm_malloc(cap);
  for (size_t i = 0; i < np; i++) seq[n++] = (unsigned char)a->prompt[i];
  if (n == 0) seq[n++] = DPM_BYTES_EOT; /* an empty prompt starts a new text */
  if (n > (size_t)T)
    fprintf(stderr, "dpmpi: note: the prompt has %zu bytes, more than the model's context %d: the model sees its "
            "last %d\n", n, T, T);
  const dpm_key key = a->has_seed ? dpm_key_from_seed(a->seed, GENERATE_PURPOSE) : dpm_key_secure();
  float *x = dpm_malloc(sizeof(float) * (size_t)T);
  double *p = dpm_malloc(sizeof(double) * (size_t)V);
  long long made = 0;
  int ended = 0;
  for (; made < a->tokens; made++) {
    const size_t w = n < (size_t)T ? n : (size_t)T, s0 = n - w;
    /* causal: positions after w - 1 do not change its logits; fill them with id 0 */
    for (int t = 0; t < T; t++) x[t] = (size_t)t < w ? (float)seq[s0 + (size_t)t] : 0.0f;
    dpm_model_forward(m, x, NULL, 1, NULL);
    uint64_t word;
    dpm_rng_words(&key, (uint64_t)made, GENERATE_TAG, 0, 1, &word);
    const int id = next_token(dpm_model_output(m) + (w - 1) * (size_t)V, V, a->temperature, dpm_u01(word), p);
    if (id == DPM_BYTES_EOT) {
      ended = 1;
      break;
    }
    seq[n++] = id;
  }
  size_t nt = 0;
  for (size_t i = 0; i < n; i++)
    if (seq[i] < 256) text[nt++] = (unsigned char)seq[i];
  const size_t bad = print_escaped(stdout, text, nt);
  fputc('\n', stdout);
  fflush(stdout);
  fprintf(stderr, "dpmpi: generated %lld token(s) from %s (%s%s)%s\n", made, found,
          a->temperature == 0 ? "greedy" : "sampled", a->temperature == 0 ? "" : a->has_seed ? ", seeded" : ", secure key",
          ended ? ", stopped at end of text" : "");
  if (bad) fprintf(stderr, "dpmpi: note: %zu byte(s) were not valid UTF-8, printed as \\xNN\n", bad);
  dpm_free(p);
  dpm_free(x);
  dpm_free(text);
  dpm_free(seq);
  dpm_model_free(m);
  return 0;
}

int dpm_cmd_generate(int argc, char **argv) {
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  char err[DPM_ERRLEN] = "";
  gen_args a;
  const int h = parse(argc, argv, &a, err);
  int failed = h < 0;
  if (h == 1) {
    if (rank == 0) fputs(USAGE, stdout);
  } else if (!failed && rank == 0) {
    failed = generate_work(&a, err) != 0;
  }
  fflush(stdout);
  dpm_exit_if_error(MPI_COMM_WORLD, failed, err);
  return 0;
}
