/* Examples/s against the number of ranks R (all replicas: an R x 1 grid), DP-SGD (flat clipping, C = 1,
 * sigma = 1, dpm_step_run + SGD update, as bench_step.c), for the MLP 784-512-10 and the tanh CNN:
 *   weak scaling    the same expected batch per rank (--batch-per-rank, 256): the logical batch grows with R;
 *   strong scaling  the same expected logical batch (--total-batch, 1024) split over the R ranks.
 * Run once per R (mpirun -np R); each run measures its own 1-rank baseline as bench_grid.c does: rank 0
 * alone on MPI_COMM_SELF with the 1-rank batch (weak: batch-per-rank; strong: total-batch) while the other
 * ranks sleep in a non-blocking barrier, interleaved repeat by repeat with the R-rank grid after one
 * uncounted warm-up round, so that a drift of the machine hits both alike. speedup = examples/s at R /
 * examples/s of the baseline; efficiency = speedup / R (weak scaling: the goal is >= 0.90).
 * The grid runs with measure_wait: a barrier before the gradient allreduce takes the wait for the slowest
 * rank (the ranks' Poisson samples differ in size) out of the allreduce (dpm_step.time_allreduce: the
 * transfer alone) into dpm_step.time_wait; both per step, the largest over the ranks, against the step
 * time give the communication share.
 * R > cores (--cores, default: the online processors) is oversubscribed: ranks share cores and the
 * figures measure the time slicing as much as dpmpi; the rows say so.
 * Usage: mpirun -np R bench_scaling [--csv FILE] [--comm-csv FILE] [--cores N] [--models mlp,cnn]
 *        [--modes weak,strong] [--batch-per-rank 256] [--total-batch 1024] [--physical PB] [--repeats 5]
 *        [--steps 10]
 * --physical: the micro-batch; default the per-rank expected batch + 4 sqrt(it) + 8 (one micro-batch per
 * step, as bench_step). CSV files are appended to, with a header row when new:
 *   FILE:      model,mode,ranks,cores,oversubscribed,batch_per_rank,total_batch,physical_batch,step_ms,
 *              examples_s,baseline_examples_s,speedup,efficiency,repeats,steps
 *   comm FILE: model,mode,ranks,cores,oversubscribed,step_ms,allreduce_ms,wait_ms,allreduce_share,wait_share,
 *              comm_share
 * Data: N = 60000 synthetic 28x28 examples on every rank; a shard is a view of rows [begin, end). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dpmpi/optim/sgd.h"
#include "dpmpi/privacy/dpsgd.h"
#include "dpmpi/train/step.h"

#include "benchutil.h"

#define N_EXAMPLES 60000
#define PIXELS 784
#define MAX_REPEATS 64

static const char *MODEL_KEYS[] = {"mlp", "cnn"};
static const char *MODEL_LAYERS[] = {BENCH_MLP, BENCH_TANH_CNN};

/* One training setup on communicator comm (all replicas): model, shard of the replica, step, SGD. */
typedef struct {
  dpm_model *m;
  dpm_dataset data;
  dpm_step st;
  dpm_sgd opt;
  uint64_t t;
  double batch; /* expected examples per rank and step */
} runner;

static void runner_init(runner *r, const char *layers, MPI_Comm comm, const dpm_dataset *set, double batch, int pb) {
  int rank, size;
  MPI_Comm_rank(comm, &rank), MPI_Comm_size(comm, &size);
  memset(r, 0, sizeof *r);
  char err[DPM_ERRLEN];
  dpm_layer_spec *specs;
  int n;
  if (dpm_model_parse(layers, &specs, &n, err)) dpm_fatal("%s", err);
  r->m = dpm_model_create(specs, n, 1, 28, 28, 10, pb, err);
  if (!r->m) dpm_fatal("%s", err);
  dpm_free(specs);
  dpm_key ik = dpm_key_from_seed(3, DPM_STREAM_INIT);
  dpm_model_init_params(r->m, &ik);
  const int64_t N = set->n_total, b = N * rank / size, e = N * (rank + 1) / size;
  r->data = *set;
  r->data.begin = b, r->data.end = e;
  r->data.x = set->x + (size_t)b * PIXELS;
  r->data.y = set->y + b;
  r->batch = batch;
  r->st = (dpm_step){.comm = comm, .pipe = MPI_COMM_SELF, .model = r->m, .data = &r->data,
                     .q = batch * size / (double)N, .dp = 1, .clip = 1.0, .sigma = 1.0, .clipping = DPM_CLIP_FLAT,
                     .physical_batch = pb, .measure_wait = 1, .sample_key = dpm_key_from_seed(4, 0),
                     .noise_key = dpm_key_from_seed(4, 1)};
  dpm_step_init(&r->st);
  dpm_sgd_init(&r->opt, dpm_model_num_params(r->m), 0.9, 0);
}

static void runner_free(runner *r) {
  dpm_sgd_free(&r->opt);
  dpm_step_free(&r->st);
  dpm_model_free(r->m);
}

/* `steps` steps, collective over the runner's comm. out: {seconds per step (max over ranks), examples/s
 * (all ranks), allreduce seconds per step, wait seconds per step (each the max over ranks)}. */
static void runner_repeat(runner *r, int steps, double out[4]) {
  dpm_step_stats stats;
  double examples = 0;
  r->st.time_allreduce = r->st.time_wait = 0;
  DPM_MPI_CHECK(MPI_Barrier(r->st.comm));
  double t0 = dpm_time();
  for (int k = 0; k < steps; k++, r->t++) {
    dpm_step_run(&r->st, r->t, &stats);
    dpm_sgd_step(&r->opt, dpm_model_params(r->m), dpm_model_grads(r->m), 1.0 / r->batch, 0.01);
    examples += stats.examples;
  }
  double v[3] = {dpm_time() - t0, r->st.time_allreduce, r->st.time_wait};
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, 3, MPI_DOUBLE, MPI_MAX, r->st.comm));
  out[0] = v[0] / steps, out[1] = examples / v[0], out[2] = v[1] / steps, out[3] = v[2] / steps;
}

static void usage(void) {
  fprintf(stderr, "usage: mpirun -np R bench_scaling [--csv FILE] [--comm-csv FILE] [--cores N] [--models mlp,cnn] "
                  "[--modes weak,strong] [--batch-per-rank 256] [--total-batch 1024] [--physical PB] "
                  "[--repeats 5 (1..%d)] [--steps 10]\n", MAX_REPEATS);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const char *csv = NULL, *comm_csv = NULL, *models = "mlp,cnn", *modes = "weak,strong";
  int cores = (int)sysconf(_SC_NPROCESSORS_ONLN), per_rank = 256, total = 1024, pb_opt = 0, repeats = 5, steps = 10;
  static const struct option opts[] = {
      {"csv", required_argument, 0, 'c'},        {"comm-csv", required_argument, 0, 'C'},
      {"cores", required_argument, 0, 'n'},      {"models", required_argument, 0, 'm'},
      {"modes", required_argument, 0, 'M'},      {"batch-per-rank", required_argument, 0, 'b'},
      {"total-batch", required_argument, 0, 'B'}, {"physical", required_argument, 0, 'p'},
      {"repeats", required_argument, 0, 'r'},    {"steps", required_argument, 0, 's'},
      {0, 0, 0, 0}};
  for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
    switch (o) {
      case 'c': csv = optarg; break;
      case 'C': comm_csv = optarg; break;
      case 'n': cores = atoi(optarg); break;
      case 'm': models = optarg; break;
      case 'M': modes = optarg; break;
      case 'b': per_rank = atoi(optarg); break;
      case 'B': total = atoi(optarg); break;
      case 'p': pb_opt = atoi(optarg); break;
      case 'r': repeats = atoi(optarg); break;
      case 's': steps = atoi(optarg); break;
      default: if (rank == 0) usage(); MPI_Finalize(); return 2;
    }
  }
  if (optind != argc || cores < 1 || per_rank < 1 || total < size || pb_opt < 0 || repeats < 1 ||
      repeats > MAX_REPEATS || steps < 1) {
    if (rank == 0) usage();
    MPI_Finalize();
    return 2;
  }
  const int64_t N = N_EXAMPLES;
  dpm_dataset set = {.n_total = N, .begin = 0, .end = N, .C = 1, .H = 28, .W = 28, .num_classes = 10};
  set.x = dpm_malloc_aligned(sizeof(float) * (size_t)N * PIXELS);
  set.y = dpm_malloc(sizeof(int32_t) * (size_t)N);
  bench_fill(set.x, set.y, 0, N);
  const int over = size > cores;
  FILE *fs = NULL, *fc = NULL;
  if (rank == 0 && csv)
    fs = bench_csv_open(csv, "model,mode,ranks,cores,oversubscribed,batch_per_rank,total_batch,physical_batch,step_ms,"
                       "examples_s,baseline_examples_s,speedup,efficiency,repeats,steps");
  if (rank == 0 && comm_csv)
    fc = bench_csv_open(comm_csv, "model,mode,ranks,cores,oversubscribed,step_ms,allreduce_ms,wait_ms,allreduce_share,"
                            "wait_share,comm_share");
  if (rank == 0)
    printf("bench_scaling: %d rank(s) on %d core(s)%s, DP-SGD, median of %d repeats x %d steps, baseline: 1 rank in "
           "the same run\n", size, cores, over ? " (oversubscribed)" : "", repeats, steps);
  for (int mi = 0; mi < 2; mi++) {
    if (!strstr(models, MODEL_KEYS[mi])) continue;
    for (int strong = 0; strong < 2; strong++) {
      if (!strstr(modes, strong ? "strong" : "weak")) continue;
      const double b_rank = strong ? (double)total / size : per_rank, b_one = strong ? total : per_rank;
      const int pb = pb_opt ? pb_opt : (int)(b_rank + 4 * sqrt(b_rank) + 8),
                pb1 = pb_opt ? pb_opt : (int)(b_one + 4 * sqrt(b_one) + 8);
      runner solo, grid;
      const int with_solo = size > 1 && rank == 0;
      if (with_solo) runner_init(&solo, MODEL_LAYERS[mi], MPI_COMM_SELF, &set, b_one, pb1);
      runner_init(&grid, MODEL_LAYERS[mi], MPI_COMM_WORLD, &set, b_rank, pb);
      double ts[MAX_REPEATS], xs[MAX_REPEATS], x1[MAX_REPEATS], ar[MAX_REPEATS], wt[MAX_REPEATS], out[4];
      for (int k = -1; k < repeats; k++) { /* k = -1: warm-up round, not counted */
        if (size > 1) {
          if (with_solo) runner_repeat(&solo, steps, out);
          if (with_solo && k >= 0) x1[k] = out[1];
          bench_idle_barrier(MPI_COMM_WORLD);
        }
        runner_repeat(&grid, steps, out);
        if (k < 0) continue;
        ts[k] = out[0], xs[k] = out[1], ar[k] = out[2], wt[k] = out[3];
        if (size == 1) x1[k] = out[1];
      }
      if (rank == 0) {
        const double t = bench_median(ts, repeats), x = bench_median(xs, repeats), base = bench_median(x1, repeats),
                     a = bench_median(ar, repeats), w = bench_median(wt, repeats);
        printf("  %-4s %-6s %d rank(s): %5.0f examples/rank expected, %8.3f ms/step, %8.0f examples/s; 1 rank: %8.0f "
               "examples/s; speedup %.3f, efficiency %.3f; allreduce %.3f ms (%.1f%%), wait %.3f ms (%.1f%%)\n",
               MODEL_KEYS[mi], strong ? "strong" : "weak", size, b_rank, 1e3 * t, x, base, x / base, x / base / size,
               1e3 * a, 100 * a / t, 1e3 * w, 100 * w / t);
        if (fs)
          fprintf(fs, "%s,%s,%d,%d,%d,%.2f,%.0f,%d,%.4f,%.1f,%.1f,%.4f,%.4f,%d,%d\n", MODEL_KEYS[mi],
                  strong ? "strong" : "weak", size, cores, over, b_rank, b_rank * size, pb, 1e3 * t, x, base, x / base,
                  x / base / size, repeats, steps);
        if (fc)
          fprintf(fc, "%s,%s,%d,%d,%d,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f\n", MODEL_KEYS[mi], strong ? "strong" : "weak",
                  size, cores, over, 1e3 * t, 1e3 * a, 1e3 * w, a / t, w / t, (a + w) / t);
      }
      if (with_solo) runner_free(&solo);
      runner_free(&grid);
    }
  }
  if (fs) fclose(fs);
  if (fc) fclose(fc);
  dpm_free(set.x);
  dpm_free(set.y);
  MPI_Finalize();
  return 0;
}
