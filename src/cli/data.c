/* `dpmpi data`: the dataset subcommands.
 *   dpmpi data convert --from idx --train-images F --train-labels F --test-images F --test-labels F --out F.h5
 *   dpmpi data convert --from csv --train F --test F --label-column NAME --out F.h5
 *   dpmpi data convert --from text --context T (--test F ... | --test-fraction X) --out F.h5 FILE...
 *   dpmpi data convert --from tokens --train F.npy --test F.npy --vocab V [--pad-id P] --out F.h5
 *   dpmpi data info FILE.h5
 * Everything runs on rank 0 (conversion is serial I/O); other ranks wait, and every rank returns the
 * same exit status: 0, or DPM_EXIT_USAGE after one "dpmpi: error: ..." line on stderr.
 */
#include <errno.h>
#include <getopt.h>
#include <hdf5.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "dpmpi/core/common.h"
#include "dpmpi/io/data.h"
#include "io/h5util.h"

static const char *usage_data =
    "Usage: dpmpi data COMMAND [OPTIONS]\n"
    "\n"
    "Datasets for dpmpi are HDF5 files (layout in docs/formats.md).\n"
    "\n"
    "Commands:\n"
    "  convert   convert IDX (MNIST family, gzipped or plain), CSV, UTF-8 text or NumPy token files\n"
    "            into a dataset file\n"
    "  info      print the splits, shapes, types, classes, tokens and normalization of a dataset file\n"
    "\n"
    "Run 'dpmpi data COMMAND --help' for the options of a command.\n";

static const char *usage_convert =
    "Usage: dpmpi data convert --from idx --train-images F --train-labels F\n"
    "                          --test-images F --test-labels F --out FILE.h5\n"
    "       dpmpi data convert --from csv --train F --test F --label-column NAME --out FILE.h5\n"
    "       dpmpi data convert --from text --context T (--test F [--test F ...] | --test-fraction X)\n"
    "                          [--separator LINE] [--per-document] [--canaries FILE] --out FILE.h5 FILE...\n"
    "       dpmpi data convert --from tokens --train F.npy --test F.npy --vocab V [--pad-id P] --out FILE.h5\n"
    "\n"
    "Convert a dataset into dpmpi's HDF5 layout (/train/x, /train/y, /test/x, /test/y, or for text\n"
    "and tokens /train/tokens, /test/tokens).\n"
    "The output is written under a temporary name and renamed when complete.\n"
    "\n"
    "  --from idx|csv|text|tokens   input format (required)\n"
    "  --out FILE.h5         output file (required; replaced if it exists)\n"
    "  -q, --quiet           no progress lines\n"
    "  -h, --help            this help\n"
    "\n"
    "IDX (--from idx): unsigned-byte IDX files, gzipped or not. Images (N x H x W) become uint8\n"
    "N x H x W x 1; the normalization (value = (pixel / 255 - mean) / std) is stored with them.\n"
    "  --train-images F --train-labels F --test-images F --test-labels F\n"
    "  --pixel-mean M --pixel-std S   normalization constants (default 0.5 and 0.5: independent of\n"
    "                        the data, so they cost no privacy; give public values only)\n"
    "  --pixel-stats-from-data   use the training pixels' own mean and std instead; these are\n"
    "                        computed from the private data without noise and are NOT covered by\n"
    "                        the DP guarantee\n"
    "  --print-stats         show the training pixels' exact mean and std on the progress line (off by\n"
    "                        default: they are statistics of the private data, NOT covered by DP)\n"
    "\n"
    "CSV (--from csv): a header line of column names, then one example per line; every field\n"
    "is a number. The label column holds integers 0..K-1 (every class present in training);\n"
    "the other columns, in order, become float32 features.\n"
    "  --train F --test F    training and test files (same header)\n"
    "  --label-column NAME   name of the label column\n"
    "\n"
    "Text (--from text): UTF-8 files (checked: an invalid byte is an error naming file:line:column),\n"
    "one document per file, or documents separated by a line. Byte-level tokens: ids 0..255 are the\n"
    "bytes, 256 is end-of-text (vocab 257); a document becomes EOT, its bytes, EOT, cut into windows\n"
    "of T + 1 ids with stride T (each target in exactly one window, windows never mix documents), the\n"
    "last padded with id 255 (a byte UTF-8 never uses; masked out of the loss).\n"
    "  FILE... / --train F   training files (--train may repeat)\n"
    "  --test F              a test file (may repeat): the split is by file\n"
    "  --test-fraction X     instead of --test: a document goes to the test split when a hash of its\n"
    "                        bytes, as a number in [0, 1), is below X (deterministic, per document)\n"
    "  --context T           tokens per example (rows hold T + 1 ids; required)\n"
    "  --separator LINE      a line equal to LINE ends a document (e.g. '%' for fortune files; ''\n"
    "                        for blank lines); default: one document per file\n"
    "  --per-document        one window per document (longer ones are truncated and counted): the DP\n"
    "                        guarantee then protects whole documents; without it a document of k\n"
    "                        windows is protected only by group privacy (docs/formats.md)\n"
    "  --canaries FILE       insert the canaries of FILE (dpmpi audit canaries) into the training\n"
    "                        split: each repetition its own document, after the files' documents\n"
    "\n"
    "Tokens (--from tokens): NumPy .npy files (format 1.0, 2.0 or 3.0) holding a C-order 2-D array\n"
    "N x (T+1) of token ids, dtype <i4, <i8 or <u2, one example per row (inputs row[:-1], targets\n"
    "row[1:]), e.g. from a GPT-2 BPE tokenizer: np.save('train.npy', ids.astype(np.int32)).\n"
    "  --train F.npy --test F.npy   the splits (same T + 1)\n"
    "  --vocab V             ids must be in [0, V)\n"
    "  --pad-id P            the padding id (masked out of the loss; may be outside [0, V), e.g.\n"
    "                        -100); default: none\n";

static const char *usage_info =
    "Usage: dpmpi data info FILE.h5\n"
    "\n"
    "Validate a dataset file and print its splits, shapes, element types, number of classes,\n"
    "label histogram and normalization attributes; for token data the context, vocabulary, pad\n"
    "and end-of-text ids, tokenizer, the count of padded targets and the unigram baseline (the test\n"
    "split's cross-entropy and perplexity under the training targets' id frequencies with add-one\n"
    "smoothing: what a language model must beat). Then every rank reads its\n"
    "shard of each split as dpmpi train does (checking every value) and the digests of the splits\n"
    "are printed: the same on any number of ranks; /train's is the one 'dpmpi ckpt info' shows.\n"
    "\n"
    "  -h, --help   this help\n";

/* One line on stderr; returns the user-error status. */
static int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage_error(const char *cmd, const char *fmt, ...) {
  char msg[DPM_ERRLEN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "dpmpi: error: %s (see 'dpmpi data%s%s --help')\n", msg, cmd[0] ? " " : "", cmd);
  return DPM_EXIT_USAGE;
}

static int fail(const char *err) {
  fprintf(stderr, "dpmpi: error: %s\n", err);
  return DPM_EXIT_USAGE;
}

/* getopt's "unrecognized option" message in our one-line form. */
static int bad_option(const char *cmd, char **argv, int optind_after, int opt) {
  const char *arg = argv[optind_after - 1];
  if (opt == ':') return usage_error(cmd, "option %s needs a value", arg);
  if (optopt && strncmp(arg, "--", 2) != 0) return usage_error(cmd, "unknown option -%c", optopt);
  return usage_error(cmd, "unknown option %s", arg);
}

/* A whole number for option `name` within [lo, hi]; -1 with the usage error printed. */
static int int_arg(const char *name, const char *arg, long lo, long hi, int *out) {
  char *end;
  errno = 0;
  long v = strtol(arg, &end, 10);
  if (end == arg || *end || errno || v < lo || v > hi) {
    usage_error("convert", "--%s needs an integer in [%ld, %ld], not '%s'", name, lo, hi, arg);
    return -1;
  }
  *out = (int)v;
  return 0;
}

static int cmd_convert(int argc, char **argv) {
  enum { O_FROM = 256, O_TRI, O_TRL, O_TEI, O_TEL, O_TRAIN, O_TEST, O_LABEL, O_OUT, O_MEAN, O_STD, O_FROMDATA, O_PRINTSTATS,
         O_CONTEXT, O_SEP, O_PERDOC, O_FRACTION, O_VOCAB, O_PAD, O_CANARIES };
  static const struct option opts[] = {
      {"from", required_argument, NULL, O_FROM},          {"train-images", required_argument, NULL, O_TRI},
      {"train-labels", required_argument, NULL, O_TRL},   {"test-images", required_argument, NULL, O_TEI},
      {"test-labels", required_argument, NULL, O_TEL},    {"train", required_argument, NULL, O_TRAIN},
      {"test", required_argument, NULL, O_TEST},          {"label-column", required_argument, NULL, O_LABEL},
      {"out", required_argument, NULL, O_OUT},
      {"pixel-mean", required_argument, NULL, O_MEAN},    {"pixel-std", required_argument, NULL, O_STD},
      {"pixel-stats-from-data", no_argument, NULL, O_FROMDATA},            {"quiet", no_argument, NULL, 'q'},
      {"print-stats", no_argument, NULL, O_PRINTSTATS},
      {"context", required_argument, NULL, O_CONTEXT},    {"separator", required_argument, NULL, O_SEP},
      {"per-document", no_argument, NULL, O_PERDOC},      {"test-fraction", required_argument, NULL, O_FRACTION},
      {"vocab", required_argument, NULL, O_VOCAB},        {"pad-id", required_argument, NULL, O_PAD},
      {"canaries", required_argument, NULL, O_CANARIES},
      {"help", no_argument, NULL, 'h'},                   {NULL, 0, NULL, 0}};
  const char *from = NULL, *tri = NULL, *trl = NULL, *tei = NULL, *tel = NULL, *label = NULL, *out = NULL,
             *separator = NULL, *canaries = NULL;
  /* --train and --test may repeat (text); the other formats take one of each */
  const char **train = dpm_calloc((size_t)argc + 1, sizeof *train), **test = dpm_calloc((size_t)argc + 1, sizeof *test);
  int n_train = 0, n_test = 0;
  int quiet = 0, c, pixel_from_data = 0, print_stats = 0, context = 0, per_document = 0, vocab = 0, pad_id = -1;
  int have_context = 0, have_vocab = 0, have_pad = 0, have_fraction = 0, rc = DPM_EXIT_USAGE;
  double pixel_mean = 0.5, pixel_std = 0.5, fraction = 0;
  optind = 0;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":qh", opts, NULL)) != -1) {
    switch (c) {
      case O_FROM: from = optarg; break;
      case O_TRI: tri = optarg; break;
      case O_TRL: trl = optarg; break;
      case O_TEI: tei = optarg; break;
      case O_TEL: tel = optarg; break;
      case O_TRAIN: train[n_train++] = optarg; break;
      case O_TEST: test[n_test++] = optarg; break;
      case O_LABEL: label = optarg; break;
      case O_OUT: out = optarg; break;
      case O_MEAN: case O_STD: {
        char *end;
        double v = strtod(optarg, &end);
        if (end == optarg || *end || !isfinite(v) || (c == O_STD && !(v > 0))) {
          rc = usage_error("convert", "--pixel-%s needs a %snumber, not '%s'", c == O_MEAN ? "mean" : "std",
                           c == O_STD ? "positive " : "", optarg);
          goto done;
        }
        if (c == O_MEAN) pixel_mean = v; else pixel_std = v;
        break;
      }
      case O_FRACTION: {
        char *end;
        fraction = strtod(optarg, &end);
        if (end == optarg || *end || !(fraction > 0 && fraction < 1)) {
          rc = usage_error("convert", "--test-fraction needs a number in (0, 1), not '%s'", optarg);
          goto done;
        }
        have_fraction = 1;
        break;
      }
      case O_CONTEXT:
        if (int_arg("context", optarg, 1, 1 << 24, &context)) goto done;
        have_context = 1;
        break;
      case O_VOCAB:
        if (int_arg("vocab", optarg, 1, INT32_MAX, &vocab)) goto done;
        have_vocab = 1;
        break;
      case O_PAD:
        if (int_arg("pad-id", optarg, INT32_MIN, INT32_MAX, &pad_id)) goto done;
        have_pad = 1;
        break;
      case O_SEP: separator = optarg; break;
      case O_CANARIES: canaries = optarg; break;
      case O_PERDOC: per_document = 1; break;
      case O_FROMDATA: pixel_from_data = 1; break;
      case O_PRINTSTATS: print_stats = 1; break;
      case 'q': quiet = 1; break;
      case 'h': fputs(usage_convert, stdout); rc = 0; goto done;
      default: rc = bad_option("convert", argv, optind, c); goto done;
    }
  }
  const int is_text = from && strcmp(from, "text") == 0, is_tokens = from && strcmp(from, "tokens") == 0;
  if (optind < argc && !is_text) {
    rc = usage_error("convert", "unexpected argument '%s'", argv[optind]);
    goto done;
  }
  while (optind < argc) train[n_train++] = argv[optind++]; /* text: the training files */
  if (!from) {
    rc = usage_error("convert", "missing --from idx|csv|text|tokens");
    goto done;
  }
  if (!out || !out[0]) {
    rc = usage_error("convert", "missing --out FILE.h5");
    goto done;
  }
  /* options of one format given to another */
  const char *stray = NULL, *owner = NULL;
  if (!is_text && (have_context || separator || per_document || have_fraction || canaries))
    stray = have_context ? "context" : separator ? "separator" : per_document ? "per-document"
            : have_fraction ? "test-fraction" : "canaries",
    owner = "text";
  else if (!is_tokens && (have_vocab || have_pad))
    stray = have_vocab ? "vocab" : "pad-id", owner = "tokens";
  else if (strcmp(from, "idx") != 0 && (tri || trl || tei || tel || print_stats || pixel_from_data))
    stray = tri ? "train-images" : trl ? "train-labels" : tei ? "test-images" : tel ? "test-labels"
            : print_stats ? "print-stats" : "pixel-stats-from-data", owner = "idx";
  else if (strcmp(from, "csv") != 0 && label)
    stray = "label-column", owner = "csv";
  if (stray) {
    rc = usage_error("convert", "--%s is for --from %s", stray, owner);
    goto done;
  }
  if (!is_text && (n_train > 1 || n_test > 1)) {
    rc = usage_error("convert", "--%s is given twice (only --from text takes several files)",
                     n_train > 1 ? "train" : "test");
    goto done;
  }
  char err[DPM_ERRLEN] = "";
  int failed;
  dpm_data_set_verbose(!quiet);
  double t0 = dpm_time();
  if (strcmp(from, "idx") == 0) {
    if (n_train || n_test) {
      rc = usage_error("convert", "--%s is for --from csv, text or tokens", n_train ? "train" : "test");
      goto done;
    }
    if (print_stats && quiet) {
      rc = usage_error("convert", "--print-stats prints on the progress lines: drop -q");
      goto done;
    }
    if (!tri || !trl || !tei || !tel) {
      rc = usage_error("convert", "--from idx needs --%s", !tri ? "train-images" : !trl ? "train-labels"
                                                           : !tei ? "test-images" : "test-labels");
      goto done;
    }
    dpm_data_set_normalization(pixel_mean, pixel_std, pixel_from_data);
    dpm_data_set_print_stats(print_stats);
    failed = dpm_convert_idx(tri, trl, tei, tel, out, err);
    dpm_data_set_print_stats(0);
  } else if (strcmp(from, "csv") == 0) {
    if (!n_train || !n_test || !label) {
      rc = usage_error("convert", "--from csv needs --%s", !n_train ? "train" : !n_test ? "test" : "label-column");
      goto done;
    }
    failed = dpm_convert_csv(train[0], test[0], label, out, err);
  } else if (is_text) {
    if (!n_train || !have_context || (!n_test && !have_fraction) || (n_test && have_fraction)) {
      rc = usage_error("convert", "--from text needs %s",
                       !n_train ? "training files (FILE... or --train F)" : !have_context ? "--context T"
                       : n_test ? "--test FILES or --test-fraction X, not both" : "--test FILES or --test-fraction X");
      goto done;
    }
    dpm_canaries cn = {0};
    dpm_text_opts o = {.train = train, .n_train = n_train, .test = test, .n_test = n_test,
                       .test_fraction = fraction, .separator = separator, .context = context,
                       .per_document = per_document, .canaries = canaries ? &cn : NULL};
    failed = canaries && dpm_canaries_read(&cn, canaries, err);
    if (!failed) failed = dpm_convert_text(&o, out, NULL, err);
    dpm_canaries_free(&cn);
  } else if (is_tokens) {
    if (!n_train || !n_test || !have_vocab) {
      rc = usage_error("convert", "--from tokens needs --%s", !n_train ? "train F.npy" : !n_test ? "test F.npy"
                                                              : "vocab V");
      goto done;
    }
    failed = dpm_convert_npy(train[0], test[0], vocab, pad_id, out, err);
  } else {
    rc = usage_error("convert", "--from must be idx, csv, text or tokens, not '%s'", from);
    goto done;
  }
  dpm_data_set_verbose(0);
  if (failed) {
    rc = fail(err);
    goto done;
  }
  if (!quiet) printf("dpmpi: converted in %.1f s\n", dpm_time() - t0);
  rc = 0;
done:
  dpm_data_set_verbose(0);
  dpm_free(train);
  dpm_free(test);
  return rc;
}

/* A few facts that the probe does not report: root string attributes and the stored label type. */
static void describe_file(const char *path, char *fmt, char *source, int *version, char *ytype, size_t cap) {
  snprintf(fmt, cap, "?");
  snprintf(source, cap, "?");
  snprintf(ytype, cap, "integer");
  *version = 0;
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) return;
  const char *names[2] = {"format", "source"};
  char *bufs[2] = {fmt, source};
  for (int k = 0; k < 2; k++) {
    char *s = dpm_h5_get_str(f, names[k]);
    if (s) snprintf(bufs[k], cap, "%s", s);
    dpm_free(s);
  }
  dpm_h5_get_attr(f, "format_version", H5T_NATIVE_INT, version);
  hid_t d = H5Dopen2(f, "/train/y", H5P_DEFAULT);
  if (d >= 0) {
    hid_t t = H5Dget_type(d);
    snprintf(ytype, cap, "%s%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "uint" : "int", 8 * H5Tget_size(t));
    H5Tclose(t);
    H5Dclose(d);
  }
  H5Fclose(f);
}

/* Set by cmd_info (rank 0) when the file checked out: the collective part, info_shards, reads it next. */
static const char *info_file = NULL;

/* Token data: the file's attributes, then per split its rows and context (the ids are read and checked
 * by info_shards). */
static int info_tokens(const char *path, const dpm_dataset hdr[2]) {
  char fmt[64], source[64], ytype[64];
  int version;
  describe_file(path, fmt, source, &version, ytype, sizeof fmt);
  const dpm_dataset *h = &hdr[0];
  printf("%s: %s version %d (converted from %s), token data: vocab %d, pad id %d%s, end-of-text id %d%s, "
         "tokenizer %s\n", path, fmt, version, source, h->vocab, h->pad_id, h->pad_id == -1 ? " (none)" : "",
         h->eot_id, h->eot_id == -1 ? " (none)" : "", h->tokenizer[0] ? h->tokenizer : "(not recorded)");
  if (strcmp(h->tokenizer, DPM_TOKENIZER_BYTES) == 0)
    printf("  tokenizer bytes: ids 0..255 are the bytes of UTF-8 text, %d is end-of-text, %d pads (masked)\n",
           DPM_BYTES_EOT, DPM_BYTES_PAD);
  for (int s = 0; s < 2; s++) {
    const dpm_dataset *x = &hdr[s];
    printf("%s: %lld examples (rows of T + 1 = %d ids: inputs row[:-1], targets row[1:])\n", s ? "test" : "train",
           (long long)x->n_total, x->T + 1);
    printf("  tokens: int32 %lld x %d (N x T+1), context T = %d\n", (long long)x->n_total, x->T + 1, x->T);
    printf("  checksums: %s\n", x->checksums ? "Fletcher32 on every chunk of tokens"
                                              : "none (an older dpmpi or another tool wrote this file: damage would be read silently)");
  }
  info_file = path;
  return 0;
}

/* `data info`, the collective part: every rank reads its contiguous shard of each split with parallel
 * HDF5, as dpmpi train does (in blocks of at most 16 Mi values, so memory stays bounded), which checks
 * every value; rank 0 prints the splits' digests (the sum of the row hashes of all shards: the same on
 * any number of ranks; /train's is the one `dpmpi ckpt info` shows) and, for token data, how many
 * targets are padding. */
static int info_shards(const char *path) {
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  char err[DPM_ERRLEN] = "";
  uint64_t digest[2] = {0, 0};
  long long pads[2] = {0, 0}, targets[2] = {0, 0};
  long long *freq[2] = {NULL, NULL}; /* token data: per split, how often each id in [0, vocab) is a target */
  int tokens = 0, vocab = 0;
  for (int s = 0; s < 2; s++) {
    const char *split = s ? "test" : "train";
    dpm_dataset h, d;
    const int first = dpm_comm_first_failed(MPI_COMM_WORLD, dpm_dataset_probe(path, split, &h, err) != 0);
    if (first >= 0) {
      DPM_MPI_CHECK(MPI_Bcast(err, DPM_ERRLEN, MPI_CHAR, first, MPI_COMM_WORLD));
      return rank == 0 ? fail(err) : DPM_EXIT_USAGE;
    }
    tokens = h.kind == DPM_DATA_TOKENS;
    if (tokens && !freq[s]) vocab = h.vocab, freq[s] = dpm_calloc((size_t)vocab, sizeof(long long));
    const int64_t F = tokens ? (int64_t)h.T + 1 : (int64_t)h.C * h.H * h.W;
    const int64_t block = ((int64_t)16 << 20) / F > 0 ? ((int64_t)16 << 20) / F : 1;
    const int64_t b = h.n_total * rank / size, e = h.n_total * (rank + 1) / size;
    long long blocks = (e - b + block - 1) / block;
    DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &blocks, 1, MPI_LONG_LONG, MPI_MAX, MPI_COMM_WORLD));
    for (long long k = 0; k < blocks; k++) {
      const int64_t rb = b + k * block < e ? b + k * block : e, re = rb + block < e ? rb + block : e;
      if (dpm_dataset_load(MPI_COMM_WORLD, path, split, rb, re, &d, err)) { /* the same error on every rank */
        dpm_free(freq[0]), dpm_free(freq[1]);
        return rank == 0 ? fail(err) : DPM_EXIT_USAGE;
      }
      digest[s] += dpm_dataset_digest(&d, re - rb);
      if (tokens) /* every id is in [0, vocab) or pad_id (checked by the load) */
        for (int64_t i = 0; i < (re - rb) * F; i++) {
          if (i % F == 0) continue; /* a row's first id is an input only */
          if (d.tok[i] == h.pad_id) pads[s]++;
          else freq[s][d.tok[i]]++;
        }
      dpm_dataset_free(&d);
    }
    targets[s] = (long long)h.n_total * h.T;
  }
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, digest, 2, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD));
  DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, pads, 2, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD));
  for (int s = 0; s < 2 && tokens; s++)
    DPM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, freq[s], vocab, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD));
  if (rank == 0) {
    if (tokens) {
      printf("padding (masked out of the loss): /train %lld of %lld targets, /test %lld of %lld\n", pads[0],
             targets[0], pads[1], targets[1]);
      /* the unigram baseline: p(v) = (count_train(v) + 1) / (n_train + vocab), the test's mean -log p */
      double ntr = 0, nte = 0, ce = 0;
      for (int v = 0; v < vocab; v++) ntr += (double)freq[0][v], nte += (double)freq[1][v];
      for (int v = 0; v < vocab; v++)
        if (freq[1][v]) ce -= (double)freq[1][v] * log(((double)freq[0][v] + 1) / (ntr + vocab));
      ce = nte > 0 ? ce / nte : 0;
      printf("unigram baseline (training target frequencies, add-one smoothing over vocab %d): test cross-entropy "
             "%.4f nats/token, perplexity %.3f (statistics of the training split, not covered by DP)\n", vocab, ce,
             exp(ce));
    }
    printf("digest: /train %016llx, /test %016llx (read as %d shard%s, every value checked)\n",
           (unsigned long long)digest[0], (unsigned long long)digest[1], size, size > 1 ? "s" : "");
  }
  dpm_free(freq[0]), dpm_free(freq[1]);
  return 0;
}

static int cmd_info(int argc, char **argv) {
  static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
  int c;
  optind = 0;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
    if (c == 'h') {
      fputs(usage_info, stdout);
      return 0;
    }
    return bad_option("info", argv, optind, c);
  }
  if (optind >= argc) return usage_error("info", "missing the dataset FILE");
  if (optind + 1 < argc) return usage_error("info", "unexpected argument '%s'", argv[optind + 1]);
  const char *path = argv[optind];

  char err[DPM_ERRLEN] = "";
  const char *splits[2] = {"train", "test"};
  dpm_dataset hdr[2];
  int64_t *counts[2] = {NULL, NULL};
  for (int s = 0; s < 2; s++)
    if (dpm_dataset_probe(path, splits[s], &hdr[s], err)) return fail(err);
  if (hdr[0].kind == DPM_DATA_TOKENS) return info_tokens(path, hdr);
  for (int s = 0; s < 2; s++) {
    counts[s] = dpm_calloc((size_t)hdr[s].num_classes, sizeof(int64_t));
    if (dpm_dataset_label_counts(path, splits[s], counts[s], err)) {
      dpm_free(counts[0]);
      dpm_free(counts[1]);
      return fail(err);
    }
  }
  char fmt[64], source[64], ytype[64];
  int version;
  describe_file(path, fmt, source, &version, ytype, sizeof fmt);
  printf("%s: %s version %d (converted from %s), %d classes\n", path, fmt, version, source, hdr[0].num_classes);
  for (int s = 0; s < 2; s++) {
    const dpm_dataset *h = &hdr[s];
    printf("%s: %lld examples\n", splits[s], (long long)h->n_total);
    if (h->images) {
      printf("  x: uint8 %lld x %d x %d x %d (N x H x W x C), images %dx%dx%d\n", (long long)h->n_total, h->H, h->W,
             h->C, h->H, h->W, h->C);
      printf("  normalization: mean %.6f std %.6f (value = (pixel / 255 - mean) / std)\n", (double)h->mean,
             (double)h->std);
    } else {
      printf("  x: float32 %lld x %d (N x d), %d features\n", (long long)h->n_total, h->C, h->C);
      printf("  normalization: none (features used as stored)\n");
    }
    printf("  checksums: %s\n", h->checksums ? "Fletcher32 on every chunk of x and y" : "none (an older dpmpi or another tool wrote this file: damage would be read silently)");
    printf("  y: %s %lld, label histogram:", ytype, (long long)h->n_total);
    const int show = h->num_classes <= 32 ? h->num_classes : 32;
    for (int k = 0; k < show; k++) printf(" %d:%lld", k, (long long)counts[s][k]);
    if (show < h->num_classes) printf(" ... (%d more classes)", h->num_classes - show);
    printf("\n");
  }
  dpm_free(counts[0]);
  dpm_free(counts[1]);
  info_file = path;
  return 0;
}

static int run(int argc, char **argv) {
  if (argc < 2) return usage_error("", "missing command: convert or info");
  const char *cmd = argv[1];
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
    fputs(usage_data, stdout);
    return 0;
  }
  if (strcmp(cmd, "convert") == 0) return cmd_convert(argc - 1, argv + 1);
  if (strcmp(cmd, "info") == 0) return cmd_info(argc - 1, argv + 1);
  return usage_error("", "unknown command '%s': expected convert or info", cmd);
}

int dpm_cmd_data(int argc, char **argv) {
  int rank = 0, status = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) {
    status = run(argc, argv);
    fflush(stdout);
    fflush(stderr);
  }
  /* data info: the header checked out on rank 0; now every rank reads (rank 0 names the file: getopt
   * may have reordered its argv) */
  int len = info_file ? (int)strlen(info_file) + 1 : 0;
  DPM_MPI_CHECK(MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD));
  DPM_MPI_CHECK(MPI_Bcast(&len, 1, MPI_INT, 0, MPI_COMM_WORLD));
  if (status == 0 && len > 0) {
    char *path = dpm_malloc((size_t)len);
    if (rank == 0) memcpy(path, info_file, (size_t)len);
    DPM_MPI_CHECK(MPI_Bcast(path, len, MPI_CHAR, 0, MPI_COMM_WORLD));
    status = info_shards(path);
    dpm_free(path);
    fflush(stdout);
    fflush(stderr);
  }
  info_file = NULL;
  return status;
}
