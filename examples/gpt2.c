/* gpt2.c - a GPT-2-style host engine trained across pipeline stages by resbm_stage.

   The model is the host's own, in the host's own style: LayerNorm with bias, GELU (tanh) MLP of
   width 4d, learned position embeddings, biases everywhere, causal attention without RoPE, and the
   output head tied to the token embedding. Its buffers and layer loops are its own; it uses
   resbm.h's GEMM and attention kernels because they are there. The library does the rest through
   resbm_layers: the bottleneck between stages, the wire, 1F1B, the loss, clipping, AdamW or Muon,
   checkpoints, eval, sampling, and every fail-safe rule. The driver is examples/train.c, so the
   flags, the TCP and checkpoint handling and the `result:` line are train's:

       gpt2 --data data/brown.txt --stages 4 --ratio 128 --steps 500
       gpt2 --stage 0 --stages 2 --listen 127.0.0.1:9000 --peers 127.0.0.1:9000,127.0.0.1:9001 ...

   Tied embeddings across stages: with one stage the head is wte itself. With S > 1, wte lives on
   stage 0 and the head on stage S-1; keeping them tied would send the head's gradient (V x d
   floats, 256 KiB at d = 256) to stage 0 and the new values back every step, against 2 x 8 KiB of
   compressed activations per microbatch at 128x. So they are untied: `lm_head` starts as a copy of
   wte (same init) and trains on its own. That costs 0 bytes on the wire and V x d parameters.

   Parameter names follow GPT-2's: wte, wpe, h.<l>.ln_1.weight ... ln_f.bias, lm_head. */
#ifndef GPT2_NO_TRAIN
#define TRAIN_HOST_ENGINE gpt2_engine
#include "train.c" /* the driver: options, data, threads or TCP, checkpoints, the result line */
#else              /* the layers alone, for the tests */
#include "../resbm.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#endif

/* ---- the model: shapes, parameters, per-slot activations ---------------------------------------- */
/* One block's tensors, in parameter order: t[LN1_W] ... t[FCP_B] (values, or gradients). */
enum { LN1_W, LN1_B, QKV_W, QKV_B, PROJ_W, PROJ_B, LN2_W, LN2_B, FC_W, FC_B, FCP_W, FCP_B, BLOCK_TENSORS };
typedef struct { float *t[BLOCK_TENSORS]; } gpt2_block_w;

typedef struct { /* one forward in flight: what its backward needs, per block */
    size_t rows;
    int32_t *tok;                /* [N] stage 0 */
    const float *x0;             /* [N,d] input residual: own (stage 0) or the library's x */
    float *emb;                  /* [N,d] stage 0: wte[tok] + wpe[pos] */
    float *x, *ln1, *q, *k, *v, *att, *lse, *x2, *ln2, *fc, *gelu; /* per block, see carve */
    float *mean1, *rstd1, *mean2, *rstd2;
    float *xl, *lnf, *meanf, *rstdf; /* last stage: final residual, its LayerNorm */
} gpt2_slot;

typedef struct {
    int d, H, T, V, L, l0, first, last, tied, nslots;
    size_t N;                    /* tokens per slot */
    resbm_pool *pool;            /* shared with the stage: one caller at a time, and it is us */
    resbm_param *params;
    size_t n_params;
    float *mem, *grad;           /* all parameter values, all gradients */
    gpt2_block_w *bw, *bg;       /* [L] */
    float *wte, *wpe, *lnf_w, *lnf_b, *head, *g_wte, *g_wpe, *g_lnf_w, *g_lnf_b, *g_head;
    gpt2_slot *slots;
    float *act;                  /* every slot's activations */
    int32_t *toks;               /* every slot's tokens (stage 0) */
    int own_pool;
    float *d1, *d2, *dq, *dk, *dv, *dfc; /* backward scratch */
    char arch[160];
    resbm_layers layers;
} gpt2;

/* Parameter i of this stage: name, shape, kind, init std (0: zeros; -1: ones); 0 past the end. */
static int gpt2_spec(const gpt2 *g, size_t i, char *name, size_t *rows, size_t *cols, int *kind, float *std) {
    static const char *const bn[12] = {"ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                                       "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                                       "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"};
    size_t d = (size_t)g->d, n = 0;
    if (g->first) {
        if (i == n++) { strcpy(name, "wte"); *rows = (size_t)g->V; *cols = d; *kind = RESBM_PARAM_EMBED; *std = 0.02f; return 1; }
        if (i == n++) { strcpy(name, "wpe"); *rows = (size_t)g->T; *cols = d; *kind = RESBM_PARAM_EMBED; *std = 0.01f; return 1; }
    }
    if (i < n + 12 * (size_t)g->L) {
        size_t b = (i - n) / 12, w = (i - n) % 12;
        static const size_t mult_rows[12] = {1, 1, 3, 3, 1, 1, 1, 1, 4, 4, 1, 1};
        snprintf(name, RESBM_NAME_MAX, "h.%d.%s", g->l0 + (int)b, bn[w]);
        *rows = mult_rows[w] * d;
        *cols = (w == 2 || w == 4 || w == 8) ? d : w == 10 ? 4 * d : 1;
        *kind = *cols == 1 ? RESBM_PARAM_NORM : RESBM_PARAM_HIDDEN; /* biases: no decay, like norms */
        *std = w == 0 || w == 6 ? -1.0f : *cols == 1 ? 0.0f
             : (w == 4 || w == 10) ? 0.02f / sqrtf(2.0f * (float)g->L) : 0.02f; /* GPT-2's residual scaling */
        return 1;
    }
    n += 12 * (size_t)g->L;
    if (g->last) {
        if (i == n++) { strcpy(name, "ln_f.weight"); *rows = d; *cols = 1; *kind = RESBM_PARAM_NORM; *std = -1.0f; return 1; }
        if (i == n++) { strcpy(name, "ln_f.bias"); *rows = d; *cols = 1; *kind = RESBM_PARAM_NORM; *std = 0.0f; return 1; }
        if (!g->tied && i == n++) { strcpy(name, "lm_head"); *rows = (size_t)g->V; *cols = d; *kind = RESBM_PARAM_HEAD; *std = 0.02f; return 1; }
    }
    return 0;
}

static void gpt2_free(gpt2 *g) {
    if (!g) return;
    if (g->own_pool) resbm_pool_free(g->pool);
    free(g->params); free(g->mem); free(g->grad); free(g->bw); free(g->bg); free(g->slots); free(g->act);
    free(g->toks); free(g->d1);
    free(g);
}

static uint64_t gpt2_hash(const char *s) { /* FNV-1a: each tensor's init stream */
    uint64_t h = 14695981039346656037ULL;
    while (*s) { h ^= (unsigned char)*s++; h *= 1099511628211ULL; }
    return h;
}

/* ---- the host's own small kernels --------------------------------------------------------------- */
/* y = LayerNorm(x) * w + b per row; mean and rstd kept. */
static void layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *w,
                              const float *b, size_t N, size_t d) {
    size_t n, i;
    for (n = 0; n < N; n++) {
        const float *xr = x + n * d;
        float m = 0.0f, v = 0.0f, s;
        for (i = 0; i < d; i++) m += xr[i];
        m /= (float)d;
        for (i = 0; i < d; i++) v += (xr[i] - m) * (xr[i] - m);
        s = 1.0f / sqrtf(v / (float)d + 1e-5f);
        for (i = 0; i < d; i++) y[n * d + i] = (xr[i] - m) * s * w[i] + b[i];
        mean[n] = m;
        rstd[n] = s;
    }
}

/* dx += dLN/dx . dy; dw, db +=. */
static void layernorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                               const float *w, const float *mean, const float *rstd, size_t N, size_t d) {
    size_t n, i;
    for (n = 0; n < N; n++) {
        const float *dyr = dy + n * d, *xr = x + n * d;
        float a = 0.0f, c = 0.0f;
        for (i = 0; i < d; i++) {
            float xh = (xr[i] - mean[n]) * rstd[n], dxh = dyr[i] * w[i];
            dw[i] += dyr[i] * xh;
            db[i] += dyr[i];
            a += dxh;
            c += dxh * xh;
        }
        a /= (float)d;
        c /= (float)d;
        for (i = 0; i < d; i++) {
            float xh = (xr[i] - mean[n]) * rstd[n];
            dx[n * d + i] += (dyr[i] * w[i] - a - xh * c) * rstd[n];
        }
    }
}

#define GELU_K 0.7978845608f /* sqrt(2/pi) */
static void gelu_forward(float *y, const float *x, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        float u = x[i];
        y[i] = 0.5f * u * (1.0f + tanhf(GELU_K * (u + 0.044715f * u * u * u)));
    }
}
/* dx = dy * gelu'(x) (overwrites; dx may be dy). */
static void gelu_backward(float *dx, const float *dy, const float *x, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        float u = x[i], t = tanhf(GELU_K * (u + 0.044715f * u * u * u));
        float dt = GELU_K * (1.0f + 3.0f * 0.044715f * u * u) * (1.0f - t * t);
        dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * u * dt);
    }
}

static void add_bias(float *y, const float *b, size_t N, size_t o) {
    size_t n, i;
    for (n = 0; n < N; n++) for (i = 0; i < o; i++) y[n * o + i] += b[i];
}
static void bias_grad(float *db, const float *dy, size_t N, size_t o) {
    size_t n, i;
    for (n = 0; n < N; n++) for (i = 0; i < o; i++) db[i] += dy[n * o + i];
}

/* y = x w^T + b (the library's GEMM) */
static int dense_forward(gpt2 *g, float *y, const float *x, const float *w, const float *b, size_t N, size_t in, size_t o) {
    int rc = resbm_linear_forward(g->pool, y, x, w, N, in, o);
    if (!rc) add_bias(y, b, N, o);
    return rc;
}
static int dense_backward(gpt2 *g, float *dx, float *dw, float *db, const float *dy, const float *x,
                          const float *w, size_t N, size_t in, size_t o, int accumulate_dx) {
    bias_grad(db, dy, N, o);
    return resbm_linear_backward(g->pool, dx, dw, dy, x, w, N, in, o, accumulate_dx);
}

/* ---- forward and backward of one stage's layers -------------------------------------------------- */
#define GPT2_TRY(x) do { int rc_ = (x); if (rc_) return rc_; } while (0)

static int gpt2_forward(void *user, int slot, size_t rows, const int32_t *tokens, const float *x_in, float *out) {
    gpt2 *g = (gpt2 *)user;
    gpt2_slot *s = &g->slots[slot];
    size_t d = (size_t)g->d, T = (size_t)g->T, N = rows * T, H = (size_t)g->H, n, i;
    int l;
    s->rows = rows;
    if (g->first) { /* wte[tok] + wpe[pos] */
        memcpy(s->tok, tokens, N * sizeof(int32_t));
        for (n = 0; n < N; n++)
            for (i = 0; i < d; i++) s->emb[n * d + i] = g->wte[(size_t)tokens[n] * d + i] + g->wpe[(n % T) * d + i];
        s->x0 = s->emb;
    } else {
        s->x0 = x_in; /* the library keeps it until this slot's backward */
    }
    for (l = 0; l < g->L; l++) {
        const gpt2_block_w *w = &g->bw[l];
        const float *x = l ? s->x + (size_t)(l - 1) * g->N * d : s->x0;
        float *ln1 = s->ln1 + l * g->N * d, *q = s->q + l * g->N * d, *k = s->k + l * g->N * d;
        float *v = s->v + l * g->N * d, *att = s->att + l * g->N * d, *x2 = s->x2 + l * g->N * d;
        float *ln2 = s->ln2 + l * g->N * d, *fc = s->fc + l * g->N * 4 * d, *ge = s->gelu + l * g->N * 4 * d;
        float *xo = l + 1 < g->L ? s->x + (size_t)l * g->N * d : s->xl;
        layernorm_forward(ln1, s->mean1 + l * g->N, s->rstd1 + l * g->N, x, w->t[LN1_W], w->t[LN1_B], N, d);
        GPT2_TRY(dense_forward(g, q, ln1, w->t[QKV_W], w->t[QKV_B], N, d, d));
        GPT2_TRY(dense_forward(g, k, ln1, w->t[QKV_W] + d * d, w->t[QKV_B] + d, N, d, d));
        GPT2_TRY(dense_forward(g, v, ln1, w->t[QKV_W] + 2 * d * d, w->t[QKV_B] + 2 * d, N, d, d));
        GPT2_TRY(resbm_attention_forward(g->pool, att, s->lse + l * g->N * H, q, k, v, N, T, d, H));
        GPT2_TRY(dense_forward(g, x2, att, w->t[PROJ_W], w->t[PROJ_B], N, d, d));
        for (i = 0; i < N * d; i++) x2[i] += x[i];
        layernorm_forward(ln2, s->mean2 + l * g->N, s->rstd2 + l * g->N, x2, w->t[LN2_W], w->t[LN2_B], N, d);
        GPT2_TRY(dense_forward(g, fc, ln2, w->t[FC_W], w->t[FC_B], N, d, 4 * d));
        gelu_forward(ge, fc, N * 4 * d);
        GPT2_TRY(dense_forward(g, xo, ge, w->t[FCP_W], w->t[FCP_B], N, 4 * d, d));
        for (i = 0; i < N * d; i++) xo[i] += x2[i];
    }
    if (!g->L) memcpy(s->xl, s->x0, N * d * sizeof(float));
    if (!g->last) {
        memcpy(out, s->xl, N * d * sizeof(float));
        return RESBM_OK;
    }
    layernorm_forward(s->lnf, s->meanf, s->rstdf, s->xl, g->lnf_w, g->lnf_b, N, d);
    return resbm_linear_forward(g->pool, out, s->lnf, g->head, N, d, (size_t)g->V); /* logits */
}

static int gpt2_backward(void *user, int slot, float *dout, float *dx) {
    gpt2 *g = (gpt2 *)user;
    gpt2_slot *s = &g->slots[slot];
    size_t d = (size_t)g->d, T = (size_t)g->T, N = s->rows * T, H = (size_t)g->H, n, i;
    float *dres = g->d1; /* dL/d(residual), carried down through the blocks */
    int l;
    if (g->last) {
        GPT2_TRY(resbm_linear_backward(g->pool, g->d2, g->g_head, dout, s->lnf, g->head, N, d, (size_t)g->V, 0));
        memset(dres, 0, N * d * sizeof(float));
        layernorm_backward(dres, g->g_lnf_w, g->g_lnf_b, g->d2, s->xl, g->lnf_w, s->meanf, s->rstdf, N, d);
    } else {
        memcpy(dres, dout, N * d * sizeof(float));
    }
    for (l = g->L - 1; l >= 0; l--) {
        const gpt2_block_w *w = &g->bw[l], *gw = &g->bg[l];
        const float *x = l ? s->x + (size_t)(l - 1) * g->N * d : s->x0;
        const float *ln1 = s->ln1 + l * g->N * d, *q = s->q + l * g->N * d, *k = s->k + l * g->N * d;
        const float *v = s->v + l * g->N * d, *att = s->att + l * g->N * d, *x2 = s->x2 + l * g->N * d;
        const float *ln2 = s->ln2 + l * g->N * d, *fc = s->fc + l * g->N * 4 * d, *ge = s->gelu + l * g->N * 4 * d;
        /* MLP: x_out = x2 + c_proj(gelu(c_fc(ln_2(x2)))) */
        GPT2_TRY(dense_backward(g, g->dfc, gw->t[FCP_W], gw->t[FCP_B], dres, ge, w->t[FCP_W], N, 4 * d, d, 0));
        gelu_backward(g->dfc, g->dfc, fc, N * 4 * d);
        GPT2_TRY(dense_backward(g, g->d2, gw->t[FC_W], gw->t[FC_B], g->dfc, ln2, w->t[FC_W], N, d, 4 * d, 0));
        layernorm_backward(dres, gw->t[LN2_W], gw->t[LN2_B], g->d2, x2, w->t[LN2_W], s->mean2 + l * g->N, s->rstd2 + l * g->N, N, d);
        /* attention: x2 = x + c_proj(attn(q, k, v)), q k v = c_attn(ln_1(x)) */
        GPT2_TRY(dense_backward(g, g->d2, gw->t[PROJ_W], gw->t[PROJ_B], dres, att, w->t[PROJ_W], N, d, d, 0));
        memset(g->dq, 0, N * d * sizeof(float));
        memset(g->dk, 0, N * d * sizeof(float));
        memset(g->dv, 0, N * d * sizeof(float));
        GPT2_TRY(resbm_attention_backward(g->pool, g->dq, g->dk, g->dv, g->d2, q, k, v, att, s->lse + l * g->N * H, N, T, d, H));
        GPT2_TRY(dense_backward(g, g->d2, gw->t[QKV_W], gw->t[QKV_B], g->dq, ln1, w->t[QKV_W], N, d, d, 0));
        GPT2_TRY(dense_backward(g, g->d2, gw->t[QKV_W] + d * d, gw->t[QKV_B] + d, g->dk, ln1, w->t[QKV_W] + d * d, N, d, d, 1));
        GPT2_TRY(dense_backward(g, g->d2, gw->t[QKV_W] + 2 * d * d, gw->t[QKV_B] + 2 * d, g->dv, ln1, w->t[QKV_W] + 2 * d * d, N, d, d, 1));
        layernorm_backward(dres, gw->t[LN1_W], gw->t[LN1_B], g->d2, x, w->t[LN1_W], s->mean1 + l * g->N, s->rstd1 + l * g->N, N, d);
    }
    if (g->first) {
        for (n = 0; n < N; n++)
            for (i = 0; i < d; i++) {
                g->g_wte[(size_t)s->tok[n] * d + i] += dres[n * d + i];
                g->g_wpe[(n % T) * d + i] += dres[n * d + i];
            }
    } else {
        memcpy(dx, dres, N * d * sizeof(float));
    }
    s->rows = 0;
    return RESBM_OK;
}

static void gpt2_release(void *user, int slot) { ((gpt2 *)user)->slots[slot].rows = 0; }

/* ---- building a stage ---------------------------------------------------------------------------- */
/* Stage s of S: blocks [l0, l0 + L) of `layers`, split as resbm splits the built-in model. */
static int gpt2_new(int d, int heads, int seq, int layers, int stages, int s, int slots, size_t rows_per_slot,
                    uint64_t seed, resbm_pool *pool, gpt2 **out) {
    gpt2 *g = (gpt2 *)calloc(1, sizeof(gpt2));
    size_t i, j, off = 0, per, D, Nd;
    int base = layers / stages, extra = layers % stages, l;
    if (!g) return RESBM_ENOMEM;
    if (pool && resbm_pool_reserve(pool, RESBM_ATTENTION_WORK(seq))) { /* attention's blocked path, always */
        free(g);
        return RESBM_ENOMEM;
    }
    g->d = d; g->H = heads; g->T = seq; g->V = 256; g->pool = pool; g->nslots = slots;
    g->L = base + (s < extra ? 1 : 0);
    g->l0 = s * base + (s < extra ? s : extra);
    g->first = s == 0; g->last = s == stages - 1; g->tied = g->first && g->last;
    g->N = rows_per_slot * (size_t)seq;
    D = (size_t)d; Nd = g->N * D;
    for (;;) { /* count them */
        char name[RESBM_NAME_MAX];
        size_t rows, cols;
        int kind;
        float std;
        if (!gpt2_spec(g, g->n_params, name, &rows, &cols, &kind, &std)) break;
        g->n_params++;
    }
    g->params = (resbm_param *)calloc(g->n_params, sizeof(resbm_param));
    for (i = 0; i < g->n_params; i++) {
        size_t rows, cols;
        int kind;
        float std;
        gpt2_spec(g, i, g->params[i].name, &rows, &cols, &kind, &std);
        off += rows * cols;
    }
    g->mem = (float *)calloc(off, sizeof(float));
    g->grad = (float *)calloc(off, sizeof(float));
    g->bw = (gpt2_block_w *)calloc((size_t)g->L + 1, sizeof(gpt2_block_w));
    g->bg = (gpt2_block_w *)calloc((size_t)g->L + 1, sizeof(gpt2_block_w));
    g->slots = (gpt2_slot *)calloc((size_t)slots, sizeof(gpt2_slot));
    /* per slot: stage 0's embedding; per block x (output, L - 1 kept), ln1 q k v att x2 ln2 [N,d],
       fc gelu [N,4d], lse [N,H], 4 x [N]; the last stage's final residual and LayerNorm */
    per = (g->first ? Nd : 0) + (size_t)g->L * (8 * Nd + 8 * Nd + g->N * (size_t)heads + 4 * g->N) +
          2 * Nd + 2 * g->N;
    g->act = (float *)calloc(per * (size_t)slots + 1, sizeof(float));
    g->toks = (int32_t *)calloc(g->N * (size_t)slots, sizeof(int32_t));
    g->d1 = (float *)calloc(5 * Nd + 4 * Nd, sizeof(float)); /* d1 d2 dq dk dv [N,d], dfc [N,4d] */
    if (!g->params || !g->mem || !g->grad || !g->bw || !g->bg || !g->slots || !g->act || !g->toks || !g->d1) {
        gpt2_free(g);
        return RESBM_ENOMEM;
    }
    g->d2 = g->d1 + Nd; g->dq = g->d2 + Nd; g->dk = g->dq + Nd; g->dv = g->dk + Nd; g->dfc = g->dv + Nd;
    for (i = 0, off = 0; i < g->n_params; i++) { /* views, init, and the named pointers */
        resbm_param *p = &g->params[i];
        size_t rows, cols, n;
        float std, *w = g->mem + off;
        resbm_rng rng;
        gpt2_spec(g, i, p->name, &rows, &cols, &p->kind, &std);
        n = rows * cols;
        p->value.data = w; p->grad.data = g->grad + off;
        p->value.ndim = p->grad.ndim = cols == 1 ? 1 : 2;
        p->value.ne[0] = p->grad.ne[0] = rows;
        p->value.ne[1] = p->grad.ne[1] = cols;
        /* the head starts as the embedding's copy: seeded by wte's name */
        resbm_rng_seed(&rng, seed, gpt2_hash(strcmp(p->name, "lm_head") ? p->name : "wte"));
        for (j = 0; j < n; j++) w[j] = std < 0.0f ? 1.0f : std * resbm_rng_normal(&rng);
        off += n;
    }
    for (i = 0; i < g->n_params; i++) {
        resbm_param *p = &g->params[i];
        float *w = p->value.data, *gr = p->grad.data;
        if (!strcmp(p->name, "wte")) { g->wte = w; g->g_wte = gr; }
        else if (!strcmp(p->name, "wpe")) { g->wpe = w; g->g_wpe = gr; }
        else if (!strcmp(p->name, "ln_f.weight")) { g->lnf_w = w; g->g_lnf_w = gr; }
        else if (!strcmp(p->name, "ln_f.bias")) { g->lnf_b = w; g->g_lnf_b = gr; }
        else if (!strcmp(p->name, "lm_head")) { g->head = w; g->g_head = gr; }
        else {
            size_t b = (size_t)(atoi(p->name + 2) - g->l0), k = (i - (g->first ? 2 : 0)) % BLOCK_TENSORS;
            g->bw[b].t[k] = w;
            g->bg[b].t[k] = gr;
        }
    }
    if (g->tied) { g->head = g->wte; g->g_head = g->g_wte; }
    for (l = 0; l < slots; l++) { /* carve each slot */
        gpt2_slot *sl = &g->slots[l];
        float *a = g->act + per * (size_t)l;
        size_t L = (size_t)g->L, N = g->N;
        if (g->first) { sl->emb = a; a += Nd; }
        sl->x = a; a += L * Nd; sl->ln1 = a; a += L * Nd; sl->q = a; a += L * Nd; sl->k = a; a += L * Nd;
        sl->v = a; a += L * Nd; sl->att = a; a += L * Nd; sl->x2 = a; a += L * Nd; sl->ln2 = a; a += L * Nd;
        sl->fc = a; a += 4 * L * Nd; sl->gelu = a; a += 4 * L * Nd; sl->lse = a; a += L * N * (size_t)heads;
        sl->mean1 = a; a += L * N; sl->rstd1 = a; a += L * N; sl->mean2 = a; a += L * N; sl->rstd2 = a; a += L * N;
        sl->xl = a; a += Nd; sl->lnf = a; a += Nd; sl->meanf = a; a += N; sl->rstdf = a;
        sl->tok = g->toks + N * (size_t)l;
    }
    snprintf(g->arch, sizeof(g->arch), "gpt2 d=%d heads=%d layers=%d seq=%d vocab=%d untied=%d", d, heads, layers, seq,
             g->V, stages > 1);
    g->layers.user = g;
    g->layers.arch = g->arch;
    g->layers.params = g->params;
    g->layers.n_params = g->n_params;
    g->layers.forward = gpt2_forward;
    g->layers.backward = gpt2_backward;
    g->layers.release = gpt2_release;
    *out = g;
    return RESBM_OK;
}

/* ---- the engine train.c drives: one gpt2 per stage, sharing the stage's kernel pool ------------- */
#ifndef GPT2_NO_TRAIN
static int gpt2_create(const options *o, int s, resbm_stage_config *cfg, void **state) {
    resbm_stage_config c1 = *cfg;
    resbm_pool *pool;
    gpt2 *g;
    int slots, rc;
    c1.act_budget_bytes = 0; /* host layers keep 1F1B's depth: size for exactly that */
    if ((rc = resbm_stage_slots(&c1, &slots))) return rc;
    if ((rc = resbm_pool_init(o->threads, &pool))) return rc;
    /* the pool's precision is ours to set (the model checks it matches its own) */
    if (cfg->model.gemm_bf16 && (rc = resbm_pool_set_precision(pool, RESBM_PRECISION_BF16))) {
        resbm_pool_free(pool);
        return rc;
    }
    if ((rc = gpt2_new(o->d, o->heads, o->seq, o->layers, o->stages, s, slots, (size_t)cfg->model.batch, o->seed,
                       pool, &g))) {
        resbm_pool_free(pool);
        return rc;
    }
    g->own_pool = 1;
    cfg->model.host = &g->layers;
    cfg->model.pool = pool; /* the stage's kernels and ours take turns on one pool */
    *state = g;
    return RESBM_OK;
}

static void gpt2_destroy(void *state) { gpt2_free((gpt2 *)state); }

static const host_engine *gpt2_engine(void) {
    static const host_engine e = {"gpt2", gpt2_create, gpt2_destroy};
    return &e;
}
#endif
