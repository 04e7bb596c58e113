/* update.c - the optimizer step alone: resbm_model_update on the d=256 L=8 model of bench/step.c
   with random gradients, undone by resbm_model_rollback between repetitions; the fastest of 15
   (the update's cost without the noise of a whole training step).
   Usage: bench_update [--threads N] [--opt adamw|muon] */
#define _POSIX_C_SOURCE 200809L
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

int main(int argc, char **argv) {
    resbm_model_config mc = resbm_model_config_default();
    resbm_opt_config oc = resbm_opt_config_default();
    resbm_model *m;
    resbm_param *ps;
    resbm_rng r;
    size_t np, i, k;
    double best = 1e30;
    int rep, rc;
    mc.batch = 1; /* activations do not matter here */
    for (i = 1; i + 1 < (size_t)argc; i += 2) {
        if (!strcmp(argv[i], "--threads")) mc.threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--opt")) oc.kind = strcmp(argv[i + 1], "muon") ? RESBM_OPT_ADAMW : RESBM_OPT_MUON;
        else { fprintf(stderr, "unknown flag %s\n", argv[i]); return 2; }
    }
    if ((rc = resbm_model_init(&mc, &oc, &m))) { fprintf(stderr, "init: %s\n", resbm_strerror(rc)); return 1; }
    ps = resbm_model_params_mut(m, &np);
    resbm_rng_seed(&r, 1, 1);
    for (i = 0; i < np; i++)
        for (k = 0; k < ps[i].value.ne[0] * ps[i].value.ne[1]; k++) ps[i].grad.data[k] = resbm_rng_uniform(&r) - 0.5f;
    for (rep = 0; rep < 15; rep++) {
        double t0 = now();
        if ((rc = resbm_model_update(m, 0.1f))) { fprintf(stderr, "update: %s\n", resbm_strerror(rc)); return 1; }
        t0 = now() - t0;
        best = t0 < best ? t0 : best;
        if ((rc = resbm_model_rollback(m))) { fprintf(stderr, "rollback: %s\n", resbm_strerror(rc)); return 1; }
    }
    if (oc.kind == RESBM_OPT_MUON) {
        /* Newton-Schulz's arithmetic per update: per hidden matrix (k = the shorter side, w = the
           longer) and step, A = X X^T and A A computed on and above the diagonal only (k (k+1) / 2
           outputs each, a sum of w and of k products) and B X whole (k w outputs, k products). */
        double flops = 0.0;
        for (i = 0; i < np; i++) {
            double a = (double)ps[i].value.ne[0], b = (double)ps[i].value.ne[1];
            double kk = a < b ? a : b, w = a < b ? b : a;
            if (ps[i].kind == RESBM_PARAM_HIDDEN)
                flops += oc.muon_ns_steps * (kk * (kk + 1.0) * w + kk * (kk + 1.0) * kk + 2.0 * kk * kk * w);
        }
        printf("newton_schulz: gflop=%.2f gflops_over_whole_update=%.1f\n", flops * 1e-9,
               flops * 1e-9 / best);
    }
    printf("update_summary: opt=%s threads=%d floats=%zu best_ms=%.1f\n", oc.kind == RESBM_OPT_MUON ? "muon" : "adamw",
           mc.threads, resbm_model_num_floats(m), best * 1e3);
    resbm_model_free(m);
    return 0;
}
