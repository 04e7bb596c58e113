/* ref.h - a naive double-precision reference of every layer and of the whole model (docs/design.md §4).
   Written for clarity, not speed: finite differences of these are the ground truth the float
   kernels' backward passes are checked against. */
#ifndef RESBM_REF_H
#define RESBM_REF_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void ref_rmsnorm(double *out, const double *x, const double *g, size_t N, size_t d) {
    size_t n, i;
    for (n = 0; n < N; n++) {
        double ss = 0, r;
        for (i = 0; i < d; i++) ss += x[n * d + i] * x[n * d + i];
        r = 1.0 / sqrt(ss / (double)d + 1e-5);
        for (i = 0; i < d; i++) out[n * d + i] = x[n * d + i] * r * g[i];
    }
}

/* out [N,o] = x [N,in] w[o,in]^T */
static void ref_linear(double *out, const double *x, const double *w, size_t N, size_t in, size_t o) {
    size_t n, j, k;
    for (n = 0; n < N; n++)
        for (j = 0; j < o; j++) {
            double s = 0;
            for (k = 0; k < in; k++) s += x[n * in + k] * w[j * in + k];
            out[n * o + j] = s;
        }
}

static void ref_rope(double *x, size_t N, size_t T, size_t d, size_t H) {
    size_t n, h, j, hd = d / H, half = hd / 2;
    for (n = 0; n < N; n++)
        for (h = 0; h < H; h++)
            for (j = 0; j < half; j++) {
                double ang = (double)(n % T) * pow(10000.0, -2.0 * (double)j / (double)hd);
                double *p = x + n * d + h * hd, a = p[j], b = p[j + half];
                p[j] = a * cos(ang) - b * sin(ang);
                p[j + half] = b * cos(ang) + a * sin(ang);
            }
}

static void ref_attention(double *out, const double *q, const double *k, const double *v, size_t N,
                          size_t T, size_t d, size_t H) {
    size_t hd = d / H, seq, h, t, u, i;
    double *s = (double *)malloc(T * sizeof(double));
    for (seq = 0; seq < N / T; seq++)
        for (h = 0; h < H; h++)
            for (t = 0; t < T; t++) {
                size_t row = (seq * T + t) * d + h * hd;
                double mx = -1e300, sum = 0;
                for (u = 0; u <= t; u++) {
                    size_t col = (seq * T + u) * d + h * hd;
                    double dot = 0;
                    for (i = 0; i < hd; i++) dot += q[row + i] * k[col + i];
                    s[u] = dot / sqrt((double)hd);
                    if (s[u] > mx) mx = s[u];
                }
                for (u = 0; u <= t; u++) { s[u] = exp(s[u] - mx); sum += s[u]; }
                for (i = 0; i < hd; i++) {
                    double acc = 0;
                    for (u = 0; u <= t; u++) acc += s[u] / sum * v[(seq * T + u) * d + h * hd + i];
                    out[row + i] = acc;
                }
            }
    free(s);
}

static double ref_silu(double x) { return x / (1.0 + exp(-x)); }

/* mean over N rows of -log softmax(logits)[target] */
static double ref_xent(const double *logits, const int32_t *tg, size_t N, size_t V) {
    size_t n, i;
    double total = 0;
    for (n = 0; n < N; n++) {
        const double *l = logits + n * V;
        double mx = l[0], s = 0;
        for (i = 1; i < V; i++) mx = l[i] > mx ? l[i] : mx;
        for (i = 0; i < V; i++) s += exp(l[i] - mx);
        total += log(s) + mx - l[tg[n]];
    }
    return total / (double)N;
}

/* One transformer block applied to x [N,d] in place. w: attn_norm wq wk wv wo mlp_norm w1 w2 w3. */
static void ref_block(double *x, double *const *w, size_t N, size_t T, size_t d, size_t H, size_t f) {
    size_t i, Nd = N * d;
    double *a = (double *)malloc(Nd * sizeof(double)), *q = (double *)malloc(Nd * sizeof(double));
    double *k = (double *)malloc(Nd * sizeof(double)), *v = (double *)malloc(Nd * sizeof(double));
    double *o = (double *)malloc(Nd * sizeof(double)), *p = (double *)malloc(Nd * sizeof(double));
    double *h1 = (double *)malloc(N * f * sizeof(double)), *h3 = (double *)malloc(N * f * sizeof(double));
    ref_rmsnorm(a, x, w[0], N, d);
    ref_linear(q, a, w[1], N, d, d);
    ref_linear(k, a, w[2], N, d, d);
    ref_linear(v, a, w[3], N, d, d);
    ref_rope(q, N, T, d, H);
    ref_rope(k, N, T, d, H);
    ref_attention(o, q, k, v, N, T, d, H);
    ref_linear(p, o, w[4], N, d, d);
    for (i = 0; i < Nd; i++) x[i] += p[i];
    ref_rmsnorm(a, x, w[5], N, d);
    ref_linear(h1, a, w[6], N, d, f);
    ref_linear(h3, a, w[8], N, d, f);
    for (i = 0; i < N * f; i++) h1[i] = ref_silu(h1[i]) * h3[i];
    ref_linear(p, h1, w[7], N, f, d);
    for (i = 0; i < Nd; i++) x[i] += p[i];
    free(a); free(q); free(k); free(v); free(o); free(p); free(h1); free(h3);
}

/* Whole model, parameters in the design's order: tok_emb, L x 9 block tensors, final_norm,
   lm_head. Returns the mean cross-entropy. */
static double ref_model_loss(double *const *w, const int32_t *tok, const int32_t *tg, size_t N,
                             size_t T, size_t d, size_t H, size_t f, size_t V, size_t L) {
    size_t n, l;
    double *x = (double *)malloc(N * d * sizeof(double)), *xn = (double *)malloc(N * d * sizeof(double));
    double *logits = (double *)malloc(N * V * sizeof(double)), loss;
    for (n = 0; n < N; n++) memcpy(x + n * d, w[0] + (size_t)tok[n] * d, d * sizeof(double));
    for (l = 0; l < L; l++) ref_block(x, w + 1 + 9 * l, N, T, d, H, f);
    ref_rmsnorm(xn, x, w[1 + 9 * L], N, d);
    ref_linear(logits, xn, w[2 + 9 * L], N, d, V);
    loss = ref_xent(logits, tg, N, V);
    free(x); free(xn); free(logits);
    return loss;
}

/* Bottleneck sender: z [N,r] = silu(rmsnorm(h) * norm w1^T) w2^T (+ h[:, 0:r]) */
static void ref_encoder(double *z, const double *h, const double *norm, const double *w1,
                        const double *w2, size_t N, size_t d, size_t r, size_t m, int identity) {
    size_t n, i;
    double *u = (double *)malloc(N * d * sizeof(double)), *a = (double *)malloc(N * m * sizeof(double));
    ref_rmsnorm(u, h, norm, N, d);
    ref_linear(a, u, w1, N, d, m);
    for (i = 0; i < N * m; i++) a[i] = ref_silu(a[i]);
    ref_linear(z, a, w2, N, m, r);
    if (identity)
        for (n = 0; n < N; n++)
            for (i = 0; i < r; i++) z[n * r + i] += h[n * d + i];
    free(u); free(a);
}

/* Bottleneck receiver: x [N,d] = silu(z w1^T) w2^T, x[:, 0:r] += z */
static void ref_decoder(double *x, const double *z, const double *w1, const double *w2, size_t N,
                        size_t d, size_t r, size_t m, int identity) {
    size_t n, i;
    double *a = (double *)malloc(N * m * sizeof(double));
    ref_linear(a, z, w1, N, r, m);
    for (i = 0; i < N * m; i++) a[i] = ref_silu(a[i]);
    ref_linear(x, a, w2, N, m, d);
    if (identity)
        for (n = 0; n < N; n++)
            for (i = 0; i < r; i++) x[n * d + i] += z[n * r + i];
    free(a);
}

#endif
