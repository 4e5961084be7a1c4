/* Job files: one table of keys (type, default, documentation), an inih handler that validates each
 * value as it is read, overrides from the command line, and the cross-key checks. See dpmpi/io/config.h. */
#include "dpmpi/io/config.h"

#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum { K_STR, K_INT, K_POS_INT, K_NUM, K_POS_NUM, K_NONNEG_NUM, K_PROB, K_BOOL, K_ENUM, K_U64 } key_type;

typedef struct {
  const char *section, *name;
  key_type type;
  size_t offset;
  const char *def;        /* default as text, NULL = none */
  const char *choices;    /* K_ENUM: "a|b|c" */
  const char *doc;
} key_def;

#define OFF(f) offsetof(dpm_config, f)
static const key_def KEYS[] = {
  {"data", "train", K_STR, OFF(data_train), NULL, NULL,
   "HDF5 dataset file (dpmpi data convert); training reads its /train group. Required."},
  {"data", "test", K_STR, OFF(data_test), NULL, NULL,
   "HDF5 dataset file whose /test group is used for evaluation (may be the same file). Default: data.train."},
  {"model", "layers", K_STR, OFF(model_layers), NULL, NULL,
   "Layer list, ';' or newline separated: dense out=N | conv out=N kernel=K [stride=S pad=P bias=0|1 ws=0|1] (ws=1: weight standardization, each output channel's weights to mean 0 and std 1 in the forward) | "
   "maxpool kernel=K [stride=S] | avgpool kernel=K [stride=S] | relu | tanh | groupnorm groups=G | flatten | "
   "scatter [J=2 L=8] (wavelet scattering transform, no parameters, first layer only: 1 + J L + L^2 J (J-1)/2 "
   "channels per input channel at 1/2^J resolution; follow it with groupnorm). "
   "The last layer must output one value per class. GPT on token data: embed vocab=V context=T width=C; "
   "block heads=H (repeated); lm_head [tied=1|0] (tied needs one pipeline stage). Required."},
  {"train", "epochs", K_POS_NUM, OFF(epochs), NULL, NULL,
   "Training length in epochs (expected passes over the data: steps = round(epochs * N / batch_size)). "
   "Give this or train.steps."},
  {"train", "steps", K_POS_INT, OFF(steps), NULL, NULL, "Training length in logical steps. Give this or train.epochs."},
  {"train", "batch_size", K_POS_INT, OFF(batch_size), "256", NULL,
   "Expected logical batch size; the Poisson sampling rate is q = batch_size / N."},
  {"train", "physical_batch_size", K_POS_INT, OFF(physical_batch_size), "256", NULL,
   "Largest micro-batch a rank processes at once (memory bound); logical batches are accumulated over micro-batches."},
  {"train", "lr", K_POS_NUM, OFF(lr), "0.1", NULL, "Learning rate (peak, before the schedule)."},
  {"train", "optimizer", K_ENUM, OFF(optimizer), "sgd", "sgd|adamw",
   "Update rule applied to the privatized gradient (the noisy clipped sum divided by q*N: post-processing, it never "
   "sees private data): sgd (heavy-ball momentum) or adamw (Adam with bias correction and decoupled weight decay, "
   "Loshchilov & Hutter 2019, as PyTorch's AdamW: p -= lr*weight_decay*p, then the Adam step). DP-Adam is adamw "
   "with privacy enabled. A run resumes only with the optimizer it was started with."},
  {"train", "momentum", K_NONNEG_NUM, OFF(momentum), "0.9", NULL,
   "SGD momentum (heavy ball, PyTorch convention), in [0, 1). Not used by adamw (see adam_beta1)."},
  {"train", "weight_decay", K_NONNEG_NUM, OFF(weight_decay), "0", NULL,
   "sgd: L2 weight decay added to the (noisy) gradient. adamw: decoupled weight decay, p -= lr*weight_decay*p "
   "before the Adam step (PyTorch's AdamW default is 0.01)."},
  {"train", "adam_beta1", K_NONNEG_NUM, OFF(adam_beta1), "0.9", NULL,
   "adamw: decay rate of the first moment (running mean of the gradient), in [0, 1)."},
  {"train", "adam_beta2", K_NONNEG_NUM, OFF(adam_beta2), "0.999", NULL,
   "adamw: decay rate of the second moment (running mean of the squared gradient), in [0, 1)."},
  {"train", "adam_eps", K_POS_NUM, OFF(adam_eps), "1e-8", NULL,
   "adamw: added to the square root of the bias-corrected second moment in the update's denominator."},
  {"train", "lr_schedule", K_ENUM, OFF(lr_schedule), "constant", "constant|cosine|step",
   "Learning-rate schedule: constant; cosine decay to 0 over the run; step (multiply by lr_step_gamma every lr_step_every epochs)."},
  {"train", "lr_step_gamma", K_POS_NUM, OFF(lr_step_gamma), "0.1", NULL, "Factor of the step schedule."},
  {"train", "lr_step_every", K_POS_NUM, OFF(lr_step_every), "10", NULL, "Period of the step schedule in epochs."},
  {"train", "warmup_epochs", K_NONNEG_NUM, OFF(warmup_epochs), "0", NULL, "Linear warm-up of the learning rate over this many epochs."},
  {"train", "trainable", K_STR, OFF(trainable), NULL, NULL,
   "Fine-tuning: the tensors that train, as comma- or space-separated glob patterns over the checkpoint names "
   "(GPT: Hugging Face names such as h.0.attn.c_attn.weight, h.*.mlp.*, ln_f.*, wte.weight; '*' also crosses dots); "
   "every other tensor is frozen: no clipping norm, no noise (the noise dimension counts trainable parameters), no "
   "optimizer state, no allreduce, bitwise unchanged. A pattern matching nothing is an error. Default: every tensor "
   "(with LoRA: only the adapters, plus what this adds). Non-GPT layers freeze whole (weight and bias together)."},
  {"train", "lora_rank", K_INT, OFF(lora_rank), "0", NULL,
   "LoRA (Hu et al. 2021) rank r (1 .. width) on every block's linears named by train.lora_targets: y = x W + b + (alpha/r) "
   "(x A^T) B^T with A [r, in] Kaiming-uniform (bound 1/sqrt(in), as Hu et al.'s code and PEFT) and B [out, r] zero, "
   "so training starts from the base model. With it the base is frozen: only the adapters train (and whatever "
   "train.trainable adds). The run's layer list gets each block's lora=r lora_alpha=A lora_targets=M keys (what "
   "checkpoints record). 0 = off."},
  {"train", "lora_alpha", K_POS_INT, OFF(lora_alpha), "8", NULL,
   "LoRA scale numerator (an integer): the adapters' product is multiplied by lora_alpha / lora_rank (PEFT's "
   "default 8)."},
  {"train", "lora_targets", K_STR, OFF(lora_targets), NULL, NULL,
   "The block linears that get LoRA adapters, comma or space separated among attn.c_attn, attn.c_proj, mlp.c_fc, "
   "mlp.c_proj. Default: all four."},
  {"train", "ema_decay", K_NONNEG_NUM, OFF(ema_decay), "0", NULL,
   "Exponential moving average (Polyak averaging) of the parameters, in [0, 1): after every update ema = d * ema + "
   "(1 - d) * params, starting from the initial parameters. 0 = off. With it, every evaluation reports the EMA "
   "model's test accuracy as well, checkpoints store it (/ema) and dpmpi export writes it as the released model. "
   "Post-processing of the privatized updates: no privacy cost, the ledger is unchanged."},
  {"train", "aug_multiplicity", K_POS_INT, OFF(aug_multiplicity), "1", NULL,
   "Augmentation multiplicity K (De et al. 2022): each sampled example's gradient is the mean of the gradients of K "
   "random views of it (crops of the image padded by train.aug_pad pixels, mirrored when train.aug_flip), averaged "
   "BEFORE clipping, so each example still contributes at most C and the accounting is unchanged. The views' "
   "randomness comes from its own stream (the same on every grid). 1 = off. Needs image data, one pipeline stage "
   "and K <= physical_batch_size; a sampled example's K views run as one micro-batch (sampled examples are not "
   "rebalanced over replicas). Evaluation uses the images as they are."},
  {"train", "aug_pad", K_INT, OFF(aug_pad), "2", NULL,
   "Augmentation multiplicity: the crops' padding in pixels (>= 0; padded pixels are black, the stored 0)."},
  {"train", "aug_flip", K_BOOL, OFF(aug_flip), "false", NULL,
   "Augmentation multiplicity: true lets a view be mirrored left-right (right for clothes, wrong for digits or text)."},
  {"train", "eval_every", K_POS_NUM, OFF(eval_every_epochs), "1", NULL, "Evaluate on the test split every this many epochs (and at the end)."},
  {"privacy", "enabled", K_BOOL, OFF(privacy_enabled), "true", NULL,
   "true: DP-SGD (clipping, noise, accounting). false: non-private baseline on the same code path; the job's "
   "privacy.epsilon, privacy.noise_multiplier, pca.epsilon and pca.noise_multiplier are then ignored (one warning "
   "line), so --privacy.enabled=false gives the baseline of any DP job."},
  {"privacy", "epsilon", K_POS_NUM, OFF(epsilon), NULL, NULL,
   "Target epsilon. Without noise_multiplier, sigma is calibrated so the whole run spends at most this; "
   "with it, training stops before this budget would be exceeded."},
  {"privacy", "delta", K_PROB, OFF(delta), "1e-5", NULL, "Target delta, in (0, 1); should be well below 1/N."},
  {"privacy", "noise_multiplier", K_POS_NUM, OFF(noise_multiplier), NULL, NULL,
   "Noise standard deviation as a multiple of the total clipping norm (sigma). Give this, epsilon, or both."},
  {"privacy", "clip", K_POS_NUM, OFF(clip), "1.0", NULL, "Total per-example clipping norm C (L2 over the whole model)."},
  {"privacy", "clipping", K_ENUM, OFF(clipping), "flat", "flat|per-layer|per-device|automatic|automatic-per-layer",
   "flat: one threshold C over the whole model (pipeline stages exchange per-example squared norms). per-layer: "
   "each layer with parameters clipped to C/sqrt(L). per-device: each pipeline stage clips its own piece to C_s "
   "(He et al. 2022; no exchange between stages), sum of C_s^2 = C^2. automatic: every example normalized, "
   "C g/(||g|| + auto_gamma) over the whole model (Bu et al. 2022); automatic-per-layer: each layer "
   "(C/sqrt(L)) g_l/(||g_l|| + auto_gamma). Total sensitivity C in every mode."},
  {"privacy", "auto_gamma", K_POS_NUM, OFF(auto_gamma), "0.01", NULL,
   "Automatic clipping's stability constant gamma in g/(||g|| + gamma) (Bu et al. 2022 use 0.01)."},
  {"privacy", "adaptive", K_BOOL, OFF(adaptive), "false", NULL,
   "true: every clipping threshold (flat: one; per-layer: one per layer; per-device: one per stage; privacy.clip "
   "gives the initial ones) follows privacy.target_quantile of its per-example norms (Andrew et al. 2021), from a "
   "noisy count of unclipped examples per threshold, released with the gradient. noise_multiplier (or the one "
   "calibrated to epsilon) is then the effective noise multiplier of gradient and counts together "
   "(docs/accountant.md). Not with the automatic modes."},
  {"privacy", "target_quantile", K_PROB, OFF(target_quantile), "0.5", NULL,
   "Adaptive thresholds: the fraction of examples each threshold should leave unclipped, in (0, 1)."},
  {"privacy", "adaptive_lr", K_POS_NUM, OFF(adaptive_lr), "0.2", NULL,
   "Adaptive thresholds: geometric rate eta, C <- C exp(-eta (b - target_quantile)) with b the noisy unclipped "
   "fraction (normalized by the expected batch q*N)."},
  {"privacy", "count_noise_fraction", K_PROB, OFF(count_noise_fraction), "0.01", NULL,
   "Adaptive thresholds: the share f of the budget spent on the counts, as a fraction of the precision sigma^-2 of "
   "the combined mechanism: gradient noise multiplier sigma/sqrt(1-f), count noise std sqrt(K) sigma/(2 sqrt(f)) "
   "for K thresholds (He et al. 2022 use 1%)."},
  {"privacy", "device_split", K_ENUM, OFF(device_split), "even", "even|params",
   "per-device clipping: thresholds C_s = C/sqrt(S) (even) or C*sqrt(P_s/P) by the stage's share of parameters."},
  {"privacy", "accountant", K_ENUM, OFF(accountant), "rdp", "rdp|tight",
   "Accountant for calibration, budget and reporting: rdp (Renyi DP) or tight (privacy loss distribution)."},
  {"privacy", "rebudget", K_BOOL, OFF(rebudget), "false", NULL,
   "With --resume: accept an epsilon or delta different from the checkpoint's. The new values then hold for the "
   "whole ledger (every step already run is accounted at the new delta, the new epsilon is the budget of the whole "
   "run) and are stored in the following checkpoints. Without it such a resume is refused."},
  /* ---- [pca]: DP-PCA preprocessing (src/parallel/pca.c, docs/pca.md) ---- */
  {"pca", "components", K_INT, OFF(pca_components), "0", NULL,
   "Project every example onto the top k principal directions of the training data before training "
   "(Abadi et al. 2016; the model's input becomes k features). 0 = off. The directions come from the training "
   "set's second-moment matrix with rows clipped to pca.clip plus symmetric Gaussian noise (Analyze Gauss), "
   "eigendecomposed with ScaLAPACK on all ranks; the release is one Gaussian entry in the privacy ledger."},
  {"pca", "noise_multiplier", K_POS_NUM, OFF(pca_noise_multiplier), NULL, NULL,
   "Noise standard deviation of the PCA release as a multiple of pca.clip^2 (its sensitivity). Give this or "
   "pca.epsilon when PCA is on in a private run."},
  {"pca", "epsilon", K_POS_NUM, OFF(pca_epsilon), NULL, NULL,
   "Epsilon of the PCA release alone at privacy.delta (its noise multiplier is calibrated). With privacy.epsilon "
   "it must be smaller: privacy.epsilon is the budget of the whole run, PCA included."},
  {"pca", "clip", K_POS_NUM, OFF(pca_clip), NULL, NULL,
   "L2 norm each example (flattened, normalized) is clipped to for the PCA. Required when PCA is on in a private "
   "run; in a non-private run rows are clipped only when it is given."},
  {"grid", "replicas", K_POS_INT, OFF(grid_replicas), NULL, NULL,
   "Data-parallel replicas D. The world size must be D x S. Default: world size / grid.stages."},
  {"grid", "stages", K_POS_INT, OFF(grid_stages), NULL, NULL,
   "Pipeline stages S per replica (the model's layers split into S consecutive pieces, one per rank). "
   "Default: world size / grid.replicas, or 1 when neither is given."},
  {"grid", "stage_layers", K_STR, OFF(grid_stage_layers), NULL, NULL,
   "Layers per stage, comma separated (e.g. 4,3), summing to the number of layers. Default: balanced by each "
   "layer's multiply-adds per example."},
  {"checkpoint", "dir", K_STR, OFF(ckpt_dir), NULL, NULL,
   "Directory for checkpoints ckpt-STEP.h5 (created if missing): written every checkpoint.every steps, at the end, "
   "and on SIGTERM/SIGUSR1. Default: no checkpoints."},
  {"checkpoint", "every", K_POS_INT, OFF(ckpt_every), NULL, NULL, "Checkpoint period in steps (default: only at the "
   "end and on a signal)."},
  {"checkpoint", "keep", K_POS_INT, OFF(ckpt_keep), "3", NULL, "How many of the newest checkpoints to keep."},
  {"run", "seed", K_U64, 0, NULL, NULL,
   "Makes the run reproducible: sampling, noise and initialization keys derive from it. Without it the keys come "
   "from the operating system's CSPRNG and are never stored (the secure mode for real releases)."},
  {"output", "metrics", K_STR, OFF(metrics), NULL, NULL, "JSON-lines file: one object per evaluation (directories are not created)."},
  {"output", "log_every", K_POS_INT, OFF(log_every), NULL, NULL, "Progress line every this many steps (default: about 10 per epoch)."},
  {"output", "private_stats", K_BOOL, OFF(private_stats), "true", NULL,
   "true: progress lines show noiseless statistics of the private batches (loss, train accuracy, clipped fraction, "
   "examples/s of the realized batches), which epsilon does NOT cover. false (for a release run): only DP-safe values "
   "(step, epoch, lr, epsilon, ETA, wall time, throughput from the expected batch q*N). Checkpoints and exports record "
   "whether any segment of the run printed them (stats_printed)."},
};
#define N_KEYS (sizeof KEYS / sizeof KEYS[0])
/* K_ENUM stores a choice's index as an int into an enum field */
_Static_assert(sizeof(dpm_accountant_kind) == sizeof(int) && DPM_ACCT_RDP == 0 && DPM_ACCT_TIGHT == 1,
               "privacy.accountant's choices rdp|tight are dpm_accountant_kind's values");
_Static_assert(sizeof(dpm_clipping) == sizeof(int) && DPM_CLIP_FLAT == 0 && DPM_CLIP_PER_LAYER == 1 &&
               DPM_CLIP_PER_DEVICE == 2 && DPM_CLIP_AUTOMATIC == 3 && DPM_CLIP_AUTOMATIC_PER_LAYER == 4 &&
               DPM_CLIP_COUNT == 5, "privacy.clipping's choices are dpm_clipping's values (and dpm_clipping_name's)");
_Static_assert(sizeof(dpm_optimizer_kind) == sizeof(int) && DPM_OPT_SGD == 0 && DPM_OPT_ADAMW == 1 && DPM_OPT_COUNT == 2,
               "train.optimizer's choices sgd|adamw are dpm_optimizer_kind's values (and dpm_optimizer_name's)");

typedef struct {
  dpm_config *cfg;
  const char *where; /* file name or "command line" */
  char *err;
  int failed;
  unsigned char seen[N_KEYS];
} parse_state;

static int enum_index(const char *choices, const char *value) {
  int idx = 0;
  const char *p = choices;
  size_t vlen = strlen(value);
  while (*p) {
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len == vlen && strncasecmp(p, value, len) == 0) return idx;
    idx++;
    if (!bar) break;
    p = bar + 1;
  }
  return -1;
}

static int parse_double(const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end != '\0' || errno == ERANGE || !isfinite(v)) return -1;
  *out = v;
  return 0;
}

static int parse_int64(const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (end == s || *end != '\0' || errno == ERANGE) return -1;
  *out = v;
  return 0;
}

/* Store value into the field of key k; returns 0 or -1 with err set. */
static int set_key(parse_state *st, size_t k, const char *value) {
  const key_def *kd = &KEYS[k];
  dpm_config *cfg = st->cfg;
  char *field = (char *)cfg + kd->offset;
  const char *what = NULL;
  switch (kd->type) {
    case K_STR: {
      char **dst = (char **)field;
      if (!value[0]) { what = "a non-empty value"; break; }
      if (*dst && st->seen[k] && strcmp(kd->name, "layers") == 0) {
        /* inih delivers indented continuation lines as repeated values: append them */
        size_t n = strlen(*dst) + strlen(value) + 2;
        char *joined = dpm_malloc(n);
        snprintf(joined, n, "%s\n%s", *dst, value);
        dpm_free(*dst);
        *dst = joined;
        return 0;
      }
      dpm_free(*dst);
      *dst = dpm_strdup(value);
      return 0;
    }
    case K_INT: case K_POS_INT: {
      int64_t v;
      if (parse_int64(value, &v) || (kd->type == K_POS_INT && v < 1)) {
        what = kd->type == K_POS_INT ? "a positive integer" : "an integer";
        break;
      }
      *(int64_t *)field = v;
      return 0;
    }
    case K_U64: {
      char *end;
      errno = 0;
      unsigned long long v = strtoull(value, &end, 0);
      if (end == value || *end != '\0' || errno == ERANGE || value[0] == '-') {
        what = "a non-negative integer";
        break;
      }
      cfg->seed = v;
      cfg->has_seed = 1;
      return 0;
    }
    case K_NUM: case K_POS_NUM: case K_NONNEG_NUM: case K_PROB: {
      double v;
      int bad = parse_double(value, &v);
      if (!bad && kd->type == K_POS_NUM && !(v > 0)) bad = 1;
      if (!bad && kd->type == K_NONNEG_NUM && !(v >= 0)) bad = 1;
      if (!bad && kd->type == K_PROB && !(v > 0 && v < 1)) bad = 1;
      if (bad) {
        what = kd->type == K_POS_NUM ? "a positive number"
               : kd->type == K_NONNEG_NUM ? "a number >= 0"
               : kd->type == K_PROB ? "a number in (0, 1)" : "a number";
        break;
      }
      *(double *)field = v;
      return 0;
    }
    case K_BOOL: {
      int v = enum_index("false|true|no|yes|0|1|off|on", value);
      if (v < 0) { what = "true or false"; break; }
      *(int *)field = v % 2;
      return 0;
    }
    case K_ENUM: {
      int v = enum_index(kd->choices, value);
      if (v < 0) {
        static char buf[128];
        snprintf(buf, sizeof buf, "one of %s", kd->choices);
        what = buf;
        break;
      }
      *(int *)field = v;
      return 0;
    }
  }
  dpm_err(st->err, "%s: [%s] %s = '%s': expected %s", st->where, kd->section, kd->name, value, what);
  return -1;
}

static int handler(void *user, const char *section, const char *name, const char *value) {
  parse_state *st = user;
  if (st->failed) return 1;
  for (size_t k = 0; k < N_KEYS; k++) {
    if (strcasecmp(KEYS[k].section, section) || strcasecmp(KEYS[k].name, name)) continue;
    int is_layers = strcmp(KEYS[k].name, "layers") == 0;
    if (st->seen[k] == 1 && !is_layers) {
      st->failed = 1;
      dpm_err(st->err, "%s: [%s] %s is given twice (or continued on an indented line)", st->where, section, name);
      return 1;
    }
    if (set_key(st, k, value)) {
      st->failed = 1;
      return 1;
    }
    st->seen[k] = 1;
    return 1;
  }
  st->failed = 1;
  int known_section = 0;
  for (size_t k = 0; k < N_KEYS; k++) known_section |= !strcasecmp(KEYS[k].section, section);
  if (!section[0])
    dpm_err(st->err, "%s: key '%s' is outside any [section]", st->where, name);
  else if (known_section)
    dpm_err(st->err, "%s: unknown key '%s' in section [%s] (dpmpi train --help-keys lists the keys)", st->where, name,
            section);
  else
    dpm_err(st->err, "%s: unknown section [%s] (key '%s'; dpmpi train --help-keys lists the keys)", st->where,
            section, name);
  return 1;
}

static char *read_file(const char *path, char err[DPM_ERRLEN]) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    dpm_err(err, "%s: cannot open job file: %s", path, strerror(errno));
    return NULL;
  }
  size_t cap = 4096, len = 0;
  char *buf = dpm_malloc(cap);
  size_t got;
  while ((got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
    len += got;
    if (cap - len - 1 == 0) buf = dpm_realloc(buf, cap *= 2);
  }
  fclose(f);
  buf[len] = '\0';
  if (len > DPM_JOB_MAX_BYTES) {
    dpm_free(buf);
    dpm_err(err, "%s: job file is %zu bytes; at most %d are accepted (is it a job file?)", path, len,
            DPM_JOB_MAX_BYTES);
    return NULL;
  }
  if (memchr(buf, '\0', len)) {
    dpm_free(buf);
    dpm_err(err, "%s: not a text file", path);
    return NULL;
  }
  return buf;
}

static void set_defaults(parse_state *st) {
  for (size_t k = 0; k < N_KEYS; k++) {
    if (KEYS[k].def && set_key(st, k, KEYS[k].def)) dpm_fatal("bad default for %s.%s", KEYS[k].section, KEYS[k].name);
  }
}

static int check_combinations(dpm_config *cfg, char err[DPM_ERRLEN]) {
  const char *f = cfg->path;
  if (!cfg->data_train) return dpm_err(err, "%s: [data] train is required (an HDF5 file from dpmpi data convert)", f);
  if (!cfg->data_test) cfg->data_test = dpm_strdup(cfg->data_train);
  if (!cfg->model_layers) return dpm_err(err, "%s: [model] layers is required", f);
  if ((cfg->epochs > 0) == (cfg->steps > 0))
    return dpm_err(err, "%s: give exactly one of [train] epochs and [train] steps", f);
  if (cfg->momentum >= 1) return dpm_err(err, "%s: [train] momentum = %g: expected a number in [0, 1)", f, cfg->momentum);
  if (cfg->aug_pad < 0) return dpm_err(err, "%s: [train] aug_pad = %lld: expected an integer >= 0", f, (long long)cfg->aug_pad);
  if (cfg->aug_multiplicity > 1 && cfg->pca_components > 0)
    return dpm_err(err, "%s: [train] aug_multiplicity = %lld: not with [pca] components (the views are crops of images, "
                   "not of projected features)", f, (long long)cfg->aug_multiplicity);
  if (cfg->aug_multiplicity > cfg->physical_batch_size)
    return dpm_err(err, "%s: [train] aug_multiplicity = %lld: expected at most physical_batch_size = %lld (an example's views "
                   "run as one micro-batch)", f, (long long)cfg->aug_multiplicity, (long long)cfg->physical_batch_size);
  if (cfg->ema_decay >= 1) return dpm_err(err, "%s: [train] ema_decay = %g: expected a number in [0, 1)", f, cfg->ema_decay);
  if (cfg->adam_beta1 >= 1) return dpm_err(err, "%s: [train] adam_beta1 = %g: expected a number in [0, 1)", f, cfg->adam_beta1);
  if (cfg->lora_rank < 0)
    return dpm_err(err, "%s: [train] lora_rank = %lld: expected an integer >= 0 (0 = no LoRA)", f, (long long)cfg->lora_rank);
  if (cfg->lora_targets && !cfg->lora_rank)
    return dpm_err(err, "%s: [train] lora_targets is set but lora_rank is 0: give lora_rank (LoRA is off)", f);
  if (cfg->adam_beta2 >= 1) return dpm_err(err, "%s: [train] adam_beta2 = %g: expected a number in [0, 1)", f, cfg->adam_beta2);
  if (cfg->privacy_enabled) {
    if (cfg->epsilon <= 0 && cfg->noise_multiplier <= 0)
      return dpm_err(err, "%s: privacy is enabled: give [privacy] epsilon (target), noise_multiplier, or both", f);
  } else { /* the non-private baseline of a DP job: its privacy parameters are ignored (the caller warns) */
    const struct { const char *name; double *v; } keys[] = {{"privacy.epsilon", &cfg->epsilon},
      {"privacy.noise_multiplier", &cfg->noise_multiplier}, {"pca.epsilon", &cfg->pca_epsilon},
      {"pca.noise_multiplier", &cfg->pca_noise_multiplier}};
    size_t len = 0;
    cfg->privacy_ignored[0] = '\0';
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
      if (*keys[k].v > 0) {
        len += (size_t)snprintf(cfg->privacy_ignored + len, sizeof cfg->privacy_ignored - len, "%s%s", len ? ", " : "",
                                keys[k].name);
        *keys[k].v = 0;
      }
    if (cfg->adaptive) { /* adaptive thresholds follow noisy counts: nothing to adapt without privacy */
      snprintf(cfg->privacy_ignored + len, sizeof cfg->privacy_ignored - len, "%sprivacy.adaptive", len ? ", " : "");
      cfg->adaptive = 0;
    }
  }
  if (cfg->adaptive && dpm_clip_automatic(cfg->clipping))
    return dpm_err(err, "%s: [privacy] adaptive = true with clipping = %s: automatic clipping has no threshold to adapt "
                        "(use flat, per-layer or per-device)", f, dpm_clipping_name(cfg->clipping));
  if (cfg->aug_multiplicity > 1 && cfg->adaptive)
    return dpm_err(err, "%s: [train] aug_multiplicity = %lld with [privacy] adaptive = true is not supported yet (the "
                        "views' clipping does not count for the thresholds): use fixed thresholds", f,
                   (long long)cfg->aug_multiplicity);
  if (cfg->aug_multiplicity > 1 && (cfg->lora_rank > 0 || (cfg->trainable && *cfg->trainable)))
    return dpm_err(err, "%s: [train] aug_multiplicity = %lld with frozen tensors (train.trainable or lora_rank) is not "
                        "supported yet", f, (long long)cfg->aug_multiplicity);
  /* ---- [pca] ---- */
  if (cfg->pca_components < 0)
    return dpm_err(err, "%s: [pca] components = %lld: expected an integer >= 0 (0 = no PCA)", f,
                   (long long)cfg->pca_components);
  if (cfg->pca_components > 0 && cfg->privacy_enabled) {
    if ((cfg->pca_noise_multiplier > 0) == (cfg->pca_epsilon > 0))
      return dpm_err(err, "%s: [pca] components = %lld: give exactly one of [pca] noise_multiplier and [pca] epsilon", f,
                     (long long)cfg->pca_components);
    if (!(cfg->pca_clip > 0))
      return dpm_err(err, "%s: [pca] components = %lld: [pca] clip (the row clipping norm of the PCA) is required", f,
                     (long long)cfg->pca_components);
    if (cfg->pca_epsilon > 0 && cfg->epsilon > 0 && !(cfg->pca_epsilon < cfg->epsilon))
      return dpm_err(err, "%s: [pca] epsilon = %g must be below [privacy] epsilon = %g (the budget of the whole run, "
                          "PCA included)", f, cfg->pca_epsilon, cfg->epsilon);
  }
  return 0;
}

int dpm_config_load(const char *path, int n_overrides, char **overrides, dpm_config *cfg, char err[DPM_ERRLEN]) {
  memset(cfg, 0, sizeof *cfg);
  cfg->path = dpm_strdup(path);
  parse_state st = {.cfg = cfg, .where = path, .err = err};
  set_defaults(&st);
  char *text = read_file(path, err);
  if (!text) return -1;
  int rc = ini_parse_string(text, handler, &st);
  if (rc != 0) { /* a syntax error is reported first: later messages may only be its consequences */
    dpm_free(text);
    return dpm_err(err, "%s:%d: syntax error (expected [section] or key = value)", path, rc);
  }
  if (st.failed) {
    dpm_free(text);
    return -1;
  }
  /* the provenance text: file, then overrides as comments-free INI lines */
  size_t cap = strlen(text) + 64;
  for (int i = 0; i < n_overrides; i++) cap += strlen(overrides[i]) + 32;
  cfg->text = dpm_malloc(cap);
  size_t len = (size_t)snprintf(cfg->text, cap, "%s\n# command-line overrides\n", text);
  dpm_free(text);

  memset(st.seen, 0, sizeof st.seen);  /* an override may replace a file value */
  st.where = "command line";
  for (int i = 0; i < n_overrides; i++) {
    const char *o = overrides[i];
    const char *dot = strchr(o, '.'), *eq = strchr(o, '=');
    if (strncmp(o, "--", 2) != 0 || !dot || !eq || dot > eq || dot == o + 2 || eq == dot + 1) {
      return dpm_err(err, "command line: '%s': expected --section.key=value", o);
    }
    char section[64], name[64];
    size_t sl = (size_t)(dot - o - 2), nl = (size_t)(eq - dot - 1);
    if (sl >= sizeof section || nl >= sizeof name) return dpm_err(err, "command line: '%s': key too long", o);
    memcpy(section, o + 2, sl);
    section[sl] = '\0';
    memcpy(name, dot + 1, nl);
    name[nl] = '\0';
    if (strcmp(name, "layers") == 0) {  /* an override replaces the whole layer list */
      dpm_free(cfg->model_layers);
      cfg->model_layers = NULL;
    }
    /* the training length is one of two keys: an override of either replaces the file's */
    if (strcmp(section, "train") == 0 && strcmp(name, "steps") == 0) cfg->epochs = 0;
    if (strcmp(section, "train") == 0 && strcmp(name, "epochs") == 0) cfg->steps = 0;
    /* the PCA noise is one of two keys too */
    if (strcmp(section, "pca") == 0 && strcmp(name, "epsilon") == 0) cfg->pca_noise_multiplier = 0;
    if (strcmp(section, "pca") == 0 && strcmp(name, "noise_multiplier") == 0) cfg->pca_epsilon = 0;
    handler(&st, section, name, eq + 1);
    if (st.failed) return -1;
    for (size_t k = 0; k < N_KEYS; k++) st.seen[k] = 0;
    len += (size_t)snprintf(cfg->text + len, cap - len, "# %s\n", o);
  }
  if (len > DPM_JOB_MAX_BYTES)
    return dpm_err(err, "%s: the job text with its overrides is %zu bytes; at most %d are accepted", path, len,
                   DPM_JOB_MAX_BYTES);
  return check_combinations(cfg, err);
}

void dpm_config_free(dpm_config *cfg) {
  dpm_free(cfg->data_train);
  dpm_free(cfg->data_test);
  dpm_free(cfg->model_layers);
  dpm_free(cfg->metrics);
  dpm_free(cfg->trainable);
  dpm_free(cfg->lora_targets);
  dpm_free(cfg->grid_stage_layers);
  dpm_free(cfg->ckpt_dir);
  dpm_free(cfg->path);
  dpm_free(cfg->text);
  memset(cfg, 0, sizeof *cfg);
}

void dpm_config_print_keys(FILE *out) {
  static const char *type_names[] = {"text", "integer", "integer >= 1", "number", "number > 0", "number >= 0",
                                     "number in (0,1)", "true|false", "", "integer"};
  const char *section = "";
  for (size_t k = 0; k < N_KEYS; k++) {
    const key_def *kd = &KEYS[k];
    if (strcmp(section, kd->section)) fprintf(out, "%s[%s]\n", k ? "\n" : "", section = kd->section);
    fprintf(out, "  %s.%s  (%s%s%s)\n      %s\n", kd->section, kd->name,
            kd->type == K_ENUM ? kd->choices : type_names[kd->type], kd->def ? ", default " : "",
            kd->def ? kd->def : "", kd->doc);
  }
}

static const char *const CLIPPING_NAMES[DPM_CLIP_COUNT] = {
    [DPM_CLIP_FLAT] = "flat", [DPM_CLIP_PER_LAYER] = "per-layer", [DPM_CLIP_PER_DEVICE] = "per-device",
    [DPM_CLIP_AUTOMATIC] = "automatic", [DPM_CLIP_AUTOMATIC_PER_LAYER] = "automatic-per-layer"};

const char *dpm_clipping_name(dpm_clipping c) {
  DPM_ASSERT((unsigned)c < DPM_CLIP_COUNT);
  return CLIPPING_NAMES[c];
}

static const char *const OPTIMIZER_NAMES[DPM_OPT_COUNT] = {[DPM_OPT_SGD] = "sgd", [DPM_OPT_ADAMW] = "adamw"};

const char *dpm_optimizer_name(dpm_optimizer_kind k) {
  DPM_ASSERT((unsigned)k < DPM_OPT_COUNT);
  return OPTIMIZER_NAMES[k];
}

int dpm_optimizer_parse(const char *name, dpm_optimizer_kind *k) {
  for (int i = 0; i < DPM_OPT_COUNT; i++)
    if (name && !strcmp(name, OPTIMIZER_NAMES[i])) return *k = (dpm_optimizer_kind)i, 0;
  return -1;
}
