/* DP-PCA time by phase against the rank count: the clipped X^T X of each rank's shard (dsyrk), the packed
 * reduction to the root, the root's Analyze-Gauss noise, the eigendecomposition on the BLACS grid
 * (distribution, ScaLAPACK solver, top-k to every rank) with pdsyevr (the k wanted pairs) and pdsyevd
 * (all pairs), and the projection of each shard (sgemm). Every phase is the maximum over the ranks; each
 * figure the median of REPEATS runs.
 * Usage: [mpirun -np R] bench_pca [REPEATS=3] [D:N ...]   (default 784:60000 4096:16384; k = 60)
 * D:N = features and training examples in total (each rank holds N / R rows, random Gaussian data). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpmpi/parallel/pca.h"

#include "benchutil.h"

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int repeats = argc > 1 ? atoi(argv[1]) : 3;
  if (repeats < 1 || repeats > 32) repeats = 3;
  const char *defaults[] = {"784:60000", "4096:16384"};
  int ncases = argc > 2 ? argc - 2 : 2;
  const int k = 60;
  int pr, pc;
  dpm_pca_grid_shape(size, &pr, &pc);
  if (rank == 0)
    printf("bench_pca: %d rank(s), BLACS grid %dx%d, k = %d, median of %d (seconds; max over ranks)\n", size, pr, pc, k,
           repeats);
  for (int c = 0; c < ncases; c++) {
    int d;
    long long N;
    if (sscanf(argc > 2 ? argv[2 + c] : defaults[c], "%d:%lld", &d, &N) != 2 || d < k || N < 1) {
      if (rank == 0) fprintf(stderr, "bench_pca: bad case '%s' (expected D:N with D >= %d)\n", argv[2 + c], k);
      MPI_Finalize();
      return 2;
    }
    int64_t b = N * rank / size, e = N * (rank + 1) / size, n = e - b;
    float *x = dpm_malloc_aligned(sizeof(float) * (size_t)(n > 0 ? n : 1) * (size_t)d);
    memset(x, 0, sizeof(float) * (size_t)n * (size_t)d);
    dpm_key dkey = dpm_key_from_seed(1, 99);
    for (int64_t r = 0; r < n; r++) dpm_gauss_add(&dkey, (uint64_t)(b + r), 0, 0, (size_t)d, 1.0, x + r * d);
    float *V = dpm_malloc(sizeof(float) * (size_t)d * k), *out = dpm_malloc_aligned(sizeof(float) * (size_t)(n > 0 ? n : 1) * k);
    dpm_key key = dpm_key_from_seed(2, DPM_STREAM_PCA);
    for (int solver = 0; solver < 2; solver++) {
      double tc[32], tr[32], tn[32], te[32], tp[32], tt[32];
      int nb = 0;
      for (int rep = 0; rep < repeats; rep++) {
        dpm_pca_params p = {.components = k, .clip = 30.0, .sigma = 4.0, .solver = (dpm_pca_solver)solver};
        dpm_pca_stats st;
        char err[DPM_ERRLEN];
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = dpm_time();
        if (dpm_pca_fit(MPI_COMM_WORLD, x, n, d, &p, rank == 0 ? &key : NULL, V, NULL, &st, err)) dpm_fatal("%s", err);
        double t1 = dpm_time();
        dpm_pca_project(x, n, d, V, k, out);
        double tproj = dpm_time() - t1;
        MPI_Allreduce(MPI_IN_PLACE, &tproj, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        tc[rep] = st.t_cov, tr[rep] = st.t_reduce, tn[rep] = st.t_noise, te[rep] = st.t_eig, tp[rep] = tproj;
        tt[rep] = dpm_time() - t0;
        nb = st.block;
      }
      if (rank == 0)
        printf("d %5d  N %6lld  %s  block %2d:  covariance %7.3f  reduce %7.3f  noise %6.3f  eigenvectors %8.3f  "
               "projection %6.3f  total %8.3f\n",
               d, N, solver ? "pdsyevd" : "pdsyevr", nb, bench_median(tc, repeats), bench_median(tr, repeats), bench_median(tn, repeats),
               bench_median(te, repeats), bench_median(tp, repeats), bench_median(tt, repeats));
      fflush(stdout);
    }
    dpm_free(x);
    dpm_free(V);
    dpm_free(out);
  }
  MPI_Finalize();
  return 0;
}
