/* tcp.h - a TCP transport for resbm: how a host plugs its own network stack into
   resbm_transport (docs/design.md §6). Header-only, static functions, POSIX sockets and poll(), no threads.

       #define _POSIX_C_SOURCE 200809L          // first, under -std=c99
       #define RESBM_IMPLEMENTATION
       #include "../resbm.h"
       #include "tcp.h"

       const char *addrs[] = {"10.0.0.1:9000", "10.0.0.2:9000"};   // one per stage
       tcp_mesh *mesh;
       int rc = tcp_mesh_open(&mesh, me, 2, addrs, 30000);          // every stage, within 30 s
       if (rc) ... resbm_strerror(rc) ...
       tcp_mesh_set_send_timeout(mesh, cfg.timeout_ms);              // default 60 s
       tcp_mesh_transport(mesh, &cfg.transport);                     // peers are ranks = stages
       ... resbm_stage_init(&cfg, &st), resbm_stage_step(st, ...) ...
       tcp_mesh_close(mesh);

   HOW IT WORKS
   - open: rank i listens on addrs[i] (when a lower rank will call), calls every higher rank and
     sends a hello (magic "RBMT", version, mesh size, its rank, the job, a fresh nonce).
     The acceptor checks it -- a bad one is dropped and it keeps waiting -- and answers with its
     own hello and HMAC-SHA256(secret, both hellos); the caller checks the answer and the tag
     and proves the secret the same way; only then does the acceptor take the link, and it
     says so (4 bytes), so an open never succeeds on a link the other side dropped. A stranger
     on the network (no secret) is dropped and the open keeps waiting for the real rank; a peer
     that proves the secret but runs another job (another mesh size or digest) fails both opens
     at once with RESBM_EJOB (in a larger mesh the ranks that wait on those two stop too, at
     once with "peer closed" or at their deadline). With a secret the hello's job is keyed by it,
     so a stranger cannot write one of this job even when it knows the job's settings. Without
     a secret nothing is proven: anyone who reaches the port can join, or end an open with
     RESBM_EJOB. The secret never crosses the wire, but nothing is encrypted: across the
     internet, run the mesh inside a VPN or a TLS tunnel. Every pair of ranks gets one socket:
     non-blocking, TCP_NODELAY.
   - A message on the wire is an 8-byte little-endian length, then the bytes.
   - send never needs the peer to be in recv (the resbm_transport contract: in 1F1B two
     neighbours send to each other at the same moment). Whenever a call waits -- a send for room
     in the kernel's socket buffer, a recv for its message -- whatever the other peers send
     meanwhile is read into their inboxes, so peers sending big frames to each other cannot
     deadlock. An inbox keeps its largest size until close. No SIGPIPE: a dead peer is
     RESBM_ECLOSED.
   - recv takes bytes from the inbox first, then from the socket, until one deadline for the
     whole message. When the deadline passes half-way through a message, or the message is
     larger than cap, the bytes already taken go back to the front of the inbox: nothing is
     lost, and the next call starts that message again.
   - A length above max_message (default 1 GiB) ends the link with RESBM_ETRANSPORT; memory only
     grows with bytes that really arrived, never with what a length prefix claims.
   - One thread at a time per mesh (resbm_stage calls from one thread). */
#ifndef RESBM_TCP_H
#define RESBM_TCP_H

#ifndef RESBM_H
#error "include resbm.h before tcp.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* not on this system: SO_NOSIGPIPE is set on every socket instead */
#endif

#if defined(__GNUC__) || defined(__clang__)
#define TCPDEF static __attribute__((unused))
#else
#define TCPDEF static
#endif

#define TCP_MESH_VERSION 5u /* 4: a proven peer of another job fails both opens with RESBM_EJOB;
                                5: with a secret, the hello's job is keyed by it */
#define TCP_MESH_HELLO 40  /* "RBMT" | u32 version | u32 mesh size | u32 rank | u64 job word | nonce[16] */
#define TCP_MESH_ANSWER (TCP_MESH_HELLO + 32) /* the acceptor's hello, then its tag */
#define TCP_MESH_PROOF 32  /* the caller's tag */
#define TCP_MESH_ACK "RBMK" /* the acceptor's last word: the link is taken */
#define TCP_MESH_PENDING 8 /* unfinished handshakes held beyond one per lower rank */

typedef struct tcp_peer {
    int fd;                /* -1 for ourselves */
    int rerr, werr;        /* 0, or why reading / writing this link ended (sticky) */
    unsigned char *in;     /* inbox: bytes read off the socket, not delivered yet */
    size_t in_head, in_tail, in_cap;
} tcp_peer;

/* Who may join: peers that know `secret` (secret_len bytes; 0 = no secret) and run the job whose
   digest is `job` (any 64-bit summary of the settings every stage must share). */
typedef struct tcp_mesh_auth {
    const void *secret;
    size_t secret_len;
    uint64_t job;
} tcp_mesh_auth;

typedef struct tcp_mesh tcp_mesh;
struct tcp_mesh {
    int me, n;
    size_t max_message;  /* longest message accepted, default 1 << 30 */
    size_t max_inbox;    /* most bytes an inbox takes while draining: 2 * max_message + 16 */
    int send_timeout_ms; /* default 60000; < 0: a send waits as long as the peer is alive */
    tcp_peer *peer;      /* [n] */
    struct pollfd *pfd;  /* [n] scratch for tcp__wait */
    tcp_mesh_auth auth;  /* while opening */
    uint64_t job_word;   /* the job as our hellos carry it (tcp__job_word) */
};

TCPDEF int tcp_mesh_open(tcp_mesh **out, int me, int n, const char *const *addrs, int deadline_ms);
/* tcp_mesh_open with a run secret and a job digest (auth NULL: none). RESBM_EJOB: a peer that
   proved the secret runs another job or mesh size. */
TCPDEF int tcp_mesh_open_auth(tcp_mesh **out, int me, int n, const char *const *addrs,
                              int deadline_ms, const tcp_mesh_auth *auth);
TCPDEF void tcp_mesh_close(tcp_mesh *t);
TCPDEF void tcp_mesh_transport(tcp_mesh *t, resbm_transport *out);
/* Longest message either way (a longer incoming length ends the link). */
TCPDEF void tcp_mesh_set_max_message(tcp_mesh *t, size_t bytes);
/* Bounds a send (default 60 s, as the contract asks: a live peer that stops reading cannot
   hold a stage for ever; < 0: no bound). A send that times out half-way ends the link. */
TCPDEF void tcp_mesh_set_send_timeout(tcp_mesh *t, int ms);

/* ---- small helpers ------------------------------------------------------------------------------ */
static double tcp__now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* A deadline on the monotonic clock in ms; timeout < 0 gives -1, "never". */
static double tcp__deadline(int timeout_ms) {
    return timeout_ms < 0 ? -1.0 : tcp__now_ms() + (double)timeout_ms;
}

/* The poll() timeout that ends at the deadline: -1 never, 0 once it has passed. */
static int tcp__left(double deadline) {
    double left;
    if (deadline < 0) return -1;
    left = deadline - tcp__now_ms();
    if (left <= 0) return 0;
    return left >= (double)(INT_MAX - 1) ? INT_MAX : (int)left + 1; /* rounded up: never early */
}

static void tcp__sleep_ms(int ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* errno of a failed socket call -> RESBM code: the peer is gone, or something else broke. */
static int tcp__errcode(int e) {
    return (e == EPIPE || e == ECONNRESET || e == ECONNABORTED || e == ETIMEDOUT) ? RESBM_ECLOSED
                                                                                  : RESBM_ETRANSPORT;
}

static void tcp__put32(unsigned char *b, uint32_t v) {
    int k;
    for (k = 0; k < 4; k++) b[k] = (unsigned char)(v >> (8 * k));
}

static uint32_t tcp__get32(const unsigned char *b) {
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* Non-blocking and not inherited by exec'd programs. */
static int tcp__nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
    return fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 ? -1 : 0;
}

/* Every peer socket: non-blocking, TCP_NODELAY (frames are latency-bound), no SIGPIPE. */
static int tcp__setup(int fd) {
    int one = 1;
#ifdef SO_NOSIGPIPE
    if (setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one)) < 0) return -1;
#endif
    if (tcp__nonblock(fd)) return -1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* "host:port", "[v6addr]:port" or ":port" (any interface to listen, loopback to call). */
static int tcp__resolve(const char *addr, int passive, struct addrinfo **out) {
    char host[256];
    const char *colon, *h = addr, *c;
    size_t hl;
    long port = 0;
    struct addrinfo hints;
    int rc;
    if (!addr || !(colon = strrchr(addr, ':')) || !colon[1]) return RESBM_EINVAL;
    for (c = colon + 1; *c; c++) {
        if (*c < '0' || *c > '9' || port > 65535) return RESBM_EINVAL;
        port = port * 10 + (*c - '0');
    }
    if (port > 65535) return RESBM_EINVAL;
    hl = (size_t)(colon - addr);
    if (hl >= 2 && addr[0] == '[' && addr[hl - 1] == ']') { h = addr + 1; hl -= 2; }
    if (hl >= sizeof(host)) return RESBM_EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    rc = getaddrinfo(hl ? host : NULL, colon + 1, &hints, out);
    if (rc == EAI_AGAIN) return RESBM_ETIMEDOUT; /* name service not answering: worth retrying */
    return rc ? RESBM_EINVAL : RESBM_OK;
}

/* ---- SHA-256 and HMAC-SHA256 (FIPS 180-4, RFC 2104): how a peer proves it knows the run's
   secret without sending it ------------------------------------------------------------------- */
typedef struct { uint32_t h[8]; unsigned char buf[64]; uint64_t bytes; size_t used; } tcp__sha256;

static uint32_t tcp__ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void tcp__sha_block(uint32_t h[8], const unsigned char *p) {
    static const uint32_t k[64] = {
        0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u,
        0xab1c5ed5u, 0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu,
        0x9bdc06a7u, 0xc19bf174u, 0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu,
        0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau, 0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
        0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u, 0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu,
        0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u, 0xa2bfe8a1u, 0xa81a664bu,
        0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u, 0x19a4c116u,
        0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
        0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u,
        0xc67178f2u};
    uint32_t w[64], a, b, c, d, e, f, g, hh, t1, t2;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (i = 16; i < 64; i++)
        w[i] = w[i - 16] + (tcp__ror(w[i - 15], 7) ^ tcp__ror(w[i - 15], 18) ^ (w[i - 15] >> 3)) + w[i - 7] +
               (tcp__ror(w[i - 2], 17) ^ tcp__ror(w[i - 2], 19) ^ (w[i - 2] >> 10));
    a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; hh = h[7];
    for (i = 0; i < 64; i++) {
        t1 = hh + (tcp__ror(e, 6) ^ tcp__ror(e, 11) ^ tcp__ror(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
        t2 = (tcp__ror(a, 2) ^ tcp__ror(a, 13) ^ tcp__ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

static void tcp__sha_init(tcp__sha256 *s) {
    static const uint32_t h0[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                   0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    memcpy(s->h, h0, sizeof(h0));
    s->bytes = 0;
    s->used = 0;
}

static void tcp__sha_add(tcp__sha256 *s, const void *data, size_t n) {
    const unsigned char *p = (const unsigned char *)data;
    s->bytes += n;
    while (n > 0) {
        size_t take = 64 - s->used < n ? 64 - s->used : n;
        memcpy(s->buf + s->used, p, take);
        s->used += take; p += take; n -= take;
        if (s->used == 64) { tcp__sha_block(s->h, s->buf); s->used = 0; }
    }
}

static void tcp__sha_done(tcp__sha256 *s, unsigned char out[32]) {
    unsigned char pad[72];
    uint64_t bits = s->bytes * 8;
    size_t n = (s->used < 56 ? 56 : 120) - s->used;
    int i;
    memset(pad, 0, sizeof(pad));
    pad[0] = 0x80;
    for (i = 0; i < 8; i++) pad[n + i] = (unsigned char)(bits >> (56 - 8 * i));
    tcp__sha_add(s, pad, n + 8);
    for (i = 0; i < 32; i++) out[i] = (unsigned char)(s->h[i / 4] >> (24 - 8 * (i % 4)));
}

/* HMAC-SHA256(key, a || b) */
static void tcp__hmac(const unsigned char *key, size_t klen, const void *a, size_t alen,
                      const void *b, size_t blen, unsigned char out[32]) {
    unsigned char k[64], pad[64], inner[32];
    tcp__sha256 s;
    int i;
    memset(k, 0, sizeof(k));
    if (klen > 64) { tcp__sha_init(&s); tcp__sha_add(&s, key, klen); tcp__sha_done(&s, k); }
    else if (klen) memcpy(k, key, klen);
    for (i = 0; i < 64; i++) pad[i] = (unsigned char)(k[i] ^ 0x36);
    tcp__sha_init(&s); tcp__sha_add(&s, pad, 64); tcp__sha_add(&s, a, alen); tcp__sha_add(&s, b, blen);
    tcp__sha_done(&s, inner);
    for (i = 0; i < 64; i++) pad[i] = (unsigned char)(k[i] ^ 0x5c);
    tcp__sha_init(&s); tcp__sha_add(&s, pad, 64); tcp__sha_add(&s, inner, 32); tcp__sha_done(&s, out);
}

/* Equal without telling how far they agree (the time does not depend on the contents). */
static int tcp__same(const unsigned char *a, const unsigned char *b, size_t n) {
    unsigned char diff = 0;
    size_t i;
    for (i = 0; i < n; i++) diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

/* 16 unpredictable bytes: the kernel's, else the clock's and the process's, hashed. */
static void tcp__nonce(unsigned char out[16]) {
    int fd = open("/dev/urandom", O_RDONLY);
    ssize_t got = fd >= 0 ? read(fd, out, 16) : -1;
    if (fd >= 0) close(fd);
    if (got != 16) {
        tcp__sha256 s;
        unsigned char h[32];
        struct timespec ts;
        pid_t pid = getpid();
        clock_gettime(CLOCK_MONOTONIC, &ts);
        tcp__sha_init(&s); tcp__sha_add(&s, &ts, sizeof(ts)); tcp__sha_add(&s, &pid, sizeof(pid));
        tcp__sha_done(&s, h);
        memcpy(out, h, 16);
    }
}

/* Reads or writes exactly len bytes before the deadline (the handshake only). */
static int tcp__io_full(int fd, unsigned char *b, size_t len, double deadline, int writing) {
    size_t done = 0;
    while (done < len) {
        struct pollfd p;
        ssize_t k = writing ? send(fd, b + done, len - done, MSG_NOSIGNAL)
                            : recv(fd, b + done, len - done, 0);
        if (k > 0) { done += (size_t)k; continue; }
        if (k == 0) return RESBM_ECLOSED;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return tcp__errcode(errno);
        p.fd = fd;
        p.events = writing ? POLLOUT : POLLIN;
        p.revents = 0;
        k = poll(&p, 1, tcp__left(deadline));
        if (k == 0) return RESBM_ETIMEDOUT;
        if (k < 0 && errno != EINTR) return RESBM_ETRANSPORT;
    }
    return RESBM_OK;
}

/* ---- opening the mesh --------------------------------------------------------------------------- */
/* The job as a hello carries it. With a secret: the first 8 bytes of HMAC(secret, "J", mesh size,
   job digest), so a stranger who knows or guesses the digest (train's is a hash of its flags and
   data) still cannot write a hello of this job, only replay one seen on the wire. Without: the
   digest itself. */
static uint64_t tcp__job_word(const tcp_mesh *t) {
    unsigned char m[13], h[32];
    if (!t->auth.secret_len) return t->auth.job;
    m[0] = 'J';
    tcp__put32(m + 1, (uint32_t)t->n);
    tcp__put32(m + 5, (uint32_t)t->auth.job);
    tcp__put32(m + 9, (uint32_t)(t->auth.job >> 32));
    tcp__hmac((const unsigned char *)t->auth.secret, t->auth.secret_len, m, sizeof(m), NULL, 0, h);
    return (uint64_t)tcp__get32(h) | (uint64_t)tcp__get32(h + 4) << 32;
}

static void tcp__hello(unsigned char *b, const tcp_mesh *t) {
    memcpy(b, "RBMT", 4);
    tcp__put32(b + 4, TCP_MESH_VERSION);
    tcp__put32(b + 8, (uint32_t)t->n);
    tcp__put32(b + 12, (uint32_t)t->me);
    tcp__put32(b + 16, (uint32_t)t->job_word);
    tcp__put32(b + 20, (uint32_t)(t->job_word >> 32));
    tcp__nonce(b + 24);
}

/* A hello of this protocol; *rank = the sender's rank (range checked by the caller). */
static int tcp__hello_ok(const unsigned char *b, uint32_t *rank) {
    *rank = tcp__get32(b + 12);
    return !memcmp(b, "RBMT", 4) && tcp__get32(b + 4) == TCP_MESH_VERSION;
}

/* Whether a hello is of this mesh's job: its size and job word. Asked to keep our job from a
   caller of another, to pick a slot to drop, and, once the hello is proven, to fail the open
   (RESBM_EJOB), so a stranger cannot make it fail. */
static int tcp__same_job(const tcp_mesh *t, const unsigned char *b) {
    uint64_t job = (uint64_t)tcp__get32(b + 16) | (uint64_t)tcp__get32(b + 20) << 32;
    return tcp__get32(b + 8) == (uint32_t)t->n && job == t->job_word;
}

/* The tag of one side: "A" the acceptor's over the caller's hello and its own, "C" the caller's
   over the caller's hello and the whole answer. */
static void tcp__tag(const tcp_mesh *t, char side, const unsigned char *hello,
                     const unsigned char *answer, size_t answer_len, unsigned char out[32]) {
    unsigned char m[1 + TCP_MESH_HELLO];
    m[0] = (unsigned char)side;
    memcpy(m + 1, hello, TCP_MESH_HELLO);
    tcp__hmac((const unsigned char *)t->auth.secret, t->auth.secret_len, m, sizeof(m), answer,
              answer_len, out);
}

static int tcp__listen(const char *addr, int backlog, int *out) {
    struct addrinfo *ai, *a;
    int fd = -1, one = 1, rc = tcp__resolve(addr, 1, &ai);
    if (rc) return rc == RESBM_ETIMEDOUT ? RESBM_ETRANSPORT : rc;
    for (a = ai; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) continue;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
            bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, backlog) == 0 &&
            tcp__nonblock(fd) == 0)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0) return RESBM_ETRANSPORT; /* address in use, or not ours */
    *out = fd;
    return RESBM_OK;
}

/* A TCP connection to itself: what calling a free local port can give (simultaneous open). */
static int tcp__self_connected(int fd) {
    struct sockaddr_storage a, b;
    socklen_t la = sizeof(a), lb = sizeof(b);
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    if (getsockname(fd, (struct sockaddr *)&a, &la) || getpeername(fd, (struct sockaddr *)&b, &lb))
        return 0;
    return la == lb && !memcmp(&a, &b, la);
}

/* Calls addr until it answers or the deadline passes (a peer that is not listening yet refuses:
   try again a little later). */
static int tcp__connect(const char *addr, double deadline, int *out) {
    for (;;) {
        struct addrinfo *ai = NULL, *a;
        int res = tcp__resolve(addr, 0, &ai), left;
        if (res == RESBM_EINVAL) return res;
        for (a = res ? NULL : ai; a; a = a->ai_next) {
            int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol), err = 0, k = 0;
            socklen_t el = sizeof(err);
            struct pollfd p;
            if (fd < 0) continue;
            if (tcp__setup(fd) == 0 &&
                (connect(fd, a->ai_addr, a->ai_addrlen) == 0 || errno == EINPROGRESS ||
                 errno == EINTR)) {
                p.fd = fd;
                p.events = POLLOUT;
                p.revents = 0;
                while ((k = poll(&p, 1, tcp__left(deadline))) < 0 && errno == EINTR) {}
                if (k == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0 &&
                    !tcp__self_connected(fd)) {
                    freeaddrinfo(ai);
                    *out = fd;
                    return RESBM_OK;
                }
            }
            close(fd);
        }
        if (!res) freeaddrinfo(ai);
        left = tcp__left(deadline);
        if (left == 0) return RESBM_ETIMEDOUT;
        tcp__sleep_ms(left < 0 || left > 20 ? 20 : left);
    }
}

/* Accepts the lower ranks until each has sent a hello and proved the secret; answers each hello
   with ours and our tag (our mesh size and job zeroed when the caller's differ, so a prober
   learns only whether its guess was right), and a good proof with the acknowledgement -- or, when
   the proven hello is of another job, returns RESBM_EJOB. Bad hellos or proofs, unknown or
   duplicate ranks and closed callers are dropped. Unfinished handshakes wait side by side, with
   room for every lower rank at once (each sends its proof only after its own accepts, so all of
   them may wait together) and TCP_MESH_PENDING more; when full, the oldest caller that has not
   yet sent a hello of this job after a poll round to send it in is dropped (a stranger, or a
   rank that then sees its link closed and fails), so idle connections or floods of other jobs'
   hellos cannot push real ranks out (nor can callers for a rank that has joined); only when
   every such slot holds a hello of this job (with a secret, replayed ones: see tcp__job_word;
   without, anyone can write one) is the oldest of all dropped; when every slot was filled in
   this same round, the newcomer is. */
typedef struct {
    int fd, rank;
    size_t got, want;  /* bytes read of the message being read, and its size */
    unsigned long seq; /* accept order */
    unsigned char hello[TCP_MESH_HELLO], answer[TCP_MESH_ANSWER], proof[TCP_MESH_PROOF];
} tcp__handshake;

static int tcp__accept_lower(tcp_mesh *t, int lfd, double deadline) {
    int cap = t->me + TCP_MESH_PENDING, missing = t->me, i, rc = RESBM_OK;
    tcp__handshake *hs = (tcp__handshake *)calloc((size_t)cap, sizeof(*hs));
    struct pollfd *p = (struct pollfd *)calloc((size_t)cap + 1, sizeof(*p));
    unsigned long seq = 0;
    if (!hs || !p) { free(hs); free(p); return RESBM_ENOMEM; }
    for (i = 0; i < cap; i++) hs[i].fd = -1;
    while (missing > 0) {
        int k;
        p[0].fd = lfd;
        p[0].events = POLLIN;
        p[0].revents = 0;
        for (i = 0; i < cap; i++) {
            p[i + 1].fd = hs[i].fd; /* poll skips -1 */
            p[i + 1].events = POLLIN;
            p[i + 1].revents = 0;
        }
        k = poll(p, (nfds_t)cap + 1, tcp__left(deadline));
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) { rc = RESBM_ETRANSPORT; break; }
        if (k == 0) { rc = RESBM_ETIMEDOUT; break; }
        for (i = 0; i < cap; i++) { /* hellos and proofs arriving */
            tcp__handshake *h = &hs[i];
            unsigned char *dst = h->want == TCP_MESH_HELLO ? h->hello : h->proof, tag[32];
            uint32_t rank;
            ssize_t got;
            if (h->fd < 0 || !p[i + 1].revents) continue;
            got = recv(h->fd, dst + h->got, h->want - h->got, 0);
            if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
            if (got > 0 && (h->got += (size_t)got) < h->want) continue;
            if (got > 0 && h->want == TCP_MESH_HELLO && tcp__hello_ok(h->hello, &rank) &&
                rank < (uint32_t)t->me && t->peer[rank].fd < 0) {
                tcp__hello(h->answer, t);
                if (!tcp__same_job(t, h->hello)) { /* another job, or a guess: do not tell it ours */
                    memset(h->answer + 8, 0, 4);      /* mesh size 0: never a caller's own */
                    memset(h->answer + 16, 0, 8);
                }
                tcp__tag(t, 'A', h->hello, h->answer, TCP_MESH_HELLO, h->answer + TCP_MESH_HELLO);
                if (tcp__io_full(h->fd, h->answer, TCP_MESH_ANSWER, deadline, 1) == RESBM_OK) {
                    h->rank = (int)rank;
                    h->want = TCP_MESH_PROOF;
                    h->got = 0;
                    continue;
                }
            } else if (got > 0 && h->want == TCP_MESH_PROOF) {
                unsigned char ack[4];
                memcpy(ack, TCP_MESH_ACK, 4);
                tcp__tag(t, 'C', h->hello, h->answer, TCP_MESH_ANSWER, tag);
                if (tcp__same(tag, h->proof, sizeof(tag)) && !tcp__same_job(t, h->hello)) {
                    rc = RESBM_EJOB; /* a proven peer of another job: no ack, it fails too */
                    break;
                }
                if (tcp__same(tag, h->proof, sizeof(tag)) && t->peer[h->rank].fd < 0 &&
                    tcp__io_full(h->fd, ack, 4, deadline, 1) == RESBM_OK) {
                    t->peer[h->rank].fd = h->fd;
                    h->fd = -1;
                    missing--;
                    continue;
                }
            }
            close(h->fd); /* closed, broken, or not one of ours: keep waiting for the rest */
            h->fd = -1;
        }
        if (rc) break;
        if (p[0].revents) { /* new callers */
            unsigned long batch = seq; /* callers accepted from here on have not been read yet */
            int fd;
            while ((fd = accept(lfd, NULL, NULL)) >= 0) {
                int slot = -1, pass;
                if (tcp__setup(fd)) { close(fd); continue; }
                for (i = 0; i < cap && slot < 0; i++)
                    if (hs[i].fd < 0) slot = i;
                for (pass = 0; pass < 2 && slot < 0; pass++) /* full: the oldest without a hello */
                    for (i = 0; i < cap; i++)                   /* of this job, else the oldest */
                        if ((pass || hs[i].want == TCP_MESH_HELLO || !tcp__same_job(t, hs[i].hello) ||
                             t->peer[hs[i].rank].fd >= 0) && /* (the rank is set once a hello is read) */
                            hs[i].seq < batch && (slot < 0 || hs[i].seq < hs[slot].seq)) /* that had a turn */
                            slot = i;
                if (slot < 0) { close(fd); continue; } /* all in this batch: the newcomer goes */
                if (hs[slot].fd >= 0) close(hs[slot].fd);
                hs[slot].fd = fd;
                hs[slot].got = 0;
                hs[slot].want = TCP_MESH_HELLO;
                hs[slot].seq = seq++;
            }
        }
    }
    for (i = 0; i < cap; i++)
        if (hs[i].fd >= 0) close(hs[i].fd);
    free(hs);
    free(p);
    return rc;
}

TCPDEF int tcp_mesh_open(tcp_mesh **out, int me, int n, const char *const *addrs, int deadline_ms) {
    return tcp_mesh_open_auth(out, me, n, addrs, deadline_ms, NULL);
}

TCPDEF int tcp_mesh_open_auth(tcp_mesh **out, int me, int n, const char *const *addrs,
                              int deadline_ms, const tcp_mesh_auth *auth) {
    double deadline = tcp__deadline(deadline_ms);
    unsigned char b[TCP_MESH_ANSWER], tag[32], *hellos;
    tcp_mesh *t;
    int lfd = -1, j, rc = RESBM_OK;
    uint32_t rank;
    if (!out || !addrs || n < 1 || n > 65536 || me < 0 || me >= n || (me > 0 && !addrs[me]) ||
        (auth && auth->secret_len && !auth->secret))
        return RESBM_EINVAL;
    for (j = me + 1; j < n; j++)
        if (!addrs[j]) return RESBM_EINVAL;
    t = (tcp_mesh *)calloc(1, sizeof(*t));
    if (!t) return RESBM_ENOMEM;
    t->me = me;
    t->n = n;
    if (auth) t->auth = *auth;
    t->job_word = tcp__job_word(t);
    t->peer = (tcp_peer *)calloc((size_t)n, sizeof(tcp_peer));
    t->pfd = (struct pollfd *)calloc((size_t)n, sizeof(struct pollfd));
    hellos = (unsigned char *)calloc((size_t)n, TCP_MESH_HELLO); /* ours, to each higher rank */
    if (!t->peer || !t->pfd || !hellos) { free(t->peer); free(t->pfd); free(t); free(hellos); return RESBM_ENOMEM; }
    for (j = 0; j < n; j++) t->peer[j].fd = -1;
    tcp_mesh_set_max_message(t, (size_t)1 << 30);
    t->send_timeout_ms = 60000;
    /* 1. listen, if a lower rank will call; 2. call every higher rank and say hello (this needs
       only their listeners, so no rank ever waits for another one in a cycle) */
    if (me > 0) rc = tcp__listen(addrs[me], n + TCP_MESH_PENDING, &lfd);
    for (j = me + 1; j < n && !rc; j++) {
        rc = tcp__connect(addrs[j], deadline, &t->peer[j].fd);
        tcp__hello(hellos + (size_t)j * TCP_MESH_HELLO, t);
        if (!rc) rc = tcp__io_full(t->peer[j].fd, hellos + (size_t)j * TCP_MESH_HELLO, TCP_MESH_HELLO, deadline, 1);
    }
    /* 3. accept the lower ranks; 4. the higher ranks' answers: their hello and tag, then our proof */
    if (!rc && me > 0) rc = tcp__accept_lower(t, lfd, deadline);
    for (j = me + 1; j < n && !rc; j++) {
        const unsigned char *mine = hellos + (size_t)j * TCP_MESH_HELLO;
        rc = tcp__io_full(t->peer[j].fd, b, TCP_MESH_ANSWER, deadline, 0);
        if (!rc && (!tcp__hello_ok(b, &rank) || rank != (uint32_t)j)) rc = RESBM_ETRANSPORT;
        if (!rc) {
            tcp__tag(t, 'A', mine, b, TCP_MESH_HELLO, tag);
            if (!tcp__same(tag, b + TCP_MESH_HELLO, sizeof(tag))) rc = RESBM_ETRANSPORT; /* no secret */
        }
        if (!rc) { /* our proof, also to a peer of another job: then both sides know it is one */
            tcp__tag(t, 'C', mine, b, TCP_MESH_ANSWER, tag);
            rc = tcp__io_full(t->peer[j].fd, tag, sizeof(tag), deadline, 1);
        }
        if (!rc && !tcp__same_job(t, b)) rc = RESBM_EJOB;
        /* the acknowledgement: rank j took this link (it may have dropped it, say for a
           duplicate or when out of room, and then this open fails here, not at the first send) */
        if (!rc) rc = tcp__io_full(t->peer[j].fd, b, 4, deadline, 0);
        if (!rc && memcmp(b, TCP_MESH_ACK, 4)) rc = RESBM_ETRANSPORT;
    }
    if (lfd >= 0) close(lfd);
    free(hellos);
    t->auth.secret = NULL; /* the caller's memory: not kept */
    if (rc) {
        tcp_mesh_close(t);
        return rc;
    }
    *out = t;
    return RESBM_OK;
}

TCPDEF void tcp_mesh_close(tcp_mesh *t) {
    int j;
    if (!t) return;
    for (j = 0; j < t->n; j++) {
        if (t->peer[j].fd >= 0) close(t->peer[j].fd);
        free(t->peer[j].in);
    }
    free(t->peer);
    free(t->pfd);
    free(t);
}

TCPDEF void tcp_mesh_set_max_message(tcp_mesh *t, size_t bytes) {
    if (!t) return;
    t->max_message = bytes;
    t->max_inbox = bytes > (SIZE_MAX - 16) / 2 ? SIZE_MAX : 2 * bytes + 16;
}

TCPDEF void tcp_mesh_set_send_timeout(tcp_mesh *t, int ms) {
    if (t) t->send_timeout_ms = ms;
}

/* ---- inboxes ------------------------------------------------------------------------------------ */
/* Room for `need` more bytes at the tail, growing to at most `limit` bytes held; 0 or -1. */
static int tcp__reserve(tcp_peer *p, size_t need, size_t limit) {
    size_t have = p->in_tail - p->in_head, cap;
    unsigned char *nb;
    if (p->in_cap - p->in_tail >= need) return 0;
    if (p->in_head) { /* slide to the front first */
        memmove(p->in, p->in + p->in_head, have);
        p->in_head = 0;
        p->in_tail = have;
        if (p->in_cap - have >= need) return 0;
    }
    if (need > limit || have > limit - need) return -1;
    cap = p->in_cap ? p->in_cap : 65536;
    while (cap < have + need) cap = cap > limit / 2 ? limit : 2 * cap;
    if (cap > limit) cap = limit;
    nb = (unsigned char *)realloc(p->in, cap);
    if (!nb) return -1;
    p->in = nb;
    p->in_cap = cap;
    return 0;
}

/* Reads what peer p has sent so far into its inbox (while the inbox is under the limit and the
   deadline has not passed: a peer that keeps sending cannot stretch another link's wait). */
static void tcp__drain(tcp_mesh *t, tcp_peer *p, double deadline) {
    while (!p->rerr && tcp__left(deadline) != 0) {
        size_t have = p->in_tail - p->in_head, room;
        ssize_t k;
        if (have >= t->max_inbox) return;
        room = t->max_inbox - have < 65536 ? t->max_inbox - have : 65536;
        if (tcp__reserve(p, room, t->max_inbox)) return;
        k = recv(p->fd, p->in + p->in_tail, p->in_cap - p->in_tail, 0);
        if (k > 0) { p->in_tail += (size_t)k; continue; }
        if (k == 0) p->rerr = RESBM_ECLOSED;
        else if (errno == EINTR) continue;
        else if (errno != EAGAIN && errno != EWOULDBLOCK) p->rerr = tcp__errcode(errno);
        return;
    }
}

/* Puts bytes back at the front of p's inbox: a message that could not be delivered whole. */
static int tcp__unread(tcp_peer *p, const unsigned char *src, size_t len) {
    size_t have = p->in_tail - p->in_head;
    if (!len) return RESBM_OK;
    if (len <= p->in_head) {
        p->in_head -= len;
        memmove(p->in + p->in_head, src, len);
        return RESBM_OK;
    }
    if (tcp__reserve(p, len, SIZE_MAX)) return RESBM_ENOMEM;
    memmove(p->in + len, p->in + p->in_head, have); /* make room at the front */
    memcpy(p->in, src, len);
    p->in_head = 0;
    p->in_tail = have + len;
    return RESBM_OK;
}

/* Waits until peer `target`'s socket is ready for `events` (POLLIN or POLLOUT) or the deadline
   passes (RESBM_ETIMEDOUT). Meanwhile every other peer's incoming bytes -- and the target's own,
   when waiting to write -- go into inboxes, so whoever is sending to us keeps moving. */
static int tcp__wait(tcp_mesh *t, int target, short events, double deadline) {
    for (;;) {
        int j, k, ready = 0;
        for (j = 0; j < t->n; j++) {
            tcp_peer *p = &t->peer[j];
            int drain = !p->rerr && p->in_tail - p->in_head < t->max_inbox;
            t->pfd[j].fd = (j == target || drain) ? p->fd : -1;
            t->pfd[j].events = (short)(j == target ? events | (drain ? POLLIN : 0) : POLLIN);
            t->pfd[j].revents = 0;
        }
        k = poll(t->pfd, (nfds_t)t->n, tcp__left(deadline));
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return RESBM_ETRANSPORT;
        if (k == 0) return RESBM_ETIMEDOUT;
        for (j = 0; j < t->n; j++) {
            short r = t->pfd[j].revents;
            if (r & POLLNVAL) return RESBM_ETRANSPORT;
            if (j == target && (r & (events | POLLHUP | POLLERR))) ready = 1;
            else if (r) tcp__drain(t, &t->peer[j], deadline); /* data, or the end of that link */
        }
        if (ready || t->peer[target].rerr) return RESBM_OK; /* the caller's call will tell */
        if (tcp__left(deadline) == 0) return RESBM_ETIMEDOUT; /* others' data kept poll busy */
    }
}

/* ---- the two callbacks -------------------------------------------------------------------------- */
/* Up to `want` (>= 1) bytes of peer j's stream into dst, from its inbox, else from its socket. */
static int tcp__read(tcp_mesh *t, int j, unsigned char *dst, size_t want, double deadline,
                     size_t *got) {
    tcp_peer *p = &t->peer[j];
    for (;;) {
        size_t have = p->in_tail - p->in_head;
        ssize_t k;
        int rc;
        if (have) {
            *got = have < want ? have : want;
            memcpy(dst, p->in + p->in_head, *got);
            p->in_head += *got;
            if (p->in_head == p->in_tail) p->in_head = p->in_tail = 0;
            return RESBM_OK;
        }
        if (p->rerr) return p->rerr;
        k = recv(p->fd, dst, want, 0);
        if (k > 0) { *got = (size_t)k; return RESBM_OK; }
        if (k == 0) p->rerr = RESBM_ECLOSED;
        else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if ((rc = tcp__wait(t, j, POLLIN, deadline))) return rc;
        } else if (errno != EINTR) p->rerr = tcp__errcode(errno);
    }
}

static int tcp__recv(void *user, int peer, void *buf, size_t cap, size_t *len, int timeout_ms) {
    tcp_mesh *t = (tcp_mesh *)user;
    double deadline = tcp__deadline(timeout_ms);
    unsigned char hdr[8], *dst = (unsigned char *)buf;
    size_t got = 0, k;
    uint64_t n = 0;
    int i, rc = RESBM_OK;
    if (!t || !len || (!buf && cap) || peer < 0 || peer >= t->n || peer == t->me)
        return RESBM_EINVAL;
    while (got < 8 && !rc) /* the length */
        if (!(rc = tcp__read(t, peer, hdr + got, 8 - got, deadline, &k))) got += k;
    if (rc) return tcp__unread(&t->peer[peer], hdr, got) ? RESBM_ENOMEM : rc;
    for (i = 0; i < 8; i++) n |= (uint64_t)hdr[i] << (8 * i);
    if (n > t->max_message) { /* not our framing, or hostile: nothing after it can be trusted,
                                 so what is already in the inbox behind it goes too */
        t->peer[peer].in_head = t->peer[peer].in_tail = 0;
        return t->peer[peer].rerr = RESBM_ETRANSPORT;
    }
    if (n > cap) /* it stays queued for a call with a bigger buffer */
        return tcp__unread(&t->peer[peer], hdr, 8) ? RESBM_ENOMEM : RESBM_EMSGSIZE;
    for (got = 0; got < n && !rc;) /* the bytes, straight into buf */
        if (!(rc = tcp__read(t, peer, dst + got, (size_t)n - got, deadline, &k))) got += k;
    if (rc) { /* the deadline passed half-way (or the link ended): keep what came */
        if (tcp__unread(&t->peer[peer], dst, got) || tcp__unread(&t->peer[peer], hdr, 8))
            return t->peer[peer].rerr = RESBM_ENOMEM;
        return rc;
    }
    *len = (size_t)n;
    return RESBM_OK;
}

static int tcp__send(void *user, int peer, const void *buf, size_t len) {
    tcp_mesh *t = (tcp_mesh *)user;
    tcp_peer *p;
    unsigned char hdr[8];
    struct iovec iov[2];
    struct msghdr msg;
    size_t done = 0, total;
    double deadline;
    int i, rc;
    if (!t || (!buf && len) || peer < 0 || peer >= t->n || peer == t->me) return RESBM_EINVAL;
    if (len > t->max_message) return RESBM_EMSGSIZE;
    p = &t->peer[peer];
    if (p->werr) return p->werr;
    if (p->rerr) return p->rerr; /* it hung up on us, or its stream broke */
    for (i = 0; i < 8; i++) hdr[i] = (unsigned char)((uint64_t)len >> (8 * i));
    total = len + 8;
    deadline = tcp__deadline(t->send_timeout_ms);
    while (done < total) {
        ssize_t k;
        memset(&msg, 0, sizeof(msg));
        if (done < 8) { /* the length and the bytes in one call: one packet when they fit */
            iov[0].iov_base = hdr + done;
            iov[0].iov_len = 8 - done;
            iov[1].iov_base = (void *)buf;
            iov[1].iov_len = len;
            msg.msg_iovlen = 2;
        } else {
            iov[0].iov_base = (unsigned char *)buf + (done - 8);
            iov[0].iov_len = total - done;
            msg.msg_iovlen = 1;
        }
        msg.msg_iov = iov;
        k = sendmsg(p->fd, &msg, MSG_NOSIGNAL);
        if (k >= 0) { done += (size_t)k; continue; }
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return p->werr = tcp__errcode(errno);
        rc = tcp__wait(t, peer, POLLOUT, deadline); /* the socket buffer is full */
        if (rc == RESBM_OK && p->rerr) rc = p->rerr;
        if (rc) {
            if (done || rc != RESBM_ETIMEDOUT) { /* half a message is on the wire: end the link */
                shutdown(p->fd, SHUT_RDWR);
                p->werr = rc == RESBM_ETIMEDOUT ? RESBM_ETRANSPORT : rc;
            }
            return rc;
        }
    }
    return RESBM_OK;
}

TCPDEF void tcp_mesh_transport(tcp_mesh *t, resbm_transport *out) {
    if (!out) return;
    out->user = t;
    out->send = tcp__send;
    out->recv = tcp__recv;
}

#endif /* RESBM_TCP_H */
