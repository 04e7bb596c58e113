/* overhead.c - what the bottleneck costs: the same 4-stage model in one process, with and without
   the boundaries (d/r = 128 against r = d), step time and peak memory side by side as ratios.

   One step = n microbatches; each goes forward through the 4 stages and back, handing the
   boundary tensors over in memory (no wire: this measures compute and memory, not bandwidth),
   then the global norm clip and AdamW. Each stage keeps S - s activation sets, as the 1F1B
   runtime does. The two models are stepped alternately (A B A B ...) so drift on a shared
   machine hits both alike; the ratio is the median over steps of B's time / A's time in the same
   pair (the order within a pair alternates). Memory is the peak of
   bytes the library allocated (counted through RESBM_MALLOC/RESBM_FREE), both models built the
   same way. With --sweep-m, also the cost of hidden widths m = d/8 .. d.

   --clock cpu measures process CPU time instead of wall time: with one thread it is blind to the
   time a shared VM gives to others, and shows the compute overhead with far less noise.
   --control first compares the r = d model with itself, to show the noise floor of the ratio.

   Usage: bench_overhead [--threads 2] [--steps 20] [--d 256] [--layers 8] [--ratio 128]
                         [--m M] [--micro 4] [--batch 8] [--clock wall|cpu] [--control]
                         [--sweep-m]                                       (make bench-overhead) */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>

static size_t live_bytes, peak_bytes;
static void *count_malloc(size_t n) {
    size_t *p = (size_t *)malloc(n + 16);
    if (!p) return NULL;
    p[0] = n;
    live_bytes += n;
    if (live_bytes > peak_bytes) peak_bytes = live_bytes;
    return (char *)p + 16;
}
static void count_free(void *q) {
    if (!q) return;
    live_bytes -= *(size_t *)((char *)q - 16);
    free((char *)q - 16);
}
#define RESBM_MALLOC(sz, u) ((void)(u), count_malloc(sz))
#define RESBM_FREE(p, u) ((void)(u), count_free(p))
#define RESBM_IMPLEMENTATION
#include "../resbm.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

enum { S = 4 };

typedef struct {
    resbm_model *st[S];
    resbm_opt_config oc;
    float *h[S], *g[S]; /* boundary tensors: z forward, dL/dz back */
    size_t bytes;       /* peak library bytes while building it */
    double *t;
} pipeline;

static int use_cpu_clock; /* --clock cpu: process CPU time, blind to time the VM gives away */
static double now(void) {
    struct timespec ts;
    clock_gettime(use_cpu_clock ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void die(const char *what, int rc) {
    fprintf(stderr, "%s: %s\n", what, resbm_strerror(rc));
    exit(1);
}

static void build(pipeline *p, resbm_model_config mc, int steps) {
    size_t before = live_bytes, w, Nmb = (size_t)mc.batch * (size_t)mc.seq;
    int s, rc;
    peak_bytes = live_bytes;
    p->oc = resbm_opt_config_default();
    for (s = 0; s < S; s++) {
        resbm_model_config c = mc;
        c.stage = s;
        c.act_slots = S - s; /* what the 1F1B runtime keeps */
        if ((rc = resbm_model_init(&c, &p->oc, &p->st[s]))) die("init", rc);
    }
    w = (size_t)(mc.r ? mc.r : mc.d);
    for (s = 0; s < S; s++) {
        p->h[s] = (float *)count_malloc(Nmb * w * sizeof(float));
        p->g[s] = (float *)count_malloc(Nmb * w * sizeof(float));
        if (!p->h[s] || !p->g[s]) die("boundary buffers", RESBM_ENOMEM);
    }
    p->bytes = peak_bytes - before;
    p->t = (double *)malloc((size_t)steps * sizeof(double));
}

static void release(pipeline *p) {
    int s;
    for (s = 0; s < S; s++) {
        resbm_model_free(p->st[s]);
        count_free(p->h[s]);
        count_free(p->g[s]);
    }
    free(p->t);
}

/* One step of n microbatches; returns seconds. */
static double step(pipeline *p, const int32_t *tok, const int32_t *tg, int n) {
    resbm_model_config c = *resbm_model_get_config(p->st[0]);
    size_t Nmb = (size_t)c.batch * (size_t)c.seq;
    double t0 = now(), sq, total = 0;
    float loss;
    int k, s, rc;
    for (s = 0; s < S; s++) resbm_model_zero_grad(p->st[s]);
    for (k = 0; k < n; k++) {
        for (s = 0; s < S; s++)
            if ((rc = resbm_model_forward(p->st[s], 0, s == 0 ? tok + k * Nmb : NULL, s ? p->h[s - 1] : NULL,
                                          s == S - 1 ? tg + k * Nmb : NULL, (size_t)c.batch,
                                          s < S - 1 ? p->h[s] : NULL, s == S - 1 ? &loss : NULL)))
                die("forward", rc);
        for (s = S - 1; s >= 0; s--)
            if ((rc = resbm_model_backward(p->st[s], 0, s < S - 1 ? p->g[s] : NULL, s ? p->g[s - 1] : NULL,
                                           1.0f / (float)n)))
                die("backward", rc);
    }
    for (s = 0; s < S; s++) { resbm_model_grad_sqnorm(p->st[s], &sq); total += sq; }
    for (s = 0; s < S; s++)
        if ((rc = resbm_model_update(p->st[s], resbm_clip_scale(&p->oc, (float)total)))) die("update", rc);
    return now() - t0;
}

static double median(double *t, int n) {
    qsort(t, (size_t)n, sizeof(double), cmp_double);
    return t[n / 2];
}

/* Steps A and B alternately; prints and returns the time ratio B/A. */
static double compare(resbm_model_config a_cfg, resbm_model_config b_cfg, int steps, int n,
                      const char *label) {
    pipeline A, B;
    size_t N = (size_t)n * (size_t)a_cfg.batch * (size_t)a_cfg.seq, i;
    int32_t *tok = (int32_t *)malloc(N * 4), *tg = (int32_t *)malloc(N * 4);
    resbm_rng r;
    double ta, tb, ratio, *pair = (double *)malloc((size_t)steps * sizeof(double));
    int k;
    build(&A, a_cfg, steps);
    build(&B, b_cfg, steps);
    resbm_rng_seed(&r, 11, 3);
    for (k = -2; k < steps; k++) { /* two warm-up steps */
        for (i = 0; i < N; i++) { tok[i] = (int32_t)(resbm_rng_u32(&r) & 255); tg[i] = (int32_t)(resbm_rng_u32(&r) & 255); }
        if (k & 1) { tb = step(&B, tok, tg, n); ta = step(&A, tok, tg, n); } /* alternate the order */
        else { ta = step(&A, tok, tg, n); tb = step(&B, tok, tg, n); }
        if (k >= 0) { A.t[k] = ta; B.t[k] = tb; pair[k] = tb / ta; }
    }
    ta = median(A.t, steps);
    tb = median(B.t, steps);
    ratio = median(pair, steps); /* adjacent steps share the machine's state of the moment */
    printf("%-24s r=%-4d m=%-4d step %7.1f ms vs %7.1f ms  time x%.3f (median of paired ratios)  memory %7.2f MiB vs %7.2f MiB  x%.3f\n",
           label, b_cfg.r, resbm_model_get_config(B.st[0])->m, ta * 1e3, tb * 1e3, ratio, A.bytes / 1048576.0, B.bytes / 1048576.0,
           (double)B.bytes / (double)A.bytes);
    release(&A);
    release(&B);
    free(tok); free(tg); free(pair);
    return ratio;
}

int main(int argc, char **argv) {
    resbm_model_config base = resbm_model_config_default(), rb;
    int steps = 20, n = 4, ratio = 128, m = 0, batch = 8, sweep = 0, control = 0, i;
    base.threads = 2;
    for (i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(argv[i], "--sweep-m")) { sweep = 1; continue; }
        if (!strcmp(argv[i], "--control")) { control = 1; continue; }
        if (!strcmp(argv[i], "--threads")) base.threads = atoi(v);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(v);
        else if (!strcmp(argv[i], "--d")) base.d = atoi(v);
        else if (!strcmp(argv[i], "--layers")) base.layers = atoi(v);
        else if (!strcmp(argv[i], "--ratio")) ratio = atoi(v);
        else if (!strcmp(argv[i], "--m")) m = atoi(v);
        else if (!strcmp(argv[i], "--micro")) n = atoi(v);
        else if (!strcmp(argv[i], "--batch")) batch = atoi(v);
        else if (!strcmp(argv[i], "--clock") && (!strcmp(v, "cpu") || !strcmp(v, "wall"))) use_cpu_clock = !strcmp(v, "cpu");
        else { fprintf(stderr, "unknown flag %s\n", argv[i]); return 2; }
        i++;
    }
    if (steps < 1 || n < 1 || batch < n || batch % n || ratio < 1) {
        fprintf(stderr, "need steps >= 1, micro >= 1 dividing batch, ratio >= 1\n");
        return 2;
    }
    base.stages = S;
    base.batch = batch / n;
    base.r = 0; /* r = d: the raw residual stream crosses, no bottleneck parameters */
    rb = base;
    rb.r = base.d / ratio > 0 ? base.d / ratio : 1;
    rb.m = m;
    printf("overhead: d=%d L=%d S=%d T=%d batch %d in %d microbatches, %d threads, %d steps, AdamW, %s time\n",
           base.d, base.layers, S, base.seq, batch, n, base.threads, steps, use_cpu_clock ? "CPU" : "wall");
    if (control) compare(base, base, steps, n, "control: r = d vs r = d"); /* the noise floor */
    compare(base, rb, steps, n, "bottleneck vs r = d");
    if (sweep) {
        int ms[] = {base.d / 8, base.d / 4, base.d / 2, base.d};
        for (i = 0; i < 4; i++) {
            rb.m = ms[i];
            compare(base, rb, steps, n, "hidden width");
        }
    }
    return 0;
}
