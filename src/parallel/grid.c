/* Process grid and pipeline split: see dpmpi/parallel/grid.h. */
#include "dpmpi/parallel/grid.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int dpm_grid_create(MPI_Comm world, int replicas, int stages, dpm_grid *g, char err[DPM_ERRLEN]) {
  memset(g, 0, sizeof *g);
  g->world = world;
  g->dp = g->pipe = MPI_COMM_NULL;
  MPI_Comm_rank(world, &g->rank);
  MPI_Comm_size(world, &g->size);
  const int W = g->size;
  if (replicas < 0 || stages < 0) return dpm_err(err, "grid: replicas and stages must be positive");
  if (!replicas && !stages) stages = 1;
  if (!replicas) {
    if (W % stages) return dpm_err(err, "grid: %d stages do not divide the %d ranks of the job", stages, W);
    replicas = W / stages;
  } else if (!stages) {
    if (W % replicas) return dpm_err(err, "grid: %d replicas do not divide the %d ranks of the job", replicas, W);
    stages = W / replicas;
  }
  if ((long long)replicas * stages != W)
    return dpm_err(err, "grid: %d replicas x %d stages = %lld ranks, but the job has %d (launch with -np %lld or "
                   "change grid.replicas / grid.stages)", replicas, stages, (long long)replicas * stages, W,
                   (long long)replicas * stages);
  g->replicas = replicas, g->stages = stages;
  g->replica = g->rank / stages, g->stage = g->rank % stages;
  DPM_MPI_CHECK(MPI_Comm_split(world, g->stage, g->replica, &g->dp));
  DPM_MPI_CHECK(MPI_Comm_split(world, g->replica, g->stage, &g->pipe));
  return 0;
}

void dpm_grid_free(dpm_grid *g) {
  if (g->dp != MPI_COMM_NULL) MPI_Comm_free(&g->dp);
  if (g->pipe != MPI_COMM_NULL) MPI_Comm_free(&g->pipe);
}

/* Balanced split: minimize the largest stage cost over contiguous non-empty pieces (exact dynamic
 * programme, O(S n^2); ties go to the earliest split). */
static void balance(const double *cost, int n, int S, int *first) {
  double *pre = dpm_malloc(sizeof(double) * (size_t)(n + 1));
  pre[0] = 0;
  for (int i = 0; i < n; i++) pre[i + 1] = pre[i] + cost[i];
  /* best[s][i]: the smallest max-cost of splitting layers [0, i) into s pieces; cut[s][i] its last cut */
  double *best = dpm_malloc(sizeof(double) * (size_t)(S + 1) * (size_t)(n + 1));
  int *cut = dpm_malloc(sizeof(int) * (size_t)(S + 1) * (size_t)(n + 1));
#define BEST(s, i) best[(size_t)(s) * (size_t)(n + 1) + (size_t)(i)]
#define CUT(s, i) cut[(size_t)(s) * (size_t)(n + 1) + (size_t)(i)]
  for (int i = 0; i <= n; i++) BEST(1, i) = pre[i], CUT(1, i) = 0;
  for (int s = 2; s <= S; s++)
    for (int i = s; i <= n; i++) {
      BEST(s, i) = -1;
      for (int j = s - 1; j < i; j++) {
        double a = BEST(s - 1, j), b = pre[i] - pre[j], v = a > b ? a : b;
        if (BEST(s, i) < 0 || v < BEST(s, i)) BEST(s, i) = v, CUT(s, i) = j;
      }
    }
  first[S] = n;
  for (int s = S, i = n; s >= 1; s--) {
    first[s - 1] = s == 1 ? 0 : CUT(s, i);
    i = first[s - 1];
  }
#undef BEST
#undef CUT
  dpm_free(best);
  dpm_free(cut);
  dpm_free(pre);
}

int dpm_grid_split_layers(const dpm_model *full, int n, int stages, const char *counts, int *first,
                          char err[DPM_ERRLEN]) {
  if (stages < 1) return dpm_err(err, "grid: %d stages", stages);
  if (stages > n)
    return dpm_err(err, "grid: %d pipeline stages but the model has only %d layers (each stage needs at least one)",
                   stages, n);
  if (counts && *counts) {
    const char *p = counts;
    int total = 0;
    first[0] = 0;
    for (int s = 0; s < stages; s++) {
      char *end;
      errno = 0;
      long v = strtol(p, &end, 10);
      if (end == p || errno || v < 1 || v > n)
        return dpm_err(err, "grid.stage_layers = %s: expected %d positive layer counts separated by commas", counts,
                       stages);
      total += (int)v;
      first[s + 1] = total > n ? n : total;
      p = end;
      while (*p == ' ') p++;
      if (s + 1 < stages) {
        if (*p != ',')
          return dpm_err(err, "grid.stage_layers = %s: expected %d layer counts (one per stage), got %d", counts,
                         stages, s + 1);
        p++;
      }
    }
    if (*p) return dpm_err(err, "grid.stage_layers = %s: more than %d layer counts (one per stage)", counts, stages);
    if (total != n)
      return dpm_err(err, "grid.stage_layers = %s: the counts sum to %d but the model has %d layers", counts, total, n);
    return 0;
  }
  double *cost = dpm_malloc(sizeof(double) * (size_t)n);
  for (int i = 0; i < n; i++) {
    dpm_layer_info info;
    dpm_model_layer_info(full, i, &info);
    cost[i] = info.cost;
  }
  balance(cost, n, stages, first);
  dpm_free(cost);
  return 0;
}

dpm_model *dpm_grid_stage_model(const dpm_model *full, const dpm_layer_spec *specs, const int *first, int stage,
                                int stages, int C, int H, int W, int n_classes, int max_batch, char err[DPM_ERRLEN]) {
  DPM_ASSERT(stage >= 0 && stage < stages);
  if (first[stage] > 0) {
    dpm_layer_info info;
    dpm_model_layer_info(full, first[stage] - 1, &info);
    C = info.C, H = info.H, W = info.W;
  }
  dpm_model *m = dpm_model_create(specs + first[stage], first[stage + 1] - first[stage], C, H, W,
                                  stage == stages - 1 ? n_classes : 0, max_batch, err);
  if (m) dpm_model_set_first_layer(m, first[stage]);
  return m;
}
