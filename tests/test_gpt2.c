/* test_gpt2.c - examples/gpt2.c as a host engine under resbm_stage: the pipeline equals the same
   stages run one after another in one thread, bit for bit; the host's declaration is checked; its
   parameters go through the library's checkpoints; a different architecture is refused.
   `test_gpt2 --dump DIR` writes gradient dumps for tests/torch_gpt2.py (PyTorch autograd). */
#define RESBM_IMPLEMENTATION
#define GPT2_NO_TRAIN
#include "../examples/gpt2.c"
#include "harness.h"
#include "delayed.h"

#include <limits.h>
#include <pthread.h>
#include <unistd.h>

enum { GS_MAX = 4, G_STEPS = 5 };

typedef struct { int d, heads, seq, layers, stages, rows, n_micro; uint64_t seed; } gcase;

static resbm_stage_config gcfg(const gcase *c, int s, gpt2 *g) {
    resbm_stage_config sc = resbm_stage_config_default();
    sc.model.d = c->d; sc.model.layers = c->layers; sc.model.seq = c->seq; sc.model.batch = c->rows;
    sc.model.stages = c->stages; sc.model.stage = s; sc.model.r = 4; sc.model.m = 8;
    sc.model.seed = c->seed; sc.model.host = g ? &g->layers : NULL; sc.model.pool = g ? g->pool : NULL;
    sc.n_micro = c->n_micro;
    sc.timeout_ms = 20000;
    sc.opt.clip = 0.05f; sc.opt.warmup = 2; /* the clip binds: the norm exchange matters */
    return sc;
}

static gpt2 *gnew(const gcase *c, int s, int slots) {
    resbm_pool *pool;
    gpt2 *g = NULL;
    if (resbm_pool_init(2, &pool)) return NULL;
    if (gpt2_new(c->d, c->heads, c->seq, c->layers, c->stages, s, slots, (size_t)c->rows, c->seed, pool, &g)) {
        resbm_pool_free(pool);
        return NULL;
    }
    g->own_pool = 1;
    return g;
}

static void gbatch(int32_t *tok, int32_t *tg, size_t n, int step) {
    resbm_rng r;
    size_t i;
    resbm_rng_seed(&r, 77, (uint64_t)step);
    for (i = 0; i < n; i++) { tok[i] = (int32_t)(resbm_rng_u32(&r) % 256); tg[i] = (int32_t)(resbm_rng_u32(&r) % 256); }
}

typedef struct {
    resbm_stage_config cfg;
    resbm_stage *st;
    int steps, rc, rows;
    float loss[G_STEPS], flushed; /* flushed: async, after the last step */
} gthread;

static void *gthread_main(void *p) {
    gthread *a = (gthread *)p;
    int32_t tok[4096], tg[4096];
    int k;
    a->rc = resbm_stage_init(&a->cfg, &a->st);
    for (k = 0; k < a->steps && !a->rc; k++) {
        gbatch(tok, tg, (size_t)a->rows * (size_t)a->cfg.model.seq, k);
        a->rc = resbm_stage_step(a->st, tok, tg, (size_t)a->rows, &a->loss[k]);
    }
    if (!a->rc) a->rc = resbm_stage_flush(a->st, &a->flushed);
    return NULL;
}

/* S stages of gpt2 as threads over the in-process transport == the same S stages one after
   another in one thread (each stage accumulating microbatches 0..n-1, as 1F1B does), bit for bit.
   Async: == the delayed-update rule (tests/delayed.h), the host's weights swapped for the
   version before wherever a backward needs it. */
static void pipeline_vs_sequential(gcase c, int opt, int schedule) {
    gthread a[GS_MAX];
    gpt2 *gp[GS_MAX], *gs[GS_MAX];
    resbm_model *ref[GS_MAX];
    resbm_inproc *hub;
    pthread_t th[GS_MAX];
    int S = c.stages, s, k, b, step, slots = 1;
    size_t N = (size_t)c.rows * (size_t)c.seq, np, i;
    int32_t tok[4096], tg[4096];
    float *h[GS_MAX], *gr[GS_MAX];
    CHECK_RC(resbm_inproc_init(S, 1 << 20, &hub), RESBM_OK);
    for (s = 0; s < S; s++) {
        resbm_stage_config sc = gcfg(&c, s, NULL);
        CHECK_RC(resbm_stage_slots(&sc, &slots), RESBM_OK);
        gp[s] = gnew(&c, s, slots);
        gs[s] = gnew(&c, s, 1);
        CHECK(gp[s] && gs[s], "gpt2_new");
        if (th_fail_now) return;
        memset(&a[s], 0, sizeof(a[s]));
        a[s].cfg = gcfg(&c, s, gp[s]);
        a[s].cfg.opt.kind = opt;
        a[s].cfg.schedule = schedule;
        a[s].cfg.act_budget_bytes = (size_t)1 << 30; /* host layers keep 1F1B's depth anyway */
        a[s].steps = G_STEPS;
        a[s].rows = c.n_micro * c.rows;
        resbm_inproc_transport(hub, s, &a[s].cfg.transport);
        pthread_create(&th[s], NULL, gthread_main, &a[s]);
    }
    for (s = 0; s < S; s++) {
        pthread_join(th[s], NULL);
        CHECK_RC(a[s].rc, RESBM_OK);
    }
    for (s = 0; s < S; s++) {
        resbm_stage_config sc = gcfg(&c, s, gs[s]);
        sc.opt.kind = opt;
        sc.model.pool = NULL; /* a model of its own threads: pools hold one stage each */
        CHECK_RC(resbm_model_init(&sc.model, &sc.opt, &ref[s]), RESBM_OK);
        h[s] = (float *)malloc(N * 4 * 4);
        gr[s] = (float *)malloc(N * 4 * 4);
    }
    if (th_fail_now) return;
    if (schedule == RESBM_SCHEDULE_ASYNC) {
        delayed_rule r;
        float losses[G_STEPS];
        memset(&r, 0, sizeof(r));
        r.S = S; r.n = c.n_micro; r.rows = (size_t)c.rows; r.predict = a[0].cfg.predict;
        for (s = 0; s < S; s++) r.stage[s] = ref[s];
        for (step = 0; step < G_STEPS; step++) {
            gbatch(tok, tg, N * (size_t)c.n_micro, step);
            losses[step] = delayed_step(&r, tok, tg, step + 1 == G_STEPS);
        }
        delayed_free(&r);
        for (s = 0; s < S; s++) {
            for (step = 0; step < G_STEPS; step++)
                CHECK(a[s].loss[step] == (step >= 2 ? losses[step - 2] : 0.0f), "async step %d stage %d loss %.9g",
                      step, s, a[s].loss[step]);
            CHECK(a[s].flushed == losses[G_STEPS - 1], "stage %d flushed loss %.9g vs %.9g", s, a[s].flushed,
                  losses[G_STEPS - 1]);
        }
    }
    for (step = 0; step < G_STEPS && schedule == RESBM_SCHEDULE_EXACT; step++) {
        double loss_sum = 0, sq;
        float total = 0, loss = 0;
        gbatch(tok, tg, N * (size_t)c.n_micro, step);
        for (s = 0; s < S; s++) resbm_model_zero_grad(ref[s]);
        for (k = 0; k < c.n_micro; k++) {
            for (s = 0; s < S; s++) {
                CHECK_RC(resbm_model_forward(ref[s], 0, s == 0 ? tok + k * N : NULL, s ? h[s - 1] : NULL,
                                             s == S - 1 ? tg + k * N : NULL, (size_t)c.rows, s < S - 1 ? h[s] : NULL,
                                             s == S - 1 ? &loss : NULL), RESBM_OK);
                if (s == S - 1) loss_sum += loss;
            }
            for (b = S - 1; b >= 0; b--)
                CHECK_RC(resbm_model_backward(ref[b], 0, b < S - 1 ? gr[b] : NULL, b ? gr[b - 1] : NULL,
                                              1.0f / (float)c.n_micro), RESBM_OK);
        }
        for (s = 0; s < S; s++) { resbm_model_grad_sqnorm(ref[s], &sq); total = s ? total + (float)sq : (float)sq; }
        for (s = 0; s < S; s++) CHECK_RC(resbm_model_update(ref[s], resbm_clip_scale(resbm_model_get_opt(ref[s]), total)), RESBM_OK);
        for (s = 0; s < S; s++)
            CHECK(a[s].loss[step] == (float)(loss_sum / c.n_micro), "step %d stage %d loss %.9g vs %.9g", step, s,
                  a[s].loss[step], (float)(loss_sum / c.n_micro));
    }
    for (s = 0; s < S; s++) {
        const resbm_param *pp = resbm_model_params(resbm_stage_model(a[s].st), &np);
        const resbm_param *pr = resbm_model_params(ref[s], NULL);
        for (i = 0; i < np; i++)
            CHECK(!memcmp(pp[i].value.data, pr[i].value.data, pp[i].value.ne[0] * pp[i].value.ne[1] * 4),
                  "stage %d %s differs", s, pp[i].name);
        /* the stage's parameters are the host's memory: the runtime updated gpt2's own arrays */
        CHECK(np > 0 && pp[np - 1].value.data != NULL, "params");
        resbm_stage_free(a[s].st);
        resbm_model_free(ref[s]);
        gpt2_free(gp[s]);
        gpt2_free(gs[s]);
        free(h[s]); free(gr[s]);
    }
    resbm_inproc_free(hub);
}

static void test_gpt2_pipeline_equals_sequential(void) {
    gcase c = {32, 2, 8, 5, 3, 2, 3, 11};
    pipeline_vs_sequential(c, RESBM_OPT_ADAMW, RESBM_SCHEDULE_EXACT);
}

static void test_gpt2_pipeline_async(void) {
    gcase c = {32, 2, 8, 5, 3, 2, 3, 11};
    pipeline_vs_sequential(c, RESBM_OPT_ADAMW, RESBM_SCHEDULE_ASYNC);
    c.stages = 2; c.n_micro = 4;
    pipeline_vs_sequential(c, RESBM_OPT_MUON, RESBM_SCHEDULE_ASYNC);
}

static void test_gpt2_pipeline_muon(void) {
    gcase c = {32, 4, 8, 4, 2, 1, 4, 5};
    pipeline_vs_sequential(c, RESBM_OPT_MUON, RESBM_SCHEDULE_EXACT);
}

/* The host's parameters are in the model's list at their place (after the decoder, before the
   encoder), and a bad declaration is refused before anything is allocated. */
static void test_gpt2_declaration(void) {
    gcase c = {32, 2, 8, 4, 2, 1, 1, 3};
    gpt2 *g = gnew(&c, 1, 1);
    resbm_stage_config sc = gcfg(&c, 1, g);
    resbm_model *m = NULL;
    const resbm_param *p;
    resbm_param saved;
    resbm_layers bad;
    size_t np, i;
    float keep;
    CHECK(g != NULL, "gpt2_new");
    if (!g) return;
    sc.model.pool = NULL;
    CHECK_RC(resbm_model_init(&sc.model, &sc.opt, &m), RESBM_OK);
    if (m) {
        p = resbm_model_params(m, &np);
        CHECK(np == 2 + g->n_params, "decoder + host: %zu", np);
        CHECK(!strcmp(p[0].name, "bottleneck.0.dec_w1") && !strcmp(p[2].name, g->params[0].name) &&
              p[2].value.data == g->params[0].value.data && p[np - 1].value.data == g->params[g->n_params - 1].value.data,
              "order and views: %s %s", p[0].name, p[2].name);
        resbm_model_free(m);
    }
    bad = g->layers; bad.forward = NULL;
    sc.model.host = &bad;
    CHECK_RC(resbm_model_init(&sc.model, &sc.opt, &m), RESBM_EINVAL);
    bad = g->layers; bad.arch = NULL;
    CHECK_RC(resbm_model_init(&sc.model, &sc.opt, &m), RESBM_EINVAL);
    saved = g->params[1];
    bad = g->layers;
    strcpy(g->params[1].name, g->params[0].name); /* duplicate */
    CHECK_RC(resbm_model_init(&sc.model, &sc.opt, &m), RESBM_EINVAL);
    strcpy(g->params[1].name, "bottleneck.0.dec_w1"); /* the library's namespace */
    CHECK_RC(resbm_model_init(&sc.model, &sc.opt, &m), RESBM_EINVAL);
    g->params[1] = saved;
    g->params[1].grad.data = NULL;
    CHECK_RC(resbm_model_init(&sc.model, &sc.opt, &m), RESBM_EINVAL);
    g->params[1] = saved;
    g->params[1].value.ne[0]++; /* grad and value disagree */
    CHECK_RC(resbm_model_init(&sc.model, &sc.opt, &m), RESBM_EINVAL);
    g->params[1] = saved;
    g->params[1].value.data = g->params[0].value.data + 1; /* overlaps another parameter's values */
    CHECK_RC(resbm_model_init(&sc.model, &sc.opt, &m), RESBM_EINVAL);
    g->params[1] = saved;
    g->params[1].grad.data = g->params[1].value.data; /* its gradient is its value */
    CHECK_RC(resbm_model_init(&sc.model, &sc.opt, &m), RESBM_EINVAL);
    g->params[1] = saved;
    for (i = 0; i < g->layers.n_params && g->params[i].value.ndim != 1; i++) {}
    CHECK(i < g->layers.n_params, "the host has no 1-D parameter");
    if (i < g->layers.n_params) { /* Muon would take a bias for a matrix */
        int kind = g->params[i].kind;
        g->params[i].kind = RESBM_PARAM_HIDDEN;
        CHECK_RC(resbm_model_init(&sc.model, &sc.opt, &m), RESBM_EINVAL);
        g->params[i].kind = kind;
    }
    keep = g->params[1].value.data[0];
    memcpy(g->params[1].value.data, &(uint32_t){0x7fc00000u}, 4); /* NaN */
    CHECK_RC(resbm_model_init(&sc.model, &sc.opt, &m), RESBM_ENONFINITE);
    g->params[1].value.data[0] = keep;
    sc.model.host = &g->layers;
    CHECK_RC(resbm_model_init(&sc.model, &sc.opt, &m), RESBM_OK);
    resbm_model_free(m);
    gpt2_free(g);
}

/* Checkpoints carry the host's tensors under its names and bring them back into its memory; a
   different architecture line is another job: neighbours refuse each other. */
typedef struct { resbm_stage_config cfg; int rc; char why[192]; } jthread;
static void *jthread_main(void *p) {
    jthread *a = (jthread *)p;
    resbm_stage *st;
    int32_t tok[64] = {0}, tg[64] = {0};
    float loss;
    a->rc = resbm_stage_init(&a->cfg, &st);
    if (!a->rc) {
        a->rc = resbm_stage_step(st, tok, tg, (size_t)a->cfg.n_micro * (size_t)a->cfg.model.batch, &loss);
        snprintf(a->why, sizeof(a->why), "%s", resbm_stage_why(st));
        resbm_stage_free(st);
    }
    return NULL;
}

static void test_gpt2_checkpoint_and_job(void) {
    gcase c = {32, 2, 8, 4, 2, 1, 1, 3};
    gpt2 *g0 = gnew(&c, 0, 1), *g1 = gnew(&c, 0, 1);
    resbm_stage_config sc0 = gcfg(&c, 0, g0), sc1 = gcfg(&c, 0, g1);
    resbm_model *m0 = NULL, *m1 = NULL;
    char path[256], why[256];
    size_t i;
    jthread a[2];
    pthread_t th[2];
    resbm_inproc *hub;
    int s;
    CHECK(g0 && g1, "gpt2_new");
    if (!g0 || !g1) return;
    sc0.model.pool = sc1.model.pool = NULL;
    CHECK_RC(resbm_model_init(&sc0.model, &sc0.opt, &m0), RESBM_OK);
    for (i = 0; i < 10; i++) g0->wte[i] = 0.5f + (float)i; /* differ from g1 */
    CHECK_RC(resbm_model_init(&sc1.model, &sc1.opt, &m1), RESBM_OK);
    snprintf(path, sizeof(path), "/tmp/resbm_gpt2_ck_%d.safetensors", (int)getpid());
    CHECK_RC(resbm_checkpoint_save(path, &m0, 1, NULL, 0), RESBM_OK);
    CHECK_RC(resbm_checkpoint_load(path, &m1, 1, why, sizeof(why)), RESBM_OK);
    CHECK(!memcmp(g0->mem, g1->mem, 10 * 4) && g1->wte[3] == 3.5f, "wte loaded into the host's memory");
    {
        resbm_st_file *f;
        CHECK_RC(resbm_safetensors_read(path, 1 << 26, &f), RESBM_OK);
        CHECK(f && resbm_safetensors_find(f, "wte") && resbm_safetensors_find(f, "opt.h.0.attn.c_attn.weight.v") &&
                  resbm_safetensors_find(f, "bottleneck.0.enc_w2") && strstr(resbm_safetensors_meta(f, "config"), "host="),
              "names in the file");
        resbm_safetensors_free(f);
    }
    remove(path);
    resbm_model_free(m0);
    resbm_model_free(m1);
    gpt2_free(g0);
    gpt2_free(g1);
    /* two stages whose architecture lines differ (another head count) */
    CHECK_RC(resbm_inproc_init(2, 1 << 20, &hub), RESBM_OK);
    for (s = 0; s < 2; s++) {
        gcase cs = c;
        gpt2 *g;
        cs.heads = s ? 4 : 2;
        g = gnew(&cs, s, 1);
        a[s].cfg = gcfg(&cs, s, g);
        a[s].cfg.timeout_ms = 5000;
        resbm_inproc_transport(hub, s, &a[s].cfg.transport);
        pthread_create(&th[s], NULL, jthread_main, &a[s]);
    }
    for (s = 0; s < 2; s++) pthread_join(th[s], NULL);
    for (s = 0; s < 2; s++) {
        CHECK_RC(a[s].rc, RESBM_EJOB);
        CHECK(strstr(a[s].why, "architecture") != NULL, "why: %s", a[s].why);
        gpt2_free((gpt2 *)a[s].cfg.model.host->user);
    }
    resbm_inproc_free(hub);
}

/* ---- dumps for tests/torch_gpt2.py ------------------------------------------------------------- */
/* S stages in one thread over n_micro microbatches with r < d bottlenecks; every parameter and its
   gradient, the batch and the mean loss. */
static int dump(const char *dir, const char *name, gcase c, int r, int identity) {
    gpt2 *g[GS_MAX];
    resbm_model *m[GS_MAX];
    resbm_st_entry *e;
    size_t N = (size_t)c.rows * (size_t)c.seq, B = N * (size_t)c.n_micro, ne = 0, np, i, total = 0;
    int32_t *tok = (int32_t *)malloc(B * 4), *tg = (int32_t *)malloc(B * 4);
    float *h[GS_MAX], *gr[GS_MAX], loss = 0, loss_sum = 0;
    char path[1024], mv[8][32], *gnames;
    const char *meta[16];
    int s, k, rc = 0, S = c.stages;
    resbm_rng rr;
    gbatch(tok, tg, B, 99);
    resbm_rng_seed(&rr, 5, 5);
    for (s = 0; s < S; s++) {
        resbm_stage_config sc = gcfg(&c, s, NULL);
        resbm_param *ps;
        g[s] = gnew(&c, s, 1);
        if (!g[s]) return RESBM_ENOMEM;
        sc.model.host = &g[s]->layers; sc.model.pool = g[s]->pool; sc.model.r = r; sc.model.no_identity = !identity;
        if ((rc = resbm_model_init(&sc.model, NULL, &m[s]))) return rc;
        ps = resbm_model_params_mut(m[s], &np);
        for (i = 0; i < np; i++) { /* zero-init projections and biases would hide paths, and at
                                        std 0.02 GELU stays in its linear part: larger values */
            size_t j, n = ps[i].value.ne[0] * ps[i].value.ne[1];
            if (strstr(ps[i].name, "_w2") || strstr(ps[i].name, ".bias"))
                for (j = 0; j < n; j++) ps[i].value.data[j] = 0.05f * resbm_rng_normal(&rr);
            else if (ps[i].kind == RESBM_PARAM_HIDDEN)
                for (j = 0; j < n; j++) ps[i].value.data[j] *= 8.0f;
        }
        resbm_model_zero_grad(m[s]);
        total += np;
        h[s] = (float *)malloc(N * (size_t)c.d * 4);
        gr[s] = (float *)malloc(N * (size_t)c.d * 4);
    }
    for (k = 0; k < c.n_micro && !rc; k++) {
        for (s = 0; s < S && !rc; s++)
            rc = resbm_model_forward(m[s], 0, s == 0 ? tok + k * N : NULL, s ? h[s - 1] : NULL,
                                     s == S - 1 ? tg + k * N : NULL, (size_t)c.rows, s < S - 1 ? h[s] : NULL, &loss);
        loss_sum += loss;
        for (s = S - 1; s >= 0 && !rc; s--)
            rc = resbm_model_backward(m[s], 0, s < S - 1 ? gr[s] : NULL, s ? gr[s - 1] : NULL, 1.0f / (float)c.n_micro);
    }
    if (rc) return rc;
    loss = loss_sum / (float)c.n_micro;
    e = (resbm_st_entry *)calloc(2 * total + 3, sizeof(resbm_st_entry));
    gnames = (char *)calloc(total, 64);
    for (s = 0; s < S; s++) {
        const resbm_param *ps = resbm_model_params(m[s], &np);
        for (i = 0; i < np; i++) {
            char *gn = gnames + 64 * (ne / 2);
            snprintf(gn, 64, "grad.%s", ps[i].name);
            e[ne].name = ps[i].name; e[ne].dtype = RESBM_DT_F32; e[ne].ndim = ps[i].value.ndim;
            e[ne].shape[0] = ps[i].value.ne[0]; e[ne].shape[1] = ps[i].value.ne[1];
            e[ne].data = ps[i].value.data;
            e[ne + 1] = e[ne]; e[ne + 1].name = gn; e[ne + 1].data = ps[i].grad.data;
            ne += 2;
        }
    }
    e[ne].name = "tokens"; e[ne].dtype = RESBM_DT_I32; e[ne].ndim = 2; e[ne].shape[0] = B / (size_t)c.seq;
    e[ne].shape[1] = (size_t)c.seq; e[ne].data = tok; ne++;
    e[ne] = e[ne - 1]; e[ne].name = "targets"; e[ne].data = tg; ne++;
    e[ne].name = "loss"; e[ne].dtype = RESBM_DT_F32; e[ne].ndim = 1; e[ne].shape[0] = 1; e[ne].data = &loss; ne++;
    snprintf(mv[0], 32, "%d", c.d); snprintf(mv[1], 32, "%d", c.heads); snprintf(mv[2], 32, "%d", c.layers);
    snprintf(mv[3], 32, "%d", S); snprintf(mv[4], 32, "%d", r); snprintf(mv[5], 32, "%d", identity);
    snprintf(mv[6], 32, "%d", c.seq); snprintf(mv[7], 32, "%d", S > 1 ? 0 : 1);
    meta[0] = "d"; meta[1] = mv[0]; meta[2] = "heads"; meta[3] = mv[1]; meta[4] = "layers"; meta[5] = mv[2];
    meta[6] = "stages"; meta[7] = mv[3]; meta[8] = "r"; meta[9] = mv[4]; meta[10] = "identity"; meta[11] = mv[5];
    meta[12] = "seq"; meta[13] = mv[6]; meta[14] = "tied"; meta[15] = mv[7];
    snprintf(path, sizeof(path), "%s/%s.safetensors", dir, name);
    rc = resbm_safetensors_write(path, e, ne, meta, 8);
    if (!rc) printf("wrote %s (loss %.6f)\n", path, loss);
    for (s = 0; s < S; s++) { resbm_model_free(m[s]); gpt2_free(g[s]); free(h[s]); free(gr[s]); }
    free(e); free(gnames); free(tok); free(tg);
    return rc;
}

/* All or nothing on the host's memory too: an update that would go non-finite leaves every host
   tensor as it was; a rollback restores the host's values and the library's state. */
static void test_gpt2_update_all_or_nothing(void) {
    gcase c = {32, 2, 8, 4, 2, 1, 1, 3};
    gpt2 *g = gnew(&c, 0, 1);
    resbm_stage_config sc = gcfg(&c, 0, g);
    resbm_model *m = NULL;
    size_t nf = 0, i;
    float *before;
    CHECK(g != NULL, "gpt2_new");
    if (!g) return;
    sc.model.pool = NULL;
    CHECK_RC(resbm_model_init(&sc.model, &sc.opt, &m), RESBM_OK);
    for (i = 0; i < g->n_params; i++) nf += g->params[i].value.ne[0] * g->params[i].value.ne[1];
    before = (float *)malloc(nf * 4);
    if (!m || !before) return;
    for (i = 0; i < nf; i++) g->grad[i] = 1e-3f * (float)((i % 7) + 1);
    memcpy(before, g->mem, nf * 4);
    g->grad[nf - 1] = 1e38f; /* squares to Inf in AdamW's second moment */
    CHECK_RC(resbm_model_update(m, 1.0f), RESBM_ENONFINITE);
    CHECK(!memcmp(before, g->mem, nf * 4), "a refused update changed the host's parameters");
    CHECK(resbm_model_step_count(m) == 0, "step");
    g->grad[nf - 1] = 1e-3f;
    CHECK_RC(resbm_model_update(m, 1.0f), RESBM_OK);
    CHECK(memcmp(before, g->mem, nf * 4) != 0, "the update reached the host's memory");
    CHECK_RC(resbm_model_rollback(m), RESBM_OK);
    CHECK(!memcmp(before, g->mem, nf * 4), "rollback restored the host's parameters");
    free(before);
    resbm_model_free(m);
    gpt2_free(g);
}

/* gpt2's callbacks behind a wrapper that fails on demand and checks when release is called. */
typedef struct {
    resbm_layers inner;     /* gpt2's own */
    int fail_fwd, fail_bwd; /* the code the next forward / backward returns instead (0: none) */
    int nan_out;            /* the next forward writes NaN into its output */
    int nan_dx;             /* the next backward writes NaN into dx */
    size_t extreme;         /* the next forward's first `extreme` logits: 3e38 at each row's token
                               0, -3e38 elsewhere: finite, with a loss past FLT_MAX (vocab 256) */
    int delay;              /* forwards that run honestly before fail_fwd or nan_out applies */
    int held[16], releases, stray_releases;
    resbm_model *self;      /* the model these layers are part of, */
    int meddle, meddled[3]; /* called from inside the next backward when meddle is set */
} faulty;

static int faulty_forward(void *u, int slot, size_t rows, const int32_t *tokens, const float *x, float *out) {
    faulty *f = (faulty *)u;
    int now = f->delay == 0, rc = now ? f->fail_fwd : 0;
    if (f->delay > 0) f->delay--;
    f->held[slot] = 1;
    if (now) f->fail_fwd = 0;
    if (!rc) rc = f->inner.forward(f->inner.user, slot, rows, tokens, x, out);
    if (!rc && now && f->nan_out) { out[3] = NAN; f->nan_out = 0; }
    if (!rc && now && f->extreme) {
        size_t i;
        for (i = 0; i < f->extreme; i++) out[i] = i % 256 ? -3e38f : 3e38f;
        f->extreme = 0;
    }
    return rc;
}
static int faulty_backward(void *u, int slot, float *dout, float *dx) {
    faulty *f = (faulty *)u;
    int rc = f->fail_bwd;
    f->fail_bwd = 0;
    if (f->meddle) { /* a host calling its model from inside the model's own call */
        f->meddle = 0;
        f->meddled[0] = resbm_model_update(f->self, 1.0f);
        f->meddled[1] = resbm_model_zero_grad(f->self);
        f->meddled[2] = resbm_model_release(f->self, slot);
    }
    if (!rc) rc = f->inner.backward(f->inner.user, slot, dout, dx);
    if (!rc && f->nan_dx && dx) { dx[1] = NAN; f->nan_dx = 0; }
    if (!rc) f->held[slot] = 0;
    return rc;
}
static void faulty_release(void *u, int slot) {
    faulty *f = (faulty *)u;
    f->releases++;
    f->stray_releases += !f->held[slot];
    f->held[slot] = 0;
    f->inner.release(f->inner.user, slot);
}

typedef struct { resbm_stage *st; int rc, rows, seq, step; double seconds; } fthread;
static void *fthread_main(void *p) {
    fthread *a = (fthread *)p;
    int32_t tok[256], tg[256];
    float loss;
    double t0 = resbm__now();
    gbatch(tok, tg, (size_t)a->rows * (size_t)a->seq, a->step);
    a->rc = resbm_stage_step(a->st, tok, tg, (size_t)a->rows, &loss);
    a->seconds = resbm__now() - t0;
    return NULL;
}

/* What the host's callbacks return is distrusted: a code outside RESBM_E* (or the runtime's own
   RESBM_EPEER) fails the call as RESBM_EHOST, and in a pipeline the neighbour hears at once
   (an EPEER from a host used to be taken for a neighbour's abort, so the neighbour waited out
   its timeout); NaN in the host's output fails eval and generate too, not just training; release
   is called only for a slot that holds a forward; after each failure the next honest call works. */
static void test_gpt2_callback_failures(void) {
    gcase c1 = {32, 2, 8, 2, 1, 1, 1, 5}, c2 = {32, 2, 8, 4, 2, 1, 2, 6}; /* c2: 2 microbatches */
    faulty f[2];
    gpt2 *g[2];
    resbm_layers L[2];
    resbm_stage *st[2];
    resbm_inproc *hub;
    int32_t tok[64], tg[64], out[4];
    float loss;
    int s, k, slots;
    struct { int fwd, bwd; } codes[] = {{1, 0}, {0, INT_MIN}, {RESBM_EPEER, 0}, {0, RESBM_EFORMAT}};
    /* one stage */
    {
        resbm_stage_config sc = gcfg(&c1, 0, NULL);
        sc.model.r = c1.d;
        CHECK_RC(resbm_stage_slots(&sc, &slots), RESBM_OK);
        g[0] = gnew(&c1, 0, slots);
        CHECK(g[0] != NULL, "gpt2_new");
        if (!g[0]) return;
        memset(&f[0], 0, sizeof(f[0]));
        f[0].inner = g[0]->layers;
        L[0] = g[0]->layers;
        L[0].user = &f[0]; L[0].forward = faulty_forward; L[0].backward = faulty_backward; L[0].release = faulty_release;
        sc = gcfg(&c1, 0, g[0]);
        sc.model.host = &L[0];
        sc.model.r = c1.d; /* one stage: no boundary */
        CHECK_RC(resbm_inproc_init(1, 1 << 16, &hub), RESBM_OK);
        resbm_inproc_transport(hub, 0, &sc.transport);
        CHECK_RC(resbm_stage_init(&sc, &st[0]), RESBM_OK);
        if (th_fail_now) return;
        gbatch(tok, tg, 8, 0);
        for (k = 0; k < 4; k++) {
            int rc, want = k == 3 ? RESBM_EFORMAT : RESBM_EHOST;
            f[0].fail_fwd = codes[k].fwd; f[0].fail_bwd = codes[k].bwd;
            rc = resbm_stage_step(st[0], tok, tg, 1, &loss);
            CHECK(rc == want, "case %d: %s, want %s", k, resbm_strerror(rc), resbm_strerror(want));
            CHECK(resbm_model_step_count(resbm_stage_model(st[0])) == k, "case %d applied", k);
            CHECK_RC(resbm_stage_step(st[0], tok, tg, 1, &loss), RESBM_OK); /* the next honest step */
        }
        /* finite logits whose loss is not: refused by step and eval alike (the step used to be,
           the eval returned Inf, and a model's own train step applied the update) */
        f[0].extreme = 8 * 256;
        loss = -1.0f;
        CHECK_RC(resbm_stage_step(st[0], tok, tg, 1, &loss), RESBM_ENONFINITE);
        CHECK(loss == -1.0f && resbm_model_step_count(resbm_stage_model(st[0])) == 4, "a loss past FLT_MAX applied");
        f[0].extreme = 8 * 256;
        CHECK_RC(resbm_stage_eval(st[0], tok, tg, 1, &loss), RESBM_ENONFINITE);
        CHECK(loss == -1.0f, "eval loss %g", loss);
        f[0].nan_out = 1;
        CHECK_RC(resbm_stage_eval(st[0], tok, tg, 1, &loss), RESBM_ENONFINITE);
        CHECK_RC(resbm_stage_eval(st[0], tok, tg, 1, &loss), RESBM_OK);
        CHECK(loss == loss && loss > 0.0f, "eval loss %g", loss);
        /* a failed generate leaves out as it was, whichever token it failed on */
        for (k = 0; k < 3; k++) {
            int i;
            for (i = 0; i < 4; i++) out[i] = -7;
            f[0].delay = k;
            if (k == 1) f[0].fail_fwd = RESBM_EIO; else f[0].nan_out = 1;
            CHECK_RC(resbm_stage_generate(st[0], tok, 4, 4, 1.0f, 9, out), k == 1 ? RESBM_EIO : RESBM_ENONFINITE);
            for (i = 0; i < 4; i++) CHECK(out[i] == -7, "failed on token %d: out[%d] = %d", k, i, (int)out[i]);
        }
        f[0].delay = 0;
        CHECK_RC(resbm_stage_generate(st[0], tok, 4, 4, 1.0f, 9, out), RESBM_OK);
        for (k = 0; k < 4; k++) CHECK(out[k] >= 0 && out[k] < 256, "out[%d] = %d", k, (int)out[k]);
        CHECK(f[0].releases > 0 && f[0].stray_releases == 0, "%d of %d releases were for a slot holding nothing",
              f[0].stray_releases, f[0].releases);
        /* the model's own entries from inside its backward: refused, the step goes on (before,
           zero_grad mid-step wiped the gradients of what ran so far) */
        f[0].self = resbm_stage_model(st[0]);
        f[0].meddle = 1;
        CHECK_RC(resbm_stage_step(st[0], tok, tg, 1, &loss), RESBM_OK);
        for (k = 0; k < 3; k++) CHECK(f[0].meddled[k] == RESBM_ESTATE, "stage, call %d: %s", k, resbm_strerror(f[0].meddled[k]));
        CHECK(resbm_model_step_count(f[0].self) == 5, "step %ld", resbm_model_step_count(f[0].self));
        resbm_stage_free(st[0]);
        resbm_inproc_free(hub);
        /* and with no stage: a model's own train step */
        CHECK_RC(resbm_model_init(&sc.model, &sc.opt, &f[0].self), RESBM_OK);
        f[0].meddle = 1;
        memset(f[0].meddled, 0, sizeof(f[0].meddled));
        if (f[0].self) CHECK_RC(resbm_model_train_step(f[0].self, tok, tg, 1, 1, &loss), RESBM_OK);
        for (k = 0; k < 3; k++) CHECK(f[0].meddled[k] == RESBM_ESTATE, "model, call %d: %s", k, resbm_strerror(f[0].meddled[k]));
        CHECK(resbm_model_step_count(f[0].self) == 1, "step %ld", resbm_model_step_count(f[0].self));
        f[0].extreme = 8 * 256;
        if (f[0].self) CHECK_RC(resbm_model_train_step(f[0].self, tok, tg, 1, 1, &loss), RESBM_ENONFINITE);
        CHECK(resbm_model_step_count(f[0].self) == 1, "a model's train step applied a loss past FLT_MAX");
        resbm_model_free(f[0].self);
        gpt2_free(g[0]);
    }
    /* two stages: stage 1's (first) backward returns RESBM_EPEER */
    CHECK_RC(resbm_inproc_init(2, 1 << 20, &hub), RESBM_OK);
    for (s = 0; s < 2; s++) {
        resbm_stage_config sc = gcfg(&c2, s, NULL);
        CHECK_RC(resbm_stage_slots(&sc, &slots), RESBM_OK);
        g[s] = gnew(&c2, s, slots);
        CHECK(g[s] != NULL, "gpt2_new");
        if (!g[s]) return;
        memset(&f[s], 0, sizeof(f[s]));
        f[s].inner = g[s]->layers;
        L[s] = g[s]->layers;
        L[s].user = &f[s]; L[s].forward = faulty_forward; L[s].backward = faulty_backward; L[s].release = faulty_release;
        sc = gcfg(&c2, s, g[s]);
        sc.model.host = &L[s];
        sc.timeout_ms = 5000;
        resbm_inproc_transport(hub, s, &sc.transport);
        CHECK_RC(resbm_stage_init(&sc, &st[s]), RESBM_OK);
    }
    if (th_fail_now) return;
    for (k = 0; k < 3; k++) {
        fthread a[2];
        pthread_t th[2];
        if (k == 1) f[1].fail_bwd = RESBM_EPEER;
        for (s = 0; s < 2; s++) {
            a[s].st = st[s]; a[s].rows = c2.n_micro; a[s].seq = c2.seq; a[s].step = k;
            pthread_create(&th[s], NULL, fthread_main, &a[s]);
        }
        for (s = 0; s < 2; s++) pthread_join(th[s], NULL);
        if (k == 1) {
            CHECK(a[1].rc == RESBM_EHOST && a[0].rc == RESBM_EPEER, "stage 1 %s, stage 0 %s",
                  resbm_strerror(a[1].rc), resbm_strerror(a[0].rc));
            CHECK(strstr(resbm_stage_why(st[0]), "stage 1") != NULL, "stage 0 says \"%s\"", resbm_stage_why(st[0]));
            CHECK(a[0].seconds < 2.0, "stage 0 heard after %.2f s (its timeout is 5 s)", a[0].seconds);
            for (s = 0; s < 2; s++) { /* the failed step's forwards released before it returned */
                int sl;
                for (sl = 0; sl < 16; sl++) CHECK(!f[s].held[sl], "stage %d still holds slot %d", s, sl);
            }
        } else {
            CHECK(a[0].rc == RESBM_OK && a[1].rc == RESBM_OK, "step %d: %s / %s", k, resbm_strerror(a[0].rc),
                  resbm_strerror(a[1].rc));
        }
    }
    for (s = 0; s < 2; s++) {
        CHECK(resbm_model_step_count(resbm_stage_model(st[s])) == 2, "stage %d at step %ld", s,
              resbm_model_step_count(resbm_stage_model(st[s])));
        CHECK(f[s].stray_releases == 0, "stage %d: %d stray releases", s, f[s].stray_releases);
        resbm_stage_free(st[s]);
        gpt2_free(g[s]);
    }
    resbm_inproc_free(hub);
}

/* The library's gradients (the bottleneck's), in one copy. */
static float *bottleneck_grads(const resbm_model *m, size_t *n_out) {
    size_t np, i, n = 0;
    const resbm_param *ps = resbm_model_params(m, &np);
    float *g = (float *)malloc(resbm_model_num_floats(m) * sizeof(float) + 1);
    for (i = 0; g && i < np; i++)
        if (!strncmp(ps[i].name, "bottleneck.", 11)) {
            memcpy(g + n, ps[i].grad.data, ps[i].grad.ne[0] * ps[i].grad.ne[1] * sizeof(float));
            n += ps[i].grad.ne[0] * ps[i].grad.ne[1];
        }
    *n_out = n;
    return g;
}

/* A backward that the host's layers fail (their code, or NaN in the dL/dx they hand back) leaves
   the library's gradients as they were and drops the slot. Before, the encoder's part of the
   failed backward stayed in its gradients, and NaN from the host went on into the decoder's
   gradients and dx_in with the call returning success. */
typedef struct { resbm_model *m; const float *dz; int rc; } busy_call;
static void backward_on_busy_pool(void *ctx, size_t task, int thread) {
    busy_call *bc = (busy_call *)ctx;
    (void)task; (void)thread;
    bc->rc = resbm_model_backward(bc->m, 0, bc->dz, NULL, 1.0f);
}

static void test_gpt2_failed_backward_keeps_grads(void) {
    gcase c = {32, 2, 8, 4, 2, 1, 1, 6};
    size_t N = 8, r = 4;
    int s, slots;
    for (s = 0; s < 2; s++) {
        resbm_stage_config sc = gcfg(&c, s, NULL);
        resbm_layers L;
        faulty f;
        gpt2 *g;
        resbm_model *m = NULL;
        int32_t tok[8], tg[8];
        float z[8 * 4], dz[8 * 4], dx[8 * 4], loss, *before = NULL, *after = NULL;
        size_t nb = 0, na = 0, i;
        int k;
        CHECK_RC(resbm_stage_slots(&sc, &slots), RESBM_OK);
        g = gnew(&c, s, slots);
        CHECK(g != NULL, "gpt2_new");
        if (!g) return;
        memset(&f, 0, sizeof(f));
        f.inner = g->layers;
        L = g->layers;
        L.user = &f; L.forward = faulty_forward; L.backward = faulty_backward; L.release = faulty_release;
        sc = gcfg(&c, s, g);
        sc.model.host = &L;
        CHECK_RC(resbm_model_init(&sc.model, &sc.opt, &m), RESBM_OK);
        if (!m) return;
        gbatch(tok, tg, N, 0);
        for (i = 0; i < N * r; i++) { z[i] = 0.1f * (float)((int)(i % 7) - 3); dz[i] = 0.01f * (float)((int)(i % 5) - 2); }
        for (k = 0; k < 3; k++) { /* an honest pass, then the failing one, then an honest one again */
            if (s == 0) CHECK_RC(resbm_model_forward(m, 0, tok, NULL, NULL, 1, z, NULL), RESBM_OK);
            else CHECK_RC(resbm_model_forward(m, 0, NULL, z, tg, 1, NULL, &loss), RESBM_OK);
            if (k == 1) {
                before = bottleneck_grads(m, &nb);
                for (i = 0; i < N * r; i++) dx[i] = -7.0f;
                if (s == 0) f.fail_bwd = RESBM_EIO; else f.nan_dx = 1;
            }
            CHECK_RC(s == 0 ? resbm_model_backward(m, 0, dz, NULL, 1.0f) : resbm_model_backward(m, 0, NULL, dx, 1.0f),
                     k != 1 ? RESBM_OK : s == 0 ? RESBM_EIO : RESBM_ENONFINITE);
            if (k == 1) {
                after = bottleneck_grads(m, &na);
                CHECK(nb > 0 && na == nb && before && after && !memcmp(before, after, nb * sizeof(float)),
                      "stage %d: the failed backward changed the library's gradients", s);
                for (i = 0; i < N * r; i++) CHECK(dx[i] == -7.0f, "stage %d: dx_in[%zu] written", s, i);
                free(before); free(after);
            }
        }
        if (s == 0) { /* the encoder's backward refused its pool (busy running this very call):
                         the gradients as they were, the slot kept, and the retry is honest */
            busy_call bc;
            CHECK_RC(resbm_model_forward(m, 0, tok, NULL, NULL, 1, z, NULL), RESBM_OK);
            before = bottleneck_grads(m, &nb);
            bc.m = m; bc.dz = dz; bc.rc = 0;
            CHECK_RC(resbm_pool_run(g->pool, backward_on_busy_pool, &bc, 1), RESBM_OK);
            CHECK_RC(bc.rc, RESBM_ESTATE);
            after = bottleneck_grads(m, &na);
            CHECK(nb > 0 && na == nb && before && after && !memcmp(before, after, nb * sizeof(float)),
                  "the refused encoder backward changed the library's gradients");
            free(after);
            CHECK(f.held[0], "the refused encoder backward dropped the slot");
            CHECK_RC(resbm_model_backward(m, 0, dz, NULL, 1.0f), RESBM_OK);
            after = bottleneck_grads(m, &na);
            CHECK(before && after && memcmp(before, after, nb * sizeof(float)) && !f.held[0], "the retried backward added nothing");
            free(before); free(after);
        }
        CHECK(f.stray_releases == 0, "stage %d: %d stray releases", s, f.stray_releases);
        /* a forward still held when the model is freed is released then */
        if (s == 0) CHECK_RC(resbm_model_forward(m, 0, tok, NULL, NULL, 1, z, NULL), RESBM_OK);
        else CHECK_RC(resbm_model_forward(m, 0, NULL, z, tg, 1, NULL, &loss), RESBM_OK);
        k = f.releases;
        resbm_model_free(m);
        CHECK(f.releases == k + 1 && !f.held[0], "stage %d: freed with a forward held, %d releases", s, f.releases - k);
        gpt2_free(g);
    }
}

int main(int argc, char **argv) {
    const char *filter = NULL;
    int i;
    if (argc == 3 && !strcmp(argv[1], "--dump")) {
        gcase one = {32, 4, 8, 3, 1, 2, 2, 21}, three = {32, 2, 8, 4, 3, 2, 3, 22};
        int rc = dump(argv[2], "gpt2_single", one, 32, 1);
        rc |= dump(argv[2], "gpt2_stages3_r4", three, 4, 1);
        rc |= dump(argv[2], "gpt2_stages3_r1_noid", three, 1, 0);
        three.stages = 2;
        rc |= dump(argv[2], "gpt2_stages2_r32", three, 32, 1);
        if (rc) fprintf(stderr, "dump: %s\n", resbm_strerror(rc));
        return rc ? 1 : 0;
    }
    for (i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--filter")) filter = argv[i + 1];
    RUN(test_gpt2_pipeline_equals_sequential);
    RUN(test_gpt2_pipeline_muon);
    RUN(test_gpt2_pipeline_async);
    RUN(test_gpt2_declaration);
    RUN(test_gpt2_checkpoint_and_job);
    RUN(test_gpt2_update_all_or_nothing);
    RUN(test_gpt2_callback_failures);
    RUN(test_gpt2_failed_backward_keeps_grads);
    return th_finish();
}
