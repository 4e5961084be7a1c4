/* dpmpi canaries: the secrets of an exposure audit (Carlini et al. 2019, "The Secret Sharer"), as a JSON file
 * (layout in docs/formats.md, "Canary file"). A pattern such as "my code is ######" holds one run of D '#'
 * characters; each canary replaces them with D random decimal digits (its secret) and is inserted `repeats`
 * times into a training split (repeats 0: a control canary, never inserted). `dpmpi audit canaries` writes the
 * file, `dpmpi data convert --from text --canaries FILE` inserts every repetition as its own training document,
 * `dpmpi audit exposure` ranks each secret among all 10^D candidates.
 *
 *   dpm_canaries c;
 *   dpm_canaries_make(&c, "my code is ######", repeats, n_repeats, per_repeat, &key, err);
 *   dpm_canaries_write(&c, "canaries.json", err);  ...  dpm_canaries_read(&c2, "canaries.json", err);
 *   dpm_canaries_text(&c2, i, buf)  // "my code is 042917": prefix, secret, suffix
 *   dpm_canaries_free(&c);
 */
#ifndef DPMPI_IO_CANARIES_H
#define DPMPI_IO_CANARIES_H

#include <stdint.h>

#include "dpmpi/core/common.h"
#include "dpmpi/core/rng.h"

#define DPM_CANARY_MAX_DIGITS 18   /* 10^18 candidates still fit an int64 rank */
#define DPM_CANARY_MAX_PATTERN 256 /* bytes of a pattern */

typedef struct {
  char secret[DPM_CANARY_MAX_DIGITS + 1]; /* D decimal digits */
  int repeats;                             /* training documents holding it (0: a control, never inserted) */
} dpm_canary;

typedef struct {
  char pattern[DPM_CANARY_MAX_PATTERN + 1]; /* printable ASCII with one run of D '#' */
  int prefix_len, digits;                   /* the bytes before the run, D */
  int n;
  dpm_canary *c;                            /* n canaries, distinct secrets */
  int seeded;                               /* 1: secrets from a seed (reproducible), 0: the OS CSPRNG */
} dpm_canaries;

/* Check a pattern (printable ASCII, at most DPM_CANARY_MAX_PATTERN bytes, exactly one run of 1 to
 * DPM_CANARY_MAX_DIGITS '#'); sets *prefix_len and *digits. */
int dpm_canaries_parse_pattern(const char *pattern, int *prefix_len, int *digits, char err[DPM_ERRLEN]);

/* per_repeat canaries for each of repeats[0 .. n_repeats) (each >= 0), secrets drawn uniformly (rejection
 * sampling of key's words, stream DPM_STREAM_CANARY) and distinct. Fails when the pattern is bad or there
 * are fewer candidates than canaries. */
int dpm_canaries_make(dpm_canaries *c, const char *pattern, const int *repeats, int n_repeats, int per_repeat,
                      const dpm_key *key, int seeded, char err[DPM_ERRLEN]);

/* Write (atomically) or read a canary file; reading checks everything (format, version, pattern, each
 * secret D digits and distinct, repeats >= 0, text = the pattern with the secret) and names file and field. */
int dpm_canaries_write(const dpm_canaries *c, const char *path, char err[DPM_ERRLEN]);
int dpm_canaries_read(dpm_canaries *c, const char *path, char err[DPM_ERRLEN]);

/* Canary i's text (the pattern with its secret) into buf (>= DPM_CANARY_MAX_PATTERN + 1 bytes); its length. */
int dpm_canaries_text(const dpm_canaries *c, int i, char *buf);

void dpm_canaries_free(dpm_canaries *c);

#endif
