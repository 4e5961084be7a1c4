/* `dpmpi privacy` arguments: up to four lines read as --sampling-rate, --noise-multiplier, --steps and --delta
 * (strtod, as the command does), checked by the command's rule, then the RDP epsilon (every accepted input)
 * and the tight epsilon and RDP calibration (short runs, to keep executions fast). */
#include <math.h>

#include "fuzz_util.h"
#include "dpmpi/privacy/accountant.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *s = fz_string(data, size), *save = NULL;
  double v[4] = {0.01, 1, 100, 1e-5};
  int k = 0;
  for (char *tok = strtok_r(s, "\n", &save); tok && k < 4; tok = strtok_r(NULL, "\n", &save)) v[k++] = strtod(tok, NULL);
  dpm_free(s);
  char err[DPM_ERRLEN];
  if (!(v[2] >= -9e18 && v[2] <= 9e18) || v[2] != floor(v[2])) return 0; /* --steps: not an integer */
  const int64_t T = (int64_t)v[2];
  if (dpm_accountant_check_args(v[0], v[1], v[3], T, err)) return 0;
  double order, e = dpm_rdp_epsilon(v[0], v[1], T, v[3], &order);
  if (isnan(e) || e < 0) abort(); /* an accepted input has an epsilon in [0, inf] */
  if (T <= 200 && v[1] >= 0.3 && v[1] <= 50) {
    dpm_pld_event ev = {v[0], v[1], T};
    dpm_pld_result r;
    if (dpm_pld_epsilon(&ev, 1, v[3], &r, err) == 0 && (isnan(r.epsilon_upper) || r.epsilon_upper < 0)) abort();
    double sigma;
    if (isfinite(e) && e > 0 && dpm_calibrate_sigma(e, v[3], v[0], T, DPM_ACCT_RDP, &sigma, err) == 0 &&
        !(sigma > 0 && sigma <= v[1] * 1.001 + 1e-9))
      abort(); /* calibrating to eps(sigma) finds at most sigma */
  }
  return 0;
}
