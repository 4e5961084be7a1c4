/* `dpmpi privacy`: epsilon for (q, sigma, steps, delta), or sigma for a target epsilon, or epsilon of the
 * whole ledger of a checkpoint or released model (--ledger FILE), with the RDP and/or tight accountant;
 * text or one JSON object per accountant per line. The tight accountant's headline "epsilon" is its
 * certified upper bound; the Richardson estimate is a secondary figure ("epsilon_estimate"). Runs
 * identically on every rank (pure computation; with --ledger every rank reads the file), only rank 0
 * prints; a user error exits with status 2 on every rank. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "dpmpi/privacy/accountant.h"
#include "dpmpi/privacy/tuning.h"
#include <sys/random.h>
#include "dpmpi/io/ckpt.h"

static const char *usage =
    "usage: dpmpi privacy --sampling-rate Q --noise-multiplier S --steps T --delta D [options]\n"
    "       dpmpi privacy --target-epsilon E --sampling-rate Q --steps T --delta D [options]\n"
    "       dpmpi privacy --ledger FILE [--delta D] [options]\n"
    "       dpmpi privacy --tuning-runs M [--tuning-eta H] --draw-runs\n"
    "Epsilon of T steps of DP-SGD (Poisson sampling with rate Q, Gaussian noise multiplier S, add/remove-one\n"
    "adjacency), or the smallest noise multiplier whose epsilon is at most E, or the epsilon of every event in\n"
    "the privacy ledger of a checkpoint or of a released model (dpmpi export), DP-PCA included.\n"
    "  -q, --sampling-rate Q      in (0, 1] (expected batch size / dataset size)\n"
    "  -s, --noise-multiplier S   > 0 (noise std / clipping norm)\n"
    "  -T, --steps T              >= 1\n"
    "  -d, --delta D              in (0, 1)\n"
    "  -e, --target-epsilon E     calibrate: print the noise multiplier instead of epsilon\n"
    "  -l, --ledger FILE          a checkpoint (file or directory: its newest) or an export; --delta and\n"
    "                             --accountant default to the file's own\n"
    "  -a, --accountant A         rdp (default), tight, or all\n"
    "      --tuning-runs M        private hyper-parameter selection (Papernot and Steinke 2022): epsilon of\n"
    "                             releasing the best of K runs, K random with mean M > 1 (truncated negative\n"
    "                             binomial), each run T steps with its hyper-parameters drawn at random from a\n"
    "                             fixed candidate set; RDP accountant only\n"
    "      --tuning-eta H         the law of K: H > -1; 1 (default) geometric, 0 logarithmic\n"
    "      --draw-runs            print one secret draw of K (from getrandom) for --tuning-runs, and exit\n"
    "      --json                 one JSON object per accountant per line\n"
    "  -h, --help                 this text\n"
    "RDP prints the optimal order. tight prints its certified upper bound as epsilon, then the discretization\n"
    "error and, as a secondary figure, the Richardson estimate (not a bound: it may be below the true epsilon).\n";

static int parse_double(const char *s, const char *name, double *out, char *err) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || *end != '\0' || isnan(v)) return dpm_err(err, "--%s: '%s' is not a number", name, s);
  *out = v;
  return 0;
}

/* An integer in [-2^63, 2^63): digits exactly, or a number such as 1e9 that is an integer. */
static int parse_steps(const char *s, int64_t *out, char *err) {
  char *end;
  errno = 0;
  long long n = strtoll(s, &end, 10);
  if (end != s && *end == '\0') {
    if (errno == ERANGE) return dpm_err(err, "--steps: '%s' is out of range (at most %lld)", s, LLONG_MAX);
    *out = n;
    return 0;
  }
  double v = 0;
  if (parse_double(s, "steps", &v, err)) return -1;
  if (v != floor(v)) return dpm_err(err, "--steps: '%s' is not an integer", s);
  if (!(v >= -0x1p63 && v < 0x1p63)) return dpm_err(err, "--steps: '%s' is out of range (at most %lld)", s, LLONG_MAX);
  *out = (int64_t)v;
  return 0;
}

typedef struct {
  double q, sigma, delta, target;
  int64_t steps;
  int has_q, has_sigma, has_delta, has_target, has_steps, json, help, acct_mask, has_acct;
  double tuning_runs, tuning_eta, tuning_gamma; /* tuning_runs > 0: Papernot-Steinke selection */
  int draw_runs;
  const char *ledger; /* --ledger FILE, or NULL */
} privacy_args;

static int parse_args(int argc, char **argv, privacy_args *a, char *err) {
  static const struct option opts[] = {{"sampling-rate", required_argument, 0, 'q'},
                                       {"noise-multiplier", required_argument, 0, 's'},
                                       {"steps", required_argument, 0, 'T'},
                                       {"delta", required_argument, 0, 'd'},
                                       {"target-epsilon", required_argument, 0, 'e'},
                                       {"accountant", required_argument, 0, 'a'},
                                       {"ledger", required_argument, 0, 'l'},
                                       {"json", no_argument, 0, 'j'},
                                       {"tuning-runs", required_argument, 0, 'M'},
                                       {"tuning-eta", required_argument, 0, 'H'},
                                       {"draw-runs", no_argument, 0, 'D'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  memset(a, 0, sizeof *a);
  a->acct_mask = 1;
  a->tuning_eta = 1;
  int has_eta = 0;
  optind = 0; /* full reset of getopt's state (glibc), argv[0] is "privacy" */
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "q:s:T:d:e:a:l:h", opts, NULL)) != -1) {
    switch (c) {
    case 'q': if (parse_double(optarg, "sampling-rate", &a->q, err)) return -1; a->has_q = 1; break;
    case 's': if (parse_double(optarg, "noise-multiplier", &a->sigma, err)) return -1; a->has_sigma = 1; break;
    case 'd': if (parse_double(optarg, "delta", &a->delta, err)) return -1; a->has_delta = 1; break;
    case 'e': if (parse_double(optarg, "target-epsilon", &a->target, err)) return -1; a->has_target = 1; break;
    case 'T': if (parse_steps(optarg, &a->steps, err)) return -1; a->has_steps = 1; break;
    case 'a':
      if (!strcmp(optarg, "rdp")) a->acct_mask = 1;
      else if (!strcmp(optarg, "tight")) a->acct_mask = 2;
      else if (!strcmp(optarg, "all")) a->acct_mask = 3;
      else return dpm_err(err, "--accountant: '%s' is not one of rdp, tight, all", optarg);
      a->has_acct = 1;
      break;
    case 'l': a->ledger = optarg; break;
    case 'j': a->json = 1; break;
    case 'M': if (parse_double(optarg, "tuning-runs", &a->tuning_runs, err)) return -1; break;
    case 'H': if (parse_double(optarg, "tuning-eta", &a->tuning_eta, err)) return -1; has_eta = 1; break;
    case 'D': a->draw_runs = 1; break;
    case 'h': a->help = 1; return 0;
    default:
      if (optopt) return dpm_err(err, "privacy: option -%c is unknown or lacks its value (see --help)", optopt);
      return dpm_err(err, "privacy: option '%s' is unknown or lacks its value (see --help)", argv[optind - 1]);
    }
  }
  if (optind < argc) return dpm_err(err, "privacy: unexpected argument '%s' (see --help)", argv[optind]);
  if (a->tuning_runs != 0 || has_eta || a->draw_runs) {
    if (!(a->tuning_runs > 1 && a->tuning_runs <= 1e9))
      return dpm_err(err, "--tuning-runs %g: expected the mean number of runs, a number in (1, 1e9]%s", a->tuning_runs,
                     a->tuning_runs == 0 ? " (--tuning-eta and --draw-runs need it)" : "");
    if (!(a->tuning_eta > -1 && a->tuning_eta <= 1e3))
      return dpm_err(err, "--tuning-eta %g: expected a number in (-1, 1000]", a->tuning_eta);
    a->tuning_gamma = dpm_tuning_gamma_for_mean(a->tuning_eta, a->tuning_runs);
    if (!(a->tuning_gamma > 0 && a->tuning_gamma < 1))
      return dpm_err(err, "--tuning-runs %g --tuning-eta %g: no law with that mean", a->tuning_runs, a->tuning_eta);
    if (a->draw_runs) {
      if (a->has_q || a->has_sigma || a->has_steps || a->has_target || a->ledger || a->has_delta)
        return dpm_err(err, "privacy: --draw-runs takes only --tuning-runs and --tuning-eta");
      return 0;
    }
    if (a->ledger) return dpm_err(err, "privacy: --tuning-runs is for one run's parameters, not with --ledger");
    if (a->has_acct && a->acct_mask != 1)
      return dpm_err(err, "privacy: --tuning-runs is a Renyi DP bound: use --accountant rdp");
  }
  if (a->ledger) {
    if (a->has_q || a->has_sigma || a->has_steps || a->has_target)
      return dpm_err(err, "privacy: --ledger takes the events from the file: drop --%s", a->has_q ? "sampling-rate"
                     : a->has_sigma ? "noise-multiplier" : a->has_steps ? "steps" : "target-epsilon");
    if (a->has_delta && !(a->delta > 0 && a->delta < 1)) return dpm_err(err, "--delta %g is outside (0, 1)", a->delta);
    return 0;
  }
  if (!a->has_q) return dpm_err(err, "privacy: --sampling-rate is required");
  if (!a->has_steps) return dpm_err(err, "privacy: --steps is required");
  if (!a->has_delta) return dpm_err(err, "privacy: --delta is required");
  if (a->has_target && a->has_sigma)
    return dpm_err(err, "privacy: give either --noise-multiplier or --target-epsilon, not both");
  if (!a->has_target && !a->has_sigma) return dpm_err(err, "privacy: --noise-multiplier or --target-epsilon is required");
  if (dpm_accountant_check_args(a->q, a->has_sigma ? a->sigma : 1.0, a->delta, a->steps, err)) return -1;
  if (a->has_target && !(a->target > 0 && isfinite(a->target)))
    return dpm_err(err, "--target-epsilon %g must be positive and finite", a->target);
  return 0;
}

typedef struct {
  dpm_accountant_kind kind;
  double eps;      /* the headline: RDP's epsilon, or the tight accountant's certified upper bound */
  double sigma, order, upper, estimate, error, grid; /* tight: upper = eps (kept apart for the JSON field) */
  double one_run;  /* --tuning-runs: the epsilon of one run alone at the same sigma */
} privacy_line;

/* The file of --ledger and what it says (read on every rank). */
typedef struct {
  char path[4096];
  dpm_ledger *L;
  dpm_ckpt_privacy info;
} ledger_file;

static void json_str(const char *s) {
  putchar('"');
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') printf("\\%c", c);
    else if (c < 0x20) printf("\\u%04x", c);
    else putchar(c);
  }
  putchar('"');
}

/* A JSON number, or null when it is not finite (JSON has no inf or nan). */
static void json_num(const char *key, double v) {
  if (isfinite(v)) printf(", \"%s\": %.17g", key, v);
  else printf(", \"%s\": null", key);
}

static void print_line(const privacy_args *a, const ledger_file *lf, const privacy_line *l) {
  const char *name = dpm_accountant_name(l->kind);
  if (a->json) {
    printf("{\"accountant\": \"%s\"", name);
    json_num("epsilon", l->eps);
    printf(", \"epsilon_finite\": %s, \"delta\": %.15g", isfinite(l->eps) ? "true" : "false", a->delta);
    if (lf) {
      printf(", \"ledger\": ");
      json_str(lf->path);
      printf(", \"ledger_rows\": %d, \"file\": \"%s\", \"stats_printed\": %s", dpm_ledger_size(lf->L),
             lf->info.is_export ? "export" : "checkpoint", lf->info.stats_printed ? "true" : "false");
      if (lf->info.is_export)
        printf(", \"recorded_epsilon\": %.17g, \"recorded_delta\": %.15g, \"recorded_accountant\": \"%s\"",
               lf->info.epsilon, lf->info.delta, dpm_accountant_name((dpm_accountant_kind)lf->info.accountant));
    } else {
      printf(", \"sampling_rate\": %.17g, \"noise_multiplier\": %.17g, \"steps\": %lld", a->q, l->sigma,
             (long long)a->steps);
    }
    if (a->has_target) printf(", \"target_epsilon\": %.17g", a->target);
    if (a->tuning_runs > 0) {
      printf(", \"tuning_runs_mean\": %.17g, \"tuning_eta\": %.17g, \"tuning_gamma\": %.17g", a->tuning_runs,
             a->tuning_eta, a->tuning_gamma);
      json_num("epsilon_one_run", l->one_run);
    }
    if (l->kind == DPM_ACCT_RDP && !lf) json_num("order", l->order);
    if (l->kind == DPM_ACCT_TIGHT) {
      json_num("epsilon_upper", l->upper);
      json_num("epsilon_estimate", l->estimate);
      json_num("epsilon_error", l->error);
      json_num("loss_grid", l->grid);
    }
    printf("}\n");
    return;
  }
  if (a->has_target)
    printf("%-5s noise multiplier %.6g  (epsilon %.6g <= target %.6g, delta %g", name, l->sigma, l->eps, a->target,
           a->delta);
  else if (isinf(l->eps)) {
    printf("%-5s epsilon inf  (delta %g): no finite bound%s\n", name, a->delta,
           l->kind == DPM_ACCT_TIGHT ? " (this accountant's pessimistic truncations alone exceed delta at so many "
           "steps, so small a delta or so little noise; try --accountant rdp)" : " (the noise is too small)");
    return;
  } else
    printf("%-5s epsilon %.6g  (delta %g", name, l->eps, a->delta);
  if (l->kind == DPM_ACCT_TIGHT)
    printf(", certified upper bound; discretization error %.2g, loss grid %.2g, estimate %.6g (not a bound)", l->error,
           l->grid, l->estimate);
  else if (!lf)
    printf(", optimal order %g", l->order);
  if (a->tuning_runs > 0)
    printf("; the best of K runs, K truncated negative binomial with eta %g and mean %g (gamma %.6g), Papernot and "
           "Steinke 2022; one run alone: epsilon %.6g", a->tuning_eta, a->tuning_runs, a->tuning_gamma, l->one_run);
  printf(")\n");
}

/* The ledger's rows and what the file records, after the epsilon lines (text output). */
static void print_ledger(const ledger_file *lf) {
  printf("ledger of %s (%s, %d rows):\n", lf->path, lf->info.is_export ? "released model" : "checkpoint",
         dpm_ledger_size(lf->L));
  for (int i = 0; i < dpm_ledger_size(lf->L); i++) {
    int kind;
    double q, sigma;
    int64_t count;
    dpm_ledger_event(lf->L, i, &kind, &q, &sigma, &count);
    printf("  %s q %.8g sigma %.6g x %lld\n", kind == 0 ? "subsampled-gaussian" : "gaussian", q, sigma, (long long)count);
  }
  if (lf->info.is_export)
    printf("the file records epsilon %.6f at delta %g (%s accountant)\n", lf->info.epsilon, lf->info.delta,
           dpm_accountant_name((dpm_accountant_kind)lf->info.accountant));
  if (lf->info.stats_printed)
    printf("note: the run printed noiseless statistics of private batches (output.private_stats): not covered by "
           "this epsilon\n");
}

static int compute(const privacy_args *a, const ledger_file *lf, dpm_accountant_kind kind, privacy_line *l, char *err) {
  memset(l, 0, sizeof *l);
  l->kind = kind;
  l->sigma = a->sigma;
  dpm_pld_result r;
  if (lf) {
    if (kind == DPM_ACCT_RDP) return dpm_ledger_epsilon(lf->L, a->delta, kind, &l->eps, err);
    if (dpm_ledger_pld(lf->L, a->delta, &r, err)) return -1;
  } else if (a->tuning_runs > 0) { /* RDP only (parse_args) */
    if (a->has_target &&
        dpm_tuning_calibrate_sigma(a->target, a->delta, a->q, a->steps, a->tuning_eta, a->tuning_gamma, &l->sigma))
      return dpm_err(err, "--target-epsilon %g: no noise multiplier up to 1e6 reaches it for the best of %g runs (the "
                     "selection alone costs more at this delta; allow fewer runs or a larger epsilon)", a->target,
                     a->tuning_runs);
    l->eps = dpm_tuning_epsilon(a->q, l->sigma, a->steps, a->delta, a->tuning_eta, a->tuning_gamma, &l->order);
    l->one_run = dpm_rdp_epsilon(a->q, l->sigma, a->steps, a->delta, NULL);
    return 0;
  } else {
    if (a->has_target && dpm_calibrate_sigma(a->target, a->delta, a->q, a->steps, kind, &l->sigma, err)) return -1;
    if (kind == DPM_ACCT_RDP) {
      l->eps = dpm_rdp_epsilon(a->q, l->sigma, a->steps, a->delta, &l->order);
      return 0;
    }
    dpm_pld_event ev = {a->q, l->sigma, a->steps};
    if (dpm_pld_epsilon(&ev, 1, a->delta, &r, err)) return -1;
  }
  l->eps = r.epsilon_upper; /* certified: the headline */
  l->upper = r.epsilon_upper;
  l->estimate = r.epsilon_estimate;
  l->error = r.error;
  l->grid = r.grid;
  return 0;
}

/* A checkpoint's ledger gets the steps its run journal knows of beyond it (an export holds them already). */
static int add_journal_steps(const char *ckpt, dpm_ledger *L, char *err) {
  dpm_ckpt_meta meta;
  if (dpm_ckpt_read_meta(MPI_COMM_SELF, ckpt, &meta, err)) return -1;
  int64_t extra;
  int rc = dpm_journal_add_extra(ckpt, &meta, L, &extra, err);
  dpm_ckpt_meta_free(&meta);
  return rc;
}

/* --ledger PATH: a file, or a checkpoint directory (its newest file that reads). */
static int open_ledger(const char *path, ledger_file *lf, char *err) {
  char **list = NULL;
  int n = dpm_ckpt_list(path, &list, err), rc = -1;
  if (n == 0) dpm_err(err, "--ledger %s: no checkpoint files ckpt-STEP.h5 in the directory", path);
  for (int i = 0; i < n; i++) {
    if (rc && dpm_ckpt_read_privacy(list[i], &lf->L, &lf->info, err) == 0) {
      snprintf(lf->path, sizeof lf->path, "%s", list[i]);
      rc = 0;
      if (!lf->info.is_export && add_journal_steps(list[i], lf->L, err)) {
        dpm_ledger_free(lf->L);
        lf->L = NULL;
        rc = -1;
      }
    }
    dpm_free(list[i]);
  }
  dpm_free(list);
  return rc;
}

int dpm_cmd_privacy(int argc, char **argv) {
  char err[DPM_ERRLEN] = "";
  privacy_args a;
  int rank = dpm_world_rank();
  int failed = parse_args(argc, argv, &a, err) != 0;
  dpm_exit_if_error(MPI_COMM_WORLD, failed, err);
  if (a.help) {
    if (rank == 0) fputs(usage, stdout);
    return 0;
  }
  if (a.draw_runs) { /* a secret uniform in (0, 1): 53 random bits + 1/2 ulp */
    uint64_t w = 0;
    failed = getrandom(&w, sizeof w, 0) != (ssize_t)sizeof w;
    if (failed) dpm_err(err, "privacy: --draw-runs: getrandom failed: no secret random source");
    dpm_exit_if_error(MPI_COMM_WORLD, failed, err);
    double u = ((double)(w >> 11) + 0.5) * 0x1p-53;
    if (rank == 0) {
      if (a.json) printf("{\"runs\": %lld}\n", (long long)dpm_tuning_draw(a.tuning_eta, a.tuning_gamma, u));
      else printf("%lld\n", (long long)dpm_tuning_draw(a.tuning_eta, a.tuning_gamma, u));
      fflush(stdout);
    }
    return 0;
  }
  ledger_file lf_store, *lf = NULL;
  if (a.ledger) {
    memset(&lf_store, 0, sizeof lf_store);
    lf = &lf_store;
    failed = open_ledger(a.ledger, lf, err) != 0;
    dpm_exit_if_error(MPI_COMM_WORLD, failed, err);
    if (!a.has_delta) a.delta = lf->info.delta;
    if (!a.has_acct) a.acct_mask = lf->info.accountant == DPM_ACCT_RDP ? 1 : 2;
  }
  privacy_line lines[2];
  int n = 0;
  for (int k = 0; k < 2 && !failed; k++) {
    if (!(a.acct_mask & (1 << k))) continue;
    failed = compute(&a, lf, k == 0 ? DPM_ACCT_RDP : DPM_ACCT_TIGHT, &lines[n], err) != 0;
    n++;
  }
  if (failed && lf) dpm_ledger_free(lf->L);
  dpm_exit_if_error(MPI_COMM_WORLD, failed, err);
  if (rank == 0) {
    for (int i = 0; i < n; i++) print_line(&a, lf, &lines[i]);
    if (lf && !a.json) print_ledger(lf);
    fflush(stdout);
  }
  if (lf) dpm_ledger_free(lf->L);
  return 0;
}
