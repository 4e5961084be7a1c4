/* Token datasets (issue 15): text conversion checked against hand-written rows (EOT placement, padding,
 * windows) and against a reconstruction of every document from its windows (each target in exactly one
 * window, no document across windows of two splits, the split of a document independent of the
 * others); .npy conversion of every dtype and format version against an independent .npy writer; sharded
 * loads against a 1-rank load, the digest on every rank count; and every user error path.
 */
// ctest: np=1,2,3
#include <dirent.h>
#include <hdf5.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dpmpi/io/data.h"
#include "testing.h"

static int rank, nranks;
static char dir[128];

static const char *in_dir(const char *name) {
  static char buf[256][400];
  static int k = 0;
  k = (k + 1) % 256;
  snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
  return buf[k];
}

static void write_bytes(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (n) fwrite(data, 1, n, f);
  fclose(f);
}
static void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

static int tmp_files_in_dir(void) {
  DIR *d = opendir(dir);
  struct dirent *e;
  int n = 0;
  while ((e = readdir(d))) n += strstr(e->d_name, ".tmp.") != NULL;
  closedir(d);
  return n;
}

/* Rank 0 runs a conversion; every rank gets its status and message. */
static int bcast_result(int rc, char *err) {
  MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Bcast(err, DPM_ERRLEN, MPI_CHAR, 0, MPI_COMM_WORLD);
  MPI_Barrier(MPI_COMM_WORLD);
  return rc;
}

/* (every rank has finished reading the previous output before rank 0 replaces it) */
static int text_convert(const dpm_text_opts *o, const char *out, dpm_text_counts c[2], char *err) {
  int rc = 0;
  MPI_Barrier(MPI_COMM_WORLD);
  err[0] = '\0';
  if (rank == 0) rc = dpm_convert_text(o, out, c, err);
  if (c) MPI_Bcast(c, (int)(2 * sizeof *c), MPI_BYTE, 0, MPI_COMM_WORLD);
  return bcast_result(rc, err);
}

static int npy_convert(const char *tr, const char *te, int vocab, int pad, const char *out, char *err) {
  int rc = 0;
  MPI_Barrier(MPI_COMM_WORLD);
  err[0] = '\0';
  if (rank == 0) rc = dpm_convert_npy(tr, te, vocab, pad, out, err);
  return bcast_result(rc, err);
}

/* The whole split, read by this rank alone. */
static int load_all(const char *path, const char *split, dpm_dataset *d, char *err) {
  dpm_dataset h;
  if (dpm_dataset_probe(path, split, &h, err)) return -1;
  return dpm_dataset_load(MPI_COMM_SELF, path, split, 0, h.n_total, d, err);
}

/* ---- text: hand-written rows --------------------------------------------------------------------- */

enum { EOT = 256, PAD = 255 };

/* T = 4: "abc" fills one window exactly (EOT a b c | EOT as the last target), "abcdefg" needs two with
 * stride 4 (the second starts at d: targets e f g EOT), "ab" is padded, "" is skipped. */
static void test_text_rows(void) {
  const char *a = in_dir("a.txt"), *b = in_dir("b.txt"), *c = in_dir("c.txt"), *e = in_dir("e.txt"),
             *out = in_dir("rows.h5");
  if (rank == 0) {
    write_text(a, "abc");
    write_text(b, "abcdefg");
    write_text(c, "ab");
    write_text(e, "");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  const char *train[] = {a, b, e}, *test[] = {c};
  dpm_text_opts o = {.train = train, .n_train = 3, .test = test, .n_test = 1, .context = 4};
  dpm_text_counts n[2];
  char err[DPM_ERRLEN];
  CHECK(text_convert(&o, out, n, err) == 0, "convert: %s", err);
  const int32_t want_train[3][5] = {{EOT, 'a', 'b', 'c', EOT}, {EOT, 'a', 'b', 'c', 'd'}, {'d', 'e', 'f', 'g', EOT}};
  const int32_t want_test[1][5] = {{EOT, 'a', 'b', EOT, PAD}};
  dpm_dataset d;
  CHECK(load_all(out, "train", &d, err) == 0, "load train: %s", err);
  CHECK(d.kind == DPM_DATA_TOKENS && d.n_total == 3 && d.T == 4 && d.vocab == 257 && d.pad_id == PAD &&
        d.eot_id == EOT && strcmp(d.tokenizer, "bytes") == 0 && !d.x && !d.y && d.checksums,
        "train header: kind %d n %lld T %d vocab %d pad %d eot %d tokenizer '%s'", d.kind, (long long)d.n_total, d.T,
        d.vocab, d.pad_id, d.eot_id, d.tokenizer);
  if (d.n_total == 3) CHECK(memcmp(d.tok, want_train, sizeof want_train) == 0, "train rows differ from the hand-written ones");
  dpm_dataset_free(&d);
  CHECK(load_all(out, "test", &d, err) == 0, "load test: %s", err);
  CHECK(d.n_total == 1 && memcmp(d.tok, want_test, sizeof want_test) == 0, "test row differs");
  dpm_dataset_free(&d);
  CHECK(n[0].documents == 2 && n[0].empty == 1 && n[0].windows == 3 && n[0].targets == 4 + 8 && n[0].padded == 0 &&
        n[0].max_windows == 2 && n[0].truncated == 0, "train counts: docs %lld empty %lld windows %lld targets %lld "
        "padded %lld max %lld", (long long)n[0].documents, (long long)n[0].empty, (long long)n[0].windows,
        (long long)n[0].targets, (long long)n[0].padded, (long long)n[0].max_windows);
  CHECK(n[1].documents == 1 && n[1].windows == 1 && n[1].targets == 3 && n[1].padded == 1 && n[1].pad_tokens == 1,
        "test counts");

  /* per document: "abcdefg" keeps its first window only and is counted as truncated */
  o.per_document = 1;
  CHECK(text_convert(&o, out, n, err) == 0, "per-document convert: %s", err);
  CHECK(load_all(out, "train", &d, err) == 0 && d.n_total == 2, "per-document train: %s", err);
  if (d.n_total == 2)
    CHECK(memcmp(d.tok, want_train, sizeof want_train[0] * 2) == 0, "per-document rows differ");
  dpm_dataset_free(&d);
  CHECK(n[0].truncated == 1 && n[0].dropped == 4 && n[0].windows == 2 && n[0].max_windows == 1,
        "per-document counts: truncated %lld dropped %lld", (long long)n[0].truncated, (long long)n[0].dropped);

  /* T = 1: every window is (previous id, next id); "ab" -> EOT a | a b | b EOT */
  const char *one[] = {c};
  dpm_text_opts o1 = {.train = one, .n_train = 1, .test = train, .n_test = 1, .context = 1};
  CHECK(text_convert(&o1, out, n, err) == 0, "T = 1 convert: %s", err);
  const int32_t want1[3][2] = {{EOT, 'a'}, {'a', 'b'}, {'b', EOT}};
  CHECK(load_all(out, "train", &d, err) == 0 && d.n_total == 3 && d.T == 1 && memcmp(d.tok, want1, sizeof want1) == 0,
        "T = 1 rows: %s", err);
  dpm_dataset_free(&d);
}

/* ---- text: a corpus, reconstructed from its windows ----------------------------------------------- */

enum { NDOC = 240 };
static char *docs[NDOC];

/* Documents of varied lengths (0 to ~300 bytes, multi-byte UTF-8 included), all distinct. */
static void make_docs(void) {
  static const char *words[] = {"privacy", "gradient", "caf\xc3\xa9", "\xe2\x82\xac", "na\xc3\xafve", "\xf0\x9f\x98\x80",
                                "noise", "clip", "\n", "\t", "mpi", "\xf4\x8f\xbf\xbf"};
  uint64_t s = 12345;
  for (int i = 0; i < NDOC; i++) {
    docs[i] = malloc(2048);
    int len = snprintf(docs[i], 2048, "doc %d:", i);
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    int words_n = (int)((s >> 33) % 60);
    for (int w = 0; w < words_n; w++) {
      s = s * 6364136223846793005ULL + 1442695040888963407ULL;
      len += snprintf(docs[i] + len, (size_t)(2048 - len), " %s", words[(s >> 33) % 12]);
    }
    docs[i][len] = '\0';
  }
}

/* Rebuild the documents of a split from its rows: a row starting with EOT starts a document; each
 * row's targets row[1..T] are appended up to the closing EOT or padding. Returns the count; rows that
 * break the layout (an id after the closing EOT other than padding, a continuation row without a
 * document) make it return -1. */
static int rebuild(const dpm_dataset *d, char **out, int cap) {
  const int L = d->T + 1;
  int n = -1;
  size_t len = 0;
  int open = 0, last = -1;
  for (int64_t r = 0; r < d->n_total; r++) {
    const int32_t *row = d->tok + r * L;
    if (open && row[0] != last) return -1; /* a continuation starts at the previous window's last target */
    if (row[0] == EOT) {
      if (open) return -1; /* the previous document never closed */
      if (++n >= cap) return -1;
      out[n] = malloc(4096);
      len = 0;
      open = 1;
    } else if (!open || row[0] == PAD) {
      return -1;
    }
    for (int j = 1; j < L; j++) {
      if (!open) {
        if (row[j] != PAD) return -1;
        continue;
      }
      if (row[j] == EOT) {
        open = 0;
        out[n][len] = '\0';
        continue;
      }
      if (row[j] < 0 || row[j] > 255 || row[j] == PAD || len >= 4095) return -1;
      out[n][len++] = (char)row[j];
      last = row[j];
    }
  }
  return open ? -1 : n + 1;
}

/* Index of doc text in docs, -1 if none. */
static int find_doc(const char *text) {
  for (int i = 0; i < NDOC; i++)
    if (strcmp(docs[i], text) == 0) return i;
  return -1;
}

/* split_of[i]: 0 train, 1 test, for every document of the conversion; checks the reconstruction of both
 * splits: every document exactly once. */
static void check_rebuild(const char *out, const char *what, int *split_of, int ndocs_expected) {
  char err[DPM_ERRLEN];
  for (int i = 0; i < NDOC; i++) split_of[i] = -1;
  int total = 0;
  for (int s = 0; s < 2; s++) {
    dpm_dataset d;
    if (load_all(out, s ? "test" : "train", &d, err)) {
      CHECK(0, "%s: load: %s", what, err);
      return;
    }
    char *got[NDOC + 8];
    int n = rebuild(&d, got, NDOC + 8);
    CHECK(n >= 0, "%s: %s rows do not rebuild into documents (targets overlap, gap or bad padding)", what,
          s ? "test" : "train");
    for (int k = 0; k < n; k++) {
      int i = find_doc(got[k]);
      CHECK(i >= 0, "%s: rebuilt document %d of %s is not an input document", what, k, s ? "test" : "train");
      if (i >= 0) {
        CHECK(split_of[i] == -1, "%s: document %d appears twice (split %d and %d)", what, i, split_of[i], s);
        split_of[i] = s;
      }
      free(got[k]);
    }
    total += n > 0 ? n : 0;
    dpm_dataset_free(&d);
  }
  CHECK(total == ndocs_expected, "%s: %d documents rebuilt, expected %d", what, total, ndocs_expected);
}

static const char *doc_file(int i) {
  static char names[40][400];
  snprintf(names[i], sizeof names[i], "%s/doc%d.txt", dir, i);
  return names[i];
}

static void test_text_corpus(void) {
  make_docs();
  /* three files: one document per file for the first 40, a '%%' separated file and a blank-line one */
  const char *sep_file = in_dir("sep.txt");
  const char *files[42];
  if (rank == 0) {
    for (int i = 0; i < 40; i++) write_text(doc_file(i), docs[i]);
    FILE *f = fopen(sep_file, "wb");
    fputs("%%\n", f); /* a leading and a trailing separator: two empty documents, skipped */
    for (int i = 40; i < NDOC; i++) fprintf(f, "%s\n%s", docs[i], i % 3 ? "%%\n" : "%%\r\n");
    fclose(f);
  }
  for (int i = 0; i < 40; i++) files[i] = doc_file(i);
  MPI_Barrier(MPI_COMM_WORLD);
  /* a separated document's text is its lines with their newlines: docs[i] + "\n" */
  for (int i = 40; i < NDOC; i++) strcat(docs[i], "\n");

  char err[DPM_ERRLEN];
  dpm_text_counts n[2];
  int split_a[NDOC], split_b[NDOC];
  const char *out = in_dir("corpus.h5");
  const int contexts[3] = {7, 64, 1000};
  for (int ci = 0; ci < 3; ci++) {
    /* the separated file, split by hash */
    dpm_text_opts o = {.train = &sep_file, .n_train = 1, .test_fraction = 0.3, .separator = "%%",
                       .context = contexts[ci]};
    CHECK(text_convert(&o, out, n, err) == 0, "T = %d: convert: %s", contexts[ci], err);
    char what[64];
    snprintf(what, sizeof what, "separator, T = %d", contexts[ci]);
    check_rebuild(out, what, split_a, NDOC - 40);
    CHECK(n[0].empty + n[1].empty == 2 && n[0].documents + n[1].documents == NDOC - 40, "%s: counts", what);
    int in_test = 0;
    for (int i = 40; i < NDOC; i++) in_test += split_a[i] == 1;
    /* 200 documents at 0.3: 60 expected, standard deviation 6.5 */
    CHECK(in_test > 30 && in_test < 90, "%s: %d of 200 documents in test at fraction 0.3", what, in_test);
    if (ci == 0) memcpy(split_b, split_a, sizeof split_a);
    for (int i = 40; i < NDOC; i++)
      CHECK(split_a[i] == split_b[i], "%s: document %d changed split with T", what, i);
    /* windows never overlap in targets and cover the document: sum of targets = bytes + EOT per document */
    int64_t want_targets = 0;
    for (int i = 40; i < NDOC; i++) want_targets += (int64_t)strlen(docs[i]) + 1;
    CHECK(n[0].targets + n[1].targets == want_targets, "%s: %lld targets, expected %lld", what,
          (long long)(n[0].targets + n[1].targets), (long long)want_targets);
  }
  /* the split of a document depends on it alone: the same documents among other ones land the same */
  const char *all[41];
  for (int i = 0; i < 40; i++) all[i] = files[i];
  all[40] = sep_file;
  dpm_text_opts o = {.train = all, .n_train = 41, .test_fraction = 0.3, .separator = "%%", .context = 50};
  CHECK(text_convert(&o, out, n, err) == 0, "41 files: %s", err);
  /* a file's last line before EOF has no separator: per-file docs 0..39 have no trailing "\n" */
  check_rebuild(out, "41 files", split_a, NDOC);
  for (int i = 40; i < NDOC; i++) CHECK(split_a[i] == split_b[i], "document %d changed split among other files", i);
  /* one document per file (no separator), the test split by file */
  dpm_text_opts of = {.train = files, .n_train = 30, .test = files + 30, .n_test = 10, .context = 16};
  CHECK(text_convert(&of, out, n, err) == 0, "by file: %s", err);
  check_rebuild(out, "by file", split_a, 40);
  for (int i = 0; i < 40; i++) CHECK(split_a[i] == (i >= 30), "by file: document %d in split %d", i, split_a[i]);
  CHECK(n[0].documents == 30 && n[1].documents == 10, "by file: counts %lld %lld", (long long)n[0].documents,
        (long long)n[1].documents);
  /* per document with a context longer than every document: one padded row per document */
  of.per_document = 1, of.context = 600;
  CHECK(text_convert(&of, out, n, err) == 0, "per-document by file: %s", err);
  check_rebuild(out, "per-document", split_a, 40);
  CHECK(n[0].windows == 30 && n[0].truncated == 0 && n[0].padded == 30, "per-document: windows %lld",
        (long long)n[0].windows);
  /* per document with a short context: a document is one row, truncated to its first T targets */
  of.context = 8;
  CHECK(text_convert(&of, out, n, err) == 0, "per-document T = 8: %s", err);
  dpm_dataset d;
  CHECK(load_all(out, "train", &d, err) == 0 && d.n_total == 30, "per-document T = 8 load: %s", err);
  int bad = 0;
  for (int i = 0; i < 30 && d.n_total == 30; i++) {
    const int32_t *row = d.tok + i * 9;
    const size_t len = strlen(docs[i]);
    bad += row[0] != EOT;
    for (int j = 1; j <= 8; j++)
      bad += row[j] != ((size_t)j <= len ? (unsigned char)docs[i][j - 1] : (size_t)j == len + 1 ? EOT : PAD);
  }
  CHECK(bad == 0, "per-document T = 8: %d ids differ", bad);
  dpm_dataset_free(&d);
  for (int i = 0; i < NDOC; i++) free(docs[i]);
}

/* ---- text: errors -------------------------------------------------------------------------------- */

static void expect_text_error(const dpm_text_opts *o, const char *want, const char *what) {
  char err[DPM_ERRLEN];
  const char *out = in_dir("bad_text.h5");
  int rc = text_convert(o, out, NULL, err);
  CHECK(rc != 0 && strstr(err, want), "%s: rc %d, error '%s', expected '%s'", what, rc, err, want);
  CHECK(access(out, F_OK) != 0, "%s: an output file was left", what);
  if (rank == 0) CHECK(tmp_files_in_dir() == 0, "%s: temporary file left", what);
}

static void test_text_errors(void) {
  static const struct {
    const char *bytes, *want, *what;
  } bad[] = {
      {"ok\nok\nab\xff\n", ":3:3: invalid UTF-8 (byte 0xFF)", "byte 0xFF"},
      {"\xc0\x80", ":1:1: invalid UTF-8 (byte 0xC0)", "overlong NUL"},
      {"x\xe0\x80\x80", ":1:2: invalid UTF-8 (byte 0xE0)", "overlong 3-byte"},
      {"\xed\xa0\x80", ":1:1: invalid UTF-8 (byte 0xED)", "surrogate"},
      {"a\n\x80", ":2:1: invalid UTF-8 (byte 0x80)", "lone continuation byte"},
      {"\xf4\x90\x80\x80", ":1:1: invalid UTF-8 (byte 0xF4)", "above U+10FFFF"},
      {"\xf5\x80\x80\x80", ":1:1: invalid UTF-8 (byte 0xF5)", "0xF5"},
      {"abc\xe2\x82", ":1:4: invalid UTF-8 (byte 0xE2)", "sequence cut by the end of the file"},
      {"\xc3(", ":1:1: invalid UTF-8 (byte 0xC3)", "bad continuation"},
  };
  const char *good = in_dir("good.txt"), *badf = in_dir("bad.txt"), *empty = in_dir("empty.txt");
  if (rank == 0) {
    write_text(good, "one document\n");
    write_text(empty, "");
  }
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    if (rank == 0) write_text(badf, bad[k].bytes);
    MPI_Barrier(MPI_COMM_WORLD);
    const char *tr[] = {good}, *te[] = {badf};
    dpm_text_opts o = {.train = tr, .n_train = 1, .test = te, .n_test = 1, .context = 8};
    char want[512];
    snprintf(want, sizeof want, "%s%s", badf, bad[k].want);
    expect_text_error(&o, want, bad[k].what);
  }
  const char *tr[] = {good}, *te[] = {good}, *none[] = {in_dir("no-such.txt")}, *em[] = {empty};
  dpm_text_opts o = {.train = tr, .n_train = 1, .test = te, .n_test = 1, .context = 8};
  expect_text_error(&o, "is both a training and a test file", "same file in both splits");
  o.test = none;
  expect_text_error(&o, "no-such.txt: cannot open", "missing file");
  o.test = em;
  expect_text_error(&o, "no test documents", "empty test file");
  o.test = te, o.train = em;
  expect_text_error(&o, "no train documents", "empty training file");
  o.train = tr, o.test = em, o.context = 0;
  expect_text_error(&o, "--context 0", "context 0");
  dpm_text_opts f = {.train = tr, .n_train = 1, .test_fraction = 0.01, .context = 8};
  expect_text_error(&f, "no document of the 1 went to the test split", "fraction leaving test empty");
  f.test_fraction = 1.5;
  expect_text_error(&f, "--test-fraction 1.5", "fraction out of range");
}

/* ---- .npy: an independent writer -------------------------------------------------------------------- */

/* A .npy file: magic, version major.0, header dict (padded with spaces to a multiple of 64, ending in
 * '\n', as NumPy writes it), then the data. header NULL: the usual dict for descr, fortran, shape. */
static void write_npy(const char *path, int major, const char *descr, const char *fortran, const char *shape,
                      const void *data, size_t nbytes, const char *header) {
  char dict[512];
  if (header) snprintf(dict, sizeof dict, "%s", header);
  else snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }", descr, fortran, shape);
  const size_t pre = major == 1 ? 10 : 12;
  size_t hl = strlen(dict) + 1;
  while ((pre + hl) % 64) hl++;
  unsigned char *buf = malloc(pre + hl + nbytes);
  memcpy(buf, "\x93NUMPY", 6);
  buf[6] = (unsigned char)major, buf[7] = 0;
  if (major == 1) buf[8] = (unsigned char)hl, buf[9] = (unsigned char)(hl >> 8);
  else buf[8] = (unsigned char)hl, buf[9] = (unsigned char)(hl >> 8), buf[10] = 0, buf[11] = 0;
  memset(buf + pre, ' ', hl);
  memcpy(buf + pre, dict, strlen(dict));
  buf[pre + hl - 1] = '\n';
  if (nbytes) memcpy(buf + pre + hl, data, nbytes);
  write_bytes(path, buf, pre + hl + nbytes);
  free(buf);
}

/* ids (n x L) as little-endian elements of size 2, 4 or 8 */
static size_t pack(const int64_t *ids, size_t count, int size, unsigned char *out) {
  for (size_t i = 0; i < count; i++)
    for (int b = 0; b < size; b++) out[i * (size_t)size + (size_t)b] = (unsigned char)((uint64_t)ids[i] >> (8 * b));
  return count * (size_t)size;
}

static void test_npy_roundtrip(void) {
  enum { N = 7, L = 5, NT = 3 };
  static const struct {
    const char *descr;
    int size;
    int64_t lo, hi; /* id range exercised */
  } types[] = {{"<i4", 4, 0, 2147483646}, {"=i4", 4, 0, 99}, {"<i8", 8, 0, 2147483646}, {"=i8", 8, 0, 1000},
               {"<u2", 2, 0, 65535}, {"=u2", 2, 0, 65535}};
  const char *tr = in_dir("tr.npy"), *te = in_dir("te.npy"), *out = in_dir("npy.h5");
  char err[DPM_ERRLEN];
  for (size_t t = 0; t < sizeof types / sizeof types[0]; t++)
    for (int major = 1; major <= 3; major++) {
      const int64_t vocab = types[t].hi + 1;
      const int pad = types[t].size == 2 ? -1 : -100; /* u2 holds no negative id: no pad */
      int64_t ids[N * L], tids[NT * L];
      for (int k = 0; k < N * L; k++) ids[k] = types[t].lo + (int64_t)((k * 2654435761u) % (uint64_t)vocab);
      ids[3] = types[t].hi, ids[4] = 0; /* both ends of the vocabulary */
      if (pad != -1) ids[L + 4] = pad, ids[L + 3] = pad; /* padding at the end of row 1 */
      for (int k = 0; k < NT * L; k++) tids[k] = (k * 7) % vocab;
      unsigned char raw[N * L * 8], traw[NT * L * 8];
      char shape[32];
      if (rank == 0) {
        size_t nb = pack(ids, N * L, types[t].size, raw);
        snprintf(shape, sizeof shape, "(%d, %d)", N, L);
        write_npy(tr, major, types[t].descr, "False", shape, raw, nb, NULL);
        nb = pack(tids, NT * L, types[t].size, traw);
        snprintf(shape, sizeof shape, "(%d, %d)", NT, L);
        write_npy(te, major, types[t].descr, "False", shape, traw, nb, NULL);
      }
      MPI_Barrier(MPI_COMM_WORLD);
      int rc = npy_convert(tr, te, (int)vocab, pad, out, err);
      CHECK(rc == 0, "%s v%d.0: %s", types[t].descr, major, err);
      if (rc) continue;
      dpm_dataset d;
      rc = load_all(out, "train", &d, err);
      CHECK(rc == 0 && d.kind == DPM_DATA_TOKENS && d.n_total == N && d.T == L - 1 && d.vocab == vocab &&
            d.pad_id == pad && d.eot_id == -1 && strcmp(d.tokenizer, "external") == 0,
            "%s v%d.0: header (%s)", types[t].descr, major, err);
      int bad = 0;
      for (int k = 0; k < N * L && !rc; k++) bad += d.tok[k] != ids[k];
      CHECK(!rc && bad == 0, "%s v%d.0: %d ids differ", types[t].descr, major, bad);
      dpm_dataset_free(&d);
      rc = load_all(out, "test", &d, err);
      bad = 0;
      for (int k = 0; k < NT * L && !rc; k++) bad += d.tok[k] != tids[k];
      CHECK(!rc && d.n_total == NT && bad == 0, "%s v%d.0 test: %s, %d differ", types[t].descr, major, err, bad);
      dpm_dataset_free(&d);
    }
}

static void expect_npy_error(const char *want, const char *what, int vocab, int pad) {
  char err[DPM_ERRLEN];
  const char *out = in_dir("bad_npy.h5");
  int rc = npy_convert(in_dir("x.npy"), in_dir("ok.npy"), vocab, pad, out, err);
  CHECK(rc != 0 && strstr(err, want), "%s: rc %d, error '%s', expected '%s'", what, rc, err, want);
  CHECK(access(out, F_OK) != 0, "%s: an output file was left", what);
}

static void test_npy_errors(void) {
  const char *x = in_dir("x.npy"), *ok = in_dir("ok.npy");
  int32_t good[6] = {1, 2, 3, 4, 5, 6};
  if (rank == 0) write_npy(ok, 1, "<i4", "False", "(2, 3)", good, sizeof good, NULL);
  static const struct {
    int major;
    const char *descr, *fortran, *shape, *header;
    int nvals, cut, extra;
    int32_t v0, v4;
    const char *want, *what;
  } cases[] = {
      {1, "<i4", "False", "(2, 3)", NULL, 6, 0, 0, 10, 1, "row 0, column 0: token id 10 is outside [0, 10) (--vocab 10) and is not the pad id -100", "id = vocab"},
      {1, "<i4", "False", "(2, 3)", NULL, 6, 0, 0, 1, -5, "row 1, column 1: token id -5 is outside [0, 10)", "negative id"},
      {2, "<i4", "False", "(2, 3)", NULL, 6, 0, 0, 1, -100, NULL, "pad id accepted (not an error: checked below)"},
      {1, "<i4", "True", "(2, 3)", NULL, 6, 0, 0, 1, 1, "fortran_order is True", "fortran order"},
      {1, "<f4", "False", "(2, 3)", NULL, 6, 0, 0, 1, 1, "dtype '<f4' is not supported (floating point", "float32"},
      {1, ">i4", "False", "(2, 3)", NULL, 6, 0, 0, 1, 1, "(big-endian", "big-endian"},
      {1, "|O", "False", "(2,)", NULL, 2, 0, 0, 1, 1, "(an object array: ragged rows?", "ragged (object array)"},
      {1, "|i4", "False", "(2, 3)", NULL, 6, 0, 0, 1, 1, "dtype '|i4' is not supported", "'|' on a 4-byte type"},
      {1, "<i4", "False", "(2, 3)", NULL, 6, 4, 0, 1, 1, "truncated: the header says 2 x 3 <i4 (24 bytes of data) but the file holds 20", "truncated data"},
      {3, "<i4", "False", "(2, 3)", NULL, 6, 0, 4, 1, 1, "4 bytes after the 2 x 3 <i4 array", "trailing bytes"},
      {1, "<i4", "False", "(0, 3)", NULL, 0, 0, 0, 1, 1, "empty array (0 rows)", "empty array"},
      {1, "<i4", "False", "(6,)", NULL, 6, 0, 0, 1, 1, "array has shape (6,); expected 2-D", "1-D array"},
      {1, "<i4", "False", "(1, 2, 3)", NULL, 6, 0, 0, 1, 1, "array has shape (1, 2, 3); expected 2-D", "3-D array"},
      {1, "<i4", "False", "(6, 1)", NULL, 6, 0, 0, 1, 1, "rows of 1 ids; expected T + 1", "T + 1 = 1"},
      {1, "<i4", "False", "(3, 2)", NULL, 6, 0, 0, 1, 1, "has rows of 3 ids but", "T + 1 differs from the test file"},
      {1, NULL, NULL, NULL, "{'descr': '<i4', 'shape': (2, 3), }", 6, 0, 0, 1, 1, "missing key 'fortran_order'", "missing key"},
      {1, NULL, NULL, NULL, "{'descr': '<i4', 'fortran_order': Maybe, 'shape': (2, 3), }", 6, 0, 0, 1, 1, "fortran_order must be True or False", "bad bool"},
      {1, NULL, NULL, NULL, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, x), }", 6, 0, 0, 1, 1, "shape must hold integers", "bad shape"},
      {1, NULL, NULL, NULL, "['descr', '<i4']", 6, 0, 0, 1, 1, "expected a dictionary", "not a dict"},
      {1, NULL, NULL, NULL, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", 6, 0, 0, 1, 1, "unexpected key 'x'", "unknown key"},
      {1, NULL, NULL, NULL, "{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (2, 3), }", 6, 0, 0, 1, 1, "structured dtype", "structured dtype"},
      {4, "<i4", "False", "(2, 3)", NULL, 6, 0, 0, 1, 1, "format version 4.0 is not supported", "version 4.0"},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    if (rank == 0) {
      int32_t v[6] = {1, 2, 3, 4, 5, 6};
      v[0] = cases[k].v0, v[4] = cases[k].v4;
      size_t nb = (size_t)cases[k].nvals * 4;
      unsigned char raw[64] = {0};
      memcpy(raw, v, nb);
      write_npy(x, cases[k].major, cases[k].descr, cases[k].fortran, cases[k].shape, raw,
                nb - (size_t)cases[k].cut + (size_t)cases[k].extra, cases[k].header);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (cases[k].want) {
      char want[600];
      snprintf(want, sizeof want, "%s", cases[k].want);
      expect_npy_error(want, cases[k].what, 10, -100);
    } else {
      char err[DPM_ERRLEN];
      CHECK(npy_convert(x, ok, 10, -100, in_dir("padok.h5"), err) == 0, "%s: %s", cases[k].what, err);
    }
  }
  /* without --pad-id, -100 is an invalid id */
  if (rank == 0) {
    int32_t v[6] = {1, 2, 3, 4, -100, 6};
    write_npy(x, 1, "<i4", "False", "(2, 3)", v, sizeof v, NULL);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  expect_npy_error("row 1, column 1: token id -100 is outside [0, 10) (--vocab 10, no --pad-id)", "pad without --pad-id", 10, -1);
  /* a row whose targets are all padding */
  if (rank == 0) {
    int32_t v[6] = {1, 2, 3, 4, 9, 9};
    write_npy(x, 1, "<i4", "False", "(2, 3)", v, sizeof v, NULL);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  expect_npy_error("row 1 has no target other than the pad id 9", "all-pad row", 10, 9);
  /* int64 ids beyond int32 */
  if (rank == 0) {
    int64_t v[6] = {1, 2, (int64_t)1 << 40, 4, 5, 6};
    write_npy(x, 2, "<i8", "False", "(2, 3)", v, sizeof v, NULL);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  expect_npy_error("row 0, column 2: token id 1099511627776 is outside [0, 10)", "int64 id above int32", 10, -1);
  /* not an npy file at all; a truncated header */
  if (rank == 0) write_text(x, "id,id\n1,2\n");
  MPI_Barrier(MPI_COMM_WORLD);
  expect_npy_error("not a NumPy .npy file", "CSV given as .npy", 10, -1);
  if (rank == 0) write_bytes(x, "\x93NUMPY\x01\x00\x76\x00{'descr'", 17);
  MPI_Barrier(MPI_COMM_WORLD);
  expect_npy_error("truncated .npy header", "truncated header", 10, -1);
  char err[DPM_ERRLEN];
  CHECK(npy_convert(ok, ok, 10, -1, in_dir("same.h5"), err) != 0 && strstr(err, "both the training and the test"),
        "same file twice: %s", err);
  CHECK(npy_convert(ok, in_dir("missing.npy"), 10, -1, in_dir("m.h5"), err) != 0 && strstr(err, "missing.npy: cannot open"),
        "missing file: %s", err);
  if (rank == 0) CHECK(tmp_files_in_dir() == 0, "npy errors: temporary file left");
}

/* ---- loading: shards, digest, and the checks of hand-made files -------------------------------------- */

static void shard_of(int64_t n, int r, int64_t *b, int64_t *e) {
  *b = n * r / nranks, *e = n * (r + 1) / nranks;
}

static void test_load_shards(void) {
  enum { N = 1001, L = 9 };
  const char *tr = in_dir("big.npy"), *te = in_dir("small.npy"), *out = in_dir("shards.h5");
  static int32_t ids[N * L];
  for (int k = 0; k < N * L; k++) ids[k] = (int32_t)((k * 40503u) % 50257u);
  ids[5 * L + 8] = -100;
  if (rank == 0) {
    write_npy(tr, 1, "<i4", "False", "(1001, 9)", ids, sizeof ids, NULL);
    write_npy(te, 1, "<i4", "False", "(2, 9)", ids, 2 * L * 4, NULL);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  char err[DPM_ERRLEN];
  CHECK(npy_convert(tr, te, 50257, -100, out, err) == 0, "convert: %s", err);
  dpm_dataset full, d;
  CHECK(load_all(out, "train", &full, err) == 0, "1-rank load: %s", err);
  const uint64_t whole = dpm_dataset_digest(&full, full.n_total);
  for (int empty_first = 0; empty_first < 2; empty_first++) {
    int64_t b, e;
    shard_of(N, rank, &b, &e);
    if (empty_first && nranks > 1) { /* rank 0 reads nothing, rank 1 also its rows */
      if (rank == 0) b = e = 0;
      if (rank == 1) b = 0;
    }
    int rc = dpm_dataset_load(MPI_COMM_WORLD, out, "train", b, e, &d, err);
    CHECK(rc == 0 && d.begin == b && d.end == e && d.T == L - 1, "sharded load: %s", err);
    if (rc) continue;
    CHECK(e == b || memcmp(d.tok, full.tok + b * L, (size_t)(e - b) * L * sizeof(int32_t)) == 0,
          "shard [%lld, %lld) differs from the 1-rank load", (long long)b, (long long)e);
    CHECK(e == b || memcmp(d.tok, ids + b * L, (size_t)(e - b) * L * sizeof(int32_t)) == 0, "shard differs from the input");
    uint64_t mine = dpm_dataset_digest(&d, e - b), sum = 0;
    MPI_Allreduce(&mine, &sum, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
    CHECK(sum == whole, "digest of the shards %016llx, of the whole split %016llx", (unsigned long long)sum,
          (unsigned long long)whole);
    dpm_dataset_free(&d);
  }
  /* the digest sees one id, and the rows' order */
  full.tok[17 * L + 3]++;
  CHECK(dpm_dataset_digest(&full, N) != whole, "digest does not see a changed id");
  full.tok[17 * L + 3]--;
  int32_t tmp[L];
  memcpy(tmp, full.tok, sizeof tmp);
  memcpy(full.tok, full.tok + L, sizeof tmp);
  memcpy(full.tok + L, tmp, sizeof tmp);
  CHECK(dpm_dataset_digest(&full, N) != whole, "digest does not see two rows swapped");
  dpm_dataset_free(&full);
}

/* A token file by hand: root attributes as given (NULL / INT_MIN: absent), /train/tokens of `type`. */
static void h5_tokens(const char *path, const char *kind, int vocab, int pad, hid_t type, int rk, const hsize_t *dims,
                      const int32_t *ids) {
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hid_t as = H5Screate(H5S_SCALAR);
  if (kind) {
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, strlen(kind));
    hid_t a = H5Acreate2(f, "kind", st, as, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, st, kind);
    H5Aclose(a);
    H5Tclose(st);
  }
  const char *names[2] = {"vocab", "pad_id"};
  const int vals[2] = {vocab, pad};
  for (int k = 0; k < 2; k++)
    if (vals[k] != INT32_MIN) {
      hid_t a = H5Acreate2(f, names[k], H5T_NATIVE_INT, as, H5P_DEFAULT, H5P_DEFAULT);
      H5Awrite(a, H5T_NATIVE_INT, &vals[k]);
      H5Aclose(a);
    }
  H5Sclose(as);
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hid_t s = H5Screate_simple(rk, dims, NULL);
  hid_t d = H5Dcreate2(f, "/train/tokens", type, s, lcpl, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, ids);
  H5Dclose(d);
  H5Sclose(s);
  H5Pclose(lcpl);
  H5Fclose(f);
}

static void expect_load_error(const char *path, const char *want, const char *what) {
  char err[DPM_ERRLEN];
  dpm_dataset h, d;
  int rc = dpm_dataset_probe(path, "train", &h, err);
  if (rc == 0) {
    int64_t b, e;
    shard_of(h.n_total, rank, &b, &e);
    rc = dpm_dataset_load(MPI_COMM_WORLD, path, "train", b, e, &d, err);
    if (rc == 0) dpm_dataset_free(&d);
  }
  CHECK(rc != 0 && strstr(err, want), "%s: rc %d, error '%s', expected '%s'", what, rc, err, want);
}

static void test_load_errors(void) {
  enum { N = 12, L = 4 };
  int32_t ids[N * L];
  for (int k = 0; k < N * L; k++) ids[k] = k % 7;
  const hsize_t dims[2] = {N, L};
  const char *p = in_dir("hand.h5");
  /* a hand-made file that follows the layout loads (format attributes are optional) */
  if (rank == 0) h5_tokens(p, "tokens", 7, -1, H5T_STD_I32LE, 2, dims, ids);
  MPI_Barrier(MPI_COMM_WORLD);
  dpm_dataset d;
  char err[DPM_ERRLEN];
  int64_t b, e;
  shard_of(N, rank, &b, &e);
  int rc = dpm_dataset_load(MPI_COMM_WORLD, p, "train", b, e, &d, err);
  CHECK(rc == 0 && !d.checksums && d.eot_id == -1 && d.tokenizer[0] == '\0', "hand-made file: %s", err);
  if (!rc) dpm_dataset_free(&d);
  int64_t counts[8];
  CHECK(dpm_dataset_label_counts(p, "train", counts, err) != 0 && strstr(err, "holds token data, which has no labels"),
        "label counts of token data: %s", err);
  MPI_Barrier(MPI_COMM_WORLD);

  /* an id out of range in the last rank's shard: every rank reports it, with row and column */
  ids[(N - 2) * L + 3] = 7;
  if (rank == 0) h5_tokens(p, "tokens", 7, -1, H5T_STD_I32LE, 2, dims, ids);
  MPI_Barrier(MPI_COMM_WORLD);
  char want[512];
  snprintf(want, sizeof want, "%s: /train/tokens: token id 7 at row 10, column 3 is outside [0, 7) (vocab = 7, no pad id)", p);
  expect_load_error(p, want, "id = vocab");
  MPI_Barrier(MPI_COMM_WORLD);
  /* with a pad id: that id passes, another out-of-range one does not; a row of padding targets fails */
  if (rank == 0) h5_tokens(p, "tokens", 6, 7, H5T_STD_I32LE, 2, dims, ids);
  MPI_Barrier(MPI_COMM_WORLD);
  expect_load_error(p, "token id 6 at row 1, column 2 is outside [0, 6) (vocab = 6) and is not the pad id 7", "id = vocab with pad");
  MPI_Barrier(MPI_COMM_WORLD);
  for (int k = 0; k < N * L; k++) ids[k] = k % 5;
  ids[4 * L + 1] = ids[4 * L + 2] = ids[4 * L + 3] = -100;
  if (rank == 0) h5_tokens(p, "tokens", 5, -100, H5T_STD_I32LE, 2, dims, ids);
  MPI_Barrier(MPI_COMM_WORLD);
  expect_load_error(p, "/train/tokens: row 4 has no target other than the pad id -100", "all-pad row");
  MPI_Barrier(MPI_COMM_WORLD);
  ids[4 * L + 1] = 0;
  ids[7 * L] = -3;
  if (rank == 0) h5_tokens(p, "tokens", 5, -100, H5T_STD_I32LE, 2, dims, ids);
  MPI_Barrier(MPI_COMM_WORLD);
  expect_load_error(p, "token id -3 at row 7, column 0 is outside [0, 5)", "negative id");
  MPI_Barrier(MPI_COMM_WORLD);
  ids[7 * L] = 0;

  static const struct {
    const char *kind;
    int vocab, pad, rk;
    hsize_t d0, d1;
    int float_type;
    const char *want, *what;
  } bad[] = {
      {"words", 5, -1, 2, N, L, 0, "attribute 'kind' is 'words', expected 'labelled' or 'tokens'", "unknown kind"},
      {"tokens", INT32_MIN, -1, 2, N, L, 0, "attribute 'vocab' is missing", "no vocab"},
      {"tokens", 5, INT32_MIN, 2, N, L, 0, "attribute 'pad_id' is missing", "no pad_id"},
      {"tokens", 0, -1, 2, N, L, 0, "attribute vocab is 0; expected an integer in [1,", "vocab 0"},
      {"tokens", 5, -1, 1, N * L, 1, 0, "/train/tokens has 1 dimensions; expected N x (T+1)", "1-D tokens"},
      {"tokens", 5, -1, 2, N * L, 1, 0, "/train/tokens has rows of 1 ids; expected T + 1", "T + 1 = 1"},
      {"tokens", 5, -1, 2, N, L, 1, "/train/tokens must hold int32 token ids", "float tokens"},
      {NULL, 5, -1, 2, N, L, 0, "attribute 'num_classes' is missing", "no kind: read as labelled data"},
  };
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    const hsize_t dd[2] = {bad[k].d0, bad[k].d1};
    if (rank == 0)
      h5_tokens(p, bad[k].kind, bad[k].vocab, bad[k].pad, bad[k].float_type ? H5T_IEEE_F32LE : H5T_STD_I32LE, bad[k].rk,
                dd, ids);
    MPI_Barrier(MPI_COMM_WORLD);
    expect_load_error(p, bad[k].want, bad[k].what);
    MPI_Barrier(MPI_COMM_WORLD);
  }
  /* a token file with the test split missing */
  expect_load_error(in_dir("nothing.h5"), "nothing.h5: cannot open", "missing file");
  dpm_dataset h;
  if (rank == 0) h5_tokens(p, "tokens", 7, -1, H5T_STD_I32LE, 2, dims, ids);
  MPI_Barrier(MPI_COMM_WORLD);
  CHECK(dpm_dataset_probe(p, "test", &h, err) != 0 && strstr(err, "split /test is missing"), "missing split: %s", err);
}

static void remove_dir(void) {
  DIR *d = opendir(dir);
  struct dirent *e;
  char path[600];
  while (d && (e = readdir(d)))
    if (e->d_name[0] != '.') snprintf(path, sizeof path, "%s/%s", dir, e->d_name), unlink(path);
  if (d) closedir(d);
  rmdir(dir);
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  if (rank == 0) {
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/dpm_test_tokens_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(dir)) dir[0] = '\0';
  }
  MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
  if (!dir[0]) {
    CHECK(0, "cannot create a temporary directory");
    return dpm_test_finish();
  }
  test_text_rows();
  test_text_corpus();
  test_text_errors();
  test_npy_roundtrip();
  test_npy_errors();
  test_load_shards();
  test_load_errors();
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) remove_dir();
  return dpm_test_finish();
}
