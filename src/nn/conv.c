/* The 2-D convolution (im2col + sgemm): kernels (ghost norms in double with the ill-conditioning flag,
 * explicit per-example gradients, clipped sums with their safeguards), weight standardization and its ops table.
 *
 * Weight standardization (ws=1): the forward uses what = WS(w) (dpm_ws_forward), so example i's gradient
 * w.r.t. the parameter w is J^T g_i with g_i its gradient w.r.t. what and J the standardization's Jacobian
 * (the same for every example). Per-example norms are then taken of the explicit rows J^T g_i (a ws layer
 * always keeps explicit per-example gradients: the Jacobian mixes each row's entries, which the ghost form
 * does not see); the clipped or plain sum sum_i c_i J^T g_i = J^T sum_i c_i g_i is formed in what-space and
 * transformed once. The bias is not standardized. */
#include "nn/layer.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* Positions' cancellation beyond which a ghost example's clipped gradient is formed alone and capped
 * (dpm_conv_accumulate): S^2 > KAPPA2 T ||grad||^2, i.e. 8 times the sqrt(T) of uncorrelated terms. */
#define GHOST_ILL_KAPPA2 64.0
/* Per-model cap on memory for kept explicit per-example gradients (AUTO picks ghost beyond it): model.c. */

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

/* eb[o] = sum_t D[o T + t] for the O rows of D (O x T), each summed in t order from 0, as
 * dpm_nn_colsum_add sums the transposed rows (so the sums are the same floats); four rows at a time, their
 * chains interleaved. */
static void rows_sum(float *eb, const float *D, int O, int T) {
  int o = 0;
  for (; o + 4 <= O; o += 4) {
    const float *d0 = D + (size_t)o * T, *d1 = d0 + T, *d2 = d1 + T, *d3 = d2 + T;
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (int t = 0; t < T; t++) a0 += d0[t], a1 += d1[t], a2 += d2[t], a3 += d3[t];
    eb[o] = a0, eb[o + 1] = a1, eb[o + 2] = a2, eb[o + 3] = a3;
  }
  for (; o < O; o++) {
    float a = 0;
    for (int t = 0; t < T; t++) a += D[(size_t)o * T + t];
    eb[o] = a;
  }
}

void dpm_conv_grads_explicit(float *E, double *sq, const float *P, const float *dout, int has_bias, int B, int T,
                             int CK, int O) {
  const size_t N = (size_t)O * CK + (has_bias ? (size_t)O : 0);
  for (int i = 0; i < B; i++) {
    const float *Pi = P + (size_t)i * T * CK, *Di = dout + (size_t)i * O * T;
    float *Ei = E + (size_t)i * N;
    /* dout_i is O x T: no transposed copy needed (the products and their order over t are those of
       G_i^T P_i with G_i = dout_i^T) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, O, CK, T, 1.0f, Di, T, Pi, CK, 0.0f, Ei, CK);
    if (has_bias) rows_sum(Ei + (size_t)O * CK, Di, O, T);
    if (sq) sq[i] = dpm_nn_sumsq(Ei, N);
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
      careful |= dpm_nn_scale_row(scratch + (size_t)i * TO, G + (size_t)i * TO, coef[i], TO);
      careful |= ill && ill[i] && coef[i] != 0.0f;
    }
    Gs = scratch;
  }
  if (!careful) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, CK, B * T, 1.0f, Gs, O, P, CK, 1.0f, dw, CK);
    if (db) dpm_nn_colsum_add(db, Gs, (size_t)B * T, O);
    return;
  }
  /* a micro-batch with an extreme or ill-conditioned example: each example's clipped gradient is formed
     alone (excluded ones skipped); rescaled or ill-conditioned ones are materialized in `row` (ill-conditioned
     ones in double, so the positions' cancellation costs no accuracy) and capped at c ||grad|| of their ghost
     norm, whatever the sum over positions made of them */
  float *E = row + TCK;
  for (int i = 0; i < B; i++) {
    const float c = coef[i], *Pi = P + (size_t)i * TCK;
    float *s = scratch + (size_t)i * TO;
    if (c == 0.0f) continue;
    int alone = ill && ill[i], rescaled = 0;
    if (c < 1.0f && dpm_nn_needs_rescale(s, TO))
      Pi = dpm_nn_rescale_rows(s, G + (size_t)i * TO, c, TO, Pi, TCK, row), alone = rescaled = 1;
    if (!alone || !gsq) {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, CK, T, 1.0f, s, O, Pi, CK, 1.0f, dw, CK);
      if (db) dpm_nn_colsum_add(db, s, (size_t)T, O);
      continue;
    }
    if (!rescaled && T >= 2) /* ill-conditioned: in double from the unscaled G (row's first 2 CK floats as acc) */
      dpm_nn_outer_sum_exact(E, 1, G + (size_t)i * TO, Pi, c, T, O, CK, (double *)row);
    else
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, CK, T, 1.0f, s, O, Pi, CK, 0.0f, E, CK);
    if (db) {
      memset(E + (size_t)O * CK, 0, (size_t)O * sizeof(float));
      dpm_nn_colsum_add(E + (size_t)O * CK, s, (size_t)T, O);
    }
    const double have = dpm_nn_sumsq(E, N), cap = (double)c * c * gsq[i];
    float f = 1.0f;
    if (!isfinite(have)) f = 0.0f;
    else if (have > cap) f = (float)(sqrt(cap / have) * (1.0 - 0x1p-21));
    if (f == 0.0f) continue;
    cblas_saxpy((int)((size_t)O * CK), f, E, 1, dw, 1);
    if (db) cblas_saxpy(O, f, E + (size_t)O * CK, 1, db, 1);
  }
}


void dpm_ws_forward(float *what, float *rstd, const float *w, int O, int n, float eps) {
  for (int o = 0; o < O; o++) {
    const float *wo = w + (size_t)o * n;
    double s = 0, s2 = 0;
    for (int k = 0; k < n; k++) s += wo[k];
    const double mean = s / n;
    for (int k = 0; k < n; k++) s2 += (wo[k] - mean) * (wo[k] - mean);
    const double r = 1.0 / sqrt(s2 / n + eps);
    rstd[o] = (float)r;
    for (int k = 0; k < n; k++) what[(size_t)o * n + k] = (float)((wo[k] - mean) * r);
  }
}

void dpm_ws_backward(float *g, const float *what, const float *rstd, int O, int n) {
  for (int o = 0; o < O; o++) {
    float *go = g + (size_t)o * n;
    const float *ho = what + (size_t)o * n;
    double s = 0, sh = 0;
    for (int k = 0; k < n; k++) s += go[k], sh += (double)go[k] * ho[k];
    const double a = s / n, b = sh / n, r = rstd[o];
    for (int k = 0; k < n; k++) go[k] = (float)(r * (go[k] - a - ho[k] * b));
  }
}

/* ---- ops ---------------------------------------------------------------------------------------- */

#define WS_EPS 1e-5f

/* Shapes of conv and pooling windows (pooling: pad 0); -1 with err. */
int dpm_window_shape(layer *l, int pad, int num, char *err) {
  const dpm_layer_spec *s = &l->s;
  const char *name = l->ops->name;
  if (s->kernel < 1 || s->stride < 1 || pad < 0)
    return dpm_err(err, "layer %d (%s): kernel and stride must be positive and pad >= 0", num, name);
  if (l->H + 2 * pad < s->kernel || l->W + 2 * pad < s->kernel)
    return dpm_err(err, "layer %d (%s): kernel %d is larger than its %dx%d input (pad %d)", num, name, s->kernel, l->H,
                   l->W, pad);
  l->OH = (l->H + 2 * pad - s->kernel) / s->stride + 1;
  l->OW = (l->W + 2 * pad - s->kernel) / s->stride + 1;
  return 0;
}

static int conv_shape(layer *l, int max_batch, int num, char *err) {
  const dpm_layer_spec *s = &l->s;
  if (s->out < 1) return dpm_err(err, "layer %d (conv): missing out=", num);
  if (dpm_window_shape(l, s->pad, num, err)) return -1;
  l->OC = s->out;
  l->T = l->OH * l->OW;
  l->CK = l->C * s->kernel * s->kernel;
  l->wsize = (size_t)s->out * l->CK;
  l->bsize = s->bias ? (size_t)s->out : 0;
  if ((double)max_batch * l->T * ((double)l->CK + s->out) > (double)INT_MAX)
    return dpm_err(err, "layer %d (conv): batch %d x %d positions x %d patch values is too large", num, max_batch, l->T,
                   l->CK);
  if (s->ws && l->CK < 2) return dpm_err(err, "layer %d (conv): ws=1 needs at least 2 weights per output channel", num);
  if (s->ws) l->explicit_ = 1; /* always explicit per-example gradients (see the top of the file) */
  return 0;
}

static void conv_plan(layer *l, dpm_plan *p) {
  const size_t F = sizeof(float), bt = p->B * l->T;
  l->P = dpm_plan_carve(p, bt * l->CK * F);
  l->G = dpm_plan_carve(p, bt * l->s.out * F);
  if (bt * l->s.out > p->scratch) p->scratch = bt * l->s.out;
  if (bt * l->CK > p->scratch) p->scratch = bt * l->CK;
  const size_t gh = (size_t)l->T * (2 * (size_t)l->T + (size_t)l->CK + (size_t)l->s.out);
  if (gh > p->ghost) p->ghost = gh;
  const size_t rw = (size_t)l->T * l->CK + (size_t)l->s.out * ((size_t)l->CK + 1);
  if (rw > p->row) p->row = rw;
  l->gsq = dpm_plan_carve(p, p->B * sizeof(double));
  l->ill = dpm_plan_carve(p, p->B);
  if (l->explicit_ && !l->E_owned) l->E = dpm_plan_carve(p, p->B * (l->wsize + l->bsize) * F);
  if (l->s.ws) {
    l->what = dpm_plan_carve(p, l->wsize * F);
    l->wacc = dpm_plan_carve(p, l->wsize * F);
    l->wrstd = dpm_plan_carve(p, (size_t)l->s.out * F);
  }
}

static void conv_init(const layer *l, float *params, const dpm_key *key, int layer_num) {
  dpm_init_uniform(l, params, key, layer_num, (size_t)l->CK);
}

static void conv_forward(dpm_model *m, layer *l, const float *in, int B) {
  const dpm_layer_spec *s = &l->s;
  const float *w = m->params + l->poff, *b = l->bsize ? w + l->wsize : NULL;
  if (s->ws) {
    dpm_ws_forward(l->what, l->wrstd, w, s->out, l->CK, WS_EPS);
    w = l->what;
  }
  dpm_conv_forward(l->out, l->P, m->scratch, in, w, b, B, l->C, l->H, l->W, s->out, s->kernel, s->stride, s->pad, l->OH,
                   l->OW);
}

static void conv_backward(dpm_model *m, layer *l, const float *in, float *dx, double *sq, int B) {
  (void)in;
  const dpm_layer_spec *s = &l->s;
  const int explicit_now = sq && l->explicit_;
  /* G (the transposed output gradient) serves the input gradient, the ghost norms and the weighted GEMM;
     explicit rows are formed from dout itself, so a first layer with explicit norms skips it */
  if (dx || !explicit_now)
    dpm_conv_backward(dx, l->G, m->scratch, l->dout, s->ws ? l->what : m->params + l->poff, B, l->C, l->H, l->W, s->out,
                      s->kernel, s->stride, s->pad, l->OH, l->OW);
  if (explicit_now && s->ws) { /* rows w.r.t. what, then through the Jacobian, then their norms */
    dpm_conv_grads_explicit(l->E, NULL, l->P, l->dout, s->bias, B, l->T, l->CK, s->out);
    const size_t N = l->wsize + l->bsize;
    for (int i = 0; i < B; i++) dpm_ws_backward(l->E + (size_t)i * N, l->what, l->wrstd, s->out, l->CK);
    dpm_rows_sqnorm(sq, l->E, B, N);
    l->E_ready = 1;
  } else if (explicit_now) {
    dpm_conv_grads_explicit(l->E, sq, l->P, l->dout, s->bias, B, l->T, l->CK, s->out);
    l->E_ready = 1;
  } else if (sq) {
    dpm_conv_sqnorms_ghost(sq, l->ill, l->P, l->G, s->bias, m->ghost, B, l->T, l->CK, s->out);
    memcpy(l->gsq, sq, (size_t)B * sizeof(double));
    l->gsq_ready = 1;
  }
}

static void conv_accumulate(dpm_model *m, layer *l, const float *in, float *dw, float *db, const float *coef, int B) {
  (void)in;
  if (l->E_ready) {
    dpm_rows_accumulate(dw, l->E, coef, B, l->wsize + l->bsize);
  } else if (l->s.ws) { /* sum in what-space, one Jacobian product, added to dw */
    memset(l->wacc, 0, l->wsize * sizeof(float));
    dpm_conv_accumulate(l->wacc, db, l->P, l->G, coef, NULL, NULL, m->scratch, m->row, B, l->T, l->CK, l->s.out);
    dpm_ws_backward(l->wacc, l->what, l->wrstd, l->s.out, l->CK);
    for (size_t k = 0; k < l->wsize; k++) dw[k] += l->wacc[k];
  } else {
    dpm_conv_accumulate(dw, db, l->P, l->G, coef, l->gsq_ready ? l->gsq : NULL, l->gsq_ready ? l->ill : NULL,
                        m->scratch, m->row, B, l->T, l->CK, l->s.out);
  }
}

static void conv_describe(const layer *l, char *buf, size_t len) {
  const dpm_layer_spec *s = &l->s;
  snprintf(buf, len, " out=%d kernel=%d stride=%d pad=%d%s%s [%s norms]", s->out, s->kernel, s->stride, s->pad,
           s->bias ? "" : " bias=0", s->ws ? " ws=1" : "", l->explicit_ ? "explicit" : "ghost");
}

static void conv_info(const layer *l, dpm_layer_info *info) {
  info->wrank = 4, info->wdims[0] = l->s.out, info->wdims[1] = l->C, info->wdims[2] = info->wdims[3] = l->s.kernel;
  info->names[0] = "weight", info->names[1] = "bias";
  info->cost = 3.0 * (double)l->T * l->CK * l->s.out;
}

static size_t conv_explicit_bytes(const layer *l, int max_batch) {
  /* multiply-adds per example: ghost = Gram norms (in double: twice the cost of float) + weighted GEMM for
     the sum; explicit = per-example GEMM + writing and re-reading the rows (memory traffic, weighted) */
  double T = l->T, CK = l->CK, O = l->s.out;
  double ghost = 2 * T * T * (CK + O + 1) + T * O * CK;
  double expl = T * O * CK + 8.0 * (O * CK + O);
  return expl <= ghost || l->s.ws ? (size_t)max_batch * (l->wsize + l->bsize) * sizeof(float) : 0;
}

static void conv_set_norm(layer *l, int explicit_, int max_batch) {
  if (l->s.ws) explicit_ = 1; /* ws=1 has no ghost form */
  if (explicit_ && !l->E) {
    l->E = dpm_malloc_aligned((size_t)max_batch * (l->wsize + l->bsize) * sizeof(float));
    l->E_owned = 1;
  }
  l->explicit_ = explicit_;
  l->E_ready = 0;
}

static dpm_norm_method conv_norm_method(const layer *l) { return l->explicit_ ? DPM_NORM_EXPLICIT : DPM_NORM_GHOST; }

const dpm_layer_ops dpm_ops_conv = {
    .name = "conv", .keys = "out kernel stride pad bias ws", .required = 2, .shape = conv_shape, .plan = conv_plan,
    .init = conv_init, .forward = conv_forward, .backward = conv_backward, .accumulate = conv_accumulate,
    .describe = conv_describe, .info = conv_info, .explicit_bytes = conv_explicit_bytes, .set_norm = conv_set_norm,
    .norm_method = conv_norm_method};
