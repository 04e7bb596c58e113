/* delayed.h - the async schedule's rule written out plainly, one stage after another in one
   thread, for the tests to hold the pipeline to (include after resbm.h and harness.h). */
#ifndef RESBM_DELAYED_H
#define RESBM_DELAYED_H

#include <stdlib.h>

typedef struct {
    resbm_model *stage[8]; /* the S stage models, made by the caller */
    int S, n;              /* stages, microbatches per step */
    size_t rows;           /* rows per microbatch */
    float predict;         /* batches run on w + predict (w - w before the last update); 0: on w */
    float *kept[8];        /* each stage's gradient of the batch before, waiting */
    float *w[8], *before[8]; /* the weights proper while a prediction runs; before the last update */
    float kept_total;      /* the kept gradient's squared norm over all stages */
    int have;              /* a gradient is waiting */
    int updated;           /* an update since the last flush: there is a last update to go by */
} delayed_rule;

/* Every value (or gradient) of a stage, in parameter order, to or from buf. */
static void delayed_copy(resbm_model *m, float *buf, int grads, int to_buf) {
    size_t np, i, e, q = 0;
    resbm_param *p = (resbm_param *)resbm_model_params(m, &np);
    for (i = 0; i < np; i++) {
        float *x = grads ? p[i].grad.data : p[i].value.data;
        for (e = 0; e < p[i].value.ne[0] * p[i].value.ne[1]; e++, q++) {
            if (to_buf) buf[q] = x[e];
            else x[e] = buf[q];
        }
    }
}

static size_t delayed_floats(resbm_model *m) {
    size_t np, i, tot = 0;
    const resbm_param *p = resbm_model_params(m, &np);
    for (i = 0; i < np; i++) tot += p[i].value.ne[0] * p[i].value.ne[1];
    return tot;
}

/* The kept gradient's update on every stage (the weights before it kept for the prediction). */
static void delayed_apply(delayed_rule *r) {
    int s;
    for (s = 0; s < r->S; s++) {
        delayed_copy(r->stage[s], r->before[s], 0, 1);
        CHECK_RC(resbm_model_update(r->stage[s], resbm_clip_scale(resbm_model_get_opt(r->stage[s]), r->kept_total)),
                 RESBM_OK);
    }
    r->updated = 1;
}

/* One batch: its gradient is taken at the weights as they are (the updates of the batches up to
   two back; with predict, at those weights extrapolated along the last update), then the batch
   before's update is applied and this one's waits; a flush applies it too. The batch's mean
   loss. Microbatches go through each stage in order, as 1F1B's do. */
static float delayed_step(delayed_rule *r, const int32_t *tok, const int32_t *tg, int flush) {
    const resbm_model_config *c = resbm_model_get_config(r->stage[0]);
    size_t Nmb = r->rows * (size_t)c->seq, w = (size_t)c->d, k, nf;
    double loss_sum = 0.0, sq;
    float *h[8], *g[8], total = 0.0f, loss = 0.0f, *tmp;
    int s, b, j, predicting = r->predict > 0.0f && r->updated;
    for (s = 0; s < r->S; s++) {
        nf = delayed_floats(r->stage[s]);
        if (!r->kept[s]) {
            r->kept[s] = (float *)calloc(nf, sizeof(float));
            r->w[s] = (float *)calloc(nf, sizeof(float));
            r->before[s] = (float *)calloc(nf, sizeof(float));
        }
        h[s] = (float *)malloc(Nmb * w * sizeof(float));
        g[s] = (float *)malloc(Nmb * w * sizeof(float));
        resbm_model_zero_grad(r->stage[s]);
        if (predicting) { /* w + predict (w - before) in place of w while this batch runs */
            tmp = (float *)malloc(nf * sizeof(float));
            delayed_copy(r->stage[s], r->w[s], 0, 1);
            for (k = 0; k < nf; k++) tmp[k] = r->w[s][k] + r->predict * (r->w[s][k] - r->before[s][k]);
            delayed_copy(r->stage[s], tmp, 0, 0);
            free(tmp);
        }
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
        if (predicting) delayed_copy(r->stage[s], r->w[s], 0, 0); /* the weights proper back */
        resbm_model_grad_sqnorm(r->stage[s], &sq);
        total = s ? total + (float)sq : (float)sq;
        nf = delayed_floats(r->stage[s]);
        tmp = (float *)malloc(nf * sizeof(float)); /* this gradient waits; the one before is applied */
        delayed_copy(r->stage[s], tmp, 1, 1);
        delayed_copy(r->stage[s], r->kept[s], 1, 0);
        memcpy(r->kept[s], tmp, nf * sizeof(float));
        free(tmp);
    }
    if (r->have) delayed_apply(r);
    r->kept_total = total;
    r->have = 1;
    if (flush) {
        for (s = 0; s < r->S; s++) delayed_copy(r->stage[s], r->kept[s], 1, 0);
        delayed_apply(r);
        r->have = 0;
        r->updated = 0; /* a new stream starts on the weights as they are */
    }
    for (s = 0; s < r->S; s++) { free(h[s]); free(g[s]); }
    return (float)(loss_sum / r->n);
}

static void delayed_free(delayed_rule *r) {
    int s;
    for (s = 0; s < r->S; s++) { free(r->kept[s]); free(r->w[s]); free(r->before[s]); }
}

#endif
