/* DP-SGD step against the non-private step on the same code path (dpm_step_run + SGD update: sampling,
 * micro-batches, per-example norms and clipping, noise, allreduce), for the MLP 784-512-10 and the tanh
 * CNN of Papernot et al., at the same expected batch. Prints median step times of several repeats,
 * examples/s and the DP/non-private ratio measured in the same run.
 * Usage: [mpirun -np R] bench_step [BATCH=256] [REPEATS=7] [STEPS_PER_REPEAT=10]
 * Data: N = 60000 synthetic 28x28 examples (the cost does not depend on the pixel values). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpmpi/dpsgd.h"
#include "dpmpi/step.h"

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof(double), cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int batch = argc > 1 ? atoi(argv[1]) : 256, repeats = argc > 2 ? atoi(argv[2]) : 7,
      per = argc > 3 ? atoi(argv[3]) : 10;
  const int64_t N = 60000;
  const char *names[] = {"mlp 784-512-10", "tanh cnn"};
  const char *layers[] = {"flatten; dense out=512; relu; dense out=10",
                          "conv out=16 kernel=8 stride=2 pad=3; tanh; maxpool kernel=2 stride=1; conv out=32 kernel=4 "
                          "stride=2; tanh; maxpool kernel=2 stride=1; flatten; dense out=32; tanh; dense out=10"};
  int64_t b = N * rank / size, e = N * (rank + 1) / size;
  dpm_dataset d = {.n_total = N, .begin = b, .end = e, .C = 1, .H = 28, .W = 28, .num_classes = 10};
  d.x = malloc(sizeof(float) * (size_t)(e - b) * 784);
  d.y = malloc(sizeof(int32_t) * (size_t)(e - b));
  dpm_key dk = dpm_key_from_seed(1, 0);
  for (int64_t i = 0; i < e - b; i++) {
    d.y[i] = (int32_t)((b + i) % 10);
    for (int k = 0; k < 784; k++) d.x[i * 784 + k] = (float)(dpm_u01((uint64_t)(i * 784 + k) * 0x9E3779B97F4A7C15ULL) - 0.5);
  }
  (void)dk;
  if (rank == 0)
    printf("bench_step: %d rank(s), expected batch %d (q = %.5f, N = %lld), median of %d repeats x %d steps\n", size,
           batch, (double)batch / (double)N, (long long)N, repeats, per);
  for (int mi = 0; mi < 2; mi++) {
    double med[2];
    for (int dp = 0; dp < 2; dp++) {
      dpm_layer_spec *specs;
      int n;
      char err[DPM_ERRLEN];
      if (dpm_model_parse(layers[mi], &specs, &n, err)) dpm_fatal("%s", err);
      dpm_model *m = dpm_model_create(specs, n, 1, 28, 28, 10, batch, err);
      dpm_free(specs);
      dpm_key ik = dpm_key_from_seed(3, DPM_STREAM_INIT);
      dpm_model_init_params(m, &ik);
      dpm_step st = {.comm = MPI_COMM_WORLD, .model = m, .data = &d, .q = (double)batch / (double)N, .dp = dp,
                     .clip = 1.0, .sigma = 1.0, .clipping = DPM_CLIP_FLAT, .pipe = MPI_COMM_SELF, .physical_batch = batch,
                     .sample_key = dpm_key_from_seed(4, 0), .noise_key = dpm_key_from_seed(4, 1)};
      dpm_step_init(&st);
      dpm_sgd opt;
      dpm_sgd_init(&opt, dpm_model_num_params(m), 0.9, 0);
      double stats[4], times[64], examples = 0;
      uint64_t t = 0;
      for (int w = 0; w < 3; w++, t++) dpm_step_run(&st, t, stats), dpm_sgd_step(&opt, dpm_model_params(m), dpm_model_grads(m), 1e-3, 0.01);
      for (int r = 0; r < repeats && r < 64; r++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = dpm_time();
        for (int k = 0; k < per; k++, t++) {
          dpm_step_run(&st, t, stats);
          dpm_sgd_step(&opt, dpm_model_params(m), dpm_model_grads(m), 1e-3, 0.01);
          examples += stats[1];
        }
        double dt = (dpm_time() - t0) / per;
        MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        times[r] = dt;
      }
      med[dp] = median(times, repeats < 64 ? repeats : 64);
      if (rank == 0)
        printf("  %-15s %-12s %8.3f ms/step  %9.0f examples/s  (%zu parameters)\n", names[mi],
               dp ? "dp-sgd" : "non-private", 1e3 * med[dp], examples / (repeats * per) / med[dp], dpm_model_num_params(m));
      dpm_sgd_free(&opt);
      dpm_step_free(&st);
      dpm_model_free(m);
    }
    if (rank == 0) printf("  %-15s dp / non-private step time: %.3f (goal <= 1.10)\n", names[mi], med[1] / med[0]);
  }
  free(d.x);
  free(d.y);
  MPI_Finalize();
  return 0;
}
