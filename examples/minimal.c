/* minimal.c - the shortest real drop-in use of resbm.h: a model cut into two pipeline stages, one
   per process, joined by a socketpair the host owns. The whole transport is link_send/link_recv.

       cc -std=c99 -O2 -march=native examples/minimal.c -o build/minimal -lm -pthread
       ./build/minimal          # stage 0 prints the loss; exit status 0 when both stages did well */
#define _POSIX_C_SOURCE 200809L
#define RESBM_IMPLEMENTATION
#include "../resbm.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the host's link: one stream socket; a message is an 8-byte little-endian length, then its
   bytes. Frames here are about 1 KB, far below the socket's buffer, so a send never waits for
   the other side's recv (as resbm_transport requires: 1F1B neighbours send at the same time). */
static int link_io(int fd, void *buf, size_t n, int writing) {
    unsigned char *p = (unsigned char *)buf;
    while (n > 0) {
        ssize_t k = writing ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, MSG_WAITALL);
        if (k < 0 && errno == EINTR) continue;
        if (k == 0 || (k < 0 && (errno == EPIPE || errno == ECONNRESET))) return RESBM_ECLOSED;
        if (k < 0) return RESBM_ETRANSPORT;
        p += k;
        n -= (size_t)k;
    }
    return RESBM_OK;
}

static int link_send(void *user, int peer, const void *buf, size_t len) {
    unsigned char hdr[8];
    int k, rc;
    (void)peer; /* two stages: the other end is the only peer */
    for (k = 0; k < 8; k++) hdr[k] = (unsigned char)((uint64_t)len >> (8 * k));
    if ((rc = link_io(*(int *)user, hdr, 8, 1))) return rc;
    return link_io(*(int *)user, (void *)buf, len, 1);
}

/* The timeout covers the wait for a message to begin; the sender writes it whole, so the rest
   follows at once. The length is peeked first: a message larger than cap stays queued. */
static int link_recv(void *user, int peer, void *buf, size_t cap, size_t *len, int timeout_ms) {
    int fd = *(int *)user, k;
    unsigned char hdr[8];
    uint64_t n = 0;
    struct pollfd pf;
    ssize_t got;
    (void)peer;
    pf.fd = fd;
    pf.events = POLLIN;
    pf.revents = 0;
    while ((k = poll(&pf, 1, timeout_ms)) < 0 && errno == EINTR) {}
    if (k == 0) return RESBM_ETIMEDOUT;
    if (k < 0) return RESBM_ETRANSPORT;
    while ((got = recv(fd, hdr, 8, MSG_PEEK | MSG_WAITALL)) < 0 && errno == EINTR) {}
    if (got < 0) return errno == ECONNRESET ? RESBM_ECLOSED : RESBM_ETRANSPORT;
    if (got < 8) return RESBM_ECLOSED; /* the other process is gone */
    for (k = 0; k < 8; k++) n |= (uint64_t)hdr[k] << (8 * k);
    if (n > cap) return RESBM_EMSGSIZE;
    if ((k = link_io(fd, hdr, 8, 0)) || (k = link_io(fd, buf, (size_t)n, 0))) return k;
    *len = (size_t)n;
    return RESBM_OK;
}

/* ---- the training: both processes cut the same windows out of the same text ---------------- */
static const char text[] =
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity. ";

enum { D = 64, SEQ = 32, BATCH = 4, MICRO = 2, ROWS = MICRO * BATCH, STEPS = 60 };

static int run_stage(int stage, int fd) {
    resbm_stage_config c = resbm_stage_config_default();
    resbm_stage *st;
    int32_t tok[ROWS * SEQ], tg[ROWS * SEQ];
    size_t n = sizeof(text) - 2, i; /* the last window still has a next byte */
    float loss = 0.0f, first = 0.0f;
    int step, rc;
    c.model.d = D;
    c.model.layers = 2;
    c.model.seq = SEQ;
    c.model.batch = BATCH;             /* sequences per microbatch */
    c.model.stages = 2;
    c.model.stage = stage;
    c.model.r = D / 16;                /* 4 of 64 channels cross the link */
    c.n_micro = MICRO;                 /* a step = 2 microbatches in 1F1B order */
    c.wire_fwd = RESBM_WIRE_BF16;      /* activations as bf16; gradients back as f32 */
    c.opt.warmup = 5;
    c.opt.total_steps = STEPS;
    c.transport.user = &fd;
    c.transport.send = link_send;
    c.transport.recv = link_recv;
    if ((rc = resbm_stage_init(&c, &st))) {
        fprintf(stderr, "stage %d: %s\n", stage, resbm_strerror(rc));
        return 1;
    }
    for (step = 0; step < STEPS; step++) {
        for (i = 0; i < ROWS * SEQ; i++) { /* row b of a step starts somewhere else in the text */
            size_t at = ((size_t)step * 41 + (i / SEQ) * 67 + i % SEQ) % n;
            tok[i] = (unsigned char)text[at];
            tg[i] = (unsigned char)text[at + 1];
        }
        /* stage 0 passes the tokens, the last stage the targets; every stage gets the loss */
        if ((rc = resbm_stage_step(st, stage == 0 ? tok : NULL, stage == 1 ? tg : NULL, ROWS, &loss))) {
            fprintf(stderr, "stage %d, step %d: %s\n", stage, step, resbm_strerror(rc));
            break;
        }
        if (step == 0) first = loss;
        if (stage == 0 && (step % 10 == 0 || step == STEPS - 1)) printf("step %2d  loss %.3f\n", step, loss);
    }
    resbm_stage_free(st);
    return rc || !(loss < first - 1.0f); /* failed, or learned nothing */
}

int main(void) {
    int sv[2], status = 0, rc;
    pid_t child;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) { perror("socketpair"); return 1; }
    fflush(stdout);
    if ((child = fork()) < 0) { perror("fork"); return 1; }
    if (child == 0) { /* the child is stage 1, the last stage */
        close(sv[0]);
        _exit(run_stage(1, sv[1]));
    }
    close(sv[1]);
    rc = run_stage(0, sv[0]);
    close(sv[0]); /* if stage 0 failed, stage 1 now sees RESBM_ECLOSED instead of waiting */
    if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) rc = 1;
    printf("%s\n", rc ? "minimal: a stage failed" : "ok: both stages trained");
    return rc;
}
