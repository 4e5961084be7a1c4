/* The dpmpi command: initializes MPI, dispatches to a subcommand (train, data, privacy), finalizes.
 * Every subcommand runs on every rank; only rank 0 prints, and user errors exit 2 on every rank. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpmpi/privacy/accountant.h"
#include "dpmpi/io/ckpt.h"
#include "dpmpi/core/common.h"
#include "dpmpi/io/data.h"
#include "cli/commands.h"

static const char *USAGE =
    "usage: dpmpi COMMAND [ARGS]   (launch with mpirun -np N or srun for more than one rank)\n"
    "\n"
    "commands:\n"
    "  train JOBFILE [--section.key=value ...]   train a model with DP-SGD (or non-privately)\n"
    "  data convert|info ...                     convert IDX or CSV data to HDF5; describe a data file\n"
    "  privacy ...                               epsilon for (q, sigma, steps, delta), or sigma for a target\n"
    "  ckpt info PATH                            step, epsilon, ledger, grid and job of a checkpoint\n"
    "  export CKPT OUT                           the released model: parameters and privacy metadata\n"
    "  model import|export|info ...              Hugging Face GPT-2 safetensors in and out (INIT.h5)\n"
    "  generate CKPT --prompt TEXT --tokens N    continue TEXT with a byte-level GPT checkpoint\n"
    "  audit canaries|exposure ...               memorization audit: canaries, their exposure under a GPT\n"
    "  version                                   print the version\n"
    "\n"
    "dpmpi COMMAND --help describes each command.\n";

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, status = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    if (rank == 0) fputs(USAGE, argc < 2 ? stderr : stdout);
    status = argc < 2 ? DPM_EXIT_USAGE : 0;
  } else if (!strcmp(argv[1], "train")) {
    status = dpm_cmd_train(argc - 1, argv + 1);
  } else if (!strcmp(argv[1], "data")) {
    status = dpm_cmd_data(argc - 1, argv + 1);
  } else if (!strcmp(argv[1], "privacy")) {
    status = dpm_cmd_privacy(argc - 1, argv + 1);
  } else if (!strcmp(argv[1], "ckpt")) {
    status = dpm_cmd_ckpt(argc - 1, argv + 1);
  } else if (!strcmp(argv[1], "export")) {
    status = dpm_cmd_export(argc - 1, argv + 1);
  } else if (!strcmp(argv[1], "model")) {
    status = dpm_cmd_model(argc - 1, argv + 1);
  } else if (!strcmp(argv[1], "generate")) {
    status = dpm_cmd_generate(argc - 1, argv + 1);
  } else if (!strcmp(argv[1], "audit")) {
    status = dpm_cmd_audit(argc - 1, argv + 1);
  } else if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
    if (rank == 0) printf("dpmpi %s\n", DPM_VERSION);
  } else {
    if (rank == 0) fprintf(stderr, "dpmpi: error: unknown command '%s' (dpmpi --help lists the commands)\n", argv[1]);
    status = DPM_EXIT_USAGE;
  }
  fflush(stdout);
  MPI_Finalize();
  return status;
}
