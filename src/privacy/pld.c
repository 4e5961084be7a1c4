/* Tight accountant: the privacy loss distribution (PLD) of the Poisson-subsampled Gaussian, discretized
 * on a loss grid {j h} with the pessimistic "connect the dots" rule (Doroshenko et al. 2022) and composed
 * by FFT convolution (FFTW3) with exponentiation by squaring.
 *
 * Certification. For a pair (P, Q) the hockey-stick curve delta(eps) = E_P[(1 - e^(eps - L))_+] is convex
 * in x = e^eps. The connect-the-dots PLD puts mass only on grid points and its curve is the chord of the
 * true one through the grid points, hence above it: it dominates the mechanism, and domination survives
 * composition. All truncations are pessimistic: loss mass above the window goes to +infinity (counts fully
 * in delta), mass below goes up to the lowest kept point. So epsilon_upper is an upper bound, up to
 * floating-point rounding in the FFT (about 1e-16 of the largest bin per bin; negative round-off is
 * clamped to 0). Both adjacency directions (remove: P = (1-q)N(0,s^2) + qN(1,s^2) vs Q = N(0,s^2); add:
 * the reverse) are composed and the larger epsilon is reported.
 *
 * Error. The chord adds at most h^2/4 of variance per step to the loss; we choose h = 0.2 x (the
 * smallest per-step loss standard deviation), compute the bound on grids h and 2h (nested, so
 * eps(2h) >= eps(h)) and report the bound eps(h), the error eps(2h) - eps(h) and, as a secondary figure,
 * the estimate eps(h) - (eps(2h) - eps(h)) / 3 (the O(h^2) error extrapolated; not a bound). */
#include <complex.h>
#include <fftw3.h>
#include <math.h>
#include <string.h>

#include "dpmpi/privacy/accountant.h"

/* The largest loss grid (points of one distribution) the accountant allocates: 2^24 points, 128 MB, and
 * three such arrays in a convolution. Beyond it (a noise multiplier below ~1e-7 or above ~1e7, or some
 * 10^12 steps) dpm_pld_epsilon fails with a message instead of trying to allocate gigabytes. */
#define PLD_MAX_POINTS ((int64_t)1 << 24)

typedef struct {
  int64_t off; /* loss of p[k] is (off + k) h */
  int64_t n;
  double *p;
  double inf; /* mass at +infinity */
} pmf;

static void pmf_free(pmf *a) {
  if (a->p) fftw_free(a->p);
  a->p = NULL;
}

/* Clamp round-off, then move the top tail (mass <= tau_up) to +infinity and the bottom tail
 * (mass <= tau_lo) up to the lowest kept point. Pessimistic both ways. */
static void pmf_truncate(pmf *a, double tau_up, double tau_lo) {
  int64_t hi = a->n - 1, lo = 0;
  for (int64_t k = 0; k < a->n; k++)
    if (!(a->p[k] > 0)) a->p[k] = 0;
  double cum = 0;
  while (hi > 0 && cum + a->p[hi] <= tau_up) cum += a->p[hi--];
  a->inf += cum;
  cum = 0;
  while (lo < hi && cum + a->p[lo] <= tau_lo) cum += a->p[lo++];
  a->p[lo] += cum;
  if (lo > 0) memmove(a->p, a->p + lo, sizeof(double) * (size_t)(hi - lo + 1));
  a->off += lo;
  a->n = hi - lo + 1;
}

static int64_t nice_size(int64_t n) {
  int64_t best = INT64_MAX;
  for (int64_t p2 = 1; p2 < 2 * n; p2 *= 2)
    for (int64_t p3 = p2; p3 < 2 * n; p3 *= 3)
      for (int64_t p5 = p3; p5 < 2 * n; p5 *= 5)
        if (p5 >= n && p5 < best) best = p5;
  return best;
}

/* out = a * b (convolution of the loss distributions), truncated. b may equal a (squaring). Over
 * PLD_MAX_POINTS: r.p = NULL (nothing allocated). */
static pmf pmf_convolve(const pmf *a, const pmf *b, double tau_up, double tau_lo) {
  pmf r;
  r.off = a->off + b->off;
  r.n = a->n + b->n - 1;
  r.inf = 1 - (1 - a->inf) * (1 - b->inf);
  r.p = NULL;
  if (r.n > PLD_MAX_POINTS) return r;
  int64_t N = nice_size(r.n), M = N / 2 + 1;
  double *x = fftw_malloc(sizeof(double) * (size_t)N);
  fftw_complex *X = fftw_malloc(sizeof(fftw_complex) * (size_t)M), *Y = NULL;
  fftw_plan fwd = fftw_plan_dft_r2c_1d((int)N, x, X, FFTW_ESTIMATE);
  fftw_plan bwd = fftw_plan_dft_c2r_1d((int)N, X, x, FFTW_ESTIMATE);
  memset(x, 0, sizeof(double) * (size_t)N);
  memcpy(x, a->p, sizeof(double) * (size_t)a->n);
  fftw_execute(fwd);
  if (b == a) {
    for (int64_t k = 0; k < M; k++) X[k] = X[k] * X[k];
  } else {
    Y = fftw_malloc(sizeof(fftw_complex) * (size_t)M);
    memcpy(Y, X, sizeof(fftw_complex) * (size_t)M);
    memset(x, 0, sizeof(double) * (size_t)N);
    memcpy(x, b->p, sizeof(double) * (size_t)b->n);
    fftw_execute(fwd);
    for (int64_t k = 0; k < M; k++) X[k] *= Y[k];
    fftw_free(Y);
  }
  fftw_execute(bwd);
  double s = 1.0 / (double)N;
  for (int64_t k = 0; k < r.n; k++) x[k] *= s;
  fftw_destroy_plan(fwd);
  fftw_destroy_plan(bwd);
  fftw_free(X);
  r.p = x;
  pmf_truncate(&r, tau_up, tau_lo);
  return r;
}

/* ---- one step ---------------------------------------------------------------------------------- */

enum { DIR_REMOVE = 0, DIR_ADD = 1 };

/* Tails of N(mu, sigma^2): upper (x > t) and lower (x <= t), each with full relative precision. */
static double upper_tail(double t, double mu, double s) { return 0.5 * erfc((t - mu) / (s * M_SQRT2)); }
static double lower_tail(double t, double mu, double s) { return 0.5 * erfc((mu - t) / (s * M_SQRT2)); }

/* Probability of (x1, x2] under N(mu, s^2), x1 <= x2 (either may be infinite). */
static double gauss_int(double x1, double x2, double mu, double s) {
  if (!(x2 > x1)) return 0;
  if (x1 >= mu) return upper_tail(x1, mu, s) - upper_tail(x2, mu, s);
  if (x2 <= mu) return lower_tail(x2, mu, s) - lower_tail(x1, mu, s);
  return 1 - lower_tail(x1, mu, s) - upper_tail(x2, mu, s);
}

/* The sample x at which the loss equals l (the loss is monotone in x); +-inf outside the range. */
static double x_of_loss(double q, double s, int dir, double l) {
  if (q == 1.0) return s * s * l + 0.5;
  double e = dir == DIR_REMOVE ? expm1(l) + q : expm1(-l) + q; /* q e^w */
  if (!(e > 0)) return -INFINITY; /* the loss bound (log(1-q) / -log(1-q)) is reached as x -> -inf */
  return s * s * log(e / q) + 0.5;
}

/* Loss at sample x (remove: log(1 - q + q e^w), add: its negative), w = (2x - 1) / (2 s^2). */
static double loss_of_x(double q, double s, int dir, double x) {
  double w = (2 * x - 1) / (2 * s * s), l;
  if (q == 1.0) return w;
  l = w > 30 ? w + log(q) + log1p((1 - q) * exp(-w) / q) : log1p(q * expm1(w));
  return dir == DIR_REMOVE ? l : -l;
}

/* P and Q probabilities of the loss interval (a, b]. */
static void interval_pq(double q, double s, int dir, double a, double b, double *P, double *Q) {
  double xa = x_of_loss(q, s, dir, a), xb = x_of_loss(q, s, dir, b);
  double x1 = dir == DIR_REMOVE || q == 1.0 ? xa : xb, x2 = dir == DIR_REMOVE || q == 1.0 ? xb : xa;
  double g0 = gauss_int(x1, x2, 0, s), g1 = gauss_int(x1, x2, 1, s);
  if (q == 1.0) {
    *P = g1;
    *Q = g0;
  } else if (dir == DIR_REMOVE) {
    *P = (1 - q) * g0 + q * g1;
    *Q = g0;
  } else {
    *P = g0;
    *Q = (1 - q) * g0 + q * g1;
  }
}

/* Connect-the-dots PLD of one step on the grid h; the loss range is cut where the P-tail is below tau
 * (the cut tails are handled pessimistically: mass below the range rounds up onto its first point, mass
 * above goes to +infinity). Both ends come from the sample range [-s z, 1 + s z], so the range stays a
 * few grid points wide at a huge sigma too (the bounds log(1-q) and -log(1-q) are not reached). Over
 * PLD_MAX_POINTS (or a grid that is not a positive number): r.p = NULL, r.n = PLD_MAX_POINTS + 1. */
static pmf discretize(double q, double s, int dir, double h, double tau) {
  double z = sqrt(2 * log(1 / tau)); /* upper tail of N(0,1) beyond z is < tau */
  double lo, hi;
  if (q == 1.0) {
    double mu = 1 / s;
    lo = mu * mu / 2 - z * mu;
    hi = mu * mu / 2 + z * mu;
  } else if (dir == DIR_REMOVE) {
    lo = fmax(log1p(-q), loss_of_x(q, s, dir, -s * z));
    hi = loss_of_x(q, s, dir, 1 + s * z);
  } else {
    lo = loss_of_x(q, s, dir, s * z);
    hi = fmin(-log1p(-q), loss_of_x(q, s, dir, -s * z));
  }
  pmf r = {0, PLD_MAX_POINTS + 1, NULL, 0};
  const double flo = floor(lo / h), fhi = ceil(hi / h);
  if (!(h > 0) || !(fhi - flo < (double)PLD_MAX_POINTS) || !isfinite(flo)) return r;
  int64_t jlo = (int64_t)flo, jhi = (int64_t)fhi;
  if (jhi <= jlo) jhi = jlo + 1;
  r.off = jlo;
  r.n = jhi - jlo + 1;
  r.p = fftw_malloc(sizeof(double) * (size_t)r.n);
  memset(r.p, 0, sizeof(double) * (size_t)r.n);
  double P, Q, denom = -expm1(-h);
  /* below the first point: rounded up onto it; above the last: +infinity */
  interval_pq(q, s, dir, -INFINITY, (double)jlo * h, &P, &Q);
  r.p[0] += P;
  interval_pq(q, s, dir, (double)jhi * h, INFINITY, &P, &Q);
  r.inf = P;
  for (int64_t k = 0; k + 1 < r.n; k++) {
    double a = (double)(jlo + k) * h;
    interval_pq(q, s, dir, a, a + h, &P, &Q);
    /* mass at loss l in (a, a+h] splits (1 - e^(a-l)) / (1 - e^-h) up: P and Q masses are preserved */
    double up = (P - exp(a) * Q) / denom;
    if (up < 0) up = 0;
    if (up > P) up = P;
    r.p[k] += P - up;
    r.p[k + 1] += up;
  }
  return r;
}

/* base^T; over PLD_MAX_POINTS: p = NULL (see pmf_convolve). */
static pmf pmf_power(const pmf *base, int64_t T, double tau_up, double tau_lo) {
  pmf res = {0, 1, fftw_malloc(sizeof(double)), 0};
  res.p[0] = 1;
  pmf b = *base;
  b.p = fftw_malloc(sizeof(double) * (size_t)b.n);
  memcpy(b.p, base->p, sizeof(double) * (size_t)b.n);
  while (T > 0 && res.p && b.p) {
    if (T & 1) {
      pmf t = pmf_convolve(&res, &b, tau_up, tau_lo);
      pmf_free(&res);
      res = t;
    }
    T >>= 1;
    if (T && res.p) {
      pmf t = pmf_convolve(&b, &b, tau_up, tau_lo);
      pmf_free(&b);
      b = t;
    }
  }
  if (!b.p) { /* the squaring overflowed */
    pmf_free(&res);
    res.n = b.n;
  }
  pmf_free(&b);
  return res;
}

/* Smallest eps >= 0 with delta(eps) = sum_{l > eps} p_l (1 - e^(eps - l)) + inf <= delta. */
static double pmf_epsilon(const pmf *a, double h, double delta) {
  if (a->inf > delta) return INFINITY;
  /* D[k] = delta at eps = loss of point k = sum_{j > k} p_j (1 - e^{-(j-k)h}) + inf, from the top:
   * S[k] = sum_{j>k} p_j, R[k] = sum_{j>k} p_j e^{-(j-k)h}; D = S - R + inf. */
  long double S = 0, R = 0, eh = expl(-(long double)h);
  double Dprev = a->inf; /* D at k = n - 1 */
  for (int64_t k = a->n - 2; k >= -1; k--) {
    /* move from k+1 to k */
    S += a->p[k + 1];
    R = eh * (R + a->p[k + 1]);
    double D = (double)(S - R) + a->inf;
    double lk = (double)(a->off + k) * h; /* loss of point k (k = -1: one step below the support) */
    if (D > delta || k == -1) {
      if (D <= delta) return lk > 0 ? lk : 0; /* below the whole support: delta(eps) is linear in e^eps */
      /* delta is linear in x = e^eps between the points k and k+1: x = x_k (1 + f (e^h - 1)) */
      double f = (D - delta) / (D - Dprev);
      double e = lk + log1p(f * expm1(h));
      return e > 0 ? e : 0;
    }
    Dprev = D;
    if (lk <= 0) return 0; /* delta(0) <= target */
  }
  return 0;
}

/* Per-step loss standard deviation (rough, for the grid choice). */
static double loss_std(double q, double s) {
  double g = 1 / s;
  if (q == 1.0) return g;
  double v = q * sqrt(expm1(fmin(g * g, 700)));
  return fmin(v, g);
}

/* Truncation budget: each truncation inside the power of an event with T steps can be multiplied by up
 * to T in the composition, so its threshold is 1e-4 delta / (2 T events): all truncations together add
 * at most 1e-4 delta to delta (a relative change of epsilon of order 1e-4 or less), or 2 T 1e-14 when
 * the floor applies (T > 5e9 delta: still pessimistic, only looser for tiny delta and many steps). */
/* NAN when a distribution would exceed PLD_MAX_POINTS. */
static double epsilon_on_grid(const dpm_pld_event *ev, int n, double delta, double h, int dir, int nev) {
  pmf acc = {0, 1, fftw_malloc(sizeof(double)), 0};
  acc.p[0] = 1;
  for (int i = 0; i < n && acc.p; i++) {
    if (ev[i].count == 0) continue;
    /* floored at 1e-14: below that the FFT round-off (~1e-16 of the largest bin per bin) would keep the
     * noise floor from being cut and the window would double at every squaring */
    double tau_up = fmax(1e-4 * delta / (2.0 * (double)ev[i].count * nev + 2.0), 1e-14), tau_lo = tau_up;
    pmf base = discretize(ev[i].q, ev[i].sigma, dir, h, tau_up * 1e-3);
    if (!base.p) {
      pmf_free(&acc);
      acc = base;
      break;
    }
    pmf_truncate(&base, tau_up, tau_lo);
    pmf pw = pmf_power(&base, ev[i].count, tau_up, tau_lo);
    pmf_free(&base);
    if (!pw.p) {
      pmf_free(&acc);
      acc = pw;
      break;
    }
    pmf t = pmf_convolve(&acc, &pw, 1e-4 * delta / (nev + 1), 1e-4 * delta / (nev + 1));
    pmf_free(&acc);
    pmf_free(&pw);
    acc = t;
  }
  if (!acc.p) {
    return NAN;
  }
  double e = pmf_epsilon(&acc, h, delta);
  pmf_free(&acc);
  return e;
}

/* Epsilon bound on grid h over both directions. The add direction (rarely the worse one in DP-SGD) is
 * first bounded on the grid 2h, which already certifies it when that is below the remove direction. */
static double grid_epsilon(const dpm_pld_event *ev, int n, double delta, double h, int nev, int all_q1) {
  double e = epsilon_on_grid(ev, n, delta, h, DIR_REMOVE, nev);
  if (all_q1 || isnan(e)) return e;
  double a2 = epsilon_on_grid(ev, n, delta, 2 * h, DIR_ADD, nev);
  if (isnan(a2)) return a2;
  if (a2 <= e) return e;
  double a = epsilon_on_grid(ev, n, delta, h, DIR_ADD, nev);
  return isnan(a) ? a : fmax(e, a);
}

int dpm_pld_epsilon(const dpm_pld_event *ev, int n, double delta, dpm_pld_result *res, char err[DPM_ERRLEN]) {
  if (!(delta > 0 && delta < 1)) return dpm_err(err, "delta %g is outside (0, 1)", delta);
  double hmin = INFINITY, total = 0;
  int nev = 0, all_q1 = 1;
  for (int i = 0; i < n; i++) {
    if (!(ev[i].q > 0 && ev[i].q <= 1)) return dpm_err(err, "sampling rate %g is outside (0, 1]", ev[i].q);
    if (!(ev[i].sigma > 0) || !isfinite(ev[i].sigma))
      return dpm_err(err, "noise multiplier %g must be positive and finite", ev[i].sigma);
    if (ev[i].count < 0) return dpm_err(err, "negative step count %lld", (long long)ev[i].count);
    if (ev[i].count == 0) continue;
    total += (double)ev[i].count;
    hmin = fmin(hmin, 0.2 * loss_std(ev[i].q, ev[i].sigma));
    nev++;
    if (ev[i].q != 1.0) all_q1 = 0;
  }
  memset(res, 0, sizeof *res);
  if (total == 0) return 0;
  /* refine h until the extrapolated error of the bound is below 0.3% + 0.001 (at most 5 halvings; a
   * halving whose grid would exceed PLD_MAX_POINTS ends the refinement at the grid before it) */
  double h = hmin, eh = NAN, e2h = grid_epsilon(ev, n, delta, 2 * hmin, nev, all_q1);
  for (int it = 0; !isnan(e2h); it++) {
    double e = grid_epsilon(ev, n, delta, h, nev, all_q1);
    if (isnan(e)) {
      if (it > 0) h *= 2, e = e2h, e2h = eh; /* back to the previous grid: its bound and its error */
      eh = e;
      break;
    }
    if (!(e2h - e > 0.009 * e + 0.003) || it == 5 || !isfinite(e)) {
      eh = e;
      break;
    }
    double prev2 = e2h;
    e2h = e, h /= 2;
    eh = prev2; /* eh holds the bound on grid 4h (e2h's 2h), for a failed next halving */
  }
  if (isnan(e2h) || isnan(eh))
    return dpm_err(err, "tight accountant: the privacy loss distribution needs more than %lld grid points "
                   "(the noise multiplier or the number of steps is outside its range): use the rdp accountant",
                   (long long)PLD_MAX_POINTS);
  res->grid = h;
  res->epsilon_upper = eh;
  double d = e2h - eh;
  if (!(d >= 0)) d = 0;
  res->error = d;
  res->epsilon_estimate = fmax(0, eh - d / 3);
  return 0;
}
