/* HDF5 dataset loader (the files dpmpi train reads): probe both splits, then load up to 64 rows of each. */
#include "fuzz_util.h"
#include "dpmpi/io/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = fz_file("data.h5", data, size);
  char err[DPM_ERRLEN];
  for (int k = 0; k < 2; k++) {
    const char *g = k ? "test" : "train";
    dpm_dataset hdr, d;
    if (dpm_dataset_probe(p, g, &hdr, err)) continue;
    int64_t end = hdr.n_total < 64 ? hdr.n_total : 64;
    if (dpm_dataset_load(MPI_COMM_SELF, p, g, 0, end, &d, err) == 0) dpm_dataset_free(&d);
  }
  return 0;
}
