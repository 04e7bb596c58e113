/* torch_dump.c - writes small models, a batch, the loss and every gradient as safetensors files
   for tests/torch_check.py, which recomputes them with PyTorch autograd.
   Usage: torch_dump DIR */
#define RESBM_IMPLEMENTATION
#include "../resbm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STAGES 4

/* Runs S stages chained in one thread (stage s's output is stage s+1's input) over n_micro
   microbatches, so the gradients are those of the mean loss over all rows, and dumps them. */
static int dump(const char *dir, const char *name, resbm_model_config cfg, int n_micro) {
    resbm_model *st[MAX_STAGES];
    resbm_st_entry *e;
    char path[1024], meta_v[11][32];
    const char *meta[22];
    size_t B = (size_t)cfg.batch, T = (size_t)cfg.seq, d = (size_t)cfg.d, mr = B / (size_t)n_micro;
    size_t N = mr * T, ne = 0, i, np, total = 0;
    int32_t *tok = (int32_t *)malloc(B * T * 4), *tg = (int32_t *)malloc(B * T * 4);
    float *h[MAX_STAGES], *g[MAX_STAGES], loss_sum = 0, loss;
    resbm_rng r;
    int S = cfg.stages, s, k, rc = 0;
    resbm_rng_seed(&r, 2024, 1);
    for (i = 0; i < B * T; i++) {
        tok[i] = (int32_t)(resbm_rng_u32(&r) % (uint32_t)cfg.vocab);
        tg[i] = (int32_t)(resbm_rng_u32(&r) % (uint32_t)cfg.vocab);
    }
    cfg.batch = (int)mr;
    for (s = 0; s < S; s++) {
        cfg.stage = s;
        if ((rc = resbm_model_init(&cfg, NULL, &st[s]))) {
            fprintf(stderr, "init stage %d: %s\n", s, resbm_strerror(rc));
            return rc;
        }
        resbm_model_zero_grad(st[s]);
        {
            /* Zero-initialised output projections would leave some gradients zero: give them
               random values of the init scale (0.02) so every path carries signal. At 0.1 with
               r = 1 the float32 rounding of both this library and of PyTorch in float32 reaches
               1e-4 of float64: that configuration is ill-conditioned, not wrong. */
            resbm_param *ps = resbm_model_params_mut(st[s], &np);
            for (i = 0; i < np; i++)
                if (strstr(ps[i].name, "_w2") && strstr(ps[i].name, "bottleneck")) {
                    size_t j, n = ps[i].value.ne[0] * ps[i].value.ne[1];
                    for (j = 0; j < n; j++) ps[i].value.data[j] = 0.02f * resbm_rng_normal(&r);
                }
        }
        total += np;
        h[s] = (float *)malloc(N * d * 4);
        g[s] = (float *)malloc(N * d * 4);
    }
    for (k = 0; k < n_micro && !rc; k++) {
        const int32_t *tk = tok + (size_t)k * N, *tt = tg + (size_t)k * N;
        for (s = 0; s < S && !rc; s++)
            rc = resbm_model_forward(st[s], 0, s == 0 ? tk : NULL, s ? h[s - 1] : NULL,
                                     s == S - 1 ? tt : NULL, mr, s < S - 1 ? h[s] : NULL, &loss);
        loss_sum += loss;
        for (s = S - 1; s >= 0 && !rc; s--)
            rc = resbm_model_backward(st[s], 0, s < S - 1 ? g[s] : NULL, s ? g[s - 1] : NULL,
                                      1.0f / (float)n_micro);
    }
    if (rc) { fprintf(stderr, "%s: %s\n", name, resbm_strerror(rc)); return rc; }
    loss = loss_sum / (float)n_micro;
    e = (resbm_st_entry *)calloc(2 * total + 3, sizeof(resbm_st_entry));
    for (s = 0; s < S; s++) {
        const resbm_param *ps = resbm_model_params(st[s], &np);
        for (i = 0; i < np; i++) {
            char *gname = (char *)malloc(strlen(ps[i].name) + 6);
            sprintf(gname, "grad.%s", ps[i].name);
            e[ne].name = ps[i].name; e[ne].dtype = RESBM_DT_F32; e[ne].ndim = ps[i].value.ndim;
            e[ne].shape[0] = ps[i].value.ne[0]; e[ne].shape[1] = ps[i].value.ne[1];
            e[ne].data = ps[i].value.data;
            e[ne + 1] = e[ne];
            e[ne + 1].name = gname;
            e[ne + 1].data = ps[i].grad.data;
            ne += 2;
        }
    }
    e[ne].name = "tokens"; e[ne].dtype = RESBM_DT_I32; e[ne].ndim = 2; e[ne].shape[0] = B; e[ne].shape[1] = T; e[ne].data = tok; ne++;
    e[ne] = e[ne - 1]; e[ne].name = "targets"; e[ne].data = tg; ne++;
    e[ne].name = "loss"; e[ne].dtype = RESBM_DT_F32; e[ne].ndim = 1; e[ne].shape[0] = 1; e[ne].data = &loss; ne++;
    sprintf(meta_v[0], "%d", cfg.d); sprintf(meta_v[1], "%d", cfg.layers);
    sprintf(meta_v[2], "%d", cfg.heads); sprintf(meta_v[3], "%d", cfg.ff);
    sprintf(meta_v[4], "%d", cfg.vocab); sprintf(meta_v[5], "%d", cfg.seq);
    sprintf(meta_v[6], "%zu", B); sprintf(meta_v[7], "%d", cfg.stages);
    meta[0] = "d"; meta[1] = meta_v[0]; meta[2] = "layers"; meta[3] = meta_v[1];
    meta[4] = "heads"; meta[5] = meta_v[2]; meta[6] = "ff"; meta[7] = meta_v[3];
    meta[8] = "vocab"; meta[9] = meta_v[4]; meta[10] = "seq"; meta[11] = meta_v[5];
    meta[12] = "batch"; meta[13] = meta_v[6]; meta[14] = "stages"; meta[15] = meta_v[7];
    sprintf(meta_v[8], "%d", cfg.r ? cfg.r : cfg.d); sprintf(meta_v[9], "%d", cfg.m);
    sprintf(meta_v[10], "%d", cfg.no_identity ? 0 : 1);
    meta[16] = "r"; meta[17] = meta_v[8]; meta[18] = "m"; meta[19] = meta_v[9];
    meta[20] = "identity"; meta[21] = meta_v[10];
    snprintf(path, sizeof(path), "%s/%s.safetensors", dir, name);
    rc = resbm_safetensors_write(path, e, ne, meta, 11);
    if (rc) fprintf(stderr, "%s: %s\n", path, resbm_strerror(rc));
    else printf("wrote %s (loss %.6f)\n", path, loss);
    for (i = 0; i < ne; i++)
        if (!strncmp(e[i].name, "grad.", 5)) free((void *)(uintptr_t)e[i].name);
    for (s = 0; s < S; s++) { resbm_model_free(st[s]); free(h[s]); free(g[s]); }
    free(e); free(tok); free(tg);
    return rc;
}

int main(int argc, char **argv) {
    resbm_model_config c = resbm_model_config_default();
    int rc = 0;
    if (argc != 2) { fprintf(stderr, "usage: torch_dump DIR\n"); return 2; }
    c.vocab = 40; c.d = 32; c.layers = 3; c.heads = 4; c.ff = 48; c.seq = 16; c.batch = 3;
    c.init_std = 0.1f; c.threads = 2;
    rc |= dump(argv[1], "single", c, 1);
    rc |= dump(argv[1], "micro3", c, 3);
    c.stages = 3; c.layers = 5; c.seed = 99;
    rc |= dump(argv[1], "stages3", c, 1);
    /* with residual bottlenecks: r = 4 of d = 32, hidden m = 8, with and without identity */
    c.stages = 2; c.layers = 3; c.r = 4; c.m = 8; c.seed = 7;
    rc |= dump(argv[1], "bneck2", c, 3);
    c.no_identity = 1;
    rc |= dump(argv[1], "bneck2_noid", c, 1);
    c.no_identity = 0; c.stages = 3; c.layers = 4; c.r = 1; c.m = 16;
    rc |= dump(argv[1], "bneck3_r1", c, 1);
    return rc ? 1 : 0;
}
