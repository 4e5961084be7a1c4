/* safetensors (io/safetensors.c) and the Hugging Face GPT-2 tensor list (io/hf_gpt2.c): the reference
 * checkpoint ../shared/refs/gpt/model.safetensors read tensor by tensor against reference.h5's /weights (an
 * independent writer), written back with byte-identical data; F16, BF16 and F64 conversion against values
 * worked out by hand; every kind of damaged or inconsistent file rejected with one line naming the file and
 * the tensor; the canonical GPT-2 list equal to src/nn/gpt.c's names and shapes. */
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dpmpi/io/hf_gpt2.h"
#include "dpmpi/io/safetensors.h"
#include "dpmpi/nn/gpt.h"
#include "testing.h"

static char dir[256];

static void ref_path(char *out, size_t len, const char *name) {
  const char *d = getenv("DPM_SHARED_DIR");
  snprintf(out, len, "%s/refs/gpt/%s", d ? d : "/work/shared", name);
}

static unsigned char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc(*len + 1);
  if (fread(b, 1, *len, f) != *len) *len = 0;
  fclose(f);
  return b;
}

/* A crafted file: the 8-byte length of header (hlen_override if non-zero), header, then data. */
static const char *craft(const char *name, const char *header, uint64_t hlen_override, const void *data, size_t ndata) {
  static char path[512];
  snprintf(path, sizeof path, "%s/%s.safetensors", dir, name);
  FILE *f = fopen(path, "wb");
  uint64_t hlen = hlen_override ? hlen_override : strlen(header);
  fwrite(&hlen, 8, 1, f);
  fwrite(header, 1, strlen(header), f);
  if (ndata) fwrite(data, 1, ndata, f);
  fclose(f);
  return path;
}

/* The read must fail with one line that names path and holds want and want2 (if not NULL). */
static void expect_error(const char *path, const char *want, const char *want2) {
  dpm_st_file f;
  char err[DPM_ERRLEN] = "";
  int rc = dpm_st_read(path, &f, err);
  CHECK(rc == -1, "%s: read succeeded, expected an error with '%s'", path, want);
  if (rc) {
    CHECK(f.n == 0 && f.t == NULL, "%s: file not empty after a failed read", path);
    CHECK(strstr(err, path) != NULL, "error does not name the file %s: %s", path, err);
    CHECK(strstr(err, want) != NULL, "error for %s lacks '%s': %s", path, want, err);
    CHECK(!want2 || strstr(err, want2) != NULL, "error for %s lacks '%s': %s", path, want2, err);
    CHECK(strchr(err, '\n') == NULL, "error is not one line: %s", err);
  } else {
    dpm_st_free(&f);
  }
}

static void test_reference(void) {
  char st[512], h5[512], cj[512], err[DPM_ERRLEN];
  ref_path(st, sizeof st, "model.safetensors");
  ref_path(h5, sizeof h5, "reference.h5");
  ref_path(cj, sizeof cj, "config.json");
  dpm_st_file f;
  int rc = dpm_st_read(st, &f, err);
  CHECK(rc == 0, "read %s: %s", st, err);
  if (rc) return;
  CHECK(f.n == 28 && f.format && !strcmp(f.format, "pt"), "%d tensors, format %s", f.n, f.format ? f.format : "none");
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  hid_t ref = H5Fopen(h5, H5F_ACC_RDONLY, H5P_DEFAULT);
  CHECK(ref >= 0, "cannot open %s", h5);
  size_t total = 0;
  for (int i = 0; i < f.n && ref >= 0; i++) {
    const dpm_st_tensor *t = &f.t[i];
    char name[256];
    snprintf(name, sizeof name, "/weights/%s", t->name);
    hid_t d = H5Dopen2(ref, name, H5P_DEFAULT);
    CHECK(d >= 0, "reference has no %s", name);
    if (d < 0) continue;
    hid_t sp = H5Dget_space(d);
    hsize_t dims[4];
    int r = H5Sget_simple_extent_dims(sp, dims, NULL);
    H5Sclose(sp);
    int same_shape = r == t->rank && !strcmp(t->dtype, "F32");
    for (int k = 0; same_shape && k < r; k++) same_shape = (int64_t)dims[k] == t->shape[k];
    CHECK(same_shape, "%s: rank %d dtype %s, reference rank %d", t->name, t->rank, t->dtype, r);
    double *w = malloc((size_t)t->numel * sizeof *w);
    H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, w);
    H5Dclose(d);
    int64_t bad = 0;
    for (int64_t j = 0; j < t->numel; j++) bad += (double)t->data[j] != w[j];
    CHECK(bad == 0, "%s: %lld of %lld values differ from the reference", t->name, (long long)bad, (long long)t->numel);
    total += (size_t)t->numel;
    free(w);
  }
  if (ref >= 0) H5Fclose(ref);
  CHECK(total == 28032, "%zu parameters", total);

  /* the canonical list of the config: the file's tensors in its order, and src/nn/gpt.c's names and shapes */
  dpm_hf_gpt2_config cfg;
  CHECK(dpm_hf_gpt2_read_config(cj, &cfg, err) == 0, "config: %s", err);
  CHECK(cfg.vocab_size == 64 && cfg.n_positions == 16 && cfg.n_embd == 32 && cfg.n_head == 4 && cfg.n_layer == 2 &&
            cfg.tie_word_embeddings == 1, "config values");
  const dpm_st_tensor *m[29];
  CHECK(dpm_hf_gpt2_num_tensors(&cfg) == 28, "28 tensors");
  CHECK(dpm_hf_gpt2_match(&cfg, cj, &f, st, m, err) == 0, "match: %s", err);
  for (int k = 0; k < 28; k++) CHECK(m[k] == &f.t[k], "tensor %d is not the file's tensor %d", k, k);
  for (int tied = 0; tied <= 1; tied++) {
    dpm_hf_gpt2_config c2 = cfg;
    c2.tie_word_embeddings = tied;
    c2.n_layer = 3;
    dpm_gpt_config gc = {.V = 64, .T = 16, .C = 32, .H = 4, .L = 3, .tied = tied};
    dpm_gpt *g = dpm_gpt_create(&gc, 1, err);
    CHECK(g && dpm_gpt_num_tensors(g) == dpm_hf_gpt2_num_tensors(&c2), "nn/gpt has %d tensors, hf_gpt2 %d",
          g ? dpm_gpt_num_tensors(g) : -1, dpm_hf_gpt2_num_tensors(&c2));
    for (int k = 0; g && k < dpm_gpt_num_tensors(g); k++) {
      char name[128];
      int64_t shape[2];
      int dims[2], r = dpm_hf_gpt2_tensor(&c2, k, name, sizeof name, shape), rg = dpm_gpt_tensor_shape(g, k, dims);
      CHECK(!strcmp(name, dpm_gpt_tensor_name(g, k)) && r == rg && shape[0] == dims[0] && (r == 1 || shape[1] == dims[1]),
            "tensor %d: hf_gpt2 %s (rank %d), nn/gpt %s (rank %d)", k, name, r, dpm_gpt_tensor_name(g, k), rg);
    }
    dpm_gpt_free(g);
  }

  /* write it back: every tensor equal, and the data section byte for byte the reference file's */
  char out[512];
  snprintf(out, sizeof out, "%s/back.safetensors", dir);
  CHECK(dpm_st_write(out, f.n, f.t, err) == 0, "write: %s", err);
  dpm_st_file b;
  rc = dpm_st_read(out, &b, err);
  CHECK(rc == 0, "read back: %s", err);
  for (int i = 0; rc == 0 && i < f.n; i++)
    CHECK(!strcmp(b.t[i].name, f.t[i].name) && b.t[i].numel == f.t[i].numel &&
              !memcmp(b.t[i].data, f.t[i].data, sizeof(float) * (size_t)f.t[i].numel),
          "tensor %s differs after the round trip", f.t[i].name);
  if (rc == 0) dpm_st_free(&b);
  size_t la = 0, lb = 0;
  unsigned char *A = slurp(st, &la), *B = slurp(out, &lb);
  uint64_t ha = 0, hb = 0;
  if (A && la >= 8) memcpy(&ha, A, 8);
  if (B && lb >= 8) memcpy(&hb, B, 8);
  CHECK(A && B && (8 + hb) % 8 == 0, "written header length %llu does not align the data to 8 bytes", (unsigned long long)hb);
  CHECK(A && B && la - 8 - ha == lb - 8 - hb && !memcmp(A + 8 + ha, B + 8 + hb, la - 8 - ha),
        "data sections differ (%zu vs %zu bytes)", la - 8 - (size_t)ha, lb - 8 - (size_t)hb);

  /* truncations of the real file: inside the length, inside the header, inside the data */
  const size_t cuts[] = {5, 8 + 100, 8 + (size_t)ha + 1000, la - 1};
  const char *wants[] = {"truncated", "beyond the file", "beyond the data section", "beyond the data section"};
  for (int c = 0; A && c < 4; c++) {
    char cut[512];
    snprintf(cut, sizeof cut, "%s/cut%d.safetensors", dir, c);
    FILE *fc = fopen(cut, "wb");
    fwrite(A, 1, cuts[c], fc);
    fclose(fc);
    expect_error(cut, wants[c], c >= 2 ? "tensor '" : NULL);
  }
  free(A);
  free(B);
  dpm_st_free(&f);
}

static void test_conversions(void) {
  /* F16: sign, 5 exponent bits (bias 15), 10 mantissa bits; subnormals are m 2^-24 */
  const struct {
    uint16_t h;
    double v;
  } f16[] = {{0x3C00, 1.0},        {0xC000, -2.0},           {0x7BFF, 65504.0},          {0x0001, 5.9604644775390625e-08},
             {0x03FF, 6.097555160522461e-05}, {0x0400, 6.103515625e-05}, {0x3555, 0.333251953125}, {0x0000, 0.0},
             {0xB800, -0.5},       {0x5640, 100.0}};
  for (size_t i = 0; i < sizeof f16 / sizeof f16[0]; i++)
    CHECK((double)dpm_st_f16_to_f32(f16[i].h) == f16[i].v, "F16 %04x -> %.17g, expected %.17g", f16[i].h,
          (double)dpm_st_f16_to_f32(f16[i].h), f16[i].v);
  CHECK(signbit(dpm_st_f16_to_f32(0x8000)) && dpm_st_f16_to_f32(0x8000) == 0, "F16 8000 is -0");
  CHECK(isinf(dpm_st_f16_to_f32(0x7C00)) && dpm_st_f16_to_f32(0xFC00) < 0 && isnan(dpm_st_f16_to_f32(0x7E00)),
        "F16 infinities and NaN");
  /* BF16: the top 16 bits of a float32 */
  const struct {
    uint16_t b;
    double v;
  } bf16[] = {{0x3F80, 1.0}, {0x4049, 3.140625}, {0xC2F7, -123.5}, {0x0001, 9.183549615799121e-41},
              {0x7F7F, 3.3895313892515355e+38}, {0x3E80, 0.25}};
  for (size_t i = 0; i < sizeof bf16 / sizeof bf16[0]; i++)
    CHECK((double)dpm_st_bf16_to_f32(bf16[i].b) == bf16[i].v, "BF16 %04x -> %.17g, expected %.17g", bf16[i].b,
          (double)dpm_st_bf16_to_f32(bf16[i].b), bf16[i].v);

  /* a file holding one tensor of each dtype, a scalar and an empty tensor */
  unsigned char data[64];
  const uint16_t h[6] = {0x3C00, 0xC000, 0x0001, 0x3555, 0x7BFF, 0x8000}, b[4] = {0x3F80, 0x4049, 0xC2F7, 0x0001};
  const double d[2] = {0.1, -1e-50};
  const float s = 2.5f;
  memcpy(data, h, 12);
  memcpy(data + 12, b, 8);
  memcpy(data + 20, d, 16);
  memcpy(data + 36, &s, 4);
  const char *p = craft("dtypes",
                        "{\"half\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
                        "\"brain\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[12,20]},"
                        "\"empty\":{\"dtype\":\"F32\",\"shape\":[0,7],\"data_offsets\":[20,20]},"
                        "\"double\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[20,36]},"
                        "\"scalar\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[36,40]},"
                        "\"__metadata__\":{\"note\":\"x\"}}  ",
                        0, data, 40);
  dpm_st_file f;
  char err[DPM_ERRLEN];
  int rc = dpm_st_read(p, &f, err);
  CHECK(rc == 0, "dtypes file: %s", err);
  if (rc) return;
  const dpm_st_tensor *th = dpm_st_find(&f, "half"), *tb = dpm_st_find(&f, "brain"), *td = dpm_st_find(&f, "double"),
                      *ts = dpm_st_find(&f, "scalar"), *te = dpm_st_find(&f, "empty");
  CHECK(th && tb && td && ts && te && !dpm_st_find(&f, "nope") && f.n == 5 && f.format == NULL, "tensors found");
  if (th && tb && td && ts && te) {
    const double hv[6] = {1, -2, 5.9604644775390625e-08, 0.333251953125, 65504, 0};
    for (int i = 0; i < 6; i++) CHECK((double)th->data[i] == hv[i], "half[%d] = %.17g", i, (double)th->data[i]);
    CHECK(signbit(th->data[5]), "half[5] is -0");
    CHECK(th->rank == 2 && th->shape[0] == 2 && th->shape[1] == 3 && th->numel == 6 && !strcmp(th->dtype, "F16"), "half shape");
    const double bv[4] = {1, 3.140625, -123.5, 9.183549615799121e-41};
    for (int i = 0; i < 4; i++) CHECK((double)tb->data[i] == bv[i], "brain[%d] = %.17g", i, (double)tb->data[i]);
    CHECK(td->data[0] == 0.1f && td->data[1] == 0 && signbit(td->data[1]), "F64 rounded to float: %.9g %.9g",
          (double)td->data[0], (double)td->data[1]);
    CHECK(ts->rank == 0 && ts->numel == 1 && ts->data[0] == 2.5f, "scalar");
    CHECK(te->rank == 2 && te->numel == 0, "empty tensor");
  }
  dpm_st_free(&f);
}

#define T1 "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}"

static void test_errors(void) {
  float z[16] = {0};
  expect_error(craft("short", "", 0, NULL, 0), "too small", NULL); /* 8 bytes: length 0 */
  expect_error(craft("absurd", T1, 4000000000000ull, z, 8), "absurd", NULL);
  expect_error(craft("beyond", T1, 1000, z, 8), "beyond the file", NULL);
  expect_error(craft("tiny", "{}", 1, NULL, 0), "too small", NULL);
  expect_error(craft("json", "{\"a\":{\"dtype\":\"F32\",", 0, z, 8), "invalid JSON", NULL);
  expect_error(craft("after", "{} x", 0, NULL, 0), "text after", NULL);
  expect_error(craft("array", "[1, 2]", 0, NULL, 0), "not an object", NULL);
  const char *nul = craft("nul", "{\"a\":1}", 9, NULL, 0); /* 7 bytes of JSON, two NUL bytes */
  FILE *fn = fopen(nul, "ab");
  fwrite("\0\0", 1, 2, fn);
  fclose(fn);
  expect_error(nul, "NUL", NULL);
  expect_error(craft("entry", "{\"a\":[1]}", 0, NULL, 0), "tensor 'a'", "not an object");
  expect_error(craft("dtype", "{\"w\":{\"dtype\":\"F17\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, z, 8),
               "tensor 'w'", "unknown dtype \"F17\"");
  expect_error(craft("i64", "{\"w\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 0, z, 8), "tensor 'w'",
               "dtype I64 is not supported");
  expect_error(craft("noshape", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 0, z, 8), "tensor 'w'", "\"shape\"");
  expect_error(craft("negshape", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 0, z, 8),
               "tensor 'w'", "shape entry 0");
  expect_error(craft("fracshape", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 0, z, 8),
               "tensor 'w'", "shape entry 0");
  expect_error(craft("rank9", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 0, z, 4),
               "tensor 'w'", "9 dimensions");
  expect_error(craft("fracoff", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.5]}}", 0, z, 8),
               "tensor 'w'", "data_offsets");
  expect_error(craft("threeoff", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 0, z, 8),
               "tensor 'w'", "data_offsets");
  expect_error(craft("backwards", "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 0, z, 8),
               "tensor 'w'", "out of order");
  expect_error(craft("count", "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 0, z, 8), "tensor 'w'",
               "hold 8 bytes, but shape [3] of F32 needs 12");
  expect_error(craft("count16", "{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 0, z, 16),
               "tensor 'w'", "needs 8");
  expect_error(craft("overlap",
                     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 0, z, 12),
               "tensor 'b'", "overlap tensor 'a'");
  expect_error(craft("same",
                     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, z, 8),
               "tensor '", "overlap");
  expect_error(craft("gap",
                     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", 0, z, 20),
               "tensor 'b'", "gap");
  expect_error(craft("late", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 0, z, 12), "tensor 'a'",
               "gap");
  expect_error(craft("outside", T1, 0, z, 4), "tensor 'a'", "beyond the data section (4 bytes)");
  expect_error(craft("extra", T1, 0, z, 12), "4 bytes after the last tensor", NULL);
  expect_error(craft("dup",
                     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                     "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 0, z, 16),
               "tensor 'a'", "duplicate");
  expect_error(craft("emptyname", "{\"\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, z, 8), "empty name",
               NULL);
  expect_error(craft("meta", "{\"__metadata__\":{\"format\":3},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                     0, z, 8), "__metadata__", "format");
  const float nan_inf[2] = {1.0f, NAN};
  expect_error(craft("nan", T1, 0, nan_inf, 8), "tensor 'a'", "element 1 is NaN");
  const uint16_t hinf[2] = {0x3C00, 0x7C00};
  expect_error(craft("hinf", "{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 0, hinf, 4), "tensor 'a'",
               "element 1 is infinite");
  const double dbig[2] = {1.0, -1e39};
  expect_error(craft("f64range", "{\"a\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}}", 0, dbig, 16),
               "tensor 'a'", "element 1 = -1e+39 is outside the float32 range");
  expect_error("/nonexistent/x.safetensors", "cannot open", NULL);

  /* the writer refuses what the reader would */
  char err[DPM_ERRLEN], out[512];
  snprintf(out, sizeof out, "%s/w.safetensors", dir);
  float v[2] = {1, 2};
  dpm_st_tensor two[2] = {{.name = "x", .rank = 1, .shape = {2}, .data = v}, {.name = "x", .rank = 1, .shape = {2}, .data = v}};
  CHECK(dpm_st_write(out, 2, two, err) == -1 && strstr(err, "'x'"), "duplicate names written: %s", err);
  two[1].name = "__metadata__";
  CHECK(dpm_st_write(out, 2, two, err) == -1 && strstr(err, "reserved"), "reserved name written: %s", err);
  two[1].name = "q\"\\\n";  /* a name that needs JSON escapes reads back as itself */
  CHECK(dpm_st_write(out, 2, two, err) == 0, "write: %s", err);
  dpm_st_file f;
  CHECK(dpm_st_read(out, &f, err) == 0 && f.n == 2 && dpm_st_find(&f, "q\"\\\n") && !strcmp(f.format, "pt"),
        "escaped name: %s", err);
  if (f.n) dpm_st_free(&f);
  CHECK(access(out, F_OK) == 0, "written");
}

int main(int argc, char **argv) {
  dpm_test_init(&argc, &argv);
  snprintf(dir, sizeof dir, "%s/dpm_st_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  CHECK(mkdtemp(dir) != NULL, "mkdtemp");
  test_reference();
  test_conversions();
  test_errors();
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
  return dpm_test_finish();
}
