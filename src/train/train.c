/* The training command: job file -> data shards -> model -> privacy parameters -> DP-SGD loop with
 * progress lines, evaluations, a JSON-lines metrics file and the privacy ledger. The trainer is in
 * train/trainer.h; its resume rules are resume.c and its reports report.c.
 *
 * Process grid (dpmpi/parallel/grid.h): D replicas x S pipeline stages. Replica r holds the contiguous shard
 * [N r / D, N (r+1) / D) of the training set; stage s holds a consecutive piece of the layers (balanced by
 * cost or as grid.stage_layers says). Per logical step t every stage of a replica draws the same Poisson
 * sample of the shard (keyed by (t, global index)) and the micro-batches flow through the pipeline
 * (dpmpi/train/step.h); each stage clips, gets its noise once per parameter and allreduces over its
 * data-parallel group; every replica applies the same update to its pieces.
 */
#include "cli/commands.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dpmpi/optim/optimizer.h"
#include "dpmpi/optim/sgd.h"
#include "dpmpi/privacy/accountant.h"
#include "dpmpi/privacy/budget.h"
#include "dpmpi/io/ckpt.h"
#include "dpmpi/core/common.h"
#include "dpmpi/io/config.h"
#include "dpmpi/io/data.h"
#include "dpmpi/io/hf_gpt2.h"
#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/parallel/grid.h"
#include "dpmpi/nn/model.h"
#include "dpmpi/parallel/pca.h"
#include "dpmpi/core/rng.h"
#include "dpmpi/train/step.h"


#include "train/trainer.h"
static const char *USAGE =
    "usage: dpmpi train JOBFILE [--section.key=value ...]\n"
    "       dpmpi train --help-keys      (every job-file key with its default and meaning)\n"
    "\n"
    "Trains the model of JOBFILE with DP-SGD (or non-privately with privacy.enabled=false), on every rank\n"
    "of the MPI job (launch with mpirun or srun). Prints progress, test accuracy and the epsilon spent\n"
    "after each evaluation; output.metrics names a JSON-lines file with the same figures.\n"
    "Overrides replace job-file values, e.g. --train.epochs=5 --privacy.epsilon=3.\n"
    "\n"
    "  --resume PATH   continue from a checkpoint file, or from the newest valid checkpoint of a directory\n"
    "  --init FILE     a new run from the weights of FILE (dpmpi model import's INIT.h5, or a dpmpi checkpoint\n"
    "                  or released model of a GPT): fresh optimizer and ledger; the layers must match FILE's\n"
    "  --resume-branch with --resume: accept a checkpoint older than the run's newest (the run journal in its\n"
    "                  directory says so); the steps run after it stay in the ledger (docs/accountant.md)\n"
    "\n"
    "Checkpoints (checkpoint.dir): every checkpoint.every steps, at the end, and on SIGTERM or SIGUSR1 (the\n"
    "signals Slurm sends before a time limit): the current step finishes, a checkpoint is written and every\n"
    "rank exits with status 75 (requeue and resume). Exit status: 0 done, 2 user error, 3 internal error,\n"
    "75 stopped by a signal after a checkpoint.\n";

static volatile sig_atomic_t stop_signal = 0;
static void on_stop_signal(int sig) { stop_signal = sig; }









/* Collective: rank 0 appends one line to the run journal and fsyncs it (nothing without a journal). */
void trainer_journal(trainer *tr, const char *fmt, ...) {
  if (!tr->journal_dir) return;
  char line[256], err[DPM_ERRLEN] = "";
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  int failed = tr->rank == 0 && dpm_journal_append(tr->journal_dir, tr->run_id, line, err) != 0;
  dpm_exit_if_error(tr->comm, failed, err);
}

static void setup_privacy(trainer *tr) {
  dpm_config *cfg = &tr->cfg;
  char err[DPM_ERRLEN] = "";
  int failed = 0;
  tr->dp = cfg->privacy_enabled;
  tr->acct = cfg->accountant;
  tr->ledger = dpm_ledger_create();
  /* ---- DP-PCA: its Gaussian release is the ledger's first event; training is calibrated after it ---- */
  if (tr->pca_k > 0) {
    failed = dpm_pca_sigma(cfg, &tr->pca_sigma, err) != 0;
    dpm_exit_if_error(tr->comm, failed, err);
    if (tr->dp) {
      dpm_ledger_add_gaussian(tr->ledger, tr->pca_sigma, 1);
      double e_pca = trainer_epsilon_now(tr);
      if (cfg->epsilon > 0 && !(e_pca < cfg->epsilon))
        failed = 1, dpm_err(err, "%s: the PCA release alone spends epsilon %g of the budget [privacy] epsilon = %g "
                            "(raise [pca] noise_multiplier)", cfg->path, e_pca, cfg->epsilon);
      dpm_exit_if_error(tr->comm, failed, err);
    }
  }
  /* ---- */
  if (!tr->dp) return;
  int64_t allowed = tr->steps;
  char inner[DPM_ERRLEN];
  failed = dpm_budget_plan(tr->ledger, tr->q, tr->steps, cfg->noise_multiplier, cfg->epsilon, cfg->delta, tr->acct,
                           &tr->sigma, &allowed, inner) != 0;
  if (failed) dpm_err(err, "%s: %s", cfg->path, inner);
  if (!failed && allowed < tr->steps) {
    if (tr->rank == 0)
      printf("note: the budget epsilon = %g allows %lld of the %lld steps; training stops there\n", cfg->epsilon,
             (long long)allowed, (long long)tr->steps);
    tr->steps = allowed;
  }
  dpm_exit_if_error(tr->comm, failed, err);
}

static void setup_keys(trainer *tr) {
  if (tr->cfg.has_seed) {
    tr->init_key = dpm_key_from_seed(tr->cfg.seed, DPM_STREAM_INIT);
    tr->sample_key = dpm_key_from_seed(tr->cfg.seed, DPM_STREAM_SAMPLE);
    tr->noise_key = dpm_key_from_seed(tr->cfg.seed, DPM_STREAM_NOISE);
    return;
  }
  /* secure mode: keys from rank 0's CSPRNG, shared in memory only, never written */
  dpm_key keys[3];
  if (tr->rank == 0)
    for (int k = 0; k < 3; k++) keys[k] = dpm_key_secure();
  DPM_MPI_CHECK(MPI_Bcast(keys, (int)sizeof keys, MPI_BYTE, 0, tr->comm));
  tr->init_key = keys[0];
  tr->sample_key = keys[1];
  tr->noise_key = keys[2];
  memset(keys, 0, sizeof keys);
}







static dpm_ckpt_model ckpt_model(trainer *tr) {
  dpm_ckpt_model cm = {.n_layers = tr->n_layers, .info = tr->info, .first = tr->first, .last = tr->last,
                       .writer = tr->grid.replica == 0, .params = dpm_model_params(tr->model),
                       .n_state = dpm_optimizer_num_state(tr->opt)};
  _Static_assert(DPM_OPTIMIZER_MAX_STATE <= DPM_CKPT_MAX_STATE, "checkpoints hold every optimizer's state buffers");
  for (int k = 0; k < cm.n_state; k++) cm.state[k] = dpm_optimizer_state(tr->opt, k, &cm.state_group[k]);
  cm.frozen = tr->frozen; /* frozen tensors have no optimizer state in the file */
  if (tr->ppack) { /* the packed state in the slab's layout (frozen entries 0, not written) */
    const size_t P = dpm_model_num_params(tr->model);
    for (int k = 0; k < cm.n_state; k++) {
      if (!tr->state_full[k]) tr->state_full[k] = dpm_malloc_aligned(sizeof(float) * (P ? P : 1));
      memset(tr->state_full[k], 0, sizeof(float) * P);
      dpm_trainable_unpack(&tr->trainable, tr->state_full[k], cm.state[k]);
      cm.state[k] = tr->state_full[k];
    }
  }
  if (tr->ema) cm.state[cm.n_state] = tr->ema, cm.state_group[cm.n_state++] = "/ema"; /* after the optimizer's */
  return cm;
}

/* The seeded ranges of the model at `step`: the history's, and [start, step) if this segment is seeded
 * (merged with a range ending at start). Fills tr->seeded_out; returns the count. */
int trainer_seeded_ranges(trainer *tr, int64_t step) {
  int n = tr->n_seeded;
  int64_t *r = tr->seeded_out;
  if (n > 0) memcpy(r, tr->seeded, sizeof(int64_t) * 2 * (size_t)n);
  if (tr->cfg.has_seed && step > tr->start) {
    if (n > 0 && r[2 * n - 1] == tr->start) r[2 * n - 1] = step;
    else r[2 * n] = tr->start, r[2 * n + 1] = step, n++;
  }
  return n;
}

static dpm_ckpt_meta ckpt_meta(trainer *tr, int64_t step) {
  dpm_config *cfg = &tr->cfg;
  const int n_seeded = trainer_seeded_ranges(tr, step);
  dpm_ckpt_meta meta = {.step = step, .steps_total = tr->steps, .n_train = tr->N, .q = tr->q, .sigma = tr->sigma,
                        .clip = cfg->clip, .delta = cfg->delta, .privacy = tr->dp, .clipping = cfg->clipping,
                        .accountant = tr->acct, .optimizer = cfg->optimizer,
                        .optimizer_steps = dpm_optimizer_steps(tr->opt), .replicas = tr->grid.replicas,
                        .stages = tr->grid.stages,
                        .reproducible = n_seeded > 0, .seed = cfg->has_seed ? cfg->seed : tr->seed_last,
                        .job = cfg->text,
                        .layers = cfg->model_layers, .init_from = tr->init_from, .pca_components = tr->pca_k, .pca_dim = tr->pca_d,
                        .pca_sigma = tr->dp ? tr->pca_sigma : 0, .pca_clip = cfg->pca_clip, .pca_projection = tr->pca_V,
                        .epsilon = tr->dp ? cfg->epsilon : 0, .data_digest = tr->data_digest,
                        .steps_abandoned = tr->abandoned, .n_seeded = n_seeded, .seeded_steps = tr->seeded_out};
  snprintf(meta.run_id, sizeof meta.run_id, "%s", tr->run_id);
  if (n_seeded == 0) meta.seed = 0;
  meta.stats_printed = tr->stats_printed;
  meta.auto_gamma = cfg->auto_gamma;
  if (tr->dp && cfg->adaptive) { /* the thresholds the next step applies (post-processing of the releases) */
    meta.adaptive = 1;
    meta.n_thresholds = tr->step.n_thr;
    meta.thresholds = tr->step.thr;
    meta.target_quantile = cfg->target_quantile, meta.adaptive_lr = cfg->adaptive_lr;
    meta.count_noise_fraction = cfg->count_noise_fraction;
  }
  return meta;
}

/* Write DIR/ckpt-STEP.h5 and keep the newest checkpoint.keep of the directory. */
void trainer_write_checkpoint(trainer *tr, int64_t step) {
  dpm_config *cfg = &tr->cfg;
  char path[4096], err[DPM_ERRLEN] = "";
  dpm_ckpt_name(cfg->ckpt_dir, step, path, sizeof path);
  dpm_ckpt_model cm = ckpt_model(tr);
  dpm_ckpt_meta meta = ckpt_meta(tr, step);
  double t0 = dpm_time();
  int failed = dpm_ckpt_write(tr->comm, path, &cm, tr->ledger, &meta, err) != 0;
  dpm_exit_if_error(tr->comm, failed, err);
  trainer_journal(tr, "ckpt %lld %lld", (long long)step, (long long)dpm_journal_ledger_steps(tr->ledger));
  tr->ckpt_last = step;
  if (tr->rank != 0) return;
  printf("checkpoint: %s (step %lld, %.2f s)\n", path, (long long)step, dpm_time() - t0);
  fflush(stdout);
  char **list;
  int n = dpm_ckpt_list(cfg->ckpt_dir, &list, err);
  for (int i = 0; i < n; i++) {
    if (i >= cfg->ckpt_keep) unlink(list[i]);
    dpm_free(list[i]);
  }
  if (n >= 0) dpm_free(list);
}





static loop_state loop_begin(trainer *tr) {
  const dpm_config *cfg = &tr->cfg;
  loop_state ls = {.total_epochs = tr->steps / tr->steps_per_epoch};
  ls.log_every = cfg->log_every > 0 ? cfg->log_every : (int64_t)ceil(tr->steps_per_epoch / 10);
  if (ls.log_every < 1) ls.log_every = 1;
  ls.eval_every = (int64_t)llround(cfg->eval_every_epochs * tr->steps_per_epoch);
  if (ls.eval_every < 1) ls.eval_every = 1;
  ls.t_start = dpm_time();
  return ls;
}

/* Collective: the journal first records the block of steps from t to the next progress line or checkpoint,
 * so a crash inside the block still counts all of it. */
static void announce_block(trainer *tr, int64_t t, int64_t log_every) {
  int64_t to = (t / log_every + 1) * log_every, every = tr->cfg.ckpt_every;
  if (every > 0 && (t / every + 1) * every < to) to = (t / every + 1) * every;
  if (to > tr->steps) to = tr->steps;
  trainer_journal(tr, "run %lld %lld %lld", (long long)t, (long long)to,
          (long long)(dpm_journal_ledger_steps(tr->ledger) + to - t));
  tr->announced = to;
}

static void add_stats(loop_state *ls, const dpm_step_stats *s) {
  ls->examples_total += s->examples;
  ls->win.loss += s->loss, ls->win.examples += s->examples, ls->win.correct += s->correct;
  ls->win.clipped += s->clipped;
  ls->win.tokens += s->tokens, ls->win.token_loss += s->token_loss;
}

/* The throughput of the progress and evaluation lines: of the realized batches with output.private_stats,
 * else of the expected batch q*N. */
static double throughput(const trainer *tr, const loop_state *ls, int64_t done) {
  return tr->cfg.private_stats ? ls->examples_total / ls->t_train : trainer_expected_per_s(tr, done, ls->t_train);
}



/* 1 if every value is finite: no exponent field of all ones (Inf, NaN); branch-free, vectorizes. */
static int all_finite(const float *p, size_t n) {
  uint32_t bad = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t b;
    memcpy(&b, p + i, sizeof b);
    bad |= (b & 0x7f800000u) == 0x7f800000u;
  }
  return !bad;
}

enum { DIVERGED_PARAMS = 1, DIVERGED_LOSS = 2, DIVERGED_TEST_LOSS = 4 };

/* Collective divergence check after step `done` (docs/design.md, "Divergence"): the parameters after the
 * update (every rank its stage's slab: post-processing of the noisy releases), the batch's training loss
 * when it is printed anyway (output.private_stats, or a non-private run: it is a noiseless function of the
 * private batch, so a DP-safe run does not look at it) and, after an evaluation (evaluated = 1), the test
 * loss (printed anyway). Non-finite: one error naming the step and what, every rank exits 2, and nothing is
 * written of this state (the caller checks before its checkpoint). */
static void check_diverged(trainer *tr, int64_t done, double loss, int evaluated, double test_loss) {
  const dpm_config *cfg = &tr->cfg;
  int what = all_finite(dpm_model_params(tr->model), dpm_model_num_params(tr->model)) ? 0 : DIVERGED_PARAMS;
  if ((!tr->dp || cfg->private_stats) && !isfinite(loss)) what |= DIVERGED_LOSS;
  if (evaluated && !isfinite(test_loss)) what |= DIVERGED_TEST_LOSS;
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &what, 1, MPI_INT, MPI_BOR, tr->comm));
  if (!what) return;
  char err[DPM_ERRLEN], saved[4200];
  if (!cfg->ckpt_dir)
    snprintf(saved, sizeof saved, "nothing is saved (no checkpoint.dir)");
  else if (tr->ckpt_last >= 0)
    snprintf(saved, sizeof saved, "the last good checkpoint is step %lld in %s; nothing is written of this state",
             (long long)tr->ckpt_last, cfg->ckpt_dir);
  else
    snprintf(saved, sizeof saved, "no checkpoint was written yet; nothing is written of this state");
  dpm_err(err, "training diverged at step %lld: %s%s%s%s%s%s not finite (NaN or Inf): train.lr = %g too large, or "
          "non-finite data; %s", (long long)done, what & DIVERGED_PARAMS ? "the parameters after the update" : "",
          (what & DIVERGED_PARAMS) && (what & (DIVERGED_LOSS | DIVERGED_TEST_LOSS)) ? " and " : "",
          what & DIVERGED_LOSS ? "the training loss of the batch" : "",
          (what & DIVERGED_LOSS) && (what & DIVERGED_TEST_LOSS) ? " and " : "",
          what & DIVERGED_TEST_LOSS ? "the test loss" : "", (what & DIVERGED_PARAMS) || (what & (what - 1)) ? " are" : " is", cfg->lr, saved);
  dpm_exit_if_error(tr->comm, 1, err);
}

/* Collective: the signal any rank received (SIGTERM, SIGUSR1), 0 if none. */
static int stop_requested(trainer *tr) {
  int stop = stop_signal;
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &stop, 1, MPI_INT, MPI_MAX, tr->comm));
  return stop;
}





/* ema = d ema + (1 - d) params after every update (train.ema_decay): post-processing of the released updates. */
static void trainer_ema_update(float *ema, const float *params, size_t n, double decay) {
  const float d = (float)decay, e = (float)(1.0 - decay);
  for (size_t k = 0; k < n; k++) ema[k] = d * ema[k] + e * params[k];
}

/* Steps tr->start .. tr->steps: each step's sample, forward/backward, clipping, noise and allreduce
 * (dpm_step_run), the update, the accounting, then progress, evaluation and checkpoint as they fall due.
 * Returns 0 when the run is complete, or DPM_EXIT_SIGNALLED after SIGTERM or SIGUSR1 (the step in progress
 * finished, then a checkpoint if checkpoint.dir is set); the process goes on either way. */
static int train_loop(trainer *tr) {
  const dpm_config *cfg = &tr->cfg;
  dpm_model *m = tr->model;
  loop_state ls = loop_begin(tr);
  tr->announced = tr->start;
  for (int64_t t = tr->start; t < tr->steps; t++) {
    if (t == tr->announced) announce_block(tr, t, ls.log_every);
    double t0 = dpm_time();
    dpm_step_stats stats;
    double lr = dpm_lr_at(cfg, (double)t / tr->steps_per_epoch, ls.total_epochs);
    dpm_step_run(&tr->step, (uint64_t)t, &stats); /* the noisy sum of clipped gradients (the plain sum without DP) */
    /* DP: divide by the expected batch size q*N (never the realized one); baseline: the realized batch */
    double scale = tr->dp ? dpm_update_scale(tr->q, tr->N) : 1.0 / (stats.examples > 0 ? stats.examples : 1.0);
    if (tr->ppack) { /* fine-tuning: the optimizer sees the trainable parameters only; frozen ones keep their bits */
      dpm_trainable_pack(&tr->trainable, tr->ppack, dpm_model_params(m));
      dpm_optimizer_step(tr->opt, tr->ppack, tr->step.gpack, scale, lr);
      dpm_trainable_unpack(&tr->trainable, dpm_model_params(m), tr->ppack);
    } else {
      dpm_optimizer_step(tr->opt, dpm_model_params(m), dpm_model_grads(m), scale, lr); /* post-processing */
    }
    if (tr->ema) trainer_ema_update(tr->ema, dpm_model_params(m), dpm_model_num_params(m), cfg->ema_decay);
    if (tr->dp) dpm_ledger_add_sgm(tr->ledger, tr->q, tr->sigma, 1);
    ls.t_train += dpm_time() - t0;
    add_stats(&ls, &stats);

    const int64_t done = t + 1;
    if (done % ls.log_every == 0 || done == tr->steps) trainer_report_progress(tr, &ls, done, lr);
    const int evaluated = done % ls.eval_every == 0 || done == tr->steps;
    double test_loss = 0;
    if (evaluated) {
      test_loss = trainer_report_eval(tr, done, (double)done / tr->steps_per_epoch, throughput(tr, &ls, done));
      DPM_MPI_CHECK(MPI_Bcast(&test_loss, 1, MPI_DOUBLE, 0, tr->comm)); /* the same on every rank */
    }
    check_diverged(tr, done, stats.loss, evaluated, test_loss); /* before any checkpoint of this state */
    const int stop = stop_requested(tr);
    if (cfg->ckpt_dir && (done == tr->steps || stop || (cfg->ckpt_every > 0 && done % cfg->ckpt_every == 0)))
      trainer_write_checkpoint(tr, done);
    if (stop) {
      trainer_report_stop(tr, stop, done);
      return DPM_EXIT_SIGNALLED;
    }
  }
  trainer_report_done(tr, &ls);
  return 0;
}

/* ---- memory check (issue 18): refuse before allocating what cannot fit ---------------------------------- */

/* A number from a text file: the first field after `key` (NULL: the file's first field); -1 if absent or
 * not a number ("max" in a cgroup file). */
static double read_number(const char *path, const char *key) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char line[512];
  double v = -1;
  while (fgets(line, sizeof line, f)) {
    const char *p = line;
    if (key) {
      if (strncmp(line, key, strlen(key))) continue;
      p += strlen(key);
    }
    char *end;
    double x = strtod(p, &end);
    if (end != p) v = x;
    break;
  }
  fclose(f);
  return v;
}

/* Bytes the node still has for this job (MemAvailable, and the cgroup's memory.max - memory.current when
 * set) and this process may still map (RLIMIT_AS - VmSize when set); -1: no limit known. `what` names the
 * tighter node figure. */
static void memory_room(double *node, double *proc, const char **what) {
  *node = read_number("/proc/meminfo", "MemAvailable:");
  if (*node >= 0) *node *= 1024;
  *what = "MemAvailable in /proc/meminfo";
  char line[4096] = "", path[4200];
  FILE *f = fopen("/proc/self/cgroup", "r");
  if (f) {
    while (fgets(line, sizeof line, f) && strncmp(line, "0::", 3)) line[0] = '\0';
    fclose(f);
  }
  line[strcspn(line, "\n")] = '\0';
  if (!strncmp(line, "0::", 3)) {
    snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.max", line + 3);
    const double max = read_number(path, NULL);
    snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.current", line + 3);
    const double cur = read_number(path, NULL);
    if (max > 0 && cur >= 0 && (*node < 0 || max - cur < *node)) *node = max - cur, *what = "the cgroup's memory.max";
  }
  *proc = -1;
  struct rlimit rl;
  if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    const double vm = read_number("/proc/self/status", "VmSize:");
    *proc = (double)rl.rlim_cur - (vm > 0 ? vm * 1024 : 0);
  }
}

/* Collective: refuse (status 2 on every rank, one line) when the bytes this rank is about to hold cannot fit:
 * the ranks of a node share its memory; a process also has its own address-space limit. */
static void check_memory(trainer *tr, const char *what, double bytes, const char *parts) {
  MPI_Comm node;
  DPM_MPI_CHECK(MPI_Comm_split_type(tr->comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  double sum = bytes;
  int local = 1;
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &sum, 1, MPI_DOUBLE, MPI_SUM, node));
  DPM_MPI_CHECK(MPI_Comm_size(node, &local));
  DPM_MPI_CHECK(MPI_Comm_free(&node));
  double room, proc;
  const char *src;
  memory_room(&room, &proc, &src);
  char err[DPM_ERRLEN] = "";
  const double G = 1e9;
  int failed = 0;
  if (room >= 0 && sum > room)
    failed = 1, dpm_err(err, "%s: %s need an estimated %.3g GB per rank (%s), %.3g GB for the %d rank%s on this node; "
                        "available: %.3g GB (%s)", tr->cfg.path, what, bytes / G, parts, sum / G, local,
                        local > 1 ? "s" : "", room / G, src);
  else if (proc >= 0 && bytes > proc)
    failed = 1, dpm_err(err, "%s: %s need an estimated %.3g GB per rank (%s); available: %.3g GB (the address-space "
                        "limit, ulimit -v)", tr->cfg.path, what, bytes / G, parts, proc / G);
  dpm_exit_if_error(tr->comm, failed, err);
}

/* Collective: the memory check of this rank's stage (layers specs[0..n) on inputs C x H x W) at
 * physical_batch_size, its optimizer state and data shards, with the whole model's build (full_bytes). */
static void stage_memory_check(trainer *tr, const dpm_layer_spec *specs, int n, int C, int H, int W, int classes,
                               double full_bytes) {
  const dpm_config *cfg = &tr->cfg;
  char err[DPM_ERRLEN] = "", inner[DPM_ERRLEN], parts[512];
  size_t np = 0, arena = 0;
  int failed = dpm_model_estimate(specs, n, C, H, W, classes, (int)cfg->physical_batch_size, &np, &arena, inner) != 0;
  if (failed) dpm_err(err, "%s: [model] layers (stage %d): %s", cfg->path, tr->grid.stage, inner);
  dpm_exit_if_error(tr->comm, failed, err);
  const double F = sizeof(float), n_state = cfg->optimizer == DPM_OPT_ADAMW ? 2 : 1;
  const double pg = 2 * F * (double)np, st = n_state * F * (double)np;
  snprintf(parts, sizeof parts, "parameters and gradients %.3g GB, optimizer state %.3g GB, activations and kept "
           "per-example rows for micro-batches of %lld %.3g GB, data shards %.3g GB, the whole model's build %.3g GB",
           pg / 1e9, st / 1e9, (long long)cfg->physical_batch_size, (double)arena / 1e9, tr->data_bytes / 1e9,
           full_bytes / 1e9);
  check_memory(tr, "the model and batch buffers", pg + st + (double)arena + tr->data_bytes + full_bytes, parts);
}

/* train.trainable and LoRA: the frozen tensors of every layer (the same on every rank: the patterns are matched
 * against the whole model's names), set on this stage's model, and the stage's trainable runs. */
static void setup_trainable(trainer *tr) {
  dpm_config *cfg = &tr->cfg;
  if (!cfg->trainable && !tr->lora) return;
  char err[DPM_ERRLEN] = "", inner[DPM_ERRLEN];
  tr->frozen = dpm_malloc(sizeof(uint32_t) * (size_t)tr->n_layers);
  int failed = dpm_trainable_match(cfg->trainable, tr->lora ? "*.lora_*" : NULL, tr->info, tr->n_layers,
                                   tr->frozen, inner) != 0;
  if (failed) dpm_err(err, "%s: [train] trainable: %s", cfg->path, inner);
  for (int i = 0; i < tr->n_layers && !failed; i++) {
    const int local = i >= tr->first && i < tr->last;
    if (local && dpm_model_set_frozen(tr->model, i - tr->first, tr->frozen[i])) {
      failed = 1;
      dpm_err(err, "%s: [train] trainable: layer %d (%s) freezes only whole: the patterns select part of its "
              "tensors", cfg->path, i + 1, tr->info[i].tensors[0].name);
    }
  }
  dpm_exit_if_error(tr->comm, failed, err);
  /* adaptive thresholds count every group and stage, frozen ones too: not combined with a frozen set yet */
  int frozen_any = 0;
  for (int i = 0; i < tr->n_layers; i++) frozen_any |= tr->frozen[i] != 0;
  failed = tr->dp && cfg->adaptive && frozen_any;
  if (failed)
    dpm_err(err, "%s: [privacy] adaptive = true with frozen tensors (train.trainable or LoRA) is not supported yet: "
            "use fixed thresholds (privacy.adaptive = false) for fine-tuning", cfg->path);
  dpm_exit_if_error(tr->comm, failed, err);
  tr->has_trainable = 1;
  dpm_trainable_init(&tr->trainable, tr->info, tr->first, tr->last, tr->frozen);
  if (!dpm_trainable_all(&tr->trainable))
    tr->ppack = dpm_malloc_aligned(sizeof(float) * (tr->trainable.total ? tr->trainable.total : 1));
}

/* The whole model is built once (small batch) to check shapes and cost its layers; this rank keeps its
 * stage's layers only. Each build is preceded by the memory check of what it allocates. */
/* 1 if the layer list is a GPT (starts with an embed layer); a list that does not parse is not (build_model
 * reports it). */
static int model_is_gpt(const char *layers) {
  dpm_layer_spec *specs = NULL;
  int n = 0, gpt = 0;
  char err[DPM_ERRLEN];
  if (layers && dpm_model_parse(layers, &specs, &n, err) == 0) gpt = specs[0].kind == DPM_LAYER_EMBED;
  dpm_free(specs);
  return gpt;
}

/* Token rows (T + 1 ids) as the model's inputs and labels: x = the first T ids as floats (exact), y = the
 * last T (next-token targets). tok stays (the digest). */
static void token_view(dpm_dataset *d) {
  const int64_t n = d->tok ? d->end - d->begin : 0;
  const size_t T = (size_t)d->T;
  d->x = dpm_malloc_aligned(sizeof(float) * (size_t)(n ? n : 1) * T);
  d->y = dpm_malloc(sizeof(int32_t) * (size_t)(n ? n : 1) * T);
  for (int64_t i = 0; i < n; i++)
    for (size_t t = 0; t < T; t++) {
      d->x[(size_t)i * T + t] = (float)d->tok[(size_t)i * (T + 1) + t];
      d->y[(size_t)i * T + t] = d->tok[(size_t)i * (T + 1) + t + 1];
    }
}

static void build_model(trainer *tr, const dpm_dataset *hdr) {
  dpm_config *cfg = &tr->cfg;
  char err[DPM_ERRLEN] = "", inner[DPM_ERRLEN];
  int failed = 0, n = 0, S = tr->grid.stages, stage = tr->grid.stage;
  dpm_layer_spec *specs = NULL;
  dpm_model *full = NULL;
  int *first = dpm_malloc(sizeof(int) * (size_t)(S + 1));
  size_t np_full = 0, arena_full = 0;
  if (dpm_model_parse(cfg->model_layers, &specs, &n, inner) ||
      dpm_model_estimate(specs, n, hdr->C, hdr->H, hdr->W, hdr->num_classes, 1, &np_full, &arena_full, inner))
    failed = 1, dpm_err(err, "%s: [model] layers: %s", cfg->path, inner);
  dpm_exit_if_error(tr->comm, failed, err);
  /* the whole model at batch 1 lives on every rank while this rank's stage is built: one stage, the peak is
   * known now; on a pipeline the whole model first, then (after the split) the stage with it */
  const double full_bytes = 2.0 * sizeof(float) * (double)np_full + (double)arena_full;
  if (S == 1) {
    stage_memory_check(tr, specs, n, hdr->C, hdr->H, hdr->W, hdr->num_classes, full_bytes);
  } else {
    char parts[160];
    snprintf(parts, sizeof parts, "the whole model's parameters and gradients, built once on every rank");
    check_memory(tr, "[model] layers", full_bytes, parts);
  }
  if (!(full = dpm_model_create(specs, n, hdr->C, hdr->H, hdr->W, hdr->num_classes, 1, inner))) {
    failed = 1, dpm_err(err, "%s: [model] layers: %s", cfg->path, inner);
  } else if (dpm_grid_split_layers(full, n, S, cfg->grid_stage_layers, first, inner)) {
    failed = 1, dpm_err(err, "%s: %s", cfg->path, inner);
  } else if (cfg->aug_multiplicity > 1 && (S > 1 || tr->tokens || hdr->H < 2 || hdr->W < 2)) {
    failed = 1, dpm_err(err, "%s: [train] aug_multiplicity = %lld: needs image data (the data is %dx%dx%d%s) and one "
                        "pipeline stage (the grid has %d)", cfg->path, (long long)cfg->aug_multiplicity, hdr->C, hdr->H,
                        hdr->W, tr->tokens ? " tokens" : "", S);
  }
  dpm_exit_if_error(tr->comm, failed, err);
  /* header text: the whole model, then the stages */
  size_t len = 4096 + (size_t)n * 128 + (size_t)S * 96, used = 0;
  tr->model_desc = dpm_malloc(len);
  dpm_model_describe(full, tr->model_desc, len);
  tr->total_params = dpm_model_num_params(full);
  dpm_layer_info info;
  used = strlen(tr->model_desc);
  for (int st = 0; st < S && S > 1; st++) {
    size_t p = 0;
    for (int i = first[st]; i < first[st + 1]; i++) dpm_model_layer_info(full, i, &info), p += info.params;
    used += (size_t)snprintf(tr->model_desc + used, len - used, "stage %d: layers %d-%d, %zu params\n", st,
                             first[st] + 1, first[st + 1], p);
  }
  tr->n_layers = n;
  tr->first = first[stage], tr->last = first[stage + 1];
  tr->info = dpm_malloc(sizeof *tr->info * (size_t)n);
  for (int i = 0; i < n; i++) dpm_model_layer_info(full, i, &tr->info[i]);
  if (S > 1) {
    int C = hdr->C, H = hdr->H, W = hdr->W;
    if (first[stage] > 0) C = tr->info[first[stage] - 1].C, H = tr->info[first[stage] - 1].H, W = tr->info[first[stage] - 1].W;
    stage_memory_check(tr, specs + first[stage], first[stage + 1] - first[stage], C, H, W,
                       stage == S - 1 ? hdr->num_classes : 0, full_bytes);
  }
  tr->model = dpm_grid_stage_model(full, specs, first, stage, S, hdr->C, hdr->H, hdr->W, hdr->num_classes,
                                   (int)cfg->physical_batch_size, inner);
  failed = tr->model == NULL;
  if (tr->model && tr->tokens) dpm_model_set_pad_id(tr->model, hdr->pad_id);
  if (failed) dpm_err(err, "%s: [model] layers (stage %d): %s", cfg->path, stage, inner);
  dpm_exit_if_error(tr->comm, failed, err);
  dpm_model_free(full);
  dpm_free(specs);
  dpm_free(first);
  setup_trainable(tr);
}

/* Replica r's shard of a split; the first stage reads the inputs, the last the labels (both read both:
 * one read, simpler files), the stages between read nothing and keep only the shard's range. */
static void load_shard(trainer *tr, const char *path, const char *group, int64_t n, dpm_dataset *d) {
  const dpm_grid *g = &tr->grid;
  int64_t b = n * g->replica / g->replicas, e = n * (g->replica + 1) / g->replicas;
  int reads = g->stage == 0 || g->stage == g->stages - 1;
  char err[DPM_ERRLEN] = "";
  int failed = dpm_dataset_load(tr->comm, path, group, reads ? b : 0, reads ? e : 0, d, err) != 0;
  dpm_exit_if_error(tr->comm, failed, err);
  d->begin = b, d->end = e;
}









/* DP-PCA (src/parallel/pca.c): fit the projection on the training shards (unless it came from the checkpoint)
 * and project both splits. Stage 0 of each replica contributes its shard's rows once; the eigensolver
 * runs on every rank; the noise key is rank 0's alone (never shared or stored). */
static void run_pca(trainer *tr) {
  dpm_config *cfg = &tr->cfg;
  const int d = tr->pca_d, k = tr->pca_k, S = tr->grid.stages, stage = tr->grid.stage;
  const int reads = stage == 0 || stage == S - 1; /* the stages that loaded rows (load_shard) */
  const int64_t rows = reads ? tr->train.end - tr->train.begin : 0, trows = reads ? tr->test.end - tr->test.begin : 0;
  if (!tr->pca_V) {
    tr->pca_V = dpm_malloc(sizeof(float) * (size_t)d * (size_t)k);
    dpm_pca_params p = {.components = k, .clip = cfg->pca_clip, .sigma = tr->dp ? tr->pca_sigma : 0};
    dpm_key key;
    memset(&key, 0, sizeof key);
    if (tr->rank == 0 && tr->dp) key = cfg->has_seed ? dpm_key_from_seed(cfg->seed, DPM_STREAM_PCA) : dpm_key_secure();
    char err[DPM_ERRLEN] = "";
    int failed = dpm_pca_fit(tr->comm, tr->train.x, stage == 0 ? rows : 0, d, &p, &key, tr->pca_V, NULL, &tr->pca_st,
                             err) != 0;
    memset(&key, 0, sizeof key);
    dpm_exit_if_error(tr->comm, failed, err);
  }
  double t0 = dpm_time();
  dpm_pca_apply(&tr->train, rows, tr->pca_V, d, k);
  dpm_pca_apply(&tr->test, trows, tr->pca_V, d, k);
  tr->pca_st.t_proj = dpm_time() - t0;
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &tr->pca_st.t_proj, 1, MPI_DOUBLE, MPI_MAX, tr->comm));
}

/* The command line. */
typedef struct {
  const char *job;     /* JOBFILE */
  const char *resume;  /* --resume PATH, or NULL: a new run */
  const char *init;    /* --init FILE, or NULL: random initialization */
  int resume_branch;   /* --resume-branch */
  int n_over;
  char **over;         /* the --section.key=value overrides (owned) */
} train_args;

/* Returns 1 when --help or --help-keys was printed (nothing more to do), else 0; a mistake is a collective
 * user error. */
static int parse_args(trainer *tr, int argc, char **argv, train_args *a) {
  char err[DPM_ERRLEN] = "";
  int failed = 0;
  memset(a, 0, sizeof *a);
  a->over = dpm_malloc(sizeof(char *) * (size_t)(argc + 1));
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      if (tr->rank == 0) fputs(USAGE, stdout);
      return 1;
    }
    if (!strcmp(argv[i], "--help-keys")) {
      if (tr->rank == 0) dpm_config_print_keys(stdout);
      return 1;
    }
    if (!strcmp(argv[i], "--resume")) {
      if (i + 1 < argc) a->resume = argv[++i];
      else if (!failed) failed = 1, dpm_err(err, "train: --resume needs a checkpoint file or directory");
      continue;
    }
    if (!strncmp(argv[i], "--resume=", 9)) {
      a->resume = argv[i] + 9;
      continue;
    }
    if (!strcmp(argv[i], "--init")) {
      if (i + 1 < argc) a->init = argv[++i];
      else if (!failed) failed = 1, dpm_err(err, "train: --init needs an initial-weights file (dpmpi model import --out)");
      continue;
    }
    if (!strncmp(argv[i], "--init=", 7)) {
      a->init = argv[i] + 7;
      continue;
    }
    if (!strcmp(argv[i], "--resume-branch")) {
      a->resume_branch = 1;
      continue;
    }
    if (!strncmp(argv[i], "--", 2)) a->over[a->n_over++] = argv[i];
    else if (!a->job) a->job = argv[i];
    else if (!failed) failed = 1, dpm_err(err, "train: unexpected argument '%s' (one job file, then --section.key=value)", argv[i]);
  }
  if (!a->job && !failed) failed = 1, dpm_err(err, "train: no job file given (usage: dpmpi train JOBFILE [--section.key=value ...])");
  if (a->init && a->resume && !failed)
    failed = 1, dpm_err(err, "train: --init %s with --resume %s: --init starts a new run, --resume continues one "
                        "(its checkpoint holds the weights)", a->init, a->resume);
  if (a->resume_branch && !a->resume && !failed) failed = 1, dpm_err(err, "train: --resume-branch needs --resume PATH");
  dpm_exit_if_error(tr->comm, failed, err);
  return 0;
}

/* train.lora_rank: every block of cfg->model_layers gets " lora=R lora_alpha=A lora_targets=M" (the layer list
 * checkpoints record, so every reader builds the adapted model). Returns 0, or -1 with err. */
static int add_lora_keys(dpm_config *cfg, char *err) {
  static const char *const names[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
  int mask = 0;
  if (!cfg->lora_targets) mask = 15;
  for (const char *p = cfg->lora_targets; p && *p;) {
    while (*p == ',' || *p == ' ' || *p == '\t') p++;
    const size_t n = strcspn(p, ", \t");
    if (!n) break;
    int k = 0;
    while (k < 4 && !(strlen(names[k]) == n && !strncmp(p, names[k], n))) k++;
    if (k == 4)
      return dpm_err(err, "%s: [train] lora_targets: '%.*s' is not a block linear (expected attn.c_attn, attn.c_proj, "
                     "mlp.c_fc or mlp.c_proj)", cfg->path, (int)n, p);
    mask |= 1 << k;
    p += n;
  }
  char add[96];
  snprintf(add, sizeof add, " lora=%lld lora_alpha=%lld lora_targets=%d", (long long)cfg->lora_rank,
           (long long)cfg->lora_alpha, mask);
  const char *t = cfg->model_layers;
  size_t cap = strlen(t) * 2 + 1, used = 0;
  for (const char *q = t; *q; q++) cap += (*q == ';' || *q == '\n') ? sizeof add : 0;
  char *out = dpm_malloc(cap + sizeof add);
  for (const char *q = t;;) { /* one layer: up to ';', newline or the end */
    const size_t n = strcspn(q, ";\n");
    const char *w = q;
    while (w < q + n && (*w == ' ' || *w == '\t')) w++;
    const int block = (size_t)(q + n - w) >= 5 && !strncmp(w, "block", 5) && (w + 5 == q + n || w[5] == ' ' || w[5] == '\t');
    size_t e = n;
    while (e > 0 && (q[e - 1] == ' ' || q[e - 1] == '\t' || q[e - 1] == '\r')) e--;
    memcpy(out + used, q, e), used += e;
    if (block) memcpy(out + used, add, strlen(add)), used += strlen(add);
    if (!q[n]) break;
    out[used++] = q[n];
    q += n + 1;
  }
  out[used] = '\0';
  dpm_free(cfg->model_layers);
  cfg->model_layers = out;
  return 0;
}

/* The job file and its overrides; the data's shapes and sizes (identical on every rank; *thdr: the test
 * split's), the sampling rate and the run's length; the grid, the DP-PCA check and this rank's model. */
static void setup_job(trainer *tr, train_args *a, dpm_dataset *thdr) {
  char err[DPM_ERRLEN] = "";
  int failed = dpm_config_load(a->job, a->n_over, a->over, &tr->cfg, err) != 0;
  dpm_free(a->over);
  a->over = NULL;
  dpm_exit_if_error(tr->comm, failed, err);
  dpm_config *cfg = &tr->cfg;
  if (cfg->privacy_ignored[0] && tr->rank == 0)
    fprintf(stderr, "dpmpi: warning: %s: privacy.enabled = false: ignoring %s (the non-private baseline has no privacy "
            "parameters)\n", cfg->path, cfg->privacy_ignored);
  failed = cfg->lora_rank > 0 && add_lora_keys(cfg, err);
  dpm_exit_if_error(tr->comm, failed, err);
  dpm_layer_spec *ls = NULL;
  int nls = 0, lora = 0;
  char perr[DPM_ERRLEN];
  if (!dpm_model_parse(cfg->model_layers, &ls, &nls, perr))
    for (int i = 0; i < nls; i++) lora |= ls[i].lora > 0;
  dpm_free(ls);
  tr->lora = lora;
  dpm_dataset hdr;
  failed = dpm_dataset_probe(cfg->data_train, "train", &hdr, err) != 0;
  if (!failed) failed = dpm_dataset_probe(cfg->data_test, "test", thdr, err) != 0;
  /* token datasets go with a GPT model (a layer list starting with embed), labelled data with the others */
  const int gpt = model_is_gpt(cfg->model_layers);
  tr->tokens = hdr.kind == DPM_DATA_TOKENS;
  if (!failed && thdr->kind != hdr.kind)
    failed = 1, dpm_err(err, "%s holds %s data but %s holds %s data", cfg->data_train, tr->tokens ? "token" : "labelled",
                        cfg->data_test, tr->tokens ? "labelled" : "token");
  if (!failed && tr->tokens && !gpt)
    failed = 1, dpm_err(err, "%s: holds token data (kind = tokens, context %d, vocab %d); the [model] layers of %s "
                        "take images or feature vectors: token datasets need a GPT model (model.type = gpt, or layers "
                        "\"embed ...; block ...; lm_head\")", cfg->data_train, hdr.T, hdr.vocab, cfg->path);
  if (!failed && !tr->tokens && gpt)
    failed = 1, dpm_err(err, "%s: [model] is a GPT, which takes token data (dpmpi data convert --from text or --from "
                        "tokens), but %s holds labelled data", cfg->path, cfg->data_train);
  if (!failed && tr->tokens && (thdr->T != hdr.T || thdr->vocab != hdr.vocab || thdr->pad_id != hdr.pad_id))
    failed = 1, dpm_err(err, "%s: /test has context %d, vocab %d, pad_id %d but %s /train has %d, %d, %d", cfg->data_test,
                        thdr->T, thdr->vocab, thdr->pad_id, cfg->data_train, hdr.T, hdr.vocab, hdr.pad_id);
  if (!failed && tr->tokens && cfg->pca_components > 0)
    failed = 1, dpm_err(err, "%s: [pca] components needs feature vectors, not token data", cfg->path);
  if (!failed && tr->tokens) { /* the model's view: T token ids in, vocab classes per position */
    hdr.C = hdr.H = 1, hdr.W = hdr.T, hdr.num_classes = hdr.vocab;
    thdr->C = thdr->H = 1, thdr->W = thdr->T, thdr->num_classes = thdr->vocab;
  }
  if (!failed && (thdr->C != hdr.C || thdr->H != hdr.H || thdr->W != hdr.W || thdr->num_classes != hdr.num_classes))
    failed = 1, dpm_err(err, "%s: /test has shape %dx%dx%d with %d classes but %s /train has %dx%dx%d with %d",
                        cfg->data_test, thdr->C, thdr->H, thdr->W, thdr->num_classes, cfg->data_train, hdr.C, hdr.H,
                        hdr.W, hdr.num_classes);
  dpm_exit_if_error(tr->comm, failed, err);
  if (tr->rank == 0)
    for (int k = 0; k < 2; k++)
      if (!(k ? thdr : &hdr)->checksums && !(k && strcmp(cfg->data_test, cfg->data_train) == 0))
        fprintf(stderr, "dpmpi: warning: %s has no checksums: damage to it would be read silently "
                "(convert it again with dpmpi data convert)\n", k ? cfg->data_test : cfg->data_train);
  tr->N = hdr.n_total;
  if (cfg->batch_size > tr->N)
    failed = 1, dpm_err(err, "%s: [train] batch_size = %lld exceeds the %lld training examples", cfg->path,
                        (long long)cfg->batch_size, (long long)tr->N);
  dpm_exit_if_error(tr->comm, failed, err);
  tr->q = (double)cfg->batch_size / (double)tr->N;
  tr->steps_per_epoch = (double)tr->N / (double)cfg->batch_size;
  tr->steps = cfg->steps > 0 ? cfg->steps : (int64_t)llround(cfg->epochs * tr->steps_per_epoch);
  if (tr->steps < 1) tr->steps = 1;

  char inner[DPM_ERRLEN];
  failed = dpm_grid_create(tr->comm, (int)cfg->grid_replicas, (int)cfg->grid_stages, &tr->grid, inner) != 0;
  if (failed) dpm_err(err, "%s: %s", cfg->path, inner);
  dpm_exit_if_error(tr->comm, failed, err);
  { /* this rank's rows of both splits once loaded (load_shard, token_view): for the memory check */
    const dpm_grid *g = &tr->grid;
    const double rows = g->stage == 0 || g->stage == g->stages - 1 ? (double)(tr->N + thdr->n_total) / g->replicas : 0;
    tr->data_bytes = rows * (tr->tokens ? 4.0 * (3.0 * hdr.T + 1) : 4.0 * ((double)hdr.C * hdr.H * hdr.W + 1));
  }
  dpm_dataset mhdr = hdr; /* the model's input: k features with DP-PCA */
  if (cfg->pca_components > 0) {
    tr->pca_d = hdr.C * hdr.H * hdr.W;
    tr->pca_k = (int)cfg->pca_components;
    failed = dpm_pca_check(cfg, tr->pca_d, err) != 0;
    dpm_exit_if_error(tr->comm, failed, err);
    mhdr.C = tr->pca_k, mhdr.H = mhdr.W = 1;
  }
  build_model(tr, &mhdr);
}

/* The checkpoint a segment resumes from (--resume). */
typedef struct {
  dpm_ckpt_meta meta;
  char path[4096]; /* the checkpoint file */
  char dir[4096];  /* its directory: the run journal's unless checkpoint.dir is set */
} resume_point;

/* Where this segment's history comes from: the checkpoint (checked against the job: sigma, length and
 * history are the run's), or a new run (privacy parameters, a fresh run id, no history); then the journal's
 * directory. */
static void start_segment(trainer *tr, const train_args *a, resume_point *rp) {
  dpm_config *cfg = &tr->cfg;
  memset(&rp->meta, 0, sizeof rp->meta);
  rp->path[0] = rp->dir[0] = '\0';
  if (a->resume) {
    trainer_find_resume(tr, a->resume, &rp->meta, rp->path, sizeof rp->path);
    trainer_check_resume(tr, &rp->meta, rp->path);
  } else {
    setup_privacy(tr);
    /* a new run: its id (not a secret: it names the journal) and no history */
    if (tr->rank == 0) {
      dpm_key id = dpm_key_secure();
      snprintf(tr->run_id, sizeof tr->run_id, "%016llx", (unsigned long long)id.k[0]);
    }
    DPM_MPI_CHECK(MPI_Bcast(tr->run_id, (int)sizeof tr->run_id, MPI_CHAR, 0, tr->comm));
    tr->seeded = dpm_malloc(sizeof(int64_t) * 2);
    tr->seeded_out = dpm_malloc(sizeof(int64_t) * 2);
  }
  tr->any_seeded = cfg->has_seed || tr->n_seeded > 0;
  /* the run journal: in checkpoint.dir, or next to the resumed checkpoint (its steps are released too) */
  if (a->resume) dpm_ckpt_dirname(rp->path, rp->dir, sizeof rp->dir);
  if (tr->dp) tr->journal_dir = cfg->ckpt_dir ? cfg->ckpt_dir : a->resume ? rp->dir : NULL;
}

/* --init FILE: every rank reads FILE (serial HDF5: an INIT.h5 or a dpmpi checkpoint / released model of a GPT),
 * checks that the job's layers are FILE's GPT and copies its stage's tensors, by Hugging Face name, into its
 * slab. A mismatch or an unreadable file is one collective user error. */
static void load_init(trainer *tr, const char *path) {
  dpm_config *cfg = &tr->cfg;
  char err[DPM_ERRLEN] = "", inner[DPM_ERRLEN];
  dpm_hf_gpt2_config want, have;
  int n = 0, failed = 0;
  dpm_st_tensor *t = NULL;
  char *from = NULL;
  if (dpm_hf_gpt2_config_of_layers(cfg->model_layers, cfg->path, &want, inner))
    failed = 1, dpm_err(err, "train --init %s: %s", path, inner);
  else if (dpm_init_is(path) ? dpm_init_read(path, &have, &n, &t, err) : dpm_hf_gpt2_read_ckpt(path, &have, &n, &t, &from, err))
    failed = 1;
  else if (want.vocab_size != have.vocab_size || want.n_positions != have.n_positions || want.n_embd != have.n_embd ||
           want.n_head != have.n_head || want.n_layer != have.n_layer ||
           want.tie_word_embeddings != have.tie_word_embeddings)
    failed = 1, dpm_err(err, "%s: [model] layers are a GPT with vocab %lld, context %lld, width %lld, heads %lld, %lld "
                        "blocks, tied=%d but --init %s holds vocab %lld, context %lld, width %lld, heads %lld, %lld blocks, "
                        "tied=%d", cfg->path, (long long)want.vocab_size, (long long)want.n_positions,
                        (long long)want.n_embd, (long long)want.n_head, (long long)want.n_layer, want.tie_word_embeddings,
                        path, (long long)have.vocab_size, (long long)have.n_positions, (long long)have.n_embd,
                        (long long)have.n_head, (long long)have.n_layer, have.tie_word_embeddings);
  float *slab = dpm_model_params(tr->model);
  size_t off = 0; /* layer i's offset in the stage's slab (the order of io/ckpt.c) */
  for (int i = tr->first; i < tr->last && !failed; i++) {
    const dpm_layer_info *in = &tr->info[i];
    for (int p = 0; p < in->n_tensors && !failed; p++) {
      const dpm_tensor_info *ti = &in->tensors[p];
      if (strstr(ti->name, ".lora_")) continue; /* LoRA adapters start from their own initialization */
      int k = 0;
      while (k < n && strcmp(t[k].name, ti->name)) k++;
      if (k == n || (size_t)t[k].numel != ti->size) /* cannot happen once the configs agree */
        failed = 1, dpm_err(err, "%s: no tensor %s of %zu values for layer %d", path, ti->name, ti->size, i + 1);
      else
        memcpy(slab + off + ti->off, t[k].data, ti->size * sizeof(float));
    }
    off += in->params;
  }
  dpm_init_tensors_free(n, t);
  dpm_exit_if_error(tr->comm, failed, err);
  tr->init_from = dpm_strdup(path);
  if (tr->rank == 0) {
    printf("initial weights: %s (GPT-2, %lld blocks, width %lld, %s head%s%s); fresh optimizer and ledger\n", path,
           (long long)have.n_layer, (long long)have.n_embd, have.tie_word_embeddings ? "tied" : "untied",
           from ? "; itself fine-tuned from " : "", from ? from : "");
    fflush(stdout);
  }
  dpm_free(from);
}

/* Keys, the initial parameters and the optimizer; on --resume the checkpoint's parameters, optimizer state
 * (SGD's momentum, AdamW's moments and update count), ledger and DP-PCA projection replace them. */
static void setup_state(trainer *tr, const train_args *a, resume_point *rp) {
  dpm_config *cfg = &tr->cfg;
  setup_keys(tr);
  dpm_model_init_params(tr->model, &tr->init_key);
  tr->opt = dpm_optimizer_create(cfg, tr->ppack ? tr->trainable.total : dpm_model_num_params(tr->model));
  if (a->init) load_init(tr, a->init);
  const size_t np = dpm_model_num_params(tr->model);
  if (cfg->ema_decay > 0) { /* from the initial parameters; a resume reads the checkpoint's /ema over it */
    tr->ema = dpm_malloc_aligned((np ? np : 1) * sizeof(float));
    if (np) memcpy(tr->ema, dpm_model_params(tr->model), np * sizeof(float));
  }
  if (a->resume) {
    dpm_ckpt_model cm = ckpt_model(tr);
    dpm_ledger *L = NULL;
    char err[DPM_ERRLEN] = "";
    int failed = dpm_ckpt_read(tr->comm, rp->path, &cm, &L, err) != 0;
    dpm_exit_if_error(tr->comm, failed, err);
    for (int k = 0; tr->ppack && k < cm.n_state; k++)
      dpm_trainable_pack(&tr->trainable, dpm_optimizer_state(tr->opt, k, NULL), tr->state_full[k]);
    dpm_ledger_free(tr->ledger);
    tr->ledger = L;
    dpm_ckpt_meta *meta = &rp->meta;
    tr->start = meta->step;
    tr->ckpt_last = meta->step; /* the checkpoint resumed from is the last good state until a newer one */
    dpm_optimizer_set_steps(tr->opt, meta->optimizer_steps); /* AdamW's bias correction continues */
    tr->pca_V = meta->pca_projection; /* DP-PCA: the run's projection, never a new draw */
    meta->pca_projection = NULL;
    tr->pca_resumed = tr->pca_V != NULL;
    tr->data_digest = meta->data_digest; /* compared with the job's data once loaded */
    tr->init_from = meta->init_from; /* a run fine-tuned from initial weights stays so */
    meta->init_from = NULL;
    tr->resume_thr = meta->thresholds; /* adaptive: where the run's thresholds are */
    tr->n_resume_thr = meta->n_thresholds;
    meta->thresholds = NULL, meta->n_thresholds = 0;
    if (tr->rank == 0)
      printf("resumed from %s: step %lld of %lld, written on a %dx%d grid by dpmpi %s%s\n", rp->path,
             (long long)meta->step, (long long)meta->steps_total, meta->replicas, meta->stages, meta->version,
             cfg->has_seed ? "" : "; new secret sampling and noise keys for the remaining steps");
  }
  /* a segment that printed private-batch statistics marks the whole run, whatever later segments do */
  tr->stats_printed = cfg->private_stats || (a->resume && rp->meta.stats_printed);
}

/* The checkpoint directory, the journal's first lines (a new run), the stop signals' handler and the
 * metrics file (rank 0, before the long work starts; appended to on resume). */
static void open_outputs(trainer *tr, const train_args *a) {
  dpm_config *cfg = &tr->cfg;
  char err[DPM_ERRLEN] = "";
  int failed = 0;
  if (cfg->ckpt_dir && tr->rank == 0 && mkdir(cfg->ckpt_dir, 0777) && errno != EEXIST)
    failed = 1, dpm_err(err, "%s: [checkpoint] dir = %s: cannot create: %s", cfg->path, cfg->ckpt_dir, strerror(errno));
  dpm_exit_if_error(tr->comm, failed, err);
  if (!a->resume) {
    trainer_journal(tr, "# dpmpi run journal (docs/formats.md): start|branch|run|ckpt|end STEP ... TOTAL ledger steps");
    trainer_journal(tr, "start 0 0");
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);
  if (cfg->metrics && tr->rank == 0) {
    tr->metrics = fopen(cfg->metrics, a->resume ? "a" : "w");
    if (!tr->metrics) failed = 1, dpm_err(err, "%s: [output] metrics = %s: cannot open for writing", cfg->path, cfg->metrics);
  }
  dpm_exit_if_error(tr->comm, failed, err);
}

/* The shards of both splits and the training split's digest (on --resume it must be the checkpoint's, and
 * the journal's history joins the ledger), then DP-PCA. */
static void load_data(trainer *tr, const train_args *a, const resume_point *rp, const dpm_dataset *thdr) {
  dpm_config *cfg = &tr->cfg;
  char err[DPM_ERRLEN] = "";
  int failed = 0;
  load_shard(tr, cfg->data_train, "train", tr->N, &tr->train);
  load_shard(tr, cfg->data_test, "test", thdr->n_total, &tr->test);
  /* the training split's digest: stage 0 of each replica adds its shard's, so it is the same on every grid */
  uint64_t digest = tr->grid.stage == 0 ? dpm_dataset_digest(&tr->train, tr->train.end - tr->train.begin) : 0;
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &digest, 1, MPI_UINT64_T, MPI_SUM, tr->comm));
  if (a->resume && digest != tr->data_digest)
    failed = 1, dpm_err(err, "%s: written for other training data: %s /train has the same %lld examples but digest "
                        "%016llx, the checkpoint's is %016llx", rp->path, cfg->data_train, (long long)tr->N,
                        (unsigned long long)digest, (unsigned long long)tr->data_digest);
  dpm_exit_if_error(tr->comm, failed, err);
  tr->data_digest = digest;
  if (tr->tokens) token_view(&tr->train), token_view(&tr->test);
  if (a->resume && tr->dp) trainer_resume_history(tr, &rp->meta, rp->path, a->resume_branch); /* the same run on the same data */
}

static void setup_step(trainer *tr) {
  const dpm_config *cfg = &tr->cfg;
  tr->step = (dpm_step){.comm = tr->grid.dp, .pipe = tr->grid.pipe, .model = tr->model, .data = &tr->train,
                        .q = tr->q, .dp = tr->dp, .clip = cfg->clip, .sigma = tr->sigma, .clipping = cfg->clipping,
                        .device_split = cfg->device_split, .physical_batch = (int)cfg->physical_batch_size,
                        .sample_key = tr->sample_key, .noise_key = tr->noise_key, .auto_gamma = cfg->auto_gamma,
                        .adaptive = tr->dp && cfg->adaptive, .target_quantile = cfg->target_quantile,
                        .adaptive_lr = cfg->adaptive_lr, .count_fraction = cfg->count_noise_fraction,
                        .trainable = tr->has_trainable ? &tr->trainable : NULL,
                        .aug_k = (int)cfg->aug_multiplicity, .aug_pad = (int)cfg->aug_pad, .aug_flip = cfg->aug_flip,
                        .aug_fill = tr->train.std > 0 ? -tr->train.mean / tr->train.std : 0.0f,
                        .keep_shards = cfg->aug_multiplicity > 1};
  dpm_step_init(&tr->step);
  if (tr->resume_thr) { /* adaptive: the run's thresholds continue; per-device ones are per stage */
    char err[DPM_ERRLEN] = "";
    int failed = tr->n_resume_thr != tr->step.n_thr;
    if (failed)
      dpm_err(err, "%s: the checkpoint holds %d adaptive %s clipping thresholds, this grid has %d (per-device "
              "thresholds are one per pipeline stage: resume on %d stages)", cfg->path, tr->n_resume_thr,
              dpm_clipping_name(cfg->clipping), tr->step.n_thr, tr->n_resume_thr);
    dpm_exit_if_error(tr->comm, failed, err);
    memcpy(tr->step.thr, tr->resume_thr, sizeof(double) * (size_t)tr->n_resume_thr);
    dpm_free(tr->resume_thr);
    tr->resume_thr = NULL;
  }
}

static void free_trainer(trainer *tr) {
  dpm_step_free(&tr->step);
  dpm_optimizer_free(tr->opt);
  dpm_free(tr->ema);
  dpm_free(tr->info);
  dpm_free(tr->frozen);
  dpm_trainable_free(&tr->trainable);
  dpm_free(tr->ppack);
  for (int k = 0; k < DPM_OPTIMIZER_MAX_STATE; k++) dpm_free(tr->state_full[k]);
  dpm_free(tr->pca_V);
  dpm_free(tr->init_from);
  dpm_free(tr->resume_thr);
  dpm_free(tr->seeded);
  dpm_free(tr->seeded_out);
  if (tr->metrics) fclose(tr->metrics);
  dpm_dataset_free(&tr->train);
  dpm_dataset_free(&tr->test);
  dpm_model_free(tr->model);
  dpm_free(tr->model_desc);
  dpm_grid_free(&tr->grid);
  dpm_ledger_free(tr->ledger);
  dpm_config_free(&tr->cfg);
  memset(&tr->noise_key, 0, sizeof tr->noise_key);
}

/* job -> data -> model -> privacy parameters -> loop. Returns the exit status: 0, or DPM_EXIT_SIGNALLED when
 * a signal stopped the run (user errors exit 2 on every rank before). */
int dpm_cmd_train(int argc, char **argv) {
  trainer tr;
  memset(&tr, 0, sizeof tr);
  tr.comm = MPI_COMM_WORLD;
  tr.ckpt_last = -1;
  MPI_Comm_rank(tr.comm, &tr.rank);
  MPI_Comm_size(tr.comm, &tr.size);
  train_args a;
  if (parse_args(&tr, argc, argv, &a)) {
    dpm_free(a.over);
    return 0;
  }
  dpm_dataset thdr;
  setup_job(&tr, &a, &thdr);
  resume_point rp;
  start_segment(&tr, &a, &rp);
  setup_state(&tr, &a, &rp);
  open_outputs(&tr, &a);
  load_data(&tr, &a, &rp, &thdr);
  dpm_ckpt_meta_free(&rp.meta);
  if (tr.pca_k > 0) run_pca(&tr);
  setup_step(&tr);
  trainer_print_header(&tr);
  const int status = train_loop(&tr);
  free_trainer(&tr);
  return status;
}
