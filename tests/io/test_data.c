/* Data module: IDX (gzipped and plain) and CSV conversion, collective sharded loads checked value by
 * value against what was written and against a 1-rank load, and every user error path.
 */
// ctest: np=1,2,3
#include <dirent.h>
#include <hdf5.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "dpmpi/io/data.h"
#include "testing.h"

static int rank, nranks;
static char dir[128];

/* Path of `name` in the temporary directory; the string stays valid for the next 1023 calls. */
static const char *in_dir(const char *name) {
  static char buf[1024][400];
  static int k = 0;
  k = (k + 1) % 1024;
  snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
  return buf[k];
}

/* ---- writing inputs ------------------------------------------------------------------------------ */

static void put_be32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

/* IDX file: magic, dims, then data; `drop` bytes cut off the end; gzipped if gz. */
static void write_idx(const char *path, int gz, uint32_t magic, int ndim, const uint32_t *dims,
                      const uint8_t *data, size_t n, size_t drop) {
  unsigned char *buf = malloc(4 + 4 * (size_t)ndim + n);
  put_be32(buf, magic);
  for (int k = 0; k < ndim; k++) put_be32(buf + 4 + 4 * k, dims[k]);
  memcpy(buf + 4 + 4 * ndim, data, n);
  size_t total = 4 + 4 * (size_t)ndim + n - drop;
  if (gz) {
    gzFile g = gzopen(path, "wb");
    gzwrite(g, buf, (unsigned)total);
    gzclose(g);
  } else {
    FILE *f = fopen(path, "wb");
    fwrite(buf, 1, total, f);
    fclose(f);
  }
  free(buf);
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  fputs(text, f);
  fclose(f);
}

static void truncate_file(const char *path, double frac) {
  struct stat st;
  stat(path, &st);
  if (truncate(path, (off_t)(st.st_size * frac)) != 0) perror("truncate");
}

static void copy_file(const char *from, const char *to) {
  FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
  CHECK(a && b, "copy %s to %s", from, to);
  if (!a || !b) return;
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, a)) > 0) fwrite(buf, 1, n, b);
  fclose(a);
  fclose(b);
}

static int exists(const char *path) { return access(path, F_OK) == 0; }

/* No leftover temporary files of a conversion. */
static int tmp_files_in_dir(void) {
  DIR *d = opendir(dir);
  struct dirent *e;
  int n = 0;
  while ((e = readdir(d))) n += strstr(e->d_name, ".tmp.") != NULL;
  closedir(d);
  return n;
}

/* Hand-made dataset files: one split, any x type and shape, optional mean/std on x. */
static void h5_split(hid_t f, const char *split, hid_t ftype, hid_t mtype, int rk, const hsize_t *dims,
                     const void *x, hsize_t ny, const int32_t *y, int with_norm, float mean, float std) {
  hid_t g = H5Gcreate2(f, split, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hid_t s = H5Screate_simple(rk, dims, NULL);
  hid_t d = H5Dcreate2(g, "x", ftype, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, x);
  if (with_norm) {
    hid_t as = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(d, "mean", H5T_NATIVE_FLOAT, as, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_FLOAT, &mean);
    H5Aclose(a);
    a = H5Acreate2(d, "std", H5T_NATIVE_FLOAT, as, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_FLOAT, &std);
    H5Aclose(a);
    H5Sclose(as);
  }
  H5Dclose(d);
  H5Sclose(s);
  if (y) {
    s = H5Screate_simple(1, &ny, NULL);
    d = H5Dcreate2(g, "y", H5T_STD_I32LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, y);
    H5Dclose(d);
    H5Sclose(s);
  }
  H5Gclose(g);
}

static void h5_root_classes(hid_t f, int k) {
  hid_t as = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(f, "num_classes", H5T_NATIVE_INT, as, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, H5T_NATIVE_INT, &k);
  H5Aclose(a);
  H5Sclose(as);
}

/* ---- the IDX fixture ------------------------------------------------------------------------------ */

enum { NTR = 7, NTE = 5, IH = 3, IW = 4 };  /* non-square images catch transposed axes */
static uint8_t pix[2][NTR * IH * IW], lab[2][NTR];

static void make_idx_data(void) {
  const int n[2] = {NTR, NTE};
  for (int s = 0; s < 2; s++)
    for (int i = 0; i < n[s]; i++) {
      for (int h = 0; h < IH; h++)
        for (int w = 0; w < IW; w++) pix[s][(i * IH + h) * IW + w] = (uint8_t)((i * 37 + h * 11 + w * 5 + s * 3) % 256);
      lab[s][i] = (uint8_t)((i + s) % 3);
    }
  pix[0][5] = 255;
  pix[0][6] = 0;
}

static void write_idx_set(const char *prefix, int gz_images, int gz_labels) {
  char p[4][64];
  snprintf(p[0], 64, "%s-train-images", prefix);
  snprintf(p[1], 64, "%s-train-labels", prefix);
  snprintf(p[2], 64, "%s-test-images", prefix);
  snprintf(p[3], 64, "%s-test-labels", prefix);
  const uint32_t n[2] = {NTR, NTE};
  for (int s = 0; s < 2; s++) {
    uint32_t d3[3] = {n[s], IH, IW};
    write_idx(in_dir(p[2 * s]), gz_images, 0x803, 3, d3, pix[s], n[s] * IH * IW, 0);
    write_idx(in_dir(p[2 * s + 1]), gz_labels, 0x801, 1, &n[s], lab[s], n[s], 0);
  }
}

static int convert_idx_set(const char *prefix, const char *out, char *err) {
  char p[4][64];
  snprintf(p[0], 64, "%s-train-images", prefix);
  snprintf(p[1], 64, "%s-train-labels", prefix);
  snprintf(p[2], 64, "%s-test-images", prefix);
  snprintf(p[3], 64, "%s-test-labels", prefix);
  return dpm_convert_idx(in_dir(p[0]), in_dir(p[1]), in_dir(p[2]), in_dir(p[3]), out, err);
}

/* Uneven contiguous shards: rank r gets [n r / P, n (r+1) / P). With `empty_first`, rank 0 gets
 * nothing and the others split the rows. */
static void shard(int64_t n, int empty_first, int64_t *b, int64_t *e) {
  if (empty_first && nranks > 1) {
    if (rank == 0) {
      *b = *e = 0;
      return;
    }
    *b = n * (rank - 1) / (nranks - 1);
    *e = n * rank / (nranks - 1);
    return;
  }
  *b = n * rank / nranks;
  *e = n * (rank + 1) / nranks;
}

/* Rank 0 runs a serial step; every rank learns its status. */
static int bcast_rc(int rc) {
  MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return rc;
}

static void test_idx(const char *prefix, int gz_images, int gz_labels) {
  char err[DPM_ERRLEN] = "";
  char outname[64];
  snprintf(outname, sizeof outname, "%s.h5", prefix);
  const char *out = in_dir(outname);
  int rc = 0;
  if (rank == 0) {
    write_idx_set(prefix, gz_images, gz_labels);
    /* the default normalization is fixed (0.5, 0.5), independent of the data */
    dpm_data_set_normalization(0.5, 0.5, 0);
    rc = convert_idx_set(prefix, out, err);
    dpm_dataset fixed;
    CHECK(rc == 0 && dpm_dataset_probe(out, "train", &fixed, err) == 0 && fixed.mean == 0.5f && fixed.std == 0.5f,
          "default normalization is not the fixed 0.5, 0.5: %s", err);
    /* from here on: the training pixels' own statistics (--pixel-stats-from-data) */
    dpm_data_set_normalization(0, 1, 1);
    rc = convert_idx_set(prefix, out, err);
    CHECK(rc == 0, "convert %s: %s", prefix, err);
    CHECK(tmp_files_in_dir() == 0, "temporary file left behind");
  }
  if (bcast_rc(rc)) return;

  /* Independent mean/std of the training pixels / 255. */
  double mean = 0, var = 0;
  const int npix = NTR * IH * IW;
  for (int k = 0; k < npix; k++) mean += pix[0][k] / 255.0;
  mean /= npix;
  for (int k = 0; k < npix; k++) var += (pix[0][k] / 255.0 - mean) * (pix[0][k] / 255.0 - mean);
  const double std = sqrt(var / npix);

  const char *splits[2] = {"train", "test"};
  const int64_t n[2] = {NTR, NTE};
  for (int s = 0; s < 2; s++) {
    dpm_dataset hdr;
    CHECK(dpm_dataset_probe(out, splits[s], &hdr, err) == 0, "probe: %s", err);
    CHECK(hdr.n_total == n[s] && hdr.C == 1 && hdr.H == IH && hdr.W == IW && hdr.num_classes == 3 && hdr.images,
          "probe %s: n %lld C %d H %d W %d K %d", splits[s], (long long)hdr.n_total, hdr.C, hdr.H, hdr.W,
          hdr.num_classes);
    CHECK_CLOSE(hdr.mean, mean, 1e-6, 0, "mean");
    CHECK_CLOSE(hdr.std, std, 1e-6, 0, "std");
    if (rank == 0) {
      int64_t counts[3] = {0, 0, 0};
      CHECK(dpm_dataset_label_counts(out, splits[s], counts, err) == 0, "label counts: %s", err);
      for (int k = 0; k < 3; k++) {
        int64_t want = 0;
        for (int i = 0; i < n[s]; i++) want += lab[s][i] == k;
        CHECK(counts[k] == want, "%s class %d: %lld, expected %lld", splits[s], k, (long long)counts[k],
              (long long)want);
      }
    }

    dpm_dataset full;
    CHECK(dpm_dataset_load(MPI_COMM_SELF, out, splits[s], 0, n[s], &full, err) == 0, "full load: %s", err);
    for (int empty_first = 0; empty_first < 2; empty_first++) {
      int64_t b, e;
      shard(n[s], empty_first, &b, &e);
      dpm_dataset d;
      rc = dpm_dataset_load(MPI_COMM_WORLD, out, splits[s], b, e, &d, err);
      CHECK(rc == 0, "sharded load: %s", err);
      if (rc) continue;
      CHECK(d.begin == b && d.end == e && d.n_total == n[s], "shard bounds");
      int bad = 0;
      for (int64_t i = b; i < e; i++) {
        CHECK(d.y[i - b] == lab[s][i], "label row %lld", (long long)i);
        for (int h = 0; h < IH; h++)
          for (int w = 0; w < IW; w++) {
            double want = ((double)pix[s][(i * IH + h) * IW + w] / 255.0 - (double)d.mean) / (double)d.std;
            float got = d.x[(i - b) * IH * IW + h * IW + w];
            if (fabs(got - want) > 1e-5 * (1 + fabs(want))) bad++;
          }
      }
      CHECK(bad == 0, "%s: %d pixel values differ", splits[s], bad);
      /* The union of the shards is the 1-rank load, bit for bit. */
      CHECK(e == b || memcmp(d.x, full.x + b * IH * IW, (size_t)(e - b) * IH * IW * sizeof(float)) == 0,
            "shard differs from the 1-rank load");
      CHECK(e == b || memcmp(d.y, full.y + b, (size_t)(e - b) * sizeof(int32_t)) == 0, "shard labels differ");
      long long rows = e - b, total = 0;
      MPI_Allreduce(&rows, &total, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
      CHECK(total == n[s], "shards cover %lld of %lld rows", total, (long long)n[s]);
      dpm_dataset_free(&d);
    }
    dpm_dataset_free(&full);
  }
}

/* Channels-last uint8 with C = 3, written by hand: load must transpose to NCHW. */
static void test_nhwc_to_nchw(void) {
  enum { N = 5, H = 2, W = 3, C = 3 };
  const char *path = in_dir("nhwc.h5");
  uint8_t x[N * H * W * C];
  int32_t y[N];
  for (int k = 0; k < N * H * W * C; k++) x[k] = (uint8_t)(k * 7 % 256);
  for (int i = 0; i < N; i++) y[i] = i % 2;
  const float mean = 0.25f, std = 0.5f;
  if (rank == 0) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[4] = {N, H, W, C};
    h5_split(f, "train", H5T_STD_U8LE, H5T_NATIVE_UINT8, 4, dims, x, N, y, 1, mean, std);
    h5_root_classes(f, 2);
    H5Fclose(f);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  int64_t b, e;
  shard(N, 0, &b, &e);
  dpm_dataset d;
  char err[DPM_ERRLEN];
  int rc = dpm_dataset_load(MPI_COMM_WORLD, path, "train", b, e, &d, err);
  CHECK(rc == 0, "nhwc load: %s", err);
  if (rc) return;
  CHECK(d.C == C && d.H == H && d.W == W, "shape %d %d %d", d.C, d.H, d.W);
  int bad = 0;
  for (int64_t i = b; i < e; i++)
    for (int c = 0; c < C; c++)
      for (int h = 0; h < H; h++)
        for (int w = 0; w < W; w++) {
          double want = (x[((i * H + h) * W + w) * C + c] / 255.0 - mean) / std;
          if (fabs(d.x[(i - b) * C * H * W + (c * H + h) * W + w] - want) > 1e-5) bad++;
        }
  CHECK(bad == 0, "%d NCHW values differ", bad);
  dpm_dataset_free(&d);
}

/* ---- CSV ---------------------------------------------------------------------------------------- */

static const char *csv_train =
    "f1, label ,f2,\"f3\"\r\n"
    "1.5,0,-2,3e-3\r\n"
    "0.1,1,7,  -0.25\r\n"
    "\r\n"
    "1e10,2,0,1\r\n"
    "-3.75,2,123456.789,0.0\r\n"
    "2,1,\"5\",-1e-7\r\n"
    "0,0,0,0\r\n";
static const char *csv_test =
    "f1,label,f2,f3\n"
    "9,2,8,7\n"
    "0.3333333,0,1,2\n"
    "-1,1,-1,-1\n";

/* Expected rows of a CSV text: features in order with the label column (index 1) removed. */
static int parse_expected(const char *text, float *x, int32_t *y) {
  char *copy = strdup(text), *save = NULL;
  int n = 0;
  strtok_r(copy, "\r\n", &save);  /* header */
  for (char *line = strtok_r(NULL, "\r\n", &save); line; line = strtok_r(NULL, "\r\n", &save)) {
    char *fs = NULL;
    int k = 0, j = 0;
    for (char *f = strtok_r(line, ",", &fs); f; f = strtok_r(NULL, ",", &fs), k++) {
      while (*f == ' ' || *f == '"') f++;
      if (k == 1)
        y[n] = atoi(f);
      else
        x[n * 3 + j++] = (float)strtod(f, NULL);
    }
    n++;
  }
  free(copy);
  return n;
}

static void test_csv(void) {
  const char *tr = in_dir("train.csv"), *te = in_dir("test.csv"), *out = in_dir("csv.h5");
  char err[DPM_ERRLEN] = "";
  int rc = 0;
  if (rank == 0) {
    write_text(tr, csv_train);
    write_text(te, csv_test);
    rc = dpm_convert_csv(tr, te, "label", out, err);
    CHECK(rc == 0, "csv convert: %s", err);
  }
  if (bcast_rc(rc)) return;
  const char *texts[2] = {csv_train, csv_test}, *splits[2] = {"train", "test"};
  for (int s = 0; s < 2; s++) {
    float x[64];
    int32_t y[16];
    int n = parse_expected(texts[s], x, y);
    CHECK(n == (s ? 3 : 6), "fixture rows %d", n);
    dpm_dataset hdr;
    CHECK(dpm_dataset_probe(out, splits[s], &hdr, err) == 0, "probe: %s", err);
    CHECK(hdr.n_total == n && hdr.C == 3 && hdr.H == 1 && hdr.W == 1 && hdr.num_classes == 3 && !hdr.images,
          "csv probe n %lld C %d K %d", (long long)hdr.n_total, hdr.C, hdr.num_classes);
    int64_t b, e;
    shard(n, s, &b, &e);
    dpm_dataset d;
    rc = dpm_dataset_load(MPI_COMM_WORLD, out, splits[s], b, e, &d, err);
    CHECK(rc == 0, "csv load: %s", err);
    if (rc) continue;
    for (int64_t i = b; i < e; i++) {
      CHECK(d.y[i - b] == y[i], "csv label row %lld: %d vs %d", (long long)i, d.y[i - b], y[i]);
      for (int j = 0; j < 3; j++)
        CHECK(d.x[(i - b) * 3 + j] == x[i * 3 + j], "csv %s row %lld col %d: %g vs %g", splits[s], (long long)i, j,
              (double)d.x[(i - b) * 3 + j], (double)x[i * 3 + j]);
    }
    dpm_dataset_free(&d);
  }
}

/* ---- errors ------------------------------------------------------------------------------------- */

#define EXPECT_ERR(call, ...)                                                                  \
  do {                                                                                         \
    char err_[DPM_ERRLEN] = "";                                                                \
    int rc_ = (call);                                                                          \
    const char *words_[] = {__VA_ARGS__, NULL};                                                \
    int ok_ = rc_ == -1;                                                                       \
    for (int w_ = 0; words_[w_]; w_++) ok_ = ok_ && strstr(err_, words_[w_]) != NULL;         \
    CHECK(ok_, "%s: rc %d, err '%s'", #call, rc_, err_);                                      \
  } while (0)

/* Conversion errors, serial on rank 0: each leaves no output and no temporary file behind. */
static void test_convert_errors(void) {
  if (rank != 0) return;
  const char *out = in_dir("bad.h5");
  uint32_t d3[3] = {NTR, IH, IW}, d1 = NTR, d1short = NTR - 1;
  write_idx_set("e", 1, 0);

  write_idx(in_dir("magic"), 0, 0x801, 3, d3, pix[0], NTR * IH * IW, 0);
  EXPECT_ERR(dpm_convert_idx(in_dir("magic"), in_dir("e-train-labels"), in_dir("e-test-images"),
                             in_dir("e-test-labels"), out, err_), "magic", "magic");
  /* Labels file given as images. */
  EXPECT_ERR(dpm_convert_idx(in_dir("e-train-labels"), in_dir("e-train-labels"), in_dir("e-test-images"),
                             in_dir("e-test-labels"), out, err_), "e-train-labels", "magic");
  write_idx(in_dir("short-labels"), 0, 0x801, 1, &d1short, lab[0], NTR - 1, 0);
  EXPECT_ERR(dpm_convert_idx(in_dir("e-train-images"), in_dir("short-labels"), in_dir("e-test-images"),
                             in_dir("e-test-labels"), out, err_), "mismatch", "7 images", "6 labels");
  write_idx(in_dir("trunc-plain"), 0, 0x803, 3, d3, pix[0], NTR * IH * IW, 5);
  EXPECT_ERR(dpm_convert_idx(in_dir("trunc-plain"), in_dir("e-train-labels"), in_dir("e-test-images"),
                             in_dir("e-test-labels"), out, err_), "trunc-plain", "truncated");
  write_idx(in_dir("trunc-gz"), 1, 0x803, 3, d3, pix[0], NTR * IH * IW, 0);
  truncate_file(in_dir("trunc-gz"), 0.6);
  EXPECT_ERR(dpm_convert_idx(in_dir("trunc-gz"), in_dir("e-train-labels"), in_dir("e-test-images"),
                             in_dir("e-test-labels"), out, err_), "trunc-gz", "truncated");
  write_idx(in_dir("trunc-header"), 0, 0x803, 3, d3, pix[0], 0, 6);
  EXPECT_ERR(dpm_convert_idx(in_dir("trunc-header"), in_dir("e-train-labels"), in_dir("e-test-images"),
                             in_dir("e-test-labels"), out, err_), "trunc-header", "truncated", "header");
  write_idx(in_dir("extra"), 0, 0x801, 1, &d1, pix[0], NTR, 0);
  FILE *f = fopen(in_dir("extra"), "ab");
  fputc(1, f);
  fclose(f);
  EXPECT_ERR(dpm_convert_idx(in_dir("e-train-images"), in_dir("extra"), in_dir("e-test-images"),
                             in_dir("e-test-labels"), out, err_), "extra", "unexpected data");
  EXPECT_ERR(dpm_convert_idx(in_dir("nope"), in_dir("e-train-labels"), in_dir("e-test-images"),
                             in_dir("e-test-labels"), out, err_), "nope", "cannot open");
  uint32_t d3b[3] = {NTE, IH + 1, IW};
  write_idx(in_dir("big-test"), 0, 0x803, 3, d3b, pix[1], NTE * (IH + 1) * IW, 0);
  EXPECT_ERR(dpm_convert_idx(in_dir("e-train-images"), in_dir("e-train-labels"), in_dir("big-test"),
                             in_dir("e-test-labels"), out, err_), "size mismatch");
  uint8_t lab_gap[NTR];
  for (int i = 0; i < NTR; i++) lab_gap[i] = (uint8_t)(1 + i % 2);  /* no class 0 */
  write_idx(in_dir("gap-labels"), 0, 0x801, 1, &d1, lab_gap, NTR, 0);
  EXPECT_ERR(dpm_convert_idx(in_dir("e-train-images"), in_dir("gap-labels"), in_dir("e-test-images"),
                             in_dir("e-test-labels"), out, err_), "gap-labels", "label 0");
  uint8_t lab_big[NTE] = {0, 1, 2, 7, 0};
  uint32_t d1te = NTE;
  write_idx(in_dir("big-labels"), 0, 0x801, 1, &d1te, lab_big, NTE, 0);
  EXPECT_ERR(dpm_convert_idx(in_dir("e-train-images"), in_dir("e-train-labels"), in_dir("e-test-images"),
                             in_dir("big-labels"), out, err_), "big-labels", "label 7", "item 3");

  /* CSV */
  const char *te = in_dir("e-test.csv");
  write_text(te, "a,y,b\n1,0,2\n");
  struct {
    const char *text, *words[3];
  } cases[] = {
      {"a,y,b\n1,0,2\n3,1,nan\n", {"bad.csv:3:5", "'b'", "not finite"}},
      {"a,y,b\n1,0,2\n3,1,-inf\n", {"bad.csv:3:5", "not finite", NULL}},
      {"a,y,b\n1,0,2\n3,1,x7\n", {"bad.csv:3:5", "not a number", NULL}},
      {"a,y,b\n1,0,2\n3,1,\n", {"bad.csv:3:5", "empty value", NULL}},
      {"a,y,b\n1,0,2\n3,1.5,0\n", {"bad.csv:3:3", "not an integer", NULL}},
      {"a,y,b\n1,0,2\n3,-1,0\n", {"bad.csv:3:3", "label -1", NULL}},
      {"a,y,b\n1,0,2\n3,1\n", {"bad.csv:3:", "expected 3 fields", "found 2"}},
      {"a,y,b\n1,1,2\n3,2,0\n", {"bad.csv", "label 0", NULL}},
      {"a,y,b\n1,0,1e39\n", {"bad.csv:2:5", "float32", NULL}},
      {"a,y,b\n", {"bad.csv", "no data rows", NULL}},
      {"", {"bad.csv", "empty file", NULL}},
      {"a,yy,b\n1,0,2\n", {"bad.csv:1", "label column 'y' not found", NULL}},
      {"y\n1\n", {"bad.csv:1", "feature", NULL}},
  };
  const char *bad = in_dir("bad.csv");
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    write_text(bad, cases[k].text);
    char err[DPM_ERRLEN] = "";
    int rc = dpm_convert_csv(bad, te, "y", out, err);
    int ok = rc == -1;
    for (int w = 0; w < 3 && cases[k].words[w]; w++) ok = ok && strstr(err, cases[k].words[w]);
    CHECK(ok, "csv case %zu: rc %d err '%s'", k, rc, err);
  }
  write_text(bad, "a,y,b\n1,0,2\n3,1,4\n");
  write_text(in_dir("bad-test.csv"), "a,y,c\n1,0,2\n");
  EXPECT_ERR(dpm_convert_csv(bad, in_dir("bad-test.csv"), "y", out, err_), "bad-test.csv:1:5", "'c'", "'b'");
  write_text(in_dir("bad-test.csv"), "a,y,b\n1,0,2\n1,2,2\n");
  EXPECT_ERR(dpm_convert_csv(bad, in_dir("bad-test.csv"), "y", out, err_), "bad-test.csv:3:3", "label 2",
             "0..1");
  EXPECT_ERR(dpm_convert_csv(in_dir("nope.csv"), te, "y", out, err_), "nope.csv", "cannot open");
  EXPECT_ERR(dpm_convert_csv(bad, te, "y", in_dir("no-such-dir/out.h5"), err_), "no-such-dir", "cannot create");

  CHECK(!exists(out), "a failed conversion left %s", out);
  CHECK(tmp_files_in_dir() == 0, "a failed conversion left a temporary file");

  /* A successful conversion replaces an existing file. */
  write_text(out, "old contents");
  CHECK(dpm_convert_csv(bad, te, "y", out, (char[DPM_ERRLEN]){0}) == 0, "convert over an existing file");
  dpm_dataset hdr;
  char err[DPM_ERRLEN];
  CHECK(dpm_dataset_probe(out, "train", &hdr, err) == 0 && hdr.n_total == 2, "replaced file: %s", err);
}

/* Load errors: collective; every rank gets -1 and the same message. */
static void test_load_errors(void) {
  const char *lab_bad = in_dir("label-range.h5"), *nan = in_dir("nan.h5"), *len = in_dir("len.h5"),
             *dbl = in_dir("double.h5"), *noy = in_dir("noy.h5"), *noattr = in_dir("noattr.h5"),
             *text = in_dir("text.h5"), *trunc = in_dir("trunc.h5");
  if (rank == 0) {
    float xf[6 * 2];
    double xd[6 * 2];
    int32_t y[6] = {0, 1, 2, 1, 3, 0};
    for (int k = 0; k < 12; k++) xf[k] = xd[k] = k * 0.5;
    hsize_t d2[2] = {6, 2};
    hid_t f = H5Fcreate(lab_bad, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    h5_split(f, "train", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, d2, xf, 6, y, 0, 0, 0);
    h5_root_classes(f, 3);
    H5Fclose(f);
    y[4] = 1;
    xf[2 * 3 + 1] = NAN;
    f = H5Fcreate(nan, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    h5_split(f, "train", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, d2, xf, 6, y, 0, 0, 0);
    h5_root_classes(f, 3);
    H5Fclose(f);
    xf[2 * 3 + 1] = 0;
    f = H5Fcreate(len, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    h5_split(f, "train", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, d2, xf, 5, y, 0, 0, 0);
    h5_root_classes(f, 3);
    H5Fclose(f);
    f = H5Fcreate(dbl, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    h5_split(f, "train", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 2, d2, xd, 6, y, 0, 0, 0);
    h5_root_classes(f, 3);
    H5Fclose(f);
    f = H5Fcreate(noy, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    h5_split(f, "train", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, d2, xf, 6, NULL, 0, 0, 0);
    h5_root_classes(f, 3);
    H5Fclose(f);
    uint8_t xu[6 * 2 * 2] = {0};
    hsize_t d4[4] = {6, 2, 2, 1};
    f = H5Fcreate(noattr, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    h5_split(f, "train", H5T_STD_U8LE, H5T_NATIVE_UINT8, 4, d4, xu, 6, y, 0, 0, 0);
    H5Fclose(f);
    write_text(text, "this is not an HDF5 file\n");
    copy_file(in_dir("gz.h5"), trunc);
    truncate_file(trunc, 0.5);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  int64_t b, e;
  shard(6, 0, &b, &e);
  dpm_dataset d;
  EXPECT_ERR(dpm_dataset_load(MPI_COMM_WORLD, lab_bad, "train", b, e, &d, err_), "label-range.h5", "/train/y",
             "row 4", "label 3");
  EXPECT_ERR(dpm_dataset_load(MPI_COMM_WORLD, nan, "train", b, e, &d, err_), "nan.h5", "/train/x", "row 3",
             "not finite");
  EXPECT_ERR(dpm_dataset_load(MPI_COMM_WORLD, len, "train", b, e, &d, err_), "len.h5", "/train/x", "/train/y",
             "6 examples", "5 labels");
  EXPECT_ERR(dpm_dataset_load(MPI_COMM_WORLD, dbl, "train", b, e, &d, err_), "double.h5", "/train/x",
             "unsupported element type");
  EXPECT_ERR(dpm_dataset_load(MPI_COMM_WORLD, noy, "train", b, e, &d, err_), "noy.h5", "/train/y", "missing");
  EXPECT_ERR(dpm_dataset_load(MPI_COMM_WORLD, noy, "test", b, e, &d, err_), "noy.h5", "/test", "missing");
  EXPECT_ERR(dpm_dataset_load(MPI_COMM_WORLD, noattr, "train", b, e, &d, err_), "noattr.h5", "num_classes",
             "missing");
  EXPECT_ERR(dpm_dataset_load(MPI_COMM_WORLD, in_dir("missing.h5"), "train", b, e, &d, err_), "missing.h5",
             "cannot open", "No such file");
  EXPECT_ERR(dpm_dataset_load(MPI_COMM_WORLD, text, "train", b, e, &d, err_), "text.h5", "not an HDF5 file");
  EXPECT_ERR(dpm_dataset_load(MPI_COMM_WORLD, trunc, "train", b, e, &d, err_), "trunc.h5");
  EXPECT_ERR(dpm_dataset_probe(trunc, "train", &d, err_), "trunc.h5");
  EXPECT_ERR(dpm_dataset_load(MPI_COMM_WORLD, lab_bad, "train", b, e + 1 + rank, &d, err_), "label-range.h5",
             "shard", "outside");
  EXPECT_ERR(dpm_dataset_probe(in_dir("missing.h5"), "train", &d, err_), "missing.h5", "cannot open");
  EXPECT_ERR(dpm_dataset_probe(text, "train", &d, err_), "not an HDF5 file");
  /* Only the rank whose rows hold the bad label sees it, yet every rank fails with its message. */
  EXPECT_ERR(dpm_dataset_load(MPI_COMM_WORLD, lab_bad, "train", rank == nranks - 1 ? 4 : 0,
                              rank == nranks - 1 ? 5 : 0, &d, err_), "row 4");
}

static void remove_dir(void) {
  DIR *d = opendir(dir);
  struct dirent *e;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlink(in_dir(e->d_name));
  closedir(d);
  rmdir(dir);
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  if (rank == 0) {
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/dpm_test_data_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(dir)) dir[0] = '\0';
  }
  MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
  if (!dir[0]) {
    CHECK(0, "cannot create a temporary directory");
    return dpm_test_finish();
  }
  make_idx_data();

  test_idx("gz", 1, 1);
  test_idx("plain", 0, 0);
  test_idx("mixed", 1, 0);
  test_nhwc_to_nchw();
  test_csv();
  test_convert_errors();
  test_load_errors();

  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) remove_dir();
  return dpm_test_finish();
}
