/* step.c - one full training step (forward + backward + optimizer) of the d=256, L=8, H=4,
   f=688, T=128, batch 8 model in one process, in tokens/s and GFLOP/s, with the same FLOP count
   bench/step_torch.py uses:  flops = tokens * (6 * (L*(4*d*d + 3*d*f) + V*d) + 6*L*T*d).
   Also times Muon against AdamW (the Newton-Schulz cost per step) and reports model memory.
   --check-out FILE writes the initial parameters, one batch, and the loss and gradient norm
   resbm.h computes for it, so bench/step_torch.py --check FILE can prove the anchor computes the
   same step before it is timed.
   Usage: bench_step [--threads N] [--steps S] [--micro M] [--d D] [--layers L] [--check-out FILE]
                     [--gemm f32|bf16] */
#define _POSIX_C_SOURCE 200809L
#define RESBM_IMPLEMENTATION
#include "../resbm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Returns the median step time; *best gets the fastest. */
static double run(resbm_model_config mc, int opt, int steps, int micro, double *best, size_t *bytes) {
    resbm_opt_config oc = resbm_opt_config_default();
    resbm_model *m;
    size_t N = (size_t)mc.batch * (size_t)mc.seq, i;
    int32_t *tok = (int32_t *)malloc(N * 4), *tg = (int32_t *)malloc(N * 4);
    double *t = (double *)malloc((size_t)steps * sizeof(double)), med;
    resbm_rng r;
    float loss;
    int s, rc;
    oc.kind = opt;
    if ((rc = resbm_model_init(&mc, &oc, &m))) {
        fprintf(stderr, "init: %s\n", resbm_strerror(rc));
        exit(1);
    }
    *bytes = resbm_model_bytes(m);
    resbm_rng_seed(&r, 5, 5);
    for (s = -3; s < steps; s++) {
        double t0;
        for (i = 0; i < N; i++) { tok[i] = (int32_t)(resbm_rng_u32(&r) & 255); tg[i] = (int32_t)(resbm_rng_u32(&r) & 255); }
        t0 = now();
        rc = resbm_model_train_step(m, tok, tg, (size_t)mc.batch, micro, &loss);
        if (rc) { fprintf(stderr, "step: %s\n", resbm_strerror(rc)); exit(1); }
        if (s >= 0) t[s] = now() - t0;
    }
    qsort(t, (size_t)steps, sizeof(double), cmp_double);
    med = t[steps / 2];
    *best = t[0];
    resbm_model_free(m);
    free(tok); free(tg); free(t);
    return med;
}

/* One forward and backward of a fixed batch from the initial parameters: the parameters, the
   batch, and the loss and gradient norm, in one safetensors file. */
static int write_check(resbm_model_config mc, const char *path) {
    resbm_model *m;
    const resbm_param *p;
    resbm_st_entry *e;
    size_t np, N = (size_t)mc.batch * (size_t)mc.seq, i;
    int32_t *tok = (int32_t *)malloc(N * 4), *tg = (int32_t *)malloc(N * 4);
    char loss_s[64], norm_s[64];
    const char *meta[4];
    double sq;
    float loss;
    resbm_rng r;
    int rc;
    if ((rc = resbm_model_init(&mc, NULL, &m))) return rc;
    resbm_rng_seed(&r, 7, 7);
    for (i = 0; i < N; i++) { tok[i] = (int32_t)(resbm_rng_u32(&r) & 255); tg[i] = (int32_t)(resbm_rng_u32(&r) & 255); }
    p = resbm_model_params(m, &np);
    e = (resbm_st_entry *)calloc(np + 2, sizeof(*e));
    for (i = 0; i < np; i++) { /* the initial values, before any update */
        e[i].name = p[i].name; e[i].dtype = RESBM_DT_F32; e[i].ndim = p[i].value.ndim;
        e[i].shape[0] = p[i].value.ne[0]; e[i].shape[1] = p[i].value.ne[1]; e[i].data = p[i].value.data;
    }
    e[np].name = "tokens"; e[np + 1].name = "targets";
    e[np].dtype = e[np + 1].dtype = RESBM_DT_I32;
    e[np].ndim = e[np + 1].ndim = 2;
    e[np].shape[0] = e[np + 1].shape[0] = (size_t)mc.batch;
    e[np].shape[1] = e[np + 1].shape[1] = (size_t)mc.seq;
    e[np].data = tok; e[np + 1].data = tg;
    rc = resbm_model_zero_grad(m);
    if (!rc) rc = resbm_model_forward(m, 0, tok, NULL, tg, (size_t)mc.batch, NULL, &loss);
    if (!rc) rc = resbm_model_backward(m, 0, NULL, NULL, 1.0f);
    if (!rc) rc = resbm_model_grad_sqnorm(m, &sq);
    if (!rc) {
        snprintf(loss_s, sizeof(loss_s), "%.9g", (double)loss);
        snprintf(norm_s, sizeof(norm_s), "%.9g", sqrt(sq));
        meta[0] = "loss"; meta[1] = loss_s; meta[2] = "grad_norm"; meta[3] = norm_s;
        rc = resbm_safetensors_write(path, e, np + 2, meta, 2);
    }
    if (!rc) printf("check batch written to %s: loss %s, gradient norm %s\n", path, loss_s, norm_s);
    free(e); free(tok); free(tg);
    resbm_model_free(m);
    return rc;
}

int main(int argc, char **argv) {
    resbm_model_config mc = resbm_model_config_default();
    const char *check_out = NULL;
    int steps = 10, micro = 1, i;
    double L, d, f, V, T, tokens, flops, med_a, best_a, med_m, best_m;
    size_t bytes_a, bytes_m;
    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--threads")) mc.threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--micro")) micro = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--d")) mc.d = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--layers")) mc.layers = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--check-out")) check_out = argv[i + 1];
        else if (!strcmp(argv[i], "--gemm")) mc.gemm_bf16 = !strcmp(argv[i + 1], "bf16");
        else { fprintf(stderr, "unknown flag %s\n", argv[i]); return 2; }
    }
    mc.batch = 8;
    if (check_out) {
        int rc = write_check(mc, check_out);
        if (rc) { fprintf(stderr, "check: %s\n", resbm_strerror(rc)); return 1; }
        return 0;
    }
    L = mc.layers; d = mc.d; f = mc.ff ? mc.ff : ((8 * mc.d / 3 + 15) / 16) * 16; V = 256; T = mc.seq;
    tokens = (double)mc.batch * T;
    flops = tokens * (6 * (L * (4 * d * d + 3 * d * f) + V * d) + 6 * L * T * d);
    {
        resbm_model_config per_micro = mc;
        per_micro.batch = mc.batch / micro; /* activations sized for one microbatch */
        med_a = run(per_micro, RESBM_OPT_ADAMW, steps, 1, &best_a, &bytes_a);
        (void)per_micro;
    }
    {
        resbm_model_config full = mc;
        med_m = run(full, RESBM_OPT_MUON, steps, micro, &best_m, &bytes_m);
    }
    {
        resbm_pool *kp = NULL; /* what runs the GEMMs, as the models' pools set it up */
        const char *kernel = "?";
        if (resbm_pool_init(1, &kp) == RESBM_OK) {
            if (!mc.gemm_bf16 || resbm_pool_set_precision(kp, RESBM_PRECISION_BF16) == RESBM_OK)
                kernel = resbm_pool_kernel(kp);
            resbm_pool_free(kp);
        }
        printf("d=%d L=%d f=%d T=%d batch=%d threads=%d steps=%d gemm=%s (%s; median, best)\n", mc.d, mc.layers,
               (int)f, mc.seq, mc.batch, mc.threads, steps, mc.gemm_bf16 ? "bf16" : "f32", kernel);
    }
    printf("  AdamW step: %.1f ms, %.1f ms  -> %.0f tokens/s, %.1f GFLOP/s (best %.0f tokens/s)\n",
           med_a * 1e3, best_a * 1e3, tokens / med_a, flops / med_a * 1e-9, tokens / best_a);
    printf("  Muon  step: %.1f ms, %.1f ms  -> Newton-Schulz + momentum cost %.1f ms per step (%.0f%%)\n",
           med_m * 1e3, best_m * 1e3, (med_m - med_a) * 1e3, 100.0 * (med_m - med_a) / med_a);
    printf("  model memory: %.1f MiB (AdamW), %.1f MiB (Muon)\n", bytes_a / 1048576.0, bytes_m / 1048576.0);
    printf("step_summary: threads=%d tokens_per_s=%.0f gflops=%.1f median_ms=%.1f best_ms=%.1f muon_extra_ms=%.1f\n",
           mc.threads, tokens / med_a, flops / med_a * 1e-9, med_a * 1e3, best_a * 1e3, (med_m - med_a) * 1e3);
    return 0;
}
