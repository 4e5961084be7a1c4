/* dpmpi scalapack (internal): declarations of the BLACS, ScaLAPACK and LAPACK routines dpmpi calls.
 * Debian's ScaLAPACK (pkg-config scalapack-openmpi) ships no C headers, so this is the one place they
 * are declared. The Fortran routines take every argument by reference; CHARACTER arguments carry a
 * hidden length (size_t, gfortran's convention) after the last argument, always 1 here.
 *
 * Descriptors (desc[9]): {DTYPE = 1, CTXT, M, N, MB, NB, RSRC, CSRC, LLD}; matrices column-major.
 */
#ifndef DPMPI_SCALAPACK_H
#define DPMPI_SCALAPACK_H

#include "dpmpi/parallel/comm.h"
#include <stddef.h>

/* ---- BLACS (C interface) ---- */
void Cblacs_pinfo(int *mypnum, int *nprocs);
int Csys2blacs_handle(MPI_Comm comm);          /* a BLACS system handle for an MPI communicator */
void Cfree_blacs_system_handle(int handle);
void Cblacs_gridinit(int *context, const char *order, int nprow, int npcol); /* in: system handle */
void Cblacs_gridinfo(int context, int *nprow, int *npcol, int *myrow, int *mycol);
void Cblacs_gridexit(int context);

/* ---- ScaLAPACK tools ---- */
int numroc_(const int *n, const int *nb, const int *iproc, const int *isrcproc, const int *nprocs);
void descinit_(int *desc, const int *m, const int *n, const int *mb, const int *nb, const int *irsrc,
               const int *icsrc, const int *ictxt, const int *lld, int *info);
/* Copy sub(A) (m x n at (ia, ja)) to sub(B) between any two distributions; ictxt spans both grids.
 * A process outside A's (B's) grid passes desca[1] (descb[1]) = -1. */
void pdgemr2d_(const int *m, const int *n, const double *a, const int *ia, const int *ja, const int *desca,
               double *b, const int *ib, const int *jb, const int *descb, const int *ictxt);

/* ---- ScaLAPACK symmetric eigensolvers ---- */
void pdsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *ia, const int *ja,
              const int *desca, double *w, double *z, const int *iz, const int *jz, const int *descz,
              double *work, const int *lwork, int *iwork, const int *liwork, int *info, size_t jobz_len,
              size_t uplo_len);
void pdsyevr_(const char *jobz, const char *range, const char *uplo, const int *n, double *a, const int *ia,
              const int *ja, const int *desca, const double *vl, const double *vu, const int *il, const int *iu,
              int *m, int *nz, double *w, double *z, const int *iz, const int *jz, const int *descz, double *work,
              const int *lwork, int *iwork, const int *liwork, int *info, size_t jobz_len, size_t range_len,
              size_t uplo_len);

/* ---- LAPACK (OpenBLAS), the serial reference of the tests ---- */
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda, double *w, double *work,
             const int *lwork, int *iwork, const int *liwork, int *info, size_t jobz_len, size_t uplo_len);

#endif
