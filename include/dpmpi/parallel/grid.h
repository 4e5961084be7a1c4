/* dpmpi grid: the process grid of a training job and the split of the model's layers over its stages.
 *
 *   world = D replicas x S pipeline stages; rank = replica * S + stage (a replica's stages are adjacent
 *   ranks, so on a cluster they share a node where they can).
 *   dp:   the data-parallel communicator of this rank's stage (D ranks: one per replica; rank = replica)
 *   pipe: the pipeline communicator of this rank's replica (S ranks; rank = stage)
 * A 1 x 1 grid is single-process training and runs the same code.
 */
#ifndef DPMPI_GRID_H
#define DPMPI_GRID_H

#include "dpmpi/parallel/comm.h"

#include "dpmpi/core/common.h"
#include "dpmpi/nn/model.h"

typedef struct {
  MPI_Comm world, dp, pipe;
  int rank, size;          /* in world */
  int replicas, stages;    /* D, S */
  int replica, stage;      /* this rank's coordinates */
} dpm_grid;

/* Collective over world. replicas or stages 0 = derived from the world size (both 0: S = 1). Returns 0,
 * or -1 with err (the same on every rank) when D x S is not the world size. */
int dpm_grid_create(MPI_Comm world, int replicas, int stages, dpm_grid *g, char err[DPM_ERRLEN]);
void dpm_grid_free(dpm_grid *g);

/* Split layers [0, n) of `full` (the whole model, any max_batch) into `stages` consecutive non-empty
 * pieces: stage s gets layers [first[s], first[s+1]). counts (NULL = balance) gives the layers per stage
 * as text, e.g. "4,3"; otherwise the split minimizes the most expensive stage's cost (multiply-adds per
 * example, dpm_model_layer_info). Returns 0, or -1 with err (more stages than layers, bad counts). */
int dpm_grid_split_layers(const dpm_model *full, int n, int stages, const char *counts, int *first,
                          char err[DPM_ERRLEN]);

/* Stage `stage`'s piece of the whole model `full` (built from specs for data of shape C x H x W): layers
 * [first[stage], first[stage+1]) with the input shape of layer first[stage], the loss (n_classes) only
 * on the last stage, layers numbered as in the whole model (so initialization by key matches it), and
 * micro-batches of at most max_batch. Returns NULL with err on failure. */
dpm_model *dpm_grid_stage_model(const dpm_model *full, const dpm_layer_spec *specs, const int *first, int stage,
                                int stages, int C, int H, int W, int n_classes, int max_batch, char err[DPM_ERRLEN]);

#endif
