/* Tests of the scattering transform (src/nn/scatter.c) against an independent computation of the same
 * documented formulas (the comment at the top of scatter.c), in long double and in space, without FFTs:
 *  - the Fourier filters (resolution 0 and the coarser ones) against a brute-force DFT of the spatial
 *    Morlet / Gaussian filters built from the closed form; psi has zero mean and phi unit mass;
 *  - the whole output (81 channels for J = 2, L = 8 on 28 x 28) of random images against direct circular
 *    convolutions on the subsampled grids; the channel blocks of a multi-channel input;
 *  - a constant image (S0 = c sum(phi), every higher order 0) and translation equivariance (a shift by 2^J
 *    pixels shifts every output by one coarse pixel);
 *  - the layer in a model: shape, describe, placement and size errors, forward = the kernel. */
#include <complex.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dpmpi/nn/model.h"
#include "nn/layers.h"
#include "testing.h"

typedef long double complex lcplx;

static uint64_t rng_state = 0x2545F4914F6CDD1DULL;
static double urand(void) { /* splitmix64, uniform [0, 1) */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}

/* The closed form, written again: s / (2 pi sigma^2) sum_{a,b=-2..2} exp(-Q(v) / (2 sigma^2) + i xi <v, e_theta>)
 * with Q(v) = <R^T v, diag(1, s^2) R^T v>, v = (x + a M, y + b N). */
static void gabor_ld(lcplx *g, int M, int N, long double sigma, long double theta, long double xi, long double slant) {
  const long double c = cosl(theta), s = sinl(theta);
  for (int x = 0; x < M; x++)
    for (int y = 0; y < N; y++) {
      lcplx v = 0;
      for (int a = -2; a <= 2; a++)
        for (int b = -2; b <= 2; b++) {
          const long double u = x + (long double)a * M, w = y + (long double)b * N;
          const long double r1 = c * u + s * w, r2 = -s * u + c * w; /* R^T v */
          const long double q = r1 * r1 + slant * slant * r2 * r2;
          v += cexpl(-q / (2 * sigma * sigma) + I * xi * (u * c + w * s));
        }
      g[(size_t)x * N + y] = v * slant / (2 * 3.14159265358979323846264338327950288L * sigma * sigma);
    }
}

/* psi_{j,l} (Morlet: gabor minus K times its envelope) or phi (l < 0), spatial, M x N. */
static void filter_ld(lcplx *f, int M, int N, int J, int L, int j, int l) {
  if (l < 0) {
    gabor_ld(f, M, N, 0.8L * (1 << (J - 1)), 0, 0, 1);
    return;
  }
  const long double sigma = 0.8L * (1 << j), theta = (long double)(L / 2 - 1 - l) * 3.14159265358979323846264338327950288L / L;
  const long double xi = 3 * 3.14159265358979323846264338327950288L / (4.0L * (1 << j)), slant = 4.0L / L;
  lcplx *e = malloc(sizeof *e * (size_t)M * N);
  gabor_ld(f, M, N, sigma, theta, xi, slant);
  gabor_ld(e, M, N, sigma, theta, 0, slant);
  lcplx s1 = 0, s0 = 0;
  for (size_t k = 0; k < (size_t)M * N; k++) s1 += f[k], s0 += e[k];
  for (size_t k = 0; k < (size_t)M * N; k++) f[k] -= s1 / s0 * e[k];
  free(e);
}

/* The Hermitian part (f(u) + conj f(-u)) / 2: the filter whose DFT is Re DFT(f). */
static void hermitian(lcplx *f, int M, int N) {
  lcplx *t = malloc(sizeof *t * (size_t)M * N);
  for (int x = 0; x < M; x++)
    for (int y = 0; y < N; y++) t[(size_t)x * N + y] = (f[(size_t)x * N + y] + conjl(f[(size_t)((M - x) % M) * N + (N - y) % N])) / 2;
  memcpy(f, t, sizeof *t * (size_t)M * N);
  free(t);
}

/* 2-D DFT of f sampled every k pixels (f on M x N, result on M/k x N/k), by its definition summed over rows
 * then columns (no FFT). */
static void dft_sub(lcplx *F, const lcplx *f, int M, int N, int k) {
  const int m = M / k, n = N / k;
  const long double tp = 2 * 3.14159265358979323846264338327950288L;
  lcplx *t = malloc(sizeof *t * (size_t)m * n), *wm = malloc(sizeof *wm * m), *wn = malloc(sizeof *wn * n);
  for (int a = 0; a < m; a++) wm[a] = cexpl(-I * tp * a / m);
  for (int a = 0; a < n; a++) wn[a] = cexpl(-I * tp * a / n);
  for (int x = 0; x < m; x++) /* t[x, q] = sum_y f(kx, ky) w_n^(qy) */
    for (int q = 0; q < n; q++) {
      lcplx s = 0;
      for (int y = 0; y < n; y++) s += f[(size_t)(k * x) * N + k * y] * wn[(size_t)q * y % n];
      t[(size_t)x * n + q] = s;
    }
  for (int p = 0; p < m; p++)
    for (int q = 0; q < n; q++) {
      lcplx s = 0;
      for (int x = 0; x < m; x++) s += t[(size_t)x * n + q] * wm[(size_t)p * x % m];
      F[(size_t)p * n + q] = s;
    }
  free(t), free(wm), free(wn);
}

static void test_filters(int H, int W, int J, int L) {
  dpm_scatter *S = dpm_scatter_create(H, W, J, L);
  int M, N, top;
  dpm_scatter_padding(H, J, &M, &top);
  dpm_scatter_padding(W, J, &N, &top);
  lcplx *f = malloc(sizeof *f * (size_t)M * N), *F = malloc(sizeof *F * (size_t)M * N);
  double worst = 0, worst_im = 0;
  for (int j = 0; j <= J; j++)
    for (int l = (j == J ? -1 : 0); l < (j == J ? 0 : L); l++) {
      filter_ld(f, M, N, J, L, j, l);
      for (int r = 0; r < J; r++) {
        dft_sub(F, f, M, N, 1 << r);
        const double *got = l < 0 ? dpm_scatter_phi_hat(S, r) : dpm_scatter_psi_hat(S, j, l, r);
        long double mx = 0;
        for (size_t k = 0; k < (size_t)(M >> r) * (N >> r); k++) mx = fmaxl(mx, cabsl(F[k]));
        for (size_t k = 0; k < (size_t)(M >> r) * (N >> r); k++) {
          worst = fmax(worst, (double)(fabsl(got[k] - creall(F[k])) / mx));
          worst_im = fmax(worst_im, (double)(fabsl(cimagl(F[k])) / mx));
        }
        if (r == 0) {
          const long double dc = creall(F[0]);
          if (l >= 0) CHECK(fabsl(dc) < 1e-15L * mx && fabs(got[0]) < 1e-12 * (double)mx, "psi(%d,%d) has zero mean: %Lg, %g", j, l, dc, got[0]);
          else { /* Poisson summation: sum_x exp(-x^2 / (2 sigma^2)) = sqrt(2 pi) sigma (1 + 2 sum_k exp(-2 pi^2 sigma^2 k^2)) */
            const long double sg = 0.8L * (1 << (J - 1)), pi = 3.14159265358979323846264338327950288L;
            long double t = 1;
            for (int k = 1; k <= 6; k++) t += 2 * expl(-2 * pi * pi * sg * sg * k * k);
            CHECK(fabsl(dc - t * t) < 1e-15L && fabs(got[0] - (double)(t * t)) < 1e-12, "phi's mass: %.18Lg, %.17g, expected %.18Lg", dc,
                  got[0], t * t);
          }
        }
      }
    }
  CHECK(worst < 1e-10, "%dx%d J=%d L=%d: Fourier filters = brute-force DFT of the closed form: worst relative error %g", H, W,
        J, L, worst);
  /* the dropped imaginary part is the periodization's truncation only */
  CHECK(worst_im < 1e-9, "imaginary parts of the filters' DFTs are negligible: %g", worst_im);
  free(f), free(F);
  dpm_scatter_free(S);
}

/* The whole transform of one H x W image in space (see scatter.c's formulas), into ref (K x OH x OW). */
static void scatter_ref(long double *ref, const float *img, int H, int W, int J, int L) {
  int M, N, top, left;
  dpm_scatter_padding(H, J, &M, &top);
  dpm_scatter_padding(W, J, &N, &left);
  const int OH = H >> J, OW = W >> J, K = dpm_scatter_channels(J, L), MN = M * N;
  lcplx *xp = malloc(sizeof *xp * MN), *phi = malloc(sizeof *phi * MN), *psi = malloc(sizeof *psi * MN * J * L);
  /* reflection of the border: a mirror at the edge pixel (which is not repeated) */
  for (int u = 0; u < M; u++)
    for (int v = 0; v < N; v++) {
      int h = u - top, w = v - left;
      while (h < 0 || h >= H) h = h < 0 ? -h : 2 * H - 2 - h;
      while (w < 0 || w >= W) w = w < 0 ? -w : 2 * W - 2 - w;
      xp[u * N + v] = img[h * W + w];
    }
  filter_ld(phi, M, N, J, L, J, -1);
  hermitian(phi, M, N);
  for (int j = 0; j < J; j++)
    for (int l = 0; l < L; l++) {
      filter_ld(psi + (size_t)(j * L + l) * MN, M, N, J, L, j, l);
      hermitian(psi + (size_t)(j * L + l) * MN, M, N);
    }
#define AT(f, a, b) (f)[(size_t)((((a) % M) + M) % M) * N + (size_t)((((b) % N) + N) % N)]
  /* S from a signal U sampled every s pixels (on (M/s) x (N/s)): sum_m U[m] phi(2^J n - s m), n cropped */
  long double *o = ref;
  lcplx *U1 = malloc(sizeof *U1 * MN), *U2 = malloc(sizeof *U2 * MN);
#define LOWPASS(U, s)                                                                                      \
  for (int a = 0; a < OH; a++)                                                                             \
    for (int b = 0; b < OW; b++) {                                                                         \
      lcplx acc = 0;                                                                                       \
      for (int p = 0; p < M / (s); p++)                                                                    \
        for (int q = 0; q < N / (s); q++)                                                                  \
          acc += (U)[p * (N / (s)) + q] * AT(phi, ((a + 1) << J) - (s) * p, ((b + 1) << J) - (s) * q);     \
      *o++ = creall(acc);                                                                                  \
    }
  LOWPASS(xp, 1)
  long double *o2 = ref + (size_t)(1 + J * L) * OH * OW;
  for (int j1 = 0; j1 < J; j1++)
    for (int l1 = 0; l1 < L; l1++) {
      const lcplx *p1 = psi + (size_t)(j1 * L + l1) * MN;
      const int s1 = 1 << j1, m1 = M / s1, n1 = N / s1;
      for (int a = 0; a < m1; a++)
        for (int b = 0; b < n1; b++) {
          lcplx acc = 0;
          for (int u = 0; u < M; u++)
            for (int v = 0; v < N; v++) acc += xp[u * N + v] * AT(p1, s1 * a - u, s1 * b - v);
          U1[a * n1 + b] = cabsl(acc);
        }
      LOWPASS(U1, s1)
      for (int j2 = j1 + 1; j2 < J; j2++)
        for (int l2 = 0; l2 < L; l2++) {
          const lcplx *p2 = psi + (size_t)(j2 * L + l2) * MN;
          const int s2 = 1 << j2, m2 = M / s2, n2 = N / s2;
          for (int a = 0; a < m2; a++)
            for (int b = 0; b < n2; b++) {
              lcplx acc = 0;
              for (int u = 0; u < m1; u++)
                for (int v = 0; v < n1; v++) acc += U1[u * n1 + v] * AT(p2, s2 * a - s1 * u, s2 * b - s1 * v);
              U2[a * n2 + b] = cabsl(acc);
            }
          long double *save = o;
          o = o2;
          LOWPASS(U2, s2)
          o2 = o;
          o = save;
        }
    }
#undef LOWPASS
#undef AT
  CHECK(o == ref + (size_t)(1 + J * L) * OH * OW && o2 == ref + (size_t)K * OH * OW, "reference filled every channel");
  free(xp), free(phi), free(psi), free(U1), free(U2);
}

static void test_output(int H, int W, int J, int L) {
  const int B = 2, K = dpm_scatter_channels(J, L), OH = H >> J, OW = W >> J;
  const size_t plane = (size_t)OH * OW, per = (size_t)K * plane;
  float *x = malloc(sizeof *x * B * H * W), *out = malloc(sizeof *out * B * per);
  for (int k = 0; k < B * H * W; k++) x[k] = (float)(urand() * 2 - 0.5);
  dpm_scatter *S = dpm_scatter_create(H, W, J, L);
  int k_, oh_, ow_;
  dpm_scatter_shape(S, &k_, &oh_, &ow_);
  CHECK(k_ == K && oh_ == OH && ow_ == OW, "shape %d x %d x %d, expected %d x %d x %d", k_, oh_, ow_, K, OH, OW);
  dpm_scatter_forward(S, out, x, B, 1);
  long double *ref = malloc(sizeof *ref * per);
  /* the reference for the second example (its offset in the batch); the first is checked through the
     two-channel call below */
  for (int i = 1; i < B; i++) {
    scatter_ref(ref, x + (size_t)i * H * W, H, W, J, L);
    long double scale[3] = {0, 0, 0};
    const size_t ends[3] = {1 * plane, (size_t)(1 + J * L) * plane, per};
    for (size_t k = 0; k < per; k++) scale[k < ends[0] ? 0 : k < ends[1] ? 1 : 2] += ref[k] * ref[k];
    double worst[3] = {0, 0, 0};
    for (size_t k = 0; k < per; k++) {
      const int ord = k < ends[0] ? 0 : k < ends[1] ? 1 : 2;
      const size_t cnt = ord == 0 ? ends[0] : ends[ord] - ends[ord - 1];
      worst[ord] = fmax(worst[ord], (double)(fabsl(out[i * per + k] - ref[k]) / sqrtl(scale[ord] / cnt)));
    }
    for (int ord = 0; ord < (J > 1 ? 3 : 2); ord++)
      CHECK(worst[ord] < 2e-5, "%dx%d J=%d L=%d example %d order %d: worst error %g of the coefficients' rms %Lg", H, W, J, L, i,
            ord, worst[ord], sqrtl(scale[ord] / (ord == 0 ? ends[0] : ends[ord] - ends[ord - 1])));
  }
  /* two channels: channel c's block is the one-channel transform of that channel */
  float *out2 = malloc(sizeof *out2 * 2 * per);
  dpm_scatter_forward(S, out2, x, 1, 2);
  CHECK(!memcmp(out2, out, per * sizeof *out) && !memcmp(out2 + per, out + per, per * sizeof *out),
        "a 2-channel image's blocks are its channels' transforms");
  free(out2), free(ref), free(x), free(out);
  dpm_scatter_free(S);
}

static void test_constant_and_shift(void) {
  const int H = 28, W = 28, J = 2, L = 8, K = dpm_scatter_channels(J, L), OH = 7, OW = 7, plane = OH * OW;
  dpm_scatter *S = dpm_scatter_create(H, W, J, L);
  float *x = malloc(sizeof *x * H * W), *out = malloc(sizeof *out * K * plane), *out2 = malloc(sizeof *out2 * K * plane);
  const float c = 0.75f;
  for (int k = 0; k < H * W; k++) x[k] = c;
  dpm_scatter_forward(S, out, x, 1, 1);
  int M, top;
  dpm_scatter_padding(H, J, &M, &top);
  lcplx *phi = malloc(sizeof *phi * M * M);
  filter_ld(phi, M, M, J, L, J, -1);
  long double mass = 0;
  for (int k = 0; k < M * M; k++) mass += creall(phi[k]);
  double e0 = 0, e12 = 0;
  for (int k = 0; k < plane; k++) e0 = fmax(e0, fabs(out[k] - (double)(c * mass)));
  for (int k = plane; k < K * plane; k++) e12 = fmax(e12, fabs(out[k]));
  CHECK(e0 < 1e-6, "constant image: S0 = c sum(phi) = %Lg within %g", c * mass, e0);
  CHECK(e12 < 1e-6, "constant image: every order-1 and order-2 coefficient is 0 (largest %g)", e12);
  /* translation by 2^J: a few bumps away from the border (reflection then adds nothing) */
  memset(x, 0, sizeof *x * H * W);
  for (int k = 0; k < 6; k++) x[(8 + (int)(urand() * 8)) * W + 6 + (int)(urand() * 10)] += (float)(urand() + 0.5);
  dpm_scatter_forward(S, out, x, 1, 1);
  float *xs = malloc(sizeof *xs * H * W);
  memset(xs, 0, sizeof *xs * H * W);
  for (int h = 0; h + 4 < H; h++)
    for (int w = 0; w + 4 < W; w++) xs[(h + 4) * W + w + 4] = x[h * W + w];
  dpm_scatter_forward(S, out2, xs, 1, 1);
  double worst = 0, mx = 0;
  for (int k = 0; k < K; k++)
    for (int a = 0; a + 1 < OH; a++)
      for (int b = 0; b + 1 < OW; b++) {
        worst = fmax(worst, fabs(out2[k * plane + (a + 1) * OW + b + 1] - out[k * plane + a * OW + b]));
        mx = fmax(mx, fabs(out[k * plane + a * OW + b]));
      }
  CHECK(mx > 1e-3 && worst < 1e-6 * mx, "a shift by 4 pixels shifts every channel by one coarse pixel: worst %g of %g", worst, mx);
  free(x), free(xs), free(out), free(out2), free(phi);
  dpm_scatter_free(S);
}

static void test_layer(void) {
  char err[DPM_ERRLEN] = "", desc[1024];
  dpm_layer_spec *s = NULL;
  int n = 0;
  CHECK(dpm_model_parse("scatter; groupnorm groups=27; flatten; dense out=10", &s, &n, err) == 0, "parses: %s", err);
  dpm_model *m = s ? dpm_model_create(s, n, 1, 28, 28, 10, 3, err) : NULL;
  CHECK(m != NULL, "scatter + groupnorm + dense builds: %s", err);
  dpm_free(s);
  if (m) {
    dpm_model_describe(m, desc, sizeof desc);
    CHECK(strstr(desc, "layer 1: scatter J=2 L=8 -> 81x7x7, 0 params") != NULL, "describe: %s", desc);
    dpm_layer_info info;
    dpm_model_layer_info(m, 0, &info);
    CHECK(info.C == 81 && info.H == 7 && info.W == 7 && info.params == 0 && info.cost > 0, "layer info");
    float x[3 * 784], *ref = malloc(sizeof *ref * 3 * 81 * 49);
    int32_t y[3] = {1, 4, 9};
    for (int k = 0; k < 3 * 784; k++) x[k] = (float)urand();
    dpm_model_forward(m, x, y, 3, NULL);
    double sq[2 * 3];
    dpm_model_backward(m, sq); /* groupnorm and dense have gradients; scatter asks for no input gradient */
    CHECK(isfinite(sq[0]) && isfinite(sq[5]) && sq[5] > 0, "backward through a model starting with scatter");
    dpm_scatter *S = dpm_scatter_create(28, 28, 2, 8);
    dpm_scatter_forward(S, ref, x, 3, 1);
    dpm_scatter_free(S);
    /* the layer's output is the groupnorm's input: recompute it through a model holding scatter alone */
    dpm_model_free(m);
    CHECK(dpm_model_parse("scatter J=2 L=8", &s, &n, err) == 0, "parses: %s", err);
    m = dpm_model_create(s, n, 1, 28, 28, 0, 3, err);
    dpm_free(s);
    CHECK(m != NULL, "a stage of scatter alone builds: %s", err);
    if (m) {
      dpm_model_forward(m, x, NULL, 3, NULL);
      CHECK(dpm_model_output_size(m) == 81 * 49 && !memcmp(dpm_model_output(m), ref, sizeof *ref * 3 * 81 * 49),
            "the layer's output is the kernel's");
    }
    free(ref);
  }
  dpm_model_free(m);
  /* J=1, L=4 on 3 channels of 12 x 10: 3 * (1 + 4) channels at 6 x 5 */
  CHECK(dpm_model_parse("scatter J=1 L=4; flatten; dense out=2", &s, &n, err) == 0, "parses: %s", err);
  m = s ? dpm_model_create(s, n, 3, 12, 10, 2, 1, err) : NULL;
  dpm_free(s);
  if (m) dpm_model_describe(m, desc, sizeof desc);
  CHECK(m && strstr(desc, "scatter J=1 L=4 -> 15x6x5"), "J=1 L=4 shape: %s", m ? desc : err);
  dpm_model_free(m);
  /* errors */
  CHECK(dpm_model_parse("conv out=2 kernel=3; scatter", &s, &n, err) != 0 && strstr(err, "layer 2 (scatter)") &&
            strstr(err, "first layer"),
        "scatter after another layer is refused: %s", err);
  CHECK(dpm_model_parse("scatter J=0", &s, &n, err) != 0 && strstr(err, "J"), "J=0 refused: %s", err);
  CHECK(dpm_model_parse("scatter K=2", &s, &n, err) != 0 && strstr(err, "J L"), "unknown key lists J and L: %s", err);
  CHECK(dpm_model_parse("scatter; flatten; dense out=2", &s, &n, err) == 0, "parses");
  m = s ? dpm_model_create(s, n, 1, 4, 4, 2, 1, err) : NULL;
  dpm_free(s);
  CHECK(m == NULL && strstr(err, "layer 1 (scatter)") && strstr(err, "too small"), "a 4x4 input is too small for J=2: %s", err);
  dpm_model_free(m);
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  test_filters(28, 28, 2, 8);
  test_filters(12, 20, 1, 4);
  test_output(28, 28, 2, 8);
  test_output(16, 12, 3, 3);
  test_constant_and_shift();
  test_layer();
  return dpm_test_finish();
}
