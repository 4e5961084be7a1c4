/* `dpmpi ckpt info PATH` and `dpmpi export CKPT OUT`: inspect a checkpoint, release a model with its
 * privacy metadata. Rank 0 does the work; every rank returns the same status. */
#include "dpmpi/core/rng.h"
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "dpmpi/privacy/accountant.h"
#include "dpmpi/io/ckpt.h"
#include "dpmpi/io/config.h"
#include "dpmpi/core/common.h"

static const char *CKPT_USAGE =
    "usage: dpmpi ckpt info PATH      (a checkpoint file, or a directory: its newest valid checkpoint)\n"
    "Prints the step, the epsilon spent (the checkpoint's accountant and delta), the ledger, the grid and the\n"
    "job file of a checkpoint written by dpmpi train.\n";
static const char *EXPORT_USAGE =
    "usage: dpmpi export CKPT OUT\n"
    "Writes the released model OUT (HDF5): the parameters of checkpoint CKPT (file or directory) and its privacy\n"
    "metadata (epsilon, delta, accountant, sampling rate, noise multiplier, steps, clipping, dataset size,\n"
    "stats_printed) with the whole privacy ledger, so that 'dpmpi privacy --ledger OUT' recomputes epsilon;\n"
    "nothing secret and no optimizer state.\n";

/* The newest readable checkpoint of path (file or directory), its metadata, ledger and epsilon; the ledger
 * includes the *extra steps its run journal records beyond it (run later, or lost in a crash). */
static int open_ckpt(const char *path, char *found, size_t len, dpm_ckpt_meta *meta, dpm_ledger **L, double *eps,
                     int64_t *extra, char *err) {
  char **list = NULL;
  int n = dpm_ckpt_list(path, &list, err), rc = -1;
  if (n == 0) dpm_err(err, "%s: no checkpoint files ckpt-STEP.h5", path);
  for (int i = 0; i < n; i++) {
    if (rc && dpm_ckpt_read_meta(MPI_COMM_SELF, list[i], meta, err) == 0) {
      if (dpm_ckpt_read_ledger(list[i], L, err) == 0) {
        snprintf(found, len, "%s", list[i]);
        rc = 0;
      } else {
        dpm_ckpt_meta_free(meta);
      }
    }
    dpm_free(list[i]);
  }
  dpm_free(list);
  if (rc) return -1;
  if (dpm_journal_add_extra(found, meta, *L, extra, err)) {
    dpm_ckpt_meta_free(meta);
    dpm_ledger_free(*L);
    return -1;
  }
  *eps = 0;
  if (meta->privacy && dpm_ledger_size(*L) > 0 &&
      dpm_ledger_epsilon(*L, meta->delta, meta->accountant, eps, err)) {
    dpm_ckpt_meta_free(meta);
    dpm_ledger_free(*L);
    return -1;
  }
  return 0;
}

static int cmd_common(int argc, char **argv, int nargs, const char *usage, int (*work)(char **, char *)) {
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  char err[DPM_ERRLEN] = "";
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      if (rank == 0) fputs(usage, stdout);
      return 0;
    }
  int failed = 0;
  if (nargs < 0) failed = 1, dpm_err(err, "ckpt: expected 'ckpt info PATH' (see dpmpi ckpt --help)");
  else if (argc != nargs + 1) failed = 1, dpm_err(err, "%s: expected %d argument%s (see --help)", argv[0], nargs, nargs > 1 ? "s" : "");
  else if (rank == 0) failed = work(argv + 1, err) != 0;
  dpm_exit_if_error(MPI_COMM_WORLD, failed, err);
  return 0;
}

static int info_work(char **args, char *err) {
  dpm_ckpt_meta meta;
  dpm_ledger *L = NULL;
  double eps;
  int64_t extra;
  char found[4096];
  if (open_ckpt(args[0], found, sizeof found, &meta, &L, &eps, &extra, err)) return -1;
  printf("checkpoint: %s (format %d, written by dpmpi %s)\n", found, meta.format, meta.version);
  printf("step: %lld of %lld (%.2f epochs of %lld examples)\n", (long long)meta.step, (long long)meta.steps_total,
         (double)meta.step * meta.q, (long long)meta.n_train);
  printf("grid: %d replicas x %d stages\n", meta.replicas, meta.stages);
  if (meta.privacy)
    printf("privacy: epsilon %.6f at delta %g (%s accountant) after %lld steps of the ledger; sampling rate %.8g, "
           "noise multiplier %.6g, %s clipping C = %g\n", eps, meta.delta, dpm_accountant_name(meta.accountant),
           (long long)dpm_journal_ledger_steps(L), meta.q, meta.sigma,
           dpm_clipping_name(meta.clipping), meta.clip);
  else
    printf("privacy: none (non-private run)\n");
  if (meta.privacy && meta.adaptive) { /* the thresholds: post-processing of the releases */
    printf("adaptive thresholds (target quantile %g, rate %g, %g of the budget on the counts):", meta.target_quantile,
           meta.adaptive_lr, meta.count_noise_fraction);
    for (int k = 0; k < meta.n_thresholds; k++) printf(" %.6g", meta.thresholds[k]);
    printf("\n");
  }
  if (meta.privacy && meta.epsilon > 0) printf("budget: epsilon %g (privacy.epsilon, held on resume)\n", meta.epsilon);
  if (meta.reproducible) {
    printf("randomness: SEEDED (reproducible; not for a private release): steps");
    for (int i = 0; i < meta.n_seeded; i++)
      printf("%s [%lld, %lld)", i ? "," : "", (long long)meta.seeded_steps[2 * i], (long long)meta.seeded_steps[2 * i + 1]);
    printf(" ran seeded, run.seed = %llu last\n", (unsigned long long)meta.seed);
  } else {
    printf("randomness: secure (no key stored)\n");
  }
  printf("random streams: version %d%s\n", meta.rng_stream,
         meta.rng_stream == DPM_RNG_STREAM_VERSION ? " (AES-128 counter mode, Box-Muller: this dpmpi's)"
         : meta.rng_stream == 1 ? " (Philox4x64-10: not resumable by this dpmpi)" : " (unknown to this dpmpi)");
  printf("run: %s, training data digest %016llx\n", meta.run_id, (unsigned long long)meta.data_digest);
  printf("private-batch statistics: %s\n", meta.stats_printed ? "printed by the run (noiseless; not covered by epsilon)"
                                                               : "not printed (output.private_stats = false throughout)");
  printf("ledger (%d rows):\n", dpm_ledger_size(L));
  for (int i = 0; i < dpm_ledger_size(L); i++) {
    int kind;
    double q, sigma;
    int64_t count;
    dpm_ledger_event(L, i, &kind, &q, &sigma, &count);
    printf("  %s q %.8g sigma %.6g x %lld\n", kind == 0 ? "subsampled-gaussian" : "gaussian", q, sigma, (long long)count);
  }
  if (extra > 0)
    printf("  including %lld steps the run journal records beyond this checkpoint (run after it, or lost in a crash)\n",
           (long long)extra);
  if (meta.steps_abandoned + extra > 0)
    printf("  of which %lld steps this model did not use (abandoned branches, steps lost in a crash)\n",
           (long long)(meta.steps_abandoned + extra));
  printf("model.layers: %s\njob:\n%s\n", meta.layers, meta.job);
  dpm_ledger_free(L);
  dpm_ckpt_meta_free(&meta);
  return 0;
}

static int export_work(char **args, char *err) {
  dpm_ckpt_meta meta;
  dpm_ledger *L = NULL;
  double eps;
  int64_t extra;
  char found[4096];
  if (open_ckpt(args[0], found, sizeof found, &meta, &L, &eps, &extra, err)) return -1;
  int rc = dpm_ckpt_export(found, args[1], &meta, L, eps, err);
  if (!rc) printf("exported %s -> %s (step %lld, epsilon %.6f at delta %g)\n", found, args[1], (long long)meta.step, eps,
                  meta.delta);
  dpm_ledger_free(L);
  dpm_ckpt_meta_free(&meta);
  return rc;
}

int dpm_cmd_ckpt(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "info")) return cmd_common(argc - 1, argv + 1, 1, CKPT_USAGE, info_work);
  return cmd_common(argc, argv, -1, CKPT_USAGE, info_work); /* prints help or the usage error */
}

int dpm_cmd_export(int argc, char **argv) { return cmd_common(argc, argv, 2, EXPORT_USAGE, export_work); }
