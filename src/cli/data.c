/* `dpmpi data`: the dataset subcommands.
 *   dpmpi data convert --from idx --train-images F --train-labels F --test-images F --test-labels F --out F.h5
 *   dpmpi data convert --from csv --train F --test F --label-column NAME --out F.h5
 *   dpmpi data info FILE.h5
 * Everything runs on rank 0 (conversion is serial I/O); other ranks wait, and every rank returns the
 * same exit status: 0, or DPM_EXIT_USAGE after one "dpmpi: error: ..." line on stderr.
 */
#include <getopt.h>
#include <hdf5.h>
#include <math.h>
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
    "  convert   convert IDX (MNIST family, gzipped or plain) or CSV files into a dataset file\n"
    "  info      print the splits, shapes, types, classes and normalization of a dataset file\n"
    "\n"
    "Run 'dpmpi data COMMAND --help' for the options of a command.\n";

static const char *usage_convert =
    "Usage: dpmpi data convert --from idx --train-images F --train-labels F\n"
    "                          --test-images F --test-labels F --out FILE.h5\n"
    "       dpmpi data convert --from csv --train F --test F --label-column NAME --out FILE.h5\n"
    "\n"
    "Convert a dataset into dpmpi's HDF5 layout (/train/x, /train/y, /test/x, /test/y).\n"
    "The output is written under a temporary name and renamed when complete.\n"
    "\n"
    "  --from idx|csv        input format (required)\n"
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
    "  --label-column NAME   name of the label column\n";

static const char *usage_info =
    "Usage: dpmpi data info FILE.h5\n"
    "\n"
    "Validate a dataset file and print its splits, shapes, element types, number of classes,\n"
    "label histogram and normalization attributes.\n"
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

static int cmd_convert(int argc, char **argv) {
  enum { O_FROM = 256, O_TRI, O_TRL, O_TEI, O_TEL, O_TRAIN, O_TEST, O_LABEL, O_OUT, O_MEAN, O_STD, O_FROMDATA, O_PRINTSTATS };
  static const struct option opts[] = {
      {"from", required_argument, NULL, O_FROM},          {"train-images", required_argument, NULL, O_TRI},
      {"train-labels", required_argument, NULL, O_TRL},   {"test-images", required_argument, NULL, O_TEI},
      {"test-labels", required_argument, NULL, O_TEL},    {"train", required_argument, NULL, O_TRAIN},
      {"test", required_argument, NULL, O_TEST},          {"label-column", required_argument, NULL, O_LABEL},
      {"out", required_argument, NULL, O_OUT},
      {"pixel-mean", required_argument, NULL, O_MEAN},    {"pixel-std", required_argument, NULL, O_STD},
      {"pixel-stats-from-data", no_argument, NULL, O_FROMDATA},            {"quiet", no_argument, NULL, 'q'},
      {"print-stats", no_argument, NULL, O_PRINTSTATS},
      {"help", no_argument, NULL, 'h'},                   {NULL, 0, NULL, 0}};
  const char *from = NULL, *tri = NULL, *trl = NULL, *tei = NULL, *tel = NULL, *train = NULL, *test = NULL,
             *label = NULL, *out = NULL;
  int quiet = 0, c, pixel_from_data = 0, print_stats = 0;
  double pixel_mean = 0.5, pixel_std = 0.5;
  optind = 0;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":qh", opts, NULL)) != -1) {
    switch (c) {
      case O_FROM: from = optarg; break;
      case O_TRI: tri = optarg; break;
      case O_TRL: trl = optarg; break;
      case O_TEI: tei = optarg; break;
      case O_TEL: tel = optarg; break;
      case O_TRAIN: train = optarg; break;
      case O_TEST: test = optarg; break;
      case O_LABEL: label = optarg; break;
      case O_OUT: out = optarg; break;
      case O_MEAN: case O_STD: {
        char *end;
        double v = strtod(optarg, &end);
        if (end == optarg || *end || !isfinite(v) || (c == O_STD && !(v > 0)))
          return usage_error("convert", "--pixel-%s needs a %snumber, not '%s'", c == O_MEAN ? "mean" : "std",
                             c == O_STD ? "positive " : "", optarg);
        if (c == O_MEAN) pixel_mean = v; else pixel_std = v;
        break;
      }
      case O_FROMDATA: pixel_from_data = 1; break;
      case O_PRINTSTATS: print_stats = 1; break;
      case 'q': quiet = 1; break;
      case 'h': fputs(usage_convert, stdout); return 0;
      default: return bad_option("convert", argv, optind, c);
    }
  }
  if (optind < argc) return usage_error("convert", "unexpected argument '%s'", argv[optind]);
  if (!from) return usage_error("convert", "missing --from idx|csv");
  if (!out || !out[0]) return usage_error("convert", "missing --out FILE.h5");
  char err[DPM_ERRLEN] = "";
  int rc;
  dpm_data_set_verbose(!quiet);
  double t0 = dpm_time();
  if (strcmp(from, "idx") == 0) {
    if (train || test || label)
      return usage_error("convert", "--%s is for --from csv", train ? "train" : test ? "test" : "label-column");
    if (print_stats && quiet) return usage_error("convert", "--print-stats prints on the progress lines: drop -q");
    if (!tri || !trl || !tei || !tel)
      return usage_error("convert", "--from idx needs --%s", !tri ? "train-images" : !trl ? "train-labels"
                                                             : !tei ? "test-images" : "test-labels");
    dpm_data_set_normalization(pixel_mean, pixel_std, pixel_from_data);
    dpm_data_set_print_stats(print_stats);
    rc = dpm_convert_idx(tri, trl, tei, tel, out, err);
    dpm_data_set_print_stats(0);
  } else if (strcmp(from, "csv") == 0) {
    if (tri || trl || tei || tel || print_stats)
      return usage_error("convert", "--%s is for --from idx", tri ? "train-images" : trl ? "train-labels"
                         : tei ? "test-images" : tel ? "test-labels" : "print-stats");
    if (!train || !test || !label)
      return usage_error("convert", "--from csv needs --%s", !train ? "train" : !test ? "test" : "label-column");
    rc = dpm_convert_csv(train, test, label, out, err);
  } else {
    return usage_error("convert", "--from must be idx or csv, not '%s'", from);
  }
  dpm_data_set_verbose(0);
  if (rc) return fail(err);
  if (!quiet) printf("dpmpi: converted in %.1f s\n", dpm_time() - t0);
  return 0;
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
  for (int s = 0; s < 2; s++) {
    if (dpm_dataset_probe(path, splits[s], &hdr[s], err)) return fail(err);
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
  DPM_MPI_CHECK(MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD));
  return status;
}
