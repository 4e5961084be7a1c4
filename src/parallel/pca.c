/* DP-PCA preprocessing on a BLACS grid: clipped second-moment matrix (dsyrk), packed reduction to the
 * root, Analyze-Gauss noise on the root, block-cyclic distribution (pdgemr2d), ScaLAPACK eigensolver
 * (pdsyevr or pdsyevd), top-k eigenvectors to every rank, projection (sgemm). See dpmpi/parallel/pca.h and
 * docs/pca.md. */
#include "dpmpi/parallel/pca.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "parallel/scalapack.h"

void dpm_pca_grid_shape(int size, int *pr, int *pc) {
  DPM_ASSERT(size >= 1);
  int r = 1;
  for (int i = 1; (int64_t)i * i <= size; i++)
    if (size % i == 0) r = i;
  *pr = r;
  *pc = size / r;
}

/* ---- second-moment matrix -------------------------------------------------------------------- */

static size_t packed_size(int d) { return (size_t)d * (size_t)(d + 1) / 2; }
/* index of row i's first upper-triangle entry (i, i) in the packed upper triangle */
static size_t packed_row(int d, int i) { return (size_t)i * (size_t)d - (size_t)i * (size_t)(i - 1) / 2; }

/* MPI counts are int: reduce long vectors in pieces. */
#define REDUCE_CHUNK ((size_t)1 << 26)

static void max_times(MPI_Comm comm, double *t, int n) {
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, t, n, MPI_DOUBLE, MPI_MAX, comm));
}

void dpm_pca_noisy_gram(MPI_Comm comm, const float *x, int64_t n_local, int d, const dpm_pca_params *p,
                        const dpm_key *key, double *A, dpm_pca_stats *st) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  DPM_ASSERT(d >= 1 && n_local >= 0 && (rank != 0 || A));
  const size_t dd = (size_t)d * (size_t)d, P = packed_size(d);
  double t[3] = {0, 0, 0}, t0 = dpm_time();
  /* 1. local clipped X^T X (upper triangle), on the root directly in A */
  double *G = rank == 0 ? A : dpm_malloc_aligned(sizeof(double) * dd);
  memset(G, 0, sizeof(double) * dd);
  dpm_pca_gram(x, n_local, d, p->clip, G);
  t[0] = dpm_time() - t0;
  /* 2. packed upper triangles summed on the root */
  t0 = dpm_time();
  double *packed = dpm_malloc_aligned(sizeof(double) * P);
  for (int i = 0; i < d; i++) memcpy(packed + packed_row(d, i), G + (size_t)i * d + i, sizeof(double) * (size_t)(d - i));
  if (rank != 0) dpm_free(G);
  for (size_t off = 0; off < P; off += REDUCE_CHUNK) {
    int cnt = (int)(P - off < REDUCE_CHUNK ? P - off : REDUCE_CHUNK);
    DPM_MPI_CHECK(MPI_Reduce(rank == 0 ? MPI_IN_PLACE : packed + off, packed + off, cnt, MPI_DOUBLE, MPI_SUM, 0, comm));
  }
  if (rank == 0)
    for (int i = 0; i < d; i++) memcpy(A + (size_t)i * d + i, packed + packed_row(d, i), sizeof(double) * (size_t)(d - i));
  dpm_free(packed);
  t[1] = dpm_time() - t0;
  /* 3. noise once, on the root (then the mirror: A exactly symmetric) */
  if (rank == 0) {
    t0 = dpm_time();
    if (p->sigma > 0) {
      DPM_ASSERT(key && p->clip > 0);
      dpm_pca_add_noise(A, d, p->sigma * p->clip * p->clip, key);
    } else {
      for (int i = 0; i < d; i++)
        for (int j = i + 1; j < d; j++) A[(size_t)j * d + i] = A[(size_t)i * d + j];
    }
    t[2] = dpm_time() - t0;
  }
  max_times(comm, t, 3);
  if (st) st->t_cov = t[0], st->t_reduce = t[1], st->t_noise = t[2];
}

/* ---- eigendecomposition on the BLACS grid ---------------------------------------------------- */

/* How many of the top eigenpairs to ask pdsyevr for (>= k). ScaLAPACK 2.2.1's PDSYEVR hands the
 * back-transformation PDORMTR a workspace of max(18 N, NP00 MQ00 + 2 NB^2) (NP00 = numroc(N, NB, 0, 0,
 * pr), MQ00 = numroc(MZ, NB, 0, 0, pc), MZ the number of wanted pairs), but PDORMTR needs
 * max(NB (NB-1) / 2, (MpC0 + NqC0) NB) + NB^2 (MpC0 = numroc(N - 1, NB, myrow, 0, pr), NqC0 = numroc(MZ,
 * NB, mycol, 0, pc)): with few wanted pairs and large blocks it fails ("PDORMTR parameter number 16 had an
 * illegal value") and leaves Z unconverted. Asking for the smallest MZ >= k that satisfies it on every
 * process (MZ = N always does) avoids that; the extra pairs cost little and are dropped. */
static int syevr_count(int d, int k, int nb, int pr, int pc) {
  const int izero = 0;
  for (int mz = k; mz < d; mz++) {
    int np00 = numroc_(&d, &nb, &izero, &izero, &pr), mq00 = numroc_(&mz, &nb, &izero, &izero, &pc), dm1 = d - 1;
    double size1 = fmax(18.0 * d, (double)np00 * mq00 + 2.0 * nb * nb), need = 0;
    for (int r = 0; r < pr; r++)
      for (int c = 0; c < pc; c++) {
        double mpc0 = numroc_(&dm1, &nb, &r, &izero, &pr), nqc0 = numroc_(&mz, &nb, &c, &izero, &pc);
        need = fmax(need, fmax(nb * (nb - 1) / 2.0, (mpc0 + nqc0) * nb) + (double)nb * nb);
      }
    if (need <= size1) return mz;
  }
  return d;
}

static int auto_block(int d, int pr, int pc) {
  int most = pr > pc ? pr : pc, nb = (d + most - 1) / most;
  if (nb > 64) nb = 64;
  return nb < 1 ? 1 : nb;
}

/* The BLACS grids of dpm_pca_eig and its descriptors: pr x pc over comm for the solver (block nb), 1 x 1
 * on rank 0 of comm (ctxt0 < 0 elsewhere) holding the whole d x d matrix A0 and the d x k result V0. */
typedef struct {
  int sys, ctxt, ctxt0, pr, pc, nb, mloc, nloc; /* mloc x nloc: this rank's piece of the d x d matrix */
  int descA[9], descA0[9], descV0[9];
} eig_grid;

static void eig_grid_init(MPI_Comm comm, int d, int k, int block, eig_grid *g) {
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  dpm_pca_grid_shape(size, &g->pr, &g->pc);
  g->nb = block > 0 ? block : auto_block(d, g->pr, g->pc);
  const int izero = 0;
  int me, np;
  Cblacs_pinfo(&me, &np); /* initializes the BLACS if nothing has */
  g->sys = g->ctxt = g->ctxt0 = Csys2blacs_handle(comm);
  Cblacs_gridinit(&g->ctxt, "Row", g->pr, g->pc);
  Cblacs_gridinit(&g->ctxt0, "Row", 1, 1);
  int npr, npc, myrow, mycol, info = 0;
  Cblacs_gridinfo(g->ctxt, &npr, &npc, &myrow, &mycol);
  DPM_ASSERT(npr == g->pr && npc == g->pc && myrow >= 0 && mycol >= 0);
  DPM_ASSERT((rank == 0) == (g->ctxt0 >= 0));
  g->mloc = numroc_(&d, &g->nb, &myrow, &izero, &g->pr);
  g->nloc = numroc_(&d, &g->nb, &mycol, &izero, &g->pc);
  const int lld = g->mloc > 1 ? g->mloc : 1;
  const int a0[9] = {1, -1, d, d, d, d, 0, 0, d}, v0[9] = {1, -1, d, k, d, k, 0, 0, d};
  memcpy(g->descA0, a0, sizeof a0);
  memcpy(g->descV0, v0, sizeof v0);
  descinit_(g->descA, &d, &d, &g->nb, &g->nb, &izero, &izero, &g->ctxt, &lld, &info);
  DPM_ASSERT(info == 0);
  if (rank == 0) {
    descinit_(g->descA0, &d, &d, &d, &d, &izero, &izero, &g->ctxt0, &d, &info);
    DPM_ASSERT(info == 0);
    descinit_(g->descV0, &d, &k, &d, &k, &izero, &izero, &g->ctxt0, &d, &info);
    DPM_ASSERT(info == 0);
  }
}

static void eig_grid_exit(eig_grid *g) {
  Cblacs_gridexit(g->ctxt);
  if (g->ctxt0 >= 0) Cblacs_gridexit(g->ctxt0);
  Cfree_blacs_system_handle(g->sys);
}

/* The top mz eigenpairs of the distributed symmetric a (overwritten): eigenvalues ascending in w,
 * eigenvectors in the columns of z; workspace query first. Returns ScaLAPACK's info; *m, *nz: the
 * eigenvalues and eigenvectors found; *jz0: the column of z holding the k-th largest. */
static int eig_solve(const eig_grid *g, int d, int k, int mz, dpm_pca_solver solver, double *a, double *w,
                     double *z, int *m, int *nz, int *jz0) {
  const int ione = 1, il = d - mz + 1, iu = d;
  const double vl = 0, vu = 0;
  const int *descA = g->descA;
  const int nb = g->nb;
  double wq = 0;
  int iwq = 0, lwork = -1, liwork = -1, info = 0;
  if (solver == DPM_PCA_SYEVR)
    pdsyevr_("V", "I", "U", &d, a, &ione, &ione, descA, &vl, &vu, &il, &iu, m, nz, w, z, &ione, &ione, descA, &wq,
             &lwork, &iwq, &liwork, &info, 1, 1, 1);
  else
    pdsyevd_("V", "U", &d, a, &ione, &ione, descA, w, z, &ione, &ione, descA, &wq, &lwork, &iwq, &liwork, &info, 1, 1);
  DPM_ASSERT(info == 0);
  /* PDSYEVD's query (ScaLAPACK 2.2.1) can report less than its back-transformation PDORMTR then requires
   * (max(nb (nb-1) / 2, (NqC0 + MpC0) nb) + nb^2: "PDORMTR parameter number 16 had an illegal value" for
   * some d and block sizes); PDSYEVD passes PDORMTR the rest of WORK, so a bound on that requirement is
   * added to the query. (PDSYEVR passes a fixed slice instead: syevr_count handles it.) */
  const double ormtr = (double)(g->mloc + g->nloc + 2 * nb) * nb + 2.0 * nb * nb;
  DPM_ASSERT(wq + ormtr < 2e9);
  lwork = (int)(wq + ormtr) + 64;
  liwork = iwq > 0 ? iwq : 1;
  if (solver == DPM_PCA_SYEVD) { /* PDSYEVD's documented minimum, in case the query reports less */
    int minli = 7 * d + 8 * g->pc + 2;
    if (liwork < minli) liwork = minli;
  }
  double *work = dpm_malloc(sizeof(double) * (size_t)lwork);
  int *iwork = dpm_malloc(sizeof(int) * (size_t)liwork);
  if (solver == DPM_PCA_SYEVR) {
    pdsyevr_("V", "I", "U", &d, a, &ione, &ione, descA, &vl, &vu, &il, &iu, m, nz, w, z, &ione, &ione, descA, work,
             &lwork, iwork, &liwork, &info, 1, 1, 1);
    *jz0 = mz - k + 1; /* the top mz pairs ascending in columns 1..mz: the top k are the last k */
  } else {
    pdsyevd_("V", "U", &d, a, &ione, &ione, descA, w, z, &ione, &ione, descA, work, &lwork, iwork, &liwork, &info, 1, 1);
    *m = *nz = d;
    *jz0 = d - k + 1; /* all pairs ascending: the top k are the last k columns */
  }
  dpm_free(work);
  dpm_free(iwork);
  return info;
}

/* Columns jz0 .. jz0+k-1 of z to the root, there reordered descending into V (d x k row-major) with each
 * vector's largest entry positive, and their eigenvalues (w from index jz0 - 1) into wd; then V and wd
 * are broadcast. */
static void eig_gather(MPI_Comm comm, const eig_grid *g, int d, int k, const double *z, int jz0, const double *w,
                       double *V, double *wd) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  const int ione = 1;
  double *V0 = rank == 0 ? dpm_malloc(sizeof(double) * (size_t)d * (size_t)k) : NULL;
  pdgemr2d_(&d, &k, z, &ione, &jz0, g->descA, V0, &ione, &ione, g->descV0, &g->ctxt);
  if (rank == 0) {
    const int off = jz0 - 1; /* w index of column jz0 */
    for (int c = 0; c < k; c++) {
      const double *col = V0 + (size_t)(k - 1 - c) * d; /* descending */
      int arg = 0;
      for (int i = 1; i < d; i++)
        if (fabs(col[i]) > fabs(col[arg])) arg = i;
      const double sgn = col[arg] < 0 ? -1.0 : 1.0;
      for (int i = 0; i < d; i++) V[(size_t)i * k + c] = sgn * col[i];
      wd[c] = w[off + k - 1 - c];
    }
  }
  dpm_free(V0);
  DPM_MPI_CHECK(MPI_Bcast(V, d * k, MPI_DOUBLE, 0, comm));
  DPM_MPI_CHECK(MPI_Bcast(wd, k, MPI_DOUBLE, 0, comm));
}

int dpm_pca_eig(MPI_Comm comm, const double *A, int d, int k, dpm_pca_solver solver, int block, double *V,
                double *evals, dpm_pca_stats *st, char err[DPM_ERRLEN]) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  DPM_ASSERT(d >= 1 && k >= 1 && k <= d && (int64_t)d * k < INT32_MAX && (rank != 0 || A) && V);
  double t0 = dpm_time();
  eig_grid g;
  eig_grid_init(comm, d, k, block, &g);
  const int ione = 1;
  const size_t nlocal = (size_t)g.mloc * (size_t)g.nloc;
  double *a = dpm_malloc_aligned(sizeof(double) * (nlocal > 0 ? nlocal : 1));
  double *z = dpm_malloc_aligned(sizeof(double) * (nlocal > 0 ? nlocal : 1));
  double *w = dpm_malloc(sizeof(double) * (size_t)d), *wd = dpm_malloc(sizeof(double) * (size_t)k);
  /* A is symmetric: its row-major array is its column-major array */
  pdgemr2d_(&d, &d, A, &ione, &ione, g.descA0, a, &ione, &ione, g.descA, &g.ctxt);
  const int mz = solver == DPM_PCA_SYEVR ? syevr_count(d, k, g.nb, g.pr, g.pc) : d; /* pairs computed */
  int m = 0, nz = 0, jz0 = 0;
  const int info = eig_solve(&g, d, k, mz, solver, a, w, z, &m, &nz, &jz0);
  DPM_ASSERT(info >= 0); /* a negative info is a bad argument: a bug here */
  int bad[2] = {info, (m < mz || nz < mz) ? 1 : 0};
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, bad, 2, MPI_INT, MPI_MAX, comm));
  int rc = 0;
  if (bad[0] || bad[1]) {
    rc = dpm_err(err, "ScaLAPACK %s failed on the %d x %d PCA matrix (info %d, %d of %d eigenvectors)",
                 solver == DPM_PCA_SYEVR ? "pdsyevr" : "pdsyevd", d, d, bad[0], nz, mz);
  } else {
    eig_gather(comm, &g, d, k, z, jz0, w, V, wd);
    if (evals) memcpy(evals, wd, sizeof(double) * (size_t)k);
  }
  dpm_free(a);
  dpm_free(z);
  dpm_free(w);
  dpm_free(wd);
  eig_grid_exit(&g);
  double t = dpm_time() - t0;
  max_times(comm, &t, 1);
  if (st) st->t_eig = t, st->pr = g.pr, st->pc = g.pc, st->block = g.nb;
  return rc;
}

/* ---- the whole mechanism, projection, job parameters ------------------------------------------ */

int dpm_pca_fit(MPI_Comm comm, const float *x, int64_t n_local, int d, const dpm_pca_params *p, const dpm_key *key,
                float *V, double *evals, dpm_pca_stats *st, char err[DPM_ERRLEN]) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  DPM_ASSERT(p->components >= 1 && p->components <= d);
  const int k = p->components;
  double *A = rank == 0 ? dpm_malloc_aligned(sizeof(double) * (size_t)d * (size_t)d) : NULL;
  dpm_pca_noisy_gram(comm, x, n_local, d, p, key, A, st);
  double *Vd = dpm_malloc(sizeof(double) * (size_t)d * (size_t)k);
  int rc = dpm_pca_eig(comm, A, d, k, p->solver, p->block, Vd, evals, st, err);
  dpm_free(A);
  if (!rc)
    for (size_t i = 0; i < (size_t)d * (size_t)k; i++) V[i] = (float)Vd[i];
  dpm_free(Vd);
  return rc;
}

#define PROJECT_ROWS ((int64_t)1 << 20)

void dpm_pca_project(const float *x, int64_t n, int d, const float *V, int k, float *out) {
  for (int64_t r0 = 0; r0 < n; r0 += PROJECT_ROWS) {
    const int rows = (int)(n - r0 < PROJECT_ROWS ? n - r0 : PROJECT_ROWS);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, k, d, 1.0f, x + (size_t)r0 * d, d, V, k, 0.0f,
                out + (size_t)r0 * k, k);
  }
}

void dpm_pca_apply(dpm_dataset *ds, int64_t rows, const float *V, int d, int k) {
  DPM_ASSERT(rows == 0 || (ds->x && ds->C * ds->H * ds->W == d));
  float *out = dpm_malloc_aligned(sizeof(float) * (size_t)(rows > 0 ? rows : 1) * (size_t)k);
  if (rows > 0) dpm_pca_project(ds->x, rows, d, V, k, out);
  dpm_free(ds->x);
  ds->x = out;
  ds->C = k;
  ds->H = ds->W = 1;
  ds->images = 0;
  ds->mean = 0;
  ds->std = 1;
}

int dpm_pca_sigma(const dpm_config *cfg, double *sigma, char err[DPM_ERRLEN]) {
  *sigma = 0;
  if (!cfg->privacy_enabled || cfg->pca_components <= 0) return 0;
  if (cfg->pca_noise_multiplier > 0) {
    *sigma = cfg->pca_noise_multiplier;
    return 0;
  }
  char inner[DPM_ERRLEN];
  dpm_accountant_kind kind = cfg->accountant;
  if (dpm_calibrate_sigma(cfg->pca_epsilon, cfg->delta, 1.0, 1, kind, sigma, inner))
    return dpm_err(err, "%s: [pca] epsilon = %g: cannot calibrate the PCA noise: %s", cfg->path, cfg->pca_epsilon,
                   inner);
  return 0;
}

int dpm_pca_check(const dpm_config *cfg, int d, char err[DPM_ERRLEN]) {
  if (cfg->pca_components > d)
    return dpm_err(err, "%s: [pca] components = %lld exceeds the %d features of an example of %s", cfg->path,
                   (long long)cfg->pca_components, d, cfg->data_train);
  return 0;
}
