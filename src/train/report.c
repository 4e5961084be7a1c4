/* What `dpmpi train` prints and writes as it runs: the header, progress lines (DP-safe ones with
 * output.private_stats = false), evaluations and metrics lines, the closing lines, and epsilon so far. */
#include "dpmpi/core/rng.h"
#include "train/trainer.h"

void trainer_fmt_duration(double s, char *buf, size_t len) {
  if (!(s >= 0) || s > 1e7) {
    snprintf(buf, len, "?");
  } else if (s < 60) {
    snprintf(buf, len, "%.0fs", s);
  } else if (s < 3600) {
    snprintf(buf, len, "%dm%02ds", (int)(s / 60), (int)s % 60);
  } else {
    snprintf(buf, len, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
  }
}

/* Epsilon of the ledger as it stands (0 before the first step; +inf for a non-private run). */
double trainer_epsilon_now(trainer *tr) {
  if (!tr->dp) return INFINITY;
  double eps = 0;
  char err[DPM_ERRLEN];
  if (dpm_ledger_epsilon(tr->ledger, tr->cfg.delta, tr->acct, &eps, err)) dpm_fatal("accountant: %s", err);
  return eps;
}

/* Epsilon once the run is complete: the ledger as it stands plus the steps still to run. */
double trainer_epsilon_after_run(trainer *tr) {
  dpm_ledger *l = dpm_ledger_create();
  for (int i = 0; i < dpm_ledger_size(tr->ledger); i++) {
    int kind;
    double q, sigma;
    int64_t count;
    dpm_ledger_event(tr->ledger, i, &kind, &q, &sigma, &count);
    if (kind == 0) dpm_ledger_add_sgm(l, q, sigma, count);
    else dpm_ledger_add_gaussian(l, sigma, count);
  }
  dpm_ledger_add_sgm(l, tr->q, tr->sigma, tr->steps - tr->start);
  double eps = 0;
  char err[DPM_ERRLEN];
  if (dpm_ledger_epsilon(l, tr->cfg.delta, tr->acct, &eps, err)) dpm_fatal("accountant: %s", err);
  dpm_ledger_free(l);
  return eps;
}

/* Test accuracy and mean loss over the whole test split (each rank its shard); token data: per target token
 * (token-weighted: exp(loss) is the test perplexity) and next-token accuracy. */
void trainer_evaluate(trainer *tr, double *accuracy, double *loss) {
  dpm_step_stats sums;
  dpm_step_eval(&tr->step, &tr->test, &sums);
  const double n = tr->tokens ? sums.tokens : sums.examples;
  *loss = (tr->tokens ? sums.token_loss : sums.loss) / n;
  *accuracy = sums.correct / n;
}

static void swap_ema(trainer *tr) {
  float *p = dpm_model_params(tr->model), *e = tr->ema;
  for (size_t k = 0, n = dpm_model_num_params(tr->model); k < n; k++) {
    const float t = p[k];
    p[k] = e[k], e[k] = t;
  }
}

void trainer_evaluate_ema(trainer *tr, double *accuracy, double *loss) {
  DPM_ASSERT(tr->ema);
  swap_ema(tr);
  trainer_evaluate(tr, accuracy, loss);
  swap_ema(tr);
}

void trainer_print_header(trainer *tr) {
  if (tr->rank != 0) return;
  dpm_config *cfg = &tr->cfg;
  printf("dpmpi %s: %s on %d rank%s: %d replica%s x %d pipeline stage%s\n", DPM_VERSION, cfg->path, tr->size,
         tr->size > 1 ? "s" : "", tr->grid.replicas, tr->grid.replicas > 1 ? "s" : "", tr->grid.stages,
         tr->grid.stages > 1 ? "s" : "");
  printf("data: %s (%lld training examples, %lld test, %d classes)\n", cfg->data_train, (long long)tr->N,
         (long long)tr->test.n_total, tr->train.num_classes);
  printf("model (%zu parameters):\n%s", tr->total_params, tr->model_desc);
  if (tr->has_trainable) {
    int frozen = 0, all = 0;
    for (int i = 0; i < tr->n_layers; i++)
      for (int t = 0; t < tr->info[i].n_tensors; t++) frozen += (int)((tr->frozen[i] >> t) & 1u), all++;
    printf("trainable: %zu of %zu parameters (%d of %d tensors frozen: no norm, noise, optimizer state or "
           "allreduce); noise dimension %zu\n", tr->step.total_train, tr->total_params, frozen, all,
           tr->step.total_train);
  }
  char opt[256];
  dpm_optimizer_describe(tr->opt, opt, sizeof opt);
  printf("training: %lld steps (%.2f epochs), expected batch %lld (q = %.6g, Poisson), micro-batches of <= %lld, "
         "lr %g\n",
         (long long)tr->steps, tr->steps / tr->steps_per_epoch, (long long)cfg->batch_size, tr->q,
         (long long)cfg->physical_batch_size, cfg->lr);
  printf("optimizer: %s, on the %s gradient\n", opt, tr->dp ? "privatized (noisy clipped sum / q N)" : "mean");
  if (cfg->aug_multiplicity > 1)
    printf("augmentation multiplicity: %lld views per example (crops padded by %lld pixels%s), their gradients averaged "
           "before clipping\n", (long long)cfg->aug_multiplicity, (long long)cfg->aug_pad,
           cfg->aug_flip ? ", left-right flips" : ", no flips");
  if (tr->ema) printf("parameter averaging: EMA with decay %g, evaluated and exported\n", cfg->ema_decay);
  if (tr->dp) {
    double eps = trainer_epsilon_after_run(tr); /* the ledger (DP-PCA, steps already run) and the steps to come */
    if (dpm_clip_whole_model(cfg->clipping) && tr->grid.stages > 1)
      printf("note: flat clipping on %d pipeline stages runs every micro-batch twice (per-example norms, then the "
             "clipped sum); privacy.clipping = per-device needs one pass\n", tr->grid.stages);
    if (cfg->clipping == DPM_CLIP_PER_DEVICE)
      printf("per-device clipping: each of the %d stages clips its piece to C_s (%s split), sqrt(sum C_s^2) = C\n",
             tr->grid.stages, cfg->device_split == DPM_SPLIT_EVEN ? "even" : "by parameters");
    if (cfg->adaptive) {
      const dpm_step *st = &tr->step;
      printf("adaptive thresholds: %d (initial C%s), target quantile %g, rate %g; each step releases the gradient "
             "(noise multiplier %.6g) and %d noisy counts (std %.6g, %g of the budget): one Gaussian mechanism of "
             "noise multiplier %.6g, the ledger's\n", st->n_thr, st->n_thr > 1 ? "_k, sqrt(sum C_k^2) = C" : " = C",
             cfg->target_quantile, cfg->adaptive_lr, st->grad_sigma, st->n_thr, st->count_sigma,
             cfg->count_noise_fraction, tr->sigma);
    }
    if (dpm_clip_automatic(cfg->clipping))
      printf("automatic clipping: every example normalized, C_g g/(||g|| + %g) (Bu et al. 2022), sensitivity C\n",
             cfg->auto_gamma);
    printf("privacy: DP-SGD, %s clipping C = %g, noise multiplier %.6g%s, delta %g, %s accountant: epsilon %.4f "
           "after the run\n",
           dpm_clipping_name(cfg->clipping), cfg->clip, tr->sigma,
           cfg->noise_multiplier > 0 ? "" : " (calibrated)", cfg->delta,
           dpm_accountant_name(tr->acct), eps);
    if (cfg->delta > 1.0 / (double)tr->N)
      printf("warning: delta = %g is not below 1/N = %g: the guarantee is weak\n", cfg->delta, 1.0 / (double)tr->N);
  } else {
    printf("privacy: DISABLED (non-private baseline: no clipping, no noise, no guarantee)\n");
  }
  if (tr->pca_k > 0) { /* DP-PCA */
    char how[192] = "";
    if (tr->dp) {
      dpm_ledger *l = dpm_ledger_create();
      dpm_ledger_add_gaussian(l, tr->pca_sigma, 1);
      double e = 0;
      char err[DPM_ERRLEN];
      if (dpm_ledger_epsilon(l, cfg->delta, tr->acct, &e, err)) dpm_fatal("accountant: %s", err);
      dpm_ledger_free(l);
      snprintf(how, sizeof how, "clip C = %g, Analyze-Gauss noise multiplier %.6g%s: epsilon %.4f alone", cfg->pca_clip,
               tr->pca_sigma, cfg->pca_epsilon > 0 ? " (calibrated)" : "", e);
    } else {
      snprintf(how, sizeof how, "non-private: no noise, %s", cfg->pca_clip > 0 ? "rows clipped" : "rows not clipped");
    }
    if (tr->pca_resumed)
      printf("pca: %d -> %d features, projection from the checkpoint (%s)\n", tr->pca_d, tr->pca_k, how);
    else
      printf("pca: %d -> %d features (%s); ScaLAPACK pdsyevr on a %dx%d BLACS grid (block %d): covariance %.2f s, "
             "reduce %.2f s, noise %.2f s, eigenvectors %.2f s, projection %.2f s\n", tr->pca_d, tr->pca_k, how,
             tr->pca_st.pr, tr->pca_st.pc, tr->pca_st.block, tr->pca_st.t_cov, tr->pca_st.t_reduce, tr->pca_st.t_noise,
             tr->pca_st.t_eig, tr->pca_st.t_proj);
  }
  if (tr->dp && cfg->private_stats)
    printf("note: progress lines show noiseless statistics of the private batches (loss, train accuracy, clipped "
           "fraction, examples/s), not covered by epsilon; output.private_stats = false prints only DP-safe values\n");
  if (cfg->has_seed)
    printf("randomness: SEEDED with run.seed = %llu: reproducible, the noise is predictable — not for a private "
           "release\n",
           (unsigned long long)cfg->seed);
  else
    printf("randomness: secure (keys from the operating system's CSPRNG, never stored)\n");
  printf("randomness: AES-128 counter-mode streams (version %d), Gaussian noise by Box-Muller, %s kernel\n",
         DPM_RNG_STREAM_VERSION, dpm_rng_impl_name(dpm_rng_impl_current()));
  if (!cfg->has_seed && tr->n_seeded > 0) {
    printf("randomness: but steps");
    for (int i = 0; i < tr->n_seeded; i++)
      printf("%s [%lld, %lld)", i ? "," : "", (long long)tr->seeded[2 * i], (long long)tr->seeded[2 * i + 1]);
    printf(" of this model ran SEEDED (run.seed = %llu): the run stays labelled reproducible — not for a private "
           "release\n", (unsigned long long)tr->seed_last);
  }
  fflush(stdout);
}

/* Adaptive thresholds as a metrics field (post-processing of DP releases: fine to print), or "". */
static const char *thr_json(const trainer *tr) {
  static char buf[1 << 16];
  if (!tr->dp || !tr->cfg.adaptive) return "";
  size_t len = (size_t)snprintf(buf, sizeof buf, ", \"clip_thresholds\": [");
  for (int k = 0; k < tr->step.n_thr && len + 32 < sizeof buf; k++)
    len += (size_t)snprintf(buf + len, sizeof buf - len, "%s%.9g", k ? ", " : "", tr->step.thr[k]);
  snprintf(buf + len, sizeof buf - len, "]");
  return buf;
}

double trainer_report_eval(trainer *tr, int64_t step, double epoch, double ex_per_s) {
  double acc, loss, ema_acc = 0, ema_loss = 0;
  trainer_evaluate(tr, &acc, &loss);
  if (tr->ema) trainer_evaluate_ema(tr, &ema_acc, &ema_loss);
  double eps = trainer_epsilon_now(tr);
  if (tr->rank != 0) return loss;
  char ema[96] = "", emaj[96] = "";
  if (tr->ema) {
    snprintf(ema, sizeof ema, "  EMA test accuracy %.2f%%  EMA test loss %.4f", 100 * ema_acc, ema_loss);
    snprintf(emaj, sizeof emaj, ", \"ema_test_accuracy\": %.6f, \"ema_test_loss\": %.6f", ema_acc, ema_loss);
  }
  const char *acct = dpm_accountant_name(tr->acct);
  char ppl[48] = "", pplj[32] = "null", lossj[32] = "null"; /* JSON: null for a non-finite loss */
  if (isfinite(loss)) snprintf(lossj, sizeof lossj, "%.6f", loss);
  if (tr->tokens) snprintf(ppl, sizeof ppl, "  test perplexity %.3f", exp(loss));
  if (tr->tokens && isfinite(exp(loss))) snprintf(pplj, sizeof pplj, "%.6f", exp(loss));
  if (tr->dp)
    printf("eval  step %lld  epoch %.2f  test accuracy %.2f%%  test loss %.4f%s%s  epsilon %.4f (delta %g, %s)%s\n",
           (long long)step, epoch, 100 * acc, loss, ppl, ema, eps, tr->cfg.delta, acct, tr->any_seeded ? "  [seeded]" : "");
  else
    printf("eval  step %lld  epoch %.2f  test accuracy %.2f%%  test loss %.4f%s%s  (non-private)\n", (long long)step,
           epoch, 100 * acc, loss, ppl, ema);
  fflush(stdout);
  if (tr->metrics) {
    char epsbuf[32];
    if (tr->dp) snprintf(epsbuf, sizeof epsbuf, "%.6f", eps); else snprintf(epsbuf, sizeof epsbuf, "null");
    fprintf(tr->metrics,
            "{\"step\": %lld, \"epoch\": %.4f, \"epsilon\": %s, \"delta\": %g, \"accountant\": \"%s\", "
            "\"test_accuracy\": %.6f, \"test_loss\": %s, \"examples_per_second\": %.1f, \"private\": %s, "
            "\"noise_multiplier\": %.6g, \"sampling_rate\": %.8g, \"clip\": %g, \"clipping\": \"%s\", "
            "\"reproducible\": %s, \"private_stats\": %s, \"test_perplexity\": %s%s%s}\n",
            (long long)step, epoch, epsbuf, tr->dp ? tr->cfg.delta : 0.0, acct, acc, lossj, ex_per_s,
            tr->dp ? "true" : "false", tr->sigma, tr->q, tr->dp ? tr->cfg.clip : 0.0,
            tr->dp ? dpm_clipping_name(tr->cfg.clipping) : "none", tr->any_seeded ? "true" : "false",
            tr->cfg.private_stats ? "true" : "false", pplj, thr_json(tr), emaj);
    fflush(tr->metrics);
  }
  return loss;
}

/* Throughput from the expected batch size q*N (public), never the realized one: steps done in this segment
 * times q*N over the training time. The DP-safe figure of output.private_stats = false. */
double trainer_expected_per_s(const trainer *tr, int64_t done, double t_train) {
  return (double)(done - tr->start) * tr->q * (double)tr->N / (t_train > 0 ? t_train : 1);
}

/* The progress line after step `done` (rank 0), then a new window of statistics. */
void trainer_report_progress(trainer *tr, loop_state *ls, int64_t done, double lr) {
  const dpm_config *cfg = &tr->cfg;
  const int G = tr->step.total_groups;
  double eps = trainer_epsilon_now(tr);
  if (tr->rank == 0) {
    char eta[32], epsbuf[32];
    trainer_fmt_duration((dpm_time() - ls->t_start) / (double)(done - tr->start) * (double)(tr->steps - done), eta, sizeof eta);
    if (tr->dp) snprintf(epsbuf, sizeof epsbuf, "eps %.4f", eps); else snprintf(epsbuf, sizeof epsbuf, "non-private");
    const dpm_step_stats *win = &ls->win;
    double n = win->examples > 0 ? win->examples : 1;
    const int w = (int)log10((double)tr->steps) + 1;
    if (cfg->private_stats)
      printf("step %*lld/%lld  epoch %.2f  loss %.4f  train acc %.3f  clipped %3.0f%%  lr %.4g  ex/s %.0f  %s  ETA %s%s\n",
             w, (long long)done, (long long)tr->steps, (double)done / tr->steps_per_epoch, win->loss / n,
             win->correct / (tr->tokens ? (win->tokens > 0 ? win->tokens : 1) : n), 100 * win->clipped / (n * (G > 0 ? G : 1)), lr, ls->examples_total / ls->t_train,
             epsbuf, eta, tr->any_seeded ? "  [seeded]" : "");
    else /* DP-safe values only: no statistic of a private batch, its realized size included */
      printf("step %*lld/%lld  epoch %.2f  lr %.4g  ex/s %.0f (expected batch)  %s  ETA %s  elapsed %.0fs%s\n", w,
             (long long)done, (long long)tr->steps, (double)done / tr->steps_per_epoch, lr,
             trainer_expected_per_s(tr, done, ls->t_train), epsbuf, eta, dpm_time() - ls->t_start,
             tr->any_seeded ? "  [seeded]" : "");
    fflush(stdout);
  }
  ls->win = (dpm_step_stats){0};
}

/* Collective: the segment ends at step `done` on signal `sig` (the journal, then rank 0's line). */
void trainer_report_stop(trainer *tr, int sig, int64_t done) {
  trainer_journal(tr, "end %lld %lld", (long long)done, (long long)dpm_journal_ledger_steps(tr->ledger));
  if (tr->rank != 0) return;
  printf("stopped by signal %d after step %lld: %s; exiting with status %d\n", sig, (long long)done,
         tr->cfg.ckpt_dir ? "checkpoint written, resume with --resume" : "no checkpoint.dir, progress is lost",
         DPM_EXIT_SIGNALLED);
  fflush(stdout);
}

/* Collective: the run is complete (the journal, then rank 0's summary line). */
void trainer_report_done(trainer *tr, const loop_state *ls) {
  trainer_journal(tr, "end %lld %lld", (long long)tr->steps, (long long)dpm_journal_ledger_steps(tr->ledger));
  if (tr->rank != 0) return;
  char wall[32];
  trainer_fmt_duration(dpm_time() - ls->t_start, wall, sizeof wall);
  if (tr->cfg.private_stats)
    printf("done: %lld steps in %s (%.0f examples/s in training steps)", (long long)(tr->steps - tr->start), wall,
           ls->examples_total / (ls->t_train > 0 ? ls->t_train : 1));
  else
    printf("done: %lld steps in %s (%.0f examples/s in training steps, from the expected batch)",
           (long long)(tr->steps - tr->start), wall, trainer_expected_per_s(tr, tr->steps, ls->t_train));
  if (tr->dp) printf(", epsilon %.4f at delta %g", trainer_epsilon_now(tr), tr->cfg.delta);
  printf("\n");
}
