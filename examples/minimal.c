/* minimal.c - the shortest real drop-in use of resbm.h: two processes, one stage each, joined by a
   socketpair the host owns. The whole transport is the two small functions below.

       cc -std=c99 -O2 examples/minimal.c -o build/minimal -lm -pthread && ./build/minimal */
#define _POSIX_C_SOURCE 200809L
#define RESBM_IMPLEMENTATION
#include "../resbm.h"

#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* The host's link: one stream socket, messages as an 8-byte length then the bytes. */
static int io(int fd, void *buf, size_t n, int writing, int timeout_ms) {
    unsigned char *p = (unsigned char *)buf;
    while (n > 0) {
        struct pollfd pf = {fd, (short)(writing ? POLLOUT : POLLIN), 0};
        ssize_t k;
        if (poll(&pf, 1, timeout_ms) == 0) return RESBM_ETIMEDOUT;
        k = writing ? write(fd, p, n) : read(fd, p, n);
        if (k <= 0) return RESBM_ECLOSED;
        p += k;
        n -= (size_t)k;
    }
    return RESBM_OK;
}

static int link_send(void *user, int peer, const void *buf, size_t len) {
    int fd = *(int *)user, rc;
    uint64_t n = len;
    (void)peer; /* two stages: the other end is the only peer */
    if ((rc = io(fd, &n, 8, 1, 60000))) return rc;
    return io(fd, (void *)buf, len, 1, 60000);
}

static int link_recv(void *user, int peer, void *buf, size_t cap, size_t *len, int timeout_ms) {
    int fd = *(int *)user, rc;
    uint64_t n;
    (void)peer;
    if ((rc = io(fd, &n, 8, 0, timeout_ms))) return rc;
    if (n > cap) return RESBM_ETRANSPORT; /* a peer announcing too much: refuse, never allocate */
    *len = (size_t)n;
    return io(fd, buf, (size_t)n, 0, timeout_ms);
}

/* Byte-level text: windows of a short passage, the same on both sides. */
static const char text[] =
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the "
    "season of Light, it was the season of Darkness, it was the spring of hope, it was the winter "
    "of despair, we had everything before us, we had nothing before us. ";

static int run_stage(int stage, int fd) {
    resbm_stage_config c = resbm_stage_config_default();
    resbm_stage *st;
    int32_t tok[8 * 32], tg[8 * 32];
    size_t n = sizeof(text) - 2, i;
    int step, rc;
    float loss = 0.0f;
    c.model.d = 64; c.model.layers = 2; c.model.heads = 2; c.model.seq = 32;
    c.model.batch = 4;                    /* rows per microbatch */
    c.model.stages = 2; c.model.stage = stage;
    c.model.r = 4;                        /* 16x fewer channels on the wire than d = 64 */
    c.n_micro = 2;                        /* 8 rows per step, 1F1B over 2 microbatches */
    c.wire_fwd = RESBM_WIRE_BF16;         /* 2 bytes per value forward, f32 gradients back */
    c.opt.warmup = 5;
    c.transport.user = &fd;
    c.transport.send = link_send;
    c.transport.recv = link_recv;
    if ((rc = resbm_stage_init(&c, &st))) {
        fprintf(stderr, "stage %d: %s\n", stage, resbm_strerror(rc));
        return 1;
    }
    for (step = 0; step < 60; step++) {
        for (i = 0; i < 8 * 32; i++) { /* row b of step k starts at a shifting offset */
            size_t off = ((size_t)step * 37 + (i / 32) * 53 + i % 32) % n;
            tok[i] = (unsigned char)text[off];
            tg[i] = (unsigned char)text[off + 1];
        }
        if ((rc = resbm_stage_step(st, tok, tg, 8, &loss))) {
            fprintf(stderr, "stage %d, step %d: %s\n", stage, step, resbm_strerror(rc));
            resbm_stage_free(st);
            return 1;
        }
        if (stage == 0 && step % 10 == 9) printf("step %2d  loss %.3f\n", step + 1, loss);
    }
    if (stage == 0) {
        resbm_stage_stats s;
        memset(&s, 0, sizeof(s));
        resbm_stage_get_stats(st, &s);
        printf("stage 0 sent %llu activation bytes, received %llu gradient bytes\n",
               (unsigned long long)s.bytes_sent[RESBM_KIND_ACT], (unsigned long long)s.bytes_recv[RESBM_KIND_GRAD]);
    }
    resbm_stage_free(st);
    return loss < 2.5f ? 0 : 1; /* it must have learned something */
}

int main(void) {
    int sv[2], status = 0, rc;
    pid_t child;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) { perror("socketpair"); return 1; }
    if ((child = fork()) < 0) { perror("fork"); return 1; }
    if (child == 0) { /* stage 1: the last stage */
        close(sv[0]);
        _exit(run_stage(1, sv[1]));
    }
    close(sv[1]);
    rc = run_stage(0, sv[0]);
    close(sv[0]);
    waitpid(child, &status, 0);
    if (rc || !WIFEXITED(status) || WEXITSTATUS(status)) {
        fprintf(stderr, "minimal: a stage failed\n");
        return 1;
    }
    printf("ok\n");
    return 0;
}
