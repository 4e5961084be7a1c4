/* dpmpi cli: the subcommands of the `dpmpi` command (src/cli/main.c dispatches on argv[1]). Each is
 * called after MPI_Init on every rank with argv[0] = its name, prints on rank 0 only, and returns the
 * exit status; user errors exit 2 on every rank (dpm_exit_if_error, dpmpi/parallel/comm.h). */
#ifndef DPMPI_CLI_COMMANDS_H
#define DPMPI_CLI_COMMANDS_H

#include <stddef.h>

/* `dpmpi train JOBFILE [--section.key=value ...]` (src/train/train.c): reads a job file, loads each rank's
 * data shard, builds the model, sets the privacy parameters (given sigma, or calibrated to a target
 * epsilon, never exceeding it), runs DP-SGD (or the non-private baseline on the same path), and reports
 * progress, test accuracy and the epsilon spent. */
int dpm_cmd_train(int argc, char **argv);

/* `dpmpi data convert|info ...` (src/cli/data.c). */
int dpm_cmd_data(int argc, char **argv);

/* `dpmpi privacy ...` (src/cli/privacy.c): epsilon, calibration, or a file's ledger. */
int dpm_cmd_privacy(int argc, char **argv);

/* `dpmpi ckpt info PATH` and `dpmpi export CKPT OUT` (src/cli/ckpt.c). */
int dpm_cmd_ckpt(int argc, char **argv);
int dpm_cmd_export(int argc, char **argv);

/* `dpmpi model import|export|info ...` (src/cli/model.c): Hugging Face GPT-2 safetensors in and out. */
int dpm_cmd_model(int argc, char **argv);

/* `dpmpi generate CKPT --prompt TEXT --tokens N [--temperature T --seed S]` (src/cli/generate.c): text from a
 * byte-level GPT checkpoint, greedy or sampled, on rank 0. */
int dpm_cmd_generate(int argc, char **argv);

/* `dpmpi audit canaries|exposure ...` (src/cli/audit.c): canaries for a memorization audit, and each
 * canary's exposure (Carlini et al. 2019) under a byte-level GPT checkpoint. */
int dpm_cmd_audit(int argc, char **argv);

/* The whole byte-level GPT of checkpoint path (a file, or the newest of a directory; its name into found),
 * its parameters loaded, on this rank alone, for micro-batches of max_batch; context 0: the checkpoint's
 * context, otherwise the same model on its first `context` positions only (a causal model gives them the
 * same logits, computed for fewer positions). *T receives the model's context. NULL with err (naming the
 * command cmd) for anything that is not a byte-level GPT checkpoint of at least that context. */
struct dpm_model;
struct dpm_model *dpm_cli_load_byte_gpt(const char *cmd, const char *path, int context, int max_batch, int *T,
                                        char *found, size_t flen, char *err);

#endif
