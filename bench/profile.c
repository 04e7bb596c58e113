/* profile.c - where one training step's time goes: the step of bench/step.c (d=256 L=8 H=4
   f=688 T=128 batch 8, one stage, AdamW), built with RESBM_PROFILE so the thread pool times every
   parallel dispatch by the kernel it runs. Each row is wall time on the calling thread per step;
   "fork-join wait" is the part of those rows the caller spent waiting for the workers after its
   own share; "outside the pool" is the step's time not inside any dispatch (memset, memcpy,
   embedding, the loss sum, call overhead). A second table takes the GEMMs apart by shape: their
   rate inside the step beside the same call alone, warm (operands in cache) and cold (a 64 MiB
   write between calls evicts them), which says how much of the step's GEMM time is the kernel
   and how much is the cache it finds (resbm_gemm's calls only: attention's blocked products and
   Muon's Newton-Schulz are in their own rows; "+=" shapes are timed alone accumulating too).
   Usage: bench_profile [--threads N] [--steps S] [--d D] [--layers L] [--opt adamw|muon]
                        [--gemm f32|bf16] */
#define _POSIX_C_SOURCE 200809L
#define RESBM_PROFILE
#define RESBM_IMPLEMENTATION
#include "../resbm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct { const char *name; double seconds, wait; long calls; } row;

/* The kernel a dispatch ran, by the function the pool was given. */
static const char *kind_of(const resbm__prof_entry *e) {
    resbm__range_fn r = e->range;
    if (e->task == resbm__gemm_task) return "GEMM";
    if (e->task == resbm__attn_fwd_blocked || e->task == resbm__attn_fwd_plain) return "attention forward";
    if (e->task == resbm__attn_bwd_blocked || e->task == resbm__attn_bwd_plain) return "attention backward";
    if (r == resbm__rmsnorm_fwd_rows) return "rmsnorm forward";
    if (r == resbm__rmsnorm_bwd_rows || r == resbm__rmsnorm_bwd_cols) return "rmsnorm backward";
    if (r == resbm__rope_rows) return "RoPE (forward and backward)";
    if (r == resbm__swiglu_fwd_range) return "SwiGLU forward";
    if (r == resbm__swiglu_bwd_range || r == resbm__swiglu_mlp_bwd_range)
        return "SwiGLU backward (with the gate's recompute)";
    if (r == resbm__xent_fwd_rows || r == resbm__xent_bwd_rows) return "cross-entropy";
    if (r == resbm__silu_fwd_range || r == resbm__silu_bwd_range) return "bottleneck silu";
    if (r == resbm__sqnorm_range) return "gradient norm";
    if (r == resbm__copy_range || r == resbm__state_copy_range) return "backup copy (all-or-nothing update)";
    if (r == resbm__finite_range) return "finite check of the update";
    if (r == resbm__update_range) return "optimizer: backup, AdamW and finite check in one pass";
    if (r == resbm__adamw_range || r == resbm__sgd_range) return "optimizer (AdamW)";
    return "other dispatches";
}

/* The best of 5 calls of one shape alone; cold: evict[] rewritten before each. */
static double gemm_alone(resbm_pool *pool, const resbm__prof_gemm *g, float *evict, size_t nevict) {
    size_t i, na = g->M * g->K, nb = g->K * g->N;
    float *A = (float *)malloc(na * 4), *B = (float *)malloc(nb * 4), *C = (float *)malloc(g->M * g->N * 4);
    double best = 1e30;
    int k;
    if (!A || !B || !C) { free(A); free(B); free(C); return 0.0; }
    for (i = 0; i < na; i++) A[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f;
    for (i = 0; i < nb; i++) B[i] = (float)((i * 104729) % 1000) * 1e-3f - 0.5f;
    memset(C, 0, g->M * g->N * 4);
    resbm_gemm(pool, g->form, g->accumulate, C, A, B, g->M, g->N, g->K);
    for (k = 0; k < 5; k++) {
        double t0;
        if (evict) for (i = 0; i < nevict; i++) evict[i] = (float)(i + (size_t)k);
        t0 = now();
        resbm_gemm(pool, g->form, g->accumulate, C, A, B, g->M, g->N, g->K);
        t0 = now() - t0;
        if (t0 < best) best = t0;
    }
    free(A); free(B); free(C);
    return 2.0 * (double)g->M * (double)g->N * (double)g->K / best * 1e-9;
}

static void gemm_shapes(resbm_pool *pool, int steps) {
    static const char *form[] = {"NT", "NN", "TN"}; /* RESBM_GEMM_* order */
    resbm__prof_gemm g[RESBM__PROF_GEMMS];
    size_t nevict = (size_t)16 << 20; /* 64 MiB: more than this machine's caches */
    float *evict = (float *)malloc(nevict * 4);
    double flops = 0.0, secs = 0.0, warm_s = 0.0, cold_s = 0.0;
    int n = 0, i, j;
    for (i = 0; i < RESBM__PROF_GEMMS && pool->prof_gemm[i].calls; i++) g[n++] = pool->prof_gemm[i];
    for (i = 1; i < n; i++) { /* largest first */
        resbm__prof_gemm t = g[i];
        for (j = i; j > 0 && g[j - 1].seconds < t.seconds; j--) g[j] = g[j - 1];
        g[j] = t;
    }
    printf("\n| GEMM (form M N K, += when accumulating) | calls per step | ms per step | GFLOP/s in the step | alone, warm | alone, cold |\n");
    printf("|---|--:|--:|--:|--:|--:|\n");
    for (i = 0; i < n; i++) {
        double f = 2.0 * (double)g[i].M * (double)g[i].N * (double)g[i].K * (double)g[i].calls;
        double warm = gemm_alone(pool, &g[i], NULL, 0), cold = evict ? gemm_alone(pool, &g[i], evict, nevict) : 0.0;
        printf("| %s %zu %zu %zu%s | %.0f | %.2f | %.1f | %.1f | %.1f |\n", form[g[i].form], g[i].M, g[i].N, g[i].K,
               g[i].accumulate ? " +=" : "", (double)g[i].calls / steps, g[i].seconds / steps * 1e3, f / g[i].seconds * 1e-9, warm, cold);
        flops += f; secs += g[i].seconds;
        if (warm > 0.0) warm_s += f / (warm * 1e9);
        if (cold > 0.0) cold_s += f / (cold * 1e9);
    }
    printf("| **all** | | %.2f | %.1f | %.1f | %.1f |\n", secs / steps * 1e3, flops / secs * 1e-9,
           warm_s > 0.0 ? flops / warm_s * 1e-9 : 0.0, cold_s > 0.0 ? flops / cold_s * 1e-9 : 0.0);
    free(evict);
}

int main(int argc, char **argv) {
    resbm_model_config mc = resbm_model_config_default();
    resbm_opt_config oc = resbm_opt_config_default();
    resbm_model *m;
    resbm_pool *pool;
    row rows[RESBM__PROF_SLOTS];
    int steps = 10, nrows = 0, i, s, rc;
    size_t N, k;
    int32_t *tok, *tg;
    double total = 0.0, inside = 0.0, wait = 0.0, gemm = 0.0, gemm_flops, L, d, f, V, tokens;
    long calls = 0;
    resbm_rng r;
    float loss;
    mc.batch = 8;
    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--threads")) mc.threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--d")) mc.d = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--layers")) mc.layers = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--opt")) oc.kind = strcmp(argv[i + 1], "muon") ? RESBM_OPT_ADAMW : RESBM_OPT_MUON;
        else if (!strcmp(argv[i], "--gemm")) mc.gemm_bf16 = !strcmp(argv[i + 1], "bf16");
        else { fprintf(stderr, "unknown flag %s\n", argv[i]); return 2; }
    }
    if (steps < 1) { fprintf(stderr, "--steps must be >= 1\n"); return 2; }
    if ((rc = resbm_model_init(&mc, &oc, &m))) { fprintf(stderr, "init: %s\n", resbm_strerror(rc)); return 1; }
    pool = m->pool;
    N = (size_t)mc.batch * (size_t)mc.seq;
    tok = (int32_t *)malloc(N * 4); tg = (int32_t *)malloc(N * 4);
    if (!tok || !tg) return 1;
    resbm_rng_seed(&r, 5, 5);
    for (s = -3; s < steps; s++) { /* three untimed steps first */
        double t0;
        for (k = 0; k < N; k++) { tok[k] = (int32_t)(resbm_rng_u32(&r) & 255); tg[k] = (int32_t)(resbm_rng_u32(&r) & 255); }
        if (s == 0) { memset(pool->prof, 0, sizeof(pool->prof)); memset(pool->prof_gemm, 0, sizeof(pool->prof_gemm)); }
        t0 = now();
        if ((rc = resbm_model_train_step(m, tok, tg, (size_t)mc.batch, 1, &loss))) {
            fprintf(stderr, "step: %s\n", resbm_strerror(rc));
            return 1;
        }
        if (s >= 0) total += now() - t0;
    }
    for (i = 0; i < RESBM__PROF_SLOTS && pool->prof[i].calls; i++) { /* merge by kind */
        const char *name = kind_of(&pool->prof[i]);
        int j;
        for (j = 0; j < nrows && strcmp(rows[j].name, name); j++) {}
        if (j == nrows) { rows[nrows].name = name; rows[nrows].seconds = rows[nrows].wait = 0.0; rows[nrows].calls = 0; nrows++; }
        if (!strcmp(name, "GEMM")) gemm += pool->prof[i].seconds;
        rows[j].seconds += pool->prof[i].seconds; rows[j].wait += pool->prof[i].wait; rows[j].calls += pool->prof[i].calls;
        inside += pool->prof[i].seconds; wait += pool->prof[i].wait; calls += pool->prof[i].calls;
    }
    for (i = 1; i < nrows; i++) { /* largest first */
        row t = rows[i];
        int j = i;
        for (; j > 0 && rows[j - 1].seconds < t.seconds; j--) rows[j] = rows[j - 1];
        rows[j] = t;
    }
    L = mc.layers; d = mc.d; f = ((8 * mc.d / 3 + 15) / 16) * 16; V = 256; tokens = (double)N;
    gemm_flops = tokens * 6 * (L * (4 * d * d + 3 * d * f) + V * d);
    printf("# d=%d L=%d T=%d batch=%d threads=%d, %s, GEMMs %s, %d steps: %.1f ms per step (%.0f tokens/s), %.0f dispatches per step\n",
           mc.d, mc.layers, mc.seq, mc.batch, mc.threads, oc.kind == RESBM_OPT_MUON ? "Muon" : "AdamW",
           resbm_pool_kernel(pool), steps,
           total / steps * 1e3, tokens * steps / total, (double)calls / steps);
    printf("| part of the step | ms per step | share | dispatches per step | of which fork-join wait (ms) |\n");
    printf("|---|--:|--:|--:|--:|\n");
    for (i = 0; i < nrows; i++) {
        printf("| %s", rows[i].name);
        if (!strcmp(rows[i].name, "GEMM") && oc.kind != RESBM_OPT_MUON) printf(" (%.0f GFLOP/s)", gemm_flops * steps / rows[i].seconds * 1e-9);
        printf(" | %.2f | %.1f%% | %.0f | %.2f |\n", rows[i].seconds / steps * 1e3, 100.0 * rows[i].seconds / total,
               (double)rows[i].calls / steps, rows[i].wait / steps * 1e3);
    }
    printf("| outside the pool (memset, memcpy, embedding, loss sum) | %.2f | %.1f%% | - | - |\n",
           (total - inside) / steps * 1e3, 100.0 * (total - inside) / total);
    printf("| **total** | %.2f | 100%% | %.0f | %.2f (%.1f%%) |\n", total / steps * 1e3, (double)calls / steps,
           wait / steps * 1e3, 100.0 * wait / total);
    gemm_shapes(pool, steps);
    printf("profile_summary: threads=%d ms=%.2f gemm_ms=%.2f rest_ms=%.2f wait_ms=%.2f dispatches=%.0f\n", mc.threads,
           total / steps * 1e3, gemm / steps * 1e3, (total - gemm) / steps * 1e3,
           wait / steps * 1e3, (double)calls / steps);
    resbm_model_free(m);
    free(tok); free(tg);
    return 0;
}
