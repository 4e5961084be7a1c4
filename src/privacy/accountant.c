/* Accountant: RDP of the Poisson-subsampled Gaussian, RDP -> (eps, delta) conversions, the ledger (with
 * its HDF5 form) and noise / step calibration. The tight (PLD) accountant lives in pld.c.
 * Method and error bounds: docs/accountant.md. */
#include "dpmpi/privacy/accountant.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define MAX_ORDERS 256
#define LOG_HALF (-0.69314718055994530942)

/* ---- orders ---------------------------------------------------------------------------------- */

static double g_orders[MAX_ORDERS];
static int g_n_orders = 0;

static void init_orders(void) {
  if (g_n_orders) return; /* idempotent: racing initializers write identical values */
  static const int big[] = {72, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024};
  int n = 0;
  double tmp[MAX_ORDERS];
  for (int i = 11; i <= 109; i++) tmp[n++] = i / 10.0; /* 1.1 .. 10.9 */
  for (int a = 11; a <= 64; a++) tmp[n++] = a;
  for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) tmp[n++] = big[i];
  memcpy(g_orders, tmp, sizeof(double) * (size_t)n);
  g_n_orders = n;
}

int dpm_rdp_default_orders(const double **orders) {
  init_orders();
  if (orders) *orders = g_orders;
  return g_n_orders;
}

const char *dpm_accountant_name(dpm_accountant_kind kind) { return kind == DPM_ACCT_TIGHT ? "tight" : "rdp"; }

int dpm_accountant_parse(const char *name, dpm_accountant_kind *kind) {
  if (!strcmp(name, "rdp")) *kind = DPM_ACCT_RDP;
  else if (!strcmp(name, "tight") || !strcmp(name, "pld")) *kind = DPM_ACCT_TIGHT;
  else return -1;
  return 0;
}

/* ---- log-space helpers ----------------------------------------------------------------------- */

/* log(erfc(x)) for every real x, without underflow and with full relative precision of erfc near 2. */
static double log_erfc(double x) {
  if (x < 0) return M_LN2 + log1p(-0.5 * erfc(-x));
  if (x < 25) return log(erfc(x));
  /* erfc(x) = exp(-x^2) / (x sqrt(pi)) * sum_k (-1)^k (2k-1)!! / (2x^2)^k, asymptotic; at x >= 25 ten
   * terms are exact to double precision. */
  double inv = 1.0 / (2.0 * x * x), term = 1.0, sum = 1.0;
  for (int k = 1; k <= 10; k++) {
    term *= -(2.0 * k - 1.0) * inv;
    sum += term;
  }
  return -x * x - log(x) - 0.5 * log(M_PI) + log(sum);
}

/* log(A) for integer order a >= 2, as log1p(A - 1) with A - 1 summed directly:
 * A - 1 = sum_{k=2}^{a} C(a,k) q^k (1-q)^(a-k) (exp(k(k-1)/(2 sigma^2)) - 1), all terms >= 0, so tiny
 * values keep full relative precision. Terms below 1e-26 of the largest are skipped. */
static double log_a_int(double q, double sigma, int a) {
  const double s2 = sigma * sigma, lq = log(q), l1q = log1p(-q), lr = lq - l1q;
  double buf_local[1100];
  double *t = a + 1 <= 1100 ? buf_local : dpm_malloc(sizeof(double) * (size_t)(a + 1));
  double lc = log((double)a) + a * l1q, mx = -INFINITY; /* log C(a, k) + a log(1-q), from k = 1 */
  for (int k = 2; k <= a; k++) {
    lc += log((double)(a - k + 1) / k);
    double x = (double)k * (k - 1) / (2 * s2);
    t[k] = lc + k * lr + (x > 37 ? x : log(expm1(x)));
    if (t[k] > mx) mx = t[k];
  }
  if (mx == -INFINITY) { /* every term underflowed (sigma ~ 1e154 or more): A - 1 = 0 */
    if (t != buf_local) dpm_free(t);
    return 0;
  }
  double sum = 0; /* >=: at |mx| > 2^58, mx - 60 rounds to mx, and the largest term must still count */
  for (int k = 2; k <= a; k++)
    if (t[k] >= mx - 60) sum += exp(t[k] - mx);
  if (t != buf_local) dpm_free(t);
  double lam1 = mx + log(sum); /* log(A - 1) */
  return lam1 > 37 ? lam1 + log1p(exp(-lam1)) : log1p(exp(lam1));
}

/* log(A) for fractional order a > 1 by the Mironov-Talwar-Zhang series: split the integral at
 * z0 = sigma^2 log(1/q - 1) + 1/2 where (1-q) mu0 = q mu1, expand (1 - q + q L)^a binomially on each
 * side (generalized binomial coefficients), integrate each term in closed form with erfc. Terms for
 * i > a + 1 alternate in sign and decay, so the remainder is below the last term; we stop when it is
 * below 1e-12 of |A - 1| (and the terms beyond z0 are also that small). Long double accumulation. */
double dpm_rdp_log_a_series(double q, double sigma, double a) {
  const long double s2 = (long double)sigma * sigma, lq = logl(q), l1q = log1pl(-(long double)q);
  const double z0 = (double)(s2 * logl(1.0L / q - 1.0L) + 0.5L);
  const double rs = 1.0 / (M_SQRT2 * sigma);
  /* Upper bound on the log of any term past z0's neighbourhood (see docs/accountant.md). */
  const double tail_level = a * M_LN2 + (double)(a * l1q) - (z0 > 0 ? z0 * z0 / (2 * (double)s2) : 0);
  long double lc = 0, mx = -INFINITY, acc = 0;
  int sign = 1;
  for (long i = 0; i < 4000000; i++) {
    if (i > 0) {
      long double f = a - (long double)(i - 1);
      lc += logl(fabsl(f)) - logl((long double)i);
      if (f < 0) sign = -sign;
    }
    long double j = a - i;
    long double ls0 = lc + i * lq + j * l1q + ((long double)i * i - i) / (2 * s2) + LOG_HALF +
                      log_erfc((i - z0) * rs);
    long double ls1 = lc + j * lq + i * l1q + (j * j - j) / (2 * s2) + LOG_HALF + log_erfc((z0 - (double)j) * rs);
    long double lm = ls0 > ls1 ? ls0 : ls1;
    if (lm > mx) {
      acc = isinf(mx) ? 0 : acc * expl(mx - lm);
      mx = lm;
    }
    acc += sign * (expl(ls0 - mx) + expl(ls1 - mx));
    if (i > a + 1) {
      if (!(acc > 0)) return INFINITY; /* cannot happen for a convergent series; be safe */
      long double la = mx + logl(acc);
      long double lam1 = la > 30 ? la : logl(fabsl(expm1l(la)) + LDBL_MIN);
      long double tol = lam1 - 27.6L; /* 1e-12 of |A - 1| */
      if (lm < tol && (i > z0 || tail_level < tol - 5)) return (double)la;
    }
  }
  return INFINITY;
}


/* Fractional orders by quadrature (the default): with x = sigma u, u ~ N(0,1), w = u/sigma - 1/(2 sigma^2),
 *   A - 1 = int phi(u) [ (1 + q expm1(w))^a - 1 - a q expm1(w) ] du
 * (the subtracted term has mean zero, so the integrand is O(q^2) and A - 1 keeps its relative precision).
 * The integrand is analytic in the strip |Im u| < pi sigma and decays like a Gaussian, so the trapezoid
 * rule with step h = min(0.5, 0.3 sigma) converges geometrically: error ~ exp(-2 pi (pi sigma)/h) <
 * 1e-27 relative to the integrand's scale. Nodes span [-12, a_max/sigma + 12] (the integrand peaks at
 * u = 0 and u = a/sigma, both with unit width). Node data are shared by all orders of one (q, sigma). */
typedef struct {
  int n; /* 0: too many nodes (tiny sigma): the fractional orders are skipped */
  double *lphi, *phi, *L, *m; /* log phi(u_k) + log h, phi(u_k) h, log1p(q expm1(w_k)), phi(u_k) h q expm1(w_k) */
} quad_nodes;

/* At most this many nodes (32 MB). The count grows like a_max / (0.3 sigma^2): it is reached only below
 * sigma ~ 0.006 (where epsilon is enormous anyway); the fractional orders then give no bound (+inf) and the
 * integer orders alone decide, which stays an upper bound (a minimum over fewer orders). */
#define QUAD_MAX_NODES (1 << 20)

static void quad_build(quad_nodes *Q, double q, double sigma, double amax) {
  double h = fmin(0.5, 0.3 * sigma), lo = -12.0, hi = fmax(12.0, amax / sigma + 12.0);
  double nd = ceil((hi - lo) / h) + 1;
  memset(Q, 0, sizeof *Q);
  if (!(nd <= QUAD_MAX_NODES)) return;
  int n = (int)nd;
  Q->n = n;
  Q->lphi = dpm_malloc(sizeof(double) * 4 * (size_t)n);
  Q->phi = Q->lphi + n;
  Q->L = Q->phi + n;
  Q->m = Q->L + n;
  const double c = -0.5 * log(2 * M_PI) + log(h);
  for (int k = 0; k < n; k++) {
    double u = lo + k * h, w = u / sigma - 0.5 / (sigma * sigma);
    Q->lphi[k] = c - 0.5 * u * u;
    Q->phi[k] = exp(Q->lphi[k]);
    double em = expm1(w);
    /* log1p(q expm1(w)) without overflow for large w: log(1 - q + q e^w) = w + log q + log1p((1-q) e^-w / q) */
    Q->L[k] = w > 30 ? w + log(q) + log1p((1 - q) * exp(-w) / q) : log1p(q * em);
    Q->m[k] = w > 30 ? exp(Q->lphi[k] + log(q) + w + log1p(-exp(-w))) : Q->phi[k] * q * em;
  }
}

static double quad_log_a(const quad_nodes *Q, double a) {
  if (Q->n == 0) return INFINITY; /* no nodes (quad_build): no bound at this order */
  double mx = -INFINITY;
  for (int k = 0; k < Q->n; k++) {
    double aL = a * Q->L[k];
    if (aL > 0.5) {
      double l = Q->lphi[k] + aL;
      if (l > mx) mx = l;
    }
  }
  /* sum small terms directly and large terms scaled by exp(-mx) */
  double small = 0, big = 0, sub = 0;
  for (int k = 0; k < Q->n; k++) {
    double aL = a * Q->L[k];
    if (aL > 0.5) {
      big += exp(Q->lphi[k] + aL - mx);
      sub += Q->phi[k] + a * Q->m[k];
    } else {
      small += Q->phi[k] * expm1(aL) - a * Q->m[k];
    }
  }
  double am1; /* A - 1 */
  if (big > 0) {
    double lb = mx + log(big);
    if (lb > 700) return lb + log1p(exp(-lb) * (1 + small - sub)); /* A huge: A - 1 ~ A */
    am1 = exp(lb) - sub + small;
  } else {
    am1 = small;
  }
  if (!(am1 > -1)) return INFINITY;
  return log1p(am1);
}

double dpm_rdp_subsampled_gaussian(double q, double sigma, double order) {
  if (!(q > 0 && q <= 1 && sigma > 0 && order > 1)) return NAN;
  if (q == 1.0) return order / (2.0 * sigma * sigma);
  double la;
  if (order == floor(order) && order <= 1e6) la = log_a_int(q, sigma, (int)order);
  else {
    quad_nodes Q;
    quad_build(&Q, q, sigma, order);
    la = quad_log_a(&Q, order);
    if (Q.n) dpm_free(Q.lphi);
  }
  return la / (order - 1.0);
}

void dpm_rdp_vector(double q, double sigma, const double *orders, int n, double *rdp) {
  if (q == 1.0) {
    for (int i = 0; i < n; i++) rdp[i] = orders[i] / (2.0 * sigma * sigma);
    return;
  }
  double amax = 0;
  for (int i = 0; i < n; i++)
    if (orders[i] != floor(orders[i]) && orders[i] > amax) amax = orders[i];
  quad_nodes Q = {0};
  if (amax > 0) quad_build(&Q, q, sigma, amax);
  for (int i = 0; i < n; i++) {
    double a = orders[i];
    if (!(a > 1)) rdp[i] = NAN;
    else if (a == floor(a) && a <= 1e6) rdp[i] = log_a_int(q, sigma, (int)a) / (a - 1);
    else rdp[i] = quad_log_a(&Q, a) / (a - 1);
  }
  if (Q.n) dpm_free(Q.lphi);
}

/* The order-dependent constant of the conversion: eps = rdp + conv(a). */
static double conv_term(double a, double log_delta, int classic) {
  if (classic) return -log_delta / (a - 1.0);
  return log1p(-1.0 / a) - (log_delta + log(a)) / (a - 1.0);
}

double dpm_rdp_to_epsilon(const double *orders, const double *rdp, int n, double delta, int classic,
                          double *best_order) {
  double ld = log(delta), best = INFINITY, bo = NAN;
  for (int i = 0; i < n; i++) {
    if (!isfinite(rdp[i])) continue;
    double e = rdp[i] + conv_term(orders[i], ld, classic);
    if (e < best) {
      best = e;
      bo = orders[i];
    }
  }
  if (best_order) *best_order = bo;
  return best < 0 ? 0 : best;
}

double dpm_rdp_epsilon_orders(double q, double sigma, int64_t steps, double delta, const double *orders,
                              int n, int classic, double *best_order) {
  if (!(q > 0 && q <= 1 && sigma > 0 && steps >= 0 && delta > 0 && delta < 1) || n < 1) {
    if (best_order) *best_order = NAN;
    return NAN;
  }
  if (steps == 0) {
    if (best_order) *best_order = NAN;
    return 0;
  }
  double *r = dpm_malloc(sizeof(double) * (size_t)n);
  dpm_rdp_vector(q, sigma, orders, n, r);
  for (int i = 0; i < n; i++) r[i] *= (double)steps;
  double e = dpm_rdp_to_epsilon(orders, r, n, delta, classic, best_order);
  dpm_free(r);
  return e;
}

double dpm_rdp_epsilon(double q, double sigma, int64_t steps, double delta, double *best_order) {
  const double *o;
  int n = dpm_rdp_default_orders(&o);
  return dpm_rdp_epsilon_orders(q, sigma, steps, delta, o, n, 0, best_order);
}

int dpm_accountant_check_args(double q, double sigma, double delta, int64_t steps, char err[DPM_ERRLEN]) {
  if (!(q > 0 && q <= 1)) return dpm_err(err, "sampling rate %g is outside (0, 1]", q);
  if (!(sigma > 0) || !isfinite(sigma)) return dpm_err(err, "noise multiplier %g must be positive and finite", sigma);
  if (!(delta > 0 && delta < 1)) return dpm_err(err, "delta %g is outside (0, 1)", delta);
  if (steps < 1) return dpm_err(err, "steps %lld must be at least 1", (long long)steps);
  return 0;
}

/* ---- ledger ---------------------------------------------------------------------------------- */

typedef struct {
  int kind; /* 0: subsampled Gaussian segment, 1: Gaussian release */
  double q, sigma;
  int64_t count;
  double *rdp; /* one-step RDP at the default orders */
} ledger_event;

struct dpm_ledger {
  int n, cap;
  ledger_event *ev;
};

dpm_ledger *dpm_ledger_create(void) { return dpm_calloc(1, sizeof(dpm_ledger)); }

void dpm_ledger_free(dpm_ledger *L) {
  if (!L) return;
  for (int i = 0; i < L->n; i++) dpm_free(L->ev[i].rdp);
  dpm_free(L->ev);
  dpm_free(L);
}

static void ledger_push(dpm_ledger *L, int kind, double q, double sigma, int64_t count) {
  if (L->n == L->cap) {
    L->cap = L->cap ? 2 * L->cap : 8;
    L->ev = dpm_realloc(L->ev, sizeof(ledger_event) * (size_t)L->cap);
  }
  const double *o;
  int no = dpm_rdp_default_orders(&o);
  ledger_event *e = &L->ev[L->n++];
  e->kind = kind;
  e->q = q;
  e->sigma = sigma;
  e->count = count;
  e->rdp = dpm_malloc(sizeof(double) * (size_t)no);
  dpm_rdp_vector(q, sigma, o, no, e->rdp);
}

void dpm_ledger_add_sgm(dpm_ledger *L, double q, double sigma, int64_t steps) {
  DPM_ASSERT(L && q > 0 && q <= 1 && sigma > 0 && isfinite(sigma) && steps >= 0);
  if (L->n > 0) {
    ledger_event *last = &L->ev[L->n - 1];
    if (last->kind == 0 && last->q == q && last->sigma == sigma) {
      last->count += steps;
      return;
    }
  }
  ledger_push(L, 0, q, sigma, steps);
}

void dpm_ledger_add_gaussian(dpm_ledger *L, double s, int64_t count) {
  DPM_ASSERT(L && s > 0 && isfinite(s) && count >= 0);
  ledger_push(L, 1, 1.0, s, count);
}

void dpm_ledger_append(dpm_ledger *L, int kind, double q, double sigma, int64_t count) {
  DPM_ASSERT((kind == 0 || kind == 1) && count >= 0);
  ledger_push(L, kind, q, sigma, count);
}

int dpm_ledger_size(const dpm_ledger *L) { return L->n; }

void dpm_ledger_event(const dpm_ledger *L, int i, int *kind, double *q, double *sigma, int64_t *count) {
  DPM_ASSERT(i >= 0 && i < L->n);
  const ledger_event *e = &L->ev[i];
  if (kind) *kind = e->kind;
  if (q) *q = e->q;
  if (sigma) *sigma = e->sigma;
  if (count) *count = e->count;
}

/* Total RDP of the ledger at the default orders into tot; returns the number of orders. */
static int ledger_rdp(const dpm_ledger *L, double *tot) {
  const double *o;
  int no = dpm_rdp_default_orders(&o);
  for (int a = 0; a < no; a++) tot[a] = 0;
  for (int i = 0; i < L->n; i++) {
    const ledger_event *e = &L->ev[i];
    if (e->count == 0) continue;
    double c = (double)e->count;
    for (int a = 0; a < no; a++) tot[a] += c * e->rdp[a];
  }
  return no;
}

static int64_t ledger_total_count(const dpm_ledger *L) {
  int64_t t = 0;
  for (int i = 0; i < L->n; i++) t += L->ev[i].count;
  return t;
}

/* Events (plus an optional extra segment) for the tight accountant. */
static dpm_pld_event *ledger_pld_events(const dpm_ledger *L, double q, double sigma, int64_t extra, int *n) {
  dpm_pld_event *ev = dpm_malloc(sizeof(dpm_pld_event) * (size_t)(L->n + 1));
  int m = 0;
  for (int i = 0; i < L->n; i++) {
    if (L->ev[i].count == 0) continue;
    ev[m].q = L->ev[i].q;
    ev[m].sigma = L->ev[i].sigma;
    ev[m].count = L->ev[i].count;
    m++;
  }
  if (extra > 0) {
    ev[m].q = q;
    ev[m].sigma = sigma;
    ev[m].count = extra;
    m++;
  }
  *n = m;
  return ev;
}

int dpm_ledger_epsilon(const dpm_ledger *L, double delta, dpm_accountant_kind kind, double *eps,
                       char err[DPM_ERRLEN]) {
  if (!(delta > 0 && delta < 1)) return dpm_err(err, "delta %g is outside (0, 1)", delta);
  if (ledger_total_count(L) == 0) {
    *eps = 0;
    return 0;
  }
  if (kind == DPM_ACCT_RDP) {
    double tot[MAX_ORDERS];
    const double *o;
    int no = ledger_rdp(L, tot);
    dpm_rdp_default_orders(&o);
    *eps = dpm_rdp_to_epsilon(o, tot, no, delta, 0, NULL);
    return 0;
  }
  dpm_pld_result r;
  if (dpm_ledger_pld(L, delta, &r, err)) return -1;
  *eps = r.epsilon_upper;
  return 0;
}

int dpm_ledger_pld(const dpm_ledger *L, double delta, dpm_pld_result *res, char err[DPM_ERRLEN]) {
  int n;
  dpm_pld_event *ev = ledger_pld_events(L, 0, 0, 0, &n);
  int rc = dpm_pld_epsilon(ev, n, delta, res, err);
  dpm_free(ev);
  return rc;
}

#define STEPS_CAP ((int64_t)1 << 62)

int dpm_ledger_max_steps(const dpm_ledger *L, double q, double sigma, double target, double delta,
                         dpm_accountant_kind kind, int64_t *steps, char err[DPM_ERRLEN]) {
  if (dpm_accountant_check_args(q, sigma, delta, 1, err)) return -1;
  if (!(target >= 0) || isnan(target)) return dpm_err(err, "target epsilon %g must be non-negative", target);
  *steps = 0;
  if (kind == DPM_ACCT_RDP) {
    /* eps(T) = max(0, min_a [base(a) + T r(a) + conv(a)]): per order, the largest T is a division. */
    double base[MAX_ORDERS], r[MAX_ORDERS];
    const double *o;
    int no = ledger_rdp(L, base);
    dpm_rdp_default_orders(&o);
    dpm_rdp_vector(q, sigma, o, no, r);
    double ld = log(delta);
    int64_t best = 0;
    for (int a = 0; a < no; a++) {
      double room = target - base[a] - conv_term(o[a], ld, 0);
      if (!(room >= 0) || !isfinite(r[a])) continue;
      double t = r[a] > 0 ? floor(room / r[a]) : (double)STEPS_CAP;
      int64_t ti = t >= (double)STEPS_CAP ? STEPS_CAP : (int64_t)t;
      /* guard the rounding of the division: step down until the order's bound holds */
      while (ti > 0 && base[a] + (double)ti * r[a] + conv_term(o[a], ld, 0) > target) ti--;
      if (ti > best) best = ti;
    }
    *steps = best;
    return 0;
  }
  /* tight: exponential search then bisection on T (eps is non-decreasing in T) */
  int64_t lo = 0, hi = 1; /* eps(lo) <= target (lo = 0 means: the ledger as is) */
  for (;;) {
    int n;
    dpm_pld_event *ev = ledger_pld_events(L, q, sigma, hi, &n);
    dpm_pld_result res;
    int rc = dpm_pld_epsilon(ev, n, delta, &res, err);
    dpm_free(ev);
    /* the arguments are valid (checked above): a failure is a loss grid beyond the accountant's range, at
     * more steps than the last certified count lo; stop the search there (pessimistic) */
    if (rc && hi > 1) break;
    if (rc) return rc;
    if (res.epsilon_upper > target) break;
    lo = hi;
    if (hi >= ((int64_t)1 << 40)) {
      *steps = lo;
      return 0;
    }
    hi *= 2;
  }
  while (hi - lo > 1) {
    int64_t mid = lo + (hi - lo) / 2;
    int n;
    dpm_pld_event *ev = ledger_pld_events(L, q, sigma, mid, &n);
    dpm_pld_result res;
    int rc = dpm_pld_epsilon(ev, n, delta, &res, err);
    dpm_free(ev);
    if (rc || res.epsilon_upper > target) hi = mid; /* rc: beyond the accountant's range, as above */
    else lo = mid;
  }
  *steps = lo;
  return 0;
}

/* ---- calibration ----------------------------------------------------------------------------- */

/* Epsilon of the events of `prior` (NULL: none) followed by `steps` steps of (q, sigma). */
static int eps_of(const dpm_ledger *prior, double q, double sigma, int64_t steps, double delta,
                  dpm_accountant_kind kind, double *eps, char *err) {
  if (prior && ledger_total_count(prior) > 0) { /* after other releases (DP-PCA): heterogeneous composition */
    if (kind == DPM_ACCT_RDP) {
      double tot[MAX_ORDERS], r[MAX_ORDERS];
      const double *o;
      int no = ledger_rdp(prior, tot);
      dpm_rdp_default_orders(&o);
      dpm_rdp_vector(q, sigma, o, no, r);
      for (int a = 0; a < no; a++) tot[a] += (double)steps * r[a];
      *eps = dpm_rdp_to_epsilon(o, tot, no, delta, 0, NULL);
      return 0;
    }
    int n;
    dpm_pld_event *ev = ledger_pld_events(prior, q, sigma, steps, &n);
    dpm_pld_result r;
    int rc = dpm_pld_epsilon(ev, n, delta, &r, err);
    dpm_free(ev);
    if (rc) return -1;
    *eps = r.epsilon_upper;
    return 0;
  }
  if (kind == DPM_ACCT_RDP) {
    *eps = dpm_rdp_epsilon(q, sigma, steps, delta, NULL);
    return 0;
  }
  dpm_pld_event ev = {q, sigma, steps};
  dpm_pld_result r;
  if (dpm_pld_epsilon(&ev, 1, delta, &r, err)) return -1;
  *eps = r.epsilon_upper;
  return 0;
}

#define SIGMA_MIN 0.01
#define SIGMA_MAX 1e4

int dpm_calibrate_sigma(double target, double delta, double q, int64_t steps, dpm_accountant_kind kind,
                        double *sigma, char err[DPM_ERRLEN]) {
  return dpm_calibrate_sigma_after(NULL, target, delta, q, steps, kind, sigma, err);
}

int dpm_calibrate_sigma_after(const dpm_ledger *prior, double target, double delta, double q, int64_t steps,
                              dpm_accountant_kind kind, double *sigma, char err[DPM_ERRLEN]) {
  if (dpm_accountant_check_args(q, 1.0, delta, steps, err)) return -1;
  if (!(target > 0) || !isfinite(target)) return dpm_err(err, "target epsilon %g must be positive and finite", target);
  if (prior && ledger_total_count(prior) > 0) { /* the earlier releases alone must leave room */
    double e0;
    if (dpm_ledger_epsilon(prior, delta, kind, &e0, err)) return -1;
    if (!(e0 < target))
      return dpm_err(err, "target epsilon %g is unreachable: the earlier releases alone spend epsilon %g", target, e0);
  }
  /* bracket [lo, hi] with eps(lo) > target >= eps(hi), starting from sigma = 1 */
  double lo = 1.0, hi = 1.0, e;
  if (eps_of(prior, q, 1.0, steps, delta, kind, &e, err)) return -1;
  double e_hi = e;
  if (e > target) {
    for (;;) {
      lo = hi;
      hi = fmin(hi * 4, SIGMA_MAX);
      if (eps_of(prior, q, hi, steps, delta, kind, &e_hi, err)) return -1;
      if (e_hi <= target) break;
      if (hi >= SIGMA_MAX)
        return dpm_err(err, "target epsilon %g is unreachable: even noise multiplier %g gives epsilon %g "
                       "(q %g, %lld steps, delta %g, %s accountant)", target, SIGMA_MAX, e_hi, q,
                       (long long)steps, delta, dpm_accountant_name(kind));
    }
  } else {
    for (;;) {
      hi = lo;
      e_hi = e;
      lo = fmax(lo / 4, SIGMA_MIN);
      if (eps_of(prior, q, lo, steps, delta, kind, &e, err)) return -1;
      if (e > target) break;
      if (lo <= SIGMA_MIN)
        return dpm_err(err, "target epsilon %g is met already at noise multiplier %g (epsilon %g): "
                       "ask for a smaller epsilon", target, SIGMA_MIN, e);
    }
  }
  /* bisection in log sigma: lo fails, hi meets the target */
  while (hi / lo - 1 > 1e-5 && !(target - e_hi < 1e-4 * fmax(target, 0.1))) {
    double mid = sqrt(lo * hi), em;
    if (eps_of(prior, q, mid, steps, delta, kind, &em, err)) return -1;
    if (em > target) lo = mid;
    else {
      hi = mid;
      e_hi = em;
    }
  }
  *sigma = hi;
  return 0;
}

int dpm_calibrate_steps(double target, double delta, double q, double sigma, dpm_accountant_kind kind,
                        int64_t *steps, char err[DPM_ERRLEN]) {
  dpm_ledger *L = dpm_ledger_create();
  int rc = dpm_ledger_max_steps(L, q, sigma, target, delta, kind, steps, err);
  dpm_ledger_free(L);
  return rc;
}
