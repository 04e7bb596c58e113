/* test_tcp.c - the TCP adapter of examples/tcp.h on 127.0.0.1: mesh set-up and handshakes,
   message order and sizes, timeouts that lose nothing, too-small buffers, closed peers, and a
   2-stage resbm_stage pipeline over TCP that must match the in-process transport bit for bit.

       gcc -std=c99 -O2 -march=native -Wall -Wextra -Wpedantic -Werror tests/test_tcp.c \
           -o build/test_tcp -lm -pthread && ./build/test_tcp

   Prints "OK name" or "FAIL name: why" per test, then "N passed, M failed"; exit 0 iff none
   failed. Ports: 20000-32000 (below Linux's ephemeral range), from the process id, each probed
   before use. */
#define _POSIX_C_SOURCE 200809L
#define RESBM_IMPLEMENTATION
#include "../resbm.h"
#include "../examples/tcp.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- harness ------------------------------------------------------------------------------------ */
static int g_passed, g_failed;
static char g_why[600]; /* the first failure of the running test */

static void failf(const char *fmt, ...) {
    va_list ap;
    if (g_why[0]) return;
    va_start(ap, fmt);
    vsnprintf(g_why, sizeof(g_why), fmt, ap);
    va_end(ap);
}

#define EXPECT(cond, ...) \
    do { if (!(cond)) failf(__VA_ARGS__); } while (0)
#define EXPECT_RC(expr, want) \
    do { \
        int rc_ = (expr), want_ = (want); \
        if (rc_ != want_) \
            failf("line %d: %s gave %d (%s), expected %d (%s)", __LINE__, #expr, rc_, \
                  resbm_strerror(rc_), want_, resbm_strerror(want_)); \
    } while (0)

static void run(const char *name, void (*fn)(void)) {
    g_why[0] = '\0';
    fn();
    if (g_why[0]) { printf("FAIL %s: %s\n", name, g_why); g_failed++; }
    else { printf("OK %s\n", name); g_passed++; }
    fflush(stdout);
}

static double now_ms(void) { return tcp__now_ms(); }

static void sleep_ms(int ms) { tcp__sleep_ms(ms); }

static volatile sig_atomic_t g_sigpipe;
static void on_sigpipe(int sig) { (void)sig; g_sigpipe = 1; }

/* ---- ports and meshes --------------------------------------------------------------------------- */
static int g_port;

static int port_free(int port) {
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1, ok;
    if (fd < 0) return 0;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

/* n fresh consecutive free ports: addrs[k] = "127.0.0.1:port", ports[k] = port. */
static void take_ports(int n, char addrs[][32], int *ports) {
    for (;;) {
        int base = g_port, k, ok = 1;
        g_port += n;
        if (g_port + n > 32000) g_port = 20000;
        for (k = 0; k < n && ok; k++) ok = port_free(base + k);
        if (!ok) continue;
        for (k = 0; k < n; k++) {
            snprintf(addrs[k], 32, "127.0.0.1:%d", base + k);
            if (ports) ports[k] = base + k;
        }
        return;
    }
}

typedef struct {
    int me, n, deadline_ms, rc;
    const char *const *addrs;
    tcp_mesh_auth auth; /* auth_thread only */
    tcp_mesh *mesh;
} open_arg;

static void *open_thread(void *p) {
    open_arg *a = (open_arg *)p;
    a->rc = tcp_mesh_open(&a->mesh, a->me, a->n, a->addrs, a->deadline_ms);
    return NULL;
}

static void *auth_thread(void *p) {
    open_arg *a = (open_arg *)p;
    a->rc = tcp_mesh_open_auth(&a->mesh, a->me, a->n, a->addrs, a->deadline_ms, &a->auth);
    return NULL;
}

/* Three ranks' open arguments on fresh ports: rank k listens at addrs[k] (port ports[k]); each
   has the same deadline and no auth. */
typedef struct { char addrs[3][32]; const char *ap[3]; int ports[3]; open_arg a[3]; } three_ranks;
static void three_ranks_init(three_ranks *r, int deadline_ms) {
    int k;
    take_ports(3, r->addrs, r->ports);
    for (k = 0; k < 3; k++) {
        r->ap[k] = r->addrs[k];
        memset(&r->a[k], 0, sizeof(r->a[k]));
        r->a[k].me = k; r->a[k].n = 3; r->a[k].addrs = r->ap; r->a[k].deadline_ms = deadline_ms;
    }
}

/* Opens an n-peer mesh on fresh ports, one thread per peer; retried on other ports when a
   port was taken after all (RESBM_ETRANSPORT from bind). 0 or the first error. */
static int open_mesh(int n, tcp_mesh **m) {
    char addrs[8][32];
    const char *ap[8];
    open_arg a[8];
    pthread_t th[8];
    int attempt, k, rc = RESBM_OK;
    for (attempt = 0; attempt < 3; attempt++) {
        int transport_err = 0;
        take_ports(n, addrs, NULL);
        for (k = 0; k < n; k++) ap[k] = addrs[k];
        for (k = 0; k < n; k++) {
            memset(&a[k], 0, sizeof(a[k]));
            a[k].me = k; a[k].n = n; a[k].addrs = ap; a[k].deadline_ms = 5000;
            pthread_create(&th[k], NULL, open_thread, &a[k]);
        }
        rc = RESBM_OK;
        for (k = 0; k < n; k++) {
            pthread_join(th[k], NULL);
            if (a[k].rc && !rc) rc = a[k].rc;
            transport_err |= a[k].rc == RESBM_ETRANSPORT;
        }
        if (!rc) {
            for (k = 0; k < n; k++) m[k] = a[k].mesh;
            return RESBM_OK;
        }
        for (k = 0; k < n; k++) if (!a[k].rc) tcp_mesh_close(a[k].mesh);
        if (!transport_err) break;
    }
    return rc;
}

/* A message's bytes, the same on both sides. */
static unsigned char pattern(size_t k, int idx, int from, int to) {
    return (unsigned char)(k * 31u + (k >> 9) + (unsigned)idx * 7u + (unsigned)from * 3u + (unsigned)to * 5u);
}

static void fill(unsigned char *b, size_t n, int idx, int from, int to) {
    size_t k;
    for (k = 0; k < n; k++) b[k] = pattern(k, idx, from, to);
}

static int check(const unsigned char *b, size_t n, int idx, int from, int to) {
    size_t k;
    for (k = 0; k < n; k++)
        if (b[k] != pattern(k, idx, from, to)) return 0;
    return 1;
}

/* Writes raw bytes on a mesh socket, around the adapter (partial messages, bad lengths). */
static int raw_write(int fd, const void *b, size_t n) {
    return send(fd, b, n, MSG_NOSIGNAL) == (ssize_t)n ? 0 : -1;
}

/* Reads exactly n raw bytes within wait_ms; 0 or -1. */
static int raw_read(int fd, void *b, size_t n, int wait_ms) {
    size_t got = 0;
    while (got < n) {
        struct pollfd p;
        ssize_t k;
        p.fd = fd; p.events = POLLIN; p.revents = 0;
        if (poll(&p, 1, wait_ms) != 1) return -1;
        k = recv(fd, (char *)b + got, n - got, 0);
        if (k <= 0) return -1;
        got += (size_t)k;
    }
    return 0;
}

static void put64(unsigned char *b, uint64_t v) {
    int k;
    for (k = 0; k < 8; k++) b[k] = (unsigned char)(v >> (8 * k));
}

/* ---- 3 peers: order per peer, sizes 1, 0, 5 MB, 300 --------------------------------------------- */
#define MESH3_MSGS 4
static const size_t mesh3_size[MESH3_MSGS] = {1, 0, 5u << 20, 300};

typedef struct {
    tcp_mesh *mesh;
    int me, n;
    char why[200];
} peer_arg;

static void *mesh3_peer(void *p) {
    peer_arg *a = (peer_arg *)p;
    resbm_transport tr;
    size_t big = 5u << 20, len = 0;
    unsigned char *sb = (unsigned char *)malloc(big), *rb = (unsigned char *)malloc(big);
    int idx, j, rc;
    tcp_mesh_transport(a->mesh, &tr);
    if (!sb || !rb) { snprintf(a->why, sizeof(a->why), "out of memory"); goto out; }
    for (idx = 0; idx < MESH3_MSGS; idx++) /* everyone sends everything first: no one reads yet */
        for (j = 0; j < a->n; j++) {
            if (j == a->me) continue;
            fill(sb, mesh3_size[idx], idx, a->me, j);
            if ((rc = tr.send(tr.user, j, sb, mesh3_size[idx]))) {
                snprintf(a->why, sizeof(a->why), "%d: send %d to %d: %s", a->me, idx, j, resbm_strerror(rc));
                goto out;
            }
        }
    for (j = 0; j < a->n; j++) {
        if (j == a->me) continue;
        for (idx = 0; idx < MESH3_MSGS; idx++) {
            if (mesh3_size[idx] > 0 &&
                (rc = tr.recv(tr.user, j, rb, mesh3_size[idx] - 1, &len, 10000)) != RESBM_EMSGSIZE) {
                snprintf(a->why, sizeof(a->why), "%d: recv %d from %d into a short buffer: %s", a->me, idx, j, resbm_strerror(rc));
                goto out;
            }
            len = 12345;
            if ((rc = tr.recv(tr.user, j, rb, big, &len, 10000))) {
                snprintf(a->why, sizeof(a->why), "%d: recv %d from %d: %s", a->me, idx, j, resbm_strerror(rc));
                goto out;
            }
            if (len != mesh3_size[idx] || !check(rb, len, idx, j, a->me)) {
                snprintf(a->why, sizeof(a->why), "%d: message %d from %d: %zu bytes, wrong or out of order", a->me, idx, j, len);
                goto out;
            }
        }
    }
out:
    free(sb);
    free(rb);
    return NULL;
}

static void test_mesh3_order_and_sizes(void) {
    tcp_mesh *m[3];
    peer_arg a[3];
    pthread_t th[3];
    int k;
    EXPECT_RC(open_mesh(3, m), RESBM_OK);
    if (g_why[0]) return;
    for (k = 0; k < 3; k++) {
        memset(&a[k], 0, sizeof(a[k]));
        a[k].mesh = m[k]; a[k].me = k; a[k].n = 3;
        tcp_mesh_set_send_timeout(m[k], 8000); /* a deadlock would be an error, not a hang */
        pthread_create(&th[k], NULL, mesh3_peer, &a[k]);
    }
    for (k = 0; k < 3; k++) {
        pthread_join(th[k], NULL);
        EXPECT(!a[k].why[0], "%s", a[k].why);
    }
    for (k = 0; k < 3; k++) tcp_mesh_close(m[k]);
}

/* ---- two peers sending 3 x 8 MB to each other at once, neither reading until it is done --------- */
static void *big_sender(void *p) {
    peer_arg *a = (peer_arg *)p;
    resbm_transport tr;
    size_t big = 8u << 20, len;
    unsigned char *b = (unsigned char *)malloc(big);
    int idx, rc, other = 1 - a->me;
    tcp_mesh_transport(a->mesh, &tr);
    if (!b) { snprintf(a->why, sizeof(a->why), "out of memory"); return NULL; }
    for (idx = 0; idx < 3 && !a->why[0]; idx++) {
        fill(b, big, idx, a->me, other);
        if ((rc = tr.send(tr.user, other, b, big)))
            snprintf(a->why, sizeof(a->why), "%d: send %d: %s", a->me, idx, resbm_strerror(rc));
    }
    for (idx = 0; idx < 3 && !a->why[0]; idx++) {
        if ((rc = tr.recv(tr.user, other, b, big, &len, 10000)))
            snprintf(a->why, sizeof(a->why), "%d: recv %d: %s", a->me, idx, resbm_strerror(rc));
        else if (len != big || !check(b, len, idx, other, a->me))
            snprintf(a->why, sizeof(a->why), "%d: message %d wrong", a->me, idx);
    }
    free(b);
    return NULL;
}

static void test_simultaneous_big_sends(void) {
    tcp_mesh *m[2];
    peer_arg a[2];
    pthread_t th[2];
    int k;
    EXPECT_RC(open_mesh(2, m), RESBM_OK);
    if (g_why[0]) return;
    for (k = 0; k < 2; k++) {
        memset(&a[k], 0, sizeof(a[k]));
        a[k].mesh = m[k]; a[k].me = k; a[k].n = 2;
        tcp_mesh_set_send_timeout(m[k], 8000);
        pthread_create(&th[k], NULL, big_sender, &a[k]);
    }
    for (k = 0; k < 2; k++) {
        pthread_join(th[k], NULL);
        EXPECT(!a[k].why[0], "%s", a[k].why);
    }
    for (k = 0; k < 2; k++) tcp_mesh_close(m[k]);
}

/* ---- timeouts ----------------------------------------------------------------------------------- */
typedef struct {
    resbm_transport tr;
    int delay_ms, rc;
} late_arg;

static void *late_sender(void *p) {
    late_arg *a = (late_arg *)p;
    sleep_ms(a->delay_ms);
    a->rc = a->tr.send(a->tr.user, 0, "late message", 12);
    return NULL;
}

static void test_recv_timeout_keeps_messages(void) {
    tcp_mesh *m[2];
    resbm_transport ta, tb;
    unsigned char buf[4000], wire[3008];
    size_t len = 0;
    double t0, dt;
    late_arg la;
    pthread_t th;
    int fd;
    EXPECT_RC(open_mesh(2, m), RESBM_OK);
    if (g_why[0]) return;
    tcp_mesh_transport(m[0], &ta);
    tcp_mesh_transport(m[1], &tb);
    /* nothing there: the timeout is kept, roughly */
    t0 = now_ms();
    EXPECT_RC(ta.recv(ta.user, 1, buf, sizeof(buf), &len, 150), RESBM_ETIMEDOUT);
    dt = now_ms() - t0;
    EXPECT(dt >= 140 && dt < 1500, "a 150 ms timeout took %.0f ms", dt);
    t0 = now_ms();
    EXPECT_RC(ta.recv(ta.user, 1, buf, sizeof(buf), &len, 0), RESBM_ETIMEDOUT);
    dt = now_ms() - t0;
    EXPECT(dt < 1000, "a 0 ms poll took %.0f ms", dt); /* generous: a loaded machine may not run us */
    /* a message that comes after a timed-out recv is received by the next one */
    la.tr = tb; la.delay_ms = 250; la.rc = -999;
    pthread_create(&th, NULL, late_sender, &la);
    EXPECT_RC(ta.recv(ta.user, 1, buf, sizeof(buf), &len, 30), RESBM_ETIMEDOUT);
    EXPECT_RC(ta.recv(ta.user, 1, buf, sizeof(buf), &len, 5000), RESBM_OK);
    pthread_join(th, NULL);
    EXPECT_RC(la.rc, RESBM_OK);
    EXPECT(len == 12 && !memcmp(buf, "late message", 12), "late message: %zu bytes", len);
    /* a message cut in three: the deadline passes inside the length, then inside the bytes */
    fd = m[1]->peer[0].fd;
    put64(wire, 3000);
    fill(wire + 8, 3000, 9, 1, 0);
    EXPECT(raw_write(fd, wire, 3) == 0, "raw write");
    EXPECT_RC(ta.recv(ta.user, 1, buf, sizeof(buf), &len, 100), RESBM_ETIMEDOUT);
    EXPECT(raw_write(fd, wire + 3, 5 + 1000) == 0, "raw write");
    EXPECT_RC(ta.recv(ta.user, 1, buf, sizeof(buf), &len, 100), RESBM_ETIMEDOUT);
    EXPECT_RC(ta.recv(ta.user, 1, buf, sizeof(buf), &len, 0), RESBM_ETIMEDOUT);
    EXPECT_RC(ta.recv(ta.user, 1, buf, 2999, &len, 0), RESBM_EMSGSIZE); /* too small, still there */
    EXPECT(raw_write(fd, wire + 8 + 1000, 2000) == 0, "raw write");
    len = 0;
    EXPECT_RC(ta.recv(ta.user, 1, buf, sizeof(buf), &len, 5000), RESBM_OK);
    EXPECT(len == 3000 && check(buf, len, 9, 1, 0), "the cut message came back as %zu bytes", len);
    /* and the stream is still in step */
    EXPECT_RC(tb.send(tb.user, 0, "next", 4), RESBM_OK);
    EXPECT_RC(ta.recv(ta.user, 1, buf, sizeof(buf), &len, 5000), RESBM_OK);
    EXPECT(len == 4 && !memcmp(buf, "next", 4), "the message after it");
    tcp_mesh_close(m[0]);
    tcp_mesh_close(m[1]);
}

/* ---- a message larger than cap stays queued ----------------------------------------------------- */
static void test_cap_too_small(void) {
    tcp_mesh *m[2];
    resbm_transport ta, tb;
    unsigned char out[1000], buf[1000];
    size_t len = 0;
    EXPECT_RC(open_mesh(2, m), RESBM_OK);
    if (g_why[0]) return;
    tcp_mesh_transport(m[0], &ta);
    tcp_mesh_transport(m[1], &tb);
    fill(out, 1000, 1, 1, 0);
    EXPECT_RC(tb.send(tb.user, 0, out, 1000), RESBM_OK);
    EXPECT_RC(tb.send(tb.user, 0, "tail", 4), RESBM_OK);
    EXPECT_RC(tb.send(tb.user, 0, NULL, 0), RESBM_OK);
    EXPECT_RC(ta.recv(ta.user, 1, buf, 999, &len, 5000), RESBM_EMSGSIZE);
    EXPECT_RC(ta.recv(ta.user, 1, NULL, 0, &len, 5000), RESBM_EMSGSIZE);
    EXPECT_RC(ta.recv(ta.user, 1, buf, 4, &len, 5000), RESBM_EMSGSIZE);
    EXPECT_RC(ta.recv(ta.user, 1, buf, 1000, &len, 5000), RESBM_OK);
    EXPECT(len == 1000 && check(buf, 1000, 1, 1, 0), "the big message: %zu bytes", len);
    EXPECT_RC(ta.recv(ta.user, 1, buf, 4, &len, 5000), RESBM_OK);
    EXPECT(len == 4 && !memcmp(buf, "tail", 4), "the message after it");
    len = 99;
    EXPECT_RC(ta.recv(ta.user, 1, NULL, 0, &len, 5000), RESBM_OK);
    EXPECT(len == 0, "the empty message: %zu bytes", len);
    /* bad arguments */
    EXPECT_RC(ta.recv(ta.user, 0, buf, 4, &len, 0), RESBM_EINVAL);  /* ourselves */
    EXPECT_RC(ta.recv(ta.user, 2, buf, 4, &len, 0), RESBM_EINVAL);  /* no such peer */
    EXPECT_RC(ta.send(ta.user, -1, buf, 4), RESBM_EINVAL);
    EXPECT_RC(ta.send(ta.user, 1, NULL, 4), RESBM_EINVAL);
    tcp_mesh_close(m[0]);
    tcp_mesh_close(m[1]);
}

/* ---- lengths beyond the limit end the link, without allocating them ---------------------------- */
static void test_length_limit(void) {
    tcp_mesh *m[2];
    resbm_transport ta, tb;
    unsigned char hdr[8], buf[64];
    static unsigned char big[2000];
    size_t len;
    EXPECT_RC(open_mesh(2, m), RESBM_OK);
    if (g_why[0]) return;
    tcp_mesh_transport(m[0], &ta);
    tcp_mesh_transport(m[1], &tb);
    put64(hdr, (uint64_t)1 << 62); /* a length no one could allocate */
    EXPECT(raw_write(m[1]->peer[0].fd, hdr, 8) == 0, "raw write");
    EXPECT_RC(ta.recv(ta.user, 1, buf, sizeof(buf), &len, 5000), RESBM_ETRANSPORT);
    EXPECT_RC(ta.recv(ta.user, 1, buf, sizeof(buf), &len, 5000), RESBM_ETRANSPORT); /* for good */
    EXPECT(m[0]->send_timeout_ms > 0, "a send waits for ever by default (%d)", m[0]->send_timeout_ms);
    tcp_mesh_close(m[0]);
    tcp_mesh_close(m[1]);
    { /* for good even when what came behind the bad length is already in the inbox (read there
         while waiting on another peer): before, the next call handed it out as a message */
        tcp_mesh *m3[3];
        resbm_transport t1;
        EXPECT_RC(open_mesh(3, m3), RESBM_OK);
        if (g_why[0]) return;
        tcp_mesh_transport(m3[1], &t1);
        put64(hdr, (uint64_t)1 << 62);
        EXPECT(raw_write(m3[0]->peer[1].fd, hdr, 8) == 0, "raw write");
        put64(hdr, 4);
        EXPECT(raw_write(m3[0]->peer[1].fd, hdr, 8) == 0 && raw_write(m3[0]->peer[1].fd, "evil", 4) == 0, "raw write");
        EXPECT_RC(t1.recv(t1.user, 2, buf, sizeof(buf), &len, 300), RESBM_ETIMEDOUT); /* rank 0's bytes: inbox */
        EXPECT(m3[1]->peer[0].in_tail - m3[1]->peer[0].in_head == 20, "the inbox holds %zu bytes, not 20",
               m3[1]->peer[0].in_tail - m3[1]->peer[0].in_head);
        EXPECT_RC(t1.recv(t1.user, 0, buf, sizeof(buf), &len, 300), RESBM_ETRANSPORT);
        EXPECT_RC(t1.recv(t1.user, 0, buf, sizeof(buf), &len, 300), RESBM_ETRANSPORT);
        for (len = 0; len < 3; len++) tcp_mesh_close(m3[len]);
    }
    EXPECT_RC(open_mesh(2, m), RESBM_OK);
    if (g_why[0]) return;
    tcp_mesh_transport(m[0], &ta);
    tcp_mesh_transport(m[1], &tb);
    tcp_mesh_set_max_message(m[0], 1000);
    EXPECT_RC(ta.send(ta.user, 1, big, 1001), RESBM_EMSGSIZE);
    EXPECT_RC(ta.send(ta.user, 1, big, 1000), RESBM_OK);
    EXPECT_RC(tb.recv(tb.user, 0, big, sizeof(big), &len, 5000), RESBM_OK);
    EXPECT_RC(tb.send(tb.user, 0, big, 1001), RESBM_OK);
    EXPECT_RC(ta.recv(ta.user, 1, big, sizeof(big), &len, 5000), RESBM_ETRANSPORT);
    tcp_mesh_close(m[0]);
    tcp_mesh_close(m[1]);
}

/* ---- closed peers ------------------------------------------------------------------------------- */
static void test_closed_peer(void) {
    tcp_mesh *m[2];
    resbm_transport ta, tb;
    unsigned char buf[1024];
    size_t len = 0;
    double t0, dt;
    int i, rc = RESBM_OK;
    struct sigaction sa, old;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigpipe;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPIPE, &sa, &old); /* a SIGPIPE would be counted here instead of killing us */
    g_sigpipe = 0;
    /* receiving: what was sent before the close still arrives, then RESBM_ECLOSED at once */
    EXPECT_RC(open_mesh(2, m), RESBM_OK);
    if (g_why[0]) goto out;
    tcp_mesh_transport(m[0], &ta);
    tcp_mesh_transport(m[1], &tb);
    EXPECT_RC(tb.send(tb.user, 0, "bye", 3), RESBM_OK);
    tcp_mesh_close(m[1]);
    EXPECT_RC(ta.recv(ta.user, 1, buf, sizeof(buf), &len, 5000), RESBM_OK);
    EXPECT(len == 3 && !memcmp(buf, "bye", 3), "the last message");
    t0 = now_ms();
    EXPECT_RC(ta.recv(ta.user, 1, buf, sizeof(buf), &len, 5000), RESBM_ECLOSED);
    dt = now_ms() - t0;
    EXPECT(dt < 2000, "RESBM_ECLOSED took %.0f ms", dt);
    EXPECT_RC(ta.send(ta.user, 1, buf, 10), RESBM_ECLOSED);
    tcp_mesh_close(m[0]);
    /* sending only: the socket layer finds out (EPIPE / ECONNRESET), no SIGPIPE */
    EXPECT_RC(open_mesh(2, m), RESBM_OK);
    if (g_why[0]) goto out;
    tcp_mesh_transport(m[0], &ta);
    tcp_mesh_close(m[1]);
    memset(buf, 7, sizeof(buf));
    for (i = 0; i < 400 && rc == RESBM_OK; i++) {
        rc = ta.send(ta.user, 1, buf, sizeof(buf));
        if (rc == RESBM_OK) sleep_ms(5);
    }
    EXPECT_RC(rc, RESBM_ECLOSED);
    EXPECT_RC(ta.send(ta.user, 1, buf, sizeof(buf)), RESBM_ECLOSED);
    EXPECT_RC(ta.recv(ta.user, 1, buf, sizeof(buf), &len, 1000), RESBM_ECLOSED);
    EXPECT(!g_sigpipe, "SIGPIPE was raised");
    tcp_mesh_close(m[0]);
out:
    sigaction(SIGPIPE, &old, NULL);
}

/* ---- bad handshakes are dropped; the acceptor keeps waiting for the real peer ------------------ */
static int raw_connect(int port, int wait_ms) {
    double end = now_ms() + wait_ms;
    for (;;) {
        struct sockaddr_in a;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) return -1;
        memset(&a, 0, sizeof(a));
        a.sin_family = AF_INET;
        a.sin_port = htons((uint16_t)port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) return fd;
        close(fd);
        if (now_ms() > end) return -1;
        sleep_ms(10);
    }
}

/* 1 when the other end closed fd within wait_ms (EOF or reset), 0 otherwise. */
static int closed_by_peer(int fd, int wait_ms) {
    struct pollfd p;
    char c;
    ssize_t k;
    p.fd = fd; p.events = POLLIN; p.revents = 0;
    if (poll(&p, 1, wait_ms) != 1) return 0;
    k = recv(fd, &c, 1, 0);
    return k == 0 || (k < 0 && errno == ECONNRESET);
}

static void hello(unsigned char *b, const char *magic, uint32_t version, uint32_t n, uint32_t rank) {
    memset(b, 0, TCP_MESH_HELLO);
    memcpy(b, magic, 4);
    tcp__put32(b + 4, version);
    tcp__put32(b + 8, n);
    tcp__put32(b + 12, rank);
}

/* SHA-256 and HMAC-SHA256 against their published test vectors (FIPS 180-2 "abc", RFC 4231
   case 2); then peers with the run's secret and job join; a peer with another secret is refused;
   one with the secret and another job fails both opens with RESBM_EJOB (not a timeout: the
   acceptor gives EJOB only on a proven hello); one with another job and another secret is
   refused as a stranger, never EJOB. */
static void test_secret_and_job(void) {
    static const unsigned char abc[32] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
        0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff,
        0x61, 0xf2, 0x00, 0x15, 0xad};
    static const unsigned char jefe[32] = {0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24,
        0x26, 0x08, 0x95, 0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58,
        0xb9, 0x64, 0xec, 0x38, 0x43};
    unsigned char out[32];
    tcp__sha256 sh;
    char addrs[2][32];
    const char *ap[2];
    int round;
    tcp__sha_init(&sh); tcp__sha_add(&sh, "abc", 3); tcp__sha_done(&sh, out);
    EXPECT(!memcmp(out, abc, 32), "SHA-256(abc)");
    tcp__hmac((const unsigned char *)"Jefe", 4, "what do ya want ", 16, "for nothing?", 12, out);
    EXPECT(!memcmp(out, jefe, 32), "HMAC-SHA256, RFC 4231 case 2");
    for (round = 0; round < 4; round++) { /* same secret and job; another secret; another job; both */
        open_arg a[2];
        pthread_t th[2];
        int k;
        take_ports(2, addrs, NULL);
        ap[0] = addrs[0]; ap[1] = addrs[1];
        for (k = 0; k < 2; k++) {
            memset(&a[k], 0, sizeof(a[k]));
            a[k].me = k; a[k].n = 2; a[k].deadline_ms = 3000; a[k].addrs = ap;
            a[k].auth.secret = k == 1 && (round == 1 || round == 3) ? "not the secret" : "the run's secret";
            a[k].auth.secret_len = strlen((const char *)a[k].auth.secret);
            a[k].auth.job = k == 1 && round >= 2 ? 77 : 76;
            pthread_create(&th[k], NULL, auth_thread, &a[k]);
        }
        for (k = 0; k < 2; k++) pthread_join(th[k], NULL);
        if (round == 0) {
            EXPECT(a[0].rc == RESBM_OK && a[1].rc == RESBM_OK, "the run's peers: %s / %s",
                   resbm_strerror(a[0].rc), resbm_strerror(a[1].rc));
        } else if (round == 2) {
            EXPECT(a[0].rc == RESBM_EJOB && a[1].rc == RESBM_EJOB, "another job: %s / %s",
                   resbm_strerror(a[0].rc), resbm_strerror(a[1].rc));
        } else {
            EXPECT(a[0].rc != RESBM_OK && a[1].rc != RESBM_OK && a[0].rc != RESBM_EJOB && a[1].rc != RESBM_EJOB,
                   "%s: %s / %s", round == 1 ? "another secret" : "another secret and job",
                   resbm_strerror(a[0].rc), resbm_strerror(a[1].rc));
        }
        for (k = 0; k < 2; k++) if (!a[k].rc) tcp_mesh_close(a[k].mesh);
    }
}

/* resbm_transport_check on a 2-peer mesh: the adapter meets the whole transport contract. */
static void test_conformance(void) {
    static unsigned char scratch[2 * 300000];
    tcp_mesh *m[2];
    resbm_transport ta, tb;
    char why[160];
    if (open_mesh(2, m)) { EXPECT(0, "open"); return; }
    tcp_mesh_transport(m[0], &ta);
    tcp_mesh_transport(m[1], &tb);
    EXPECT_RC(resbm_transport_check(&ta, 1, &tb, 0, 300000, scratch, sizeof(scratch), why, sizeof(why)), RESBM_OK);
    EXPECT(why[0] == 0, "%s", why);
    tcp_mesh_close(m[0]);
    tcp_mesh_close(m[1]);
}

static void test_bad_handshake_ignored(void) {
    char addrs[2][32];
    const char *ap[2];
    int ports[2], bad[7], silent, partial, k;
    unsigned char h[TCP_MESH_ANSWER];
    open_arg acc;
    pthread_t th;
    tcp_mesh *m0 = NULL;
    resbm_transport t0, t1;
    size_t len = 0;
    char buf[16];
    take_ports(2, addrs, ports);
    ap[0] = addrs[0]; ap[1] = addrs[1];
    memset(&acc, 0, sizeof(acc));
    acc.me = 1; acc.n = 2; acc.addrs = ap; acc.deadline_ms = 8000;
    pthread_create(&th, NULL, open_thread, &acc);
    for (k = 0; k < 7; k++) bad[k] = raw_connect(ports[1], 3000);
    silent = raw_connect(ports[1], 3000);
    partial = raw_connect(ports[1], 3000);
    EXPECT(bad[4] >= 0 && silent >= 0 && partial >= 0, "cannot reach the acceptor");
    if (!g_why[0]) {
        hello(h, "XBMT", 2, 2, 0); EXPECT(raw_write(bad[0], h, TCP_MESH_HELLO) == 0, "write"); /* magic */
        hello(h, "RBMT", TCP_MESH_VERSION - 1, 2, 0); EXPECT(raw_write(bad[1], h, TCP_MESH_HELLO) == 0, "write"); /* version */
        hello(h, "RBMT", TCP_MESH_VERSION, 2, 7); EXPECT(raw_write(bad[3], h, TCP_MESH_HELLO) == 0, "write"); /* rank */
        hello(h, "RBMT", TCP_MESH_VERSION, 2, 1); EXPECT(raw_write(bad[4], h, TCP_MESH_HELLO) == 0, "write"); /* itself */
        for (k = 0; k < 3; k++) { /* strangers, answered, who cannot prove the secret */
            static const int who[3] = {2, 5, 6}; /* another mesh size; another job; this job */
            hello(h, "RBMT", TCP_MESH_VERSION, who[k] == 2 ? 3 : 2, 0);
            if (who[k] == 5) h[16] = 9;
            EXPECT(raw_write(bad[who[k]], h, TCP_MESH_HELLO) == 0, "write");
            EXPECT(raw_read(bad[who[k]], h, TCP_MESH_ANSWER, 3000) == 0, "the answer to %d", who[k]);
            memset(h, 0x5a, TCP_MESH_PROOF); EXPECT(raw_write(bad[who[k]], h, TCP_MESH_PROOF) == 0, "write");
        }
        hello(h, "RBMT", TCP_MESH_VERSION, 2, 0); EXPECT(raw_write(partial, h, 8) == 0, "write");              /* half */
        for (k = 0; k < 7; k++) EXPECT(closed_by_peer(bad[k], 3000), "bad hello %d was not dropped", k);
        EXPECT(!closed_by_peer(silent, 50), "a silent caller was dropped before its time");
        /* the real rank 0 still gets in */
        EXPECT_RC(tcp_mesh_open(&m0, 0, 2, ap, 5000), RESBM_OK);
    }
    pthread_join(th, NULL);
    EXPECT_RC(acc.rc, RESBM_OK);
    if (!g_why[0]) {
        tcp_mesh_transport(m0, &t0);
        tcp_mesh_transport(acc.mesh, &t1);
        EXPECT_RC(t0.send(t0.user, 1, "ping", 4), RESBM_OK);
        EXPECT_RC(t1.recv(t1.user, 0, buf, sizeof(buf), &len, 5000), RESBM_OK);
        EXPECT(len == 4 && !memcmp(buf, "ping", 4), "ping");
        EXPECT_RC(t1.send(t1.user, 0, "pong", 4), RESBM_OK);
        EXPECT_RC(t0.recv(t0.user, 1, buf, sizeof(buf), &len, 5000), RESBM_OK);
        EXPECT(len == 4 && !memcmp(buf, "pong", 4), "pong");
        /* unfinished handshakes are closed once the mesh is complete */
        EXPECT(closed_by_peer(silent, 3000) && closed_by_peer(partial, 3000),
               "unfinished handshakes left open");
    }
    for (k = 0; k < 7; k++) if (bad[k] >= 0) close(bad[k]);
    if (silent >= 0) close(silent);
    if (partial >= 0) close(partial);
    if (!acc.rc) tcp_mesh_close(acc.mesh);
    tcp_mesh_close(m0);
}

/* A caller that proves the secret but runs another mesh size or job fails the acceptor's open
   with RESBM_EJOB (not its deadline's ETIMEDOUT) and gets no ack; the acceptor's answer carries
   its rank but not its mesh size or job, which a stranger could otherwise read off it. */
static void test_proven_other_job(void) {
    int variant;
    for (variant = 0; variant < 2; variant++) { /* another mesh size; another job digest */
        char addrs[2][32];
        const char *ap[2];
        int ports[2], fd;
        unsigned char mine[TCP_MESH_HELLO], b[TCP_MESH_ANSWER], tag[32];
        tcp_mesh caller;
        open_arg acc;
        pthread_t th;
        take_ports(2, addrs, ports);
        ap[0] = addrs[0]; ap[1] = addrs[1];
        memset(&acc, 0, sizeof(acc));
        acc.me = 1; acc.n = 2; acc.deadline_ms = 3000; acc.addrs = ap;
        acc.auth.secret = "the run's secret"; acc.auth.secret_len = strlen("the run's secret"); acc.auth.job = 76;
        pthread_create(&th, NULL, auth_thread, &acc);
        fd = raw_connect(ports[1], 3000);
        EXPECT(fd >= 0, "cannot reach the acceptor");
        memset(&caller, 0, sizeof(caller)); /* a caller with the secret, of mesh size 3 / job 77 */
        caller.n = variant == 0 ? 3 : 2;
        caller.auth = acc.auth;
        caller.auth.job = variant == 0 ? 76 : 77;
        hello(mine, "RBMT", TCP_MESH_VERSION, (uint32_t)caller.n, 0);
        tcp__put32(mine + 16, (uint32_t)tcp__job_word(&caller));
        tcp__put32(mine + 20, (uint32_t)(tcp__job_word(&caller) >> 32));
        if (fd >= 0 && raw_write(fd, mine, TCP_MESH_HELLO) == 0 && raw_read(fd, b, TCP_MESH_ANSWER, 3000) == 0) {
            EXPECT(tcp__get32(b + 12) == 1 && tcp__get32(b + 8) == 0 && tcp__get32(b + 16) == 0 &&
                       tcp__get32(b + 20) == 0, "the answer tells the acceptor's size or job");
            tcp__tag(&caller, 'A', mine, b, TCP_MESH_HELLO, tag);
            EXPECT(tcp__same(tag, b + TCP_MESH_HELLO, 32), "the acceptor's tag");
            tcp__tag(&caller, 'C', mine, b, TCP_MESH_ANSWER, tag);
            EXPECT(raw_write(fd, tag, sizeof(tag)) == 0, "write the proof");
            EXPECT(closed_by_peer(fd, 3000), "no ack: the link was not taken");
        } else {
            EXPECT(0, "no answer to a well-formed hello");
        }
        pthread_join(th, NULL);
        EXPECT(acc.rc == RESBM_EJOB, "%s: %s", variant == 0 ? "another mesh size" : "another job",
               resbm_strerror(acc.rc));
        if (!acc.rc) tcp_mesh_close(acc.mesh);
        if (fd >= 0) close(fd);
    }
}

/* Hellos of another job are answered, but they cannot push a real rank out of the handshake:
   here rank 0 starts late, so rank 1's handshake at rank 2 waits for its proof while a stranger
   fills rank 2's slots with them. Without a secret the stranger's hellos have another mesh size;
   with one, this mesh's size and the job digest itself, which a stranger may know (train's is a
   hash of its flags and data) but which is not this job's word when there is a secret. Before,
   an answered hello counted as this job's whatever its job, and the oldest of all, rank 1, was
   dropped; with a secret, a hello carrying the bare digest was this job's. */
static void test_other_job_hellos_cannot_evict(void) {
    int variant;
    for (variant = 0; variant < 2; variant++) { /* no secret; a secret */
        three_ranks r;
        open_arg *a = r.a;
        int fds[40], k;
        pthread_t th[3];
        three_ranks_init(&r, 8000);
        for (k = 0; k < 3; k++) {
            a[k].auth.job = 76;
            if (variant == 1) { a[k].auth.secret = "the run's secret"; a[k].auth.secret_len = strlen("the run's secret"); }
        }
        pthread_create(&th[2], NULL, auth_thread, &a[2]);
        pthread_create(&th[1], NULL, auth_thread, &a[1]); /* says hello to rank 2, then waits for rank 0 */
        sleep_ms(300);
        for (k = 0; k < 40; k++) {
            unsigned char h[TCP_MESH_HELLO];
            fds[k] = raw_connect(r.ports[2], 1000);
            hello(h, "RBMT", TCP_MESH_VERSION, variant == 0 ? 99 : 3, 0);
            tcp__put32(h + 16, 76);
            if (fds[k] >= 0) (void)raw_write(fds[k], h, TCP_MESH_HELLO);
            sleep_ms(30);
        }
        pthread_create(&th[0], NULL, auth_thread, &a[0]);
        for (k = 0; k < 3; k++) pthread_join(th[k], NULL);
        for (k = 0; k < 3; k++) EXPECT(a[k].rc == RESBM_OK, "%s: rank %d: %s", variant ? "a secret" : "no secret", k,
                                       resbm_strerror(a[k].rc));
        for (k = 0; k < 40; k++) if (fds[k] >= 0) close(fds[k]);
        for (k = 0; k < 3; k++) if (!a[k].rc) tcp_mesh_close(a[k].mesh);
    }
}

/* Idle connections from a stranger (no secret, nothing sent) do not push a real rank out of the
   handshake: here they arrive with the real rank 0 while rank 1 is still calling rank 2 (which
   starts late), so rank 1 accepts all of them at once, more than it has room for. Before, the
   oldest caller without a read hello was dropped, and that was rank 0, whose hello had not been
   read yet: every rank's open failed. */
static void test_idle_callers_cannot_evict(void) {
    three_ranks r;
    open_arg *a = r.a;
    int idle[20], k;
    pthread_t th[3];
    three_ranks_init(&r, 8000);
    pthread_create(&th[1], NULL, open_thread, &a[1]); /* listens, then calls rank 2: not up yet */
    sleep_ms(200);
    pthread_create(&th[0], NULL, open_thread, &a[0]); /* calls rank 1 and says hello */
    sleep_ms(300);
    for (k = 0; k < 20; k++) { /* connect, without waiting for it (the backlog may be full) */
        struct sockaddr_in sa;
        memset(&sa, 0, sizeof(sa));
        sa.sin_family = AF_INET;
        sa.sin_port = htons((uint16_t)r.ports[1]);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        idle[k] = socket(AF_INET, SOCK_STREAM, 0);
        if (idle[k] >= 0 && !tcp__nonblock(idle[k])) (void)connect(idle[k], (struct sockaddr *)&sa, sizeof(sa));
    }
    sleep_ms(300);
    pthread_create(&th[2], NULL, open_thread, &a[2]); /* rank 1 can go on to accept */
    for (k = 0; k < 3; k++) pthread_join(th[k], NULL);
    for (k = 0; k < 3; k++) EXPECT_RC(a[k].rc, RESBM_OK);
    for (k = 0; k < 20; k++) if (idle[k] >= 0) close(idle[k]);
    for (k = 0; k < 3; k++) if (!a[k].rc) tcp_mesh_close(a[k].mesh);
}

/* A neighbour that keeps sending does not stretch a receive from another, quiet one past its
   timeout (before, draining went on until the flooded inbox was full: seconds, and gigabytes). */
typedef struct { resbm_transport t; int stop; long sent; } flood_arg; /* stop: atomic */
static void *flood_thread(void *p) {
    flood_arg *f = (flood_arg *)p;
    static unsigned char mb[1 << 20];
    while (!__atomic_load_n(&f->stop, __ATOMIC_ACQUIRE) && f->t.send(f->t.user, 1, mb, sizeof(mb)) == RESBM_OK) f->sent++;
    return NULL;
}
static void test_flood_keeps_timeouts(void) {
    tcp_mesh *m[3];
    resbm_transport t1;
    flood_arg f;
    pthread_t th;
    unsigned char buf[16];
    size_t len;
    double t0, took;
    int k;
    EXPECT_RC(open_mesh(3, m), RESBM_OK);
    if (g_why[0]) return;
    memset(&f, 0, sizeof(f));
    tcp_mesh_transport(m[0], &f.t);
    tcp_mesh_set_send_timeout(m[0], 300); /* so the flood ends once nobody reads */
    tcp_mesh_transport(m[1], &t1);
    pthread_create(&th, NULL, flood_thread, &f);
    sleep_ms(100);
    t0 = now_ms();
    EXPECT_RC(t1.recv(t1.user, 2, buf, sizeof(buf), &len, 300), RESBM_ETIMEDOUT);
    took = now_ms() - t0;
    __atomic_store_n(&f.stop, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    EXPECT(took < 1000.0, "a 300 ms receive took %.0f ms beside a flood (%ld MiB sent)", took, f.sent);
    for (k = 0; k < 3; k++) tcp_mesh_close(m[k]);
}

/* Twelve ranks, the last starting late: every lower rank's handshake waits at the last one at
   the same time (more than TCP_MESH_PENDING of them), and all of them get in; then every pair
   talks, both ways. */
static void test_mesh_many_ranks_late(void) {
    enum { N = 12 };
    char addrs[N][32], buf[8];
    const char *ap[N];
    open_arg a[N];
    pthread_t th[N];
    resbm_transport t[N];
    size_t len;
    int k, j;
    take_ports(N, addrs, NULL);
    for (k = 0; k < N; k++) ap[k] = addrs[k];
    for (k = 0; k < N; k++) {
        memset(&a[k], 0, sizeof(a[k]));
        a[k].me = k; a[k].n = N; a[k].addrs = ap; a[k].deadline_ms = 15000;
        if (k == N - 1) sleep_ms(300);
        pthread_create(&th[k], NULL, open_thread, &a[k]);
    }
    for (k = 0; k < N; k++) pthread_join(th[k], NULL);
    for (k = 0; k < N; k++) EXPECT(a[k].rc == RESBM_OK, "rank %d: %s", k, resbm_strerror(a[k].rc));
    if (!g_why[0]) {
        for (k = 0; k < N; k++) tcp_mesh_transport(a[k].mesh, &t[k]);
        for (k = 0; k < N; k++)
            for (j = 0; j < N; j++) {
                unsigned char msg[2];
                msg[0] = (unsigned char)k; msg[1] = (unsigned char)j;
                if (j != k) EXPECT_RC(t[k].send(t[k].user, j, msg, 2), RESBM_OK);
            }
        for (j = 0; j < N; j++)
            for (k = 0; k < N; k++) {
                if (j == k) continue;
                len = 0;
                EXPECT_RC(t[j].recv(t[j].user, k, buf, sizeof(buf), &len, 5000), RESBM_OK);
                EXPECT(len == 2 && buf[0] == (char)k && buf[1] == (char)j, "%d -> %d: %zu bytes", k, j, len);
            }
    }
    for (k = 0; k < N; k++) if (!a[k].rc) tcp_mesh_close(a[k].mesh);
}

/* ---- opening against no one: an error within the deadline ------------------------------------- */
static void test_unreachable_peer(void) {
    char addrs[2][32];
    const char *ap[2], *blackhole[2], *bad[2];
    tcp_mesh *m = NULL;
    double t0, dt;
    int rc;
    take_ports(2, addrs, NULL);
    ap[0] = addrs[0]; ap[1] = addrs[1];
    t0 = now_ms(); /* rank 0 calls rank 1, which never listens */
    rc = tcp_mesh_open(&m, 0, 2, ap, 400);
    dt = now_ms() - t0;
    EXPECT(rc == RESBM_ETIMEDOUT, "calling no one: %s", resbm_strerror(rc));
    EXPECT(dt >= 350 && dt < 2000, "a 400 ms deadline took %.0f ms", dt);
    t0 = now_ms(); /* rank 1 waits for rank 0, which never calls */
    rc = tcp_mesh_open(&m, 1, 2, ap, 300);
    dt = now_ms() - t0;
    EXPECT(rc == RESBM_ETIMEDOUT, "waiting for no one: %s", resbm_strerror(rc));
    EXPECT(dt >= 250 && dt < 2000, "a 300 ms deadline took %.0f ms", dt);
    blackhole[0] = addrs[0]; blackhole[1] = "10.255.255.1:9"; /* no answer, or unreachable */
    t0 = now_ms();
    rc = tcp_mesh_open(&m, 0, 2, blackhole, 300);
    dt = now_ms() - t0;
    EXPECT(rc != RESBM_OK && dt < 2000, "a silent address: %s after %.0f ms", resbm_strerror(rc), dt);
    if (rc == RESBM_OK) tcp_mesh_close(m);
    bad[0] = addrs[0]; bad[1] = "127.0.0.1"; /* malformed addresses fail at once */
    EXPECT_RC(tcp_mesh_open(&m, 0, 2, bad, 5000), RESBM_EINVAL);
    bad[1] = "127.0.0.1:65536";
    EXPECT_RC(tcp_mesh_open(&m, 0, 2, bad, 5000), RESBM_EINVAL);
    bad[1] = "127.0.0.1:80x";
    EXPECT_RC(tcp_mesh_open(&m, 0, 2, bad, 5000), RESBM_EINVAL);
    EXPECT_RC(tcp_mesh_open(&m, 2, 2, ap, 5000), RESBM_EINVAL);
    EXPECT_RC(tcp_mesh_open(NULL, 0, 2, ap, 5000), RESBM_EINVAL);
    EXPECT_RC(tcp_mesh_open(&m, 0, 1, ap, 0), RESBM_OK); /* alone: nothing to do */
    if (!g_why[0]) tcp_mesh_close(m);
}

/* "localhost" resolves (IPv4 or IPv6) and works as well as a numeric address. */
static void test_localhost_names(void) {
    char addrs[2][32], names[2][32];
    const char *ap[2];
    int ports[2], k;
    open_arg a[2];
    pthread_t th[2];
    resbm_transport t0, t1;
    char buf[8];
    size_t len = 0;
    take_ports(2, addrs, ports);
    for (k = 0; k < 2; k++) {
        snprintf(names[k], sizeof(names[k]), "localhost:%d", ports[k]);
        ap[k] = names[k];
    }
    for (k = 0; k < 2; k++) {
        memset(&a[k], 0, sizeof(a[k]));
        a[k].me = k; a[k].n = 2; a[k].addrs = ap; a[k].deadline_ms = 5000;
        pthread_create(&th[k], NULL, open_thread, &a[k]);
    }
    for (k = 0; k < 2; k++) {
        pthread_join(th[k], NULL);
        EXPECT_RC(a[k].rc, RESBM_OK);
    }
    if (!g_why[0]) {
        tcp_mesh_transport(a[0].mesh, &t0);
        tcp_mesh_transport(a[1].mesh, &t1);
        EXPECT_RC(t1.send(t1.user, 0, "hi", 2), RESBM_OK);
        EXPECT_RC(t0.recv(t0.user, 1, buf, sizeof(buf), &len, 5000), RESBM_OK);
        EXPECT(len == 2 && !memcmp(buf, "hi", 2), "hi");
    }
    for (k = 0; k < 2; k++) if (!a[k].rc) tcp_mesh_close(a[k].mesh);
}

/* ---- a 2-stage pipeline: TCP == in-process, bit for bit ---------------------------------------- */
#define PIPE_STEPS 3

typedef struct {
    resbm_stage_config cfg;
    const char *const *addrs; /* NULL: the transport is already in cfg */
    int rc;
    float loss[PIPE_STEPS];
    float *params;
    size_t nparams;
} stage_arg;

static resbm_stage_config pipe_config(int stage, int wire) {
    resbm_stage_config c = resbm_stage_config_default();
    c.model.d = 32; c.model.layers = 2; c.model.heads = 2; c.model.seq = 16; c.model.batch = 2;
    c.model.stages = 2; c.model.stage = stage; c.model.r = 8; c.model.m = 8; c.model.threads = 1;
    c.opt.warmup = 1;
    c.opt.clip = 0.05f; /* binds: the norm exchange matters */
    c.n_micro = 2;
    c.wire_fwd = c.wire_bwd = wire;
    c.timeout_ms = 20000;
    return c;
}

static void pipe_batch(int32_t *tok, int32_t *tg, size_t n, int step) {
    resbm_rng rng;
    size_t i;
    resbm_rng_seed(&rng, 77, (uint64_t)step);
    for (i = 0; i < n; i++) {
        tok[i] = (int32_t)(resbm_rng_u32(&rng) % 256u);
        tg[i] = (int32_t)((tok[i] * 7 + 3) % 256); /* something learnable */
    }
}

static void *stage_thread(void *p) {
    stage_arg *a = (stage_arg *)p;
    tcp_mesh *mesh = NULL;
    resbm_stage *st = NULL;
    int32_t tok[4 * 16], tg[4 * 16];
    size_t rows = (size_t)a->cfg.n_micro * (size_t)a->cfg.model.batch, i, count, off = 0;
    const resbm_param *ps;
    int k;
    if (a->addrs) {
        if ((a->rc = tcp_mesh_open(&mesh, a->cfg.model.stage, 2, a->addrs, 5000))) return NULL;
        tcp_mesh_transport(mesh, &a->cfg.transport);
    }
    if (!(a->rc = resbm_stage_init(&a->cfg, &st))) {
        int first = a->cfg.model.stage == 0;
        for (k = 0; k < PIPE_STEPS && !a->rc; k++) {
            pipe_batch(tok, tg, rows * 16, k);
            a->rc = resbm_stage_step(st, first ? tok : NULL, first ? NULL : tg, rows, &a->loss[k]);
        }
        ps = resbm_model_params(resbm_stage_model(st), &count);
        for (i = 0; i < count; i++) a->nparams += ps[i].value.ne[0] * ps[i].value.ne[1];
        a->params = (float *)malloc(a->nparams * sizeof(float));
        for (i = 0; i < count && a->params; i++) {
            size_t n = ps[i].value.ne[0] * ps[i].value.ne[1];
            memcpy(a->params + off, ps[i].value.data, n * sizeof(float));
            off += n;
        }
        resbm_stage_free(st);
    }
    tcp_mesh_close(mesh);
    return NULL;
}

static int run_pipe(stage_arg *a, int wire, int tcp) {
    char addrs[2][32];
    const char *ap[2];
    resbm_inproc *hub = NULL;
    pthread_t th[2];
    int s;
    if (tcp) {
        take_ports(2, addrs, NULL);
        ap[0] = addrs[0]; ap[1] = addrs[1];
    } else if (resbm_inproc_init(2, 1 << 20, &hub)) {
        return RESBM_ENOMEM;
    }
    for (s = 0; s < 2; s++) {
        memset(&a[s], 0, sizeof(a[s]));
        a[s].cfg = pipe_config(s, wire);
        if (tcp) a[s].addrs = ap;
        else resbm_inproc_transport(hub, s, &a[s].cfg.transport);
        pthread_create(&th[s], NULL, stage_thread, &a[s]);
    }
    for (s = 0; s < 2; s++) pthread_join(th[s], NULL);
    resbm_inproc_free(hub);
    return a[0].rc ? a[0].rc : a[1].rc;
}

static void pipeline_case(int wire) {
    stage_arg t[2], p[2];
    int s, k;
    EXPECT_RC(run_pipe(t, wire, 1), RESBM_OK);
    EXPECT_RC(run_pipe(p, wire, 0), RESBM_OK);
    if (!g_why[0]) {
        for (k = 0; k < PIPE_STEPS; k++) {
            EXPECT(memcmp(&t[0].loss[k], &t[1].loss[k], sizeof(float)) == 0,
                   "step %d: stage 0 loss %.9g, stage 1 %.9g", k, t[0].loss[k], t[1].loss[k]);
            EXPECT(memcmp(&t[0].loss[k], &p[0].loss[k], sizeof(float)) == 0,
                   "step %d: loss %.9g over TCP, %.9g in-process", k, t[0].loss[k], p[0].loss[k]);
        }
        EXPECT(t[0].loss[PIPE_STEPS - 1] < t[0].loss[0], "loss did not fall: %.4f -> %.4f", t[0].loss[0], t[0].loss[PIPE_STEPS - 1]);
        for (s = 0; s < 2; s++)
            EXPECT(t[s].params && p[s].params && t[s].nparams == p[s].nparams &&
                       !memcmp(t[s].params, p[s].params, t[s].nparams * sizeof(float)),
                   "stage %d: parameters differ between TCP and in-process", s);
    }
    for (s = 0; s < 2; s++) { free(t[s].params); free(p[s].params); }
}

static void test_pipeline_tcp_equals_inproc_f32(void) { pipeline_case(RESBM_WIRE_F32); }
static void test_pipeline_tcp_equals_inproc_bf16(void) { pipeline_case(RESBM_WIRE_BF16); }

int main(void) {
    g_port = 20000 + (int)((unsigned)getpid() * 97u % 11000u);
    run("mesh3_order_and_sizes", test_mesh3_order_and_sizes);
    run("simultaneous_big_sends", test_simultaneous_big_sends);
    run("recv_timeout_keeps_messages", test_recv_timeout_keeps_messages);
    run("cap_too_small", test_cap_too_small);
    run("length_limit", test_length_limit);
    run("closed_peer", test_closed_peer);
    run("conformance", test_conformance);
    run("bad_handshake_ignored", test_bad_handshake_ignored);
    run("idle_callers_cannot_evict", test_idle_callers_cannot_evict);
    run("other_job_hellos_cannot_evict", test_other_job_hellos_cannot_evict);
    run("flood_keeps_timeouts", test_flood_keeps_timeouts);
    run("mesh_many_ranks_late", test_mesh_many_ranks_late);
    run("secret_and_job", test_secret_and_job);
    run("proven_other_job", test_proven_other_job);
    run("unreachable_peer", test_unreachable_peer);
    run("localhost_names", test_localhost_names);
    run("pipeline_tcp_equals_inproc_f32", test_pipeline_tcp_equals_inproc_f32);
    run("pipeline_tcp_equals_inproc_bf16", test_pipeline_tcp_equals_inproc_bf16);
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
