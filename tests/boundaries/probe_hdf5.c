#include <hdf5.h>
int dpm_probe_hdf5(void) { return (int)H5open(); }
