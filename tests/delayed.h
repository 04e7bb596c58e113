/* delayed.h - the async schedule's rule written out plainly, one stage after another in one
   thread, for the tests to hold the pipeline to (include after resbm.h and harness.h). */
#ifndef RESBM_DELAYED_H
#define RESBM_DELAYED_H

#include <stdlib.h>

typedef struct {
    resbm_model *stage[8]; /* the S stage models, made by the caller */
    int S, n;              /* stages, microbatches per step */
    size_t rows;           /* rows per microbatch */
    float *kept[8];        /* each stage's gradient of the batch before, waiting */
    float kept_total;      /* its squared norm over all stages */
    int have;              /* a gradient is waiting */
} delayed_rule;

static size_t delayed_floats(resbm_model *m) {
    size_t np, i, tot = 0;
    const resbm_param *p = resbm_model_params(m, &np);
    for (i = 0; i < np; i++) tot += p[i].value.ne[0] * p[i].value.ne[1];
    return tot;
}

/* Each stage's gradient swapped with its kept one (copy: kept to grads only). */
static void delayed_swap(delayed_rule *r, int copy) {
    int s;
    for (s = 0; s < r->S; s++) {
        size_t np, i, e, q = 0;
        resbm_param *p = (resbm_param *)resbm_model_params(r->stage[s], &np);
        for (i = 0; i < np; i++)
            for (e = 0; e < p[i].value.ne[0] * p[i].value.ne[1]; e++, q++) {
                float t = r->kept[s][q];
                if (!copy) r->kept[s][q] = p[i].grad.data[e];
                p[i].grad.data[e] = t;
            }
    }
}

static void delayed_apply(delayed_rule *r) {
    int s;
    for (s = 0; s < r->S; s++)
        CHECK_RC(resbm_model_update(r->stage[s], resbm_clip_scale(resbm_model_get_opt(r->stage[s]), r->kept_total)),
                 RESBM_OK);
}

/* One batch: its gradient is taken at the weights as they are (the updates of the batches up to
   two back), then the batch before's update is applied and this one's waits; a flush applies it
   too. The batch's mean loss. Microbatches go through each stage in order, as 1F1B's do. */
static float delayed_step(delayed_rule *r, const int32_t *tok, const int32_t *tg, int flush) {
    const resbm_model_config *c = resbm_model_get_config(r->stage[0]);
    size_t Nmb = r->rows * (size_t)c->seq, w = (size_t)c->d;
    double loss_sum = 0.0, sq;
    float *h[8], *g[8], total = 0.0f, loss = 0.0f;
    int s, b, j;
    for (s = 0; s < r->S; s++) {
        if (!r->kept[s]) r->kept[s] = (float *)calloc(delayed_floats(r->stage[s]), sizeof(float));
        h[s] = (float *)malloc(Nmb * w * sizeof(float));
        g[s] = (float *)malloc(Nmb * w * sizeof(float));
        resbm_model_zero_grad(r->stage[s]);
    }
    for (j = 0; j < r->n; j++) {
        for (s = 0; s < r->S; s++) {
            int last = s == r->S - 1;
            CHECK_RC(resbm_model_forward(r->stage[s], 0, s == 0 ? tok + j * Nmb : NULL, s ? h[s - 1] : NULL,
                                         last ? tg + j * Nmb : NULL, r->rows, last ? NULL : h[s],
                                         last ? &loss : NULL), RESBM_OK);
            if (last) loss_sum += loss;
        }
        for (b = r->S - 1; b >= 0; b--)
            CHECK_RC(resbm_model_backward(r->stage[b], 0, b < r->S - 1 ? g[b] : NULL, b ? g[b - 1] : NULL,
                                          1.0f / (float)r->n), RESBM_OK);
    }
    for (s = 0; s < r->S; s++) { /* in stage order, as stage 0 sums them */
        resbm_model_grad_sqnorm(r->stage[s], &sq);
        total = s ? total + (float)sq : (float)sq;
    }
    delayed_swap(r, 0); /* this batch's gradient waits; the one before is in the grads */
    if (r->have) delayed_apply(r);
    r->kept_total = total;
    r->have = 1;
    if (flush) {
        delayed_swap(r, 1);
        delayed_apply(r);
        r->have = 0;
    }
    for (s = 0; s < r->S; s++) { free(h[s]); free(g[s]); }
    return (float)(loss_sum / r->n);
}

static void delayed_free(delayed_rule *r) {
    int s;
    for (s = 0; s < r->S; s++) free(r->kept[s]);
}

#endif
