/* dpmpi train: the training command. Reads a job file (dpmpi/config.h), loads each rank's data shard,
 * builds the model, sets the privacy parameters (given sigma, or calibrated to a target epsilon, never
 * exceeding it), runs DP-SGD (or the non-private baseline on the same path), and reports progress,
 * test accuracy and the epsilon spent. */
#ifndef DPMPI_TRAIN_H
#define DPMPI_TRAIN_H

/* `dpmpi train JOBFILE [--section.key=value ...]`; argv[0] is "train". MPI is initialized. Returns the
 * exit status (0 on success); user errors exit 2 on every rank via dpm_exit_if_error. */
int dpm_cmd_train(int argc, char **argv);

#endif
