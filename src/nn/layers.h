/* dpmpi layer kernels (internal): forward and backward of every layer kind, per-example squared
 * gradient norms (ghost and explicit) and clipped gradient sums, as pure functions of their arguments.
 *
 * Shape letters: B examples, C input channels (dense: input features), H x W input image, O output
 * channels/features, K kernel side, S stride, T = OH*OW output positions, CK = C*K*K patch length.
 * Layouts: activations are NCHW per example, contiguous over the batch (B x C*H*W). Dense weights are
 * O x C (row-major), conv weights O x CK with CK ordered (c, kh, kw). Conv keeps "patches" P as a
 * (B*T) x CK row-major matrix (row i*T + t is output position t of example i) and the output
 * gradient G as (B*T) x O, so that weight gradients are one GEMM over all B*T rows.
 * Per-example gradient rows ("E") have the parameter group's layout: weights then bias.
 * No MPI, no globals, no allocation: callers pass every scratch buffer. float32, cblas_sgemm.
 * Each kind's kernels live in its own file (dense.c, conv.c, pool.c, activation.c, groupnorm.c), with the
 * shared row helpers in rows.c and the loss in loss.c.
 */
#ifndef DPMPI_LAYERS_H
#define DPMPI_LAYERS_H

#include <stddef.h>
#include <stdint.h>

/* ---- dense: out = inp W^T + b ---------------------------------------------------------------- */
/* out: B x O; inp: B x C; w: O x C; b: O or NULL. */
void dpm_dense_forward(float *out, const float *inp, const float *w, const float *b, int B, int C, int O);
/* dinp = dout W (B x C). */
void dpm_dense_backward_input(float *dinp, const float *dout, const float *w, int B, int C, int O);
/* sq[i] = ||inp_i||^2 ||dout_i||^2 + has_bias ||dout_i||^2: exact squared norm of example i's (W, b)
 * gradient, never materialized, accumulated in double (finite for every finite float32 input; Inf or
 * NaN when a row holds Inf or NaN). */
void dpm_dense_sqnorms(double *sq, const float *inp, const float *dout, int has_bias, int B, int C, int O);
/* dw += dout^T diag(coef) inp, db += dout^T coef (db may be NULL). coef NULL means all ones.
 * Clipped (coef != NULL): an example with coef 0 contributes nothing, whatever its rows hold (Inf,
 * NaN); one whose clipped row c dout_i would underflow (activations near FLT_MAX) is formed with
 * power-of-two rescaling; such micro-batches take one rank-1 update per example instead of the GEMM.
 * scratch: B x O floats, row: C floats (used only when coef != NULL). */
void dpm_dense_accumulate(float *dw, float *db, const float *inp, const float *dout, const float *coef,
                          float *scratch, float *row, int B, int C, int O);

/* ---- conv2d via im2col ---------------------------------------------------------------------- */
/* P ((B*T) x CK) = patches of x (B x C x H x W) for kernel K, stride S, zero padding pad. */
void dpm_im2col(float *P, const float *x, int B, int C, int H, int W, int K, int S, int pad, int OH, int OW);
/* dx (B x C x H x W) = sum of dP's patch rows scattered back (dx is overwritten). */
void dpm_col2im(float *dx, const float *dP, int B, int C, int H, int W, int K, int S, int pad, int OH, int OW);
/* Forward: P = im2col(x) (kept by the caller for backward), Y = P W^T (scratch, (B*T) x O), out
 * (B x O x OH x OW) = Y transposed per example + b. b may be NULL. */
void dpm_conv_forward(float *out, float *P, float *Y, const float *x, const float *w, const float *b, int B,
                      int C, int H, int W, int O, int K, int S, int pad, int OH, int OW);
/* Backward: G ((B*T) x O) = dout (B x O x T) transposed per example (kept by the caller). If dx is not
 * NULL, dP = G W (scratch, (B*T) x CK) and dx = col2im(dP). */
void dpm_conv_backward(float *dx, float *G, float *dP, const float *dout, const float *w, int B, int C, int H,
                       int W, int O, int K, int S, int pad, int OH, int OW);
/* Ghost norms: sq[i] = sum_{s,t} (P_i P_i^T)_st (G_i G_i^T)_st (+ sum_{s,t} (G_i G_i^T)_st for the bias),
 * with P_i, G_i example i's T rows, in double precision (no finite input overflows; Inf/NaN rows give a
 * non-finite sq). ill[i] = 1 when the positions' terms cancel so much (sum_t ||g_t|| ||p_t|| > 8 sqrt(T)
 * times the norm) that the float32 GEMM of the clipped sum could err beyond the clipping margin.
 * scratch: 2*T*T + T*(CK + O) doubles. Cost ~ B T^2 (CK + O) double multiply-adds. */
void dpm_conv_sqnorms_ghost(double *sq, unsigned char *ill, const float *P, const float *G, int has_bias,
                            double *scratch, int B, int T, int CK, int O);
/* Explicit per-example gradients from the output gradient dout (B x O x T, the layer's own layout):
 * E_i = [dout_i P_i (O x CK), has_bias ? the row sums of dout_i (O) : nothing], rows of length
 * O*CK + has_bias*O, the same floats as G_i^T P_i and colsum(G_i) with G_i = dout_i^T (no transposed
 * copy is needed); sq[i] = ||E_i||^2 when sq is not NULL. Cost ~ B T O CK. */
void dpm_conv_grads_explicit(float *E, double *sq, const float *P, const float *dout, int has_bias, int B, int T,
                             int CK, int O);
/* dw (O x CK) += G^T diag(coef per example, repeated over its T rows) P, db += the same of G's column
 * sums (db may be NULL). One GEMM over all B*T rows. coef NULL means all ones. Clipped: as
 * dpm_dense_accumulate (coef 0 contributes nothing; extreme examples rescaled, one GEMM per example);
 * with the ghost norms gsq and flags ill of dpm_conv_sqnorms_ghost (both may be NULL), an extreme or
 * ill-conditioned example's clipped gradient is formed alone and scaled down to c sqrt(gsq_i) if the
 * float32 sum over positions came out larger. scratch: B*T*O floats, row: T*CK + O*CK + O floats. */
void dpm_conv_accumulate(float *dw, float *db, const float *P, const float *G, const float *coef,
                         const double *gsq, const unsigned char *ill, float *scratch, float *row, int B, int T,
                         int CK, int O);

/* Weight standardization (Qiao et al. 2019; conv ws=1): for each of the O rows w_o of w (O x n),
 * what_o = (w_o - mean(w_o)) rstd_o with rstd_o = 1 / sqrt(var(w_o) + eps) (biased variance, in double). */
void dpm_ws_forward(float *what, float *rstd, const float *w, int O, int n, float eps);
/* g (O x n, in place) from the gradient w.r.t. what to the gradient w.r.t. w (the standardization's Jacobian
 * transposed): g_o <- rstd_o (g_o - mean(g_o) - what_o (g_o . what_o) / n). Linear in g. */
void dpm_ws_backward(float *g, const float *what, const float *rstd, int O, int n);

/* ---- shared row helpers (src/nn/rows.c) ------------------------------------------------------- */
/* Sum of squares of v in double (finite for any finite float32 input; Inf/NaN entries make it so). */
double dpm_nn_sumsq(const float *v, size_t n);
/* max |v_k| (NaN ignored). */
float dpm_nn_maxabs(const float *v, size_t n);
/* 1 if a clipped row (c < 1) is non-zero but near float32 underflow and must be rescaled. */
int dpm_nn_needs_rescale(const float *s, size_t n);
/* s = c g (s and g do not overlap); returns 1 if the example needs the careful (one example at a time)
 * path: c == 0, or c != 1 and dpm_nn_needs_rescale(s, n). */
int dpm_nn_scale_row(float *restrict s, const float *restrict g, float c, size_t n);
/* s = (c 2^e) g and row = 2^-e a with 2^e ~ max |a|; returns row. */
const float *dpm_nn_rescale_rows(float *s, const float *g, float c, size_t ns, const float *a, size_t na, float *row);
/* One example's clipped gradient c sum_t g_t^T a_t formed in double (float products are exact in double, one
 * rounding per term and one at the end): E is O x K (omajor) or K x O, G is T x O, A is T x K; acc holds K
 * doubles. For the ill-conditioned examples whose positions cancel, where the float32 GEMM's rounding can
 * exceed the clipping margin. Cost T O K. */
void dpm_nn_outer_sum_exact(float *E, int omajor, const float *G, const float *A, float c, int T, int O, int K,
                            double *acc);
/* db (O) += the column sums of G (rows x O). */
void dpm_nn_colsum_add(float *db, const float *G, size_t rows, int O);

/* ---- per-example gradient rows ---------------------------------------------------------------- */
/* sq[i] = ||E_i||^2 for rows E_i of length N (double accumulation). */
void dpm_rows_sqnorm(double *sq, const float *E, int B, size_t N);
/* grad (N) += sum_i coef_i E_i (coef NULL: all ones); rows with coef 0 are skipped, whatever they hold. */
void dpm_rows_accumulate(float *grad, const float *E, const float *coef, int B, size_t N);

/* ---- pooling (no padding) --------------------------------------------------------------------- */
/* out: B x C x OH x OW; argmax (same size) keeps the index within the example's C*H*W input. */
void dpm_maxpool_forward(float *out, int32_t *argmax, const float *x, int B, int C, int H, int W, int K, int S,
                         int OH, int OW);
/* dx (B x C x H x W, overwritten) = dout routed to each window's argmax. */
void dpm_maxpool_backward(float *dx, const float *dout, const int32_t *argmax, int B, int C, int H, int W,
                          int OH, int OW);
void dpm_avgpool_forward(float *out, const float *x, int B, int C, int H, int W, int K, int S, int OH, int OW);
void dpm_avgpool_backward(float *dx, const float *dout, int B, int C, int H, int W, int K, int S, int OH,
                          int OW);

/* ---- elementwise (n = B * features) ----------------------------------------------------------- */
void dpm_relu_forward(float *out, const float *x, size_t n);
/* dx = dout where out > 0, else 0 (out is the forward output). */
void dpm_relu_backward(float *dx, const float *dout, const float *out, size_t n);
void dpm_tanh_forward(float *out, const float *x, size_t n);
/* dx = dout (1 - out^2). */
void dpm_tanh_backward(float *dx, const float *dout, const float *out, size_t n);

/* ---- group normalization ---------------------------------------------------------------------- */
/* x: B x C x HW, G groups of C/G channels; out = gamma_c xhat + beta_c with xhat = (x - mean) rstd over
 * each (example, group), rstd = 1/sqrt(var + eps) (biased variance). Keeps xhat (B x C x HW) and
 * rstd (B x G). */
void dpm_groupnorm_forward(float *out, float *xhat, float *rstd, const float *x, const float *gamma,
                           const float *beta, int B, int C, int HW, int G, float eps);
/* E (B x 2C): example i's [dgamma (C), dbeta (C)]; dx (may be NULL) the input gradient. */
void dpm_groupnorm_backward(float *dx, float *E, const float *dout, const float *xhat, const float *rstd,
                            const float *gamma, int B, int C, int HW, int G);

/* ---- wavelet scattering transform (src/nn/scatter.c; the formulas are at the top of that file) ---- */
/* Unlike the other kernels it owns state: its Fourier filters and FFTW plans, built once by create (which
 * allocates; forward does not). Not safe to use one object from two threads at once. */
typedef struct dpm_scatter dpm_scatter;
/* Output channels per input channel: 1 + J L + L^2 J (J-1) / 2. */
int dpm_scatter_channels(int J, int L);
/* The padded side Mp for an input side H and its first padded row top (kymatio's convention). */
void dpm_scatter_padding(int H, int J, int *Mp, int *top);
/* 0 if an H x W input fits J, L; else -1 with err (no layer prefix). */
int dpm_scatter_check(int H, int W, int J, int L, char *err);
dpm_scatter *dpm_scatter_create(int H, int W, int J, int L);
void dpm_scatter_free(dpm_scatter *S);
/* The real Fourier filters at resolution r (grid (Mp >> r) x (Np >> r), row-major), r < J. */
const double *dpm_scatter_psi_hat(const dpm_scatter *S, int j, int l, int r);
const double *dpm_scatter_phi_hat(const dpm_scatter *S, int r);
/* K channels per input channel, OH x OW = floor(H / 2^J) x floor(W / 2^J). */
void dpm_scatter_shape(const dpm_scatter *S, int *K, int *OH, int *OW);
/* out (B x C*K x OH x OW) = the scattering coefficients of x (B x C x H x W). */
void dpm_scatter_forward(dpm_scatter *S, float *out, const float *x, int B, int C);

/* ---- softmax cross-entropy -------------------------------------------------------------------- */
/* probs (B x O) = softmax(logits); returns sum_i -log probs[i, y_i] computed stably (log-sum-exp).
 * n_correct (may be NULL) receives the number of i with argmax logits_i == y_i. */
double dpm_softmax_xent_forward(float *probs, const float *logits, const int32_t *y, int B, int O,
                                int *n_correct);
/* dlogits = probs - onehot(y): each example's gradient of its own loss (not divided by B). */
void dpm_softmax_xent_backward(float *dlogits, const float *probs, const int32_t *y, int B, int O);

#endif
