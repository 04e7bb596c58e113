/* libFuzzer target for the safetensors reader and the checkpoint loader.
   Build and run: `make fuzz` (clang -fsanitize=fuzzer,address,undefined); `make fuzz-seeds` writes
   the seed corpus (tests/fuzz/safetensors/) with the -DFUZZ_WRITE_SEEDS build of this file.

   Each input is parsed from an exact-size copy (ASan sees any overread). Properties checked (a
   violation traps): only documented codes come back, the out pointer is untouched on failure, and
   on success the file copy equals the input, every entry has dtype F32/I32, rank 0..4, a data range
   of 4 x prod(shape) bytes inside the data section holding the input's bytes, the ranges tile the
   data section exactly, names and metadata strings are NUL-terminated inside the string storage,
   names are unique and found by resbm_safetensors_find, metadata keys are unique and give their
   value, and the same bytes with one byte more or less are refused. One input in 16 (by its CRC)
   also goes through a temp file: an accepted one reads back the same through
   resbm_safetensors_read, a max_bytes one short refuses it, and resbm_checkpoint_load into a tiny
   model either fails leaving the model exactly as it was (with a reason) or loads exactly the
   file's values and step; a refused one is refused from the file with the same code. */
#define RESBM_IMPLEMENTATION
#include "../resbm.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REQUIRE(c) do { if (!(c)) __builtin_trap(); } while (0)

enum { MAX_INPUT = 1 << 20 };

static int known_code(int rc) {
    return rc == RESBM_OK || rc == RESBM_EFORMAT || rc == RESBM_ENOMEM || rc == RESBM_EOVERFLOW;
}

static uint64_t le64(const unsigned char *p) {
    uint64_t v = 0;
    int k;
    for (k = 0; k < 8; k++) v |= (uint64_t)p[k] << (8 * k);
    return v;
}

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The tiny model every checkpoint seed and the loader use (adamw) or a 2-stage sgd variant. */
static int tiny_model(int opt_kind, int stages, int stage, resbm_model **out) {
    resbm_model_config mc = resbm_model_config_default();
    resbm_opt_config oc = resbm_opt_config_default();
    mc.vocab = 4; mc.d = 4; mc.layers = stages; mc.heads = 2; mc.ff = 4; mc.seq = 2; mc.batch = 1;
    mc.stages = stages; mc.stage = stage;
    if (stages > 1) { mc.r = 2; mc.m = 2; }
    oc.kind = opt_kind;
    return resbm_model_init(&mc, &oc, out);
}

typedef struct { size_t at, bytes; } range;

static int cmp_range(const void *a, const void *b) {
    const range *x = (const range *)a, *y = (const range *)b;
    if (x->at != y->at) return x->at < y->at ? -1 : 1;
    return x->bytes < y->bytes ? -1 : x->bytes > y->bytes;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A string the parser returned: NUL-terminated inside its string storage (names, hl + 1 bytes). */
static size_t check_string(const resbm_st_file *f, size_t hl, const char *s) {
    const char *end = f->names + hl + 1, *z;
    REQUIRE(s && s >= f->names && s < end);
    z = (const char *)memchr(s, 0, (size_t)(end - s));
    REQUIRE(z != NULL);
    return (size_t)(z - s);
}

/* Everything a successful parse of p[0..n) promises. */
static void check_file(const resbm_st_file *f, const unsigned char *p, size_t n) {
    const resbm_st_entry *e;
    size_t count = (size_t)-1, i, j, hl, base, covered = 0;
    range *rg;
    const char **names;
    REQUIRE(n >= 8);
    hl = (size_t)le64(p);
    REQUIRE(hl >= 2 && hl <= n - 8);
    base = 8 + hl;
    /* the opaque file: a copy of the input, the data section right after the header */
    REQUIRE(f->len == n && f->data == base && !memcmp(f->buf, p, n));
    e = resbm_safetensors_entries(f, &count);
    REQUIRE(count == f->n && (count == 0 || e != NULL));
    REQUIRE(count <= hl); /* each entry needs header bytes */
    rg = (range *)malloc((count + 1) * sizeof(range));
    names = (const char **)malloc((count + 1) * sizeof(char *));
    REQUIRE(rg && names);
    for (i = 0; i < count; i++) {
        const unsigned char *d = (const unsigned char *)e[i].data;
        size_t cnt = 1, bytes, at;
        int k;
        REQUIRE(e[i].dtype == RESBM_DT_F32 || e[i].dtype == RESBM_DT_I32);
        REQUIRE(e[i].ndim >= 0 && e[i].ndim <= 4);
        for (k = 0; k < e[i].ndim; k++) {
            REQUIRE(e[i].shape[k] == 0 || cnt <= ((size_t)-1 / 4) / e[i].shape[k]);
            cnt *= e[i].shape[k];
        }
        bytes = 4 * cnt;
        REQUIRE(d != NULL && d >= f->buf + base && d <= f->buf + n);
        at = (size_t)(d - f->buf);
        REQUIRE(bytes <= n - at);
        REQUIRE(!memcmp(d, p + at, bytes)); /* reads every byte of the entry */
        rg[i].at = at - base;
        rg[i].bytes = bytes;
        check_string(f, hl, e[i].name);
        REQUIRE(strcmp(e[i].name, "__metadata__") != 0);
        REQUIRE(resbm_safetensors_find(f, e[i].name) == &e[i]);
        names[i] = e[i].name;
    }
    /* ranges disjoint and covering the data section exactly */
    qsort(rg, count, sizeof(range), cmp_range);
    for (i = 0; i < count; i++) {
        REQUIRE(rg[i].at == covered);
        covered += rg[i].bytes;
    }
    REQUIRE(covered == n - base);
    /* names unique */
    qsort(names, count, sizeof(char *), cmp_str);
    for (i = 1; i < count; i++) REQUIRE(strcmp(names[i - 1], names[i]) != 0);
    free(rg);
    free(names);
    /* metadata: strings inside the storage, keys unique, a lookup gives the key's value */
    REQUIRE(f->n_meta <= hl);
    for (i = 0; i < f->n_meta; i++) {
        const char *key = f->meta[2 * i];
        check_string(f, hl, key);
        check_string(f, hl, f->meta[2 * i + 1]);
        for (j = 0; j < i && strcmp(f->meta[2 * j], key); j++) {}
        REQUIRE(j == i && resbm_safetensors_meta(f, key) == f->meta[2 * i + 1]);
    }
    REQUIRE(resbm_safetensors_find(f, NULL) == NULL && resbm_safetensors_meta(f, NULL) == NULL);
}

/* Parses p[0..n); checks the code, the untouched-on-failure rule and, on success, the file. */
static int parse_checked(const unsigned char *p, size_t n, resbm_st_file **out) {
    static resbm_st_file *const sentinel = (resbm_st_file *)&sentinel;
    resbm_st_file *f = sentinel;
    int rc = resbm_safetensors_parse(p, n, &f);
    REQUIRE(known_code(rc) && resbm_strerror(rc) != NULL);
    if (rc) {
        REQUIRE(f == sentinel);
        return rc;
    }
    REQUIRE(f != NULL && f != sentinel);
    check_file(f, p, n);
    *out = f;
    return rc;
}

/* ---- the file path: a temp file, resbm_safetensors_read and resbm_checkpoint_load ----------- */
static char tmp_path[64];
static int tmp_fd = -1;
static resbm_model *model;
static unsigned char *snap;
static size_t snap_len;

static void cleanup(void) {
    if (tmp_fd >= 0) { close(tmp_fd); unlink(tmp_path); }
    resbm_model_free(model);
    free(snap);
}

static int setup(void) {
    static int done;
    const resbm_param *ps;
    size_t np, i;
    if (done) return tmp_fd >= 0 && model != NULL;
    done = 1;
    atexit(cleanup);
    strcpy(tmp_path, "/tmp/fuzz_safetensors_XXXXXX");
    if ((tmp_fd = mkstemp(tmp_path)) < 0) return 0;
    if (tiny_model(RESBM_OPT_ADAMW, 1, 0, &model)) { model = NULL; return 0; }
    ps = resbm_model_params(model, &np);
    for (i = 0; i < np; i++) snap_len += 3 * 4 * ps[i].value.ne[0] * ps[i].value.ne[1];
    snap = (unsigned char *)malloc(snap_len);
    return snap != NULL;
}

static int write_tmp(const unsigned char *p, size_t n) {
    size_t done = 0;
    if (ftruncate(tmp_fd, 0)) return 0;
    while (done < n) {
        ssize_t w = pwrite(tmp_fd, p + done, n - done, (off_t)done);
        if (w <= 0) return 0;
        done += (size_t)w;
    }
    return 1;
}

/* Copies (save) or compares (!save) every float the model holds: values, m, v. */
static int model_state(int save) {
    const resbm_param *ps;
    size_t np, i, at = 0;
    int same = 1, t;
    ps = resbm_model_params(model, &np);
    for (i = 0; i < np; i++)
        for (t = 0; t < 3; t++) {
            const float *src = t == 0 ? ps[i].value.data : t == 1 ? ps[i].m : ps[i].v;
            size_t bytes = 4 * ps[i].value.ne[0] * ps[i].value.ne[1];
            if (!src) continue;
            if (save) memcpy(snap + at, src, bytes);
            else same &= !memcmp(snap + at, src, bytes);
            at += bytes;
        }
    return same;
}

/* After a successful load: every float the model holds is the file's, bit for bit. */
static void check_loaded(const resbm_st_file *f) {
    const resbm_param *ps;
    size_t np, i, q;
    int t;
    ps = resbm_model_params(model, &np);
    for (i = 0; i < np; i++)
        for (t = 0; t < 3; t++) {
            const float *dst = t == 0 ? ps[i].value.data : t == 1 ? ps[i].m : ps[i].v;
            size_t cnt = ps[i].value.ne[0] * ps[i].value.ne[1];
            char nm[2 * RESBM_NAME_MAX + 8];
            const resbm_st_entry *e;
            if (!dst) continue;
            snprintf(nm, sizeof(nm), "%s%s%s", t ? "opt." : "", ps[i].name, t == 1 ? ".m" : t == 2 ? ".v" : "");
            e = resbm_safetensors_find(f, nm);
            REQUIRE(e && e->dtype == RESBM_DT_F32 && e->ndim == ps[i].value.ndim && e->shape[0] == ps[i].value.ne[0]);
            for (q = 0; q < cnt; q++) {
                uint32_t u = le32((const unsigned char *)e->data + 4 * q), v;
                memcpy(&v, &dst[q], 4);
                REQUIRE(u == v && (u & 0x7f800000u) != 0x7f800000u);
            }
        }
}

static void through_file(const unsigned char *p, size_t n, int parse_rc, const resbm_st_file *f) {
    resbm_st_file *g = NULL;
    char why[256];
    long step0;
    int rc;
    if (!setup() || !write_tmp(p, n)) return;
    rc = resbm_safetensors_read(tmp_path, n ? n : 1, &g);
    if (rc == RESBM_ENOMEM) return;
    REQUIRE(rc == parse_rc);
    if (rc) return;
    check_file(g, p, n);
    resbm_safetensors_free(g);
    if (n > 1) REQUIRE(resbm_safetensors_read(tmp_path, n - 1, &g) == RESBM_EFORMAT);
    /* the checkpoint loader: all or nothing */
    model_state(1);
    step0 = resbm_model_step_count(model);
    memset(why, 'x', sizeof(why));
    rc = resbm_checkpoint_load(tmp_path, &model, 1, why, sizeof(why));
    REQUIRE(rc == RESBM_OK || rc == RESBM_EFORMAT || rc == RESBM_ENONFINITE || rc == RESBM_ENOMEM);
    REQUIRE(memchr(why, 0, sizeof(why)) != NULL);
    if (rc) {
        REQUIRE(why[0] != 0);
        REQUIRE(model_state(0) && resbm_model_step_count(model) == step0);
    } else {
        const char *s = resbm_safetensors_meta(f, "step");
        REQUIRE(why[0] == 0 && s && resbm_model_step_count(model) == strtol(s, NULL, 10));
        check_loaded(f);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t n = size < MAX_INPUT ? size : MAX_INPUT;
    unsigned char *p = (unsigned char *)malloc(n ? n : 1), *q; /* exact size: ASan sees overreads */
    resbm_st_file *f = NULL, *g;
    int rc, file_turn;
    if (!p) return 0;
    memcpy(p, data, n);
    /* the file path (temp file, read, checkpoint load) costs a hundred parses: one input in 16,
       chosen by content so a crashing input replays the same way */
    file_turn = resbm_crc32c(0, p, n) % 16 == 0;
    rc = parse_checked(p, n, &f);
    if (rc == RESBM_OK) {
        /* one byte more or one byte less is never a valid file: the data must be covered exactly */
        if ((q = (unsigned char *)malloc(n + 1)) != NULL) {
            memcpy(q, p, n);
            q[n] = 0;
            g = NULL;
            rc = parse_checked(q, n + 1, &g);
            REQUIRE(rc != RESBM_OK);
            rc = parse_checked(q, n - 1, &g);
            REQUIRE(rc != RESBM_OK);
            free(q);
        }
        if (file_turn) through_file(p, n, RESBM_OK, f);
        resbm_safetensors_free(f);
    } else if (rc != RESBM_ENOMEM && file_turn) {
        through_file(p, n, rc, NULL);
    }
    free(p);
    return 0;
}

#ifdef FUZZ_WRITE_SEEDS
/* `fuzz_safetensors_seeds DIR` writes the seed corpus: files from the library's own writer and
   checkpoint save (tiny models), hand-made valid corner cases, and files with one fault each.
   Every seed is checked to parse (and load, for checkpoints) with the code its name promises and
   is run through LLVMFuzzerTestOneInput once; a mismatch fails the program. */
enum { CAP = 1 << 16 };
static unsigned char ckpt[CAP], mixed[CAP], tmp[CAP];
static size_t ckpt_len, mixed_len;
static int failures;

static size_t slurp(const char *path, unsigned char *buf) {
    FILE *f = fopen(path, "rb");
    size_t n;
    if (!f) return 0;
    n = fread(buf, 1, CAP, f);
    fclose(f);
    remove(path);
    return n;
}

/* Writes a seed and checks it: parse code `want`, and for checkpoints (`want_load` != 1) the code
   resbm_checkpoint_load gives into the fuzzer's tiny model. */
static void put(const char *dir, const char *name, const unsigned char *p, size_t n, int want, int want_load) {
    char path[512];
    resbm_st_file *f = NULL;
    FILE *fp;
    int rc;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (!(fp = fopen(path, "wb")) || fwrite(p, 1, n, fp) != n) { failures++; fprintf(stderr, "cannot write %s\n", path); }
    if (fp) fclose(fp);
    rc = resbm_safetensors_parse(p, n, &f);
    if (rc != want) { failures++; fprintf(stderr, "%s: parse gives %d, want %d\n", name, rc, want); }
    if (!rc) resbm_safetensors_free(f);
    if (want_load != 1) {
        char why[256];
        resbm_model *m;
        if (tiny_model(RESBM_OPT_ADAMW, 1, 0, &m)) { failures++; return; }
        rc = resbm_checkpoint_load(path, &m, 1, why, sizeof(why));
        if (rc != want_load) { failures++; fprintf(stderr, "%s: load gives %d (%s), want %d\n", name, rc, why, want_load); }
        resbm_model_free(m);
    }
    LLVMFuzzerTestOneInput(p, n);
}

/* A file from a header string and `data_len` bytes of data (1.0f little-endian, repeated). */
static size_t craft(unsigned char *out, const char *header, size_t data_len) {
    size_t hl = strlen(header), i;
    int k;
    for (k = 0; k < 8; k++) out[k] = (unsigned char)((unsigned long long)hl >> (8 * k));
    memcpy(out + 8, header, hl);
    for (i = 0; i < data_len; i++) out[8 + hl + i] = (unsigned char)(i % 4 == 2 ? 0x80 : i % 4 == 3 ? 0x3f : 0);
    return 8 + hl + data_len;
}

/* `src` with the first `from` in its header replaced by `to` (header length rewritten). */
static size_t patch(unsigned char *out, const unsigned char *src, size_t n, const char *from, const char *to) {
    size_t hl = (size_t)le64(src), fl = strlen(from), tl = strlen(to), i, nh;
    int k;
    for (i = 0; i + fl <= hl; i++)
        if (!memcmp(src + 8 + i, from, fl)) break;
    if (i + fl > hl) { failures++; fprintf(stderr, "patch: no \"%s\"\n", from); return 0; }
    nh = hl - fl + tl;
    for (k = 0; k < 8; k++) out[k] = (unsigned char)((unsigned long long)nh >> (8 * k));
    memcpy(out + 8, src + 8, i);
    memcpy(out + 8 + i, to, tl);
    memcpy(out + 8 + i + tl, src + 8 + i + fl, n - 8 - i - fl);
    return n - fl + tl;
}

#define T(name, dims) "\"" name "\":{\"dtype\":\"F32\",\"shape\":[" dims "],\"data_offsets\":"

int main(int argc, char **argv) {
    static const struct { const char *name, *header; size_t data; int rc; } hand[] = {
        /* valid corner cases */
        {"ok_scalar", "{" T("s", "") "[0,4]}}", 4, RESBM_OK},
        {"ok_escapes_ws", "{\"__metadata__\":{},\n \"a\\u00e9\\u20ac\\/\\n\" : { \"shape\" : [ 1 ] ,"
                          " \"data_offsets\":[0,4], \"dtype\":\"I32\" } }   ", 4, RESBM_OK},
        {"ok_empty_shared", "{" T("e", "0,3") "[4,4]}," T("f", "1") "[4,8]}," T("g", "1") "[0,4]}," T("z", "0") "[8,8]}}", 8, RESBM_OK},
        {"ok_meta_only", "{\"__metadata__\":{\"k\":\"v\",\"\":\"\"}}", 0, RESBM_OK},
        {"bad_meta_duplicate_key", "{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"}}", 0, RESBM_EFORMAT},
        {"bad_meta_twice_first_empty", "{\"__metadata__\":{},\"__metadata__\":{\"k\":\"v\"}}", 0, RESBM_EFORMAT},
        {"ok_rank4", "{" T("r", "1,2,1,2") "[0,16]}}", 16, RESBM_OK},
        /* one fault each */
        {"bad_json_unclosed", "{" T("a", "1") "[0,4]}", 4, RESBM_EFORMAT},
        {"bad_json_trailing_comma", "{" T("a", "1") "[0,4]},}", 4, RESBM_EFORMAT},
        {"bad_json_garbage_after", "{" T("a", "1") "[0,4]}} x", 4, RESBM_EFORMAT},
        {"bad_json_not_object", "[" T("a", "1") "[0,4]}]", 4, RESBM_EFORMAT},
        {"bad_json_float", "{" T("a", "1.0") "[0,4]}}", 4, RESBM_EFORMAT},
        {"bad_json_negative", "{" T("a", "-1") "[0,4]}}", 4, RESBM_EFORMAT},
        {"bad_json_leading_zero", "{" T("a", "01") "[0,4]}}", 4, RESBM_EFORMAT},
        {"bad_json_16_digits", "{" T("a", "1") "[0,1000000000000000]}}", 4, RESBM_EFORMAT},
        {"bad_json_escape", "{" T("a\\x", "1") "[0,4]}}", 4, RESBM_EFORMAT},
        {"bad_json_u0000", "{" T("a\\u0000", "1") "[0,4]}}", 4, RESBM_EFORMAT},
        {"bad_json_surrogate", "{" T("a\\ud83d\\ude00", "1") "[0,4]}}", 4, RESBM_EFORMAT},
        {"bad_json_raw_control", "{" T("a\x01", "1") "[0,4]}}", 4, RESBM_EFORMAT},
        {"bad_json_unterminated", "{\"a", 0, RESBM_EFORMAT},
        {"bad_dtype_f16", "{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, RESBM_EFORMAT},
        {"bad_dtype_missing", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, RESBM_EFORMAT},
        {"bad_dtype_number", "{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, RESBM_EFORMAT},
        {"bad_dtype_twice", "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, RESBM_EFORMAT},
        {"bad_field_unknown", "{" T("a", "1") "[0,4],\"x\":\"y\"}}", 4, RESBM_EFORMAT},
        {"bad_shape_size", "{" T("a", "3") "[0,8]}}", 8, RESBM_EFORMAT},
        {"bad_shape_rank5", "{" T("a", "1,1,1,1,1") "[0,4]}}", 4, RESBM_EFORMAT},
        {"bad_shape_overflow", "{" T("a", "999999999999999,999999999999999") "[0,4]}}", 4, RESBM_EFORMAT},
        {"bad_offsets_overlap", "{" T("a", "2") "[0,8]}," T("b", "2") "[4,12]}}", 12, RESBM_EFORMAT},
        {"bad_offsets_same", "{" T("a", "2") "[0,8]}," T("b", "2") "[0,8]}}", 8, RESBM_EFORMAT},
        {"bad_offsets_gap", "{" T("a", "1") "[0,4]}," T("b", "1") "[8,12]}}", 12, RESBM_EFORMAT},
        {"bad_offsets_empty_inside", "{" T("a", "2") "[0,8]}," T("e", "0") "[4,4]}}", 8, RESBM_EFORMAT},
        {"bad_offsets_reversed", "{" T("a", "0") "[4,0]}}", 4, RESBM_EFORMAT},
        {"bad_offsets_three", "{" T("a", "1") "[0,4,4]}}", 4, RESBM_EFORMAT},
        {"bad_offsets_past_end", "{" T("a", "2") "[0,8]}}", 4, RESBM_EFORMAT},
        {"bad_data_uncovered", "{" T("a", "1") "[0,4]}}", 8, RESBM_EFORMAT},
        {"bad_names_duplicate", "{" T("a", "1") "[0,4]}," T("a", "1") "[4,8]}}", 8, RESBM_EFORMAT},
        {"bad_names_duplicate_escaped", "{" T("a", "1") "[0,4]}," T("\\u0061", "1") "[4,8]}}", 8, RESBM_EFORMAT},
        {"bad_meta_twice", "{\"__metadata__\":{\"k\":\"v\"},\"__metadata__\":{\"k\":\"v\"}}", 0, RESBM_EFORMAT},
        {"bad_meta_number", "{\"__metadata__\":{\"k\":1}}", 0, RESBM_EFORMAT},
        {"bad_meta_nested", "{\"__metadata__\":{\"k\":{\"a\":\"b\"}}}", 0, RESBM_EFORMAT},
    };
    resbm_model *m[2];
    resbm_st_entry e[5];
    static const float f32[16] = {1, -2, 3.5f, 0, -0.0f, 1e-30f, 65504, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    static const int32_t i32[8] = {0, 1, -1, 2147483647, -2147483647 - 1, 5, 6, 7};
    const char *meta[] = {"quote\"back\\slash", "tab\tnl\n\x01 \xc3\xa9\xe2\x82\xac", "run", "seed"};
    const char *dir;
    char path[512];
    unsigned char small[64];
    size_t i, n;
    if (argc < 2) return 1;
    dir = argv[1];
    snprintf(path, sizeof(path), "%s/.seed.safetensors", dir);

    /* from the library's writer */
    memset(e, 0, sizeof(e));
    e[0].name = "f32.vec"; e[0].dtype = RESBM_DT_F32; e[0].ndim = 1; e[0].shape[0] = 3; e[0].data = f32;
    e[1].name = "i32.mat"; e[1].dtype = RESBM_DT_I32; e[1].ndim = 2; e[1].shape[0] = 2; e[1].shape[1] = 3; e[1].data = i32;
    e[2].name = "f32.rank4"; e[2].dtype = RESBM_DT_F32; e[2].ndim = 4; e[2].data = f32 + 3;
    e[2].shape[0] = 1; e[2].shape[1] = 1; e[2].shape[2] = 2; e[2].shape[3] = 2;
    e[3].name = "empty"; e[3].dtype = RESBM_DT_F32; e[3].ndim = 2; e[3].shape[0] = 0; e[3].shape[1] = 5; e[3].data = f32;
    e[4].name = "i32 \"odd\" name\\\x7f\xc3\xa9"; e[4].dtype = RESBM_DT_I32; e[4].ndim = 3; e[4].data = i32 + 2;
    e[4].shape[0] = 2; e[4].shape[1] = 1; e[4].shape[2] = 1;
    if (resbm_safetensors_write(path, e, 5, meta, 2) || !(mixed_len = slurp(path, mixed))) return 1;
    put(dir, "writer_mixed", mixed, mixed_len, RESBM_OK, 1);
    if (resbm_safetensors_write(path, e, 1, NULL, 0) || !(n = slurp(path, tmp))) return 1;
    put(dir, "writer_no_meta", tmp, n, RESBM_OK, 1);
    if (resbm_safetensors_write(path, e, 0, NULL, 0) || !(n = slurp(path, tmp))) return 1;
    put(dir, "writer_empty", tmp, n, RESBM_OK, 1);
    if (resbm_safetensors_write(path, e, 0, meta, 2) || !(n = slurp(path, tmp))) return 1;
    put(dir, "writer_meta_only", tmp, n, RESBM_OK, 1);

    /* checkpoints: the fuzzer's model (adamw: values, m, v) and a 2-stage sgd pair with a bottleneck */
    if (tiny_model(RESBM_OPT_ADAMW, 1, 0, &m[0])) return 1;
    if (resbm_checkpoint_save(path, m, 1, meta + 2, 1) || !(ckpt_len = slurp(path, ckpt))) return 1;
    resbm_model_free(m[0]);
    put(dir, "ckpt_adamw", ckpt, ckpt_len, RESBM_OK, RESBM_OK);
    if (tiny_model(RESBM_OPT_SGD, 2, 0, &m[0]) || tiny_model(RESBM_OPT_SGD, 2, 1, &m[1])) return 1;
    if (resbm_checkpoint_save(path, m, 2, NULL, 0) || !(n = slurp(path, tmp))) return 1;
    resbm_model_free(m[0]);
    resbm_model_free(m[1]);
    put(dir, "ckpt_sgd_2stage", tmp, n, RESBM_OK, RESBM_EFORMAT);

    /* hand-made */
    for (i = 0; i < sizeof(hand) / sizeof(hand[0]); i++) {
        n = craft(tmp, hand[i].header, hand[i].data);
        put(dir, hand[i].name, tmp, n, hand[i].rc, 1);
    }

    /* header length faults, on the writer's file */
    put(dir, "bad_len_short_file", mixed, 5, RESBM_EFORMAT, 1);
    memcpy(tmp, mixed, mixed_len);
    n = (size_t)le64(mixed) + 100;
    for (i = 0; i < 8; i++) tmp[i] = (unsigned char)((unsigned long long)n >> (8 * i));
    put(dir, "bad_len_past_file", tmp, mixed_len, RESBM_EFORMAT, 1);
    memset(tmp, 0xff, 8);
    put(dir, "bad_len_huge", tmp, mixed_len, RESBM_EFORMAT, 1);
    memset(tmp, 0, 8); tmp[0] = 1;
    put(dir, "bad_len_one", tmp, mixed_len, RESBM_EFORMAT, 1);
    n = (size_t)le64(mixed);
    put(dir, "bad_len_cut_in_header", mixed, 8 + n / 2, RESBM_EFORMAT, 1);
    put(dir, "bad_data_cut", mixed, mixed_len - 1, RESBM_EFORMAT, 1);
    memcpy(tmp, mixed, mixed_len); tmp[mixed_len] = 0;
    put(dir, "bad_data_extra_byte", tmp, mixed_len + 1, RESBM_EFORMAT, 1);
    n = craft(small, "{}", 0);
    put(dir, "ok_minimal", small, n, RESBM_OK, 1);

    /* checkpoint faults: the file parses, the loader refuses it */
    n = patch(tmp, ckpt, ckpt_len, "\"step\":\"0\"", "\"step\":\"-1\"");
    put(dir, "ckpt_bad_step", tmp, n, RESBM_OK, RESBM_EFORMAT);
    n = patch(tmp, ckpt, ckpt_len, "vocab=4", "vocab=5");
    put(dir, "ckpt_bad_config", tmp, n, RESBM_OK, RESBM_EFORMAT);
    n = patch(tmp, ckpt, ckpt_len, "\"adamw\"", "\"muon\"");
    put(dir, "ckpt_bad_opt", tmp, n, RESBM_OK, RESBM_EFORMAT);
    n = patch(tmp, ckpt, ckpt_len, "resbm-checkpoint-1", "resbm-checkpoint-2");
    put(dir, "ckpt_bad_format", tmp, n, RESBM_OK, RESBM_EFORMAT);
    n = patch(tmp, ckpt, ckpt_len, "\"lm_head\"", "\"lm_heax\"");
    put(dir, "ckpt_missing_tensor", tmp, n, RESBM_OK, RESBM_EFORMAT);
    n = patch(tmp, ckpt, ckpt_len, "\"tok_emb\":{\"dtype\":\"F32\",\"shape\":[4,4]", "\"tok_emb\":{\"dtype\":\"F32\",\"shape\":[2,8]");
    put(dir, "ckpt_wrong_shape", tmp, n, RESBM_OK, RESBM_EFORMAT);
    n = patch(tmp, ckpt, ckpt_len, "\"tok_emb\":{\"dtype\":\"F32\"", "\"tok_emb\":{\"dtype\":\"I32\"");
    put(dir, "ckpt_wrong_dtype", tmp, n, RESBM_OK, RESBM_EFORMAT);
    memcpy(tmp, ckpt, ckpt_len);
    n = 8 + (size_t)le64(ckpt);
    tmp[n] = 0; tmp[n + 1] = 0; tmp[n + 2] = 0xc0; tmp[n + 3] = 0x7f; /* NaN in the first tensor */
    put(dir, "ckpt_nan", tmp, ckpt_len, RESBM_OK, RESBM_ENONFINITE);

    if (failures) fprintf(stderr, "%d seed check(s) failed\n", failures);
    return failures != 0;
}
#endif
