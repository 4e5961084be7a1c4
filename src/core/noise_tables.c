/* Constants of the Gaussian stream (core/noise.h): written by `build/tests/test_noise_tables --emit` from
 * long-double values rounded to double, and checked by the same test; hard-coded so that every machine of
 * a cluster draws the same numbers whatever its libm. */
#include "core/noise.h"

const dpm_noise_consts dpm_noise_c = {
    .c = {
        0x1.f07c1f07c1f08p-1, 0x1.d41d41d41d41dp-1, 0x1.bacf914c1badp-1, 0x1.a41a41a41a41ap-1,
        0x1.8f9c18f9c18fap-1, 0x1.7d05f417d05f4p-1, 0x1.6c16c16c16c17p-1, 0x1.5c9882b931057p-1,
        0x1.4e5e0a72f0539p-1, 0x1.4141414141414p-1, 0x1.3521cfb2b78c1p-1, 0x1.29e4129e4129ep-1,
        0x1.1f7047dc11f7p-1, 0x1.15b1e5f75270dp-1, 0x1.0c9714fbcda3bp-1, 0x1.041041041041p-1},
    .log_hi = {
        0x1.f829b0e7832f8p-6, 0x1.6f0d28ae56b4ep-4, 0x1.29552f81ff521p-3, 0x1.9525a9cf456b6p-3,
        0x1.fb9186d5e3e29p-3, 0x1.2e8e2bae11d31p-2, 0x1.5d1bdbf5809cap-2, 0x1.89a3386c1425bp-2,
        0x1.b44f77bcc8f64p-2, 0x1.dd46a04c1c4a1p-2, 0x1.02552a5a5d0ffp-1, 0x1.154c3d2f4d5eap-1,
        0x1.2795e1289b11bp-1, 0x1.393e0d3562a1ap-1, 0x1.4a4f85db03ebbp-1, 0x1.5ad404c359f2dp-1},
    .log_lo = {
        0x1.34p-60, -0x1.21p-59, 0x1.3p-57, -0x1.27p-57,
        0x1.358p-57, -0x1.1ep-57, -0x1.7d8p-56, 0x1.2dp-57,
        -0x1.ap-61, -0x1p-62, 0x1.eap-57, 0x1.9ap-57,
        0x1.aep-55, -0x1.39p-55, -0x1.d78p-55, 0x1.ec8p-55},
    .ln2_hi = 0x1.62e42feep-1,
    .ln2_lo = 0x1.a39ef358p-33,
    .pi4 = 0x1.921fb54442d18p-1,
    .log1p = {
        -0x1p-1, 0x1.5555555555555p-2, -0x1p-2, 0x1.999999999999ap-3,
        -0x1.5555555555555p-3, 0x1.2492492492492p-3, -0x1p-3, 0x1.c71c71c71c71cp-4,
        -0x1.999999999999ap-4, 0x1.745d1745d1746p-4},
    .sin = {
        -0x1.5555555555555p-3, 0x1.1111111111111p-7, -0x1.a01a01a01a01ap-13, 0x1.71de3a556c734p-19,
        -0x1.ae64567f544e4p-26, 0x1.6124613a86d09p-33, -0x1.ae7f3e733b81fp-41},
    .cos = {
        -0x1p-1, 0x1.5555555555555p-5, -0x1.6c16c16c16c17p-10, 0x1.a01a01a01a01ap-16,
        -0x1.27e4fb7789f5cp-22, 0x1.1eed8eff8d898p-29, -0x1.93974a8c07c9dp-37, 0x1.ae7f3e733b81fp-45},
};
