/* Job files: defaults, values, multi-line layer lists, overrides, and every kind of rejection (unknown
 * section or key, bad value, missing key, impossible combination) with the file, key and expectation. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dpmpi/io/config.h"
#include "testing.h"

static char path[256];

static void write_job(const char *text) {
  FILE *f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
}

static const char *BASE =
    "[data]\ntrain = a.h5\n[model]\nlayers = dense out=64; relu\n  dense out=10\n"
    "[train]\nepochs = 2\nbatch_size = 128 ; inline comment\n[privacy]\nepsilon = 3\nclipping = per-layer\n";

static void expect_error(const char *text, int n_over, char **over, const char *w1, const char *w2) {
  char err[DPM_ERRLEN] = "";
  dpm_config cfg;
  write_job(text);
  int rc = dpm_config_load(path, n_over, over, &cfg, err);
  CHECK(rc == -1, "accepted: %s", text);
  CHECK(strstr(err, w1) && strstr(err, w2), "error '%s' lacks '%s' or '%s'", err, w1, w2);
  dpm_config_free(&cfg);
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  snprintf(path, sizeof path, "/tmp/dpm_test_config_%d.ini", (int)getpid());
  char err[DPM_ERRLEN] = "";
  dpm_config cfg;

  write_job(BASE);
  CHECK(dpm_config_load(path, 0, NULL, &cfg, err) == 0, "valid job rejected: %s", err);
  CHECK(!strcmp(cfg.data_train, "a.h5") && !strcmp(cfg.data_test, "a.h5"), "data.test defaults to data.train");
  CHECK(strstr(cfg.model_layers, "relu") && strstr(cfg.model_layers, "\ndense out=10"), "continuation line: '%s'",
        cfg.model_layers);
  CHECK(cfg.epochs == 2 && cfg.steps == 0 && cfg.batch_size == 128, "train values");
  CHECK(cfg.physical_batch_size == 256 && cfg.momentum == 0.9 && cfg.delta == 1e-5, "defaults");
  CHECK(cfg.privacy_enabled == 1 && cfg.epsilon == 3 && cfg.clipping == DPM_CLIP_PER_LAYER, "privacy values");
  CHECK(!cfg.has_seed, "no seed unless given");
  dpm_config_free(&cfg);

  char *over[] = {"--train.lr=0.5", "--run.seed=42", "--privacy.clipping=flat", "--model.layers=dense out=10"};
  CHECK(dpm_config_load(path, 4, over, &cfg, err) == 0, "overrides rejected: %s", err);
  CHECK(cfg.lr == 0.5 && cfg.has_seed && cfg.seed == 42 && cfg.clipping == DPM_CLIP_FLAT, "override values");
  CHECK(!strcmp(cfg.model_layers, "dense out=10"), "layers override replaces: '%s'", cfg.model_layers);
  CHECK(strstr(cfg.text, "--train.lr=0.5") != NULL, "overrides recorded in the provenance text");
  dpm_config_free(&cfg);

  /* the training length: an override of steps replaces the file's epochs, and back */
  char *len_over[] = {"--train.steps=7"};
  CHECK(dpm_config_load(path, 1, len_over, &cfg, err) == 0, "--train.steps over a file's epochs: %s", err);
  CHECK(cfg.steps == 7 && cfg.epochs == 0, "steps override: steps %lld epochs %g", (long long)cfg.steps, cfg.epochs);
  dpm_config_free(&cfg);
  char *len_over2[] = {"--train.steps=7", "--train.epochs=1.5"};
  CHECK(dpm_config_load(path, 2, len_over2, &cfg, err) == 0, "steps then epochs: %s", err);
  CHECK(cfg.steps == 0 && cfg.epochs == 1.5, "the last length override wins");
  dpm_config_free(&cfg);

  /* a job file too large to keep in a checkpoint attribute */
  {
    size_t big = DPM_JOB_MAX_BYTES + 100;
    char *text = dpm_malloc(big + strlen(BASE) + 1);
    strcpy(text, BASE);
    size_t at = strlen(text);
    while (at < big) at += (size_t)sprintf(text + at, "; %s\n", "a comment line that makes the job file large");
    expect_error(text, 0, NULL, "bytes; at most 32768", path);
    dpm_free(text);
  }

  char buf[1024];
  snprintf(buf, sizeof buf, "%s[train]\nlearning_rate = 1\n", BASE);
  expect_error(buf, 0, NULL, "unknown key 'learning_rate'", "[train]");
  snprintf(buf, sizeof buf, "%s[optim]\nlr = 1\n", BASE);
  expect_error(buf, 0, NULL, "unknown section [optim]", path);
  snprintf(buf, sizeof buf, "%s[privacy]\ndelta = 2\n", BASE);
  expect_error(buf, 0, NULL, "delta = '2'", "(0, 1)");
  snprintf(buf, sizeof buf, "%s[privacy]\nclip = -1\n", BASE);
  expect_error(buf, 0, NULL, "clip = '-1'", "positive");
  snprintf(buf, sizeof buf, "%s[privacy]\naccountant = moments\n", BASE);
  expect_error(buf, 0, NULL, "accountant = 'moments'", "rdp|tight");
  snprintf(buf, sizeof buf, "%s[train]\nsteps = 10\n", BASE);
  expect_error(buf, 0, NULL, "exactly one of [train] epochs and [train] steps", path);
  /* privacy.enabled = false on a DP job: its privacy keys are ignored, named for the caller's warning */
  {
    char *np[] = {"--privacy.enabled=false", "--privacy.noise_multiplier=2", "--pca.components=3", "--pca.clip=1",
                  "--pca.epsilon=1"};
    write_job(BASE);
    CHECK(dpm_config_load(path, 5, np, &cfg, err) == 0, "--privacy.enabled=false on a DP job rejected: %s", err);
    CHECK(!cfg.privacy_enabled && cfg.epsilon == 0 && cfg.noise_multiplier == 0 && cfg.pca_epsilon == 0,
          "privacy keys not ignored: eps %g sigma %g pca eps %g", cfg.epsilon, cfg.noise_multiplier, cfg.pca_epsilon);
    CHECK(!strcmp(cfg.privacy_ignored, "privacy.epsilon, privacy.noise_multiplier, pca.epsilon"), "ignored: '%s'",
          cfg.privacy_ignored);
    dpm_config_free(&cfg);
    write_job(BASE);
    CHECK(dpm_config_load(path, 0, NULL, &cfg, err) == 0 && cfg.privacy_ignored[0] == '\0', "DP job: ignored '%s'",
          cfg.privacy_ignored);
    dpm_config_free(&cfg);
  }
  expect_error("[data]\ntrain = a.h5\n[train]\nepochs = 1\n[privacy]\nepsilon = 1\n", 0, NULL, "[model] layers", "required");
  expect_error("[data]\ntrain = a.h5\n[model]\nlayers = dense out=2\n[train]\nepochs = 1\n", 0, NULL, "epsilon", "noise_multiplier");
  expect_error("[data\ntrain = a.h5\n", 0, NULL, ":1:", "syntax");
  char *bad_over[] = {"--train.lr"};
  expect_error(BASE, 1, bad_over, "command line", "--section.key=value");
  char *bad_val[] = {"--train.batch_size=zero"};
  expect_error(BASE, 1, bad_val, "command line", "positive integer");
  snprintf(buf, sizeof buf, "%s[train]\nbatch_size = 64\n", BASE);
  expect_error(buf, 0, NULL, "batch_size", "twice");

  CHECK(dpm_config_load("/nonexistent/job.ini", 0, NULL, &cfg, err) == -1 && strstr(err, "/nonexistent/job.ini"),
        "missing file: %s", err);
  dpm_config_free(&cfg);
  unlink(path);
  return dpm_test_finish();
}
