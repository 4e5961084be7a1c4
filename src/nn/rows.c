/* Per-example row helpers shared by the layer kinds: sums of squares in double, the careful forms of
 * clipped rows (docs/design.md, "Clipping in floating point"), column sums, and per-example gradient
 * rows (norms and weighted sums). Pure functions: see layers.h. */
#include "nn/layers.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* A clipped row s = c g whose largest entry is below this is formed by rescaling (see
 * dpm_dense_accumulate): its small entries would otherwise fall into float32's subnormal range and
 * round by more than half an ulp of the row. */
#define CLIP_TINY 0x1p-90f

/* Sum of squares in double: no finite float32 input overflows it (n FLT_MAX^2 < DBL_MAX for any n
 * below 10^230), and a non-finite entry makes it non-finite (the caller's coefficient is then 0). */
double dpm_nn_sumsq(const float *v, size_t n) {
  double acc[8] = {0};
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int l = 0; l < 8; l++) acc[l] += (double)v[k + l] * v[k + l];
  double s = 0;
  for (int l = 0; l < 8; l++) s += acc[l];
  for (; k < n; k++) s += (double)v[k] * v[k];
  return s;
}

/* The largest of m and the |v_k| of 8 consecutive entries, lane by lane (a maximum does not depend on the
 * order, so the lanes give the same value as one running maximum; NaN compares false: ignored). */
static inline void max8(float *restrict m8, const float *restrict v) {
  for (int l = 0; l < 8; l++) {
    const float a = fabsf(v[l]);
    m8[l] = a > m8[l] ? a : m8[l];
  }
}

static inline float max_lanes(const float m8[8], float m) {
  for (int l = 0; l < 8; l++) m = m8[l] > m ? m8[l] : m;
  return m;
}

/* max |v_k|; NaN entries are ignored (callers test finiteness through the norms). */
float dpm_nn_maxabs(const float *v, size_t n) {
  float m8[8] = {0};
  size_t k = 0;
  for (; k + 8 <= n; k += 8) max8(m8, v + k);
  float m = max_lanes(m8, 0.0f);
  for (; k < n; k++) {
    const float a = fabsf(v[k]);
    m = a > m ? a : m;
  }
  return m;
}

/* 1 if the largest |entry| m of a clipped row s = c g (c < 1) asks for rescaling: non-zero but near
 * underflow. A zero row contributes exactly 0 (its partner rows are finite whenever c > 0: Inf * 0 makes
 * the norm NaN). */
static int tiny(float m) { return m > 0 && m < CLIP_TINY; }

int dpm_nn_needs_rescale(const float *s, size_t n) { return tiny(dpm_nn_maxabs(s, n)); }

/* s = c g (n entries); returns 1 if the example needs the careful path: c == 0 (its norm was not
 * finite: it contributes nothing and its rows may hold Inf/NaN) or c < 1 with s near underflow. One pass:
 * the largest |s_k| is taken as s is formed (the value dpm_nn_needs_rescale(s, n) would find). */
int dpm_nn_scale_row(float *restrict s, const float *restrict g, float c, size_t n) {
  if (c == 1.0f) {
    memcpy(s, g, n * sizeof(float));
    return 0;
  }
  float m8[8] = {0};
  size_t k = 0;
  for (; k + 8 <= n; k += 8) {
    for (int l = 0; l < 8; l++) s[k + l] = c * g[k + l];
    max8(m8, s + k);
  }
  float m = max_lanes(m8, 0.0f);
  for (; k < n; k++) {
    s[k] = c * g[k];
    const float a = fabsf(s[k]);
    m = a > m ? a : m;
  }
  return c == 0.0f || tiny(m);
}

/* The careful form of an extreme example's clipped rows: s = c g is re-formed as (c 2^e) g with the
 * partner rows a scaled by 2^-e into `row` (exact: powers of two), 2^e ~ max |a|, so that neither
 * factor underflows or overflows while their products are those of c g a. Returns the partner rows. */
const float *dpm_nn_rescale_rows(float *s, const float *g, float c, size_t ns, const float *a, size_t na,
                                 float *row) {
  int e;
  frexpf(dpm_nn_maxabs(a, na), &e);
  const double ce = ldexp((double)c, e);
  for (size_t k = 0; k < ns; k++) s[k] = (float)(ce * g[k]);
  for (size_t k = 0; k < na; k++) row[k] = ldexpf(a[k], -e);
  return row;
}

void dpm_nn_outer_sum_exact(float *E, int omajor, const float *G, const float *A, float c, int T, int O, int K,
                            double *acc) {
  for (int o = 0; o < O; o++) {
    for (int k = 0; k < K; k++) acc[k] = 0;
    for (int t = 0; t < T; t++) {
      const double g = G[(size_t)t * O + o];
      if (g == 0) continue;
      const float *a = A + (size_t)t * K;
      for (int k = 0; k < K; k++) acc[k] += g * a[k];
    }
    for (int k = 0; k < K; k++) E[omajor ? (size_t)o * K + k : (size_t)k * O + o] = (float)((double)c * acc[k]);
  }
}

void dpm_nn_colsum_add(float *db, const float *G, size_t rows, int O) {
  for (size_t r = 0; r < rows; r++) {
    const float *g = G + r * O;
    for (int o = 0; o < O; o++) db[o] += g[o];
  }
}

void dpm_rows_sqnorm(double *sq, const float *E, int B, size_t N) {
  for (int i = 0; i < B; i++) sq[i] = dpm_nn_sumsq(E + (size_t)i * N, N);
}

void dpm_rows_accumulate(float *grad, const float *E, const float *coef, int B, size_t N) {
  if (coef) {
    /* a coefficient 0 marks a row whose norm was not finite: it may hold Inf/NaN and must not enter
       the GEMV (0 * Inf is NaN). A finite row with c = C / ||E_i|| has entries c E_ik <= C, and its
       largest is >= C / sqrt(N): nothing overflows or underflows. */
    int excluded = 0;
    for (int i = 0; i < B; i++) excluded |= coef[i] == 0.0f;
    if (!excluded) {
      cblas_sgemv(CblasRowMajor, CblasTrans, B, (int)N, 1.0f, E, (int)N, coef, 1, 1.0f, grad, 1);
      return;
    }
    for (int i = 0; i < B; i++)
      if (coef[i] != 0.0f) cblas_saxpy((int)N, coef[i], E + (size_t)i * N, 1, grad, 1);
  } else {
    for (int i = 0; i < B; i++) cblas_saxpy((int)N, 1.0f, E + (size_t)i * N, 1, grad, 1);
  }
}

