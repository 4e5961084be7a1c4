/* dpmpi sequence kernels (internal): the layers of a GPT-2 transformer over token sequences, with exact
 * per-example squared gradient norms (double) and coefficient-weighted ("clipped") gradient sums.
 *
 * Shape letters: B examples, T positions, C channels (a linear's input width), OC a linear's output width,
 * V vocabulary, H attention heads. Activations are [B, T, C] row-major: row b*T + t is position t of
 * example b, so a sequence linear is one GEMM over all B*T rows. Weights use the Hugging Face GPT-2
 * layouts: a sequence linear (HF Conv1D) y = x W + b has W [C, OC]; the token embedding wte [V, C] is also
 * the LM head's weight (logits = h wte^T, tied). Example b's gradient is the gradient of its own loss
 * (never divided by B). float32 data, BLAS GEMMs, norms accumulated in double (no finite float32 input
 * overflows them; a row holding Inf or NaN gives a non-finite norm, which clipping turns into coefficient
 * 0). No MPI, no globals, no allocation: callers pass every scratch buffer.
 * Files: seq_linear.c, seq_layernorm.c, seq_gelu.c, seq_attention.c, seq_embed.c (token and position
 * embedding, LM head, the tied weight's cross term), seq_xent.c; the model is gpt.c.
 */
#ifndef DPMPI_NN_SEQ_H
#define DPMPI_NN_SEQ_H

#include <stddef.h>
#include <stdint.h>

/* ---- sequence linear (HF Conv1D): out [B*T, OC] = inp [B*T, C] W [C, OC] + b ---------------------- */
/* b may be NULL. */
void dpm_seq_linear_forward(float *out, const float *inp, const float *w, const float *b, int B, int T, int C,
                            int OC);
/* dinp [B*T, C] = dout W^T (overwritten). */
void dpm_seq_linear_backward(float *dinp, const float *dout, const float *w, int B, int T, int C, int OC);
/* Per-example squared norms of dW_b = A_b^T G_b (A_b = inp rows of example b, G_b = dout rows) and of
 * db_b = sum_t g_t, by the Gram ("ghost") form: sqw[b] = sum_{t,s} (a_t.a_s)(g_t.g_s), never forming dW_b;
 * sqb[b] = ||sum_t g_t||^2 (sqb may be NULL: no bias). In double (Gram matrices by dsyrk on double copies).
 * ill[b] (ill may be NULL) = 1 when the positions' terms cancel so much (S = sum_t ||a_t|| ||g_t||, S^2 >
 * 64 T sqw[b]) that the float32 GEMM of the clipped sum could err beyond the clipping margin.
 * scratch: 2 T^2 + T (C + OC) doubles. Cost ~ B T^2 (C + OC) multiply-adds (dsyrk: half of each Gram). */
void dpm_seq_linear_sqnorms_ghost(double *sqw, double *sqb, unsigned char *ill, const float *inp, const float *dout,
                                  double *scratch, int B, int T, int C, int OC);
/* The same norms explicitly: dW_b = A_b^T G_b formed in float32 (one GEMM per example, scratch C*OC floats),
 * its sum of squares in double; ill as above. Cost ~ B T C OC. */
void dpm_seq_linear_sqnorms_explicit(double *sqw, double *sqb, unsigned char *ill, const float *inp,
                                     const float *dout, float *scratch, int B, int T, int C, int OC);
/* Explicit per-example gradients kept for the clipped sum: E [B, C*OC] holds dW_b = A_b^T G_b ([C, OC]; trans:
 * its transpose [OC, C], the LM head's wte layout), sqw[b] = ||E_b||^2 of those same float entries, sqb as
 * above (may be NULL). The clipped sum is then dpm_rows_accumulate(dw, E, cw, B, C*OC): no second GEMM, and
 * no cap needed (the norm is that of the floats added). */
void dpm_seq_linear_grads_explicit(float *E, double *sqw, double *sqb, const float *inp, const float *dout,
                                   int trans, int B, int T, int C, int OC);
/* 1 if the ghost form is the cheaper per example. keep = 0 (explicit gradients formed only for their norm, the
 * clipped sum by its own GEMM): ghost iff T (C + OC) < C OC (ghost Grams T^2 (C + OC) / 2 double
 * multiply-adds, counted twice for double precision, against the explicit GEMM's T C OC). keep = 1 (kept
 * gradients replace the clipped sum's GEMM, so explicit costs only ~2 C OC beyond the non-private step): ghost
 * iff T^2 (C + OC) < 2 C OC. */
int dpm_seq_linear_ghost_cheaper(int T, int C, int OC, int keep);
/* dw [C, OC] += sum_b cw_b A_b^T G_b and db [OC] += sum_b cb_b sum_t g_bt: one GEMM over all B*T rows with
 * the coefficients folded into G. cw, cb NULL mean all ones; dw NULL: the bias only; db NULL: no bias.
 * Clipped (coefficients given): an example with coefficient 0 contributes nothing whatever its rows hold
 * (Inf, NaN); one whose clipped rows would underflow is formed with power-of-two rescaling (rows.c); with
 * this micro-batch's weight norms gsq and flags ill (both may be NULL), a rescaled or ill-conditioned
 * example's weight gradient is formed alone and scaled down to cw_b sqrt(gsq_b) if the float32 sum over its
 * positions came out larger; such micro-batches take one GEMM per example. Each example's bias gradient is
 * summed in double and rounded once. scratch: B*T*OC floats; row: T*C + C*OC floats. */
void dpm_seq_linear_accumulate(float *dw, float *db, const float *inp, const float *dout, const float *cw,
                               const float *cb, const double *gsq, const unsigned char *ill, float *scratch,
                               float *row, int B, int T, int C, int OC);
/* The same for a weight stored transposed, dw [OC, C] += sum_b cw_b G_b^T A_b (the LM head's wte [V, C]:
 * inp = the final LayerNorm's output [B*T, C], dout = dlogits [B*T, V], OC = V). No bias. */
void dpm_seq_linear_accumulate_t(float *dw, const float *inp, const float *dout, const float *cw, const double *gsq,
                                 const unsigned char *ill, float *scratch, float *row, int B, int T, int C, int OC);

/* ---- LayerNorm over C (eps 1e-5, biased variance): out = w * (x - mean) * rstd + b ---------------------- */
/* mean, rstd: [B*T] kept for backward. */
void dpm_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b,
                           int B, int T, int C);
/* dinp [B*T, C] += the input gradient (accumulates: the residual stream); Ew, Eb [B, C] (either may be
 * NULL) receive example b's gradients of w and b (sums over its T positions: C-sized, kept explicitly). */
void dpm_layernorm_backward(float *dinp, float *Ew, float *Eb, const float *dout, const float *inp,
                            const float *mean, const float *rstd, const float *w, int B, int T, int C);

/* ---- GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) ------------------------ */
void dpm_gelu_forward(float *out, const float *inp, size_t n);
/* dinp = gelu'(inp) * dout (overwritten; inp is the forward's input). */
void dpm_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);

/* ---- causal multi-head self-attention core (no parameters) ------------------------------------------- */
/* qkv [B, T, 3C] (q | k | v along the last axis, head h uses channels h*C/H .. (h+1)*C/H of each);
 * out [B, T, C] = per head softmax(q k^T / sqrt(C/H), causal: position t sees s <= t) v; att [B, H, T, T]
 * keeps the probabilities (0 above the diagonal). */
void dpm_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int H);
/* dqkv [B, T, 3C] (overwritten) from dout [B, T, C]; scratch: T*T floats. */
void dpm_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *att, float *scratch,
                            int B, int T, int C, int H);

/* ---- token and position embedding, LM head ------------------------------------------------------------ */
/* out [B, T, C] = wte[tok[b,t]] + wpe[t]. tok values in [0, V) (the caller checks). */
void dpm_embed_forward(float *out, const int32_t *tok, const float *wte, const float *wpe, int B, int T, int C);
/* Per-example squared norms of the embedding's use of wte and of wpe from dout = d loss_b / d out:
 * sqe[b] = sum_{t,s: tok_t == tok_s} g_t.g_s (the token-equality trick, computed as the sum over distinct
 * tokens of ||sum of that token's g_t||^2: T^2 integer compares + T C adds, never V x C), sqp[b] =
 * sum_t ||g_t||^2 (each position used once). Either may be NULL. scratch: C doubles. */
void dpm_embed_sqnorms(double *sqe, double *sqp, const int32_t *tok, const float *dout, double *scratch, int B,
                       int T, int C);
/* dwte[tok[b,t]] += ce_b g_bt, dwpe[t] += cp_b g_bt (coefficients NULL: ones; dwte or dwpe NULL: skipped).
 * Examples with coefficient 0 are skipped. */
void dpm_embed_accumulate(float *dwte, float *dwpe, const int32_t *tok, const float *dout, const float *ce,
                          const float *cp, int B, int T, int C);
/* logits [B*T, V] = h [B*T, C] wte^T. */
void dpm_lm_head_forward(float *logits, const float *h, const float *wte, int B, int T, int C, int V);
/* dh [B*T, C] = dlogits wte (overwritten). */
void dpm_lm_head_backward(float *dh, const float *dlogits, const float *wte, int B, int T, int C, int V);
/* The tied weight's cross term cross[b] = <E_b, H_b>, E_b = the embedding use's gradient (sum_t e_{tok_t}
 * g_t^T, g = demb), H_b = the head's (dlogits_b^T h_b): = sum_t sum_s dlogits[s, tok_t] (g_t . h_s), from
 * the T x T matrix g_b h_b^T in double. Cost ~ T^2 C per example (never V x C); scratch: T*T + 2 T C
 * doubles. ||E_b + H_b||^2 = ||E_b||^2 + ||H_b||^2 + 2 cross[b]. */
void dpm_tied_cross(double *cross, const int32_t *tok, const float *demb, const float *h, const float *dlogits,
                    double *scratch, int B, int T, int C, int V);

/* The same cross term from the head's kept explicit gradients Hk [B, V*C] (dpm_seq_linear_grads_explicit with
 * trans): cross[b] = sum_t g_t . Hk_b[tok_t], cost T C. */
void dpm_tied_cross_kept(double *cross, const int32_t *tok, const float *demb, const float *Hk, int B, int T, int C,
                         int V);

/* wte's ill-conditioning: ill[b] = 1 when the terms of example b's wte gradient cancel so much that its float32
 * clipped sum (scatter-adds of c g_t, plus the head's c H_b) could err beyond the clipping margin: S^2 > 64 T
 * sq[b] with S = sum_t ||g_t|| + sum_t ||dl_t|| ||h_t|| (h, dl NULL: untied, the embedding's terms only),
 * sq[b] the squared norm of the whole wte gradient. */
void dpm_wte_ill(unsigned char *ill, const double *sq, const float *demb, const float *h, const float *dl, int B,
                 int T, int C, int V);
/* One example's clipped wte gradient formed alone: buf [V, C] = c (E_b + H_b) (H_b from the kept Hk_b [V, C],
 * or from h_b and dl_b by one GEMM; h NULL: untied, E_b only), scaled down to c sqrt(sq) if its float norm
 * came out larger (0 if not finite), then dwte += buf. tok, demb, h, dl, Hk point at example b's rows. */
void dpm_wte_accumulate_alone(float *dwte, float *buf, const int32_t *tok, const float *demb, const float *h,
                              const float *dl, const float *Hk, float c, double sq, int T, int C, int V);

/* ---- masked sequence cross-entropy -------------------------------------------------------------------- */
/* probs [B*T, V] = softmax(logits); loss[b] = mean over example b's targets with tgt != pad_id of
 * -log p[tgt] (pad_id < 0: nothing masked; 0 for an example with no target); returns sum_b loss[b]. */
double dpm_seq_xent_forward(float *probs, double *loss, const float *logits, const int32_t *tgt, int pad_id, int B,
                            int T, int V);
/* dlogits = (probs - onehot(tgt)) / n_b at example b's n_b unmasked positions, 0 at masked ones: the
 * gradient of loss[b]. dlogits may be probs (in place: the fused softmax backward). */
void dpm_seq_xent_backward(float *dlogits, const float *probs, const int32_t *tgt, int pad_id, int B, int T, int V);

#endif
