/* `dpmpi audit canaries|exposure`: the memorization audit of Carlini et al. 2019 ("The Secret Sharer") for
 * byte-level GPT checkpoints. This file owns the two commands: drawing a canary file (dpmpi/io/canaries.h),
 * and for each canary of a file its log-likelihood under the model and its exposure,
 *
 *   exposure = log2 |candidates| - log2 rank,   rank = 1 + #{candidates more likely than the secret},
 *
 * where the candidates are every D-digit string in the pattern's '#' run (10^D) and a candidate's
 * log-likelihood is the sum of the log-probabilities of its D digit tokens given EOT and the pattern's prefix
 * (the full 257-id softmax; the suffix after the digits is not scored). Ties count in the canary's favour
 * (rank = 1 + strictly greater), so a tie never lowers the exposure.
 *
 * Exact rank (--candidates all): the model is causal, so the distribution of digit k depends only on digits
 * 1 .. k-1; one forward of EOT prefix d1 .. d(D-1) gives all D distributions on that path, and the 10
 * candidates ending in its 10 last digits are scored by it: 10^(D-1) forwards of P + D positions score all 10^D
 * candidates exactly (the model is run on its first P + D positions, dpm_cli_load_byte_gpt). The paths are
 * split over the ranks, each rank keeps its candidates' log-likelihoods, the owners share the canaries' own,
 * and the counts above them are summed. --brute-force instead scores every candidate by its own forward over
 * the checkpoint's whole context (10x the forwards, each longer: for tests).
 * Sampled (--candidates sample:M): M candidates uniform with replacement (key: --seed or the OS), scored as
 * above; the rank is estimated as 1 + (10^D - 1) g / M (g = samples more likely than the secret), and, as
 * in Carlini et al. sec. 4.3, extrapolated from a skew-normal fitted (moments) to the samples' log-likelihoods:
 * exposure ~ -log2 P(X > the secret's log-likelihood). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>

#include "cli/commands.h"
#include "dpmpi/core/common.h"
#include "dpmpi/core/rng.h"
#include "dpmpi/io/canaries.h"
#include "dpmpi/io/data.h"
#include "dpmpi/nn/model.h"
#include "dpmpi/parallel/comm.h"
#include "io/atomic.h"

static const char *USAGE =
    "usage: dpmpi audit canaries --pattern P --repeats LIST [--per-repeat K] [--seed S] --out FILE.json\n"
    "       dpmpi audit exposure CKPT --canaries FILE.json [--candidates all|sample:M] [--seed S]\n"
    "                            [--json OUT.json] [--brute-force]\n"
    "\n"
    "A memorization audit (Carlini et al. 2019, \"The Secret Sharer\") of a byte-level GPT.\n"
    "canaries: K canaries (default 1) for each repetition count of LIST (e.g. 0,1,4,16; 0 = a control canary,\n"
    "  never inserted), each the pattern P (printable ASCII with one run of D '#', e.g. 'my code is ######')\n"
    "  with D random digits: from the operating system's CSPRNG, or from --seed S (reproducible). Insert them\n"
    "  with dpmpi data convert --from text --canaries FILE.json (each repetition one training document).\n"
    "exposure: each canary's log-likelihood (its D digit tokens given EOT and the prefix), its rank among all\n"
    "  10^D candidates, and exposure = log2(10^D) - log2(rank) (ties count for the canary). --candidates all\n"
    "  (the default) ranks exactly (10^(D-1) forwards, split over the ranks; up to D = 7); sample:M estimates\n"
    "  the rank from M uniform candidates and extrapolates it with a skew-normal fit (Carlini et al. 4.3).\n"
    "  --brute-force scores each candidate by its own full-context forward (slow; a check of the exact rank).\n"
    "  Prints a table; --json OUT writes it as JSON.\n";

#define EXACT_MAX_DIGITS 7 /* 10^7 candidates: 10^6 forwards, 80 MB of log-likelihoods over the ranks */
#define BATCH 64           /* rows per forward */

static int parse_u64(const char *what, const char *s, unsigned long long *out, char *err) {
  char *end;
  errno = 0;
  *out = strtoull(s, &end, 10);
  if (errno || end == s || *end || s[0] == '-') return dpm_err(err, "audit: %s '%s': expected an integer >= 0", what, s);
  return 0;
}

/* ---- canaries ----------------------------------------------------------------------------------- */

static int canaries_work(int argc, char **argv, int rank, char *err) {
  static const struct option opts[] = {{"pattern", required_argument, NULL, 'p'},
                                       {"repeats", required_argument, NULL, 'r'},
                                       {"per-repeat", required_argument, NULL, 'k'},
                                       {"seed", required_argument, NULL, 's'},
                                       {"out", required_argument, NULL, 'o'},
                                       {NULL, 0, NULL, 0}};
  const char *pattern = NULL, *out = NULL, *list = NULL;
  unsigned long long seed = 0, per = 1;
  int has_seed = 0, c;
  optind = 0;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
    switch (c) {
      case 'p': pattern = optarg; break;
      case 'r': list = optarg; break;
      case 'o': out = optarg; break;
      case 'k':
        if (parse_u64("--per-repeat", optarg, &per, err)) return -1;
        if (per < 1 || per > 100000) return dpm_err(err, "audit canaries: --per-repeat %s: expected 1 to 100000", optarg);
        break;
      case 's':
        if (parse_u64("--seed", optarg, &seed, err)) return -1;
        has_seed = 1;
        break;
      case ':': return dpm_err(err, "audit canaries: option '%s' needs a value", argv[optind - 1]);
      default: return dpm_err(err, "audit canaries: unknown option '%s' (see dpmpi audit --help)", argv[optind - 1]);
    }
  }
  if (optind != argc) return dpm_err(err, "audit canaries: unexpected argument '%s'", argv[optind]);
  if (!pattern) return dpm_err(err, "audit canaries: --pattern P is required (e.g. 'my code is ######')");
  if (!list) return dpm_err(err, "audit canaries: --repeats LIST is required (e.g. 0,1,4,16)");
  if (!out) return dpm_err(err, "audit canaries: --out FILE.json is required");
  int repeats[64], n = 0;
  for (const char *s = list;;) {
    char *end;
    errno = 0;
    const long v = strtol(s, &end, 10);
    if (errno || end == s || v < 0 || v > 1000000 || (*end && *end != ',') || n == 64)
      return dpm_err(err, "audit canaries: --repeats '%s': expected up to 64 integers 0..1000000 separated by commas", list);
    repeats[n++] = (int)v;
    if (!*end) break;
    s = end + 1;
  }
  const dpm_key key = has_seed ? dpm_key_from_seed(seed, DPM_STREAM_CANARY) : dpm_key_secure();
  dpm_canaries cn;
  if (dpm_canaries_make(&cn, pattern, repeats, n, (int)per, &key, has_seed, err)) return -1;
  int rc = 0;
  if (rank == 0) {
    rc = dpm_canaries_write(&cn, out, err);
    if (!rc) {
      long long docs = 0;
      for (int i = 0; i < cn.n; i++) docs += cn.c[i].repeats;
      printf("dpmpi: wrote %s: %d canaries of pattern '%s' (%d digits, %s), %lld training documents to insert\n",
             out, cn.n, cn.pattern, cn.digits, has_seed ? "seeded" : "secure key", docs);
    }
  }
  dpm_canaries_free(&cn);
  return rc;
}

/* ---- scoring ------------------------------------------------------------------------------------ */

typedef struct {
  dpm_model *m;
  int L;            /* positions the model runs (its context) */
  int P, D;         /* prefix bytes, digits */
  const char *prefix;
  float *x;         /* BATCH x L inputs */
  double *lp;       /* BATCH x D x 10: log p(digit c at digit position k) on each row's path */
} scorer;

/* Rows b < nb hold EOT, the prefix and the digits digits[b][0 .. nd) (then id 0); after one forward,
 * lp[b][k][c] = log p(c | EOT prefix digits[b][0 .. k)) for k < D, from the full softmax in double. */
static void score_rows(scorer *s, char digits[][DPM_CANARY_MAX_DIGITS + 1], int nd, int nb) {
  const int L = s->L, V = DPM_BYTES_VOCAB;
  for (int b = 0; b < nb; b++) {
    float *row = s->x + (size_t)b * L;
    row[0] = DPM_BYTES_EOT;
    for (int t = 1; t < L; t++) {
      const int i = t - 1;
      row[t] = i < s->P ? (float)(unsigned char)s->prefix[i] : i < s->P + nd ? (float)(unsigned char)digits[b][i - s->P] : 0.0f;
    }
  }
  dpm_model_forward(s->m, s->x, NULL, nb, NULL);
  const float *out = dpm_model_output(s->m);
  for (int b = 0; b < nb; b++)
    for (int k = 0; k < s->D; k++) {
      const float *l = out + ((size_t)b * L + (size_t)(s->P + k)) * V; /* position P + k predicts digit k */
      double mx = l[0], z = 0;
      for (int v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
      for (int v = 0; v < V; v++) z += exp((double)l[v] - mx);
      const double lse = mx + log(z);
      for (int c = 0; c < 10; c++) s->lp[((size_t)b * s->D + k) * 10 + c] = (double)l['0' + c] - lse;
    }
}

/* The digits of candidate v (D digits, most significant first). */
static void candidate_digits(long long v, int D, char *out) {
  for (int k = D - 1; k >= 0; k--) out[k] = (char)('0' + v % 10), v /= 10;
  out[D] = 0;
}

/* Log-likelihoods of candidates v = 10 j + c for the paths j in [j0, j1) (all 10 c of each), into
 * ll[(j - j0) * 10 + c]: one row per path (its first D - 1 digits). */
static void score_paths(scorer *s, long long j0, long long j1, double *ll) {
  char digits[BATCH][DPM_CANARY_MAX_DIGITS + 1];
  const int D = s->D;
  for (long long j = j0; j < j1; j += BATCH) {
    const int nb = (int)(j1 - j < BATCH ? j1 - j : BATCH);
    for (int b = 0; b < nb; b++) {
      candidate_digits((j + b) * 10, D, digits[b]);
    }
    score_rows(s, digits, D - 1, nb);
    for (int b = 0; b < nb; b++) {
      const double *lp = s->lp + (size_t)b * D * 10;
      double pre = 0;
      for (int k = 0; k < D - 1; k++) pre += lp[k * 10 + (digits[b][k] - '0')];
      for (int c = 0; c < 10; c++) ll[(j + b - j0) * 10 + c] = pre + lp[(D - 1) * 10 + c];
    }
  }
}

/* Log-likelihoods of the candidates v[0 .. n) (any values), each as score_paths scores it. */
static void score_candidates(scorer *s, const long long *v, long long n, double *ll) {
  char digits[BATCH][DPM_CANARY_MAX_DIGITS + 1];
  const int D = s->D;
  for (long long i = 0; i < n; i += BATCH) {
    const int nb = (int)(n - i < BATCH ? n - i : BATCH);
    for (int b = 0; b < nb; b++) candidate_digits(v[i + b], D, digits[b]);
    score_rows(s, digits, D - 1, nb);
    for (int b = 0; b < nb; b++) {
      const double *lp = s->lp + (size_t)b * D * 10;
      double sum = 0;
      for (int k = 0; k < D; k++) sum += lp[k * 10 + (digits[b][k] - '0')];
      ll[i + b] = sum;
    }
  }
}

/* Brute force: candidate v's log-likelihood from a forward of the whole window EOT prefix d1 .. dD (all D
 * digits as inputs, the checkpoint's full context), one candidate per row. */
static void score_brute(scorer *s, long long v0, long long v1, double *ll) {
  char digits[BATCH][DPM_CANARY_MAX_DIGITS + 1];
  const int D = s->D;
  for (long long v = v0; v < v1; v += BATCH) {
    const int nb = (int)(v1 - v < BATCH ? v1 - v : BATCH);
    for (int b = 0; b < nb; b++) candidate_digits(v + b, D, digits[b]);
    score_rows(s, digits, D, nb);
    for (int b = 0; b < nb; b++) {
      double sum = 0;
      for (int k = 0; k < D; k++) sum += s->lp[((size_t)b * D + k) * 10 + (digits[b][k] - '0')];
      ll[v + b - v0] = sum;
    }
  }
}

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* In sorted a[0 .. n): the first index whose value is >= x (lower) or > x (upper). */
static long long lower_bound(const double *a, long long n, double x) {
  long long lo = 0, hi = n;
  while (lo < hi) {
    const long long mid = lo + (hi - lo) / 2;
    if (a[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
static long long upper_bound(const double *a, long long n, double x) {
  long long lo = 0, hi = n;
  while (lo < hi) {
    const long long mid = lo + (hi - lo) / 2;
    if (a[mid] <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/* ---- the skew-normal tail (Carlini et al. sec. 4.3) ---------------------------------------------- */

typedef struct {
  double xi, omega, alpha;
} skew_normal;

/* Method of moments: mean, variance and skewness (|skewness| capped below the family's 0.9953). */
static skew_normal skew_normal_fit(const double *x, long long n) {
  double mean = 0, m2 = 0, m3 = 0;
  for (long long i = 0; i < n; i++) mean += x[i];
  mean /= (double)n;
  for (long long i = 0; i < n; i++) {
    const double d = x[i] - mean;
    m2 += d * d, m3 += d * d * d;
  }
  m2 /= (double)n, m3 /= (double)n;
  double g = m2 > 0 ? m3 / pow(m2, 1.5) : 0;
  if (g > 0.99) g = 0.99;
  if (g < -0.99) g = -0.99;
  const double a = pow(fabs(g), 2.0 / 3.0), c = pow((4 - M_PI) / 2, 2.0 / 3.0);
  const double delta = copysign(sqrt(M_PI / 2 * a / (a + c)), g);
  const double omega = sqrt(m2 / (1 - 2 * delta * delta / M_PI));
  skew_normal s = {.xi = mean - omega * delta * sqrt(2 / M_PI), .omega = omega, .alpha = delta / sqrt(1 - delta * delta)};
  return s;
}

/* P(X > x) for X ~ skew-normal: the integral of 2 phi(t) Phi(alpha t) over t > (x - xi) / omega (Simpson,
 * 20000 intervals up to 40; no cancellation in the far tail). */
static double skew_normal_tail(const skew_normal *s, double x) {
  double z = s->omega > 0 ? (x - s->xi) / s->omega : (x > s->xi ? INFINITY : -INFINITY);
  if (z >= 40) return 0;
  if (z < -40) z = -40;
  const int n = 20000;
  const double h = (40 - z) / n;
  double sum = 0;
  for (int i = 0; i <= n; i++) {
    const double t = z + i * h;
    const double f = 2 * exp(-0.5 * t * t) / sqrt(2 * M_PI) * 0.5 * erfc(-s->alpha * t / M_SQRT2);
    sum += f * (i == 0 || i == n ? 1 : i % 2 ? 4 : 2);
  }
  const double p = sum * h / 3;
  return p > 1 ? 1 : p;
}

/* ---- exposure ----------------------------------------------------------------------------------- */

typedef struct {
  const char *ckpt, *canaries, *json;
  long long samples; /* 0: all candidates */
  int brute, has_seed;
  unsigned long long seed;
} exposure_args;

static int parse_exposure(int argc, char **argv, exposure_args *a, char *err) {
  static const struct option opts[] = {{"canaries", required_argument, NULL, 'c'},
                                       {"candidates", required_argument, NULL, 'n'},
                                       {"seed", required_argument, NULL, 's'},
                                       {"json", required_argument, NULL, 'j'},
                                       {"brute-force", no_argument, NULL, 'b'},
                                       {NULL, 0, NULL, 0}};
  memset(a, 0, sizeof *a);
  optind = 0;
  opterr = 0;
  int c;
  unsigned long long v;
  while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
    switch (c) {
      case 'c': a->canaries = optarg; break;
      case 'j': a->json = optarg; break;
      case 'b': a->brute = 1; break;
      case 'n':
        if (!strcmp(optarg, "all")) {
          a->samples = 0;
        } else if (!strncmp(optarg, "sample:", 7) && !parse_u64("--candidates sample:M", optarg + 7, &v, err) && v >= 2 &&
                   v <= 10000000ULL) {
          a->samples = (long long)v;
        } else {
          return dpm_err(err, "audit exposure: --candidates '%s': expected all or sample:M (2 <= M <= 10^7)", optarg);
        }
        break;
      case 's':
        if (parse_u64("--seed", optarg, &a->seed, err)) return -1;
        a->has_seed = 1;
        break;
      case ':': return dpm_err(err, "audit exposure: option '%s' needs a value", argv[optind - 1]);
      default: return dpm_err(err, "audit exposure: unknown option '%s' (see dpmpi audit --help)", argv[optind - 1]);
    }
  }
  if (optind != argc - 1)
    return dpm_err(err, "audit exposure: expected one checkpoint CKPT, got %d arguments (see dpmpi audit --help)",
                   argc - optind);
  a->ckpt = argv[optind];
  if (!a->canaries) return dpm_err(err, "audit exposure: --canaries FILE.json is required (dpmpi audit canaries)");
  if (a->brute && a->samples) return dpm_err(err, "audit exposure: --brute-force ranks all candidates: drop --candidates sample:M");
  return 0;
}

typedef struct {
  double ll;          /* the canary's log-likelihood */
  long long greater;  /* candidates (exact) or samples (sampled) strictly more likely */
  long long ties;     /* other candidates / samples exactly as likely */
  double rank;        /* exact, or estimated */
  double exposure;
  double exposure_sn; /* sampled: the skew-normal extrapolation */
} canary_result;

static void write_json(const exposure_args *a, const char *found, const dpm_canaries *cn, double space,
                       const canary_result *r, char *err, int *failed) {
  cJSON *root = cJSON_CreateObject(), *arr = cJSON_CreateArray();
  cJSON_AddStringToObject(root, "checkpoint", found);
  cJSON_AddStringToObject(root, "canaries_file", a->canaries);
  cJSON_AddStringToObject(root, "pattern", cn->pattern);
  cJSON_AddNumberToObject(root, "digits", cn->digits);
  cJSON_AddNumberToObject(root, "candidates", space);
  cJSON_AddStringToObject(root, "rank", a->samples ? "estimated" : "exact");
  if (a->samples) cJSON_AddNumberToObject(root, "samples", (double)a->samples);
  for (int i = 0; i < cn->n; i++) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "secret", cn->c[i].secret);
    cJSON_AddNumberToObject(o, "repeats", cn->c[i].repeats);
    cJSON_AddNumberToObject(o, "log_likelihood", r[i].ll);
    cJSON_AddNumberToObject(o, a->samples ? "samples_more_likely" : "more_likely", (double)r[i].greater);
    cJSON_AddNumberToObject(o, a->samples ? "samples_as_likely" : "as_likely", (double)r[i].ties);
    cJSON_AddNumberToObject(o, "rank", r[i].rank);
    cJSON_AddNumberToObject(o, "exposure", r[i].exposure);
    if (a->samples) cJSON_AddNumberToObject(o, "exposure_skew_normal", r[i].exposure_sn);
    cJSON_AddItemToArray(arr, o);
  }
  cJSON_AddItemToObject(root, "canaries", arr);
  char *s = cJSON_Print(root);
  cJSON_Delete(root);
  char *tmp = dpm_atomic_tmp_name(a->json);
  FILE *f = fopen(tmp, "w");
  if (!f) {
    *failed = dpm_err(err, "%s: cannot create: %s", tmp, strerror(errno)) != 0;
  } else {
    const int bad = fputs(s, f) < 0 || fputc('\n', f) < 0;
    if (fclose(f) || bad) {
      unlink(tmp);
      *failed = dpm_err(err, "%s: write failed (disk full?)", tmp) != 0;
    } else if (dpm_atomic_commit(tmp, a->json)) {
      *failed = dpm_err(err, "%s: cannot put in place: %s", a->json, strerror(errno)) != 0;
    }
  }
  dpm_free(tmp);
  cJSON_free(s);
}

static int exposure_run(int argc, char **argv, int rank, int nranks) {
  char err[DPM_ERRLEN] = "";
  exposure_args a;
  dpm_canaries cn = {0};
  int failed = parse_exposure(argc, argv, &a, err) != 0;
  if (!failed) failed = dpm_canaries_read(&cn, a.canaries, err) != 0;
  if (!failed && !a.samples && cn.digits > EXACT_MAX_DIGITS)
    failed = dpm_err(err, "audit exposure: %s: %d digits (10^%d candidates) are too many to rank exactly (at most %d): "
                          "use --candidates sample:M", a.canaries, cn.digits, cn.digits, EXACT_MAX_DIGITS) != 0;
  dpm_exit_if_error(MPI_COMM_WORLD, failed, err);
  const int P = cn.prefix_len, D = cn.digits;
  char found[4096];
  int T = 0;
  /* the trie's rows: EOT, prefix, D - 1 digits; brute force: the checkpoint's whole context */
  dpm_model *m = dpm_cli_load_byte_gpt("audit exposure", a.ckpt, a.brute ? 0 : P + D, BATCH, &T, found, sizeof found, err);
  failed = !m;
  if (m && a.brute && T < P + D + 1)
    failed = dpm_err(err, "%s: the model's context is %d tokens, --brute-force needs %d", found, T, P + D + 1) != 0;
  dpm_exit_if_error(MPI_COMM_WORLD, failed, err);
  scorer s = {.m = m, .L = T, .P = P, .D = D, .prefix = cn.pattern};
  s.x = dpm_malloc(sizeof(float) * (size_t)BATCH * T);
  s.lp = dpm_malloc(sizeof(double) * (size_t)BATCH * D * 10);
  long long space = 1;
  for (int k = 0; k < D; k++) space *= 10;
  canary_result *r = dpm_calloc((size_t)cn.n, sizeof *r);
  double *cll = dpm_malloc(sizeof(double) * (size_t)cn.n);
  long long *cnt = dpm_malloc(sizeof(long long) * 2 * (size_t)cn.n);
  const double t0 = MPI_Wtime();
  if (!a.samples) {
    /* exact: this rank's share of the paths (brute force: of the candidates) */
    const long long units = a.brute ? space : space / 10, u0 = units * rank / nranks, u1 = units * (rank + 1) / nranks;
    const long long v0 = a.brute ? u0 : u0 * 10, v1 = a.brute ? u1 : u1 * 10;
    double *ll = dpm_malloc(sizeof(double) * (size_t)(v1 - v0 > 0 ? v1 - v0 : 1));
    if (a.brute) score_brute(&s, u0, u1, ll);
    else score_paths(&s, u0, u1, ll);
    for (int i = 0; i < cn.n; i++) {
      const long long v = atoll(cn.c[i].secret);
      cll[i] = v >= v0 && v < v1 ? ll[v - v0] : -INFINITY;
    }
    MPI_Allreduce(MPI_IN_PLACE, cll, cn.n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    /* sorted, each canary's counts are two binary searches */
    const long long n = v1 - v0;
    qsort(ll, (size_t)n, sizeof *ll, cmp_double);
    for (int i = 0; i < cn.n; i++) {
      const long long above = n - upper_bound(ll, n, cll[i]), from = lower_bound(ll, n, cll[i]);
      cnt[2 * i] = above, cnt[2 * i + 1] = n - from - above;
    }
    dpm_free(ll);
    MPI_Allreduce(MPI_IN_PLACE, cnt, 2 * cn.n, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    for (int i = 0; i < cn.n; i++) {
      r[i].ll = cll[i];
      r[i].greater = cnt[2 * i];
      r[i].ties = cnt[2 * i + 1] - 1; /* the canary itself */
      r[i].rank = 1 + (double)r[i].greater;
      r[i].exposure = log2((double)space) - log2(r[i].rank);
    }
  } else {
    /* sampled: sample k is the first word of stream (key, k, AUDIT) below the largest multiple of 10^D, mod 10^D;
     * every rank scores its share, rank 0 gathers them all for the skew-normal fit */
    const dpm_key key = a.has_seed ? dpm_key_from_seed(a.seed, DPM_STREAM_AUDIT) : dpm_key_secure();
    dpm_key shared = key;
    MPI_Bcast(&shared, sizeof shared, MPI_BYTE, 0, MPI_COMM_WORLD); /* one secure key for all ranks */
    const long long M = a.samples, k0 = M * rank / nranks, k1 = M * (rank + 1) / nranks;
    const uint64_t limit = UINT64_MAX - UINT64_MAX % (uint64_t)space;
    long long *v = dpm_malloc(sizeof(long long) * (size_t)(k1 - k0 > 0 ? k1 - k0 : 1));
    for (long long k = k0; k < k1; k++) {
      uint64_t w = 0, word;
      do dpm_rng_words(&shared, (uint64_t)k, DPM_STREAM_AUDIT, w++, 1, &word);
      while (word >= limit);
      v[k - k0] = (long long)(word % (uint64_t)space);
    }
    double *ll = dpm_malloc(sizeof(double) * (size_t)M); /* rank 0: all samples; others: their share first */
    score_candidates(&s, v, k1 - k0, ll);
    long long *secrets = dpm_malloc(sizeof(long long) * (size_t)cn.n);
    for (int i = 0; i < cn.n; i++) secrets[i] = atoll(cn.c[i].secret);
    if (rank == 0) score_candidates(&s, secrets, cn.n, cll);
    MPI_Bcast(cll, cn.n, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    for (int i = 0; i < cn.n; i++) {
      long long g = 0, t = 0;
      for (long long k = 0; k < k1 - k0; k++) g += ll[k] > cll[i], t += ll[k] == cll[i] && v[k] != secrets[i];
      cnt[2 * i] = g, cnt[2 * i + 1] = t;
    }
    MPI_Allreduce(MPI_IN_PLACE, cnt, 2 * cn.n, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    /* the skew-normal fit on rank 0 over all M samples */
    int *counts = dpm_malloc(sizeof(int) * (size_t)nranks), *displs = dpm_malloc(sizeof(int) * (size_t)nranks);
    for (int q = 0; q < nranks; q++) {
      counts[q] = (int)(M * (q + 1) / nranks - M * q / nranks);
      displs[q] = (int)(M * q / nranks);
    }
    if (rank == 0) MPI_Gatherv(MPI_IN_PLACE, counts[0], MPI_DOUBLE, ll, counts, displs, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    else MPI_Gatherv(ll, (int)(k1 - k0), MPI_DOUBLE, NULL, NULL, NULL, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    skew_normal sn = {0};
    if (rank == 0) sn = skew_normal_fit(ll, M);
    for (int i = 0; i < cn.n; i++) {
      r[i].ll = cll[i];
      r[i].greater = cnt[2 * i];
      r[i].ties = cnt[2 * i + 1];
      r[i].rank = 1 + (double)(space - 1) * (double)r[i].greater / (double)M;
      r[i].exposure = log2((double)space) - log2(r[i].rank);
      if (rank == 0) {
        const double tail = skew_normal_tail(&sn, cll[i]);
        r[i].exposure_sn = tail > 0 ? fmin(-log2(tail), log2((double)space)) : log2((double)space);
      }
    }
    dpm_free(counts);
    dpm_free(displs);
    dpm_free(secrets);
    dpm_free(ll);
    dpm_free(v);
  }
  const double secs = MPI_Wtime() - t0;
  failed = 0;
  if (rank == 0) {
    printf("dpmpi audit exposure: %s, pattern '%s', %lld candidates (10^%d), rank %s%s, %d rank(s), %.1f s\n", found,
           cn.pattern, space, D,
           a.samples ? "estimated from samples" : a.brute ? "exact (brute force: one full forward per candidate)"
                                                          : "exact (every candidate scored)",
           "", nranks, secs);
    if (a.samples) printf("  %lld uniform samples; exposure_sn: skew-normal extrapolation (Carlini et al. 4.3)\n", a.samples);
    printf("%-6s %-*s %7s %14s %14s %9s%s\n", "canary", D > 6 ? D : 6, "secret", "repeats", "log-likelihood",
           a.samples ? "rank_estimate" : "rank", "exposure", a.samples ? "  exposure_sn" : "");
    for (int i = 0; i < cn.n; i++) {
      printf("%-6d %-*s %7d %14.4f %14.0f %9.2f", i + 1, D > 6 ? D : 6, cn.c[i].secret, cn.c[i].repeats, r[i].ll,
             r[i].rank, r[i].exposure);
      if (a.samples) printf("  %11.2f", r[i].exposure_sn);
      printf("\n");
    }
    /* the mean exposure per repetition count */
    printf("mean exposure by repeats (of log2 |candidates| = %.2f):", log2((double)space));
    for (int i = 0; i < cn.n; i++) {
      int seen = 0;
      for (int k = 0; k < i; k++) seen |= cn.c[k].repeats == cn.c[i].repeats;
      if (seen) continue;
      double sum = 0;
      int n = 0;
      for (int k = i; k < cn.n; k++)
        if (cn.c[k].repeats == cn.c[i].repeats) sum += r[k].exposure, n++;
      printf(" %dx %.2f (%d)", cn.c[i].repeats, sum / n, n);
    }
    printf("\n");
    if (a.json) write_json(&a, found, &cn, (double)space, r, err, &failed);
  }
  fflush(stdout);
  dpm_free(cnt);
  dpm_free(cll);
  dpm_free(r);
  dpm_free(s.lp);
  dpm_free(s.x);
  dpm_model_free(m);
  dpm_canaries_free(&cn);
  dpm_exit_if_error(MPI_COMM_WORLD, failed, err);
  return 0;
}

int dpm_cmd_audit(int argc, char **argv) {
  int rank, nranks;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);
  char err[DPM_ERRLEN] = "";
  const char *sub = argc >= 2 ? argv[1] : "";
  if (argc < 2 || !strcmp(sub, "--help") || !strcmp(sub, "-h") ||
      (argc >= 3 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h")))) {
    if (rank == 0) fputs(USAGE, argc < 2 ? stderr : stdout);
    return argc < 2 ? DPM_EXIT_USAGE : 0;
  }
  if (!strcmp(sub, "exposure")) return exposure_run(argc - 1, argv + 1, rank, nranks);
  int failed;
  if (!strcmp(sub, "canaries")) failed = canaries_work(argc - 1, argv + 1, rank, err) != 0;
  else failed = dpm_err(err, "audit: unknown subcommand '%s' (expected canaries or exposure)", sub) != 0;
  fflush(stdout);
  dpm_exit_if_error(MPI_COMM_WORLD, failed, err);
  return 0;
}
