/* dpmpi layer kernels: forward/backward of dense, conv2d (im2col + sgemm), pooling, relu, tanh,
 * groupnorm and softmax cross-entropy, plus exact per-example squared gradient norms (dense and conv
 * ghost forms, explicit per-example gradients) and clipped sums. Pure functions: see layers.h. */
#include "nn/layers.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <string.h>

/* ---- dense ------------------------------------------------------------------------------------ */

void dpm_dense_forward(float *out, const float *inp, const float *w, const float *b, int B, int C, int O) {
  if (b) {
    for (int i = 0; i < B; i++) memcpy(out + (size_t)i * O, b, (size_t)O * sizeof(float));
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, O, C, 1.0f, inp, C, w, C, b ? 1.0f : 0.0f, out, O);
}

void dpm_dense_backward_input(float *dinp, const float *dout, const float *w, int B, int C, int O) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, C, O, 1.0f, dout, O, w, C, 0.0f, dinp, C);
}

/* Sum of squares in double: no finite float32 input overflows it (n FLT_MAX^2 < DBL_MAX for any n
 * below 10^230), and a non-finite entry makes it non-finite (the caller's coefficient is then 0). */
static double sumsq(const float *v, size_t n) {
  double acc[8] = {0};
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int l = 0; l < 8; l++) acc[l] += (double)v[k + l] * v[k + l];
  double s = 0;
  for (int l = 0; l < 8; l++) s += acc[l];
  for (; k < n; k++) s += (double)v[k] * v[k];
  return s;
}

/* max |v_k|; NaN entries are ignored (callers test finiteness through the norms). */
static float maxabs(const float *v, size_t n) {
  float m = 0;
  for (size_t k = 0; k < n; k++) {
    const float a = fabsf(v[k]);
    m = a > m ? a : m;
  }
  return m;
}

/* A clipped row s = c g whose largest entry is below this is formed by rescaling (see
 * dpm_dense_accumulate): its small entries would otherwise fall into float32's subnormal range and
 * round by more than half an ulp of the row. */
#define CLIP_TINY 0x1p-90f

/* 1 if a clipped row s = c g (c < 1) must be rescaled: non-zero but near underflow. A zero row
 * contributes exactly 0 (its partner rows are finite whenever c > 0: Inf * 0 makes the norm NaN). */
static int needs_rescale(const float *s, size_t n) {
  const float m = maxabs(s, n);
  return m > 0 && m < CLIP_TINY;
}

/* s = c g (n entries); returns 1 if the example needs the careful path: c == 0 (its norm was not
 * finite: it contributes nothing and its rows may hold Inf/NaN) or c < 1 with s near underflow. */
static int scale_row(float *s, const float *g, float c, size_t n) {
  if (c == 1.0f) {
    memcpy(s, g, n * sizeof(float));
    return 0;
  }
  for (size_t k = 0; k < n; k++) s[k] = c * g[k];
  return c == 0.0f || needs_rescale(s, n);
}

/* The careful form of an extreme example's clipped rows: s = c g is re-formed as (c 2^e) g with the
 * partner rows a scaled by 2^-e into `row` (exact: powers of two), 2^e ~ max |a|, so that neither
 * factor underflows or overflows while their products are those of c g a. Returns the partner rows. */
static const float *rescale_rows(float *s, const float *g, float c, size_t ns, const float *a, size_t na,
                                 float *row) {
  int e;
  frexpf(maxabs(a, na), &e);
  const double ce = ldexp((double)c, e);
  for (size_t k = 0; k < ns; k++) s[k] = (float)(ce * g[k]);
  for (size_t k = 0; k < na; k++) row[k] = ldexpf(a[k], -e);
  return row;
}

void dpm_dense_sqnorms(double *sq, const float *inp, const float *dout, int has_bias, int B, int C, int O) {
  for (int i = 0; i < B; i++) {
    double a2 = sumsq(inp + (size_t)i * C, (size_t)C), g2 = sumsq(dout + (size_t)i * O, (size_t)O);
    sq[i] = (a2 + (has_bias ? 1.0 : 0.0)) * g2; /* Inf * 0 is NaN: not finite, coefficient 0 */
  }
}

static void colsum_add(float *db, const float *G, size_t rows, int O) {
  for (size_t r = 0; r < rows; r++) {
    const float *g = G + r * O;
    for (int o = 0; o < O; o++) db[o] += g[o];
  }
}

void dpm_dense_accumulate(float *dw, float *db, const float *inp, const float *dout, const float *coef,
                          float *scratch, float *row, int B, int C, int O) {
  const float *G = dout;
  int careful = 0;
  if (coef) {
    for (int i = 0; i < B; i++) careful |= scale_row(scratch + (size_t)i * O, dout + (size_t)i * O, coef[i], (size_t)O);
    G = scratch;
  }
  if (!careful) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, C, B, 1.0f, G, O, inp, C, 1.0f, dw, C);
    if (db) colsum_add(db, G, (size_t)B, O);
    return;
  }
  /* a micro-batch with an extreme example: one rank-1 update per example, excluded ones skipped */
  for (int i = 0; i < B; i++) {
    const float c = coef[i], *g = dout + (size_t)i * O, *a = inp + (size_t)i * C;
    float *s = scratch + (size_t)i * O;
    if (c == 0.0f) continue;
    if (c < 1.0f && needs_rescale(s, (size_t)O)) a = rescale_rows(s, g, c, (size_t)O, a, (size_t)C, row);
    cblas_sger(CblasRowMajor, O, C, 1.0f, s, 1, a, 1, dw, C);
    if (db) colsum_add(db, s, 1, O);
  }
}

/* ---- conv2d ----------------------------------------------------------------------------------- */

void dpm_im2col(float *P, const float *x, int B, int C, int H, int W, int K, int S, int pad, int OH, int OW) {
  const size_t CK = (size_t)C * K * K;
  for (int i = 0; i < B; i++) {
    const float *xi = x + (size_t)i * C * H * W;
    for (int oh = 0; oh < OH; oh++) {
      for (int ow = 0; ow < OW; ow++) {
        float *row = P + ((size_t)i * OH * OW + (size_t)oh * OW + ow) * CK;
        const int h0 = oh * S - pad, w0 = ow * S - pad;
        const int interior = h0 >= 0 && w0 >= 0 && h0 + K <= H && w0 + K <= W;
        for (int c = 0; c < C; c++) {
          const float *xc = xi + (size_t)c * H * W;
          for (int kh = 0; kh < K; kh++) {
            float *dst = row + ((size_t)c * K + kh) * K;
            const int h = h0 + kh;
            if (interior) {
              const float *src = xc + (size_t)h * W + w0;
              for (int kw = 0; kw < K; kw++) dst[kw] = src[kw];
            } else if (h < 0 || h >= H) {
              memset(dst, 0, (size_t)K * sizeof(float));
            } else {
              const float *src = xc + (size_t)h * W;
              for (int kw = 0; kw < K; kw++) {
                const int w = w0 + kw;
                dst[kw] = (w >= 0 && w < W) ? src[w] : 0.0f;
              }
            }
          }
        }
      }
    }
  }
}

void dpm_col2im(float *dx, const float *dP, int B, int C, int H, int W, int K, int S, int pad, int OH, int OW) {
  const size_t CK = (size_t)C * K * K;
  memset(dx, 0, (size_t)B * C * H * W * sizeof(float));
  for (int i = 0; i < B; i++) {
    float *dxi = dx + (size_t)i * C * H * W;
    for (int oh = 0; oh < OH; oh++) {
      for (int ow = 0; ow < OW; ow++) {
        const float *row = dP + ((size_t)i * OH * OW + (size_t)oh * OW + ow) * CK;
        const int h0 = oh * S - pad, w0 = ow * S - pad;
        for (int c = 0; c < C; c++) {
          float *dxc = dxi + (size_t)c * H * W;
          for (int kh = 0; kh < K; kh++) {
            const int h = h0 + kh;
            if (h < 0 || h >= H) continue;
            const float *src = row + ((size_t)c * K + kh) * K;
            float *dst = dxc + (size_t)h * W;
            for (int kw = 0; kw < K; kw++) {
              const int w = w0 + kw;
              if (w >= 0 && w < W) dst[w] += src[kw];
            }
          }
        }
      }
    }
  }
}

void dpm_conv_forward(float *out, float *P, float *Y, const float *x, const float *w, const float *b, int B,
                      int C, int H, int W, int O, int K, int S, int pad, int OH, int OW) {
  const int T = OH * OW, CK = C * K * K;
  dpm_im2col(P, x, B, C, H, W, K, S, pad, OH, OW);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B * T, O, CK, 1.0f, P, CK, w, CK, 0.0f, Y, O);
  for (int i = 0; i < B; i++) {
    const float *Yi = Y + (size_t)i * T * O;
    float *oi = out + (size_t)i * O * T;
    for (int o = 0; o < O; o++) {
      const float bo = b ? b[o] : 0.0f;
      float *dst = oi + (size_t)o * T;
      for (int t = 0; t < T; t++) dst[t] = Yi[(size_t)t * O + o] + bo;
    }
  }
}

void dpm_conv_backward(float *dx, float *G, float *dP, const float *dout, const float *w, int B, int C, int H,
                       int W, int O, int K, int S, int pad, int OH, int OW) {
  const int T = OH * OW, CK = C * K * K;
  for (int i = 0; i < B; i++) {
    const float *di = dout + (size_t)i * O * T;
    float *Gi = G + (size_t)i * T * O;
    for (int t = 0; t < T; t++)
      for (int o = 0; o < O; o++) Gi[(size_t)t * O + o] = di[(size_t)o * T + t];
  }
  if (!dx) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B * T, CK, O, 1.0f, G, O, w, CK, 0.0f, dP, CK);
  dpm_col2im(dx, dP, B, C, H, W, K, S, pad, OH, OW);
}

/* Positions' cancellation beyond which a ghost example's clipped gradient is formed alone and capped
 * (dpm_conv_accumulate): S^2 > KAPPA2 T ||grad||^2, i.e. 8 times the sqrt(T) of uncorrelated terms. */
#define GHOST_ILL_KAPPA2 64.0

void dpm_conv_sqnorms_ghost(double *sq, unsigned char *ill, const float *P, const float *G, int has_bias,
                            double *scratch, int B, int T, int CK, int O) {
  /* in double: no finite float32 input overflows (entries <= CK FLT_MAX^2, products < 10^170), and
     the Gram products of float inputs are exact before their sums round at 2^-53 */
  double *PP = scratch, *GG = PP + (size_t)T * T, *Pd = GG + (size_t)T * T, *Gd = Pd + (size_t)T * CK;
  for (int i = 0; i < B; i++) {
    const float *Pi = P + (size_t)i * T * CK, *Gi = G + (size_t)i * T * O;
    for (size_t k = 0; k < (size_t)T * CK; k++) Pd[k] = Pi[k];
    for (size_t k = 0; k < (size_t)T * O; k++) Gd[k] = Gi[k];
    /* upper triangles only: sum over the full symmetric product = diag + 2 * strict upper */
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, T, CK, 1.0, Pd, CK, 0.0, PP, T);
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, T, O, 1.0, Gd, O, 0.0, GG, T);
    double diag = 0, off = 0, gdiag = 0, goff = 0, S = 0;
    for (int s = 0; s < T; s++) {
      const double *pp = PP + (size_t)s * T, *gg = GG + (size_t)s * T;
      diag += pp[s] * gg[s];
      gdiag += gg[s];
      S += sqrt((pp[s] + (has_bias ? 1.0 : 0.0)) * gg[s]);
      for (int t = s + 1; t < T; t++) {
        off += pp[t] * gg[t];
        goff += gg[t];
      }
    }
    double v = diag + 2.0 * off;
    if (has_bias) v += gdiag + 2.0 * goff;
    /* rounding may leave a tiny negative value; Inf and NaN (non-finite activations) stay: coefficient 0 */
    sq[i] = v < 0 ? 0 : v;
    /* ill-conditioned: the positions' terms cancel (S = sum_t ||g_t|| ||(p_t, 1)|| far above the norm),
       so the float32 GEMM that forms the clipped sum could err by more than the clipping margin */
    ill[i] = S * S > GHOST_ILL_KAPPA2 * (double)T * sq[i];
  }
}

void dpm_conv_grads_explicit(float *E, double *sq, const float *P, const float *G, int has_bias, int B, int T,
                             int CK, int O) {
  const size_t N = (size_t)O * CK + (has_bias ? (size_t)O : 0);
  for (int i = 0; i < B; i++) {
    const float *Pi = P + (size_t)i * T * CK, *Gi = G + (size_t)i * T * O;
    float *Ei = E + (size_t)i * N;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, CK, T, 1.0f, Gi, O, Pi, CK, 0.0f, Ei, CK);
    if (has_bias) {
      float *eb = Ei + (size_t)O * CK;
      memset(eb, 0, (size_t)O * sizeof(float));
      colsum_add(eb, Gi, (size_t)T, O);
    }
    if (sq) sq[i] = sumsq(Ei, N);
  }
}

void dpm_conv_accumulate(float *dw, float *db, const float *P, const float *G, const float *coef,
                         const double *gsq, const unsigned char *ill, float *scratch, float *row, int B, int T,
                         int CK, int O) {
  const float *Gs = G;
  const size_t TO = (size_t)T * O, TCK = (size_t)T * CK, N = (size_t)O * CK + (db ? (size_t)O : 0);
  int careful = 0;
  if (coef) {
    for (int i = 0; i < B; i++) {
      careful |= scale_row(scratch + (size_t)i * TO, G + (size_t)i * TO, coef[i], TO);
      careful |= ill && ill[i] && coef[i] != 0.0f;
    }
    Gs = scratch;
  }
  if (!careful) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, CK, B * T, 1.0f, Gs, O, P, CK, 1.0f, dw, CK);
    if (db) colsum_add(db, Gs, (size_t)B * T, O);
    return;
  }
  /* a micro-batch with an extreme or ill-conditioned example: each example's clipped gradient is formed
     alone (excluded ones skipped); rescaled or ill-conditioned ones are materialized in `row` and capped
     at c ||grad|| of their ghost norm, whatever the float32 sum over positions made of them */
  float *E = row + TCK;
  for (int i = 0; i < B; i++) {
    const float c = coef[i], *Pi = P + (size_t)i * TCK;
    float *s = scratch + (size_t)i * TO;
    if (c == 0.0f) continue;
    int alone = ill && ill[i];
    if (c < 1.0f && needs_rescale(s, TO)) Pi = rescale_rows(s, G + (size_t)i * TO, c, TO, Pi, TCK, row), alone = 1;
    if (!alone || !gsq) {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, CK, T, 1.0f, s, O, Pi, CK, 1.0f, dw, CK);
      if (db) colsum_add(db, s, (size_t)T, O);
      continue;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, CK, T, 1.0f, s, O, Pi, CK, 0.0f, E, CK);
    if (db) {
      memset(E + (size_t)O * CK, 0, (size_t)O * sizeof(float));
      colsum_add(E + (size_t)O * CK, s, (size_t)T, O);
    }
    const double have = sumsq(E, N), cap = (double)c * c * gsq[i];
    float f = 1.0f;
    if (!isfinite(have)) f = 0.0f;
    else if (have > cap) f = (float)(sqrt(cap / have) * (1.0 - 0x1p-21));
    if (f == 0.0f) continue;
    cblas_saxpy((int)((size_t)O * CK), f, E, 1, dw, 1);
    if (db) cblas_saxpy(O, f, E + (size_t)O * CK, 1, db, 1);
  }
}

/* ---- per-example rows ------------------------------------------------------------------------- */

void dpm_rows_sqnorm(double *sq, const float *E, int B, size_t N) {
  for (int i = 0; i < B; i++) sq[i] = sumsq(E + (size_t)i * N, N);
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

/* ---- pooling ---------------------------------------------------------------------------------- */

void dpm_maxpool_forward(float *out, int32_t *argmax, const float *x, int B, int C, int H, int W, int K, int S,
                         int OH, int OW) {
  for (int i = 0; i < B; i++) {
    const float *xi = x + (size_t)i * C * H * W;
    for (int c = 0; c < C; c++) {
      const size_t ob = ((size_t)i * C + c) * OH * OW;
      for (int oh = 0; oh < OH; oh++) {
        for (int ow = 0; ow < OW; ow++) {
          /* strict > keeps the first maximum in (kh, kw) order; locals keep the selects branch-free */
          int best = (c * H + oh * S) * W + ow * S;
          float bv = xi[best];
          for (int kh = 0; kh < K; kh++) {
            const int base = (c * H + oh * S + kh) * W + ow * S;
            for (int kw = 0; kw < K; kw++) {
              const float v = xi[base + kw];
              best = v > bv ? base + kw : best;
              bv = v > bv ? v : bv;
            }
          }
          out[ob + (size_t)oh * OW + ow] = bv;
          argmax[ob + (size_t)oh * OW + ow] = best;
        }
      }
    }
  }
}

void dpm_maxpool_backward(float *dx, const float *dout, const int32_t *argmax, int B, int C, int H, int W,
                          int OH, int OW) {
  const size_t in = (size_t)C * H * W, on = (size_t)C * OH * OW;
  memset(dx, 0, (size_t)B * in * sizeof(float));
  for (int i = 0; i < B; i++) {
    float *dxi = dx + (size_t)i * in;
    const float *di = dout + (size_t)i * on;
    const int32_t *ai = argmax + (size_t)i * on;
    for (size_t k = 0; k < on; k++) dxi[ai[k]] += di[k];
  }
}

void dpm_avgpool_forward(float *out, const float *x, int B, int C, int H, int W, int K, int S, int OH, int OW) {
  const float inv = 1.0f / (float)(K * K);
  for (size_t ic = 0; ic < (size_t)B * C; ic++) {
    const float *xc = x + ic * H * W;
    float *oc = out + ic * OH * OW;
    for (int oh = 0; oh < OH; oh++)
      for (int ow = 0; ow < OW; ow++) {
        float s = 0;
        for (int kh = 0; kh < K; kh++)
          for (int kw = 0; kw < K; kw++) s += xc[(size_t)(oh * S + kh) * W + ow * S + kw];
        oc[(size_t)oh * OW + ow] = s * inv;
      }
  }
}

void dpm_avgpool_backward(float *dx, const float *dout, int B, int C, int H, int W, int K, int S, int OH,
                          int OW) {
  const float inv = 1.0f / (float)(K * K);
  memset(dx, 0, (size_t)B * C * H * W * sizeof(float));
  for (size_t ic = 0; ic < (size_t)B * C; ic++) {
    float *dxc = dx + ic * H * W;
    const float *dc = dout + ic * OH * OW;
    for (int oh = 0; oh < OH; oh++)
      for (int ow = 0; ow < OW; ow++) {
        const float g = dc[(size_t)oh * OW + ow] * inv;
        for (int kh = 0; kh < K; kh++)
          for (int kw = 0; kw < K; kw++) dxc[(size_t)(oh * S + kh) * W + ow * S + kw] += g;
      }
  }
}

/* ---- elementwise ------------------------------------------------------------------------------ */

void dpm_relu_forward(float *out, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) out[k] = x[k] > 0 ? x[k] : 0.0f;
}

void dpm_relu_backward(float *dx, const float *dout, const float *out, size_t n) {
  /* dout loaded unconditionally: the select then vectorizes (a conditional load compiles to a branch) */
  for (size_t k = 0; k < n; k++) {
    const float g = dout[k];
    dx[k] = out[k] > 0 ? g : 0.0f;
  }
}

/* exp(x) for x in [-88, 88]: Cephes expf (2^n by exponent bits, degree-6 polynomial on the reduced
 * argument), a few ulp, branch-free so that the loops calling it vectorize. */
static inline float exp_poly(float x) {
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union { int32_t i; float f; } scale = {.i = ((int32_t)n + 127) << 23};
  return p * scale.f;
}

/* tanh with ~2 ulp error, much faster than libm's tanhf: Cephes' odd polynomial for |x| < 0.625,
 * 1 - 2 / (exp(2|x|) + 1) beyond (|x| clamped at 20 where tanh is 1 in float). */
static inline float tanh_fast(float x) {
  const float ax = fabsf(x), x2 = x * x;
  float p = -5.70498872745e-3f;
  p = p * x2 + 2.06390887954e-2f;
  p = p * x2 - 5.37397155531e-2f;
  p = p * x2 + 1.33314422036e-1f;
  p = p * x2 - 3.33332819422e-1f;
  const float small = p * x2 * x + x;
  const float big = 1.0f - 2.0f / (exp_poly(2.0f * fminf(ax, 20.0f)) + 1.0f);
  return ax < 0.625f ? small : (x < 0 ? -big : big);
}

void dpm_tanh_forward(float *out, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) out[k] = tanh_fast(x[k]);
}

void dpm_tanh_backward(float *dx, const float *dout, const float *out, size_t n) {
  for (size_t k = 0; k < n; k++) dx[k] = dout[k] * (1.0f - out[k] * out[k]);
}

/* ---- groupnorm -------------------------------------------------------------------------------- */

void dpm_groupnorm_forward(float *out, float *xhat, float *rstd, const float *x, const float *gamma,
                           const float *beta, int B, int C, int HW, int G, float eps) {
  const int Cg = C / G;
  const size_t n = (size_t)Cg * HW;
  for (int i = 0; i < B; i++) {
    for (int g = 0; g < G; g++) {
      const size_t off = ((size_t)i * C + (size_t)g * Cg) * HW;
      const float *xg = x + off;
      double s = 0, s2 = 0;
      for (size_t k = 0; k < n; k++) s += xg[k];
      const double mean = s / (double)n;
      for (size_t k = 0; k < n; k++) s2 += (xg[k] - mean) * (xg[k] - mean);
      const float r = (float)(1.0 / sqrt(s2 / (double)n + eps));
      rstd[(size_t)i * G + g] = r;
      for (int c = 0; c < Cg; c++) {
        const int ch = g * Cg + c;
        for (int k = 0; k < HW; k++) {
          const size_t j = (size_t)c * HW + k;
          const float xh = (float)(xg[j] - mean) * r;
          xhat[off + j] = xh;
          out[off + j] = gamma[ch] * xh + beta[ch];
        }
      }
    }
  }
}

void dpm_groupnorm_backward(float *dx, float *E, const float *dout, const float *xhat, const float *rstd,
                            const float *gamma, int B, int C, int HW, int G) {
  const int Cg = C / G;
  const size_t n = (size_t)Cg * HW;
  for (int i = 0; i < B; i++) {
    float *dgamma = E + (size_t)i * 2 * C, *dbeta = dgamma + C;
    for (int ch = 0; ch < C; ch++) {
      const size_t off = ((size_t)i * C + ch) * HW;
      float sg = 0, sb = 0;
      for (int k = 0; k < HW; k++) {
        sg += dout[off + k] * xhat[off + k];
        sb += dout[off + k];
      }
      dgamma[ch] = sg;
      dbeta[ch] = sb;
    }
    if (!dx) continue;
    for (int g = 0; g < G; g++) {
      const size_t off = ((size_t)i * C + (size_t)g * Cg) * HW;
      /* dxhat = dout * gamma; dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) */
      double m1 = 0, m2 = 0;
      for (int c = 0; c < Cg; c++) {
        const float gm = gamma[g * Cg + c];
        for (int k = 0; k < HW; k++) {
          const size_t j = off + (size_t)c * HW + k;
          const float dxh = dout[j] * gm;
          m1 += dxh;
          m2 += dxh * xhat[j];
        }
      }
      const float a = (float)(m1 / (double)n), b = (float)(m2 / (double)n), r = rstd[(size_t)i * G + g];
      for (int c = 0; c < Cg; c++) {
        const float gm = gamma[g * Cg + c];
        for (int k = 0; k < HW; k++) {
          const size_t j = off + (size_t)c * HW + k;
          dx[j] = r * (dout[j] * gm - a - xhat[j] * b);
        }
      }
    }
  }
}

/* ---- softmax cross-entropy -------------------------------------------------------------------- */

double dpm_softmax_xent_forward(float *probs, const float *logits, const int32_t *y, int B, int O,
                                int *n_correct) {
  double loss = 0;
  int correct = 0;
  for (int i = 0; i < B; i++) {
    const float *z = logits + (size_t)i * O;
    float *p = probs + (size_t)i * O;
    int arg = 0;
    float mx = z[0];
    for (int o = 1; o < O; o++)
      if (z[o] > mx) {
        mx = z[o];
        arg = o;
      }
    double s = 0;
    for (int o = 0; o < O; o++) {
      p[o] = expf(z[o] - mx);
      s += p[o];
    }
    const float inv = (float)(1.0 / s);
    for (int o = 0; o < O; o++) p[o] *= inv;
    if (y) {
      loss += (double)mx + log(s) - (double)z[y[i]];
      correct += arg == y[i];
    }
  }
  if (n_correct) *n_correct = correct;
  return loss;
}

void dpm_softmax_xent_backward(float *dlogits, const float *probs, const int32_t *y, int B, int O) {
  memcpy(dlogits, probs, (size_t)B * O * sizeof(float));
  for (int i = 0; i < B; i++) dlogits[(size_t)i * O + y[i]] -= 1.0f;
}
