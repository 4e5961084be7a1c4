/* dpmpi cli: the subcommands of the `dpmpi` command (src/cli/main.c dispatches on argv[1]). Each is
 * called after MPI_Init on every rank with argv[0] = its name, prints on rank 0 only, and returns the
 * exit status; user errors exit 2 on every rank (dpm_exit_if_error, dpmpi/parallel/comm.h). */
#ifndef DPMPI_CLI_COMMANDS_H
#define DPMPI_CLI_COMMANDS_H

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

#endif
