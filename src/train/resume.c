/* `dpmpi train --resume`: the checkpoint to resume from, the rules the job must meet to continue its run
 * (same model, data, sampling, privacy settings, budget and delta), and the run journal's history: the
 * steps it knows of beyond the checkpoint, and forced branches (docs/accountant.md, "What the ledger
 * counts"). */
#include "train/trainer.h"

#include <stdarg.h>

/* The checkpoint to resume from: PATH itself, or the newest valid one of directory PATH (damaged ones
 * are skipped with a warning). */
void trainer_find_resume(trainer *tr, const char *path, dpm_ckpt_meta *meta, char *out, size_t len) {
  char err[DPM_ERRLEN] = "", **list = NULL;
  int n = dpm_ckpt_list(path, &list, err), failed = n < 0, found = 0;
  if (n == 0) failed = 1, dpm_err(err, "--resume %s: no checkpoint files ckpt-STEP.h5 in the directory", path);
  dpm_exit_if_error(tr->comm, failed, err);
  for (int i = 0; i < n; i++) {
    if (!found) {
      if (dpm_ckpt_read_meta(tr->comm, list[i], meta, err) == 0) {
        snprintf(out, len, "%s", list[i]);
        found = 1;
      } else if (n > 1 && tr->rank == 0) {
        fprintf(stderr, "dpmpi: warning: skipping %s: %s\n", list[i], err);
      }
    }
    dpm_free(list[i]);
  }
  dpm_free(list);
  if (!found && n > 1) dpm_err(err, "--resume %s: none of the %d checkpoints is readable", path, n);
  dpm_exit_if_error(tr->comm, !found, err);
}

/* The job must continue the checkpoint's run: same model, data size, sampling rate and privacy settings;
 * sigma and the ledger come from the checkpoint. The length may change (run extension, issue 18): a longer
 * run only at a noise multiplier the job fixes (privacy.noise_multiplier = the run's); one calibrated from
 * privacy.epsilon was calibrated for the shorter run. The job's length becomes the run's. */
void trainer_check_resume(trainer *tr, const dpm_ckpt_meta *meta, const char *path) {
  dpm_config *cfg = &tr->cfg;
  char err[DPM_ERRLEN] = "", inner[DPM_ERRLEN];
  int failed = 1;
  const int longer = tr->steps > meta->steps_total, calibrated = meta->privacy && !(cfg->noise_multiplier > 0);
  if (dpm_ckpt_same_model(meta->layers, cfg->model_layers, inner))
    dpm_err(err, "%s: does not match %s: %s", path, cfg->path, inner);
  else if (meta->optimizer != cfg->optimizer)
    dpm_err(err, "%s: written by a run with train.optimizer = %s, the job says %s (%s; a run resumes only with the "
            "optimizer it started with)", path, dpm_optimizer_name(meta->optimizer), dpm_optimizer_name(cfg->optimizer),
            meta->optimizer == DPM_OPT_SGD ? "the checkpoint holds no Adam state" : "the checkpoint holds Adam state, "
            "no SGD momentum");
  else if (meta->n_train != tr->N)
    dpm_err(err, "%s: written for %lld training examples, %s has %lld", path, (long long)meta->n_train, cfg->data_train,
            (long long)tr->N);
  else if (fabs(meta->q - tr->q) > 1e-12 * tr->q)
    dpm_err(err, "%s: sampling rate %g, the job's batch_size gives %g", path, meta->q, tr->q);
  else if (meta->privacy != cfg->privacy_enabled)
    dpm_err(err, "%s: privacy.enabled was %s, the job says %s", path, meta->privacy ? "true" : "false",
            cfg->privacy_enabled ? "true" : "false");
  else if (meta->privacy && (meta->clip != cfg->clip || meta->clipping != cfg->clipping))
    dpm_err(err, "%s: clipping %s C = %g, the job says %s C = %g", path, dpm_clipping_name(meta->clipping),
            meta->clip, dpm_clipping_name(cfg->clipping), cfg->clip);
  else if (meta->privacy && dpm_clip_automatic(cfg->clipping) && meta->auto_gamma != cfg->auto_gamma)
    dpm_err(err, "%s: automatic clipping with auto_gamma = %g, the job says %g", path, meta->auto_gamma, cfg->auto_gamma);
  else if (meta->privacy && meta->adaptive != cfg->adaptive)
    dpm_err(err, "%s: privacy.adaptive was %s, the job says %s", path, meta->adaptive ? "true" : "false",
            cfg->adaptive ? "true" : "false");
  else if (meta->privacy && meta->adaptive && (meta->count_noise_fraction != cfg->count_noise_fraction ||
                                               meta->target_quantile != cfg->target_quantile ||
                                               meta->adaptive_lr != cfg->adaptive_lr))
    dpm_err(err, "%s: adaptive thresholds with target_quantile %g, adaptive_lr %g, count_noise_fraction %g; the job "
            "says %g, %g, %g", path, meta->target_quantile, meta->adaptive_lr, meta->count_noise_fraction,
            cfg->target_quantile, cfg->adaptive_lr, cfg->count_noise_fraction);
  else if (meta->privacy && cfg->noise_multiplier > 0 && cfg->noise_multiplier != meta->sigma)
    dpm_err(err, "%s: noise multiplier %g, the job says %g", path, meta->sigma, cfg->noise_multiplier);
  else if (meta->privacy && !cfg->rebudget && cfg->delta != meta->delta)
    dpm_err(err, "%s: the run's guarantee is at privacy.delta = %g, the job says %g (--privacy.rebudget=true "
            "accounts the whole ledger at the new delta)", path, meta->delta, cfg->delta);
  else if (meta->privacy && !cfg->rebudget && cfg->epsilon != meta->epsilon)
    dpm_err(err, "%s: the run's budget is privacy.epsilon = %g, the job says %g (0: none; --privacy.rebudget=true "
            "makes the new one the budget of the whole ledger)", path, meta->epsilon, cfg->epsilon);
  else if (longer && calibrated)
    dpm_err(err, "%s: the run's noise multiplier %g was calibrated so that its %lld steps spend privacy.epsilon = %g; "
            "%lld steps are refused at it (a longer run at a fixed noise: --privacy.noise_multiplier=%g, and with a "
            "budget --privacy.rebudget=true and a larger privacy.epsilon)", path, meta->sigma,
            (long long)meta->steps_total, meta->epsilon, (long long)tr->steps, meta->sigma);
  else if (meta->reproducible && cfg->has_seed && meta->seed != cfg->seed)
    dpm_err(err, "%s: written by a run with run.seed = %llu, the job says %llu", path, (unsigned long long)meta->seed,
            (unsigned long long)cfg->seed);
  else if (meta->pca_components != tr->pca_k || (tr->pca_k > 0 && meta->pca_dim != tr->pca_d))
    dpm_err(err, "%s: written with pca.components = %d, the job says %d", path, meta->pca_components, tr->pca_k);
  else if (tr->pca_k > 0 && meta->privacy && (meta->pca_clip != cfg->pca_clip ||
                                              (cfg->pca_noise_multiplier > 0 && meta->pca_sigma != cfg->pca_noise_multiplier)))
    dpm_err(err, "%s: PCA with clip %g and noise multiplier %g, the job says clip %g%s", path, meta->pca_clip,
            meta->pca_sigma, cfg->pca_clip, cfg->pca_noise_multiplier > 0 ? " and another noise multiplier" : "");
  else if (meta->rng_stream != DPM_RNG_STREAM_VERSION)
    dpm_err(err, "%s: written by dpmpi %s, whose random streams (sampling, noise) are version %d%s; this dpmpi draws "
            "version %d (AES-128), so the run would not continue its own streams: finish it with dpmpi %s", path,
            meta->version, meta->rng_stream, meta->rng_stream == 1 ? " (Philox4x64-10)" : "", DPM_RNG_STREAM_VERSION,
            meta->version);
  else if (meta->step >= tr->steps && tr->steps == meta->steps_total)
    dpm_err(err, "%s: the run is complete (step %lld of %lld); nothing to resume (a larger train.steps extends it%s)",
            path, (long long)meta->step, (long long)meta->steps_total,
            calibrated ? ", at a fixed privacy.noise_multiplier" : "");
  else if (meta->step >= tr->steps)
    dpm_err(err, "%s: the checkpoint is at step %lld, the job asks for a run of %lld steps; nothing to resume", path,
            (long long)meta->step, (long long)tr->steps);
  else
    failed = 0;
  dpm_exit_if_error(tr->comm, failed, err);
  tr->dp = meta->privacy;
  tr->acct = meta->accountant;
  tr->sigma = meta->sigma;
  tr->steps_was = meta->steps_total; /* tr->steps: the job's length, the run's from now on */
  tr->pca_sigma = meta->pca_sigma;
  /* the history this model carries: its run, the seeded ranges, the steps it did not use */
  snprintf(tr->run_id, sizeof tr->run_id, "%s", meta->run_id);
  tr->n_seeded = meta->n_seeded;
  tr->seeded = dpm_malloc(sizeof(int64_t) * 2 * (size_t)(tr->n_seeded + 1));
  tr->seeded_out = dpm_malloc(sizeof(int64_t) * 2 * (size_t)(tr->n_seeded + 1));
  if (tr->n_seeded > 0) memcpy(tr->seeded, meta->seeded_steps, sizeof(int64_t) * 2 * (size_t)tr->n_seeded);
  tr->seed_last = meta->seed;
  tr->abandoned = meta->steps_abandoned;
}

/* A forced branch at `step`: the run's checkpoints of later steps (in dir and in checkpoint.dir) belong to
 * the abandoned branch; rank 0 renames them to abandoned-TOTAL-ckpt-STEP.h5, so the directory's newest
 * checkpoint is this branch's and nothing resumes the old one by accident. Their steps stay in the ledger. */
void trainer_set_aside_branch(trainer *tr, const char *dir, int64_t step, int64_t total) {
  if (tr->rank != 0) return;
  for (int k = 0; k < 2; k++) {
    const char *d = k ? tr->cfg.ckpt_dir : dir;
    if (!d || (k && !strcmp(d, dir))) continue;
    char err[DPM_ERRLEN], **list = NULL;
    int n = dpm_ckpt_list(d, &list, err);
    for (int i = 0; i < n; i++) {
      dpm_ckpt_meta m;
      if (dpm_ckpt_read_meta(MPI_COMM_SELF, list[i], &m, err) == 0) {
        if (!strcmp(m.run_id, tr->run_id) && m.step > step) {
          char to[4200], *base = strrchr(list[i], '/');
          snprintf(to, sizeof to, "%s/abandoned-%lld-%s", d, (long long)total, base ? base + 1 : list[i]);
          if (rename(list[i], to) == 0)
            printf("note: %s belongs to the abandoned branch: renamed to %s\n", list[i], to);
          else
            fprintf(stderr, "dpmpi: warning: cannot rename %s (abandoned branch): %s\n", list[i], strerror(errno));
        }
        dpm_ckpt_meta_free(&m);
      }
      dpm_free(list[i]);
    }
    if (n > 0) dpm_free(list);
  }
  fflush(stdout);
}

/* After the checkpoint's ledger is read: the steps the run journal knows of beyond it (steps lost in a
 * crash after the checkpoint, or a newer branch) join the ledger; a checkpoint older than the run's newest
 * needs --resume-branch. Then the budget: the remaining steps stop before it would be exceeded. */
void trainer_resume_history(trainer *tr, const dpm_ckpt_meta *meta, const char *path, int branch_ok) {
  dpm_config *cfg = &tr->cfg;
  char err[DPM_ERRLEN] = "", dir[4096];
  int failed = 0;
  dpm_ckpt_dirname(path, dir, sizeof dir);
  /* the journal next to the checkpoint and the one this segment appends to, if elsewhere */
  dpm_journal j, j2;
  memset(&j, 0, sizeof j), memset(&j2, 0, sizeof j2);
  if (tr->rank == 0) {
    failed = dpm_journal_read(dir, tr->run_id, &j, err) != 0;
    if (!failed && tr->journal_dir && strcmp(tr->journal_dir, dir))
      failed = dpm_journal_read(tr->journal_dir, tr->run_id, &j2, err) != 0;
    if (!failed && j2.found) {
      j.found = 1;
      if (j2.total > j.total) j.total = j2.total;
      if (j2.has_ckpt && (!j.has_ckpt || j2.ckpt_total > j.ckpt_total))
        j.has_ckpt = 1, j.ckpt_step = j2.ckpt_step, j.ckpt_total = j2.ckpt_total;
    }
  }
  dpm_exit_if_error(tr->comm, failed, err);
  DPM_MPI_CHECK(MPI_Bcast(&j, (int)sizeof j, MPI_BYTE, 0, tr->comm));
  const int64_t have = dpm_journal_ledger_steps(tr->ledger), extra = j.total > have ? j.total - have : 0;
  const int older = j.has_ckpt && j.ckpt_total > have;
  if (older && !branch_ok)
    failed = 1, dpm_err(err, "%s: step %lld is not the run's newest checkpoint: its journal %s/journal-%s records "
                        "ckpt-%08lld.h5 (step %lld) and %lld steps run in all, %lld more than this checkpoint's ledger; "
                        "resuming here re-runs steps with fresh noise (--resume-branch does it, and the ledger keeps "
                        "those %lld steps)", path, (long long)meta->step, dir, tr->run_id, (long long)j.ckpt_step,
                        (long long)j.ckpt_step, (long long)j.total, (long long)extra, (long long)extra);
  dpm_exit_if_error(tr->comm, failed, err);
  if (extra > 0) {
    dpm_ledger_add_sgm(tr->ledger, tr->q, tr->sigma, extra);
    tr->abandoned += extra;
    if (tr->rank == 0)
      printf("note: the run journal records %lld steps beyond this checkpoint's ledger (%s); the ledger counts "
             "them: %lld steps, %lld of them not used by this model\n", (long long)extra,
             older ? "a newer branch, abandoned with --resume-branch" : "run after it and lost, e.g. in a crash",
             (long long)(have + extra), (long long)tr->abandoned);
  }
  const int rebudget = cfg->rebudget && (cfg->delta != meta->delta || cfg->epsilon != meta->epsilon);
  if (rebudget && tr->rank == 0)
    printf("note: privacy.rebudget: the whole ledger is accounted at delta %g (was %g), budget epsilon %g (was %g; "
           "0: none)\n", cfg->delta, meta->delta, cfg->epsilon, meta->epsilon);
  if (cfg->epsilon > 0) {
    int64_t allowed = 0;
    if (dpm_ledger_max_steps(tr->ledger, tr->q, tr->sigma, cfg->epsilon, cfg->delta, tr->acct, &allowed, err))
      dpm_fatal("accountant: %s", err);
    if (allowed < 1)
      failed = 1, dpm_err(err, "%s: the budget privacy.epsilon = %g is spent: the ledger's %lld steps are at epsilon %g "
                          "(delta %g); not one more step fits", path, cfg->epsilon, (long long)(have + extra),
                          trainer_epsilon_now(tr), cfg->delta);
    dpm_exit_if_error(tr->comm, failed, err);
    if (allowed < tr->steps - tr->start) {
      if (tr->rank == 0)
        printf("note: the budget epsilon = %g allows %lld of the %lld remaining steps; training stops at step %lld\n",
               cfg->epsilon, (long long)allowed, (long long)(tr->steps - tr->start), (long long)(tr->start + allowed));
      tr->steps = tr->start + allowed;
    }
  }
  if (tr->steps != tr->steps_was && tr->rank == 0) { /* a new length: the epsilon it costs, before training */
    const int64_t now = tr->steps;
    tr->steps = tr->steps_was > tr->start ? tr->steps_was : tr->start;
    const double was = trainer_epsilon_after_run(tr);
    tr->steps = now;
    printf("note: the run's length changes from %lld to %lld steps at noise multiplier %g: epsilon %.4f after the run "
           "(%.4f at %lld steps; delta %g, %s accountant)\n", (long long)tr->steps_was, (long long)tr->steps, tr->sigma,
           trainer_epsilon_after_run(tr), was, (long long)tr->steps_was, cfg->delta, dpm_accountant_name(tr->acct));
  }
  /* the segment begins: recorded only once it is sure to run */
  trainer_journal(tr, older ? "branch %lld %lld %lld" : "start %lld %lld", (long long)meta->step, (long long)(have + extra),
          (long long)extra);
  if (rebudget)
    trainer_journal(tr, "# rebudget: delta %g -> %g, epsilon %g -> %g (0: no budget), for the whole ledger", meta->delta,
            cfg->delta, meta->epsilon, cfg->epsilon);
  if (older) trainer_set_aside_branch(tr, dir, meta->step, have + extra);
}
