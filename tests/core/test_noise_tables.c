/* The Gaussian stream's constants (src/core/noise_tables.c) against an independent long-double computation,
 * and the accuracy of the reference pair (core/noise.h, dpm_noise_pair) against long-double ln, sin, cos on
 * many points of each octant and of the log table's sixteen intervals, including the ends. `test_noise_tables
 * --emit` prints the constants file (how src/core/noise_tables.c was written). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/noise.h"
#include "testing.h"

static long double fact(int n) {
  long double f = 1;
  for (int i = 2; i <= n; i++) f *= i;
  return f;
}

static void compute(dpm_noise_consts *c) {
  const long double ln2 = logl(2.0L);
  for (int k = 0; k < 16; k++) {
    c->c[k] = (double)(1.0L / (1.0L + (k + 0.5L) / 16.0L));
    const long double L = -logl((long double)c->c[k]); /* of the rounded c: exact reduction */
    c->log_hi[k] = (double)L;
    c->log_lo[k] = (double)(L - (long double)c->log_hi[k]);
  }
  /* ln 2 with 32 significant bits: K ln2_hi is exact for K < 2^21 */
  c->ln2_hi = ldexp(floor(ldexp((double)ln2, 32)), -32);
  c->ln2_lo = (double)(ln2 - (long double)c->ln2_hi);
  c->pi4 = (double)(acosl(-1.0L) / 4);
  for (int i = 0; i < 10; i++) c->log1p[i] = (double)((i % 2 ? 1.0L : -1.0L) / (i + 2));
  for (int i = 0; i < 7; i++) c->sin[i] = (double)((i % 2 ? 1.0L : -1.0L) / fact(2 * i + 3));
  for (int i = 0; i < 8; i++) c->cos[i] = (double)((i % 2 ? 1.0L : -1.0L) / fact(2 * i + 2));
}

static void print_array(const char *name, const double *v, int n) {
  printf("    .%s = {", name);
  for (int i = 0; i < n; i++) printf("%s%a%s", i % 4 ? " " : "\n        ", v[i], i + 1 < n ? "," : "");
  printf("},\n");
}

static void emit(void) {
  dpm_noise_consts c;
  compute(&c);
  printf("/* Constants of the Gaussian stream (core/noise.h): written by `build/tests/test_noise_tables --emit` from\n"
         " * long-double values rounded to double, and checked by the same test; hard-coded so that every machine of\n"
         " * a cluster draws the same numbers whatever its libm. */\n#include \"core/noise.h\"\n\n"
         "const dpm_noise_consts dpm_noise_c = {\n");
  print_array("c", c.c, 16);
  print_array("log_hi", c.log_hi, 16);
  print_array("log_lo", c.log_lo, 16);
  printf("    .ln2_hi = %a,\n    .ln2_lo = %a,\n    .pi4 = %a,\n", c.ln2_hi, c.ln2_lo, c.pi4);
  print_array("log1p", c.log1p, 10);
  print_array("sin", c.sin, 7);
  print_array("cos", c.cos, 8);
  printf("};\n");
}

static void test_constants(void) {
  dpm_noise_consts c;
  compute(&c);
  /* Basic operations (+, -, *, / in long double) are correctly rounded on every x86-64: those constants are
     checked bit for bit. logl is x87's fyl2x, whose last bits differ between CPU models (Intel and AMD differ
     at 2^-65 on log_lo[9]): the log constants are checked as the double-double hi + lo against logl within 2
     long-double ulps (the file's were written on one CPU, to within 1 ulp of the true value), and hi bitwise. */
  const dpm_noise_consts *f = &dpm_noise_c;
  CHECK(!memcmp(c.c, f->c, sizeof c.c) && !memcmp(c.log1p, f->log1p, sizeof c.log1p) &&
            !memcmp(c.sin, f->sin, sizeof c.sin) && !memcmp(c.cos, f->cos, sizeof c.cos) && c.ln2_hi == f->ln2_hi &&
            c.pi4 == f->pi4,
        "src/core/noise_tables.c: the table of c, the polynomials, ln2_hi or pi/4 differ from the recomputed ones "
        "(regenerate with test_noise_tables --emit)");
  double worst = 0;
  for (int k = 0; k < 17; k++) {
    const double hi = k < 16 ? f->log_hi[k] : f->ln2_hi, lo = k < 16 ? f->log_lo[k] : f->ln2_lo;
    const long double L = k < 16 ? -logl((long double)f->c[k]) : logl(2.0L);
    const double e = (double)(fabsl((long double)hi + (long double)lo - L) / (fabsl(L) * 0x1p-63L));
    if (e > worst) worst = e;
    CHECK(k == 16 || hi == (double)L, "log_hi[%d] = %a is not logl's value rounded to double (%a)", k, hi, (double)L);
  }
  CHECK(worst <= 2.0, "the log constants' hi + lo are %.2f long-double ulps from logl (at most 2)", worst);
  printf("log constants: hi + lo within %.3f long-double ulps of logl\n", worst);
  CHECK(fabsl((long double)dpm_noise_c.ln2_hi * 1048575 - (long double)(dpm_noise_c.ln2_hi * 1048575)) == 0,
        "K ln2_hi not exact");
}

/* ulps of a against the long-double reference b */
static double ulp_err(double a, long double b) {
  if (b == 0) return a == 0 ? 0 : INFINITY;
  int e;
  frexpl(b, &e);
  return (double)(fabsl((long double)a - b) / ldexpl(1.0L, e - 53));
}

/* The reference pair against long double: radius (through ln) and angle (through sin, cos) separately. */
static void test_pair_accuracy(void) {
  double worst_r = 0, worst_c = 0, worst_s = 0;
  uint64_t state = 12345;
  for (int it = 0; it < 400000; it++) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    uint64_t x = state ^ (state >> 29) * 0x9E3779B97F4A7C15ULL;
    /* every log interval and octant, ends included */
    uint64_t U = x, A = x * 0xD2B74407B1CE6E93ULL;
    if (it % 7 == 0) U = (U & ~0x0FFFFFFFFFFFF000ULL) | ((it & 1) ? 0x0FFFFFFFFFFFF000ULL : 0); /* interval ends */
    if (it % 11 == 0) A = (A & ~0x1FFFFFFFFFFFFE00ULL) | ((it & 2) ? 0x1FFFFFFFFFFFFE00ULL : 0); /* octant ends */
    if ((U & 0xFFF) == 0) U |= 1;
    const double K = dpm_noise_K(U);
    double zc, zs;
    dpm_noise_pair(U, K, A, &zc, &zs);
    const long double y = 1.0L + (long double)(U >> 12) * 0x1.0p-52L, u1 = ldexpl(y, -(int)K);
    const long double rad = sqrtl(-2.0L * logl(u1));
    const long double t = (long double)((A >> 9) & 0xFFFFFFFFFFFFFULL) * 0x1.0p-52L;
    const long double th = ((A >> 61) + t) * acosl(-1.0L) / 4;
    const double r = hypot(zc, zs);
    worst_r = fmax(worst_r, ulp_err(r, rad));
    /* angle errors relative to the radius (a cos near 0 is small in absolute terms, as it should be) */
    worst_c = fmax(worst_c, (double)(fabsl((long double)zc - rad * cosl(th)) / (rad * 0x1.0p-53L)));
    worst_s = fmax(worst_s, (double)(fabsl((long double)zs - rad * sinl(th)) / (rad * 0x1.0p-53L)));
  }
  printf("reference pair vs long double: radius %.2f ulp, r cos %.2f, r sin %.2f (units of 2^-53 r)\n", worst_r,
         worst_c, worst_s);
  /* the radius near u1 = 1 (r -> 0) loses relative accuracy to cancellation in ln u1; elsewhere a few ulps */
  CHECK(worst_r < 8, "radius off by %.2f ulp", worst_r);
  CHECK(worst_c < 8 && worst_s < 8, "angle off by %.2f / %.2f ulp of r", worst_c, worst_s);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--emit") == 0) {
    emit();
    return 0;
  }
  dpm_test_init(&argc, &argv);
  test_constants();
  test_pair_accuracy();
  return dpm_test_finish();
}
