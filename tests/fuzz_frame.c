/* libFuzzer target for the frame decoder (docs/design.md §5).
   Build and run: `make fuzz` (clang -fsanitize=fuzzer,address,undefined).

   Each input is tried three ways:
   1. as received, against the expectation its own header declares (reaches the CRC check);
   2. with the CRC recomputed, so the payload checks (size, NaN/Inf, i8 scales) are reached too;
   3. against a fixed expectation that differs from the header in one field chosen by the input.
   Properties checked (a violation traps): the decoder never reads outside the input (ASan), never
   writes the output on failure, returns only documented codes, and a frame that decodes re-encodes
   to the same bytes for f32 and decodes to the same values again. */
#define RESBM_IMPLEMENTATION
#include "../resbm.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_VALUES = 1 << 16 };
static float out[MAX_VALUES], again[MAX_VALUES];
static unsigned char buf[RESBM_FRAME_HEADER + 4 * MAX_VALUES + 1024];

#define REQUIRE(c) do { if (!(c)) __builtin_trap(); } while (0)

static int known_code(int rc) {
    return rc == RESBM_OK || (rc <= RESBM_ETRUNC && rc >= RESBM_ECRC) || rc == RESBM_EINVAL ||
           rc == RESBM_ENOSPACE || rc == RESBM_ENONFINITE || rc == RESBM_EOVERFLOW || rc == RESBM_ERANGE; /* a negative i8 scale */
}

/* Decodes against `e` with an output of `count` floats; checks the untouched-on-failure rule. */
static int try_decode(const unsigned char *p, size_t n, const resbm_frame_info *e, size_t count) {
    int rc;
    size_t i;
    memset(out, 0xA5, count * sizeof(float));
    rc = resbm_frame_decode(out, count, p, n, e);
    REQUIRE(known_code(rc));
    REQUIRE(resbm_strerror(rc) != NULL);
    if (rc) {
        const unsigned char *o = (const unsigned char *)out;
        for (i = 0; i < count * sizeof(float); i++) REQUIRE(o[i] == 0xA5);
        return rc;
    }
    for (i = 0; i < (size_t)e->rows * e->cols; i++) REQUIRE(out[i] - out[i] == 0.0f); /* finite */
    return rc;
}

/* A decoded frame encodes again; decoding that gives the same values (f32: the same bytes). */
static void roundtrip(const unsigned char *p, size_t n, const resbm_frame_info *e) {
    size_t count = (size_t)e->rows * e->cols, len = 0;
    int rc;
    memcpy(again, out, count * sizeof(float));
    rc = resbm_frame_encode(buf, sizeof(buf), &len, e, again);
    REQUIRE(rc == RESBM_OK);
    if (e->dtype == RESBM_WIRE_F32) REQUIRE(len <= n && !memcmp(buf, p, len));
    REQUIRE(resbm_frame_decode(out, count, buf, len, e) == RESBM_OK);
    if (e->dtype != RESBM_WIRE_I8) REQUIRE(!memcmp(out, again, count * sizeof(float)));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    resbm_frame_info info, e;
    size_t count, n = size < sizeof(buf) ? size : sizeof(buf);
    unsigned char *p = (unsigned char *)malloc(n ? n : 1); /* exact size: ASan sees any overread */
    int rc;
    if (!p) return 0;
    memcpy(p, data, n);
    rc = resbm_frame_peek(p, n, &info);
    REQUIRE(known_code(rc));
    if (rc == RESBM_OK && (uint64_t)info.rows * info.cols <= MAX_VALUES) {
        count = (size_t)info.rows * info.cols;
        /* 1: as received */
        if (try_decode(p, n, &info, count) == RESBM_OK) roundtrip(p, n, &info);
        /* 2: with a valid CRC, when the declared payload is inside the input */
        if (n >= RESBM_FRAME_HEADER) {
            uint32_t pb = (uint32_t)p[32] | (uint32_t)p[33] << 8 | (uint32_t)p[34] << 16 | (uint32_t)p[35] << 24;
            if (pb <= n - RESBM_FRAME_HEADER) {
                uint32_t crc = resbm_crc32c(resbm_crc32c(0, p, 36), p + RESBM_FRAME_HEADER, pb);
                p[36] = (unsigned char)crc; p[37] = (unsigned char)(crc >> 8);
                p[38] = (unsigned char)(crc >> 16); p[39] = (unsigned char)(crc >> 24);
                if (try_decode(p, n, &info, count) == RESBM_OK) roundtrip(p, n, &info);
            }
        }
        /* 3: one field off, or the output one value short: always refused */
        e = info;
        switch (size ? data[size - 1] % 8 : 0) {
        case 0: e.kind = e.kind % 3 + 1; break;
        case 1: e.dtype = (e.dtype + 1) % 4; break;
        case 2: e.from_stage ^= 1; break;
        case 3: e.to_stage ^= 1; break;
        case 4: e.step ^= 1; break;
        case 5: e.micro ^= 1; break;
        case 6: e.rows ^= 1; break;
        default: e.cols ^= 1; break;
        }
        if ((uint64_t)e.rows * e.cols <= MAX_VALUES)
            REQUIRE(try_decode(p, n, &e, (size_t)e.rows * e.cols) != RESBM_OK);
        if (count > 0) REQUIRE(try_decode(p, n, &info, count - 1) != RESBM_OK);
    } else if (rc != RESBM_OK) {
        /* whatever the header says, a decode against any expectation fails the same way */
        memset(&e, 0, sizeof(e));
        e.kind = RESBM_KIND_ACT; e.rows = 1; e.cols = 1;
        REQUIRE(try_decode(p, n, &e, 1) != RESBM_OK);
    }
    free(p);
    return 0;
}

#ifdef FUZZ_WRITE_SEEDS
/* `fuzz_frame_seeds DIR` writes the seed corpus: one valid frame per kind and dtype, awkward shapes
   (empty, one value, a partial i8 block) and one frame per failure class. */
#include <stdio.h>
static void put(const char *dir, const char *name, const unsigned char *p, size_t n) {
    char path[512];
    FILE *f;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (!(f = fopen(path, "wb"))) return;
    fwrite(p, 1, n, f);
    fclose(f);
}
int main(int argc, char **argv) {
    static const uint32_t shapes[][2] = {{0, 0}, {1, 1}, {4, 2}, {3, 65}, {16, 8}};
    float x[3 * 65];
    unsigned char f[RESBM_FRAME_HEADER + 4 * 3 * 65];
    char name[64];
    resbm_frame_info e;
    size_t len, i;
    int k, d, s;
    if (argc < 2) return 1;
    for (i = 0; i < 3 * 65; i++) x[i] = (float)((int)(i * 37 % 101) - 50) * 0.0625f;
    memset(&e, 0, sizeof(e));
    for (k = RESBM_KIND_ACT; k <= RESBM_KIND_CONTROL; k++)
        for (d = RESBM_WIRE_F32; d <= RESBM_WIRE_I8; d++)
            for (s = 0; s < 5; s++) {
                e.kind = k; e.dtype = d; e.from_stage = (unsigned)s; e.to_stage = (unsigned)s + 1;
                e.step = 1000u * (unsigned)s; e.micro = (uint32_t)k; e.rows = shapes[s][0]; e.cols = shapes[s][1];
                if (resbm_frame_encode(f, sizeof(f), &len, &e, x)) return 1;
                snprintf(name, sizeof(name), "k%d_d%d_s%d", k, d, s);
                put(argv[1], name, f, len);
            }
    e.kind = RESBM_KIND_ACT; e.dtype = RESBM_WIRE_F32; e.rows = 2; e.cols = 3;
    if (resbm_frame_encode(f, sizeof(f), &len, &e, x)) return 1;
    f[RESBM_FRAME_HEADER + 3] = 0x7f; f[RESBM_FRAME_HEADER + 2] = 0x80; /* +Inf in value 0 */
    {
        uint32_t crc = resbm_crc32c(resbm_crc32c(0, f, 36), f + RESBM_FRAME_HEADER, len - RESBM_FRAME_HEADER);
        for (i = 0; i < 4; i++) f[36 + i] = (unsigned char)(crc >> (8 * i));
    }
    put(argv[1], "nonfinite", f, len);
    f[40] ^= 1;
    put(argv[1], "badcrc", f, len);
    put(argv[1], "truncated", f, len - 1);
    put(argv[1], "header_only", f, RESBM_FRAME_HEADER);
    return 0;
}
#endif
