/* test_resbm.c - unit, gradient and determinism tests for resbm.h.
   Usage: test_resbm [--filter SUBSTRING]. Last line: "N passed, M failed"; exit 0 or 1. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, nanosleep under -std=c99 */
#include "../resbm.h" /* declarations only: the header must stand on its own */

#include <stdlib.h>

/* A counting allocator that can fail the n-th call: checks ENOMEM paths and leaks. */
static long ta_calls, ta_live, ta_fail_at = -1;
static void *ta_malloc(size_t n, void *user) { /* atomics: pipeline stages allocate in parallel */
    void *p;
    long call = __atomic_fetch_add(&ta_calls, 1, __ATOMIC_RELAXED);
    (void)user;
    if (ta_fail_at >= 0 && call == ta_fail_at) return NULL;
    p = malloc(n);
    if (p) __atomic_fetch_add(&ta_live, 1, __ATOMIC_RELAXED);
    return p;
}
static void ta_free(void *p, void *user) {
    (void)user;
    if (p) { __atomic_fetch_sub(&ta_live, 1, __ATOMIC_RELAXED); free(p); }
}
#define RESBM_MALLOC(sz, u) ta_malloc(sz, u)
#define RESBM_FREE(p, u) ta_free(p, u)
#define RESBM_IMPLEMENTATION
#include "../resbm.h" /* second include: the implementation */

#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include "harness.h"
#ifndef RESBM_NO_THREADS
#include "delayed.h" /* the async rule, for the pipeline tests */
#endif
#include "ref.h"

static const char *filter;

/* ---- helpers ---------------------------------------------------------------------------------- */
static float *rand_floats(size_t n, float scale, uint64_t seed) {
    resbm_rng r;
    size_t i;
    float *x = (float *)malloc(n * sizeof(float) + 1);
    resbm_rng_seed(&r, seed, 7);
    for (i = 0; i < n; i++) x[i] = scale * (2.0f * resbm_rng_uniform(&r) - 1.0f);
    return x;
}

static double *to_double(const float *x, size_t n) {
    size_t i;
    double *y = (double *)malloc(n * sizeof(double) + 1);
    for (i = 0; i < n; i++) y[i] = x[i];
    return y;
}

typedef double (*loss_fn)(void *ctx);

/* Central differences of f with respect to x[idx] for `samples` indices spread over [0, n)
   (all of them when n <= samples), compared with the analytic gradient an. The error is
   normalised by the largest analytic value in the whole tensor. Prints the name, the max abs
   difference and the first mismatches; NaN fails. Returns 1 on pass. */
static int fd_check(const char *name, loss_fn f, void *ctx, double *x, const float *an, size_t n,
                    size_t samples, double tol) {
    size_t s, cnt = n < samples ? n : samples, shown = 0;
    double maxan = 0, maxdiff = 0;
    int ok = 1;
    for (s = 0; s < n; s++) maxan = fabs(an[s]) > maxan ? fabs(an[s]) : maxan;
    for (s = 0; s < cnt; s++) {
        size_t i = cnt == n ? s : (s * 7919u + 13u) % n;
        double keep = x[i], h = 1e-6 * (fabs(keep) > 1 ? fabs(keep) : 1), fp, fm, fd, diff;
        x[i] = keep + h; fp = f(ctx);
        x[i] = keep - h; fm = f(ctx);
        x[i] = keep;
        fd = (fp - fm) / (2 * h);
        diff = fabs(fd - (double)an[i]);
        if (!(diff <= tol * maxan + 1e-8)) {
            ok = 0;
            if (shown++ < 3)
                printf("    %s[%zu]: analytic %.9g, finite difference %.9g\n", name, i, an[i], fd);
        }
        if (diff > maxdiff || diff != diff) maxdiff = diff;
    }
    if (!ok || !(maxan == maxan))
        printf("    %s: max abs diff %.3g (max |grad| %.3g, tol %.1g relative)\n", name, maxdiff,
               maxan, tol);
    return ok && maxan == maxan;
}

/* max |a - b| <= tol * max |b| over n values (NaN fails) */
static int near_all(const char *name, const float *a, const double *b, size_t n, double tol) {
    size_t i;
    double mx = 0, md = 0;
    for (i = 0; i < n; i++) mx = fabs(b[i]) > mx ? fabs(b[i]) : mx;
    for (i = 0; i < n; i++) {
        double diff = fabs((double)a[i] - b[i]);
        if (!(diff <= tol * mx + 1e-12)) {
            printf("    %s[%zu]: %.9g vs reference %.9g\n", name, i, a[i], b[i]);
            return 0;
        }
        md = diff > md ? diff : md;
    }
    return 1;
}

/* ---- basics ----------------------------------------------------------------------------------- */
static void test_strerror(void) {
    int codes[] = {RESBM_OK, RESBM_EINVAL, RESBM_ESTATE, RESBM_ERANGE, RESBM_ENONFINITE,
                   RESBM_ENOSPACE, RESBM_ENOTSUP, RESBM_ENOMEM, RESBM_EOVERFLOW, RESBM_ETHREAD, RESBM_EIO, RESBM_EFORMAT,
                   RESBM_ETRUNC, RESBM_EMAGIC, RESBM_EVERSION, RESBM_EKIND, RESBM_EDTYPE, RESBM_ESTAGE,
                   RESBM_ESTEP, RESBM_EMICRO, RESBM_ESHAPE, RESBM_ESIZE, RESBM_ECRC, RESBM_ETIMEDOUT,
                   RESBM_ECLOSED, RESBM_ETRANSPORT, RESBM_EMSGSIZE, RESBM_EPEER, RESBM_EJOB, RESBM_EHOST};
    size_t i, j, n = sizeof(codes) / sizeof(codes[0]), named = 0;
    const char *unknown = resbm_strerror(-9999);
    int k;
    for (i = 0; i < n; i++) {
        CHECK(resbm_strerror(codes[i]) && strlen(resbm_strerror(codes[i])) > 5, "code %d", codes[i]);
        CHECK(strcmp(resbm_strerror(codes[i]), unknown) != 0, "code %d has no text", codes[i]);
        for (j = 0; j < i; j++)
            CHECK(strcmp(resbm_strerror(codes[i]), resbm_strerror(codes[j])) != 0, "%d %d", codes[i], codes[j]);
    }
    for (k = -200; k <= 200; k++) named += strcmp(resbm_strerror(k), unknown) != 0;
    CHECK(named == n, "%zu codes have a text, %zu are listed here", named, n);
}

/* Every file a test writes lives in this process's own directory (made in main), so two runs
   side by side never share a path. */
static char tmp_dir[64];
static const char *tmp_path(const char *name) {
    static char bufs[8][128];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof(bufs[0]), "%s/%s", tmp_dir, name);
    return b;
}

static void test_sizes(void) {
    size_t out = 123;
    CHECK_RC(resbm_size_mul(&out, 3, 5), RESBM_OK);
    CHECK(out == 15, "%zu", out);
    out = 7;
    CHECK_RC(resbm_size_mul(&out, (size_t)-1 / 2 + 1, 2), RESBM_EOVERFLOW);
    CHECK(out == 7, "out changed on failure: %zu", out);
    CHECK_RC(resbm_size_add(&out, (size_t)-1, 1), RESBM_EOVERFLOW);
    CHECK_RC(resbm_size_add(&out, (size_t)-2, 1), RESBM_OK);
    CHECK(out == (size_t)-1, "%zu", out);
    CHECK_RC(resbm_size_mul(NULL, 1, 1), RESBM_EINVAL);
}

static void test_rng(void) {
    /* The PCG32 reference sequence for seed 42, stream 54 (pcg32-demo). */
    static const uint32_t want[6] = {0xa15c02b7u, 0x7b47f409u, 0xba1d3330u,
                                     0x83d2f293u, 0xbfa4784bu, 0xcbed606eu};
    resbm_rng r, r2;
    int i;
    double s = 0, s2 = 0;
    resbm_rng_seed(&r, 42, 54);
    for (i = 0; i < 6; i++) {
        uint32_t got = resbm_rng_u32(&r);
        CHECK(got == want[i], "draw %d: 0x%08x, expected 0x%08x", i, got, want[i]);
    }
    resbm_rng_seed(&r, 1, 2);
    resbm_rng_seed(&r2, 1, 2);
    for (i = 0; i < 100000; i++) {
        float z = resbm_rng_normal(&r);
        CHECK(z == resbm_rng_normal(&r2), "stream not reproducible at %d", i);
        s += z; s2 += (double)z * z;
        if (th_fail_now) break;
    }
    CHECK_NEAR(s / 100000, 0.0, 0.02);
    CHECK_NEAR(s2 / 100000, 1.0, 0.02);
    for (i = 0; i < 1000; i++) {
        float u = resbm_rng_uniform(&r);
        CHECK(u >= 0.0f && u < 1.0f, "uniform %g", u);
    }
}

static void test_arena(void) {
    resbm_arena a;
    float *x, *y;
    unsigned char *raw;
    memset(&a, 0, sizeof(a));
    CHECK(resbm_arena_push(&a, 10, 4) == NULL, "sizing pass returns NULL");
    resbm_arena_push(&a, 3, 8);
    CHECK(a.used == 64 + 24, "used %zu", a.used);
    raw = (unsigned char *)malloc(a.used + 64);
    a.base = raw + ((64 - ((uintptr_t)raw & 63)) & 63); /* aligned for the test */
    a.cap = a.used;
    a.used = 0;
    x = (float *)resbm_arena_push(&a, 10, 4);
    y = (float *)resbm_arena_push(&a, 3, 8);
    CHECK(x && y && ((uintptr_t)y & 63) == 0 && (unsigned char *)y - (unsigned char *)x == 64, "carve");
    CHECK(resbm_arena_push(&a, 1, 1) == NULL && a.overflow, "past cap must fail");
    free(raw);
    memset(&a, 0, sizeof(a));
    resbm_arena_push(&a, (size_t)-1 / 2, 4);
    CHECK(a.overflow, "overflow flagged");
}

typedef struct { int *hits; } pool_ctx;
static void pool_task(void *ctx, size_t task, int thread) {
    (void)thread;
    __atomic_fetch_add(&((pool_ctx *)ctx)->hits[task], 1, __ATOMIC_RELAXED);
}

static void test_pool(void) {
    int nt, run, i, hits[97];
    pool_ctx c;
    c.hits = hits;
    for (nt = 1; nt <= 4; nt++) {
        resbm_pool *p = NULL;
        CHECK_RC(resbm_pool_init(nt, &p), RESBM_OK);
        if (!p) continue;
#ifdef RESBM_NO_THREADS
        CHECK(resbm_pool_threads(p) == 1, "threads %d without threads", resbm_pool_threads(p));
#else
        CHECK(resbm_pool_threads(p) == nt, "threads %d", resbm_pool_threads(p));
#endif
        for (run = 0; run < 2000; run++) {
            size_t n = (size_t)(run % 97) + 1;
            memset(hits, 0, sizeof(hits));
            CHECK_RC(resbm_pool_run(p, pool_task, &c, n), RESBM_OK);
            for (i = 0; i < 97; i++)
                CHECK(hits[i] == ((size_t)i < n ? 1 : 0), "threads %d run %d task %d ran %d times", nt, run, i, hits[i]);
            if (th_fail_now) break;
        }
        resbm_pool_free(p);
    }
    CHECK_RC(resbm_pool_init(0, NULL), RESBM_EINVAL);
    {
        resbm_pool *p = (resbm_pool *)&c;
        CHECK_RC(resbm_pool_init(0, &p), RESBM_EINVAL);
        CHECK(p == (resbm_pool *)&c, "out touched on failure");
    }
    CHECK_RC(resbm_pool_run(NULL, NULL, NULL, 3), RESBM_EINVAL);
}

/* ---- GEMM ------------------------------------------------------------------------------------- */
static void test_gemm_shapes(void) {
    static const size_t dims[] = {1, 3, 17, 63, 257};
    resbm_pool *p1, *p2;
    size_t a, b, c;
    int form, acc, bad = 0;
    resbm_pool_init(1, &p1);
    resbm_pool_init(2, &p2);
    for (a = 0; a < 5; a++)
        for (b = 0; b < 5; b++)
            for (c = 0; c < 5; c++)
                for (form = 0; form < 3; form++)
                    for (acc = 0; acc < 2; acc++) {
                        size_t M = dims[a], N = dims[b], K = dims[c], i;
                        float *A = rand_floats(M * K, 1.0f, 1 + a), *B = rand_floats(N * K, 1.0f, 2 + b);
                        float *C0 = rand_floats(M * N, 1.0f, 3 + c);
                        float *C1 = (float *)malloc(M * N * 4), *C2 = (float *)malloc(M * N * 4);
                        float *R = (float *)malloc(M * N * 4), *Aa = (float *)malloc(M * K * 4);
                        float *Ba = (float *)malloc(N * K * 4), *Ra = (float *)malloc(M * N * 4);
                        memcpy(C1, C0, M * N * 4); memcpy(C2, C0, M * N * 4); memcpy(R, C0, M * N * 4);
                        for (i = 0; i < M * K; i++) Aa[i] = fabsf(A[i]);
                        for (i = 0; i < N * K; i++) Ba[i] = fabsf(B[i]);
                        for (i = 0; i < M * N; i++) Ra[i] = fabsf(C0[i]);
                        CHECK_RC(resbm_gemm(p1, form, acc, C1, A, B, M, N, K), RESBM_OK);
                        CHECK_RC(resbm_gemm(p2, form, acc, C2, A, B, M, N, K), RESBM_OK);
                        resbm_gemm_ref(form, acc, R, A, B, M, N, K);
                        resbm_gemm_ref(form, acc, Ra, Aa, Ba, M, N, K); /* sum |a||b| bounds the error */
                        for (i = 0; i < M * N && bad < 5; i++) {
                            double tol = 2.0 * (double)(K + 1) * FLT_EPSILON * Ra[i];
                            if (!(fabs((double)C1[i] - R[i]) <= tol)) {
                                printf("    form %d acc %d M %zu N %zu K %zu [%zu]: %.9g vs %.9g\n",
                                       form, acc, M, N, K, i, C1[i], R[i]);
                                bad++;
                            }
                        }
                        if (memcmp(C1, C2, M * N * 4)) {
                            printf("    form %d M %zu N %zu K %zu: 1 and 2 threads differ\n", form, M, N, K);
                            bad++;
                        }
                        free(A); free(B); free(C0); free(C1); free(C2); free(R); free(Aa); free(Ba); free(Ra);
                    }
    CHECK(bad == 0, "%d mismatches", bad);
    resbm_pool_free(p1);
    resbm_pool_free(p2);
}

#ifndef RESBM_USE_CBLAS
/* Muon's symmetric products (X X^T, then S S of that symmetric S), half computed and mirrored:
   the same bits as the full product, for sizes around every tile edge and past KC. */
static void test_gemm_symmetric(void) {
    static const size_t ns[] = {1, 5, 6, 7, 16, 17, 97, 128, 129, 256, 300};
    static const size_t ks[] = {1, 6, 64, 257, 688};
    float *pack = (float *)malloc(RESBM__PACK_FLOATS * sizeof(float));
    size_t a, b, i, j;
    int bad = 0, asym = 0;
    for (a = 0; a < sizeof(ns) / sizeof(ns[0]); a++)
        for (b = 0; b < sizeof(ks) / sizeof(ks[0]); b++) {
            size_t n = ns[a], K = ks[b];
            float *X = rand_floats(n * K, 1.0f, 7 + a + 11 * b);
            float *S0 = (float *)malloc(n * n * 4), *S1 = (float *)malloc(n * n * 4);
            float *Q0 = (float *)malloc(n * n * 4), *Q1 = (float *)malloc(n * n * 4);
            for (i = 0; i < n * n; i++) S1[i] = Q1[i] = NAN; /* every element must be written */
            resbm__gemm_serial(RESBM_GEMM_NT, S0, X, X, n, n, K, pack);
            resbm__gemm_sym_serial(RESBM_GEMM_NT, S1, X, X, n, K, pack);
            resbm__gemm_serial(RESBM_GEMM_NN, Q0, S0, S0, n, n, n, pack);
            resbm__gemm_sym_serial(RESBM_GEMM_NN, Q1, S0, S0, n, n, pack);
            if (memcmp(S0, S1, n * n * 4) || memcmp(Q0, Q1, n * n * 4)) {
                printf("    n %zu K %zu: the half product differs from the full one\n", n, K);
                bad++;
            }
            for (i = 0; i < n; i++)
                for (j = 0; j < i; j++) asym += memcmp(&S0[i * n + j], &S0[j * n + i], 4) != 0;
            free(X); free(S0); free(S1); free(Q0); free(Q1);
        }
    CHECK(bad == 0, "%d shapes differ", bad);
    CHECK(asym == 0, "the full X X^T is not bitwise symmetric in %d places", asym);
    free(pack);
}
#endif

/* The shapes of a real step, against the reference, and bit-identical for 1, 2 and 3 threads. */
static void test_gemm_large_threads(void) {
    size_t M = 512, N = 688, K = 256, i;
    int form, nt;
    for (form = 0; form < 3; form++) {
        float *A = rand_floats(M * K > N * K ? M * K : N * K, 1.0f, 11);
        float *B = rand_floats(N * K > M * K ? N * K : M * K, 1.0f, 12);
        float *C[3], *R = (float *)malloc(M * N * 4);
        for (nt = 1; nt <= 3; nt++) {
            resbm_pool *p;
            resbm_pool_init(nt, &p);
            C[nt - 1] = (float *)malloc(M * N * 4);
            CHECK_RC(resbm_gemm(p, form, 0, C[nt - 1], A, B, M, N, K), RESBM_OK);
            resbm_pool_free(p);
        }
        resbm_gemm_ref(form, 0, R, A, B, M, N, K);
        for (i = 0; i < M * N; i++)
            if (!(fabs(C[0][i] - R[i]) <= 1e-4 * sqrt((double)K))) {
                printf("    form %d [%zu]: %g vs %g\n", form, i, C[0][i], R[i]);
                th_fail_now = 1;
                break;
            }
        CHECK(!memcmp(C[0], C[1], M * N * 4) && !memcmp(C[0], C[2], M * N * 4), "form %d: thread counts differ", form);
        free(A); free(B); free(R); free(C[0]); free(C[1]); free(C[2]);
    }
}

static void test_gemm_args(void) {
    resbm_pool *p;
    float a[4] = {1, 2, 3, 4}, c[4] = {9, 9, 9, 9};
    resbm_pool_init(1, &p);
    CHECK_RC(resbm_gemm(p, 3, 0, c, a, a, 2, 2, 2), RESBM_EINVAL);
    CHECK_RC(resbm_gemm(p, 0, 2, c, a, a, 2, 2, 2), RESBM_EINVAL);
    CHECK_RC(resbm_gemm(p, 0, 0, NULL, a, a, 2, 2, 2), RESBM_EINVAL);
    CHECK_RC(resbm_gemm(p, 0, 0, c, NULL, a, 2, 2, 2), RESBM_EINVAL);
    CHECK_RC(resbm_gemm(p, 0, 0, c, a, NULL, 2, 2, 2), RESBM_EINVAL);
    CHECK_RC(resbm_gemm(p, 0, 0, c, a, a, 0, 2, 2), RESBM_EINVAL);
    CHECK_RC(resbm_gemm(NULL, 0, 0, c, a, NULL, 2, 2, 2), RESBM_EINVAL);
    CHECK_RC(resbm_gemm(p, 0, 0, c, a, a, (size_t)1 << 40, (size_t)1 << 40, 2), RESBM_EOVERFLOW);
    CHECK(c[0] == 9 && c[3] == 9, "C touched on failure");
    { /* the pool is optional everywhere: without one, the calling thread computes the same bits */
        float c1[4], c2[4];
        CHECK_RC(resbm_gemm(p, RESBM_GEMM_NT, 0, c1, a, a, 2, 2, 2), RESBM_OK);
        CHECK_RC(resbm_gemm(NULL, RESBM_GEMM_NT, 0, c2, a, a, 2, 2, 2), RESBM_OK);
        CHECK(!memcmp(c1, c2, sizeof(c1)) && c1[0] == 5.0f && c1[3] == 25.0f, "gemm without a pool");
    }
    /* K = 0: C = 0, or unchanged when accumulating */
    CHECK_RC(resbm_gemm(p, 0, 1, c, a, a, 2, 2, 0), RESBM_OK);
    CHECK(c[0] == 9, "accumulate with K=0 must leave C");
    CHECK_RC(resbm_gemm(p, 0, 0, c, a, a, 2, 2, 0), RESBM_OK);
    CHECK(c[0] == 0 && c[3] == 0, "K=0 overwrite gives 0");
    resbm_pool_free(p);
}

/* ---- layer gradient checks -------------------------------------------------------------------- */
enum { LN = 12, LT = 6, LD = 16, LH = 2, LF = 24, LV = 11 };

typedef struct { double *x, *g, *w, *out; size_t N, d; } norm_ctx;
static double norm_loss(void *c) {
    norm_ctx *k = (norm_ctx *)c;
    size_t i;
    double s = 0;
    ref_rmsnorm(k->out, k->x, k->g, k->N, k->d);
    for (i = 0; i < k->N * k->d; i++) s += k->w[i] * k->out[i];
    return s;
}

static void test_grad_rmsnorm(void) {
    size_t N = LN, d = LD, i;
    float *x = rand_floats(N * d, 2.0f, 1), *g = rand_floats(d, 1.0f, 2), *w = rand_floats(N * d, 1.0f, 3);
    float *out = (float *)malloc(N * d * 4), rstd[LN], *dx = rand_floats(N * d, 1.0f, 4), *dg = rand_floats(d, 1.0f, 5);
    float *dx0 = (float *)malloc(N * d * 4), dg0[LD];
    norm_ctx c;
    memcpy(dx0, dx, N * d * 4); memcpy(dg0, dg, d * 4);
    c.x = to_double(x, N * d); c.g = to_double(g, d); c.w = to_double(w, N * d);
    c.out = (double *)malloc(N * d * 8); c.N = N; c.d = d;
    CHECK_RC(resbm_rmsnorm_forward(NULL, out, rstd, x, g, N, d), RESBM_OK);
    norm_loss(&c);
    CHECK(near_all("rmsnorm out", out, c.out, N * d, 1e-6), "forward");
    CHECK_RC(resbm_rmsnorm_backward(NULL, dx, dg, w, x, g, rstd, N, d), RESBM_OK);
    for (i = 0; i < N * d; i++) dx[i] -= dx0[i]; /* backward accumulates: subtract what was there */
    for (i = 0; i < d; i++) dg[i] -= dg0[i];
    CHECK(fd_check("rmsnorm dx", norm_loss, &c, c.x, dx, N * d, 400, 1e-4), "dx");
    CHECK(fd_check("rmsnorm dg", norm_loss, &c, c.g, dg, d, 400, 1e-4), "dg");
    free(x); free(g); free(w); free(out); free(dx); free(dg); free(dx0);
    free(c.x); free(c.g); free(c.w); free(c.out);
}

typedef struct { double *x, *wt, *w, *out; size_t N, in, o; } lin_ctx;
static double lin_loss(void *c) {
    lin_ctx *k = (lin_ctx *)c;
    size_t i;
    double s = 0;
    ref_linear(k->out, k->x, k->wt, k->N, k->in, k->o);
    for (i = 0; i < k->N * k->o; i++) s += k->w[i] * k->out[i];
    return s;
}

static void test_grad_linear(void) {
    size_t N = 37, in = 19, o = 33;
    float *x = rand_floats(N * in, 1.0f, 1), *wt = rand_floats(o * in, 1.0f, 2), *w = rand_floats(N * o, 1.0f, 3);
    float *out = (float *)malloc(N * o * 4), *dx = (float *)calloc(N * in, 4), *dw = (float *)calloc(o * in, 4);
    resbm_pool *p;
    lin_ctx c;
    resbm_pool_init(2, &p);
    c.x = to_double(x, N * in); c.wt = to_double(wt, o * in); c.w = to_double(w, N * o);
    c.out = (double *)malloc(N * o * 8); c.N = N; c.in = in; c.o = o;
    CHECK_RC(resbm_linear_forward(p, out, x, wt, N, in, o), RESBM_OK);
    lin_loss(&c);
    CHECK(near_all("linear out", out, c.out, N * o, 1e-6), "forward");
    CHECK_RC(resbm_linear_backward(p, dx, dw, w, x, wt, N, in, o, 0), RESBM_OK);
    CHECK(fd_check("linear dx", lin_loss, &c, c.x, dx, N * in, 300, 1e-5), "dx");
    CHECK(fd_check("linear dw", lin_loss, &c, c.wt, dw, o * in, 300, 1e-5), "dw");
    resbm_pool_free(p);
    free(x); free(wt); free(w); free(out); free(dx); free(dw); free(c.x); free(c.wt); free(c.w); free(c.out);
}

typedef struct { double *x, *w, *tmp; size_t N, T, d, H; } rope_ctx;
static double rope_loss(void *c) {
    rope_ctx *k = (rope_ctx *)c;
    size_t i;
    double s = 0;
    memcpy(k->tmp, k->x, k->N * k->d * 8);
    ref_rope(k->tmp, k->N, k->T, k->d, k->H);
    for (i = 0; i < k->N * k->d; i++) s += k->w[i] * k->tmp[i];
    return s;
}

static void test_grad_rope(void) {
    size_t N = LN, T = LT, d = LD, H = LH, hd = d / H;
    float *x = rand_floats(N * d, 1.0f, 1), *w = rand_floats(N * d, 1.0f, 2);
    float cs[LT * LD / LH / 2], sn[LT * LD / LH / 2];
    rope_ctx c;
    CHECK_RC(resbm_rope_tables(cs, sn, T, hd, 10000.0), RESBM_OK);
    c.x = to_double(x, N * d); c.w = to_double(w, N * d); c.tmp = (double *)malloc(N * d * 8);
    c.N = N; c.T = T; c.d = d; c.H = H;
    CHECK_RC(resbm_rope_forward(NULL, x, cs, sn, N, T, d, H), RESBM_OK);
    rope_loss(&c);
    CHECK(near_all("rope out", x, c.tmp, N * d, 1e-6), "forward");
    CHECK_RC(resbm_rope_backward(NULL, w, cs, sn, N, T, d, H), RESBM_OK); /* w becomes dx */
    CHECK(fd_check("rope dx", rope_loss, &c, c.x, w, N * d, 400, 1e-5), "dx");
    CHECK_RC(resbm_rope_forward(NULL, x, cs, sn, 7, T, d, H), RESBM_EINVAL); /* N % T != 0 */
    free(x); free(w); free(c.x); free(c.w); free(c.tmp);
}

typedef struct { double *q, *k, *v, *w, *out; size_t N, T, d, H; } attn_ctx;
static double attn_loss(void *c) {
    attn_ctx *a = (attn_ctx *)c;
    size_t i;
    double s = 0;
    ref_attention(a->out, a->q, a->k, a->v, a->N, a->T, a->d, a->H);
    for (i = 0; i < a->N * a->d; i++) s += a->w[i] * a->out[i];
    return s;
}

/* Forward against the double reference and every gradient against finite differences, on both
   attention paths: plain (no scratch reserved) and blocked. */
static void grad_attention_case(size_t N, size_t T, size_t d, size_t H, int blocked, size_t samples) {
    size_t n = N * d;
    float *q = rand_floats(n, 2.0f, 1), *k = rand_floats(n, 2.0f, 2), *v = rand_floats(n, 1.0f, 3);
    float *w = rand_floats(n, 1.0f, 4), *out = (float *)malloc(n * 4), *lse = (float *)malloc(N * H * 4);
    float *dq = (float *)calloc(n, 4), *dk = (float *)calloc(n, 4), *dv = (float *)calloc(n, 4);
    resbm_pool *p;
    attn_ctx c;
    resbm_pool_init(2, &p);
    if (blocked) CHECK_RC(resbm_pool_reserve(p, RESBM_ATTENTION_WORK(T)), RESBM_OK);
    c.q = to_double(q, n); c.k = to_double(k, n); c.v = to_double(v, n); c.w = to_double(w, n);
    c.out = (double *)malloc(n * 8); c.N = N; c.T = T; c.d = d; c.H = H;
    CHECK_RC(resbm_attention_forward(p, out, lse, q, k, v, N, T, d, H), RESBM_OK);
    attn_loss(&c);
    CHECK(near_all("attention out", out, c.out, n, 1e-5), "forward, blocked %d", blocked);
    CHECK_RC(resbm_attention_backward(p, dq, dk, dv, w, q, k, v, out, lse, N, T, d, H), RESBM_OK);
    CHECK(fd_check("attention dq", attn_loss, &c, c.q, dq, n, samples, 1e-4), "dq, blocked %d", blocked);
    CHECK(fd_check("attention dk", attn_loss, &c, c.k, dk, n, samples, 1e-4), "dk, blocked %d", blocked);
    CHECK(fd_check("attention dv", attn_loss, &c, c.v, dv, n, samples, 1e-4), "dv, blocked %d", blocked);
    CHECK_RC(resbm_attention_forward(p, out, lse, q, k, v, N, T, d, 3), RESBM_EINVAL);
    resbm_pool_free(p);
    free(q); free(k); free(v); free(w); free(out); free(lse); free(dq); free(dk); free(dv);
    free(c.q); free(c.k); free(c.v); free(c.w); free(c.out);
}

static void test_grad_attention(void) {
    grad_attention_case(LN, LT, LD, LH, 0, 400);
    grad_attention_case(LN, LT, LD, LH, 1, 400);
    /* T = 150: three query blocks, the last one short; head width 10 is not a SIMD multiple */
    grad_attention_case(300, 150, 20, 2, 1, 120);
}

/* The blocked path equals the plain one to float rounding, and is bit-identical across thread
   counts. */
static void test_attention_paths(void) {
    size_t N = 2 * 200, T = 200, d = 96, H = 3, n = N * d, i;
    float *q = rand_floats(n, 2.0f, 5), *k = rand_floats(n, 2.0f, 6), *v = rand_floats(n, 1.0f, 7);
    float *dout = rand_floats(n, 1.0f, 8), *o[3], *l[3], *g[3][3];
    int path, t;
    for (path = 0; path < 3; path++) { /* 0 plain, 1 blocked 1 thread, 2 blocked 3 threads */
        resbm_pool *p;
        resbm_pool_init(path == 2 ? 3 : 1, &p);
        if (path) resbm_pool_reserve(p, RESBM_ATTENTION_WORK(T));
        o[path] = (float *)malloc(n * 4); l[path] = (float *)malloc(N * H * 4);
        for (t = 0; t < 3; t++) g[path][t] = (float *)calloc(n, 4);
        CHECK_RC(resbm_attention_forward(p, o[path], l[path], q, k, v, N, T, d, H), RESBM_OK);
        CHECK_RC(resbm_attention_backward(p, g[path][0], g[path][1], g[path][2], dout, q, k, v,
                                          o[path], l[path], N, T, d, H), RESBM_OK);
        resbm_pool_free(p);
    }
    for (i = 0; i < n; i++) {
        CHECK_NEAR(o[1][i], o[0][i], 1e-5);
        for (t = 0; t < 3; t++) CHECK_NEAR(g[1][t][i], g[0][t][i], 2e-4 * (1 + fabs(g[0][t][i])));
        if (th_fail_now) break;
    }
    for (i = 0; i < N * H; i++) CHECK_NEAR(l[1][i], l[0][i], 1e-5);
    CHECK(!memcmp(o[1], o[2], n * 4) && !memcmp(l[1], l[2], N * H * 4), "forward differs by threads");
    for (t = 0; t < 3; t++) CHECK(!memcmp(g[1][t], g[2][t], n * 4), "gradient %d differs by threads", t);
    for (path = 0; path < 3; path++) {
        free(o[path]); free(l[path]);
        for (t = 0; t < 3; t++) free(g[path][t]);
    }
    free(q); free(k); free(v); free(dout);
}

typedef struct { double *h1, *h3, *w; size_t n; } glu_ctx;
static double glu_loss(void *c) {
    glu_ctx *g = (glu_ctx *)c;
    size_t i;
    double s = 0;
    for (i = 0; i < g->n; i++) s += g->w[i] * ref_silu(g->h1[i]) * g->h3[i];
    return s;
}

static void test_grad_swiglu(void) {
    size_t n = 300, i;
    float *h1 = rand_floats(n, 4.0f, 1), *h3 = rand_floats(n, 2.0f, 2), *w = rand_floats(n, 1.0f, 3);
    float *out = (float *)malloc(n * 4), *d1 = (float *)calloc(n, 4), *d3 = (float *)calloc(n, 4);
    double *ref = (double *)malloc(n * 8);
    glu_ctx c;
    c.h1 = to_double(h1, n); c.h3 = to_double(h3, n); c.w = to_double(w, n); c.n = n;
    CHECK_RC(resbm_swiglu_forward(NULL, out, h1, h3, n), RESBM_OK);
    for (i = 0; i < n; i++) ref[i] = ref_silu(c.h1[i]) * c.h3[i];
    CHECK(near_all("swiglu out", out, ref, n, 1e-6), "forward");
    CHECK_RC(resbm_swiglu_backward(NULL, d1, d3, w, h1, h3, n), RESBM_OK);
    CHECK(fd_check("swiglu dh1", glu_loss, &c, c.h1, d1, n, 300, 1e-5), "dh1");
    CHECK(fd_check("swiglu dh3", glu_loss, &c, c.h3, d3, n, 300, 1e-5), "dh3");
    free(h1); free(h3); free(w); free(out); free(d1); free(d3); free(ref); free(c.h1); free(c.h3); free(c.w);
}

typedef struct { double *emb, *w; const int32_t *tok; size_t N, d; } emb_ctx;
static double emb_loss(void *c) {
    emb_ctx *e = (emb_ctx *)c;
    size_t n, i;
    double s = 0;
    for (n = 0; n < e->N; n++)
        for (i = 0; i < e->d; i++) s += e->w[n * e->d + i] * e->emb[(size_t)e->tok[n] * e->d + i];
    return s;
}

static void test_grad_embedding(void) {
    size_t N = LN, d = LD, V = LV, i;
    int32_t tok[LN], bad[LN];
    float *emb = rand_floats(V * d, 1.0f, 1), *w = rand_floats(N * d, 1.0f, 2);
    float *out = (float *)malloc(N * d * 4), *de = (float *)calloc(V * d, 4);
    emb_ctx c;
    for (i = 0; i < N; i++) { tok[i] = (int32_t)((i * 5) % 7); bad[i] = tok[i]; }
    bad[5] = (int32_t)V;
    CHECK_RC(resbm_embedding_forward(out, tok, emb, N, d, V), RESBM_OK);
    CHECK(out[3 * d + 2] == emb[(size_t)tok[3] * d + 2], "gather");
    out[0] = 42.0f;
    CHECK_RC(resbm_embedding_forward(out, bad, emb, N, d, V), RESBM_ERANGE);
    CHECK(out[0] == 42.0f, "output touched on a bad token");
    bad[5] = -1;
    CHECK_RC(resbm_embedding_backward(de, w, bad, N, d, V), RESBM_ERANGE);
    CHECK_RC(resbm_embedding_backward(de, w, tok, N, d, V), RESBM_OK);
    c.emb = to_double(emb, V * d); c.w = to_double(w, N * d); c.tok = tok; c.N = N; c.d = d;
    CHECK(fd_check("embedding demb", emb_loss, &c, c.emb, de, V * d, 400, 1e-6), "demb");
    free(emb); free(w); free(out); free(de); free(c.emb); free(c.w);
}

typedef struct { double *l; const int32_t *tg; size_t N, V; } xent_ctx;
static double xent_loss(void *c) {
    xent_ctx *x = (xent_ctx *)c;
    return ref_xent(x->l, x->tg, x->N, x->V);
}

static void test_grad_xent(void) {
    size_t N = LN, V = LV, i;
    int32_t tg[LN];
    float *l = rand_floats(N * V, 5.0f, 1), *p = (float *)malloc(N * V * 4), losses[LN];
    float *dl = (float *)malloc(N * V * 4);
    double mean = 0;
    xent_ctx c;
    for (i = 0; i < N; i++) tg[i] = (int32_t)((i * 3) % V);
    c.l = to_double(l, N * V); c.tg = tg; c.N = N; c.V = V;
    CHECK_RC(resbm_xent_forward(NULL, p, losses, l, tg, N, V), RESBM_OK);
    for (i = 0; i < N; i++) mean += losses[i];
    CHECK_NEAR(mean / N, xent_loss(&c), 1e-6);
    CHECK_RC(resbm_xent_backward(NULL, dl, p, tg, N, V, 1.0f / (float)N), RESBM_OK);
    CHECK(fd_check("xent dlogits", xent_loss, &c, c.l, dl, N * V, 400, 1e-5), "dlogits");
    /* in place: probs may alias logits */
    CHECK_RC(resbm_xent_forward(NULL, l, losses, l, tg, N, V), RESBM_OK);
    CHECK(!memcmp(l, p, N * V * 4), "aliased result differs");
    tg[2] = -3;
    CHECK_RC(resbm_xent_forward(NULL, p, losses, l, tg, N, V), RESBM_ERANGE);
    free(l); free(p); free(dl); free(c.l);
}

/* ---- the whole model -------------------------------------------------------------------------- */
static resbm_model_config tiny_config(void) {
    resbm_model_config c = resbm_model_config_default();
    c.vocab = 23; c.d = 16; c.layers = 2; c.heads = 2; c.ff = 24; c.seq = 8; c.batch = 3;
    c.init_std = 0.2f; /* larger than the default so every path carries signal */
    return c;
}

/* A copy of every parameter's values, and the first parameter that no longer matches it (NULL
   when none): how a test proves a failed call changed nothing. */
static float *params_snapshot(const resbm_model *m) {
    size_t np, i, off = 0;
    const resbm_param *ps = resbm_model_params(m, &np);
    float *snap = (float *)malloc(resbm_model_num_floats(m) * sizeof(float) + 1);
    for (i = 0; snap && i < np; off += ps[i].value.ne[0] * ps[i].value.ne[1], i++)
        memcpy(snap + off, ps[i].value.data, ps[i].value.ne[0] * ps[i].value.ne[1] * sizeof(float));
    return snap;
}
static const char *params_changed(const resbm_model *m, const float *snap) {
    size_t np, i, off = 0;
    const resbm_param *ps = resbm_model_params(m, &np);
    for (i = 0; i < np; off += ps[i].value.ne[0] * ps[i].value.ne[1], i++)
        if (!snap || memcmp(snap + off, ps[i].value.data, ps[i].value.ne[0] * ps[i].value.ne[1] * sizeof(float)))
            return ps[i].name;
    return NULL;
}

static void tiny_batch(int32_t *tok, int32_t *tg, size_t n, int V, uint64_t seed) {
    resbm_rng r;
    size_t i;
    resbm_rng_seed(&r, seed, 3);
    for (i = 0; i < n; i++) { tok[i] = (int32_t)(resbm_rng_u32(&r) % (uint32_t)V); tg[i] = (int32_t)(resbm_rng_u32(&r) % (uint32_t)V); }
}


static void rand_fill(float *x, size_t n, float scale, uint64_t seed) {
    resbm_rng r;
    size_t i;
    resbm_rng_seed(&r, seed, 11);
    for (i = 0; i < n; i++) x[i] = resbm_rng_normal(&r) * scale;
}

/* A kernel refuses outputs that share memory with its inputs (each would silently compute from
   values it had already overwritten) and sizes whose bytes overflow, and leaves every buffer as
   it was; elementwise kernels still run exactly in place, with the bits of the out-of-place call. */
static void test_kernels_refuse_overlap(void) {
    enum { N = 8, D = 300, O = 5 };
    float *x = (float *)calloc(N * D, 4), *w = (float *)calloc(O * D, 4), *dout = (float *)calloc(N * D, 4);
    float *dx = (float *)calloc(N * D, 4), *dw = (float *)calloc(O * D, 4), *y = (float *)calloc(N * D, 4);
    float *snap = (float *)calloc(N * D, 4), g[D], rstd[N], q[4 * 8], lse[4];
    int32_t tok[N] = {0};
    int i;
    rand_fill(x, N * D, 1.0f, 1); rand_fill(w, O * D, 1.0f, 2); rand_fill(dout, N * D, 1.0f, 3);
    rand_fill(g, D, 1.0f, 4); rand_fill(q, 32, 1.0f, 5);
    memcpy(snap, x, N * D * 4);
    CHECK_RC(resbm_gemm(NULL, RESBM_GEMM_NT, 0, x, x, w, N, O, D), RESBM_EINVAL);
    CHECK_RC(resbm_gemm_ref(RESBM_GEMM_NT, 0, x + 3, x, w, N, O, D), RESBM_EINVAL);
    CHECK_RC(resbm_linear_forward(NULL, x, x, w, N, D, O), RESBM_EINVAL);
    CHECK(!memcmp(snap, x, N * D * 4), "a refused call wrote its input");
    /* backward: dx over dout (its dw would read the dx just written), dx over x, dw over x */
    memcpy(dx, dout, N * D * 4);
    CHECK_RC(resbm_linear_backward(NULL, dout, dw, dout, x, w, N, D, O, 0), RESBM_EINVAL);
    CHECK_RC(resbm_linear_backward(NULL, x, dw, dout, x, w, N, D, O, 0), RESBM_EINVAL);
    CHECK_RC(resbm_linear_backward(NULL, dx, x + D, dout, x, w, N, D, O, 0), RESBM_EINVAL);
    CHECK(!memcmp(snap, x, N * D * 4) && !memcmp(dx, dout, N * D * 4), "a refused backward wrote");
    for (i = 0; i < O * D; i++) CHECK(dw[i] == 0.0f, "dw[%d] written by a refused call", i);
    CHECK_RC(resbm_rmsnorm_forward(NULL, x + 1, rstd, x, g, N, D), RESBM_EINVAL); /* shifted */
    CHECK_RC(resbm_rmsnorm_forward(NULL, y, (float *)x, x, g, N, D), RESBM_EINVAL);
    CHECK_RC(resbm_attention_forward(NULL, q, lse, q, q + 8, q + 16, 4, 4, 2, 1), RESBM_EINVAL);
    CHECK_RC(resbm_embedding_forward(x, tok, x + D, N, D, 1), RESBM_EINVAL);
    CHECK_RC(resbm_embedding_forward(x, tok, w, 1, (size_t)-1 / 4 + 2, 1), RESBM_EOVERFLOW);
    CHECK_RC(resbm_embedding_backward(w, x, tok, 1, (size_t)-1 / 4 + 2, 1), RESBM_EOVERFLOW);
    CHECK_RC(resbm_xent_backward(NULL, y, x, tok, N, 4, NAN), RESBM_EINVAL);
    CHECK_RC(resbm_xent_forward(NULL, y, y, x, tok, N, 1), RESBM_EINVAL); /* two outputs */
    CHECK_RC(resbm_rope_tables(y, y, 4, 8, 10000.0), RESBM_EINVAL);
    CHECK(!memcmp(snap, x, N * D * 4), "a refused call wrote its input");
    /* exactly in place stays allowed where the kernel is elementwise, and gives the same bits */
    CHECK_RC(resbm_rmsnorm_forward(NULL, y, rstd, x, g, N, D), RESBM_OK);
    CHECK_RC(resbm_rmsnorm_forward(NULL, x, rstd, x, g, N, D), RESBM_OK);
    CHECK(!memcmp(x, y, N * D * 4), "rmsnorm in place differs");
    memcpy(x, snap, N * D * 4);
    CHECK_RC(resbm_swiglu_forward(NULL, y, x, dout, N * D), RESBM_OK);
    CHECK_RC(resbm_swiglu_forward(NULL, x, x, dout, N * D), RESBM_OK);
    CHECK(!memcmp(x, y, N * D * 4), "swiglu in place differs");
    free(x); free(w); free(dout); free(dx); free(dw); free(y); free(snap);
}

/* Without a pool, a backward of several GEMMs used to allocate before each: running out of memory
   at the second left dx or the first weight gradient accumulated. Now every failing allocation
   leaves every gradient as it was. */
static void test_backward_enomem_untouched(void) {
    enum { N = 6, D = 20, O = 7 };
    float x[N * D], w[O * D], dout[N * O], dx[N * D], dw[O * D], dx0[N * D], dw0[O * D];
    long n;
    int rc = -1;
    rand_fill(x, N * D, 1.0f, 1); rand_fill(w, O * D, 1.0f, 2); rand_fill(dout, N * O, 1.0f, 3);
    rand_fill(dx0, N * D, 1.0f, 4); rand_fill(dw0, O * D, 1.0f, 5);
    for (n = 0; n < 8 && rc; n++) {
        memcpy(dx, dx0, sizeof(dx)); memcpy(dw, dw0, sizeof(dw));
        ta_calls = 0; ta_live = 0; ta_fail_at = n;
        rc = resbm_linear_backward(NULL, dx, dw, dout, x, w, N, D, O, 1);
        CHECK(rc == RESBM_OK || rc == RESBM_ENOMEM, "rc %d", rc);
        if (rc) CHECK(!memcmp(dx, dx0, sizeof(dx)) && !memcmp(dw, dw0, sizeof(dw)), "failing allocation %ld left a gradient changed", n);
        CHECK(ta_live == 0, "leaked %ld", ta_live);
    }
    ta_fail_at = -1;
    CHECK_RC(rc, RESBM_OK);
    CHECK(memcmp(dw, dw0, sizeof(dw)) != 0, "the successful call did nothing");
}

/* A squared norm that is NaN, negative or infinite (a float total of finite gradients can be)
   has no clip multiplier: NaN, which every update refuses, never 0 (a silent step of weight decay
   alone) or 1 (no clipping). */
static void test_clip_scale_refuses_bad_totals(void) {
    resbm_opt_config o = resbm_opt_config_default();
    resbm_model_config c = tiny_config();
    resbm_model *m = NULL;
    float s, *snap;
    CHECK(resbm_clip_scale(&o, NAN) != resbm_clip_scale(&o, NAN), "NaN total gives a number");
    CHECK(resbm_clip_scale(&o, -1.0) != resbm_clip_scale(&o, -1.0), "negative total gives a number");
    CHECK(resbm_clip_scale(&o, HUGE_VAL) != resbm_clip_scale(&o, HUGE_VAL), "infinite total gives a number");
    s = resbm_clip_scale(&o, 8.8e41); /* past FLT_MAX: fine as the double it is */
    CHECK(s > 0.0f && s < 1e-19f, "scale %g", (double)s);
    CHECK_NEAR(resbm_clip_scale(&o, 4.0), 0.5, 1e-6);
    CHECK_RC(resbm_model_init(&c, &o, &m), RESBM_OK);
    if (!m) return;
    snap = params_snapshot(m);
    CHECK_RC(resbm_model_update(m, resbm_clip_scale(&o, HUGE_VAL)), RESBM_EINVAL);
    CHECK(!params_changed(m, snap) && resbm_model_step_count(m) == 0, "a refused update changed the model");
    /* the schedule's multiplier is NaN for a schedule init refuses, and has no overflow */
    o.warmup = -1; o.total_steps = 2147483647;
    CHECK(resbm_lr_factor(&o, 5) != resbm_lr_factor(&o, 5), "negative warm-up gives a number");
    o = resbm_opt_config_default(); o.min_lr_frac = NAN;
    CHECK(resbm_lr_factor(&o, 5) != resbm_lr_factor(&o, 5), "NaN floor gives a number");
    o.min_lr_frac = -5.0f;
    CHECK(resbm_lr_factor(&o, 5000) != resbm_lr_factor(&o, 5000), "negative floor gives a number");
    o = resbm_opt_config_default(); o.warmup = 0; o.total_steps = 2147483647;
    s = resbm_lr_factor(&o, 9223372036854775807L);
    CHECK(s >= 0.1f && s <= 1.0f, "factor %g", (double)s);
    free(snap);
    resbm_model_free(m);
}

/* Loading checks every model's optimizer against the file's, not the first one's: Muon's momentum
   must never be filled with AdamW's first moment. */
static void test_checkpoint_optimizer_of_every_model(void) {
    resbm_model_config c = tiny_config();
    resbm_opt_config adam = resbm_opt_config_default(), muon = resbm_opt_config_default();
    resbm_model *m[2] = {NULL, NULL}, *mixed[2] = {NULL, NULL};
    const char *path = tmp_path("resbm_test_mixed_opt.safetensors");
    char why[256];
    float *snap;
    size_t np, i;
    const resbm_param *ps;
    float *mom = NULL, *mom0 = NULL;
    int s;
    c.stages = 2; muon.kind = RESBM_OPT_MUON;
    for (s = 0; s < 2; s++) {
        c.stage = s;
        CHECK_RC(resbm_model_init(&c, &adam, &m[s]), RESBM_OK);
        CHECK_RC(resbm_model_init(&c, s ? &muon : &adam, &mixed[s]), RESBM_OK);
    }
    if (!m[0] || !m[1] || !mixed[0] || !mixed[1]) return;
    CHECK_RC(resbm_checkpoint_save(path, m, 2, NULL, 0), RESBM_OK);
    snap = params_snapshot(mixed[1]);
    ps = resbm_model_params(mixed[1], &np);
    for (i = 0; i < np && !mom; i++)
        if (ps[i].kind == RESBM_PARAM_HIDDEN && ps[i].m) {
            mom = ps[i].m;
            mom0 = (float *)malloc(ps[i].value.ne[0] * ps[i].value.ne[1] * 4);
            memcpy(mom0, mom, ps[i].value.ne[0] * ps[i].value.ne[1] * 4);
            np = i; /* remember which */
        }
    CHECK(mom != NULL, "no Muon momentum found");
    CHECK_RC(resbm_checkpoint_load(path, mixed, 2, why, sizeof(why)), RESBM_EFORMAT);
    CHECK(strstr(why, "muon") != NULL, "why: %s", why);
    CHECK(!params_changed(mixed[1], snap), "a refused load changed %s", params_changed(mixed[1], snap));
    if (mom) CHECK(!memcmp(mom, mom0, ps[np].value.ne[0] * ps[np].value.ne[1] * 4), "a refused load changed the momentum");
    free(snap); free(mom0);
    for (s = 0; s < 2; s++) { resbm_model_free(m[s]); resbm_model_free(mixed[s]); }
    remove(path);
}

/* Sizes that wrap: a parameter total past 2^64 floats, and a metadata count whose pointer array
   wraps, are refused as overflow before anything is allocated or read. */
static void test_sizes_that_wrap(void) {
    resbm_model_config c = resbm_model_config_default();
    resbm_model *m = NULL;
    const char *kv[2] = {"k", "v"};
    c.d = 1 << 24; c.heads = 1 << 15; c.ff = 1; c.layers = 1 << 14; c.seq = 1; c.batch = 1;
    CHECK_RC(resbm_model_init(&c, NULL, &m), RESBM_EOVERFLOW);
    CHECK(m == NULL, "model set on failure");
    c = tiny_config();
    CHECK_RC(resbm_model_init(&c, NULL, &m), RESBM_OK);
    if (!m) return;
    CHECK_RC(resbm_checkpoint_save(tmp_path("resbm_test_wrap.safetensors"), &m, 1, kv, (size_t)1 << 61), RESBM_EOVERFLOW);
    resbm_model_free(m);
    remove(tmp_path("resbm_test_wrap.safetensors"));
}

/* resbm_stage_slots refuses every config resbm_stage_init refuses (but needs no transport). */
static void test_stage_slots_validates(void) {
    resbm_stage_config c = resbm_stage_config_default();
    int slots = 0, k;
    c.model = tiny_config(); c.model.stages = 2;
    CHECK_RC(resbm_stage_slots(&c, &slots), RESBM_OK);
    CHECK(slots >= 1, "slots %d", slots);
    for (k = 0; k < 5; k++) {
        resbm_stage_config b = c;
        resbm_stage *st = NULL;
        if (k == 0) b.schedule = 7;
        if (k == 1) b.model.heads = 3;
        if (k == 2) b.model.d = -5;
        if (k == 3) b.n_micro = 2000000000;
        if (k == 4) b.opt.lr = -1.0f;
        CHECK_RC(resbm_stage_slots(&b, &slots), RESBM_EINVAL);
        CHECK_RC(resbm_stage_init(&b, &st), RESBM_EINVAL);
    }
    CHECK_RC(resbm_stage_slots(&c, NULL), RESBM_EINVAL);
}

/* ---- the bottleneck --------------------------------------------------------------------------- */
enum { BN = 10, BD = 24, BR = 3, BM = 7 };

typedef struct { double *h, *norm, *w1, *w2, *w, *z; int identity; } enc_ctx;
static double enc_loss(void *c) {
    enc_ctx *e = (enc_ctx *)c;
    size_t i;
    double s = 0;
    ref_encoder(e->z, e->h, e->norm, e->w1, e->w2, BN, BD, BR, BM, e->identity);
    for (i = 0; i < BN * BR; i++) s += e->w[i] * e->z[i];
    return s;
}

typedef struct { double *z, *w1, *w2, *w, *x; int identity; } dec_ctx;
static double dec_loss(void *c) {
    dec_ctx *e = (dec_ctx *)c;
    size_t i;
    double s = 0;
    ref_decoder(e->x, e->z, e->w1, e->w2, BN, BD, BR, BM, e->identity);
    for (i = 0; i < BN * BD; i++) s += e->w[i] * e->x[i];
    return s;
}

static void test_grad_bottleneck(void) {
    int identity;
    resbm_pool *p;
    resbm_pool_init(2, &p);
    for (identity = 0; identity <= 1; identity++) {
        float *h = rand_floats(BN * BD, 2.0f, 1), *norm = rand_floats(BD, 1.0f, 2);
        float *w1 = rand_floats(BM * BD, 0.5f, 3), *w2 = rand_floats(BR * BM, 0.5f, 4);
        float *v1 = rand_floats(BM * BR, 0.5f, 5), *v2 = rand_floats(BD * BM, 0.5f, 6);
        float *wz = rand_floats(BN * BR, 1.0f, 7), *wx = rand_floats(BN * BD, 1.0f, 8);
        float z[BN * BR], x[BN * BD], rstd[BN], u[BN * BD], a[BN * BM], s[BN * BM], ds[BN * BM];
        float du[BN * BD], dh[BN * BD], dn[BD], dw1[BM * BD], dw2[BR * BM], dz[BN * BR];
        float dv1[BM * BR], dv2[BD * BM], a2[BN * BM];
        double zr[BN * BR], xr[BN * BD];
        enc_ctx e;
        dec_ctx c;
        memset(dh, 0, sizeof(dh)); memset(dn, 0, sizeof(dn)); memset(dw1, 0, sizeof(dw1));
        memset(dw2, 0, sizeof(dw2)); memset(dv1, 0, sizeof(dv1)); memset(dv2, 0, sizeof(dv2));
        e.h = to_double(h, BN * BD); e.norm = to_double(norm, BD); e.w1 = to_double(w1, BM * BD);
        e.w2 = to_double(w2, BR * BM); e.w = to_double(wz, BN * BR); e.z = zr; e.identity = identity;
        resbm_bottleneck_shape sh = {BN, BD, BR, BM, 0}, bad;
        resbm_encoder_weights ew = {norm, w1, w2};
        resbm_encoder_grads eg = {dn, dw1, dw2};
        resbm_encoder_saved es = {rstd, u, a};
        resbm_decoder_weights dw = {v1, v2};
        resbm_decoder_grads dg = {dv1, dv2};
        resbm_decoder_saved dsv = {a2};
        resbm_bottleneck_scratch scr = {s, ds, du};
        sh.identity = identity;
        CHECK_RC(resbm_encoder_forward(p, &sh, &ew, &es, &scr, h, z), RESBM_OK);
        enc_loss(&e);
        CHECK(near_all("encoder z", z, zr, BN * BR, 1e-6), "identity %d", identity);
        CHECK_RC(resbm_encoder_backward(p, &sh, &ew, &eg, &es, &scr, h, wz, dh), RESBM_OK);
        CHECK(fd_check("encoder dh", enc_loss, &e, e.h, dh, BN * BD, 400, 1e-5), "identity %d", identity);
        CHECK(fd_check("encoder dnorm", enc_loss, &e, e.norm, dn, BD, 400, 1e-5), "identity %d", identity);
        CHECK(fd_check("encoder dw1", enc_loss, &e, e.w1, dw1, BM * BD, 400, 1e-5), "identity %d", identity);
        CHECK(fd_check("encoder dw2", enc_loss, &e, e.w2, dw2, BR * BM, 400, 1e-5), "identity %d", identity);
        c.z = to_double(z, BN * BR); c.w1 = to_double(v1, BM * BR); c.w2 = to_double(v2, BD * BM);
        c.w = to_double(wx, BN * BD); c.x = xr; c.identity = identity;
        CHECK_RC(resbm_decoder_forward(p, &sh, &dw, &dsv, &scr, z, x), RESBM_OK);
        dec_loss(&c);
        CHECK(near_all("decoder x", x, xr, BN * BD, 1e-6), "identity %d", identity);
        CHECK_RC(resbm_decoder_backward(p, &sh, &dw, &dg, &dsv, &scr, z, wx, dz), RESBM_OK);
        CHECK(fd_check("decoder dz", dec_loss, &c, c.z, dz, BN * BR, 400, 1e-5), "identity %d", identity);
        CHECK(fd_check("decoder dw1", dec_loss, &c, c.w1, dv1, BM * BR, 400, 1e-5), "identity %d", identity);
        CHECK(fd_check("decoder dw2", dec_loss, &c, c.w2, dv2, BD * BM, 400, 1e-5), "identity %d", identity);
        bad = sh; bad.r = BD + 1;
        CHECK_RC(resbm_encoder_forward(p, &bad, &ew, &es, &scr, h, z), RESBM_EINVAL);
        bad = sh; bad.identity = 2;
        CHECK_RC(resbm_decoder_forward(p, &bad, &dw, &dsv, &scr, z, x), RESBM_EINVAL);
        bad = sh; bad.tokens = 0;
        CHECK_RC(resbm_decoder_backward(p, &bad, &dw, &dg, &dsv, &scr, z, wx, dz), RESBM_EINVAL);
        CHECK_RC(resbm_encoder_backward(p, &sh, &ew, NULL, &es, &scr, h, wz, dh), RESBM_EINVAL);
        { /* no pool: the same bits on the calling thread */
            float z2[BN * BR], x2[BN * BD];
            CHECK_RC(resbm_encoder_forward(NULL, &sh, &ew, &es, &scr, h, z2), RESBM_OK);
            CHECK(!memcmp(z, z2, sizeof(z2)), "encoder without a pool differs");
            CHECK_RC(resbm_decoder_forward(NULL, &sh, &dw, &dsv, &scr, z, x2), RESBM_OK);
            CHECK(!memcmp(x, x2, sizeof(x2)), "decoder without a pool differs");
        }
        free(h); free(norm); free(w1); free(w2); free(v1); free(v2); free(wz); free(wx);
        free(e.h); free(e.norm); free(e.w1); free(e.w2); free(e.w); free(c.z); free(c.w1); free(c.w2); free(c.w);
    }
    resbm_pool_free(p);
}

/* An untrained boundary (zero output projections) is exactly the rank-r identity: the first r
   channels pass, the rest are zero. Without the identity path the projections start random. */
static void test_bottleneck_init_identity(void) {
    resbm_model_config c = tiny_config();
    resbm_model *s0, *s1;
    size_t N = 3 * (size_t)c.seq, d = (size_t)c.d, i, n, np;
    int32_t tok[64], tg[64];
    float *z, *x, loss;
    const resbm_param *ps;
    c.stages = 2; c.r = 4; c.m = 8;
    c.stage = 0; CHECK_RC(resbm_model_init(&c, NULL, &s0), RESBM_OK);
    c.stage = 1; CHECK_RC(resbm_model_init(&c, NULL, &s1), RESBM_OK);
    if (th_fail_now) return;
    ps = resbm_model_params(s0, &np);
    CHECK(!strcmp(ps[np - 3].name, "bottleneck.0.enc_norm") && !strcmp(ps[np - 1].name, "bottleneck.0.enc_w2"), "%s", ps[np - 1].name);
    CHECK(ps[np - 2].value.ne[0] == 8 && ps[np - 2].value.ne[1] == d && ps[np - 1].value.ne[0] == 4, "shapes");
    for (i = 0; i < 4 * 8; i++) CHECK(ps[np - 1].value.data[i] == 0.0f, "enc_w2 not zero");
    ps = resbm_model_params(s1, &np);
    CHECK(!strcmp(ps[0].name, "bottleneck.0.dec_w1") && !strcmp(ps[1].name, "bottleneck.0.dec_w2"), "%s", ps[0].name);
    CHECK(ps[0].value.ne[0] == 8 && ps[0].value.ne[1] == 4 && ps[1].value.ne[0] == d && ps[1].value.ne[1] == 8, "dec shapes");
    tiny_batch(tok, tg, N, c.vocab, 2);
    z = (float *)malloc(N * 4 * 4); x = (float *)malloc(N * d * 4);
    CHECK_RC(resbm_model_forward(s0, 0, tok, NULL, NULL, 3, z, NULL), RESBM_OK);
    CHECK_RC(resbm_model_forward(s1, 0, NULL, z, tg, 3, NULL, &loss), RESBM_OK);
    {
        /* stage 1's decoded input: its first block input, x[0] in slot 0 */
        resbm__acts *sl = &s1->slots[0];
        const float *h = s0->slots[0].x + (size_t)s0->nblocks * N * d;
        for (n = 0; n < N; n++)
            for (i = 0; i < d; i++) {
                float want = i < 4 ? h[n * d + i] : 0.0f;
                if (sl->x[n * d + i] != want) { CHECK(0, "x[%zu,%zu] = %g, want %g", n, i, sl->x[n * d + i], want); n = N; break; }
            }
    }
    resbm_model_free(s0); resbm_model_free(s1);
    c.no_identity = 1;
    c.stage = 1; CHECK_RC(resbm_model_init(&c, NULL, &s1), RESBM_OK);
    if (th_fail_now) { free(z); free(x); return; }
    ps = resbm_model_params(s1, &np);
    CHECK(ps[1].value.data[0] != 0.0f && ps[1].value.data[5] != 0.0f, "ablation dec_w2 must start random");
    resbm_model_free(s1);
    free(z); free(x);
}

typedef struct { double **w; const int32_t *tok, *tg; size_t N, T, d, H, f, V, L; } model_ctx;
static double model_loss(void *c) {
    model_ctx *m = (model_ctx *)c;
    return ref_model_loss(m->w, m->tok, m->tg, m->N, m->T, m->d, m->H, m->f, m->V, m->L);
}

static void test_grad_model(void) {
    resbm_model_config cfg = tiny_config();
    resbm_model *m;
    const resbm_param *ps;
    size_t np, i, N = (size_t)cfg.batch * (size_t)cfg.seq;
    int32_t tok[64], tg[64];
    float loss;
    model_ctx c;
    CHECK_RC(resbm_model_init(&cfg, NULL, &m), RESBM_OK);
    if (th_fail_now) return;
    ps = resbm_model_params(m, &np);
    CHECK(np == 1 + 9 * 2 + 2, "params %zu", np);
    tiny_batch(tok, tg, N, cfg.vocab, 5);
    resbm_model_zero_grad(m);
    CHECK_RC(resbm_model_forward(m, 0, tok, NULL, tg, (size_t)cfg.batch, NULL, &loss), RESBM_OK);
    CHECK_RC(resbm_model_backward(m, 0, NULL, NULL, 1.0f), RESBM_OK);
    c.w = (double **)malloc(np * sizeof(double *));
    for (i = 0; i < np; i++) c.w[i] = to_double(ps[i].value.data, ps[i].value.ne[0] * ps[i].value.ne[1]);
    c.tok = tok; c.tg = tg; c.N = N; c.T = (size_t)cfg.seq; c.d = (size_t)cfg.d; c.H = (size_t)cfg.heads;
    c.f = (size_t)cfg.ff; c.V = (size_t)cfg.vocab; c.L = (size_t)cfg.layers;
    CHECK_NEAR(loss, model_loss(&c), 1e-5);
    for (i = 0; i < np; i++)
        CHECK(fd_check(ps[i].name, model_loss, &c, c.w[i], ps[i].grad.data,
                       ps[i].value.ne[0] * ps[i].value.ne[1], 12, 3e-4), "%s", ps[i].name);
    for (i = 0; i < np; i++) free(c.w[i]);
    free(c.w);
    resbm_model_free(m);
}

static void test_model_names_init(void) {
    resbm_model_config cfg = resbm_model_config_default();
    resbm_model *m;
    const resbm_param *ps;
    size_t np, i, j;
    static const char *want[] = {"tok_emb", "blocks.0.attn_norm", "blocks.0.wq", "blocks.0.wk",
                                 "blocks.0.wv", "blocks.0.wo", "blocks.0.mlp_norm", "blocks.0.w1",
                                 "blocks.0.w2", "blocks.0.w3"};
    cfg.layers = 2; cfg.batch = 1;
    CHECK_RC(resbm_model_init(&cfg, NULL, &m), RESBM_OK);
    if (th_fail_now) return;
    ps = resbm_model_params(m, &np);
    CHECK(resbm_model_get_config(m)->ff == 688, "default ff %d", resbm_model_get_config(m)->ff);
    for (i = 0; i < 10; i++) CHECK(!strcmp(ps[i].name, want[i]), "%s vs %s", ps[i].name, want[i]);
    CHECK(!strcmp(ps[np - 2].name, "final_norm") && !strcmp(ps[np - 1].name, "lm_head"), "tail");
    CHECK(ps[7].value.ne[0] == 688 && ps[7].value.ne[1] == 256, "w1 shape");
    CHECK(ps[8].value.ne[0] == 256 && ps[8].value.ne[1] == 688, "w2 shape");
    for (i = 0; i < np; i++) {
        size_t n = ps[i].value.ne[0] * ps[i].value.ne[1];
        double s2 = 0, want_std;
        if (ps[i].kind == RESBM_PARAM_NORM) {
            for (j = 0; j < n; j++) CHECK(ps[i].value.data[j] == 1.0f, "%s not ones", ps[i].name);
            continue;
        }
        for (j = 0; j < n; j++) s2 += (double)ps[i].value.data[j] * ps[i].value.data[j];
        want_std = strstr(ps[i].name, ".wo") || strstr(ps[i].name, ".w2") ? 0.02 / sqrt(4.0) : 0.02;
        CHECK(fabs(sqrt(s2 / n) / want_std - 1) < 0.05, "%s std %g want %g", ps[i].name, sqrt(s2 / n), want_std);
    }
    resbm_model_free(m);
}

/* Splitting into stages changes nothing: each stage's parameters equal the same-named ones of the
   whole model, and chaining the stages' forward and backward gives bit-identical loss and grads. */
static void test_model_stage_split(void) {
    resbm_model_config cfg = tiny_config();
    resbm_model *whole, *st[3];
    const resbm_param *pw, *ps;
    size_t nw, ns, i, j, N = (size_t)cfg.batch * (size_t)cfg.seq, d = (size_t)cfg.d;
    int32_t tok[64], tg[64];
    float lw, ls, *h0 = (float *)malloc(N * d * 4), *h1 = (float *)malloc(N * d * 4);
    float *g0 = (float *)malloc(N * d * 4), *g1 = (float *)malloc(N * d * 4);
    int s, found;
    cfg.layers = 5;
    tiny_batch(tok, tg, N, cfg.vocab, 9);
    CHECK_RC(resbm_model_init(&cfg, NULL, &whole), RESBM_OK);
    cfg.stages = 3;
    for (s = 0; s < 3; s++) { cfg.stage = s; CHECK_RC(resbm_model_init(&cfg, NULL, &st[s]), RESBM_OK); }
    if (th_fail_now) return;
    resbm_model_params(st[0], &ns); CHECK(ns == 1 + 18, "stage 0 holds 2 blocks + embedding: %zu", ns);
    resbm_model_params(st[1], &ns); CHECK(ns == 18, "stage 1 holds 2 blocks: %zu", ns);
    resbm_model_params(st[2], &ns); CHECK(ns == 9 + 2, "stage 2 holds 1 block + head: %zu", ns);
    resbm_model_zero_grad(whole);
    CHECK_RC(resbm_model_forward(whole, 0, tok, NULL, tg, 3, NULL, &lw), RESBM_OK);
    CHECK_RC(resbm_model_backward(whole, 0, NULL, NULL, 1.0f), RESBM_OK);
    for (s = 0; s < 3; s++) resbm_model_zero_grad(st[s]);
    CHECK_RC(resbm_model_forward(st[0], 0, tok, NULL, NULL, 3, h0, NULL), RESBM_OK);
    CHECK_RC(resbm_model_forward(st[1], 0, NULL, h0, NULL, 3, h1, NULL), RESBM_OK);
    CHECK_RC(resbm_model_forward(st[2], 0, NULL, h1, tg, 3, NULL, &ls), RESBM_OK);
    CHECK_RC(resbm_model_backward(st[2], 0, NULL, g1, 1.0f), RESBM_OK);
    CHECK_RC(resbm_model_backward(st[1], 0, g1, g0, 1.0f), RESBM_OK);
    CHECK_RC(resbm_model_backward(st[0], 0, g0, NULL, 1.0f), RESBM_OK);
    CHECK(lw == ls, "loss %.9g vs %.9g", lw, ls);
    pw = resbm_model_params(whole, &nw);
    found = 0;
    for (s = 0; s < 3; s++) {
        ps = resbm_model_params(st[s], &ns);
        for (i = 0; i < ns; i++)
            for (j = 0; j < nw; j++)
                if (!strcmp(ps[i].name, pw[j].name)) {
                    size_t n = pw[j].value.ne[0] * pw[j].value.ne[1];
                    found++;
                    CHECK(!memcmp(ps[i].value.data, pw[j].value.data, n * 4), "%s values", ps[i].name);
                    CHECK(!memcmp(ps[i].grad.data, pw[j].grad.data, n * 4), "%s grads", ps[i].name);
                }
    }
    CHECK((size_t)found == nw, "matched %d of %zu", found, nw);
    for (s = 0; s < 3; s++) resbm_model_free(st[s]);
    resbm_model_free(whole);
    free(h0); free(h1); free(g0); free(g1);
}

/* Same seed and data with 1, 2 and 3 kernel threads: bit-identical parameters after 3 steps. */
#ifdef RESBM__BF16
/* bf16 rounding to nearest even, for finite values (what the hardware does for them). */
static float bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}
#endif

/* The opt-in bf16 GEMM: where the build has it, every form and edge shape (odd K, partial
   micro-tiles, more than one K, M and N block) equals the exact sum of the bf16-rounded products
   to f32 summation error, is not the f32 result (it does round), is bit-identical for 1, 2 and 3
   threads, and propagates a NaN; without it, the pool refuses and stays f32. */
static void test_gemm_bf16(void) {
    resbm_pool *p[3];
    int nt;
    for (nt = 0; nt < 3; nt++) CHECK_RC(resbm_pool_init(nt + 1, &p[nt]), RESBM_OK);
    if (th_fail_now) return;
    CHECK_RC(resbm_pool_set_precision(NULL, RESBM_PRECISION_BF16), RESBM_EINVAL);
    CHECK_RC(resbm_pool_set_precision(p[0], 2), RESBM_EINVAL);
    CHECK(resbm_pool_precision(p[0]) == RESBM_PRECISION_F32 && resbm_pool_precision(NULL) == RESBM_PRECISION_F32,
          "the default precision is f32");
#ifndef RESBM__BF16
    CHECK_RC(resbm_pool_set_precision(p[0], RESBM_PRECISION_BF16), RESBM_ENOTSUP);
    CHECK(resbm_pool_precision(p[0]) == RESBM_PRECISION_F32, "a refused precision changed the pool");
    CHECK(strstr(resbm_strerror(RESBM_ENOTSUP), "bf16") != NULL, "strerror: %s", resbm_strerror(RESBM_ENOTSUP));
    {
        resbm_model_config cfg = tiny_config();
        resbm_model *m = NULL;
        cfg.gemm_bf16 = 1;
        CHECK_RC(resbm_model_init(&cfg, NULL, &m), RESBM_ENOTSUP);
        CHECK(m == NULL, "a refused model was returned");
        cfg.pool = p[0];
        CHECK_RC(resbm_model_init(&cfg, NULL, &m), RESBM_ENOTSUP);
        CHECK(m == NULL && resbm_pool_precision(p[0]) == RESBM_PRECISION_F32, "a refused model changed the pool");
    }
#else
    static const size_t shapes[][3] = {{1, 1, 1}, {8, 32, 2}, {13, 45, 37}, {7, 300, 513},
                                       {300, 33, 688}, {257, 70, 1}, {64, 256, 256}};
    int form, acc;
    size_t si, i, k;
    CHECK(!strncmp(resbm_pool_kernel(p[0]), "f32 ", 4) && !strncmp(resbm_pool_kernel(NULL), "f32 ", 4),
          "an f32 pool's kernel: %s", resbm_pool_kernel(p[0]));
    for (nt = 0; nt < 3; nt++) CHECK_RC(resbm_pool_set_precision(p[nt], RESBM_PRECISION_BF16), RESBM_OK);
    for (nt = 0; nt < 3; nt++) /* AMX where the build has it and the OS grants it, the same for every pool */
        CHECK(!strcmp(resbm_pool_kernel(p[nt]), "bf16 amx") || !strcmp(resbm_pool_kernel(p[nt]), "bf16 avx512"),
              "a bf16 pool's kernel: %s", resbm_pool_kernel(p[nt]));
    CHECK(!strcmp(resbm_pool_kernel(p[1]), resbm_pool_kernel(p[0])), "pools differ: %s, %s",
          resbm_pool_kernel(p[0]), resbm_pool_kernel(p[1]));
    for (si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++)
        for (form = 0; form < 3; form++)
            for (acc = 0; acc < 2; acc++) {
                size_t M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
                float *A = rand_floats(M * K, 1.0f, 31 + si), *B = rand_floats(N * K, 1.0f, 37 + si);
                float *C0 = rand_floats(M * N, 1.0f, 41 + si), *C[3], *F = (float *)malloc(M * N * 4);
                double worst = 0.0, far = 0.0;
                for (nt = 0; nt < 3; nt++) {
                    C[nt] = (float *)malloc(M * N * 4);
                    memcpy(C[nt], C0, M * N * 4);
                    CHECK_RC(resbm_gemm(p[nt], form, acc, C[nt], A, B, M, N, K), RESBM_OK);
                }
                memcpy(F, C0, M * N * 4);
                CHECK_RC(resbm_gemm(NULL, form, acc, F, A, B, M, N, K), RESBM_OK); /* f32 */
                for (i = 0; i < M; i++) {
                    size_t j;
                    for (j = 0; j < N; j++) {
                        double exact = acc ? C0[i * N + j] : 0.0, mag = fabs(exact), e;
                        for (k = 0; k < K; k++) {
                            float a = form == RESBM_GEMM_TN ? A[k * M + i] : A[i * K + k];
                            float b = form == RESBM_GEMM_NT ? B[j * K + k] : B[k * N + j];
                            double pr = (double)bf16_round(a) * (double)bf16_round(b);
                            exact += pr; mag += fabs(pr);
                        }
                        e = fabs(C[0][i * N + j] - exact) / (mag + 1e-30);
                        worst = e > worst ? e : worst;
                        e = fabs(F[i * N + j] - C[0][i * N + j]) / (mag + 1e-30);
                        far = e > far ? e : far;
                    }
                }
                /* an f32 sum of K + 1 terms errs by at most about K ulps of the magnitude */
                CHECK(worst <= 1.2e-7 * (double)(K + 2), "M %zu N %zu K %zu form %d acc %d: error %.3g of the magnitude",
                      M, N, K, form, acc, worst);
                if (K >= 37) CHECK(far > 1e-4, "M %zu N %zu K %zu form %d: bf16 equals f32 (%.3g): nothing was rounded", M, N, K, form, far);
                CHECK(!memcmp(C[0], C[1], M * N * 4) && !memcmp(C[0], C[2], M * N * 4),
                      "M %zu N %zu K %zu form %d acc %d: thread counts differ", M, N, K, form, acc);
                for (nt = 0; nt < 3; nt++) free(C[nt]);
                free(A); free(B); free(C0); free(F);
            }
    { /* a NaN in A reaches exactly its row of C */
        size_t M = 16, N = 40, K = 20;
        float *A = rand_floats(M * K, 1.0f, 3), *B = rand_floats(N * K, 1.0f, 4), *C = (float *)malloc(M * N * 4);
        int bad = 0;
        A[5 * K + 3] = NAN;
        CHECK_RC(resbm_gemm(p[1], RESBM_GEMM_NT, 0, C, A, B, M, N, K), RESBM_OK);
        for (i = 0; i < M * N; i++) bad += (i / N == 5) != (C[i] != C[i]);
        CHECK(bad == 0, "%d elements wrong about the NaN", bad);
        free(A); free(B); free(C);
    }
    CHECK_RC(resbm_pool_set_precision(p[0], RESBM_PRECISION_F32), RESBM_OK);
    CHECK(resbm_pool_precision(p[0]) == RESBM_PRECISION_F32, "back to f32");
#endif
    for (nt = 0; nt < 3; nt++) resbm_pool_free(p[nt]);
}

#ifdef RESBM__BF16
/* A model with bf16 GEMMs: loss and gradients close to the f32 model's (bf16 keeps about 3
   digits per operand), bit-identical across thread counts, and it trains. */
static void test_model_bf16(void) {
    resbm_model_config cfg = tiny_config();
    resbm_model *m[3];
    int32_t tok[64], tg[64];
    size_t np, i, N = 3 * (size_t)cfg.seq;
    float loss[3];
    int t, step;
    double dot = 0.0, n0 = 0.0, n1 = 0.0;
    cfg.d = 64; cfg.heads = 2; cfg.ff = 80; cfg.batch = 3; cfg.vocab = 40; cfg.init_std = 0.05f;
    for (t = 0; t < 3; t++) {
        cfg.threads = t == 2 ? 2 : 1;
        cfg.gemm_bf16 = t > 0;
        CHECK_RC(resbm_model_init(&cfg, NULL, &m[t]), RESBM_OK);
    }
    if (th_fail_now) return;
    CHECK(resbm_pool_precision(NULL) == RESBM_PRECISION_F32, "f32");
    tiny_batch(tok, tg, N, cfg.vocab, 7);
    for (t = 0; t < 3; t++) {
        CHECK_RC(resbm_model_forward(m[t], 0, tok, NULL, tg, 3, NULL, &loss[t]), RESBM_OK);
        CHECK_RC(resbm_model_backward(m[t], 0, NULL, NULL, 1.0f), RESBM_OK);
    }
    CHECK(fabs(loss[1] - loss[0]) < 1e-2 * fabs(loss[0]), "loss f32 %.7g bf16 %.7g", loss[0], loss[1]);
    CHECK(loss[1] == loss[2], "bf16 losses on 1 and 2 threads %.9g %.9g", loss[1], loss[2]);
    {
        const resbm_param *p0 = resbm_model_params(m[0], &np), *p1 = resbm_model_params(m[1], NULL);
        const resbm_param *p2 = resbm_model_params(m[2], NULL);
        for (i = 0; i < np; i++) {
            size_t n = p0[i].value.ne[0] * p0[i].value.ne[1], j;
            CHECK(!memcmp(p1[i].grad.data, p2[i].grad.data, n * 4), "%s: bf16 gradients differ across threads", p0[i].name);
            for (j = 0; j < n; j++) {
                dot += (double)p0[i].grad.data[j] * p1[i].grad.data[j];
                n0 += (double)p0[i].grad.data[j] * p0[i].grad.data[j];
                n1 += (double)p1[i].grad.data[j] * p1[i].grad.data[j];
            }
        }
    }
    CHECK(dot / sqrt(n0 * n1) > 0.999, "gradient cosine bf16 / f32 %.6f", dot / sqrt(n0 * n1));
    { /* a shared pool's precision is its owner's: a model asking for the other one is refused, and
         the pool and the models already on it keep theirs (it used to switch them to bf16) */
        resbm_model_config sc = cfg;
        resbm_model *a = NULL, *b = NULL;
        resbm_pool *sp = NULL;
        float la = 0.0f;
        CHECK_RC(resbm_pool_init(1, &sp), RESBM_OK);
        sc.pool = sp; sc.threads = 1; sc.gemm_bf16 = 0;
        CHECK_RC(resbm_model_init(&sc, NULL, &a), RESBM_OK);
        sc.gemm_bf16 = 1;
        CHECK_RC(resbm_model_init(&sc, NULL, &b), RESBM_EINVAL);
        CHECK(b == NULL && resbm_pool_precision(sp) == RESBM_PRECISION_F32, "a refused model changed the shared pool");
        if (a) {
            CHECK_RC(resbm_model_forward(a, 0, tok, NULL, tg, 3, NULL, &la), RESBM_OK);
            CHECK(la == loss[0], "the f32 model on the shared pool: %.9g, on its own: %.9g", la, loss[0]);
            CHECK_RC(resbm_model_release(a, 0), RESBM_OK);
        }
        resbm_model_free(a);
        CHECK_RC(resbm_pool_set_precision(sp, RESBM_PRECISION_BF16), RESBM_OK);
        sc.gemm_bf16 = 0;
        CHECK_RC(resbm_model_init(&sc, NULL, &b), RESBM_EINVAL);
        sc.gemm_bf16 = 1;
        CHECK_RC(resbm_model_init(&sc, NULL, &b), RESBM_OK);
        if (b) {
            CHECK_RC(resbm_model_forward(b, 0, tok, NULL, tg, 3, NULL, &la), RESBM_OK);
            CHECK(la == loss[1], "the bf16 model on the shared pool: %.9g, on its own: %.9g", la, loss[1]);
        }
        resbm_model_free(b);
        resbm_pool_free(sp);
    }
    for (step = 0; step < 40; step++) CHECK_RC(resbm_model_train_step(m[1], tok, tg, 3, 3, &loss[1]), RESBM_OK);
    CHECK(loss[1] < 0.5f * loss[0], "bf16 training: loss %.4g from %.4g", loss[1], loss[0]);
    for (t = 0; t < 3; t++) resbm_model_free(m[t]);
}
#endif

static void test_model_threads_bitwise(void) {
    resbm_model_config cfg = tiny_config();
    resbm_model *m[3];
    size_t np, i, N = 4 * (size_t)cfg.seq;
    int32_t tok[64], tg[64];
    int t, step;
    float loss[3];
    resbm_opt_config oc = resbm_opt_config_default();
    oc.kind = RESBM_OPT_MUON;
    cfg.d = 64; cfg.heads = 2; cfg.ff = 80; cfg.batch = 4; cfg.vocab = 40;
    for (t = 0; t < 3; t++) {
        cfg.threads = t + 1;
        CHECK_RC(resbm_model_init(&cfg, &oc, &m[t]), RESBM_OK);
    }
    if (th_fail_now) return;
    for (step = 0; step < 3; step++) {
        tiny_batch(tok, tg, N, cfg.vocab, 100 + (uint64_t)step);
        for (t = 0; t < 3; t++) CHECK_RC(resbm_model_train_step(m[t], tok, tg, 4, 2, &loss[t]), RESBM_OK);
        CHECK(loss[0] == loss[1] && loss[0] == loss[2], "step %d losses %.9g %.9g %.9g", step, loss[0], loss[1], loss[2]);
    }
    {
        const resbm_param *p0 = resbm_model_params(m[0], &np), *p1 = resbm_model_params(m[1], NULL);
        const resbm_param *p2 = resbm_model_params(m[2], NULL);
        for (i = 0; i < np; i++) {
            size_t n = p0[i].value.ne[0] * p0[i].value.ne[1];
            CHECK(!memcmp(p0[i].value.data, p1[i].value.data, n * 4) &&
                  !memcmp(p0[i].value.data, p2[i].value.data, n * 4), "%s differs", p0[i].name);
        }
    }
    for (t = 0; t < 3; t++) resbm_model_free(m[t]);
}

static void test_model_learns(void) {
    /* A repeating pattern is learnable: the loss must fall far below chance (ln V). */
    resbm_model_config cfg = tiny_config();
    resbm_opt_config oc = resbm_opt_config_default();
    resbm_model *m;
    int32_t tok[64], tg[64];
    size_t i, N = 3 * (size_t)cfg.seq;
    float loss = 0, first = 0;
    int step;
    cfg.init_std = 0.02f;
    oc.lr = 1e-2f; oc.warmup = 5;
    CHECK_RC(resbm_model_init(&cfg, &oc, &m), RESBM_OK);
    if (th_fail_now) return;
    for (i = 0; i < N; i++) { tok[i] = (int32_t)((i * 7 + i / 5) % 13); }
    for (i = 0; i < N; i++) tg[i] = (int32_t)((tok[i] * 3 + 1) % 23);
    for (step = 0; step < 60; step++) {
        CHECK_RC(resbm_model_train_step(m, tok, tg, 3, 3, &loss), RESBM_OK);
        if (step == 0) first = loss;
    }
    CHECK(fabs(first - log(23.0)) < 0.2, "initial loss %g, chance %g", first, log(23.0));
    CHECK(loss < 0.2, "final loss %g", loss);
    CHECK(resbm_model_step_count(m) == 60, "steps %ld", resbm_model_step_count(m));
    resbm_model_free(m);
}

static void test_model_state_errors(void) {
    resbm_model_config cfg = tiny_config();
    resbm_model *m;
    int32_t tok[64], tg[64];
    float loss = 7.0f, h[16];
    size_t N = 3 * (size_t)cfg.seq;
    CHECK_RC(resbm_model_init(&cfg, NULL, &m), RESBM_OK);
    if (th_fail_now) return;
    tiny_batch(tok, tg, N, cfg.vocab, 1);
    CHECK_RC(resbm_model_backward(m, 0, NULL, NULL, 1.0f), RESBM_ESTATE);
    tg[4] = 23;
    CHECK_RC(resbm_model_forward(m, 0, tok, NULL, tg, 3, NULL, &loss), RESBM_ERANGE);
    CHECK(loss == 7.0f, "loss written on failure");
    tg[4] = 0;
    CHECK_RC(resbm_model_forward(m, 1, tok, NULL, tg, 3, NULL, &loss), RESBM_EINVAL);
    CHECK_RC(resbm_model_forward(m, 0, tok, NULL, tg, 4, NULL, &loss), RESBM_EINVAL);
    CHECK_RC(resbm_model_forward(m, 0, tok, NULL, tg, 0, NULL, &loss), RESBM_EINVAL);
    CHECK_RC(resbm_model_forward(m, 0, NULL, NULL, tg, 3, NULL, &loss), RESBM_EINVAL);
    CHECK_RC(resbm_model_forward(m, 0, tok, NULL, NULL, 3, NULL, &loss), RESBM_EINVAL);
    CHECK_RC(resbm_model_forward(NULL, 0, tok, NULL, tg, 3, NULL, &loss), RESBM_EINVAL);
    CHECK_RC(resbm_model_forward(m, 0, tok, NULL, tg, 3, NULL, &loss), RESBM_OK);
    CHECK_RC(resbm_model_forward(m, 0, tok, NULL, tg, 3, NULL, &loss), RESBM_ESTATE);
    CHECK_RC(resbm_model_train_step(m, tok, tg, 3, 1, &loss), RESBM_ESTATE);
    CHECK_RC(resbm_model_backward(m, 0, NULL, NULL, NAN), RESBM_EINVAL);
    CHECK_RC(resbm_model_backward(m, 0, NULL, NULL, 1.0f), RESBM_OK);
    CHECK_RC(resbm_model_train_step(m, tok, tg, 3, 2, &loss), RESBM_EINVAL); /* 3 % 2 */
    CHECK_RC(resbm_model_train_step(m, tok, tg, 6, 1, &loss), RESBM_EINVAL); /* > batch */
    CHECK_RC(resbm_model_update(m, NAN), RESBM_EINVAL);
    resbm_model_free(m);
    /* a middle stage rejects non-finite input activations */
    cfg.stages = 2; cfg.stage = 1;
    CHECK_RC(resbm_model_init(&cfg, NULL, &m), RESBM_OK);
    if (th_fail_now) return;
    {
        float *x = (float *)calloc(N * (size_t)cfg.d, 4);
        x[17] = NAN;
        CHECK_RC(resbm_model_forward(m, 0, NULL, x, tg, 3, NULL, &loss), RESBM_ENONFINITE);
        CHECK_RC(resbm_model_forward(m, 0, NULL, x, tg, 3, h, NULL), RESBM_EINVAL); /* last stage needs loss */
        free(x);
    }
    resbm_model_free(m);
}

static void test_config_validation(void) {
    resbm_model_config c;
    resbm_opt_config o = resbm_opt_config_default();
    resbm_model *m = (resbm_model *)&c;
    c = resbm_model_config_default(); c.heads = 3;
    CHECK_RC(resbm_model_init(&c, NULL, &m), RESBM_EINVAL);
    CHECK(m == (resbm_model *)&c, "out touched on failure");
    c = resbm_model_config_default(); c.d = 6; c.heads = 2; /* odd head width */
    CHECK_RC(resbm_model_init(&c, NULL, &m), RESBM_EINVAL);
    c = resbm_model_config_default(); c.stage = 1;
    CHECK_RC(resbm_model_init(&c, NULL, &m), RESBM_EINVAL);
    c = resbm_model_config_default(); c.stages = 9; /* more stages than layers */
    CHECK_RC(resbm_model_init(&c, NULL, &m), RESBM_EINVAL);
    c = resbm_model_config_default(); c.vocab = -4;
    CHECK_RC(resbm_model_init(&c, NULL, &m), RESBM_EINVAL);
    c = resbm_model_config_default(); c.seq = 1 << 24; c.batch = 1 << 24; c.d = 1 << 20; c.heads = 1 << 12;
    CHECK_RC(resbm_model_init(&c, NULL, &m), RESBM_EOVERFLOW);
    c = resbm_model_config_default();
    o.lr = -1.0f;
    CHECK_RC(resbm_model_init(&c, &o, &m), RESBM_EINVAL);
    o = resbm_opt_config_default(); o.kind = 7;
    CHECK_RC(resbm_model_init(&c, &o, &m), RESBM_EINVAL);
    o = resbm_opt_config_default(); o.beta2 = 1.0f;
    CHECK_RC(resbm_model_init(&c, &o, &m), RESBM_EINVAL);
    o = resbm_opt_config_default(); o.bottleneck_lr_scale = -2.0f;
    CHECK_RC(resbm_model_init(&c, &o, &m), RESBM_EINVAL);
    /* a schedule shorter than its warm-up would end still warming up, never decaying */
    o = resbm_opt_config_default(); o.warmup = 100; o.total_steps = 50;
    CHECK_RC(resbm_model_init(&c, &o, &m), RESBM_EINVAL);
    CHECK(resbm_lr_factor(&o, 10) != resbm_lr_factor(&o, 10), "a warm-up past the schedule gives a number");
    o.total_steps = 100; /* warm-up only: consistent */
    CHECK_RC(resbm_model_init(&c, &o, &m), RESBM_OK);
    resbm_model_free(m);
    m = (resbm_model *)&c;
    CHECK_RC(resbm_model_init(NULL, NULL, &m), RESBM_EINVAL);
    CHECK_RC(resbm_model_init(&c, NULL, NULL), RESBM_EINVAL);
    CHECK(m == (resbm_model *)&c, "out touched on failure");
}

/* ---- optimizers ------------------------------------------------------------------------------- */
static void test_lr_schedule(void) {
    resbm_opt_config o = resbm_opt_config_default();
    o.warmup = 10; o.total_steps = 110; o.min_lr_frac = 0.1f;
    CHECK_NEAR(resbm_lr_factor(&o, 0), 0.1, 1e-7);
    CHECK_NEAR(resbm_lr_factor(&o, 9), 1.0, 1e-7);
    CHECK_NEAR(resbm_lr_factor(&o, 10), 1.0, 1e-7);
    CHECK_NEAR(resbm_lr_factor(&o, 60), 0.55, 1e-6);
    CHECK_NEAR(resbm_lr_factor(&o, 110), 0.1, 1e-7);
    CHECK_NEAR(resbm_lr_factor(&o, 500), 0.1, 1e-7);
    o.total_steps = 0;
    CHECK_NEAR(resbm_lr_factor(&o, 500), 1.0, 1e-7);
    o.warmup = 0;
    CHECK_NEAR(resbm_lr_factor(&o, 0), 1.0, 1e-7);
}

/* A model with given gradients: sets every gradient from a stream, returns copies of values. */
static double **set_grads(resbm_model *m, uint64_t seed) {
    size_t np, i, j;
    resbm_param *ps = resbm_model_params_mut(m, &np);
    double **w = (double **)malloc(np * sizeof(double *));
    resbm_rng r;
    resbm_rng_seed(&r, seed, 1);
    for (i = 0; i < np; i++) {
        size_t n = ps[i].value.ne[0] * ps[i].value.ne[1];
        for (j = 0; j < n; j++) ps[i].grad.data[j] = resbm_rng_normal(&r) * 0.1f;
        w[i] = to_double(ps[i].value.data, n);
    }
    return w;
}

static void test_adamw_by_hand(void) {
    resbm_model_config cfg = tiny_config();
    resbm_opt_config o = resbm_opt_config_default();
    resbm_model *m;
    resbm_param *ps;
    size_t np, i, j;
    double **mom1, **mom2, **w;
    int step, bad = 0;
    o.warmup = 4; o.total_steps = 0; o.lr = 0.01f; o.weight_decay = 0.3f;
    CHECK_RC(resbm_model_init(&cfg, &o, &m), RESBM_OK);
    if (th_fail_now) return;
    ps = resbm_model_params_mut(m, &np);
    mom1 = (double **)calloc(np, sizeof(double *));
    mom2 = (double **)calloc(np, sizeof(double *));
    for (i = 0; i < np; i++) {
        mom1[i] = (double *)calloc(ps[i].value.ne[0] * ps[i].value.ne[1], 8);
        mom2[i] = (double *)calloc(ps[i].value.ne[0] * ps[i].value.ne[1], 8);
    }
    for (step = 0; step < 3; step++) {
        double lr = 0.01 * (step + 1) / 4.0, bc1 = 1 - pow(0.9, step + 1), bc2 = 1 - pow(0.95, step + 1);
        float scale = 0.5f + 0.25f * (float)step;
        w = set_grads(m, 77 + (uint64_t)step);
        CHECK_RC(resbm_model_update(m, scale), RESBM_OK);
        for (i = 0; i < np; i++) {
            size_t n = ps[i].value.ne[0] * ps[i].value.ne[1];
            double decay = ps[i].kind == RESBM_PARAM_NORM ? 0.0 : 0.3;
            for (j = 0; j < n; j++) {
                double g = (double)ps[i].grad.data[j] * scale, want;
                mom1[i][j] = 0.9 * mom1[i][j] + 0.1 * g;
                mom2[i][j] = 0.95 * mom2[i][j] + 0.05 * g * g;
                want = w[i][j] * (1 - lr * decay) - lr / bc1 * mom1[i][j] / (sqrt(mom2[i][j]) / sqrt(bc2) + 1e-8);
                if (!(fabs(ps[i].value.data[j] - want) <= 1e-6 * fabs(want) + 2e-7) && bad++ < 3)
                    printf("    step %d %s[%zu]: %.9g vs %.9g\n", step, ps[i].name, j, ps[i].value.data[j], want);
            }
            free(w[i]);
        }
        free(w);
    }
    CHECK(bad == 0, "%d mismatches", bad);
    for (i = 0; i < np; i++) { free(mom1[i]); free(mom2[i]); }
    free(mom1); free(mom2);
    resbm_model_free(m);
}

/* SGD is w -= lr * scale * g; a compressed stage 0 of 2 also owns an encoder, whose parameters
   (and only those) take bottleneck_lr_scale on top. */
static void test_sgd_by_hand(void) {
    int pass, seen_bottleneck = 0;
    for (pass = 0; pass < 2; pass++) {
        resbm_model_config cfg = tiny_config();
        resbm_opt_config o = resbm_opt_config_default();
        resbm_model *m;
        resbm_param *ps;
        size_t np, i, j;
        double **w;
        o.kind = RESBM_OPT_SGD; o.lr = 0.05f;
        if (pass) { cfg.stages = 2; cfg.r = 4; cfg.m = 8; o.bottleneck_lr_scale = 3.0f; }
        CHECK_RC(resbm_model_init(&cfg, &o, &m), RESBM_OK);
        if (th_fail_now) return;
        ps = resbm_model_params_mut(m, &np);
        w = set_grads(m, 5);
        CHECK_RC(resbm_model_update(m, 2.0f), RESBM_OK);
        for (i = 0; i < np; i++) {
            size_t n = ps[i].value.ne[0] * ps[i].value.ne[1];
            float lr = 0.05f * (strncmp(ps[i].name, "bottleneck.", 11) ? 1.0f : 3.0f);
            seen_bottleneck += !strncmp(ps[i].name, "bottleneck.", 11);
            for (j = 0; j < n; j++) {
                float want = (float)w[i][j] - lr * (ps[i].grad.data[j] * 2.0f);
                if (ps[i].value.data[j] != want) {
                    CHECK(0, "%s[%zu] %.9g vs %.9g", ps[i].name, j, ps[i].value.data[j], want);
                    break;
                }
            }
            free(w[i]);
        }
        free(w);
        resbm_model_free(m);
    }
    CHECK(seen_bottleneck == 3, "stage 0 of 2 owns enc_norm, enc_w1, enc_w2 (saw %d)", seen_bottleneck);
}

/* Newton-Schulz in double: x [k, n] (k <= n) in place. */
static void ref_ns(double *x, size_t k, size_t n, int steps) {
    double *A = (double *)malloc(k * k * 8), *B = (double *)malloc(k * k * 8), *Y = (double *)malloc(k * n * 8);
    size_t i, j, l;
    int s;
    for (s = 0; s < steps; s++) {
        for (i = 0; i < k; i++)
            for (j = 0; j < k; j++) {
                double t = 0;
                for (l = 0; l < n; l++) t += x[i * n + l] * x[j * n + l];
                A[i * k + j] = t;
            }
        for (i = 0; i < k; i++)
            for (j = 0; j < k; j++) {
                double t = 0;
                for (l = 0; l < k; l++) t += A[i * k + l] * A[l * k + j];
                B[i * k + j] = -4.7750 * A[i * k + j] + 2.0315 * t;
            }
        for (i = 0; i < k; i++)
            for (j = 0; j < n; j++) {
                double t = 0;
                for (l = 0; l < k; l++) t += B[i * k + l] * x[l * n + j];
                Y[i * n + j] = 3.4445 * x[i * n + j] + t;
            }
        memcpy(x, Y, k * n * 8);
    }
    free(A); free(B); free(Y);
}

static void test_muon_by_hand(void) {
    resbm_model_config cfg = tiny_config();
    resbm_opt_config o = resbm_opt_config_default();
    resbm_model *m;
    resbm_param *ps;
    size_t np, i, j, r, c;
    double **w;
    int checked = 0;
    o.kind = RESBM_OPT_MUON; o.warmup = 0; o.muon_lr = 0.02f; o.weight_decay = 0.1f;
    CHECK_RC(resbm_model_init(&cfg, &o, &m), RESBM_OK);
    if (th_fail_now) return;
    ps = resbm_model_params_mut(m, &np);
    w = set_grads(m, 9);
    CHECK_RC(resbm_model_update(m, 0.5f), RESBM_OK);
    for (i = 0; i < np; i++) {
        size_t R = ps[i].value.ne[0], C = ps[i].value.ne[1], n = R * C, k = R < C ? R : C, wide = R < C ? C : R;
        double *x, ss = 0, f, maxd = 0, maxu = 0;
        if (ps[i].kind != RESBM_PARAM_HIDDEN) { free(w[i]); continue; }
        x = (double *)malloc(n * 8);
        for (r = 0; r < R; r++)
            for (c = 0; c < C; c++) {
                double g = (double)ps[i].grad.data[r * C + c] * 0.5, u = g + 0.95 * g; /* buf = g */
                if (R <= C) x[r * C + c] = u; else x[c * R + r] = u;
                ss += u * u;
            }
        for (j = 0; j < n; j++) x[j] /= sqrt(ss) + 1e-7;
        ref_ns(x, k, wide, 5);
        f = 0.02 * sqrt(R > C ? (double)R / (double)C : 1.0);
        for (r = 0; r < R; r++)
            for (c = 0; c < C; c++) {
                double u = R <= C ? x[r * C + c] : x[c * R + r];
                double want = w[i][r * C + c] * (1 - 0.02 * 0.1) - f * u;
                double dd = fabs(ps[i].value.data[r * C + c] - want);
                maxd = dd > maxd ? dd : maxd;
                maxu = fabs(f * u) > maxu ? fabs(f * u) : maxu;
            }
        /* float Newton-Schulz drifts a little from double: compare with the update's size */
        CHECK(maxd <= 2e-3 * maxu, "%s: max diff %g, update size %g", ps[i].name, maxd, maxu);
        checked++;
        free(x);
        free(w[i]);
    }
    free(w);
    CHECK(checked == 14, "checked %d hidden matrices", checked);
    resbm_model_free(m);
}

/* The squared gradient norm: per RESBM__CHUNK floats of the padded concatenation of all
   parameters, one double sum in element order, then the chunks' sums in order. Checked bit for bit
   against that definition (written out here with the model's offsets) at 1, 2 and 3 threads, on
   gradients whose magnitudes span 2^-20..2^20 so that any other order shows in the bits. The
   model has both kinds of chunk: runs of four inside one large weight, and chunks shared by
   small parameters and padding. */
static void test_grad_sqnorm(void) {
    resbm_model_config cfg = resbm_model_config_default();
    resbm_opt_config o = resbm_opt_config_default();
    double got[3];
    int t;
    cfg.vocab = 64; cfg.d = 256; cfg.layers = 1; cfg.heads = 4; cfg.ff = 688; cfg.seq = 8; cfg.batch = 1;
    for (t = 0; t < 3; t++) {
        resbm_model *m;
        const resbm_param *ps;
        resbm_rng r;
        size_t np, i, e, c;
        double want = 0.0, *part;
        cfg.threads = t + 1;
        CHECK_RC(resbm_model_init(&cfg, &o, &m), RESBM_OK);
        if (th_fail_now) return;
        ps = resbm_model_params(m, &np);
        resbm_rng_seed(&r, 7, 11);
        for (i = 0; i < np; i++)
            for (e = 0; e < ps[i].value.ne[0] * ps[i].value.ne[1]; e++)
                ps[i].grad.data[e] = ldexpf(resbm_rng_normal(&r), (int)(resbm_rng_u32(&r) % 41) - 20);
        CHECK_RC(resbm_model_grad_sqnorm(m, &got[t]), RESBM_OK);
        CHECK(m->nchunks >= 8, "only %zu chunks", m->nchunks);
        part = (double *)calloc(m->nchunks, sizeof(double));
        CHECK(part != NULL, "out of memory");
        if (th_fail_now) { resbm_model_free(m); return; }
        for (i = 0; i < np; i++) /* offsets rise with i and e: each chunk sums in element order */
            for (e = 0; e < ps[i].value.ne[0] * ps[i].value.ne[1]; e++)
                part[(m->voff[i] + e) / RESBM__CHUNK] += (double)ps[i].grad.data[e] * (double)ps[i].grad.data[e];
        for (c = 0; c < m->nchunks; c++) {
            CHECK(m->partials[c] == part[c], "threads %d, chunk %zu: %.17g, by definition %.17g",
                  t + 1, c, m->partials[c], part[c]);
            want += part[c];
        }
        free(part);
        CHECK(got[t] == want, "threads %d: %.17g, by definition %.17g", t + 1, got[t], want);
        resbm_model_free(m);
    }
    CHECK(got[0] == got[1] && got[1] == got[2], "threads differ: %.17g %.17g %.17g", got[0], got[1], got[2]);
}

/* train_step == zero_grad + forward/backward per microbatch + clip + update, and microbatching
   gives the gradient of the mean over all tokens. */
static void test_train_step_composition(void) {
    resbm_model_config cfg = tiny_config();
    resbm_opt_config o = resbm_opt_config_default();
    resbm_model *a, *b;
    size_t np, i, N = 3 * (size_t)cfg.seq, T = (size_t)cfg.seq;
    int32_t tok[64], tg[64];
    float la, lb = 0, l;
    double sq;
    int k;
    o.clip = 0.05f; /* small enough to bind */
    CHECK_RC(resbm_model_init(&cfg, &o, &a), RESBM_OK);
    CHECK_RC(resbm_model_init(&cfg, &o, &b), RESBM_OK);
    if (th_fail_now) return;
    tiny_batch(tok, tg, N, cfg.vocab, 4);
    CHECK_RC(resbm_model_train_step(a, tok, tg, 3, 3, &la), RESBM_OK);
    resbm_model_zero_grad(b);
    for (k = 0; k < 3; k++) {
        CHECK_RC(resbm_model_forward(b, 0, tok + k * T, NULL, tg + k * T, 1, NULL, &l), RESBM_OK);
        CHECK_RC(resbm_model_backward(b, 0, NULL, NULL, 1.0f / 3.0f), RESBM_OK);
        lb += l;
    }
    resbm_model_grad_sqnorm(b, &sq);
    CHECK(sqrt(sq) > 0.05, "clip should bind: norm %g", sqrt(sq));
    CHECK_RC(resbm_model_update(b, (float)(0.05 / (sqrt(sq) + 1e-6))), RESBM_OK);
    CHECK_NEAR(la, lb / 3.0f, 1e-6);
    {
        const resbm_param *pa = resbm_model_params(a, &np), *pb = resbm_model_params(b, NULL);
        for (i = 0; i < np; i++)
            CHECK(!memcmp(pa[i].value.data, pb[i].value.data, pa[i].value.ne[0] * pa[i].value.ne[1] * 4), "%s", pa[i].name);
    }
    resbm_model_free(a);
    resbm_model_free(b);
}

/* ---- memory ----------------------------------------------------------------------------------- */
static void test_step_allocates_nothing(void) {
    resbm_model_config cfg = tiny_config();
    resbm_opt_config o = resbm_opt_config_default();
    resbm_model *m;
    int32_t tok[64], tg[64];
    float loss;
    long before;
    int kind;
    cfg.threads = 2;
    for (kind = 0; kind < 3; kind++) {
        o.kind = kind;
        CHECK_RC(resbm_model_init(&cfg, &o, &m), RESBM_OK);
        if (th_fail_now) return;
        tiny_batch(tok, tg, 3 * (size_t)cfg.seq, cfg.vocab, 4);
        before = ta_calls;
        CHECK_RC(resbm_model_train_step(m, tok, tg, 3, 3, &loss), RESBM_OK);
        CHECK_RC(resbm_model_train_step(m, tok, tg, 3, 1, &loss), RESBM_OK);
        CHECK(ta_calls == before, "optimizer %d: %ld allocations during steps", kind, ta_calls - before);
        resbm_model_free(m);
    }
}

static void test_failing_allocator(void) {
    resbm_model_config cfg = tiny_config();
    long n;
    int rc, ok = 0;
    cfg.threads = 3;
    for (n = 0; n < 50 && !ok; n++) {
        resbm_model *m = NULL;
        ta_calls = 0; ta_live = 0; ta_fail_at = n;
        rc = resbm_model_init(&cfg, NULL, &m);
        if (rc == RESBM_OK) { ok = 1; resbm_model_free(m); }
        else CHECK(rc == RESBM_ENOMEM && m == NULL, "failing call %ld: rc %d", n, rc);
        CHECK(ta_live == 0, "failing call %ld leaked %ld blocks", n, ta_live);
    }
    CHECK(ok && n >= 2, "init needs %ld allocations", n);
    for (n = 0; n < 10; n++) { /* the safetensors writer's header buffer */
        float v[3] = {1, 2, 3};
        resbm_st_entry e;
        memset(&e, 0, sizeof(e));
        e.name = "v"; e.dtype = RESBM_DT_F32; e.ndim = 1; e.shape[0] = 3; e.data = v;
        ta_calls = 0; ta_live = 0; ta_fail_at = n;
        rc = resbm_safetensors_write(tmp_path("resbm_test_alloc.safetensors"), &e, 1, NULL, 0);
        CHECK(rc == RESBM_OK || rc == RESBM_ENOMEM, "rc %d", rc);
        CHECK(ta_live == 0, "safetensors leaked %ld", ta_live);
        if (rc == RESBM_OK) break;
    }
    ta_fail_at = -1;
    remove(tmp_path("resbm_test_alloc.safetensors"));
}

/* ---- safetensors ------------------------------------------------------------------------------ */
static void test_safetensors_write(void) {
    const char *path = tmp_path("resbm_test_st.safetensors");
    float a[6] = {1, -2, 3.5f, 0, 1e-3f, -7};
    int32_t b[2] = {-1, 70000};
    const char *meta[] = {"d", "16", "note", "quote\" back\\slash"};
    resbm_st_entry e[2];
    unsigned char buf[1024];
    size_t len, hl;
    FILE *fp;
    memset(e, 0, sizeof(e));
    e[0].name = "a"; e[0].dtype = RESBM_DT_F32; e[0].ndim = 2; e[0].shape[0] = 2; e[0].shape[1] = 3; e[0].data = a;
    e[1].name = "b"; e[1].dtype = RESBM_DT_I32; e[1].ndim = 1; e[1].shape[0] = 2; e[1].data = b;
    CHECK_RC(resbm_safetensors_write(path, e, 2, meta, 2), RESBM_OK);
    fp = fopen(path, "rb");
    CHECK(fp != NULL, "file exists");
    if (!fp) return;
    len = fread(buf, 1, sizeof(buf), fp);
    fclose(fp);
    hl = (size_t)buf[0] | (size_t)buf[1] << 8 | (size_t)buf[2] << 16;
    CHECK(hl % 8 == 0 && 8 + hl + 32 == len, "header %zu file %zu", hl, len);
    CHECK(buf[8] == '{', "json");
    buf[8 + hl] = 0;
    CHECK(strstr((char *)buf + 8, "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}") != NULL, "%s", buf + 8);
    CHECK(strstr((char *)buf + 8, "\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[24,32]}") != NULL, "b");
    CHECK(strstr((char *)buf + 8, "quote\\\" back\\\\slash") != NULL, "escaping");
    fp = fopen(path, "rb");
    if (fp) { fseek(fp, (long)(8 + hl), SEEK_SET); CHECK(fread(buf, 1, 32, fp) == 32, "data"); fclose(fp); }
    CHECK(!memcmp(buf, a, 24) && !memcmp(buf + 24, b, 8), "payload (little-endian host)");
    CHECK_RC(resbm_safetensors_write("/nonexistent-dir/x.safetensors", e, 2, NULL, 0), RESBM_EIO);
    e[0].ndim = 5;
    CHECK_RC(resbm_safetensors_write(path, e, 2, NULL, 0), RESBM_EINVAL);
    e[0].ndim = -1;
    CHECK_RC(resbm_safetensors_write(path, e, 2, NULL, 0), RESBM_EINVAL);
    e[0].ndim = 0; /* a scalar, shape [], as the reader takes it: what was read can be written */
    CHECK_RC(resbm_safetensors_write(path, e, 2, NULL, 0), RESBM_OK);
    {
        resbm_st_file *f = NULL;
        const resbm_st_entry *g;
        CHECK_RC(resbm_safetensors_read(path, 1 << 20, &f), RESBM_OK);
        g = f ? resbm_safetensors_find(f, "a") : NULL;
        CHECK(g && g->ndim == 0 && g->dtype == RESBM_DT_F32 && !memcmp(g->data, a, 4), "scalar read back");
        g = f ? resbm_safetensors_find(f, "b") : NULL;
        CHECK(g && g->ndim == 1 && !memcmp(g->data, b, sizeof(b)), "after the scalar");
        resbm_safetensors_free(f);
    }
    remove(path);
}

/* Builds a safetensors image from a header string and `data_len` bytes of data. */
static size_t st_image(unsigned char *buf, const char *json, size_t data_len) {
    size_t hl = strlen(json), i;
    for (i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, json, hl);
    for (i = 0; i < data_len; i++) buf[8 + hl + i] = (unsigned char)i;
    return 8 + hl + data_len;
}

static void test_safetensors_read(void) {
    const char *path = tmp_path("resbm_test_st_read.safetensors");
    float a[6] = {1, -2, 3.5f, 0, 1e-3f, -7};
    int32_t b[2] = {-1, 70000};
    const char *meta[] = {"d", "16", "note", "quote\" back\\slash"};
    static const char *bad[] = {
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,9]}}",          /* past the data */
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}",          /* size vs shape */
        "{\"a\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]}}",          /* dtype */
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",          /* a hole at the end */
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}",    /* unknown key */
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x",        /* trailing junk */
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}",           /* unclosed */
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}",         /* negative */
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,2],\"data_offsets\":[0,8]}}",  /* rank 5 */
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,8]}}",
        "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",  /* NUL in name */
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},}",
        "[]", "{", "{\"__metadata__\":{\"k\":1},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
        "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
        "{\"__metadata__\":{},\"__metadata__\":{},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
    };
    resbm_st_entry e[2];
    resbm_st_file *f;
    const resbm_st_entry *g;
    unsigned char img[512], *file = NULL;
    size_t n, len, cut, i;
    FILE *fp;
    memset(e, 0, sizeof(e));
    e[0].name = "a"; e[0].dtype = RESBM_DT_F32; e[0].ndim = 2; e[0].shape[0] = 2; e[0].shape[1] = 3; e[0].data = a;
    e[1].name = "b\xc3\xa9"; e[1].dtype = RESBM_DT_I32; e[1].ndim = 1; e[1].shape[0] = 2; e[1].data = b;
    CHECK_RC(resbm_safetensors_write(path, e, 2, meta, 2), RESBM_OK);
    CHECK_RC(resbm_safetensors_read(path, 1 << 20, &f), RESBM_OK);
    if (th_fail_now) return;
    g = resbm_safetensors_entries(f, &n);
    CHECK(n == 2 && g != NULL, "two entries");
    g = resbm_safetensors_find(f, "a");
    CHECK(g && g->dtype == RESBM_DT_F32 && g->ndim == 2 && g->shape[0] == 2 && g->shape[1] == 3 &&
          !memcmp(g->data, a, sizeof(a)), "tensor a");
    g = resbm_safetensors_find(f, "b\xc3\xa9");
    CHECK(g && g->dtype == RESBM_DT_I32 && !memcmp(g->data, b, sizeof(b)), "tensor b (UTF-8 name)");
    CHECK(resbm_safetensors_meta(f, "note") && !strcmp(resbm_safetensors_meta(f, "note"), "quote\" back\\slash"), "meta");
    CHECK(resbm_safetensors_meta(f, "nope") == NULL && resbm_safetensors_find(f, "c") == NULL, "absent");
    resbm_safetensors_free(f);
    CHECK_RC(resbm_safetensors_read(path, 16, &f), RESBM_EFORMAT); /* larger than allowed */
    CHECK_RC(resbm_safetensors_read("/nonexistent/x", 1 << 20, &f), RESBM_EIO);
    /* every truncation of the real file is refused */
    fp = fopen(path, "rb");
    if (fp) {
        file = (unsigned char *)malloc(4096);
        len = fread(file, 1, 4096, fp);
        fclose(fp);
        for (cut = 0; cut < len; cut++) {
            unsigned char *c = (unsigned char *)malloc(cut + 1); /* exact size: ASan sees overreads */
            memcpy(c, file, cut);
            f = NULL;
            CHECK(resbm_safetensors_parse(c, cut, &f) == RESBM_EFORMAT && f == NULL, "truncated at %zu", cut);
            free(c);
        }
        free(file);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        len = st_image(img, bad[i], 8);
        f = NULL;
        CHECK(resbm_safetensors_parse(img, len, &f) == RESBM_EFORMAT && f == NULL, "accepted bad header %zu: %s", i, bad[i]);
    }
    len = st_image(img, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    img[0] = 0xff; img[5] = 1; /* header length beyond the file */
    CHECK_RC(resbm_safetensors_parse(img, len, &f), RESBM_EFORMAT);
    len = st_image(img, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]}}", 8);
    CHECK_RC(resbm_safetensors_parse(img, len, &f), RESBM_OK); /* an empty tensor sharing an offset */
    if (!th_fail_now) resbm_safetensors_free(f);
    len = st_image(img, "{\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},\"x\\n\\u00e9\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[4,8]}}  ", 8);
    CHECK_RC(resbm_safetensors_parse(img, len, &f), RESBM_OK);
    if (!th_fail_now) {
        CHECK(resbm_safetensors_find(f, "x\n\xc3\xa9") != NULL && resbm_safetensors_find(f, "s")->ndim == 0, "escapes, scalar");
        resbm_safetensors_free(f);
    }
    CHECK_RC(resbm_safetensors_parse(NULL, 8, &f), RESBM_EINVAL);
    remove(path);
}

/* Checkpoints: 2N steps == N steps + save + load into a fresh model + N steps, bit for bit. */
static void test_checkpoint_resume(void) {
    const char *path = tmp_path("resbm_test_ckpt.safetensors");
    int kinds[2] = {RESBM_OPT_ADAMW, RESBM_OPT_MUON}, ki, step;
    for (ki = 0; ki < 2; ki++) {
        resbm_model_config c = tiny_config();
        resbm_opt_config oc = resbm_opt_config_default();
        resbm_model *a, *b;
        int32_t tok[128], tg[128];
        size_t np, i;
        float la, lb;
        char why[256];
        oc.kind = kinds[ki]; oc.warmup = 2; oc.total_steps = 8;
        c.batch = 2;
        CHECK_RC(resbm_model_init(&c, &oc, &a), RESBM_OK);
        c.seed = 999; /* b starts elsewhere: the load must bring everything */
        CHECK_RC(resbm_model_init(&c, &oc, &b), RESBM_OK);
        if (th_fail_now) return;
        for (step = 0; step < 6; step++) {
            tiny_batch(tok, tg, 2 * (size_t)c.seq, c.vocab, 40 + (uint64_t)step);
            CHECK_RC(resbm_model_train_step(a, tok, tg, 2, 2, &la), RESBM_OK);
            if (step == 2) {
                CHECK_RC(resbm_checkpoint_save(path, &a, 1, NULL, 0), RESBM_OK);
                CHECK_RC(resbm_checkpoint_load(path, &b, 1, why, sizeof(why)), RESBM_OK);
                CHECK(resbm_model_step_count(b) == 3, "step restored");
            }
            if (step > 2) {
                CHECK_RC(resbm_model_train_step(b, tok, tg, 2, 2, &lb), RESBM_OK);
                CHECK(la == lb, "%s step %d: loss %.9g vs %.9g", kinds[ki] ? "muon" : "adamw", step, la, lb);
            }
        }
        {
            const resbm_param *pa = resbm_model_params(a, &np), *pb = resbm_model_params(b, NULL);
            for (i = 0; i < np; i++) {
                size_t cnt = pa[i].value.ne[0] * pa[i].value.ne[1];
                CHECK(!memcmp(pa[i].value.data, pb[i].value.data, cnt * 4) &&
                      (!pa[i].m || !memcmp(pa[i].m, pb[i].m, cnt * 4)) &&
                      (!pa[i].v || !memcmp(pa[i].v, pb[i].v, cnt * 4)), "%s differs after resume", pa[i].name);
            }
        }
        resbm_model_free(a);
        resbm_model_free(b);
    }
    remove(path);
}

/* A checkpoint of another shape, optimizer, a truncated or non-finite one: refused with a reason,
   the model untouched. */
static void test_checkpoint_refuses(void) {
    const char *path = tmp_path("resbm_test_ckpt_bad.safetensors"), *path2 = tmp_path("resbm_test_ckpt_bad2.safetensors");
    resbm_model_config c = tiny_config();
    resbm_opt_config oc = resbm_opt_config_default();
    resbm_model *a, *b, *other;
    char why[256];
    unsigned char *img;
    size_t len, hl;
    const char *changed;
    float *before;
    FILE *fp;
    CHECK_RC(resbm_model_init(&c, &oc, &a), RESBM_OK);
    c.seed = 5;
    CHECK_RC(resbm_model_init(&c, &oc, &b), RESBM_OK);
    c.d = 32;
    CHECK_RC(resbm_model_init(&c, &oc, &other), RESBM_OK);
    if (th_fail_now) return;
    before = params_snapshot(b);
    CHECK_RC(resbm_checkpoint_save(path, &other, 1, NULL, 0), RESBM_OK);
    CHECK_RC(resbm_checkpoint_load(path, &b, 1, why, sizeof(why)), RESBM_EFORMAT);
    CHECK(strstr(why, "shape") != NULL, "reason: %s", why);
    CHECK_RC(resbm_checkpoint_save(path, &a, 1, NULL, 0), RESBM_OK);
    fp = fopen(path, "rb");
    img = (unsigned char *)malloc(1 << 22);
    len = fp ? fread(img, 1, 1 << 22, fp) : 0;
    if (fp) fclose(fp);
    hl = (size_t)img[0] | (size_t)img[1] << 8 | (size_t)img[2] << 16;
    fp = fopen(path2, "wb"); /* truncated in the data */
    if (fp) { fwrite(img, 1, len - 5, fp); fclose(fp); }
    CHECK_RC(resbm_checkpoint_load(path2, &b, 1, why, sizeof(why)), RESBM_EFORMAT);
    CHECK(strstr(why, "safetensors") != NULL, "reason: %s", why);
    fp = fopen(path2, "wb"); /* a NaN in the last tensor's data */
    if (fp) { img[len - 2] = 0xc0; img[len - 1] = 0x7f; fwrite(img, 1, len, fp); fclose(fp); }
    CHECK_RC(resbm_checkpoint_load(path2, &b, 1, why, sizeof(why)), RESBM_ENONFINITE);
    CHECK(strstr(why, "NaN") != NULL, "reason: %s", why);
    CHECK(hl > 0 && len > hl, "file");
    oc.kind = RESBM_OPT_SGD;
    resbm_model_free(other);
    c = tiny_config();
    CHECK_RC(resbm_model_init(&c, &oc, &other), RESBM_OK);
    if (!th_fail_now) {
        CHECK_RC(resbm_checkpoint_load(path, &other, 1, why, sizeof(why)), RESBM_EFORMAT);
        CHECK(strstr(why, "optimizer") != NULL, "reason: %s", why);
    }
    CHECK_RC(resbm_checkpoint_load("/nonexistent/ck", &b, 1, why, sizeof(why)), RESBM_EIO);
    { /* bottlenecks sit where the stage split puts them: another split is another model */
        resbm_model_config c2 = tiny_config();
        resbm_model *s2[2], *s3;
        oc.kind = RESBM_OPT_ADAMW;
        c2.layers = 6; c2.stages = 2; c2.r = 4; c2.m = 8;
        c2.stage = 0; CHECK_RC(resbm_model_init(&c2, &oc, &s2[0]), RESBM_OK);
        c2.stage = 1; CHECK_RC(resbm_model_init(&c2, &oc, &s2[1]), RESBM_OK);
        c2.stages = 3; c2.stage = 0; CHECK_RC(resbm_model_init(&c2, &oc, &s3), RESBM_OK);
        if (!th_fail_now) {
            CHECK_RC(resbm_checkpoint_save(path, s2, 2, NULL, 0), RESBM_OK);
            CHECK_RC(resbm_checkpoint_load(path, &s3, 1, why, sizeof(why)), RESBM_EFORMAT);
            CHECK(strstr(why, "stages=2") != NULL, "reason: %s", why);
            resbm_model_free(s2[0]); resbm_model_free(s2[1]); resbm_model_free(s3);
        }
    }
    changed = params_changed(b, before);
    CHECK(changed == NULL, "%s changed", changed);
    CHECK(resbm_model_step_count(b) == 0, "step changed");
    free(before); free(img);
    resbm_model_free(a); resbm_model_free(b); resbm_model_free(other);
    remove(path); remove(path2);
}

/* Writes img[0:len] to path, loads it into m; returns the code. */
static int load_image(const char *path, const unsigned char *img, size_t len, resbm_model *m,
                      char *why, size_t why_len) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return 1;
    if (len) fwrite(img, 1, len, fp);
    fclose(fp);
    return resbm_checkpoint_load(path, &m, 1, why, why_len);
}

/* Patches the first occurrence of `from` after `key` in the JSON header with `to` (same length). */
static int patch_header(unsigned char *img, size_t hl, const char *key, const char *from, const char *to) {
    char *h = (char *)img + 8, *k, *f;
    char save = h[hl];
    h[hl] = 0; /* the header is followed by data; terminate it while searching */
    k = strstr(h, key);
    f = k ? strstr(k, from) : NULL;
    h[hl] = save;
    if (!f || f + strlen(from) > h + hl) return 0;
    memcpy(f, to, strlen(to));
    return 1;
}

/* Corrupt checkpoints: cut at every byte of the header and all through the data, a header that
   lies about dtype, shape, offsets or its own length. Each is an error with a reason; the model
   and the file on disk are untouched. */
static void test_checkpoint_corrupt(void) {
    const char *path = tmp_path("resbm_test_ckpt_c.safetensors"), *bad = tmp_path("resbm_test_ckpt_c2.safetensors");
    resbm_model_config c = tiny_config();
    resbm_opt_config oc = resbm_opt_config_default();
    resbm_model *a, *b;
    unsigned char *img, *cp;
    char why[256];
    size_t len, hl, cut, n_cuts = 0, n_fail = 0;
    const char *changed;
    float *before;
    FILE *fp;
    int rc;
    CHECK_RC(resbm_model_init(&c, &oc, &a), RESBM_OK);
    c.seed = 9;
    CHECK_RC(resbm_model_init(&c, &oc, &b), RESBM_OK);
    if (th_fail_now) return;
    CHECK_RC(resbm_checkpoint_save(path, &a, 1, NULL, 0), RESBM_OK);
    img = (unsigned char *)malloc(1 << 22); cp = (unsigned char *)malloc(1 << 22);
    fp = fopen(path, "rb");
    len = fp ? fread(img, 1, 1 << 22, fp) : 0;
    if (fp) fclose(fp);
    hl = (size_t)img[0] | (size_t)img[1] << 8 | (size_t)img[2] << 16;
    CHECK(len > 8 + hl && hl > 100, "file of %zu bytes, header %zu", len, hl);
    before = params_snapshot(b);
    /* every cut in the length field and the header, then every 61st byte of the data */
    for (cut = 0; cut < len; cut += cut < 8 + hl + 8 ? 1 : 61) {
        why[0] = 0;
        rc = load_image(bad, img, cut, b, why, sizeof(why));
        n_cuts++;
        if (rc == RESBM_OK || !why[0]) { n_fail++; if (n_fail < 4) CHECK(0, "cut at %zu: %s (%s)", cut, resbm_strerror(rc), why); }
    }
    CHECK(n_cuts > hl && n_fail == 0, "%zu of %zu cuts loaded or gave no reason", n_fail, n_cuts);
    /* the header lies */
    memcpy(cp, img, len);
    CHECK(patch_header(cp, hl, "\"tok_emb\"", "F32", "F16"), "patch dtype");
    CHECK_RC(load_image(bad, cp, len, b, why, sizeof(why)), RESBM_EFORMAT);
    memcpy(cp, img, len);
    CHECK(patch_header(cp, hl, "\"tok_emb\"", "\"shape\":[2", "\"shape\":[3"), "patch shape");
    CHECK_RC(load_image(bad, cp, len, b, why, sizeof(why)), RESBM_EFORMAT);
    memcpy(cp, img, len);
    CHECK(patch_header(cp, hl, "\"final_norm\"", "\"data_offsets\":[", "\"data_offsets\":["), "find offsets");
    { /* move final_norm's first offset one byte: sizes no longer match the shape */
        char *h = (char *)cp + 8, save = h[hl], *k, *d;
        h[hl] = 0; k = strstr(h, "\"final_norm\""); d = k ? strstr(k, "data_offsets\":[") : NULL; h[hl] = save;
        if (d) { d += strlen("data_offsets\":["); *d = *d == '9' ? '8' : (char)(*d + 1); }
        CHECK(d != NULL, "offsets");
    }
    rc = load_image(bad, cp, len, b, why, sizeof(why));
    CHECK(rc == RESBM_EFORMAT, "moved offset: %s (%s)", resbm_strerror(rc), why);
    memcpy(cp, img, len);
    cp[0] = 0xff; cp[1] = 0xff; cp[2] = 0xff; cp[3] = 0x7f; /* header length past the file */
    CHECK_RC(load_image(bad, cp, len, b, why, sizeof(why)), RESBM_EFORMAT);
    memcpy(cp, img, len);
    cp[7] = 0x80; /* header length of 2^63 */
    CHECK_RC(load_image(bad, cp, len, b, why, sizeof(why)), RESBM_EFORMAT);
    memcpy(cp, img, len);
    cp[8 + hl / 2] = '\x01'; /* a control byte inside the JSON */
    CHECK_RC(load_image(bad, cp, len, b, why, sizeof(why)), RESBM_EFORMAT);
    /* nothing changed: the model, its step, and the good file, which still loads */
    changed = params_changed(b, before);
    CHECK(changed == NULL, "%s changed", changed);
    CHECK(resbm_model_step_count(b) == 0, "step changed");
    fp = fopen(path, "rb");
    CHECK(fp && fread(cp, 1, 1 << 22, fp) == len && !memcmp(cp, img, len), "the good file changed");
    if (fp) fclose(fp);
    CHECK_RC(resbm_checkpoint_load(path, &b, 1, why, sizeof(why)), RESBM_OK);
    free(before); free(img); free(cp);
    resbm_model_free(a); resbm_model_free(b);
    remove(path); remove(bad);
}

/* ---- wire codec ------------------------------------------------------------------------------- */
static resbm_frame_info frame_info(int kind, int dtype, uint32_t rows, uint32_t cols) {
    resbm_frame_info f;
    memset(&f, 0, sizeof(f));
    f.kind = kind; f.dtype = dtype; f.from_stage = 1; f.to_stage = 2; f.step = 0x100000007ULL;
    f.micro = 3; f.rows = rows; f.cols = cols;
    return f;
}

static void put_crc(unsigned char *buf, size_t len) { /* recompute after a deliberate patch */
    uint32_t c = resbm_crc32c(resbm_crc32c(0, buf, 36), buf + 40, len - 40);
    buf[36] = (unsigned char)c; buf[37] = (unsigned char)(c >> 8);
    buf[38] = (unsigned char)(c >> 16); buf[39] = (unsigned char)(c >> 24);
}

/* The vector exp the softmaxes and silu use: within 3 ulp of exp (in double) over the range that
   matters, exact at 0, 0 at -Inf and below the normal range, NaN kept; a row's elements are the
   same wherever the row is cut (a tail is a masked vector, not another formula). */
static void test_vector_exp(void) {
    float row[40], out[40], part[40];
    int i, k;
#ifdef RESBM__VMATH
    float xs[8], ys[8];
    double worst = 0.0;
    for (i = 0; i <= 2000000; i += 8) {
        for (k = 0; k < 8; k++) xs[k] = -87.0f + 175.0f * (float)(i + k) / 2000000.0f;
        _mm256_storeu_ps(ys, resbm__exp8(_mm256_loadu_ps(xs)));
        for (k = 0; k < 8; k++) {
            double t = exp((double)xs[k]), ulp = ldexp(1.0, ilogb(t) - 23);
            if (fabs(ys[k] - t) / ulp > worst) worst = fabs(ys[k] - t) / ulp;
        }
    }
    CHECK(worst <= 3.0, "exp8 is %.2f ulp off at worst", worst);
    printf("    exp8: %.2f ulp at worst on [-87, 88]\n", worst);
    xs[0] = 0.0f; xs[1] = -INFINITY; xs[2] = -100.0f; xs[3] = strtof("nan", NULL);
    xs[4] = 100.0f; xs[5] = 1.0f; xs[6] = -1.0f; xs[7] = 88.0f;
    _mm256_storeu_ps(ys, resbm__exp8(_mm256_loadu_ps(xs)));
    CHECK(ys[0] == 1.0f && ys[1] == 0.0f && ys[2] == 0.0f && ys[3] != ys[3] && ys[4] == INFINITY,
          "exp8 special values: %g %g %g %g %g", ys[0], ys[1], ys[2], ys[3], ys[4]);
    CHECK(fabs(ys[7] - exp(88.0)) < 3e-7 * exp(88.0), "exp8(88) = %g", ys[7]);
#endif
    /* the row helpers (vector or scalar): each element as a longer row has it, sums and maxima */
    for (i = 0; i < 40; i++) row[i] = 0.37f * (float)(i % 13) - 2.0f; /* rises to i = 12 */
    resbm__exp_row(out, row, 40, 0.5f, 0.25f);
    for (k = 1; k <= 40; k++) {
        float s2 = resbm__exp_row(part, row, (size_t)k, 0.5f, 0.25f);
        double ref = 0.0;
        for (i = 0; i < k; i++) ref += exp(0.5 * row[i] - 0.25);
        CHECK(!memcmp(out, part, (size_t)k * sizeof(float)), "a row of %d differs from the first %d of a longer one", k, k);
        CHECK(fabs(s2 - ref) < 1e-5 * ref, "sum of %d: %g vs %g", k, s2, ref);
        CHECK(resbm__max_row(row, (size_t)k) == row[k < 13 ? k - 1 : 12], "max of the first %d", k);
    }
    row[0] = -5.0f; row[1] = -7.0f; row[2] = -6.0f;
    CHECK(resbm__max_row(row, 3) == -5.0f && resbm__max_row(row + 1, 2) == -6.0f,
          "max of negatives (lanes past the end must not count as 0)");
}

static void test_crc32c(void) {
    unsigned char data[100];
    int i;
    CHECK(resbm_crc32c(0, "123456789", 9) == 0xe3069283u, "check value 0x%08x", resbm_crc32c(0, "123456789", 9));
    for (i = 0; i < 100; i++) data[i] = (unsigned char)(i * 7 + 1);
    CHECK(resbm_crc32c(resbm_crc32c(0, data, 37), data + 37, 63) == resbm_crc32c(0, data, 100), "chaining");
}

static void test_wire_conversions(void) {
    static const struct { float f; unsigned h; } f16[] = {
        {1.0f, 0x3c00}, {-2.0f, 0xc000}, {65504.0f, 0x7bff}, {5.9604644775390625e-8f, 0x0001},
        {1.0f + 1.0f / 2048, 0x3c00}, /* tie to even */ {1.0f + 3.0f / 2048, 0x3c02},
        {6.103515625e-5f, 0x0400}, {0.0f, 0x0000}, {2.9802322387695312e-8f, 0x0000} /* tie to 0 */};
    float x[5] = {1.0f, -1.5f, 3.14159265f, 1e-3f, 70000.0f}, y[5];
    unsigned char buf[256];
    size_t len, i;
    resbm_frame_info f = frame_info(RESBM_KIND_ACT, RESBM_WIRE_F16, 1, 1);
    for (i = 0; i < sizeof(f16) / sizeof(f16[0]); i++) {
        CHECK_RC(resbm_frame_encode(buf, sizeof(buf), &len, &f, &f16[i].f), RESBM_OK);
        CHECK((unsigned)(buf[40] | buf[41] << 8) == f16[i].h, "f16(%g) = 0x%04x, want 0x%04x", f16[i].f, buf[40] | buf[41] << 8, f16[i].h);
        CHECK_RC(resbm_frame_decode(y, 1, buf, len, &f), RESBM_OK);
        CHECK(fabsf(y[0] - f16[i].f) <= fabsf(f16[i].f) / 1024 + 6e-8f, "round trip %g -> %g", f16[i].f, y[0]);
    }
    f.cols = 5;
    CHECK_RC(resbm_frame_encode(buf, sizeof(buf), &len, &f, x), RESBM_ERANGE); /* 70000 > f16 max */
    f.dtype = RESBM_WIRE_BF16;
    CHECK_RC(resbm_frame_encode(buf, sizeof(buf), &len, &f, x), RESBM_OK);
    CHECK(buf[40] == 0x80 && buf[41] == 0x3f, "bf16(1) = 0x%02x%02x", buf[41], buf[40]);
    CHECK_RC(resbm_frame_decode(y, 5, buf, len, &f), RESBM_OK);
    for (i = 0; i < 5; i++) CHECK(fabsf(y[i] - x[i]) <= fabsf(x[i]) / 256, "bf16 %g -> %g", x[i], y[i]);
    x[2] = NAN;
    CHECK_RC(resbm_frame_encode(buf, sizeof(buf), &len, &f, x), RESBM_ENONFINITE);
    len = 0;
    CHECK_RC(resbm_frame_encode(buf, 49, &len, &f, y), RESBM_ENOSPACE); /* 50 bytes do not fit in 49 */
    CHECK(len == 50, "ENOSPACE says the bytes needed: %zu", len);
}

static void test_wire_roundtrip(void) {
    int dt, kind;
    size_t n = 2 * 77, len, i, pb;
    float *x = rand_floats(n, 3.0f, 9), *y = (float *)malloc(n * 4);
    unsigned char *buf = (unsigned char *)malloc(40 + n * 4);
    for (i = 0; i < 64; i++) x[64 + i] *= 1e-3f; /* a quiet block: i8 scales per block */
    for (dt = 0; dt < 4; dt++)
        for (kind = 1; kind <= 3; kind++) {
            resbm_frame_info f = frame_info(kind, dt, 2, 77), g = frame_info(0, 0, 0, 0);
            CHECK_RC(resbm_frame_encode(buf, 40 + n * 4, &len, &f, x), RESBM_OK);
            resbm_wire_payload_bytes(dt, 2, 77, &pb);
            CHECK(len == 40 + pb, "dtype %d len %zu", dt, len);
            CHECK(pb == (dt == 0 ? 4 * n : dt < 3 ? 2 * n : n + 4 * 3), "payload %zu", pb);
            CHECK_RC(resbm_frame_peek(buf, len, &g), RESBM_OK);
            CHECK(g.kind == kind && g.dtype == dt && g.step == f.step && g.micro == 3 && g.rows == 2 &&
                  g.cols == 77 && g.from_stage == 1 && g.to_stage == 2, "peek");
            CHECK_RC(resbm_frame_decode(y, n, buf, len, &f), RESBM_OK);
            for (i = 0; i < n; i++) {
                size_t b0 = i / 64 * 64, j;
                float amax = 0, tol;
                for (j = b0; j < b0 + 64 && j < n; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
                tol = dt == 0 ? 0 : dt == 1 ? fabsf(x[i]) / 256 : dt == 2 ? fabsf(x[i]) / 2048 + 6e-8f : amax / 254 * 1.0001f;
                if (!(fabsf(y[i] - x[i]) <= tol)) { CHECK(0, "dtype %d [%zu]: %g -> %g", dt, i, x[i], y[i]); break; }
            }
        }
    { /* an i8 block whose absmax is denormal (127 / absmax overflows; the fuzzer found 0 * inf) */
        float d[4] = {0.0f, 1e-45f, -1e-45f, 0.0f}, e[4];
        resbm_frame_info f = frame_info(RESBM_KIND_ACT, RESBM_WIRE_I8, 1, 4);
        CHECK_RC(resbm_frame_encode(buf, 40 + n * 4, &len, &f, d), RESBM_OK);
        CHECK_RC(resbm_frame_decode(e, 4, buf, len, &f), RESBM_OK);
        CHECK(e[0] == 0.0f && e[3] == 0.0f && fabsf(e[1]) <= 1e-44f && fabsf(e[2]) <= 1e-44f, "denormal block");
    }
    free(x); free(y); free(buf);
}

/* Every failure class has its own code, and the output is never touched. */
static void test_wire_rejects(void) {
    float x[12], out[12];
    unsigned char good[128], bad[128];
    size_t len, i, cut;
    resbm_frame_info f = frame_info(RESBM_KIND_GRAD, RESBM_WIRE_F32, 3, 4), e;
    for (i = 0; i < 12; i++) { x[i] = (float)i - 5.5f; out[i] = 42.0f; }
    CHECK_RC(resbm_frame_encode(good, sizeof(good), &len, &f, x), RESBM_OK);
#define REJECT(patch, expect, code)                                                                 \
    do {                                                                                            \
        memcpy(bad, good, len);                                                                     \
        e = f;                                                                                      \
        patch;                                                                                      \
        CHECK_RC(resbm_frame_decode(out, 12, bad, len, &expect), code);                             \
    } while (0)
    REJECT(bad[0] = 'X', e, RESBM_EMAGIC);
    REJECT((bad[4] = 2, put_crc(bad, len)), e, RESBM_EVERSION);
    REJECT((bad[6] = 9, put_crc(bad, len)), e, RESBM_EKIND);
    REJECT(e.kind = RESBM_KIND_ACT, e, RESBM_EKIND);
    REJECT((bad[7] = 7, put_crc(bad, len)), e, RESBM_EDTYPE);
    REJECT(e.dtype = RESBM_WIRE_BF16, e, RESBM_EDTYPE);
    REJECT(e.from_stage = 0, e, RESBM_ESTAGE);
    REJECT(e.to_stage = 3, e, RESBM_ESTAGE);
    REJECT(e.step = 7, e, RESBM_ESTEP);
    REJECT(e.micro = 4, e, RESBM_EMICRO);
    REJECT(e.rows = 4, e, RESBM_ESHAPE);
    REJECT(e.cols = 3, e, RESBM_ESHAPE);
    REJECT((bad[32] = 47, put_crc(bad, len)), e, RESBM_ESIZE);           /* payload size lies */
    REJECT((bad[35] = 0x7f, put_crc(bad, len)), e, RESBM_ESIZE);         /* a huge declared payload */
    REJECT((bad[24] = 0xff, bad[25] = 0xff, bad[26] = 0xff, put_crc(bad, len)), e, RESBM_ESIZE);
    REJECT(bad[40 + 5] ^= 0x10, e, RESBM_ECRC);                          /* one payload bit */
    REJECT(bad[13] ^= 0x01, e, RESBM_ECRC);                              /* one header bit */
    REJECT((bad[40 + 8] = 0, bad[41 + 8] = 0, bad[42 + 8] = 0xc0, bad[43 + 8] = 0x7f, put_crc(bad, len)), e, RESBM_ENONFINITE);
    REJECT((bad[43] = 0x7f, bad[42] = 0x80, bad[41] = 0, bad[40] = 0, put_crc(bad, len)), e, RESBM_ENONFINITE); /* +Inf */
#undef REJECT
    for (cut = 0; cut < len; cut++)
        CHECK_RC(resbm_frame_decode(out, 12, good, cut, &f), RESBM_ETRUNC);
    memcpy(bad, good, len);
    bad[len] = 0;
    CHECK_RC(resbm_frame_decode(out, 12, bad, len + 1, &f), RESBM_ESIZE); /* trailing bytes */
    CHECK_RC(resbm_frame_decode(out, 11, good, len, &f), RESBM_ENOSPACE); /* one value short */  /* does not fit out */
    for (i = 0; i < 12; i++) CHECK(out[i] == 42.0f, "output touched by a rejected frame");
    CHECK_RC(resbm_frame_decode(out, 12, good, len, &f), RESBM_OK);
    CHECK(!memcmp(out, x, sizeof(x)), "good frame decodes exactly");
    /* an i8 frame with a NaN scale */
    f.dtype = RESBM_WIRE_I8;
    CHECK_RC(resbm_frame_encode(good, sizeof(good), &len, &f, x), RESBM_OK);
    good[43] = 0x7f; good[42] = 0xc0; put_crc(good, len);
    for (i = 0; i < 12; i++) out[i] = 42.0f;
    CHECK_RC(resbm_frame_decode(out, 12, good, len, &f), RESBM_ENONFINITE);
    CHECK(out[0] == 42.0f, "output touched");
    /* The largest value i8 carries: FLT_MAX itself is out (127 x FLT_MAX / 127 rounds to Inf),
       the float below it encodes and decodes finite. A scale whose 127 x is Inf is refused, and
       so is -128, which absmax/127 never gives (with the largest scale it would be -Inf). */
    x[11] = FLT_MAX;
    CHECK_RC(resbm_frame_encode(good, sizeof(good), &len, &f, x), RESBM_ERANGE);
    x[11] = -nextafterf(FLT_MAX, 0.0f);
    CHECK_RC(resbm_frame_encode(good, sizeof(good), &len, &f, x), RESBM_OK);
    CHECK_RC(resbm_frame_decode(out, 12, good, len, &f), RESBM_OK);
    CHECK(resbm__finite(out[11]) && out[11] < -3e38f, "the largest i8 value decoded to %g", out[11]);
    memcpy(bad, good, len);
    bad[44 + 11] = 0x80;
    put_crc(bad, len);
    for (i = 0; i < 12; i++) out[i] = 42.0f;
    CHECK_RC(resbm_frame_decode(out, 12, bad, len, &f), RESBM_ERANGE);
    {
        float s = FLT_MAX / 127.0f;
        uint32_t u;
        memcpy(&u, &s, 4);
        memcpy(bad, good, len);
        for (i = 0; i < 4; i++) bad[40 + i] = (unsigned char)(u >> (8 * i));
        put_crc(bad, len);
        CHECK_RC(resbm_frame_decode(out, 12, bad, len, &f), RESBM_ENONFINITE);
    }
    CHECK(out[0] == 42.0f && out[11] == 42.0f, "output touched");
    { /* the values and the frame in one buffer: encoding would write the header over the values
         (and seal what it wrote with a good CRC), decoding would write values it has yet to read */
        float both[64], copy[64];
        f = frame_info(RESBM_KIND_GRAD, RESBM_WIRE_BF16, 3, 4);
        for (i = 0; i < 64; i++) both[i] = 1.0f + (float)i;
        memcpy(copy, both, sizeof(both));
        CHECK_RC(resbm_frame_encode(both, sizeof(both), &len, &f, both + 4), RESBM_EINVAL);
        CHECK(!memcmp(both, copy, sizeof(both)), "a refused encode wrote");
        CHECK_RC(resbm_frame_encode(both, sizeof(both), &len, &f, both + 40), RESBM_OK); /* apart */
        memcpy(copy, both, sizeof(both));
        CHECK_RC(resbm_frame_decode(both + 2, 12, both, len, &f), RESBM_EINVAL);
        CHECK(!memcmp(both, copy, sizeof(both)), "a refused decode wrote");
        CHECK_RC(resbm_frame_decode(both + 40, 12, both, len, &f), RESBM_OK);
        CHECK(!memcmp(both + 40, copy + 40, 12 * sizeof(float)), "bf16 of small integers is exact");
    }
}

/* ---- transports ------------------------------------------------------------------------------- */
#ifndef RESBM_NO_THREADS
#include <pthread.h>
#include <time.h>
static double t_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct { resbm_transport t; int peer, count, ok; } pump_arg;

/* Receives `count` messages from peer; message i is i+1 bytes of value (i & 255). */
static void *pump_recv(void *arg) {
    pump_arg *a = (pump_arg *)arg;
    unsigned char buf[4096];
    int i;
    size_t len, j;
    a->ok = 1;
    for (i = 0; i < a->count; i++) {
        if (a->t.recv(a->t.user, a->peer, buf, sizeof(buf), &len, 5000) || len != (size_t)(i % 3000) + 1) { a->ok = 0; return NULL; }
        for (j = 0; j < len; j++)
            if (buf[j] != (unsigned char)i) { a->ok = 0; return NULL; }
    }
    return NULL;
}

static void test_inproc(void) {
    resbm_inproc *h;
    resbm_transport t0, t1, t2;
    unsigned char buf[8192], big[8192];
    memset(&t0, 0, sizeof(t0)); memset(&t1, 0, sizeof(t1)); memset(&t2, 0, sizeof(t2));
    size_t len = 99;
    int i;
    pump_arg a;
    pthread_t th;
    CHECK_RC(resbm_inproc_init(3, 4096, &h), RESBM_OK);
    if (th_fail_now) return;
    resbm_inproc_transport(h, 0, &t0);
    resbm_inproc_transport(h, 1, &t1);
    resbm_inproc_transport(h, 2, &t2);
    /* nothing there: poll and timeout */
    CHECK_RC(t1.recv(t1.user, 0, buf, sizeof(buf), &len, 0), RESBM_ETIMEDOUT);
    CHECK_RC(t1.recv(t1.user, 0, buf, sizeof(buf), &len, 30), RESBM_ETIMEDOUT);
    CHECK(len == 99, "len written on timeout");
    /* order per peer, independent peers */
    CHECK_RC(t0.send(t0.user, 1, "abc", 3), RESBM_OK);
    CHECK_RC(t2.send(t2.user, 1, "xy", 2), RESBM_OK);
    CHECK_RC(t0.send(t0.user, 1, "defg", 4), RESBM_OK);
    CHECK_RC(t1.recv(t1.user, 2, buf, sizeof(buf), &len, 0), RESBM_OK);
    CHECK(len == 2 && !memcmp(buf, "xy", 2), "from 2");
    CHECK_RC(t1.recv(t1.user, 0, buf, 2, &len, 0), RESBM_EMSGSIZE); /* cap too small: stays queued */
    CHECK_RC(t1.recv(t1.user, 0, buf, sizeof(buf), &len, 0), RESBM_OK);
    CHECK(len == 3 && !memcmp(buf, "abc", 3), "first");
    CHECK_RC(t1.recv(t1.user, 0, buf, sizeof(buf), &len, 0), RESBM_OK);
    CHECK(len == 4 && !memcmp(buf, "defg", 4), "second");
    CHECK_RC(t0.send(t0.user, 1, big, 4096), RESBM_EMSGSIZE);  /* larger than the mailbox */
    { /* a full mailbox nobody drains: the send gives up after the hub's send timeout */
        double t;
        struct timespec ts;
        CHECK_RC(resbm_inproc_set_send_timeout(h, 0), RESBM_EINVAL);
        CHECK_RC(resbm_inproc_set_send_timeout(NULL, 5), RESBM_EINVAL);
        CHECK_RC(resbm_inproc_set_send_timeout(h, 100), RESBM_OK);
        CHECK_RC(t2.send(t2.user, 0, big, 3000), RESBM_OK);
        clock_gettime(CLOCK_MONOTONIC, &ts);
        t = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
        CHECK_RC(t2.send(t2.user, 0, big, 3000), RESBM_ETIMEDOUT);
        clock_gettime(CLOCK_MONOTONIC, &ts);
        t = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec - t;
        CHECK(t >= 0.05 && t < 5.0, "gave up after %.3f s", t);
        CHECK_RC(t0.recv(t0.user, 2, buf, sizeof(buf), &len, 0), RESBM_OK); /* the first is whole */
        CHECK(len == 3000, "len %zu", len);
        CHECK_RC(resbm_inproc_set_send_timeout(h, 60000), RESBM_OK);
    }
    CHECK_RC(t0.send(t0.user, 0, big, 1), RESBM_EINVAL);     /* to itself */
    CHECK_RC(t0.send(t0.user, 3, big, 1), RESBM_EINVAL);     /* no such peer */
    /* a full mailbox blocks the sender until the receiver drains it: 3000 messages, wrapping */
    a.t = t1; a.peer = 0; a.count = 3000;
    pthread_create(&th, NULL, pump_recv, &a);
    for (i = 0; i < 3000; i++) {
        memset(big, i & 255, sizeof(big));
        if (t0.send(t0.user, 1, big, (size_t)(i % 3000) + 1 > 4000 ? 4000 : (size_t)(i % 3000) + 1)) { CHECK(0, "send %d", i); break; }
    }
    pthread_join(th, NULL);
    CHECK(a.ok, "receiver saw a wrong message");
    /* close: pending messages still arrive, then ECLOSED; sends to a closed peer fail */
    CHECK_RC(t2.send(t2.user, 0, "last", 4), RESBM_OK);
    CHECK_RC(resbm_inproc_close(h, 2), RESBM_OK);
    CHECK_RC(t0.recv(t0.user, 2, buf, sizeof(buf), &len, 100), RESBM_OK);
    CHECK_RC(t0.recv(t0.user, 2, buf, sizeof(buf), &len, -1), RESBM_ECLOSED); /* no hang */
    CHECK_RC(t0.send(t0.user, 2, "x", 1), RESBM_ECLOSED);
    CHECK_RC(resbm_inproc_init(0, 4096, &h), RESBM_EINVAL);
    resbm_inproc_free(h);
}

static void test_shaper(void) {
    resbm_inproc *h;
    resbm_transport i0, i1, s0, s1;
    resbm_shaper *a, *b;
    memset(&s0, 0, sizeof(s0)); memset(&s1, 0, sizeof(s1));
    unsigned char buf[20000];
    size_t len;
    double t0, el;
    int k;
    CHECK_RC(resbm_inproc_init(2, 1 << 20, &h), RESBM_OK);
    if (th_fail_now) return;
    resbm_inproc_transport(h, 0, &i0);
    resbm_inproc_transport(h, 1, &i1);
    /* 1 MB/s and 20 ms: ten 10 kB messages need at least 10 * 10 kB / 1 MB/s + 20 ms = 120 ms */
    CHECK_RC(resbm_shaper_init(&i0, 2, 1e6, 20.0, 20000, &a), RESBM_OK);
    CHECK_RC(resbm_shaper_init(&i1, 2, 1e6, 20.0, 20000, &b), RESBM_OK);
    resbm_shaper_transport(a, &s0);
    resbm_shaper_transport(b, &s1);
    memset(buf, 7, sizeof(buf));
    t0 = t_now();
    for (k = 0; k < 10; k++) CHECK_RC(s0.send(s0.user, 1, buf, 10000), RESBM_OK);
    for (k = 0; k < 10; k++) {
        CHECK_RC(s1.recv(s1.user, 0, buf, sizeof(buf), &len, 5000), RESBM_OK);
        CHECK(len == 10000 && buf[9999] == 7, "message %d", k);
    }
    el = t_now() - t0;
    CHECK(el >= 0.119, "shaped transfer took %.3f s, the link allows no less than 0.120 s", el);
    CHECK_RC(s0.send(s0.user, 1, buf, 20001), RESBM_EMSGSIZE);
    CHECK_RC(resbm_shaper_init(&i0, 2, -1.0, 0.0, 100, &a), RESBM_EINVAL);
    resbm_shaper_free(b);
    CHECK_RC(resbm_shaper_init(&i0, 2, 1e6, 20.0, 20000, &b), RESBM_OK);
    resbm_shaper_free(a);
    resbm_shaper_free(b);
    resbm_inproc_free(h);
}
#endif

/* ---- the header's drop-in example, run as written ------------------------------------------------
   Host-owned parameters and buffers, the host's own send/recv (here the in-process transport).
   At init (W2 = W4 = 0) the boundary is the rank-r identity: x = h[:, 0:r] in bf16, zeros
   elsewhere; on the way back dL/dh = dL/dx on the first r channels, zero elsewhere. */
#ifndef RESBM_NO_THREADS
static resbm_transport dropin_tr[2];
static void my_send(int to, const void *buf, size_t len) {
    int rc = dropin_tr[1 - to].send(dropin_tr[1 - to].user, to, buf, len);
    CHECK_RC(rc, RESBM_OK);
}
static size_t my_recv(int from, void *buf, size_t cap) {
    size_t len = 0;
    int rc = dropin_tr[1 - from].recv(dropin_tr[1 - from].user, from, buf, cap, &len, 1000);
    CHECK_RC(rc, RESBM_OK);
    return len;
}

/* The header's drop-in example, verbatim between the markers: stage s's encoder, its frame over
   the host's own send/recv, the gradient back, an update. */
static int dropin_sender(unsigned s, uint64_t step, uint32_t micro, size_t N, size_t d, size_t r,
                         const float *h, float *dh, resbm_boundary **keep) {
    resbm_opt_config oc = resbm_opt_config_default();
    float *z = (float *)calloc(N * r, 4), *dz = (float *)calloc(N * r, 4), clip_scale = 1.0f;
    size_t cap = RESBM_FRAME_HEADER + 4 * N * r, len;
    unsigned char *buf = (unsigned char *)malloc(cap);
    int rc;
    /* from the header, verbatim */
    resbm_boundary_config bc = resbm_boundary_config_default();
    bc.side = RESBM_ENCODER; bc.index = (int)s; bc.d = (int)d; bc.r = (int)r; bc.max_tokens = (int)N;
    resbm_boundary *enc;
    if ((rc = resbm_boundary_init(&bc, &oc, &enc))) return rc;
    resbm_boundary_forward(enc, 0, N, h, z);            // z [N,r]
    resbm_frame_info f = {RESBM_KIND_ACT, RESBM_WIRE_BF16, s, s + 1, step, micro, (uint32_t)N, (uint32_t)r};
    resbm_frame_encode(buf, cap, &len, &f, z);          // 40-byte header + N*r bf16 values
    my_send(s + 1, buf, len);                           // your socket, MPI, RDMA, pigeon...
    len = my_recv(s + 1, buf, cap);                     // dL/dz [N,r] comes back
    f.kind = RESBM_KIND_GRAD; f.from_stage = s + 1; f.to_stage = s;
    if ((rc = resbm_frame_decode(dz, N * r, buf, len, &f))) goto done;  // drop the step
    resbm_boundary_backward(enc, 0, dz, dh);            // dh = dL/dh: your backward goes on
    resbm_boundary_update(enc, clip_scale);             // its AdamW/Muon; _save/_load too
    /* end of the header's text */
done:
    *keep = enc;
    free(z); free(dz); free(buf);
    return rc;
}

static int dropin_receiver(unsigned me, uint64_t step, uint32_t micro, size_t N, size_t d, size_t r,
                           float *x, const float *dx, resbm_boundary **keep) {
    resbm_boundary_config bc = resbm_boundary_config_default();
    float *z = (float *)calloc(N * r, 4), *dz = (float *)calloc(N * r, 4);
    size_t cap = RESBM_FRAME_HEADER + 4 * N * r, len;
    unsigned char *buf = (unsigned char *)malloc(cap);
    resbm_frame_info expect = {RESBM_KIND_ACT, RESBM_WIRE_BF16, me - 1, me, step, micro, (uint32_t)N, (uint32_t)r};
    int rc;
    bc.side = RESBM_DECODER; bc.index = (int)me - 1; bc.d = (int)d; bc.r = (int)r; bc.max_tokens = (int)N;
    if ((rc = resbm_boundary_init(&bc, NULL, keep))) goto done;
    len = my_recv(me - 1, buf, cap);
    if ((rc = resbm_frame_decode(z, N * r, buf, len, &expect))) goto done;
    if ((rc = resbm_boundary_forward(*keep, 0, N, z, x))) goto done;
    if ((rc = resbm_boundary_backward(*keep, 0, dx, dz))) goto done;
    expect.kind = RESBM_KIND_GRAD; expect.dtype = RESBM_WIRE_BF16; expect.from_stage = me; expect.to_stage = me - 1;
    if ((rc = resbm_frame_encode(buf, cap, &len, &expect, dz))) goto done;
    my_send(me - 1, buf, len);
done:
    free(z); free(dz); free(buf);
    return rc;
}

typedef struct {
    const float *h;
    float *dh;
    resbm_boundary *enc;
    int rc;
} dropin_arg;
enum { DROP_N = 6, DROP_D = 16, DROP_R = 2 };

static void *dropin_sender_thread(void *p) {
    dropin_arg *a = (dropin_arg *)p;
    a->rc = dropin_sender(0, 7, 2, DROP_N, DROP_D, DROP_R, a->h, a->dh, &a->enc);
    return NULL;
}

static void test_dropin_example(void) {
    enum { N = DROP_N, D = DROP_D, R = DROP_R };
    static float h[N * D], dh[N * D], x[N * D], dx[N * D];
    resbm_inproc *hub;
    resbm_boundary *dec = NULL;
    resbm_rng g;
    dropin_arg a;
    pthread_t th;
    size_t i, n, k, np;
    float nz = 0.0f;
    CHECK_RC(resbm_inproc_init(2, 4096, &hub), RESBM_OK);
    if (th_fail_now) return;
    resbm_inproc_transport(hub, 0, &dropin_tr[0]);
    resbm_inproc_transport(hub, 1, &dropin_tr[1]);
    resbm_rng_seed(&g, 3, 4);
    for (i = 0; i < N * D; i++) { h[i] = resbm_rng_normal(&g); dx[i] = resbm_rng_normal(&g); }
    a.h = h; a.dh = dh; a.enc = NULL; a.rc = -999;
    pthread_create(&th, NULL, dropin_sender_thread, &a);
    CHECK_RC(dropin_receiver(1, 7, 2, N, D, R, x, dx, &dec), RESBM_OK);
    pthread_join(th, NULL);
    CHECK_RC(a.rc, RESBM_OK);
    /* enc_w2 = dec_w2 = 0 at init: the rank-r identity both ways, through a bf16 wire */
    for (n = 0; n < N; n++)
        for (i = 0; i < D; i++) {
            float xw = i < R ? resbm__bitsf((uint32_t)resbm__to_bf16(h[n * D + i]) << 16) : 0.0f;
            float gw = i < R ? resbm__bitsf((uint32_t)resbm__to_bf16(dx[n * D + i]) << 16) : 0.0f;
            CHECK(x[n * D + i] == xw, "x[%zu,%zu] = %g, want %g", n, i, x[n * D + i], xw);
            CHECK(dh[n * D + i] == gw, "dh[%zu,%zu] = %g, want %g", n, i, dh[n * D + i], gw);
        }
    if (a.enc && dec) {
        const resbm_param *pe = resbm_boundary_params(a.enc, &np);
        CHECK(np == 3 && !strcmp(pe[2].name, "bottleneck.0.enc_w2"), "encoder parameters");
        for (k = 0; k < np; k++) CHECK(pe[k].grad.data != NULL, "grad");
        for (i = 0; i < R * 4; i++) nz += fabsf(pe[2].grad.data[i]);
        CHECK(resbm_boundary_step_count(a.enc) == 1, "the encoder stepped once");
        pe = resbm_boundary_params(dec, &np);
        CHECK(np == 2 && !strcmp(pe[1].name, "bottleneck.0.dec_w2"), "decoder parameters");
        for (i = 0; i < D * 4; i++) nz += fabsf(pe[1].grad.data[i]);
        CHECK(nz > 0.0f, "the zero-initialised output projections get a gradient");
    }
    resbm_boundary_free(a.enc);
    resbm_boundary_free(dec);
    resbm_inproc_free(hub);
}
#endif

/* resbm_boundary: the same init as the halves inside a stage (same names, same bits), the same
   arithmetic as the grouped kernels on its own weights, a slot discipline, bad input refused, and
   a checkpoint round trip that restores values, optimizer state and step. */
static void test_boundary_object(void) {
    resbm_model_config mc = tiny_config();
    resbm_opt_config oc = resbm_opt_config_default();
    resbm_boundary_config bc = resbm_boundary_config_default();
    resbm_boundary *enc = NULL, *dec = NULL, *again = NULL;
    resbm_model *s0 = NULL, *s1 = NULL;
    const resbm_param *pm, *pe, *pd;
    size_t N = 2 * (size_t)mc.seq, d = (size_t)mc.d, r = 3, m = 4, nm, ne, nd, i, j;
    float h[2 * 8 * 16], z[2 * 8 * 3], z2[2 * 8 * 3], x[2 * 8 * 16], dz[2 * 8 * 3], dh[2 * 8 * 16];
    float s[2 * 8 * 4], ds[2 * 8 * 4], du[2 * 8 * 16], rstd[16], u[2 * 8 * 16], a[2 * 8 * 4];
    char path[128], why[160];
    resbm_rng g;
    mc.stages = 2; mc.r = (int)r; mc.m = (int)m;
    CHECK_RC(resbm_model_init(&mc, &oc, &s0), RESBM_OK);
    mc.stage = 1;
    CHECK_RC(resbm_model_init(&mc, &oc, &s1), RESBM_OK);
    bc.index = 0; bc.d = (int)d; bc.r = (int)r; bc.m = (int)m; bc.max_tokens = (int)N; bc.slots = 2;
    bc.init_std = mc.init_std;
    CHECK_RC(resbm_boundary_init(&bc, &oc, &enc), RESBM_OK);
    bc.side = RESBM_DECODER;
    CHECK_RC(resbm_boundary_init(&bc, &oc, &dec), RESBM_OK);
    if (!s0 || !s1 || !enc || !dec) return;
    pm = resbm_model_params(s0, &nm);
    pe = resbm_boundary_params(enc, &ne);
    CHECK(ne == 3, "encoder params %zu", ne);
    for (i = 0; i < ne; i++)
        for (j = 0; j < nm; j++)
            if (!strcmp(pm[j].name, pe[i].name))
                CHECK(!memcmp(pm[j].value.data, pe[i].value.data, pe[i].value.ne[0] * pe[i].value.ne[1] * 4),
                      "%s differs from the stage's", pe[i].name);
    pm = resbm_model_params(s1, &nm);
    pd = resbm_boundary_params(dec, &nd);
    CHECK(nd == 2 && !strcmp(pd[0].name, pm[0].name) &&
              !memcmp(pm[1].value.data, pd[1].value.data, d * m * 4), "decoder params as stage 1's");
    /* the same arithmetic as the grouped kernels on its weights */
    resbm_rng_seed(&g, 9, 9);
    for (i = 0; i < N * d; i++) h[i] = resbm_rng_normal(&g);
    for (i = 0; i < N * r; i++) dz[i] = resbm_rng_normal(&g);
    for (i = 0; i < ne; i++) /* non-zero w2 so the hidden path shows */
        if (strstr(pe[i].name, "enc_w2"))
            for (j = 0; j < r * m; j++) pe[i].value.data[j] = 0.3f * resbm_rng_normal(&g);
    CHECK_RC(resbm_boundary_forward(enc, 1, N, h, z), RESBM_OK);
    {
        resbm_bottleneck_shape sh = {N, d, r, m, 1};
        resbm_encoder_weights w = {pe[0].value.data, pe[1].value.data, pe[2].value.data};
        resbm_encoder_saved sv = {rstd, u, a};
        resbm_bottleneck_scratch scr = {s, ds, du};
        CHECK_RC(resbm_encoder_forward(NULL, &sh, &w, &sv, &scr, h, z2), RESBM_OK);
        CHECK(!memcmp(z, z2, sizeof(z)), "boundary forward == kernel forward");
    }
    CHECK_RC(resbm_boundary_forward(enc, 1, N, h, z), RESBM_ESTATE); /* slot 1 is held */
    CHECK_RC(resbm_boundary_forward(enc, 2, N, h, z), RESBM_EINVAL); /* two slots */
    CHECK_RC(resbm_boundary_forward(enc, 0, N + 1, h, z), RESBM_EINVAL); /* more than max_tokens */
    h[5] = NAN;
    CHECK_RC(resbm_boundary_forward(enc, 0, N, h, z), RESBM_ENONFINITE);
    dz[3] = INFINITY;
    CHECK_RC(resbm_boundary_backward(enc, 1, dz, dh), RESBM_ENONFINITE);
    dz[3] = 0.5f;
    { /* din sharing memory with dout: refused before anything is written (the slot stays) */
        float both[2 * 8 * 16 + 4];
        memcpy(both, dz, sizeof(dz));
        CHECK_RC(resbm_boundary_backward(enc, 1, both, both + 4), RESBM_EINVAL);
        CHECK(!memcmp(both, dz, sizeof(dz)), "a refused backward wrote over its input");
    }
    CHECK_RC(resbm_boundary_zero_grad(enc), RESBM_OK);
    CHECK_RC(resbm_boundary_backward(enc, 1, dz, dh), RESBM_OK);
    CHECK_RC(resbm_boundary_backward(enc, 1, dz, dh), RESBM_ESTATE); /* freed by its backward */
    CHECK_RC(resbm_boundary_forward(dec, 0, N, z, x), RESBM_OK);
    CHECK_RC(resbm_boundary_release(dec, 0), RESBM_OK);
    CHECK_RC(resbm_boundary_backward(dec, 0, x, dz), RESBM_ESTATE);
    /* bad configs */
    bc.r = (int)d;
    CHECK_RC(resbm_boundary_init(&bc, &oc, &again), RESBM_EINVAL); /* r = d is no bottleneck */
    bc.r = (int)r; bc.side = 7;
    CHECK_RC(resbm_boundary_init(&bc, &oc, &again), RESBM_EINVAL);
    bc.side = RESBM_ENCODER; bc.max_tokens = 0;
    CHECK_RC(resbm_boundary_init(&bc, &oc, &again), RESBM_EINVAL);
    bc.max_tokens = (int)N;
    /* update, save, load into a fresh one: values, state and step come back */
    CHECK_RC(resbm_boundary_update(enc, 1.0f), RESBM_OK);
    CHECK(resbm_boundary_step_count(enc) == 1, "step");
    snprintf(path, sizeof(path), "/tmp/resbm_boundary_%d.safetensors", (int)getpid());
    CHECK_RC(resbm_boundary_save(enc, path), RESBM_OK);
    CHECK_RC(resbm_boundary_init(&bc, &oc, &again), RESBM_OK);
    if (again) {
        const resbm_param *pa = resbm_boundary_params(again, NULL);
        CHECK_RC(resbm_boundary_load(again, path, why, sizeof(why)), RESBM_OK);
        CHECK(resbm_boundary_step_count(again) == 1, "loaded step");
        for (i = 0; i < ne; i++) {
            size_t n = pe[i].value.ne[0] * pe[i].value.ne[1];
            CHECK(!memcmp(pe[i].value.data, pa[i].value.data, n * 4) && !memcmp(pe[i].m, pa[i].m, n * 4) &&
                      !memcmp(pe[i].v, pa[i].v, n * 4), "%s round trip", pe[i].name);
        }
        CHECK_RC(resbm_boundary_load(dec, path, why, sizeof(why)), RESBM_EFORMAT); /* an encoder's file */
    }
    remove(path);
    resbm_boundary_free(enc); resbm_boundary_free(dec); resbm_boundary_free(again);
    resbm_model_free(s0); resbm_model_free(s1);
}

/* ---- the stage runtime ------------------------------------------------------------------------ */
#ifndef RESBM_NO_THREADS
enum { PIPE_MAX = 4, PIPE_STEPS = 3 };

typedef struct {
    resbm_stage_config cfg;
    int steps, rc, s, S, rows;
    float loss[PIPE_STEPS];
    resbm_stage *st; /* kept for inspection; freed by the test */
} pipe_arg;

static void pipe_batch(int32_t *tok, int32_t *tg, const resbm_model_config *c, int rows, int step) {
    tiny_batch(tok, tg, (size_t)rows * (size_t)c->seq, c->vocab, 500 + (uint64_t)step);
}

static void *pipe_thread(void *p) {
    pipe_arg *a = (pipe_arg *)p;
    int32_t tok[256], tg[256];
    int k;
    a->rc = resbm_stage_init(&a->cfg, &a->st);
    for (k = 0; k < a->steps && !a->rc; k++) {
        pipe_batch(tok, tg, &a->cfg.model, a->rows, k);
        a->rc = resbm_stage_step(a->st, tok, tg, (size_t)a->rows, &a->loss[k]);
    }
    return NULL;
}

/* Stage s of a pipeline test: the model, its optimizer, n microbatches a step, a 10 s timeout. */
static resbm_stage_config pipe_stage_config(resbm_model_config mc, resbm_opt_config oc, int s, int n_micro) {
    resbm_stage_config c = resbm_stage_config_default();
    c.model = mc;
    c.model.stage = s;
    c.opt = oc;
    c.n_micro = n_micro;
    c.timeout_ms = 10000;
    return c;
}

/* Runs S stages as threads over the in-process transport. Returns 0 when every stage succeeded. */
static size_t pipe_budget; /* act_budget_bytes of the next run_pipeline */
static int run_pipeline(pipe_arg *a, resbm_model_config mc, resbm_opt_config oc, int n_micro,
                        int wire_fwd, int wire_bwd, int steps) {
    resbm_inproc *hub;
    pthread_t th[PIPE_MAX];
    int s, S = mc.stages, bad = 0;
    if (resbm_inproc_init(S, 1 << 20, &hub)) return 1;
    for (s = 0; s < S; s++) {
        memset(&a[s], 0, sizeof(a[s]));
        a[s].cfg = pipe_stage_config(mc, oc, s, n_micro);
        a[s].cfg.wire_fwd = wire_fwd;
        a[s].cfg.wire_bwd = wire_bwd;
        a[s].cfg.act_budget_bytes = pipe_budget;
        a[s].steps = steps;
        a[s].rows = n_micro * mc.batch;
        resbm_inproc_transport(hub, s, &a[s].cfg.transport);
        pthread_create(&th[s], NULL, pipe_thread, &a[s]);
    }
    for (s = 0; s < S; s++) {
        pthread_join(th[s], NULL);
        if (a[s].rc) { printf("    stage %d: %s\n", s, resbm_strerror(a[s].rc)); bad = 1; }
    }
    resbm_inproc_free(hub);
    return bad;
}

static resbm_model_config pipe_config(void) {
    resbm_model_config c = tiny_config();
    c.layers = 5; c.stages = 3; c.batch = 1; c.r = 4; c.m = 8;
    return c;
}

/* (1) S stages as threads == the same S stages one after another in one thread, bit for bit. */
static void test_pipeline_equals_sequential(void) {
    resbm_model_config mc = pipe_config();
    resbm_opt_config oc = resbm_opt_config_default();
    pipe_arg a[PIPE_MAX];
    resbm_model *ref[PIPE_MAX];
    int S = mc.stages, n = 4, s, b, k, step;
    size_t Nmb = (size_t)mc.seq, w = 4, np, i;
    int32_t tok[256], tg[256];
    float *h[PIPE_MAX], *g[PIPE_MAX];
    oc.clip = 0.05f; oc.warmup = 2; /* the clip binds: the norm exchange matters */
    CHECK(run_pipeline(a, mc, oc, n, RESBM_WIRE_F32, RESBM_WIRE_F32, PIPE_STEPS) == 0, "pipeline");
    if (th_fail_now) return;
    for (s = 0; s < S; s++) {
        resbm_model_config c = mc;
        c.stage = s;
        CHECK_RC(resbm_model_init(&c, &oc, &ref[s]), RESBM_OK);
        h[s] = (float *)malloc(Nmb * w * 4);
        g[s] = (float *)malloc(Nmb * w * 4);
    }
    for (step = 0; step < PIPE_STEPS; step++) {
        double loss_sum = 0, sq;
        float total = 0, loss = 0;
        pipe_batch(tok, tg, &mc, n, step);
        for (s = 0; s < S; s++) resbm_model_zero_grad(ref[s]);
        for (k = 0; k < n; k++) { /* each stage accumulates microbatches 0..n-1, as 1F1B does */
            for (s = 0; s < S; s++) {
                CHECK_RC(resbm_model_forward(ref[s], 0, s == 0 ? tok + k * Nmb : NULL, s ? h[s - 1] : NULL,
                                             s == S - 1 ? tg + k * Nmb : NULL, 1, s < S - 1 ? h[s] : NULL,
                                             s == S - 1 ? &loss : NULL), RESBM_OK);
                if (s == S - 1) loss_sum += loss;
            }
            for (b = S - 1; b >= 0; b--)
                CHECK_RC(resbm_model_backward(ref[b], 0, b < S - 1 ? g[b] : NULL, b ? g[b - 1] : NULL,
                                              1.0f / (float)n), RESBM_OK);
        }
        for (s = 0; s < S; s++) { resbm_model_grad_sqnorm(ref[s], &sq); total = s ? total + (float)sq : (float)sq; }
        for (s = 0; s < S; s++) CHECK_RC(resbm_model_update(ref[s], resbm_clip_scale(&oc, total)), RESBM_OK);
        for (s = 0; s < S; s++)
            CHECK(a[s].loss[step] == (float)(loss_sum / n), "step %d stage %d loss %.9g vs %.9g", step, s,
                  a[s].loss[step], (float)(loss_sum / n));
    }
    for (s = 0; s < S; s++) {
        const resbm_param *pp = resbm_model_params(resbm_stage_model(a[s].st), &np);
        const resbm_param *pr = resbm_model_params(ref[s], NULL);
        for (i = 0; i < np; i++)
            CHECK(!memcmp(pp[i].value.data, pr[i].value.data, pp[i].value.ne[0] * pp[i].value.ne[1] * 4),
                  "stage %d %s differs", s, pp[i].name);
        resbm_stage_free(a[s].st);
        resbm_model_free(ref[s]);
        free(h[s]); free(g[s]);
    }
}

/* Deeper in flight (act_budget_bytes): stage s runs n - s forwards ahead (the last stage one), and
   the losses and parameters are the bits of 1F1B's minimum depth; depth and slot size reported. */
static void test_pipeline_in_flight_depth(void) {
    resbm_model_config mc = pipe_config();
    resbm_opt_config oc = resbm_opt_config_default();
    pipe_arg a[PIPE_MAX], b[PIPE_MAX];
    resbm_stage_stats sa, sb;
    int s, k, n = 6, slots;
    size_t np, i;
    memset(&sa, 0, sizeof(sa));
    memset(&sb, 0, sizeof(sb));
    oc.clip = 0.05f;
    pipe_budget = 0;
    CHECK(run_pipeline(a, mc, oc, n, RESBM_WIRE_F32, RESBM_WIRE_F32, PIPE_STEPS) == 0, "1F1B");
    pipe_budget = (size_t)1 << 30;
    CHECK(run_pipeline(b, mc, oc, n, RESBM_WIRE_F32, RESBM_WIRE_F32, PIPE_STEPS) == 0, "deep");
    pipe_budget = 0;
    if (th_fail_now) return;
    for (s = 0; s < mc.stages; s++) {
        const resbm_param *pa = resbm_model_params(resbm_stage_model(a[s].st), &np);
        const resbm_param *pb = resbm_model_params(resbm_stage_model(b[s].st), NULL);
        resbm_stage_get_stats(a[s].st, &sa);
        resbm_stage_get_stats(b[s].st, &sb);
        CHECK(sa.in_flight == mc.stages - s && sb.in_flight == (s < mc.stages - 1 ? n - s : 1), "stage %d depth %d / %d",
              s, sa.in_flight, sb.in_flight);
        CHECK(sa.slot_bytes > 0 && sa.slot_bytes == sb.slot_bytes, "slot bytes %zu", sa.slot_bytes);
        CHECK(sb.memory_bytes >= sa.memory_bytes + (size_t)(sb.in_flight - sa.in_flight) * sa.slot_bytes, "memory %zu vs %zu",
              sb.memory_bytes, sa.memory_bytes);
        CHECK_RC(resbm_stage_slots(&b[s].cfg, &slots), RESBM_OK);
        CHECK(slots == sb.in_flight, "resbm_stage_slots %d", slots);
        for (k = 0; k < PIPE_STEPS; k++) CHECK(a[s].loss[k] == b[s].loss[k], "stage %d step %d loss", s, k);
        for (i = 0; i < np; i++)
            CHECK(!memcmp(pa[i].value.data, pb[i].value.data, pa[i].value.ne[0] * pa[i].value.ne[1] * 4),
                  "stage %d %s differs", s, pa[i].name);
    }
    { /* two slots' worth (of the larger of stages 0 and 1) buys stage 0 two more than 1F1B's S;
         the last stage keeps one */
        resbm_stage_config c = b[0].cfg;
        resbm_stage_stats s1;
        memset(&s1, 0, sizeof(s1));
        resbm_stage_get_stats(a[0].st, &sa);
        resbm_stage_get_stats(a[1].st, &s1);
        c.act_budget_bytes = 2 * RESBM__MAX(sa.slot_bytes, s1.slot_bytes) + 1;
        CHECK_RC(resbm_stage_slots(&c, &slots), RESBM_OK);
        CHECK(slots == mc.stages + 2, "two slots' budget: %d", slots);
        c = b[mc.stages - 1].cfg;
        CHECK_RC(resbm_stage_slots(&c, &slots), RESBM_OK);
        CHECK(slots == 1, "the last stage: %d", slots);
    }
    for (s = 0; s < mc.stages; s++) { resbm_stage_free(a[s].st); resbm_stage_free(b[s].st); }
    /* an uneven split (blocks 2/1/1): per-stage budgets would make stage 1 deeper than stage 0
       and deadlock; the extra depth is the same on every stage, and the bits those of 1F1B */
    mc.layers = 4; n = 8;
    pipe_budget = 0;
    CHECK(run_pipeline(a, mc, oc, n, RESBM_WIRE_F32, RESBM_WIRE_F32, 2) == 0, "1F1B, uneven");
    if (th_fail_now) return;
    resbm_stage_get_stats(a[1].st, &sa);
    pipe_budget = 3 * sa.slot_bytes + 1; /* three of stage 1's slots: fewer of stage 0's */
    CHECK(run_pipeline(b, mc, oc, n, RESBM_WIRE_F32, RESBM_WIRE_F32, 2) == 0, "deeper, uneven");
    pipe_budget = 0;
    if (th_fail_now) return;
    for (s = 0; s < mc.stages; s++) {
        const resbm_param *pa = resbm_model_params(resbm_stage_model(a[s].st), &np);
        const resbm_param *pb = resbm_model_params(resbm_stage_model(b[s].st), NULL);
        resbm_stage_get_stats(b[s].st, &sb);
        if (s) CHECK(sb.in_flight < slots || s == mc.stages - 1, "stage %d depth %d", s, sb.in_flight);
        if (s < mc.stages - 1) slots = sb.in_flight;
        for (i = 0; i < np; i++)
            CHECK(!memcmp(pa[i].value.data, pb[i].value.data, pa[i].value.ne[0] * pa[i].value.ne[1] * 4),
                  "uneven: stage %d %s differs", s, pa[i].name);
    }
    for (s = 0; s < mc.stages; s++) { resbm_stage_free(a[s].st); resbm_stage_free(b[s].st); }
}

/* ---- the async schedule: the delayed-update rule, bit for bit ------------------------------------ */
enum { ASYNC_STEPS = 7 };

typedef struct {
    resbm_stage_config cfg;
    int steps, flush_at, rc, save_rc;       /* flush after call flush_at - 1 too (0: only at the end) */
    float loss[ASYNC_STEPS], flushed[2];
    long loss_step[ASYNC_STEPS];
    resbm_stage *st;
} async_arg;

static void *async_thread(void *p) {
    async_arg *a = (async_arg *)p;
    int32_t tok[256], tg[256];
    int rows = a->cfg.n_micro * a->cfg.model.batch, k, f = 0;
    resbm_stage_stats ss;
    char path[64];
    resbm_model *m;
    memset(&ss, 0, sizeof(ss));
    a->rc = resbm_stage_init(&a->cfg, &a->st);
    a->save_rc = RESBM_OK;
    m = resbm_stage_model(a->st);
    snprintf(path, sizeof(path), "/tmp/resbm_async_%d_%d.safetensors", (int)getpid(), a->cfg.model.stage);
    for (k = 0; k < a->steps && !a->rc; k++) {
        pipe_batch(tok, tg, &a->cfg.model, rows, k);
        a->loss[k] = -1.0f;
        a->rc = resbm_stage_step(a->st, tok, tg, (size_t)rows, &a->loss[k]);
        resbm_stage_get_stats(a->st, &ss);
        a->loss_step[k] = ss.loss_step;
        if (!a->rc && k == a->cfg.async_warmup + 2) /* steps in flight */
            a->save_rc = resbm_checkpoint_save(path, &m, 1, NULL, 0);
        if (!a->rc && (k + 1 == a->flush_at || k + 1 == a->steps)) a->rc = resbm_stage_flush(a->st, &a->flushed[f++]);
    }
    remove(path);
    return NULL;
}

static float async_predict = 2.0f; /* predict of the next run_async and async_reference */
static int async_warmup = 0;       /* and their exact steps first */
static int run_async(async_arg *a, resbm_model_config mc, resbm_opt_config oc, int n_micro, size_t budget,
                     int steps, int flush_at, int schedule) {
    resbm_inproc *hub;
    pthread_t th[PIPE_MAX];
    int s, S = mc.stages, bad = 0;
    if (resbm_inproc_init(S, 1 << 20, &hub)) return 1;
    for (s = 0; s < S; s++) {
        memset(&a[s], 0, sizeof(a[s]));
        a[s].cfg = pipe_stage_config(mc, oc, s, n_micro);
        a[s].cfg.act_budget_bytes = budget;
        a[s].cfg.schedule = schedule;
        a[s].cfg.predict = async_predict;
        a[s].cfg.async_warmup = async_warmup;
        a[s].steps = steps;
        a[s].flush_at = flush_at;
        resbm_inproc_transport(hub, s, &a[s].cfg.transport);
        pthread_create(&th[s], NULL, async_thread, &a[s]);
    }
    for (s = 0; s < S; s++) {
        pthread_join(th[s], NULL);
        if (a[s].rc) { printf("    stage %d: %s (%s)\n", s, resbm_strerror(a[s].rc), resbm_stage_why(a[s].st)); bad = 1; }
    }
    resbm_inproc_free(hub);
    return bad;
}

/* The rule (tests/delayed.h) on fresh stage models, flushing where the pipeline did (an exact
   warm-up step is a batch flushed at once: a stream of one). */
static void async_reference(resbm_model **ref, resbm_model_config mc, const resbm_opt_config *oc, int n,
                            int steps, int flush_at, float *losses) {
    delayed_rule r;
    int32_t tok[256], tg[256];
    int s, k;
    memset(&r, 0, sizeof(r));
    r.S = mc.stages; r.n = n; r.rows = (size_t)mc.batch; r.predict = async_predict;
    for (s = 0; s < r.S; s++) {
        resbm_model_config c = mc;
        c.stage = s;
        CHECK_RC(resbm_model_init(&c, oc, &ref[s]), RESBM_OK);
        r.stage[s] = ref[s];
    }
    for (k = 0; k < steps; k++) {
        pipe_batch(tok, tg, &mc, n * mc.batch, k);
        losses[k] = delayed_step(&r, tok, tg, k < async_warmup || k + 1 == flush_at || k + 1 == steps);
    }
    delayed_free(&r);
}

/* Async S stages as threads == the delayed-update rule run one stage after another: every
   reported loss, the flushed losses and every parameter bit for bit, at 1F1B's depth and with
   every stage as deep as the rule allows, AdamW (the clip binding) and Muon, 1 and 2 threads, one
   stage and a flush mid-run, exact warm-up steps first; checkpoints refused while steps are in
   flight; not exact's bits. */
static void test_pipeline_async_equals_reference(void) {
    struct { const char *what; int stages, n, opt, threads, flush_at; size_t budget; float predict; int warmup; } cases[] = {
        {"3 stages, 1F1B depth, AdamW", 3, 4, RESBM_OPT_ADAMW, 1, 0, 0, 2.0f, 0},
        {"3 stages, deepest, Muon, 2 threads", 3, 4, RESBM_OPT_MUON, 2, 0, (size_t)1 << 30, 2.0f, 0},
        {"3 stages, deepest, flush after step 4", 3, 3, RESBM_OPT_ADAMW, 1, 4, (size_t)1 << 30, 1.0f, 0},
        {"3 stages, deepest, the plain rule (predict 0)", 3, 4, RESBM_OPT_ADAMW, 1, 0, (size_t)1 << 30, 0.0f, 0},
        {"2 stages, 1 microbatch, deepest", 2, 1, RESBM_OPT_ADAMW, 1, 0, (size_t)1 << 30, 2.0f, 0},
        {"1 stage", 1, 2, RESBM_OPT_ADAMW, 1, 3, 0, 2.0f, 0},
        {"4 stages, 6 microbatches, deepest, 2 exact steps first", 4, 6, RESBM_OPT_ADAMW, 1, 0, (size_t)1 << 30, 2.0f, 2},
        {"3 stages, 1F1B depth, Muon, 2 exact steps first, flush after step 5", 3, 4, RESBM_OPT_MUON, 1, 5, 0, 2.0f, 2}};
    async_arg a[PIPE_MAX], x[PIPE_MAX];
    resbm_model *ref[PIPE_MAX];
    float losses[ASYNC_STEPS];
    int c, s, k, differs = 0;
    size_t np, i;
    for (c = 0; c < (int)(sizeof(cases) / sizeof(cases[0])); c++) {
        resbm_model_config mc = pipe_config();
        resbm_opt_config oc = resbm_opt_config_default();
        int S = cases[c].stages, fa = cases[c].flush_at;
        resbm_stage_stats ss;
        memset(&ss, 0, sizeof(ss));
        mc.stages = S;
        mc.threads = cases[c].threads;
        oc.kind = cases[c].opt;
        oc.clip = 0.05f; oc.warmup = 2;
        async_predict = cases[c].predict;
        async_warmup = cases[c].warmup;
        CHECK(run_async(a, mc, oc, cases[c].n, cases[c].budget, ASYNC_STEPS, fa, RESBM_SCHEDULE_ASYNC) == 0,
              "%s: the pipeline", cases[c].what);
        if (th_fail_now) return;
        mc.threads = 1;
        async_reference(ref, mc, &oc, cases[c].n, ASYNC_STEPS, fa, losses);
        for (s = 0; s < S; s++) {
            const resbm_param *pp = resbm_model_params(resbm_stage_model(a[s].st), &np);
            const resbm_param *pr = resbm_model_params(ref[s], NULL);
            resbm_stage_get_stats(a[s].st, &ss);
            if (cases[c].budget && s < S - 1)
                CHECK(ss.in_flight == RESBM__MAX(RESBM__MIN(S - s, cases[c].n), 1 + (S - 1 - s) * (cases[c].n - 1) / (S - 1)),
                      "%s: stage %d in flight %d", cases[c].what, s, ss.in_flight); /* n falling evenly to 1 */
            CHECK(resbm_model_step_count(resbm_stage_model(a[s].st)) == ASYNC_STEPS, "%s: steps", cases[c].what);
            CHECK(a[s].save_rc == RESBM_ESTATE, "%s: a checkpoint with steps in flight: %s", cases[c].what,
                  resbm_strerror(a[s].save_rc));
            for (k = 0; k < ASYNC_STEPS; k++) { /* call k of a stream reports the loss of k - 2 */
                int wu = cases[c].warmup, in = fa && k >= fa ? k - fa : k - wu;
                CHECK(k < wu ? a[s].loss[k] == losses[k] && a[s].loss_step[k] == k /* exact's own */
                      : in >= 2 ? a[s].loss[k] == losses[k - 2] && a[s].loss_step[k] == k - 2
                              : a[s].loss[k] == 0.0f,
                      "%s: stage %d call %d loss %.9g (step %ld), want %.9g", cases[c].what, s, k, a[s].loss[k],
                      a[s].loss_step[k], k < wu ? losses[k] : in >= 2 ? losses[k - 2] : 0.0);
            }
            CHECK(a[s].flushed[fa ? 1 : 0] == losses[ASYNC_STEPS - 1] && (!fa || a[s].flushed[0] == losses[fa - 1]),
                  "%s: stage %d flushed loss %.9g, want %.9g", cases[c].what, s, a[s].flushed[fa ? 1 : 0],
                  losses[ASYNC_STEPS - 1]);
            for (i = 0; i < np; i++)
                CHECK(!memcmp(pp[i].value.data, pr[i].value.data, pp[i].value.ne[0] * pp[i].value.ne[1] * 4),
                      "%s: stage %d %s differs from the rule", cases[c].what, s, pp[i].name);
        }
        if (c == 0) { /* the same run in exact mode ends elsewhere: the schedule is not a no-op */
            CHECK(run_async(x, mc, oc, cases[c].n, 0, ASYNC_STEPS, 0, RESBM_SCHEDULE_EXACT) == 0, "exact");
            for (s = 0; s < S && !th_fail_now; s++) {
                const resbm_param *pp = resbm_model_params(resbm_stage_model(a[s].st), &np);
                const resbm_param *px = resbm_model_params(resbm_stage_model(x[s].st), NULL);
                for (i = 0; i < np; i++)
                    differs |= !!memcmp(pp[i].value.data, px[i].value.data, pp[i].value.ne[0] * pp[i].value.ne[1] * 4);
                CHECK(x[s].save_rc == RESBM_OK, "exact: a checkpoint between steps");
                resbm_stage_free(x[s].st);
            }
            CHECK(differs, "async and exact gave the same parameters");
        }
        for (s = 0; s < S; s++) { resbm_stage_free(a[s].st); resbm_model_free(ref[s]); }
    }
    async_predict = 2.0f;
    async_warmup = 0;
}

/* A checkpoint loaded into stages with steps in flight (and a prediction in their parameters)
   is what they hold afterwards: the stream is dropped, the loaded weights are not overwritten by
   the weights proper of the dropped stream. */
typedef struct { resbm_stage_config cfg; resbm_stage *st; int rc; float *want; size_t n; int same; } reload_arg;
static void *reload_thread(void *p) {
    reload_arg *a = (reload_arg *)p;
    int32_t tok[256], tg[256];
    int rows = a->cfg.n_micro * a->cfg.model.batch, k;
    char path[64];
    resbm_model *m;
    size_t np, i, q = 0, e;
    const resbm_param *pp;
    float loss;
    snprintf(path, sizeof(path), "/tmp/resbm_reload_%d_%d.safetensors", (int)getpid(), a->cfg.model.stage);
    if ((a->rc = resbm_stage_init(&a->cfg, &a->st))) return NULL;
    m = resbm_stage_model(a->st);
    if ((a->rc = resbm_checkpoint_save(path, &m, 1, NULL, 0))) return NULL;
    for (k = 0; k < 4 && !a->rc; k++) { /* four calls: two updates applied, a prediction in place */
        pipe_batch(tok, tg, &a->cfg.model, rows, k);
        a->rc = resbm_stage_step(a->st, tok, tg, (size_t)rows, &loss);
    }
    if (!a->rc) a->rc = resbm_checkpoint_load(path, &m, 1, NULL, 0);
    if (!a->rc) a->rc = resbm_stage_flush(a->st, &loss);
    pp = resbm_model_params(m, &np);
    a->same = 1;
    for (i = 0; i < np; i++)
        for (e = 0; e < pp[i].value.ne[0] * pp[i].value.ne[1]; e++, q++) a->same &= pp[i].value.data[e] == a->want[q];
    a->same &= resbm_model_step_count(m) == 0;
    remove(path);
    return NULL;
}

/* A flush is all or nothing too: when one stage refuses the last commit, every stage fails the
   flush with the update undone (the stages after it had applied it and passed the
   acknowledgement on; they used to return OK, so a checkpoint saved then held a step the rest
   of the pipeline never reached), and the next call runs on all of them. */
typedef struct { resbm_stage *st; int phase, rc; } flush_arg;
static void *flush_thread(void *p) {
    flush_arg *a = (flush_arg *)p;
    const resbm_model_config *c = resbm_model_get_config(resbm_stage_model(a->st));
    int32_t tok[64], tg[64];
    float loss;
    tiny_batch(tok, tg, 2 * (size_t)c->seq, c->vocab, 5);
    a->rc = a->phase == 1 ? resbm_stage_flush(a->st, &loss) : resbm_stage_step(a->st, tok, tg, 2, &loss);
    return NULL;
}
static void test_async_flush_all_or_nothing(void) {
    resbm_model_config mc = pipe_config();
    int bad, s, phase;
    for (bad = 0; bad < 3; bad++) {
        resbm_inproc *hub;
        flush_arg a[3];
        pthread_t th[3];
        float *keep = NULL;
        resbm_param *ps = NULL;
        size_t np, n0 = 0, i;
        CHECK_RC(resbm_inproc_init(3, 1 << 20, &hub), RESBM_OK);
        for (s = 0; s < 3; s++) {
            resbm_stage_config c = pipe_stage_config(mc, resbm_opt_config_default(), s, 2);
            c.schedule = RESBM_SCHEDULE_ASYNC; c.timeout_ms = 5000;
            resbm_inproc_transport(hub, s, &c.transport);
            CHECK_RC(resbm_stage_init(&c, &a[s].st), RESBM_OK);
        }
        if (th_fail_now) return;
        for (phase = 0; phase < 3; phase++) { /* a step (nothing committed yet), the flush, a step */
            if (phase == 1) { /* a finite state whose update is Inf: stage `bad` refuses the commit */
                ps = resbm_model_params_mut(resbm_stage_model(a[bad].st), &np);
                n0 = ps[0].value.ne[0] * ps[0].value.ne[1];
                keep = (float *)malloc(2 * n0 * sizeof(float));
                if (!keep) return;
                memcpy(keep, ps[0].m, n0 * sizeof(float)); memcpy(keep + n0, ps[0].v, n0 * sizeof(float));
                for (i = 0; i < n0; i++) { ps[0].m[i] = 3e38f; ps[0].v[i] = 0.0f; }
            }
            for (s = 0; s < 3; s++) { a[s].phase = phase; pthread_create(&th[s], NULL, flush_thread, &a[s]); }
            for (s = 0; s < 3; s++) pthread_join(th[s], NULL);
            if (phase == 1) {
                for (s = 0; s < 3; s++) {
                    int want = s == bad ? RESBM_ENONFINITE : RESBM_EPEER;
                    CHECK(a[s].rc == want, "stage %d refuses: stage %d's flush %s, want %s", bad, s,
                          resbm_strerror(a[s].rc), resbm_strerror(want));
                    CHECK(resbm_model_step_count(resbm_stage_model(a[s].st)) == 0, "stage %d refuses: stage %d kept the update",
                          bad, s);
                }
                memcpy(ps[0].m, keep, n0 * sizeof(float)); memcpy(ps[0].v, keep + n0, n0 * sizeof(float));
                free(keep);
            } else {
                for (s = 0; s < 3; s++) CHECK(a[s].rc == RESBM_OK, "phase %d, stage %d: %s", phase, s, resbm_strerror(a[s].rc));
            }
        }
        for (s = 0; s < 3; s++) resbm_stage_free(a[s].st);
        resbm_inproc_free(hub);
    }
}

static void test_pipeline_async_reload(void) {
    resbm_model_config mc = pipe_config();
    resbm_inproc *hub;
    reload_arg a[3];
    pthread_t th[3];
    int s;
    CHECK_RC(resbm_inproc_init(3, 1 << 20, &hub), RESBM_OK);
    for (s = 0; s < 3; s++) {
        resbm_model *fresh;
        size_t np, i, e, q = 0;
        const resbm_param *pp;
        memset(&a[s], 0, sizeof(a[s]));
        a[s].cfg = pipe_stage_config(mc, resbm_opt_config_default(), s, 3);
        a[s].cfg.schedule = RESBM_SCHEDULE_ASYNC; a[s].cfg.act_budget_bytes = (size_t)1 << 30;
        resbm_inproc_transport(hub, s, &a[s].cfg.transport);
        CHECK_RC(resbm_model_init(&a[s].cfg.model, &a[s].cfg.opt, &fresh), RESBM_OK); /* the weights at step 0 */
        pp = resbm_model_params(fresh, &np);
        a[s].n = delayed_floats(fresh);
        a[s].want = (float *)malloc(a[s].n * sizeof(float));
        for (i = 0; i < np; i++)
            for (e = 0; e < pp[i].value.ne[0] * pp[i].value.ne[1]; e++, q++) a[s].want[q] = pp[i].value.data[e];
        resbm_model_free(fresh);
    }
    for (s = 0; s < 3; s++) pthread_create(&th[s], NULL, reload_thread, &a[s]);
    for (s = 0; s < 3; s++) pthread_join(th[s], NULL);
    for (s = 0; s < 3; s++) {
        CHECK(a[s].rc == RESBM_OK, "stage %d: %s", s, resbm_strerror(a[s].rc));
        CHECK(a[s].same, "stage %d: not the loaded checkpoint after the flush", s);
        resbm_stage_free(a[s].st);
        free(a[s].want);
    }
    resbm_inproc_free(hub);
}

/* A forward of fewer rows than the slot holds (sampling, a short eval chunk) gives each row what
   a full one gives it: stage 0's z for row 0 is the same with 1 row or 3 (through the encoder,
   and through the raw residual at r = d). */
static void test_partial_rows_through_boundary(void) {
    resbm_model_config c = tiny_config();
    int32_t tok[3 * 8];
    size_t T = (size_t)c.seq, i;
    int rr;
    resbm_rng g;
    resbm_rng_seed(&g, 4, 4);
    for (i = 0; i < 3 * T; i++) tok[i] = (int32_t)(resbm_rng_u32(&g) % (uint32_t)c.vocab);
    for (rr = 0; rr < 2; rr++) {
        resbm_model *m = NULL;
        float z1[8 * 16], z3[3 * 8 * 16];
        size_t w;
        c.stages = 2; c.r = rr ? 0 : 3; c.batch = 3;
        CHECK_RC(resbm_model_init(&c, NULL, &m), RESBM_OK);
        if (!m) return;
        w = rr ? (size_t)c.d : 3;
        /* the short one first, into a fresh slot: nothing of a full forward is left to find */
        CHECK_RC(resbm_model_forward(m, 0, tok, NULL, NULL, 1, z1, NULL), RESBM_OK);
        CHECK_RC(resbm_model_release(m, 0), RESBM_OK);
        CHECK_RC(resbm_model_forward(m, 0, tok, NULL, NULL, 3, z3, NULL), RESBM_OK);
        CHECK(!memcmp(z1, z3, T * w * sizeof(float)), "r=%zu: row 0 differs between 1 and 3 rows", w);
        resbm_model_free(m);
    }
}

/* (2) one stage == resbm_model_train_step; (3) 1 vs 2 kernel threads per stage, same bits. */
static void test_pipeline_single_stage_and_threads(void) {
    resbm_model_config mc = pipe_config();
    resbm_opt_config oc = resbm_opt_config_default();
    pipe_arg a[PIPE_MAX], b[PIPE_MAX];
    resbm_model *m;
    int32_t tok[256], tg[256];
    size_t np, i;
    int step, s;
    float loss;
    mc.stages = 1; mc.batch = 2; mc.r = 0;
    oc.kind = RESBM_OPT_MUON;
    CHECK(run_pipeline(a, mc, oc, 3, RESBM_WIRE_F32, RESBM_WIRE_F32, PIPE_STEPS) == 0, "pipeline");
    mc.batch = 6;
    CHECK_RC(resbm_model_init(&mc, &oc, &m), RESBM_OK);
    if (th_fail_now) return;
    for (step = 0; step < PIPE_STEPS; step++) {
        pipe_batch(tok, tg, &mc, 6, step);
        CHECK_RC(resbm_model_train_step(m, tok, tg, 6, 3, &loss), RESBM_OK);
        CHECK(loss == a[0].loss[step], "step %d: %.9g vs %.9g", step, loss, a[0].loss[step]);
    }
    {
        const resbm_param *pp = resbm_model_params(resbm_stage_model(a[0].st), &np);
        const resbm_param *pr = resbm_model_params(m, NULL);
        for (i = 0; i < np; i++)
            CHECK(!memcmp(pp[i].value.data, pr[i].value.data, pp[i].value.ne[0] * pp[i].value.ne[1] * 4), "%s", pp[i].name);
    }
    resbm_stage_free(a[0].st);
    resbm_model_free(m);
    mc = pipe_config();
    mc.threads = 1;
    CHECK(run_pipeline(a, mc, oc, 2, RESBM_WIRE_BF16, RESBM_WIRE_I8, 2) == 0, "pipeline, 1 thread");
    mc.threads = 2;
    CHECK(run_pipeline(b, mc, oc, 2, RESBM_WIRE_BF16, RESBM_WIRE_I8, 2) == 0, "pipeline, 2 threads");
    if (th_fail_now) return;
    for (s = 0; s < mc.stages; s++) {
        const resbm_param *pa = resbm_model_params(resbm_stage_model(a[s].st), &np);
        const resbm_param *pb = resbm_model_params(resbm_stage_model(b[s].st), NULL);
        for (i = 0; i < np; i++)
            CHECK(!memcmp(pa[i].value.data, pb[i].value.data, pa[i].value.ne[0] * pa[i].value.ne[1] * 4), "%s", pa[i].name);
        CHECK(a[s].loss[1] == b[s].loss[1], "loss");
        resbm_stage_free(a[s].st);
        resbm_stage_free(b[s].st);
    }
}

/* (4) bytes on the wire == frames x header + payload; the compression factor against an f32
   r == d pipeline of the same shape; activation slots bounded by S - s. */
static void test_pipeline_wire_bytes(void) {
    resbm_model_config mc = pipe_config();
    resbm_opt_config oc = resbm_opt_config_default();
    pipe_arg a[PIPE_MAX], u[PIPE_MAX];
    int S = mc.stages, n = 4, s, dt;
    size_t Nmb = (size_t)mc.seq, r = 4, d = (size_t)mc.d;
    for (dt = 0; dt < 4; dt++) {
        resbm_stage_stats st;
        memset(&st, 0, sizeof(st));
        uint64_t fwd = 0, bwd = 0, base = 0, prev_sent = 0;
        size_t pb;
        CHECK(run_pipeline(a, mc, oc, n, dt, RESBM_WIRE_I8, 2) == 0, "pipeline dtype %d", dt);
        if (th_fail_now) return;
        for (s = 0; s < S; s++) {
            resbm_stage_get_stats(a[s].st, &st);
            resbm_wire_payload_bytes(dt, Nmb, r, &pb);
            CHECK(st.bytes_sent[RESBM_KIND_ACT] == (s < S - 1 ? (uint64_t)(2 * n) * (40 + pb) : 0),
                  "stage %d act bytes %llu", s, (unsigned long long)st.bytes_sent[RESBM_KIND_ACT]);
            resbm_wire_payload_bytes(RESBM_WIRE_I8, Nmb, r, &pb);
            CHECK(st.bytes_sent[RESBM_KIND_GRAD] == (s > 0 ? (uint64_t)(2 * n) * (40 + pb) : 0),
                  "stage %d grad bytes %llu", s, (unsigned long long)st.bytes_sent[RESBM_KIND_GRAD]);
            /* per neighbour: one hello (the job agreement), then per step the norm or the commit */
            CHECK(st.frames_sent[RESBM_KIND_CONTROL] == (uint64_t)(3 * ((s > 0) + (s < S - 1))), "control frames");
            CHECK(st.bytes_recv[RESBM_KIND_ACT] == (s > 0 ? prev_sent : 0), "stage %d received act bytes", s);
            prev_sent = st.bytes_sent[RESBM_KIND_ACT];
            CHECK(resbm_model_get_config(resbm_stage_model(a[s].st))->act_slots == (S - s < n ? S - s : n), "slots");
            fwd += st.bytes_sent[RESBM_KIND_ACT];
            bwd += st.bytes_sent[RESBM_KIND_GRAD];
            resbm_stage_free(a[s].st);
        }
        base = (uint64_t)(S - 1) * 2 * 2 * (uint64_t)n * (40 + 4 * Nmb * d); /* f32, r = d, both ways */
        printf("    wire %s fwd + i8 bwd: %llu bytes/2 steps, %.1fx less than f32 at r = d\n",
               dt == 0 ? "f32" : dt == 1 ? "bf16" : dt == 2 ? "f16" : "i8",
               (unsigned long long)(fwd + bwd), (double)base / (double)(fwd + bwd));
    }
    /* the uncompressed baseline really sends d floats per token */
    mc.r = 0;
    CHECK(run_pipeline(u, mc, oc, n, RESBM_WIRE_F32, RESBM_WIRE_F32, 1) == 0, "r = d pipeline");
    if (th_fail_now) return;
    for (s = 0; s < S; s++) {
        resbm_stage_stats st;
        memset(&st, 0, sizeof(st));
        resbm_stage_get_stats(u[s].st, &st);
        CHECK(st.bytes_sent[RESBM_KIND_ACT] == (s < S - 1 ? (uint64_t)n * (40 + 4 * Nmb * d) : 0), "r = d act bytes");
        printf("    stage %d holds %.2f MiB (%d activation slots)\n", s, st.memory_bytes / 1048576.0,
               resbm_model_get_config(resbm_stage_model(u[s].st))->act_slots);
        resbm_stage_free(u[s].st);
    }
}

/* Evaluation and sampling through the pipeline: every stage gets the same loss and the same
   tokens; the loss equals the stages' forwards run one after another. */
typedef struct { resbm_stage *st; int rc; float loss; int32_t out[8]; } evalgen_arg;
static const int32_t evalgen_prompt[3] = {5, 9, 2};
static void *evalgen_thread(void *p) {
    evalgen_arg *a = (evalgen_arg *)p;
    int32_t tok[3 * 16], tg[3 * 16];
    tiny_batch(tok, tg, 3 * 16, 64, 77);
    a->rc = resbm_stage_eval(a->st, tok, tg, 3, &a->loss);
    if (!a->rc) a->rc = resbm_stage_generate(a->st, evalgen_prompt, 3, 8, 0.8f, 42, a->out);
    return NULL;
}

static void test_pipeline_eval_generate(void) {
    resbm_model_config mc = pipe_config();
    resbm_inproc *hub;
    resbm_stage_config c = resbm_stage_config_default();
    resbm_stage *st[3];
    evalgen_arg ea[3];
    pthread_t th[3];
    int s, rep, S = mc.stages;
    int32_t first[8];
    mc.seq = 16; mc.vocab = 64;
    CHECK_RC(resbm_inproc_init(S, 1 << 20, &hub), RESBM_OK);
    for (s = 0; s < S; s++) {
        c.model = mc; c.model.stage = s; c.timeout_ms = 10000;
        resbm_inproc_transport(hub, s, &c.transport);
        CHECK_RC(resbm_stage_init(&c, &st[s]), RESBM_OK);
    }
    if (th_fail_now) return;
    for (rep = 0; rep < 2; rep++) {
        for (s = 0; s < S; s++) { memset(&ea[s], 0, sizeof(ea[s])); ea[s].st = st[s]; pthread_create(&th[s], NULL, evalgen_thread, &ea[s]); }
        for (s = 0; s < S; s++) { pthread_join(th[s], NULL); CHECK_RC(ea[s].rc, RESBM_OK); }
        for (s = 1; s < S; s++)
            CHECK(ea[s].loss == ea[0].loss && !memcmp(ea[s].out, ea[0].out, sizeof(ea[0].out)), "stage %d disagrees", s);
        for (s = 0; s < 8; s++) CHECK(ea[0].out[s] >= 0 && ea[0].out[s] < 64, "token %d", ea[0].out[s]);
        if (rep == 0) memcpy(first, ea[0].out, sizeof(first));
        else CHECK(!memcmp(first, ea[0].out, sizeof(first)), "sampling is not reproducible");
    }
    { /* the reference: the same stage models, one after another, in this thread */
        int32_t tok[3 * 16], tg[3 * 16];
        float z[16 * 4], z2[16 * 4], l;
        double sum = 0;
        int row;
        tiny_batch(tok, tg, 3 * 16, 64, 77);
        for (row = 0; row < 3; row++) {
            resbm_model *m0 = resbm_stage_model(st[0]), *m1 = resbm_stage_model(st[1]), *m2 = resbm_stage_model(st[2]);
            CHECK_RC(resbm_model_forward(m0, 0, tok + row * 16, NULL, NULL, 1, z, NULL), RESBM_OK);
            CHECK_RC(resbm_model_forward(m1, 0, NULL, z, NULL, 1, z2, NULL), RESBM_OK);
            CHECK_RC(resbm_model_forward(m2, 0, NULL, z2, tg + row * 16, 1, NULL, &l), RESBM_OK);
            resbm_model_release(m0, 0); resbm_model_release(m1, 0); resbm_model_release(m2, 0);
            sum += l;
        }
        CHECK((float)(sum / 3) == ea[0].loss, "eval %.9g vs sequential %.9g", ea[0].loss, (float)(sum / 3));
    }
    /* bad arguments are refused before anything is sent */
    CHECK_RC(resbm_stage_generate(st[0], NULL, 3, 1, 1.0f, 1, first), RESBM_EINVAL);
    CHECK_RC(resbm_stage_generate(st[0], evalgen_prompt, 3, 1, 0.0f, 1, first), RESBM_EINVAL);
    for (s = 0; s < S; s++) resbm_stage_free(st[s]);
    resbm_inproc_free(hub);
}

typedef struct { resbm_stage *st; int rc; float loss; } lone_arg;
static void *lone_step(void *p) {
    lone_arg *a = (lone_arg *)p;
    int32_t tok[256], tg[256];
    pipe_batch(tok, tg, &resbm_stage_model(a->st)->cfg, 1, 0);
    a->rc = resbm_stage_step(a->st, tok, tg, 1, &a->loss);
    return NULL;
}

/* Stages 0 and 1 of a 2-stage pipe_config() over one in-process hub. */
static int two_stages(resbm_inproc **hub, resbm_stage **st, size_t cap, int timeout_ms) {
    resbm_model_config mc = pipe_config();
    resbm_stage_config c = resbm_stage_config_default();
    int s, rc;
    mc.stages = 2; mc.layers = 2;
    if ((rc = resbm_inproc_init(2, cap, hub))) return rc;
    for (s = 0; s < 2; s++) {
        c.model = mc; c.model.stage = s; c.timeout_ms = timeout_ms;
        resbm_inproc_transport(*hub, s, &c.transport);
        if ((rc = resbm_stage_init(&c, &st[s]))) {
            if (s) resbm_stage_free(st[0]);
            resbm_inproc_free(*hub);
            return rc;
        }
    }
    return RESBM_OK;
}

/* A link an integrator might plug in: drops the first n frames a stage sends (stage 0's hello
   first) or its next control frame of one kind (an async commit, its acknowledgement, an eval's
   loss), replays one old activation forever on stage 1's receive, or calls back into the stage
   from inside its receive (an event loop dispatching the host's next job). */
typedef struct {
    resbm_transport inner;
    resbm_stage *self;
    int drop_first, sent, replay, nested_rc, nest;
    int drop_ctl;                 /* drop the next control frame whose micro field, without its
                                     attempt, is drop_what */
    uint32_t drop_what;
    int meddle_at, recvs, meddled[6]; /* calls on the stage's own model from inside receive
                                         number meddle_at (1, 2, ...) */
    const char *ckpt;             /* a checkpoint of it to load there */
    char why[160];
    long replays;
    unsigned char saved[4096];
    size_t saved_len;
} odd_link;

static int odd_send(void *u, int peer, const void *buf, size_t len) {
    odd_link *l = (odd_link *)u;
    resbm_frame_info f;
    if (l->sent++ < l->drop_first) return RESBM_OK; /* lost on the way */
    if (l->drop_ctl && !resbm_frame_peek(buf, len, &f) && f.kind == RESBM_KIND_CONTROL &&
        (f.micro & 0xffffffu) == l->drop_what) {
        l->drop_ctl = 0;
        return RESBM_OK;
    }
    return l->inner.send(l->inner.user, peer, buf, len);
}

static int odd_recv(void *u, int peer, void *buf, size_t cap, size_t *len, int timeout_ms) {
    odd_link *l = (odd_link *)u;
    int rc;
    if (l->nest) { /* the host's next job, run from inside this call */
        int32_t tok[256], tg[256];
        l->nest = 0;
        pipe_batch(tok, tg, &resbm_stage_model(l->self)->cfg, 1, 0);
        l->nested_rc = resbm_stage_step(l->self, tok, tg, 1, NULL);
    }
    if (++l->recvs == l->meddle_at) { /* the host's other jobs on the model the stage runs */
        resbm_model *m = resbm_stage_model(l->self);
        double sq;
        l->meddled[0] = resbm_model_update(m, 1.0f);
        l->meddled[1] = resbm_model_zero_grad(m);
        l->meddled[2] = resbm_model_rollback(m);
        l->meddled[3] = resbm_model_grad_sqnorm(m, &sq);
        l->meddled[4] = resbm_checkpoint_save(tmp_path("meddle_out.safetensors"), &m, 1, NULL, 0);
        l->meddled[5] = resbm_checkpoint_load(l->ckpt, &m, 1, l->why, sizeof(l->why));
    }
    if (l->replay && l->replays < 5000 && l->saved_len && l->saved_len <= cap) { /* an old frame,
                                                                    again and again */
        struct timespec ms = {0, 1000000};
        l->replays++;
        nanosleep(&ms, NULL);
        memcpy(buf, l->saved, l->saved_len);
        *len = l->saved_len;
        return RESBM_OK;
    }
    rc = l->inner.recv(l->inner.user, peer, buf, cap, len, timeout_ms);
    if (!rc && !l->saved_len && *len >= 40 && *len <= sizeof(l->saved) && ((unsigned char *)buf)[6] == RESBM_KIND_ACT) {
        memcpy(l->saved, buf, *len);
        l->saved_len = *len;
    }
    return rc;
}

static int odd_stages_with(resbm_inproc **hub, resbm_stage **st, odd_link *link, const int *timeout_ms,
                           int schedule) {
    resbm_model_config mc = pipe_config();
    resbm_stage_config c = resbm_stage_config_default();
    int s, rc;
    mc.stages = 2; mc.layers = 2;
    if ((rc = resbm_inproc_init(2, 1 << 20, hub))) return rc;
    for (s = 0; s < 2; s++) {
        memset(&link[s], 0, sizeof(link[s]));
        c.model = mc; c.model.stage = s; c.timeout_ms = timeout_ms[s]; c.schedule = schedule;
        resbm_inproc_transport(*hub, s, &link[s].inner);
        c.transport.user = &link[s]; c.transport.send = odd_send; c.transport.recv = odd_recv;
        if ((rc = resbm_stage_init(&c, &st[s]))) return rc;
        link[s].self = st[s];
    }
    return RESBM_OK;
}
static int odd_stages(resbm_inproc **hub, resbm_stage **st, odd_link *link, int timeout_ms) {
    int t[2];
    t[0] = t[1] = timeout_ms;
    return odd_stages_with(hub, st, link, t, RESBM_SCHEDULE_EXACT);
}

static void step_pair(resbm_stage **st, lone_arg *la) {
    pthread_t th[2];
    int s;
    for (s = 0; s < 2; s++) { la[s].st = st[s]; pthread_create(&th[s], NULL, lone_step, &la[s]); }
    for (s = 0; s < 2; s++) pthread_join(th[s], NULL);
}

/* A lost hello is repaired (the transport contract allows a lost message): the next calls say
   hello again, and the stages train on. Before, neither side ever sent another and every call
   timed out forever. */
static void test_lost_hello_repaired(void) {
    resbm_inproc *hub;
    resbm_stage *st[2];
    odd_link link[2];
    lone_arg la[2];
    int call, ok = 0;
    CHECK_RC(odd_stages(&hub, st, link, 300), RESBM_OK);
    if (th_fail_now) return;
    link[0].drop_first = 1; /* stage 0's hello */
    for (call = 0; call < 6 && !ok; call++) {
        step_pair(st, la);
        ok = la[0].rc == RESBM_OK && la[1].rc == RESBM_OK;
    }
    CHECK(ok, "still failing after %d calls: %s / %s (%s)", call, resbm_strerror(la[0].rc), resbm_strerror(la[1].rc),
          resbm_stage_why(st[1]));
    CHECK(resbm_model_step_count(resbm_stage_model(st[0])) == 1 && resbm_model_step_count(resbm_stage_model(st[1])) == 1,
          "steps %ld / %ld", resbm_model_step_count(resbm_stage_model(st[0])), resbm_model_step_count(resbm_stage_model(st[1])));
    resbm_stage_free(st[0]); resbm_stage_free(st[1]);
    resbm_inproc_free(hub);
}

/* A call from inside a callback of the same stage is refused (RESBM_ESTATE) and changes nothing;
   before, it ran a whole step and the outer call then trained on the next step's frames. And
   stale frames that keep coming do not stretch a receive past its timeout. */
static void test_stage_reentry_and_endless_stale(void) {
    resbm_inproc *hub;
    resbm_stage *st[2];
    odd_link link[2];
    lone_arg la[2];
    CHECK_RC(odd_stages(&hub, st, link, 300), RESBM_OK);
    if (th_fail_now) return;
    link[1].nest = 1;
    link[1].nested_rc = 12345;
    step_pair(st, la);
    CHECK_RC(link[1].nested_rc, RESBM_ESTATE);
    CHECK(la[0].rc == RESBM_OK && la[1].rc == RESBM_OK, "%s / %s", resbm_strerror(la[0].rc), resbm_strerror(la[1].rc));
    CHECK(resbm_model_step_count(resbm_stage_model(st[1])) == 1, "stage 1 at step %ld",
          resbm_model_step_count(resbm_stage_model(st[1])));
    /* step 1: stage 1 receives step 0's first activation, again and again, 1 ms apart */
    CHECK(link[1].saved_len > 0, "no activation seen");
    link[1].replay = 1;
    la[1].st = st[1];
    lone_step(&la[1]);
    CHECK_RC(la[1].rc, RESBM_ETIMEDOUT);
    CHECK(link[1].replays < 2500, "the receive ran on for %ld stale frames (timeout 300 ms, 1 ms apart; past it, 1024 more at most)",
          link[1].replays);
    link[1].replay = 0;
    resbm_stage_free(st[0]); resbm_stage_free(st[1]);
    resbm_inproc_free(hub);
}

/* The stage holds its model for the whole of each call: the model's own entries called from a
   callback in the middle of a step (an update, a rollback, a checkpoint save or load) are refused
   with RESBM_ESTATE, and the step ends exactly as it would have without them. Before, they ran:
   an update mid-step applied the half-accumulated gradients and moved the step count. */
static void test_model_held_by_its_stage(void) {
    resbm_inproc *hub[2];
    resbm_stage *st[2][2];
    odd_link link[2][2];
    lone_arg la[2];
    resbm_model *m;
    float *plain[2];
    const char *changed;
    int s, k;
    for (k = 0; k < 2; k++) {
        CHECK_RC(odd_stages(&hub[k], st[k], link[k], 1000), RESBM_OK);
        if (th_fail_now) return;
    }
    m = resbm_stage_model(st[1][0]);
    CHECK_RC(resbm_checkpoint_save(tmp_path("meddle_in.safetensors"), &m, 1, NULL, 0), RESBM_OK);
    link[1][0].ckpt = tmp_path("meddle_in.safetensors");
    for (k = 0; k < 2; k++) { /* pair 0 as it is; pair 1 with the host meddling in stage 0's last
                                 receive of the step (its gradients are all there by then) */
        link[1][0].meddle_at = link[0][0].recvs;
        step_pair(st[k], la);
        CHECK(la[0].rc == RESBM_OK && la[1].rc == RESBM_OK, "pair %d: %s / %s", k, resbm_strerror(la[0].rc),
              resbm_strerror(la[1].rc));
    }
    CHECK(link[1][0].recvs == link[0][0].recvs && link[0][0].recvs >= 2, "receives %d / %d", link[1][0].recvs,
          link[0][0].recvs);
    for (k = 0; k < 6; k++) CHECK(link[1][0].meddled[k] == RESBM_ESTATE, "call %d: %s", k, resbm_strerror(link[1][0].meddled[k]));
    CHECK(strstr(link[1][0].why, "in use") != NULL, "why: '%s'", link[1][0].why);
    for (s = 0; s < 2; s++) {
        plain[s] = params_snapshot(resbm_stage_model(st[0][s]));
        changed = params_changed(resbm_stage_model(st[1][s]), plain[s]);
        CHECK(changed == NULL, "stage %d: %s differs from the undisturbed pipeline's", s, changed);
        CHECK(resbm_model_step_count(resbm_stage_model(st[1][s])) == 1, "stage %d at step %ld", s,
              resbm_model_step_count(resbm_stage_model(st[1][s])));
        free(plain[s]);
    }
    /* between calls the model is the host's again */
    CHECK_RC(resbm_model_rollback(m), RESBM_OK);
    CHECK_RC(resbm_checkpoint_load(tmp_path("meddle_in.safetensors"), &m, 1, NULL, 0), RESBM_OK);
    { /* a model listed twice is held once */
        resbm_model *twice[2];
        twice[0] = twice[1] = m;
        CHECK_RC(resbm_checkpoint_load(tmp_path("meddle_in.safetensors"), twice, 2, NULL, 0), RESBM_OK);
        CHECK_RC(resbm_model_zero_grad(m), RESBM_OK); /* and let go */
    }
    for (k = 0; k < 2; k++) {
        for (s = 0; s < 2; s++) resbm_stage_free(st[k][s]);
        resbm_inproc_free(hub[k]);
    }
    remove(tmp_path("meddle_in.safetensors"));
    remove(tmp_path("meddle_out.safetensors"));
}

static void *lone_flush(void *p) {
    lone_arg *a = (lone_arg *)p;
    a->rc = resbm_stage_flush(a->st, &a->loss);
    return NULL;
}

/* An async flush that loses a frame, each stage's host calling flush again after a failure:
   (a) stage 0's commit lost, stage 0 the first to time out on its acknowledgement: it undoes the
   update it had applied, so both stages end the failed flush at the same step (before, it kept
   it: its abort named the step after, which stage 1 dropped as stale, and the retried flush
   returned OK on both, one update apart); (b) stage 1's acknowledgement lost, stage 1 the first
   to time out: stage 0 keeps the update stage 1 kept (a stage undid it on any failure, once). */
static void test_flush_lost_frame(void) {
    int t[2][2] = {{200, 1500}, {1500, 200}}, c, s, k;
    for (c = 0; c < 2; c++) {
        resbm_inproc *hub;
        resbm_stage *st[2];
        odd_link link[2];
        lone_arg la[2];
        pthread_t th[2];
        CHECK_RC(odd_stages_with(&hub, st, link, t[c], RESBM_SCHEDULE_ASYNC), RESBM_OK);
        if (th_fail_now) return;
        for (k = 0; k < 4; k++) {
            step_pair(st, la);
            CHECK(la[0].rc == RESBM_OK && la[1].rc == RESBM_OK, "case %d, async step %d: %s / %s", c, k,
                  resbm_strerror(la[0].rc), resbm_strerror(la[1].rc));
        }
        link[c].drop_ctl = 1;
        link[c].drop_what = c == 0 ? 1 : 2; /* training frames #1 (the commit) and #2 (its ack) */
        for (k = 0; k < 2; k++) { /* the flush that loses the frame, then the retry */
            for (s = 0; s < 2; s++) { la[s].st = st[s]; pthread_create(&th[s], NULL, lone_flush, &la[s]); }
            for (s = 0; s < 2; s++) pthread_join(th[s], NULL);
            if (k == 0)
                CHECK(la[0].rc != RESBM_OK && la[1].rc != RESBM_OK, "case %d, the failed flush: %s / %s", c,
                      resbm_strerror(la[0].rc), resbm_strerror(la[1].rc));
            CHECK(resbm_model_step_count(resbm_stage_model(st[0])) == resbm_model_step_count(resbm_stage_model(st[1])),
                  "case %d, flush %d: stage 0 at step %ld, stage 1 at %ld", c, k,
                  resbm_model_step_count(resbm_stage_model(st[0])), resbm_model_step_count(resbm_stage_model(st[1])));
        }
        CHECK(link[c].drop_ctl == 0, "case %d: nothing was dropped", c);
        for (k = 0; k < 2; k++) step_pair(st, la);
        CHECK(la[0].rc == RESBM_OK && la[1].rc == RESBM_OK, "case %d, the steps after: %s / %s", c,
              resbm_strerror(la[0].rc), resbm_strerror(la[1].rc));
        for (s = 0; s < 2; s++) resbm_stage_free(st[s]);
        resbm_inproc_free(hub);
    }
}

/* A missing or closed peer fails the step with a clear code, applies no update, and the same
   step can be retried. */
static void test_pipeline_failures(void) {
    resbm_inproc *hub;
    resbm_stage_config c = resbm_stage_config_default();
    resbm_stage *st[2];
    lone_arg la[2];
    pthread_t th[2];
    float *before;
    const char *changed;
    int s;
    CHECK_RC(two_stages(&hub, st, 1 << 20, 1500), RESBM_OK); /* a real step runs within it */
    if (th_fail_now) return;
    before = params_snapshot(resbm_stage_model(st[1]));
    la[1].st = st[1];
    lone_step(&la[1]); /* stage 0 never runs */
    CHECK_RC(la[1].rc, RESBM_ETIMEDOUT);
    changed = params_changed(resbm_stage_model(st[1]), before);
    CHECK(changed == NULL, "%s changed", changed);
    CHECK(resbm_model_step_count(resbm_stage_model(st[1])) == 0, "an update was applied");
    /* the retry, with both stages */
    for (s = 0; s < 2; s++) { la[s].st = st[s]; pthread_create(&th[s], NULL, lone_step, &la[s]); }
    for (s = 0; s < 2; s++) { pthread_join(th[s], NULL); CHECK_RC(la[s].rc, RESBM_OK); }
    CHECK(la[0].loss == la[1].loss && la[0].loss > 0, "loss on every stage");
    /* a closed peer surfaces as RESBM_ECLOSED, well before the timeout */
    resbm_inproc_close(hub, 0);
    lone_step(&la[1]);
    CHECK_RC(la[1].rc, RESBM_ECLOSED);
    CHECK(resbm_model_step_count(resbm_stage_model(st[1])) == 1, "steps");
    c.model = resbm_stage_model(st[0])->cfg; /* a valid config but for one field */
    resbm_inproc_transport(hub, 0, &c.transport);
    c.n_micro = -1;
    CHECK_RC(resbm_stage_init(&c, &st[0]), RESBM_EINVAL);
    c.n_micro = 1; c.wire_fwd = 9;
    CHECK_RC(resbm_stage_init(&c, &st[0]), RESBM_EINVAL);
    for (s = 0; s < 2; s++) resbm_stage_free(st[s]);
    resbm_inproc_free(hub);
    free(before);
}
#endif

#ifndef RESBM_NO_THREADS
/* A link whose send blocks for len / bps, as a blocking socket on a slow line does: the receiver
   sees nothing until the whole frame has crossed. */
typedef struct { resbm_transport inner; double bps; } slow_link;
static int slow_send(void *u, int peer, const void *buf, size_t len) {
    slow_link *l = (slow_link *)u;
    double t = (double)len / l->bps;
    struct timespec ts;
    ts.tv_sec = (time_t)t; ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
    return l->inner.send(l->inner.user, peer, buf, len);
}
static int slow_recv(void *u, int peer, void *buf, size_t cap, size_t *len, int timeout_ms) {
    slow_link *l = (slow_link *)u;
    return l->inner.recv(l->inner.user, peer, buf, cap, len, timeout_ms);
}

/* The timeout rule: a frame that takes longer to cross than timeout_ms is a timeout unless the
   stage knows the link's bandwidth; then it waits timeout_ms + n_micro frames' transfer time.
   (552-byte frames at 250 bytes/s take 2.2 s; timeout_ms is 1000: a second of slack either way.) */
static void test_pipeline_timeout_scales(void) {
    int pass;
    for (pass = 0; pass < 2; pass++) {
        resbm_model_config mc = pipe_config();
        resbm_inproc *hub;
        resbm_stage_config c = resbm_stage_config_default();
        resbm_stage *st[2];
        slow_link link[2];
        lone_arg la[2];
        pthread_t th[2];
        int s;
        mc.stages = 2; mc.layers = 2; mc.r = 0; /* r = d: 8 x 16 floats a frame */
        resbm_inproc_init(2, 1 << 20, &hub);
        for (s = 0; s < 2; s++) {
            c.model = mc; c.model.stage = s; c.timeout_ms = 1000;
            c.link_bytes_per_sec = pass ? 250.0 : 0.0;
            resbm_inproc_transport(hub, s, &link[s].inner);
            link[s].bps = 250.0;
            c.transport.user = &link[s]; c.transport.send = slow_send; c.transport.recv = slow_recv;
            CHECK_RC(resbm_stage_init(&c, &st[s]), RESBM_OK);
        }
        if (th_fail_now) return;
        for (s = 0; s < 2; s++) { la[s].st = st[s]; pthread_create(&th[s], NULL, lone_step, &la[s]); }
        for (s = 0; s < 2; s++) pthread_join(th[s], NULL);
        if (pass) {
            CHECK_RC(la[0].rc, RESBM_OK);
            CHECK_RC(la[1].rc, RESBM_OK);
        } else {
            CHECK_RC(la[1].rc, RESBM_ETIMEDOUT); /* the activation took 2.2 s > 1 s */
        }
        for (s = 0; s < 2; s++) resbm_stage_free(st[s]);
        resbm_inproc_free(hub);
    }
    { /* a bandwidth that is not a number is refused, so are a negative warm-up and a wild prediction */
        resbm_stage_config c = resbm_stage_config_default();
        resbm_inproc *hub;
        resbm_stage *st = NULL;
        resbm_inproc_init(1, 1 << 16, &hub);
        c.model = tiny_config();
        resbm_inproc_transport(hub, 0, &c.transport);
        c.link_bytes_per_sec = -1.0;
        CHECK_RC(resbm_stage_init(&c, &st), RESBM_EINVAL);
        c.link_bytes_per_sec = strtod("nan", NULL);
        CHECK_RC(resbm_stage_init(&c, &st), RESBM_EINVAL);
        c.link_bytes_per_sec = 0.0;
        c.schedule = RESBM_SCHEDULE_ASYNC;
        c.async_warmup = -1;
        CHECK_RC(resbm_stage_init(&c, &st), RESBM_EINVAL);
        c.async_warmup = 0;
        c.predict = 17.0f;
        CHECK_RC(resbm_stage_init(&c, &st), RESBM_EINVAL);
        CHECK(st == NULL, "out touched on failure");
        resbm_inproc_free(hub);
    }
}
#endif

#ifndef RESBM_NO_THREADS
/* Stage 0 of 2 played by a hostile peer; stage 1 (the last) receives. */
typedef struct { resbm_transport tr; int n, step; const void *frame; size_t len; int rc; } flood_arg;
static void *flood(void *p) {
    flood_arg *a = (flood_arg *)p;
    int k;
    for (k = 0; k < a->n && !a->rc; k++) a->rc = a->tr.send(a->tr.user, 1, a->frame, a->len);
    return NULL;
}

/* A hostile peer: garbage, frames for the wrong stage, step, microbatch, kind, dtype or shape, a
   flipped bit, a huge declared payload, a message larger than any frame, NaN and Inf, a flood of
   frames, a truncated frame and a close. The peer speaks the protocol up to the fault it injects
   (it says hello as stage 0 and tags each frame with the receiver's attempt, which counts its
   failures). Each step fails with the code for what was wrong, the receiving stage's parameters
   and step do not move, and an honest step still works after. */
static void test_hostile_peer(void) {
    resbm_model_config mc = pipe_config();
    resbm_inproc *hub;
    resbm_stage_config c = resbm_stage_config_default();
    resbm_stage *st[2];
    resbm_transport t0;
    resbm_frame_info f;
    float z[8 * 4], loss, *fp, commit[2] = {0.5f, 1.0f};
    const char *changed;
    unsigned char good[1024], bad[1 << 16];
    int32_t tok[8], tg[8];
    size_t len, glen, i;
    int s, k, rc, attempt = 0;
    struct { const char *what; int field, value, want; } cases[] = {
        {"to the wrong stage", 1, 0, RESBM_ESTAGE}, {"from the wrong stage", 2, 1, RESBM_ESTAGE},
        {"for another step", 3, 5, RESBM_ESTEP}, {"for another microbatch", 4, 3, RESBM_EMICRO},
        {"of another kind", 5, RESBM_KIND_GRAD, RESBM_EKIND}, {"of another dtype", 6, RESBM_WIRE_BF16, RESBM_EDTYPE},
        {"of another shape", 7, 7, RESBM_ESHAPE}};
    mc.stages = 2; mc.layers = 2; /* as two_stages: r = 4, an activation frame is 8 rows x 4 */
    CHECK_RC(two_stages(&hub, st, 1 << 18, 300), RESBM_OK);
    if (th_fail_now) return;
    resbm_inproc_transport(hub, 0, &t0);
    fp = params_snapshot(resbm_stage_model(st[1]));
    pipe_batch(tok, tg, &mc, 1, 0);
    for (i = 0; i < 32; i++) z[i] = 0.25f * (float)i - 3.0f;
    memset(&f, 0, sizeof(f));
    f.kind = RESBM_KIND_ACT; f.dtype = RESBM_WIRE_F32; f.from_stage = 0; f.to_stage = 1; f.rows = 8; f.cols = 4;
    CHECK_RC(resbm__stage_hello(st[0], 1, 0), RESBM_OK); /* stage 0's hello, as the peer's */
#define HOSTILE(buf, n, want, what) do { \
        CHECK_RC(t0.send(t0.user, 1, (buf), (n)), RESBM_OK); \
        rc = resbm_stage_step(st[1], NULL, tg, 1, &loss); \
        CHECK(rc == (want), "%s: %s, want %s", (what), resbm_strerror(rc), resbm_strerror(want)); \
        CHECK(resbm_stage_why(st[1])[0] != 0, "%s: no reason given", (what)); \
        attempt++; \
    } while (0)
    CHECK_RC(resbm_frame_encode(good, sizeof(good), &glen, &f, z), RESBM_OK);
    for (i = 0; i < 64; i++) bad[i] = (unsigned char)(i * 37 + 11); /* garbage */
    HOSTILE(bad, 64, RESBM_EMAGIC, "random bytes");
    HOSTILE(good, 20, RESBM_ETRUNC, "a header cut short");
    for (k = 0; k < (int)(sizeof(cases) / sizeof(cases[0])); k++) {
        resbm_frame_info g = f;
        unsigned char fb[1024];
        size_t fl;
        g.micro = (uint32_t)attempt << 24;
        if (cases[k].field == 1) g.to_stage = (unsigned)cases[k].value;
        if (cases[k].field == 2) g.from_stage = (unsigned)cases[k].value;
        if (cases[k].field == 3) g.step = (uint64_t)cases[k].value;
        if (cases[k].field == 4) g.micro |= (uint32_t)cases[k].value;
        if (cases[k].field == 5) g.kind = cases[k].value;
        if (cases[k].field == 6) g.dtype = cases[k].value;
        if (cases[k].field == 7) g.rows = (uint32_t)cases[k].value;
        CHECK_RC(resbm_frame_encode(fb, sizeof(fb), &fl, &g, z), RESBM_OK);
        HOSTILE(fb, fl, cases[k].want, cases[k].what);
    }
#define GOOD_FRAME() do { f.micro = (uint32_t)attempt << 24; \
        CHECK_RC(resbm_frame_encode(good, sizeof(good), &glen, &f, z), RESBM_OK); memcpy(bad, good, glen); } while (0)
    GOOD_FRAME(); bad[glen - 3] ^= 0x10; /* one payload bit */
    HOSTILE(bad, glen, RESBM_ECRC, "a flipped payload bit");
    GOOD_FRAME(); bad[32] = bad[33] = bad[34] = 0xff; bad[35] = 0x7f; /* 2 GB declared */
    put_crc(bad, glen);
    HOSTILE(bad, glen, RESBM_ESIZE, "a huge declared payload");
    z[5] = strtof("nan", NULL);
    CHECK_RC(resbm_frame_encode(good + 512, 512, &len, &f, z), RESBM_ENONFINITE); /* refused here */
    z[5] = 1.0f;
    GOOD_FRAME(); bad[40 + 4 * 5 + 3] = 0x7f; bad[40 + 4 * 5 + 2] = 0xc0; put_crc(bad, glen);
    HOSTILE(bad, glen, RESBM_ENONFINITE, "a NaN payload");
    GOOD_FRAME(); bad[40 + 3] = 0xff; bad[40 + 2] = 0x80; bad[41] = bad[40] = 0; put_crc(bad, glen);
    HOSTILE(bad, glen, RESBM_ENONFINITE, "an Inf payload");
    changed = params_changed(resbm_stage_model(st[1]), fp);
    CHECK(changed == NULL && resbm_model_step_count(resbm_stage_model(st[1])) == 0,
          "the receiver's parameters (%s) or step moved", changed ? changed : "-");
    memset(bad, 0x52, sizeof(bad)); /* larger than any frame this stage takes */
    HOSTILE(bad, sizeof(bad), RESBM_EMSGSIZE, "an oversized message");
    GOOD_FRAME();
    HOSTILE(good, glen, RESBM_EMSGSIZE, "a good frame behind it (the link stays blocked)");
    { /* the oversized message is still queued (a transport keeps what it cannot hand over):
         drain it and the good frame through stage 1's endpoint */
        resbm_transport t1;
        size_t got = 0;
        memset(&t1, 0, sizeof(t1));
        CHECK_RC(resbm_inproc_transport(hub, 1, &t1), RESBM_OK);
        CHECK_RC(t1.recv(t1.user, 0, bad, sizeof(bad), &got, 0), RESBM_OK);
        CHECK(got == sizeof(bad), "drained %zu", got);
        CHECK_RC(t1.recv(t1.user, 0, bad, sizeof(bad), &got, 0), RESBM_OK);
        CHECK_RC(t1.recv(t1.user, 0, bad, sizeof(bad), &got, 0), RESBM_ETIMEDOUT);
    }
    { /* every failure above was reported to stage 0 at once: one abort frame each, in order,
         carrying the code and the attempt (and the hello came first) */
        resbm_frame_info ab;
        float v[2];
        size_t got = 0;
        CHECK_RC(t0.recv(t0.user, 1, bad, sizeof(bad), &got, 0), RESBM_OK); /* stage 1's hello */
        for (k = 0; k < attempt; k++) {
            CHECK_RC(t0.recv(t0.user, 1, bad, sizeof(bad), &got, 0), RESBM_OK);
            CHECK_RC(resbm_frame_peek(bad, got, &ab), RESBM_OK);
            CHECK(ab.kind == RESBM_KIND_CONTROL && ab.micro == ((uint32_t)k << 24 | 4u << 20),
                  "abort %d: kind %d micro %#x", k, ab.kind, (unsigned)ab.micro);
            CHECK_RC(resbm_frame_decode(v, 2, bad, got, &ab), RESBM_OK);
            CHECK(v[0] < 0 && v[1] == 1.0f, "abort %d carries code %g from stage %g", k, v[0], v[1]);
        }
        CHECK_RC(t0.recv(t0.user, 1, bad, sizeof(bad), &got, 0), RESBM_ETIMEDOUT);
    }
    /* an honest step still works: the peer sends a good activation, and (stage 1 sends back the
       gradient and its norm) the commit [total, loss] */
    GOOD_FRAME();
    CHECK_RC(t0.send(t0.user, 1, good, glen), RESBM_OK);
    f.kind = RESBM_KIND_CONTROL; f.rows = 1; f.cols = 2; f.micro |= 1u; /* index 1: the commit */
    CHECK_RC(resbm_frame_encode(good, sizeof(good), &glen, &f, commit), RESBM_OK);
    CHECK_RC(t0.send(t0.user, 1, good, glen), RESBM_OK);
    f.kind = RESBM_KIND_ACT; f.rows = 8; f.cols = 4; f.micro &= ~1u;
    rc = resbm_stage_step(st[1], NULL, tg, 1, &loss);
    CHECK(rc == RESBM_OK, "honest step after the attacks: %s (%s)", resbm_strerror(rc), resbm_stage_why(st[1]));
    CHECK(resbm_model_step_count(resbm_stage_model(st[1])) == 1, "the honest step was applied");
    free(fp);
    fp = params_snapshot(resbm_stage_model(st[1]));
    { /* a flood of valid-looking activations: the mailbox bounds it (the sender blocks), the
         receiver takes the first and fails on the second where it expects a control frame */
        flood_arg fa;
        pthread_t ft;
        f.step = 1;
        f.micro = 0;
        CHECK_RC(resbm_frame_encode(good, sizeof(good), &glen, &f, z), RESBM_OK);
        fa.tr = t0; fa.n = 100000; fa.frame = good; fa.len = glen; fa.rc = 0;
        pthread_create(&ft, NULL, flood, &fa);
        rc = resbm_stage_step(st[1], NULL, tg, 1, &loss);
        CHECK(rc == RESBM_EKIND, "flood: %s", resbm_strerror(rc));
        resbm_inproc_close(hub, 0); /* releases the flooder */
        pthread_join(ft, NULL);
        CHECK(fa.rc == RESBM_ECLOSED, "flooder: %s", resbm_strerror(fa.rc));
    }
    changed = params_changed(resbm_stage_model(st[1]), fp);
    CHECK(changed == NULL && resbm_model_step_count(resbm_stage_model(st[1])) == 1,
          "the flood moved the receiver (%s)", changed ? changed : "step");
    free(fp);
    for (s = 0; s < 2; s++) resbm_stage_free(st[s]);
    resbm_inproc_free(hub);
    /* a truncated frame (after the hello), then the peer closes */
    CHECK_RC(two_stages(&hub, st, 1 << 18, 300), RESBM_OK);
    if (th_fail_now) return;
    resbm_inproc_transport(hub, 0, &t0);
    CHECK_RC(resbm__stage_hello(st[0], 1, 0), RESBM_OK);
    f.step = 0;
    f.micro = 0;
    CHECK_RC(resbm_frame_encode(good, sizeof(good), &glen, &f, z), RESBM_OK);
    attempt = 0;
    HOSTILE(good, glen - 7, RESBM_ETRUNC, "a truncated frame");
    resbm_inproc_close(hub, 0);
    rc = resbm_stage_step(st[1], NULL, tg, 1, &loss);
    CHECK(rc == RESBM_ECLOSED, "after the close: %s", resbm_strerror(rc));
    CHECK(resbm_model_step_count(resbm_stage_model(st[1])) == 0, "step moved");
#undef HOSTILE
#undef GOOD_FRAME
    for (s = 0; s < 2; s++) resbm_stage_free(st[s]);
    resbm_inproc_free(hub);
    (void)c;
}
#endif

#ifndef RESBM_NO_THREADS
static int send_frame(const resbm_transport *t, int to, const resbm_frame_info *f, const float *v) {
    unsigned char buf[1024];
    size_t len;
    int rc = resbm_frame_encode(buf, sizeof(buf), &len, f, v);
    return rc ? rc : t->send(t->user, to, buf, len);
}

/* Values a peer sends that decode as finite floats but cannot be right are refused with nothing
   applied: a negative squared gradient norm (either way: it would turn the clip off) and a
   generated token that is not a whole number. Two stages, one of them played by the test. */
static void test_peer_values_checked(void) {
    resbm_model_config mc = pipe_config();
    resbm_inproc *hub;
    resbm_stage *st[2];
    resbm_transport peer = {NULL, NULL, NULL};
    resbm_frame_info f;
    float z[8 * 4], bad_commit[2] = {-0.5f, 1.0f}, bad_norms[2] = {-1.0f, 1.0f}, half = 2.5f, loss, *fp;
    int32_t tok[8], tg[8], prompt[1] = {1}, out[1] = {-7};
    size_t i;
    int s, rc, real;
    mc.stages = 2; mc.layers = 2;
    pipe_batch(tok, tg, &mc, 1, 0);
    for (i = 0; i < 32; i++) z[i] = 0.125f * (float)i - 2.0f;
    for (real = 0; real < 3; real++) { /* 0: stage 0 gets bad norms; 1: stage 1 a bad commit; 2: a bad token */
        int fake = real == 1 ? 0 : 1, me = 1 - fake;
        CHECK_RC(two_stages(&hub, st, 1 << 18, 300), RESBM_OK);
        if (th_fail_now) return;
        resbm_inproc_transport(hub, fake, &peer);
        fp = params_snapshot(resbm_stage_model(st[me]));
        CHECK_RC(resbm__stage_hello(st[fake], me, 0), RESBM_OK); /* the fake stage's hello */
        memset(&f, 0, sizeof(f));
        f.from_stage = (unsigned)fake; f.to_stage = (unsigned)me; f.rows = 8; f.cols = 4;
        if (real == 0) {
            f.kind = RESBM_KIND_GRAD; f.dtype = RESBM_WIRE_F32;
            CHECK_RC(send_frame(&peer, me, &f, z), RESBM_OK);
            f.kind = RESBM_KIND_CONTROL; f.rows = 1; f.cols = 2; /* [stage 1's norm, the loss] */
            CHECK_RC(send_frame(&peer, me, &f, bad_norms), RESBM_OK);
            rc = resbm_stage_step(st[me], tok, NULL, 1, &loss);
        } else if (real == 1) {
            f.kind = RESBM_KIND_ACT; f.dtype = RESBM_WIRE_F32;
            CHECK_RC(send_frame(&peer, me, &f, z), RESBM_OK);
            f.kind = RESBM_KIND_CONTROL; f.rows = 1; f.cols = 2; f.micro = 1; /* the commit [total, loss] */
            CHECK_RC(send_frame(&peer, me, &f, bad_commit), RESBM_OK);
            rc = resbm_stage_step(st[me], NULL, tg, 1, &loss);
        } else {
            f.kind = RESBM_KIND_CONTROL; f.dtype = RESBM_WIRE_F32; f.rows = 1; f.cols = 1;
            f.micro = RESBM__MICRO(0, RESBM__FOR_GEN, 0);
            CHECK_RC(send_frame(&peer, me, &f, &half), RESBM_OK);
            rc = resbm_stage_generate(st[me], prompt, 1, 1, 1.0f, 3, out);
            CHECK(out[0] == -7, "the output was written: %d", (int)out[0]);
        }
        CHECK(rc == RESBM_ERANGE, "case %d: %s (%s)", real, resbm_strerror(rc), resbm_stage_why(st[me]));
        CHECK(params_changed(resbm_stage_model(st[me]), fp) == NULL &&
              resbm_model_step_count(resbm_stage_model(st[me])) == 0, "case %d: the stage moved", real);
        free(fp);
        for (s = 0; s < 2; s++) resbm_stage_free(st[s]);
        resbm_inproc_free(hub);
    }
}
#endif

#ifndef RESBM_NO_THREADS
/* The conformance check passes on the in-process transport and on the shaper around it, and
   catches a transport that breaks the contract (one that reports the wrong code for a message
   too large for the buffer). */
static int wrong_code_recv(void *u, int peer, void *buf, size_t cap, size_t *len, int timeout_ms) {
    resbm_transport *t = (resbm_transport *)u;
    int rc = t->recv(t->user, peer, buf, cap, len, timeout_ms);
    return rc == RESBM_EMSGSIZE ? RESBM_EINVAL : rc;
}
static int plain_send(void *u, int peer, const void *buf, size_t len) {
    resbm_transport *t = (resbm_transport *)u;
    return t->send(t->user, peer, buf, len);
}
static int errno_send(void *u, int peer, const void *buf, size_t len) { /* a socket's EAGAIN */
    (void)u; (void)peer; (void)buf; (void)len;
    return 11;
}
static void test_transport_check(void) {
    static unsigned char scratch[2 * 5000];
    resbm_inproc *hub;
    resbm_transport t0, t1, s0, s1, bad1;
    resbm_shaper *sh0, *sh1;
    char why[160];
    CHECK_RC(resbm_inproc_init(2, 1 << 16, &hub), RESBM_OK);
    if (th_fail_now) return;
    resbm_inproc_transport(hub, 0, &t0);
    resbm_inproc_transport(hub, 1, &t1);
    CHECK_RC(resbm_transport_check(&t0, 1, &t1, 0, 5000, scratch, sizeof(scratch), why, sizeof(why)), RESBM_OK);
    CHECK(why[0] == 0, "%s", why);
    CHECK_RC(resbm_shaper_init(&t0, 2, 0, 5, 5000, &sh0), RESBM_OK);
    CHECK_RC(resbm_shaper_init(&t1, 2, 0, 5, 5000, &sh1), RESBM_OK);
    resbm_shaper_transport(sh0, &s0);
    resbm_shaper_transport(sh1, &s1);
    CHECK_RC(resbm_transport_check(&s0, 1, &s1, 0, 5000, scratch, sizeof(scratch), why, sizeof(why)), RESBM_OK);
    CHECK(why[0] == 0, "shaper: %s", why);
    bad1.user = &t1; bad1.send = plain_send; bad1.recv = wrong_code_recv;
    CHECK(resbm_transport_check(&t0, 1, &bad1, 0, 5000, scratch, sizeof(scratch), why, sizeof(why)) != RESBM_OK &&
          strstr(why, "EMSGSIZE") != NULL, "a wrong code passed: \"%s\"", why);
    bad1.send = errno_send; /* recv (unused: the first send fails) stays wrong_code_recv */
    CHECK(resbm_transport_check(&bad1, 1, &t1, 0, 5000, scratch, sizeof(scratch), why, sizeof(why)) ==
              RESBM_ETRANSPORT && strstr(why, "returned 11") != NULL,
          "a code not a transport's, as success to rc < 0: \"%s\"", why);
    CHECK_RC(resbm_transport_check(&t0, 1, &t1, 0, 5000, scratch, 100, why, sizeof(why)), RESBM_EINVAL);
    resbm_shaper_free(sh0);
    resbm_shaper_free(sh1);
    resbm_inproc_free(hub);
}
#endif

/* ---- tests that the mutation runs showed missing ------------------------------------------------ */
/* bottleneck_lr_scale reaches AdamW's and Muon's updates of the bottleneck (and nothing else). */
static void test_bottleneck_lr_scale_all_optimizers(void) {
    int kinds[2] = {RESBM_OPT_ADAMW, RESBM_OPT_MUON}, ki;
    for (ki = 0; ki < 2; ki++) {
        resbm_model_config cfg = tiny_config();
        resbm_opt_config o = resbm_opt_config_default();
        resbm_model *m[2];
        size_t np, i;
        int k, differ = 0, same_elsewhere = 1;
        cfg.stages = 2; cfg.r = 4; cfg.m = 8;
        o.kind = kinds[ki]; o.warmup = 0;
        for (k = 0; k < 2; k++) {
            double **w;
            size_t j;
            o.bottleneck_lr_scale = k ? 2.0f : 1.0f;
            CHECK_RC(resbm_model_init(&cfg, &o, &m[k]), RESBM_OK);
            if (th_fail_now) return;
            w = set_grads(m[k], 11);
            resbm_model_params(m[k], &np);
            for (j = 0; j < np; j++) free(w[j]);
            free(w);
            CHECK_RC(resbm_model_update(m[k], 1.0f), RESBM_OK);
        }
        {
            const resbm_param *a = resbm_model_params(m[0], &np), *b = resbm_model_params(m[1], NULL);
            for (i = 0; i < np; i++) {
                int eq = !memcmp(a[i].value.data, b[i].value.data, a[i].value.ne[0] * a[i].value.ne[1] * 4);
                if (!strncmp(a[i].name, "bottleneck.", 11)) differ += !eq;
                else same_elsewhere &= eq;
            }
        }
        CHECK(differ == 3, "%s: %d of 3 bottleneck tensors moved by the scale", ki ? "muon" : "adamw", differ);
        CHECK(same_elsewhere, "%s: the scale moved a non-bottleneck tensor", ki ? "muon" : "adamw");
        resbm_model_free(m[0]);
        resbm_model_free(m[1]);
    }
}

/* Gradients of a 2-stage model with bottlenecks over two microbatches, against central finite
   differences of the mean loss: catches any buffer that carries one microbatch into the next. */
typedef struct { resbm_model *m0, *m1; const int32_t *tok, *tg; size_t T; } stages_fd;
static double stages_loss(stages_fd *c) {
    float z[64 * 4], l;
    double sum = 0;
    int k;
    for (k = 0; k < 2; k++) {
        resbm_model_forward(c->m0, 0, c->tok + k * 2 * c->T, NULL, NULL, 2, z, NULL);
        resbm_model_forward(c->m1, 0, NULL, z, c->tg + k * 2 * c->T, 2, NULL, &l);
        resbm_model_release(c->m0, 0); resbm_model_release(c->m1, 0);
        sum += l;
    }
    return sum / 2;
}
static void test_grad_stages_microbatches(void) {
    resbm_model_config c = tiny_config();
    resbm_opt_config o = resbm_opt_config_default();
    stages_fd f;
    int32_t tok[4 * 8], tg[4 * 8];
    float z[64 * 4], g[64 * 4], l;
    const char *names[] = {"bottleneck.0.enc_norm", "bottleneck.0.enc_w1", "bottleneck.0.enc_w2",
                           "blocks.0.wq", "bottleneck.0.dec_w1", "bottleneck.0.dec_w2", "blocks.1.w2"};
    int k, t;
    c.stages = 2; c.r = 4; c.m = 8; c.batch = 2;
    CHECK_RC(resbm_model_init(&c, &o, &f.m0), RESBM_OK);
    c.stage = 1;
    CHECK_RC(resbm_model_init(&c, &o, &f.m1), RESBM_OK);
    if (th_fail_now) return;
    { /* give the zero-initialised output projections values, so every path carries signal */
        size_t np, i, j;
        resbm_param *p;
        resbm_rng r;
        resbm_rng_seed(&r, 3, 3);
        for (k = 0; k < 2; k++) {
            p = resbm_model_params_mut(k ? f.m1 : f.m0, &np);
            for (i = 0; i < np; i++)
                if (strstr(p[i].name, "w2") && strstr(p[i].name, "bottleneck"))
                    for (j = 0; j < p[i].value.ne[0] * p[i].value.ne[1]; j++) p[i].value.data[j] = 0.2f * resbm_rng_normal(&r);
        }
    }
    tiny_batch(tok, tg, 4 * 8, c.vocab, 21);
    f.tok = tok; f.tg = tg; f.T = 8;
    resbm_model_zero_grad(f.m0);
    resbm_model_zero_grad(f.m1);
    for (k = 0; k < 2; k++) { /* two microbatches of 2 rows, accumulated */
        CHECK_RC(resbm_model_forward(f.m0, 0, tok + k * 16, NULL, NULL, 2, z, NULL), RESBM_OK);
        CHECK_RC(resbm_model_forward(f.m1, 0, NULL, z, tg + k * 16, 2, NULL, &l), RESBM_OK);
        CHECK_RC(resbm_model_backward(f.m1, 0, NULL, g, 0.5f), RESBM_OK);
        CHECK_RC(resbm_model_backward(f.m0, 0, g, NULL, 0.5f), RESBM_OK);
    }
    for (t = 0; t < (int)(sizeof(names) / sizeof(names[0])); t++) {
        size_t np, i;
        resbm_param *p = NULL;
        for (k = 0; k < 2 && !p; k++) {
            resbm_param *ps = resbm_model_params_mut(k ? f.m1 : f.m0, &np);
            for (i = 0; i < np; i++) if (!strcmp(ps[i].name, names[t])) p = &ps[i];
        }
        CHECK(p != NULL, "no %s", names[t]);
        if (!p) continue;
        for (i = 0; i < 3; i++) {
            size_t j = (i * 7 + 1) % (p->value.ne[0] * p->value.ne[1]);
            float keep = p->value.data[j], h = 1e-2f;
            double up, down, fd;
            p->value.data[j] = keep + h; up = stages_loss(&f);
            p->value.data[j] = keep - h; down = stages_loss(&f);
            p->value.data[j] = keep;
            fd = (up - down) / (2.0 * h);
            CHECK(fabs(fd - p->grad.data[j]) <= 2e-3 + 0.03 * fabs(fd), "%s[%zu]: backward %.6g, finite difference %.6g",
                  names[t], j, p->grad.data[j], fd);
        }
    }
    resbm_model_free(f.m0);
    resbm_model_free(f.m1);
}

/* The sampler against the rule it documents: softmax(logits / temperature) at the last position
   of the window, drawn with PCG32(seed, 0x5a); and the eval loss is the mean over rows, chunks of
   unequal size weighted by their rows. One stage, so no threads. */
static void test_generate_and_eval_oracles(void) {
    resbm_model_config mc = tiny_config();
    resbm_stage_config c = resbm_stage_config_default();
    resbm_inproc *hub;
    resbm_stage *st;
    resbm_model *ref;
    int32_t prompt[5] = {3, 1, 4, 1, 5}, out[6], want[6], win[8], tok[3 * 8], tg[3 * 8];
    float temps[2] = {0.7f, 1e-3f}, loss, l;
    double sum = 0;
    int ti, row;
    size_t i, j;
    mc.batch = 2;
    CHECK_RC(resbm_inproc_init(1, 1 << 16, &hub), RESBM_OK);
    c.model = mc;
    resbm_inproc_transport(hub, 0, &c.transport);
    CHECK_RC(resbm_stage_init(&c, &st), RESBM_OK);
    mc.act_slots = 1;
    CHECK_RC(resbm_model_init(&mc, NULL, &ref), RESBM_OK); /* the same seed: the same weights */
    if (th_fail_now) return;
    for (ti = 0; ti < 2; ti++) {
        resbm_rng rng;
        CHECK_RC(resbm_stage_generate(st, prompt, 5, 6, temps[ti], 99, out), RESBM_OK);
        resbm_rng_seed(&rng, 99, 0x5a);
        for (i = 0; i < 6; i++) {
            size_t have = 5 + i, len = have < 8 ? have : 8;
            const float *p;
            double w[64], total = 0, u, acc = 0, top = -1e300;
            for (j = 0; j < 8; j++) {
                size_t src = have - len + j;
                win[j] = j < len ? (src < 5 ? prompt[src] : want[src - 5]) : 0;
            }
            CHECK_RC(resbm_model_forward(ref, 0, win, NULL, win, 1, NULL, &l), RESBM_OK);
            p = resbm_model_probs(ref, 0) + (len - 1) * (size_t)mc.vocab;
            for (j = 0; j < (size_t)mc.vocab; j++) { w[j] = log((double)p[j]) / temps[ti]; if (w[j] > top) top = w[j]; }
            for (j = 0; j < (size_t)mc.vocab; j++) total += (w[j] = exp(w[j] - top));
            u = (double)(resbm_rng_u32(&rng) >> 8) / 16777216.0 * total;
            want[i] = 0;
            for (j = 0; j < (size_t)mc.vocab; j++) { acc += w[j]; if (u < acc) { want[i] = (int32_t)j; break; } }
            resbm_model_release(ref, 0);
        }
        CHECK(!memcmp(out, want, sizeof(out)), "temperature %g: sampled %d %d %d %d %d %d, the rule gives %d %d %d %d %d %d",
              temps[ti], out[0], out[1], out[2], out[3], out[4], out[5], want[0], want[1], want[2], want[3], want[4], want[5]);
    }
    tiny_batch(tok, tg, 3 * 8, mc.vocab, 31);
    CHECK_RC(resbm_stage_eval(st, tok, tg, 3, &loss), RESBM_OK); /* chunks of 2 rows and 1 */
    for (row = 0; row < 3; row++) {
        CHECK_RC(resbm_model_forward(ref, 0, tok + row * 8, NULL, tg + row * 8, 1, NULL, &l), RESBM_OK);
        resbm_model_release(ref, 0);
        sum += l;
    }
    CHECK_NEAR(loss, sum / 3, 1e-6);
    resbm_model_free(ref);
    resbm_stage_free(st);
    resbm_inproc_free(hub);
}

/* A save that fails half-way (the file size limit, as a full disk would) leaves the previous
   file whole and no temp file behind: the writer never writes the target in place. */
static void test_checkpoint_write_fails_cleanly(void) {
    resbm_model_config c = tiny_config();
    resbm_model *m;
    char path[128], why[256];
    pid_t pid;
    int status = -1, files = 0;
    DIR *d;
    struct dirent *e;
    snprintf(path, sizeof(path), "%s", tmp_path("resbm_test_full.safetensors"));
    CHECK_RC(resbm_model_init(&c, NULL, &m), RESBM_OK);
    if (th_fail_now) return;
    CHECK_RC(resbm_checkpoint_save(path, &m, 1, NULL, 0), RESBM_OK);
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        struct rlimit r;
        r.rlim_cur = r.rlim_max = 4096; /* far less than the file */
        signal(SIGXFSZ, SIG_IGN);
        setrlimit(RLIMIT_FSIZE, &r);
        m->pmem[0] = 42.0f;
        _exit(resbm_checkpoint_save(path, &m, 1, NULL, 0) == RESBM_EIO && errno == EFBIG ? 0 : 1);
    }
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the save under the size limit: not RESBM_EIO with errno EFBIG");
    CHECK_RC(resbm_checkpoint_load(path, &m, 1, why, sizeof(why)), RESBM_OK);
    CHECK(m->pmem[0] != 42.0f, "the failed save reached the file");
    d = opendir(tmp_dir);
    while (d && (e = readdir(d)) != NULL) files += !strncmp(e->d_name, "resbm_test_full", 15);
    if (d) closedir(d);
    CHECK(files == 1, "%d files: a temp file was left behind", files);
    remove(path);
    resbm_model_free(m);
}

/* Every parameter's values and optimizer state, concatenated (m and v where the optimizer has them). */
static float *state_snapshot(const resbm_model *m, size_t *count) {
    size_t np, i, n, off = 0;
    const resbm_param *ps = resbm_model_params(m, &np);
    float *snap = (float *)malloc(3 * resbm_model_num_floats(m) * sizeof(float) + 1);
    for (i = 0; snap && i < np; i++) {
        n = ps[i].value.ne[0] * ps[i].value.ne[1];
        memcpy(snap + off, ps[i].value.data, n * sizeof(float)); off += n;
        if (ps[i].m) { memcpy(snap + off, ps[i].m, n * sizeof(float)); off += n; }
        if (ps[i].v) { memcpy(snap + off, ps[i].v, n * sizeof(float)); off += n; }
    }
    *count = off;
    return snap;
}

/* Whole bytes of a file (NULL if it cannot be read); *len its size. */
static unsigned char *file_bytes(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    unsigned char *b = NULL;
    long n;
    *len = 0;
    if (!fp) return NULL;
    if (!fseek(fp, 0, SEEK_END) && (n = ftell(fp)) >= 0 && !fseek(fp, 0, SEEK_SET) &&
        (b = (unsigned char *)malloc((size_t)n + 1)) != NULL && fread(b, 1, (size_t)n, fp) == (size_t)n)
        *len = (size_t)n;
    fclose(fp);
    return b;
}

static void pool_nop(void *ctx, size_t t, int thread) { (void)ctx; (void)t; (void)thread; }
typedef struct { resbm_model *m; int rc; } update_inside_arg;
static void update_inside(void *ctx, size_t t, int thread) { /* while the model's pool is busy */
    update_inside_arg *a = (update_inside_arg *)ctx;
    (void)t; (void)thread;
    a->rc = resbm_model_update(a->m, 1.0f);
}

/* Calls refused for what they were given leave everything as it was: a pool asked for an
   impossible work buffer stays usable; an update refused on a busy pool keeps the last update's
   undo; a checkpoint the loader would refuse (repeated names or metadata keys) is never written
   over the good one; a tensor too large to describe is refused before any byte is written. */
static void test_refusals_leave_state(void) {
    const char *path = tmp_path("resbm_test_refusals.safetensors");
    resbm_model_config c = tiny_config();
    resbm_opt_config o = resbm_opt_config_default();
    resbm_pool *pool = NULL;
    resbm_model *m = NULL, *twice[2];
    int32_t tok[64], tg[64];
    float loss, *before, *after, x = 1.0f;
    size_t n0, n1, la, lb;
    unsigned char *fa, *fb;
    resbm_st_entry e[2];
    resbm_st_file *sf_dir = NULL;
    const char *dup_key[] = {"step", "7"}, *twin_keys[] = {"a", "1", "a", "2"};
    int k;
    CHECK_RC(resbm_pool_init(1, &pool), RESBM_OK);
    if (th_fail_now) return;
    CHECK_RC(resbm_pool_reserve(pool, ((size_t)-1) / 2), RESBM_EOVERFLOW);
    CHECK_RC(resbm_pool_reserve(pool, (size_t)-1), RESBM_EOVERFLOW); /* rounding up would wrap */
    CHECK_RC(resbm_pool_run(pool, pool_nop, NULL, 3), RESBM_OK);
    CHECK_RC(resbm_pool_reserve(pool, 100), RESBM_OK);
    for (k = 0; k < 2; k++) { /* AdamW, Muon */
        update_inside_arg a;
        o.kind = k ? RESBM_OPT_MUON : RESBM_OPT_ADAMW;
        c.batch = 2; c.pool = pool; c.threads = 1;
        CHECK_RC(resbm_model_init(&c, &o, &m), RESBM_OK);
        if (th_fail_now) { resbm_pool_free(pool); return; }
        tiny_batch(tok, tg, 2 * (size_t)c.seq, c.vocab, 3);
        CHECK_RC(resbm_model_train_step(m, tok, tg, 2, 1, &loss), RESBM_OK);
        before = state_snapshot(m, &n0);
        CHECK_RC(resbm_model_train_step(m, tok, tg, 2, 1, &loss), RESBM_OK);
        a.m = m; a.rc = 0;
        CHECK_RC(resbm_pool_run(pool, update_inside, &a, 1), RESBM_OK);
        CHECK(a.rc == RESBM_ESTATE, "opt %d: an update on a busy pool: %s", o.kind, resbm_strerror(a.rc));
        CHECK(resbm_model_step_count(m) == 2, "the refused update counted");
        CHECK_RC(resbm_model_rollback(m), RESBM_OK); /* the second step's undo survived */
        after = state_snapshot(m, &n1);
        CHECK(before && after && n0 == n1 && !memcmp(before, after, n0 * sizeof(float)),
              "opt %d: the rollback after a refused update did not restore the first step", o.kind);
        free(before); free(after);
        resbm_model_free(m);
    }
    o.kind = RESBM_OPT_ADAMW;
    c.pool = NULL;
    CHECK_RC(resbm_model_init(&c, &o, &m), RESBM_OK);
    if (th_fail_now) { resbm_pool_free(pool); return; }
    CHECK_RC(resbm_checkpoint_save(path, &m, 1, NULL, 0), RESBM_OK);
    fa = file_bytes(path, &la);
    CHECK_RC(resbm_model_train_step(m, tok, tg, 2, 1, &loss), RESBM_OK); /* so a new file would differ */
    CHECK_RC(resbm_checkpoint_save(path, &m, 1, dup_key, 1), RESBM_EINVAL); /* the library's own key */
    CHECK_RC(resbm_checkpoint_save(path, &m, 1, twin_keys, 2), RESBM_EINVAL);
    twice[0] = twice[1] = m;
    CHECK_RC(resbm_checkpoint_save(path, twice, 2, NULL, 0), RESBM_EINVAL); /* every name twice */
    { /* two stages of one job save together; stages of two jobs do not (the file has one
         config, so the loader refuses whatever would be written) */
        resbm_model_config cj = tiny_config();
        resbm_model *pair[2] = {NULL, NULL};
        int s, other;
        cj.stages = 2; cj.r = 4; cj.m = 8;
        for (other = 0; other < 2; other++) {
            for (s = 0; s < 2; s++) {
                cj.stage = s;
                cj.vocab = tiny_config().vocab + (other && s);
                CHECK_RC(resbm_model_init(&cj, &o, &pair[s]), RESBM_OK);
            }
            CHECK_RC(resbm_checkpoint_save(tmp_path("two_jobs.safetensors"), pair, 2, NULL, 0),
                     other ? RESBM_EINVAL : RESBM_OK);
            if (!other) CHECK_RC(resbm_checkpoint_load(tmp_path("two_jobs.safetensors"), pair, 2, NULL, 0), RESBM_OK);
            for (s = 0; s < 2; s++) resbm_model_free(pair[s]);
        }
        remove(tmp_path("two_jobs.safetensors"));
    }
    fb = file_bytes(path, &lb);
    CHECK(fa && fb && la == lb && !memcmp(fa, fb, la), "a refused save changed the last good file");
    free(fa); free(fb);
    memset(e, 0, sizeof(e));
    e[0].name = "a"; e[0].dtype = RESBM_DT_F32; e[0].ndim = 1; e[0].shape[0] = 1; e[0].data = &x;
    e[1] = e[0];
    CHECK_RC(resbm_safetensors_write(path, e, 2, NULL, 0), RESBM_EINVAL);
    e[1].name = "__metadata__";
    CHECK_RC(resbm_safetensors_write(path, e, 2, NULL, 0), RESBM_EINVAL);
    e[1].name = "b"; e[1].shape[0] = (size_t)-1 / 4 + 1; /* 4 bytes x this wraps to 0 */
    CHECK_RC(resbm_safetensors_write(path, e, 2, NULL, 0), RESBM_EOVERFLOW);
    e[1].ndim = 2; e[1].shape[0] = 0; e[1].shape[1] = (size_t)1000000000000000ULL; /* empty, but 16 digits */
    CHECK_RC(resbm_safetensors_write(path, e, 2, NULL, 0), RESBM_EOVERFLOW);
    e[1].shape[1] = (size_t)999999999999999ULL; /* 15 digits: the reader takes it */
    CHECK_RC(resbm_safetensors_write(path, e, 2, NULL, 0), RESBM_OK);
    {
        resbm_st_file *sf = NULL;
        CHECK_RC(resbm_safetensors_read(path, 1 << 20, &sf), RESBM_OK);
        resbm_safetensors_free(sf);
    }
    CHECK_RC(resbm_safetensors_read(tmp_dir, 1 << 20, &sf_dir), RESBM_EIO); /* a directory: at once */
    CHECK(errno == EISDIR, "a directory: errno %d", errno);
    CHECK_RC(resbm_checkpoint_save(path, &m, 1, NULL, 0), RESBM_OK); /* the good file back */
    fa = file_bytes(path, &la);
    fb = file_bytes(path, &lb);
    CHECK(fb && lb == la, "a refused write changed the file");
    free(fa); free(fb);
    remove(path);
    resbm_model_free(m);
    resbm_pool_free(pool);
}

/* An update is all or nothing for every value and every optimizer state element: a non-finite
   result anywhere (here the last element of the last parameter, the end of the last block of the
   one-pass update) leaves all of them as they were, and a rollback after a good update restores
   them bit for bit. AdamW, SGD (one pass) and Muon (separate passes), 1 and 2 threads. */
static void test_update_all_or_nothing(void) {
    int kinds[3] = {RESBM_OPT_ADAMW, RESBM_OPT_SGD, RESBM_OPT_MUON}, k, threads;
    for (threads = 1; threads <= 2; threads++)
        for (k = 0; k < 3; k++) {
            resbm_model_config c = tiny_config();
            resbm_opt_config o = resbm_opt_config_default();
            resbm_model *m = NULL;
            resbm_param *ps, *last;
            float *before, *after, loss, keep;
            size_t np, n0, n1, nl;
            int32_t tok[64], tg[64];
            int s;
            c.batch = 2; c.threads = threads;
            o.kind = kinds[k];
            if (o.kind == RESBM_OPT_SGD) o.lr = 0.1f;
            CHECK_RC(resbm_model_init(&c, &o, &m), RESBM_OK);
            if (th_fail_now) return;
            tiny_batch(tok, tg, 2 * (size_t)c.seq, c.vocab, 9);
            for (s = 0; s < 2; s++) CHECK_RC(resbm_model_train_step(m, tok, tg, 2, 1, &loss), RESBM_OK);
            ps = resbm_model_params_mut(m, &np);
            last = &ps[np - 1];
            nl = last->value.ne[0] * last->value.ne[1];
            /* the last element's update goes to Inf: AdamW (and Muon's AdamW part) through a huge
               first moment over a zero second one (so the step divides by eps), SGD through a huge
               value its gradient pushes past the float range */
            keep = last->value.data[nl - 1];
            if (last->m && last->v) { last->m[nl - 1] = 3e38f; last->v[nl - 1] = 0.0f; last->grad.data[nl - 1] = 0.0f; }
            else { last->value.data[nl - 1] = 3.4e38f; last->grad.data[nl - 1] = -3e38f; }
            before = state_snapshot(m, &n0);
            CHECK_RC(resbm_model_update(m, 1.0f), RESBM_ENONFINITE);
            after = state_snapshot(m, &n1);
            CHECK(before && after && n0 == n1 && !memcmp(before, after, n0 * sizeof(float)),
                  "opt %d, %d threads: a refused update changed a value or a state element", kinds[k], threads);
            CHECK(resbm_model_step_count(m) == 2, "the refused update counted as a step");
            CHECK_RC(resbm_model_rollback(m), RESBM_ESTATE);
            /* a good update, then its rollback: everything back, bit for bit */
            if (last->m && last->v) { last->m[nl - 1] = 0.0f; last->v[nl - 1] = 0.0f; }
            else last->grad.data[nl - 1] = 0.0f;
            last->value.data[nl - 1] = keep;
            free(before);
            before = state_snapshot(m, &n0);
            CHECK_RC(resbm_model_update(m, 1.0f), RESBM_OK);
            free(after);
            after = state_snapshot(m, &n1);
            CHECK(after && memcmp(before, after, n0 * sizeof(float)), "opt %d: the good update changed nothing", kinds[k]);
            CHECK_RC(resbm_model_rollback(m), RESBM_OK);
            free(after);
            after = state_snapshot(m, &n1);
            CHECK(after && !memcmp(before, after, n0 * sizeof(float)),
                  "opt %d, %d threads: the rollback left a value or a state element changed", kinds[k], threads);
            /* a gradient whose square overflows the second moment: the value stays finite, the
               state would not, so the update is refused all the same */
            if (last->m && last->v) {
                CHECK_RC(resbm_model_zero_grad(m), RESBM_OK);
                last->grad.data[0] = 1e20f;
                free(before);
                before = state_snapshot(m, &n0);
                CHECK_RC(resbm_model_update(m, 1.0f), RESBM_ENONFINITE);
                free(after);
                after = state_snapshot(m, &n1);
                CHECK(after && !memcmp(before, after, n0 * sizeof(float)),
                      "opt %d, %d threads: an overflowing moment was committed", kinds[k], threads);
            }
            free(before); free(after);
            resbm_model_free(m);
        }
    { /* Muon on a shared pool wider than cfg.threads: one Newton-Schulz scratch per pool thread,
         and the same bits as on a one-thread pool */
        resbm_model_config c = tiny_config();
        resbm_opt_config o = resbm_opt_config_default();
        resbm_model *a = NULL, *b = NULL;
        resbm_pool *wide = NULL;
        int32_t tok[64], tg[64];
        float la, lb, *sa, *sb;
        size_t na, nb;
        int s;
        o.kind = RESBM_OPT_MUON;
        c.batch = 2;
        CHECK_RC(resbm_pool_init(4, &wide), RESBM_OK);
        CHECK_RC(resbm_model_init(&c, &o, &a), RESBM_OK);
        c.pool = wide; c.threads = 1;
        CHECK_RC(resbm_model_init(&c, &o, &b), RESBM_OK);
        if (th_fail_now) { resbm_model_free(a); resbm_model_free(b); resbm_pool_free(wide); return; }
        tiny_batch(tok, tg, 2 * (size_t)c.seq, c.vocab, 4);
        for (s = 0; s < 3; s++) {
            CHECK_RC(resbm_model_train_step(a, tok, tg, 2, 1, &la), RESBM_OK);
            CHECK_RC(resbm_model_train_step(b, tok, tg, 2, 1, &lb), RESBM_OK);
        }
        sa = state_snapshot(a, &na); sb = state_snapshot(b, &nb);
        CHECK(sa && sb && na == nb && !memcmp(sa, sb, na * sizeof(float)) && la == lb,
              "Muon on a 4-thread shared pool differs from one thread");
        free(sa); free(sb);
        resbm_model_free(a); resbm_model_free(b); resbm_pool_free(wide);
    }
}

/* ---- regression tests for the fail-safe issue's bug list --------------------------------------- */
/* (2) Inf or absurd hyperparameters are refused at init; optimizer state outside its domain is
   refused at load or, when finite but absurd, makes the update fail with the model untouched. */
static void test_poisoned_updates(void) {
    resbm_model_config c = tiny_config();
    resbm_opt_config o;
    resbm_model *m = NULL;
    resbm_param *ps;
    float inf = strtof("inf", NULL), *snap, loss;
    const char *path = tmp_path("resbm_test_poison.safetensors");
    char why[256];
    int32_t tok[64], tg[64];
    size_t np, i;
    int k;
    for (k = 0; k < 7; k++) {
        o = resbm_opt_config_default();
        if (k == 0) o.lr = inf;
        if (k == 1) o.lr = 3e38f;
        if (k == 2) o.eps = inf;
        if (k == 3) o.clip = inf;
        if (k == 4) o.muon_lr = inf;
        if (k == 5) o.weight_decay = strtof("nan", NULL);
        if (k == 6) o.min_lr_frac = inf;
        CHECK_RC(resbm_model_init(&c, &o, &m), RESBM_EINVAL);
    }
    o = resbm_opt_config_default();
    c.batch = 2;
    CHECK_RC(resbm_model_init(&c, &o, &m), RESBM_OK);
    if (th_fail_now) return;
    CHECK_RC(resbm_checkpoint_save(path, &m, 1, NULL, 0), RESBM_OK);
    ps = resbm_model_params_mut(m, &np);
    ps[1].v[0] = -1.0f; /* a negative second moment: sqrt of it is NaN */
    CHECK_RC(resbm_checkpoint_save(path, &m, 1, NULL, 0), RESBM_OK); /* finite, so it saves */
    ps[1].v[0] = 0.0f;
    snap = params_snapshot(m);
    CHECK_RC(resbm_checkpoint_load(path, &m, 1, why, sizeof(why)), RESBM_EFORMAT);
    CHECK(strstr(why, "negative") != NULL, "reason: %s", why);
    CHECK(params_changed(m, snap) == NULL, "a refused load changed the model");
    /* m = 3e38 with v = 0: finite, loads, but the update would be Inf: refused, nothing moves */
    for (i = 0; i < ps[0].value.ne[0] * ps[0].value.ne[1]; i++) { ps[0].m[i] = 3e38f; ps[0].v[i] = 0.0f; }
    free(snap);
    snap = params_snapshot(m);
    tiny_batch(tok, tg, 2 * (size_t)c.seq, c.vocab, 5);
    CHECK_RC(resbm_model_train_step(m, tok, tg, 2, 1, &loss), RESBM_ENONFINITE);
    CHECK(params_changed(m, snap) == NULL && resbm_model_step_count(m) == 0, "the poisoned update was applied");
    CHECK(ps[0].m[0] == 3e38f && ps[0].v[0] == 0.0f, "optimizer state moved");
    CHECK_RC(resbm_model_rollback(m), RESBM_ESTATE); /* nothing applied, nothing to undo */
    memset(ps[0].m, 0, ps[0].value.ne[0] * ps[0].value.ne[1] * sizeof(float));
    CHECK_RC(resbm_model_train_step(m, tok, tg, 2, 1, &loss), RESBM_OK);
    CHECK(params_changed(m, snap) != NULL && resbm_model_step_count(m) == 1, "a good update is applied");
    CHECK_RC(resbm_model_rollback(m), RESBM_OK);
    CHECK(params_changed(m, snap) == NULL && resbm_model_step_count(m) == 0, "rollback restores it");
    /* (3) a non-finite model is not saved: the file keeps its last good content */
    CHECK_RC(resbm_checkpoint_save(path, &m, 1, NULL, 0), RESBM_OK);
    ps[2].value.data[0] = strtof("nan", NULL);
    CHECK_RC(resbm_checkpoint_save(path, &m, 1, NULL, 0), RESBM_ENONFINITE);
    CHECK_RC(resbm_checkpoint_load(path, &m, 1, why, sizeof(why)), RESBM_OK);
    CHECK(resbm__finite(ps[2].value.data[0]), "the good file was replaced");
    free(snap);
    resbm_model_free(m);
    remove(path);
}

/* (4) an i8 block whose 127 x scale overflows, or whose scale is negative, is refused. (11) the
   payload size of a hostile shape cannot wrap. */
static void test_wire_i8_scale_and_sizes(void) {
    resbm_frame_info f;
    unsigned char buf[512];
    float x[70], out[70];
    size_t len, i, b;
    float big = FLT_MAX, neg = -0.5f;
    uint32_t u;
    memset(&f, 0, sizeof(f));
    f.kind = RESBM_KIND_ACT; f.dtype = RESBM_WIRE_I8; f.rows = 7; f.cols = 10;
    for (i = 0; i < 70; i++) x[i] = (float)i - 30.0f;
    CHECK_RC(resbm_frame_encode(buf, sizeof(buf), &len, &f, x), RESBM_OK);
    CHECK_RC(resbm_frame_decode(out, 70, buf, len, &f), RESBM_OK);
    x[0] = out[0];
    memcpy(&u, &big, 4);
    for (b = 0; b < 4; b++) buf[40 + 68 + b] = (unsigned char)(u >> (8 * b)); /* the second block */
    put_crc(buf, len);
    CHECK_RC(resbm_frame_decode(out, 70, buf, len, &f), RESBM_ENONFINITE);
    memcpy(&u, &neg, 4);
    for (b = 0; b < 4; b++) buf[40 + b] = (unsigned char)(u >> (8 * b));
    for (b = 0; b < 4; b++) buf[40 + 68 + b] = buf[40 + b];
    put_crc(buf, len);
    CHECK_RC(resbm_frame_decode(out, 70, buf, len, &f), RESBM_ERANGE);
    CHECK(out[0] == x[0], "out written by a refused decode");
    CHECK_RC(resbm_wire_payload_bytes(RESBM_WIRE_I8, (size_t)-1 - 10, 1, &len), RESBM_EOVERFLOW);
    CHECK_RC(resbm_wire_payload_bytes(RESBM_WIRE_I8, (size_t)-1 / 2, 2, &len), RESBM_EOVERFLOW);
    CHECK_RC(resbm_wire_payload_bytes(RESBM_WIRE_I8, 65, 1, &len), RESBM_OK);
    CHECK(len == 65 + 8, "65 values: two scales (%zu)", len);
}

/* The i8 block encoder at other levels (RESBM_I8_LEVELS, the bench's narrower-dtype experiment):
   the scale absmax / L, every value on the grid -L..L, the absmax at +-L, each within half a step
   of its input; and the default build's frames are the block at RESBM_I8_LEVELS. */
static void test_wire_i8_levels(void) {
    static const int levels[] = {127, 7, 1};
    unsigned char q[4 + RESBM_I8_BLOCK];
    float x[40], scale;
    size_t i;
    int k, top;
    uint32_t u;
    for (i = 0; i < 40; i++) x[i] = (float)sin(1.7 * (double)i);
    x[13] = -2.5f; /* the absmax */
    for (k = 0; k < 3; k++) {
        int L = levels[k];
        resbm__i8_block(q, x, 40, L);
        u = (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24;
        memcpy(&scale, &u, 4);
        CHECK(scale == fabsf(x[13]) / (float)L, "levels %d: scale %g is not absmax / L", L, (double)scale);
        for (i = 0, top = 0; i < 40; i++) {
            int v = (signed char)q[4 + i];
            CHECK(v >= -L && v <= L, "levels %d: value %d off the grid", L, v);
            CHECK(fabsf((float)v * scale - x[i]) <= 0.5f * scale * 1.0001f, "levels %d: value %zu off by more than half a step", L, i);
            top = v == L || v == -L ? top + 1 : top;
        }
        CHECK(top >= 1 && (signed char)q[4 + 13] == L * (x[13] > 0 ? 1 : -1), "levels %d: absmax not at +-L", L);
    }
    {   /* the default build's encoder is the contract's 127 levels: same bytes as the block at 127 */
        resbm_frame_info f;
        unsigned char buf[40 + 4 + 40];
        size_t len;
        memset(&f, 0, sizeof(f));
        f.kind = RESBM_KIND_ACT; f.dtype = RESBM_WIRE_I8; f.rows = 4; f.cols = 10;
        CHECK_RC(resbm_frame_encode(buf, sizeof(buf), &len, &f, x), RESBM_OK);
        resbm__i8_block(q, x, 40, RESBM_I8_LEVELS);
        CHECK(len == sizeof(buf) && !memcmp(buf + 40, q, 44), "the frame's payload is not the block at RESBM_I8_LEVELS");
    }
}

/* (9) (14) widths past their bounds are refused before any work that scales with them; (10) a
   checkpoint's step counter is bounded. */
static void test_config_bounds(void) {
    resbm_model_config c = tiny_config();
    resbm_model *m = NULL;
    const char *path = tmp_path("resbm_test_bounds.safetensors");
    char why[256];
    int k;
    for (k = 0; k < 5; k++) {
        c = tiny_config();
        if (k == 0) { c.d = 1 << 28; c.ff = 0; c.heads = 1 << 10; }
        if (k == 1) c.layers = 2147483647;
        if (k == 2) c.vocab = 2147483647;
        if (k == 3) c.seq = 2147483647;
        if (k == 4) c.m = -5;
        CHECK_RC(resbm_model_init(&c, NULL, &m), RESBM_EINVAL);
    }
    c = tiny_config();
    CHECK_RC(resbm_model_init(&c, NULL, &m), RESBM_OK);
    if (th_fail_now) return;
    {
        resbm_st_file *f;
        resbm_st_entry e[64];
        const resbm_st_entry *src;
        const char *kv[8];
        size_t n = 0, i;
        char *copy[64];
        CHECK_RC(resbm_checkpoint_save(path, &m, 1, NULL, 0), RESBM_OK);
        CHECK_RC(resbm_safetensors_read(path, 1 << 24, &f), RESBM_OK);
        if (th_fail_now) { resbm_model_free(m); return; }
        src = resbm_safetensors_entries(f, &n);
        for (i = 0; i < n && i < 64; i++) { /* the same file, but data host-endian again */
            size_t cnt = 1, q;
            int d;
            e[i] = src[i];
            for (d = 0; d < src[i].ndim; d++) cnt *= src[i].shape[d];
            copy[i] = (char *)malloc(cnt * 4 + 1);
            for (q = 0; q < cnt; q++) {
                const unsigned char *b = (const unsigned char *)src[i].data + 4 * q;
                uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
                memcpy(copy[i] + 4 * q, &u, 4);
            }
            e[i].data = copy[i];
        }
        kv[0] = "format"; kv[1] = "resbm-checkpoint-1";
        kv[2] = "step"; kv[3] = "9223372036854775807";
        kv[4] = "config"; kv[5] = resbm_safetensors_meta(f, "config");
        kv[6] = "opt"; kv[7] = resbm_safetensors_meta(f, "opt");
        {
            char p2[128];
            snprintf(p2, sizeof(p2), "%s", tmp_path("resbm_test_bounds2.safetensors"));
            CHECK_RC(resbm_safetensors_write(p2, e, n, kv, 4), RESBM_OK);
            CHECK_RC(resbm_checkpoint_load(p2, &m, 1, why, sizeof(why)), RESBM_EFORMAT);
            CHECK(strstr(why, "step") != NULL, "reason: %s", why);
            /* a consistent file whose tensor is smaller than the model's: refused by shape */
            for (i = 0; i < n; i++)
                if (!strcmp(e[i].name, "blocks.0.wq")) e[i].shape[0] -= 1;
            kv[3] = "0";
            CHECK_RC(resbm_safetensors_write(p2, e, n, kv, 4), RESBM_OK);
            CHECK_RC(resbm_checkpoint_load(p2, &m, 1, why, sizeof(why)), RESBM_EFORMAT);
            CHECK(strstr(why, "blocks.0.wq") != NULL, "reason: %s", why);
            remove(p2);
        }
        for (i = 0; i < n && i < 64; i++) free(copy[i]);
        resbm_safetensors_free(f);
    }
    CHECK(resbm_model_step_count(m) == 0, "a refused load moved the step");
    resbm_model_free(m);
    remove(path);
}

/* (5) concurrent writers to one path never produce a mixed file, and a symlink planted where a
   temp file used to be is not followed. Two processes save different models 40 times each. */
static void test_checkpoint_writers(void) {
    resbm_model_config c = tiny_config();
    resbm_model *a, *b, *r;
    float *sa, *sb;
    char path[128], target[128], link_at[140], why[256];
    pid_t pid;
    int round, status = 0, mixed = 0, loaded = 0;
    FILE *t;
    snprintf(path, sizeof(path), "%s", tmp_path("resbm_test_race.safetensors"));
    snprintf(target, sizeof(target), "%s", tmp_path("resbm_test_victim"));
    snprintf(link_at, sizeof(link_at), "%s.tmp", path);
    CHECK_RC(resbm_model_init(&c, NULL, &a), RESBM_OK);
    c.seed = 4242;
    CHECK_RC(resbm_model_init(&c, NULL, &b), RESBM_OK);
    CHECK_RC(resbm_model_init(&c, NULL, &r), RESBM_OK);
    if (th_fail_now) return;
    sa = params_snapshot(a);
    sb = params_snapshot(b);
    t = fopen(target, "w"); fputs("keep me", t); fclose(t);
    CHECK(symlink(target, link_at) == 0, "symlink");
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        for (round = 0; round < 40; round++) resbm_checkpoint_save(path, &b, 1, NULL, 0);
        _exit(0);
    }
    for (round = 0; round < 40; round++) {
        CHECK_RC(resbm_checkpoint_save(path, &a, 1, NULL, 0), RESBM_OK);
        if (!resbm_checkpoint_load(path, &r, 1, why, sizeof(why))) {
            loaded++;
            if (params_changed(r, sa) && params_changed(r, sb)) mixed++;
        }
    }
    waitpid(pid, &status, 0);
    CHECK(loaded > 0 && mixed == 0, "%d of %d loaded files mix both models", mixed, loaded);
    t = fopen(target, "r");
    CHECK(t && fgets(why, sizeof(why), t) && !strcmp(why, "keep me"), "the symlink's target was written");
    if (t) fclose(t);
    remove(link_at); remove(target); remove(path);
    free(sa); free(sb);
    resbm_model_free(a); resbm_model_free(b); resbm_model_free(r);
}


#ifndef RESBM_NO_THREADS
/* (6) a pool entered by two threads at once: every call either runs alone (and is exact) or is
   refused with RESBM_ESTATE; a pool serves one stage only. */
typedef struct { resbm_pool *pool; const float *A, *B, *want; float C[96 * 80]; int ok, refused, wrong; } pool_race_arg;
static void *pool_race(void *p) {
    pool_race_arg *r = (pool_race_arg *)p;
    int k;
    for (k = 0; k < 300; k++) {
        int rc = resbm_gemm(r->pool, RESBM_GEMM_NT, 0, r->C, r->A, r->B, 96, 80, 64);
        if (rc == RESBM_ESTATE) r->refused++;
        else if (rc == RESBM_OK && !memcmp(r->C, r->want, sizeof(r->C))) r->ok++;
        else r->wrong++;
    }
    return NULL;
}
static void test_pool_one_caller(void) {
    resbm_pool *pool;
    static float A[96 * 64], B[80 * 64], want[96 * 80];
    static pool_race_arg r[2];
    pthread_t th[2];
    resbm_inproc *hub;
    resbm_stage_config c = resbm_stage_config_default();
    resbm_stage *st0, *st1;
    size_t i;
    int t;
    for (i = 0; i < 96 * 64; i++) A[i] = (float)(i % 13) - 6.0f;
    for (i = 0; i < 80 * 64; i++) B[i] = (float)(i % 7) - 3.0f;
    CHECK_RC(resbm_pool_init(2, &pool), RESBM_OK);
    if (th_fail_now) return;
    CHECK_RC(resbm_gemm(pool, RESBM_GEMM_NT, 0, want, A, B, 96, 80, 64), RESBM_OK);
    for (t = 0; t < 2; t++) {
        memset(&r[t], 0, sizeof(r[t]));
        r[t].pool = pool; r[t].A = A; r[t].B = B; r[t].want = want;
        pthread_create(&th[t], NULL, pool_race, &r[t]);
    }
    for (t = 0; t < 2; t++) pthread_join(th[t], NULL);
    CHECK(r[0].wrong + r[1].wrong == 0, "%d wrong results", r[0].wrong + r[1].wrong);
    CHECK(r[0].ok + r[0].refused == 300 && r[1].ok + r[1].refused == 300, "calls lost");
    /* two stages on one pool: the second is refused at init */
    resbm_inproc_init(2, 1 << 16, &hub);
    c.model = tiny_config(); c.model.stages = 2; c.model.pool = pool;
    resbm_inproc_transport(hub, 0, &c.transport);
    CHECK_RC(resbm_stage_init(&c, &st0), RESBM_OK);
    c.model.stage = 1;
    resbm_inproc_transport(hub, 1, &c.transport);
    CHECK_RC(resbm_stage_init(&c, &st1), RESBM_ESTATE);
    resbm_stage_free(st0);
    CHECK_RC(resbm_stage_init(&c, &st1), RESBM_OK); /* free again once the first is gone */
    resbm_stage_free(st1);
    resbm_inproc_free(hub);
    resbm_pool_free(pool);
}

/* (7) (8) (12) the shaper: an inner transport reporting more bytes than it was given room for is
   a transport error; absurd rates are refused; an arrival stamp far in the future (another
   clock) never holds a receive past its timeout, nor a message past latency + transfer time. */
typedef struct { resbm_transport inner; size_t lie; } lying_link;
static int lying_send(void *u, int peer, const void *buf, size_t len) {
    lying_link *l = (lying_link *)u;
    return l->inner.send(l->inner.user, peer, buf, len);
}
static int lying_recv(void *u, int peer, void *buf, size_t cap, size_t *len, int timeout_ms) {
    lying_link *l = (lying_link *)u;
    int rc = l->inner.recv(l->inner.user, peer, buf, cap, len, timeout_ms);
    if (!rc && l->lie) *len = l->lie;
    return rc;
}
static void test_shaper_distrust(void) {
    resbm_inproc *hub;
    resbm_transport t0, t1, s1;
    resbm_shaper *sh = NULL;
    memset(&t0, 0, sizeof(t0)); memset(&t1, 0, sizeof(t1)); memset(&s1, 0, sizeof(s1));
    lying_link ll;
    unsigned char msg[64];
    double later = 0, t;
    size_t len;
    int k;
    resbm_inproc_init(2, 1 << 16, &hub);
    resbm_inproc_transport(hub, 0, &t0);
    resbm_inproc_transport(hub, 1, &t1);
    CHECK_RC(resbm_shaper_init(&t1, 2, 1e-300, 0, 100, &sh), RESBM_EINVAL);
    CHECK_RC(resbm_shaper_init(&t1, 2, strtod("inf", NULL), 0, 100, &sh), RESBM_EINVAL);
    CHECK_RC(resbm_shaper_init(&t1, 2, 0, strtod("inf", NULL), 100, &sh), RESBM_EINVAL);
    CHECK_RC(resbm_shaper_init(&t1, 2, 0, strtod("nan", NULL), 100, &sh), RESBM_EINVAL);
    CHECK_RC(resbm_shaper_init(&t1, 2, 0, 1e7, 100, &sh), RESBM_EINVAL);
    CHECK(sh == NULL, "out touched");
    /* a stamp one hour ahead, from a peer whose clock is not ours; latency 50 ms */
    CHECK_RC(resbm_shaper_init(&t1, 2, 0, 50, 100, &sh), RESBM_OK);
    if (th_fail_now) { resbm_inproc_free(hub); return; }
    resbm_shaper_transport(sh, &s1);
    later = resbm__now() + 3600.0;
    memcpy(msg, &later, 8);
    memcpy(msg + 8, "hello", 5);
    CHECK_RC(t0.send(t0.user, 1, msg, 13), RESBM_OK);
    t = resbm__now();
    CHECK_RC(s1.recv(s1.user, 0, msg, sizeof(msg), &len, 10), RESBM_ETIMEDOUT); /* held, not slept on */
    CHECK(resbm__now() - t < 2.0, "a 10 ms receive took %.1f s", resbm__now() - t);
    CHECK_RC(s1.recv(s1.user, 0, msg, sizeof(msg), &len, 5000), RESBM_OK); /* then our own clock */
    CHECK(len == 5 && !memcmp(msg, "hello", 5) && resbm__now() - t < 3.0, "delivered after %.2f s", resbm__now() - t);
    for (k = 0; k < 2; k++) { /* a NaN stamp, and a truncated prefix */
        double nan = strtod("nan", NULL);
        memcpy(msg, &nan, 8);
        CHECK_RC(t0.send(t0.user, 1, msg, k ? 5 : 9), RESBM_OK);
        CHECK_RC(s1.recv(s1.user, 0, msg, sizeof(msg), &len, 5000), k ? RESBM_ETRANSPORT : RESBM_OK);
    }
    resbm_shaper_free(sh);
    /* an inner transport that reports more bytes than the buffer it was given */
    ll.inner = t1; ll.lie = 1 << 20;
    t1.user = &ll; t1.send = lying_send; t1.recv = lying_recv;
    CHECK_RC(resbm_shaper_init(&t1, 2, 0, 0, 100, &sh), RESBM_OK);
    resbm_shaper_transport(sh, &s1);
    memset(msg, 0, 16);
    CHECK_RC(t0.send(t0.user, 1, msg, 16), RESBM_OK);
    CHECK_RC(s1.recv(s1.user, 0, msg, sizeof(msg), &len, 1000), RESBM_ETRANSPORT);
    resbm_shaper_free(sh);
    resbm_inproc_free(hub);
}

/* (15) a transport's codes outside its documented set come out as RESBM_ETRANSPORT; its genuine
   EINVAL stays EINVAL. (17) generate's out-of-range prompt token is ERANGE. */
typedef struct { int rc; } rude_link;
static int rude_send(void *u, int peer, const void *buf, size_t len) {
    (void)peer; (void)buf; (void)len;
    return ((rude_link *)u)->rc;
}
static int rude_recv(void *u, int peer, void *buf, size_t cap, size_t *len, int timeout_ms) {
    (void)peer; (void)buf; (void)cap; (void)len; (void)timeout_ms;
    return ((rude_link *)u)->rc;
}
static void test_transport_codes(void) {
    resbm_stage_config c = resbm_stage_config_default();
    resbm_stage *st;
    rude_link rl;
    int32_t tg[64], tok[64], out[2];
    float loss;
    int k, codes[4] = {5, -2147483647 - 1, RESBM_EINVAL, RESBM_ECLOSED}, want[4] = {RESBM_ETRANSPORT, RESBM_ETRANSPORT, RESBM_EINVAL, RESBM_ECLOSED};
    c.model = tiny_config(); c.model.stages = 2; c.model.stage = 1; c.timeout_ms = 100;
    c.transport.user = &rl; c.transport.send = rude_send; c.transport.recv = rude_recv;
    tiny_batch(tok, tg, 64, c.model.vocab, 1);
    for (k = 0; k < 4; k++) {
        rl.rc = codes[k];
        CHECK_RC(resbm_stage_init(&c, &st), RESBM_OK);
        if (th_fail_now) return;
        CHECK_RC(resbm_stage_step(st, NULL, tg, (size_t)c.model.batch, &loss), want[k]);
        resbm_stage_free(st);
    }
    c.model.stages = 1; c.model.stage = 0;
    CHECK_RC(resbm_stage_init(&c, &st), RESBM_OK);
    if (th_fail_now) return;
    tok[3] = 999;
    CHECK_RC(resbm_stage_generate(st, tok, 4, 2, 1.0f, 1, out), RESBM_ERANGE);
    tok[3] = -1;
    CHECK_RC(resbm_stage_generate(st, tok, 4, 2, 1.0f, 1, out), RESBM_ERANGE);
    resbm_stage_free(st);
}

/* (1) stages that disagree on the job refuse with RESBM_EJOB, naming the field, before any
   update; (13) a stage that fails tells its neighbours at once: they return RESBM_EPEER long
   before their timeout. */
typedef struct { resbm_stage *st; int rc; int bad_targets; size_t rows; double seconds; } job_arg;
static void *job_thread(void *p) {
    job_arg *a = (job_arg *)p;
    const resbm_model_config *c = resbm_model_get_config(resbm_stage_model(a->st));
    int32_t tok[512], tg[512];
    size_t rows = a->rows;
    double t0 = resbm__now();
    float loss;
    tiny_batch(tok, tg, rows * (size_t)c->seq, c->vocab, 9);
    if (a->bad_targets) tg[0] = 100000;
    a->rc = resbm_stage_step(a->st, tok, tg, rows, &loss);
    a->seconds = resbm__now() - t0;
    return NULL;
}
typedef struct { resbm_stage *st; int rc, bad; double seconds; } eval_abort_arg;
static void *eval_abort_thread(void *p) {
    eval_abort_arg *a = (eval_abort_arg *)p;
    static int32_t tok[2][64 * 8], tg[2][64 * 8];
    int me = a->bad;
    double t0 = resbm__now();
    float loss;
    tiny_batch(tok[me], tg[me], 64 * 8, 23, 4);
    if (a->bad) tg[me][5] = -7;
    a->rc = resbm_stage_eval(a->st, tok[me], tg[me], 64, &loss);
    a->seconds = resbm__now() - t0;
    return NULL;
}
static void test_job_agreement(void) {
    const char *fields[] = {"seq", "d", "layers", "vocab", "no_identity", "stages", "optimizer", "clip", "r", "lr", "n_micro", "schedule", "async_warmup", "predict"};
    int k, s;
    for (k = 0; k < (int)(sizeof(fields) / sizeof(fields[0])); k++) {
        resbm_inproc *hub;
        resbm_stage *st[3];
        job_arg a[2];
        pthread_t th[2];
        resbm_inproc_init(3, 1 << 20, &hub);
        for (s = 0; s < 2; s++) {
            resbm_stage_config c = resbm_stage_config_default();
            c.model = pipe_config(); c.model.stages = 2; c.model.layers = 2; c.model.stage = s;
            c.model.batch = 2; c.n_micro = 2; c.timeout_ms = 20000;
            if (s == 1) { /* the second stage believes something else */
                if (k == 0) { c.model.seq = 16; c.model.batch = 1; } /* 16x1 for 8x2: the same tokens */
                if (k == 1) c.model.d = 32;
                if (k == 2) c.model.layers = 3;
                if (k == 3) c.model.vocab = 24;
                if (k == 4) c.model.no_identity = 1;
                if (k == 5) { c.model.stages = 3; c.model.layers = 5; }
                if (k == 6) c.opt.kind = RESBM_OPT_SGD;
                if (k == 7) c.opt.clip = 0.0f;
                if (k == 8) c.model.r = 2;
                if (k == 9) c.opt.lr = 1e-3f;
                if (k == 10) c.n_micro = 1;
                if (k == 11) c.schedule = RESBM_SCHEDULE_ASYNC;
                if (k == 12) c.async_warmup = 5;
                if (k == 13) c.predict = 1.0f;
            }
            if (k >= 12) c.schedule = RESBM_SCHEDULE_ASYNC; /* both async, one detail apart */
            a[s].rows = (size_t)c.model.batch * (size_t)c.n_micro;
            resbm_inproc_transport(hub, s, &c.transport);
            CHECK_RC(resbm_stage_init(&c, &st[s]), RESBM_OK);
        }
        if (th_fail_now) { resbm_inproc_free(hub); return; }
        for (s = 0; s < 2; s++) { a[s].st = st[s]; a[s].bad_targets = 0; pthread_create(&th[s], NULL, job_thread, &a[s]); }
        for (s = 0; s < 2; s++) pthread_join(th[s], NULL);
        for (s = 0; s < 2; s++) {
            CHECK(a[s].rc == RESBM_EJOB, "%s: stage %d returned %s", fields[k], s, resbm_strerror(a[s].rc));
            CHECK(strstr(resbm_stage_why(st[s]), fields[k]) != NULL, "%s: stage %d says \"%s\"", fields[k], s,
                  resbm_stage_why(st[s]));
            CHECK(resbm_model_step_count(resbm_stage_model(st[s])) == 0, "an update before agreement");
            resbm_stage_free(st[s]);
        }
        resbm_inproc_free(hub);
    }
    { /* (13) three stages, the last one fails its step on bad targets */
        resbm_inproc *hub;
        resbm_stage *st[3];
        job_arg a[3];
        pthread_t th[3];
        resbm_inproc_init(3, 1 << 20, &hub);
        for (s = 0; s < 3; s++) {
            resbm_stage_config c = resbm_stage_config_default();
            c.model = pipe_config(); c.model.stage = s; c.n_micro = 2; c.timeout_ms = 30000;
            a[s].rows = (size_t)c.model.batch * 2;
            resbm_inproc_transport(hub, s, &c.transport);
            CHECK_RC(resbm_stage_init(&c, &st[s]), RESBM_OK);
        }
        if (th_fail_now) { resbm_inproc_free(hub); return; }
        for (k = 0; k < 2; k++) {
            for (s = 0; s < 3; s++) { a[s].st = st[s]; a[s].bad_targets = k == 1 && s == 2; pthread_create(&th[s], NULL, job_thread, &a[s]); }
            for (s = 0; s < 3; s++) pthread_join(th[s], NULL);
        }
        CHECK(a[2].rc == RESBM_ERANGE, "the failing stage: %s", resbm_strerror(a[2].rc));
        for (s = 0; s < 2; s++) {
            CHECK(a[s].rc == RESBM_EPEER, "stage %d: %s", s, resbm_strerror(a[s].rc));
            CHECK(a[s].seconds < 10.0, "stage %d waited %.1f s of its 30 s timeout", s, a[s].seconds);
            CHECK(strstr(resbm_stage_why(st[s]), "stage 2") != NULL, "stage %d: \"%s\"", s, resbm_stage_why(st[s]));
            CHECK(resbm_model_step_count(resbm_stage_model(st[s])) == 1, "stage %d applied the failed step", s);
        }
        for (s = 0; s < 3; s++) resbm_stage_free(st[s]);
        resbm_inproc_free(hub);
    }
    { /* an eval whose last stage refuses its targets: the first stage, which sends chunk after
         chunk without reading, hears the abort and stops, even through a link of 3 frames */
        resbm_inproc *hub;
        resbm_stage *st[2];
        eval_abort_arg ea[2];
        pthread_t th[2];
        size_t mf = 0;
        for (s = 0; s < 2; s++) {
            resbm_stage_config c = resbm_stage_config_default();
            c.model = pipe_config(); c.model.stages = 2; c.model.layers = 2; c.model.stage = s;
            c.timeout_ms = 30000;
            if (s == 0) {
                CHECK_RC(resbm_stage_max_frame(&c, &mf), RESBM_OK);
                CHECK(mf >= 40 + 4 * 8 * 4 && mf >= 40 + 4 * RESBM__JOB_FLOATS, "max frame %zu", mf);
                resbm_inproc_init(2, 3 * (mf + 8), &hub);
                resbm_inproc_set_send_timeout(hub, 1000); /* a full link gives up: then the abort is read */
            }
            resbm_inproc_transport(hub, s, &c.transport);
            CHECK_RC(resbm_stage_init(&c, &st[s]), RESBM_OK);
            CHECK(s == 0 || st[s]->frame_cap == mf, "max frame %zu, the stage's %zu", mf, st[s]->frame_cap);
        }
        if (th_fail_now) return;
        for (s = 0; s < 2; s++) { ea[s].st = st[s]; ea[s].bad = s == 1; pthread_create(&th[s], NULL, eval_abort_thread, &ea[s]); }
        for (s = 0; s < 2; s++) pthread_join(th[s], NULL);
        CHECK(ea[1].rc == RESBM_ERANGE && ea[0].rc == RESBM_EPEER && ea[0].seconds < 10.0,
              "eval: stage 1 %s, stage 0 %s after %.1f s", resbm_strerror(ea[1].rc), resbm_strerror(ea[0].rc), ea[0].seconds);
        for (s = 0; s < 2; s++) resbm_stage_free(st[s]);
        resbm_inproc_free(hub);
    }
}
#endif


#ifndef RESBM_NO_THREADS
typedef struct { resbm_stage *st; size_t n_prompt; float temperature; uint64_t seed; int rc; int32_t out[4]; } gen_arg;
static void *gen_thread(void *p) {
    gen_arg *a = (gen_arg *)p;
    static const int32_t prompt[10] = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3};
    a->rc = resbm_stage_generate(a->st, prompt, a->n_prompt, 4, a->temperature, a->seed, a->out);
    return NULL;
}

/* Two stages generate together; each argument set per stage. */
static void gen_pair(resbm_stage **st, gen_arg *a) {
    pthread_t th[2];
    int s;
    for (s = 0; s < 2; s++) { a[s].st = st[s]; pthread_create(&th[s], NULL, gen_thread, &a[s]); }
    for (s = 0; s < 2; s++) pthread_join(th[s], NULL);
}

/* Only stage 0 reads the prompt and only the last stage samples, but every stage must be asked
   the same: a stage given another prompt length, count, temperature or seed fails the call (the
   last stage would otherwise sample at the wrong position, silently). And refused calls never
   use a stage up: 300 of them in a row (more than the frames' 8-bit attempt field counts), with
   frames of each left unread in the link, and the next good call still runs. */
static void test_generate_agreement_and_refusals(void) {
    resbm_inproc *hub;
    resbm_stage *st[2];
    gen_arg a[2], good[2];
    int s, k;
    CHECK_RC(two_stages(&hub, st, 1 << 20, 3000), RESBM_OK);
    if (th_fail_now) return;
    for (s = 0; s < 2; s++) { good[s].n_prompt = 5; good[s].temperature = 0.8f; good[s].seed = 9; }
    gen_pair(st, good);
    CHECK(good[0].rc == RESBM_OK && good[1].rc == RESBM_OK, "%s / %s", resbm_strerror(good[0].rc), resbm_strerror(good[1].rc));
    CHECK(!memcmp(good[0].out, good[1].out, sizeof(good[0].out)), "stages disagree");
    for (k = 0; k < 3; k++) { /* stage 1 asked for a shorter prompt, another seed, temperature */
        a[0] = good[0]; a[1] = good[1];
        if (k == 0) a[1].n_prompt = 3;
        if (k == 1) a[1].seed = 10;
        if (k == 2) a[1].temperature = 0.7f;
        gen_pair(st, a);
        CHECK(a[1].rc == RESBM_EINVAL && a[0].rc == RESBM_EPEER, "case %d: %s / %s", k, resbm_strerror(a[0].rc),
              resbm_strerror(a[1].rc));
        CHECK(strstr(resbm_stage_why(st[1]), k == 0 ? "prompt" : k == 1 ? "seed" : "temperature") != NULL,
              "case %d: why %s", k, resbm_stage_why(st[1]));
    }
    { /* prompts longer than the window (seq 8): only the window's length must agree, and a length
         whose count with n_new would wrap is refused (the last stage sampled outside the
         probabilities at 2^64 - 1, returning OK on both) */
        gen_arg longer[2];
        for (k = 0; k < 3; k++) {
            a[0] = good[0]; a[1] = good[1];
            a[0].n_prompt = 10;
            a[1].n_prompt = k == 0 ? 10 : k == 1 ? 12 : (size_t)-1;
            gen_pair(st, a);
            if (k == 0) memcpy(longer, a, sizeof(longer));
            if (k < 2) {
                CHECK(a[0].rc == RESBM_OK && a[1].rc == RESBM_OK, "window case %d: %s / %s", k, resbm_strerror(a[0].rc),
                      resbm_strerror(a[1].rc));
                CHECK(!memcmp(a[0].out, longer[0].out, sizeof(a[0].out)) && !memcmp(a[1].out, longer[0].out, sizeof(a[0].out)),
                      "window case %d: other tokens", k);
            } else {
                CHECK(a[1].rc == RESBM_EINVAL && a[0].rc == RESBM_EPEER, "wrapping length: %s / %s", resbm_strerror(a[0].rc),
                      resbm_strerror(a[1].rc));
            }
        }
    }
    for (k = 0; k < 300; k++) { /* stage 1 refuses its arguments after stage 0 sent its frames */
        a[0] = good[0]; a[1] = good[1];
        a[1].temperature = 0.0f;
        gen_pair(st, a);
        if (a[1].rc != RESBM_EINVAL || a[0].rc != RESBM_EPEER) {
            CHECK(0, "refusal %d: %s / %s (%s)", k, resbm_strerror(a[0].rc), resbm_strerror(a[1].rc), resbm_stage_why(st[0]));
            break;
        }
    }
    a[0] = good[0]; a[1] = good[1];
    gen_pair(st, a);
    CHECK(a[0].rc == RESBM_OK && a[1].rc == RESBM_OK, "after refusals: %s / %s (%s)", resbm_strerror(a[0].rc),
          resbm_strerror(a[1].rc), resbm_stage_why(st[1]));
    CHECK(!memcmp(a[0].out, good[0].out, sizeof(good[0].out)) && !memcmp(a[1].out, good[0].out, sizeof(good[0].out)),
          "the same call samples other tokens after refusals");
    for (s = 0; s < 2; s++) resbm_stage_free(st[s]);
    resbm_inproc_free(hub);
}

typedef struct { resbm_stage *st; size_t rows; int rc; float loss; } eval_arg;
static void *eval_thread(void *p) {
    eval_arg *a = (eval_arg *)p;
    int32_t tok[4 * 8], tg[4 * 8];
    tiny_batch(tok, tg, 4 * 8, 23, 5);
    a->loss = -1.0f;
    a->rc = resbm_stage_eval(a->st, tok, tg, a->rows, &a->loss);
    return NULL;
}

/* Eval's rows must be the same on every stage: stage 0 sends its own ahead of the chunks, and a
   stage asked for another count fails the call, losses untouched. Before, the last stage given a
   prefix of stage 0's rows returned its loss to both as success (the mean of other rows than
   stage 0's). And a loss lost on its last way back fails stage 0 alone; the hosts retry on both
   stages together, and that retry and every call after it work (before, stage 1 took stage 0's
   abort for its next call's and stayed an attempt behind: every later call failed). */
static void test_eval_rows_agree(void) {
    resbm_inproc *hub;
    resbm_stage *st[2];
    odd_link link[2];
    eval_arg a[2];
    lone_arg la[2];
    pthread_t th[2];
    float ref = 0.0f;
    int s, k;
    size_t rows[6][2] = {{3, 3}, {3, 1}, {1, 3}, {3, 3}, {3, 3}, {3, 3}};
    CHECK_RC(odd_stages(&hub, st, link, 300), RESBM_OK); /* one row per chunk: three chunks */
    if (th_fail_now) return;
    for (k = 0; k < 6; k++) {
        if (k == 4) { link[1].drop_ctl = 1; link[1].drop_what = (uint32_t)1 << 20; } /* the eval's loss */
        for (s = 0; s < 2; s++) { a[s].st = st[s]; a[s].rows = rows[k][s]; pthread_create(&th[s], NULL, eval_thread, &a[s]); }
        for (s = 0; s < 2; s++) pthread_join(th[s], NULL);
        if (k == 4) {
            CHECK(a[0].rc == RESBM_ETIMEDOUT && a[1].rc == RESBM_OK && a[0].loss == -1.0f && a[1].loss == ref,
                  "the lost loss: %s / %s, %g / %g", resbm_strerror(a[0].rc), resbm_strerror(a[1].rc), a[0].loss, a[1].loss);
        } else if (rows[k][0] == rows[k][1]) {
            CHECK(a[0].rc == RESBM_OK && a[1].rc == RESBM_OK && a[0].loss == a[1].loss && a[0].loss > 0.0f,
                  "case %d: %s / %s, %g / %g", k, resbm_strerror(a[0].rc), resbm_strerror(a[1].rc), a[0].loss, a[1].loss);
            if (k == 0) ref = a[0].loss;
            else CHECK(a[0].loss == ref, "after the refusals: %g, was %g", a[0].loss, ref);
        } else {
            CHECK(a[1].rc == RESBM_EINVAL && a[0].rc == RESBM_EPEER, "case %d: %s / %s", k, resbm_strerror(a[0].rc),
                  resbm_strerror(a[1].rc));
            CHECK(a[0].loss == -1.0f && a[1].loss == -1.0f, "case %d: losses %g / %g written", k, a[0].loss, a[1].loss);
            CHECK(strstr(resbm_stage_why(st[1]), "rows") != NULL, "case %d: why %s", k, resbm_stage_why(st[1]));
        }
    }
    for (k = 0; k < 3; k++) {
        step_pair(st, la);
        CHECK(la[0].rc == RESBM_OK && la[1].rc == RESBM_OK, "step %d after: %s / %s", k, resbm_strerror(la[0].rc),
              resbm_strerror(la[1].rc));
    }
    for (s = 0; s < 2; s++) resbm_stage_free(st[s]);
    resbm_inproc_free(hub);
}

/* Stages 0 and 1 of a 2-stage job (2 microbatches of 2 rows) over one hub, with their models. */
static int job_stages(resbm_inproc **hub, resbm_stage **st, resbm_model **m, job_arg *a, int timeout_ms) {
    int s, rc;
    if ((rc = resbm_inproc_init(2, 1 << 20, hub))) return rc;
    for (s = 0; s < 2; s++) {
        resbm_stage_config c = resbm_stage_config_default();
        c.model = pipe_config(); c.model.stages = 2; c.model.layers = 2; c.model.stage = s;
        c.model.batch = 2; c.n_micro = 2; c.timeout_ms = timeout_ms;
        a[s].st = NULL; a[s].rows = 4; a[s].bad_targets = 0;
        resbm_inproc_transport(*hub, s, &c.transport);
        if ((rc = resbm_stage_init(&c, &st[s]))) {
            if (s) resbm_stage_free(st[0]);
            resbm_inproc_free(*hub);
            return rc;
        }
        m[s] = resbm_stage_model(st[s]);
    }
    return RESBM_OK;
}

/* One step on stages `first`..1 together (job_thread each). */
static void job_round(resbm_stage **st, job_arg *a, int first) {
    pthread_t th[2];
    int s;
    for (s = 0; s < 2; s++) { a[s].st = st[s]; a[s].rc = RESBM_OK; }
    for (s = first; s < 2; s++) pthread_create(&th[s], NULL, job_thread, &a[s]);
    for (s = first; s < 2; s++) pthread_join(th[s], NULL);
}

/* After a job mismatch the stages agree again once the job is fixed on either side: here stage
   1 reloads an older checkpoint (both refuse the next step: the steps differ), then stage 0
   reloads its own from the same step, and the next step runs on both. (Stage 1 had sent its one
   hello before stage 0's reload, so without a new one stage 0 would wait for it forever.) */
static void test_job_recovers_after_reload(void) {
    resbm_inproc *hub;
    resbm_stage *st[2];
    resbm_model *m[2];
    job_arg a[2];
    const char *path[2];
    char why[256];
    int s, round;
    int want[4] = {RESBM_OK, RESBM_OK, RESBM_EJOB, RESBM_OK};
    long steps[4] = {1, 2, 0, 1};
    path[0] = tmp_path("resbm_test_job_reload0.safetensors");
    path[1] = tmp_path("resbm_test_job_reload1.safetensors");
    CHECK_RC(job_stages(&hub, st, m, a, 3000), RESBM_OK);
    if (th_fail_now) return;
    for (s = 0; s < 2; s++) CHECK_RC(resbm_checkpoint_save(path[s], &m[s], 1, NULL, 0), RESBM_OK);
    for (round = 0; round < 4; round++) {
        if (round == 2) CHECK_RC(resbm_checkpoint_load(path[1], &m[1], 1, why, sizeof(why)), RESBM_OK);
        if (round == 3) CHECK_RC(resbm_checkpoint_load(path[0], &m[0], 1, why, sizeof(why)), RESBM_OK);
        job_round(st, a, 0);
        for (s = 0; s < 2; s++) {
            CHECK(a[s].rc == want[round], "round %d, stage %d: %s (%s)", round, s, resbm_strerror(a[s].rc),
                  resbm_stage_why(st[s]));
            CHECK(resbm_model_step_count(m[s]) == steps[round] + (round == 2 && s == 0 ? 2 : 0),
                  "round %d, stage %d at step %ld", round, s, resbm_model_step_count(m[s]));
        }
    }
    for (s = 0; s < 2; s++) { resbm_stage_free(st[s]); remove(path[s]); }
    resbm_inproc_free(hub);
}

/* A stage that ran a wrong job for a while (8 calls alone, each timing out) and is then fixed
   costs its neighbour one refused call at most: the hellos it queued meanwhile are not judged
   one per call. */
static void test_job_mismatch_leaves_no_backlog(void) {
    resbm_inproc *hub;
    resbm_stage *st[2];
    resbm_model *m[2];
    job_arg a[2];
    const char *old1 = tmp_path("resbm_test_backlog_old1.safetensors"), *new1 = tmp_path("resbm_test_backlog_new1.safetensors");
    char why[256];
    int s, round, refused = 0, ok = 0;
    CHECK_RC(job_stages(&hub, st, m, a, 200), RESBM_OK);
    if (th_fail_now) return;
    CHECK_RC(resbm_checkpoint_save(old1, &m[1], 1, NULL, 0), RESBM_OK); /* step 0 */
    for (round = 0; round < 12 && !ok; round++) {
        if (round == 1) { /* the good state at step 1, then the wrong one */
            CHECK_RC(resbm_checkpoint_save(new1, &m[1], 1, NULL, 0), RESBM_OK);
            CHECK_RC(resbm_checkpoint_load(old1, &m[1], 1, why, sizeof(why)), RESBM_OK);
        }
        if (round == 9) CHECK_RC(resbm_checkpoint_load(new1, &m[1], 1, why, sizeof(why)), RESBM_OK);
        job_round(st, a, round >= 1 && round < 9); /* rounds 1-8: stage 1 alone */
        if (round == 0 || round >= 9) ok = round >= 9 && a[0].rc == RESBM_OK && a[1].rc == RESBM_OK;
        else CHECK(a[1].rc == RESBM_ETIMEDOUT, "round %d: %s", round, resbm_strerror(a[1].rc));
        if (round >= 9 && !ok) refused++;
    }
    CHECK(ok && refused <= 1, "after the fix: %d refused calls, then %s", refused, ok ? "agreed" : "still refused");
    CHECK(resbm_model_step_count(m[0]) == 2 && resbm_model_step_count(m[1]) == 2, "steps %ld / %ld",
          resbm_model_step_count(m[0]), resbm_model_step_count(m[1]));
    for (s = 0; s < 2; s++) resbm_stage_free(st[s]);
    resbm_inproc_free(hub);
    remove(old1); remove(new1);
}
#endif

#ifndef RESBM_NO_THREADS
/* ---- a fault mid-run, a retry in place, and the same parameters as without it ------------------- */
enum { FAULT_GARBAGE, FAULT_TRUNC, FAULT_FLIP, FAULT_STEP, FAULT_MICRO, FAULT_KIND, FAULT_DTYPE,
       FAULT_SHAPE, FAULT_HUGE, FAULT_NAN, FAULT_DROP, FAULT_N };
static const char *const fault_names[FAULT_N] = {"garbage", "truncated", "flipped bit", "wrong step",
    "wrong microbatch", "wrong kind", "wrong dtype", "wrong shape", "huge declared payload", "NaN",
    "lost"};

/* A link that spoils one frame: the nth frame of `kind` this endpoint sends to `to`. */
typedef struct {
    resbm_transport inner;
    int to, kind, nth, fault, seen, fired;
    unsigned char buf[1 << 16];
} fault_link;

static int fault_send(void *u, int peer, const void *buf, size_t len) {
    fault_link *l = (fault_link *)u;
    unsigned char *b = l->buf;
    if (peer != l->to || l->fired || len < 40 || len > sizeof(l->buf) || ((const unsigned char *)buf)[6] != l->kind ||
        l->seen++ != l->nth)
        return l->inner.send(l->inner.user, peer, buf, len);
    l->fired = 1;
    memcpy(b, buf, len);
    switch (l->fault) {
    case FAULT_GARBAGE: { size_t i; for (i = 0; i < len; i++) b[i] = (unsigned char)(i * 131 + 7); break; }
    case FAULT_TRUNC: len -= 3; break;
    case FAULT_FLIP: b[len - 1] ^= 0x04; break;
    case FAULT_STEP: b[12] ^= 0x40; put_crc(b, len); break;
    case FAULT_MICRO: b[20] ^= 0x01; put_crc(b, len); break;
    case FAULT_KIND: b[6] = (unsigned char)(b[6] == RESBM_KIND_ACT ? RESBM_KIND_GRAD : RESBM_KIND_ACT); put_crc(b, len); break;
    case FAULT_DTYPE: b[7] = RESBM_WIRE_BF16; put_crc(b, len); break;
    case FAULT_SHAPE: b[24] ^= 0x02; put_crc(b, len); break;
    case FAULT_HUGE: b[32] = b[33] = b[34] = 0xff; b[35] = 0x7f; put_crc(b, len); break;
    case FAULT_NAN: b[43] = 0x7f; b[42] = 0xc0; put_crc(b, len); break;
    default: return RESBM_OK; /* FAULT_DROP: said to be sent, never arrives */
    }
    return l->inner.send(l->inner.user, peer, b, len);
}
static int fault_recv(void *u, int peer, void *buf, size_t cap, size_t *len, int timeout_ms) {
    fault_link *l = (fault_link *)u;
    return l->inner.recv(l->inner.user, peer, buf, cap, len, timeout_ms);
}

enum { RETRY_S = 3, RETRY_STEPS = 4 };
typedef struct {
    resbm_stage *st;
    int steps, failures, rc, restarts, bad_call, done;
    long next, restart[12];
    float loss; /* of the eval after a run in lock step */
} retry_arg;

static size_t retry_budget;                      /* act_budget_bytes of the next retry_run */
static int retry_warmup;                         /* async_warmup of the next async retry_run */
static int retry_micro = 2, retry_bad_call = -1;  /* its n_micro; a call the last stage spoils */
static int retry_lockstep, retry_rounds;          /* its hosts run in lock step; the rounds it took */
static int retry_eval_ok;                         /* and then an eval on every stage succeeded */
static int retry_end_eval;                        /* its async hosts end with an eval (which
                                                    flushes first) instead of a flush */
static int retry_late = -1;                       /* in lock step, the stage whose first call
                                                    starts after the others' waits for its hello
                                                    timed out (a slow start; no fault) */

/* The eval every host runs last in these tests: the same rows on every stage. */
static int retry_eval(retry_arg *a, float *loss) {
    const resbm_model_config *c = resbm_model_get_config(resbm_stage_model(a->st));
    int32_t tok[256], tg[256];
    pipe_batch(tok, tg, c, 2 * c->batch, 99);
    return resbm_stage_eval(a->st, tok, tg, (size_t)(2 * c->batch), loss);
}

/* One call of an exact host: a step with the batch of the stage's own step count. */
static void retry_exact_call(retry_arg *a) {
    resbm_model *m = resbm_stage_model(a->st);
    const resbm_model_config *c = resbm_model_get_config(m);
    int32_t tok[256], tg[256];
    float loss;
    pipe_batch(tok, tg, c, 2 * c->batch, (int)resbm_model_step_count(m));
    a->rc = resbm_stage_step(a->st, tok, tg, (size_t)(2 * c->batch), &loss);
    if (a->rc) a->failures++;
}

/* One call of an async host: a step with batch `next`, or the flush once all are in (done when
   it succeeds); after a failure, the stream starts again from the batch of the step count (the
   steps before it landed on every stage). The step counts it restarted from are kept (rising:
   the points the stream really restarted from). */
static void retry_async_call(retry_arg *a) {
    resbm_model *m = resbm_stage_model(a->st);
    const resbm_model_config *c = resbm_model_get_config(m);
    int32_t tok[256], tg[256];
    float loss;
    if (a->next < a->steps) {
        int rows = retry_micro * c->batch;
        pipe_batch(tok, tg, c, rows, (int)a->next);
        if (a->next == a->bad_call && c->stage == c->stages - 1) { tg[0] = -1; a->bad_call = -1; } /* bad input, once */
        a->rc = resbm_stage_step(a->st, tok, tg, (size_t)rows, &loss);
    } else {
        a->rc = retry_end_eval ? retry_eval(a, &loss) : resbm_stage_flush(a->st, &loss);
        if (!a->rc) {
            a->done = 1;
            return;
        }
    }
    if (!a->rc) { a->next++; return; }
    a->failures++;
    a->next = resbm_model_step_count(m);
    /* a restart a later rollback went behind (two stages timed out at once) did not happen */
    while (a->restarts && a->restart[a->restarts - 1] >= a->next) a->restarts--;
    if (a->next < a->steps) a->restart[a->restarts++] = a->next; /* (else only the flush again) */
}

/* Each stage's own host loop: calls until it is through, after a failure again at once. */
static void *retry_thread(void *p) {
    retry_arg *a = (retry_arg *)p;
    int tries = 0;
    while (resbm_model_step_count(resbm_stage_model(a->st)) < a->steps && tries++ < 12) retry_exact_call(a);
    return NULL;
}
static void *retry_async_thread(void *p) {
    retry_arg *a = (retry_arg *)p;
    int tries = 0;
    while (!a->done && tries++ < 12) retry_async_call(a);
    return NULL;
}

/* A host that runs the stages in lock step: each round calls every stage once (async: every
   stage not through) and waits for all of them. */
static void retry_maybe_late(retry_arg *a) {
    if (retry_rounds == 0 && resbm_model_get_config(resbm_stage_model(a->st))->stage == retry_late) {
        struct timespec ts = {1, 300000000L}; /* the timeout (1 s) and then some */
        nanosleep(&ts, NULL);
    }
}
static void *lockstep_exact_thread(void *p) {
    retry_maybe_late((retry_arg *)p);
    retry_exact_call((retry_arg *)p);
    return NULL;
}
static void *lockstep_async_thread(void *p) {
    retry_maybe_late((retry_arg *)p);
    retry_async_call((retry_arg *)p);
    return NULL;
}
static void *lockstep_eval_thread(void *p) {
    retry_arg *a = (retry_arg *)p;
    a->rc = retry_eval(a, &a->loss);
    return NULL;
}

/* Runs RETRY_S stages over in-process links, stage `from`'s link to `to` spoiling its nth frame
   of `kind` (fault < 0: none); returns the stages, each having reached RETRY_STEPS. */
static int retry_run(resbm_stage **st, int from, int to, int kind, int nth, int fault, int *failures,
                     int schedule, retry_arg *out) {
    resbm_model_config mc = pipe_config();
    resbm_inproc *hub;
    static fault_link link[RETRY_S];
    retry_arg a[RETRY_S];
    pthread_t th[RETRY_S];
    int s, bad = 0;
    mc.stages = RETRY_S;
    if (resbm_inproc_init(RETRY_S, 1 << 20, &hub)) return 1;
    for (s = 0; s < RETRY_S; s++) {
        resbm_stage_config c = resbm_stage_config_default();
        c.model = mc; c.model.stage = s; c.n_micro = schedule == RESBM_SCHEDULE_ASYNC ? retry_micro : 2;
        c.timeout_ms = retry_late >= 0 ? 1000 : fault == FAULT_DROP ? 1500 : 4000;
        c.opt.clip = 0.05f; /* the clip binds: the norm matters */
        c.schedule = schedule;
        c.act_budget_bytes = retry_budget;
        c.async_warmup = schedule == RESBM_SCHEDULE_ASYNC ? retry_warmup : 0;
        memset(&link[s], 0, offsetof(fault_link, buf));
        resbm_inproc_transport(hub, s, &link[s].inner);
        link[s].to = s == from ? to : -1;
        link[s].kind = kind; link[s].nth = nth; link[s].fault = fault;
        c.transport.user = &link[s]; c.transport.send = fault_send; c.transport.recv = fault_recv;
        if (resbm_stage_init(&c, &st[s])) return 1;
        memset(&a[s], 0, sizeof(a[s]));
        a[s].st = st[s]; a[s].steps = RETRY_STEPS; a[s].bad_call = retry_bad_call;
    }
    for (retry_rounds = 0; retry_lockstep && retry_rounds < RETRY_STEPS + 8; retry_rounds++) {
        int through = 0, called[RETRY_S];
        for (s = 0; s < RETRY_S; s++)
            through += schedule == RESBM_SCHEDULE_ASYNC ? a[s].done
                                                        : resbm_model_step_count(resbm_stage_model(st[s])) == RETRY_STEPS;
        if (through == RETRY_S) break;
        for (s = 0; s < RETRY_S; s++)
            if ((called[s] = !a[s].done))
                pthread_create(&th[s], NULL, schedule == RESBM_SCHEDULE_ASYNC ? lockstep_async_thread : lockstep_exact_thread, &a[s]);
        for (s = 0; s < RETRY_S; s++)
            if (called[s]) pthread_join(th[s], NULL);
    }
    for (s = 0; s < RETRY_S && !retry_lockstep; s++)
        pthread_create(&th[s], NULL, schedule == RESBM_SCHEDULE_ASYNC ? retry_async_thread : retry_thread, &a[s]);
    for (s = 0; s < RETRY_S; s++) {
        if (!retry_lockstep) pthread_join(th[s], NULL);
        if (retry_lockstep && resbm_model_step_count(resbm_stage_model(st[s])) != RETRY_STEPS) bad = 1;
        if (a[s].rc) bad = 1;
        failures[s] = a[s].failures;
        if (out) out[s] = a[s];
    }
    if (fault >= 0 && !link[from].fired) bad = 2;
    retry_eval_ok = 0;
    if (retry_lockstep && !bad) { /* the round after: the stages are whole again */
        for (s = 0; s < RETRY_S; s++) pthread_create(&th[s], NULL, lockstep_eval_thread, &a[s]);
        for (s = 0; s < RETRY_S; s++) pthread_join(th[s], NULL);
        for (retry_eval_ok = 1, s = 0; s < RETRY_S; s++)
            if (a[s].rc || a[s].loss != a[0].loss) retry_eval_ok = 0;
    }
    resbm_inproc_free(hub);
    return bad;
}

/* Every stage's parameters bit-identical to the reference run's. */
static void retry_same_as(resbm_stage **st, resbm_stage **ref, const char *what, const char *how) {
    size_t np, i;
    int s;
    for (s = 0; s < RETRY_S; s++) {
        const resbm_param *pp = resbm_model_params(resbm_stage_model(st[s]), &np);
        const resbm_param *pr = resbm_model_params(resbm_stage_model(ref[s]), NULL);
        for (i = 0; i < np; i++)
            CHECK(!memcmp(pp[i].value.data, pr[i].value.data, pp[i].value.ne[0] * pp[i].value.ne[1] * 4),
                  "%s, %s: stage %d %s differs from the run without the fault", what, how, s, pp[i].name);
    }
}

/* Every fault type, once, into an activation, a gradient, the norms and the commit mid-run:
   the stages fail that step together (none keeps an update another lacks), retry it in place and
   end with parameters bit-identical to a run without the fault. */
static void test_fault_retry_in_place(void) {
    resbm_stage *ref[RETRY_S], *st[RETRY_S];
    struct { const char *what; int from, to, kind, nth; } where[] = {
        {"activation 1->2, step 1", 1, 2, RESBM_KIND_ACT, 3},
        {"gradient 2->1, step 2", 2, 1, RESBM_KIND_GRAD, 4},
        {"norms 2->1, step 1", 2, 1, RESBM_KIND_CONTROL, 2},  /* control frame 0 is the hello */
        {"norms 1->0, step 2", 1, 0, RESBM_KIND_CONTROL, 3},
        {"commit 0->1, step 1", 0, 1, RESBM_KIND_CONTROL, 2},
        {"commit 1->2, step 2", 1, 2, RESBM_KIND_CONTROL, 3}}; /* the step's last frame */
    int fails[RETRY_S], w, fault, s;
    CHECK(retry_run(ref, -1, -1, 0, 0, -1, fails, RESBM_SCHEDULE_EXACT, NULL) == 0, "the run without a fault");
    if (th_fail_now) return;
    for (w = 0; w < (int)(sizeof(where) / sizeof(where[0])); w++)
        for (fault = 0; fault < FAULT_N; fault++) {
            int rc = retry_run(st, where[w].from, where[w].to, where[w].kind, where[w].nth, fault, fails,
                               RESBM_SCHEDULE_EXACT, NULL);
            CHECK(rc == 0, "%s, %s: %s", where[w].what, fault_names[fault], rc == 2 ? "the fault never fired" : "a stage did not finish");
            CHECK(fails[0] > 0 && fails[1] > 0 && fails[2] > 0, "%s, %s: every stage failed the step (%d %d %d)",
                  where[w].what, fault_names[fault], fails[0], fails[1], fails[2]);
            for (s = 0; s < RETRY_S && !rc; s++)
                CHECK(resbm_model_step_count(resbm_stage_model(st[s])) == RETRY_STEPS, "steps");
            if (!rc) retry_same_as(st, ref, where[w].what, fault_names[fault]);
            for (s = 0; s < RETRY_S; s++) resbm_stage_free(st[s]);
            if (th_fail_now) w = 99, fault = FAULT_N; /* the first failure says enough */
        }
    for (s = 0; s < RETRY_S; s++) resbm_stage_free(ref[s]);
}

/* The stages of an async run agree on where the stream restarted, and end as the delayed-update
   rule (tests/delayed.h) flushed before each batch it restarted from, bit for bit. */
static void async_matches_rule(resbm_stage **st, const retry_arg *out, int n_micro, int wu,
                               const char *what, const char *fname) {
    resbm_model *ref[RETRY_S];
    resbm_model_config mc = pipe_config();
    resbm_opt_config oc = resbm_opt_config_default();
    delayed_rule dr;
    int32_t tok[256], tg[256];
    int s, k, r;
    size_t np, i;
    for (s = 1; s < RETRY_S; s++) {
        CHECK(out[s].restarts == out[0].restarts, "%s, %s: stage %d restarted %d times, stage 0 %d",
              what, fname, s, out[s].restarts, out[0].restarts);
        for (r = 0; r < out[0].restarts && r < out[s].restarts; r++)
            CHECK(out[s].restart[r] == out[0].restart[r], "%s, %s: stage %d restarted from %ld, stage 0 from %ld",
                  what, fname, s, out[s].restart[r], out[0].restart[r]);
    }
    memset(&dr, 0, sizeof(dr));
    mc.stages = RETRY_S;
    oc.clip = 0.05f;
    dr.S = RETRY_S; dr.n = n_micro; dr.rows = (size_t)mc.batch; dr.predict = 2.0f; /* the default */
    for (s = 0; s < RETRY_S; s++) {
        resbm_model_config c = mc;
        c.stage = s;
        CHECK_RC(resbm_model_init(&c, &oc, &ref[s]), RESBM_OK);
        dr.stage[s] = ref[s];
    }
    for (k = 0; k < RETRY_STEPS && !th_fail_now; k++) {
        int flush = k + 1 == RETRY_STEPS || k < wu; /* a warm-up step: a stream of one */
        for (r = 0; r < out[0].restarts; r++) flush |= out[0].restart[r] == k + 1;
        pipe_batch(tok, tg, &mc, dr.n * mc.batch, k);
        delayed_step(&dr, tok, tg, flush);
    }
    delayed_free(&dr);
    for (s = 0; s < RETRY_S && !th_fail_now; s++) {
        const resbm_param *pp = resbm_model_params(resbm_stage_model(st[s]), &np);
        const resbm_param *pr = resbm_model_params(ref[s], NULL);
        CHECK(resbm_model_step_count(resbm_stage_model(st[s])) == RETRY_STEPS, "steps");
        for (i = 0; i < np; i++)
            CHECK(!memcmp(pp[i].value.data, pr[i].value.data, pp[i].value.ne[0] * pp[i].value.ne[1] * 4),
                  "%s, %s: stage %d %s differs from the rule restarted at step %ld", what,
                  fname, s, pp[i].name, out[0].restarts ? out[0].restart[0] : -1L);
    }
    for (s = 0; s < RETRY_S; s++) resbm_model_free(ref[s]);
}

/* Async: every fault type into an activation, a gradient, the norms and the commit (one of them
   in the last flush): every stage fails and drops the steps in flight; the stream starts again
   from the step count, the same on every stage; the end is the delayed-update rule
   (tests/delayed.h) flushed before each batch the stream restarted from, bit for bit. */
static void test_fault_async_restart(void) {
    resbm_stage *st[RETRY_S];
    retry_arg out[RETRY_S];
    struct { const char *what; int from, to, kind, nth; } where[] = {
        {"activation 1->2, batch 1", 1, 2, RESBM_KIND_ACT, 3},
        {"gradient 2->1, batch 2", 2, 1, RESBM_KIND_GRAD, 4},
        {"norms 2->1, batch 1", 2, 1, RESBM_KIND_CONTROL, 2},  /* control frame 0 is the hello */
        {"norms 1->0, batch 2", 1, 0, RESBM_KIND_CONTROL, 3},
        {"commit 0->1, batch 1", 0, 1, RESBM_KIND_CONTROL, 2},
        {"commit 1->2, batch 2 (in the flush)", 1, 2, RESBM_KIND_CONTROL, 3}};
    int fails[RETRY_S], w, fault, s, deep, wu, nw = (int)(sizeof(where) / sizeof(where[0]));
    /* deep: 4 microbatches, every stage as deep as the rule allows (4/2/1), a subset of the
       faults and a bad target on the last stage at step 2 (where two updates could separate);
       wu 2: the first two steps exact (faults in them, and in the stream that starts after) */
    for (wu = 0; wu <= 2; wu += 2)
    for (deep = 0; deep < (wu ? 1 : 2); deep++)
    for (w = 0; w < nw + deep; w++)
        for (fault = 0; fault < FAULT_N; fault++) {
            int rc, input = w == nw;
            const char *what = input ? "a bad target on the last stage, step 2" : where[w].what;
            const char *fname = input ? "once" : fault_names[fault];
            if ((deep || wu) && fault != FAULT_GARBAGE && fault != FAULT_NAN && fault != FAULT_DROP) continue;
            if (input && fault != FAULT_GARBAGE) continue;
            retry_warmup = wu;
            retry_micro = deep ? 4 : 2;
            retry_budget = deep ? (size_t)1 << 30 : 0;
            retry_bad_call = input ? 2 : -1;
            rc = retry_run(st, input ? -1 : where[w].from, input ? -1 : where[w].to, input ? 0 : where[w].kind,
                           input ? 0 : where[w].nth, input ? -1 : fault, fails, RESBM_SCHEDULE_ASYNC, out);
            retry_micro = 2; retry_budget = 0; retry_bad_call = -1; retry_warmup = 0;
            if (input) fault = FAULT_N - 1; /* one case */
            CHECK(rc == 0, "%s%s, %s: %s", deep ? "deep: " : wu ? "warm-up 2: " : "", what, fname,
                  rc == 2 ? "the fault never fired" : "a stage did not finish");
            CHECK(fails[0] > 0 && fails[1] > 0 && fails[2] > 0, "%s, %s: every stage failed (%d %d %d)",
                  what, fname, fails[0], fails[1], fails[2]);
            if (!rc) async_matches_rule(st, out, deep ? 4 : 2, wu, what, fname);
            for (s = 0; s < RETRY_S; s++) resbm_stage_free(st[s]);
            if (th_fail_now) w = 99, fault = FAULT_N;
        }
}

/* Hosts that run the stages in lock step: a fault costs each stage at most two failed calls,
   then the run ends as without it, and an eval on every stage in the round after succeeds. A
   stage that returned a call its neighbour then failed (the step applied before a commit was
   lost further on; async, the last frames of a stream call lost) hears of it a round later, and
   that round fails on every stage too. (Before, the stages were left an attempt apart, and every
   round failed until the attempt counter filled, 255 rounds later.) A stage behind a lost last
   frame of the flush fails it with both updates applied; the next call must not fail on its
   abort, nor may an eval whose own flush lost it. */
static void test_fault_lock_step(void) {
    resbm_stage *ref[RETRY_S], *st[RETRY_S];
    retry_arg out[RETRY_S];
    struct { const char *what; int from, to, kind, nth, schedule, end_eval, micro; } where[] = {
        {"the hello 0->1", 0, 1, RESBM_KIND_CONTROL, 0, RESBM_SCHEDULE_EXACT, 0, 2},
        {"async: the hello 2->1", 2, 1, RESBM_KIND_CONTROL, 0, RESBM_SCHEDULE_ASYNC, 0, 2},
        {"commit 0->1, step 1", 0, 1, RESBM_KIND_CONTROL, 2, RESBM_SCHEDULE_EXACT, 0, 2},
        {"commit 1->2, step 2", 1, 2, RESBM_KIND_CONTROL, 3, RESBM_SCHEDULE_EXACT, 0, 2},
        {"commit 0->1, the last step", 0, 1, RESBM_KIND_CONTROL, RETRY_STEPS, RESBM_SCHEDULE_EXACT, 0, 2},
        {"activation 1->2, step 1", 1, 2, RESBM_KIND_ACT, 3, RESBM_SCHEDULE_EXACT, 0, 2},
        {"gradient 2->1, step 2", 2, 1, RESBM_KIND_GRAD, 4, RESBM_SCHEDULE_EXACT, 0, 2},
        {"async: commit 0->1, batch 1", 0, 1, RESBM_KIND_CONTROL, 2, RESBM_SCHEDULE_ASYNC, 0, 2},
        {"async: commit 1->2, batch 2 (in the flush)", 1, 2, RESBM_KIND_CONTROL, 3, RESBM_SCHEDULE_ASYNC, 0, 2},
        {"async: the flush's last frame 1->2", 1, 2, RESBM_KIND_CONTROL, 5, RESBM_SCHEDULE_ASYNC, 0, 2},
        {"async: the flush's last frame 1->2, in an eval", 1, 2, RESBM_KIND_CONTROL, 5, RESBM_SCHEDULE_ASYNC, 1, 2},
        {"async: activation 1->2, batch 1's last", 1, 2, RESBM_KIND_ACT, 3, RESBM_SCHEDULE_ASYNC, 0, 2},
        {"async: activation 0->1, batch 1's last", 0, 1, RESBM_KIND_ACT, 3, RESBM_SCHEDULE_ASYNC, 0, 2},
        {"async: gradient 2->1, batch 1's first", 2, 1, RESBM_KIND_GRAD, 2, RESBM_SCHEDULE_ASYNC, 0, 2},
        {"async: gradient 2->1, batch 1's last", 2, 1, RESBM_KIND_GRAD, 3, RESBM_SCHEDULE_ASYNC, 0, 2},
        {"async: gradient 1->0, batch 1's first", 1, 0, RESBM_KIND_GRAD, 2, RESBM_SCHEDULE_ASYNC, 0, 2},
        /* three microbatches: depths 3 / 2 / 1, so stage 0 may have returned a call when
           stage 2 fails it, and hears of it through stage 1 */
        {"async, 3 microbatches: activation 1->2, batch 1's second", 1, 2, RESBM_KIND_ACT, 4, RESBM_SCHEDULE_ASYNC, 0, 3},
        {"async, 3 microbatches: activation 1->2, batch 1's last", 1, 2, RESBM_KIND_ACT, 5, RESBM_SCHEDULE_ASYNC, 0, 3},
        {"async, 3 microbatches: gradient 2->1, batch 1's second", 2, 1, RESBM_KIND_GRAD, 4, RESBM_SCHEDULE_ASYNC, 0, 3}};
    static const int faults[2] = {FAULT_DROP, FAULT_FLIP};
    int fails[RETRY_S], w, f, s;
    char late[32];
    CHECK(retry_run(ref, -1, -1, 0, 0, -1, fails, RESBM_SCHEDULE_EXACT, NULL) == 0, "the run without a fault");
    if (th_fail_now) return;
    for (w = 0; w < (int)(sizeof(where) / sizeof(where[0])); w++)
        for (f = 0; f < 2; f++) {
            const char *what = where[w].what, *fname = fault_names[faults[f]];
            int rc;
            retry_lockstep = 1;
            retry_end_eval = where[w].end_eval;
            retry_micro = where[w].micro;
            rc = retry_run(st, where[w].from, where[w].to, where[w].kind, where[w].nth, faults[f], fails,
                           where[w].schedule, out);
            retry_lockstep = retry_end_eval = 0;
            retry_micro = 2;
            CHECK(rc == 0, "%s, %s: %s after %d rounds (failures %d %d %d)", what, fname,
                  rc == 2 ? "the fault never fired" : "a stage did not finish", retry_rounds, fails[0],
                  fails[1], fails[2]);
            /* async: the stream starts again from the step count, two batches back at most */
            CHECK(retry_rounds <= RETRY_STEPS + 2 + (where[w].schedule == RESBM_SCHEDULE_ASYNC ? 3 : 0),
                  "%s, %s: %d rounds for %d steps", what, fname, retry_rounds, RETRY_STEPS);
            CHECK(fails[0] <= 2 && fails[1] <= 2 && fails[2] <= 2, "%s, %s: failures %d %d %d", what, fname,
                  fails[0], fails[1], fails[2]);
            CHECK(rc || retry_eval_ok, "%s, %s: the eval in the round after failed", what, fname);
            if (!rc && where[w].schedule == RESBM_SCHEDULE_ASYNC) async_matches_rule(st, out, where[w].micro, 0, what, fname);
            if (!rc && where[w].schedule == RESBM_SCHEDULE_EXACT) retry_same_as(st, ref, what, fname);
            for (s = 0; s < RETRY_S; s++) resbm_stage_free(st[s]);
            if (th_fail_now) w = 99, f = 2;
        }
    /* no fault: one stage starts late. The others' waits for its hello time out (a failure before
       agreement, which sends nothing and counts no attempt); it agrees on their hellos, fails the
       call without them and counts the attempt they run next. Before, the two stayed an attempt
       apart, every round failing until the counter filled (about 255). */
    for (w = 0; w < 2 * RETRY_S && !th_fail_now; w++) {
        int schedule = w < RETRY_S ? RESBM_SCHEDULE_EXACT : RESBM_SCHEDULE_ASYNC, rc;
        retry_lockstep = 1;
        retry_late = w % RETRY_S;
        rc = retry_run(st, -1, -1, 0, 0, -1, fails, schedule, out);
        CHECK(rc == 0 && retry_eval_ok && fails[0] >= 1 && fails[1] >= 1 && fails[2] >= 1 && /* it happened */
                  fails[0] <= 2 && fails[1] <= 2 && fails[2] <= 2,
              "stage %d late, %s: %s after %d rounds (failures %d %d %d)", retry_late,
              schedule == RESBM_SCHEDULE_EXACT ? "exact" : "async", rc ? "a stage did not finish" : "done",
              retry_rounds, fails[0], fails[1], fails[2]);
        snprintf(late, sizeof(late), "stage %d late", retry_late);
        if (!rc && schedule == RESBM_SCHEDULE_ASYNC) async_matches_rule(st, out, 2, 0, late, "async");
        if (!rc && schedule == RESBM_SCHEDULE_EXACT) retry_same_as(st, ref, late, "exact");
        retry_lockstep = 0;
        retry_late = -1;
        for (s = 0; s < RETRY_S; s++) resbm_stage_free(st[s]);
    }
    for (s = 0; s < RETRY_S; s++) resbm_stage_free(ref[s]);
}
#endif

/* ---- argument validation across the layer API -------------------------------------------------- */
static void test_layer_args(void) {
    float x[64] = {0}, y[64], g[16] = {0}, r[8];
    int32_t t[4] = {0, 1, 2, 3};
    memset(y, 0x7f, sizeof(y));
    CHECK_RC(resbm_rmsnorm_forward(NULL, NULL, r, x, g, 4, 16), RESBM_EINVAL);
    CHECK_RC(resbm_rmsnorm_forward(NULL, y, r, x, g, 0, 16), RESBM_EINVAL);
    CHECK_RC(resbm_rmsnorm_backward(NULL, y, g, x, x, g, NULL, 4, 16), RESBM_EINVAL);
    CHECK_RC(resbm_linear_forward(NULL, y, x, x, 4, 0, 4), RESBM_EINVAL);
    CHECK_RC(resbm_linear_backward(NULL, y, y, x, x, x, 4, 4, 0, 0), RESBM_EINVAL);
    CHECK_RC(resbm_linear_backward(NULL, y, NULL, x, x, x, 4, 4, 4, 0), RESBM_EINVAL);
    CHECK_RC(resbm_embedding_forward(y, t, x, 4, 16, 0), RESBM_EINVAL);
    CHECK_RC(resbm_embedding_forward(y, NULL, x, 4, 16, 4), RESBM_EINVAL);
    CHECK_RC(resbm_rope_tables(r, r, 4, 3, 10000.0), RESBM_EINVAL);
    CHECK_RC(resbm_rope_forward(NULL, y, r, r, 4, 4, 16, 0), RESBM_EINVAL);
    CHECK_RC(resbm_attention_forward(NULL, y, r, x, x, x, 4, 0, 16, 2), RESBM_EINVAL);
    CHECK_RC(resbm_attention_backward(NULL, y, y, y, x, x, x, x, x, NULL, 4, 4, 16, 2), RESBM_EINVAL);
    CHECK_RC(resbm_swiglu_forward(NULL, y, x, NULL, 4), RESBM_EINVAL);
    CHECK_RC(resbm_swiglu_backward(NULL, y, y, x, x, x, 0), RESBM_EINVAL);
    CHECK_RC(resbm_xent_forward(NULL, y, r, x, t, 4, 0), RESBM_EINVAL);
    CHECK_RC(resbm_xent_backward(NULL, y, x, NULL, 4, 4, 1.0f), RESBM_EINVAL);
    CHECK(y[0] != 0 && y[63] != 0, "output touched by a rejected call");
}

int main(int argc, char **argv) {
    int i, rc;
    for (i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--filter")) filter = argv[i + 1];
    strcpy(tmp_dir, "/tmp/resbm_test.XXXXXX");
    if (!mkdtemp(tmp_dir)) { printf("cannot make a temp directory\n"); return 1; }
    RUN(test_strerror);
    RUN(test_sizes);
    RUN(test_rng);
    RUN(test_arena);
    RUN(test_pool);
    RUN(test_gemm_shapes);
#ifndef RESBM_USE_CBLAS
    RUN(test_gemm_symmetric);
#endif
    RUN(test_gemm_large_threads);
    RUN(test_gemm_bf16);
#ifdef RESBM__BF16
    RUN(test_model_bf16);
#endif
    RUN(test_gemm_args);
    RUN(test_grad_rmsnorm);
    RUN(test_grad_linear);
    RUN(test_grad_rope);
    RUN(test_grad_attention);
    RUN(test_attention_paths);
    RUN(test_grad_swiglu);
    RUN(test_grad_embedding);
    RUN(test_grad_xent);
    RUN(test_grad_bottleneck);
    RUN(test_bottleneck_init_identity);
    RUN(test_grad_model);
    RUN(test_model_names_init);
    RUN(test_model_stage_split);
    RUN(test_model_threads_bitwise);
    RUN(test_model_learns);
    RUN(test_model_state_errors);
    RUN(test_config_validation);
    RUN(test_lr_schedule);
    RUN(test_adamw_by_hand);
    RUN(test_sgd_by_hand);
    RUN(test_muon_by_hand);
    RUN(test_train_step_composition);
    RUN(test_grad_sqnorm);
    RUN(test_step_allocates_nothing);
    RUN(test_failing_allocator);
    RUN(test_safetensors_write);
    RUN(test_safetensors_read);
    RUN(test_checkpoint_resume);
    RUN(test_checkpoint_refuses);
    RUN(test_checkpoint_corrupt);
    RUN(test_layer_args);
    RUN(test_poisoned_updates);
    RUN(test_update_all_or_nothing);
    RUN(test_refusals_leave_state);
    RUN(test_wire_i8_scale_and_sizes);
    RUN(test_wire_i8_levels);
    RUN(test_config_bounds);
    RUN(test_checkpoint_writers);
    RUN(test_bottleneck_lr_scale_all_optimizers);
    RUN(test_grad_stages_microbatches);
    RUN(test_generate_and_eval_oracles);
    RUN(test_checkpoint_write_fails_cleanly);
    RUN(test_kernels_refuse_overlap);
    RUN(test_backward_enomem_untouched);
    RUN(test_clip_scale_refuses_bad_totals);
    RUN(test_checkpoint_optimizer_of_every_model);
    RUN(test_sizes_that_wrap);
    RUN(test_stage_slots_validates);
    RUN(test_crc32c);
    RUN(test_vector_exp);
    RUN(test_wire_conversions);
    RUN(test_wire_roundtrip);
    RUN(test_wire_rejects);
    RUN(test_boundary_object);
#ifndef RESBM_NO_THREADS
    RUN(test_inproc);
    RUN(test_shaper);
    RUN(test_dropin_example);
    RUN(test_pipeline_equals_sequential);
    RUN(test_pipeline_in_flight_depth);
    RUN(test_pipeline_async_equals_reference);
    RUN(test_pipeline_async_reload);
    RUN(test_async_flush_all_or_nothing);
    RUN(test_partial_rows_through_boundary);
    RUN(test_pipeline_single_stage_and_threads);
    RUN(test_pipeline_wire_bytes);
    RUN(test_pipeline_failures);
    RUN(test_lost_hello_repaired);
    RUN(test_stage_reentry_and_endless_stale);
    RUN(test_model_held_by_its_stage);
    RUN(test_flush_lost_frame);
    RUN(test_pipeline_timeout_scales);
    RUN(test_hostile_peer);
    RUN(test_peer_values_checked);
    RUN(test_fault_retry_in_place);
    RUN(test_fault_lock_step);
    RUN(test_fault_async_restart);
    RUN(test_pool_one_caller);
    RUN(test_shaper_distrust);
    RUN(test_transport_codes);
    RUN(test_job_agreement);
    RUN(test_job_recovers_after_reload);
    RUN(test_generate_agreement_and_refusals);
    RUN(test_eval_rows_agree);
    RUN(test_job_mismatch_leaves_no_backlog);
    RUN(test_transport_check);
    RUN(test_pipeline_eval_generate);
#endif
    rc = th_finish();
    rmdir(tmp_dir); /* empty unless a failed test left a file behind */
    return rc;
}
