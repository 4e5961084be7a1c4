/* AdamW (src/optim/adamw.c) and the optimizer interface (src/optim/optimizer.c) against an independent,
 * straightforward double-precision AdamW written here from the paper's algorithm (Loshchilov & Hutter 2019,
 * Algorithm 2 with PyTorch's placement of eps and of the learning rate in the decay): many steps with
 * changing gradients, a warm-up + cosine learning-rate schedule (its own formula, checked against
 * dpm_lr_at), bias correction, decoupled weight decay; the edge cases (eps dominating, large eps, zero
 * gradients from the start and after a while, the very first step); the interface: same numbers as
 * dpm_adamw and dpm_sgd, state buffers and checkpoint groups, a resume from copied state (m, v, t) bitwise
 * equal to an uninterrupted run, per-stage slabs equal to one slab; the job-file keys. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dpmpi/io/config.h"
#include "dpmpi/optim/adamw.h"
#include "dpmpi/optim/optimizer.h"
#include "dpmpi/optim/sgd.h"
#include "testing.h"

/* ---- the reference: textbook AdamW in double ------------------------------------------------------ */

typedef struct {
  int n;
  double *p, *m, *v;
  int t;
  double beta1, beta2, eps, wd;
} ref_adamw;

static void ref_init(ref_adamw *r, const float *p0, int n, double beta1, double beta2, double eps, double wd) {
  r->n = n, r->t = 0, r->beta1 = beta1, r->beta2 = beta2, r->eps = eps, r->wd = wd;
  r->p = calloc((size_t)n, sizeof(double)), r->m = calloc((size_t)n, sizeof(double)), r->v = calloc((size_t)n, sizeof(double));
  for (int k = 0; k < n; k++) r->p[k] = p0[k];
}

static void ref_free(ref_adamw *r) { free(r->p), free(r->m), free(r->v); }

/* theta_t = theta_{t-1} - lr wd theta_{t-1} - lr mhat / (sqrt(vhat) + eps), mhat = m / (1 - beta1^t), ... */
static void ref_step(ref_adamw *r, const double *g, double lr) {
  r->t++;
  for (int k = 0; k < r->n; k++) {
    r->p[k] -= lr * r->wd * r->p[k];
    r->m[k] = r->beta1 * r->m[k] + (1 - r->beta1) * g[k];
    r->v[k] = r->beta2 * r->v[k] + (1 - r->beta2) * g[k] * g[k];
    double mhat = r->m[k] / (1 - pow(r->beta1, r->t)), vhat = r->v[k] / (1 - pow(r->beta2, r->t));
    r->p[k] -= lr * mhat / (sqrt(vhat) + r->eps);
  }
}

/* warm-up over w epochs, then cosine to 0 at E: written from the definition, not from dpm_lr_at */
static double ref_lr(double lr0, double e, double w, double E) {
  if (e < w) return lr0 * e / w;
  return lr0 * 0.5 * (1 + cos(M_PI * (e - w) / (E - w)));
}

static uint64_t rng_state = 88172645463325252ull;
static double uniform(void) { /* xorshift64, in [-1, 1) */
  rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) / 9007199254740992.0 * 2 - 1;
}

/* ---- several steps against the reference ---------------------------------------------------------- */

/* T steps of dpm_adamw and the reference on the same gradient sums (scaled by `scale`), lr from the
 * schedule; parameters, m and v compared after every step within rtol (plus atol). */
static void run_against_ref(const char *what, int n, int T, double beta1, double beta2, double eps, double wd,
                            double scale, double gmag, int zero_from, double rtol, double atol) {
  float *p = malloc(sizeof(float) * (size_t)n), *grad = malloc(sizeof(float) * (size_t)n);
  double *g = malloc(sizeof(double) * (size_t)n), *gmax = calloc((size_t)n, sizeof(double));
  for (int k = 0; k < n; k++) p[k] = (float)uniform();
  dpm_adamw o;
  dpm_adamw_init(&o, (size_t)n, beta1, beta2, eps, wd);
  ref_adamw r;
  ref_init(&r, p, n, beta1, beta2, eps, wd);
  dpm_config sched;
  memset(&sched, 0, sizeof sched);
  sched.lr = 0.01, sched.lr_schedule = DPM_SCHED_COSINE, sched.warmup_epochs = 0.5;
  const double steps_per_epoch = 4, E = T / steps_per_epoch;
  double worst = 0;
  int bad = 0;
  for (int t = 0; t < T; t++) {
    const double e = t / steps_per_epoch, lr = ref_lr(sched.lr, e, sched.warmup_epochs, E);
    CHECK_CLOSE(dpm_lr_at(&sched, e, E), lr, 1e-9, 1e-13, "dpm_lr_at against the schedule's definition");
    for (int k = 0; k < n; k++) {
      /* a noisy sum: a drifting mean plus noise, several orders of magnitude across coordinates */
      grad[k] = t >= zero_from ? 0.0f : (float)(gmag * (0.3 * sin(0.1 * t + k) + uniform()) * pow(10, (k % 5) - 2));
      g[k] = scale * (double)grad[k];
      if (fabs(g[k]) > gmax[k]) gmax[k] = fabs(g[k]);
    }
    dpm_adamw_step(&o, p, grad, scale, lr);
    ref_step(&r, g, lr);
    for (int k = 0; k < n; k++) {
      double dp = fabs(p[k] - r.p[k]), tol = atol + rtol * fabs(r.p[k]);
      double dm = fabs(o.m[k] - r.m[k]), dv = fabs(o.v[k] - r.v[k]);
      if (dp / tol > worst) worst = dp / tol;
      /* m is a sum of terms of both signs: its float error is relative to the gradients seen, not to m */
      if (dp > tol || dm > 1e-6 * gmax[k] + 1e-30 || dv > 1e-5 * r.v[k] + 1e-30) {
        if (bad++ < 3)
          fprintf(stderr, "  %s: step %d param %d: p %.9g ref %.9g, m %.6g ref %.6g, v %.6g ref %.6g\n", what, t + 1,
                  k, p[k], r.p[k], o.m[k], r.m[k], o.v[k], r.v[k]);
      }
    }
  }
  CHECK(bad == 0, "%s: %d parameter/moment values off the double reference (worst %.3g of the tolerance)", what, bad,
        worst);
  CHECK(o.t == T, "%s: the step counter is %lld after %d updates", what, (long long)o.t, T);
  printf("%s: %d params x %d steps, worst |p - ref| = %.3g of the tolerance (rtol %g, atol %g)\n", what, n, T, worst,
         rtol, atol);
  dpm_adamw_free(&o);
  ref_free(&r);
  free(p), free(grad), free(g), free(gmax);
}

static void test_against_reference(void) {
  /* DP-like: gradient sums of ~100 examples, scale 1/(q N) = 1/256 */
  run_against_ref("adamw defaults, wd 0.01", 257, 40, 0.9, 0.999, 1e-8, 0.01, 1.0 / 256, 50, 1 << 30, 2e-6, 1e-7);
  run_against_ref("adamw beta1 0.5, beta2 0.9, wd 0.1", 64, 40, 0.5, 0.9, 1e-8, 0.1, 0.5, 1, 1 << 30, 2e-6, 1e-7);
  run_against_ref("adamw beta1 0 (RMSprop-like), no decay", 64, 20, 0.0, 0.99, 1e-8, 0, 1, 1, 1 << 30, 2e-6, 1e-7);
  /* eps dominating: gradients ~1e-10 against eps 1e-8, and a large eps of 1 */
  run_against_ref("adamw eps dominating (g ~ 1e-10)", 64, 30, 0.9, 0.999, 1e-8, 0, 1, 1e-10, 1 << 30, 2e-6, 1e-9);
  run_against_ref("adamw eps = 1", 64, 30, 0.9, 0.999, 1.0, 0.01, 1, 1, 1 << 30, 2e-6, 1e-8);
  /* zero gradients after 10 steps: m and v decay, p keeps moving by what m holds */
  run_against_ref("adamw zero gradients after step 10", 64, 40, 0.9, 0.999, 1e-8, 0.01, 1, 1, 10, 2e-6, 1e-7);
}

/* ---- edge cases with exact answers ---------------------------------------------------------------- */

static void test_edges(void) {
  enum { n = 6 };
  const float p0[n] = {1, -2, 0.5f, 0, 3e-3f, -7};
  float p[n], g[n];
  dpm_adamw o;
  /* zero gradients from the start, no decay: nothing moves, bitwise; the moments stay 0 */
  memcpy(p, p0, sizeof p);
  memset(g, 0, sizeof g);
  dpm_adamw_init(&o, n, 0.9, 0.999, 1e-8, 0);
  for (int t = 0; t < 5; t++) dpm_adamw_step(&o, p, g, 1, 0.1);
  CHECK(memcmp(p, p0, sizeof p) == 0, "zero gradients and no decay moved the parameters");
  int zero = 1;
  for (int k = 0; k < n; k++) zero &= o.m[k] == 0 && o.v[k] == 0;
  CHECK(zero, "zero gradients left non-zero moments");
  dpm_adamw_free(&o);
  /* zero gradients with decoupled decay: p_t = p_0 prod (1 - lr_t wd), the decay alone */
  memcpy(p, p0, sizeof p);
  dpm_adamw_init(&o, n, 0.9, 0.999, 1e-8, 0.5);
  double f = 1;
  for (int t = 0; t < 5; t++) {
    double lr = 0.1 * (t + 1);
    dpm_adamw_step(&o, p, g, 1, lr);
    f *= 1 - lr * 0.5;
  }
  for (int k = 0; k < n; k++) CHECK_CLOSE(p[k], p0[k] * f, 1e-6, 0, "decoupled decay alone");
  dpm_adamw_free(&o);
  /* the first step is bias-corrected: mhat = g, vhat = g^2, so p moves by lr g / (|g| + eps) ~ lr sign(g),
     whatever the gradient's size (without the correction it would be lr (1-b1)/sqrt(1-b2) = 3.16 lr) */
  const float gs[n] = {1e-3f, -1e3f, 0.25f, -4, 1e-6f, 7};
  memcpy(p, p0, sizeof p);
  dpm_adamw_init(&o, n, 0.9, 0.999, 1e-8, 0);
  dpm_adamw_step(&o, p, gs, 1, 0.01);
  for (int k = 0; k < n; k++) {
    double expect = p0[k] - 0.01 * gs[k] / (fabs(gs[k]) + 1e-8);
    CHECK_CLOSE(p[k], expect, 1e-6, 1e-8, "first step: lr sign(g)");
  }
  /* a constant gradient keeps the step at lr sign(g): mhat = g and vhat = g^2 at every t */
  for (int t = 0; t < 50; t++) dpm_adamw_step(&o, p, gs, 1, 0.01);
  for (int k = 0; k < n; k++) {
    double expect = p0[k] - 51 * 0.01 * gs[k] / (fabs(gs[k]) + 1e-8);
    CHECK_CLOSE(p[k], expect, 1e-5, 1e-7, "constant gradient: 51 steps of lr sign(g)");
  }
  dpm_adamw_free(&o);
}

/* ---- the optimizer interface ---------------------------------------------------------------------- */

static dpm_config job(dpm_optimizer_kind kind) {
  dpm_config c;
  memset(&c, 0, sizeof c);
  c.optimizer = kind;
  c.momentum = 0.9, c.weight_decay = 0.02;
  c.adam_beta1 = 0.8, c.adam_beta2 = 0.99, c.adam_eps = 1e-6;
  return c;
}

static void fill(float *x, int n) {
  for (int k = 0; k < n; k++) x[k] = (float)uniform();
}

static void test_interface(void) {
  enum { n = 50, T = 30 };
  float p0[n], grads[T][n];
  fill(p0, n);
  for (int t = 0; t < T; t++) fill(grads[t], n);
  /* adamw through the interface = dpm_adamw directly, bitwise; sgd = dpm_sgd */
  for (int kind = 0; kind < DPM_OPT_COUNT; kind++) {
    dpm_config c = job((dpm_optimizer_kind)kind);
    dpm_optimizer *o = dpm_optimizer_create(&c, n);
    CHECK(dpm_optimizer_get_kind(o) == (dpm_optimizer_kind)kind, "kind");
    float a[n], b[n];
    memcpy(a, p0, sizeof a), memcpy(b, p0, sizeof b);
    dpm_adamw direct_a;
    dpm_sgd direct_s;
    if (kind == DPM_OPT_ADAMW) dpm_adamw_init(&direct_a, n, 0.8, 0.99, 1e-6, 0.02);
    else dpm_sgd_init(&direct_s, n, 0.9, 0.02);
    for (int t = 0; t < T; t++) {
      dpm_optimizer_step(o, a, grads[t], 0.25, 0.05);
      if (kind == DPM_OPT_ADAMW) dpm_adamw_step(&direct_a, b, grads[t], 0.25, 0.05);
      else dpm_sgd_step(&direct_s, b, grads[t], 0.25, 0.05);
    }
    CHECK(memcmp(a, b, sizeof a) == 0, "%s through the interface differs from the rule itself",
          dpm_optimizer_name((dpm_optimizer_kind)kind));
    CHECK(dpm_optimizer_steps(o) == T, "%s: %lld updates counted, %d applied", dpm_optimizer_name((dpm_optimizer_kind)kind),
          (long long)dpm_optimizer_steps(o), T);
    const char *g0 = NULL, *g1 = NULL;
    if (kind == DPM_OPT_ADAMW) {
      CHECK(dpm_optimizer_num_state(o) == 2, "adamw has two state buffers");
      float *m = dpm_optimizer_state(o, 0, &g0), *v = dpm_optimizer_state(o, 1, &g1);
      CHECK(!memcmp(m, direct_a.m, sizeof(float) * n) && !memcmp(v, direct_a.v, sizeof(float) * n),
            "adamw's state buffers are its moments");
      CHECK(!strcmp(g0, "/optimizer/exp_avg") && !strcmp(g1, "/optimizer/exp_avg_sq"), "adamw groups %s %s", g0, g1);
      dpm_adamw_free(&direct_a);
    } else {
      CHECK(dpm_optimizer_num_state(o) == 1, "sgd has one state buffer");
      float *v = dpm_optimizer_state(o, 0, &g0);
      CHECK(!memcmp(v, direct_s.velocity, sizeof(float) * n), "sgd's state buffer is its momentum");
      CHECK(!strcmp(g0, "/optimizer"), "sgd's momentum stays where checkpoints always had it: %s", g0);
      dpm_sgd_free(&direct_s);
    }
    char d[256];
    dpm_optimizer_describe(o, d, sizeof d);
    const char *want = kind == DPM_OPT_ADAMW ? "adamw (beta1 0.8, beta2 0.99, eps 1e-06, decoupled weight decay 0.02)"
                                             : "sgd (momentum 0.9, weight decay 0.02)";
    CHECK(!strcmp(d, want), "describe: '%s', expected '%s'", d, want);
    dpm_optimizer_free(o);
  }
}

/* What a checkpoint holds is enough: an optimizer built fresh, given the state buffers, the update count
 * and the parameters after step 12, continues bitwise as the uninterrupted one; without the count (a
 * fresh t) AdamW's bias correction differs, so the count matters. */
static void test_resume(void) {
  enum { n = 40, T = 25, cut = 12 };
  float p0[n], grads[T][n];
  fill(p0, n);
  for (int t = 0; t < T; t++) fill(grads[t], n);
  for (int kind = 0; kind < DPM_OPT_COUNT; kind++) {
    dpm_config c = job((dpm_optimizer_kind)kind);
    const char *name = dpm_optimizer_name((dpm_optimizer_kind)kind);
    float full[n], part[n], nocount[n];
    memcpy(full, p0, sizeof full);
    dpm_optimizer *a = dpm_optimizer_create(&c, n);
    for (int t = 0; t < T; t++) dpm_optimizer_step(a, full, grads[t], 0.5, 0.01 * (1 + t % 3));
    memcpy(part, p0, sizeof part);
    dpm_optimizer *b = dpm_optimizer_create(&c, n);
    for (int t = 0; t < cut; t++) dpm_optimizer_step(b, part, grads[t], 0.5, 0.01 * (1 + t % 3));
    dpm_optimizer *r = dpm_optimizer_create(&c, n), *z = dpm_optimizer_create(&c, n);
    for (int k = 0; k < dpm_optimizer_num_state(b); k++) {
      memcpy(dpm_optimizer_state(r, k, NULL), dpm_optimizer_state(b, k, NULL), sizeof(float) * n);
      memcpy(dpm_optimizer_state(z, k, NULL), dpm_optimizer_state(b, k, NULL), sizeof(float) * n);
    }
    dpm_optimizer_set_steps(r, dpm_optimizer_steps(b));
    memcpy(nocount, part, sizeof part);
    for (int t = cut; t < T; t++) {
      dpm_optimizer_step(r, part, grads[t], 0.5, 0.01 * (1 + t % 3));
      dpm_optimizer_step(z, nocount, grads[t], 0.5, 0.01 * (1 + t % 3));
    }
    CHECK(memcmp(part, full, sizeof full) == 0, "%s: resumed from copied state differs from the uninterrupted run", name);
    CHECK(dpm_optimizer_steps(r) == T, "%s: resumed count %lld", name, (long long)dpm_optimizer_steps(r));
    if (kind == DPM_OPT_ADAMW)
      CHECK(memcmp(nocount, full, sizeof full) != 0, "adamw: the update count made no difference to a resume");
    else
      CHECK(memcmp(nocount, full, sizeof full) == 0, "sgd: the update count changed SGD's updates");
    dpm_optimizer_free(a), dpm_optimizer_free(b), dpm_optimizer_free(r), dpm_optimizer_free(z);
  }
}

/* Pipeline stages: each holds the state of its own slab; two optimizers over the two halves of the
 * parameter vector give bitwise what one over the whole gives (nothing couples parameters). */
static void test_stage_slabs(void) {
  enum { n = 37, split = 15, T = 10 };
  float whole[n], pieces[n], grads[T][n];
  fill(whole, n);
  memcpy(pieces, whole, sizeof whole);
  for (int t = 0; t < T; t++) fill(grads[t], n);
  dpm_config c = job(DPM_OPT_ADAMW);
  dpm_optimizer *o = dpm_optimizer_create(&c, n), *s0 = dpm_optimizer_create(&c, split),
                *s1 = dpm_optimizer_create(&c, n - split);
  for (int t = 0; t < T; t++) {
    dpm_optimizer_step(o, whole, grads[t], 0.1, 0.02);
    dpm_optimizer_step(s0, pieces, grads[t], 0.1, 0.02);
    dpm_optimizer_step(s1, pieces + split, grads[t] + split, 0.1, 0.02);
  }
  CHECK(memcmp(whole, pieces, sizeof whole) == 0, "two stages' slabs differ from one slab");
  CHECK(!memcmp(dpm_optimizer_state(o, 1, NULL) + split, dpm_optimizer_state(s1, 1, NULL), sizeof(float) * (n - split)),
        "stage 1's second moment is not the whole's tail");
  dpm_optimizer_free(o), dpm_optimizer_free(s0), dpm_optimizer_free(s1);
}

/* ---- the job-file keys ---------------------------------------------------------------------------- */

static void test_config(void) {
  char path[256], err[DPM_ERRLEN] = "";
  snprintf(path, sizeof path, "/tmp/dpm_test_adamw_%d.ini", (int)getpid());
  FILE *f = fopen(path, "w");
  fputs("[data]\ntrain = a.h5\n[model]\nlayers = dense out=10\n[train]\nsteps = 3\n[privacy]\nepsilon = 3\n", f);
  fclose(f);
  dpm_config cfg;
  CHECK(dpm_config_load(path, 0, NULL, &cfg, err) == 0, "job: %s", err);
  CHECK(cfg.optimizer == DPM_OPT_SGD, "existing job files stay SGD");
  CHECK(cfg.adam_beta1 == 0.9 && cfg.adam_beta2 == 0.999 && cfg.adam_eps == 1e-8 && cfg.weight_decay == 0,
        "adamw defaults: %g %g %g %g", cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps, cfg.weight_decay);
  dpm_config_free(&cfg);
  char *over[] = {"--train.optimizer=adamw", "--train.adam_beta1=0.8", "--train.adam_beta2=0.95",
                  "--train.adam_eps=1e-6", "--train.weight_decay=0.1"};
  CHECK(dpm_config_load(path, 5, over, &cfg, err) == 0, "adamw overrides: %s", err);
  CHECK(cfg.optimizer == DPM_OPT_ADAMW && cfg.adam_beta1 == 0.8 && cfg.adam_beta2 == 0.95 && cfg.adam_eps == 1e-6 &&
            cfg.weight_decay == 0.1, "adamw values");
  dpm_config_free(&cfg);
  struct { char *o; const char *want; } bad[] = {
      {"--train.optimizer=adam", "[train] optimizer = 'adam': expected one of sgd|adamw"},
      {"--train.adam_beta1=1", "[train] adam_beta1 = 1: expected a number in [0, 1)"},
      {"--train.adam_beta2=1.5", "[train] adam_beta2 = 1.5: expected a number in [0, 1)"},
      {"--train.adam_beta2=-0.1", "[train] adam_beta2 = '-0.1': expected a number >= 0"},
      {"--train.adam_eps=0", "[train] adam_eps = '0': expected a positive number"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err[0] = '\0';
    int rc = dpm_config_load(path, 1, &bad[i].o, &cfg, err);
    CHECK(rc == -1 && strstr(err, bad[i].want), "%s: rc %d, error '%s', expected '%s'", bad[i].o, rc, err, bad[i].want);
    dpm_config_free(&cfg);
  }
  dpm_optimizer_kind k;
  CHECK(dpm_optimizer_parse("adamw", &k) == 0 && k == DPM_OPT_ADAMW && dpm_optimizer_parse("sgd", &k) == 0 &&
            k == DPM_OPT_SGD && dpm_optimizer_parse("Adam", &k) == -1 && dpm_optimizer_parse(NULL, &k) == -1,
        "dpm_optimizer_parse");
  unlink(path);
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  test_against_reference();
  test_edges();
  test_interface();
  test_resume();
  test_stage_slabs();
  test_config();
  return dpm_test_finish();
}
