/* libFuzzer target for what a stage does with the bytes a neighbour sends: the hello (the job
   agreement), abort frames, frames of earlier attempts and steps, and the training frames
   themselves, through resbm_stage_step on the last stage of two. Build and run: `make fuzz`.

   The input is a list of messages, each a 2-byte little-endian length and its bytes; the first
   byte chooses whether a true hello of stage 0 goes first (so the fuzzer also reaches the frames
   after the agreement) and whether the CRCs are recomputed. Each message is queued from stage 0 to
   stage 1, then stage 1 runs one step with a 1 ms receive timeout. Properties (a violation traps):
   no read or write out of bounds (ASan), only documented codes, a failed step changes no
   parameter and no step counter, and a reason is given for every failure. */
#define RESBM_IMPLEMENTATION
#include "../resbm.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define REQUIRE(c) do { if (!(c)) __builtin_trap(); } while (0)

static resbm_inproc *hub;
static resbm_stage *st0, *st1;
static resbm_transport t0;
static float *snap;
static size_t nsnap;

static int known(int rc) {
    return rc == RESBM_OK || rc == RESBM_EINVAL || rc == RESBM_ERANGE || rc == RESBM_ENONFINITE ||
           rc == RESBM_ESTATE || (rc <= RESBM_ETRUNC && rc >= RESBM_ECRC) || rc == RESBM_ETIMEDOUT ||
           rc == RESBM_ECLOSED || rc == RESBM_ETRANSPORT || rc == RESBM_EMSGSIZE || rc == RESBM_EPEER ||
           rc == RESBM_EJOB;
}

static void put_crc(unsigned char *b, size_t len) {
    uint32_t c;
    if (len < RESBM_FRAME_HEADER) return;
    c = resbm_crc32c(resbm_crc32c(0, b, 36), b + 40, len - 40);
    b[36] = (unsigned char)c; b[37] = (unsigned char)(c >> 8);
    b[38] = (unsigned char)(c >> 16); b[39] = (unsigned char)(c >> 24);
}

static void setup(void) {
    resbm_stage_config c = resbm_stage_config_default();
    int s;
    resbm_inproc_init(2, 1 << 20, &hub);
    for (s = 0; s < 2; s++) {
        c.model.vocab = 16; c.model.d = 16; c.model.layers = 2; c.model.heads = 2; c.model.ff = 16;
        c.model.seq = 4; c.model.batch = 1; c.model.stages = 2; c.model.stage = s; c.model.r = 2;
        c.model.m = 4; c.timeout_ms = 1;
        resbm_inproc_transport(hub, s, &c.transport);
        if (resbm_stage_init(&c, s ? &st1 : &st0)) __builtin_trap();
    }
    resbm_inproc_transport(hub, 0, &t0);
    nsnap = resbm_model_num_floats(resbm_stage_model(st1));
    snap = (float *)malloc(nsnap * sizeof(float));
}

static void snapshot(float *dst) {
    size_t np, i, off = 0;
    const resbm_param *p = resbm_model_params(resbm_stage_model(st1), &np);
    for (i = 0; i < np; i++) {
        size_t n = p[i].value.ne[0] * p[i].value.ne[1];
        memcpy(dst + off, p[i].value.data, n * sizeof(float));
        off += n;
    }
}

static int same(void) {
    size_t np, i, off = 0;
    const resbm_param *p = resbm_model_params(resbm_stage_model(st1), &np);
    for (i = 0; i < np; i++) {
        size_t n = p[i].value.ne[0] * p[i].value.ne[1];
        if (memcmp(snap + off, p[i].value.data, n * sizeof(float))) return 0;
        off += n;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static unsigned char msg[1 << 16];
    int32_t tg[4] = {1, 2, 3, 4};
    size_t pos = 1, len;
    long before;
    float loss;
    int rc, flags;
    if (hub) { /* a fresh pair every run: what one input leaves behind must not reach the next */
        resbm_stage_free(st1);
        resbm_stage_free(st0);
        resbm_inproc_free(hub);
        free(snap);
    }
    setup();
    if (size < 1) return 0;
    flags = data[0];
    if (flags & 1) resbm__stage_hello(st0, 1, 0);
    while (pos + 2 <= size) {
        len = (size_t)data[pos] | (size_t)data[pos + 1] << 8;
        pos += 2;
        if (len > size - pos) len = size - pos;
        memcpy(msg, data + pos, len);
        if (flags & 2) put_crc(msg, len);
        if (t0.send(t0.user, 1, msg, len)) break;
        pos += len;
    }
    snapshot(snap);
    before = resbm_model_step_count(resbm_stage_model(st1));
    rc = resbm_stage_step(st1, NULL, tg, 1, &loss);
    REQUIRE(known(rc));
    if (rc) {
        REQUIRE(same());
        REQUIRE(resbm_model_step_count(resbm_stage_model(st1)) == before);
        REQUIRE(resbm_stage_why(st1)[0] != 0);
    }
    return 0;
}

#ifdef FUZZ_WRITE_SEEDS
/* make fuzz-seeds: an honest step (activation and commit after the hello), an abort, a frame of an
   earlier attempt, a hello of another job, garbage. */
#include <stdio.h>
static size_t add(unsigned char *b, size_t at, const resbm_frame_info *f, const float *v) {
    size_t len = 0;
    resbm_frame_encode(b + at + 2, 4096, &len, f, v);
    b[at] = (unsigned char)len; b[at + 1] = (unsigned char)(len >> 8);
    return at + 2 + len;
}
int main(int argc, char **argv) {
    static unsigned char b[1 << 15];
    resbm_frame_info f;
    float z[8] = {0.5f, -1, 2, 0.25f, 1, 1, -2, 3}, commit[2] = {0.5f, 1.0f}, ab[2] = {-45, 0};
    char path[512];
    size_t n;
    int k;
    FILE *o;
    if (argc != 2) return 2;
    for (k = 0; k < 5; k++) {
        memset(&f, 0, sizeof(f));
        f.kind = RESBM_KIND_ACT; f.dtype = RESBM_WIRE_F32; f.from_stage = 0; f.to_stage = 1; f.rows = 4; f.cols = 2;
        b[0] = k == 4 ? 0 : 3;
        n = 1;
        if (k == 0) { n = add(b, n, &f, z); f.kind = RESBM_KIND_CONTROL; f.micro = 1; f.rows = 1; f.cols = 2; n = add(b, n, &f, commit); }
        if (k == 1) { f.kind = RESBM_KIND_CONTROL; f.micro = 4u << 20; f.rows = 1; f.cols = 2; n = add(b, n, &f, ab); }
        if (k == 2) { f.micro = 0; f.step = 0; n = add(b, n, &f, z); f.micro = 1u << 24; n = add(b, n, &f, z); }
        if (k == 3) { f.kind = RESBM_KIND_CONTROL; f.micro = 3u << 20; f.rows = 1; f.cols = 8; n = add(b, n, &f, z); }
        if (k == 4) { memset(b + 1, 0x37, 64); b[1] = 60; b[2] = 0; n = 65; }
        snprintf(path, sizeof(path), "%s/seed%d", argv[1], k);
        if (!(o = fopen(path, "wb")) || fwrite(b, 1, n, o) != n || fclose(o)) return 1;
    }
    return 0;
}
#endif
