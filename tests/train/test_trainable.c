/* Fine-tuning through the training step (dpm_step with a trainable set, src/train/step.c): a GPT with LoRA
 * adapters (rank 2) on every block and its base frozen, on every grid D x S of the world size (1x1; 2x1, 1x2):
 * - noise only on the trainable parameters: the noisy sum minus the pre-noise sum (same sample) is exactly 0 at
 *   every frozen parameter (and so is the pre-noise sum), non-zero at every trainable one, its squared norm
 *   sigma^2 C^2 times the noise dimension = the adapters' parameter count (within 6 standard deviations), which
 *   the step reports (total_train), and the same draws as on 1x1 (addressed by the global trainable index);
 * - I1 for the adapters: removing one example moves the pre-noise sum by <= C (1 + 1e-6), and removing an example
 *   whose gradient is clipped moves it by C within 1e-5 (flat and per-layer; per-device on pipelines). */
// ctest: np=1,2
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dpmpi/parallel/grid.h"
#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/train/step.h"
#include "dpmpi/train/trainable.h"
#include "testing.h"

enum { N = 9, V = 17, T = 6, MAX_LAYERS = 8 };
static const char *LAYERS = "embed vocab=17 context=6 width=8; block heads=2 lora=2 lora_alpha=4; "
                            "block heads=2 lora=2 lora_alpha=4 lora_targets=5; lm_head tied=0 vocab=17";
static float X[N * T];
static int32_t Y[N * T];
static int rank, size;

typedef struct { int D, S; } gridspec;

static uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* The whole vector from the stages' slices, on every rank. */
static float *gather(const dpm_grid *grid, const float *mine_v, size_t Ps, size_t P) {
  int S = grid->stages, mine = (int)Ps;
  int *counts = malloc(sizeof(int) * (size_t)S), *displs = malloc(sizeof(int) * (size_t)S);
  DPM_MPI_CHECK(MPI_Allgather(&mine, 1, MPI_INT, counts, 1, MPI_INT, grid->pipe));
  for (int s = 0, o = 0; s < S; o += counts[s++]) displs[s] = o;
  float *out = malloc(sizeof(float) * P);
  DPM_MPI_CHECK(MPI_Allgatherv(mine_v, mine, MPI_FLOAT, out, counts, displs, MPI_FLOAT, grid->pipe));
  free(counts), free(displs);
  return out;
}

/* One step (t = 3, q = 1) of n examples on grid g: the whole model's gradient sum on every rank; frozen (if not
 * NULL, P entries) gets 1 at frozen parameters; *ntrain the step's noise dimension. */
static float *run(MPI_Comm comm, gridspec g, int64_t n, double sigma, double clip, dpm_clipping mode, char *frozen,
                  size_t *P_out, size_t *ntrain) {
  char err[DPM_ERRLEN];
  dpm_grid grid;
  if (dpm_grid_create(comm, g.D, g.S, &grid, err)) dpm_fatal("%s", err);
  dpm_layer_spec *specs;
  int nl, first[MAX_LAYERS + 1];
  if (dpm_model_parse(LAYERS, &specs, &nl, err)) dpm_fatal("%s", err);
  dpm_model *full = dpm_model_create(specs, nl, 1, 1, T, V, 1, err);
  if (!full || dpm_grid_split_layers(full, nl, g.S, NULL, first, err)) dpm_fatal("%s", err);
  dpm_layer_info info[MAX_LAYERS];
  uint32_t masks[MAX_LAYERS];
  for (int i = 0; i < nl; i++) dpm_model_layer_info(full, i, &info[i]);
  if (dpm_trainable_match(NULL, "*.lora_*", info, nl, masks, err)) dpm_fatal("%s", err);
  dpm_model *m = dpm_grid_stage_model(full, specs, first, grid.stage, g.S, 1, 1, T, V, 2, err);
  if (!m) dpm_fatal("%s", err);
  const int f = first[grid.stage], l = first[grid.stage + 1];
  for (int i = f; i < l; i++) CHECK(dpm_model_set_frozen(m, i - f, masks[i]) == 0, "set_frozen");
  dpm_trainable tr;
  dpm_trainable_init(&tr, info, f, l, masks);
  const size_t P = dpm_model_num_params(full);
  if (frozen) {
    size_t off = 0;
    for (int i = 0; i < nl; i++) {
      for (int t = 0; t < info[i].n_tensors; t++)
        memset(frozen + off + info[i].tensors[t].off, (masks[i] >> t) & 1u, info[i].tensors[t].size);
      off += info[i].params;
    }
  }
  dpm_model_free(full);
  dpm_free(specs);
  dpm_key ik = dpm_key_from_seed(1, DPM_STREAM_INIT);
  dpm_model_init_params(m, &ik);
  /* B of the adapters is 0 at initialization: make it random (so A's gradient is not 0) */
  float *p = dpm_model_params(m);
  for (int r = 0; r < tr.n; r++)
    for (size_t k = 0; k < tr.len[r]; k++) p[tr.off[r] + k] += (float)(0.3 * ((double)(mix(tr.off[r] + k) >> 11) * 0x1p-53 - 0.5));
  int64_t b = n * grid.replica / g.D, e = n * (grid.replica + 1) / g.D;
  dpm_dataset d = {.n_total = n, .begin = b, .end = e, .C = 1, .H = 1, .W = T, .num_classes = V, .x = X + b * T,
                   .y = Y + b * T};
  dpm_step st = {.comm = grid.dp, .pipe = grid.pipe, .model = m, .data = &d, .q = 1.0, .dp = 1, .clip = clip,
                 .sigma = sigma, .clipping = mode, .device_split = DPM_SPLIT_PARAMS, .physical_batch = 2,
                 .sample_key = dpm_key_from_seed(2, DPM_STREAM_SAMPLE), .noise_key = dpm_key_from_seed(2, DPM_STREAM_NOISE),
                 .trainable = &tr};
  dpm_step_init(&st);
  dpm_step_stats stats;
  dpm_step_run(&st, 3, &stats);
  float *out = gather(&grid, dpm_model_grads(m), dpm_model_num_params(m), P);
  *ntrain = st.total_train;
  dpm_step_free(&st);
  dpm_trainable_free(&tr);
  dpm_model_free(m);
  dpm_grid_free(&grid);
  *P_out = P;
  return out;
}

static double dist(const float *a, const float *b, size_t P) {
  double s = 0;
  for (size_t k = 0; k < P; k++) s += ((double)a[k] - b[k]) * ((double)a[k] - b[k]);
  return sqrt(s);
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  for (int k = 0; k < N * T; k++) X[k] = (float)(mix(100 + (uint64_t)k) % (V - 1)), Y[k] = (int32_t)(mix(900 + (uint64_t)k) % (V - 1));
  gridspec grids[3] = {{1, 1}, {size, 1}, {1, size}};
  const int ng = size == 1 ? 1 : 3;
  const double sigma = 0.7, C = 0.5;
  float *noise1 = NULL;
  for (int gi = 0; gi < ng; gi++) {
    const gridspec g = grids[gi];
    MPI_Comm comm = MPI_COMM_WORLD;
    if (g.D * g.S < size) MPI_Comm_split(MPI_COMM_WORLD, rank < g.D * g.S ? 0 : MPI_UNDEFINED, rank, &comm);
    if (comm == MPI_COMM_NULL) continue;
    size_t P, nt, nt2;
    char *frozen = NULL;
    float *s0, *s1;
    {
      size_t Pw;
      float *tmp = run(comm, g, N, 0, C, DPM_CLIP_FLAT, NULL, &Pw, &nt);
      frozen = malloc(Pw);
      free(tmp);
    }
    s0 = run(comm, g, N, 0, C, DPM_CLIP_FLAT, frozen, &P, &nt);
    s1 = run(comm, g, N, sigma, C, DPM_CLIP_FLAT, NULL, &P, &nt2);
    size_t ntrain = 0, bad_frozen = 0, zero_noise = 0;
    double ss = 0;
    float *noise = malloc(sizeof(float) * P);
    for (size_t k = 0; k < P; k++) {
      noise[k] = s1[k] - s0[k];
      if (frozen[k]) {
        bad_frozen += s1[k] != 0.0f || s0[k] != 0.0f;
      } else {
        ntrain++;
        zero_noise += noise[k] == 0.0f;
        ss += (double)noise[k] * noise[k];
      }
    }
    CHECK(nt == ntrain && nt2 == ntrain, "%dx%d: noise dimension %zu = the adapters' %zu parameters", g.D, g.S, nt, ntrain);
    /* rank 2, width 8: h.0 all four linears (2 (8 + 24) + 2 (8 + 8) + 2 (8 + 32) + 2 (32 + 8) = 256), h.1 c_attn and
       c_fc (64 + 80) */
    CHECK(ntrain == 256 + 144, "%dx%d: %zu adapter parameters, expected 400", g.D, g.S, ntrain);
    CHECK(bad_frozen == 0, "%dx%d: %zu frozen parameters got a gradient or noise", g.D, g.S, bad_frozen);
    CHECK(zero_noise == 0, "%dx%d: %zu trainable parameters got no noise", g.D, g.S, zero_noise);
    const double want = sigma * sigma * C * C * (double)ntrain, sd = want * sqrt(2.0 / (double)ntrain);
    CHECK(fabs(ss - want) <= 6 * sd, "%dx%d: noise squared norm %g, expected %g +- %g", g.D, g.S, ss, want, sd);
    if (!noise1) noise1 = noise, noise = NULL;
    else {
      double d = 0, sc = 0;
      for (size_t k = 0; k < P; k++) d = fmax(d, fabs((double)noise[k] - noise1[k])), sc = fmax(sc, fabs((double)noise1[k]));
      CHECK(d <= 1e-5 * sc, "%dx%d: the same draws as on 1x1 (max diff %g, scale %g)", g.D, g.S, d, sc);
    }
    /* I1: remove the last example (q = 1), C small enough that every example is clipped */
    const dpm_clipping modes[3] = {DPM_CLIP_FLAT, DPM_CLIP_PER_LAYER, DPM_CLIP_PER_DEVICE};
    for (int mi = 0; mi < (g.S > 1 ? 3 : 2); mi++) {
      const double c = 1e-4;
      float *a = run(comm, g, N, 0, c, modes[mi], NULL, &P, &nt), *b = run(comm, g, N - 1, 0, c, modes[mi], NULL, &P, &nt);
      const double dd = dist(a, b, P);
      CHECK(dd <= c * (1 + 1e-6) && dd >= c * (1 - 1e-5), "%dx%d %s: removing a clipped example moves the sum by %.9g, C = %g",
            g.D, g.S, dpm_clipping_name(modes[mi]), dd, c);
      free(a), free(b);
    }
    free(s0), free(s1), free(noise), free(frozen);
    if (comm != MPI_COMM_WORLD) MPI_Comm_free(&comm);
  }
  free(noise1);
  return dpm_test_finish();
}
