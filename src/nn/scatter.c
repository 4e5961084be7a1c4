/* The 2-D wavelet scattering transform (Mallat 2012; Bruna and Mallat 2013) as a layer without parameters
 * (Tramer and Boneh 2021, "Differentially private learning needs better features": the features are
 * data-independent, so they cost no privacy): J scales, L orientations, Morlet wavelets, order 2, with the
 * conventions of kymatio's Scattering2D. Computed with FFTW (double precision) one image at a time.
 *
 * Filters (on the padded Mp x Np grid, spatial positions u = (x, y), x in [0, Mp), y in [0, Np)):
 *   gabor(sigma, theta, xi, s)(u) = s / (2 pi sigma^2) sum_{a, b = -2..2} exp(-v^T R D R^T v / (2 sigma^2)
 *                                       + i xi (v_1 cos theta + v_2 sin theta)),  v = (x + a Mp, y + b Np),
 *   R the rotation by theta, D = diag(1, s^2);
 *   morlet = gabor(xi) - K gabor(0) with K = sum_u gabor(xi) / sum_u gabor(0) (zero mean);
 *   psi_{j,l} = morlet(sigma = 0.8 2^j, theta = (L/2 - 1 - l) pi / L, xi = 3 pi / (4 2^j), s = 4 / L),
 *   phi = gabor(sigma = 0.8 2^(J-1), theta = 0, xi = 0, s = 1);
 *   each kept as the real part of its DFT (the imaginary part vanishes up to the truncated periodization).
 *   At resolution r (grid Mp/2^r x Np/2^r) a filter is the DFT of its subsampled f(2^r u): the mean of its
 *   Fourier coefficients over the 2^r x 2^r aliases.
 * Transform of one channel x (H x W): reflect-pad to Mp x Np, Mp = (floor((H + 2^J) / 2^J) + 1) 2^J (top
 * (Mp - H) / 2 rows); with A_k f (n) = f(2^k n) and * circular convolution on the current grid,
 *   S0        = A_J (x * phi),
 *   U1_{j,l}  = |A_j (x * psi_{j,l})|,                     S1_{j,l} = A_{J-j} (U1_{j,l} * phi^(j)),
 *   U2        = |A_{j2-j1} (U1_{j1,l1} * psi_{j2,l2}^(j1))|, S2 = A_{J-j2} (U2 * phi^(j2)),  j2 > j1,
 * each output cropped by one coarse pixel on every side: floor(H/2^J) x floor(W/2^J) positions. Channels
 * per input channel: 1 + J L + L^2 J (J-1) / 2 (81 for J = 2, L = 8), in the order S0, the S1 (j1, l1)
 * j1-major, then the S2 (j1, l1, j2, l2) in that nesting; input channel c's block is channels c*K ... c*K + K-1.
 * Subsampling is done in Fourier: A_k of a convolution is the inverse DFT on the coarse grid of the sum of
 * the product's coefficients over the k x k aliases, divided by the fine grid's size.
 *
 * The layer must be the first of a model: it has no backward (the input is the data, and no parameter
 * comes before it). Its output depends on the example alone, so it is computed on the fly each forward;
 * docs/design.md discusses caching it at data-load time instead. */
#include "nn/layer.h"

#include <complex.h>
#include <fftw3.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define SCAT_MAX_J 6

struct dpm_scatter {
  int H, W, J, L, K, Mp, Np, top, left, OH, OW;
  size_t rsize[SCAT_MAX_J + 1], roff[SCAT_MAX_J + 1], per_filter; /* grid sizes and offsets per resolution */
  double *psi, *phi;      /* Fourier filters: psi (j, l) at resolutions 0..J-1, phi at 0..J-1 */
  fftw_complex *X0, *U1;  /* the padded image's DFT, the current first-order modulus's DFT */
  fftw_complex *buf[SCAT_MAX_J + 1];
  fftw_plan fwd[SCAT_MAX_J + 1], bwd[SCAT_MAX_J + 1];
};

int dpm_scatter_channels(int J, int L) { return 1 + J * L + L * L * J * (J - 1) / 2; }

void dpm_scatter_padding(int H, int J, int *Mp, int *top) {
  const int s = 1 << J;
  *Mp = ((H + s) / s + 1) * s;
  *top = (*Mp - H) / 2;
}

/* gabor(sigma, theta, xi, s) on the M x N grid into g (complex, M x N). */
static void gabor(double complex *g, int M, int N, double sigma, double theta, double xi, double slant) {
  const double c = cos(theta), s = sin(theta), s2 = slant * slant;
  /* R diag(1, s^2) R^T / (2 sigma^2) */
  const double a00 = (c * c + s2 * s * s) / (2 * sigma * sigma), a11 = (s * s + s2 * c * c) / (2 * sigma * sigma);
  const double a01 = (c * s - s2 * s * c) / (2 * sigma * sigma);
  const double norm = slant / (2 * M_PI * sigma * sigma);
  for (int x = 0; x < M; x++)
    for (int y = 0; y < N; y++) {
      double complex v = 0;
      for (int a = -2; a <= 2; a++)
        for (int b = -2; b <= 2; b++) {
          const double u = x + (double)a * M, w = y + (double)b * N;
          v += cexp(-(a00 * u * u + 2 * a01 * u * w + a11 * w * w) + I * xi * (u * c + w * s));
        }
      g[(size_t)x * N + y] = v * norm;
    }
}

/* f (real, Mp x Np) = Re DFT(g); then its periodized copies at the coarser resolutions. */
static void store_filter(dpm_scatter *S, double *f, fftw_complex *g) {
  fftw_execute_dft(S->fwd[0], g, g);
  for (size_t k = 0; k < S->rsize[0]; k++) f[k] = creal(g[k]);
  for (int r = 1; r < S->J; r++) {
    const int Mr = S->Mp >> r, Nr = S->Np >> r, k = 1 << r;
    double *fr = f + S->roff[r];
    for (int x = 0; x < Mr; x++)
      for (int y = 0; y < Nr; y++) {
        double v = 0;
        for (int p = 0; p < k; p++)
          for (int q = 0; q < k; q++) v += f[(size_t)(x + p * Mr) * S->Np + (y + q * Nr)];
        fr[(size_t)x * Nr + y] = v / (double)(k * k);
      }
  }
}

int dpm_scatter_check(int H, int W, int J, int L, char *err) {
  if (J < 1 || J > SCAT_MAX_J) return dpm_err(err, "J=%d is outside [1, %d]", J, SCAT_MAX_J);
  if (L < 1 || L > 64) return dpm_err(err, "L=%d is outside [1, 64]", L);
  int Mp, top, Np, left;
  dpm_scatter_padding(H, J, &Mp, &top);
  dpm_scatter_padding(W, J, &Np, &left);
  if (H >> J < 1 || W >> J < 1 || Mp - H - top > H - 1 || Np - W - left > W - 1)
    return dpm_err(err, "a %dx%d input is too small for J=%d (the reflection padding to %dx%d needs at least %d pixels a side)",
                   H, W, J, Mp, Np, (Mp - H + 1) / 2 + 1);
  return 0;
}

dpm_scatter *dpm_scatter_create(int H, int W, int J, int L) {
  char err[DPM_ERRLEN];
  if (dpm_scatter_check(H, W, J, L, err)) dpm_fatal("scatter: %s", err);
  dpm_scatter *S = dpm_calloc(1, sizeof *S);
  S->H = H, S->W = W, S->J = J, S->L = L, S->K = dpm_scatter_channels(J, L);
  dpm_scatter_padding(H, J, &S->Mp, &S->top);
  dpm_scatter_padding(W, J, &S->Np, &S->left);
  S->OH = (S->Mp >> J) - 2, S->OW = (S->Np >> J) - 2;
  size_t off = 0;
  for (int r = 0; r <= J; r++) {
    S->rsize[r] = (size_t)(S->Mp >> r) * (size_t)(S->Np >> r);
    S->roff[r] = off;
    if (r < J) off += S->rsize[r];
  }
  S->per_filter = off;
  S->psi = fftw_malloc(sizeof(double) * off * (size_t)(J * L + 1));
  S->phi = S->psi + off * (size_t)(J * L);
  S->X0 = fftw_malloc(sizeof(fftw_complex) * S->rsize[0]);
  S->U1 = fftw_malloc(sizeof(fftw_complex) * S->rsize[0]);
  if (!S->psi || !S->X0 || !S->U1) dpm_fatal("scatter: out of memory");
  for (int r = 0; r <= J; r++) {
    S->buf[r] = fftw_malloc(sizeof(fftw_complex) * S->rsize[r]);
    if (!S->buf[r]) dpm_fatal("scatter: out of memory");
    S->fwd[r] = fftw_plan_dft_2d(S->Mp >> r, S->Np >> r, S->buf[r], S->buf[r], FFTW_FORWARD, FFTW_ESTIMATE);
    S->bwd[r] = fftw_plan_dft_2d(S->Mp >> r, S->Np >> r, S->buf[r], S->buf[r], FFTW_BACKWARD, FFTW_ESTIMATE);
    if (!S->fwd[r] || !S->bwd[r]) dpm_fatal("scatter: FFTW could not plan a %dx%d transform", S->Mp >> r, S->Np >> r);
  }
  /* filters: built in X0 (complex spatial), transformed in place with the resolution-0 plan */
  double complex *g = (double complex *)S->X0, *g0 = (double complex *)S->U1;
  for (int j = 0; j < J; j++)
    for (int l = 0; l < L; l++) {
      const double sigma = 0.8 * (double)(1 << j), theta = (double)(L / 2 - 1 - l) * M_PI / L;
      gabor(g, S->Mp, S->Np, sigma, theta, 3.0 * M_PI / (4.0 * (double)(1 << j)), 4.0 / L);
      gabor(g0, S->Mp, S->Np, sigma, theta, 0.0, 4.0 / L);
      double complex s1 = 0, s0 = 0;
      for (size_t k = 0; k < S->rsize[0]; k++) s1 += g[k], s0 += g0[k];
      const double complex Kc = s1 / s0;
      for (size_t k = 0; k < S->rsize[0]; k++) g[k] -= Kc * g0[k];
      store_filter(S, S->psi + (size_t)(j * L + l) * off, S->X0);
    }
  gabor(g, S->Mp, S->Np, 0.8 * (double)(1 << (J - 1)), 0.0, 0.0, 1.0);
  store_filter(S, S->phi, S->X0);
  return S;
}

void dpm_scatter_free(dpm_scatter *S) {
  if (!S) return;
  for (int r = 0; r <= S->J; r++) {
    fftw_destroy_plan(S->fwd[r]);
    fftw_destroy_plan(S->bwd[r]);
    fftw_free(S->buf[r]);
  }
  fftw_free(S->psi);
  fftw_free(S->X0);
  fftw_free(S->U1);
  dpm_free(S);
}

const double *dpm_scatter_psi_hat(const dpm_scatter *S, int j, int l, int r) {
  DPM_ASSERT(j >= 0 && j < S->J && l >= 0 && l < S->L && r >= 0 && r < S->J);
  return S->psi + (size_t)(j * S->L + l) * S->per_filter + S->roff[r];
}

const double *dpm_scatter_phi_hat(const dpm_scatter *S, int r) {
  DPM_ASSERT(r >= 0 && r < S->J);
  return S->phi + S->roff[r];
}

void dpm_scatter_shape(const dpm_scatter *S, int *K, int *OH, int *OW) { *K = S->K, *OH = S->OH, *OW = S->OW; }

/* buf[rd] = the sum over the 2^(rd-rs) aliases of F (grid rs) times the filter f (grid rs). */
static void fold_product(dpm_scatter *S, int rd, const fftw_complex *F, const double *f, int rs) {
  const int Ms = S->Mp >> rs, Ns = S->Np >> rs, Md = S->Mp >> rd, Nd = S->Np >> rd, k = 1 << (rd - rs);
  fftw_complex *d = S->buf[rd];
  if (k == 1) {
    for (size_t t = 0; t < S->rsize[rs]; t++) d[t] = F[t] * f[t];
    return;
  }
  memset(d, 0, sizeof(fftw_complex) * S->rsize[rd]);
  for (int p = 0; p < k; p++)
    for (int x = 0; x < Md; x++) {
      const size_t srow = (size_t)(x + p * Md) * Ns;
      fftw_complex *drow = d + (size_t)x * Nd;
      for (int q = 0; q < k; q++)
        for (int y = 0; y < Nd; y++) {
          const size_t t = srow + (size_t)(y + q * Nd);
          drow[y] += F[t] * f[t];
        }
    }
  (void)Ms;
}

/* buf[r] (after the inverse DFT) scaled by 1/n, its real part cropped into out (OH x OW). */
static void emit(dpm_scatter *S, float *out, int r, double n) {
  const int Nr = S->Np >> r;
  const fftw_complex *b = S->buf[r];
  for (int x = 0; x < S->OH; x++)
    for (int y = 0; y < S->OW; y++) out[(size_t)x * S->OW + y] = (float)(creal(b[(size_t)(x + 1) * Nr + (y + 1)]) / n);
}

/* buf[r] = DFT(|buf[r]| / n) (the modulus after an unnormalized inverse DFT). */
static void modulus_dft(dpm_scatter *S, int r, double n) {
  fftw_complex *b = S->buf[r];
  const double inv = 1.0 / n;
  for (size_t t = 0; t < S->rsize[r]; t++) { /* sqrt(re^2 + im^2), not cabs (hypot's overflow care is slow) */
    const double re = creal(b[t]), im = cimag(b[t]);
    b[t] = sqrt(re * re + im * im) * inv;
  }
  fftw_execute(S->fwd[r]);
}

void dpm_scatter_forward(dpm_scatter *S, float *out, const float *x, int B, int C) {
  const int J = S->J, L = S->L, H = S->H, W = S->W, Mp = S->Mp, Np = S->Np;
  const size_t plane = (size_t)S->OH * S->OW;
  const double n0 = (double)S->rsize[0];
  for (int i = 0; i < B; i++)
    for (int c = 0; c < C; c++) {
      const float *xc = x + ((size_t)i * C + c) * H * W;
      float *o = out + ((size_t)i * C + c) * S->K * plane;
      /* reflect padding (the edge pixel not repeated) */
      fftw_complex *b0 = S->buf[0];
      for (int u = 0; u < Mp; u++) {
        int h = u - S->top;
        h = h < 0 ? -h : h >= H ? 2 * (H - 1) - h : h;
        for (int v = 0; v < Np; v++) {
          int w = v - S->left;
          w = w < 0 ? -w : w >= W ? 2 * (W - 1) - w : w;
          b0[(size_t)u * Np + v] = xc[(size_t)h * W + w];
        }
      }
      fftw_execute(S->fwd[0]);
      memcpy(S->X0, b0, sizeof(fftw_complex) * S->rsize[0]);
      fold_product(S, J, S->X0, dpm_scatter_phi_hat(S, 0), 0);
      fftw_execute(S->bwd[J]);
      emit(S, o, J, n0);
      int k1 = 1, k2 = 1 + J * L;
      for (int j1 = 0; j1 < J; j1++)
        for (int l1 = 0; l1 < L; l1++, k1++) {
          fold_product(S, j1, S->X0, dpm_scatter_psi_hat(S, j1, l1, 0), 0);
          fftw_execute(S->bwd[j1]);
          modulus_dft(S, j1, n0);
          memcpy(S->U1, S->buf[j1], sizeof(fftw_complex) * S->rsize[j1]);
          const double n1 = (double)S->rsize[j1];
          fold_product(S, J, S->U1, dpm_scatter_phi_hat(S, j1), j1);
          fftw_execute(S->bwd[J]);
          emit(S, o + (size_t)k1 * plane, J, n1);
          for (int j2 = j1 + 1; j2 < J; j2++)
            for (int l2 = 0; l2 < L; l2++, k2++) {
              fold_product(S, j2, S->U1, dpm_scatter_psi_hat(S, j2, l2, j1), j1);
              fftw_execute(S->bwd[j2]);
              modulus_dft(S, j2, n1);
              fold_product(S, J, S->buf[j2], dpm_scatter_phi_hat(S, j2), j2);
              fftw_execute(S->bwd[J]);
              emit(S, o + (size_t)k2 * plane, J, (double)S->rsize[j2]);
            }
        }
    }
}

/* ---- ops ---------------------------------------------------------------------------------------- */

#define SCAT_J(l) ((l)->s.scat_j ? (l)->s.scat_j : 2)
#define SCAT_L(l) ((l)->s.scat_l ? (l)->s.scat_l : 8)

static int scatter_shape(layer *l, int max_batch, int num, char *err) {
  (void)max_batch;
  char e[DPM_ERRLEN];
  if (dpm_scatter_check(l->H, l->W, SCAT_J(l), SCAT_L(l), e)) return dpm_err(err, "layer %d (scatter): %s", num, e);
  l->OC = l->C * dpm_scatter_channels(SCAT_J(l), SCAT_L(l));
  l->OH = l->H >> SCAT_J(l), l->OW = l->W >> SCAT_J(l);
  return 0;
}

static void scatter_plan(layer *l, dpm_plan *p) {
  if (p->base && !l->ks) l->ks = dpm_scatter_create(l->H, l->W, SCAT_J(l), SCAT_L(l));
}

static void scatter_release(layer *l) {
  dpm_scatter_free(l->ks);
  l->ks = NULL;
}

static void scatter_forward(dpm_model *m, layer *l, const float *in, int B) {
  (void)m;
  dpm_scatter_forward(l->ks, l->out, in, B, l->C);
}

static void scatter_backward(dpm_model *m, layer *l, const float *in, float *dx, double *sq, int B) {
  (void)m, (void)l, (void)in, (void)sq, (void)B;
  /* dpm_model_parse keeps scatter first: nothing before it needs an input gradient */
  if (dx) dpm_fatal("scatter has no input gradient: it must be the first layer, without an input gradient asked for");
}

static void scatter_describe(const layer *l, char *buf, size_t len) { snprintf(buf, len, " J=%d L=%d", SCAT_J(l), SCAT_L(l)); }

static void scatter_info(const layer *l, dpm_layer_info *info) {
  /* FFTs: about (1 + J L (1 + L (J-1)/2)) transforms of the padded grid, ~5 n log2 n each */
  const double n = (double)(l->H + (4 << SCAT_J(l))) * (l->W + (4 << SCAT_J(l)));
  info->cost = (double)l->C * dpm_scatter_channels(SCAT_J(l), SCAT_L(l)) * 2.0 * 5.0 * n * log2(n) / 4.0;
}

const dpm_layer_ops dpm_ops_scatter = {
    .name = "scatter", .keys = "J L", .required = 0, .shape = scatter_shape, .plan = scatter_plan,
    .forward = scatter_forward, .backward = scatter_backward, .describe = scatter_describe, .info = scatter_info,
    .release = scatter_release};
