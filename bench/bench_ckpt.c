/* Checkpoint write and read bandwidth against model size: MLPs 784-W-W-10 for W = 256 .. 4096 (0.3 to
 * 20 M parameters: parameters + optimizer state = 8 bytes per parameter), on the ranks of the job as
 * replicas (replica 0 writes; every rank reads). Each write is the full dpm_ckpt_write (parallel HDF5
 * with Fletcher32, attributes and ledger, fsync, rename); each read dpm_ckpt_read. Medians of REPEATS.
 * Usage: [mpirun -np R] bench_ckpt [DIR=/tmp] [REPEATS=5] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dpmpi/io/ckpt.h"

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const char *dir = argc > 1 ? argv[1] : "/tmp";
  int repeats = argc > 2 ? atoi(argv[2]) : 5;
  if (repeats < 1 || repeats > 64) repeats = 5;
  if (rank == 0) printf("bench_ckpt: %d rank(s), directory %s, median of %d\n", size, dir, repeats);
  const int widths[] = {256, 1024, 2048, 4096};
  for (int wi = 0; wi < 4; wi++) {
    char layers[128], err[DPM_ERRLEN], path[4096];
    snprintf(layers, sizeof layers, "dense out=%d; relu; dense out=%d; relu; dense out=10", widths[wi], widths[wi]);
    dpm_layer_spec *specs;
    int n;
    if (dpm_model_parse(layers, &specs, &n, err)) dpm_fatal("%s", err);
    dpm_model *m = dpm_model_create(specs, n, 784, 1, 1, 10, 1, err);
    if (!m) dpm_fatal("%s", err);
    dpm_key key = dpm_key_from_seed(1, DPM_STREAM_INIT);
    dpm_model_init_params(m, &key);
    size_t P = dpm_model_num_params(m);
    dpm_layer_info *info = dpm_malloc(sizeof *info * (size_t)n);
    for (int i = 0; i < n; i++) dpm_model_layer_info(m, i, &info[i]);
    float *vel = dpm_calloc(P, sizeof(float));
    dpm_ckpt_model cm = {.n_layers = n, .info = info, .first = 0, .last = n, .writer = rank == 0,
                         .params = dpm_model_params(m), .n_state = 1, .state = {vel}, .state_group = {"/optimizer"}};
    dpm_ledger *L = dpm_ledger_create();
    dpm_ledger_add_sgm(L, 0.01, 1.0, 1000);
    dpm_ckpt_meta meta = {.step = 1000, .steps_total = 2000, .n_train = 60000, .q = 0.01, .sigma = 1, .clip = 1,
                          .delta = 1e-5, .privacy = 1, .replicas = size, .stages = 1, .job = "bench", .layers = layers};
    snprintf(path, sizeof path, "%s/bench-ckpt-%d.h5", dir, wi);
    double tw[64], tr[64];
    for (int r = 0; r < repeats; r++) {
      MPI_Barrier(MPI_COMM_WORLD);
      double t0 = dpm_time();
      if (dpm_ckpt_write(MPI_COMM_WORLD, path, &cm, L, &meta, err)) dpm_fatal("%s", err);
      tw[r] = dpm_time() - t0;
      dpm_ledger *R = NULL;
      MPI_Barrier(MPI_COMM_WORLD);
      t0 = dpm_time();
      if (dpm_ckpt_read(MPI_COMM_WORLD, path, &cm, &R, err)) dpm_fatal("%s", err);
      tr[r] = dpm_time() - t0;
      dpm_ledger_free(R);
    }
    qsort(tw, (size_t)repeats, sizeof(double), cmp_double);
    qsort(tr, (size_t)repeats, sizeof(double), cmp_double);
    double mb = 8.0 * (double)P / 1e6, w = tw[repeats / 2], rd = tr[repeats / 2];
    if (rank == 0)
      printf("  mlp 784-%d-%d-10  %9zu params  %7.1f MB  write %7.3f s (%6.0f MB/s)  read %7.3f s (%6.0f MB/s per rank)\n",
             widths[wi], widths[wi], P, mb, w, mb / w, rd, mb / rd);
    if (rank == 0) unlink(path);
    dpm_ledger_free(L);
    dpm_free(vel);
    dpm_free(info);
    dpm_free(specs);
    dpm_model_free(m);
  }
  MPI_Finalize();
  return 0;
}
