/* The performance model of docs/perfmodel.md, fed with rates measured in this run:
 *  - compute: the DP-SGD step of each bench model on one rank at two batch sizes, split into a fixed
 *    part (noise for every parameter, update, per-step overhead) and a per-example part; the noise
 *    alone (dpm_add_noise) and the SGD update are timed separately, because on P ranks each rank draws
 *    only 1/P of the noise;
 *  - communication: MPI_Allreduce of float sums between the ranks of this job, 8 B to 64 MiB, fitted as
 *    t = alpha + bytes / beta on the message sizes the step uses (4 MiB buckets and below).
 * It then predicts the weak and strong scaling efficiency at 2 .. 1024 ranks (the sample rebalanced over
 * the replicas each step, as dpm_step does; also without, for comparison) with Rabenseifner's
 * allreduce (2 log2 P latencies + 2 (P-1)/P of the bytes over the slowest link), the measured on-node
 * link, and an inter-node network given on the command line, and prints the table and a CSV.
 * Usage: mpirun -np 2 bench_perfmodel [CSV=bench/results/perfmodel.csv] [NET_GBPS=100] [NET_LAT_US=2]
 *        [RANKS_PER_NODE=64] [BATCH_PER_RANK=256] [STRONG_BATCH=16384]
 * (100 Gb/s and 2 us: an HDR100 InfiniBand link; one rank per core.) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpmpi/optim/sgd.h"
#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/train/step.h"

#include "benchutil.h"

typedef struct {
  const char *name, *layers;
  size_t params;
  double fixed, per_example; /* seconds per step and per example (DP step, 1 rank) */
  double noise, update;      /* seconds per step for all parameters */
} model_rates;

/* Median time of one DP step (dpm_step_run + SGD update) on this rank alone at expected batch b. */
static double step_time(const char *layers, dpm_dataset *d, int b, size_t *params) {
  dpm_layer_spec *specs;
  int n;
  char err[DPM_ERRLEN];
  if (dpm_model_parse(layers, &specs, &n, err)) dpm_fatal("%s", err);
  const int phys = 256;
  dpm_model *m = dpm_model_create(specs, n, 1, 28, 28, 10, phys, err);
  if (!m) dpm_fatal("%s", err);
  dpm_free(specs);
  dpm_key ik = dpm_key_from_seed(3, DPM_STREAM_INIT);
  dpm_model_init_params(m, &ik);
  dpm_step st = {.comm = MPI_COMM_SELF, .model = m, .data = d, .q = (double)b / (double)d->n_total, .dp = 1,
                 .clip = 1.0, .sigma = 1.0, .clipping = DPM_CLIP_FLAT, .pipe = MPI_COMM_SELF, .physical_batch = phys,
                 .sample_key = dpm_key_from_seed(4, 0), .noise_key = dpm_key_from_seed(4, 1)};
  dpm_step_init(&st);
  dpm_sgd opt;
  *params = dpm_model_num_params(m);
  dpm_sgd_init(&opt, *params, 0.9, 0);
  dpm_step_stats stats;
  double times[7];
  uint64_t t = 0;
  for (int w = 0; w < 2; w++, t++) dpm_step_run(&st, t, &stats), dpm_sgd_step(&opt, dpm_model_params(m), dpm_model_grads(m), 1e-3, 0.01);
  for (int r = 0; r < 7; r++) {
    const int per = 4;
    double t0 = dpm_time();
    for (int k = 0; k < per; k++, t++) {
      dpm_step_run(&st, t, &stats);
      dpm_sgd_step(&opt, dpm_model_params(m), dpm_model_grads(m), 1e-3, 0.01);
    }
    times[r] = (dpm_time() - t0) / per;
  }
  dpm_sgd_free(&opt);
  dpm_step_free(&st);
  dpm_model_free(m);
  return bench_median(times, 7);
}

static void measure_model(model_rates *mr, dpm_dataset *d) {
  const int b1 = 128, b2 = 1024;
  double t1 = step_time(mr->layers, d, b1, &mr->params), t2 = step_time(mr->layers, d, b2, &mr->params);
  mr->per_example = (t2 - t1) / (b2 - b1);
  mr->fixed = t1 - b1 * mr->per_example;
  if (mr->fixed < 0) mr->fixed = 0;
  float *g = dpm_calloc(mr->params, sizeof(float)), *p = dpm_calloc(mr->params, sizeof(float));
  dpm_key k = dpm_key_from_seed(9, 1);
  double tn[7], tu[7];
  dpm_sgd opt;
  dpm_sgd_init(&opt, mr->params, 0.9, 0);
  for (int r = 0; r < 7; r++) {
    double t0 = dpm_time();
    dpm_add_noise(&k, (uint64_t)r, 1.0, 0, mr->params, g);
    tn[r] = dpm_time() - t0;
    t0 = dpm_time();
    dpm_sgd_step(&opt, p, g, 1e-3, 0.01);
    tu[r] = dpm_time() - t0;
  }
  mr->noise = bench_median(tn, 7);
  mr->update = bench_median(tu, 7);
  dpm_sgd_free(&opt);
  dpm_free(g);
  dpm_free(p);
}

/* Rabenseifner allreduce of `bytes` over P ranks, in buckets of at most 4 MiB (as dpm_step sends). */
static double allreduce_time(double bytes, int P, int per_node, double a_node, double b_node, double a_net,
                             double b_net) {
  if (P <= 1) return 0;
  const double bucket = 4.0 * 1024 * 1024;
  int nb = (int)ceil(bytes / bucket);
  if (nb < 1) nb = 1;
  const int inter = P > per_node;
  const double alpha = inter ? a_net : a_node, beta = inter ? (b_net < b_node ? b_net : b_node) : b_node;
  return nb * 2 * log2((double)P) * alpha + 2.0 * (P - 1) / P * bytes / beta;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const char *csv = argc > 1 ? argv[1] : "bench/results/perfmodel.csv";
  const double net_gbps = argc > 2 ? atof(argv[2]) : 100, net_lat = (argc > 3 ? atof(argv[3]) : 2) * 1e-6;
  const int per_node = argc > 4 ? atoi(argv[4]) : 64, b_rank = argc > 5 ? atoi(argv[5]) : 256,
            b_strong = argc > 6 ? atoi(argv[6]) : 16384;
  if (size < 2) {
    if (rank == 0) fprintf(stderr, "bench_perfmodel: run on 2 or more ranks (it measures MPI_Allreduce)\n");
    MPI_Finalize();
    return 2;
  }

  /* ---- allreduce: alpha, beta on this machine ---- */
  const int n_sizes = 24;
  double sz[24], tm[24];
  float *buf = dpm_calloc((size_t)16 << 20, sizeof(float));
  for (int k = 0; k < n_sizes; k++) {
    size_t count = (size_t)2 << k; /* 8 B .. 64 MiB */
    if (count > ((size_t)16 << 20)) count = (size_t)16 << 20;
    double ts[9];
    const int reps = count < 65536 ? 50 : 5;
    for (int r = 0; r < 9; r++) {
      MPI_Barrier(MPI_COMM_WORLD);
      double t0 = dpm_time();
      for (int i = 0; i < reps; i++) MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      ts[r] = (dpm_time() - t0) / reps;
      MPI_Allreduce(MPI_IN_PLACE, &ts[r], 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    }
    sz[k] = 4.0 * (double)count;
    tm[k] = bench_median(ts, 9);
  }
  dpm_free(buf);
  /* least squares t = alpha + bytes / beta over 8 B .. 4 MiB */
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  int m = 0;
  for (int k = 0; k < n_sizes; k++)
    if (sz[k] <= 4.0 * 1024 * 1024) sx += sz[k], sy += tm[k], sxx += sz[k] * sz[k], sxy += sz[k] * tm[k], m++;
  double slope = (m * sxy - sx * sy) / (m * sxx - sx * sx), a_node = tm[0];
  double b_node = 1.0 / slope;
  /* on P ranks Rabenseifner moves 2 (P-1)/P of the bytes: rescale the measured link to one rank's */
  b_node *= 2.0 * (size - 1) / size;
  a_node /= 2 * log2((double)size);

  /* ---- compute: rank 0 alone (the others wait) ---- */
  model_rates models[3] = {
      {.name = "mlp", .layers = BENCH_MLP}, {.name = "cnn", .layers = BENCH_TANH_CNN},
      {.name = "wide-mlp", .layers = BENCH_WIDE_MLP}};
  if (rank == 0) {
    const int64_t N = 60000;
    dpm_dataset d = {.n_total = N, .begin = 0, .end = N, .C = 1, .H = 28, .W = 28, .num_classes = 10};
    d.x = dpm_malloc(sizeof(float) * (size_t)N * 784);
    d.y = dpm_malloc(sizeof(int32_t) * (size_t)N);
    bench_fill(d.x, d.y, 0, N);
    for (int i = 0; i < 3; i++) measure_model(&models[i], &d);
    dpm_free(d.x);
    dpm_free(d.y);
  }
  MPI_Barrier(MPI_COMM_WORLD);

  if (rank == 0) {
    const double b_net = net_gbps * 1e9 / 8;
    printf("bench_perfmodel: measured on %d ranks of this machine\n", size);
    printf("  allreduce (float sum, %d ranks): alpha %.2f us per latency step, link %.2f GB/s per rank "
           "(fit over 8 B .. 4 MiB)\n", size, a_node * 1e6, b_node / 1e9);
    for (int k = 0; k < n_sizes; k += 3)
      printf("    %10.0f B  %9.2f us  %7.2f GB/s algorithm bandwidth\n", sz[k], tm[k] * 1e6, sz[k] / tm[k] / 1e9);
    printf("  assumed inter-node network: %.0f Gb/s (%.2f GB/s), %.1f us latency, %d ranks per node\n", net_gbps,
           b_net / 1e9, net_lat * 1e6, per_node);
    for (int i = 0; i < 3; i++) {
      const model_rates *r = &models[i];
      printf("  %-9s %9zu params: %.3f us/example, fixed %.3f ms/step (noise %.3f ms, update %.3f ms)\n", r->name,
             r->params, r->per_example * 1e6, r->fixed * 1e3, r->noise * 1e3, r->update * 1e3);
    }
    FILE *out = fopen(csv, "w");
    if (!out) fprintf(stderr, "bench_perfmodel: cannot write %s (CSV not written)\n", csv);
    if (out)
      fprintf(out, "model,params,ranks,weak_step_ms,weak_efficiency,strong_step_ms,strong_efficiency,comm_share_weak,"
                   "weak_efficiency_unbalanced\n");
    printf("  predicted efficiency (weak: %d examples per rank; strong: %d examples per step in total)\n", b_rank,
           b_strong);
    printf("    %-9s %6s %12s %10s %12s %10s %10s\n", "model", "ranks", "weak ms", "weak eff", "strong ms", "strong eff",
           "comm share");
    const int Ps[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
    for (int i = 0; i < 3; i++) {
      const model_rates *r = &models[i];
      const double other = r->fixed - r->noise;
      double w1 = 0, s1 = 0, u1 = 0;
      for (size_t pi = 0; pi < sizeof Ps / sizeof Ps[0]; pi++) {
        const int P = Ps[pi];
        /* each rank: its share of the noise, the full update, and ceil(B / P) examples (dpmpi rebalances
         * the Poisson sample every step: one allgather of P counts, log2 P latencies; the few moved inputs
         * are neglected). Without rebalancing the step would wait for the largest of P Poisson batches,
         * about b + sqrt(2 b ln P): printed as weak_unbalanced. */
        const double alpha = P > per_node ? net_lat : a_node;
        double ar = allreduce_time(4.0 * (double)r->params, P, per_node, a_node, b_node, net_lat, b_net);
        double gather = P > 1 ? log2((double)P) * alpha : 0;
        double weak = other + r->noise / P + b_rank * r->per_example + ar + gather;
        double weak_unbal = weak - gather + (P > 1 ? sqrt(2.0 * b_rank * log((double)P)) : 0) * r->per_example;
        double sb = ceil((double)b_strong / P);
        double strong = other + r->noise / P + sb * r->per_example + ar + gather;
        if (P == 1) w1 = weak, s1 = strong, u1 = weak_unbal;
        double we = w1 / weak, se = s1 / (P * strong);
        printf("    %-9s %6d %12.3f %9.1f%% %12.3f %9.1f%% %9.1f%%\n", r->name, P, weak * 1e3, 100 * we, strong * 1e3,
               100 * se, 100 * ar / weak);
        if (out)
          fprintf(out, "%s,%zu,%d,%.6f,%.4f,%.6f,%.4f,%.4f,%.4f\n", r->name, r->params, P, weak * 1e3, we, strong * 1e3,
                  se, ar / weak, u1 / weak_unbal);
      }
    }
    if (out) fclose(out), printf("  wrote %s\n", csv);
  }
  MPI_Finalize();
  return 0;
}
