/* dpmpi nn/gpt (internal): hooks of the GPT model that only tests use. The model itself is dpmpi/nn/gpt.h, its
 * kernels nn/seq.h. */
#ifndef DPMPI_NN_GPT_INTERNAL_H
#define DPMPI_NN_GPT_INTERNAL_H

#include "dpmpi/nn/gpt.h"

/* on = 1: every example's wte gradient is treated as ill-conditioned (formed alone and capped in
 * dpm_gpt_accumulate), so tests reach that path with ordinary data. */
void dpm_gpt_force_wte_alone(dpm_gpt *g, int on);

#endif
