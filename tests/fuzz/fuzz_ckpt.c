/* Checkpoint / released-model reader (--resume, ckpt info, privacy --ledger): the metadata and the
 * privacy ledger of a file. */
#include "fuzz_util.h"
#include "dpmpi/io/ckpt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = fz_file("ckpt-00000001.h5", data, size);
  char err[DPM_ERRLEN];
  dpm_ckpt_meta meta;
  if (dpm_ckpt_read_meta(MPI_COMM_SELF, p, &meta, err) == 0) dpm_ckpt_meta_free(&meta);
  dpm_ledger *L = NULL;
  dpm_ckpt_privacy info;
  if (dpm_ckpt_read_privacy(p, &L, &info, err) == 0) dpm_ledger_free(L);
  return 0;
}
